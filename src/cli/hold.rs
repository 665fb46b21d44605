//! `misdirectd hold list|show|release|discard|expire` (directly on the hold
//! spool of the configuration: the spool directory, or the shared
//! PostgreSQL store with `store.backend = "postgres"`) and
//! `misdirectd check FILE.eml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;

use crate::address::Normalizer;
use crate::config::Config;
use crate::envelope::Envelope;
use crate::graph::{Graph, LearnInput};
use crate::hold::notice::rfc5322_date;
use crate::hold::{
    now, Actor, Deliver, DeliverError, DeliverFuture, HoldService, SmtpDeliver, TokenKey,
};
use crate::message::MessageMeta;

use crate::pipeline::{check_message, CheckReport};
use crate::policy::Policy;
use crate::privacy::Keys;
use crate::scorer::ScoreInput;
use crate::store::pg_spool::HoldSpool;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/misdirect/misdirectd.toml";

/// `misdirectd hold ...`
#[derive(Subcommand, Debug)]
pub enum HoldCmd {
    /// List held messages, oldest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one held message: metadata, verdict and headers (never the body).
    Show { id: String },
    /// Deliver a held message to its recipients (via `[hold] next_hop`) and
    /// remove it from the spool.
    Release { id: String },
    /// Remove a held message without delivering it.
    Discard { id: String },
    /// Apply the expiry action to every hold whose time is up.
    Expire,
}

struct NoNextHop;

impl Deliver for NoNextHop {
    fn send<'a>(&'a self, _e: &'a Envelope, _r: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async {
            Err(DeliverError {
                permanent: false,
                message: "no [hold] next_hop configured".into(),
            })
        })
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The key file of the configuration (created when missing), loaded on the
/// blocking pool.
pub async fn load_keys(cfg: &Config) -> anyhow::Result<Arc<Keys>> {
    let kf = cfg.privacy.key_file.clone();
    let keys = tokio::task::spawn_blocking(move || Keys::load_or_create(&kf))
        .await?
        .with_context(|| format!("key file {}", cfg.privacy.key_file.display()))?;
    Ok(Arc::new(keys))
}

/// The configuration's hold spool: the directory (created when missing), or
/// the shared store's (schema migrated) with `store.backend = "postgres"`.
pub async fn open_spool(cfg: &Config, keys: Arc<Keys>) -> anyhow::Result<HoldSpool> {
    HoldSpool::open(cfg, keys)
        .await
        .map_err(|(at, e)| anyhow::Error::new(e).context(format!("hold spool {at}")))
}

async fn service(cfg: &Config) -> anyhow::Result<HoldService> {
    let keys = load_keys(cfg).await?;
    let spool = open_spool(cfg, keys).await?;
    let deliver: Arc<dyn Deliver> = match &cfg.hold.next_hop {
        Some(h) => Arc::new(SmtpDeliver::from_host_port(h).map_err(|e| anyhow!(e))?),
        None => Arc::new(NoNextHop),
    };
    // These commands never issue or check release tokens.
    let key = TokenKey::new(cfg.hold.load_secret().unwrap_or_default());
    Ok(HoldService::new(
        spool,
        key,
        cfg.hold.clone(),
        deliver,
        Normalizer::new(cfg.addresses.clone()),
        None,
    ))
}

/// Run `misdirectd hold ...`; output goes to `out`.
pub fn run_hold(config: &Path, cmd: HoldCmd, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    runtime()?.block_on(async {
        let svc = service(&cfg).await?;
        match cmd {
            HoldCmd::List { json } => {
                let list = svc.list().await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<28} {:<31} {:>6}  {:<8} sender -> recipients",
                        "ID", "EXPIRES", "SCORE", "TENANT"
                    )?;
                    for m in &list {
                        writeln!(
                            out,
                            "{:<28} {:<31} {:>6.3}  {:<8} {} -> {}",
                            m.id,
                            rfc5322_date(m.expires_at),
                            m.verdict.score,
                            m.tenant,
                            m.envelope.mail_from,
                            m.envelope.rcpt_to.join(", ")
                        )?;
                    }
                    writeln!(out, "{} held", list.len())?;
                }
            }
            HoldCmd::Show { id } => {
                let (meta, raw) = svc.show(&id).await?;
                let v = serde_json::json!({
                    "hold": meta,
                    "headers": crate::admin::header_section(&raw),
                    "size": raw.len(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            }
            HoldCmd::Release { id } => {
                let how = act(&cfg, svc, &id, true).await?;
                writeln!(out, "released {id}{how}")?;
            }
            HoldCmd::Discard { id } => {
                let how = act(&cfg, svc, &id, false).await?;
                writeln!(out, "discarded {id}{how}")?;
            }
            HoldCmd::Expire => {
                for e in svc.expire(now()).await? {
                    writeln!(out, "expired {} ({:?})", e.id, e.action)?;
                }
            }
        }
        Ok(())
    })
}

/// Release (`release`) or discard a hold so that the graph learns from it:
/// through the running daemon's admin API when `[admin] listen` is set and
/// the daemon answers (its live graph learns), else directly, with the
/// graph store opened here (refused while a daemon holds it: then the
/// message is still released or discarded, but not learnt, and the output
/// says so). Returns a note for the output line.
async fn act(cfg: &Config, svc: HoldService, id: &str, release: bool) -> anyhow::Result<String> {
    let verb = if release { "release" } else { "discard" };
    if let Some(addr) = cfg.admin.listen {
        let token = cfg.admin.load_token().map_err(|e| anyhow!(e))?;
        let path = format!("/holds/{id}/{verb}");
        match admin_request(addr, &token, "POST", &path, "application/json", b"").await {
            Ok((200, _)) => return Ok(format!(" (by the daemon at {addr})")),
            Ok((status, body)) => bail!(
                "admin API at {addr}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
            // Not running: act directly below.
            Err(AdminError::Connect(_)) => {}
            Err(AdminError::Other(e)) => return Err(e),
        }
    }
    let (svc, learner, note) = match crate::cli::serve::open_graph(cfg).await {
        Ok((graph, learner)) => (svc.with_graph(Some(graph)), Some(learner), String::new()),
        Err(e) => (
            svc,
            None,
            format!(
                " (not learnt: {e:#}; configure [admin] so that hold commands go through the running daemon)"
            ),
        ),
    };
    let r = if release {
        svc.release(id, Actor::Admin, now()).await
    } else {
        svc.discard(id, Actor::Admin).await
    };
    // Dropping the last graph handle makes the learner commit and stop.
    drop(svc);
    if let Some(l) = learner {
        l.await?;
    }
    r?;
    Ok(note)
}

fn eml_files(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if p.is_dir() {
        let mut v = Vec::new();
        for e in std::fs::read_dir(p)? {
            let q = e?.path();
            if q.is_dir() {
                v.extend(eml_files(&q)?);
            } else {
                v.push(q);
            }
        }
        v.sort();
        Ok(v)
    } else {
        Ok(vec![p.to_path_buf()])
    }
}

/// Run `misdirectd check FILE.eml` and print the verdict, score and reasons
/// (`json`: the report as JSON).
///
/// - with `history` (files or directories of messages): against a graph
///   learnt from them alone, offline (what-if);
/// - else with `[admin] listen` set: asks the running daemon
///   (`POST /check`), i.e. its live configuration and graph;
/// - else: opens the store from the configuration directly (refused while
///   a daemon holds it: then configure `[admin]`).
pub fn run_check(
    config: &Path,
    file: &Path,
    history: &[PathBuf],
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let raw = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let norm = Normalizer::new(cfg.addresses.clone());
    if MessageMeta::parse(&raw, &norm).sender().is_none() {
        bail!("{}: no usable From address", file.display());
    }
    let (report, source) = if !history.is_empty() {
        let (r, learnt) = check_with_history(&cfg, &raw, history)?;
        (r, format!("{learnt} history messages"))
    } else if let Some(addr) = cfg.admin.listen {
        let token = cfg.admin.load_token().map_err(|e| anyhow!(e))?;
        let r = runtime()?.block_on(check_remote(addr, &token, &raw))?;
        (r, format!("daemon at {addr}"))
    } else {
        let r = runtime()?.block_on(async {
            let (graph, learner) = crate::cli::serve::open_graph(&cfg).await.context(
                "opening the store (if the daemon is running, configure [admin] so that check asks it)",
            )?;
            let shared = crate::pipeline::Shared {
                scorer: crate::cli::serve::scorer_for(&cfg)?,
                graph,
            };
            let r = check_message(
                norm.clone(),
                shared,
                Policy::new(cfg.policy.clone()),
                raw.clone(),
                now(),
            )
            .await;
            learner.abort();
            Ok::<_, anyhow::Error>(r)
        })?;
        (r, format!("store {}", cfg.store.path.display()))
    };
    print_report(&report, &source, json, out)
}

/// Print a [`CheckReport`].
pub fn print_report(
    report: &CheckReport,
    source: &str,
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        return Ok(());
    }
    let Some(verdict) = &report.verdict else {
        writeln!(
            out,
            "scoring failed ({})",
            report.score_error.as_deref().unwrap_or("unknown error")
        )?;
        return Ok(());
    };
    writeln!(out, "action: {}", verdict.action)?;
    writeln!(out, "score: {:.4}", verdict.score)?;
    writeln!(out, "model: {}", verdict.model)?;
    writeln!(
        out,
        "sender: {} (tenant {}, {source})",
        report.sender, report.tenant
    )?;
    if let Some(n) = &verdict.note {
        writeln!(out, "note: {n}")?;
    }
    if let Some(r) = &report.reply {
        writeln!(out, "reply: {r}")?;
    }
    for r in &verdict.recipients {
        writeln!(out, "  {} ({}) {:.4}", r.address, r.field.as_str(), r.score)?;
        for reason in &r.reasons {
            writeln!(out, "      {reason}")?;
        }
    }
    Ok(())
}

/// Why an admin API request failed.
enum AdminError {
    /// Nothing listens there (the daemon is not running).
    Connect(std::io::Error),
    Other(anyhow::Error),
}

/// One request to the daemon's admin API; the status and body.
async fn admin_request(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), AdminError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(AdminError::Connect)?;
    let other = |e: std::io::Error| AdminError::Other(anyhow!("admin API at {addr}: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.map_err(other)?;
    s.write_all(body).await.map_err(other)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(other)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| AdminError::Other(anyhow!("admin API at {addr}: malformed response")))?;
    let status_line = String::from_utf8_lossy(&resp[..split]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, resp[split + 4..].to_vec()))
}

/// Ask the daemon's admin API (`POST /check`).
async fn check_remote(
    addr: std::net::SocketAddr,
    token: &str,
    raw: &[u8],
) -> anyhow::Result<CheckReport> {
    let (status, body) = match admin_request(addr, token, "POST", "/check", "message/rfc822", raw)
        .await
    {
        Ok(r) => r,
        Err(AdminError::Connect(e)) => {
            return Err(anyhow!(e).context(format!("admin API at {addr} (is the daemon running?)")))
        }
        Err(AdminError::Other(e)) => return Err(e),
    };
    if status != 200 {
        bail!(
            "admin API at {addr}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("admin API response")
}

/// Score against a graph learnt from the `history` messages only; returns
/// the report and how many messages were learnt.
fn check_with_history(
    cfg: &Config,
    raw: &[u8],
    history: &[PathBuf],
) -> anyhow::Result<(CheckReport, usize)> {
    let norm = Normalizer::new(cfg.addresses.clone());
    let meta = MessageMeta::parse(raw, &norm);
    let sender = meta.sender().map(str::to_string).unwrap_or_default();
    let tenant = cfg.tenants.tenant_for(&sender).to_string();
    let mut graph = Graph::new(cfg.graph.clone());
    let mut learnt = 0usize;
    for h in history {
        for f in eml_files(h)? {
            let m = MessageMeta::parse(&std::fs::read(&f)?, &norm);
            if m.sender()
                .is_some_and(|s| cfg.tenants.tenant_for(s) != tenant)
            {
                continue; // other tenants' mail never informs this one
            }
            if let Some(input) = LearnInput::from_meta(&m, &m.recipients, m.date.unwrap_or(0)) {
                graph.learn(&input);
                learnt += 1;
            }
        }
    }
    let policy = Policy::new(cfg.policy.clone());
    let scorer = cfg.model.scorer()?;
    let input = ScoreInput {
        meta: &meta,
        recipients: &meta.recipients,
        now: meta.date.unwrap_or_else(now),
    };
    let report = CheckReport::from_scored(sender, tenant, &policy, scorer.score(&graph, &input));
    Ok((report, learnt))
}
