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

    /// [`Self::score`], where the reasons may be left empty for every
    /// recipient when none of them scores `explain_from` or more: the relay
    /// passes its lowest action threshold, since only a message it acts on
    /// (hold, reject) shows them, and writing them for every delivered
    /// message would cost more than a tenth of its scoring. When any
    /// recipient reaches it, every recipient gets its reasons, as from
    /// [`Self::score`].
    fn score_explaining(
        &self,
        graph: &dyn GraphView,
        input: &ScoreInput<'_>,
        explain_from: f64,
    ) -> Result<Scores, ScoreError> {
        let _ = explain_from;
        self.score(graph, input)
    }
}

/// The score of a recipient whose earlier held message from the same
/// sender an admin discarded (see [`GraphView::discarded`]): the top of the
/// scale, so every configured threshold is reached whatever a tenant set
/// (`hold_at` 0.995 included) and the most severe configured action applies:
/// hold under the shipped config, reject where `reject_at` is set.
pub const DISCARDED_SCORE: f64 = 1.0;

/// A scorer plus the admins' judgements recorded in the graph: a recipient
/// of a discarded hold scores [`DISCARDED_SCORE`], with a reason
/// saying so, until mail from the sender to it is delivered (released by
/// the sender or an admin). The model itself never saw discards (the
/// training corpus has none), so this is a rule on top of it.
pub struct WithFeedback<S: ?Sized>(pub std::sync::Arc<S>);

impl<S: Scorer + ?Sized> Scorer for WithFeedback<S> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn score(&self, graph: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
        self.score_explaining(graph, input, 0.0)
    }

    fn score_explaining(
        &self,
        graph: &dyn GraphView,
        input: &ScoreInput<'_>,
        explain_from: f64,
    ) -> Result<Scores, ScoreError> {
        let Some(sender) = input.meta.sender() else {
            return self.0.score_explaining(graph, input, explain_from);
        };
        // A discarded pair reaches every threshold: its message is acted
        // on, so all of its recipients are explained.
        let discarded = input
            .recipients
            .iter()
            .any(|r| graph.discarded(sender, &r.address).is_some());
        let from = if discarded { 0.0 } else { explain_from };
        let mut scores = self.0.score_explaining(graph, input, from)?;
        if !discarded {
            return Ok(scores);
        }
        for r in &mut scores.recipients {
            if let Some(t) = graph.discarded(sender, &r.address) {
                let when = crate::graph::memory::format_ts(t);
                let day = when.get(..10).unwrap_or(&when);
                r.score = DISCARDED_SCORE;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::classify::baseline::NeverSeenScorer;
    use crate::graph::memory::{Graph, LearnInput};
    use crate::graph::GraphConfig;
    use crate::message::{Field, Mailbox};
    use crate::policy::Thresholds;
    use crate::verdict::Action;

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.to_string(),
            name: None,
            field: Field::To,
        }
    }

    /// A discarded pair reaches every threshold a tenant can set, and the
    /// admin's judgement comes first among the reasons; a delivery to the
    /// pair ends it.
    #[test]
    fn a_discarded_pair_reaches_any_threshold_until_delivered() {
        let mut g = Graph::new(GraphConfig::default());
        let known = [rcpt("bob@corp.test")];
        for i in 0..5 {
            g.learn(&LearnInput {
                sender: "alice@corp.test",
                sender_name: None,
                recipients: &known,
                message_id: None,
                subject: None,
                attachments: vec![],
                ts: 1_000 + i,
            });
        }
        g.learn_discard("alice@corp.test", &["mallory@else.test"], 2_000);
        let meta = MessageMeta {
            from: Some(Mailbox {
                address: "alice@corp.test".into(),
                name: None,
            }),
            ..Default::default()
        };
        let rcpts = [rcpt("bob@corp.test"), rcpt("mallory@else.test")];
        let scorer = WithFeedback(std::sync::Arc::new(NeverSeenScorer));
        let input = ScoreInput {
            meta: &meta,
            recipients: &rcpts,
            now: 3_000,
        };
        let s = scorer.score(&g, &input).unwrap();
        assert_eq!(s.recipients[0].score, 0.0);
        assert_eq!(s.recipients[1].score, 1.0);
        assert!(
            s.recipients[1].reasons[0].contains("discarded by an administrator"),
            "{:?}",
            s.recipients[1].reasons
        );
        let strict = Thresholds {
            encrypt_at: None,
            hold_at: Some(0.999),
            reject_at: None,
        };
        assert_eq!(strict.action_for(s.recipients[1].score), Action::Hold);

        g.learn(&LearnInput {
            sender: "alice@corp.test",
            sender_name: None,
            recipients: &rcpts[1..],
            message_id: None,
            subject: None,
            attachments: vec![],
            ts: 2_500,
        });
        let s = scorer.score(&g, &input).unwrap();
        assert!(s.recipients[1].score < 1.0, "{:?}", s.recipients[1]);
        assert!(!s.recipients[1]
            .reasons
            .iter()
            .any(|r| r.contains("discarded")));
    }

    /// Scores every recipient 0.3, explaining only from `explain_from`.
    struct Explaining;

    impl Scorer for Explaining {
        fn name(&self) -> &str {
            "explaining"
        }

        fn score(&self, g: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
            self.score_explaining(g, input, 0.0)
        }

        fn score_explaining(
            &self,
            _: &dyn GraphView,
            input: &ScoreInput<'_>,
            explain_from: f64,
        ) -> Result<Scores, ScoreError> {
            let recipients = input
                .recipients
                .iter()
                .map(|r| crate::verdict::RecipientScore {
                    address: r.address.clone(),
                    field: r.field,
                    score: 0.3,
                    reasons: if 0.3 >= explain_from {
                        vec![format!("inner reason for {}", r.address)]
                    } else {
                        vec![]
                    },
                })
                .collect();
            Ok(Scores {
                model: "explaining".into(),
                recipients,
            })
        }
    }

    /// A message with a discarded pair is acted on whatever the threshold,
    /// so all of its recipients keep their reasons; without one, the inner
    /// scorer's choice stands.
    #[test]
    fn a_discarded_pair_explains_every_recipient() {
        let mut g = Graph::new(GraphConfig::default());
        let meta = MessageMeta {
            from: Some(Mailbox {
                address: "alice@corp.test".into(),
                name: None,
            }),
            ..Default::default()
        };
        let rcpts = [rcpt("bob@corp.test"), rcpt("mallory@else.test")];
        let input = ScoreInput {
            meta: &meta,
            recipients: &rcpts,
            now: 3_000,
        };
        let scorer = WithFeedback(std::sync::Arc::new(Explaining));
        let quiet = scorer.score_explaining(&g, &input, 0.9).unwrap();
        assert!(quiet.recipients.iter().all(|r| r.reasons.is_empty()));
        assert_eq!(
            scorer.score(&g, &input).unwrap().recipients[0]
                .reasons
                .len(),
            1
        );

        g.learn_discard("alice@corp.test", &["mallory@else.test"], 2_000);
        let s = scorer.score_explaining(&g, &input, 0.9).unwrap();
        assert_eq!(
            s.recipients[0].reasons,
            vec!["inner reason for bob@corp.test"]
        );
        assert_eq!(s.recipients[1].score, DISCARDED_SCORE);
        assert_eq!(s.recipients[1].reasons.len(), 2);
        assert!(s.recipients[1].reasons[0].contains("discarded by an administrator"));
        assert_eq!(
            s.recipients[1].reasons[1],
            "inner reason for mallory@else.test"
        );
    }
}
