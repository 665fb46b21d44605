//! Carrying out a verdict: the calls the SMTP pipeline makes around the
//! policy, each returning the SMTP reply for the upstream.
//!
//! - Before scoring, [`Actions::intercept`]: a sender's reply to a release
//!   address is handled by the hold workflow and swallowed.
//! - After the policy decided, [`Actions::apply`]: deliver (with the score
//!   header), encrypt (S/MIME, fallback for recipients without a
//!   certificate), hold (spool + notice) or reject (`550 5.7.1`).
//!
//! Every reply is sent only after the message is durably held or accepted
//! by the next hop; on failure the reply is a `4xx` so the upstream keeps the
//! message and retries.

use std::sync::Arc;

use crate::config::EncryptFallback;
use crate::encrypt::Encryptor;
use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::hold::{Deliver, DeliverError, HoldService, ReplyOutcome};
use crate::policy::Policy;
use crate::verdict::{Action, Verdict};

/// Header with the score, the action and the model on delivered mail.
pub const SCORE_HEADER: &str = "X-Misdirect-Score";

/// What to do with a message before scoring.
#[derive(Debug, PartialEq, Eq)]
pub enum Intercept {
    /// Not (only) a release reply: score and act on this envelope (the
    /// original one, or the recipients left after a release address).
    Continue(Envelope),
    /// Answer with this reply and stop.
    Done(String),
}

/// Carries out verdicts.
#[derive(Clone)]
pub struct Actions {
    hold: HoldService,
    encryptor: Encryptor,
    deliver: Arc<dyn Deliver>,
}

fn with_header(name: &str, value: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = format!("{name}: {value}\r\n").into_bytes();
    out.extend_from_slice(raw);
    out
}

fn deliver_failed(e: &DeliverError) -> String {
    tracing::warn!(error = %e, "Delivery to the next hop failed.");
    if e.permanent {
        "554 5.0.0 The next hop refused the message".to_string()
    } else {
        "451 4.4.1 Next hop unavailable, try again later".to_string()
    }
}

impl Actions {
    pub fn new(hold: HoldService, encryptor: Encryptor, deliver: Arc<dyn Deliver>) -> Self {
        Actions {
            hold,
            encryptor,
            deliver,
        }
    }

    pub fn hold_service(&self) -> &HoldService {
        &self.hold
    }

    /// Handle a reply to a release address (release or refuse, and swallow
    /// it); anything else continues to scoring.
    pub async fn intercept(&self, envelope: &Envelope, raw: &[u8], now: Ts) -> Intercept {
        match self.hold.handle_reply(envelope, raw, now).await {
            Ok(ReplyOutcome::NotRelease) => Intercept::Continue(envelope.clone()),
            Ok(ReplyOutcome::Handled { other_rcpts, .. }) if !other_rcpts.is_empty() => {
                Intercept::Continue(Envelope {
                    rcpt_to: other_rcpts,
                    ..envelope.clone()
                })
            }
            Ok(ReplyOutcome::Handled { .. }) => Intercept::Done("250 2.0.0 Ok".to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "Release could not be completed.");
                Intercept::Done(
                    "451 4.3.0 Release could not be completed, try again later".to_string(),
                )
            }
        }
    }

    /// Carry out the verdict for a message; returns the SMTP reply.
    pub async fn apply(
        &self,
        tenant: &str,
        envelope: &Envelope,
        raw: &[u8],
        verdict: &Verdict,
        now: Ts,
    ) -> String {
        let scored = with_header(SCORE_HEADER, &verdict.header_value(), raw);
        match verdict.action {
            Action::Reject => Policy::reject_reply(verdict),
            Action::Deliver => match self.deliver.send(envelope, &scored).await {
                Ok(()) => "250 2.0.0 Ok: delivered".to_string(),
                Err(e) => deliver_failed(&e),
            },
            Action::Hold => match self
                .hold
                .hold_and_notify(tenant, envelope, raw, verdict, now)
                .await
            {
                Ok(m) => format!(
                    "250 2.0.0 Ok: held for the sender's confirmation ({})",
                    m.id
                ),
                Err(e) => {
                    tracing::error!(error = %e, "Could not hold a message.");
                    "451 4.3.0 Could not hold the message, try again later".to_string()
                }
            },
            Action::Encrypt => self.encrypt(tenant, envelope, raw, verdict, now).await,
        }
    }

    async fn encrypt(
        &self,
        tenant: &str,
        envelope: &Envelope,
        raw: &[u8],
        verdict: &Verdict,
        now: Ts,
    ) -> String {
        let plan = match self.encryptor.prepare(envelope, raw).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "Could not encrypt a message.");
                return "451 4.3.0 Encryption unavailable, try again later".to_string();
            }
        };
        // Hold first (local and durable), so a failed delivery can undo it.
        let mut held = None;
        let mut tagged = None;
        if let Some((fenv, fraw)) = &plan.fallback {
            match plan.fallback_action {
                EncryptFallback::Hold => {
                    match self
                        .hold
                        .hold_and_notify(tenant, fenv, fraw, verdict, now)
                        .await
                    {
                        Ok(m) => held = Some(m.id),
                        Err(e) => {
                            tracing::error!(error = %e, "Could not hold a message.");
                            return "451 4.3.0 Could not hold the message, try again later"
                                .to_string();
                        }
                    }
                }
                EncryptFallback::Tag => tagged = Some((fenv, fraw)),
            }
        }
        let mut sends = Vec::new();
        if let Some((eenv, emsg)) = &plan.encrypted {
            sends.push((
                eenv,
                with_header(SCORE_HEADER, &verdict.header_value(), emsg),
            ));
        }
        if let Some((tenv, traw)) = tagged {
            sends.push((
                tenv,
                with_header(SCORE_HEADER, &verdict.header_value(), traw),
            ));
        }
        for (env, msg) in &sends {
            if let Err(e) = self.deliver.send(env, msg).await {
                if let Some(id) = &held {
                    if let Err(e) = self.hold.spool().remove(id).await {
                        tracing::error!(hold_id = %id, error = %e, "Could not undo a hold after a failed delivery.");
                    }
                }
                return deliver_failed(&e);
            }
        }
        match held {
            Some(id) => {
                format!("250 2.0.0 Ok: encrypted where possible, held for the others ({id})")
            }
            None => "250 2.0.0 Ok: delivered encrypted".to_string(),
        }
    }
}
