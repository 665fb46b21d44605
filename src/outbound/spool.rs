//! The hold spool: held messages with their envelope and verdict, stored
//! durably before the upstream gets its `250`.
//!
//! One file per message, `<id>.held`, sealed with [`Keys::seal`]
//! (AES-256-GCM): the magic `MDS1`, the length of the sealed metadata (u32
//! little-endian), the sealed JSON metadata ([`HeldMeta`]), then the sealed
//! raw message bytes. Nothing in the file is readable without the key file.
//! A file in the older clear layout (a line of JSON metadata followed by the
//! raw bytes) is still read. A file is written to a
//! temporary name, fsynced, renamed into place and the directory fsynced, so a
//! message is either fully held or not at all, even across `kill -9` or a
//! power loss. All file I/O runs on the blocking pool.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::privacy::Keys;
use crate::verdict::Verdict;

const SUFFIX: &str = "held";
/// First bytes of a sealed spool file.
const MAGIC: &[u8; 4] = b"MDS1";

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

/// Durable store of held messages in one directory, sealed under `keys`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    keys: Arc<Keys>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A new, unique, sortable hold id: `<unix seconds hex>-<16 random hex>`.
pub fn new_id(now: Ts) -> String {
    let r: u64 = rand::random();
    format!("{:010x}-{:016x}", now.max(0), r)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SpoolError::Join(e.to_string()))?
}

impl Spool {
    /// Open (creating if needed) the spool directory; files are sealed and
    /// opened with `keys`. Leftover temporary files from a crash are removed.
    pub async fn open(dir: impl Into<PathBuf>, keys: Arc<Keys>) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        let d = dir.clone();
        blocking(move || Ok(prepare_dir(&d, std::time::Duration::ZERO)?)).await?;
        Ok(Spool { dir, keys })
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
        let json = serde_json::to_vec(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        let buf = seal_file(&self.keys, &json, raw)?;
        let dir = self.dir.clone();
        blocking(move || Ok(write_durably(&dir, &path, &buf)?)).await
    }

    /// Read a held message; `None` when no such id is held.
    pub async fn get(&self, id: &str) -> Result<Option<(HeldMeta, Vec<u8>)>, SpoolError> {
        let path = self.path(id)?;
        let keys = self.keys.clone();
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => parse(&keys, &path, bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Metadata of every held message, oldest first.
    pub async fn list(&self) -> Result<Vec<HeldMeta>, SpoolError> {
        let dir = self.dir.clone();
        let keys = self.keys.clone();
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
                out.push(read_meta(&keys, &p, f)?);
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
        blocking(move || Ok(remove_durably(&dir, &path)?)).await
    }
}

/// Create `dir` if needed and remove the temporary files (a write a crash
/// cut short) older than `older_than` in it. Blocking.
pub(crate) fn prepare_dir(dir: &Path, older_than: std::time::Duration) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "tmp") {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age >= older_than {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// A spool file's bytes: the magic, the length of the sealed metadata, the
/// sealed metadata `json`, then the sealed message `raw`.
pub(crate) fn seal_file(keys: &Keys, json: &[u8], raw: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let sealed_meta = keys.seal(json);
    let sealed_raw = keys.seal(raw);
    if sealed_meta.is_empty() || sealed_raw.is_empty() {
        return Err(SpoolError::Corrupt(
            "sealing failed (no current key)".into(),
        ));
    }
    let meta_len = u32::try_from(sealed_meta.len())
        .map_err(|_| SpoolError::Corrupt("metadata too large".into()))?;
    let mut buf = Vec::with_capacity(8 + sealed_meta.len() + sealed_raw.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&meta_len.to_le_bytes());
    buf.extend_from_slice(&sealed_meta);
    buf.extend_from_slice(&sealed_raw);
    Ok(buf)
}

/// Write `buf` as `path` in `dir`, all or nothing: a temporary file,
/// fsynced, renamed into place, the directory fsynced. Blocking.
pub(crate) fn write_durably(dir: &Path, path: &Path, buf: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(buf)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Remove `path` from `dir` durably; `false` when it was not there.
/// Blocking.
pub(crate) fn remove_durably(dir: &Path, path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            std::fs::File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A sealed spool file's metadata JSON and message bytes.
pub(crate) fn open_sealed(
    keys: &Keys,
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SpoolError> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(corrupt(path));
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let end = 8usize
        .checked_add(len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| corrupt(path))?;
    let open = |b: &[u8]| {
        keys.open(b)
            .map_err(|e| SpoolError::Corrupt(format!("{} ({e})", path.display())))
    };
    Ok((open(&bytes[8..end])?, open(&bytes[end..])?))
}

fn corrupt(path: &Path) -> SpoolError {
    SpoolError::Corrupt(path.display().to_string())
}

fn open_meta(keys: &Keys, path: &Path, sealed: &[u8]) -> Result<HeldMeta, SpoolError> {
    let json = keys
        .open(sealed)
        .map_err(|e| SpoolError::Corrupt(format!("{} ({e})", path.display())))?;
    serde_json::from_slice(&json).map_err(|_| corrupt(path))
}

/// The metadata of one spool file, reading only as much as needed.
fn read_meta(keys: &Keys, path: &Path, f: std::fs::File) -> Result<HeldMeta, SpoolError> {
    let mut r = std::io::BufReader::new(f);
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == head.len() && &head[..4] == MAGIC {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut sealed = Vec::new();
        r.take(len as u64).read_to_end(&mut sealed)?;
        if sealed.len() != len {
            return Err(corrupt(path));
        }
        return open_meta(keys, path, &sealed);
    }
    // Older clear layout: a JSON line, then the bytes.
    let mut line = head[..got].to_vec();
    if !line.contains(&b'\n') {
        std::io::BufRead::read_until(&mut r, b'\n', &mut line)?;
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    serde_json::from_slice(&line[..end]).map_err(|_| corrupt(path))
}

fn parse(keys: &Keys, path: &Path, mut bytes: Vec<u8>) -> Result<(HeldMeta, Vec<u8>), SpoolError> {
    if bytes.len() >= 8 && &bytes[..4] == MAGIC {
        let (json, raw) = open_sealed(keys, path, &bytes)?;
        let meta = serde_json::from_slice(&json).map_err(|_| corrupt(path))?;
        return Ok((meta, raw));
    }
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

    fn keys() -> Arc<Keys> {
        Arc::new(Keys::from_secret([7; 32]))
    }

    #[tokio::test]
    async fn put_get_list_remove_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), keys()).await.unwrap();
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
        let s2 = Spool::open(dir.path(), keys()).await.unwrap();
        assert_eq!(s2.list().await.unwrap().len(), 1);
        assert!(!dir.path().join("junk.tmp").exists());
    }

    #[tokio::test]
    async fn files_are_sealed_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), keys()).await.unwrap();
        let id = new_id(9);
        s.put(&meta(&id, 9), b"Subject: secret-subject\r\n\r\nbody")
            .await
            .unwrap();
        let on_disk = std::fs::read(dir.path().join(format!("{id}.held"))).unwrap();
        let text = String::from_utf8_lossy(&on_disk);
        for needle in ["a@x.org", "b@y.org", "secret-subject", "default"] {
            assert!(!text.contains(needle), "{needle} in clear on disk");
        }
        // Another key cannot read it.
        let other = Spool::open(dir.path(), Arc::new(Keys::from_secret([8; 32])))
            .await
            .unwrap();
        assert!(matches!(other.get(&id).await, Err(SpoolError::Corrupt(_))));
        assert!(matches!(other.list().await, Err(SpoolError::Corrupt(_))));
    }

    #[tokio::test]
    async fn older_clear_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id(4);
        let mut buf = serde_json::to_vec(&meta(&id, 4)).unwrap();
        buf.push(b'\n');
        buf.extend_from_slice(b"raw");
        std::fs::write(dir.path().join(format!("{id}.held")), buf).unwrap();
        let s = Spool::open(dir.path(), keys()).await.unwrap();
        assert_eq!(s.list().await.unwrap(), vec![meta(&id, 4)]);
        assert_eq!(s.get(&id).await.unwrap().unwrap().1, b"raw");
    }
}
