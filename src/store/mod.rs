//! Graph stores: where the association graph lives between restarts, and the
//! handle the relay uses to read it and to learn.
//!
//! Reads for scoring always come from memory ([`GraphHandle::with_view`]).
//! Learning goes through a bounded queue to a background task
//! ([`GraphHandle::learn`]) so it never delays an SMTP reply.

mod committer;
pub mod embedded;
pub mod pg_spool;
mod pg_tls;
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::config::store::StoreBackend;
use crate::config::{Config, TenantsConfig};
use crate::graph::memory::{PurgeCounts, RecordKey};
use crate::graph::{Graph, GraphConfig, GraphView, LearnInput, Ts};
use crate::message::{MessageMeta, Recipient};
use crate::privacy::Keys;

pub use embedded::{Batch, EmbeddedStore};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("graph store: {0}")]
    Db(#[from] redb::Error),
    #[error("graph store {0} is in use by another process (a running daemon?)")]
    InUse(String),
    #[error("graph store {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("graph store was written with key id {0}, which the key file does not hold")]
    MissingKey(u32),
    #[error("graph store is damaged: {0}")]
    Corrupt(String),
    #[error("graph store task failed: {0}")]
    Task(String),
    #[error("shared graph store: {0}")]
    Shared(#[from] postgres::PgError),
    #[error("this command reads the embedded store only; with store.backend = \"{0}\" use serve, forget, export or migrate")]
    NotEmbedded(&'static str),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// A graph store backend. Only the embedded store exists today; a shared
/// (PostgreSQL) backend is meant to become another variant.
#[derive(Debug)]
pub enum Store {
    Embedded(EmbeddedStore),
}

impl Store {
    /// Open the configured store. Blocking.
    pub fn open(cfg: &Config, keys: Arc<Keys>) -> Result<Store, StoreError> {
        match cfg.store.backend {
            StoreBackend::Embedded => {
                Ok(Store::Embedded(EmbeddedStore::open(&cfg.store.path, keys)?))
            }
            StoreBackend::Postgres => Err(StoreError::NotEmbedded("postgres")),
        }
    }

    /// Open an embedded store file directly. Blocking.
    pub fn open_embedded(path: &Path, keys: Arc<Keys>) -> Result<Store, StoreError> {
        Ok(Store::Embedded(EmbeddedStore::open(path, keys)?))
    }

    /// Load every tenant's graph. Blocking.
    pub fn load(&self, cfg: &GraphConfig) -> Result<HashMap<String, Graph>, StoreError> {
        match self {
            Store::Embedded(s) => s.load(cfg),
        }
    }

    /// Encode records of one tenant from memory (deletes for absent ones).
    pub fn encode(
        &self,
        batch: &mut Batch,
        tenant: &str,
        g: &Graph,
        records: impl IntoIterator<Item = RecordKey>,
    ) {
        match self {
            Store::Embedded(s) => s.encode(batch, tenant, g, records),
        }
    }

    /// Commit durably, all or nothing. Blocking.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.commit(batch),
        }
    }

    fn prime(&self, tenant: &str, g: &Graph, ids: &[crate::graph::memory::Id]) {
        match self {
            Store::Embedded(s) => s.prime(tenant, g, ids),
        }
    }

    /// [`EmbeddedStore::rewrite_live`]. Blocking.
    pub fn rewrite_live(
        &self,
        path: &Path,
        graphs: &RwLock<HashMap<String, Graph>>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.rewrite_live(path, graphs),
        }
    }

    /// Record counts per table.
    pub fn table_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Store::Embedded(s) => s.table_counts(),
        }
    }

    /// Replace the store file with a fresh one holding only live records
    /// (after an erasure, so no freed page keeps erased data). Blocking.
    pub fn rewrite(
        self,
        cfg: &Config,
        graphs: &HashMap<String, Graph>,
    ) -> Result<Store, StoreError> {
        match self {
            Store::Embedded(s) => Ok(Store::Embedded(s.rewrite(&cfg.store.path, graphs)?)),
        }
    }

    /// Rewrite everything under the current key (after `Keys::rotate`).
    pub fn rekey(self, cfg: &Config, graphs: &HashMap<String, Graph>) -> Result<Store, StoreError> {
        match self {
            Store::Embedded(s) => Ok(Store::Embedded(s.rekey(&cfg.store.path, graphs)?)),
        }
    }
}

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForgetReport {
    /// Tenants in which the address was known.
    pub tenants: usize,
    /// Records deleted or updated.
    pub records: usize,
}

/// Erase an address from every tenant in memory; encode the store changes.
pub fn forget_all(
    graphs: &mut HashMap<String, Graph>,
    store: Option<&Store>,
    addr: &str,
) -> (ForgetReport, Batch) {
    let mut report = ForgetReport::default();
    let mut batch = Batch::default();
    let mut names: Vec<String> = graphs.keys().cloned().collect();
    names.sort();
    for t in names {
        let Some(g) = graphs.get_mut(&t) else {
            continue;
        };
        let Some(id) = g.id(addr) else { continue };
        if let Some(st) = store {
            st.prime(&t, g, &[id]);
        }
        if let Some((_, touched)) = g.forget(addr) {
            report.tenants += 1;
            report.records += touched.len();
            if let Some(st) = store {
                st.encode(&mut batch, &t, g, touched);
            }
        }
    }
    (report, batch)
}

/// Retention: purge associations last seen before `cutoff` in every
/// tenant; encode the store changes.
pub fn purge_all(
    graphs: &mut HashMap<String, Graph>,
    store: Option<&Store>,
    cutoff: Ts,
) -> (Vec<(String, PurgeCounts)>, Batch) {
    let mut out = Vec::new();
    let mut batch = Batch::default();
    let mut names: Vec<String> = graphs.keys().cloned().collect();
    names.sort();
    for t in names {
        let Some(g) = graphs.get_mut(&t) else {
            continue;
        };
        let (counts, touched) = g.purge_older_than(cutoff);
        if let Some(st) = store {
            st.encode(&mut batch, &t, g, touched);
        }
        out.push((t, counts));
    }
    (out, batch)
}

/// Log a retention run: cutoff date and counts per tenant.
pub fn log_purge(cutoff: Ts, counts: &[(String, PurgeCounts)]) {
    let cutoff = crate::graph::memory::format_ts(cutoff);
    for (t, c) in counts {
        tracing::info!(
            tenant = %t,
            %cutoff,
            edges = c.edges,
            co_pairs = c.co_pairs,
            threads = c.threads,
            addresses = c.addresses,
            discards = c.discards,
            "Retention removed associations last seen before the cutoff."
        );
    }
}

fn unix_now() -> Ts {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as Ts)
        .unwrap_or(0)
}

/// Retention cutoff for `retention_days` before `now` (`None`: keep forever).
pub fn retention_cutoff(retention_days: u32, now: Ts) -> Option<Ts> {
    (retention_days > 0).then(|| now - retention_days as Ts * 86400)
}

/// Persistence state shared by the learning task and erasures.
struct Persist {
    store: Store,
    /// The store file (embedded store), for rewrites after an erasure.
    path: std::path::PathBuf,
    /// Serialises encode + commit so that an older snapshot never lands
    /// after a newer one (a commit in flight holds it until it has landed).
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// Where the learning task's commits run (at a lower CPU priority).
    committer: committer::Committer,
}

/// What a [`LearnEvent`] teaches the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearnKind {
    /// The message was delivered: its sender writes to these recipients.
    #[default]
    Delivered,
    /// The message was held and then discarded: these recipients were
    /// wrong for this sender ([`Graph::learn_discard`]).
    Discarded,
}

/// One message to learn from, owned so it can cross the queue.
#[derive(Debug, Clone)]
pub struct LearnEvent {
    pub tenant: String,
    pub meta: MessageMeta,
    /// Every recipient (header recipients and envelope-only ones as Bcc);
    /// for a discard, the recipients judged wrong.
    pub recipients: Vec<Recipient>,
    pub ts: Ts,
    pub kind: LearnKind,
}

/// Apply one learn event (delivered or discarded) to a tenant map.
pub(crate) fn apply_event(
    graphs: &mut HashMap<String, Graph>,
    cfg: &GraphConfig,
    tenant: &str,
    meta: &MessageMeta,
    recipients: &[Recipient],
    ts: Ts,
    kind: LearnKind,
) {
    let g = || Graph::new(cfg.clone());
    match kind {
        LearnKind::Delivered => {
            if let Some(input) = LearnInput::from_meta(meta, recipients, ts) {
                graphs
                    .entry(tenant.to_string())
                    .or_insert_with(g)
                    .learn(&input);
            }
        }
        LearnKind::Discarded => {
            if let Some(sender) = meta.sender() {
                let rcpts: Vec<&str> = recipients.iter().map(|r| r.address.as_str()).collect();
                graphs
                    .entry(tenant.to_string())
                    .or_insert_with(g)
                    .learn_discard(sender, &rcpts, ts);
            }
        }
    }
}

impl LearnEvent {
    /// The learn input of this event (`None` without a sender).
    pub fn input(&self) -> Option<LearnInput<'_>> {
        LearnInput::from_meta(&self.meta, &self.recipients, self.ts)
    }

    /// Apply to an in-memory tenant map.
    pub fn apply(&self, graphs: &mut HashMap<String, Graph>, cfg: &GraphConfig) {
        apply_event(
            graphs,
            cfg,
            &self.tenant,
            &self.meta,
            &self.recipients,
            self.ts,
            self.kind,
        );
    }

    /// Every record applying this event changed (call after [`Self::apply`]).
    pub fn touched(&self, g: &Graph, out: &mut HashSet<RecordKey>) {
        match self.kind {
            LearnKind::Delivered => {
                if let Some(input) = self.input() {
                    g.touched_by(&input, out);
                }
            }
            LearnKind::Discarded => {
                if let Some(sender) = self.meta.sender() {
                    let rcpts: Vec<&str> =
                        self.recipients.iter().map(|r| r.address.as_str()).collect();
                    g.touched_by_discard(sender, &rcpts, out);
                }
            }
        }
    }
}

/// How far the learning task has got: events queued and events applied
/// to the graph in memory, so that an erasure can first wait for what was
/// queued before it (see [`GraphHandle::forget`]).
#[derive(Default)]
pub(crate) struct LearnProgress {
    queued: AtomicU64,
    applied: AtomicU64,
    advanced: tokio::sync::Notify,
}

/// How often [`GraphHandle::view_when_free`] tries the graph again when no
/// release woke it.
const VIEW_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// How long an erasure waits for the learning queued before it.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl LearnProgress {
    /// The learning task applied `n` more events.
    pub(crate) fn applied(&self, n: usize) {
        self.applied.fetch_add(n as u64, Ordering::AcqRel);
        self.advanced.notify_waiters();
    }

    /// Wait until every event queued before this call has been applied;
    /// false when that took longer than `limit` (a stopped task).
    async fn settle(&self, limit: std::time::Duration) -> bool {
        let target = self.queued.load(Ordering::Acquire);
        let wait = async {
            loop {
                let advanced = self.advanced.notified();
                tokio::pin!(advanced);
                advanced.as_mut().enable();
                if self.applied.load(Ordering::Acquire) >= target {
                    return;
                }
                advanced.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Shared, cheaply clonable handle on every tenant's graph.
#[derive(Clone)]
pub struct GraphHandle {
    graphs: Arc<RwLock<HashMap<String, Graph>>>,
    tx: mpsc::Sender<LearnEvent>,
    progress: Arc<LearnProgress>,
    tenants: Arc<TenantsConfig>,
    persist: Option<Arc<Persist>>,
    /// The shared PostgreSQL store, when configured.
    shared: Option<Arc<postgres::PgGraph>>,
    /// The privacy keys (an ephemeral random key for an in-memory graph).
    keys: Arc<Keys>,
}

/// Why a learn event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("learning queue full")]
    Full,
    #[error("learning task stopped")]
    Closed,
}

/// `f` over a tenant's graph, or over an empty one for a tenant with no
/// history yet.
fn view_of<R>(
    map: &HashMap<String, Graph>,
    tenant: &str,
    f: impl FnOnce(&dyn GraphView) -> R,
) -> R {
    match map.get(tenant) {
        Some(g) => f(g),
        None => f(&Graph::default()),
    }
}

impl GraphHandle {
    /// A purely in-memory graph (nothing persisted) with its learning task.
    /// The task ends when every handle is dropped.
    pub fn in_memory(
        cfg: GraphConfig,
        tenants: TenantsConfig,
        queue: usize,
    ) -> (GraphHandle, tokio::task::JoinHandle<()>) {
        let graphs: Arc<RwLock<HashMap<String, Graph>>> = Arc::default();
        let (tx, mut rx) = mpsc::channel::<LearnEvent>(queue.max(1));
        let g = graphs.clone();
        let progress = Arc::new(LearnProgress::default());
        let p = progress.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                let n = batch.len();
                if let Ok(mut map) = g.write() {
                    for ev in batch.drain(..) {
                        ev.apply(&mut map, &cfg);
                    }
                }
                batch.clear();
                p.applied(n);
            }
        });
        (
            GraphHandle {
                graphs,
                tx,
                progress,
                tenants: Arc::new(tenants),
                persist: None,
                shared: None,
                keys: Arc::new(Keys::from_secret(rand::random())),
            },
            task,
        )
    }

    /// Open the configured store, load every tenant's graph into memory and
    /// start the learning task. Learning is applied to memory at once and
    /// committed to the store every `store.batch_interval` (each commit
    /// durable, all or nothing): a crash (even `kill -9`) loses at most the
    /// learning of the last interval plus what was still queued. The
    /// retention job runs every `privacy.retention_interval`. The task
    /// commits what is pending and ends when every handle is dropped.
    pub async fn open(
        cfg: &Config,
        keys: Arc<Keys>,
    ) -> Result<(GraphHandle, tokio::task::JoinHandle<()>), StoreError> {
        if cfg.store.backend == StoreBackend::Postgres {
            return Ok(postgres::open_handle(cfg, keys).await?);
        }
        let c = cfg.clone();
        let k = keys.clone();
        let (store, loaded) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&c, k)?;
            let graphs = store.load(&c.graph)?;
            Ok::<_, StoreError>((store, graphs))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let edges: usize = loaded.values().map(Graph::edge_count).sum();
        tracing::info!(
            tenants = loaded.len(),
            edges,
            "Association graph loaded from the store."
        );
        let graphs = Arc::new(RwLock::new(loaded));
        let persist = Arc::new(Persist {
            store,
            path: cfg.store.path.clone(),
            flush_lock: Arc::new(tokio::sync::Mutex::new(())),
            committer: committer::Committer::start()
                .map_err(|e| StoreError::Io("commit thread".into(), e))?,
        });
        let (tx, rx) = mpsc::channel::<LearnEvent>(cfg.store.queue.max(1));
        let progress = Arc::new(LearnProgress::default());
        let task = tokio::spawn(learn_task(
            (rx, progress.clone()),
            graphs.clone(),
            persist.clone(),
            cfg.graph.clone(),
            cfg.store.batch_interval,
            cfg.privacy.retention_days,
            cfg.privacy.retention_interval,
        ));
        Ok((
            GraphHandle {
                graphs,
                tx,
                progress,
                tenants: Arc::new(cfg.tenants.clone()),
                persist: Some(persist),
                shared: None,
                keys,
            },
            task,
        ))
    }

    /// Erase every association of `addr` in every tenant, in memory and
    /// durably in the store, before returning. Learning queued before the
    /// call (mail delivered just before the request) is applied first and
    /// erased with the rest, not learnt again afterwards. When the address was known,
    /// the store file is then rewritten with only the live records (as
    /// `misdirectd forget` does), so no freed page keeps the erased ones.
    /// Learning goes on in memory meanwhile and is committed afterwards.
    /// Logs an audit line that does not name the address.
    pub async fn forget(&self, addr: &str) -> Result<ForgetReport, StoreError> {
        self.settle_learning().await;
        if let Some(pg) = &self.shared {
            return Ok(pg.forget(self, addr).await?);
        }
        let guard = match &self.persist {
            Some(p) => Some(p.flush_lock.lock().await),
            None => None,
        };
        // Erasing visits every address's co-recipient pairs and every
        // thread and subject entry, under the write lock: on a blocking
        // thread, as the commit and the rewrite are.
        let (graphs, persist, addr) = (self.graphs.clone(), self.persist.clone(), addr.to_string());
        let report = tokio::task::spawn_blocking(move || {
            let (report, batch) = {
                let mut map = graphs.write().unwrap_or_else(|p| p.into_inner());
                forget_all(&mut map, persist.as_ref().map(|p| &p.store), &addr)
            };
            if let Some(p) = &persist {
                p.store.commit(batch)?;
                if report.tenants > 0 {
                    p.store.rewrite_live(&p.path, &graphs)?;
                }
            }
            Ok::<_, StoreError>(report)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        drop(guard);
        tracing::info!(
            target: "audit",
            tenants = report.tenants,
            records = report.records,
            "Erasure of one address performed."
        );
        Ok(report)
    }

    /// The privacy keys this handle pseudonymises and seals with.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The tenant a sender address belongs to.
    pub fn tenant_for(&self, sender: &str) -> String {
        self.tenants.tenant_for(sender).to_string()
    }

    /// Run `f` with a read view of one tenant's graph (an empty graph when the
    /// tenant has learnt nothing yet).
    pub fn with_view<R>(&self, tenant: &str, f: impl FnOnce(&dyn GraphView) -> R) -> R {
        let map = self.graphs.read().unwrap_or_else(|p| p.into_inner());
        view_of(&map, tenant, f)
    }

    /// Like [`GraphHandle::with_view`], for an async worker: while a writer
    /// holds the graph this task waits without holding a thread, woken when
    /// the learning task releases the graph after a batch (and every
    /// [`VIEW_RETRY`] at the latest, for the rarer writers: a retention run,
    /// an erasure, a store reload).
    pub async fn view_when_free<R>(&self, tenant: &str, f: impl FnOnce(&dyn GraphView) -> R) -> R {
        loop {
            let released = self.progress.advanced.notified();
            tokio::pin!(released);
            // Registered before the attempt, so a release in between wakes it.
            released.as_mut().enable();
            match self.graphs.try_read() {
                Ok(map) => return view_of(&map, tenant, f),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    return view_of(&p.into_inner(), tenant, f)
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            let _ = tokio::time::timeout(VIEW_RETRY, released).await;
        }
    }

    /// Queue a message for learning; never waits.
    pub fn learn(&self, ev: LearnEvent) -> Result<(), LearnError> {
        self.tx.try_send(ev).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LearnError::Full,
            mpsc::error::TrySendError::Closed(_) => LearnError::Closed,
        })?;
        self.progress.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Queue a message for learning, waiting while the queue is full (for
    /// bulk learning such as `import`; the relay uses [`Self::learn`]).
    pub async fn learn_wait(&self, ev: LearnEvent) -> Result<(), LearnError> {
        self.tx.send(ev).await.map_err(|_| LearnError::Closed)?;
        self.progress.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Wait (up to [`SETTLE_TIMEOUT`]) until the learning queued so far is
    /// in the graph, so that an erasure also removes what was delivered
    /// just before it instead of having it learnt again afterwards.
    async fn settle_learning(&self) {
        if !self.progress.settle(SETTLE_TIMEOUT).await {
            tracing::warn!(
                "Learning queued before an erasure was not applied within {SETTLE_TIMEOUT:?}; erasing without waiting for it."
            );
        }
    }

    /// The shared PostgreSQL store behind this handle, if any.
    pub fn shared_store(&self) -> Option<&Arc<postgres::PgGraph>> {
        self.shared.as_ref()
    }

    /// Shared access to the graphs, for stores and admin commands.
    pub fn graphs(&self) -> &Arc<RwLock<HashMap<String, Graph>>> {
        &self.graphs
    }
}

/// Records touched by learning and not yet committed, per tenant.
type Pending = HashMap<String, HashSet<RecordKey>>;

/// What a commit on the commit thread returns: how many records it wrote.
type CommitResult = Result<Result<usize, StoreError>, committer::CommitterError>;

/// A commit handed to the commit thread whose outcome is not in yet: the
/// records it encoded (pending again if it fails) and its result.
struct InFlight {
    work: Arc<Pending>,
    done: std::pin::Pin<Box<dyn std::future::Future<Output = CommitResult> + Send>>,
}

/// Take a commit's outcome: on failure its records are pending again, for
/// the next round (together with whatever learning touched since).
fn commit_outcome(done: CommitResult, work: &Pending, pending: &mut Pending) {
    let failed = match done {
        Ok(Ok(records)) => {
            tracing::debug!(records, "Graph changes committed.");
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(error = %failed, "Committing graph changes failed; will retry.");
    for (tenant, keys) in work {
        pending.entry(tenant.clone()).or_default().extend(keys);
    }
}

/// Wait for the commit in flight, if any, and take its outcome.
async fn settle_commit(inflight: &mut Option<InFlight>, pending: &mut Pending) {
    if let Some(f) = inflight.take() {
        let done = f.done.await;
        commit_outcome(done, &f.work, pending);
    }
}

/// Encode what is pending and commit it, on the commit thread.
///
/// Encoding reads the graph (its read lock held; scoring reads alongside)
/// and learning waits for it, so that this task never blocks a worker on
/// the write lock behind that read. Then learning goes on while the store
/// writes and syncs the batch: with `wait` false (the periodic tick) the
/// commit is left in flight in `inflight`, and a tick that finds it, or
/// the store busy otherwise (an erasure rewriting the file), leaves
/// `pending` for a later one. With `wait` true (shutdown, before a
/// retention run) every commit has landed on return. Commits hold
/// `flush_lock` to their end, so that an older snapshot never lands after
/// a newer one, nor after an erasure.
async fn flush(
    graphs: &Arc<RwLock<HashMap<String, Graph>>>,
    persist: &Arc<Persist>,
    pending: &mut Pending,
    inflight: &mut Option<InFlight>,
    wait: bool,
) {
    let guard = if wait {
        persist.flush_lock.clone().lock_owned().await
    } else {
        match persist.flush_lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => return,
        }
    };
    // A commit of ours still in flight held the lock to its end: it has
    // ended (its outcome is at most on its way). Its records, if it
    // failed, go out again with this one.
    settle_commit(inflight, pending).await;
    if pending.values().all(HashSet::is_empty) {
        return;
    }
    let work = Arc::new(std::mem::take(pending));
    let (graphs, p, w) = (graphs.clone(), persist.clone(), work.clone());
    let (released_tx, released_rx) = tokio::sync::oneshot::channel::<()>();
    // On the commit thread, not the blocking pool: this burst of CPU (once
    // per `batch_interval`) yields to the relay's threads.
    let done = persist.committer.run(move || {
        let _guard = guard;
        let mut batch = Batch::default();
        {
            let map = graphs.read().unwrap_or_else(|p| p.into_inner());
            for (t, keys) in w.iter() {
                if let Some(g) = map.get(t) {
                    p.store.encode(&mut batch, t, g, keys.iter().copied());
                }
            }
        }
        let _ = released_tx.send(());
        let records = batch.len();
        p.store.commit(batch).map(|()| records)
    });
    let mut f = InFlight {
        work,
        done: Box::pin(done),
    };
    // (Also over when the job failed before it released the graph.)
    let _ = released_rx.await;
    if wait {
        let done = (&mut f.done).await;
        commit_outcome(done, &f.work, pending);
    } else {
        *inflight = Some(f);
    }
}

/// The learning task's queue and where it reports its progress.
type Inbox = (mpsc::Receiver<LearnEvent>, Arc<LearnProgress>);

async fn learn_task(
    (mut rx, progress): Inbox,
    graphs: Arc<RwLock<HashMap<String, Graph>>>,
    persist: Arc<Persist>,
    cfg: GraphConfig,
    interval: std::time::Duration,
    retention_days: u32,
    retention_interval: std::time::Duration,
) {
    let mut pending: Pending = HashMap::new();
    let mut inflight: Option<InFlight> = None;
    let mut batch: Vec<LearnEvent> = Vec::with_capacity(256);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention = tokio::time::interval(retention_interval);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    flush(&graphs, &persist, &mut pending, &mut inflight, true).await;
                    break;
                }
                {
                    let mut map = graphs.write().unwrap_or_else(|p| p.into_inner());
                    let start = std::time::Instant::now();
                    for ev in batch.drain(..) {
                        ev.apply(&mut map, &cfg);
                        if let Some(g) = map.get(&ev.tenant) {
                            // The tenant's name is copied only for its first event.
                            if !pending.contains_key(&ev.tenant) {
                                pending.insert(ev.tenant.clone(), HashSet::new());
                            }
                            if let Some(set) = pending.get_mut(&ev.tenant) {
                                ev.touched(g, set);
                            }
                        }
                    }
                    drop(map);
                    // Scoring waits while this lock is held: say when a
                    // batch held it long enough to show in reply times.
                    let locked = start.elapsed();
                    if locked >= std::time::Duration::from_millis(5) {
                        tracing::debug!(
                            graph_locked_ms = locked.as_millis() as u64,
                            events = n,
                            "A learning batch held the graph's write lock."
                        );
                    }
                }
                progress.applied(n);
            }
            _ = tick.tick() => flush(&graphs, &persist, &mut pending, &mut inflight, false).await,
            done = async {
                match inflight.as_mut() {
                    Some(f) => (&mut f.done).await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                if let Some(f) = inflight.take() {
                    commit_outcome(done, &f.work, &mut pending);
                }
            }
            _ = retention.tick() => {
                let Some(cutoff) = retention_cutoff(retention_days, unix_now()) else { continue };
                flush(&graphs, &persist, &mut pending, &mut inflight, true).await;
                let _guard = persist.flush_lock.lock().await;
                // The purge walks every association, under the write lock:
                // on a blocking thread, so that no async worker is held.
                // (Learning, this task, waits for it.)
                let (g, p) = (graphs.clone(), persist.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let start = std::time::Instant::now();
                    let (counts, b) = {
                        let mut map = g.write().unwrap_or_else(|p| p.into_inner());
                        purge_all(&mut map, Some(&p.store), cutoff)
                    };
                    let locked = start.elapsed();
                    p.store.commit(b).map(|()| (counts, locked))
                })
                .await;
                match done {
                    Ok(Ok((counts, locked))) => {
                        log_purge(cutoff, &counts);
                        tracing::debug!(
                            graph_locked_ms = locked.as_millis() as u64,
                            "Retention run committed."
                        );
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "Committing the retention run failed."),
                    Err(e) => tracing::error!(error = %e, "Retention commit task failed."),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn delivered(h: &GraphHandle, raw: &str) -> LearnEvent {
        let norm = crate::address::Normalizer::new(Default::default());
        let meta = MessageMeta::parse(raw.as_bytes(), &norm);
        LearnEvent {
            tenant: h.tenant_for(meta.sender().unwrap()),
            recipients: meta.recipients.clone(),
            meta,
            ts: 1_700_000_000,
            kind: LearnKind::Delivered,
        }
    }

    /// Mail delivered just before an erasure is still waiting in the
    /// learning queue when the erasure starts (here: the task is kept busy
    /// with an earlier message by a writer holding the graph). The erasure
    /// waits for it and erases it too, instead of the task learning it
    /// again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erasure_also_erases_learning_queued_before_it() {
        let (h, _task) =
            GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 16);
        let tenant = h.tenant_for("alice@x.test");
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let graphs = h.graphs.clone();
        let writer = std::thread::spawn(move || {
            let _guard = graphs.write().unwrap();
            locked_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        });
        locked_rx.recv().unwrap();
        let msg =
            |to: &str| format!("From: alice@x.test\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n");
        // The task takes the first message and waits for the graph...
        h.learn(delivered(&h, &msg("carol@y.test"))).unwrap();
        while h.tx.capacity() < h.tx.max_capacity() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // ...so the second one stays in the queue.
        h.learn(delivered(&h, &msg("bob@y.test"))).unwrap();
        let forget = tokio::spawn({
            let h = h.clone();
            async move { h.forget("bob@y.test").await }
        });
        // Let the erasure start, then free the graph. (A blocking sleep:
        // an erasure that went straight for the lock would hold up a
        // worker, and the timers might not run.)
        std::thread::sleep(std::time::Duration::from_millis(50));
        go_tx.send(()).unwrap();
        writer.join().unwrap();
        let report = forget.await.unwrap().unwrap();
        assert!(h.progress.settle(SETTLE_TIMEOUT).await);
        assert_eq!(
            report.tenants, 1,
            "the queued mail was not in the graph when erased"
        );
        h.with_view(&tenant, |g| {
            assert!(g.edge("alice@x.test", "bob@y.test").is_none());
            assert_eq!(g.address("bob@y.test").senders, 0);
            // The rest of the sender's history stays.
            assert!(g.edge("alice@x.test", "carol@y.test").is_some());
        });
    }

    /// While the store is slow to write (here: a write transaction the test
    /// holds, so the periodic commit waits in it), learning goes on: a
    /// message queued meanwhile is in the graph at once. Once the store is
    /// free, every message is committed and read back after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn learning_goes_on_while_a_commit_waits_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.store.path = dir.path().join("graph.redb");
        cfg.store.batch_interval = std::time::Duration::from_millis(20);
        // (No retention run: it waits for its commit, by design.)
        cfg.privacy.retention_days = 0;
        let keys = Arc::new(Keys::from_secret(rand::random()));
        let (h, task) = GraphHandle::open(&cfg, keys.clone()).await.unwrap();
        let tenant = h.tenant_for("alice@x.test");
        let msg =
            |to: &str| format!("From: alice@x.test\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n");
        h.learn(delivered(&h, &msg("carol@y.test"))).unwrap();
        assert!(h.progress.settle(SETTLE_TIMEOUT).await);
        let persist = h.persist.clone().unwrap();
        let Store::Embedded(store) = &persist.store;
        let held = store.hold_writes();
        // Something to commit whether or not carol's commit came before
        // the hold: the next tick (within 20 ms) has a commit that waits.
        h.learn(delivered(&h, &msg("bob@y.test"))).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            persist.flush_lock.try_lock().is_err(),
            "no commit is waiting for the store"
        );
        h.learn(delivered(&h, &msg("dave@y.test"))).unwrap();
        assert!(
            h.progress.settle(std::time::Duration::from_secs(5)).await,
            "learning waited for the commit"
        );
        h.with_view(&tenant, |g| {
            assert!(g.edge("alice@x.test", "dave@y.test").is_some());
        });
        drop(held);
        drop((h, persist));
        task.await.unwrap();
        let (h, _task) = GraphHandle::open(&cfg, keys).await.unwrap();
        h.with_view(&tenant, |g| {
            for to in ["carol@y.test", "bob@y.test", "dave@y.test"] {
                assert!(g.edge("alice@x.test", to).is_some(), "{to}");
            }
        });
    }

    /// A task reading, through [`GraphHandle::view_when_free`], how many
    /// messages a@x.test has sent.
    fn spawn_view(h: &GraphHandle) -> tokio::task::JoinHandle<u32> {
        let (h, tenant) = (h.clone(), h.tenant_for("a@x.test"));
        tokio::spawn(async move {
            h.view_when_free(&tenant, |g| g.sender("a@x.test").messages)
                .await
        })
    }

    /// While a writer holds the graph, a view waits without holding the
    /// worker (on a one-thread runtime this test's own task keeps running),
    /// and reads once the learning task says it released the graph.
    #[tokio::test(flavor = "current_thread")]
    // The test plays the writer: it holds the lock while the view waits.
    #[allow(clippy::await_holding_lock)]
    async fn a_view_waits_for_a_writer_without_holding_the_worker() {
        let (h, _task) =
            GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 16);
        h.learn(delivered(&h, "From: a@x.test\r\nTo: b@y.test\r\n\r\n"))
            .unwrap();
        h.settle_learning().await;
        let guard = h.graphs.write().unwrap();
        let view = spawn_view(&h);
        // Several retry periods pass with the writer still there.
        tokio::time::sleep(VIEW_RETRY * 10).await;
        assert!(!view.is_finished());
        drop(guard);
        h.progress.applied(0);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), view).await;
        assert_eq!(read.unwrap().unwrap(), 1);
    }

    /// A writer that does not announce its release (a retention run, an
    /// erasure) still lets a waiting view through, at its next retry.
    #[tokio::test(flavor = "current_thread")]
    // The test plays the writer: it holds the lock while the view waits.
    #[allow(clippy::await_holding_lock)]
    async fn a_view_reads_after_an_unannounced_release() {
        let (h, _task) =
            GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 16);
        let guard = h.graphs.write().unwrap();
        let view = spawn_view(&h);
        tokio::time::sleep(VIEW_RETRY * 3).await;
        assert!(!view.is_finished());
        drop(guard);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), view).await;
        assert_eq!(read.unwrap().unwrap(), 0);
    }
}
