//! `misdirectd hold list|show|release|discard|expire` (directly on the spool
//! directory from the configuration) and `misdirectd check FILE.eml`.

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
use crate::outbound::spool::Spool;
use crate::policy::{Context, FailAction, Policy};
use crate::scorer::ScoreInput;

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

async fn service(cfg: &Config) -> anyhow::Result<HoldService> {
    let spool = Spool::open(&cfg.hold.spool_dir)
        .await
        .with_context(|| format!("hold spool {}", cfg.hold.spool_dir.display()))?;
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
                svc.release(&id, Actor::Admin, now()).await?;
                writeln!(out, "released {id}")?;
            }
            HoldCmd::Discard { id } => {
                svc.discard(&id, Actor::Admin).await?;
                writeln!(out, "discarded {id}")?;
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

/// Run `misdirectd check FILE.eml`: score one message against the policy in
/// `config` and a graph learnt from the `history` messages (files or
/// directories of messages) with the never-seen baseline scorer, and print
/// the verdict, score and reasons (`json`: the verdict as JSON).
pub fn run_check(
    config: &Path,
    file: &Path,
    history: &[PathBuf],
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let norm = Normalizer::new(cfg.addresses.clone());
    let raw = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let meta = MessageMeta::parse(&raw, &norm);
    let Some(sender) = meta.sender().map(str::to_string) else {
        bail!("{}: no usable From address", file.display());
    };
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
    let scores = match scorer.score(&graph, &input) {
        Ok(s) => s,
        Err(e) => {
            match policy.on_score_error(&e) {
                FailAction::Deliver { header } => writeln!(
                    out,
                    "scoring failed ({e}): deliver with {}: {}",
                    header.0, header.1
                )?,
                FailAction::TempFail { reply } => writeln!(out, "scoring failed ({e}): {reply}")?,
            }
            return Ok(());
        }
    };
    let verdict = policy.decide_for(
        &Context {
            tenant: &tenant,
            sender: &sender,
        },
        scores,
    );
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&verdict)?)?;
        return Ok(());
    }
    writeln!(out, "action: {}", verdict.action)?;
    writeln!(out, "score: {:.4}", verdict.score)?;
    writeln!(out, "model: {}", verdict.model)?;
    writeln!(
        out,
        "sender: {sender} (tenant {tenant}, {learnt} history messages)"
    )?;
    if let Some(n) = &verdict.note {
        writeln!(out, "note: {n}")?;
    }
    if verdict.action == crate::verdict::Action::Reject {
        writeln!(out, "reply: {}", Policy::reject_reply(&verdict))?;
    }
    for r in &verdict.recipients {
        writeln!(out, "  {} ({}) {:.4}", r.address, r.field.as_str(), r.score)?;
        for reason in &r.reasons {
            writeln!(out, "      {reason}")?;
        }
    }
    Ok(())
}
