//! Corruption model: turns a real sent message into a realistic misdirected
//! copy, knowing which recipient is the wrong one.
//!
//! Five kinds, each modelled on how misdirections happen:
//!
//! - [`CorruptionKind::Autocomplete`] ("wrong Bob"): one recipient is replaced
//!   by another of the sender's own contacts whose local part shares the
//!   longest prefix with it (at least one character), as an address-book
//!   autocomplete would offer (ties drawn at random; the first recipient,
//!   from a random start, that has such a contact). The wrong recipient is a
//!   known contact.
//! - [`CorruptionKind::Typo`]: one keyboard-plausible edit (neighbouring-key
//!   substitution, dropped, doubled or swapped character) in the local part
//!   (70%) or the domain labels before the top-level domain (30%) of one
//!   recipient, never producing an address the sender already writes to.
//! - [`CorruptionKind::OtherDomain`]: the same local part at another domain
//!   the organisation has mail with (a namesake elsewhere, a private
//!   address); the domain is drawn with probability proportional to its
//!   number of known addresses.
//! - [`CorruptionKind::StrangerAdded`]: an address from the sender's own
//!   domain that colleagues know but the sender never wrote to is added to
//!   the recipients (To or Cc).
//! - [`CorruptionKind::OutsideThread`]: in a reply (not a forward) whose
//!   earlier participants are known, one recipient is replaced by one of the
//!   sender's contacts who was in none of the thread's messages (drawn by
//!   how often the sender writes to them).
//!
//! All randomness comes from the caller's seeded RNG, so a run is
//! reproducible.

use std::collections::{HashMap, HashSet};

use rand::Rng;

use crate::address::{domain_of, local_of};
use crate::classify::features::MAX_CONTACT_SCAN;
use crate::graph::{is_forward, thread_subject, GraphView};
use crate::message::{Field, MessageMeta, Recipient};

/// Kinds of corruption, see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CorruptionKind {
    Autocomplete,
    Typo,
    OtherDomain,
    StrangerAdded,
    OutsideThread,
}

impl CorruptionKind {
    pub const ALL: [CorruptionKind; 5] = [
        CorruptionKind::Autocomplete,
        CorruptionKind::Typo,
        CorruptionKind::OtherDomain,
        CorruptionKind::StrangerAdded,
        CorruptionKind::OutsideThread,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CorruptionKind::Autocomplete => "autocomplete",
            CorruptionKind::Typo => "typo",
            CorruptionKind::OtherDomain => "other_domain",
            CorruptionKind::StrangerAdded => "stranger_added",
            CorruptionKind::OutsideThread => "outside_thread",
        }
    }
}

/// A corrupted copy: the new recipient list and the index of the wrong one.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupted {
    pub kind: CorruptionKind,
    pub recipients: Vec<Recipient>,
    pub wrong: usize,
}

/// Addresses and domains seen so far (only from history before the message
/// being corrupted), which the generators draw from.
#[derive(Debug, Default, Clone)]
pub struct Pools {
    by_domain: HashMap<String, Vec<String>>,
    seen: HashSet<String>,
    /// Domains in the order first seen (deterministic iteration).
    domains: Vec<String>,
}

impl Pools {
    /// Record the addresses of a message.
    pub fn observe(&mut self, meta: &MessageMeta) {
        let addrs = meta
            .sender()
            .into_iter()
            .chain(meta.recipients.iter().map(|r| r.address.as_str()));
        for a in addrs {
            if self.seen.contains(a) {
                continue;
            }
            self.seen.insert(a.to_string());
            let d = domain_of(a);
            if d.is_empty() {
                continue;
            }
            match self.by_domain.get_mut(d) {
                Some(v) => v.push(a.to_string()),
                None => {
                    self.domains.push(d.to_string());
                    self.by_domain.insert(d.to_string(), vec![a.to_string()]);
                }
            }
        }
    }

    /// Known addresses.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Keyboard neighbours on a QWERTY layout.
fn neighbours(c: u8) -> &'static [u8] {
    match c {
        b'q' => b"wa",
        b'w' => b"qes",
        b'e' => b"wrd",
        b'r' => b"etf",
        b't' => b"ryg",
        b'y' => b"tuh",
        b'u' => b"yij",
        b'i' => b"uok",
        b'o' => b"ipl",
        b'p' => b"ol",
        b'a' => b"qsz",
        b's' => b"adwx",
        b'd' => b"sfe",
        b'f' => b"dgr",
        b'g' => b"fht",
        b'h' => b"gjy",
        b'j' => b"hku",
        b'k' => b"jli",
        b'l' => b"ko",
        b'z' => b"xa",
        b'x' => b"zcs",
        b'c' => b"xvd",
        b'v' => b"cbf",
        b'b' => b"vng",
        b'n' => b"bmh",
        b'm' => b"nj",
        b'0' => b"9",
        b'1' => b"2",
        b'2' => b"13",
        b'3' => b"24",
        b'4' => b"35",
        b'5' => b"46",
        b'6' => b"57",
        b'7' => b"68",
        b'8' => b"79",
        b'9' => b"80",
        _ => b"",
    }
}

/// One keyboard-plausible edit of `s` (ASCII letters/digits only are
/// touched; `.`, `-`, `_` stay). `None` when `s` offers nothing to edit.
pub fn typo<R: Rng>(s: &str, rng: &mut R) -> Option<String> {
    let b = s.as_bytes();
    let pos: Vec<usize> = (0..b.len())
        .filter(|&i| b[i].is_ascii_alphanumeric())
        .collect();
    if pos.is_empty() {
        return None;
    }
    for _ in 0..8 {
        let i = pos[rng.gen_range(0..pos.len())];
        let mut v = b.to_vec();
        match rng.gen_range(0..4) {
            0 => {
                let n = neighbours(b[i]);
                if n.is_empty() {
                    continue;
                }
                v[i] = n[rng.gen_range(0..n.len())];
            }
            1 => {
                if pos.len() < 2 {
                    continue;
                }
                v.remove(i);
            }
            2 => v.insert(i, b[i]),
            _ => {
                if i + 1 >= b.len() || !b[i + 1].is_ascii_alphanumeric() || b[i] == b[i + 1] {
                    continue;
                }
                v.swap(i, i + 1);
            }
        }
        if let Ok(out) = String::from_utf8(v) {
            if out != s {
                return Some(out);
            }
        }
    }
    None
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

fn contacts(g: &dyn GraphView, sender: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    g.for_each_contact(sender, &mut |a, e| {
        if out.len() < MAX_CONTACT_SCAN {
            out.push((a.to_string(), e.total()));
        }
    });
    out
}

fn pick_weighted<R: Rng>(items: &[(String, u32)], rng: &mut R) -> Option<String> {
    let total: u64 = items.iter().map(|(_, w)| *w as u64).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.gen_range(0..total);
    for (a, w) in items {
        if x < *w as u64 {
            return Some(a.clone());
        }
        x -= *w as u64;
    }
    None
}

/// Apply a corruption of `kind` to a message (`recipients` of `meta`, from
/// `sender`), using the history in `g` and `pools`. `None` when this kind
/// does not apply to the message.
pub fn corrupt<R: Rng>(
    kind: CorruptionKind,
    g: &dyn GraphView,
    pools: &Pools,
    sender: &str,
    meta: &MessageMeta,
    recipients: &[Recipient],
    rng: &mut R,
) -> Option<Corrupted> {
    if recipients.is_empty() {
        return None;
    }
    let present: HashSet<&str> = recipients.iter().map(|r| r.address.as_str()).collect();
    let i = rng.gen_range(0..recipients.len());
    let orig = &recipients[i].address;
    let replace = |new: String| {
        let mut rs = recipients.to_vec();
        rs[i] = Recipient {
            address: new,
            name: None,
            field: recipients[i].field,
        };
        Some(Corrupted {
            kind,
            recipients: rs,
            wrong: i,
        })
    };
    match kind {
        CorruptionKind::Autocomplete => {
            // Starting at a random recipient, the first one that has a
            // contact sharing a prefix with it.
            let all = contacts(g, sender);
            for step in 0..recipients.len() {
                let j = (i + step) % recipients.len();
                let ol = local_of(&recipients[j].address);
                let cands: Vec<(&String, usize)> = all
                    .iter()
                    .filter(|(a, _)| !present.contains(a.as_str()) && a != sender)
                    .map(|(a, _)| (a, common_prefix(ol, local_of(a))))
                    .filter(|(_, p)| *p >= 1)
                    .collect();
                let Some(best) = cands.iter().map(|c| c.1).max() else {
                    continue;
                };
                let top: Vec<&String> = cands.iter().filter(|c| c.1 == best).map(|c| c.0).collect();
                let mut rs = recipients.to_vec();
                rs[j] = Recipient {
                    address: top[rng.gen_range(0..top.len())].clone(),
                    name: None,
                    field: recipients[j].field,
                };
                return Some(Corrupted {
                    kind,
                    recipients: rs,
                    wrong: j,
                });
            }
            None
        }
        CorruptionKind::Typo => {
            for _ in 0..6 {
                let (l, d) = (local_of(orig), domain_of(orig));
                let new = if rng.gen_bool(0.7) {
                    format!("{}@{}", typo(l, rng)?, d)
                } else {
                    // Keep the top-level domain: edit the labels before it.
                    let (head, tld) = d.rsplit_once('.').unwrap_or((d, ""));
                    let head = typo(head, rng)?;
                    if tld.is_empty() {
                        format!("{l}@{head}")
                    } else {
                        format!("{l}@{head}.{tld}")
                    }
                };
                if new != *orig && !present.contains(new.as_str()) && g.edge(sender, &new).is_none()
                {
                    return replace(new);
                }
            }
            None
        }
        CorruptionKind::OtherDomain => {
            let od = domain_of(orig);
            // Another domain, drawn by its number of known addresses.
            let doms: Vec<(String, u32)> = pools
                .domains
                .iter()
                .filter(|d| d.as_str() != od)
                .map(|d| {
                    (
                        d.clone(),
                        pools.by_domain.get(d).map_or(0, |v| v.len() as u32),
                    )
                })
                .collect();
            for _ in 0..8 {
                let d = pick_weighted(&doms, rng)?;
                let new = format!("{}@{}", local_of(orig), d);
                if !present.contains(new.as_str()) && g.edge(sender, &new).is_none() {
                    return replace(new);
                }
            }
            None
        }
        CorruptionKind::StrangerAdded => {
            let pool = pools.by_domain.get(domain_of(sender))?;
            for _ in 0..16 {
                let a = &pool[rng.gen_range(0..pool.len())];
                if a == sender || present.contains(a.as_str()) || g.edge(sender, a).is_some() {
                    continue;
                }
                if g.address(a).senders == 0 {
                    continue;
                }
                let mut rs = recipients.to_vec();
                let field = if rng.gen_bool(0.5) {
                    Field::To
                } else {
                    Field::Cc
                };
                let at = rng.gen_range(0..=rs.len());
                rs.insert(
                    at,
                    Recipient {
                        address: a.clone(),
                        name: None,
                        field,
                    },
                );
                return Some(Corrupted {
                    kind,
                    recipients: rs,
                    wrong: at,
                });
            }
            None
        }
        CorruptionKind::OutsideThread => {
            let subject = meta.subject.as_deref().unwrap_or("");
            if subject.is_empty()
                || thread_subject(subject) == subject.trim().to_lowercase()
                || is_forward(subject)
            {
                return None;
            }
            let thread = g.subject_participants(sender, subject);
            if thread.is_empty() {
                return None;
            }
            let cands: Vec<(String, u32)> = contacts(g, sender)
                .into_iter()
                .filter(|(a, _)| {
                    !present.contains(a.as_str()) && a != sender && !thread.contains(a)
                })
                .collect();
            replace(pick_weighted(&cands, rng)?)
        }
    }
}
