//! The feature extraction as it was before the per-message sharing and
//! the faster lookalike checks (session 2), kept verbatim as the reference
//! the tests compare [`super::extract`] against.

use std::collections::HashSet;

use super::{
    idx, is_freemail, ln1p, skeleton, Evidence, RecipientFeatures, HALF_LIFE_SECS,
    MAX_CONTACT_SCAN, MAX_LINK_CHECKS, MAX_NEIGHBOUR_CHECKS, MAX_THREAD_CO_CHECKS, NEVER_DAYS,
    N_FEATURES,
};
use crate::address::{domain_of, local_of};
use crate::graph::{is_forward, thread_subject, EdgeStats, GraphView, Ts};
use crate::message::{Field, MessageMeta, Recipient};

pub fn reference_distance(a: &[u8], b: &[u8], max: usize) -> usize {
    const CAP: usize = 96;
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > max {
        return max + 1;
    }
    if n == 0 || m == 0 {
        return n.max(m).min(max + 1);
    }
    if m >= CAP || n >= CAP {
        // Longer than any real address: compare exactly only.
        return if a == b { 0 } else { max + 1 };
    }
    // Three small rows on the stack (cells fit in a byte: < CAP).
    let mut rows = [[0u8; CAP]; 3];
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
        let diff: usize = self
            .0
            .iter()
            .zip(other.0.iter())
            .map(|(a, b)| a.abs_diff(*b) as usize)
            .sum();
        diff.div_ceil(2)
    }
}

#[derive(Default, Clone)]
struct Scan {
    known: Option<EdgeStats>,
    best_dist: usize,
    best: Option<(String, u32)>,
    same_local: Option<(String, u32)>,
    sibling: Option<(String, u32)>,
    skel: String,
    hist: Option<Histogram>,
    /// Whether the org knows the address at all (else no neighbour scan).
    org_known: bool,
    neighbours: u32,
    local_len: usize,
}

pub fn reference_extract(
    g: &dyn GraphView,
    sender: &str,
    meta: &MessageMeta,
    recipients: &[Recipient],
    now: Ts,
) -> Vec<RecipientFeatures> {
    let sstats = g.sender(sender);
    let sender_domain = domain_of(sender);
    let n = recipients.len();

    // Thread context.
    let subject = meta.subject.as_deref().unwrap_or("");
    let is_reply = !subject.is_empty() && thread_subject(subject) != subject.trim().to_lowercase();
    let mut ids: Vec<String> = meta.in_reply_to.clone();
    ids.extend(meta.references.iter().cloned());
    let mut thread: Vec<String> = if ids.is_empty() {
        Vec::new()
    } else {
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
    let mut scans: Vec<Scan> = recipients
        .iter()
        .map(|r| {
            let known = g.edge(sender, &r.address);
            let org = if known.is_none() {
                g.address(&r.address)
            } else {
                Default::default()
            };
            Scan {
                known,
                best_dist: 3,
                skel: if known.is_none() {
                    skeleton(&r.address)
                } else {
                    String::new()
                },
                hist: known.is_none().then(|| Histogram::of(r.address.as_bytes())),
                org_known: org.senders > 0 || org.sent > 0,
                local_len: local_of(&r.address).len(),
                ..Default::default()
            }
        })
        .collect();
    if sstats.contacts > 0 {
        let mut seen = 0usize;
        g.for_each_contact(sender, &mut |addr: &str, e: &EdgeStats| {
            seen += 1;
            if seen > MAX_CONTACT_SCAN {
                return;
            }
            let total = e.total();
            let mut chist: Option<Histogram> = None;
            let cl = local_of(addr);
            let mut cskel: Option<String> = None;
            for (r, sc) in recipients.iter().zip(scans.iter_mut()) {
                if addr == r.address {
                    continue;
                }
                let rl = &r.address[..sc.local_len];
                if sc.known.is_some() {
                    // Autocomplete sibling: a more-written contact sharing
                    // the first letters.
                    if rl.len() >= 3 && prefix3(rl) == prefix3(cl) {
                        let better = sc.sibling.as_ref().is_none_or(|(_, c)| total > *c);
                        if better {
                            sc.sibling = Some((addr.to_string(), total));
                        }
                    }
                    continue;
                }
                if sc.org_known
                    && seen <= MAX_NEIGHBOUR_CHECKS
                    && (g.edge(addr, &r.address).is_some() || g.edge(&r.address, addr).is_some())
                {
                    sc.neighbours += 1;
                }
                if rl == cl && sc.same_local.as_ref().is_none_or(|(_, c)| total > *c) {
                    sc.same_local = Some((addr.to_string(), total));
                }
                // Homoglyph and punctuation skeletons differ by at most a
                // few edits; both checks are skipped when the histograms
                // already rule that out.
                let ra = r.address.as_bytes();
                if ra.len().abs_diff(addr.len()) > 4 {
                    continue;
                }
                let lb = match &sc.hist {
                    Some(h) => {
                        h.lower_bound(chist.get_or_insert_with(|| Histogram::of(addr.as_bytes())))
                    }
                    None => 0,
                };
                if lb > 4 {
                    continue;
                }
                let d = if lb <= 2 {
                    reference_distance(ra, addr.as_bytes(), 2)
                } else {
                    3
                };
                let d = if d > 1 && *cskel.get_or_insert_with(|| skeleton(addr)) == sc.skel {
                    1
                } else {
                    d
                };
                if d < sc.best_dist
                    || (d == sc.best_dist
                        && d <= 2
                        && sc.best.as_ref().is_some_and(|(_, c)| total > *c))
                {
                    sc.best_dist = d;
                    sc.best = Some((addr.to_string(), total));
                }
            }
        });
    }

    let others_known: Vec<bool> = scans.iter().map(|s| s.known.is_some()).collect();
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
                v[idx::LOG_COUNT] = ln1p(total as f64);
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
        let replies = g.edge(&r.address, sender).map(|e| e.total()).unwrap_or(0);
        ev.replies = replies;
        v[idx::LOG_REPLY_COUNT] = ln1p(replies as f64);
        v[idx::LOG_SENDER_MSGS] = ln1p(sstats.messages as f64);
        v[idx::LOG_SENDER_CONTACTS] = ln1p(sstats.contacts as f64);
        v[idx::LOG_N_RCPTS] = (n.max(1) as f32).ln();
        v[idx::FIELD_CC] = f32::from(u8::from(r.field == Field::Cc));
        v[idx::FIELD_BCC] = f32::from(u8::from(r.field == Field::Bcc));
        let others = n.saturating_sub(1);
        ev.others = others;
        v[idx::HAS_OTHERS] = f32::from(u8::from(others > 0));
        if others > 0 {
            let known = others_known
                .iter()
                .enumerate()
                .filter(|(j, k)| *j != i && **k)
                .count();
            ev.others_known = known;
            v[idx::OTHERS_KNOWN_FRAC] = known as f32 / others as f32;
            let mut co_max = 0u32;
            let mut co_n = 0usize;
            if !never {
                for (j, o) in recipients.iter().enumerate() {
                    if j == i || !others_known[j] {
                        continue;
                    }
                    let c = g.co_count(sender, &r.address, &o.address);
                    co_max = co_max.max(c);
                    co_n += usize::from(c > 0);
                }
            }
            ev.others_co = co_n;
            v[idx::LOG_CO_MAX] = ln1p(co_max as f64);
            v[idx::CO_FRAC] = co_n as f32 / others as f32;
            let mut checked = 0usize;
            let mut linked = 0usize;
            for (j, o) in recipients.iter().enumerate() {
                if j == i {
                    continue;
                }
                if checked >= MAX_LINK_CHECKS {
                    break;
                }
                checked += 1;
                if g.edge(&o.address, &r.address).is_some()
                    || g.edge(&r.address, &o.address).is_some()
                {
                    linked += 1;
                }
            }
            ev.others_linked = linked;
            ev.others_checked = checked;
            v[idx::OTHERS_LINKED_FRAC] = linked as f32 / checked.max(1) as f32;
        }
        let dstats = g.sender_domain(sender, dom);
        let dcount = dstats.map(|d| d.total()).unwrap_or(0);
        ev.domain_count = dcount;
        v[idx::LOG_DOMAIN_COUNT] = ln1p(dcount as f64);
        v[idx::DOMAIN_NEW] = f32::from(u8::from(dstats.is_none()));
        let internal = !dom.is_empty() && dom == sender_domain;
        v[idx::INTERNAL] = f32::from(u8::from(internal));
        v[idx::FREEMAIL] = f32::from(u8::from(is_freemail(dom)));
        let org = g.address(&r.address);
        ev.org_senders = org.senders;
        ev.rcpt_sent = org.sent;
        v[idx::LOG_RCPT_SENT] = ln1p(org.sent as f64);
        v[idx::LOG_ORG_SENDERS] = ln1p(org.senders as f64);
        v[idx::LOG_ORG_DOMAIN_SENDERS] = ln1p(g.domain(dom).senders as f64);
        if never {
            if let Some((addr, c)) = &sc.best {
                if sc.best_dist <= 1 {
                    v[idx::LOOKALIKE1] = 1.0;
                } else if sc.best_dist == 2 {
                    v[idx::LOOKALIKE2] = 1.0;
                }
                v[idx::LOG_LOOKALIKE_COUNT] = ln1p(*c as f64);
                ev.lookalike = Some((addr.clone(), sc.best_dist as u32, *c));
            }
            ev.neighbour_links = sc.neighbours;
            v[idx::LOG_NEIGHBOUR_LINKS] = ln1p(sc.neighbours as f64);
            v[idx::NEW_NO_NEIGHBOURS] = f32::from(u8::from(sc.neighbours == 0));
            if let Some(sl) = &sc.same_local {
                v[idx::SAME_LOCAL_OTHER_DOMAIN] = 1.0;
                ev.same_local = Some(sl.clone());
            }
        }
        if let Some((addr, c)) = &sc.sibling {
            let own = sc.known.map(|e| e.total()).unwrap_or(0);
            let dom_ratio = ((1.0 + *c as f64) / (1.0 + own as f64)).ln().max(0.0);
            v[idx::SIBLING_DOMINANCE] = dom_ratio as f32;
            if *c > own {
                ev.sibling = Some((addr.clone(), *c));
            }
        }
        v[idx::IS_REPLY] = f32::from(u8::from(is_reply));
        v[idx::THREAD_KNOWN] = f32::from(u8::from(thread_known));
        let out_of_thread = thread_known && !forward && !thread_set.contains(r.address.as_str());
        ev.not_in_thread = out_of_thread;
        v[idx::NOT_IN_THREAD] = f32::from(u8::from(out_of_thread));
        v[idx::THREAD_NONE_IN] = f32::from(u8::from(thread_none_in));
        if out_of_thread {
            let co = thread
                .iter()
                .filter(|p| p.as_str() != sender)
                .take(MAX_THREAD_CO_CHECKS)
                .map(|p| g.co_count(sender, &r.address, p))
                .max()
                .unwrap_or(0);
            v[idx::LOG_THREAD_CO] = ln1p(co as f64);
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

/// The first (up to) three bytes of a string: the sibling comparison as
/// first written (`features` compares packed prefixes, `pack3`).
fn prefix3(s: &str) -> &[u8] {
    let b = s.as_bytes();
    &b[..b.len().min(3)]
}
