//! The hold spool: held messages with their envelope and verdict, stored
//! durably before the upstream gets its `250`.
//!
//! One file per message, `<id>.held`: a line of JSON metadata
//! ([`HeldMeta`]) followed by the raw message bytes. A file is written to a
//! temporary name, fsynced, renamed into place and the directory fsynced, so a
//! message is either fully held or not at all, even across `kill -9` or a
//! power loss. All file I/O runs on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::verdict::Verdict;

const SUFFIX: &str = "held";

/// Everything about a held message except its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMeta {
    pub id: String,
    pub tenant: String,
    pub envelope: Envelope,
    pub verdict: Verdict,
    /// When it was held (Unix seconds).
    pub held_at: Ts,
    /// When it expires (Unix seconds).
    pub expires_at: Ts,
}

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool file {0} is corrupt")]
    Corrupt(String),
    #[error("invalid hold id")]
    BadId,
    #[error("spool task failed: {0}")]
    Join(String),
}

/// Durable store of held messages in one directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A new, unique, sortable hold id: `<unix seconds hex>-<16 random hex>`.
pub fn new_id(now: Ts) -> String {
    let r: u64 = rand::random();
    format!("{:010x}-{:016x}", now.max(0), r)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Join(e.to_string()))?
}

impl Spool {
    /// Open (creating if needed) the spool directory. Leftover temporary
    /// files from a crash are removed.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        let d = dir.clone();
        blocking(move || {
            std::fs::create_dir_all(&d)?;
            for entry in std::fs::read_dir(&d)? {
                let p = entry?.path();
                if p.extension().is_some_and(|e| e == "tmp") {
                    std::fs::remove_file(&p)?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId);
        }
        Ok(self.dir.join(format!("{id}.{SUFFIX}")))
    }

    /// Store a message durably. Returns once it is on disk.
    pub async fn put(&self, meta: &HeldMeta, raw: &[u8]) -> Result<(), SpoolError> {
        let path = self.path(&meta.id)?;
        let tmp = path.with_extension("tmp");
        let mut buf = serde_json::to_vec(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        buf.push(b'\n');
        buf.extend_from_slice(raw);
        let dir = self.dir.clone();
        blocking(move || {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(())
        })
        .await
    }

    /// Read a held message; `None` when no such id is held.
    pub async fn get(&self, id: &str) -> Result<Option<(HeldMeta, Vec<u8>)>, SpoolError> {
        let path = self.path(id)?;
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => parse(&path, bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Metadata of every held message, oldest first.
    pub async fn list(&self) -> Result<Vec<HeldMeta>, SpoolError> {
        let dir = self.dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let p = entry?.path();
                if p.extension().is_none_or(|e| e != SUFFIX) {
                    continue;
                }
                let f = match std::fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut line = Vec::new();
                std::io::BufRead::read_until(&mut std::io::BufReader::new(f), b'\n', &mut line)?;
                let meta: HeldMeta = serde_json::from_slice(&line)
                    .map_err(|_| SpoolError::Corrupt(p.display().to_string()))?;
                out.push(meta);
            }
            out.sort_by(|a, b| (a.held_at, &a.id).cmp(&(b.held_at, &b.id)));
            Ok(out)
        })
        .await
    }

    /// Remove a held message durably; `false` when it was not there.
    pub async fn remove(&self, id: &str) -> Result<bool, SpoolError> {
        let path = self.path(id)?;
        let dir = self.dir.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                std::fs::File::open(&dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        })
        .await
    }
}

fn parse(path: &Path, mut bytes: Vec<u8>) -> Result<(HeldMeta, Vec<u8>), SpoolError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| SpoolError::Corrupt(path.display().to_string()))?;
    let meta: HeldMeta = serde_json::from_slice(&bytes[..nl])
        .map_err(|_| SpoolError::Corrupt(path.display().to_string()))?;
    let raw = bytes.split_off(nl + 1);
    Ok((meta, raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Action;

    fn meta(id: &str, at: Ts) -> HeldMeta {
        HeldMeta {
            id: id.into(),
            tenant: "default".into(),
            envelope: Envelope {
                mail_from: "a@x.org".into(),
                rcpt_to: vec!["b@y.org".into()],
                ..Default::default()
            },
            verdict: Verdict {
                score: 0.9,
                action: Action::Hold,
                model: "m".into(),
                recipients: vec![],
                note: None,
            },
            held_at: at,
            expires_at: at + 100,
        }
    }

    #[tokio::test]
    async fn put_get_list_remove_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).await.unwrap();
        let raw = b"Subject: x\r\n\r\n.line\r\n\xff8bit\r\n".to_vec();
        let a = new_id(5);
        let b = new_id(3);
        s.put(&meta(&a, 5), &raw).await.unwrap();
        s.put(&meta(&b, 3), b"x").await.unwrap();
        let (m, r) = s.get(&a).await.unwrap().unwrap();
        assert_eq!(m, meta(&a, 5));
        assert_eq!(r, raw);
        let ids: Vec<_> = s.list().await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![b.clone(), a.clone()]);
        assert!(s.remove(&a).await.unwrap());
        assert!(!s.remove(&a).await.unwrap());
        assert!(s.get(&a).await.unwrap().is_none());
        assert!(matches!(s.get("../etc").await, Err(SpoolError::BadId)));
        // Reopen: still there, and stray temp files are cleaned.
        std::fs::write(dir.path().join("junk.tmp"), b"partial").unwrap();
        let s2 = Spool::open(dir.path()).await.unwrap();
        assert_eq!(s2.list().await.unwrap().len(), 1);
        assert!(!dir.path().join("junk.tmp").exists());
    }
}
