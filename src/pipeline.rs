//! After DATA: parse → tenant → score → policy → act.
//!
//! [`Pipeline::process`] is the one entry point the SMTP session calls with
//! a complete transaction; it returns the reply for the upstream.
//! [`Pipeline::dispatch`] is the one place that turns a verdict into an
//! action (deliver, S/MIME encrypt, hold with the sender's notice, reject).
//! Replies to hold notices are swallowed before scoring. A [`Pipeline`] is
//! built from one configuration and never changes; [`PipelineCell`] holds
//! the current one and SIGHUP swaps it atomically (thresholds, allow-lists,
//! hold and encrypt settings included).

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tracing::{error, info, warn, Instrument};

use serde::{Deserialize, Serialize};

use crate::address::Normalizer;
use crate::config::store::StoreBackend;
use crate::config::{Config, EncryptFallback};
use crate::encrypt::Encryptor;
use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::hold::{Deliver, DeliverError, DeliverFuture, HoldService, ReplyOutcome, TokenKey};
use crate::message::{envelope_recipients, MessageMeta, Recipient};
use crate::outbound::dsn::{self, DsnInput};
use crate::outbound::outbox::{Outbox, OutboxMeta};
use crate::outbound::relay::{Relay, RelayOutcome};
use crate::outbound::spool::new_id;
use crate::policy::{Context, FailAction, Policy};
use crate::privacy::LogNames;
use crate::scorer::{ScoreError, ScoreInput, Scorer};
use crate::smtp::reply::Reply;
use crate::store::pg_spool::HoldSpool;
use crate::store::{GraphHandle, LearnEvent, LearnKind};
use crate::telemetry;
use crate::verdict::{Action, Verdict};

/// File under `server.data_dir` holding the generated release-token secret
/// when neither `hold.secret` nor `hold.secret_file` is set.
pub const GENERATED_SECRET_FILE: &str = "hold.secret";

/// The parts that survive a reload: the scorer (model) and the graph.
#[derive(Clone)]
pub struct Shared {
    pub scorer: Arc<dyn Scorer>,
    pub graph: GraphHandle,
}

/// Who handed us the transaction.
#[derive(Debug, Clone)]
pub struct TxContext {
    pub peer: IpAddr,
    /// The EHLO/HELO name.
    pub helo: String,
    /// `SMTP`, `ESMTP` or `ESMTPS` (RFC 3848) for the Received header.
    pub protocol: &'static str,
}

/// A transaction taken out of the normal scoring path before scoring.
/// (Replies to hold notices need none: the pipeline hands every message to
/// [`HoldService::handle_reply`] first, which also lets the other
/// recipients of such a reply go on through scoring.)
pub trait Intercept: Send + Sync {
    /// True when this interceptor takes the transaction.
    fn wants(&self, env: &Envelope) -> bool;
    /// Handle it and give the reply for the upstream. The reply must be 2xx
    /// only once the message is durably taken care of.
    fn handle<'a>(
        &'a self,
        ctx: &'a TxContext,
        env: &'a Envelope,
        raw: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;
}

/// Why a pipeline could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Relay(#[from] crate::outbound::relay::RelayError),
    #[error("hold spool {0}: {1}")]
    Spool(String, crate::outbound::spool::SpoolError),
    #[error("DSN outbox {0}: {1}")]
    Outbox(String, crate::outbound::spool::SpoolError),
    #[error("{0}")]
    Hold(String),
}

/// What one pass over the DSN outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxPass {
    /// Taken by the next hop (and removed).
    pub sent: usize,
    /// Refused for good by the next hop (and removed).
    pub refused: usize,
    /// Older than `dsn_lifetime` (and removed, untried).
    pub expired: usize,
    /// Not taken this time; still queued.
    pub waiting: usize,
}

/// Everything a transaction needs, built from one configuration.
pub struct Pipeline {
    cfg: Arc<Config>,
    norm: Normalizer,
    policy: Policy,
    shared: Shared,
    hold: HoldService,
    /// How log lines name addresses (`[privacy] pseudonymise_logs`).
    logs: LogNames,
    encryptor: Encryptor,
    relay: Relay,
    /// DSNs waiting for the next hop to take them.
    outbox: Outbox,
    tls: Option<Arc<rustls::ServerConfig>>,
    networks: Vec<IpNet>,
    interceptors: Vec<Arc<dyn Intercept>>,
}

fn now_ts() -> Ts {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as Ts)
        .unwrap_or(0)
}

impl Pipeline {
    /// Build from a validated configuration: loads the TLS files, opens the
    /// hold spool (the directory under `server.data_dir`, or with
    /// `store.backend = "postgres"` the shared store's `held` table), sets
    /// up the next-hop transport.
    pub async fn build(cfg: Config, shared: Shared) -> Result<Pipeline, BuildError> {
        Pipeline::build_with(cfg, shared, None).await
    }

    /// [`build`](Self::build), reusing `previous`'s PostgreSQL hold spool
    /// (its connection pool) when both are on the shared store, so that a
    /// reload needs no new connection.
    async fn build_with(
        cfg: Config,
        shared: Shared,
        previous: Option<&HoldSpool>,
    ) -> Result<Pipeline, BuildError> {
        let mut errs = Vec::new();
        cfg.validate_into(&mut errs);
        if !errs.is_empty() {
            return Err(crate::config::ConfigErrors(errs).into());
        }
        let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::load_server_config(c, k).await?),
            _ => None,
        };
        let spool = match (cfg.store.backend, previous) {
            // A reload keeps the shared store's connections.
            (StoreBackend::Postgres, Some(HoldSpool::Postgres(p))) => {
                HoldSpool::Postgres(p.clone())
            }
            _ => HoldSpool::open(&cfg, shared.graph.keys().clone())
                .await
                .map_err(|(at, e)| BuildError::Spool(at, e))?,
        };
        let outbox_dir = cfg.server.data_dir.join("outbox");
        let outbox = Outbox::open(&outbox_dir, shared.graph.keys().clone())
            .await
            .map_err(|e| BuildError::Outbox(outbox_dir.display().to_string(), e))?;
        let relay = Relay::new(&cfg.relay, &cfg.server.hostname)?;
        let norm = Normalizer::new(cfg.addresses.clone());
        let logs = LogNames::new(shared.graph.keys().clone(), cfg.privacy.pseudonymise_logs);
        let hold = HoldService::new(
            spool,
            TokenKey::new(hold_secret(&cfg).await?),
            cfg.hold.clone(),
            Arc::new(RelayDeliver {
                relay: relay.clone(),
                logs: logs.clone(),
                tenants: cfg.tenants.clone(),
            }),
            norm.clone(),
            Some(shared.graph.clone()),
        )
        .with_log_scrub(cfg.privacy.pseudonymise_logs);
        Ok(Pipeline {
            norm,
            policy: Policy::new(cfg.policy.clone()),
            networks: cfg.server.networks(),
            encryptor: Encryptor::new(cfg.encrypt.clone()),
            cfg: Arc::new(cfg),
            shared,
            hold,
            logs,
            relay,
            outbox,
            tls,
            interceptors: Vec::new(),
        })
    }

    /// Add an interceptor (checked in order before scoring).
    pub fn with_interceptor(mut self, i: Arc<dyn Intercept>) -> Pipeline {
        self.interceptors.push(i);
        self
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// DSNs waiting for the next hop.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The hold spool.
    pub fn spool(&self) -> &HoldSpool {
        self.hold.spool()
    }

    /// The hold workflow (release, discard, expiry) of this configuration.
    pub fn hold(&self) -> &HoldService {
        &self.hold
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// STARTTLS configuration, when TLS is configured.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// True when a client at `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// Handle one complete transaction and return the upstream's reply.
    pub async fn process(&self, ctx: &TxContext, env: Envelope, raw: Vec<u8>) -> Reply {
        let start = Instant::now();
        let now = now_ts();
        let queue_id = new_id(now);
        let rcpts = env.rcpt_to.len();
        let span = tracing::info_span!("message", queue_id = %queue_id);
        let (reply, action, score, next_hop) = async {
            if let Some(i) = self.interceptors.iter().find(|i| i.wants(&env)) {
                let r = i.handle(ctx, &env, &raw).await;
                return (r, "intercepted", None, String::new());
            }
            // A sender's reply to a hold notice is swallowed whatever the
            // outcome (refusals are logged by the hold service); only other
            // recipients of the same message go on.
            // Futures of steps most messages do not take (or take rarely)
            // are boxed, so that this future stays small: it is moved
            // whole when the session awaits it (it was 57 KB). Only a
            // message to a release address builds the hold service's.
            let outcome = if self.hold.is_release_reply(&env) {
                Box::pin(self.hold.handle_reply(&env, &raw, now)).await
            } else {
                Ok(ReplyOutcome::NotRelease)
            };
            let env = match outcome {
                Ok(ReplyOutcome::NotRelease) => env,
                Ok(ReplyOutcome::Handled { other_rcpts, .. }) if other_rcpts.is_empty() => {
                    return (
                        Reply::new(250, "2.0.0", "Ok: reply to hold notice received"),
                        "release_reply",
                        None,
                        String::new(),
                    );
                }
                Ok(ReplyOutcome::Handled { other_rcpts, .. }) => Envelope {
                    rcpt_to: other_rcpts,
                    ..env
                },
                Err(e) => {
                    error!(queue_id = %queue_id, error = %self.logs.text(&e.to_string()), "Release by reply failed; reply deferred.");
                    return (
                        Reply::new(451, "4.3.0", "Temporary local problem, try again later"),
                        "tempfail",
                        None,
                        String::new(),
                    );
                }
            };
            let Some((s, scores)) = self.score(&env, raw, now).await else {
                return (
                    Reply::new(451, "4.3.0", "Temporary local problem, try again later"),
                    "tempfail",
                    None,
                    String::new(),
                );
            };
            let tx = Transaction {
                ctx,
                queue_id: &queue_id,
                now,
                env,
                raw: s.raw,
                meta: s.meta,
                recipients: s.recipients,
                tenant: s.tenant,
            };
            let scores = match scores {
                Ok(sc) => sc,
                Err(e) => {
                    let (reply, action, hop) = Box::pin(self.on_score_error(tx, &e)).await;
                    return (reply, action, None, hop);
                }
            };
            let verdict = self.policy.decide_for(
                &Context {
                    tenant: &tx.tenant,
                    sender: &s.sender,
                },
                scores,
            );
            let score = Some(verdict.score);
            let (reply, action, next_hop) = self.dispatch(tx, verdict).await;
            (reply, action, score, next_hop)
        }
        .instrument(span.clone())
        .await;
        let latency = start.elapsed();
        let _enter = span.enter();
        info!(
            queue_id = %queue_id,
            rcpts,
            score = score.map(|s| format!("{s:.4}")).unwrap_or_else(|| "-".into()),
            action,
            next_hop = %self.logs.text(&next_hop),
            reply = %self.logs.text(&reply.summary()),
            latency_ms = latency.as_millis() as u64,
            "Message processed."
        );
        metrics::counter!(telemetry::MESSAGES, "action" => action).increment(1);
        metrics::histogram!(telemetry::MESSAGE_LATENCY).record(latency.as_secs_f64());
        reply
    }

    /// Parse and score. A message with at most [`INLINE_SCORE_MAX_RCPTS`]
    /// envelope recipients and [`INLINE_SCORE_MAX_BYTES`] bytes is parsed
    /// and scored right here on the async worker (tens of microseconds of
    /// CPU for a sender with hundreds of contacts, a few hundred for one
    /// with thousands, as `cargo bench --bench scoring` shows: cheaper than
    /// handing it to the blocking pool and waking this task again). While a
    /// writer holds the graph (a learn batch, a retention run, an erasure)
    /// the task waits for it without holding the worker
    /// ([`GraphHandle::view_when_free`]). Bigger messages are parsed and
    /// scored on the blocking pool. `None` when the blocking task failed:
    /// the caller answers 451 and the upstream keeps the message.
    async fn score(&self, env: &Envelope, raw: Vec<u8>, now: Ts) -> Option<(Parsed, ScoreResult)> {
        if env.rcpt_to.len() <= INLINE_SCORE_MAX_RCPTS && raw.len() <= INLINE_SCORE_MAX_BYTES {
            let p = Parsed::new(&self.norm, &self.shared, env, raw);
            let shared = &self.shared;
            let explain_from = p.explain_from(&self.policy);
            let scores = shared
                .graph
                .view_when_free(&p.tenant, |g| p.score(shared, g, now, explain_from))
                .await;
            return Some((p, scores));
        }
        let env = env.clone();
        let norm = self.norm.clone();
        let shared = self.shared.clone();
        let policy = self.policy.clone();
        let job = tokio::task::spawn_blocking(move || {
            let p = Parsed::new(&norm, &shared, &env, raw);
            let explain_from = p.explain_from(&policy);
            let scores = shared
                .graph
                .with_view(&p.tenant, |g| p.score(&shared, g, now, explain_from));
            (p, scores)
        });
        match job.await {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "Scoring task failed; answering 451.");
                None
            }
        }
    }

    /// Score one message as the daemon would (header recipients, live graph
    /// and policy) without acting on it: `misdirectd check`.
    pub async fn check(&self, raw: Vec<u8>) -> CheckReport {
        check_message(
            self.norm.clone(),
            self.shared.clone(),
            self.policy.clone(),
            raw,
            now_ts(),
        )
        .await
    }

    /// Scoring failed: `[policy] fail_mode` decides. Fail-open delivers with
    /// the warning header (and no score header); fail-closed answers 451.
    async fn on_score_error(
        &self,
        mut tx: Transaction<'_>,
        e: &ScoreError,
    ) -> (Reply, &'static str, String) {
        // Logged (with the fail mode) by the policy, inside this message's span.
        match self.policy.on_score_error(e) {
            FailAction::TempFail { reply } => (parse_reply(&reply), "tempfail", String::new()),
            FailAction::Deliver { header } => {
                let mut out = self.received_header(&tx, tx.raw.len() + 64);
                out.extend_from_slice(format!("{}: {}\r\n", header.0, header.1).as_bytes());
                out.extend_from_slice(&tx.raw);
                let env = tx.env.clone();
                self.relay_out(&mut tx, &env, &out, "unchecked", true).await
            }
        }
    }

    /// Act on a verdict. Returns the reply, the action name for logs and
    /// metrics, and the next hop's reply (if it was asked).
    pub async fn dispatch(
        &self,
        mut tx: Transaction<'_>,
        verdict: Verdict,
    ) -> (Reply, &'static str, String) {
        match verdict.action {
            Action::Deliver => {
                let out = self.with_trace_headers(&tx, &verdict, &tx.raw);
                let env = tx.env.clone();
                self.relay_out(&mut tx, &env, &out, "deliver", true).await
            }
            // Boxed: rare, and their futures would make this one large.
            Action::Encrypt => Box::pin(self.encrypt(tx, verdict)).await,
            Action::Hold => Box::pin(self.hold_message(tx, verdict)).await,
            Action::Reject => (
                parse_reply(&Policy::reject_reply(&verdict)),
                "reject",
                String::new(),
            ),
        }
    }

    async fn hold_message(
        &self,
        tx: Transaction<'_>,
        verdict: Verdict,
    ) -> (Reply, &'static str, String) {
        match self
            .hold
            .hold_and_notify(&tx.tenant, &tx.env, &tx.raw, &verdict, tx.now)
            .await
        {
            Ok(meta) => {
                info!(queue_id = tx.queue_id, hold_id = %meta.id, "Message held; sender notified.");
                (
                    Reply::new(250, "2.0.0", format!("Held as {}", meta.id)),
                    "hold",
                    String::new(),
                )
            }
            Err(e) => {
                error!(queue_id = tx.queue_id, error = %self.logs.text(&e.to_string()), "Could not hold message; deferred.");
                (
                    Reply::new(451, "4.3.0", "Temporary local problem, try again later"),
                    "tempfail",
                    String::new(),
                )
            }
        }
    }

    /// S/MIME for the recipients with a certificate; the others get the
    /// `[encrypt] fallback`: held (the sender is notified only once the
    /// encrypted copy left) or delivered tagged `X-Misdirect-Encryption: none`.
    async fn encrypt(
        &self,
        mut tx: Transaction<'_>,
        verdict: Verdict,
    ) -> (Reply, &'static str, String) {
        let tempfail = |msg: &str| {
            (
                Reply::new(451, "4.3.0", msg.to_string()),
                "tempfail",
                String::new(),
            )
        };
        let plan = match self.encryptor.prepare(&tx.env, &tx.raw).await {
            Ok(p) => p,
            Err(e) => {
                error!(queue_id = tx.queue_id, error = %self.logs.text(&e.to_string()), "Encryption failed; message deferred.");
                return tempfail("Temporary failure encrypting the message, try again later");
            }
        };
        let mut held_verdict = verdict.clone();
        held_verdict.note =
            Some("encryption asked for; no certificate for these recipients".into());
        let Some((enc_env, enc_raw)) = plan.encrypted else {
            // Nobody has a certificate: the fallback alone.
            return match (plan.fallback, plan.fallback_action) {
                (Some((env, _)), EncryptFallback::Hold) => {
                    let tx = Transaction { env, ..tx };
                    self.hold_message(tx, held_verdict).await
                }
                (Some((env, msg)), EncryptFallback::Tag) => {
                    let out = self.with_trace_headers(&tx, &verdict, &msg);
                    self.relay_out(&mut tx, &env, &out, "encrypt", true).await
                }
                (None, _) => tempfail("Temporary local problem, try again later"),
            };
        };
        // Hold the fallback part first (durable) so that a deferred
        // encrypted delivery can take it back and the upstream retries all.
        let mut held = None;
        if let (Some((env, msg)), EncryptFallback::Hold) = (&plan.fallback, plan.fallback_action) {
            match self
                .hold
                .hold(&tx.tenant, env, msg, &held_verdict, tx.now)
                .await
            {
                Ok(m) => held = Some(m),
                Err(e) => {
                    error!(queue_id = tx.queue_id, error = %self.logs.text(&e.to_string()), "Could not hold the unencrypted part; deferred.");
                    return tempfail("Temporary local problem, try again later");
                }
            }
        }
        let out = self.with_trace_headers(&tx, &verdict, &enc_raw);
        let (reply, action, hop) = self
            .relay_out(&mut tx, &enc_env, &out, "encrypt", false)
            .await;
        if !(200..300).contains(&reply.code) {
            if let Some(m) = &held {
                if let Err(e) = self.hold.discard(&m.id, crate::hold::Actor::Admin).await {
                    error!(queue_id = tx.queue_id, hold_id = %m.id, error = %self.logs.text(&e.to_string()), "Could not take back the hold after a failed delivery.");
                }
            }
            return (reply, action, hop);
        }
        if let Some(m) = &held {
            let msg = plan
                .fallback
                .as_ref()
                .map(|(_, m)| m.as_slice())
                .unwrap_or(&[]);
            if let Err(e) = self.hold.notify(m, msg, tx.now).await {
                error!(hold_id = %m.id, error = %self.logs.text(&e.to_string()), "Hold notice not sent.");
            }
        }
        if let (Some((env, msg)), EncryptFallback::Tag) = (&plan.fallback, plan.fallback_action) {
            let out = self.with_trace_headers(&tx, &verdict, msg);
            let (r2, _, _) = self.relay_out(&mut tx, env, &out, "encrypt", false).await;
            if !(200..300).contains(&r2.code) {
                // The encrypted copy is gone already: keep the tagged copy
                // in the hold spool for an admin rather than lose it or
                // have the upstream send the encrypted copy twice.
                match self
                    .hold
                    .hold(&tx.tenant, env, msg, &held_verdict, tx.now)
                    .await
                {
                    Ok(m) => {
                        warn!(queue_id = tx.queue_id, hold_id = %m.id, reply = %self.logs.text(&r2.summary()), "Tagged copy not delivered; held for an admin.")
                    }
                    Err(e) => {
                        error!(queue_id = tx.queue_id, error = %self.logs.text(&e.to_string()), "Tagged copy neither delivered nor held; deferred.");
                        return (r2, "tempfail", hop);
                    }
                }
            }
        }
        (reply, action, hop)
    }

    /// The trace and score headers, then `body`: the relayed message, built
    /// in one buffer of the right size.
    pub fn with_trace_headers(
        &self,
        tx: &Transaction<'_>,
        verdict: &Verdict,
        body: &[u8],
    ) -> Vec<u8> {
        let mut h = self.received_header(tx, body.len() + 128);
        h.extend_from_slice(b"X-Misdirect-Score: ");
        h.extend_from_slice(verdict.header_value().as_bytes());
        h.extend_from_slice(b"\r\n");
        h.extend_from_slice(body);
        h
    }

    /// The `Received:` trace header, in a buffer with room for `extra`
    /// more bytes.
    pub fn received_header(&self, tx: &Transaction<'_>, extra: usize) -> Vec<u8> {
        use std::io::Write as _;
        let host = &self.cfg.server.hostname;
        let one = match tx.env.rcpt_to.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let mut h = Vec::with_capacity(
            160 + tx.ctx.helo.len().min(255) + host.len() + one.map_or(0, str::len) + extra,
        );
        h.extend_from_slice(b"Received: from ");
        // Printable ASCII only (each such character is one byte).
        h.extend(
            tx.ctx
                .helo
                .bytes()
                .filter(|b| b.is_ascii_graphic())
                .take(255),
        );
        // Writing to a Vec cannot fail.
        let _ = write!(
            h,
            " ([{}])\r\n\tby {host} (misdirectd) with {} id {}",
            tx.ctx.peer, tx.ctx.protocol, tx.queue_id
        );
        if let Some(one) = one {
            h.extend_from_slice(b"\r\n\tfor <");
            h.extend_from_slice(one.as_bytes());
            h.push(b'>');
        }
        h.extend_from_slice(b"; ");
        push_rfc822_date(&mut h, tx.now);
        h.extend_from_slice(b"\r\n");
        h
    }

    /// Relay `out` to `env`'s recipients; learn them once delivered. `last`:
    /// nothing relays for `tx` after this, so the learn event takes its
    /// metadata instead of a copy.
    async fn relay_out(
        &self,
        tx: &mut Transaction<'_>,
        env: &Envelope,
        out: &[u8],
        action: &'static str,
        last: bool,
    ) -> (Reply, &'static str, String) {
        match self.relay.send_raw(env, out).await {
            RelayOutcome::Delivered { reply } => {
                self.learn(tx, env, last);
                (
                    Reply::new(250, "2.0.0", format!("Ok: queued as {}", tx.queue_id)),
                    action,
                    reply,
                )
            }
            RelayOutcome::Partial { reply, rejected } => {
                self.learn(tx, env, last);
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "partial").increment(1);
                for f in &rejected {
                    warn!(queue_id = tx.queue_id, recipient = %self.logs.addr(&tx.tenant, &f.address), code = f.code, text = %self.logs.text(&f.text), "Next hop refused recipient; DSN to sender.");
                }
                let dsn = Box::pin(self.send_dsn(tx, &rejected)).await;
                (
                    Reply::new(
                        250,
                        "2.0.0",
                        format!(
                            "Ok: queued as {}; {} recipient(s) refused by next hop, {dsn}",
                            tx.queue_id,
                            rejected.len()
                        ),
                    ),
                    action,
                    reply,
                )
            }
            RelayOutcome::Rejected { code, text } => {
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "rejected").increment(1);
                let code = if (500..600).contains(&code) {
                    code
                } else {
                    554
                };
                let (enh, rest) = match dsn::enhanced_status(&text) {
                    Some(e) if e.starts_with('5') => {
                        (e.to_string(), text[e.len()..].trim().to_string())
                    }
                    _ => ("5.0.0".to_string(), text.clone()),
                };
                (
                    Reply::new(code, enh, format!("Next hop refused: {rest}")),
                    "refused",
                    format!("{code} {text}"),
                )
            }
            RelayOutcome::Deferred { reason } => {
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "deferred").increment(1);
                warn!(queue_id = tx.queue_id, reason = %self.logs.text(&reason), "Next hop unavailable; message deferred.");
                (
                    Reply::new(451, "4.4.1", "Next hop unavailable, try again later"),
                    "tempfail",
                    reason,
                )
            }
        }
    }

    /// Send the sender a DSN for the refused recipients (none for a message
    /// with the null sender, by RFC 3464); what happened, for the reply.
    async fn send_dsn(
        &self,
        tx: &Transaction<'_>,
        rejected: &[crate::outbound::relay::RcptFailure],
    ) -> &'static str {
        if tx.env.mail_from.is_empty() {
            return "no DSN for the null sender";
        }
        let remote = self.cfg.relay.host.clone();
        let msg = dsn::build(&DsnInput {
            hostname: &self.cfg.server.hostname,
            remote: &remote,
            sender: &tx.env.mail_from,
            queue_id: tx.queue_id,
            now: tx.now,
            failures: rejected,
            original: &tx.raw,
        });
        let env = Envelope {
            mail_from: String::new(),
            rcpt_to: vec![tx.env.mail_from.clone()],
            body_8bit: false,
            smtputf8: tx.env.smtputf8,
        };
        match self.relay.send_raw(&env, &msg).await {
            RelayOutcome::Delivered { .. } => {
                info!(queue_id = tx.queue_id, "DSN sent to sender.");
                "DSN sent"
            }
            RelayOutcome::Deferred { reason } => {
                let meta = OutboxMeta {
                    id: new_id(tx.now),
                    envelope: env,
                    queued_at: tx.now,
                    about: tx.queue_id.to_string(),
                };
                match self.outbox.put(&meta, &msg).await {
                    Ok(()) => {
                        warn!(queue_id = tx.queue_id, reason = %self.logs.text(&reason), "Next hop did not take the DSN; queued to be sent again.");
                        "the DSN to the sender is queued (next hop unavailable)"
                    }
                    Err(e) => {
                        metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "dsn")
                            .increment(1);
                        error!(queue_id = tx.queue_id, error = %e, "DSN could not be delivered nor queued.");
                        "the DSN to the sender could not be delivered"
                    }
                }
            }
            other => {
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "dsn").increment(1);
                error!(queue_id = tx.queue_id, outcome = %self.logs.text(&format!("{other:?}")), "DSN could not be delivered.");
                "the DSN to the sender could not be delivered"
            }
        }
    }

    /// Send every queued DSN again (see [`crate::outbound::outbox`]): one
    /// the next hop takes, or refuses for good, or older than `[relay]
    /// dsn_lifetime` leaves the outbox; the others stay for the next pass.
    pub async fn retry_outbox(
        &self,
        now: Ts,
    ) -> Result<OutboxPass, crate::outbound::spool::SpoolError> {
        let (queued, unreadable) = self.outbox.list().await?;
        for e in &unreadable {
            error!(error = %e, "Unreadable DSN outbox file; left in place.");
        }
        let lifetime = self.cfg.relay.dsn_lifetime.as_secs() as Ts;
        let mut pass = OutboxPass::default();
        for (meta, msg) in queued {
            let outcome = if now.saturating_sub(meta.queued_at) > lifetime {
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "dsn").increment(1);
                error!(queue_id = %meta.about, "DSN not taken by the next hop within dsn_lifetime; dropped.");
                pass.expired += 1;
                None
            } else {
                Some(self.relay.send_raw(&meta.envelope, &msg).await)
            };
            match outcome {
                None => {}
                Some(RelayOutcome::Delivered { .. }) => {
                    info!(queue_id = %meta.about, "Queued DSN sent to sender.");
                    pass.sent += 1;
                }
                Some(RelayOutcome::Deferred { .. }) => {
                    pass.waiting += 1;
                    continue;
                }
                Some(other) => {
                    metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "dsn").increment(1);
                    error!(queue_id = %meta.about, outcome = %self.logs.text(&format!("{other:?}")), "Queued DSN refused by the next hop; dropped.");
                    pass.refused += 1;
                }
            }
            self.outbox.remove(&meta.id).await?;
        }
        Ok(pass)
    }

    /// Learn the message for the recipients of `env` (those it went to).
    fn learn(&self, tx: &mut Transaction<'_>, env: &Envelope, last: bool) {
        let recipients: Vec<Recipient> = if env.rcpt_to == tx.env.rcpt_to {
            // The whole envelope: `tx.recipients` are its addresses,
            // normalised when the message was parsed.
            if last {
                std::mem::take(&mut tx.recipients)
            } else {
                tx.recipients.clone()
            }
        } else {
            // A part of it (an encryption split): normalised as
            // `envelope_recipients` does, to find them in `tx.recipients`.
            let delivered: Vec<String> = env
                .rcpt_to
                .iter()
                .map(|a| {
                    self.norm
                        .normalize(a)
                        .unwrap_or_else(|_| a.trim().to_lowercase())
                })
                .collect();
            tx.recipients
                .iter()
                .filter(|r| delivered.contains(&r.address))
                .cloned()
                .collect()
        };
        if recipients.is_empty() {
            return;
        }
        let ev = LearnEvent {
            tenant: tx.tenant.clone(),
            meta: if last {
                std::mem::take(&mut tx.meta)
            } else {
                tx.meta.clone()
            },
            recipients,
            ts: tx.now,
            kind: LearnKind::Delivered,
        };
        if let Err(e) = self.shared.graph.learn(ev) {
            metrics::counter!(telemetry::LEARN_DROPPED).increment(1);
            warn!(queue_id = tx.queue_id, error = %e, "Learn event dropped.");
        }
    }
}

/// `now` as an RFC 822 date (UTC), as mail-parser writes it. Each worker
/// thread keeps the last second's text: messages in the same second share
/// it instead of formatting it again.
fn push_rfc822_date(out: &mut Vec<u8>, now: Ts) {
    thread_local! {
        static LAST: std::cell::RefCell<(Ts, String)> =
            const { std::cell::RefCell::new((Ts::MIN, String::new())) };
    }
    let format = |now| mail_parser::DateTime::from_timestamp(now).to_rfc822();
    LAST.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => {
            if last.0 != now || last.1.is_empty() {
                *last = (now, format(now));
            }
            out.extend_from_slice(last.1.as_bytes());
        }
        Err(_) => out.extend_from_slice(format(now).as_bytes()),
    });
}

/// Messages with at most this many envelope recipients are scored on the
/// async worker (see `Pipeline::score`).
const INLINE_SCORE_MAX_RCPTS: usize = 10;
/// ... and at most this many bytes.
const INLINE_SCORE_MAX_BYTES: usize = 256 * 1024;

/// A parsed message, before scoring (CPU only, no I/O).
struct Parsed {
    meta: MessageMeta,
    recipients: Vec<Recipient>,
    sender: String,
    tenant: String,
    raw: Vec<u8>,
}

impl Parsed {
    fn new(norm: &Normalizer, shared: &Shared, env: &Envelope, raw: Vec<u8>) -> Parsed {
        let meta = MessageMeta::parse(&raw, norm);
        let recipients = envelope_recipients(&meta, &env.rcpt_to, norm);
        let sender = meta
            .sender()
            .map(str::to_string)
            .or_else(|| norm.normalize(&env.mail_from).ok())
            .unwrap_or_default();
        let tenant = shared.graph.tenant_for(&sender);
        Parsed {
            meta,
            recipients,
            sender,
            tenant,
            raw,
        }
    }

    /// The lowest score the policy acts on for this sender: below it the
    /// message is delivered and nobody reads the reasons.
    fn explain_from(&self, policy: &Policy) -> f64 {
        policy
            .thresholds(&Context {
                tenant: &self.tenant,
                sender: &self.sender,
            })
            .lowest()
    }

    /// Score it against the tenant's graph, with reasons when a recipient
    /// scores `explain_from` or more ([`Scorer::score_explaining`]).
    fn score(
        &self,
        shared: &Shared,
        g: &dyn crate::graph::GraphView,
        now: Ts,
        explain_from: f64,
    ) -> ScoreResult {
        shared.scorer.score_explaining(
            g,
            &ScoreInput {
                meta: &self.meta,
                recipients: &self.recipients,
                now,
            },
            explain_from,
        )
    }
}

/// What scoring a parsed message gave.
type ScoreResult = Result<crate::verdict::Scores, ScoreError>;

/// `"451 4.3.0 text"` (as the policy writes replies) to a [`Reply`].
fn parse_reply(s: &str) -> Reply {
    let mut it = s.splitn(3, ' ');
    let code = it.next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(451);
    let enh = it.next().unwrap_or("4.3.0").to_string();
    let text = it.next().unwrap_or("").to_string();
    Reply::new(code, enh, text)
}

/// The token secret: `[hold] secret_file` or `secret`, else a random secret
/// generated once into `<server.data_dir>/hold.secret` (mode 0600), so that
/// tokens survive restarts without any setup.
async fn hold_secret(cfg: &Config) -> Result<Vec<u8>, BuildError> {
    if cfg.hold.secret_file.is_some() || !cfg.hold.secret.is_empty() {
        let h = cfg.hold.clone();
        return tokio::task::spawn_blocking(move || h.load_secret())
            .await
            .map_err(|e| BuildError::Hold(e.to_string()))?
            .map_err(BuildError::Hold);
    }
    let path = cfg.server.data_dir.join(GENERATED_SECRET_FILE);
    let err = |e: std::io::Error| BuildError::Hold(format!("{}: {e}", path.display()));
    match tokio::fs::read_to_string(&path).await {
        Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(BuildError::Hold(format!(
                "{}: secret shorter than 16 characters",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    tokio::fs::create_dir_all(&cfg.server.data_dir)
        .await
        .map_err(err)?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let secret = hex::encode(bytes);
    let tmp = path.with_extension("tmp");
    {
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(err)?;
        f.write_all(format!("{secret}\n").as_bytes())
            .await
            .map_err(err)?;
        f.sync_all().await.map_err(err)?;
    }
    tokio::fs::rename(&tmp, &path).await.map_err(err)?;
    info!(file = %path.display(), "Generated the hold release-token secret.");
    Ok(secret.into_bytes())
}

/// [`Deliver`] through the relay's next-hop transport (notices, releases).
pub struct RelayDeliver {
    pub relay: Relay,
    /// How refused recipients and next-hop text are logged.
    pub logs: LogNames,
    /// To name a refused recipient by its pseudonym in the sender's tenant.
    pub tenants: crate::config::TenantsConfig,
}

impl Deliver for RelayDeliver {
    fn send<'a>(&'a self, envelope: &'a Envelope, raw: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            match self.relay.send_raw(envelope, raw).await {
                RelayOutcome::Delivered { .. } => Ok(()),
                RelayOutcome::Partial { rejected, .. } => {
                    for f in &rejected {
                        let tenant = self.tenants.tenant_for(&envelope.mail_from);
                        warn!(recipient = %self.logs.addr(tenant, &f.address), code = f.code, text = %self.logs.text(&f.text), "Next hop refused a recipient of a released message or notice.");
                    }
                    Ok(())
                }
                RelayOutcome::Rejected { code, text } => Err(DeliverError {
                    permanent: true,
                    message: format!("{code} {text}"),
                }),
                RelayOutcome::Deferred { reason } => Err(DeliverError {
                    permanent: false,
                    message: reason,
                }),
            }
        })
    }
}

/// What `misdirectd check` prints for one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub sender: String,
    pub tenant: String,
    /// The verdict (absent when scoring failed).
    pub verdict: Option<Verdict>,
    /// The SMTP reply a rejected (or fail-closed) message gets.
    pub reply: Option<String>,
    /// Why scoring failed, and what `fail_mode` does about it.
    pub score_error: Option<String>,
}

impl CheckReport {
    /// The report for a scoring result: the policy's verdict (and the reply
    /// a reject gets), or what `fail_mode` does when scoring failed.
    pub fn from_scored(
        sender: String,
        tenant: String,
        policy: &Policy,
        scored: Result<crate::verdict::Scores, crate::scorer::ScoreError>,
    ) -> CheckReport {
        match scored {
            Ok(scores) => {
                let verdict = policy.decide_for(
                    &Context {
                        tenant: &tenant,
                        sender: &sender,
                    },
                    scores,
                );
                let reply =
                    (verdict.action == Action::Reject).then(|| Policy::reject_reply(&verdict));
                CheckReport {
                    sender,
                    tenant,
                    verdict: Some(verdict),
                    reply,
                    score_error: None,
                }
            }
            Err(e) => {
                let (what, reply) = match policy.on_score_error(&e) {
                    FailAction::Deliver { header } => {
                        (format!("deliver with {}: {}", header.0, header.1), None)
                    }
                    FailAction::TempFail { reply } => (reply.clone(), Some(reply)),
                };
                CheckReport {
                    sender,
                    tenant,
                    verdict: None,
                    reply,
                    score_error: Some(format!("{e}; {what}")),
                }
            }
        }
    }
}

/// Score a message with its header recipients against a graph and policy.
pub async fn check_message(
    norm: Normalizer,
    shared: Shared,
    policy: Policy,
    raw: Vec<u8>,
    now: Ts,
) -> CheckReport {
    let job = tokio::task::spawn_blocking(move || {
        // The header recipients, and no envelope sender to fall back on.
        let meta = MessageMeta::parse(&raw, &norm);
        let sender = meta.sender().map(str::to_string).unwrap_or_default();
        let p = Parsed {
            recipients: meta.recipients.clone(),
            tenant: shared.graph.tenant_for(&sender),
            sender,
            meta,
            raw,
        };
        let scored = shared
            .graph
            .with_view(&p.tenant, |g| p.score(&shared, g, now, 0.0));
        CheckReport::from_scored(p.sender, p.tenant, &policy, scored)
    });
    match job.await {
        Ok(r) => r,
        Err(e) => CheckReport {
            sender: String::new(),
            tenant: String::new(),
            verdict: None,
            reply: None,
            score_error: Some(format!("scoring task failed: {e}")),
        },
    }
}

/// One transaction on its way through [`Pipeline::dispatch`].
pub struct Transaction<'a> {
    pub ctx: &'a TxContext,
    pub queue_id: &'a str,
    pub now: Ts,
    pub env: Envelope,
    /// The message exactly as received (after dot-unstuffing).
    pub raw: Vec<u8>,
    pub meta: MessageMeta,
    pub recipients: Vec<Recipient>,
    pub tenant: String,
}

/// The current pipeline, replaceable at runtime (SIGHUP).
pub struct PipelineCell {
    current: RwLock<Arc<Pipeline>>,
    shared: Shared,
}

impl PipelineCell {
    pub fn new(p: Pipeline) -> PipelineCell {
        let shared = p.shared.clone();
        PipelineCell {
            current: RwLock::new(Arc::new(p)),
            shared,
        }
    }

    /// The pipeline new transactions use.
    pub fn current(&self) -> Arc<Pipeline> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swap in a new pipeline; transactions already running keep the old.
    pub fn replace(&self, p: Pipeline) {
        let p = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    /// Reload from a configuration file. An invalid file (or one whose TLS
    /// files, spool or relay cannot be set up) is refused with a log line and
    /// the running pipeline stays.
    pub async fn reload(&self, path: &Path) -> Result<(), BuildError> {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(t) => t,
            Err(e) => {
                let err = crate::config::ConfigErrors(vec![format!("{}: {e}", path.display())]);
                error!(file = %path.display(), error = %err, "Reload refused; old configuration stays.");
                return Err(err.into());
            }
        };
        self.reload_toml(&text, &path.display().to_string()).await
    }

    /// Reload from configuration text (`source` names it in log lines).
    pub async fn reload_toml(&self, text: &str, source: &str) -> Result<(), BuildError> {
        let built = match Config::from_toml(text) {
            Ok(cfg) => {
                let current = self.current();
                Pipeline::build_with(cfg, self.shared.clone(), Some(current.spool())).await
            }
            Err(e) => Err(e.into()),
        };
        match built {
            Ok(mut p) => {
                p.interceptors = self.current().interceptors.clone();
                self.replace(p);
                info!(file = source, "Configuration reloaded.");
                Ok(())
            }
            Err(e) => {
                error!(file = source, error = %e, "Reload refused; old configuration stays.");
                Err(e)
            }
        }
    }
}
