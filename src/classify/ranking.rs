//! Baseline (b) of the evaluation: frequency/recency ranking, in the style
//! of the network-feature leak detectors of Carvalho & Cohen ("Preventing
//! information leaks in email", SDM 2007).
//!
//! Each recipient is ranked among the sender's contacts twice: by how many
//! messages the sender addressed to it (frequency) and by when the sender last
//! wrote to it (recency). Its score is one minus the mean of the two
//! percentile ranks, so the sender's most frequent, most recent contact scores
//! near 0 and a rarely, long-ago used contact near 1. A recipient the sender
//! never wrote to scores 1. The contact scan is bounded by
//! [`MAX_CONTACT_SCAN`].

use crate::classify::features::MAX_CONTACT_SCAN;
use crate::graph::GraphView;
use crate::scorer::{ScoreError, ScoreInput, Scorer};
use crate::verdict::{RecipientScore, Scores};

/// Frequency/recency ranking baseline.
#[derive(Debug, Clone, Default)]
pub struct FreqRecencyScorer;

impl Scorer for FreqRecencyScorer {
    fn name(&self) -> &str {
        "baseline-freq-recency-1"
    }

    fn score(&self, g: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
        let sender = input.meta.sender().ok_or(ScoreError::NoSender)?;
        let mut counts: Vec<u32> = Vec::new();
        let mut lasts: Vec<i64> = Vec::new();
        g.for_each_contact(sender, &mut |_, e| {
            if counts.len() < MAX_CONTACT_SCAN {
                counts.push(e.total());
                lasts.push(e.last);
            }
        });
        let n = counts.len();
        let recipients = input
            .recipients
            .iter()
            .map(|r| {
                let (score, reasons) = match g.edge(sender, &r.address) {
                    Some(e) if n > 0 => {
                        // Share of contacts strictly more frequent / recent.
                        let more_freq = counts.iter().filter(|c| **c > e.total()).count();
                        let more_recent = lasts.iter().filter(|l| **l > e.last).count();
                        let f = more_freq as f64 / n as f64;
                        let rc = more_recent as f64 / n as f64;
                        (
                            (f + rc) / 2.0,
                            vec![format!(
                                "{} of your contacts get more of your mail than {}",
                                more_freq, r.address
                            )],
                        )
                    }
                    _ => (
                        1.0,
                        vec![format!("you have never written to {}", r.address)],
                    ),
                };
                RecipientScore {
                    address: r.address.clone(),
                    field: r.field,
                    score,
                    reasons,
                }
            })
            .collect();
        Ok(Scores {
            model: self.name().to_string(),
            recipients,
        })
    }
}
