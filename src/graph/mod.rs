//! The association graph: each sender's normal, learned from mail.
//!
//! One [`Graph`] holds one tenant's data; tenants never share a graph (see
//! [`Tenants`]). Scoring reads through the [`GraphView`] trait, which the
//! in-memory graph implements; stores (embedded, shared) persist and reload
//! it.

pub mod memory;
pub mod recent;
pub mod sketch;
pub mod synth;

pub use memory::{ContactSketches, Graph, GraphConfig, Id, LearnInput};
pub use sketch::Sketch;

use serde::{Deserialize, Serialize};

/// Unix seconds, UTC.
pub type Ts = i64;

/// Sender-to-recipient (or sender-to-domain) statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// Messages with the recipient in To.
    pub to: u32,
    /// ... in Cc.
    pub cc: u32,
    /// ... in Bcc (or only in the envelope).
    pub bcc: u32,
    /// First and last time seen (Unix seconds).
    pub first: Ts,
    pub last: Ts,
    /// Exponentially decayed message count, as of `last`.
    pub weight: f32,
}

impl EdgeStats {
    /// Messages in all fields.
    pub fn total(&self) -> u32 {
        self.to.saturating_add(self.cc).saturating_add(self.bcc)
    }

    /// The decayed weight as of `now`, with the given half-life in seconds.
    pub fn weight_at(&self, now: Ts, half_life_secs: f64) -> f64 {
        decay(self.weight as f64, now - self.last, half_life_secs)
    }
}

/// `w` decayed over `elapsed` seconds with the given half-life. Negative
/// elapsed time (out-of-order mail) does not grow the weight.
pub fn decay(w: f64, elapsed: Ts, half_life_secs: f64) -> f64 {
    if elapsed <= 0 || half_life_secs <= 0.0 {
        return w;
    }
    w * (-(elapsed as f64) * std::f64::consts::LN_2 / half_life_secs).exp()
}

/// What is known about a sender as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SenderStats {
    /// Messages sent.
    pub messages: u32,
    /// Distinct recipients ever written to.
    pub contacts: u32,
    pub first: Ts,
    pub last: Ts,
}

/// Organisation-wide familiarity of one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AddressStats {
    /// Distinct senders of this tenant that wrote to it.
    pub senders: u32,
    /// Messages addressed to it.
    pub received: u32,
    /// Messages it sent (seen by the relay or an import).
    pub sent: u32,
}

/// Organisation-wide familiarity of one domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainStats {
    /// Distinct senders that wrote to the domain.
    pub senders: u32,
    /// Distinct addresses at the domain that were written to.
    pub addresses: u32,
    /// Messages addressed to the domain (counted once per recipient).
    pub messages: u32,
}

/// Read access to one tenant's association graph. Addresses are normalised
/// (see [`crate::address::Normalizer`]).
pub trait GraphView: Send + Sync {
    /// Mail from `sender` to `rcpt`.
    fn edge(&self, sender: &str, rcpt: &str) -> Option<EdgeStats>;
    /// The sender as a whole.
    fn sender(&self, sender: &str) -> SenderStats;
    /// Organisation-wide familiarity of an address.
    fn address(&self, addr: &str) -> AddressStats;
    /// How many messages from `sender` had both `a` and `b` as recipients.
    fn co_count(&self, sender: &str, a: &str, b: &str) -> u32;
    /// The most messages from `sender` that named `rcpt` together with one
    /// of the first `limit` addresses of `others` other than `sender`.
    fn co_max(&self, sender: &str, rcpt: &str, others: &[String], limit: usize) -> u32;
    /// Mail from `sender` to anyone at `domain`.
    fn sender_domain(&self, sender: &str, domain: &str) -> Option<EdgeStats>;
    /// Organisation-wide familiarity of a domain.
    fn domain(&self, domain: &str) -> DomainStats;
    /// Every address `sender` has written to, with its edge.
    fn for_each_contact(&self, sender: &str, f: &mut dyn FnMut(&str, &EdgeStats));
    /// How many of the first `limit` contacts of `sender` (in
    /// [`Self::for_each_contact`] order; `addr` itself not counted) have
    /// mail with `addr` in either direction.
    fn contacts_with_mail(&self, sender: &str, addr: &str, limit: usize) -> u32;
    /// Display names seen for an address (most recent last, a few at most).
    fn display_names(&self, addr: &str) -> Vec<String>;
    /// Participants (sender and recipients) of the messages with these
    /// Message-IDs; empty when none is known.
    fn thread_participants(&self, message_ids: &[String]) -> Vec<String>;
    /// Participants of the subject thread (`RE:`/`FW:` prefixes removed):
    /// everyone in the earlier messages with this subject, each within
    /// [`GraphConfig::thread_window`] of the next; empty unless `sender` is
    /// one of them. For corpora without threading headers.
    fn subject_participants(&self, sender: &str, subject: &str) -> Vec<String>;
    /// Recipients `sender` has sent an attachment of this name to before.
    fn attachment_recipients(&self, sender: &str, name: &str) -> Vec<String>;
    /// The id of a normalised address in this graph, for the `*_by_id`
    /// lookups below; `None` when the graph has never seen it. An id is
    /// valid only for the view it came from (the same borrow of the graph):
    /// resolve an address once per message instead of hashing it in every
    /// lookup.
    fn id_of(&self, addr: &str) -> Option<Id>;
    /// [`Self::edge`] by ids.
    fn edge_by_id(&self, sender: Id, rcpt: Id) -> Option<EdgeStats>;
    /// [`Self::address`] by id.
    fn address_by_id(&self, addr: Id) -> AddressStats;
    /// [`Self::co_count`] by ids.
    fn co_count_by_id(&self, sender: Id, a: Id, b: Id) -> u32;
    /// The id of a domain in this graph (domains have ids of their own).
    fn domain_id_of(&self, domain: &str) -> Option<Id>;
    /// [`Self::sender_domain`] by ids (`domain` from [`Self::domain_id_of`]).
    fn sender_domain_by_id(&self, sender: Id, domain: Id) -> Option<EdgeStats>;
    /// [`Self::domain`] by id (from [`Self::domain_id_of`]).
    fn domain_by_id(&self, domain: Id) -> DomainStats;
    /// The sender's contacts as the lookalike scan reads them, in
    /// [`Self::for_each_contact`] order: each one's id, [`Sketch`] and
    /// message count (the edge's total), without its address (see
    /// [`Self::address_by_id_str`]). Empty for an unknown sender.
    fn contact_sketches(&self, sender: Id) -> ContactSketches<'_>;
    /// The address of an id from [`Self::id_of`] or a contact list.
    fn address_by_id_str(&self, id: Id) -> Option<&str>;
    /// [`Self::contacts_with_mail`] by ids.
    fn contacts_with_mail_by_id(&self, sender: Id, addr: Id, limit: usize) -> u32;
    /// When a held message from `sender` to `rcpt` was last discarded
    /// (judged misaddressed), unless mail from `sender` to `rcpt` was
    /// delivered since; `None` otherwise.
    fn discarded(&self, sender: &str, rcpt: &str) -> Option<Ts>;
}

/// The reply or forward prefix at the start of `s` (`RE:`, `Re[2]:`,
/// `FW:`, `Fwd:`, `AW:`, `WG:`, `TR:`, `SV:`, `VS:`; any case): which one,
/// lower-case, and how many bytes it takes up to and with its `:`.
fn subject_prefix(s: &str) -> Option<(&'static str, usize)> {
    for p in ["re", "fw", "fwd", "aw", "wg", "tr", "sv", "vs"] {
        if !s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p)) {
            continue;
        }
        let rest = s[p.len()..].trim_start();
        // Optional "[n]" counter.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.find(']').map_or(rest, |i| &r[i + 1..]),
            None => rest,
        };
        if let Some(after) = rest.strip_prefix(':') {
            return Some((p, s.len() - after.len()));
        }
    }
    None
}

/// Whether the subject's outermost prefix is a forward (`FW:`, `Fwd:`,
/// `WG:`, `TR:`): forwarding to people outside the thread is its point.
pub fn is_forward(subject: &str) -> bool {
    subject_prefix(subject.trim_start())
        .is_some_and(|(p, _)| matches!(p, "fw" | "fwd" | "wg" | "tr"))
}

/// Whether the subject starts (after white space) with a reply or forward
/// prefix (see [`subject_prefix`]): exactly when [`thread_subject`] differs
/// from the lower-cased, trimmed subject (a prefix takes at least three
/// bytes, and lower-casing never shortens a character to nothing), without
/// building either string.
pub fn is_reply(subject: &str) -> bool {
    subject_prefix(subject.trim()).is_some()
}

/// Strip reply and forward prefixes (see [`subject_prefix`]) and white
/// space; lower-cased. Empty for an empty subject.
pub fn thread_subject(subject: &str) -> String {
    let mut s = subject.trim();
    while let Some((_, cut)) = subject_prefix(s) {
        s = s[cut..].trim_start();
    }
    s.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_subject_strips_prefixes() {
        assert_eq!(thread_subject("RE: Re[2]: FW:  Q3 Plan "), "q3 plan");
        assert_eq!(thread_subject("Fwd: AW: hello"), "hello");
        assert_eq!(thread_subject("Reorg"), "reorg");
        assert_eq!(thread_subject("  "), "");
    }

    /// `is_reply` answers as comparing the two strings did, on generated
    /// subjects: prefixes in any case, counters, white space (Unicode
    /// included), letters whose lower case differs in length or depends on
    /// the context (final sigma), empty and blank subjects.
    #[test]
    fn is_reply_matches_comparing_the_stripped_subject() {
        use rand::rngs::StdRng;
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let parts = [
            "RE:",
            "re",
            "Re[2]:",
            "FW:",
            "fwd:",
            "Fwd [3] :",
            "AW:",
            "wg:",
            "TR:",
            "sv:",
            "VS:",
            ":",
            "[",
            "]",
            " ",
            "\u{a0}",
            "\u{3000}",
            "\t",
            "Σ",
            "ΣΑ",
            "İ",
            "ẞ",
            "ß",
            "K",
            "a",
            "Q3 plan",
            "re-org",
            "Ré:",
            "RE：",
            "",
        ];
        let mut rng = StdRng::seed_from_u64(3);
        let mut replies = 0;
        for _ in 0..50_000 {
            let s: String = (0..rng.gen_range(0..6))
                .map(|_| *parts.choose(&mut rng).unwrap_or(&""))
                .collect();
            let want = !s.is_empty() && thread_subject(&s) != s.trim().to_lowercase();
            assert_eq!(is_reply(&s), want, "{s:?}");
            replies += usize::from(want);
        }
        assert!(replies > 10_000, "{replies}");
        for (s, want) in [
            ("", false),
            ("   ", false),
            (" RE: x", true),
            ("re:", true),
            ("Re[2]: Σ", true),
            ("Reorg", false),
            ("ΣRE: x", false),
        ] {
            assert_eq!(is_reply(s), want, "{s:?}");
        }
    }

    #[test]
    fn forward_is_the_outermost_prefix() {
        assert!(is_forward("FW: RE: budget"));
        assert!(is_forward("Fwd[2]: budget"));
        assert!(is_forward(" wg: budget"));
        assert!(!is_forward("RE: FW: budget"));
        assert!(!is_forward("Forward curve"));
        assert!(!is_forward("budget"));
    }

    #[test]
    fn decay_halves_per_half_life() {
        let hl = 10.0;
        assert!((decay(8.0, 10, hl) - 4.0).abs() < 1e-9);
        assert!((decay(8.0, 30, hl) - 1.0).abs() < 1e-9);
        assert_eq!(decay(8.0, -5, hl), 8.0);
    }
}
