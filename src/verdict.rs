//! What the scorer and the policy say about a message.

use serde::{Deserialize, Serialize};

use crate::message::Field;

/// What happens to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Relay to the next hop, with the score header.
    Deliver,
    /// Relay S/MIME-encrypted to recipients that have a certificate.
    Encrypt,
    /// Keep in the quarantine spool until the sender or an admin releases it.
    Hold,
    /// Refuse with 550 5.7.1.
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deliver => "deliver",
            Action::Encrypt => "encrypt",
            Action::Hold => "hold",
            Action::Reject => "reject",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Score and evidence for one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipientScore {
    pub address: String,
    pub field: Field,
    /// Probability that this recipient is a misdirection, 0..=1.
    pub score: f64,
    /// Plain-language evidence a sender can read.
    pub reasons: Vec<String>,
}

/// The scorer's output: one entry per recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Model (or baseline) name and version, e.g. `misdirect-gbt-2026-11-23`.
    pub model: String,
    pub recipients: Vec<RecipientScore>,
}

impl Scores {
    /// The message score: its worst recipient's score (0 with no recipients).
    pub fn message_score(&self) -> f64 {
        self.recipients.iter().map(|r| r.score).fold(0.0, f64::max)
    }

    /// The recipient with the worst score.
    pub fn worst(&self) -> Option<&RecipientScore> {
        self.recipients
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
    }
}

/// Final decision for a message: scores plus the action the policy chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub score: f64,
    pub action: Action,
    pub model: String,
    pub recipients: Vec<RecipientScore>,
    /// Set when the action was forced by something other than the score
    /// (allow-list, fail-open, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Verdict {
    pub fn from_scores(scores: Scores, action: Action) -> Verdict {
        Verdict {
            score: scores.message_score(),
            action,
            model: scores.model,
            recipients: scores.recipients,
            note: None,
        }
    }

    /// Value of the `X-Misdirect-Score` header.
    pub fn header_value(&self) -> String {
        format!(
            "{:.4}; action={}; model={}",
            self.score, self.action, self.model
        )
    }
}
