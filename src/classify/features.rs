//! Per-recipient feature extraction: pure functions of a [`GraphView`] (the
//! sender's history strictly before the message) and the message itself.
//!
//! Every feature is relative to the sender's own history or to the
//! organisation's familiarity with an address; no feature names an identity,
//! so a model trained on one organisation can score another.
//!
//! Each feature is documented in [`FEATURES`]; the order there is the order of
//! the values in [`RecipientFeatures::values`] and in the model file.

use std::collections::HashSet;

use crate::address::{domain_of, local_of};
pub use crate::graph::sketch::skeleton;
use crate::graph::sketch::{
    bigrams_rule_out_2, histogram_bound, mask_bound, pack3, skeleton_is, Sketch,
};
use crate::graph::{is_forward, is_reply, AddressStats, EdgeStats, GraphView, Id, Ts};
use crate::message::{Field, MessageMeta, Recipient};

/// Contacts examined per message in the lookalike scan. A sender with more
/// contacts than this is scanned only up to this many (in the graph's
/// contact order), which bounds the cost of scoring one message.
pub const MAX_CONTACT_SCAN: usize = 4096;

/// Days used for "never" in recency features.
const NEVER_DAYS: f64 = 3650.0;

/// Free-mail domains (a recipient there is more often a private copy).
const FREEMAIL: &[&str] = &[
    "hotmail.com",
    "yahoo.com",
    "aol.com",
    "gmail.com",
    "msn.com",
    "excite.com",
    "earthlink.net",
    "juno.com",
    "netscape.net",
    "compuserve.com",
    "mail.com",
    "outlook.com",
    "live.com",
    "icloud.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "yahoo.co.uk",
    "protonmail.com",
];

/// Name and meaning of every feature, in model order.
pub const FEATURES: &[(&str, &str)] = &[
    ("never_written", "1 when the sender has never written to the recipient"),
    ("log_count", "ln(1 + messages the sender addressed to the recipient)"),
    ("log_days_since", "ln(1 + days since the sender last wrote to the recipient); ln(3651) when never"),
    ("log_weight", "ln(1 + decayed message count to the recipient now, 90-day half-life by default)"),
    ("share", "share of the sender's messages that named the recipient"),
    ("log_reply_count", "ln(1 + messages the recipient sent to the sender): reciprocity"),
    ("log_sender_msgs", "ln(1 + messages the sender has sent)"),
    ("log_sender_contacts", "ln(1 + distinct addresses the sender has written to)"),
    ("log_n_rcpts", "ln(number of recipients of this message)"),
    ("field_cc", "1 when the recipient is in Cc"),
    ("field_bcc", "1 when the recipient is in Bcc or only in the envelope"),
    ("has_others", "1 when the message has other recipients"),
    ("others_known_frac", "share of the other recipients that are known contacts of the sender (0 without others)"),
    ("log_co_max", "ln(1 + most messages in which the sender named this recipient together with one of the other recipients)"),
    ("co_frac", "share of the other recipients ever named together with this one by the sender"),
    ("log_domain_count", "ln(1 + messages the sender addressed to anyone at the recipient's domain)"),
    ("domain_new", "1 when the sender has never written to the recipient's domain"),
    ("internal", "1 when the recipient's domain is the sender's domain"),
    ("freemail", "1 when the recipient's domain is a known free-mail provider"),
    ("log_org_senders", "ln(1 + distinct senders of the organisation who wrote to the recipient)"),
    ("log_org_domain_senders", "ln(1 + distinct senders of the organisation who wrote to the recipient's domain)"),
    ("lookalike1", "1 when the recipient is not a contact and a contact's address is one edit (or a homoglyph/punctuation skeleton) away"),
    ("lookalike2", "1 when the recipient is not a contact and the closest contact address is two edits away"),
    ("log_lookalike_count", "ln(1 + messages to that closest lookalike contact); 0 without one"),
    ("same_local_other_domain", "1 when the recipient is not a contact and a contact has the same local part at another domain"),
    ("sibling_dominance", "ln((1 + messages to the most-written other contact whose local part starts with the same 3 characters) / (1 + messages to the recipient)), at least 0"),
    ("is_reply", "1 when the subject has a reply/forward prefix"),
    ("thread_known", "1 when earlier participants of the thread are known (Message-ID references, or the earlier messages with this subject, each within `[graph] thread_window` (30 days) of the next, when they involve the sender; the scored message itself may come later)"),
    ("not_in_thread", "1 when the thread is known, the message is not a forward, and the recipient was not one of the thread's participants"),
    ("has_attachment", "1 when the message has a named attachment"),
    ("attachment_to_rcpt", "1 when the sender sent an attachment of the same name to the recipient before"),
    ("attachment_to_others", "1 when the sender sent an attachment of the same name to others before, but not to the recipient"),
    ("new_in_known_group", "never_written x others_known_frac: a stranger added to a familiar group"),
    ("new_internal", "never_written x internal"),
    ("new_unknown_to_org", "1 when nobody in the organisation has written to the recipient and the sender has history"),
    ("log_rcpt_sent", "ln(1 + messages seen from the recipient's address): real, active addresses send mail"),
    ("others_linked_frac", "share of the other recipients with mail between them and the recipient (either direction, anyone's mail)"),
    ("lookalike_silent", "1 when the recipient is a lookalike (lookalike1 or lookalike2) and nobody wrote to it and it never sent mail"),
    ("same_local_silent", "1 when same_local_other_domain and the recipient never sent mail"),
    ("new_unlinked_in_group", "1 when the sender never wrote to the recipient, there are other recipients, and none of them has mail with it"),
    ("log_neighbour_links", "for a recipient the sender never wrote to: ln(1 + contacts of the sender (first 512 scanned) with mail to or from the recipient)"),
    ("new_no_neighbours", "1 when the sender never wrote to the recipient and none of the scanned contacts has mail with it"),
    ("thread_none_in", "1 when the subject thread is known, the message is not a forward, and none of its recipients was in the thread"),
    ("log_thread_co", "for a recipient not in the thread: ln(1 + most messages in which the sender named it together with one of the thread's participants)"),
];

/// Number of features.
pub const N_FEATURES: usize = 44;

/// Index of every feature, named.
#[allow(missing_docs)]
pub mod idx {
    pub const NEVER_WRITTEN: usize = 0;
    pub const LOG_COUNT: usize = 1;
    pub const LOG_DAYS_SINCE: usize = 2;
    pub const LOG_WEIGHT: usize = 3;
    pub const SHARE: usize = 4;
    pub const LOG_REPLY_COUNT: usize = 5;
    pub const LOG_SENDER_MSGS: usize = 6;
    pub const LOG_SENDER_CONTACTS: usize = 7;
    pub const LOG_N_RCPTS: usize = 8;
    pub const FIELD_CC: usize = 9;
    pub const FIELD_BCC: usize = 10;
    pub const HAS_OTHERS: usize = 11;
    pub const OTHERS_KNOWN_FRAC: usize = 12;
    pub const LOG_CO_MAX: usize = 13;
    pub const CO_FRAC: usize = 14;
    pub const LOG_DOMAIN_COUNT: usize = 15;
    pub const DOMAIN_NEW: usize = 16;
    pub const INTERNAL: usize = 17;
    pub const FREEMAIL: usize = 18;
    pub const LOG_ORG_SENDERS: usize = 19;
    pub const LOG_ORG_DOMAIN_SENDERS: usize = 20;
    pub const LOOKALIKE1: usize = 21;
    pub const LOOKALIKE2: usize = 22;
    pub const LOG_LOOKALIKE_COUNT: usize = 23;
    pub const SAME_LOCAL_OTHER_DOMAIN: usize = 24;
    pub const SIBLING_DOMINANCE: usize = 25;
    pub const IS_REPLY: usize = 26;
    pub const THREAD_KNOWN: usize = 27;
    pub const NOT_IN_THREAD: usize = 28;
    pub const HAS_ATTACHMENT: usize = 29;
    pub const ATTACHMENT_TO_RCPT: usize = 30;
    pub const ATTACHMENT_TO_OTHERS: usize = 31;
    pub const NEW_IN_KNOWN_GROUP: usize = 32;
    pub const NEW_INTERNAL: usize = 33;
    pub const NEW_UNKNOWN_TO_ORG: usize = 34;
    pub const LOG_RCPT_SENT: usize = 35;
    pub const OTHERS_LINKED_FRAC: usize = 36;
    pub const LOOKALIKE_SILENT: usize = 37;
    pub const SAME_LOCAL_SILENT: usize = 38;
    pub const NEW_UNLINKED_IN_GROUP: usize = 39;
    pub const LOG_NEIGHBOUR_LINKS: usize = 40;
    pub const NEW_NO_NEIGHBOURS: usize = 41;
    pub const THREAD_NONE_IN: usize = 42;
    pub const LOG_THREAD_CO: usize = 43;
}

/// Thread participants examined for co-recipient counts with a recipient
/// outside the thread.
pub const MAX_THREAD_CO_CHECKS: usize = 16;

/// Contacts examined for mail links with a recipient the sender never
/// wrote to (the neighbourhood features).
pub const MAX_NEIGHBOUR_CHECKS: usize = 512;

/// Other recipients examined for mail links with a recipient.
pub const MAX_LINK_CHECKS: usize = 20;

/// Recipients whose pairwise lookups are shared within one message.
const PAIR_CACHE: usize = 64;

/// Feature names in model order.
pub fn feature_names() -> Vec<String> {
    FEATURES.iter().map(|(n, _)| n.to_string()).collect()
}

/// Evidence behind the features of one recipient, for readable reasons.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Messages the sender addressed to the recipient.
    pub count: u32,
    /// Days since the sender last wrote to the recipient.
    pub days_since: Option<f64>,
    /// Messages the recipient sent to the sender.
    pub replies: u32,
    /// Closest lookalike contact, its edit distance (0 for a skeleton match)
    /// and the messages sent to it.
    pub lookalike: Option<(String, u32, u32)>,
    /// A contact with the same local part at another domain, and its count.
    pub same_local: Option<(String, u32)>,
    /// A more-written contact with the same 3-letter local-part prefix.
    pub sibling: Option<(String, u32)>,
    /// Other recipients of the message, and how many of them are contacts.
    pub others: usize,
    pub others_known: usize,
    /// Other recipients ever named together with this one.
    pub others_co: usize,
    /// Other recipients (of the first [`MAX_LINK_CHECKS`]) with mail
    /// between them and this one, and how many were checked.
    pub others_linked: usize,
    pub others_checked: usize,
    /// Messages seen from the recipient's address.
    pub rcpt_sent: u32,
    /// Contacts of the sender with mail to or from the recipient.
    pub neighbour_links: u32,
    /// Messages to the recipient's domain.
    pub domain_count: u32,
    /// Colleagues who wrote to the recipient.
    pub org_senders: u32,
    /// The thread was known and the recipient was not in it.
    pub not_in_thread: bool,
    /// An attachment of this message went to others before, not to the recipient.
    pub attachment_elsewhere: Option<String>,
    /// The sender has any history at all.
    pub sender_history: u32,
    /// Distinct addresses the sender has written to.
    pub sender_contacts: u32,
}

/// Features of one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientFeatures {
    pub values: [f32; N_FEATURES],
    pub evidence: Evidence,
}

/// Damerau-Levenshtein (optimal string alignment) distance between `a` and
/// `b`, or `max + 1` when it exceeds `max`. Works on bytes.
pub fn bounded_distance(a: &[u8], b: &[u8], max: usize) -> usize {
    distance(a, None, b, max)
}

/// The match masks of a string of up to 64 printable ASCII bytes (`' '` to
/// `'~'`, as addresses are), for [`osa_bits_by`]: bit `i` of entry `c` is
/// set when byte `i` is `c`; any other byte matches nothing. Built once for
/// a recipient and used for every contact it is compared with; 95 entries
/// (760 bytes) rather than 256, so that building them is a small
/// allocation from the thread's cache and clears 760 bytes, not 2 KiB.
#[derive(Clone)]
struct MatchMasks([u64; MASK_BYTES]);

/// The bytes [`MatchMasks`] has entries for, from `' '` on.
const MASK_BYTES: usize = 95;

impl MatchMasks {
    /// The masks of `a`, or `None` when it is longer than 64 bytes or has a
    /// byte outside `' '..='~'`.
    fn of(a: &[u8]) -> Option<Box<MatchMasks>> {
        if a.len() > 64 {
            return None;
        }
        let mut m = Box::new(MatchMasks([0; MASK_BYTES]));
        for (i, &c) in a.iter().enumerate() {
            *m.0.get_mut(usize::from(c).wrapping_sub(0x20))? |= 1 << i;
        }
        Some(m)
    }

    /// The mask of byte `c`.
    fn get(&self, c: u8) -> u64 {
        self.0
            .get(usize::from(c).wrapping_sub(0x20))
            .copied()
            .unwrap_or(0)
    }
}

/// Bytes `a` and `b` share at the start, eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Bytes `a` and `b` share at the end, eight at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.rchunks_exact(8).zip(b.rchunks_exact(8)) {
        let x = u64::from_be_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_be_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    let (a, b) = (&a[..a.len() - n], &b[..b.len() - n]);
    n + a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// [`bounded_distance`], with `masks` the [`MatchMasks`] of `a` when the
/// caller has them.
fn distance(a: &[u8], masks: Option<&MatchMasks>, b: &[u8], max: usize) -> usize {
    const CAP: usize = 96;
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    if !a.is_empty() && !b.is_empty() && (a.len() >= CAP || b.len() >= CAP) {
        // Longer than any real address: compare exactly only.
        return if a == b { 0 } else { max + 1 };
    }
    // A common prefix or suffix never changes the distance (addresses at
    // one domain share a long suffix): compare only what differs.
    let pre = common_prefix(a, b);
    let (a_mid, b) = (&a[pre..], &b[pre..]);
    let suf = common_suffix(a_mid, b);
    let (a_mid, b) = (&a_mid[..a_mid.len() - suf], &b[..b.len() - suf]);
    let (n, m) = (a_mid.len(), b.len());
    if n.abs_diff(m) > max {
        return max + 1;
    }
    if n == 0 || m == 0 {
        return n.max(m).min(max + 1);
    }
    if n > 64 {
        return osa_rows::<CAP>(a_mid, b, max);
    }
    let d = match masks {
        // The masks are `a`'s: shifted down past the prefix and cut to
        // the middle's `n` bytes, they are the middle's.
        Some(mm) => {
            let keep = u64::MAX >> (64 - n);
            osa_bits_by(n, b, |c| (mm.get(c) >> pre) & keep)
        }
        None => osa_bits(a_mid, b),
    };
    d.min(max + 1)
}

/// The optimal string alignment distance between `a` (1 to 64 bytes) and
/// `b` ([`osa_bits_by`], each column's match mask found by scanning `a`).
fn osa_bits(a: &[u8], b: &[u8]) -> usize {
    osa_bits_by(a.len(), b, |c| {
        a.iter()
            .enumerate()
            .fold(0u64, |m, (i, &x)| m | u64::from(x == c) << i)
    })
}

/// The optimal string alignment distance between a string `a` of `n` bytes
/// (1 to 64) and `b`, by Hyyrö's bit-vector algorithm (Myers' for
/// Levenshtein, with adjacent transpositions; H. Hyyrö, "A bit-vector
/// algorithm for computing Levenshtein and Damerau edit distances", 2003):
/// one word holds the vertical differences of a column of the table of
/// [`osa_rows`] (bit `i` for row `i + 1`, a byte of `a`), and each byte of
/// `b` advances it by one column. `peq(c)` is the mask of the rows whose
/// byte of `a` is `c`.
fn osa_bits_by(n: usize, b: &[u8], peq: impl Fn(u8) -> u64) -> usize {
    let top = 1u64 << (n - 1);
    // Vertical +1 and -1 differences: column 0 climbs by 1 each row. Bits
    // above `n` are never read back into the lower ones (carries and
    // shifts only move up).
    let (mut vp, mut vn) = (!0u64, 0u64);
    // The previous column's zero diagonal differences and match mask.
    let (mut d0, mut pm_prev) = (0u64, 0u64);
    let mut dist = n;
    for &c in b {
        let pm = peq(c);
        // Transpositions: `a[i] == b[j - 1]` and `a[i - 1] == b[j]`, where
        // the previous diagonal difference was not zero. A zero diagonal
        // difference from one starts a carry down the column as a match
        // does.
        let tc = ((!d0 & pm) << 1) & pm_prev;
        let x = pm | vn | tc;
        d0 = (((x & vp).wrapping_add(vp)) ^ vp) | x;
        let hp = vn | !(d0 | vp);
        let hn = vp & d0;
        if hp & top != 0 {
            dist += 1;
        } else if hn & top != 0 {
            dist -= 1;
        }
        // Row 0 climbs by 1 each column.
        let hp = (hp << 1) | 1;
        let hn = hn << 1;
        vp = hn | !(d0 | hp);
        vn = hp & d0;
        pm_prev = pm;
    }
    dist
}

/// The distance table of [`bounded_distance`] in three rows of `W` cells
/// on the stack (`b.len() < W`, `a` and `b` non-empty and shorter than
/// 96 bytes, so cells fit in a byte).
fn osa_rows<const W: usize>(a: &[u8], b: &[u8], max: usize) -> usize {
    let (n, m) = (a.len(), b.len());
    let mut rows = [[0u8; W]; 3];
    for (j, v) in rows[1].iter_mut().enumerate().take(m + 1) {
        *v = j as u8;
    }
    // rows[p2], rows[p1], rows[c]: two rows back, previous, current.
    let (mut p2, mut p1, mut c) = (0usize, 1usize, 2usize);
    for i in 1..=n {
        rows[c][0] = i as u8;
        let mut row_min = i as u8;
        for j in 1..=m {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut v = (rows[p1][j] + 1)
                .min(rows[c][j - 1] + 1)
                .min(rows[p1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(rows[p2][j - 2] + 1);
            }
            rows[c][j] = v;
            row_min = row_min.min(v);
        }
        if row_min as usize > max {
            return max + 1;
        }
        (p2, p1, c) = (p1, c, p2);
    }
    (rows[p1][m] as usize).min(max + 1)
}

/// Byte histogram (64 buckets) of a string, for a cheap lower bound on the
/// edit distance: every edit changes the histogram by at most 2.
#[derive(Clone, Copy)]
struct Histogram([u8; 64]);

impl Histogram {
    fn of(s: &[u8]) -> Self {
        let mut h = [0u8; 64];
        for &c in s {
            let k = (c & 63) as usize;
            h[k] = h[k].saturating_add(1);
        }
        Histogram(h)
    }

    /// Lower bound on the edit distance between the two strings.
    fn lower_bound(&self, other: &Histogram) -> usize {
        // Sixteen lanes at a time, so the compiler vectorises it (it runs
        // for every contact of a similar length to an unknown recipient).
        let mut acc = [0u16; 16];
        for (a, b) in self.0.chunks_exact(16).zip(other.0.chunks_exact(16)) {
            for j in 0..16 {
                acc[j] += u16::from(a[j].abs_diff(b[j]));
            }
        }
        let diff: usize = acc.iter().map(|&x| usize::from(x)).sum();
        diff.div_ceil(2)
    }
}

/// [`Histogram::lower_bound`] of `a` and `b` from their histograms, kept in
/// `ha` and `hb` once built: a recipient's is compared with every contact
/// that passes the cheaper filters, a contact's with every such recipient.
/// (Bounding from the differing middle of the two strings instead, which
/// needs no histogram, was measured slower for a sender whose contacts'
/// addresses differ in a few bytes: 70 against 63 µs in `cargo bench
/// --bench scoring`, since the middle is found anew for every pair.)
fn cached_bound(
    a: &[u8],
    b: &[u8],
    ha: &mut Option<Histogram>,
    hb: &mut Option<Histogram>,
) -> usize {
    ha.get_or_insert_with(|| Histogram::of(a))
        .lower_bound(hb.get_or_insert_with(|| Histogram::of(b)))
}

fn ln1p(x: f64) -> f32 {
    (x.max(0.0)).ln_1p() as f32
}

/// Counts below this have their [`ln1p`] in [`LN1P_COUNTS`].
const LN1P_TABLE_LEN: usize = 1024;

/// [`ln1p`] of 0, 1, 2, … [`LN1P_TABLE_LEN`] − 1, computed once by the same
/// function: a row has a dozen count features, most of them small.
static LN1P_COUNTS: std::sync::LazyLock<Vec<f32>> =
    std::sync::LazyLock::new(|| (0..LN1P_TABLE_LEN).map(|n| ln1p(n as f64)).collect());

/// [`ln1p`] of a count, from [`LN1P_COUNTS`] when it is there: the same
/// value, bit for bit.
fn ln1p_count(n: u32) -> f32 {
    match LN1P_COUNTS.get(n as usize) {
        Some(&v) => v,
        None => ln1p(f64::from(n)),
    }
}

fn is_freemail(domain: &str) -> bool {
    FREEMAIL.contains(&domain)
}

/// Half-life (seconds) used for the decayed weight feature.
pub const HALF_LIFE_SECS: f64 = 90.0 * 86400.0;

/// Per-recipient scan state for the lookalike search. Contacts found are
/// borrowed from the graph and copied out only into the evidence.
#[derive(Default, Clone)]
struct Scan<'g> {
    /// The recipient's id in the graph, resolved once per message.
    id: Option<Id>,
    known: Option<EdgeStats>,
    best_dist: usize,
    best: Option<(&'g str, u32)>,
    same_local: Option<(&'g str, u32)>,
    sibling: Option<(&'g str, u32)>,
    skel: String,
    /// Organisation-wide familiarity of the recipient (looked up once).
    org: AddressStats,
    neighbours: u32,
    local_len: usize,
    /// The first three bytes of the local part, packed ([`pack3`]).
    pre3: u32,
    /// The address's [`Sketch`] (unknown recipients only: the lookalike
    /// scan compares it with each contact's).
    sketch: Sketch,
    /// The address's [`MatchMasks`], once a distance needed them (`None`
    /// also for an address over 64 bytes).
    masks: Option<Option<Box<MatchMasks>>>,
    /// The address's [`Histogram`], once a comparison needed it.
    hist: Option<Histogram>,
}

/// Extract the features of every recipient in `recipients` of `meta`, sent by
/// `sender`, as of `now`, from the history in `g`.
pub fn extract(
    g: &dyn GraphView,
    sender: &str,
    meta: &MessageMeta,
    recipients: &[Recipient],
    now: Ts,
) -> Vec<RecipientFeatures> {
    let sstats = g.sender(sender);
    // Every address is resolved to its id once; the lookups below go by id.
    let sid = g.id_of(sender);
    let sender_domain = domain_of(sender);
    let n = recipients.len();

    // Thread context.
    let subject = meta.subject.as_deref().unwrap_or("");
    let is_reply = is_reply(subject);
    // The two id lists are joined (a copy) only when both have ids.
    let mut thread: Vec<String> = if meta.references.is_empty() {
        g.thread_participants(&meta.in_reply_to)
    } else if meta.in_reply_to.is_empty() {
        g.thread_participants(&meta.references)
    } else {
        let mut ids: Vec<String> = meta.in_reply_to.clone();
        ids.extend(meta.references.iter().cloned());
        g.thread_participants(&ids)
    };
    if thread.is_empty() && is_reply {
        thread = g.subject_participants(sender, subject);
    }
    let thread_known = !thread.is_empty();
    let forward = is_forward(subject);
    let thread_set: HashSet<&str> = thread.iter().map(String::as_str).collect();
    let thread_none_in = thread_known
        && !forward
        && !recipients
            .iter()
            .any(|r| thread_set.contains(r.address.as_str()));

    // Attachment context.
    let att_names: Vec<&str> = meta
        .attachments
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let mut att_rcpts: Vec<(String, Vec<String>)> = Vec::new();
    for name in &att_names {
        let r = g.attachment_recipients(sender, name);
        if !r.is_empty() {
            att_rcpts.push((name.to_string(), r));
        }
    }

    // Edges and the lookalike/sibling scan over the sender's contacts.
    let mut scans: Vec<Scan<'_>> = recipients
        .iter()
        .map(|r| {
            let id = g.id_of(&r.address);
            let known = match (sid, id) {
                (Some(s), Some(i)) => g.edge_by_id(s, i),
                _ => None,
            };
            let org = id.map(|i| g.address_by_id(i)).unwrap_or_default();
            let local_len = local_of(&r.address).len();
            let ra = r.address.as_bytes();
            let (skel, sketch) = match known {
                None => {
                    let skel = skeleton(&r.address);
                    let sketch = Sketch::with_skeleton(&r.address, &skel);
                    (skel, sketch)
                }
                Some(_) => Default::default(),
            };
            Scan {
                id,
                known,
                best_dist: 3,
                skel,
                org,
                local_len,
                pre3: pack3(&ra[..local_len]),
                sketch,
                ..Default::default()
            }
        })
        .collect();
    // Recipients the scan can change: known ones with a 3-byte local part
    // (siblings), and every unknown one (lookalikes, same local part).
    let siblings: Vec<usize> = (0..n)
        .filter(|&i| scans[i].known.is_some() && scans[i].pre3 != 0)
        .collect();
    let strangers: Vec<usize> = (0..n).filter(|&i| scans[i].known.is_none()).collect();
    if let Some(s) = sid.filter(|_| sstats.contacts > 0) {
        // A contact is ruled out by its sketch where it can be: its
        // address is read only for a comparison the sketch cannot settle.
        for (cid, ck, total) in g.contact_sketches(s).take(MAX_CONTACT_SCAN) {
            let ck = &ck;
            let mut addr: Option<Option<&str>> = None;
            let mut chist: Option<Histogram> = None;
            for &i in &siblings {
                // Autocomplete sibling: a more-written contact sharing the
                // first letters (a known recipient always has an id).
                let sc = &mut scans[i];
                if sc.pre3 == ck.pre3
                    && sc.id != Some(cid)
                    && sc.sibling.is_none_or(|(_, c)| total > c)
                {
                    if let Some(a) = *addr.get_or_insert_with(|| g.address_by_id_str(cid)) {
                        sc.sibling = Some((a, total));
                    }
                }
            }
            for &i in &strangers {
                let (r, sc) = (&recipients[i], &mut scans[i]);
                let ra = r.address.as_bytes();
                // The contact is the recipient itself: by id when the graph
                // knows the recipient, else (never equal to an interned
                // contact but for an empty address) by the strings, which
                // only equal sketches can have.
                let is_self = match sc.id {
                    Some(rid) => rid == cid,
                    None => {
                        *ck == sc.sketch
                            && *addr.get_or_insert_with(|| g.address_by_id_str(cid))
                                == Some(r.address.as_str())
                    }
                };
                if is_self {
                    continue;
                }
                // Same local part at another address: the contact's local
                // part (up to its last `@`) is as long and the same.
                if ck.local_len == sc.sketch.local_len
                    && sc.same_local.is_none_or(|(_, c)| total > c)
                {
                    if let Some(a) = *addr.get_or_insert_with(|| g.address_by_id_str(cid)) {
                        let rl = &ra[..sc.local_len];
                        if a.as_bytes().starts_with(rl)
                            && (ck.local_len < u16::MAX || local_of(a).len() == rl.len())
                        {
                            sc.same_local = Some((a, total));
                        }
                    }
                }
                // Homoglyph and punctuation skeletons differ by at most a
                // few edits; both checks are skipped when the lengths or
                // the sketches' bounds on the byte histograms' bound
                // already rule that out (the lengths exactly when a
                // sketch's saturated).
                let mb = mask_bound(sc.sketch.mask, ck.mask)
                    .max(histogram_bound(sc.sketch.hist16, ck.hist16));
                if ck.len.abs_diff(sc.sketch.len) > 4 || mb > 4 {
                    continue;
                }
                // The distance capped at 3 (`d`), or 1 when the skeletons
                // match unless the histograms bound the distance above 4.
                // Without matching skeletons only `d` <= 2 changes
                // anything, which the masks may rule out (equal skeletons
                // hash equal).
                let skel_may_match = ck.skel == sc.sketch.skel;
                let ruled_out_2 = mb > 2 || bigrams_rule_out_2(sc.sketch.bigrams, ck.bigrams);
                if ruled_out_2 && !skel_may_match {
                    continue;
                }
                let Some(a) = *addr.get_or_insert_with(|| g.address_by_id_str(cid)) else {
                    continue;
                };
                let ab = a.as_bytes();
                if (ck.len == u16::MAX || sc.sketch.len == u16::MAX)
                    && ra.len().abs_diff(ab.len()) > 4
                {
                    continue;
                }
                let d = if ruled_out_2 {
                    3
                } else {
                    let masks = sc.masks.get_or_insert_with(|| MatchMasks::of(ra));
                    distance(ra, masks.as_deref(), ab, 2)
                };
                let d = if d > 1 && skel_may_match && skeleton_is(a, &sc.skel) {
                    if d > 2 && cached_bound(ra, ab, &mut sc.hist, &mut chist) > 4 {
                        continue;
                    }
                    1
                } else {
                    d
                };
                if d < sc.best_dist
                    || (d == sc.best_dist && d <= 2 && sc.best.is_some_and(|(_, c)| total > c))
                {
                    sc.best_dist = d;
                    sc.best = Some((a, total));
                }
            }
        }
    }

    // Neighbourhood of a recipient the sender never wrote to: which of the
    // sender's first contacts have mail with it. Mail to it needs someone
    // who wrote to it, mail from it needs it to have sent some.
    if let Some(s) = sid.filter(|_| sstats.contacts > 0) {
        for &i in &strangers {
            let sc = &mut scans[i];
            if let Some(x) = sc.id.filter(|_| sc.org.senders > 0 || sc.org.sent > 0) {
                sc.neighbours = g.contacts_with_mail_by_id(s, x, MAX_NEIGHBOUR_CHECKS);
            }
        }
    }
    // Pair lookups are symmetric (co-recipient counts, mail in either
    // direction): each pair is looked up once and used for both of its
    // recipients (for the first PAIR_CACHE recipients).
    let pn = n.min(PAIR_CACHE);
    let mut pair_cache: Vec<(Option<u32>, Option<bool>)> = vec![(None, None); pn * pn];
    let pair = |i: usize, j: usize| (i < pn && j < pn).then(|| i.min(j) * pn + i.max(j));
    let mut out = Vec::with_capacity(n);
    for (i, r) in recipients.iter().enumerate() {
        let sc = &scans[i];
        let mut v = [0f32; N_FEATURES];
        let mut ev = Evidence {
            sender_history: sstats.messages,
            sender_contacts: sstats.contacts,
            ..Default::default()
        };
        let dom = domain_of(&r.address);
        let never = sc.known.is_none();
        v[idx::NEVER_WRITTEN] = f32::from(u8::from(never));
        match &sc.known {
            Some(e) => {
                let total = e.total();
                ev.count = total;
                v[idx::LOG_COUNT] = ln1p_count(total);
                let days = ((now - e.last).max(0) as f64) / 86400.0;
                ev.days_since = Some(days);
                v[idx::LOG_DAYS_SINCE] = ln1p(days);
                v[idx::LOG_WEIGHT] = ln1p(e.weight_at(now, HALF_LIFE_SECS));
                if sstats.messages > 0 {
                    v[idx::SHARE] = (total as f64 / sstats.messages as f64).min(1.0) as f32;
                }
            }
            None => {
                v[idx::LOG_DAYS_SINCE] = ln1p(NEVER_DAYS);
            }
        }
        let rid = sc.id;
        let replies = match (rid, sid) {
            (Some(r), Some(s)) => g.edge_by_id(r, s).map(|e| e.total()).unwrap_or(0),
            _ => 0,
        };
        ev.replies = replies;
        v[idx::LOG_REPLY_COUNT] = ln1p_count(replies);
        v[idx::LOG_SENDER_MSGS] = ln1p_count(sstats.messages);
        v[idx::LOG_SENDER_CONTACTS] = ln1p_count(sstats.contacts);
        v[idx::LOG_N_RCPTS] = (n.max(1) as f32).ln();
        v[idx::FIELD_CC] = f32::from(u8::from(r.field == Field::Cc));
        v[idx::FIELD_BCC] = f32::from(u8::from(r.field == Field::Bcc));
        let others = n.saturating_sub(1);
        ev.others = others;
        v[idx::HAS_OTHERS] = f32::from(u8::from(others > 0));
        if others > 0 {
            let known = scans
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.known.is_some())
                .count();
            ev.others_known = known;
            v[idx::OTHERS_KNOWN_FRAC] = known as f32 / others as f32;
            let mut co_max = 0u32;
            let mut co_n = 0usize;
            if !never {
                for (j, o) in scans.iter().enumerate() {
                    if j == i || o.known.is_none() {
                        continue;
                    }
                    let oid = o.id;
                    let co = || match (sid, rid, oid) {
                        (Some(s), Some(a), Some(b)) => g.co_count_by_id(s, a, b),
                        _ => 0,
                    };
                    let c = match pair(i, j) {
                        Some(k) => *pair_cache[k].0.get_or_insert_with(co),
                        None => co(),
                    };
                    co_max = co_max.max(c);
                    co_n += usize::from(c > 0);
                }
            }
            ev.others_co = co_n;
            v[idx::LOG_CO_MAX] = ln1p_count(co_max);
            v[idx::CO_FRAC] = co_n as f32 / others as f32;
            let mut checked = 0usize;
            let mut linked = 0usize;
            for (j, oid) in scans.iter().map(|o| o.id).enumerate() {
                if j == i {
                    continue;
                }
                if checked >= MAX_LINK_CHECKS {
                    break;
                }
                checked += 1;
                let link = || match (oid, rid) {
                    (Some(o), Some(r)) => {
                        g.edge_by_id(o, r).is_some() || g.edge_by_id(r, o).is_some()
                    }
                    _ => false,
                };
                let is_linked = match pair(i, j) {
                    Some(k) => *pair_cache[k].1.get_or_insert_with(link),
                    None => link(),
                };
                if is_linked {
                    linked += 1;
                }
            }
            ev.others_linked = linked;
            ev.others_checked = checked;
            v[idx::OTHERS_LINKED_FRAC] = linked as f32 / checked.max(1) as f32;
        }
        let did = g.domain_id_of(dom);
        let dstats = match (sid, did) {
            (Some(s), Some(d)) => g.sender_domain_by_id(s, d),
            _ => None,
        };
        let dcount = dstats.map(|d| d.total()).unwrap_or(0);
        ev.domain_count = dcount;
        v[idx::LOG_DOMAIN_COUNT] = ln1p_count(dcount);
        v[idx::DOMAIN_NEW] = f32::from(u8::from(dstats.is_none()));
        let internal = !dom.is_empty() && dom == sender_domain;
        v[idx::INTERNAL] = f32::from(u8::from(internal));
        v[idx::FREEMAIL] = f32::from(u8::from(is_freemail(dom)));
        let org = sc.org;
        ev.org_senders = org.senders;
        ev.rcpt_sent = org.sent;
        v[idx::LOG_RCPT_SENT] = ln1p_count(org.sent);
        v[idx::LOG_ORG_SENDERS] = ln1p_count(org.senders);
        let dom_senders = did.map(|d| g.domain_by_id(d).senders).unwrap_or(0);
        v[idx::LOG_ORG_DOMAIN_SENDERS] = ln1p_count(dom_senders);
        if never {
            if let Some((addr, c)) = &sc.best {
                if sc.best_dist <= 1 {
                    v[idx::LOOKALIKE1] = 1.0;
                } else if sc.best_dist == 2 {
                    v[idx::LOOKALIKE2] = 1.0;
                }
                v[idx::LOG_LOOKALIKE_COUNT] = ln1p_count(*c);
                ev.lookalike = Some((addr.to_string(), sc.best_dist as u32, *c));
            }
            ev.neighbour_links = sc.neighbours;
            v[idx::LOG_NEIGHBOUR_LINKS] = ln1p_count(sc.neighbours);
            v[idx::NEW_NO_NEIGHBOURS] = f32::from(u8::from(sc.neighbours == 0));
            if let Some((addr, c)) = sc.same_local {
                v[idx::SAME_LOCAL_OTHER_DOMAIN] = 1.0;
                ev.same_local = Some((addr.to_string(), c));
            }
        }
        if let Some((addr, c)) = &sc.sibling {
            let own = sc.known.map(|e| e.total()).unwrap_or(0);
            let dom_ratio = ((1.0 + *c as f64) / (1.0 + own as f64)).ln().max(0.0);
            v[idx::SIBLING_DOMINANCE] = dom_ratio as f32;
            if *c > own {
                ev.sibling = Some((addr.to_string(), *c));
            }
        }
        v[idx::IS_REPLY] = f32::from(u8::from(is_reply));
        v[idx::THREAD_KNOWN] = f32::from(u8::from(thread_known));
        let out_of_thread = thread_known && !forward && !thread_set.contains(r.address.as_str());
        ev.not_in_thread = out_of_thread;
        v[idx::NOT_IN_THREAD] = f32::from(u8::from(out_of_thread));
        v[idx::THREAD_NONE_IN] = f32::from(u8::from(thread_none_in));
        if out_of_thread {
            let co = g.co_max(sender, &r.address, &thread, MAX_THREAD_CO_CHECKS);
            v[idx::LOG_THREAD_CO] = ln1p_count(co);
        }
        v[idx::HAS_ATTACHMENT] = f32::from(u8::from(!att_names.is_empty()));
        let to_r = att_rcpts.iter().any(|(_, l)| l.contains(&r.address));
        v[idx::ATTACHMENT_TO_RCPT] = f32::from(u8::from(to_r));
        if !to_r {
            if let Some((name, _)) = att_rcpts.first() {
                v[idx::ATTACHMENT_TO_OTHERS] = 1.0;
                ev.attachment_elsewhere = Some(name.clone());
            }
        }
        v[idx::NEW_IN_KNOWN_GROUP] = v[idx::NEVER_WRITTEN] * v[idx::OTHERS_KNOWN_FRAC];
        v[idx::NEW_INTERNAL] = v[idx::NEVER_WRITTEN] * v[idx::INTERNAL];
        v[idx::NEW_UNKNOWN_TO_ORG] =
            f32::from(u8::from(never && org.senders == 0 && sstats.messages > 0));
        let silent = org.senders == 0 && org.sent == 0;
        let lookalike = v[idx::LOOKALIKE1] > 0.0 || v[idx::LOOKALIKE2] > 0.0;
        v[idx::LOOKALIKE_SILENT] = f32::from(u8::from(lookalike && silent));
        v[idx::SAME_LOCAL_SILENT] = f32::from(u8::from(
            v[idx::SAME_LOCAL_OTHER_DOMAIN] > 0.0 && org.sent == 0,
        ));
        v[idx::NEW_UNLINKED_IN_GROUP] =
            f32::from(u8::from(never && others > 0 && ev.others_linked == 0));
        out.push(RecipientFeatures {
            values: v,
            evidence: ev,
        });
    }
    out
}

#[cfg(test)]
#[path = "features_reference.rs"]
mod reference;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::graph::sketch::{address_pack3, bigram_mask, bucket_mask, nibble_histogram};
    use crate::graph::{Graph, GraphConfig, LearnInput};
    use crate::message::Mailbox;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// The count table gives `ln1p` bit for bit, inside it, at its edge
    /// and past it.
    #[test]
    fn ln1p_count_is_ln1p() {
        let edge = LN1P_TABLE_LEN as u32;
        for n in (0..edge + 100).chain([65_535, 1 << 20, u32::MAX]) {
            assert_eq!(ln1p_count(n).to_bits(), ln1p(f64::from(n)).to_bits(), "{n}");
        }
    }

    fn random_string(rng: &mut StdRng, alphabet: &[&str], max_len: usize) -> String {
        let len = rng.gen_range(0..=max_len);
        (0..len).map(|_| *alphabet.choose(rng).unwrap()).collect()
    }

    #[test]
    fn distance_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(11);
        let alphabet = ["a", "b", "c", "r", "n", "@", "."];
        for _ in 0..200_000 {
            let a = random_string(&mut rng, &alphabet, 9);
            let b = if rng.gen_bool(0.5) {
                // A few edits of `a`, to hit small distances often.
                let mut b: Vec<u8> = a.clone().into_bytes();
                for _ in 0..rng.gen_range(0..4) {
                    let k = rng.gen_range(0..=b.len());
                    match rng.gen_range(0..4) {
                        0 => b.insert(k, b"abcrn@."[rng.gen_range(0..7)]),
                        1 if k < b.len() => {
                            b.remove(k);
                        }
                        2 if k + 1 < b.len() => b.swap(k, k + 1),
                        _ if k < b.len() => b[k] = b"abcrn@."[rng.gen_range(0..7)],
                        _ => {}
                    }
                }
                String::from_utf8(b).unwrap()
            } else {
                random_string(&mut rng, &alphabet, 9)
            };
            for max in [0, 1, 2, 3] {
                assert_eq!(
                    bounded_distance(a.as_bytes(), b.as_bytes(), max),
                    reference::reference_distance(a.as_bytes(), b.as_bytes(), max),
                    "{a:?} {b:?} max {max}"
                );
            }
        }
        // Beyond the length cap only equality counts, as before.
        let long = "x".repeat(100);
        let long2 = format!("{}y", "x".repeat(99));
        assert_eq!(bounded_distance(long.as_bytes(), long2.as_bytes(), 2), 3);
        assert_eq!(
            reference::reference_distance(long.as_bytes(), long2.as_bytes(), 2),
            3
        );
    }

    /// `b` as `a` with a number of random edits from `edits` (insertions,
    /// deletions, substitutions, adjacent transpositions) of bytes from
    /// `alphabet`.
    fn edited(
        rng: &mut StdRng,
        a: &[u8],
        alphabet: &[u8],
        edits: std::ops::RangeInclusive<usize>,
    ) -> Vec<u8> {
        let mut b = a.to_vec();
        for _ in 0..rng.gen_range(edits) {
            let k = rng.gen_range(0..=b.len());
            let c = alphabet[rng.gen_range(0..alphabet.len())];
            match rng.gen_range(0..4) {
                0 => b.insert(k, c),
                1 if k < b.len() => {
                    b.remove(k);
                }
                2 if k + 1 < b.len() => b.swap(k, k + 1),
                _ if k < b.len() => b[k] = c,
                _ => b.push(c),
            }
        }
        b
    }

    /// The bit-parallel distance (strings up to 64 bytes after the common
    /// prefix and suffix) and its fallback give the simple table's
    /// distance: random pairs, near-equal pairs (0 to 4 edits, adjacent
    /// transpositions included), empty strings, strings of 60 to 100 bytes
    /// (on both sides of 64 and of the 96-byte cap), any byte values; for
    /// caps 0 to 5 and uncapped.
    #[test]
    fn bit_parallel_distance_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(15);
        let small = b"abcrn@.";
        let any: Vec<u8> = (0..=255).collect();
        let mut near = [0usize; 4];
        for case in 0..40_000 {
            let alphabet: &[u8] = if case % 3 == 0 { &any } else { small };
            let len = match case % 5 {
                0 => rng.gen_range(0..3),
                1 | 2 => rng.gen_range(0..20),
                3 => rng.gen_range(20..64),
                _ => rng.gen_range(60..100),
            };
            let a: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let b = match rng.gen_range(0..4) {
                0 => (0..rng.gen_range(0..=len + 2))
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect(),
                // A common prefix and suffix around a differing middle.
                1 if len > 4 => {
                    let mut b = a.clone();
                    let mid = edited(&mut rng, &a[2..len - 2], alphabet, 0..=4);
                    b.splice(2..len - 2, mid);
                    b
                }
                _ => edited(&mut rng, &a, alphabet, 0..=4),
            };
            let (a, b) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
            // `a`'s match masks, as the contact scan keeps them for a
            // recipient (none over 64 bytes or with a byte outside ' '..='~').
            let masks = MatchMasks::of(&a);
            let printable = a.iter().all(|c| (b' '..=b'~').contains(c));
            assert_eq!(masks.is_some(), a.len() <= 64 && printable);
            for max in [0, 1, 2, 3, 5, 200] {
                let got = bounded_distance(&a, &b, max);
                assert_eq!(
                    got,
                    reference::reference_distance(&a, &b, max),
                    "{a:?} {b:?} max {max}"
                );
                assert_eq!(distance(&a, masks.as_deref(), &b, max), got, "{a:?} {b:?}");
                if max == 2 && got <= 2 {
                    near[got] += 1;
                } else if max == 2 {
                    near[3] += 1;
                }
            }
        }
        // Every outcome of the capped distance the scan uses occurs often.
        assert!(near.iter().all(|&k| k > 1_500), "{near:?}");
        // Masks of a printable address against contacts with bytes they
        // have no entry for (below ' ', DEL, 8-bit): those match nothing.
        let a = b"bob.smith@corp.example";
        let masks = MatchMasks::of(a);
        assert!(masks.is_some());
        for c in [0x00, 0x1f, 0x7f, 0x80, 0xe9, 0xff] {
            for k in [0, 3, 9, 21, 22] {
                let mut sub = a.to_vec();
                let mut ins = a.to_vec();
                ins.insert(k, c);
                if let Some(x) = sub.get_mut(k) {
                    *x = c;
                }
                for b in [&sub, &ins] {
                    for max in [1, 2, 3] {
                        let want = reference::reference_distance(a, b, max);
                        assert_eq!(distance(a, masks.as_deref(), b, max), want, "{b:?}");
                    }
                }
            }
        }
        // The word's top row: 64-byte strings differing at either end, and
        // transpositions there.
        let base: Vec<u8> = (0..64).map(|i| b'a' + (i % 26) as u8).collect();
        for k in [0, 1, 31, 62, 63] {
            let mut sub = base.clone();
            sub[k] = b'#';
            let mut swap = base.clone();
            swap.swap(k.min(62), k.min(62) + 1);
            let mut del = base.clone();
            del.remove(k);
            for (x, d) in [(&sub, 1), (&swap, 1), (&del, 1)] {
                assert_eq!(osa_bits(&base, x), d, "{k}");
                assert_eq!(osa_bits(x, &base), d, "{k}");
                assert_eq!(bounded_distance(&base, x, 2), d);
            }
        }
        assert_eq!(osa_bits(b"ab", b"ba"), 1);
        assert_eq!(
            osa_bits(b"ca", b"abc"),
            3,
            "OSA, not Damerau: no edit after a swap"
        );
        assert_eq!(osa_bits(&base, &[]), 64);
    }

    /// The word-at-a-time common prefix and suffix equal the byte-at-a-time
    /// ones, at every length and position of the first difference.
    #[test]
    fn common_prefix_and_suffix_match_comparing_bytes() {
        let mut rng = StdRng::seed_from_u64(16);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..40);
            let a: Vec<u8> = (0..len).map(|_| rng.gen_range(b'a'..b'd')).collect();
            let mut b = a.clone();
            if len > 0 && rng.gen_bool(0.8) {
                let k = rng.gen_range(0..len);
                b[k] = b'#';
            }
            b.truncate(rng.gen_range(0..=len));
            if rng.gen_bool(0.3) {
                b.insert(0, b'#');
            }
            let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            let suf = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(common_prefix(&a, &b), pre, "{a:?} {b:?}");
            assert_eq!(common_prefix(&b, &a), pre, "{a:?} {b:?}");
            assert_eq!(common_suffix(&a, &b), suf, "{a:?} {b:?}");
            assert_eq!(common_suffix(&b, &a), suf, "{a:?} {b:?}");
        }
    }

    #[test]
    fn skeleton_comparison_matches_building_the_skeleton() {
        let mut rng = StdRng::seed_from_u64(12);
        let alphabet = [
            "r", "n", "m", "v", "w", "0", "o", "1", "i", "l", "|", "5", "s", ".", "_", "-", "@",
            "R", "N", "V", "I", "a",
        ];
        let non_ascii = ["о", "і", "а"];
        let mut pool: Vec<String> = Vec::new();
        for _ in 0..3000 {
            let mut s = random_string(&mut rng, &alphabet, 8);
            if rng.gen_bool(0.05) {
                s.push_str(non_ascii.choose(&mut rng).unwrap());
            }
            pool.push(s);
        }
        for a in &pool {
            for _ in 0..40 {
                let b = pool.choose(&mut rng).unwrap();
                let skel = skeleton(b);
                assert_eq!(skeleton_is(a, &skel), skeleton(a) == skel, "{a:?} {b:?}");
            }
            assert!(skeleton_is(a, &skeleton(a)), "{a:?}");
        }
    }

    /// Addresses that are near one another in every way the features look
    /// at: punctuation, homoglyphs, transpositions, other domains, shared
    /// prefixes, non-ASCII look-alikes, one over-long address.
    fn address_pool() -> Vec<String> {
        let locals = [
            "john.smith",
            "jsmith",
            "john.srnith",
            "j0hn.smith",
            "jonh.smith",
            "john_smith",
            "john.smyth",
            "johnny",
            "joanna",
            "mary.vvilson",
            "mary.wilson",
            "marc",
            "mark",
            "rnark",
            "sales",
            "saIes",
            "jоhn.smith",
            "bob",
            "bob1",
            "ann",
        ];
        let domains = [
            "corp.com",
            "corp.co",
            "c0rp.com",
            "partner.org",
            "gmail.com",
        ];
        let mut out = Vec::new();
        for l in locals {
            for d in domains {
                out.push(format!("{l}@{d}"));
            }
        }
        out.push(format!("{}@corp.com", "long".repeat(25)));
        out.push(format!("{}@corp.co", "long".repeat(25)));
        out
    }

    fn rcpt(address: &str, field: Field) -> Recipient {
        Recipient {
            address: address.to_string(),
            name: None,
            field,
        }
    }

    #[test]
    fn features_match_the_reference_on_crafted_histories() {
        let pool = address_pool();
        let fields = [Field::To, Field::Cc, Field::Bcc];
        for seed in 0..6u64 {
            let mut rng = StdRng::seed_from_u64(100 + seed);
            let mut g = Graph::new(GraphConfig::default());
            let senders: Vec<&String> = pool.iter().take(12 + seed as usize * 3).collect();
            let attachments = ["report.pdf", "plan.xlsx"];
            let mut t = 1_700_000_000i64;
            for m in 0..(300 + 200 * seed as usize) {
                let sender = if rng.gen_bool(0.6) {
                    senders[0].as_str()
                } else {
                    senders.choose(&mut rng).unwrap().as_str()
                };
                let k = rng.gen_range(1..8);
                let rcpts: Vec<Recipient> = pool
                    .choose_multiple(&mut rng, k)
                    .map(|a| rcpt(a, *fields.choose(&mut rng).unwrap()))
                    .collect();
                let id = format!("<m{m}@corp.com>");
                let subject = format!("topic {}", m % 13);
                let att: Vec<&str> = if m % 5 == 0 {
                    vec![attachments[m % 2]]
                } else {
                    vec![]
                };
                g.learn(&LearnInput {
                    sender,
                    sender_name: None,
                    recipients: &rcpts,
                    message_id: Some(&id),
                    subject: Some(&subject),
                    attachments: att,
                    ts: t,
                });
                t += rng.gen_range(60..86_400);
            }
            // Addresses with one link only: one a colleague wrote to, one
            // that wrote to a colleague (both colleagues are contacts).
            let (main, colleague) = (senders[0].as_str(), senders[1].as_str());
            for (from, to) in [
                (main, colleague),
                (colleague, "onlyin@partner.org"),
                ("onlyout@partner.org", colleague),
            ] {
                g.learn(&LearnInput {
                    sender: from,
                    sender_name: None,
                    recipients: &[rcpt(to, Field::To)],
                    message_id: None,
                    subject: None,
                    attachments: vec![],
                    ts: t,
                });
                t += 60;
            }
            let mut compared = 0usize;
            // Rows where each scan-dependent feature fired, so that the
            // comparison covers them.
            let watched = [
                idx::LOOKALIKE1,
                idx::LOOKALIKE2,
                idx::SAME_LOCAL_OTHER_DOMAIN,
                idx::SIBLING_DOMINANCE,
                idx::LOG_NEIGHBOUR_LINKS,
                idx::LOG_CO_MAX,
                idx::OTHERS_LINKED_FRAC,
                idx::NOT_IN_THREAD,
                idx::ATTACHMENT_TO_OTHERS,
            ];
            let mut fired = [0usize; 9];
            for case in 0..150 {
                let sender = senders.choose(&mut rng).unwrap().as_str();
                let n = match case % 6 {
                    0 => 1,
                    1 => 5,
                    2 => 30,
                    3 => pool.len(),
                    _ => rng.gen_range(2..12),
                };
                let mut rcpts: Vec<Recipient> = pool
                    .choose_multiple(&mut rng, n)
                    .map(|a| rcpt(a, *fields.choose(&mut rng).unwrap()))
                    .collect();
                if case % 7 == 0 {
                    rcpts.push(rcpt("stranger@elsewhere.net", Field::To));
                }
                let sender = if case % 5 == 0 {
                    rcpts.push(rcpt("onlyin@partner.org", Field::To));
                    rcpts.push(rcpt("onlyout@partner.org", Field::Cc));
                    main
                } else {
                    sender
                };
                let meta = MessageMeta {
                    from: Some(Mailbox {
                        address: sender.to_string(),
                        name: None,
                    }),
                    recipients: rcpts.clone(),
                    subject: Some(match case % 4 {
                        0 | 2 => format!("RE: topic {}", case % 13),
                        1 => format!("FW: topic {}", case % 13),
                        _ => "new things".to_string(),
                    }),
                    in_reply_to: if case % 3 == 0 {
                        vec![format!("<m{}@corp.com>", case * 3)]
                    } else {
                        vec![]
                    },
                    attachments: if case % 4 == 0 {
                        vec![crate::message::Attachment {
                            name: attachments[case % 2].to_string(),
                            size: 10,
                        }]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                };
                let now = t + 3600;
                let got = extract(&g, sender, &meta, &rcpts, now);
                let want = reference::reference_extract(&g, sender, &meta, &rcpts, now);
                assert_eq!(got.len(), want.len());
                for (r, (a, b)) in rcpts.iter().zip(got.iter().zip(want.iter())) {
                    let bits = |f: &RecipientFeatures| f.values.map(f32::to_bits);
                    assert_eq!(bits(a), bits(b), "seed {seed} case {case} {}", r.address);
                    assert_eq!(a.evidence, b.evidence, "seed {seed} case {case}");
                    compared += 1;
                    for (k, f) in watched.iter().enumerate() {
                        fired[k] += usize::from(a.values[*f] > 0.0);
                    }
                }
            }
            assert!(compared > 1000);
            for (k, f) in watched.iter().enumerate() {
                assert!(
                    fired[k] > 0,
                    "seed {seed}: feature {} never fired",
                    FEATURES[*f].0
                );
            }
        }
    }

    /// Two edits never move more than 12 bigram bits, whatever the edits
    /// (transpositions included) and wherever they fall; and the distance
    /// agrees with the reference at every row width (up to 90 bytes).
    #[test]
    fn bigrams_never_rule_out_two_edits() {
        let mut rng = StdRng::seed_from_u64(14);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz.@-_0123456789";
        for _ in 0..60_000 {
            let len = rng.gen_range(0..90);
            let a: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let b = edited(&mut rng, &a, alphabet, 1..=2);
            // Longer strings than the distance test's: every row width.
            assert_eq!(
                bounded_distance(&a, &b, 2),
                reference::reference_distance(&a, &b, 2)
            );
            if bounded_distance(&a, &b, 2) <= 2 {
                assert!(
                    !bigrams_rule_out_2(bigram_mask(&a), bigram_mask(&b)),
                    "{:?} {:?}",
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b)
                );
            }
        }
    }

    #[test]
    fn filters_and_packed_prefix_match_the_full_forms() {
        let mut rng = StdRng::seed_from_u64(13);
        let alphabet = ["a", "b", "@", ".", "c", "A", "é", "1", "q"];
        for _ in 0..100_000 {
            let a = random_string(&mut rng, &alphabet, 12);
            let b = if rng.gen_bool(0.5) {
                let half: String = a.chars().take(a.chars().count() / 2).collect();
                format!("{half}{}", random_string(&mut rng, &alphabet, 4))
            } else {
                random_string(&mut rng, &alphabet, 12)
            };
            let full = Histogram::of(a.as_bytes()).lower_bound(&Histogram::of(b.as_bytes()));
            assert_eq!(
                address_pack3(a.as_bytes()),
                pack3(local_of(&a).as_bytes()),
                "{a:?}"
            );
            let (ma, mb) = (bucket_mask(a.as_bytes()), bucket_mask(b.as_bytes()));
            assert!(mask_bound(ma, mb) <= full, "{a:?} {b:?}");
            let (ha, hb) = (
                nibble_histogram(a.as_bytes()),
                nibble_histogram(b.as_bytes()),
            );
            assert!(histogram_bound(ha, hb) <= full, "{a:?} {b:?}");
            if bigrams_rule_out_2(bigram_mask(a.as_bytes()), bigram_mask(b.as_bytes())) {
                assert_eq!(
                    bounded_distance(a.as_bytes(), b.as_bytes(), 2),
                    3,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    /// Crafted contact sets for the contact scan: ties in distance and in
    /// count (the first contact in the graph's order wins), skeleton-only
    /// matches (homoglyphs, Cyrillic letters, punctuation), local parts of
    /// 0 to 3 bytes, addresses with no or two `@`, and contacts removed by
    /// erasure and by retention; each compared with the reference.
    #[test]
    fn contact_scan_matches_the_reference_on_crafted_contact_sets() {
        let sender = "boss@corp.com";
        let contacts: &[(&str, usize)] = &[
            // Ties: the same distance and the same count.
            ("anna@corp.com", 3),
            ("anne@corp.com", 3),
            ("anni@corp.com", 3),
            // Skeletons: homoglyphs and punctuation.
            ("j.smith@corp.com", 2),
            ("bill@rnicrosoft.com", 4),
            ("jоhn@corp.com", 1),
            ("vvendy@corp.com", 2),
            // Short local parts.
            ("@corp.com", 1),
            ("a@corp.com", 2),
            ("ab@corp.com", 2),
            ("abc@corp.com", 5),
            ("abd@corp.com", 5),
            // Odd shapes.
            ("noatsign", 1),
            ("x@y@corp.com", 1),
            ("sales@corp.co", 6),
            ("sales@partner.org", 6),
        ];
        let rcpts: &[&str] = &[
            "anny@corp.com",
            "ann@corp.com",
            "jsmith@corp.com",
            "j_smith@corp.com",
            "bill@microsoft.com",
            "john@corp.com",
            "wendy@corp.com",
            "b@corp.com",
            "ab@corp.co",
            "abc@corp.com",
            "abx@corp.com",
            "noatsig",
            "x@y@corp.co",
            "sales@corp.com",
            "@corp.co",
            "",
            "stranger@elsewhere.net",
        ];
        let mut g = Graph::new(GraphConfig::default());
        let mut t = 1_700_000_000i64;
        for _ in 0..25 {
            g.learn(&LearnInput {
                sender,
                sender_name: None,
                recipients: &[rcpt("abc@corp.com", Field::To)],
                message_id: None,
                subject: None,
                attachments: vec![],
                ts: t,
            });
            t += 60;
        }
        for (a, k) in contacts {
            for _ in 0..*k {
                g.learn(&LearnInput {
                    sender,
                    sender_name: None,
                    recipients: &[rcpt(a, Field::To)],
                    message_id: None,
                    subject: None,
                    attachments: vec![],
                    ts: t,
                });
                t += 60;
            }
        }
        // One recipient the organisation knows from elsewhere.
        g.learn(&LearnInput {
            sender: "other@corp.com",
            sender_name: None,
            recipients: &[rcpt("anny@corp.com", Field::To)],
            message_id: None,
            subject: None,
            attachments: vec![],
            ts: t,
        });
        let compare = |g: &Graph, label: &str, t: i64| {
            let rs: Vec<Recipient> = rcpts.iter().map(|a| rcpt(a, Field::To)).collect();
            let meta = MessageMeta {
                from: Some(Mailbox {
                    address: sender.to_string(),
                    name: None,
                }),
                recipients: rs.clone(),
                ..Default::default()
            };
            let now = t + 3600;
            // Each recipient alone and all together.
            let mut sets: Vec<Vec<Recipient>> = rs.iter().map(|r| vec![r.clone()]).collect();
            sets.push(rs.clone());
            let mut lookalikes = 0;
            for set in &sets {
                let got = extract(g, sender, &meta, set, now);
                let want = reference::reference_extract(g, sender, &meta, set, now);
                for (r, (a, b)) in set.iter().zip(got.iter().zip(want.iter())) {
                    assert_eq!(
                        a.values.map(f32::to_bits),
                        b.values.map(f32::to_bits),
                        "{label}: {}",
                        r.address
                    );
                    assert_eq!(a.evidence, b.evidence, "{label}: {}", r.address);
                    lookalikes += usize::from(a.evidence.lookalike.is_some());
                }
            }
            lookalikes
        };
        let before = compare(&g, "as learned", t);
        assert!(before > 10, "only {before} lookalikes found");
        // A tie's first contact erased: the next one in order takes over.
        assert!(g.forget("anna@corp.com").is_some());
        assert!(g.forget("jоhn@corp.com").is_some());
        compare(&g, "after forget", t);
        // Contacts added later, then retention dropping the oldest.
        for a in ["anna@corp.com", "johm@corp.com"] {
            g.learn(&LearnInput {
                sender,
                sender_name: None,
                recipients: &[rcpt(a, Field::Cc)],
                message_id: None,
                subject: None,
                attachments: vec![],
                ts: t,
            });
            t += 60;
        }
        compare(&g, "re-learned", t);
        let edges = g.edge_count();
        g.purge_older_than(1_700_000_000 + 25 * 60 + 10 * 60);
        assert!(g.edge_count() < edges);
        compare(&g, "after retention", t);
    }

    #[test]
    fn feature_table_matches_count() {
        assert_eq!(FEATURES.len(), N_FEATURES);
        let names: HashSet<&str> = FEATURES.iter().map(|f| f.0).collect();
        assert_eq!(names.len(), N_FEATURES);
    }

    #[test]
    fn distance_is_bounded_osa() {
        assert_eq!(bounded_distance(b"bob@enron.com", b"bob@enron.co", 2), 1);
        assert_eq!(bounded_distance(b"bob@enron.com", b"obb@enron.com", 2), 1);
        assert_eq!(bounded_distance(b"bob@enron.com", b"bob@enron.com", 2), 0);
        assert_eq!(bounded_distance(b"alice@x.com", b"bob@y.org", 2), 3);
        assert_eq!(bounded_distance(b"", b"ab", 2), 2);
    }

    #[test]
    fn skeleton_folds_lookalikes() {
        assert_eq!(skeleton("j.smith@enron.com"), skeleton("jsmith@enron.com"));
        assert_eq!(
            skeleton("bob@rnicrosoft.com"),
            skeleton("bob@microsoft.com")
        );
        assert_eq!(skeleton("b0b@enron.com"), skeleton("bob@enron.com"));
        assert_ne!(skeleton("bob@enron.com"), skeleton("rob@enron.com"));
    }
}
