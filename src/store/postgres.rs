//! Shared graph store on PostgreSQL: several relays, one graph.
//!
//! # Design: an append-only learning log that every relay tails
//!
//! The association graph has many record kinds (edges with decayed weights,
//! co-recipient pairs, bounded display-name and thread-participant lists,
//! attachment recipients, domain counters) whose merge rules live in
//! [`Graph::learn`]. Re-expressing each of them as SQL increments would
//! duplicate that logic and get the bounded lists and decayed weights subtly
//! wrong. So the shared store keeps *what was learnt from*, not the derived
//! records:
//!
//! - `learn_log`: one row per (learning batch, tenant), appended by the
//!   relay that saw the mail. The body is the batch's metadata-only learn
//!   events, sealed with [`Keys::seal`] (AES-256-GCM). `batch_id` is a
//!   random 128-bit id made once per batch and `UNIQUE (batch_id, tenant)`:
//!   a batch retried after a lost reply is inserted with
//!   `ON CONFLICT DO NOTHING` and so is never applied twice. Appends take a
//!   transaction-scoped advisory lock, so `seq` order is commit order and a
//!   reader that has seen `seq = n` has seen every row below it.
//! - Every relay applies its own mail to memory at once and reads the rows
//!   of the others (`seq` greater than the last it saw) every
//!   `refresh_interval`, applying them with the same [`Graph::learn`].
//!   Concurrent relays therefore lose no count: nothing is overwritten, every
//!   message is one row that every relay applies exactly once.
//! - `graph_snapshot`: per tenant, a sealed, compressed copy of the graph
//!   folded from the log up to `store_meta.snapshot_seq`. The retention job
//!   (every `privacy.retention_interval`, one relay at a time) compacts:
//!   fold, purge associations older than `privacy.retention_days`, delete
//!   the folded rows. `misdirectd migrate` writes an embedded store's graph
//!   here.
//! - `held`: held messages (metadata and bytes sealed) shared by every relay.
//! - `store_meta.epoch` changes on every erasure, migration and
//!   compaction; every relay that sees a new epoch reloads its graph from
//!   the database.
//!
//! Rows carry `index_ps`, the keyed pseudonyms (HMAC-SHA256 under the
//! tenant) of every address they mention, so `forget` finds them without
//! any address in clear; tenant names are the configured names.
//!
//! # Staleness and outages
//! A relay's scores reflect another relay's learning at most
//! `batch_interval + refresh_interval` (plus a query's duration) after the
//! message was learnt. When PostgreSQL is unreachable the relay keeps
//! scoring from memory and keeps delivering; its own learning waits in a
//! queue bounded by `outage_queue` bytes (oldest batches dropped beyond it,
//! logged and counted) and is written, in order, when the database returns.
//! `misdirect_store_up` is 0 while the database is unreachable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_postgres::{Client, IsolationLevel, NoTls};

use super::{
    log_purge, purge_all, retention_cutoff, unix_now, ForgetReport, GraphHandle, LearnProgress,
};
use crate::config::store::{PgTls, StoreConfig};
use crate::config::Config;
use crate::graph::memory::{AddrEntry, AttRecipient, CoEdge, Edge, Id, ThreadEntry};
use crate::graph::recent::RecentIndex;
use crate::graph::{DomainStats, Graph, GraphConfig, Ts};
use crate::message::{MessageMeta, Recipient};
use crate::privacy::Keys;

/// Gauge: 1 while the shared store answers, 0 during an outage.
pub const STORE_UP: &str = "misdirect_store_up";
/// Gauge: bytes of learning queued for the shared store.
pub const OUTAGE_QUEUED_BYTES: &str = "misdirect_store_outage_queued_bytes";
/// Counter: learning batches dropped because the outage budget was full.
pub const OUTAGE_DROPPED: &str = "misdirect_store_outage_dropped_total";
/// Counter: failed shared-store operations.
pub const STORE_ERRORS: &str = "misdirect_store_errors_total";

/// Advisory lock serialising appends to `learn_log` (and compaction).
const LOG_LOCK: i64 = 0x6d69_7364_6c6f_6701;
/// Advisory lock serialising schema migrations.
const MIGRATE_LOCK: i64 = 0x6d69_7364_6d69_6701;
/// Advisory lock: one compaction at a time.
const COMPACT_LOCK: i64 = 0x6d69_7364_636d_7001;
/// Upper bound of any one database operation.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows read per refresh query.
const TAIL_LIMIT: i64 = 2000;

/// Versioned schema migrations, applied in order by [`migrate_schema`].
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE store_meta (key text PRIMARY KEY, value bigint NOT NULL);
     INSERT INTO store_meta VALUES ('epoch', 0), ('snapshot_seq', 0);
     CREATE TABLE learn_log (
         seq bigserial PRIMARY KEY,
         batch_id bytea NOT NULL,
         tenant text NOT NULL,
         origin bigint NOT NULL,
         newest_ts bigint NOT NULL,
         index_ps bytea[] NOT NULL,
         body bytea NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now(),
         UNIQUE (batch_id, tenant));
     CREATE INDEX learn_log_index_ps ON learn_log USING gin (index_ps);
     CREATE TABLE graph_snapshot (
         tenant text PRIMARY KEY,
         body bytea NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE held (
         id text PRIMARY KEY,
         tenant text NOT NULL,
         held_at bigint NOT NULL,
         expires_at bigint NOT NULL,
         index_ps bytea[] NOT NULL,
         meta bytea NOT NULL,
         raw bytea NOT NULL);
     CREATE INDEX held_index_ps ON held USING gin (index_ps);",
    ),
    (
        2,
        // Cross-relay release claims (see `pg_spool::PgSpool::claim`).
        "ALTER TABLE held
             ADD COLUMN claimed_until timestamptz NOT NULL DEFAULT '-infinity',
             ADD COLUMN claim_token bigint;",
    ),
];

/// Shared-store errors.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres: no answer within {0:?}")]
    Timeout(Duration),
    #[error("postgres: a sealed record does not open: {0}")]
    Seal(#[from] crate::privacy::PrivacyError),
    #[error("postgres: a stored record is damaged: {0}")]
    Corrupt(String),
    #[error("postgres: the store was written with key id {0}, which the key file does not hold")]
    MissingKey(u32),
    #[error("postgres: the target store already holds a graph; migrate only into an empty one")]
    NotEmpty,
    #[error("postgres TLS: {0}")]
    Tls(String),
    #[error("postgres task failed: {0}")]
    Task(String),
}

async fn timed<T, E: Into<PgError>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(PgError::Timeout(OP_TIMEOUT)),
    }
}

// ---------------------------------------------------------------------------
// Connection pool

/// A small connection pool: at most `pool_size` connections, dead ones
/// replaced on the next use.
pub struct Pool {
    cfg: tokio_postgres::Config,
    tls: Option<crate::store::pg_tls::MakeRustls>,
    idle: Mutex<Vec<Client>>,
    sem: Semaphore,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// A pooled connection; back to the pool on drop unless it broke.
pub struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from construction until drop.
        #[allow(clippy::unwrap_used)]
        self.client.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        #[allow(clippy::unwrap_used)]
        self.client.as_mut().unwrap()
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(c);
                }
            }
        }
    }
}

impl Pool {
    /// A pool for the `[store]` settings (no connection is made yet).
    pub fn new(sc: &StoreConfig) -> Result<Pool, PgError> {
        let mut cfg: tokio_postgres::Config = sc
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Corrupt(format!("store.url: {e}")))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(5));
        }
        let tls = match sc.tls {
            PgTls::Disable => None,
            PgTls::Require => {
                let ca = sc
                    .tls_ca
                    .as_ref()
                    .ok_or_else(|| PgError::Tls("store.tls_ca is required".into()))?;
                // Never fall back to plain text.
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(crate::store::pg_tls::MakeRustls::from_ca_file(ca)?)
            }
        };
        Ok(Pool {
            cfg,
            tls,
            idle: Mutex::new(Vec::new()),
            sem: Semaphore::new(sc.pool_size.max(1)),
        })
    }

    /// A connection (an idle one, or a new one).
    pub async fn get(&self) -> Result<Conn<'_>, PgError> {
        let permit = self
            .sem
            .acquire()
            .await
            .map_err(|e| PgError::Task(e.to_string()))?;
        let reuse = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reuse {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, PgError> {
        match &self.tls {
            None => {
                let (client, conn) = timed(self.cfg.connect(NoTls)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "PostgreSQL connection ended.");
                    }
                });
                Ok(client)
            }
            Some(tls) => {
                let (client, conn) = timed(self.cfg.connect(tls.clone())).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "PostgreSQL connection ended.");
                    }
                });
                Ok(client)
            }
        }
    }
}

/// A pool for the `[store]` settings, built on the blocking pool (it may
/// read the TLS CA file).
pub async fn pool_for(sc: &StoreConfig) -> Result<Pool, PgError> {
    let sc = sc.clone();
    tokio::task::spawn_blocking(move || Pool::new(&sc))
        .await
        .map_err(|e| PgError::Task(e.to_string()))?
}

/// Create or upgrade the schema (idempotent, safe with several relays
/// starting at once). Returns the schema version.
pub async fn migrate_schema(pool: &Pool) -> Result<i32, PgError> {
    let mut c = pool.get().await?;
    let tx = timed(c.transaction()).await?;
    timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])).await?;
    timed(tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    ))
    .await?;
    let row =
        timed(tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])).await?;
    let mut current: i32 = row.try_get(0)?;
    for (v, sql) in MIGRATIONS {
        if *v > current {
            timed(tx.batch_execute(sql)).await?;
            timed(tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[v])).await?;
            tracing::info!(version = v, "Shared store schema migrated.");
            current = *v;
        }
    }
    timed(tx.commit()).await?;
    Ok(current)
}

/// The key id the store's pseudonyms use (recorded on first use).
async fn store_key_id(pool: &Pool, keys: &Keys) -> Result<u32, PgError> {
    let c = pool.get().await?;
    timed(c.execute(
        "INSERT INTO store_meta VALUES ('key_id', $1) ON CONFLICT (key) DO NOTHING",
        &[&(keys.current_id() as i64)],
    ))
    .await?;
    let row = timed(c.query_one("SELECT value FROM store_meta WHERE key = 'key_id'", &[])).await?;
    let id = row.try_get::<_, i64>(0)? as u32;
    if !keys.has_key(id) {
        return Err(PgError::MissingKey(id));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------
// Records

/// One learnt message as stored in the log (metadata only, never body text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireEvent {
    pub tenant: String,
    pub meta: MessageMeta,
    pub recipients: Vec<Recipient>,
    pub ts: Ts,
    /// Absent in log entries written before discards were recorded.
    #[serde(default)]
    pub kind: super::LearnKind,
}

impl WireEvent {
    /// The stored form of a learn event.
    pub fn from_learn(ev: super::LearnEvent) -> WireEvent {
        WireEvent {
            tenant: ev.tenant,
            meta: ev.meta,
            recipients: ev.recipients,
            ts: ev.ts,
            kind: ev.kind,
        }
    }

    fn apply(&self, graphs: &mut HashMap<String, Graph>, cfg: &GraphConfig) {
        super::apply_event(
            graphs,
            cfg,
            &self.tenant,
            &self.meta,
            &self.recipients,
            self.ts,
            self.kind,
        );
    }

    /// Every address the event names.
    fn addresses(&self) -> impl Iterator<Item = &str> {
        self.meta
            .from
            .iter()
            .map(|m| m.address.as_str())
            .chain(self.recipients.iter().map(|r| r.address.as_str()))
            .chain(self.meta.recipients.iter().map(|r| r.address.as_str()))
    }

    /// Remove `addr` from the event; `false` when nothing is left to learn
    /// (the address was the sender).
    fn scrub(&mut self, addr: &str) -> bool {
        if self.meta.from.as_ref().is_some_and(|f| f.address == addr) {
            return false;
        }
        self.recipients.retain(|r| r.address != addr);
        self.meta.recipients.retain(|r| r.address != addr);
        true
    }
}

/// One row of `learn_log`, ready to insert.
#[derive(Debug, Clone)]
struct LogRow {
    tenant: String,
    newest_ts: i64,
    index_ps: Vec<Vec<u8>>,
    body: Vec<u8>,
}

fn index_ps<'a>(
    keys: &Keys,
    key_id: u32,
    tenant: &str,
    addrs: impl Iterator<Item = &'a str>,
) -> Vec<Vec<u8>> {
    let set: HashSet<Vec<u8>> = addrs
        .filter(|a| !a.is_empty())
        .map(|a| keys.pseudonym_bytes_with(key_id, tenant, a).to_vec())
        .collect();
    let mut v: Vec<_> = set.into_iter().collect();
    v.sort();
    v
}

fn seal_events(keys: &Keys, events: &[WireEvent]) -> Result<Vec<u8>, PgError> {
    let json = serde_json::to_vec(events).map_err(|e| PgError::Corrupt(e.to_string()))?;
    let sealed = keys.seal(&json);
    if sealed.is_empty() {
        return Err(PgError::Corrupt("sealing failed (no current key)".into()));
    }
    Ok(sealed)
}

fn open_events(keys: &Keys, body: &[u8]) -> Result<Vec<WireEvent>, PgError> {
    let plain = keys.open(body)?;
    serde_json::from_slice(&plain).map_err(|e| PgError::Corrupt(e.to_string()))
}

fn log_rows(keys: &Keys, key_id: u32, events: &[WireEvent]) -> Result<Vec<LogRow>, PgError> {
    let mut by_tenant: HashMap<&str, Vec<WireEvent>> = HashMap::new();
    for ev in events {
        by_tenant
            .entry(ev.tenant.as_str())
            .or_default()
            .push(ev.clone());
    }
    let mut rows = Vec::with_capacity(by_tenant.len());
    for (tenant, evs) in by_tenant {
        rows.push(LogRow {
            tenant: tenant.to_string(),
            newest_ts: evs.iter().map(|e| e.ts).max().unwrap_or(0),
            index_ps: index_ps(keys, key_id, tenant, evs.iter().flat_map(|e| e.addresses())),
            body: seal_events(keys, &evs)?,
        });
    }
    rows.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(rows)
}

/// A tenant graph in serialisable form (for `graph_snapshot`).
#[derive(Serialize, Deserialize)]
struct Snap {
    addrs: Vec<AddrEntry>,
    domains: Vec<(Arc<str>, DomainStats)>,
    edges: Vec<(Id, Id, Edge)>,
    co: Vec<(Id, Id, Id, CoEdge)>,
    sdom: Vec<(Id, Id, Edge)>,
    threads: Vec<(u64, ThreadEntry)>,
    subjects: Vec<(u64, ThreadEntry)>,
    /// Attachment lists without dates, in snapshots written before
    /// 2026-12-03 (read only; `attd` replaces it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    att: Vec<(Id, u64, Vec<Id>)>,
    /// Attachment lists, each recipient with when it was last sent to.
    #[serde(default)]
    attd: Vec<(Id, u64, Vec<AttRecipient>)>,
    /// Absent in snapshots written before discards were recorded.
    #[serde(default)]
    discards: Vec<(Id, Id, u32)>,
}

/// Seal a tenant graph: JSON, zlib, AES-256-GCM.
pub fn seal_graph(keys: &Keys, g: &Graph) -> Result<Vec<u8>, PgError> {
    use std::io::Write;
    let snap = Snap {
        addrs: g.addrs.iter().map(AddrEntry::without_adjacency).collect(),
        domains: g.domains.clone(),
        edges: g.edges_iter().map(|(s, r, e)| (s, r, *e)).collect(),
        co: g.co_iter().collect(),
        sdom: g.sdom_iter().map(|(s, d, e)| (s, d, *e)).collect(),
        threads: g.threads.iter().map(|(k, v)| (*k, v.clone())).collect(),
        subjects: g.subjects.iter().map(|(k, v)| (*k, v.clone())).collect(),
        att: Vec::new(),
        attd: g
            .attachments
            .iter()
            .map(|((s, h), v)| (*s, *h, v.clone()))
            .collect(),
        discards: g.discards.iter().map(|((s, r), t)| (*s, *r, *t)).collect(),
    };
    let json = serde_json::to_vec(&snap).map_err(|e| PgError::Corrupt(e.to_string()))?;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&json)
        .map_err(|e| PgError::Corrupt(e.to_string()))?;
    let packed = z.finish().map_err(|e| PgError::Corrupt(e.to_string()))?;
    let sealed = keys.seal(&packed);
    if sealed.is_empty() {
        return Err(PgError::Corrupt("sealing failed (no current key)".into()));
    }
    Ok(sealed)
}

/// Open a sealed tenant graph.
pub fn open_graph(keys: &Keys, body: &[u8], cfg: &GraphConfig) -> Result<Graph, PgError> {
    use std::io::Read;
    let packed = keys.open(body)?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&packed[..])
        .read_to_end(&mut json)
        .map_err(|e| PgError::Corrupt(e.to_string()))?;
    let s: Snap = serde_json::from_slice(&json).map_err(|e| PgError::Corrupt(e.to_string()))?;
    let mut g = Graph::new(cfg.clone());
    for (i, (d, _)) in s.domains.iter().enumerate() {
        g.domain_ids.insert(d.clone(), i as Id);
    }
    g.addrs = s.addrs;
    g.rebuild_index();
    g.domains = s.domains;
    for (a, b, e) in s.edges {
        g.load_edge(a, b, e);
    }
    for (x, a, b, c) in s.co {
        g.load_co(x, a, b, c);
    }
    for (a, d, e) in s.sdom {
        g.load_sdom(a, d, e);
    }
    g.finish_load();
    g.threads = RecentIndex::from_loaded(s.threads);
    g.subjects = RecentIndex::from_loaded(s.subjects);
    // An undated list's recipients take the last time the sender wrote to
    // them at all (kept no longer than that association).
    let undated: Vec<_> = s
        .att
        .into_iter()
        .map(|(a, h, v)| {
            let list = v
                .into_iter()
                .map(|r| AttRecipient {
                    id: r,
                    last: g.edge_ids(a, r).map_or(0, |e| e.last),
                })
                .collect::<Vec<_>>();
            ((a, h), list)
        })
        .collect();
    g.attachments = undated.into_iter().collect();
    g.attachments
        .extend(s.attd.into_iter().map(|(a, h, v)| ((a, h), v)));
    g.discards = s
        .discards
        .into_iter()
        .map(|(a, r, t)| ((a, r), t))
        .collect();
    Ok(g)
}

// ---------------------------------------------------------------------------
// Reading the whole store

/// Everything the database holds, as graphs.
struct Loaded {
    graphs: HashMap<String, Graph>,
    last_seq: i64,
    epoch: i64,
    batch_ids: HashSet<Vec<u8>>,
}

async fn load_all(pool: &Pool, keys: Arc<Keys>, cfg: &GraphConfig) -> Result<Loaded, PgError> {
    let mut c = pool.get().await?;
    let tx = timed(
        c.build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start(),
    )
    .await?;
    let meta = timed(tx.query("SELECT key, value FROM store_meta", &[])).await?;
    let mut epoch = 0i64;
    let mut snapshot_seq = 0i64;
    for r in &meta {
        match r.try_get::<_, &str>(0)? {
            "epoch" => epoch = r.try_get(1)?,
            "snapshot_seq" => snapshot_seq = r.try_get(1)?,
            _ => {}
        }
    }
    let snaps = timed(tx.query("SELECT tenant, body FROM graph_snapshot", &[])).await?;
    let rows = timed(tx.query(
        "SELECT seq, batch_id, body FROM learn_log ORDER BY seq",
        &[],
    ))
    .await?;
    timed(tx.commit()).await?;
    drop(c);
    let mut snap_bodies = Vec::with_capacity(snaps.len());
    for r in snaps {
        snap_bodies.push((r.try_get::<_, String>(0)?, r.try_get::<_, Vec<u8>>(1)?));
    }
    let mut log = Vec::with_capacity(rows.len());
    for r in rows {
        log.push((
            r.try_get::<_, i64>(0)?,
            r.try_get::<_, Vec<u8>>(1)?,
            r.try_get::<_, Vec<u8>>(2)?,
        ));
    }
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let mut graphs = HashMap::new();
        for (t, body) in snap_bodies {
            graphs.insert(t, open_graph(&keys, &body, &cfg)?);
        }
        let mut last_seq = snapshot_seq;
        let mut batch_ids = HashSet::new();
        for (seq, id, body) in log {
            for ev in open_events(&keys, &body)? {
                ev.apply(&mut graphs, &cfg);
            }
            batch_ids.insert(id);
            last_seq = last_seq.max(seq);
        }
        Ok(Loaded {
            graphs,
            last_seq,
            epoch,
            batch_ids,
        })
    })
    .await
    .map_err(|e| PgError::Task(e.to_string()))?
}

// ---------------------------------------------------------------------------
// The relay side: learning, refreshing, outages

/// A learning batch waiting to be written.
struct Pending {
    id: [u8; 16],
    rows: Vec<LogRow>,
    events: Vec<WireEvent>,
    bytes: usize,
}

/// Local state shared by the learning task and erasures.
#[derive(Default)]
struct Local {
    /// Learnt since the last batch was formed.
    current: Vec<WireEvent>,
    /// Formed batches not yet in the database, oldest first.
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    /// Highest log `seq` applied to memory.
    last_seq: i64,
    epoch: i64,
    /// Whether the last database operation succeeded.
    up: bool,
    dropped: u64,
}

/// A relay's connection to the shared store.
pub struct PgGraph {
    pool: Pool,
    keys: Arc<Keys>,
    key_id: u32,
    /// Random id of this relay process; its own log rows are already in
    /// memory and are skipped when tailing.
    origin: i64,
    graph_cfg: GraphConfig,
    budget: usize,
    local: Mutex<Local>,
    /// Serialises this relay's database work (flush, refresh, erasure,
    /// compaction) so memory and log position stay consistent.
    io: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PgGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgGraph")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Connect, migrate the schema, load the graph and start the learning
/// task: the PostgreSQL variant of [`GraphHandle::open`].
pub async fn open_handle(
    cfg: &Config,
    keys: Arc<Keys>,
) -> Result<(GraphHandle, tokio::task::JoinHandle<()>), PgError> {
    let pool = pool_for(&cfg.store).await?;
    let version = migrate_schema(&pool).await?;
    let key_id = store_key_id(&pool, &keys).await?;
    let loaded = load_all(&pool, keys.clone(), &cfg.graph).await?;
    let edges: usize = loaded.graphs.values().map(Graph::edge_count).sum();
    tracing::info!(
        schema = version,
        tenants = loaded.graphs.len(),
        edges,
        seq = loaded.last_seq,
        "Association graph loaded from the shared store."
    );
    metrics::gauge!(STORE_UP).set(1.0);
    let pg = Arc::new(PgGraph {
        pool,
        keys: keys.clone(),
        key_id,
        origin: rand::random::<i64>(),
        graph_cfg: cfg.graph.clone(),
        budget: cfg.store.outage_queue,
        local: Mutex::new(Local {
            last_seq: loaded.last_seq,
            epoch: loaded.epoch,
            up: true,
            ..Default::default()
        }),
        io: tokio::sync::Mutex::new(()),
    });
    let graphs = Arc::new(RwLock::new(loaded.graphs));
    let (tx, rx) = mpsc::channel(cfg.store.queue.max(1));
    let progress = Arc::new(LearnProgress::default());
    let task = tokio::spawn(learn_task(
        rx,
        progress.clone(),
        graphs.clone(),
        pg.clone(),
        Timers {
            batch: cfg.store.batch_interval,
            refresh: cfg.store.refresh_interval,
            retention_days: cfg.privacy.retention_days,
            retention: cfg.privacy.retention_interval,
        },
    ));
    Ok((
        GraphHandle {
            graphs,
            tx,
            progress,
            tenants: Arc::new(cfg.tenants.clone()),
            persist: None,
            shared: Some(pg),
            keys,
        },
        task,
    ))
}

struct Timers {
    batch: Duration,
    refresh: Duration,
    retention_days: u32,
    retention: Duration,
}

type Graphs = Arc<RwLock<HashMap<String, Graph>>>;

async fn learn_task(
    mut rx: mpsc::Receiver<super::LearnEvent>,
    progress: Arc<LearnProgress>,
    graphs: Graphs,
    pg: Arc<PgGraph>,
    t: Timers,
) {
    let mut buf = Vec::with_capacity(256);
    let mut batch_tick = tokio::time::interval(t.batch);
    batch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh_tick = tokio::time::interval(t.refresh);
    refresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention_tick = tokio::time::interval(t.retention);
    retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, 256) => {
                if n == 0 {
                    pg.form_batch();
                    pg.flush().await;
                    break;
                }
                let evs: Vec<WireEvent> = buf.drain(..).map(WireEvent::from_learn).collect();
                {
                    let mut map = graphs.write().unwrap_or_else(|p| p.into_inner());
                    for ev in &evs {
                        ev.apply(&mut map, &pg.graph_cfg);
                    }
                }
                pg.lock_local().current.extend(evs);
                progress.applied(n);
            }
            _ = batch_tick.tick() => {
                pg.form_batch();
                pg.flush().await;
            }
            _ = refresh_tick.tick() => pg.refresh(&graphs).await,
            _ = retention_tick.tick() => {
                let Some(cutoff) = retention_cutoff(t.retention_days, unix_now()) else { continue };
                let counts = {
                    let mut map = graphs.write().unwrap_or_else(|p| p.into_inner());
                    purge_all(&mut map, None, cutoff).0
                };
                log_purge(cutoff, &counts);
                if let Err(e) = pg.compact(cutoff).await {
                    pg.note_error("Compacting the shared store failed", &e);
                }
            }
        }
    }
}

impl PgGraph {
    fn lock_local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This relay's random origin id.
    pub fn origin(&self) -> i64 {
        self.origin
    }

    /// Bytes of learning waiting for the database.
    pub fn queued_bytes(&self) -> usize {
        self.lock_local().queued_bytes
    }

    /// Batches dropped since start because the outage budget was full.
    pub fn dropped_batches(&self) -> u64 {
        self.lock_local().dropped
    }

    /// Whether the last database operation succeeded.
    pub fn is_up(&self) -> bool {
        self.lock_local().up
    }

    /// Highest learning-log position applied to memory.
    pub fn position(&self) -> i64 {
        self.lock_local().last_seq
    }

    fn note_error(&self, what: &str, e: &PgError) {
        metrics::counter!(STORE_ERRORS).increment(1);
        let mut l = self.lock_local();
        if l.up {
            tracing::error!(error = %e, queued_bytes = l.queued_bytes,
                "{what}: shared store unreachable; scoring from memory, learning queued.");
        } else {
            tracing::debug!(error = %e, "{what}; shared store still unreachable.");
        }
        l.up = false;
        metrics::gauge!(STORE_UP).set(0.0);
    }

    fn note_ok(&self) {
        let mut l = self.lock_local();
        if !l.up {
            tracing::info!(
                queued_bytes = l.queued_bytes,
                dropped_batches = l.dropped,
                "Shared store reachable again; catching up."
            );
            l.up = true;
            metrics::gauge!(STORE_UP).set(1.0);
        }
    }

    /// Turn what was learnt since the last call into a batch with a fresh
    /// id; drop the oldest batches beyond the outage budget.
    fn form_batch(&self) {
        let mut l = self.lock_local();
        if l.current.is_empty() {
            return;
        }
        let events = std::mem::take(&mut l.current);
        let rows = match log_rows(&self.keys, self.key_id, &events) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, events = events.len(), "Encoding a learning batch failed; batch dropped.");
                return;
            }
        };
        let bytes = rows.iter().map(|r| r.body.len() * 2 + 64).sum();
        l.queue.push_back(Pending {
            id: rand::random(),
            rows,
            events,
            bytes,
        });
        l.queued_bytes += bytes;
        while l.queued_bytes > self.budget && l.queue.len() > 1 {
            if let Some(old) = l.queue.pop_front() {
                l.queued_bytes -= old.bytes;
                l.dropped += 1;
                metrics::counter!(OUTAGE_DROPPED).increment(1);
                tracing::warn!(
                    events = old.events.len(),
                    budget = self.budget,
                    "Outage queue over budget; oldest learning batch dropped."
                );
            }
        }
        metrics::gauge!(OUTAGE_QUEUED_BYTES).set(l.queued_bytes as f64);
    }

    /// Write queued batches, oldest first; stop at the first failure.
    async fn flush(&self) {
        let _io = self.io.lock().await;
        loop {
            let next = {
                let l = self.lock_local();
                l.queue.front().map(|p| (p.id, p.rows.clone()))
            };
            let Some((id, rows)) = next else { break };
            match self.insert_batch(&id, &rows).await {
                Ok(()) => {
                    self.note_ok();
                    let mut l = self.lock_local();
                    if l.queue.front().is_some_and(|p| p.id == id) {
                        if let Some(p) = l.queue.pop_front() {
                            l.queued_bytes -= p.bytes;
                        }
                    }
                    metrics::gauge!(OUTAGE_QUEUED_BYTES).set(l.queued_bytes as f64);
                }
                Err(e) => {
                    self.note_error("Writing learning to the shared store failed", &e);
                    break;
                }
            }
        }
    }

    async fn insert_batch(&self, id: &[u8; 16], rows: &[LogRow]) -> Result<(), PgError> {
        append_rows(&self.pool, self.origin, id, rows).await
    }

    /// Apply what other relays learnt since the last refresh; reload the
    /// whole graph after an erasure, a migration or a compaction past this
    /// relay's position.
    async fn refresh(&self, graphs: &Graphs) {
        let _io = self.io.lock().await;
        match self.refresh_inner(graphs).await {
            Ok(()) => self.note_ok(),
            Err(e) => self.note_error("Reading the shared store failed", &e),
        }
    }

    async fn refresh_inner(&self, graphs: &Graphs) -> Result<(), PgError> {
        let (last, epoch) = {
            let l = self.lock_local();
            (l.last_seq, l.epoch)
        };
        let mut c = self.pool.get().await?;
        let tx = timed(
            c.build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start(),
        )
        .await?;
        let meta = timed(tx.query("SELECT key, value FROM store_meta", &[])).await?;
        let mut db_epoch = 0;
        let mut snapshot_seq = 0;
        for r in &meta {
            match r.try_get::<_, &str>(0)? {
                "epoch" => db_epoch = r.try_get(1)?,
                "snapshot_seq" => snapshot_seq = r.try_get(1)?,
                _ => {}
            }
        }
        if db_epoch != epoch || snapshot_seq > last {
            timed(tx.commit()).await?;
            drop(c);
            return self.reload(graphs).await;
        }
        let rows = timed(tx.query(
            "SELECT seq, origin, body FROM learn_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&last, &TAIL_LIMIT],
        ))
        .await?;
        timed(tx.commit()).await?;
        drop(c);
        if rows.is_empty() {
            return Ok(());
        }
        let mut evs = Vec::new();
        let mut new_last = last;
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            let origin: i64 = r.try_get(1)?;
            new_last = new_last.max(seq);
            if origin != self.origin {
                evs.extend(open_events(&self.keys, r.try_get::<_, &[u8]>(2)?)?);
            }
        }
        {
            let mut map = graphs.write().unwrap_or_else(|p| p.into_inner());
            for ev in &evs {
                ev.apply(&mut map, &self.graph_cfg);
            }
        }
        self.lock_local().last_seq = new_last;
        tracing::debug!(
            rows = rows.len(),
            events = evs.len(),
            seq = new_last,
            "Applied learning from other relays."
        );
        Ok(())
    }

    /// Rebuild memory from the database, then re-apply this relay's
    /// learning that is not in the database yet.
    async fn reload(&self, graphs: &Graphs) -> Result<(), PgError> {
        let mut loaded = load_all(&self.pool, self.keys.clone(), &self.graph_cfg).await?;
        let mut l = self.lock_local();
        // Batches whose write succeeded but whose reply was lost are in the
        // database already.
        let before = l.queue.len();
        l.queue
            .retain(|p| !loaded.batch_ids.contains(p.id.as_slice()));
        if l.queue.len() != before {
            l.queued_bytes = l.queue.iter().map(|p| p.bytes).sum();
        }
        for p in &l.queue {
            for ev in &p.events {
                ev.apply(&mut loaded.graphs, &self.graph_cfg);
            }
        }
        for ev in &l.current {
            ev.apply(&mut loaded.graphs, &self.graph_cfg);
        }
        l.last_seq = loaded.last_seq;
        l.epoch = loaded.epoch;
        let edges: usize = loaded.graphs.values().map(Graph::edge_count).sum();
        *graphs.write().unwrap_or_else(|p| p.into_inner()) = loaded.graphs;
        tracing::info!(
            seq = l.last_seq,
            epoch = l.epoch,
            edges,
            "Association graph reloaded from the shared store."
        );
        Ok(())
    }

    /// Fold the log into the snapshots, purging associations last seen
    /// before `cutoff`; one relay at a time.
    async fn compact(&self, cutoff: Ts) -> Result<(), PgError> {
        let _io = self.io.lock().await;
        compact(&self.pool, self.keys.clone(), &self.graph_cfg, Some(cutoff)).await?;
        Ok(())
    }

    /// Erase `addr` everywhere: this relay's memory and queue, the log,
    /// the snapshots and the held messages in the database. Every other
    /// relay reloads on its next refresh.
    pub(crate) async fn forget(
        &self,
        h: &GraphHandle,
        addr: &str,
    ) -> Result<ForgetReport, PgError> {
        let _io = self.io.lock().await;
        {
            let mut l = self.lock_local();
            l.current.retain_mut(|ev| ev.scrub(addr));
            let keys = self.keys.clone();
            let key_id = self.key_id;
            for p in l.queue.iter_mut() {
                p.events.retain_mut(|ev| ev.scrub(addr));
                if let Ok(rows) = log_rows(&keys, key_id, &p.events) {
                    p.rows = rows;
                }
            }
        }
        let mut report = {
            let mut map = h.graphs.write().unwrap_or_else(|p| p.into_inner());
            super::forget_all(&mut map, None, addr).0
        };
        let db = forget_in_db(
            &self.pool,
            self.keys.clone(),
            self.key_id,
            &self.graph_cfg,
            addr,
        )
        .await?;
        report.records += db.rows;
        report.tenants = report.tenants.max(db.tenants);
        Ok(report)
    }
}

/// Append one learning batch to the log; idempotent: a batch id already
/// in the log is not inserted again. `origin` is the writing relay's id.
pub async fn append_events(
    pool: &Pool,
    keys: &Keys,
    key_id: u32,
    origin: i64,
    id: &[u8; 16],
    events: &[WireEvent],
) -> Result<(), PgError> {
    let rows = log_rows(keys, key_id, events)?;
    append_rows(pool, origin, id, &rows).await
}

async fn append_rows(
    pool: &Pool,
    origin: i64,
    id: &[u8; 16],
    rows: &[LogRow],
) -> Result<(), PgError> {
    let mut c = pool.get().await?;
    let tx = timed(c.transaction()).await?;
    timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])).await?;
    let stmt = timed(tx.prepare(
        "INSERT INTO learn_log (batch_id, tenant, origin, newest_ts, index_ps, body)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (batch_id, tenant) DO NOTHING",
    ))
    .await?;
    let id = id.as_slice();
    for r in rows {
        timed(tx.execute(
            &stmt,
            &[&id, &r.tenant, &origin, &r.newest_ts, &r.index_ps, &r.body],
        ))
        .await?;
    }
    timed(tx.commit()).await?;
    Ok(())
}

/// What an erasure changed in the database.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DbForget {
    /// Tenants in which the address was found.
    pub tenants: usize,
    /// Log rows, snapshots and held messages changed or deleted.
    pub rows: usize,
    /// Held messages deleted.
    pub held: usize,
}

/// Erase `addr` from the database (log rows, snapshots, held messages) in
/// one transaction and bump the epoch so every relay reloads.
pub async fn forget_in_db(
    pool: &Pool,
    keys: Arc<Keys>,
    key_id: u32,
    cfg: &GraphConfig,
    addr: &str,
) -> Result<DbForget, PgError> {
    let mut out = DbForget::default();
    let mut c = pool.get().await?;
    let tx = timed(c.transaction()).await?;
    timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])).await?;
    let tenants = timed(tx.query(
        "SELECT tenant FROM graph_snapshot UNION SELECT DISTINCT tenant FROM learn_log
         UNION SELECT DISTINCT tenant FROM held",
        &[],
    ))
    .await?;
    for t in tenants {
        let tenant: String = t.try_get(0)?;
        let p = keys.pseudonym_bytes_with(key_id, &tenant, addr).to_vec();
        let mut found = false;
        let rows = timed(tx.query(
            "SELECT seq, body FROM learn_log WHERE tenant = $1 AND index_ps @> ARRAY[$2::bytea]",
            &[&tenant, &p],
        ))
        .await?;
        for r in rows {
            found = true;
            let seq: i64 = r.try_get(0)?;
            let mut evs = open_events(&keys, r.try_get::<_, &[u8]>(1)?)?;
            evs.retain_mut(|ev| ev.scrub(addr));
            if evs.is_empty() {
                timed(tx.execute("DELETE FROM learn_log WHERE seq = $1", &[&seq])).await?;
            } else {
                let ps = index_ps(
                    &keys,
                    key_id,
                    &tenant,
                    evs.iter().flat_map(|e| e.addresses()),
                );
                let body = seal_events(&keys, &evs)?;
                timed(tx.execute(
                    "UPDATE learn_log SET body = $2, index_ps = $3 WHERE seq = $1",
                    &[&seq, &body, &ps],
                ))
                .await?;
            }
            out.rows += 1;
        }
        if let Some(r) = timed(tx.query_opt(
            "SELECT body FROM graph_snapshot WHERE tenant = $1",
            &[&tenant],
        ))
        .await?
        {
            let mut g = open_graph(&keys, r.try_get::<_, &[u8]>(0)?, cfg)?;
            if g.forget(addr).is_some() {
                found = true;
                let body = seal_graph(&keys, &g)?;
                timed(tx.execute(
                    "UPDATE graph_snapshot SET body = $2, updated_at = now() WHERE tenant = $1",
                    &[&tenant, &body],
                ))
                .await?;
                out.rows += 1;
            }
        }
        let held = timed(tx.execute(
            "DELETE FROM held WHERE tenant = $1 AND index_ps @> ARRAY[$2::bytea]",
            &[&tenant, &p],
        ))
        .await? as usize;
        if held > 0 {
            found = true;
            out.held += held;
            out.rows += held;
        }
        if found {
            out.tenants += 1;
        }
    }
    timed(tx.execute(
        "UPDATE store_meta SET value = value + 1 WHERE key = 'epoch'",
        &[],
    ))
    .await?;
    timed(tx.commit()).await?;
    tracing::info!(
        target: "audit",
        tenants = out.tenants,
        rows = out.rows,
        held = out.held,
        "Erasure of one address performed in the shared store."
    );
    Ok(out)
}

/// Fold every log row into the tenant snapshots (purging associations last
/// seen before `cutoff`), delete the folded rows, and bump the epoch so
/// every relay reloads. Skipped (returns `false`) while another relay
/// compacts.
pub async fn compact(
    pool: &Pool,
    keys: Arc<Keys>,
    cfg: &GraphConfig,
    cutoff: Option<Ts>,
) -> Result<bool, PgError> {
    let mut c = pool.get().await?;
    let tx = timed(c.transaction()).await?;
    let got: bool = timed(tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&COMPACT_LOCK]))
        .await?
        .try_get(0)?;
    if !got {
        return Ok(false);
    }
    timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])).await?;
    let snaps = timed(tx.query("SELECT tenant, body FROM graph_snapshot", &[])).await?;
    let rows = timed(tx.query("SELECT seq, body FROM learn_log ORDER BY seq", &[])).await?;
    let mut snap_bodies = Vec::new();
    for r in snaps {
        snap_bodies.push((r.try_get::<_, String>(0)?, r.try_get::<_, Vec<u8>>(1)?));
    }
    let mut log = Vec::new();
    let mut max_seq = 0i64;
    for r in rows {
        let seq: i64 = r.try_get(0)?;
        max_seq = max_seq.max(seq);
        log.push(r.try_get::<_, Vec<u8>>(1)?);
    }
    let cfg2 = cfg.clone();
    let k = keys.clone();
    let had_log = !log.is_empty();
    let (sealed, purged): (Vec<(String, Vec<u8>)>, bool) = tokio::task::spawn_blocking(move || {
        let mut graphs: HashMap<String, Graph> = HashMap::new();
        for (t, body) in snap_bodies {
            graphs.insert(t, open_graph(&k, &body, &cfg2)?);
        }
        for body in log {
            for ev in open_events(&k, &body)? {
                ev.apply(&mut graphs, &cfg2);
            }
        }
        let mut purged = false;
        if let Some(cut) = cutoff {
            let (counts, _) = purge_all(&mut graphs, None, cut);
            purged = counts
                .iter()
                .any(|(_, c)| c.edges + c.co_pairs + c.threads + c.addresses > 0);
        }
        if !had_log && !purged {
            return Ok::<_, PgError>((Vec::new(), false));
        }
        let mut out = Vec::new();
        for (t, g) in &graphs {
            out.push((t.clone(), seal_graph(&k, g)?));
        }
        Ok::<_, PgError>((out, purged))
    })
    .await
    .map_err(|e| PgError::Task(e.to_string()))??;
    if !had_log && !purged {
        // Nothing to fold or purge: no write, no reload anywhere.
        timed(tx.commit()).await?;
        return Ok(true);
    }
    for (t, body) in &sealed {
        timed(tx.execute(
            "INSERT INTO graph_snapshot (tenant, body) VALUES ($1, $2)
             ON CONFLICT (tenant) DO UPDATE SET body = EXCLUDED.body, updated_at = now()",
            &[t, body],
        ))
        .await?;
    }
    timed(tx.execute("DELETE FROM learn_log WHERE seq <= $1", &[&max_seq])).await?;
    timed(tx.execute(
        "UPDATE store_meta SET value = GREATEST(value, $1) WHERE key = 'snapshot_seq'",
        &[&max_seq],
    ))
    .await?;
    // Every relay reloads, so that memory matches the purged snapshots.
    timed(tx.execute(
        "UPDATE store_meta SET value = value + 1 WHERE key = 'epoch'",
        &[],
    ))
    .await?;
    timed(tx.commit()).await?;
    tracing::info!(
        tenants = sealed.len(),
        folded_to = max_seq,
        "Shared store compacted."
    );
    Ok(true)
}

/// Write graphs (from another store) as the shared store's snapshots.
/// Refuses a store that already holds learning. Bumps the epoch so running
/// relays reload.
pub async fn write_graphs(
    pool: &Pool,
    keys: &Keys,
    graphs: &HashMap<String, Graph>,
) -> Result<usize, PgError> {
    let mut c = pool.get().await?;
    let tx = timed(c.transaction()).await?;
    timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])).await?;
    let n: i64 = timed(tx.query_one(
        "SELECT (SELECT count(*) FROM learn_log) + (SELECT count(*) FROM graph_snapshot)",
        &[],
    ))
    .await?
    .try_get(0)?;
    if n > 0 {
        return Err(PgError::NotEmpty);
    }
    let mut names: Vec<&String> = graphs.keys().collect();
    names.sort();
    for t in &names {
        if let Some(g) = graphs.get(*t) {
            let body = seal_graph(keys, g)?;
            timed(tx.execute(
                "INSERT INTO graph_snapshot (tenant, body) VALUES ($1, $2)",
                &[t, &body],
            ))
            .await?;
        }
    }
    timed(tx.execute(
        "UPDATE store_meta SET value = value + 1 WHERE key = 'epoch'",
        &[],
    ))
    .await?;
    timed(tx.commit()).await?;
    Ok(names.len())
}

/// Open the shared store for an admin command: connect, migrate, load.
pub async fn open_admin(
    cfg: &Config,
    keys: Arc<Keys>,
) -> Result<(Pool, u32, HashMap<String, Graph>), PgError> {
    let pool = pool_for(&cfg.store).await?;
    migrate_schema(&pool).await?;
    let key_id = store_key_id(&pool, &keys).await?;
    let loaded = load_all(&pool, keys, &cfg.graph).await?;
    Ok((pool, key_id, loaded.graphs))
}

/// The key id the store's pseudonyms use (see [`open_admin`]).
pub async fn key_id(pool: &Pool, keys: &Keys) -> Result<u32, PgError> {
    store_key_id(pool, keys).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::graph::memory::attachment_key;

    fn learn(g: &mut Graph, att: Option<&str>, ts: i64) {
        crate::graph::memory::learn_one(g, "alice@a.test", "carol@x.test", att, ts);
    }

    /// Snapshots keep each attachment recipient's date; one written before
    /// they had dates (`att`, ids only) opens with each recipient dated by
    /// the sender's last message to them.
    #[test]
    fn snapshots_keep_attachment_dates_and_open_undated_ones() {
        use std::io::{Read, Write};
        let keys = Keys::from_secret([9; 32]);
        let cfg = GraphConfig::default();
        let mut g = Graph::new(cfg.clone());
        learn(&mut g, Some("plan.pdf"), 1_000);
        learn(&mut g, None, 5_000);
        let (a, c) = (g.id("alice@a.test").unwrap(), g.id("carol@x.test").unwrap());
        let key = (a, attachment_key("plan.pdf"));
        let sealed = seal_graph(&keys, &g).unwrap();
        let back = open_graph(&keys, &sealed, &cfg).unwrap();
        assert_eq!(
            back.attachments[&key],
            [AttRecipient { id: c, last: 1_000 }]
        );
        // The same snapshot in the older form.
        let mut json = Vec::new();
        flate2::read::ZlibDecoder::new(&keys.open(&sealed).unwrap()[..])
            .read_to_end(&mut json)
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v.get("att").is_none());
        let undated: Vec<serde_json::Value> = v["attd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let ids: Vec<serde_json::Value> = e[2]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].clone())
                    .collect();
                serde_json::json!([e[0], e[1], ids])
            })
            .collect();
        v["att"] = serde_json::Value::Array(undated);
        v.as_object_mut().unwrap().remove("attd");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&serde_json::to_vec(&v).unwrap()).unwrap();
        let old = keys.seal(&z.finish().unwrap());
        let back = open_graph(&keys, &old, &cfg).unwrap();
        assert_eq!(
            back.attachments[&key],
            [AttRecipient { id: c, last: 5_000 }]
        );
    }
}
