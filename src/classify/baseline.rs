//! Baseline (a) of the evaluation: "never emailed before".

use crate::graph::GraphView;
use crate::scorer::{ScoreError, ScoreInput, Scorer};
use crate::verdict::{RecipientScore, Scores};

/// Flags a recipient the sender has never written to. Scores: 0 for a known
/// contact, 0.5 for an address someone else in the organisation wrote to,
/// 0.9 for an address nobody here has written to. A sender without any
/// history gets 0 (nothing to compare with).
#[derive(Debug, Clone, Default)]
pub struct NeverSeenScorer;

impl Scorer for NeverSeenScorer {
    fn name(&self) -> &str {
        "baseline-never-seen-1"
    }

    fn score(&self, g: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
        let sender = input.meta.sender().ok_or(ScoreError::NoSender)?;
        let history = g.sender(sender).messages;
        let recipients = input
            .recipients
            .iter()
            .map(|r| {
                let (score, reasons) = if history == 0 {
                    (0.0, vec![])
                } else if let Some(e) = g.edge(sender, &r.address) {
                    (
                        0.0,
                        vec![format!("you wrote to {} {} times", r.address, e.total())],
                    )
                } else if g.address(&r.address).senders > 0 {
                    (
                        0.5,
                        vec![format!(
                            "you have never written to {}; colleagues have",
                            r.address
                        )],
                    )
                } else {
                    (
                        0.9,
                        vec![format!(
                            "you have never written to {}, and nobody here has",
                            r.address
                        )],
                    )
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
