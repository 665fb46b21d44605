//! Policy: turns scores into an action.

use crate::config::PolicyConfig;
use crate::verdict::{Action, Scores, Verdict};

/// Decides what happens to a scored message.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    cfg: PolicyConfig,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy { cfg }
    }

    /// The action for a message score: the most severe threshold reached.
    pub fn action_for(&self, score: f64) -> Action {
        let reached = |t: Option<f64>| t.is_some_and(|t| score >= t);
        if reached(self.cfg.reject_at) {
            Action::Reject
        } else if reached(self.cfg.hold_at) {
            Action::Hold
        } else if reached(self.cfg.encrypt_at) {
            Action::Encrypt
        } else {
            Action::Deliver
        }
    }

    /// Scores to verdict.
    pub fn decide(&self, scores: Scores) -> Verdict {
        let action = self.action_for(scores.message_score());
        Verdict::from_scores(scores, action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_severe_threshold_wins() {
        let p = Policy::new(PolicyConfig {
            encrypt_at: Some(0.3),
            hold_at: Some(0.6),
            reject_at: Some(0.95),
        });
        assert_eq!(p.action_for(0.1), Action::Deliver);
        assert_eq!(p.action_for(0.3), Action::Encrypt);
        assert_eq!(p.action_for(0.7), Action::Hold);
        assert_eq!(p.action_for(0.99), Action::Reject);
        let d = Policy::new(PolicyConfig::default());
        assert_eq!(d.action_for(0.79), Action::Deliver);
        assert_eq!(d.action_for(0.8), Action::Hold);
    }
}
