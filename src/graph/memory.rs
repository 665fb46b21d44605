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
    /// Recipients kept per (sender, attachment name).
    pub max_attachment_recipients: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            half_life: std::time::Duration::from_secs(90 * 86400),
            max_corecipients: 50,
            max_names: 4,
            max_thread_participants: 64,
            max_attachment_recipients: 32,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadEntry {
    pub participants: Vec<Id>,
    pub last: u32,
}

/// Per-address counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AddrEntry {
    pub address: Arc<str>,
    pub sent: u32,
    pub received: u32,
    pub senders: u32,
    pub first_sent: u32,
    pub last_sent: u32,
    pub last_seen: u32,
    /// Recipients ever written to (adjacency list, for contact scans).
    pub contacts: Vec<Id>,
    pub names: Vec<Box<str>>,
}

/// Hash map with foldhash: several times faster than SipHash on the short
/// keys here (address strings, id tuples) and seeded per process, which
/// keeps hash flooding by crafted addresses impractical.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One tenant's association graph.
#[derive(Debug, Default)]
pub struct Graph {
    pub cfg: GraphConfig,
    pub(crate) ids: FastMap<Arc<str>, Id>,
    pub(crate) addrs: Vec<AddrEntry>,
    pub(crate) domain_ids: FastMap<Arc<str>, Id>,
    pub(crate) domains: Vec<(Arc<str>, DomainStats)>,
    pub(crate) edges: FastMap<(Id, Id), Edge>,
    /// (sender, lower id, higher id)
    pub(crate) co: FastMap<(Id, Id, Id), CoEdge>,
    /// (sender, domain id)
    pub(crate) sender_domains: FastMap<(Id, Id), Edge>,
    /// Hash of the Message-ID.
    pub(crate) threads: FastMap<u64, ThreadEntry>,
    /// Hash of the thread subject.
    pub(crate) subjects: FastMap<u64, ThreadEntry>,
    /// (sender, hash of the lower-cased attachment name)
    pub(crate) attachments: FastMap<(Id, u64), Vec<Id>>,
    /// (sender, recipient) -> when a held message from the sender naming
    /// the recipient was last discarded (an admin or the expiry task judged
    /// it misaddressed). Rare, so a plain map.
    pub(crate) discards: FastMap<(Id, Id), u32>,
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
        self.ids.get(addr).copied()
    }

    /// Address of an id.
    pub fn address_of(&self, id: Id) -> Option<&str> {
        self.addrs.get(id as usize).map(|a| &*a.address)
    }

    /// Intern an address (and its domain).
    pub fn intern(&mut self, addr: &str) -> Id {
        if let Some(id) = self.ids.get(addr) {
            return *id;
        }
        let id = self.addrs.len() as Id;
        let a: Arc<str> = Arc::from(addr);
        self.ids.insert(a.clone(), id);
        self.addrs.push(AddrEntry {
            address: a,
            ..Default::default()
        });
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
            let new_edge = !self.edges.contains_key(&(s, rid));
            self.edges
                .entry((s, rid))
                .or_default()
                .bump(r.field, m.ts, hl);
            let did = self.intern_domain(domain_of(&r.address));
            let new_domain_edge = !self.sender_domains.contains_key(&(s, did));
            self.sender_domains
                .entry((s, did))
                .or_default()
                .bump(r.field, m.ts, hl);
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
                self.addrs[s as usize].contacts.push(rid);
            }
            // First time anyone wrote to this address: count it for its domain.
            if self.addrs[rid as usize].received == 1 {
                self.domains[did as usize].1.addresses += 1;
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
                    let c = self.co.entry((s, a, b)).or_default();
                    c.count = c.count.saturating_add(1);
                    c.last = c.last.max(t);
                }
            }
        }
        let max_p = self.cfg.max_thread_participants;
        let mut participants = Vec::with_capacity(rids.len() + 1);
        participants.push(s);
        participants.extend(rids.iter().take(max_p.saturating_sub(1)));
        if let Some(mid) = m.message_id {
            self.threads.insert(
                key_hash(mid),
                ThreadEntry {
                    participants: participants.clone(),
                    last: t,
                },
            );
        }
        if let Some(subj) = m.subject {
            let ts = thread_subject(subj);
            if !ts.is_empty() {
                let e = self.subjects.entry(key_hash(&ts)).or_default();
                if t >= e.last {
                    e.participants = participants;
                    e.last = t;
                }
            }
        }
        let max_a = self.cfg.max_attachment_recipients;
        for name in &m.attachments {
            let list = self
                .attachments
                .entry((s, attachment_key(name)))
                .or_default();
            for rid in &rids {
                if !list.contains(rid) {
                    if list.len() >= max_a {
                        list.remove(0);
                    }
                    list.push(*rid);
                }
            }
        }
    }

    /// Number of sender-recipient edges.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Number of co-recipient pairs.
    pub fn co_count_total(&self) -> usize {
        self.co.len()
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
        self.edges.get(&(s, r)).map(Edge::stats)
    }

    fn sender(&self, sender: &str) -> SenderStats {
        match self.id(sender).and_then(|s| self.addrs.get(s as usize)) {
            Some(e) => SenderStats {
                messages: e.sent,
                contacts: e.contacts.len() as u32,
                first: e.first_sent as Ts,
                last: e.last_sent as Ts,
            },
            None => SenderStats::default(),
        }
    }

    fn address(&self, addr: &str) -> AddressStats {
        match self.id(addr).and_then(|s| self.addrs.get(s as usize)) {
            Some(e) => AddressStats {
                senders: e.senders,
                received: e.received,
                sent: e.sent,
            },
            None => AddressStats::default(),
        }
    }

    fn co_count(&self, sender: &str, a: &str, b: &str) -> u32 {
        let (Some(s), Some(a), Some(b)) = (self.id(sender), self.id(a), self.id(b)) else {
            return 0;
        };
        let key = if a < b { (s, a, b) } else { (s, b, a) };
        self.co.get(&key).map(|c| c.count).unwrap_or(0)
    }

    fn sender_domain(&self, sender: &str, domain: &str) -> Option<EdgeStats> {
        let s = self.id(sender)?;
        let d = self.domain_ids.get(domain)?;
        self.sender_domains.get(&(s, *d)).map(Edge::stats)
    }

    fn domain(&self, domain: &str) -> DomainStats {
        self.domain_ids
            .get(domain)
            .and_then(|d| self.domains.get(*d as usize))
            .map(|d| d.1)
            .unwrap_or_default()
    }

    fn for_each_contact(&self, sender: &str, f: &mut dyn FnMut(&str, &EdgeStats)) {
        let Some(s) = self.id(sender) else { return };
        let Some(e) = self.addrs.get(s as usize) else {
            return;
        };
        for rid in &e.contacts {
            if let (Some(addr), Some(edge)) = (self.address_of(*rid), self.edges.get(&(s, *rid))) {
                f(addr, &edge.stats());
            }
        }
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
        let (s, r) = (self.id(sender)?, self.id(rcpt)?);
        let t = *self.discards.get(&(s, r))?;
        let delivered_since = self.edges.get(&(s, r)).is_some_and(|e| e.last >= t);
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
                    .filter_map(|id| self.address_of(*id).map(str::to_string))
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
            self.addrs.len() + self.edges.len() * 2 + self.co.len() + self.threads.len(),
        );
        for id in 0..self.addrs.len() as Id {
            if !self.is_tombstone(id) {
                out.push(RecordKey::Addr(id));
            }
        }
        out.extend((0..self.domains.len() as Id).map(RecordKey::Domain));
        out.extend(self.edges.keys().map(|(s, r)| RecordKey::Edge(*s, *r)));
        out.extend(
            self.sender_domains
                .keys()
                .map(|(s, d)| RecordKey::SenderDomain(*s, *d)),
        );
        out.extend(self.co.keys().map(|(s, a, b)| RecordKey::Co(*s, *a, *b)));
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

    /// Remove the edge `s -> r` and undo its contribution to the counters
    /// of `r`, of `r`'s domain and of the sender's domain edge; co-recipient
    /// pairs and attachment lists are cleaned by [`Graph::prune_orphans`].
    fn remove_edge(&mut self, s: Id, r: Id, touched: &mut Vec<RecordKey>) -> bool {
        let Some(e) = self.edges.remove(&(s, r)) else {
            return false;
        };
        touched.push(RecordKey::Edge(s, r));
        touched.push(RecordKey::Addr(s));
        touched.push(RecordKey::Addr(r));
        let n = e.to.saturating_add(e.cc).saturating_add(e.bcc);
        if let Some(se) = self.addrs.get_mut(s as usize) {
            se.contacts.retain(|c| *c != r);
        }
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
            if let Some(sd) = self.sender_domains.get_mut(&(s, d)) {
                sd.to = sd.to.saturating_sub(e.to);
                sd.cc = sd.cc.saturating_sub(e.cc);
                sd.bcc = sd.bcc.saturating_sub(e.bcc);
                sd.weight = (sd.weight - e.weight).max(0.0);
                drop_sd = sd.to == 0 && sd.cc == 0 && sd.bcc == 0;
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
            if drop_sd {
                self.sender_domains.remove(&(s, d));
            }
        }
        true
    }

    /// After edges were removed: drop co-recipient pairs and attachment
    /// list entries whose sender-recipient edge no longer exists (one pass).
    fn prune_orphans(&mut self, touched: &mut Vec<RecordKey>) -> usize {
        let edges = &self.edges;
        let dead: Vec<(Id, Id, Id)> = self
            .co
            .keys()
            .filter(|(s, a, b)| !edges.contains_key(&(*s, *a)) || !edges.contains_key(&(*s, *b)))
            .copied()
            .collect();
        for k in &dead {
            self.co.remove(k);
            touched.push(RecordKey::Co(k.0, k.1, k.2));
        }
        for ((s, h), list) in self.attachments.iter_mut() {
            let before = list.len();
            list.retain(|r| edges.contains_key(&(*s, *r)));
            if list.len() != before {
                touched.push(RecordKey::Attachment(*s, *h));
            }
        }
        self.attachments.retain(|_, l| !l.is_empty());
        dead.len()
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
        if let Some(e) = self.addrs.get_mut(id as usize) {
            self.ids.remove(&e.address);
            *e = AddrEntry {
                address: Arc::from(""),
                ..Default::default()
            };
        }
    }

    /// Erase every association involving `addr`: as sender, recipient,
    /// co-recipient, display names, thread participant and attachment
    /// recipient. Afterwards the address scores as never seen. Returns the
    /// forgotten id (its slot is now a tombstone) and every record changed,
    /// or `None` when the address is unknown.
    pub fn forget(&mut self, addr: &str) -> Option<(Id, Vec<RecordKey>)> {
        let x = self.id(addr)?;
        let mut touched = Vec::new();
        let as_sender: Vec<Id> = self
            .addrs
            .get(x as usize)
            .map(|e| e.contacts.clone())
            .unwrap_or_default();
        for r in as_sender {
            self.remove_edge(x, r, &mut touched);
        }
        let as_rcpt: Vec<Id> = self
            .edges
            .keys()
            .filter(|(_, r)| *r == x)
            .map(|(s, _)| *s)
            .collect();
        for s in as_rcpt {
            self.remove_edge(s, x, &mut touched);
        }
        self.prune_orphans(&mut touched);
        // Co-recipient pairs naming x under any sender, and everything x sent.
        let co_keys: Vec<(Id, Id, Id)> = self
            .co
            .keys()
            .filter(|(s, a, b)| *s == x || *a == x || *b == x)
            .copied()
            .collect();
        for k in co_keys {
            self.co.remove(&k);
            touched.push(RecordKey::Co(k.0, k.1, k.2));
        }
        let sd_keys: Vec<(Id, Id)> = self
            .sender_domains
            .keys()
            .filter(|(s, _)| *s == x)
            .copied()
            .collect();
        for k in sd_keys {
            if self.sender_domains.remove(&k).is_some() {
                if let Some((_, ds)) = self.domains.get_mut(k.1 as usize) {
                    ds.senders = ds.senders.saturating_sub(1);
                }
            }
            touched.push(RecordKey::SenderDomain(k.0, k.1));
            touched.push(RecordKey::Domain(k.1));
        }
        let att_keys: Vec<(Id, u64)> = self
            .attachments
            .iter()
            .filter(|((s, _), l)| *s == x || l.contains(&x))
            .map(|(k, _)| *k)
            .collect();
        for k in att_keys {
            if k.0 == x {
                self.attachments.remove(&k);
            } else if let Some(l) = self.attachments.get_mut(&k) {
                l.retain(|r| *r != x);
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
    /// co-recipient pairs, threads, subjects) and addresses with nothing
    /// left that were last seen before it. Returns the counts and every
    /// record changed.
    pub fn purge_older_than(&mut self, cutoff: Ts) -> (PurgeCounts, Vec<RecordKey>) {
        let c = clamp_ts(cutoff);
        let mut counts = PurgeCounts::default();
        let mut touched = Vec::new();
        let old: Vec<(Id, Id)> = self
            .edges
            .iter()
            .filter(|(_, e)| e.last < c)
            .map(|(k, _)| *k)
            .collect();
        for (s, r) in old {
            if self.remove_edge(s, r, &mut touched) {
                counts.edges += 1;
            }
        }
        counts.co_pairs += self.prune_orphans(&mut touched);
        let old_co: Vec<(Id, Id, Id)> = self
            .co
            .iter()
            .filter(|(_, e)| e.last < c)
            .map(|(k, _)| *k)
            .collect();
        for k in old_co {
            self.co.remove(&k);
            counts.co_pairs += 1;
            touched.push(RecordKey::Co(k.0, k.1, k.2));
        }
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
        let in_use: std::collections::HashSet<Id> = self
            .threads
            .values()
            .chain(self.subjects.values())
            .flat_map(|t| t.participants.iter().copied())
            .chain(self.attachments.values().flatten().copied())
            .chain(self.discards.keys().flat_map(|(s, r)| [*s, *r]))
            .collect();
        for id in 0..self.addrs.len() as Id {
            let e = &self.addrs[id as usize];
            if e.address.is_empty() || e.last_seen >= c {
                continue;
            }
            if e.contacts.is_empty() && e.senders == 0 && !in_use.contains(&id) {
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
                self.tombstone(id);
                touched.push(RecordKey::Addr(id));
                counts.addresses += 1;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        (counts, touched)
    }

    /// Estimated heap bytes of this graph (hash table buckets, entries,
    /// strings and lists). The bench measures the real figure with a
    /// counting allocator.
    pub fn approx_bytes(&self) -> usize {
        fn map<K, V, S>(m: &HashMap<K, V, S>) -> usize {
            // hashbrown: buckets = capacity * 8 / 7, one control byte each.
            let buckets = m.capacity() * 8 / 7;
            buckets * (std::mem::size_of::<(K, V)>() + 1)
        }
        let strings: usize = self
            .addrs
            .iter()
            .map(|a| {
                16 + a.address.len()
                    + a.contacts.capacity() * 4
                    + a.names.capacity() * 16
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
                .map(|l| l.capacity() * 4)
                .sum::<usize>();
        map(&self.ids)
            + self.addrs.capacity() * std::mem::size_of::<AddrEntry>()
            + strings
            + map(&self.domain_ids)
            + self.domains.capacity() * std::mem::size_of::<(Arc<str>, DomainStats)>()
            + map(&self.edges)
            + map(&self.co)
            + map(&self.sender_domains)
            + map(&self.threads)
            + map(&self.subjects)
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
            .contacts
            .iter()
            .filter_map(|r| {
                let ed = self.edges.get(&(x, *r))?;
                Some(edge_json(self.address_of(*r)?, ed))
            })
            .collect();
        sent_to.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut received_from: Vec<_> = self
            .edges
            .iter()
            .filter(|((_, r), _)| *r == x)
            .filter_map(|((s, _), ed)| Some(edge_json(self.address_of(*s)?, ed)))
            .collect();
        received_from.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut co: Vec<_> = self
            .co
            .iter()
            .filter(|((s, a, b), _)| *s == x || *a == x || *b == x)
            .filter_map(|((s, a, b), c)| {
                let mut pair = [self.address_of(*a)?, self.address_of(*b)?];
                pair.sort_unstable();
                Some(json!({
                    "sender": self.address_of(*s)?,
                    "recipients": pair,
                    "messages": c.count,
                    "last": day(c.last),
                }))
            })
            .collect();
        co.sort_by_key(|v| v.to_string());
        let mut domains: Vec<_> = self
            .sender_domains
            .iter()
            .filter(|((s, _), _)| *s == x)
            .filter_map(|((_, d), ed)| Some(edge_json(&self.domains.get(*d as usize)?.0, ed)))
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
        let att_received = self.attachments.values().filter(|l| l.contains(&x)).count();
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
        g.learn(&LearnInput {
            sender: from,
            sender_name: None,
            recipients: &[to(rcpt)],
            message_id: None,
            subject: None,
            attachments: vec![],
            ts,
        });
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
