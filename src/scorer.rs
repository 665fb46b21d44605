//! The scoring seam: anything that turns a message and a graph into
//! per-recipient scores.

use crate::graph::{GraphView, Ts};
use crate::message::{MessageMeta, Recipient};
use crate::verdict::Scores;

/// What a scorer sees of one message.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInput<'a> {
    pub meta: &'a MessageMeta,
    /// Recipients to score: the envelope recipients, with the header field
    /// that named them (Bcc when only in the envelope).
    pub recipients: &'a [Recipient],
    /// Time of scoring (the message date in replay, the clock in the relay).
    pub now: Ts,
}

/// Why scoring failed (the policy decides between fail-open and fail-closed).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("message has no usable sender address")]
    NoSender,
    #[error("model unavailable: {0}")]
    Model(String),
    #[error("graph store unavailable: {0}")]
    Store(String),
}

/// Scores every recipient of a message against the sender's history.
pub trait Scorer: Send + Sync {
    /// Name and version, reported in the score header and in replay output.
    fn name(&self) -> &str;
    fn score(&self, graph: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError>;
}

/// The lowest score of a recipient whose earlier held message from the same
/// sender an admin discarded (see [`GraphView::discarded`]); above every
/// default threshold, so such mail is held again.
pub const DISCARDED_FLOOR: f64 = 0.99;

/// A scorer plus the admins' judgements recorded in the graph: a recipient
/// of a discarded hold scores at least [`DISCARDED_FLOOR`], with a reason
/// saying so, until mail from the sender to it is delivered (released by
/// the sender or an admin). The model itself never saw discards (the
/// training corpus has none), so this is a rule on top of it.
pub struct WithFeedback<S: ?Sized>(pub std::sync::Arc<S>);

impl<S: Scorer + ?Sized> Scorer for WithFeedback<S> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn score(&self, graph: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
        let mut scores = self.0.score(graph, input)?;
        let Some(sender) = input.meta.sender() else {
            return Ok(scores);
        };
        for r in &mut scores.recipients {
            if let Some(t) = graph.discarded(sender, &r.address) {
                let when = crate::graph::memory::format_ts(t);
                let day = when.get(..10).unwrap_or(&when);
                r.score = r.score.max(DISCARDED_FLOOR);
                r.reasons.insert(
                    0,
                    format!(
                        "an earlier message from you to {} was held and then discarded by an administrator on {}",
                        r.address, day
                    ),
                );
            }
        }
        Ok(scores)
    }
}
