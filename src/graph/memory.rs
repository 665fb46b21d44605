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

/// One tenant's association graph.
#[derive(Debug, Default)]
pub struct Graph {
    pub cfg: GraphConfig,
    pub(crate) ids: HashMap<Arc<str>, Id>,
    pub(crate) addrs: Vec<AddrEntry>,
    pub(crate) domain_ids: HashMap<Arc<str>, Id>,
    pub(crate) domains: Vec<(Arc<str>, DomainStats)>,
    pub(crate) edges: HashMap<(Id, Id), Edge>,
    /// (sender, lower id, higher id)
    pub(crate) co: HashMap<(Id, Id, Id), CoEdge>,
    /// (sender, domain id)
    pub(crate) sender_domains: HashMap<(Id, Id), Edge>,
    /// Hash of the Message-ID.
    pub(crate) threads: HashMap<u64, ThreadEntry>,
    /// Hash of the thread subject.
    pub(crate) subjects: HashMap<u64, ThreadEntry>,
    /// (sender, hash of the lower-cased attachment name)
    pub(crate) attachments: HashMap<(Id, u64), Vec<Id>>,
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
