//! Mail misdirectd itself sends that the next hop did not take at once:
//! delivery status notifications (a DSN tells a sender which recipients
//! the next hop refused after the upstream was answered `250`).
//!
//! Such a DSN is written here before the upstream gets its `250`, one file
//! per message under `<server.data_dir>/outbox` (`<id>.dsn`, sealed like
//! the hold spool's files: nothing readable without the key file, written
//! all or nothing), and sent again every `[relay] dsn_retry_interval`
//! until the next hop takes it, refuses it for good, or it is older than
//! `[relay] dsn_lifetime`. A file is removed only after one of those, so a
//! crash between sending and removing sends that DSN twice, never zero
//! times.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::outbound::spool::{
    blocking, open_sealed, prepare_dir, remove_durably, seal_file, write_durably, SpoolError,
};
use crate::privacy::Keys;

const SUFFIX: &str = "dsn";
/// A temporary file older than this is a crash's leftover.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

/// What is kept with a queued message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMeta {
    /// File name stem ([`crate::outbound::spool::new_id`]).
    pub id: String,
    pub envelope: Envelope,
    /// When it was first queued (Unix seconds).
    pub queued_at: Ts,
    /// Queue id of the message it reports on (for log lines).
    pub about: String,
}

/// The directory of queued messages, sealed under `keys`.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    keys: Arc<Keys>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Outbox {
    /// Open (creating if needed) the directory. Temporary files a crash
    /// left (older than ten minutes: a write takes milliseconds, and a
    /// reload opens the directory while sessions may be writing) are
    /// removed.
    pub async fn open(dir: impl Into<PathBuf>, keys: Arc<Keys>) -> Result<Outbox, SpoolError> {
        let dir = dir.into();
        let d = dir.clone();
        blocking(move || Ok(prepare_dir(&d, STALE_TMP)?)).await?;
        Ok(Outbox { dir, keys })
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

    /// Queue a message durably. Returns once it is on disk.
    pub async fn put(&self, meta: &OutboxMeta, raw: &[u8]) -> Result<(), SpoolError> {
        let path = self.path(&meta.id)?;
        let json = serde_json::to_vec(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        let buf = seal_file(&self.keys, &json, raw)?;
        let dir = self.dir.clone();
        blocking(move || Ok(write_durably(&dir, &path, &buf)?)).await
    }

    /// Every queued message, oldest first. A file that cannot be read is
    /// reported in the second list (and left where it is), the rest still
    /// returned.
    #[allow(clippy::type_complexity)]
    pub async fn list(&self) -> Result<(Vec<(OutboxMeta, Vec<u8>)>, Vec<SpoolError>), SpoolError> {
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        blocking(move || {
            let (mut out, mut bad) = (Vec::new(), Vec::new());
            for entry in std::fs::read_dir(&dir)? {
                let p = entry?.path();
                if p.extension().is_none_or(|e| e != SUFFIX) {
                    continue;
                }
                let bytes = match std::fs::read(&p) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let parsed = open_sealed(&keys, &p, &bytes).and_then(|(json, raw)| {
                    serde_json::from_slice::<OutboxMeta>(&json)
                        .map(|m| (m, raw))
                        .map_err(|_| SpoolError::Corrupt(p.display().to_string()))
                });
                match parsed {
                    Ok(m) => out.push(m),
                    Err(e) => bad.push(e),
                }
            }
            out.sort_by(|a, b| (a.0.queued_at, &a.0.id).cmp(&(b.0.queued_at, &b.0.id)));
            Ok((out, bad))
        })
        .await
    }

    /// Remove every queued message to `addr` or naming it anywhere in its
    /// text (a refused recipient, the original's headers), for an erasure
    /// request; `addr` normalised (lower case). How many were removed.
    pub async fn erase_naming(&self, addr: &str) -> Result<usize, SpoolError> {
        let needle = addr.to_ascii_lowercase().into_bytes();
        let (queued, _) = self.list().await?;
        let mut removed = 0;
        for (meta, raw) in queued {
            let to = meta
                .envelope
                .rcpt_to
                .iter()
                .any(|r| r.eq_ignore_ascii_case(addr));
            let named = !needle.is_empty()
                && raw
                    .to_ascii_lowercase()
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice());
            if (to || named) && self.remove(&meta.id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Remove a queued message durably; `false` when it was not there.
    pub async fn remove(&self, id: &str) -> Result<bool, SpoolError> {
        let path = self.path(id)?;
        let dir = self.dir.clone();
        blocking(move || Ok(remove_durably(&dir, &path)?)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::outbound::spool::new_id;

    fn meta(id: &str, at: Ts) -> OutboxMeta {
        OutboxMeta {
            id: id.into(),
            envelope: Envelope {
                mail_from: String::new(),
                rcpt_to: vec!["alice@x.test".into()],
                ..Default::default()
            },
            queued_at: at,
            about: "Q1".into(),
        }
    }

    /// Queued messages come back oldest first, sealed at rest, and leave
    /// when removed; a damaged file is reported, not fatal to the rest.
    #[tokio::test]
    async fn queued_messages_list_oldest_first_sealed_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(Keys::from_secret([9; 32]));
        let o = Outbox::open(dir.path(), keys.clone()).await.unwrap();
        let (a, b) = (new_id(20), new_id(10));
        o.put(&meta(&a, 20), b"Subject: report for alice@x.test\r\n\r\n")
            .await
            .unwrap();
        o.put(&meta(&b, 10), b"second").await.unwrap();
        std::fs::write(dir.path().join("0-bad.dsn"), b"MDS1garbage").unwrap();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(5).any(|w| w == b"alice"),
                "clear text at rest"
            );
        }
        let (got, bad) = o.list().await.unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (meta(&b, 10), b"second".to_vec()));
        assert_eq!(got[1].0, meta(&a, 20));
        // Another handle on the same directory (a restart) reads them too.
        let again = Outbox::open(dir.path(), keys).await.unwrap();
        assert!(again.remove(&b).await.unwrap());
        assert!(!again.remove(&b).await.unwrap());
        let (got, _) = o.list().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.id, a);
        assert!(matches!(o.remove("../x").await, Err(SpoolError::BadId)));
    }

    /// An erasure removes the queued messages to the address or naming it
    /// (in any case), and only those.
    #[tokio::test]
    async fn erasure_removes_the_messages_naming_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), Arc::new(Keys::from_secret([9; 32])))
            .await
            .unwrap();
        let (a, b, c) = (new_id(1), new_id(2), new_id(3));
        o.put(&meta(&a, 1), b"Final-Recipient: rfc822; Gone@Y.test\r\n")
            .await
            .unwrap();
        o.put(&meta(&b, 2), b"Final-Recipient: rfc822; other@y.test\r\n")
            .await
            .unwrap();
        let mut to_gone = meta(&c, 3);
        to_gone.envelope.rcpt_to = vec!["gone@y.test".into()];
        o.put(&to_gone, b"x").await.unwrap();
        assert_eq!(o.erase_naming("gone@y.test").await.unwrap(), 2);
        let (left, _) = o.list().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.id, b);
        assert_eq!(o.erase_naming("gone@y.test").await.unwrap(), 0);
    }
}
