//! After DATA: parse → tenant → score → policy → act.
//!
//! [`Pipeline::process`] is the one entry point the SMTP session calls with
//! a complete transaction; it returns the reply for the upstream.
//! [`Pipeline::dispatch`] is the one place that turns a verdict into an
//! action. A [`Pipeline`] is built from one configuration and never changes;
//! [`PipelineCell`] holds the current one and SIGHUP swaps it atomically.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tracing::{error, info, warn, Instrument};

use crate::address::Normalizer;
use crate::config::Config;
use crate::envelope::Envelope;
use crate::graph::Ts;
use crate::message::{envelope_recipients, MessageMeta, Recipient};
use crate::outbound::dsn::{self, DsnInput};
use crate::outbound::relay::{Relay, RelayOutcome};
use crate::outbound::spool::{new_id, HeldMeta, Spool};
use crate::policy::Policy;
use crate::scorer::{ScoreError, ScoreInput, Scorer};
use crate::smtp::reply::Reply;
use crate::store::{GraphHandle, LearnEvent};
use crate::telemetry;
use crate::verdict::{Action, Verdict};

/// How long a held message is kept (until the hold workflow configures it).
pub const DEFAULT_HOLD_TTL: Ts = 7 * 86400;

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

/// A transaction taken out of the normal scoring path before scoring (e.g.
/// a reply to the hold-release address, which the hold module handles).
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
}

/// Everything a transaction needs, built from one configuration.
pub struct Pipeline {
    cfg: Arc<Config>,
    norm: Normalizer,
    policy: Policy,
    shared: Shared,
    spool: Spool,
    relay: Relay,
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
    /// hold spool under `server.data_dir`, sets up the next-hop transport.
    pub async fn build(cfg: Config, shared: Shared) -> Result<Pipeline, BuildError> {
        let mut errs = Vec::new();
        cfg.validate_into(&mut errs);
        if !errs.is_empty() {
            return Err(crate::config::ConfigErrors(errs).into());
        }
        let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::load_server_config(c, k).await?),
            _ => None,
        };
        let spool_dir = cfg.server.data_dir.join("spool");
        let spool = Spool::open(&spool_dir)
            .await
            .map_err(|e| BuildError::Spool(spool_dir.display().to_string(), e))?;
        let relay = Relay::new(&cfg.relay, &cfg.server.hostname)?;
        Ok(Pipeline {
            norm: Normalizer::new(cfg.addresses.clone()),
            policy: Policy::new(cfg.policy.clone()),
            networks: cfg.server.networks(),
            cfg: Arc::new(cfg),
            shared,
            spool,
            relay,
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

    pub fn spool(&self) -> &Spool {
        &self.spool
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

    /// The reply when scoring failed. Fail-closed: 451, the upstream retries.
    pub fn on_score_error(&self, queue_id: &str, e: &ScoreError) -> Reply {
        error!(queue_id, error = %e, "Scoring failed; message deferred (fail-closed).");
        Reply::new(
            451,
            "4.3.0",
            "Temporary failure scoring the message, try again later",
        )
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
            let (meta, recipients, tenant, scored, raw) = self.score(env.clone(), raw, now).await;
            let scores = match scored {
                Ok(s) => s,
                Err(e) => {
                    return (
                        self.on_score_error(&queue_id, &e),
                        "tempfail",
                        None,
                        String::new(),
                    )
                }
            };
            let verdict = self.policy.decide(scores);
            let score = Some(verdict.score);
            let tx = Transaction {
                ctx,
                queue_id: &queue_id,
                now,
                env,
                raw,
                meta,
                recipients,
                tenant,
            };
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
            next_hop = %next_hop,
            reply = %reply.summary(),
            latency_ms = latency.as_millis() as u64,
            "Message processed."
        );
        metrics::counter!(telemetry::MESSAGES, "action" => action).increment(1);
        metrics::histogram!(telemetry::MESSAGE_LATENCY).record(latency.as_secs_f64());
        reply
    }

    /// Parse and score off the async runtime.
    async fn score(
        &self,
        env: Envelope,
        raw: Vec<u8>,
        now: Ts,
    ) -> (
        MessageMeta,
        Vec<Recipient>,
        String,
        Result<crate::verdict::Scores, ScoreError>,
        Vec<u8>,
    ) {
        let norm = self.norm.clone();
        let shared = self.shared.clone();
        let job = tokio::task::spawn_blocking(move || {
            let meta = MessageMeta::parse(&raw, &norm);
            let recipients = envelope_recipients(&meta, &env.rcpt_to, &norm);
            let sender = meta
                .sender()
                .map(str::to_string)
                .or_else(|| norm.normalize(&env.mail_from).ok())
                .unwrap_or_default();
            let tenant = shared.graph.tenant_for(&sender);
            let scored = shared.graph.with_view(&tenant, |g| {
                shared.scorer.score(
                    g,
                    &ScoreInput {
                        meta: &meta,
                        recipients: &recipients,
                        now,
                    },
                )
            });
            (meta, recipients, tenant, scored, raw)
        });
        match job.await {
            Ok(r) => r,
            Err(e) => (
                MessageMeta::default(),
                Vec::new(),
                String::new(),
                Err(ScoreError::Model(format!("scoring task failed: {e}"))),
                Vec::new(),
            ),
        }
    }

    /// Act on a verdict. Returns the reply, the action name for logs and
    /// metrics, and the next hop's reply (if it was asked).
    pub async fn dispatch(
        &self,
        tx: Transaction<'_>,
        verdict: Verdict,
    ) -> (Reply, &'static str, String) {
        match verdict.action {
            Action::Deliver => self.deliver(tx, &verdict).await,
            // S/MIME call site: the encrypt module will transform the
            // message here before relaying. Until then it is relayed like
            // Deliver, with the header saying action=encrypt.
            Action::Encrypt => self.deliver(tx, &verdict).await,
            Action::Hold => self.hold(tx, verdict).await,
            Action::Reject => {
                let who = verdict
                    .recipients
                    .iter()
                    .max_by(|a, b| a.score.total_cmp(&b.score))
                    .map(|r| format!(" <{}>", r.address))
                    .unwrap_or_default();
                (
                    Reply::new(
                        550,
                        "5.7.1",
                        format!("Message refused: recipient{who} looks misaddressed"),
                    ),
                    "reject",
                    String::new(),
                )
            }
        }
    }

    async fn hold(&self, tx: Transaction<'_>, verdict: Verdict) -> (Reply, &'static str, String) {
        let meta = HeldMeta {
            id: tx.queue_id.to_string(),
            tenant: tx.tenant.clone(),
            envelope: tx.env.clone(),
            verdict,
            held_at: tx.now,
            expires_at: tx.now + DEFAULT_HOLD_TTL,
        };
        match self.spool.put(&meta, &tx.raw).await {
            Ok(()) => (
                Reply::new(250, "2.0.0", format!("Held as {}", tx.queue_id)),
                "hold",
                String::new(),
            ),
            Err(e) => {
                error!(queue_id = tx.queue_id, error = %e, "Could not hold message; deferred.");
                (
                    Reply::new(451, "4.3.0", "Temporary local problem, try again later"),
                    "tempfail",
                    String::new(),
                )
            }
        }
    }

    /// The trace and score headers prepended to a relayed message.
    pub fn trace_headers(&self, tx: &Transaction<'_>, verdict: &Verdict) -> Vec<u8> {
        let host = &self.cfg.server.hostname;
        let helo: String = tx
            .ctx
            .helo
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let date = mail_parser::DateTime::from_timestamp(tx.now).to_rfc822();
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {host} (misdirectd) with {} id {}",
            tx.ctx.peer, tx.ctx.protocol, tx.queue_id
        );
        if let [one] = tx.env.rcpt_to.as_slice() {
            h.push_str(&format!("\r\n\tfor <{one}>"));
        }
        h.push_str(&format!(
            "; {date}\r\nX-Misdirect-Score: {}\r\n",
            verdict.header_value()
        ));
        h.into_bytes()
    }

    async fn deliver(
        &self,
        tx: Transaction<'_>,
        verdict: &Verdict,
    ) -> (Reply, &'static str, String) {
        let action = if verdict.action == Action::Encrypt {
            "encrypt"
        } else {
            "deliver"
        };
        let mut out = self.trace_headers(&tx, verdict);
        out.extend_from_slice(&tx.raw);
        match self.relay.send_raw(&tx.env, &out).await {
            RelayOutcome::Delivered { reply } => {
                self.learn(&tx);
                (
                    Reply::new(250, "2.0.0", format!("Ok: queued as {}", tx.queue_id)),
                    action,
                    reply,
                )
            }
            RelayOutcome::Partial { reply, rejected } => {
                self.learn(&tx);
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "partial").increment(1);
                for f in &rejected {
                    warn!(queue_id = tx.queue_id, recipient = %f.address, code = f.code, text = %f.text, "Next hop refused recipient; DSN to sender.");
                }
                self.send_dsn(&tx, &rejected).await;
                (
                    Reply::new(
                        250,
                        "2.0.0",
                        format!(
                            "Ok: queued as {}; {} recipient(s) refused by next hop, DSN sent",
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
                warn!(queue_id = tx.queue_id, reason = %reason, "Next hop unavailable; message deferred.");
                (
                    Reply::new(451, "4.4.1", "Next hop unavailable, try again later"),
                    "tempfail",
                    reason,
                )
            }
        }
    }

    async fn send_dsn(
        &self,
        tx: &Transaction<'_>,
        rejected: &[crate::outbound::relay::RcptFailure],
    ) {
        if tx.env.mail_from.is_empty() {
            return;
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
            }
            other => {
                metrics::counter!(telemetry::NEXT_HOP_FAILURES, "kind" => "dsn").increment(1);
                error!(queue_id = tx.queue_id, outcome = ?other, "DSN could not be delivered.");
            }
        }
    }

    fn learn(&self, tx: &Transaction<'_>) {
        let ev = LearnEvent {
            tenant: tx.tenant.clone(),
            meta: tx.meta.clone(),
            recipients: tx.recipients.clone(),
            ts: tx.now,
        };
        if let Err(e) = self.shared.graph.learn(ev) {
            metrics::counter!(telemetry::LEARN_DROPPED).increment(1);
            warn!(queue_id = tx.queue_id, error = %e, "Learn event dropped.");
        }
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
            Ok(cfg) => Pipeline::build(cfg, self.shared.clone()).await,
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
