//! In-memory association graph of one tenant. Addresses are interned to
//! `u32` ids so that an edge costs a few dozen bytes.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    decay, thread_subject, AddressStats, DomainStats, EdgeStats, GraphView, SenderStats, Ts,
};
use crate::address::domain_of;
use crate::graph::recent::RecentIndex;
use crate::graph::sketch::Sketch;
use crate::message::{Field, MessageMeta, Recipient};

/// Address or domain id inside one graph.
pub type Id = u32;

/// Learning settings (`[graph]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GraphConfig {
    /// Half-life of the decayed edge weight.
    #[serde(with = "humantime_serde")]
    pub half_life: std::time::Duration,
    /// Messages with more recipients than this do not update co-recipient
    /// counts (mass mailings would add n² pairs and say little).
    pub max_corecipients: usize,
    /// Display names kept per address.
    pub max_names: usize,
    /// Participants kept per thread.
    pub max_thread_participants: usize,
    /// A message whose subject was last seen longer ago than this starts a
    /// new subject thread; within it, participants of every message with
    /// the subject are kept together.
    #[serde(with = "humantime_serde")]
    pub thread_window: std::time::Duration,
    /// Recipients kept per (sender, attachment name).
    pub max_attachment_recipients: usize,
    /// Entries kept in each of the thread (Message-ID) and subject indexes;
    /// past it, each insertion evicts the least recently seen entry (see
    /// [`super::recent`]).
    pub max_threads: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            half_life: std::time::Duration::from_secs(90 * 86400),
            max_corecipients: 50,
            max_names: 4,
            max_thread_participants: 64,
            thread_window: std::time::Duration::from_secs(30 * 86400),
            max_attachment_recipients: 32,
            max_threads: 1_000_000,
        }
    }
}

/// One message to learn from.
#[derive(Debug, Clone)]
pub struct LearnInput<'a> {
    pub sender: &'a str,
    pub sender_name: Option<&'a str>,
    pub recipients: &'a [Recipient],
    pub message_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub attachments: Vec<&'a str>,
    pub ts: Ts,
}

impl<'a> LearnInput<'a> {
    /// From parsed metadata; `recipients` is the full recipient list (header
    /// recipients plus envelope-only ones as Bcc). `None` without a sender.
    pub fn from_meta(meta: &'a MessageMeta, recipients: &'a [Recipient], ts: Ts) -> Option<Self> {
        let from = meta.from.as_ref()?;
        Some(LearnInput {
            sender: &from.address,
            sender_name: from.name.as_deref(),
            recipients,
            message_id: meta.message_id.as_deref(),
            subject: meta.subject.as_deref(),
            attachments: meta
                .attachments
                .iter()
                .map(|a| a.name.as_str())
                .filter(|n| !n.is_empty())
                .collect(),
            ts,
        })
    }
}

/// Compact edge record (24 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub to: u32,
    pub cc: u32,
    pub bcc: u32,
    pub first: u32,
    pub last: u32,
    pub weight: f32,
}

impl Edge {
    fn bump(&mut self, field: Field, ts: Ts, half_life: f64) {
        let t = clamp_ts(ts);
        match field {
            Field::To => self.to = self.to.saturating_add(1),
            Field::Cc => self.cc = self.cc.saturating_add(1),
            Field::Bcc => self.bcc = self.bcc.saturating_add(1),
        }
        if self.first == 0 || t < self.first {
            self.first = t;
        }
        if t >= self.last {
            self.weight =
                (decay(self.weight as f64, (t - self.last) as Ts, half_life) + 1.0) as f32;
            self.last = t;
        } else {
            // Out-of-order mail: add its decayed contribution.
            self.weight += decay(1.0, (self.last - t) as Ts, half_life) as f32;
        }
    }

    pub fn stats(&self) -> EdgeStats {
        EdgeStats {
            to: self.to,
            cc: self.cc,
            bcc: self.bcc,
            first: self.first as Ts,
            last: self.last as Ts,
            weight: self.weight,
        }
    }
}

fn clamp_ts(ts: Ts) -> u32 {
    ts.clamp(0, u32::MAX as Ts) as u32
}

/// Co-recipient record: messages from one sender naming both addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CoEdge {
    pub count: u32,
    pub last: u32,
}

/// Participants of a thread (Message-ID or subject).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThreadEntry {
    pub participants: Vec<Id>,
    pub last: u32,
    /// Seen again since the eviction queue last passed it (see
    /// [`super::recent`]); not data, so neither stored nor compared.
    #[serde(skip)]
    pub(crate) seen_again: bool,
}

impl ThreadEntry {
    pub fn new(participants: Vec<Id>, last: u32) -> Self {
        ThreadEntry {
            participants,
            last,
            seen_again: false,
        }
    }
}

impl PartialEq for ThreadEntry {
    fn eq(&self, other: &Self) -> bool {
        self.participants == other.participants && self.last == other.last
    }
}

/// Per-address counters, and (for an address that has sent mail) its
/// adjacency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddrEntry {
    pub address: Box<str>,
    pub sent: u32,
    pub received: u32,
    pub senders: u32,
    pub first_sent: u32,
    pub last_sent: u32,
    pub last_seen: u32,
    /// What this address sent: `None` for an address that was only ever a
    /// recipient (most of them), so that recipients cost no adjacency.
    /// Persisted record by record, not with the entry.
    #[serde(skip)]
    pub(crate) adj: Option<Box<Adjacency>>,
    pub names: Vec<Box<str>>,
}

impl AddrEntry {
    /// A copy of the counters and names, without the adjacency.
    pub fn without_adjacency(&self) -> AddrEntry {
        AddrEntry {
            address: self.address.clone(),
            sent: self.sent,
            received: self.received,
            senders: self.senders,
            first_sent: self.first_sent,
            last_sent: self.last_sent,
            last_seen: self.last_seen,
            adj: None,
            names: self.names.clone(),
        }
    }
}

/// One sender's associations, each list sorted by id for binary search.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Adjacency {
    /// Recipient id -> edge (28 bytes per edge).
    pub(crate) out: Vec<(Id, Edge)>,
    /// Co-recipient pairs (12 bytes per pair), sorted by (a, b), a < b.
    pub(crate) co: Vec<CoSlot>,
    /// Domain id -> edge.
    pub(crate) sdom: Vec<(Id, Edge)>,
}

/// A co-recipient pair in a sender's list: the two recipient ids (lower
/// first), the message count (saturating at 65,535) and the day (days
/// since 1970) the pair was last seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CoSlot {
    pub(crate) a: Id,
    pub(crate) b: Id,
    pub(crate) count: u16,
    pub(crate) day: u16,
}

impl CoSlot {
    fn new(a: Id, b: Id, c: CoEdge) -> CoSlot {
        CoSlot {
            a,
            b,
            count: c.count.min(u16::MAX as u32) as u16,
            day: day_of(c.last),
        }
    }

    /// The pair's record: `last` is the start of the day it was last seen.
    pub(crate) fn edge(&self) -> CoEdge {
        CoEdge {
            count: self.count as u32,
            last: self.day as u32 * 86400,
        }
    }
}

/// Day number (since 1970) of a timestamp, saturating at 65,535 (2149).
fn day_of(t: u32) -> u16 {
    (t / 86400).min(u16::MAX as u32) as u16
}

/// Find `k` in a list sorted by its first element.
fn find<V>(list: &[(Id, V)], k: Id) -> Result<usize, usize> {
    list.binary_search_by_key(&k, |x| x.0)
}

/// Add `s` to a sorted in-list (nothing when it is there already). The
/// list is rebuilt at its new exact size: one allocation and copy, as an
/// insert into a full vector would cost.
fn in_list_insert(list: &mut Box<[Id]>, s: Id) {
    let Err(i) = list.binary_search(&s) else {
        return;
    };
    let (head, tail) = list.split_at(i.min(list.len()));
    let mut v = Vec::with_capacity(list.len() + 1);
    v.extend_from_slice(head);
    v.push(s);
    v.extend_from_slice(tail);
    *list = v.into_boxed_slice();
}

/// Remove `s` from a sorted in-list, if there.
fn in_list_remove(list: &mut Box<[Id]>, s: Id) {
    let Ok(i) = list.binary_search(&s) else {
        return;
    };
    let mut v = std::mem::take(list).into_vec();
    v.remove(i);
    *list = v.into_boxed_slice();
}

/// Hash tables the address index is spread over, so that one growing
/// (rehashing every address it holds, each read through its entry) holds
/// the graph's write lock for a 64th of the time a single table would: one
/// table growing to 917,504 addresses took 146-421 ms.
const ADDR_SHARDS: usize = 64;

type IdTable = hashbrown::HashTable<Id>;

/// The address index: hash tables of ids, hashed and compared through the
/// address strings in the graph's entries.
#[derive(Debug, Default)]
pub(crate) struct AddrIndex {
    /// [`ADDR_SHARDS`] tables, or none before the first address (an empty
    /// graph allocates nothing).
    tables: Option<Box<[IdTable; ADDR_SHARDS]>>,
    hasher: foldhash::fast::RandomState,
}

/// The table of a hash: bits the tables themselves do not use (they place
/// an entry by its low bits and filter by its top seven).
fn addr_shard(h: u64) -> usize {
    ((h >> 40) as usize) % ADDR_SHARDS
}

impl AddrIndex {
    fn hash(&self, s: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(s)
    }

    fn get(&self, addrs: &[AddrEntry], s: &str) -> Option<Id> {
        let h = self.hash(s);
        self.tables.as_ref()?[addr_shard(h)]
            .find(h, |id| {
                addrs.get(*id as usize).is_some_and(|e| &*e.address == s)
            })
            .copied()
    }

    /// Index `id` under its address (already in `addrs`, not yet indexed).
    fn insert(&mut self, addrs: &[AddrEntry], id: Id) {
        let Some(e) = addrs.get(id as usize) else {
            return;
        };
        let h = self.hash(&e.address);
        let hasher = &self.hasher;
        let tables = self
            .tables
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| IdTable::new())));
        tables[addr_shard(h)].insert_unique(h, id, |x| {
            use std::hash::BuildHasher;
            addrs
                .get(*x as usize)
                .map_or(0, |e| hasher.hash_one(&*e.address))
        });
    }

    fn remove(&mut self, id: Id, addr: &str) {
        let h = self.hash(addr);
        let Some(tables) = self.tables.as_mut() else {
            return;
        };
        if let Ok(entry) = tables[addr_shard(h)].find_entry(h, |x| *x == id) {
            entry.remove();
        }
    }

    /// Rebuild from every live entry.
    fn rebuild(&mut self, addrs: &[AddrEntry]) {
        for t in self.tables.iter_mut().flat_map(|t| t.iter_mut()) {
            t.clear();
        }
        for id in 0..addrs.len() as Id {
            if addrs
                .get(id as usize)
                .is_some_and(|e| !e.address.is_empty())
            {
                self.insert(addrs, id);
            }
        }
    }

    fn shrink_to_fit(&mut self, addrs: &[AddrEntry]) {
        let hasher = &self.hasher;
        for t in self.tables.iter_mut().flat_map(|t| t.iter_mut()) {
            t.shrink_to_fit(|x| {
                use std::hash::BuildHasher;
                addrs
                    .get(*x as usize)
                    .map_or(0, |e| hasher.hash_one(&*e.address))
            });
        }
    }

    fn all(&self) -> impl Iterator<Item = &IdTable> {
        self.tables.iter().flat_map(|t| t.iter())
    }

    fn len(&self) -> usize {
        self.all().map(IdTable::len).sum()
    }

    /// Heap bytes: one id and one control byte per bucket, and the tables.
    fn bytes(&self) -> usize {
        let tables: usize = self
            .all()
            .map(|t| {
                let cap = t.capacity();
                if cap == 0 {
                    return 0;
                }
                let buckets = (cap * 8 / 7).next_power_of_two();
                buckets * (std::mem::size_of::<Id>() + 1) + 16
            })
            .sum();
        tables
            + self
                .tables
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<[IdTable; ADDR_SHARDS]>())
    }
}

/// Hash map with foldhash: several times faster than SipHash on the short
/// keys here (address strings, id tuples) and seeded per process, which
/// keeps hash flooding by crafted addresses impractical.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One tenant's association graph.
///
/// Layout: addresses are interned to `u32` ids; each sender's edges,
/// co-recipient pairs and domain edges live in sorted vectors in its
/// [`AddrEntry`] (binary search, no per-edge hash table), so a
/// sender-to-recipient edge costs 28 bytes and a co-recipient pair 12.
#[derive(Debug, Default)]
pub struct Graph {
    pub cfg: GraphConfig,
    /// Address -> id, holding only ids (4 bytes a slot): the strings live
    /// once, in `addrs`.
    pub(crate) ids: AddrIndex,
    pub(crate) addrs: Vec<AddrEntry>,
    /// Each address's [`Sketch`], by id (as `addrs`).
    pub(crate) sketches: Vec<Sketch>,
    /// Reverse edge index, by id (as `addrs`): the senders with an edge to
    /// each address, sorted by id without duplicates; exactly the `adj.out`
    /// lists turned around (an id beyond `addrs` in an out list, which only
    /// a corrupt store could hold, is not indexed). Costs 4 bytes per edge
    /// plus a 16-byte header per address (an exact-size boxed slice: no
    /// spare capacity, no allocation for an address nobody wrote to).
    /// Kept by [`Graph::intern`], [`Graph::learn`], `remove_edge`,
    /// `tombstone` and rebuilt by [`Graph::rebuild_index`] and
    /// [`Graph::finish_load`].
    pub(crate) in_lists: Vec<Box<[Id]>>,
    pub(crate) domain_ids: FastMap<Arc<str>, Id>,
    pub(crate) domains: Vec<(Arc<str>, DomainStats)>,
    /// Number of sender-recipient edges.
    pub(crate) n_edges: usize,
    /// Number of co-recipient pairs.
    pub(crate) n_co: usize,
    /// Hash of the Message-ID.
    pub(crate) threads: RecentIndex,
    /// Hash of the thread subject.
    pub(crate) subjects: RecentIndex,
    /// (sender, hash of the lower-cased attachment name) -> each recipient
    /// of that name with when it was last sent to them, so that retention
    /// removes a recipient's entry on its own date.
    pub(crate) attachments: FastMap<(Id, u64), Vec<AttRecipient>>,
    /// (sender, recipient) -> when a held message from the sender naming
    /// the recipient was last discarded by an admin (judged misaddressed).
    /// Rare, so a plain map.
    pub(crate) discards: FastMap<(Id, Id), u32>,
    /// Thread and subject keys the last [`Graph::learn`] evicted (reported
    /// by [`Graph::touched_by`] so that stores delete them).
    pub(crate) evicted: Vec<RecordKey>,
}

/// A sender's contacts as the lookalike scan reads them, in the order of
/// [`GraphView::for_each_contact`]: each one's id, [`Sketch`] and message
/// count (see [`GraphView::contact_sketches`]). A concrete iterator, so
/// that the scan's loop is compiled with it.
pub struct ContactSketches<'a> {
    out: &'a [(Id, Edge)],
    graph: &'a Graph,
}

impl Iterator for ContactSketches<'_> {
    type Item = (Id, Sketch, u32);

    fn next(&mut self) -> Option<(Id, Sketch, u32)> {
        loop {
            let ((id, edge), rest) = self.out.split_first()?;
            self.out = rest;
            let total = edge.stats().total();
            match self.graph.sketches.get(*id as usize) {
                Some(k) => return Some((*id, *k, total)),
                // Only a graph built without its sketches (never by this
                // module) lacks one: derive it from the address.
                None => {
                    if let Some(a) = self.graph.address_of(*id) {
                        return Some((*id, Sketch::of(a), total));
                    }
                }
            }
        }
    }
}

/// One recipient of a (sender, attachment name) list: who, and when the
/// sender last sent that attachment name to them (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttRecipient {
    pub id: Id,
    pub last: u32,
}

/// Stable 64-bit hash (FNV-1a) for thread and attachment keys, so keys are
/// the same across processes.
pub fn key_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// Hash of a lower-cased attachment name.
pub fn attachment_key(name: &str) -> u64 {
    let mut h = Fnv(0xcbf29ce484222325);
    name.trim().to_lowercase().hash(&mut h);
    h.finish()
}

/// Remove adjacent duplicates by key from a sorted list, keeping the last.
fn dedup_keep_last<T, K: PartialEq>(v: &mut Vec<T>, key: impl Fn(&T) -> K) {
    if v.len() < 2 {
        return;
    }
    v.reverse();
    v.dedup_by(|later, earlier| key(later) == key(earlier));
    v.reverse();
}

impl Graph {
    pub fn new(cfg: GraphConfig) -> Self {
        Graph {
            cfg,
            ..Default::default()
        }
    }

    fn half_life(&self) -> f64 {
        self.cfg.half_life.as_secs_f64()
    }

    /// Id of a known address.
    pub fn id(&self, addr: &str) -> Option<Id> {
        self.ids.get(&self.addrs, addr)
    }

    /// Address of an id.
    pub fn address_of(&self, id: Id) -> Option<&str> {
        self.addrs.get(id as usize).map(|a| &*a.address)
    }

    /// Intern an address (and its domain).
    pub fn intern(&mut self, addr: &str) -> Id {
        if let Some(id) = self.ids.get(&self.addrs, addr) {
            return id;
        }
        let id = self.addrs.len() as Id;
        self.addrs.push(AddrEntry {
            address: Box::from(addr),
            ..Default::default()
        });
        self.sketches.push(Sketch::of(addr));
        self.in_lists.push(Box::default());
        self.ids.insert(&self.addrs, id);
        id
    }

    fn intern_domain(&mut self, domain: &str) -> Id {
        if let Some(id) = self.domain_ids.get(domain) {
            return *id;
        }
        let id = self.domains.len() as Id;
        let d: Arc<str> = Arc::from(domain);
        self.domain_ids.insert(d.clone(), id);
        self.domains.push((d, DomainStats::default()));
        id
    }

    fn add_name(&mut self, id: Id, name: Option<&str>) {
        let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
            return;
        };
        let max = self.cfg.max_names;
        let e = &mut self.addrs[id as usize];
        if let Some(pos) = e.names.iter().position(|n| &**n == name) {
            let n = e.names.remove(pos);
            e.names.push(n);
        } else {
            e.names.push(name.into());
            if e.names.len() > max {
                e.names.remove(0);
            }
        }
    }

    /// Learn from one message.
    pub fn learn(&mut self, m: &LearnInput<'_>) {
        let hl = self.half_life();
        let t = clamp_ts(m.ts);
        let s = self.intern(m.sender);
        self.add_name(s, m.sender_name);
        {
            let e = &mut self.addrs[s as usize];
            e.sent = e.sent.saturating_add(1);
            if e.first_sent == 0 || t < e.first_sent {
                e.first_sent = t;
            }
            e.last_sent = e.last_sent.max(t);
            e.last_seen = e.last_seen.max(t);
        }
        let mut rids: Vec<Id> = Vec::with_capacity(m.recipients.len());
        for r in m.recipients {
            if r.address == m.sender {
                continue;
            }
            let rid = self.intern(&r.address);
            if rids.contains(&rid) {
                continue;
            }
            rids.push(rid);
            self.add_name(rid, r.name.as_deref());
            let did = self.intern_domain(domain_of(&r.address));
            let adj = self.adj_mut(s);
            let new_edge = match find(&adj.out, rid) {
                Ok(i) => {
                    adj.out[i].1.bump(r.field, m.ts, hl);
                    false
                }
                Err(i) => {
                    let mut e = Edge::default();
                    e.bump(r.field, m.ts, hl);
                    adj.out.insert(i, (rid, e));
                    true
                }
            };
            let new_domain_edge = match find(&adj.sdom, did) {
                Ok(i) => {
                    adj.sdom[i].1.bump(r.field, m.ts, hl);
                    false
                }
                Err(i) => {
                    let mut e = Edge::default();
                    e.bump(r.field, m.ts, hl);
                    adj.sdom.insert(i, (did, e));
                    true
                }
            };
            let ds = &mut self.domains[did as usize].1;
            ds.messages = ds.messages.saturating_add(1);
            if new_domain_edge {
                ds.senders += 1;
            }
            let re = &mut self.addrs[rid as usize];
            re.received = re.received.saturating_add(1);
            re.last_seen = re.last_seen.max(t);
            if new_edge {
                re.senders += 1;
                self.n_edges += 1;
                if let Some(l) = self.in_lists.get_mut(rid as usize) {
                    in_list_insert(l, s);
                }
            }
            // First time anyone wrote to this address: count it for its domain.
            if self.addrs[rid as usize].received == 1 {
                self.domains[did as usize].1.addresses += 1;
            }
        }
        if rids.len() >= 2 && rids.len() <= self.cfg.max_corecipients {
            let day = day_of(t);
            let mut added = 0;
            let adj = self.adj_mut(s);
            for i in 0..rids.len() {
                for j in i + 1..rids.len() {
                    let (a, b) = if rids[i] < rids[j] {
                        (rids[i], rids[j])
                    } else {
                        (rids[j], rids[i])
                    };
                    match adj.co.binary_search_by_key(&(a, b), |c| (c.a, c.b)) {
                        Ok(k) => {
                            let c = &mut adj.co[k];
                            c.count = c.count.saturating_add(1);
                            c.day = c.day.max(day);
                        }
                        Err(k) => {
                            adj.co.insert(
                                k,
                                CoSlot {
                                    a,
                                    b,
                                    count: 1,
                                    day,
                                },
                            );
                            added += 1;
                        }
                    }
                }
            }
            self.n_co += added;
        }
        self.evicted.clear();
        let max_p = self.cfg.max_thread_participants;
        let mut participants = Vec::with_capacity(rids.len() + 1);
        participants.push(s);
        participants.extend(rids.iter().take(max_p.saturating_sub(1)));
        if let Some(mid) = m.message_id {
            self.threads
                .insert(key_hash(mid), ThreadEntry::new(participants.clone(), t));
        }
        if let Some(subj) = m.subject {
            let ts = thread_subject(subj);
            if !ts.is_empty() {
                let window = u32::try_from(self.cfg.thread_window.as_secs()).unwrap_or(u32::MAX);
                let e = self.subjects.entry_or_default(key_hash(&ts));
                if t > e.last.saturating_add(window) {
                    // A new conversation that reuses the subject.
                    e.participants = participants;
                    e.last = t;
                } else if t.saturating_add(window) >= e.last {
                    for p in participants {
                        if e.participants.len() >= max_p {
                            break;
                        }
                        if !e.participants.contains(&p) {
                            e.participants.push(p);
                        }
                    }
                    e.last = e.last.max(t);
                }
            }
        }
        let cap = self.cfg.max_threads.max(1);
        let evicted = &mut self.evicted;
        self.threads
            .evict_over(cap, |h| evicted.push(RecordKey::Thread(h)));
        self.subjects
            .evict_over(cap, |h| evicted.push(RecordKey::Subject(h)));
        let max_a = self.cfg.max_attachment_recipients;
        for name in &m.attachments {
            let list = self
                .attachments
                .entry((s, attachment_key(name)))
                .or_default();
            for rid in &rids {
                if let Some(e) = list.iter_mut().find(|e| e.id == *rid) {
                    e.last = e.last.max(t);
                } else {
                    if list.len() >= max_a {
                        // The one sent to longest ago makes room.
                        if let Some(i) = (0..list.len()).min_by_key(|&i| list[i].last) {
                            list.remove(i);
                        }
                    }
                    list.push(AttRecipient { id: *rid, last: t });
                }
            }
        }
    }

    /// The adjacency of sender `s`, created when missing.
    fn adj_mut(&mut self, s: Id) -> &mut Adjacency {
        self.addrs[s as usize].adj.get_or_insert_with(Box::default)
    }

    /// The adjacency of sender `s`, if it has sent anything.
    pub(crate) fn adj(&self, s: Id) -> Option<&Adjacency> {
        self.addrs.get(s as usize)?.adj.as_deref()
    }

    /// The edge `s -> r`, by ids.
    pub(crate) fn edge_ids(&self, s: Id, r: Id) -> Option<&Edge> {
        let adj = self.adj(s)?;
        find(&adj.out, r).ok().map(|i| &adj.out[i].1)
    }

    /// The sender-to-domain edge `s -> d`, by ids.
    pub(crate) fn sdom_ids(&self, s: Id, d: Id) -> Option<&Edge> {
        let adj = self.adj(s)?;
        find(&adj.sdom, d).ok().map(|i| &adj.sdom[i].1)
    }

    /// The co-recipient pair `(a, b)` of sender `s`, by ids (either order).
    pub(crate) fn co_ids(&self, s: Id, a: Id, b: Id) -> Option<CoEdge> {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let adj = self.adj(s)?;
        adj.co
            .binary_search_by_key(&(a, b), |c| (c.a, c.b))
            .ok()
            .map(|i| adj.co[i].edge())
    }

    /// Every edge as (sender, recipient, edge).
    pub(crate) fn edges_iter(&self) -> impl Iterator<Item = (Id, Id, &Edge)> + '_ {
        self.addrs.iter().enumerate().flat_map(|(s, e)| {
            e.adj
                .iter()
                .flat_map(move |a| a.out.iter().map(move |(r, ed)| (s as Id, *r, ed)))
        })
    }

    /// Every sender-to-domain edge as (sender, domain, edge).
    pub(crate) fn sdom_iter(&self) -> impl Iterator<Item = (Id, Id, &Edge)> + '_ {
        self.addrs.iter().enumerate().flat_map(|(s, e)| {
            e.adj
                .iter()
                .flat_map(move |a| a.sdom.iter().map(move |(d, ed)| (s as Id, *d, ed)))
        })
    }

    /// Every co-recipient pair as (sender, lower id, higher id, record).
    pub(crate) fn co_iter(&self) -> impl Iterator<Item = (Id, Id, Id, CoEdge)> + '_ {
        self.addrs.iter().enumerate().flat_map(|(s, e)| {
            e.adj
                .iter()
                .flat_map(move |a| a.co.iter().map(move |c| (s as Id, c.a, c.b, c.edge())))
        })
    }

    /// Loading: add an edge without keeping lists sorted; call
    /// [`Graph::finish_load`] after the last one.
    pub(crate) fn load_edge(&mut self, s: Id, r: Id, e: Edge) {
        if (s as usize) < self.addrs.len() {
            self.adj_mut(s).out.push((r, e));
        }
    }

    /// Loading: add a sender-to-domain edge (see [`Graph::load_edge`]).
    pub(crate) fn load_sdom(&mut self, s: Id, d: Id, e: Edge) {
        if (s as usize) < self.addrs.len() {
            self.adj_mut(s).sdom.push((d, e));
        }
    }

    /// Loading: add a co-recipient pair (see [`Graph::load_edge`]).
    pub(crate) fn load_co(&mut self, s: Id, a: Id, b: Id, c: CoEdge) {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        if (s as usize) < self.addrs.len() {
            self.adj_mut(s).co.push(CoSlot::new(a, b, c));
        }
    }

    /// After setting `addrs` wholesale: index every live address.
    pub(crate) fn rebuild_index(&mut self) {
        self.ids.rebuild(&self.addrs);
        self.sketches = self.addrs.iter().map(|e| Sketch::of(&e.address)).collect();
        self.rebuild_in_lists();
    }

    /// Recompute every in-list from the out lists (each sorted, without
    /// duplicates, as [`Graph::finish_load`] leaves them): count each
    /// address's senders, then fill the lists in ascending sender order,
    /// so they come out sorted at their exact sizes.
    fn rebuild_in_lists(&mut self) {
        let n = self.addrs.len();
        let mut deg = vec![0u32; n];
        for e in &self.addrs {
            for (r, _) in e.adj.iter().flat_map(|a| a.out.iter()) {
                if let Some(d) = deg.get_mut(*r as usize) {
                    *d += 1;
                }
            }
        }
        let mut lists: Vec<Vec<Id>> = deg
            .iter()
            .map(|d| Vec::with_capacity(*d as usize))
            .collect();
        for (s, e) in self.addrs.iter().enumerate() {
            for (r, _) in e.adj.iter().flat_map(|a| a.out.iter()) {
                if let Some(l) = lists.get_mut(*r as usize) {
                    l.push(s as Id);
                }
            }
        }
        self.in_lists = lists.into_iter().map(Vec::into_boxed_slice).collect();
        // (The collect reuses the 24-byte-a-slot allocation of `lists`:
        // trim it to 16 bytes a slot.)
        self.in_lists.shrink_to_fit();
    }

    /// After loading: sort every list (a duplicate key keeps its last
    /// record), trim capacities to the contents, recount.
    pub(crate) fn finish_load(&mut self) {
        let (mut n_edges, mut n_co) = (0, 0);
        for e in &mut self.addrs {
            if let Some(a) = e.adj.as_deref_mut() {
                a.out.sort_by_key(|x| x.0);
                dedup_keep_last(&mut a.out, |x| x.0);
                a.sdom.sort_by_key(|x| x.0);
                dedup_keep_last(&mut a.sdom, |x| x.0);
                a.co.sort_by_key(|c| (c.a, c.b));
                dedup_keep_last(&mut a.co, |c| (c.a, c.b));
                a.out.shrink_to_fit();
                a.sdom.shrink_to_fit();
                a.co.shrink_to_fit();
                n_edges += a.out.len();
                n_co += a.co.len();
            }
        }
        self.n_edges = n_edges;
        self.n_co = n_co;
        // Built at its exact size.
        self.rebuild_in_lists();
        // Loading pushed address by address (capacities doubled).
        self.addrs.shrink_to_fit();
        self.sketches.shrink_to_fit();
        self.domains.shrink_to_fit();
    }

    /// Trim every list's spare capacity (learning grows them by doubling).
    pub fn shrink_to_fit(&mut self) {
        for e in &mut self.addrs {
            if let Some(a) = e.adj.as_deref_mut() {
                a.out.shrink_to_fit();
                a.sdom.shrink_to_fit();
                a.co.shrink_to_fit();
            }
        }
        self.addrs.shrink_to_fit();
        self.sketches.shrink_to_fit();
        // Each in-list is exact already.
        self.in_lists.shrink_to_fit();
        self.domains.shrink_to_fit();
        self.ids.shrink_to_fit(&self.addrs);
        self.domain_ids.shrink_to_fit();
    }

    /// Number of sender-recipient edges.
    pub fn edge_count(&self) -> usize {
        self.n_edges
    }

    /// Number of co-recipient pairs.
    pub fn co_count_total(&self) -> usize {
        self.n_co
    }

    /// Number of known addresses.
    pub fn address_count(&self) -> usize {
        self.addrs.len()
    }

    fn participants(&self, e: &ThreadEntry) -> Vec<String> {
        e.participants
            .iter()
            .filter_map(|id| self.address_of(*id).map(str::to_string))
            .collect()
    }
}

impl GraphView for Graph {
    fn edge(&self, sender: &str, rcpt: &str) -> Option<EdgeStats> {
        let s = self.id(sender)?;
        let r = self.id(rcpt)?;
        self.edge_by_id(s, r)
    }

    fn sender(&self, sender: &str) -> SenderStats {
        match self.id(sender).and_then(|s| self.addrs.get(s as usize)) {
            Some(e) => SenderStats {
                messages: e.sent,
                contacts: e.adj.as_ref().map_or(0, |a| a.out.len() as u32),
                first: e.first_sent as Ts,
                last: e.last_sent as Ts,
            },
            None => SenderStats::default(),
        }
    }

    fn address(&self, addr: &str) -> AddressStats {
        match self.id(addr) {
            Some(a) => self.address_by_id(a),
            None => AddressStats::default(),
        }
    }

    fn co_count(&self, sender: &str, a: &str, b: &str) -> u32 {
        let (Some(s), Some(a), Some(b)) = (self.id(sender), self.id(a), self.id(b)) else {
            return 0;
        };
        self.co_count_by_id(s, a, b)
    }

    fn co_max(&self, sender: &str, rcpt: &str, others: &[String], limit: usize) -> u32 {
        let (Some(s), Some(r)) = (self.id(sender), self.id(rcpt)) else {
            return 0;
        };
        others
            .iter()
            .filter(|o| o.as_str() != sender)
            .take(limit)
            .filter_map(|o| self.id(o))
            .filter_map(|o| self.co_ids(s, r, o).map(|c| c.count))
            .max()
            .unwrap_or(0)
    }

    fn sender_domain(&self, sender: &str, domain: &str) -> Option<EdgeStats> {
        let s = self.id(sender)?;
        let d = self.domain_id_of(domain)?;
        self.sender_domain_by_id(s, d)
    }

    fn domain(&self, domain: &str) -> DomainStats {
        self.domain_id_of(domain)
            .map(|d| self.domain_by_id(d))
            .unwrap_or_default()
    }

    fn for_each_contact(&self, sender: &str, f: &mut dyn FnMut(&str, &EdgeStats)) {
        let Some(adj) = self.id(sender).and_then(|s| self.adj(s)) else {
            return;
        };
        for (rid, edge) in &adj.out {
            if let Some(addr) = self.address_of(*rid) {
                f(addr, &edge.stats());
            }
        }
    }

    fn contacts_with_mail(&self, sender: &str, addr: &str, limit: usize) -> u32 {
        let (Some(s), Some(x)) = (self.id(sender), self.id(addr)) else {
            return 0;
        };
        self.contacts_with_mail_by_id(s, x, limit)
    }

    fn id_of(&self, addr: &str) -> Option<Id> {
        self.id(addr)
    }

    fn edge_by_id(&self, sender: Id, rcpt: Id) -> Option<EdgeStats> {
        self.edge_ids(sender, rcpt).map(Edge::stats)
    }

    fn address_by_id(&self, addr: Id) -> AddressStats {
        match self.addrs.get(addr as usize) {
            Some(e) => AddressStats {
                senders: e.senders,
                received: e.received,
                sent: e.sent,
            },
            None => AddressStats::default(),
        }
    }

    fn co_count_by_id(&self, sender: Id, a: Id, b: Id) -> u32 {
        self.co_ids(sender, a, b).map(|c| c.count).unwrap_or(0)
    }

    fn domain_id_of(&self, domain: &str) -> Option<Id> {
        self.domain_ids.get(domain).copied()
    }

    fn sender_domain_by_id(&self, sender: Id, domain: Id) -> Option<EdgeStats> {
        self.sdom_ids(sender, domain).map(Edge::stats)
    }

    fn domain_by_id(&self, domain: Id) -> DomainStats {
        self.domains
            .get(domain as usize)
            .map(|d| d.1)
            .unwrap_or_default()
    }

    fn contact_sketches(&self, sender: Id) -> ContactSketches<'_> {
        ContactSketches {
            out: self.adj(sender).map_or(&[], |a| &a.out),
            graph: self,
        }
    }

    fn address_by_id_str(&self, id: Id) -> Option<&str> {
        self.address_of(id)
    }

    fn contacts_with_mail_by_id(&self, sender: Id, addr: Id, limit: usize) -> u32 {
        let x = addr;
        if self.addrs.get(x as usize).is_none() {
            return 0;
        }
        let Some(adj) = self.adj(sender) else {
            return 0;
        };
        // Mail between `x` and a contact, in either direction: x's out list
        // (recipients) and in-list (senders) are sorted by id as the
        // sender's contacts are, so one forward pass over each answers it
        // for every contact (a binary search per contact in a list far
        // longer than the contacts to check).
        let x_out: &[(Id, Edge)] = self.adj(x).map_or(&[], |a| &a.out);
        let x_in: &[Id] = self.in_lists.get(x as usize).map_or(&[], |l| l);
        if x_out.is_empty() && x_in.is_empty() {
            return 0;
        }
        let checks = 8 * adj.out.len().min(limit).max(1);
        let merge_out = x_out.len() <= checks;
        let merge_in = x_in.len() <= checks;
        let (mut oi, mut ii) = (0usize, 0usize);
        let mut seen = 0usize;
        let mut linked = 0u32;
        for (c, _) in &adj.out {
            if self.addrs.get(*c as usize).is_none() {
                continue;
            }
            seen += 1;
            if seen > limit {
                break;
            }
            if *c == x {
                continue;
            }
            if merge_out && merge_in && oi >= x_out.len() && ii >= x_in.len() {
                // Every later contact has a higher id than both lists hold.
                break;
            }
            let from_x = if merge_out {
                while x_out.get(oi).is_some_and(|e| e.0 < *c) {
                    oi += 1;
                }
                x_out.get(oi).is_some_and(|e| e.0 == *c)
            } else {
                find(x_out, *c).is_ok()
            };
            let to_x = if merge_in {
                while x_in.get(ii).is_some_and(|s| s < c) {
                    ii += 1;
                }
                x_in.get(ii) == Some(c)
            } else {
                x_in.binary_search(c).is_ok()
            };
            linked += u32::from(from_x || to_x);
        }
        linked
    }

    fn display_names(&self, addr: &str) -> Vec<String> {
        self.id(addr)
            .and_then(|id| self.addrs.get(id as usize))
            .map(|e| e.names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    fn thread_participants(&self, message_ids: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for mid in message_ids {
            if let Some(e) = self.threads.get(&key_hash(mid)) {
                for p in self.participants(e) {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    fn subject_participants(&self, sender: &str, subject: &str) -> Vec<String> {
        let ts = thread_subject(subject);
        if ts.is_empty() {
            return Vec::new();
        }
        let Some(e) = self.subjects.get(&key_hash(&ts)) else {
            return Vec::new();
        };
        let Some(s) = self.id(sender) else {
            return Vec::new();
        };
        if !e.participants.contains(&s) {
            return Vec::new();
        }
        self.participants(e)
    }

    fn discarded(&self, sender: &str, rcpt: &str) -> Option<Ts> {
        // Asked for every recipient of every message; discards are rare.
        if self.discards.is_empty() {
            return None;
        }
        let (s, r) = (self.id(sender)?, self.id(rcpt)?);
        let t = *self.discards.get(&(s, r))?;
        let delivered_since = self.edge_ids(s, r).is_some_and(|e| e.last >= t);
        (!delivered_since).then_some(t as Ts)
    }

    fn attachment_recipients(&self, sender: &str, name: &str) -> Vec<String> {
        let Some(s) = self.id(sender) else {
            return Vec::new();
        };
        self.attachments
            .get(&(s, attachment_key(name)))
            .map(|l| {
                l.iter()
                    .filter_map(|e| self.address_of(e.id).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One persisted record of a graph, named by ids (the store turns ids into
/// pseudonyms). A record absent from memory is deleted from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Addr(Id),
    Domain(Id),
    Edge(Id, Id),
    SenderDomain(Id, Id),
    Co(Id, Id, Id),
    Thread(u64),
    Subject(u64),
    Attachment(Id, u64),
    /// A discarded (sender, recipient) pair.
    Discard(Id, Id),
}

/// What a retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeCounts {
    pub edges: usize,
    pub co_pairs: usize,
    pub threads: usize,
    pub addresses: usize,
    pub discards: usize,
}

impl Graph {
    /// Whether an id is a forgotten address slot.
    fn is_tombstone(&self, id: Id) -> bool {
        self.addrs
            .get(id as usize)
            .is_none_or(|a| a.address.is_empty())
    }

    /// Every record a learn of `m` changed (call after [`Graph::learn`]).
    pub fn touched_by(&self, m: &LearnInput<'_>, out: &mut std::collections::HashSet<RecordKey>) {
        out.extend(self.evicted.iter().copied());
        let Some(s) = self.id(m.sender) else { return };
        out.insert(RecordKey::Addr(s));
        let mut rids: Vec<Id> = Vec::with_capacity(m.recipients.len());
        for r in m.recipients {
            if r.address == m.sender {
                continue;
            }
            let Some(rid) = self.id(&r.address) else {
                continue;
            };
            if rids.contains(&rid) {
                continue;
            }
            rids.push(rid);
            out.insert(RecordKey::Addr(rid));
            out.insert(RecordKey::Edge(s, rid));
            if let Some(d) = self.domain_ids.get(domain_of(&r.address)) {
                out.insert(RecordKey::Domain(*d));
                out.insert(RecordKey::SenderDomain(s, *d));
            }
        }
        if rids.len() >= 2 && rids.len() <= self.cfg.max_corecipients {
            for i in 0..rids.len() {
                for j in i + 1..rids.len() {
                    let (a, b) = if rids[i] < rids[j] {
                        (rids[i], rids[j])
                    } else {
                        (rids[j], rids[i])
                    };
                    out.insert(RecordKey::Co(s, a, b));
                }
            }
        }
        if let Some(mid) = m.message_id {
            out.insert(RecordKey::Thread(key_hash(mid)));
        }
        if let Some(subj) = m.subject {
            let ts = thread_subject(subj);
            if !ts.is_empty() {
                out.insert(RecordKey::Subject(key_hash(&ts)));
            }
        }
        for name in &m.attachments {
            out.insert(RecordKey::Attachment(s, attachment_key(name)));
        }
    }

    /// Every record in the graph (for a full rewrite of the store).
    pub fn all_records(&self) -> Vec<RecordKey> {
        let mut out = Vec::with_capacity(
            self.addrs.len() + self.n_edges * 2 + self.n_co + self.threads.len(),
        );
        for id in 0..self.addrs.len() as Id {
            self.address_records(id, &mut out);
        }
        out.extend(self.shared_records());
        out
    }

    /// The records of one address: its own, and as a sender its edges,
    /// domain edges and co-recipient pairs (nothing for a tombstone).
    pub fn address_records(&self, id: Id, out: &mut Vec<RecordKey>) {
        if self.is_tombstone(id) {
            return;
        }
        out.push(RecordKey::Addr(id));
        if let Some(a) = self.adj(id) {
            out.extend(a.out.iter().map(|(r, _)| RecordKey::Edge(id, *r)));
            out.extend(a.sdom.iter().map(|(d, _)| RecordKey::SenderDomain(id, *d)));
            out.extend(a.co.iter().map(|c| RecordKey::Co(id, c.a, c.b)));
        }
    }

    /// The records not owned by one address: domains, threads, subjects,
    /// attachment lists.
    pub fn shared_records(&self) -> Vec<RecordKey> {
        let mut out = Vec::with_capacity(
            self.domains.len() + self.threads.len() + self.subjects.len() + self.attachments.len(),
        );
        out.extend((0..self.domains.len() as Id).map(RecordKey::Domain));
        out.extend(self.threads.keys().map(|h| RecordKey::Thread(*h)));
        out.extend(self.subjects.keys().map(|h| RecordKey::Subject(*h)));
        out.extend(
            self.attachments
                .keys()
                .map(|(s, h)| RecordKey::Attachment(*s, *h)),
        );
        out.extend(
            self.discards
                .keys()
                .map(|(s, r)| RecordKey::Discard(*s, *r)),
        );
        out
    }

    /// Record that a held message from `sender` was discarded, judged
    /// misaddressed for these recipients (see [`GraphView::discarded`]).
    /// Returns every record changed.
    pub fn learn_discard(&mut self, sender: &str, recipients: &[&str], ts: Ts) -> Vec<RecordKey> {
        let t = clamp_ts(ts);
        let s = self.intern(sender);
        let mut touched = vec![RecordKey::Addr(s)];
        for r in recipients {
            if *r == sender || r.is_empty() {
                continue;
            }
            let rid = self.intern(r);
            let e = self.discards.entry((s, rid)).or_insert(0);
            *e = (*e).max(t);
            touched.push(RecordKey::Addr(rid));
            touched.push(RecordKey::Discard(s, rid));
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    /// Every record a [`Graph::learn_discard`] of these addresses changed.
    pub fn touched_by_discard(
        &self,
        sender: &str,
        recipients: &[&str],
        out: &mut std::collections::HashSet<RecordKey>,
    ) {
        let Some(s) = self.id(sender) else { return };
        out.insert(RecordKey::Addr(s));
        for r in recipients {
            if let Some(rid) = self.id(r).filter(|rid| *rid != s) {
                out.insert(RecordKey::Addr(rid));
                out.insert(RecordKey::Discard(s, rid));
            }
        }
    }

    /// Number of discarded (sender, recipient) pairs.
    pub fn discard_count(&self) -> usize {
        self.discards.len()
    }

    /// Remove the edge `s -> r`, the sender's co-recipient pairs naming `r`
    /// (counted in `co_removed`), and undo the edge's contribution to the
    /// counters of `r`, of `r`'s domain and of the sender's domain edge;
    /// attachment lists are cleaned by [`Graph::prune_orphans`].
    fn remove_edge(
        &mut self,
        s: Id,
        r: Id,
        touched: &mut Vec<RecordKey>,
        co_removed: &mut usize,
    ) -> bool {
        let Some(adj) = self
            .addrs
            .get_mut(s as usize)
            .and_then(|e| e.adj.as_deref_mut())
        else {
            return false;
        };
        let Ok(i) = find(&adj.out, r) else {
            return false;
        };
        let (_, e) = adj.out.remove(i);
        if let Some(l) = self.in_lists.get_mut(r as usize) {
            in_list_remove(l, s);
        }
        let before = adj.co.len();
        adj.co.retain(|c| {
            let gone = c.a == r || c.b == r;
            if gone {
                touched.push(RecordKey::Co(s, c.a, c.b));
            }
            !gone
        });
        let gone_co = before - adj.co.len();
        *co_removed += gone_co;
        self.n_co -= gone_co;
        self.n_edges -= 1;
        touched.push(RecordKey::Edge(s, r));
        touched.push(RecordKey::Addr(s));
        touched.push(RecordKey::Addr(r));
        let n = e.to.saturating_add(e.cc).saturating_add(e.bcc);
        let raddr = self.address_of(r).map(str::to_string).unwrap_or_default();
        let did = self.domain_ids.get(domain_of(&raddr)).copied();
        let mut now_unreceived = false;
        if let Some(re) = self.addrs.get_mut(r as usize) {
            re.senders = re.senders.saturating_sub(1);
            let before = re.received;
            re.received = re.received.saturating_sub(n);
            now_unreceived = before > 0 && re.received == 0;
        }
        if let Some(d) = did {
            touched.push(RecordKey::Domain(d));
            touched.push(RecordKey::SenderDomain(s, d));
            let mut drop_sd = false;
            let adj = self.addrs[s as usize].adj.as_deref_mut();
            if let Some(adj) = adj {
                if let Ok(k) = find(&adj.sdom, d) {
                    let sd = &mut adj.sdom[k].1;
                    sd.to = sd.to.saturating_sub(e.to);
                    sd.cc = sd.cc.saturating_sub(e.cc);
                    sd.bcc = sd.bcc.saturating_sub(e.bcc);
                    sd.weight = (sd.weight - e.weight).max(0.0);
                    drop_sd = sd.to == 0 && sd.cc == 0 && sd.bcc == 0;
                    if drop_sd {
                        adj.sdom.remove(k);
                    }
                }
            }
            if let Some((_, ds)) = self.domains.get_mut(d as usize) {
                ds.messages = ds.messages.saturating_sub(n);
                if drop_sd {
                    ds.senders = ds.senders.saturating_sub(1);
                }
                if now_unreceived {
                    ds.addresses = ds.addresses.saturating_sub(1);
                }
            }
        }
        true
    }

    /// After edges were removed: drop attachment list entries whose
    /// sender-recipient edge no longer exists (one pass).
    fn prune_orphans(&mut self, touched: &mut Vec<RecordKey>) {
        let mut atts = std::mem::take(&mut self.attachments);
        for ((s, h), list) in atts.iter_mut() {
            let before = list.len();
            list.retain(|r| self.edge_ids(*s, r.id).is_some());
            if list.len() != before {
                touched.push(RecordKey::Attachment(*s, *h));
            }
        }
        atts.retain(|_, l| !l.is_empty());
        self.attachments = atts;
    }

    /// Remove an id from every thread and subject participant list.
    fn remove_participant(&mut self, id: Id, touched: &mut Vec<RecordKey>) {
        for (h, t) in self.threads.iter_mut() {
            if t.participants.contains(&id) {
                t.participants.retain(|p| *p != id);
                touched.push(RecordKey::Thread(*h));
            }
        }
        for (h, t) in self.subjects.iter_mut() {
            if t.participants.contains(&id) {
                t.participants.retain(|p| *p != id);
                touched.push(RecordKey::Subject(*h));
            }
        }
        self.threads.retain(|_, t| !t.participants.is_empty());
        self.subjects.retain(|_, t| !t.participants.is_empty());
    }

    /// Turn an address slot into a tombstone: unknown to lookups, nothing
    /// kept about it.
    fn tombstone(&mut self, id: Id) {
        if let Some(adj) = self.addrs.get_mut(id as usize).and_then(|e| e.adj.take()) {
            self.unindex_out(id, &adj.out);
        }
        if let Some(e) = self.addrs.get_mut(id as usize) {
            self.ids.remove(id, &e.address);
            *e = AddrEntry {
                address: Box::from(""),
                ..Default::default()
            };
            if let Some(k) = self.sketches.get_mut(id as usize) {
                *k = Sketch::of("");
            }
        }
    }

    /// Take sender `s` out of the in-lists of the recipients in `out` (its
    /// out list, being dropped).
    fn unindex_out(&mut self, s: Id, out: &[(Id, Edge)]) {
        for (r, _) in out {
            if let Some(l) = self.in_lists.get_mut(*r as usize) {
                in_list_remove(l, s);
            }
        }
    }

    /// Senders with an edge to `r`, in id order (its in-list).
    fn senders_of(&self, r: Id) -> Vec<Id> {
        self.in_lists
            .get(r as usize)
            .map_or_else(Vec::new, |l| l.to_vec())
    }

    /// Erase every association involving `addr`: as sender, recipient,
    /// co-recipient, display names, thread participant and attachment
    /// recipient. Afterwards the address scores as never seen. Returns the
    /// forgotten id (its slot is now a tombstone) and every record changed,
    /// or `None` when the address is unknown.
    pub fn forget(&mut self, addr: &str) -> Option<(Id, Vec<RecordKey>)> {
        let x = self.id(addr)?;
        let mut touched = Vec::new();
        let mut co_removed = 0;
        let as_sender: Vec<Id> = self
            .adj(x)
            .map(|a| a.out.iter().map(|(r, _)| *r).collect())
            .unwrap_or_default();
        for r in as_sender {
            self.remove_edge(x, r, &mut touched, &mut co_removed);
        }
        for s in self.senders_of(x) {
            self.remove_edge(s, x, &mut touched, &mut co_removed);
        }
        self.prune_orphans(&mut touched);
        // Whatever x's adjacency still holds (pairs and domain edges left
        // without an edge, e.g. from an inconsistent store), and pairs
        // naming x under any sender.
        if let Some(adj) = self.addrs.get_mut(x as usize).and_then(|e| e.adj.take()) {
            self.unindex_out(x, &adj.out);
            for c in &adj.co {
                touched.push(RecordKey::Co(x, c.a, c.b));
            }
            self.n_co -= adj.co.len();
            self.n_edges -= adj.out.len();
            for (d, _) in &adj.sdom {
                if let Some((_, ds)) = self.domains.get_mut(*d as usize) {
                    ds.senders = ds.senders.saturating_sub(1);
                }
                touched.push(RecordKey::SenderDomain(x, *d));
                touched.push(RecordKey::Domain(*d));
            }
        }
        let mut n_co = self.n_co;
        for (s, e) in self.addrs.iter_mut().enumerate() {
            if let Some(adj) = e.adj.as_deref_mut() {
                adj.co.retain(|c| {
                    let gone = c.a == x || c.b == x;
                    if gone {
                        touched.push(RecordKey::Co(s as Id, c.a, c.b));
                        n_co -= 1;
                    }
                    !gone
                });
            }
        }
        self.n_co = n_co;
        let att_keys: Vec<(Id, u64)> = self
            .attachments
            .iter()
            .filter(|((s, _), l)| *s == x || l.iter().any(|e| e.id == x))
            .map(|(k, _)| *k)
            .collect();
        for k in att_keys {
            if k.0 == x {
                self.attachments.remove(&k);
            } else if let Some(l) = self.attachments.get_mut(&k) {
                l.retain(|r| r.id != x);
                if l.is_empty() {
                    self.attachments.remove(&k);
                }
            }
            touched.push(RecordKey::Attachment(k.0, k.1));
        }
        let dis_keys: Vec<(Id, Id)> = self
            .discards
            .keys()
            .filter(|(s, r)| *s == x || *r == x)
            .copied()
            .collect();
        for k in dis_keys {
            self.discards.remove(&k);
            touched.push(RecordKey::Discard(k.0, k.1));
        }
        self.remove_participant(x, &mut touched);
        self.tombstone(x);
        touched.push(RecordKey::Addr(x));
        touched.sort_unstable();
        touched.dedup();
        Some((x, touched))
    }

    /// Retention: delete associations last seen before `cutoff` (edges,
    /// co-recipient pairs, threads, subjects, attachment list entries,
    /// discarded pairs) and addresses last seen
    /// before it, taking them out of the thread, subject and attachment
    /// lists that still name them. Co-recipient pairs keep the day
    /// they were last seen, so a pair goes when its day began before the
    /// cutoff. Returns the counts and every record changed.
    pub fn purge_older_than(&mut self, cutoff: Ts) -> (PurgeCounts, Vec<RecordKey>) {
        let c = clamp_ts(cutoff);
        let mut counts = PurgeCounts::default();
        let mut touched = Vec::new();
        let old: Vec<(Id, Id)> = self
            .edges_iter()
            .filter(|(_, _, e)| e.last < c)
            .map(|(s, r, _)| (s, r))
            .collect();
        for (s, r) in old {
            if self.remove_edge(s, r, &mut touched, &mut counts.co_pairs) {
                counts.edges += 1;
            }
        }
        self.prune_orphans(&mut touched);
        let mut n_co = self.n_co;
        for (s, e) in self.addrs.iter_mut().enumerate() {
            if let Some(adj) = e.adj.as_deref_mut() {
                adj.co.retain(|p| {
                    let gone = p.edge().last < c;
                    if gone {
                        touched.push(RecordKey::Co(s as Id, p.a, p.b));
                        n_co -= 1;
                        counts.co_pairs += 1;
                    }
                    !gone
                });
            }
        }
        self.n_co = n_co;
        let before = self.threads.len() + self.subjects.len();
        for (h, _) in self.threads.iter().filter(|(_, t)| t.last < c) {
            touched.push(RecordKey::Thread(*h));
        }
        for (h, _) in self.subjects.iter().filter(|(_, t)| t.last < c) {
            touched.push(RecordKey::Subject(*h));
        }
        self.threads.retain(|_, t| t.last >= c);
        self.subjects.retain(|_, t| t.last >= c);
        counts.threads = before - self.threads.len() - self.subjects.len();
        let old_dis: Vec<(Id, Id)> = self
            .discards
            .iter()
            .filter(|(_, t)| **t < c)
            .map(|(k, _)| *k)
            .collect();
        for k in old_dis {
            self.discards.remove(&k);
            counts.discards += 1;
            touched.push(RecordKey::Discard(k.0, k.1));
        }
        // An address last seen before the cutoff appears only in mail older
        // than it, yet a list kept for newer mail (a subject that went on,
        // a sender's attachment name used again) may still name it: the
        // list loses it, so that no list keeps an address past retention.
        let addrs = &self.addrs;
        let expired = |id: &Id| addrs.get(*id as usize).is_some_and(|e| e.last_seen < c);
        let before = self.threads.len() + self.subjects.len();
        for (index, key) in [
            (&mut self.threads, RecordKey::Thread as fn(u64) -> RecordKey),
            (&mut self.subjects, RecordKey::Subject),
        ] {
            index.retain(|h, t| {
                if t.participants.iter().any(&expired) {
                    t.participants.retain(|p| !expired(p));
                    touched.push(key(*h));
                }
                !t.participants.is_empty()
            });
        }
        counts.threads += before - self.threads.len() - self.subjects.len();
        // An attachment list entry goes on its own date, and with an
        // expired address.
        let gone = |e: &AttRecipient| e.last < c || expired(&e.id);
        self.attachments.retain(|(s, h), list| {
            if list.iter().any(gone) {
                list.retain(|e| !gone(e));
                touched.push(RecordKey::Attachment(*s, *h));
            }
            !list.is_empty()
        });
        let in_use: std::collections::HashSet<Id> = self
            .threads
            .values()
            .chain(self.subjects.values())
            .flat_map(|t| t.participants.iter().copied())
            .chain(self.attachments.values().flatten().map(|e| e.id))
            .chain(self.discards.keys().flat_map(|(s, r)| [*s, *r]))
            .collect();
        for id in 0..self.addrs.len() as Id {
            let e = &self.addrs[id as usize];
            if e.address.is_empty() || e.last_seen >= c {
                continue;
            }
            let no_edges = e.adj.as_ref().is_none_or(|a| a.out.is_empty());
            if no_edges && e.senders == 0 && !in_use.contains(&id) {
                let att: Vec<(Id, u64)> = self
                    .attachments
                    .keys()
                    .filter(|(s, _)| *s == id)
                    .copied()
                    .collect();
                for k in att {
                    self.attachments.remove(&k);
                    touched.push(RecordKey::Attachment(k.0, k.1));
                }
                if let Some(adj) = self.addrs[id as usize].adj.take() {
                    // (Its out list is empty: nothing to unindex.)
                    for c in &adj.co {
                        touched.push(RecordKey::Co(id, c.a, c.b));
                    }
                    self.n_co -= adj.co.len();
                    for (d, _) in &adj.sdom {
                        touched.push(RecordKey::SenderDomain(id, *d));
                    }
                }
                self.tombstone(id);
                touched.push(RecordKey::Addr(id));
                counts.addresses += 1;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        (counts, touched)
    }

    /// Heap bytes of this graph's tables and lists, counted from their
    /// capacities (hash table buckets and control bytes, vectors, strings,
    /// the reference-count headers of domain names). Allocator overhead per
    /// allocation is not included; process RSS shows it.
    pub fn approx_bytes(&self) -> usize {
        fn map<K, V, S>(m: &HashMap<K, V, S>) -> usize {
            if m.capacity() == 0 {
                return 0;
            }
            // hashbrown: capacity is 7/8 of the buckets (a power of two),
            // one control byte per bucket plus a group's worth.
            let buckets = (m.capacity() * 8 / 7).next_power_of_two();
            buckets * (std::mem::size_of::<(K, V)>() + 1) + 16
        }
        let per_addr: usize = self
            .addrs
            .iter()
            .map(|a| {
                let s = a.address.len();
                let adj = a.adj.as_ref().map_or(0, |j| {
                    std::mem::size_of::<Adjacency>()
                        + j.out.capacity() * std::mem::size_of::<(Id, Edge)>()
                        + j.sdom.capacity() * std::mem::size_of::<(Id, Edge)>()
                        + j.co.capacity() * std::mem::size_of::<CoSlot>()
                });
                s + adj
                    + a.names.capacity() * std::mem::size_of::<Box<str>>()
                    + a.names.iter().map(|n| n.len()).sum::<usize>()
            })
            .sum();
        let lists: usize = self
            .threads
            .values()
            .chain(self.subjects.values())
            .map(|t| t.participants.capacity() * 4)
            .sum::<usize>()
            + self
                .attachments
                .values()
                .map(|l| l.capacity() * std::mem::size_of::<AttRecipient>())
                .sum::<usize>();
        self.ids.bytes()
            + self.addrs.capacity() * std::mem::size_of::<AddrEntry>()
            + self.sketches.capacity() * std::mem::size_of::<Sketch>()
            + self.in_lists.capacity() * std::mem::size_of::<Box<[Id]>>()
            + self.in_lists.iter().map(|l| l.len()).sum::<usize>() * std::mem::size_of::<Id>()
            + per_addr
            + map(&self.domain_ids)
            + self.domains.capacity() * std::mem::size_of::<(Arc<str>, DomainStats)>()
            + self
                .domains
                .iter()
                .map(|(d, _)| 16 + d.len())
                .sum::<usize>()
            + self.threads.bytes(map)
            + self.subjects.bytes(map)
            + map(&self.attachments)
            + map(&self.discards)
            + lists
    }

    /// Number of live (not forgotten) addresses.
    pub fn live_address_count(&self) -> usize {
        self.ids.len()
    }

    /// Number of domains, threads (Message-ID) and subjects.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }
    pub fn subject_count(&self) -> usize {
        self.subjects.len()
    }
    pub fn attachment_count(&self) -> usize {
        self.attachments.len()
    }

    /// Everything stored about one address, readable (data subject access).
    /// `None` when the address is unknown.
    pub fn export(&self, addr: &str) -> Option<serde_json::Value> {
        use serde_json::json;
        let x = self.id(addr)?;
        let e = self.addrs.get(x as usize)?;
        let day = |t: u32| -> String { format_ts(t as Ts) };
        let edge_json = |other: &str, ed: &Edge| {
            json!({
                "address": other,
                "to": ed.to, "cc": ed.cc, "bcc": ed.bcc,
                "first": day(ed.first), "last": day(ed.last),
                "weight": ed.weight,
            })
        };
        let mut sent_to: Vec<_> = e
            .adj
            .iter()
            .flat_map(|a| a.out.iter())
            .filter_map(|(r, ed)| Some(edge_json(self.address_of(*r)?, ed)))
            .collect();
        sent_to.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut received_from: Vec<_> = self
            .senders_of(x)
            .into_iter()
            .filter_map(|s| Some(edge_json(self.address_of(s)?, self.edge_ids(s, x)?)))
            .collect();
        received_from.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut co: Vec<_> = self
            .co_iter()
            .filter(|(s, a, b, _)| *s == x || *a == x || *b == x)
            .filter_map(|(s, a, b, c)| {
                let mut pair = [self.address_of(a)?, self.address_of(b)?];
                pair.sort_unstable();
                Some(json!({
                    "sender": self.address_of(s)?,
                    "recipients": pair,
                    "messages": c.count,
                    "last": day(c.last),
                }))
            })
            .collect();
        co.sort_by_key(|v| v.to_string());
        let mut domains: Vec<_> = e
            .adj
            .iter()
            .flat_map(|a| a.sdom.iter())
            .filter_map(|(d, ed)| Some(edge_json(&self.domains.get(*d as usize)?.0, ed)))
            .collect();
        domains.sort_by_key(|v| v.to_string());
        let threads = self
            .threads
            .values()
            .filter(|t| t.participants.contains(&x))
            .count();
        let subjects = self
            .subjects
            .values()
            .filter(|t| t.participants.contains(&x))
            .count();
        let att_sent = self.attachments.keys().filter(|(s, _)| *s == x).count();
        let att_received = self
            .attachments
            .values()
            .filter(|l| l.iter().any(|e| e.id == x))
            .count();
        let mut discarded: Vec<_> = self
            .discards
            .iter()
            .filter(|((s, r), _)| *s == x || *r == x)
            .filter_map(|((s, r), t)| {
                Some(json!({
                    "sender": self.address_of(*s)?,
                    "recipient": self.address_of(*r)?,
                    "last": day(*t),
                }))
            })
            .collect();
        discarded.sort_by_key(|v| v.to_string());
        Some(json!({
            "address": &*e.address,
            "display_names": e.names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "messages_sent": e.sent,
            "messages_received": e.received,
            "distinct_senders": e.senders,
            "first_sent": (e.first_sent > 0).then(|| day(e.first_sent)),
            "last_sent": (e.last_sent > 0).then(|| day(e.last_sent)),
            "last_seen": day(e.last_seen),
            "sent_to": sent_to,
            "received_from": received_from,
            "sent_to_domains": domains,
            "co_recipient_pairs": co,
            "threads_participated": threads,
            "subject_threads_participated": subjects,
            "attachment_names_sent": att_sent,
            "attachment_names_received": att_received,
            "discarded_holds": discarded,
            "note": "thread keys and attachment names are stored only as hashes, so they are counted, not listed",
        }))
    }
}

/// RFC 3339 UTC form of Unix seconds.
pub fn format_ts(t: Ts) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// One graph per tenant. Scoring for a tenant only ever sees that tenant's
/// graph.
#[derive(Debug, Default)]
pub struct Tenants {
    pub graphs: HashMap<String, Graph>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(a: &str, f: Field) -> Recipient {
        Recipient {
            address: a.into(),
            name: None,
            field: f,
        }
    }

    fn learn(g: &mut Graph, from: &str, rcpts: &[Recipient], ts: Ts) {
        g.learn(&LearnInput {
            sender: from,
            sender_name: Some("Alice"),
            recipients: rcpts,
            message_id: Some("<m@x>"),
            subject: Some("RE: budget"),
            attachments: vec!["Q3.xls"],
            ts,
        });
    }

    #[test]
    fn counts_edges_corecipients_domains() {
        let mut g = Graph::new(GraphConfig::default());
        let r = [
            rcpt("bob@a.com", Field::To),
            rcpt("carol@a.com", Field::Cc),
            rcpt("dan@b.org", Field::Bcc),
        ];
        learn(&mut g, "alice@a.com", &r, 1000);
        learn(&mut g, "alice@a.com", &r[..2], 2000);
        let e = g.edge("alice@a.com", "bob@a.com").unwrap();
        assert_eq!((e.to, e.cc, e.bcc, e.first, e.last), (2, 0, 0, 1000, 2000));
        assert_eq!(g.edge("alice@a.com", "dan@b.org").unwrap().bcc, 1);
        assert!(g.edge("bob@a.com", "alice@a.com").is_none());
        assert_eq!(g.co_count("alice@a.com", "bob@a.com", "carol@a.com"), 2);
        assert_eq!(g.co_count("alice@a.com", "carol@a.com", "bob@a.com"), 2);
        assert_eq!(g.co_count("alice@a.com", "bob@a.com", "dan@b.org"), 1);
        assert_eq!(g.sender("alice@a.com").messages, 2);
        assert_eq!(g.sender("alice@a.com").contacts, 3);
        let d = g.domain("a.com");
        assert_eq!((d.senders, d.addresses, d.messages), (1, 2, 4));
        assert_eq!(g.sender_domain("alice@a.com", "a.com").unwrap().total(), 4);
        assert_eq!(g.address("bob@a.com").senders, 1);
        assert_eq!(g.display_names("alice@a.com"), vec!["Alice"]);
        let mut contacts = Vec::new();
        g.for_each_contact("alice@a.com", &mut |a, e| {
            contacts.push((a.to_string(), e.total()))
        });
        assert_eq!(contacts.len(), 3);
    }

    #[test]
    fn decayed_weight() {
        let mut g = Graph::new(GraphConfig {
            half_life: std::time::Duration::from_secs(100),
            ..Default::default()
        });
        let r = [rcpt("bob@a.com", Field::To)];
        learn(&mut g, "alice@a.com", &r, 1000);
        learn(&mut g, "alice@a.com", &r, 1100);
        let e = g.edge("alice@a.com", "bob@a.com").unwrap();
        assert!((e.weight - 1.5).abs() < 1e-6, "{}", e.weight);
        assert!((e.weight_at(1200, 100.0) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn threads_subjects_attachments() {
        let mut g = Graph::new(GraphConfig::default());
        let r = [rcpt("bob@a.com", Field::To)];
        learn(&mut g, "alice@a.com", &r, 1000);
        assert_eq!(
            g.thread_participants(&["<m@x>".into()]),
            vec!["alice@a.com", "bob@a.com"]
        );
        assert!(g.thread_participants(&["<other@x>".into()]).is_empty());
        assert_eq!(
            g.subject_participants("alice@a.com", "Re: RE: Budget"),
            vec!["alice@a.com", "bob@a.com"]
        );
        assert!(g.subject_participants("zed@a.com", "budget").is_empty());
        assert_eq!(
            g.attachment_recipients("alice@a.com", "q3.XLS"),
            vec!["bob@a.com"]
        );
    }
}

/// The in-lists recomputed from scratch from the out lists (sorted, no
/// duplicates, no tombstone among the senders) equal the graph's.
#[cfg(test)]
fn assert_in_lists_exact(g: &Graph) {
    assert_eq!(g.in_lists.len(), g.addrs.len());
    let mut want: Vec<Vec<Id>> = vec![Vec::new(); g.addrs.len()];
    for (s, r, _) in g.edges_iter() {
        assert!(!g.is_tombstone(s), "tombstone {s} sends");
        want[r as usize].push(s);
    }
    for (r, (l, w)) in g.in_lists.iter().zip(&want).enumerate() {
        assert!(l.windows(2).all(|p| p[0] < p[1]), "{r}: {l:?}");
        assert_eq!(&**l, w.as_slice(), "in-list of {r}");
        assert!(l.iter().all(|s| !g.is_tombstone(*s)), "{r}: {l:?}");
        assert_eq!(g.senders_of(r as Id), *w);
    }
}

/// `g` saved and loaded as the Postgres store does (entries wholesale,
/// then edges, pairs and domain edges in any order; here reversed, with
/// one edge repeated, which loading must dedup).
#[cfg(test)]
fn reloaded(g: &Graph) -> Graph {
    let mut g2 = Graph::new(g.cfg.clone());
    g2.domain_ids = g.domain_ids.clone();
    g2.addrs = g.addrs.iter().map(AddrEntry::without_adjacency).collect();
    g2.rebuild_index();
    g2.domains = g.domains.clone();
    let mut edges: Vec<(Id, Id, Edge)> = g.edges_iter().map(|(s, r, e)| (s, r, *e)).collect();
    edges.reverse();
    if let Some(first) = edges.first().copied() {
        edges.push(first);
    }
    for (s, r, e) in edges {
        g2.load_edge(s, r, e);
    }
    for (s, a, b, c) in g.co_iter() {
        g2.load_co(s, a, b, c);
    }
    for (s, d, e) in g.sdom_iter() {
        g2.load_sdom(s, d, *e);
    }
    g2.finish_load();
    g2
}

/// Learn one message from `sender` to `to` with at most one attachment
/// and no Message-ID or subject (for tests).
#[cfg(test)]
pub(crate) fn learn_one(g: &mut Graph, sender: &str, to: &str, att: Option<&str>, ts: Ts) {
    let rc = [Recipient {
        address: to.into(),
        name: None,
        field: Field::To,
    }];
    g.learn(&LearnInput {
        sender,
        sender_name: None,
        recipients: &rc,
        message_id: None,
        subject: None,
        attachments: att.into_iter().collect(),
        ts,
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod privacy_tests {
    use super::*;

    fn r(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            name: Some("Name".into()),
            field: Field::To,
        }
    }

    #[test]
    fn forget_leaves_no_trace_and_fixes_counters() {
        let mut g = Graph::new(GraphConfig::default());
        let rc = [r("bob@x.com"), r("carol@x.com")];
        g.learn(&LearnInput {
            sender: "alice@a.com",
            sender_name: None,
            recipients: &rc,
            message_id: Some("<1@a>"),
            subject: Some("hi"),
            attachments: vec!["a.pdf"],
            ts: 100,
        });
        let (_, touched) = g.forget("bob@x.com").unwrap();
        assert!(touched.contains(&RecordKey::Edge(0, 1)));
        assert!(g.id("bob@x.com").is_none());
        assert!(g.display_names("bob@x.com").is_empty());
        assert_eq!(g.co_count("alice@a.com", "bob@x.com", "carol@x.com"), 0);
        assert_eq!(g.thread_participants(&["<1@a>".into()]).len(), 2);
        assert_eq!(
            g.attachment_recipients("alice@a.com", "a.pdf"),
            vec!["carol@x.com"]
        );
        let d = g.domain("x.com");
        assert_eq!((d.senders, d.addresses, d.messages), (1, 1, 1));
        assert_eq!(g.sender_domain("alice@a.com", "x.com").unwrap().to, 1);
        assert!(g.forget("bob@x.com").is_none());
        // Forgetting the sender removes everything it sent.
        g.forget("alice@a.com").unwrap();
        assert_eq!(g.edge_count(), 0);
        assert_eq!(g.address("carol@x.com"), AddressStats::default());
        assert_eq!(g.domain("x.com").senders, 0);
    }

    /// Each recipient of an attachment list has its own date: retention
    /// takes out one the attachment was last sent to before the cutoff
    /// although the sender writes to that recipient since; sending it
    /// again renews the date; a full list makes room by dropping the one
    /// sent to longest ago.
    #[test]
    fn attachment_list_entries_keep_and_lose_their_own_dates() {
        let mut g = Graph::new(GraphConfig {
            max_attachment_recipients: 2,
            ..Default::default()
        });
        let learn = |g: &mut Graph, to: &str, att: Option<&str>, ts: Ts| {
            learn_one(g, "alice@a.com", to, att, ts)
        };
        learn(&mut g, "carol@x.com", Some("plan.pdf"), 1_000);
        learn(&mut g, "dave@x.com", Some("plan.pdf"), 2_000);
        learn(&mut g, "dave@x.com", Some("plan.pdf"), 300_000);
        learn(&mut g, "carol@x.com", None, 400_000);
        let (_, touched) = g.purge_older_than(100_000);
        assert!(g.edge("alice@a.com", "carol@x.com").is_some());
        assert_eq!(
            g.attachment_recipients("alice@a.com", "plan.pdf"),
            vec!["dave@x.com"]
        );
        let a = g.id("alice@a.com").unwrap();
        assert!(touched.contains(&RecordKey::Attachment(a, attachment_key("plan.pdf"))));
        // Full at two: erin, sent last, replaces frank, sent longest ago.
        learn(&mut g, "frank@x.com", Some("plan.pdf"), 200_000);
        learn(&mut g, "erin@x.com", Some("plan.pdf"), 500_000);
        let mut list = g.attachment_recipients("alice@a.com", "plan.pdf");
        list.sort();
        assert_eq!(list, vec!["dave@x.com", "erin@x.com"]);
    }

    /// Retention removes an address last seen before the cutoff even when
    /// an attachment list or a long-running subject still names it: the
    /// lists lose it instead of keeping it alive.
    #[test]
    fn retention_removes_expired_addresses_from_attachment_and_subject_lists() {
        let mut g = Graph::new(GraphConfig {
            thread_window: std::time::Duration::from_secs(1_000_000),
            ..Default::default()
        });
        let learn = |g: &mut Graph, to: &str, att: &'static str, ts: Ts| {
            let rc = [r(to)];
            g.learn(&LearnInput {
                sender: "alice@a.com",
                sender_name: None,
                recipients: &rc,
                message_id: None,
                subject: Some("budget"),
                attachments: vec![att],
                ts,
            });
        };
        // bob: one message long ago; carol: then and recently, on the same
        // subject and attachment name.
        learn(&mut g, "bob@x.com", "plan.pdf", 1_000);
        learn(&mut g, "carol@x.com", "plan.pdf", 1_000);
        learn(&mut g, "carol@x.com", "plan.pdf", 500_000);
        let (counts, touched) = g.purge_older_than(100_000);
        assert!(g.id("bob@x.com").is_none(), "bob outlived retention");
        assert_eq!(counts.addresses, 1);
        assert_eq!(
            g.attachment_recipients("alice@a.com", "plan.pdf"),
            vec!["carol@x.com"]
        );
        let subj = g.subject_participants("alice@a.com", "budget");
        assert!(subj.contains(&"carol@x.com".to_string()));
        assert!(!subj.contains(&"bob@x.com".to_string()));
        let a = g.id("alice@a.com").unwrap();
        assert!(touched.contains(&RecordKey::Attachment(a, attachment_key("plan.pdf"))));
        assert!(touched.contains(&RecordKey::Subject(key_hash(&thread_subject("budget")))));
        // What is left is consistent with a graph that only ever saw the
        // recent message.
        assert!(g.id("carol@x.com").is_some());
    }

    #[test]
    fn thread_index_is_bounded_and_evictions_are_reported() {
        let mut g = Graph::new(GraphConfig {
            max_threads: 16,
            ..Default::default()
        });
        let rc = [r("bob@x.com")];
        let mut evicted = std::collections::HashSet::new();
        for i in 0..40 {
            let mid = format!("<{i}@a>");
            let subj = format!("topic {i}");
            let input = LearnInput {
                sender: "alice@a.com",
                sender_name: None,
                recipients: &rc,
                message_id: Some(&mid),
                subject: Some(&subj),
                attachments: vec![],
                ts: 1000 + i,
            };
            g.learn(&input);
            let mut t = std::collections::HashSet::new();
            g.touched_by(&input, &mut t);
            evicted.extend(
                t.into_iter()
                    .filter(|k| matches!(k, RecordKey::Thread(h) if !g.threads.contains_key(h))),
            );
            assert!(g.thread_count() <= 16 && g.subject_count() <= 16);
        }
        // The newest message's thread is kept, the oldest ones went, and
        // every evicted key was reported for deletion.
        assert_eq!(g.thread_participants(&["<39@a>".into()]).len(), 2);
        assert!(g.thread_participants(&["<0@a>".into()]).is_empty());
        assert_eq!(evicted.len() + g.thread_count(), 40);
    }

    #[test]
    fn sorted_lists_match_counters_after_forget_and_purge() {
        let mut g = Graph::new(GraphConfig::default());
        for i in 0..30u32 {
            let rc = [
                r(&format!("u{}@x.com", i % 7)),
                r(&format!("u{}@y.com", i % 5)),
            ];
            g.learn(&LearnInput {
                sender: &format!("s{}@a.com", i % 3),
                sender_name: None,
                recipients: &rc,
                message_id: None,
                subject: None,
                attachments: vec![],
                ts: 86400 * (i as Ts + 1),
            });
        }
        let check = |g: &Graph| {
            // Every slot's sketch is its address's (a tombstone's too).
            assert_eq!(g.sketches.len(), g.addrs.len());
            for (e, k) in g.addrs.iter().zip(&g.sketches) {
                assert_eq!(*k, Sketch::of(&e.address));
            }
            assert_eq!(g.edges_iter().count(), g.edge_count());
            assert_eq!(g.co_iter().count(), g.co_count_total());
            for e in &g.addrs {
                if let Some(a) = &e.adj {
                    assert!(a.out.windows(2).all(|w| w[0].0 < w[1].0));
                    assert!(a.co.windows(2).all(|w| (w[0].a, w[0].b) < (w[1].a, w[1].b)));
                    assert!(a.co.iter().all(|c| c.a < c.b));
                }
            }
            assert_in_lists_exact(g);
        };
        check(&g);
        // The per-edge and per-pair sizes the README states.
        assert_eq!(std::mem::size_of::<(Id, Edge)>(), 28);
        assert_eq!(std::mem::size_of::<CoSlot>(), 12);
        let before = g.edge_count();
        g.forget("u3@x.com").unwrap();
        check(&g);
        assert!(g.edge_count() < before);
        assert_eq!(g.co_count("s0@a.com", "u3@x.com", "u3@y.com"), 0);
        let (counts, _) = g.purge_older_than(86400 * 20);
        assert!(counts.edges > 0 && counts.co_pairs > 0);
        check(&g);
        // What is left was all seen on or after the cutoff day.
        assert!(g.edges_iter().all(|(_, _, e)| e.last >= 86400 * 20));
        assert!(g.co_iter().all(|(_, _, _, c)| c.last >= 86400 * 20));
        // Reloaded (as a store load does), the in-lists come back the same.
        let g2 = reloaded(&g);
        check(&g2);
        assert_eq!(g2.in_lists, g.in_lists);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(989_883_540), "2001-05-14T23:39:00Z");
        assert_eq!(format_ts(1_709_164_800), "2024-02-29T00:00:00Z");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod discard_tests {
    use super::*;

    fn to(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            name: None,
            field: Field::To,
        }
    }

    fn send(g: &mut Graph, from: &str, rcpt: &str, ts: Ts) {
        super::id_view_tests::send_to(g, from, &[to(rcpt)], ts);
    }

    #[test]
    fn discard_holds_until_a_later_delivery_and_retention_purges_it() {
        let mut g = Graph::new(GraphConfig::default());
        send(&mut g, "a@x.test", "b@x.test", 1000);
        let touched = g.learn_discard("a@x.test", &["b@x.test", "c@y.test"], 2000);
        let (a, b, c) = (
            g.id("a@x.test").unwrap(),
            g.id("b@x.test").unwrap(),
            g.id("c@y.test").unwrap(),
        );
        assert!(touched.contains(&RecordKey::Discard(a, b)));
        assert!(touched.contains(&RecordKey::Discard(a, c)));
        assert!(touched.contains(&RecordKey::Addr(c)));
        // Discarded after the last delivery: counts.
        assert_eq!(g.discarded("a@x.test", "b@x.test"), Some(2000));
        assert_eq!(g.discarded("a@x.test", "c@y.test"), Some(2000));
        // Another sender's pair is not affected.
        assert_eq!(g.discarded("b@x.test", "c@y.test"), None);
        // Delivered since: the sender meant it after all.
        send(&mut g, "a@x.test", "b@x.test", 3000);
        assert_eq!(g.discarded("a@x.test", "b@x.test"), None);
        // A later discard wins over an earlier one, never the reverse.
        g.learn_discard("a@x.test", &["c@y.test"], 1500);
        assert_eq!(g.discarded("a@x.test", "c@y.test"), Some(2000));
        // Retention drops discards older than the cutoff, and then the
        // address that only they kept alive.
        let (counts, touched) = g.purge_older_than(2500);
        assert_eq!(counts.discards, 2);
        assert!(touched.contains(&RecordKey::Discard(a, c)));
        assert_eq!(g.discard_count(), 0);
        assert!(g.id("c@y.test").is_none());
    }

    #[test]
    fn forget_removes_discards_in_both_directions() {
        let mut g = Graph::new(GraphConfig::default());
        g.learn_discard("a@x.test", &["b@x.test"], 2000);
        g.learn_discard("b@x.test", &["c@x.test"], 2000);
        let (_, touched) = g.forget("b@x.test").unwrap();
        assert_eq!(
            touched
                .iter()
                .filter(|k| matches!(k, RecordKey::Discard(..)))
                .count(),
            2
        );
        assert_eq!(g.discard_count(), 0);
        assert!(!g
            .all_records()
            .iter()
            .any(|k| matches!(k, RecordKey::Discard(..))));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod id_view_tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Learn a message with only a sender and recipients (no names, ids,
    /// subject or attachments).
    pub(super) fn send_to(g: &mut Graph, from: &str, rcpts: &[Recipient], ts: Ts) {
        g.learn(&LearnInput {
            sender: from,
            sender_name: None,
            recipients: rcpts,
            message_id: None,
            subject: None,
            attachments: vec![],
            ts,
        });
    }

    /// The neighbourhood count by sorted-list merge (or binary search when
    /// the address's own list is far longer) equals counting the first
    /// `limit` contacts one by one with edge lookups in both directions,
    /// for every sender, address and limit; and the id lookups equal the
    /// string ones.
    #[test]
    fn contacts_with_mail_by_id_counts_as_edge_lookups_do() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut g = Graph::new(GraphConfig::default());
        let people: Vec<String> = (0..120).map(|i| format!("p{i}@corp.test")).collect();
        for t in 0..3000 {
            // A few heavy senders, so that some lists are 8 times longer
            // than others.
            let s = if rng.gen_bool(0.3) {
                rng.gen_range(0..3)
            } else {
                rng.gen_range(0..people.len())
            };
            let k = rng.gen_range(1..4);
            let rcpts: Vec<Recipient> = (0..k)
                .map(|_| Recipient {
                    // A few popular recipients, so that some in-lists are
                    // far longer than the contacts checked.
                    address: if rng.gen_bool(0.2) {
                        people[rng.gen_range(100..103)].clone()
                    } else {
                        people[rng.gen_range(0..people.len())].clone()
                    },
                    name: None,
                    field: Field::To,
                })
                .collect();
            send_to(&mut g, &people[s], &rcpts, 1_700_000_000 + t);
        }
        g.forget(&people[7]).unwrap();
        assert_in_lists_exact(&g);
        let mut checked = 0;
        // (address, limit) pairs taking each way through each of x's
        // lists: [out merged, out searched, in merged, in searched].
        let mut ways = [0usize; 4];
        for s in &people {
            for x in people.iter().step_by(3).chain(&people[100..103]) {
                for limit in [0, 1, 5, 40, 512] {
                    if let (Some(si), Some(xi)) = (g.id_of(s), g.id_of(x)) {
                        let n = g.adj(si).map_or(0, |a| a.out.len());
                        let checks = 8 * n.min(limit).max(1);
                        let out = g.adj(xi).map_or(0, |a| a.out.len());
                        let inl = g.in_lists[xi as usize].len();
                        ways[usize::from(out > checks)] += usize::from(out > 0);
                        ways[2 + usize::from(inl > checks)] += usize::from(inl > 0);
                    }
                    let mut want = 0u32;
                    let mut seen = 0usize;
                    g.for_each_contact(s, &mut |c, _| {
                        seen += 1;
                        if seen <= limit
                            && c != x
                            && (g.edge(c, x).is_some() || g.edge(x, c).is_some())
                        {
                            want += 1;
                        }
                    });
                    assert_eq!(g.contacts_with_mail(s, x, limit), want, "{s} {x} {limit}");
                    if let (Some(si), Some(xi)) = (g.id_of(s), g.id_of(x)) {
                        assert_eq!(g.contacts_with_mail_by_id(si, xi, limit), want);
                        assert_eq!(g.edge_by_id(si, xi), g.edge(s, x));
                        assert_eq!(g.address_by_id(xi), g.address(x));
                        checked += usize::from(want > 0);
                    }
                }
            }
        }
        assert!(checked > 100, "{checked}");
        assert!(ways.iter().all(|w| *w > 100), "{ways:?}");
    }

    /// Through random learning, forgetting, retention and reloading, every
    /// in-list stays exactly the out lists turned around.
    #[test]
    fn in_lists_stay_exact_through_learn_forget_purge_and_reload() {
        let mut rng = StdRng::seed_from_u64(23);
        let mut g = Graph::new(GraphConfig::default());
        let people: Vec<String> = (0..80).map(|i| format!("p{i}@corp.test")).collect();
        let mut forgotten = 0;
        for round in 0..6 {
            for t in 0..400 {
                let s = rng.gen_range(0..people.len());
                let k = rng.gen_range(1..6);
                let rcpts: Vec<Recipient> = (0..k)
                    .map(|_| Recipient {
                        address: people[rng.gen_range(0..people.len())].clone(),
                        name: None,
                        field: Field::To,
                    })
                    .collect();
                send_to(&mut g, &people[s], &rcpts, 86400 * (round * 400 + t + 1));
            }
            assert_in_lists_exact(&g);
            for _ in 0..3 {
                if g.forget(&people[rng.gen_range(0..people.len())]).is_some() {
                    forgotten += 1;
                }
                assert_in_lists_exact(&g);
            }
            let (counts, _) = g.purge_older_than(86400 * (round * 400 + 150));
            assert!(round == 0 || counts.edges > 0);
            assert_in_lists_exact(&g);
            let g2 = reloaded(&g);
            assert_in_lists_exact(&g2);
            assert_eq!(g2.in_lists, g.in_lists);
            g.shrink_to_fit();
            assert_in_lists_exact(&g);
        }
        assert!(forgotten > 5, "{forgotten}");
        assert!(g.edge_count() > 500, "{}", g.edge_count());
    }
}
