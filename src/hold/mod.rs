//! The hold workflow: hold a message, tell the sender, release it when the
//! sender replies (or an admin acts), expire what nobody released.
//!
//! [`HoldService`] is the one entry point:
//! - the pipeline calls [`HoldService::hold`] for `Action::Hold` (it returns
//!   once the message is durably spooled, so the upstream may get its `250`)
//!   and then [`HoldService::notify`] (or [`HoldService::hold_and_notify`]);
//! - the pipeline calls [`HoldService::handle_reply`] for every message
//!   before scoring it: a message to a release address is a sender's reply
//!   and is swallowed;
//! - admins call [`HoldService::list`], [`HoldService::show`],
//!   [`HoldService::release`], [`HoldService::discard`];
//! - [`HoldService::expire`] applies the configured expiry action (the
//!   daemon runs it every `[hold] expiry_interval`, see `cli::serve`).
//!
//! Notices and released messages leave through a [`Deliver`]
//! implementation (the relay's transport, or [`SmtpDeliver`]).

pub mod deliver;
pub mod notice;
pub mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use deliver::SmtpDeliver;
pub use token::{TokenError, TokenKey};

use crate::address::{domain_of, local_of, Normalizer};
use crate::config::{ExpiryAction, HoldConfig};
use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::message::{Field, MessageMeta, Recipient};
use crate::outbound::spool::{new_id, HeldMeta, SpoolError};
use crate::store::pg_spool::{
    ClaimOutcome, Erased, HoldSpool, SpoolClaim, CLAIM_LEASE, ERASE_RETRY, ERASE_WAIT,
};
use crate::store::{GraphHandle, LearnEvent, LearnKind};
use crate::verdict::Verdict;

/// Header added to a released message.
pub const RELEASED_HEADER: &str = "X-Misdirect-Released";

/// A delivery failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("delivery failed: {message}")]
pub struct DeliverError {
    /// The next hop refused for good (5xx) rather than for now.
    pub permanent: bool,
    pub message: String,
}

/// Future returned by [`Deliver::send`].
pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliverError>> + Send + 'a>>;

/// Hands a message to the next hop.
pub trait Deliver: Send + Sync {
    /// Send `raw` with this envelope (`mail_from` empty for the null sender).
    fn send<'a>(&'a self, envelope: &'a Envelope, raw: &'a [u8]) -> DeliverFuture<'a>;
}

/// Hold workflow errors.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error("no held message {0}")]
    NotFound(String),
    #[error("held message {0} is being released or discarded by another request")]
    Busy(String),
}

/// Hold ids being released or discarded right now, in this process. A
/// release delivers and then removes; without this claim a second release
/// (the sender's reply, an admin, the expiry task) of the same id running in
/// between would deliver it twice. Process-wide because a configuration
/// reload builds a new [`HoldService`] while sessions may still use the old
/// one. Relays sharing a PostgreSQL spool do not share these claims; there
/// the database claim ([`HoldSpool::claim`]) is taken as well.
static CLAIMS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// Exclusive right to act on one held message; released when dropped.
struct Claim(String);

impl Claim {
    fn take(id: &str) -> Result<Claim, HoldError> {
        let mut set = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(id.to_string()) {
            Ok(Claim(id.to_string()))
        } else {
            Err(HoldError::Busy(id.to_string()))
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.0);
    }
}

/// This process's claim and the spool's (the database claim every relay on
/// a shared store respects).
struct HeldClaim {
    spool: SpoolClaim,
    _local: Claim,
}

/// The recipients a verdict flagged: every one scoring at least 0.5 (more
/// likely wrong than right), or the worst one when none does.
pub fn flagged_recipients(v: &Verdict) -> Vec<&crate::verdict::RecipientScore> {
    let mut out: Vec<_> = v.recipients.iter().filter(|r| r.score >= 0.5).collect();
    if out.is_empty() {
        if let Some(w) = v
            .recipients
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
        {
            out.push(w);
        }
    }
    out
}

/// Who released or discarded a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Sender,
    Admin,
    Expiry,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Sender => "sender",
            Actor::Admin => "admin",
            Actor::Expiry => "expiry",
        }
    }
}

/// Why a reply to a release address released nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a release address")]
    NotReleaseAddress,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the hold is not (or no longer) in the spool")]
    NotHeld,
    #[error("reply does not come from the original sender")]
    WrongSender,
}

/// What [`HoldService::handle_reply`] found.
#[derive(Debug)]
pub enum ReplyOutcome {
    /// No recipient is at the release domain: process the message as usual.
    NotRelease,
    /// A reply to a release address: swallow it (answer `250`) and process
    /// only `other_rcpts` (usually none) as usual.
    Handled {
        /// The hold released, or why nothing was released.
        result: Result<String, Refusal>,
        other_rcpts: Vec<String>,
    },
}

/// What happened to one expired hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: String,
    pub action: ExpiryAction,
}

/// The hold workflow over one spool.
#[derive(Clone)]
pub struct HoldService {
    spool: HoldSpool,
    key: TokenKey,
    cfg: Arc<HoldConfig>,
    deliver: Arc<dyn Deliver>,
    norm: Normalizer,
    graph: Option<GraphHandle>,
    /// Scrub addresses from next-hop text in log lines.
    scrub_logs: bool,
}

/// Unix seconds now.
pub fn now() -> Ts {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as Ts)
        .unwrap_or(0)
}

fn secs(d: std::time::Duration) -> Ts {
    Ts::try_from(d.as_secs()).unwrap_or(Ts::MAX / 4)
}

impl HoldService {
    /// `spool`: a directory [`Spool`](crate::outbound::spool::Spool) or a
    /// [`HoldSpool`]. `graph`: where releases are learnt (none: nothing is
    /// learnt).
    pub fn new(
        spool: impl Into<HoldSpool>,
        key: TokenKey,
        cfg: HoldConfig,
        deliver: Arc<dyn Deliver>,
        norm: Normalizer,
        graph: Option<GraphHandle>,
    ) -> Self {
        HoldService {
            spool: spool.into(),
            key,
            cfg: Arc::new(cfg),
            deliver,
            norm,
            graph,
            scrub_logs: true,
        }
    }

    /// Learn releases and discards into `graph` (none: nothing is learnt).
    pub fn with_graph(mut self, graph: Option<GraphHandle>) -> Self {
        self.graph = graph;
        self
    }

    /// Whether log lines scrub addresses from error text (next-hop replies);
    /// on unless `[privacy] pseudonymise_logs = false`.
    pub fn with_log_scrub(mut self, scrub: bool) -> Self {
        self.scrub_logs = scrub;
        self
    }

    fn log_text(&self, e: &dyn std::fmt::Display) -> String {
        if self.scrub_logs {
            crate::privacy::scrub_addresses(&e.to_string())
        } else {
            e.to_string()
        }
    }

    pub fn spool(&self) -> &HoldSpool {
        &self.spool
    }

    /// Claim a hold for a release or discard: in this process, then in the
    /// spool (on PostgreSQL, across every relay). `Busy` while another
    /// request or relay holds it, `NotFound` when the shared store has no
    /// such hold.
    async fn claim(&self, id: &str) -> Result<HeldClaim, HoldError> {
        let local = Claim::take(id)?;
        match self.spool.claim(id, CLAIM_LEASE).await? {
            ClaimOutcome::Claimed(spool) => Ok(HeldClaim {
                spool,
                _local: local,
            }),
            ClaimOutcome::Busy => Err(HoldError::Busy(id.to_string())),
            ClaimOutcome::Missing => Err(HoldError::NotFound(id.to_string())),
        }
    }

    /// Give a claim up after a failed release (so that a retry, here or on
    /// another relay, need not wait for the lease); returns `e`.
    async fn unclaim(&self, claim: HeldClaim, e: HoldError) -> HoldError {
        if let Err(u) = self.spool.unclaim(&claim.spool).await {
            tracing::warn!(hold_id = %claim.spool.id(), error = %u, "Claim on a held message not given up; it lapses with its lease.");
        }
        e
    }

    fn normalize(&self, a: &str) -> String {
        self.norm
            .normalize(a)
            .unwrap_or_else(|_| a.trim().trim_matches(['<', '>']).to_lowercase())
    }

    /// The release address for a held message.
    pub fn release_address(&self, meta: &HeldMeta) -> String {
        let sender = self.normalize(&meta.envelope.mail_from);
        let exp = (meta.held_at + secs(self.cfg.token_lifetime)).min(meta.expires_at);
        format!(
            "{}+{}@{}",
            self.cfg.release_prefix,
            self.key.issue(&meta.id, &sender, exp),
            self.cfg.release_domain.to_ascii_lowercase()
        )
    }

    /// Spool a message durably; returns its metadata (with the new id) once
    /// it is on disk.
    pub async fn hold(
        &self,
        tenant: &str,
        envelope: &Envelope,
        raw: &[u8],
        verdict: &Verdict,
        now: Ts,
    ) -> Result<HeldMeta, HoldError> {
        let meta = HeldMeta {
            id: new_id(now),
            tenant: tenant.to_string(),
            envelope: envelope.clone(),
            verdict: verdict.clone(),
            held_at: now,
            expires_at: now + secs(self.cfg.hold_lifetime),
        };
        self.spool.put(&meta, raw).await?;
        metrics::counter!("misdirect_hold_held_total").increment(1);
        tracing::info!(hold_id = %meta.id, score = verdict.score, "Message held.");
        Ok(meta)
    }

    /// Send the sender the notice for a held message. Nothing is sent for
    /// the null sender (there is nobody to tell).
    pub async fn notify(&self, meta: &HeldMeta, raw: &[u8], now: Ts) -> Result<(), HoldError> {
        if meta.envelope.mail_from.is_empty() {
            return Ok(());
        }
        let parsed = MessageMeta::parse(raw, &self.norm);
        let release = self.release_address(meta);
        let on_expiry = match self.cfg.expiry_action {
            ExpiryAction::Discard => "discarded",
            ExpiryAction::Release => "sent anyway",
        };
        let notice = notice::build_notice(
            meta,
            &notice::NoticeParts {
                release_address: &release,
                from: self.cfg.notice_from.as_deref(),
                subject: parsed.subject.as_deref(),
                message_id: parsed.message_id.as_deref(),
                token_expires_at: (meta.held_at + secs(self.cfg.token_lifetime))
                    .min(meta.expires_at),
                on_expiry,
                now,
            },
        );
        let env = Envelope {
            mail_from: String::new(),
            rcpt_to: vec![meta.envelope.mail_from.clone()],
            body_8bit: false,
            smtputf8: !meta.envelope.mail_from.is_ascii(),
        };
        self.deliver.send(&env, &notice).await?;
        tracing::info!(hold_id = %meta.id, "Hold notice sent.");
        Ok(())
    }

    /// [`hold`](Self::hold), then [`notify`](Self::notify). A failed notice
    /// is logged and leaves the message held (an admin can still act).
    pub async fn hold_and_notify(
        &self,
        tenant: &str,
        envelope: &Envelope,
        raw: &[u8],
        verdict: &Verdict,
        now: Ts,
    ) -> Result<HeldMeta, HoldError> {
        let meta = self.hold(tenant, envelope, raw, verdict, now).await?;
        if let Err(e) = self.notify(&meta, raw, now).await {
            tracing::error!(hold_id = %meta.id, error = %self.log_text(&e), "Hold notice not sent.");
        }
        Ok(meta)
    }

    /// Whether an address is at the release domain with the release prefix.
    fn release_token<'a>(&self, rcpt: &'a str) -> Option<&'a str> {
        let r = rcpt.trim().trim_matches(['<', '>']);
        if !domain_of(r).eq_ignore_ascii_case(&self.cfg.release_domain) {
            return None;
        }
        Some(
            local_of(r)
                .split_once('+')
                .filter(|(p, _)| p.eq_ignore_ascii_case(&self.cfg.release_prefix))
                .map(|(_, t)| t)
                .unwrap_or(""),
        )
    }

    /// Whether any envelope recipient is a release address: the first thing
    /// [`HoldService::handle_reply`] looks for, so that a caller can skip
    /// that call for every other message.
    pub fn is_release_reply(&self, envelope: &Envelope) -> bool {
        envelope
            .rcpt_to
            .iter()
            .any(|r| self.release_token(r).is_some())
    }

    /// A message on its way out: if it goes to a release address it is a
    /// sender's reply to a notice. The token is checked, and that the reply
    /// comes from the original sender (envelope sender, and header From when
    /// there is one); then the held message is delivered, removed from the
    /// spool and learnt. Anything else releases nothing and is logged.
    ///
    /// `Err` only when the release itself failed (spool or delivery error):
    /// the message stays held and the pipeline should answer `451` so the
    /// reply is retried.
    pub async fn handle_reply(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        now: Ts,
    ) -> Result<ReplyOutcome, HoldError> {
        let mut tokens = Vec::new();
        let mut other_rcpts = Vec::new();
        for r in &envelope.rcpt_to {
            match self.release_token(r) {
                Some(t) => tokens.push(t),
                None => other_rcpts.push(r.clone()),
            }
        }
        let Some(token) = tokens.first() else {
            return Ok(ReplyOutcome::NotRelease);
        };
        let result = self.release_by_token(token, envelope, raw, now).await?;
        match &result {
            Ok(id) => tracing::info!(hold_id = %id, "Held message released by the sender's reply."),
            Err(why) => {
                metrics::counter!("misdirect_hold_release_refused_total").increment(1);
                tracing::warn!(reason = %why, "Release reply refused; nothing released.");
            }
        }
        Ok(ReplyOutcome::Handled {
            result,
            other_rcpts,
        })
    }

    async fn release_by_token(
        &self,
        token: &str,
        envelope: &Envelope,
        raw: &[u8],
        now: Ts,
    ) -> Result<Result<String, Refusal>, HoldError> {
        if token.is_empty() {
            return Ok(Err(Refusal::NotReleaseAddress));
        }
        let parsed = match TokenKey::parse(token) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.into())),
        };
        let Some((meta, _)) = self.spool.get(&parsed.hold_id).await? else {
            return Ok(Err(Refusal::NotHeld));
        };
        let original = self.normalize(&meta.envelope.mail_from);
        if let Err(e) = self.key.verify(&parsed, &original, now) {
            return Ok(Err(e.into()));
        }
        if envelope.mail_from.is_empty() || self.normalize(&envelope.mail_from) != original {
            return Ok(Err(Refusal::WrongSender));
        }
        let header_from = MessageMeta::parse(raw, &self.norm).from;
        if header_from.is_some_and(|f| f.address != original) {
            return Ok(Err(Refusal::WrongSender));
        }
        match self.release(&parsed.hold_id, Actor::Sender, now).await {
            Ok(()) => Ok(Ok(parsed.hold_id)),
            Err(HoldError::NotFound(_) | HoldError::Busy(_)) => Ok(Err(Refusal::NotHeld)),
            Err(e) => Err(e),
        }
    }

    /// Held messages, oldest first.
    pub async fn list(&self) -> Result<Vec<HeldMeta>, HoldError> {
        Ok(self.spool.list().await?)
    }

    /// One held message with its raw bytes.
    pub async fn show(&self, id: &str) -> Result<(HeldMeta, Vec<u8>), HoldError> {
        self.spool
            .get(id)
            .await?
            .ok_or_else(|| HoldError::NotFound(id.to_string()))
    }

    /// Deliver a held message (with an `X-Misdirect-Released` header) to its
    /// original recipients, remove it from the spool, and teach the graph
    /// that these recipients are right for this sender.
    /// Concurrent calls for one id (in this process, or on any relay of a
    /// shared PostgreSQL spool): one acts, the others get
    /// [`HoldError::Busy`] (or `NotFound` once it is gone).
    pub async fn release(&self, id: &str, by: Actor, now: Ts) -> Result<(), HoldError> {
        let claim = self.claim(id).await?;
        let (meta, raw) = match self.show(id).await {
            Ok(h) => h,
            Err(e) => return Err(self.unclaim(claim, e).await),
        };
        let mut out = format!(
            "{RELEASED_HEADER}: by {}; {}\r\n",
            by.as_str(),
            notice::rfc5322_date(now)
        )
        .into_bytes();
        out.extend_from_slice(&raw);
        if let Err(e) = self.deliver.send(&meta.envelope, &out).await {
            return Err(self.unclaim(claim, e.into()).await);
        }
        // Delivered: now it must leave the spool. If removal fails the
        // message could be delivered twice; that is logged loudly.
        if let Err(e) = self.spool.remove_claimed(&claim.spool).await {
            tracing::error!(hold_id = %id, error = %self.log_text(&e), "Released message delivered but not removed from the spool.");
            return Err(e.into());
        }
        metrics::counter!("misdirect_hold_released_total", "by" => by.as_str()).increment(1);
        tracing::info!(hold_id = %id, by = by.as_str(), "Held message released.");
        self.learn(&meta, &raw, now);
        Ok(())
    }

    /// Remove a held message without delivering it. An admin's discard of
    /// a message held as a suspected misdirection is a judgement: the graph
    /// learns that the flagged recipients (see [`flagged_recipients`]) are
    /// wrong for this sender, and they score as discarded until mail to
    /// them is delivered. A discard by expiry (the sender did nothing), or
    /// of a message held for another reason, teaches nothing.
    pub async fn discard(&self, id: &str, by: Actor) -> Result<(), HoldError> {
        let claim = self.claim(id).await?;
        let held = match by {
            Actor::Admin if self.graph.is_some() => match self.spool.get(id).await {
                Ok(h) => h,
                Err(e) => return Err(self.unclaim(claim, e.into()).await),
            },
            _ => None,
        };
        if !self.spool.remove_claimed(&claim.spool).await? {
            return Err(HoldError::NotFound(id.to_string()));
        }
        metrics::counter!("misdirect_hold_discarded_total", "by" => by.as_str()).increment(1);
        tracing::info!(hold_id = %id, by = by.as_str(), "Held message discarded.");
        if let Some((meta, raw)) = held {
            self.learn_discard(&meta, &raw, now());
        }
        Ok(())
    }

    /// Remove a held message for an erasure (teaching nothing), under
    /// the same claims as a release or discard: a release already
    /// delivering it, here or on another relay of a shared spool, finishes
    /// first, and its learning is queued before the erasure erases the
    /// graph. Waits up to [`ERASE_WAIT`] for such a release.
    pub async fn erase(&self, id: &str) -> Result<Erased, HoldError> {
        let deadline = tokio::time::Instant::now() + ERASE_WAIT;
        let _local = loop {
            match Claim::take(id) {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(Erased::Busy),
                Err(_) => tokio::time::sleep(ERASE_RETRY).await,
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Ok(self.spool.erase(id, left).await?)
    }

    fn learn_discard(&self, meta: &HeldMeta, raw: &[u8], now: Ts) {
        let Some(g) = &self.graph else { return };
        // Only a hold for a suspected misdirection is a judgement on its
        // recipients (not, e.g., an encryption fallback for a recipient
        // without a certificate).
        if meta.verdict.action != crate::verdict::Action::Hold {
            return;
        }
        let flagged = flagged_recipients(&meta.verdict);
        if flagged.is_empty() {
            return;
        }
        let recipients = flagged
            .into_iter()
            .map(|r| Recipient {
                address: r.address.clone(),
                name: None,
                field: r.field,
            })
            .collect();
        let ev = LearnEvent {
            tenant: meta.tenant.clone(),
            meta: MessageMeta::parse(raw, &self.norm),
            recipients,
            ts: now,
            kind: LearnKind::Discarded,
        };
        if let Err(e) = g.learn(ev) {
            tracing::warn!(hold_id = %meta.id, error = %e, "Discarded message not learnt.");
        }
    }

    fn learn(&self, meta: &HeldMeta, raw: &[u8], now: Ts) {
        let Some(g) = &self.graph else { return };
        let parsed = MessageMeta::parse(raw, &self.norm);
        let mut recipients: Vec<Recipient> = Vec::new();
        for r in &meta.envelope.rcpt_to {
            let a = self.normalize(r);
            let field = parsed
                .recipients
                .iter()
                .find(|h| h.address == a)
                .map(|h| h.field)
                .unwrap_or(Field::Bcc);
            let name = parsed
                .recipients
                .iter()
                .find(|h| h.address == a)
                .and_then(|h| h.name.clone());
            if !recipients.iter().any(|x| x.address == a) {
                recipients.push(Recipient {
                    address: a,
                    name,
                    field,
                });
            }
        }
        let ev = LearnEvent {
            tenant: meta.tenant.clone(),
            meta: parsed,
            recipients,
            ts: now,
            kind: LearnKind::Delivered,
        };
        if let Err(e) = g.learn(ev) {
            tracing::warn!(hold_id = %meta.id, error = %e, "Released message not learnt.");
        }
    }

    /// Apply the expiry action to every hold whose time is up. A hold that
    /// fails (e.g. the next hop is down for a release) stays for the next
    /// run; the others are still processed.
    pub async fn expire(&self, now: Ts) -> Result<Vec<Expired>, HoldError> {
        let mut done = Vec::new();
        for meta in self.spool.list().await? {
            if meta.expires_at > now {
                continue;
            }
            let action = self.cfg.expiry_action;
            let r = match action {
                ExpiryAction::Discard => self.discard(&meta.id, Actor::Expiry).await,
                ExpiryAction::Release => self.release(&meta.id, Actor::Expiry, now).await,
            };
            match r {
                Ok(()) | Err(HoldError::NotFound(_)) => done.push(Expired {
                    id: meta.id,
                    action,
                }),
                // Someone else is releasing or discarding it right now.
                Err(HoldError::Busy(_)) => {}
                Err(e) => {
                    tracing::error!(hold_id = %meta.id, error = %self.log_text(&e), "Expiry failed; will retry.")
                }
            }
        }
        Ok(done)
    }
}
