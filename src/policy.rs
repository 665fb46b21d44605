//! Policy: turns scores into an action.
//!
//! Thresholds come from `[policy]`, overridden per tenant and then per
//! sender domain. Allow-listed recipients (by domain, or by sender and
//! recipient pair) never trigger: the message score is taken over the other
//! recipients only. When scoring fails, [`Policy::on_score_error`] applies
//! the configured fail mode.
//!
//! The live policy is part of the pipeline ([`crate::pipeline::PipelineCell`]),
//! so a reload (SIGHUP) swaps thresholds and allow-lists without a restart.

use crate::address::domain_of;
use crate::config::{FailMode, PolicyConfig, ThresholdOverride};
use crate::scorer::ScoreError;
use crate::verdict::{Action, Scores, Verdict};

/// Header added when a message is delivered unchecked (fail-open).
pub const WARNING_HEADER: &str = "X-Misdirect-Warning";

/// Effective thresholds for one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub encrypt_at: Option<f64>,
    pub hold_at: Option<f64>,
    pub reject_at: Option<f64>,
}

impl Thresholds {
    fn apply(mut self, o: Option<&ThresholdOverride>) -> Thresholds {
        if let Some(o) = o {
            self.encrypt_at = o.encrypt_at.or(self.encrypt_at);
            self.hold_at = o.hold_at.or(self.hold_at);
            self.reject_at = o.reject_at.or(self.reject_at);
        }
        self
    }

    /// The lowest configured threshold: a message whose every recipient
    /// scores below it is delivered (infinite when none is configured).
    pub fn lowest(&self) -> f64 {
        [self.encrypt_at, self.hold_at, self.reject_at]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min)
    }

    /// The action for a score: the most severe threshold reached.
    pub fn action_for(&self, score: f64) -> Action {
        let reached = |t: Option<f64>| t.is_some_and(|t| score >= t);
        if reached(self.reject_at) {
            Action::Reject
        } else if reached(self.hold_at) {
            Action::Hold
        } else if reached(self.encrypt_at) {
            Action::Encrypt
        } else {
            Action::Deliver
        }
    }
}

/// Who sent the message, for overrides and pair allow-lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// Tenant name (see [`crate::config::TenantsConfig::tenant_for`]).
    pub tenant: &'a str,
    /// Normalised sender address (empty when unknown).
    pub sender: &'a str,
}

/// What the pipeline does when scoring failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailAction {
    /// Deliver with this header (name, value) added.
    Deliver { header: (String, String) },
    /// Answer with this SMTP reply (451 4.3.0 ...), without the CRLF.
    TempFail { reply: String },
}

/// Decides what happens to a scored message.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    cfg: PolicyConfig,
    /// Lower-cased allow-listed domains.
    allow_domains: Vec<String>,
    /// Lower-cased allow-listed pairs.
    allow_pairs: Vec<(String, String)>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        let allow_domains = cfg
            .allow_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let allow_pairs = cfg
            .allow_pairs
            .iter()
            .map(|[s, r]| (s.to_lowercase(), r.to_lowercase()))
            .collect();
        Policy {
            cfg,
            allow_domains,
            allow_pairs,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Thresholds for a sender: global, then the tenant's override, then the
    /// sender domain's.
    pub fn thresholds(&self, ctx: &Context<'_>) -> Thresholds {
        let global = Thresholds {
            encrypt_at: self.cfg.encrypt_at,
            hold_at: self.cfg.hold_at,
            reject_at: self.cfg.reject_at,
        };
        let domain = domain_of(ctx.sender);
        // Normalised addresses have lower-case domains already: a copy
        // only for one that has not (and none without overrides).
        let over = if domain.is_empty() || self.cfg.sender_domain.is_empty() {
            None
        } else if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            self.cfg.sender_domain.get(&domain.to_ascii_lowercase())
        } else {
            self.cfg.sender_domain.get(domain)
        };
        global.apply(self.cfg.tenant.get(ctx.tenant)).apply(over)
    }

    /// The action for a message score under the global thresholds.
    pub fn action_for(&self, score: f64) -> Action {
        self.thresholds(&Context::default()).action_for(score)
    }

    /// Whether mail from `sender` to `rcpt` never triggers an action.
    pub fn is_allowed(&self, sender: &str, rcpt: &str) -> bool {
        // Nothing allow-listed (the default): nothing to lower-case.
        if self.allow_domains.is_empty() && self.allow_pairs.is_empty() {
            return false;
        }
        let rcpt = rcpt.to_lowercase();
        let d = domain_of(&rcpt);
        if self
            .allow_domains
            .iter()
            .any(|a| a == d || (a.starts_with('.') && (d.ends_with(a.as_str()) || d == &a[1..])))
        {
            return true;
        }
        let sender = sender.to_lowercase();
        self.allow_pairs
            .iter()
            .any(|(s, r)| *s == sender && *r == rcpt)
    }

    /// Scores to verdict under the global thresholds (no tenant, no sender).
    pub fn decide(&self, scores: Scores) -> Verdict {
        self.decide_for(&Context::default(), scores)
    }

    /// Scores to verdict for one sender: allow-listed recipients are left out
    /// of the message score, then the sender's thresholds pick the action.
    /// `verdict.score` is the score the decision used; `verdict.note` names
    /// the allow-listed recipients.
    pub fn decide_for(&self, ctx: &Context<'_>, scores: Scores) -> Verdict {
        let mut allowed = Vec::new();
        let mut score: f64 = 0.0;
        for r in &scores.recipients {
            if self.is_allowed(ctx.sender, &r.address) {
                allowed.push(r.address.clone());
            } else {
                score = score.max(r.score);
            }
        }
        let action = self.thresholds(ctx).action_for(score);
        let mut v = Verdict::from_scores(scores, action);
        v.score = score;
        if !allowed.is_empty() {
            v.note = Some(format!("allow-listed: {}", allowed.join(", ")));
        }
        v
    }

    /// What to do when scoring failed: fail-open delivers with a warning
    /// header, fail-closed answers `451 4.3.0`.
    pub fn on_score_error(&self, err: &ScoreError) -> FailAction {
        tracing::warn!(error = %err, mode = ?self.cfg.fail_mode, "Scoring failed.");
        match self.cfg.fail_mode {
            FailMode::Open => FailAction::Deliver {
                header: (
                    WARNING_HEADER.to_string(),
                    "not checked for misdirection (scoring unavailable)".to_string(),
                ),
            },
            FailMode::Closed => FailAction::TempFail {
                reply: "451 4.3.0 Misdirection check unavailable, try again later".to_string(),
            },
        }
    }

    /// The SMTP reply for a rejected message: `550 5.7.1` with a short reason
    /// naming the worst recipient, so the sender learns why from the bounce.
    pub fn reject_reply(verdict: &Verdict) -> String {
        let worst = verdict
            .recipients
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score));
        let mut text = match worst {
            Some(r) => format!(
                "550 5.7.1 Refused: recipient <{}> looks misaddressed",
                r.address
            ),
            None => "550 5.7.1 Refused: message looks misaddressed".to_string(),
        };
        if let Some(reason) = worst.and_then(|r| r.reasons.first()) {
            text.push_str(" (");
            text.extend(reason.chars().filter(|c| !c.is_control()).take(200));
            text.push(')');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::message::Field;
    use crate::verdict::RecipientScore;

    fn scores(rs: &[(&str, f64)]) -> Scores {
        Scores {
            model: "m".into(),
            recipients: rs
                .iter()
                .map(|(a, s)| RecipientScore {
                    address: a.to_string(),
                    field: Field::To,
                    score: *s,
                    reasons: vec![format!("reason for {a}")],
                })
                .collect(),
        }
    }

    #[test]
    fn most_severe_threshold_wins() {
        let p = Policy::new(PolicyConfig {
            encrypt_at: Some(0.3),
            hold_at: Some(0.6),
            reject_at: Some(0.95),
            ..Default::default()
        });
        assert_eq!(p.action_for(0.1), Action::Deliver);
        assert_eq!(p.action_for(0.3), Action::Encrypt);
        assert_eq!(p.action_for(0.7), Action::Hold);
        assert_eq!(p.action_for(0.99), Action::Reject);
        let d = Policy::new(PolicyConfig::default());
        assert_eq!(d.action_for(0.96), Action::Deliver);
        assert_eq!(d.action_for(0.961), Action::Hold);
    }

    #[test]
    fn overrides_layer_tenant_then_sender_domain() {
        let cfg = Config::from_toml(
            r#"
[policy]
hold_at = 0.8
[policy.tenant.acme]
hold_at = 0.5
reject_at = 0.9
[policy.sender_domain."legal.acme.com"]
hold_at = 0.3
"#,
        )
        .unwrap();
        let p = Policy::new(cfg.policy);
        let s = scores(&[("x@y.org", 0.6)]);
        let other = Context {
            tenant: "other",
            sender: "a@b.com",
        };
        let acme = Context {
            tenant: "acme",
            sender: "a@acme.com",
        };
        let legal = Context {
            tenant: "acme",
            sender: "a@Legal.acme.com",
        };
        assert_eq!(p.decide_for(&other, s.clone()).action, Action::Deliver);
        assert_eq!(p.decide_for(&acme, s.clone()).action, Action::Hold);
        assert_eq!(
            p.decide_for(&acme, scores(&[("x@y.org", 0.95)])).action,
            Action::Reject
        );
        assert_eq!(
            p.decide_for(&legal, scores(&[("x@y.org", 0.35)])).action,
            Action::Hold
        );
        assert_eq!(p.thresholds(&legal).reject_at, Some(0.9));
        // The same domain already lower-case (as normalised addresses are).
        let lower = Context {
            tenant: "acme",
            sender: "a@legal.acme.com",
        };
        assert_eq!(p.thresholds(&lower).hold_at, Some(0.3));
        assert_eq!(p.thresholds(&lower).lowest(), 0.3);
    }

    #[test]
    fn allow_lists_never_trigger() {
        let p = Policy::new(PolicyConfig {
            allow_domains: vec!["partner.org".into(), ".group.example".into()],
            allow_pairs: vec![["Alice@acme.com".into(), "bob@gmail.com".into()]],
            ..Default::default()
        });
        let alice = Context {
            tenant: "default",
            sender: "alice@acme.com",
        };
        let v = p.decide_for(
            &alice,
            scores(&[("ceo@partner.org", 0.99), ("bob@gmail.com", 0.97)]),
        );
        assert_eq!(v.action, Action::Deliver);
        assert_eq!(v.score, 0.0);
        assert_eq!(
            v.note.as_deref(),
            Some("allow-listed: ceo@partner.org, bob@gmail.com")
        );
        assert!(p.is_allowed("x@y", "a@eu.group.example"));
        assert!(p.is_allowed("x@y", "a@group.example"));
        assert!(!p.is_allowed("x@y", "a@notgroup.example"));
        // The pair is only for that sender; other recipients still count.
        let carol = Context {
            tenant: "default",
            sender: "carol@acme.com",
        };
        let v = p.decide_for(
            &carol,
            scores(&[("bob@gmail.com", 0.97), ("ok@x.org", 0.1)]),
        );
        assert_eq!(v.action, Action::Hold);
        assert_eq!(v.score, 0.97);
    }

    #[test]
    fn fail_modes_and_reject_reply() {
        let open = Policy::new(PolicyConfig::default());
        let err = ScoreError::Model("missing".into());
        match open.on_score_error(&err) {
            FailAction::Deliver { header } => assert_eq!(header.0, WARNING_HEADER),
            other => panic!("{other:?}"),
        }
        let closed = Policy::new(PolicyConfig {
            fail_mode: FailMode::Closed,
            ..Default::default()
        });
        assert_eq!(
            closed.on_score_error(&err),
            FailAction::TempFail {
                reply: "451 4.3.0 Misdirection check unavailable, try again later".into()
            }
        );
        let v = Verdict::from_scores(
            scores(&[("a@x.org", 0.2), ("b@y.org", 0.99)]),
            Action::Reject,
        );
        assert_eq!(
            Policy::reject_reply(&v),
            "550 5.7.1 Refused: recipient <b@y.org> looks misaddressed (reason for b@y.org)"
        );
    }

    #[test]
    fn bad_policy_config_is_named() {
        let e = Config::from_toml("[policy]\nfail_mode = \"maybe\"\n").unwrap_err();
        assert!(
            e.to_string().contains("fail_mode") || e.to_string().contains("maybe"),
            "{e}"
        );
        let e = Config::from_toml(
            "[policy]\nallow_domains = [\"a@b\"]\n[policy.tenant.x]\nhold_at = 3.0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("policy.allow_domains[0]"), "{e}");
        assert!(e.contains("policy.tenant.x.hold_at"), "{e}");
    }

    #[test]
    fn lowest_threshold_is_the_smallest_configured() {
        let t = |e, h, r| Thresholds {
            encrypt_at: e,
            hold_at: h,
            reject_at: r,
        };
        assert_eq!(t(None, Some(0.8), Some(0.97)).lowest(), 0.8);
        assert_eq!(t(Some(0.5), Some(0.8), None).lowest(), 0.5);
        assert_eq!(t(None, None, Some(0.99)).lowest(), 0.99);
        assert_eq!(t(None, None, None).lowest(), f64::INFINITY);
        // Below the lowest, nothing is acted on.
        let x = t(Some(0.6), Some(0.9), None);
        assert_eq!(x.action_for(x.lowest() - 1e-9), Action::Deliver);
        assert_ne!(x.action_for(x.lowest()), Action::Deliver);
    }
}
