//! Evaluation: message-level metrics for the model and the baselines on the
//! same examples.
//!
//! A message's score is its worst recipient's. Legitimate messages are the
//! real sent messages; misdirected ones their corrupted copies. A false hold
//! is a legitimate message scored above the threshold; the threshold for a
//! false-hold rate `r` is the highest one that holds at most a share `r` of
//! legitimate messages (ties count against the scorer: a score equal to the
//! threshold is not held).

use std::fmt::Write as _;

use crate::classify::corrupt::CorruptionKind;
use crate::classify::train::{Dataset, Role, Sample};

/// False-hold rates reported.
pub const FALSE_HOLD_RATES: [f64; 3] = [0.001, 0.005, 0.01];
/// The false-hold rate at which per-kind recall is reported.
pub const PRIMARY_RATE: f64 = 0.005;

/// Score of one example message.
#[derive(Debug, Clone, Copy)]
pub struct MessageScore {
    pub score: f64,
    pub kind: Option<CorruptionKind>,
    /// For a corrupted copy: the worst-scored recipient (the first of those
    /// tied at the top) is the wrong one.
    pub worst_is_wrong: bool,
    /// Recipients of the message (as scored, i.e. after the corruption).
    pub recipients: usize,
}

/// Metrics of one scorer.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub legit: usize,
    pub misdirected: usize,
    pub auc: f64,
    /// (false-hold rate, threshold, recall, actual false-hold rate)
    pub at_rates: Vec<(f64, f64, f64, f64)>,
    /// (kind, examples, recall at [`PRIMARY_RATE`])
    pub per_kind: Vec<(CorruptionKind, usize, f64)>,
    /// Per kind, split by the message's recipients: (examples with one
    /// recipient, their recall, examples with several, their recall), at
    /// [`PRIMARY_RATE`]. A lone wrong recipient has no co-recipients to
    /// disagree with, so this shows where the evidence can come from.
    pub per_kind_split: Vec<(usize, f64, usize, f64)>,
    /// Share of misdirected messages whose worst recipient is the wrong one.
    pub flagged_wrong: f64,
    /// The same among those held at [`PRIMARY_RATE`].
    pub flagged_wrong_held: f64,
    /// Share of legitimate messages held at the highest threshold that
    /// still catches 90% of misdirected ones (ties held).
    pub false_hold_at_90: f64,
}

/// Message scores of the samples in `role`, with per-recipient scores from
/// `score`.
pub fn message_scores<F>(ds: &Dataset, role: Role, mut score: F) -> Vec<MessageScore>
where
    F: FnMut(&Sample) -> Vec<f64>,
{
    ds.samples
        .iter()
        .filter(|s| s.role == role)
        .map(|s| {
            let rs = score(s);
            let mut worst = 0usize;
            for (i, v) in rs.iter().enumerate() {
                if *v > rs[worst] {
                    worst = i;
                }
            }
            MessageScore {
                score: rs.iter().copied().fold(0.0, f64::max),
                kind: s.kind,
                worst_is_wrong: s.wrong == Some(worst),
                recipients: rs.len(),
            }
        })
        .collect()
}

/// ROC-AUC (probability that a misdirected message outscores a legitimate
/// one, ties counted half).
pub fn auc(legit: &[f64], bad: &[f64]) -> f64 {
    if legit.is_empty() || bad.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = legit
        .iter()
        .map(|s| (*s, false))
        .chain(bad.iter().map(|s| (*s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mann-Whitney U with mid-ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += mid * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let nb = bad.len() as f64;
    let nl = legit.len() as f64;
    (rank_sum - nb * (nb + 1.0) / 2.0) / (nb * nl)
}

/// The threshold that holds at most `rate` of `legit` (scores strictly
/// above it are held).
pub fn threshold_for(legit: &[f64], rate: f64) -> f64 {
    let mut s: Vec<f64> = legit.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let k = (rate * s.len() as f64).floor() as usize;
    s.get(k).copied().unwrap_or(f64::NEG_INFINITY)
}

/// Metrics of one scorer over message scores.
pub fn evaluate(name: &str, scores: &[MessageScore]) -> Report {
    let legit: Vec<f64> = scores
        .iter()
        .filter(|s| s.kind.is_none())
        .map(|s| s.score)
        .collect();
    let bad: Vec<&MessageScore> = scores.iter().filter(|s| s.kind.is_some()).collect();
    let bad_scores: Vec<f64> = bad.iter().map(|s| s.score).collect();
    let share = |n: usize, d: usize| {
        if d == 0 {
            f64::NAN
        } else {
            n as f64 / d as f64
        }
    };
    let at_rates = FALSE_HOLD_RATES
        .iter()
        .map(|&r| {
            let t = threshold_for(&legit, r);
            let caught = bad_scores.iter().filter(|s| **s > t).count();
            let fh = legit.iter().filter(|s| **s > t).count();
            (r, t, share(caught, bad.len()), share(fh, legit.len()))
        })
        .collect();
    let t = threshold_for(&legit, PRIMARY_RATE);
    let per_kind = CorruptionKind::ALL
        .iter()
        .map(|k| {
            let of: Vec<&&MessageScore> = bad.iter().filter(|s| s.kind == Some(*k)).collect();
            let caught = of.iter().filter(|s| s.score > t).count();
            (*k, of.len(), share(caught, of.len()))
        })
        .collect();
    let per_kind_split = CorruptionKind::ALL
        .iter()
        .map(|k| {
            let part = |single: bool| {
                let of: Vec<&&MessageScore> = bad
                    .iter()
                    .filter(|s| s.kind == Some(*k) && (s.recipients == 1) == single)
                    .collect();
                let caught = of.iter().filter(|s| s.score > t).count();
                (of.len(), share(caught, of.len()))
            };
            let (n1, r1) = part(true);
            let (n2, r2) = part(false);
            (n1, r1, n2, r2)
        })
        .collect();
    let held: Vec<&&MessageScore> = bad.iter().filter(|s| s.score > t).collect();
    let mut sorted_bad = bad_scores.clone();
    sorted_bad.sort_by(|a, b| a.total_cmp(b));
    let t90 = sorted_bad
        .get((0.1 * sorted_bad.len() as f64).floor() as usize)
        .copied()
        .unwrap_or(f64::INFINITY);
    let false_hold_at_90 = share(legit.iter().filter(|s| **s >= t90).count(), legit.len());
    Report {
        name: name.to_string(),
        legit: legit.len(),
        misdirected: bad.len(),
        auc: auc(&legit, &bad_scores),
        at_rates,
        per_kind,
        per_kind_split,
        flagged_wrong: share(bad.iter().filter(|s| s.worst_is_wrong).count(), bad.len()),
        flagged_wrong_held: share(held.iter().filter(|s| s.worst_is_wrong).count(), held.len()),
        false_hold_at_90,
    }
}

/// A Markdown table of reports side by side.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| metric |");
    for r in reports {
        let _ = write!(s, " {} |", r.name);
    }
    let _ = write!(s, "\n|---|");
    for _ in reports {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let mut line = |label: &str, f: &dyn Fn(&Report) -> String| {
        let _ = write!(s, "| {label} |");
        for r in reports {
            let _ = write!(s, " {} |", f(r));
        }
        s.push('\n');
    };
    line("legit / misdirected messages", &|r| {
        format!("{} / {}", r.legit, r.misdirected)
    });
    line("ROC-AUC", &|r| format!("{:.4}", r.auc));
    for (i, rate) in FALSE_HOLD_RATES.iter().enumerate() {
        line(&format!("recall @ {:.1}% false-hold", rate * 100.0), &|r| {
            let (_, t, rec, fh) = r.at_rates[i];
            format!("{rec:.3} (thr {t:.4}, held {:.2}%)", fh * 100.0)
        });
    }
    line("false-hold rate at 90% recall", &|r| {
        format!("{:.2}%", r.false_hold_at_90 * 100.0)
    });
    for (i, k) in CorruptionKind::ALL.iter().enumerate() {
        line(&format!("recall @ 0.5%: {} (n)", k.as_str()), &|r| {
            format!("{:.3} ({})", r.per_kind[i].2, r.per_kind[i].1)
        });
    }
    for (i, k) in CorruptionKind::ALL.iter().enumerate() {
        line(
            &format!("... {}: 1 recipient (n) / several (n)", k.as_str()),
            &|r| {
                let (n1, r1, n2, r2) = r.per_kind_split[i];
                format!("{r1:.3} ({n1}) / {r2:.3} ({n2})")
            },
        );
    }
    line(
        "flagged recipient is the wrong one (all misdirected)",
        &|r| format!("{:.3}", r.flagged_wrong),
    );
    line("... among those held @ 0.5%", &|r| {
        format!("{:.3}", r.flagged_wrong_held)
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_threshold() {
        assert_eq!(auc(&[0.1, 0.2], &[0.3, 0.4]), 1.0);
        assert_eq!(auc(&[0.5], &[0.5]), 0.5);
        assert_eq!(auc(&[0.3, 0.4], &[0.1, 0.2]), 0.0);
        let legit: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        let t = threshold_for(&legit, 0.005);
        assert_eq!(legit.iter().filter(|s| **s > t).count(), 5);
    }

    #[test]
    fn recall_is_split_by_recipient_count() {
        let m = |score: f64, kind: Option<CorruptionKind>, recipients: usize| MessageScore {
            score,
            kind,
            worst_is_wrong: true,
            recipients,
        };
        let mut scores: Vec<MessageScore> =
            (0..1000).map(|i| m(i as f64 / 2000.0, None, 1)).collect();
        let a = Some(CorruptionKind::Autocomplete);
        // One of two lone wrong recipients caught; all three in groups.
        scores.extend([
            m(0.9, a, 1),
            m(0.1, a, 1),
            m(0.9, a, 3),
            m(0.8, a, 2),
            m(0.7, a, 4),
        ]);
        let r = evaluate("t", &scores);
        assert_eq!(r.per_kind[0], (CorruptionKind::Autocomplete, 5, 0.8));
        assert_eq!(r.per_kind_split[0], (2, 0.5, 3, 1.0));
        assert!(r.per_kind_split[1].1.is_nan());
        assert!(table(&[r]).contains(
            "| ... autocomplete: 1 recipient (n) / several (n) | 0.500 (2) / 1.000 (3) |"
        ));
    }
}
