//! Held messages in the shared PostgreSQL store, and [`HoldSpool`], the
//! spool abstraction over the directory spool and this one.
//!
//! Table `held`: the hold id, the tenant name, the hold and expiry times,
//! the keyed pseudonyms of the envelope addresses (for `forget`), and the
//! metadata and the raw message each sealed with [`Keys::seal`]
//! (AES-256-GCM). Any relay on the same database lists, reads and removes
//! every relay's holds; removal is a single `DELETE`, so of two relays
//! removing the same hold at once exactly one gets `true`.
//!
//! Releasing delivers first and removes after, so removal alone cannot stop
//! two relays from both delivering: [`PgSpool::claim`] marks a hold as being
//! acted on (columns `claimed_until`, `claim_token`, schema version 2) with
//! one conditional `UPDATE`, and only one relay at a time gets the claim.
//! A claim is a lease of [`CLAIM_LEASE`] (database clock): a relay that dies
//! mid-release blocks the hold that long at most.

use std::sync::Arc;
use std::time::Duration;

use super::postgres::{PgError, Pool};
use crate::outbound::spool::{HeldMeta, Spool, SpoolError};
use crate::privacy::Keys;

fn spool_err(e: PgError) -> SpoolError {
    SpoolError::Io(std::io::Error::other(e.to_string()))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// How long a claim on a held message in the shared store lasts unless its
/// holder removes the message or gives the claim up first. Longer than a
/// release's delivery can take with the default `[relay] timeout` (60 s per
/// step), so a live relay does not lose its claim mid-delivery.
pub const CLAIM_LEASE: Duration = Duration::from_secs(600);

/// How long an erasure waits for a release or discard of a held message
/// in progress before it gives up on that message.
pub const ERASE_WAIT: Duration = Duration::from_secs(60);

/// Pause between an erasure's claims on a busy held message.
pub(crate) const ERASE_RETRY: Duration = Duration::from_millis(20);

/// What an erasure did with one held message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// Removed by this erasure.
    Removed,
    /// Not there (any more): released, discarded or expired meanwhile.
    Gone,
    /// Still claimed by a release or discard after [`ERASE_WAIT`].
    Busy,
}

/// The right to release or discard one held message, from
/// [`HoldSpool::claim`]. For the directory spool it carries no token (the
/// process-wide claim in `hold` is all there is: one relay per directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolClaim {
    id: String,
    token: Option<i64>,
}

impl SpoolClaim {
    /// The held message's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What [`HoldSpool::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller may act on the hold.
    Claimed(SpoolClaim),
    /// Another relay (or request) holds an unexpired claim on it.
    Busy,
    /// No such hold (never held, or already released or discarded).
    Missing,
}

/// Held messages in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSpool {
    pool: Arc<Pool>,
    keys: Arc<Keys>,
    key_id: u32,
}

impl PgSpool {
    /// A spool on an open pool (schema already migrated).
    pub async fn new(pool: Arc<Pool>, keys: Arc<Keys>) -> Result<PgSpool, SpoolError> {
        let key_id = super::postgres::key_id(&pool, &keys)
            .await
            .map_err(spool_err)?;
        Ok(PgSpool { pool, keys, key_id })
    }

    /// Connect with the `[store]` settings, migrate the schema, and open.
    pub async fn connect(
        sc: &crate::config::StoreConfig,
        keys: Arc<Keys>,
    ) -> Result<PgSpool, SpoolError> {
        let pool = Arc::new(super::postgres::pool_for(sc).await.map_err(spool_err)?);
        super::postgres::migrate_schema(&pool)
            .await
            .map_err(spool_err)?;
        PgSpool::new(pool, keys).await
    }

    /// Store a message durably (committed before returning).
    pub async fn put(&self, meta: &HeldMeta, raw: &[u8]) -> Result<(), SpoolError> {
        if !valid_id(&meta.id) {
            return Err(SpoolError::BadId);
        }
        let json = serde_json::to_vec(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        let sealed_meta = self.keys.seal(&json);
        let sealed_raw = self.keys.seal(raw);
        if sealed_meta.is_empty() || sealed_raw.is_empty() {
            return Err(SpoolError::Corrupt(
                "sealing failed (no current key)".into(),
            ));
        }
        let mut ps: Vec<Vec<u8>> = std::iter::once(meta.envelope.mail_from.as_str())
            .chain(meta.envelope.rcpt_to.iter().map(String::as_str))
            .filter(|a| !a.is_empty())
            .map(|a| {
                self.keys
                    .pseudonym_bytes_with(self.key_id, &meta.tenant, a)
                    .to_vec()
            })
            .collect();
        ps.sort();
        ps.dedup();
        let c = self.pool.get().await.map_err(spool_err)?;
        c.execute(
            "INSERT INTO held (id, tenant, held_at, expires_at, index_ps, meta, raw)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, raw = EXCLUDED.raw,
                 index_ps = EXCLUDED.index_ps, expires_at = EXCLUDED.expires_at",
            &[
                &meta.id,
                &meta.tenant,
                &meta.held_at,
                &meta.expires_at,
                &ps,
                &sealed_meta,
                &sealed_raw,
            ],
        )
        .await
        .map_err(|e| spool_err(e.into()))?;
        Ok(())
    }

    fn open_meta(&self, id: &str, sealed: &[u8]) -> Result<HeldMeta, SpoolError> {
        let plain = self
            .keys
            .open(sealed)
            .map_err(|_| SpoolError::Corrupt(format!("held {id}")))?;
        serde_json::from_slice(&plain).map_err(|_| SpoolError::Corrupt(format!("held {id}")))
    }

    /// Read a held message; `None` when no such id is held.
    pub async fn get(&self, id: &str) -> Result<Option<(HeldMeta, Vec<u8>)>, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId);
        }
        let c = self.pool.get().await.map_err(spool_err)?;
        let row = c
            .query_opt("SELECT meta, raw FROM held WHERE id = $1", &[&id])
            .await
            .map_err(|e| spool_err(e.into()))?;
        let Some(row) = row else { return Ok(None) };
        let meta: &[u8] = row.try_get(0).map_err(|e| spool_err(e.into()))?;
        let raw: &[u8] = row.try_get(1).map_err(|e| spool_err(e.into()))?;
        let meta = self.open_meta(id, meta)?;
        let raw = self
            .keys
            .open(raw)
            .map_err(|_| SpoolError::Corrupt(format!("held {id}")))?;
        Ok(Some((meta, raw)))
    }

    /// Metadata of every held message (every relay's), oldest first.
    pub async fn list(&self) -> Result<Vec<HeldMeta>, SpoolError> {
        let c = self.pool.get().await.map_err(spool_err)?;
        let rows = c
            .query("SELECT id, meta FROM held ORDER BY held_at, id", &[])
            .await
            .map_err(|e| spool_err(e.into()))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: &str = r.try_get(0).map_err(|e| spool_err(e.into()))?;
            let meta: &[u8] = r.try_get(1).map_err(|e| spool_err(e.into()))?;
            out.push(self.open_meta(id, meta)?);
        }
        Ok(out)
    }

    /// Remove a held message; `false` when it was not there (already
    /// released or discarded, possibly by another relay).
    pub async fn remove(&self, id: &str) -> Result<bool, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId);
        }
        let c = self.pool.get().await.map_err(spool_err)?;
        let n = c
            .execute("DELETE FROM held WHERE id = $1", &[&id])
            .await
            .map_err(|e| spool_err(e.into()))?;
        Ok(n > 0)
    }

    /// Claim a held message for `lease` (one conditional `UPDATE`): only
    /// one caller across every relay on the database gets
    /// [`ClaimOutcome::Claimed`] until the claim is removed, given up, or
    /// its lease runs out.
    pub async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId);
        }
        let token: i64 = rand::random();
        let c = self.pool.get().await.map_err(spool_err)?;
        let n = c
            .execute(
                "UPDATE held SET claimed_until = clock_timestamp() + make_interval(secs => $2),
                     claim_token = $3
                 WHERE id = $1 AND claimed_until < clock_timestamp()",
                &[&id, &lease.as_secs_f64(), &token],
            )
            .await
            .map_err(|e| spool_err(e.into()))?;
        if n == 1 {
            return Ok(ClaimOutcome::Claimed(SpoolClaim {
                id: id.to_string(),
                token: Some(token),
            }));
        }
        let there = c
            .query_opt("SELECT 1 FROM held WHERE id = $1", &[&id])
            .await
            .map_err(|e| spool_err(e.into()))?;
        Ok(if there.is_some() {
            ClaimOutcome::Busy
        } else {
            ClaimOutcome::Missing
        })
    }

    /// Remove a held message under a claim; `false` when it is gone or the
    /// claim is no longer this caller's (its lease ran out and another
    /// relay claimed it).
    pub async fn remove_claimed(&self, claim: &SpoolClaim) -> Result<bool, SpoolError> {
        let Some(token) = claim.token else {
            return self.remove(&claim.id).await;
        };
        let c = self.pool.get().await.map_err(spool_err)?;
        let n = c
            .execute(
                "DELETE FROM held WHERE id = $1 AND claim_token = $2",
                &[&claim.id, &token],
            )
            .await
            .map_err(|e| spool_err(e.into()))?;
        Ok(n > 0)
    }

    /// Give a claim up (the release failed): any relay may act at once.
    pub async fn unclaim(&self, claim: &SpoolClaim) -> Result<(), SpoolError> {
        let Some(token) = claim.token else {
            return Ok(());
        };
        let c = self.pool.get().await.map_err(spool_err)?;
        c.execute(
            "UPDATE held SET claimed_until = '-infinity', claim_token = NULL
             WHERE id = $1 AND claim_token = $2",
            &[&claim.id, &token],
        )
        .await
        .map_err(|e| spool_err(e.into()))?;
        Ok(())
    }
}

/// Where held messages live: a directory (one relay) or PostgreSQL
/// (shared by every relay on the database). Same methods as [`Spool`].
#[derive(Debug, Clone)]
pub enum HoldSpool {
    Dir(Spool),
    Postgres(PgSpool),
}

impl HoldSpool {
    /// The configuration's hold spool: the directory (created when
    /// missing), or the shared store's (schema migrated) with
    /// `store.backend = "postgres"`. On failure, where it was and why.
    pub async fn open(
        cfg: &crate::config::Config,
        keys: Arc<Keys>,
    ) -> Result<HoldSpool, (String, SpoolError)> {
        match cfg.store.backend {
            crate::config::store::StoreBackend::Embedded => {
                let dir = cfg.hold_spool_dir();
                Spool::open(&dir, keys)
                    .await
                    .map(HoldSpool::Dir)
                    .map_err(|e| (dir.display().to_string(), e))
            }
            crate::config::store::StoreBackend::Postgres => PgSpool::connect(&cfg.store, keys)
                .await
                .map(HoldSpool::Postgres)
                .map_err(|e| ("in the shared store".to_string(), e)),
        }
    }

    /// Held messages whose envelope sender or a recipient is `addr` (a
    /// normalised address), with the role it has in each ("sender",
    /// "recipient" or both). Spool addresses are compared after
    /// normalisation, or lower-cased when they do not normalise.
    pub async fn involving(
        &self,
        norm: &crate::address::Normalizer,
        addr: &str,
    ) -> Result<Vec<(HeldMeta, &'static str)>, SpoolError> {
        let same = |a: &str| {
            let n = norm
                .normalize(a)
                .unwrap_or_else(|_| a.trim().trim_matches(['<', '>']).to_lowercase());
            n == addr
        };
        let mut out = Vec::new();
        for m in self.list().await? {
            let from = same(&m.envelope.mail_from);
            let to = m.envelope.rcpt_to.iter().any(|r| same(r));
            let role = match (from, to) {
                (true, true) => "sender and recipient",
                (true, false) => "sender",
                (false, true) => "recipient",
                (false, false) => continue,
            };
            out.push((m, role));
        }
        Ok(out)
    }

    pub async fn put(&self, meta: &HeldMeta, raw: &[u8]) -> Result<(), SpoolError> {
        match self {
            HoldSpool::Dir(s) => s.put(meta, raw).await,
            HoldSpool::Postgres(s) => s.put(meta, raw).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<(HeldMeta, Vec<u8>)>, SpoolError> {
        match self {
            HoldSpool::Dir(s) => s.get(id).await,
            HoldSpool::Postgres(s) => s.get(id).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<HeldMeta>, SpoolError> {
        match self {
            HoldSpool::Dir(s) => s.list().await,
            HoldSpool::Postgres(s) => s.list().await,
        }
    }

    pub async fn remove(&self, id: &str) -> Result<bool, SpoolError> {
        match self {
            HoldSpool::Dir(s) => s.remove(id).await,
            HoldSpool::Postgres(s) => s.remove(id).await,
        }
    }

    /// Claim a held message before releasing or discarding it. PostgreSQL:
    /// see [`PgSpool::claim`]. Directory: always `Claimed` (whether the
    /// message exists shows when it is read or removed).
    pub async fn claim(&self, id: &str, lease: Duration) -> Result<ClaimOutcome, SpoolError> {
        match self {
            HoldSpool::Dir(_) => {
                if !valid_id(id) {
                    return Err(SpoolError::BadId);
                }
                Ok(ClaimOutcome::Claimed(SpoolClaim {
                    id: id.to_string(),
                    token: None,
                }))
            }
            HoldSpool::Postgres(s) => s.claim(id, lease).await,
        }
    }

    /// Remove a claimed message; `false` when it was not there (or, in
    /// PostgreSQL, the claim was lost to another relay after its lease).
    pub async fn remove_claimed(&self, claim: &SpoolClaim) -> Result<bool, SpoolError> {
        match self {
            HoldSpool::Dir(s) => s.remove(&claim.id).await,
            HoldSpool::Postgres(s) => s.remove_claimed(claim).await,
        }
    }

    /// Remove a message for an erasure under a claim, so that a release
    /// of it in progress on any relay finishes first: while the message is
    /// claimed, try again until `wait` has passed (then `Busy`). True when
    /// this call removed it, false when it was not there.
    pub async fn erase(&self, id: &str, wait: Duration) -> Result<Erased, SpoolError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.claim(id, CLAIM_LEASE).await? {
                ClaimOutcome::Claimed(c) => {
                    return Ok(if self.remove_claimed(&c).await? {
                        Erased::Removed
                    } else {
                        Erased::Gone
                    })
                }
                ClaimOutcome::Missing => return Ok(Erased::Gone),
                ClaimOutcome::Busy if tokio::time::Instant::now() >= deadline => {
                    return Ok(Erased::Busy)
                }
                ClaimOutcome::Busy => tokio::time::sleep(ERASE_RETRY).await,
            }
        }
    }

    /// Give a claim up without removing the message.
    pub async fn unclaim(&self, claim: &SpoolClaim) -> Result<(), SpoolError> {
        match self {
            HoldSpool::Dir(_) => Ok(()),
            HoldSpool::Postgres(s) => s.unclaim(claim).await,
        }
    }
}

impl From<Spool> for HoldSpool {
    fn from(s: Spool) -> Self {
        HoldSpool::Dir(s)
    }
}

impl From<PgSpool> for HoldSpool {
    fn from(s: PgSpool) -> Self {
        HoldSpool::Postgres(s)
    }
}
