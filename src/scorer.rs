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
