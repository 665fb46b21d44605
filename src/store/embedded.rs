//! Embedded graph store: one redb file, no server.
//!
//! Layout, per tenant `T` (tables `g/T/<kind>`), keys are 16-byte keyed
//! pseudonyms ([`crate::privacy::Keys::pseudonym_bytes_with`]), never
//! addresses:
//! - `addr`: pseudonym(address) -> sealed JSON (address, display names,
//!   counters);
//! - `domain`: pseudonym("@" + domain) -> sealed JSON (domain, counters);
//! - `edge`: pseudonym(sender) ‖ pseudonym(recipient) -> 24 bytes of counts
//!   and times;
//! - `sdom`: pseudonym(sender) ‖ pseudonym("@" + domain) -> 24 bytes;
//! - `co`: pseudonym(sender) ‖ pseudonym(a) ‖ pseudonym(b), the pair in
//!   byte order -> count, last;
//! - `thread`, `subject`: pseudonym("#t"/"#s" + hash) -> sealed (hash,
//!   last, participant pseudonyms);
//! - `att`: pseudonym(sender) ‖ pseudonym("#a" + hash) -> sealed (hash,
//!   recipient pseudonyms);
//! - `discard`: pseudonym(sender) ‖ pseudonym(recipient) -> when a held
//!   message between them was last discarded (4 bytes).
//!
//! Table `meta` holds the tenant list and the key id the pseudonyms use.
//! Every commit is durable (`Durability::Immediate`): redb's copy-on-write
//! B-trees make a commit all-or-nothing, so after a crash the file reopens
//! at the last commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::graph::memory::{AddrEntry, AttRecipient, CoEdge, Edge, Id, RecordKey, ThreadEntry};
use crate::graph::recent::RecentIndex;
use crate::graph::{DomainStats, Graph, GraphConfig};
use crate::privacy::{Keys, Pseudonym, PSEUDONYM_LEN};

/// redb's page cache. Reads for scoring come from memory, so the store
/// only needs pages for loading and for the learning commits; redb's
/// default (1 GiB) would add up to that much to the daemon's resident
/// memory once a large store has been read through.
const CACHE_BYTES: usize = 64 << 20;

/// Records per commit when a store file is rewritten.
const REWRITE_CHUNK: usize = 200_000;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `att` holds attachment lists without dates (stores written before
/// 2026-12-03), read at load and emptied as lists are written again to
/// `attd`, which dates each recipient.
const KINDS: [&str; 10] = [
    "addr", "domain", "edge", "sdom", "co", "thread", "subject", "att", "attd", "discard",
];

fn table_name(tenant: &str, kind: &str) -> String {
    format!("g/{tenant}/{kind}")
}

/// One write: table, key, value (`None` deletes).
type Op = (String, Vec<u8>, Option<Vec<u8>>);

/// A write before its table name is qualified with the tenant.
type KindOp<'a> = (&'a str, Vec<u8>, Option<Vec<u8>>);

type Table = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Encoded changes, ready to commit without touching the in-memory graph.
#[derive(Debug, Default)]
pub struct Batch {
    tenants: Vec<String>,
    ops: Vec<Op>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct AddrRec {
    a: String,
    #[serde(default)]
    n: Vec<String>,
    s: u32,
    r: u32,
    sn: u32,
    fs: u32,
    ls: u32,
    lse: u32,
}

#[derive(Serialize, Deserialize)]
struct DomainRec {
    d: String,
    s: u32,
    a: u32,
    m: u32,
}

fn edge_bytes(e: &Edge) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for x in [e.to, e.cc, e.bcc, e.first, e.last] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&e.weight.to_le_bytes());
    v
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(i..i + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(i..i + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn edge_from(b: &[u8]) -> Option<Edge> {
    if b.len() != 24 {
        return None;
    }
    Some(Edge {
        to: u32_at(b, 0),
        cc: u32_at(b, 4),
        bcc: u32_at(b, 8),
        first: u32_at(b, 12),
        last: u32_at(b, 16),
        weight: f32::from_bits(u32_at(b, 20)),
    })
}

fn ps_at(b: &[u8], i: usize) -> Option<Pseudonym> {
    let s = b.get(i * PSEUDONYM_LEN..(i + 1) * PSEUDONYM_LEN)?;
    let mut p = [0u8; PSEUDONYM_LEN];
    p.copy_from_slice(s);
    Some(p)
}

/// The embedded store.
pub struct EmbeddedStore {
    /// Behind a lock only so that a live rewrite can swap in the new file.
    db: RwLock<Database>,
    keys: Arc<Keys>,
    /// Key id the stored pseudonyms were made with.
    key_id: u32,
    /// Per tenant, id -> pseudonym (ids are never reused, so a forgotten
    /// address keeps its pseudonym here and its records can be deleted).
    cache: Mutex<HashMap<String, Vec<Option<Pseudonym>>>>,
    /// The file still had undated attachment lists (`att`) when loaded
    /// (cleared by a live rewrite): writing a list then also deletes its
    /// undated record.
    legacy_att: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl EmbeddedStore {
    /// Open (or create) the store file. Blocking. Fails with
    /// [`StoreError::InUse`] when another process has it open.
    pub fn open(path: &Path, keys: Arc<Keys>) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(dir.display().to_string(), e))?;
        }
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(path.display().to_string()))
            }
            Err(e) => return Err(StoreError::Db(e.into())),
        };
        restrict(path)?;
        let mut key_id = keys.current_id();
        let wtx = db.begin_write()?;
        {
            let mut meta = wtx.open_table(META)?;
            let stored = meta.get("key_id")?.map(|v| u32_at(v.value(), 0));
            match stored {
                Some(id) => key_id = id,
                None => {
                    meta.insert("key_id", key_id.to_le_bytes().as_slice())?;
                }
            }
        }
        wtx.commit()?;
        if !keys.has_key(key_id) {
            return Err(StoreError::MissingKey(key_id));
        }
        Ok(EmbeddedStore {
            db: RwLock::new(db),
            keys,
            key_id,
            cache: Mutex::new(HashMap::new()),
            legacy_att: Default::default(),
        })
    }

    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Begin a write transaction and keep it: every commit waits until it
    /// is dropped (a store that is slow to write, for tests).
    #[cfg(test)]
    pub(crate) fn hold_writes(&self) -> redb::WriteTransaction {
        #[allow(clippy::unwrap_used)]
        self.db().begin_write().unwrap()
    }

    /// Key id of the stored pseudonyms.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    fn ps(&self, tenant: &str, value: &str) -> Pseudonym {
        self.keys.pseudonym_bytes_with(self.key_id, tenant, value)
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let rtx = self.db().begin_read()?;
        let meta = match rtx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Db(e.into())),
        };
        Ok(match meta.get("tenants")? {
            Some(v) => {
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => Vec::new(),
        })
    }

    /// Load every tenant's graph into memory. Blocking.
    pub fn load(&self, cfg: &GraphConfig) -> Result<HashMap<String, Graph>, StoreError> {
        let mut out = HashMap::new();
        let rtx = self.db().begin_read()?;
        for tenant in self.tenants()? {
            let mut g = Graph::new(cfg.clone());
            let mut ids: HashMap<Pseudonym, Id> = HashMap::new();
            let mut cache: Vec<Option<Pseudonym>> = Vec::new();
            let open = |kind: &str| -> Result<Option<Table>, StoreError> {
                let name = table_name(&tenant, kind);
                match rtx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
                    Ok(t) => Ok(Some(t)),
                    Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                    Err(e) => Err(StoreError::Db(e.into())),
                }
            };
            let corrupt = |what: &str| StoreError::Corrupt(format!("tenant {tenant}: {what}"));
            if let Some(t) = open("addr")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let ps = ps_at(k.value(), 0).ok_or_else(|| corrupt("address key"))?;
                    let plain = self
                        .keys
                        .open(v.value())
                        .map_err(|e| corrupt(&e.to_string()))?;
                    let rec: AddrRec =
                        serde_json::from_slice(&plain).map_err(|e| corrupt(&e.to_string()))?;
                    let id = g.intern(&rec.a);
                    let e: &mut AddrEntry = &mut g.addrs[id as usize];
                    e.names = rec.n.into_iter().map(|n| n.into_boxed_str()).collect();
                    e.sent = rec.s;
                    e.received = rec.r;
                    e.senders = rec.sn;
                    e.first_sent = rec.fs;
                    e.last_sent = rec.ls;
                    e.last_seen = rec.lse;
                    ids.insert(ps, id);
                    cache.push(Some(ps));
                }
            }
            let mut dom_ids: HashMap<Pseudonym, Id> = HashMap::new();
            if let Some(t) = open("domain")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let ps = ps_at(k.value(), 0).ok_or_else(|| corrupt("domain key"))?;
                    let plain = self
                        .keys
                        .open(v.value())
                        .map_err(|e| corrupt(&e.to_string()))?;
                    let rec: DomainRec =
                        serde_json::from_slice(&plain).map_err(|e| corrupt(&e.to_string()))?;
                    let id = g.domains.len() as Id;
                    let d: Arc<str> = Arc::from(rec.d.as_str());
                    g.domain_ids.insert(d.clone(), id);
                    g.domains.push((
                        d,
                        DomainStats {
                            senders: rec.s,
                            addresses: rec.a,
                            messages: rec.m,
                        },
                    ));
                    dom_ids.insert(ps, id);
                }
            }
            let id_of = |b: &[u8], i: usize| ps_at(b, i).and_then(|p| ids.get(&p).copied());
            if let Some(t) = open("edge")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let (Some(s), Some(r), Some(e)) = (
                        id_of(k.value(), 0),
                        id_of(k.value(), 1),
                        edge_from(v.value()),
                    ) else {
                        return Err(corrupt("edge"));
                    };
                    g.load_edge(s, r, e);
                }
            }
            if let Some(t) = open("sdom")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let d = ps_at(k.value(), 1).and_then(|p| dom_ids.get(&p).copied());
                    let (Some(s), Some(d), Some(e)) =
                        (id_of(k.value(), 0), d, edge_from(v.value()))
                    else {
                        return Err(corrupt("sender-domain edge"));
                    };
                    g.load_sdom(s, d, e);
                }
            }
            if let Some(t) = open("co")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let k = k.value();
                    let (Some(s), Some(a), Some(b)) = (id_of(k, 0), id_of(k, 1), id_of(k, 2))
                    else {
                        return Err(corrupt("co-recipient pair"));
                    };
                    let v = v.value();
                    g.load_co(
                        s,
                        a,
                        b,
                        CoEdge {
                            count: u32_at(v, 0),
                            last: u32_at(v, 4),
                        },
                    );
                }
            }
            g.finish_load();
            for kind in ["thread", "subject"] {
                let mut entries = Vec::new();
                if let Some(t) = open(kind)? {
                    for row in t.iter()? {
                        let (_, v) = row?;
                        let plain = self
                            .keys
                            .open(v.value())
                            .map_err(|e| corrupt(&e.to_string()))?;
                        let h = u64_at(&plain, 0);
                        let last = u32_at(&plain, 8);
                        let rest = plain.get(12..).unwrap_or_default();
                        let participants: Vec<Id> = (0..rest.len() / PSEUDONYM_LEN)
                            .filter_map(|i| id_of(rest, i))
                            .collect();
                        entries.push((h, ThreadEntry::new(participants, last)));
                    }
                }
                let index = RecentIndex::from_loaded(entries);
                if kind == "thread" {
                    g.threads = index;
                } else {
                    g.subjects = index;
                }
            }
            // `att` (undated, older stores) first, then `attd`.
            for (kind, dated) in [("att", false), ("attd", true)] {
                let Some(t) = open(kind)? else { continue };
                if !dated && !t.is_empty()? {
                    self.legacy_att.store(true, Ordering::Relaxed);
                }
                let entry = PSEUDONYM_LEN + if dated { 4 } else { 0 };
                for row in t.iter()? {
                    let (k, v) = row?;
                    let Some(s) = id_of(k.value(), 0) else {
                        return Err(corrupt("attachment key"));
                    };
                    let plain = self
                        .keys
                        .open(v.value())
                        .map_err(|e| corrupt(&e.to_string()))?;
                    let h = u64_at(&plain, 0);
                    let rest = plain.get(8..).unwrap_or_default();
                    let list: Vec<AttRecipient> = rest
                        .chunks_exact(entry)
                        .filter_map(|e| {
                            let id = id_of(e, 0)?;
                            // Undated: each recipient takes the last time the
                            // sender wrote to them at all, so the entry is
                            // kept no longer than that association.
                            let last = if dated {
                                u32_at(e, PSEUDONYM_LEN)
                            } else {
                                g.edge_ids(s, id).map_or(0, |e| e.last)
                            };
                            Some(AttRecipient { id, last })
                        })
                        .collect();
                    g.attachments.insert((s, h), list);
                }
            }
            if let Some(t) = open("discard")? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let v = v.value();
                    let (Some(s), Some(r), Ok(ts)) = (
                        id_of(k.value(), 0),
                        id_of(k.value(), 1),
                        <[u8; 4]>::try_from(v),
                    ) else {
                        return Err(corrupt("discarded pair"));
                    };
                    g.discards.insert((s, r), u32::from_le_bytes(ts));
                }
            }
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), cache);
            out.insert(tenant, g);
        }
        Ok(out)
    }

    /// Pseudonym of an address id (cached; ids are never reused).
    fn id_ps(
        &self,
        cache: &mut Vec<Option<Pseudonym>>,
        tenant: &str,
        g: &Graph,
        id: Id,
    ) -> Option<Pseudonym> {
        let i = id as usize;
        if cache.len() <= i {
            cache.resize(i + 1, None);
        }
        if let Some(p) = cache[i] {
            return Some(p);
        }
        let addr = g.address_of(id).filter(|a| !a.is_empty())?;
        let p = self.ps(tenant, addr);
        cache[i] = Some(p);
        Some(p)
    }

    /// Make sure the pseudonyms of these ids are cached (call before
    /// forgetting them, so their records can still be found).
    pub fn prime(&self, tenant: &str, g: &Graph, ids: &[Id]) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = c.entry(tenant.to_string()).or_default();
        for id in ids {
            self.id_ps(cache, tenant, g, *id);
        }
    }

    /// Encode the current in-memory state of these records of one tenant.
    /// Records absent from memory become deletes. CPU only (HMAC, AES).
    pub fn encode(
        &self,
        batch: &mut Batch,
        tenant: &str,
        g: &Graph,
        records: impl IntoIterator<Item = RecordKey>,
    ) {
        if !batch.tenants.iter().any(|t| t == tenant) {
            batch.tenants.push(tenant.to_string());
        }
        let mut caches = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = caches.entry(tenant.to_string()).or_default();
        let dom_ps = |d: Id| -> Option<Pseudonym> {
            let name = &g.domains.get(d as usize)?.0;
            Some(self.ps(tenant, &format!("@{name}")))
        };
        let hash_ps = |tag: &str, h: u64| self.ps(tenant, &format!("{tag}{h:016x}"));
        let legacy_att = self.legacy_att.load(Ordering::Relaxed);
        for rec in records {
            let op: Option<KindOp<'_>> = match rec {
                RecordKey::Addr(id) => self.id_ps(cache, tenant, g, id).map(|p| {
                    let val = g
                        .addrs
                        .get(id as usize)
                        .filter(|e| !e.address.is_empty())
                        .and_then(|e| {
                            let rec = AddrRec {
                                a: e.address.to_string(),
                                n: e.names.iter().map(|n| n.to_string()).collect(),
                                s: e.sent,
                                r: e.received,
                                sn: e.senders,
                                fs: e.first_sent,
                                ls: e.last_sent,
                                lse: e.last_seen,
                            };
                            serde_json::to_vec(&rec).ok().map(|j| self.keys.seal(&j))
                        });
                    ("addr", p.to_vec(), val)
                }),
                RecordKey::Domain(d) => dom_ps(d).map(|p| {
                    let val = g.domains.get(d as usize).and_then(|(name, st)| {
                        let rec = DomainRec {
                            d: name.to_string(),
                            s: st.senders,
                            a: st.addresses,
                            m: st.messages,
                        };
                        serde_json::to_vec(&rec).ok().map(|j| self.keys.seal(&j))
                    });
                    ("domain", p.to_vec(), val)
                }),
                RecordKey::Edge(s, r) => {
                    match (
                        self.id_ps(cache, tenant, g, s),
                        self.id_ps(cache, tenant, g, r),
                    ) {
                        (Some(a), Some(b)) => {
                            Some(("edge", [a, b].concat(), g.edge_ids(s, r).map(edge_bytes)))
                        }
                        _ => None,
                    }
                }
                RecordKey::SenderDomain(s, d) => match (self.id_ps(cache, tenant, g, s), dom_ps(d))
                {
                    (Some(a), Some(b)) => {
                        Some(("sdom", [a, b].concat(), g.sdom_ids(s, d).map(edge_bytes)))
                    }
                    _ => None,
                },
                RecordKey::Co(s, a, b) => match (
                    self.id_ps(cache, tenant, g, s),
                    self.id_ps(cache, tenant, g, a),
                    self.id_ps(cache, tenant, g, b),
                ) {
                    (Some(ps), Some(pa), Some(pb)) => Some((
                        "co",
                        // Pair order by pseudonym, not by id: ids differ
                        // between runs, the stored key must not.
                        [ps, pa.min(pb), pa.max(pb)].concat(),
                        g.co_ids(s, a, b)
                            .map(|c| [c.count.to_le_bytes(), c.last.to_le_bytes()].concat()),
                    )),
                    _ => None,
                },
                RecordKey::Thread(h) | RecordKey::Subject(h) => {
                    let (kind, tag, map) = if matches!(rec, RecordKey::Thread(_)) {
                        ("thread", "#t", &g.threads)
                    } else {
                        ("subject", "#s", &g.subjects)
                    };
                    let val = map.get(&h).map(|t| {
                        let mut plain =
                            Vec::with_capacity(12 + t.participants.len() * PSEUDONYM_LEN);
                        plain.extend_from_slice(&h.to_le_bytes());
                        plain.extend_from_slice(&t.last.to_le_bytes());
                        for p in &t.participants {
                            if let Some(ps) = self.id_ps(cache, tenant, g, *p) {
                                plain.extend_from_slice(&ps);
                            }
                        }
                        self.keys.seal(&plain)
                    });
                    Some((kind, hash_ps(tag, h).to_vec(), val))
                }
                RecordKey::Attachment(s, h) => self.id_ps(cache, tenant, g, s).map(|ps| {
                    let val = g.attachments.get(&(s, h)).map(|list| {
                        let mut plain = Vec::with_capacity(8 + list.len() * (PSEUDONYM_LEN + 4));
                        plain.extend_from_slice(&h.to_le_bytes());
                        for r in list {
                            if let Some(p) = self.id_ps(cache, tenant, g, r.id) {
                                plain.extend_from_slice(&p);
                                plain.extend_from_slice(&r.last.to_le_bytes());
                            }
                        }
                        self.keys.seal(&plain)
                    });
                    let key = [ps, hash_ps("#a", h)].concat();
                    // The record moves to the dated table: the undated one
                    // (written before 2026-12-03) loses it.
                    if legacy_att {
                        batch
                            .ops
                            .push((table_name(tenant, "att"), key.clone(), None));
                    }
                    ("attd", key, val)
                }),
                RecordKey::Discard(s, r) => {
                    match (
                        self.id_ps(cache, tenant, g, s),
                        self.id_ps(cache, tenant, g, r),
                    ) {
                        (Some(a), Some(b)) => Some((
                            "discard",
                            [a, b].concat(),
                            g.discards.get(&(s, r)).map(|t| t.to_le_bytes().to_vec()),
                        )),
                        _ => None,
                    }
                }
            };
            if let Some((kind, key, val)) = op {
                batch.ops.push((table_name(tenant, kind), key, val));
            }
        }
    }

    /// Commit a batch in one durable transaction (all or nothing). Blocking.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() && batch.tenants.is_empty() {
            return Ok(());
        }
        let mut wtx = self.db().begin_write()?;
        wtx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        {
            let mut meta = wtx.open_table(META)?;
            let mut tenants: Vec<String> = match meta.get("tenants")? {
                Some(v) => serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                None => Vec::new(),
            };
            let before = tenants.len();
            for t in &batch.tenants {
                if !tenants.contains(t) {
                    tenants.push(t.clone());
                }
            }
            if tenants.len() != before {
                let j =
                    serde_json::to_vec(&tenants).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                meta.insert("tenants", j.as_slice())?;
            }
        }
        apply_ops(&wtx, batch.ops)?;
        wtx.commit()?;
        Ok(())
    }

    /// Rewrite every tenant's records under the current key (key
    /// rotation) into a fresh file that replaces `path`. Blocking.
    pub fn rekey(
        self,
        path: &Path,
        graphs: &HashMap<String, Graph>,
    ) -> Result<EmbeddedStore, StoreError> {
        let id = self.keys.current_id();
        self.rewrite_with(path, graphs, id)
    }

    /// Write every live record into a fresh file next to `path` and
    /// atomically replace `path` with it, so that freed pages holding
    /// erased records do not survive in the store file. Blocking.
    pub fn rewrite(
        self,
        path: &Path,
        graphs: &HashMap<String, Graph>,
    ) -> Result<EmbeddedStore, StoreError> {
        let id = self.key_id;
        self.rewrite_with(path, graphs, id)
    }

    fn rewrite_with(
        self,
        path: &Path,
        graphs: &HashMap<String, Graph>,
        key_id: u32,
    ) -> Result<EmbeddedStore, StoreError> {
        let tmp = path.with_extension("rewrite");
        let fresh = self.fresh_at(&tmp, key_id)?;
        fresh.fill(|| graphs)?;
        let keys = self.keys.clone();
        drop(fresh);
        drop(self);
        replace_file(&tmp, path)?;
        EmbeddedStore::open(path, keys)
    }

    /// An empty store file at `tmp` (replacing any left there) for the
    /// pseudonyms of `key_id`.
    fn fresh_at(&self, tmp: &Path, key_id: u32) -> Result<EmbeddedStore, StoreError> {
        if tmp.exists() {
            std::fs::remove_file(tmp).map_err(|e| StoreError::Io(tmp.display().to_string(), e))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(tmp)?;
        restrict(tmp)?;
        let fresh = EmbeddedStore {
            db: RwLock::new(db),
            keys: self.keys.clone(),
            key_id,
            cache: Mutex::new(HashMap::new()),
            legacy_att: Default::default(),
        };
        {
            let db = fresh.db();
            let wtx = db.begin_write()?;
            {
                let mut meta = wtx.open_table(META)?;
                meta.insert("key_id", fresh.key_id.to_le_bytes().as_slice())?;
            }
            wtx.commit()?;
        }
        Ok(fresh)
    }

    /// Write every record of every tenant into this (fresh) store in one
    /// durable transaction, encoding and inserting about
    /// [`REWRITE_CHUNK`] records at a time so that memory stays bounded;
    /// `graphs` is asked for the graphs anew for each chunk (a live rewrite
    /// releases its read lock in between).
    fn fill<G>(&self, graphs: impl Fn() -> G) -> Result<(), StoreError>
    where
        G: std::ops::Deref<Target = HashMap<String, Graph>>,
    {
        let mut tenants: Vec<String> = graphs().keys().cloned().collect();
        tenants.sort();
        let mut wtx = self.db().begin_write()?;
        wtx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        {
            let mut meta = wtx.open_table(META)?;
            let j = serde_json::to_vec(&tenants).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            meta.insert("tenants", j.as_slice())?;
        }
        for t in &tenants {
            let mut next: usize = 0;
            loop {
                let mut batch = Batch::default();
                let done = {
                    let map = graphs();
                    let Some(g) = map.get(t) else { break };
                    let mut records = Vec::with_capacity(REWRITE_CHUNK + 1024);
                    let n = g.address_count();
                    while next < n && records.len() < REWRITE_CHUNK {
                        g.address_records(next as Id, &mut records);
                        next += 1;
                    }
                    let done = next >= n;
                    if done {
                        records.extend(g.shared_records());
                    }
                    self.encode(&mut batch, t, g, records);
                    done
                };
                apply_ops(&wtx, batch.ops)?;
                if done {
                    break;
                }
            }
        }
        wtx.commit()?;
        Ok(())
    }

    /// [`EmbeddedStore::rewrite`] while the daemon runs: the records are
    /// encoded under a read lock of `graphs` (scoring goes on), written to a
    /// fresh file, which then atomically replaces `path` and becomes this
    /// store's database. Callers must keep other commits out meanwhile
    /// (what was learnt after the snapshot must stay pending and be
    /// committed afterwards). Blocking.
    pub fn rewrite_live(
        &self,
        path: &Path,
        graphs: &std::sync::RwLock<HashMap<String, Graph>>,
    ) -> Result<(), StoreError> {
        let tmp = path.with_extension("rewrite");
        let fresh = self.fresh_at(&tmp, self.key_id)?;
        fresh.fill(|| graphs.read().unwrap_or_else(|p| p.into_inner()))?;
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        replace_file(&tmp, path)?;
        *db = fresh.db.into_inner().unwrap_or_else(|p| p.into_inner());
        // The fresh file has only dated attachment lists.
        self.legacy_att.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Size of the store file's data, and record counts per tenant table.
    pub fn table_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rtx = self.db().begin_read()?;
        let mut out = Vec::new();
        for t in self.tenants()? {
            for kind in KINDS {
                let name = table_name(&t, kind);
                match rtx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
                    Ok(tab) => out.push((name, tab.len()?)),
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(StoreError::Db(e.into())),
                }
            }
        }
        Ok(out)
    }
}

/// Rename `tmp` over `path` and make the rename durable.
fn replace_file(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::rename(tmp, path).map_err(|e| StoreError::Io(path.display().to_string(), e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all()
                .map_err(|e| StoreError::Io(dir.display().to_string(), e))?;
        }
    }
    Ok(())
}

/// Apply writes grouped by table.
fn apply_ops(wtx: &redb::WriteTransaction, mut ops: Vec<Op>) -> Result<(), StoreError> {
    // By table, then key: B-tree inserts in key order fill pages
    // sequentially within one commit. A rewrite commits in chunks of
    // random pseudonym keys, so across chunks the inserts are not in order
    // and its file is compact only when it fits one chunk.
    ops.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut i = 0;
    while i < ops.len() {
        let name = ops[i].0.clone();
        let mut t = wtx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
        while i < ops.len() && ops[i].0 == name {
            let (_, k, v) = &ops[i];
            match v {
                Some(v) => {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
                None => {
                    t.remove(k.as_slice())?;
                }
            }
            i += 1;
        }
    }
    Ok(())
}

/// Owner-only permissions on the store file.
fn restrict(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Io(path.display().to_string(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::graph::memory::attachment_key;

    fn learn(g: &mut Graph, to: &str, att: Option<&str>, ts: i64) {
        crate::graph::memory::learn_one(g, "alice@a.test", to, att, ts);
    }

    fn commit_all(store: &EmbeddedStore, g: &Graph) {
        let mut b = Batch::default();
        store.encode(&mut b, "default", g, g.all_records());
        store.commit(b).unwrap();
    }

    fn count(store: &EmbeddedStore, kind: &str) -> u64 {
        let name = table_name("default", kind);
        store
            .table_counts()
            .unwrap()
            .into_iter()
            .find(|(t, _)| *t == name)
            .map_or(0, |(_, n)| n)
    }

    /// A store written before attachment lists had dates keeps an undated
    /// record in `att`: it loads with each recipient dated by the sender's
    /// last message to them, and writing the list again moves it to `attd`.
    #[test]
    fn undated_attachment_lists_load_dated_by_the_contact_and_move_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.redb");
        let keys = Arc::new(Keys::from_secret([7; 32]));
        let mut g = Graph::new(GraphConfig::default());
        learn(&mut g, "carol@x.test", Some("plan.pdf"), 1_000);
        learn(&mut g, "carol@x.test", None, 5_000);
        {
            let store = EmbeddedStore::open(&path, keys.clone()).unwrap();
            commit_all(&store, &g);
            assert_eq!((count(&store, "att"), count(&store, "attd")), (0, 1));
            // Rewrite the record in the older form: no dates, in `att`.
            let db = store.db();
            let wtx = db.begin_write().unwrap();
            {
                let dated_name = table_name("default", "attd");
                let mut dated = wtx
                    .open_table(TableDefinition::<&[u8], &[u8]>::new(&dated_name))
                    .unwrap();
                let (k, v) = {
                    let (k, v) = dated.first().unwrap().unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                };
                let plain = keys.open(&v).unwrap();
                assert_eq!(plain.len(), 8 + PSEUDONYM_LEN + 4);
                let undated = keys.seal(&plain[..8 + PSEUDONYM_LEN]);
                dated.remove(k.as_slice()).unwrap();
                let undated_name = table_name("default", "att");
                let mut old = wtx
                    .open_table(TableDefinition::<&[u8], &[u8]>::new(&undated_name))
                    .unwrap();
                old.insert(k.as_slice(), undated.as_slice()).unwrap();
            }
            wtx.commit().unwrap();
        }
        let store = EmbeddedStore::open(&path, keys).unwrap();
        assert_eq!((count(&store, "att"), count(&store, "attd")), (1, 0));
        let mut loaded = store.load(&GraphConfig::default()).unwrap();
        let g = loaded.get_mut("default").unwrap();
        let (a, c) = (g.id("alice@a.test").unwrap(), g.id("carol@x.test").unwrap());
        let key = (a, attachment_key("plan.pdf"));
        assert_eq!(g.attachments[&key], [AttRecipient { id: c, last: 5_000 }]);
        // Sent again: written to `attd` with its own date, gone from `att`.
        learn(g, "carol@x.test", Some("plan.pdf"), 9_000);
        let mut b = Batch::default();
        store.encode(&mut b, "default", g, [RecordKey::Attachment(key.0, key.1)]);
        store.commit(b).unwrap();
        assert_eq!((count(&store, "att"), count(&store, "attd")), (0, 1));
        let g = store
            .load(&GraphConfig::default())
            .unwrap()
            .remove("default")
            .unwrap();
        assert_eq!(g.attachments[&key], [AttRecipient { id: c, last: 9_000 }]);
    }
}
