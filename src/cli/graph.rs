//! Graph commands: `import`, `replay`, `graph stats|show|purge`, `forget`,
//! `export`, `rotate-key`.
//!
//! Commands that touch the store open it directly, so they need the daemon
//! stopped (the store refuses a second process with a clear error).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::address::Normalizer;
use crate::config::Config;
use crate::graph::{Graph, GraphView};
use crate::import::{self, Reader};
use crate::policy::Policy;
use crate::privacy::Keys;
use crate::replay::{Replay, ReplaySummary};
use crate::scorer::Scorer;
use crate::store::pg_spool::{Erased, ERASE_WAIT};
use crate::store::{self, Batch, GraphHandle, Store};

/// `--config FILE`, shared by the graph commands.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// Configuration file (default: built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(p) => Ok(Config::load(p)?),
            None => Ok(Config::default()),
        }
    }
}

/// `misdirectd import`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Sender for messages without a usable From (a mailbox's owner).
    #[arg(long)]
    pub owner: Option<String>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// mbox files, maildir folders, .eml files, corpus .jsonl(.gz) files, or
    /// directories holding them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `misdirectd replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Archives learnt from first (in Date order), without printing.
    #[arg(long)]
    pub history: Vec<PathBuf>,
    /// Score only; never learn from the replayed messages.
    #[arg(long)]
    pub no_learn: bool,
    /// Sender for messages without a usable From.
    #[arg(long)]
    pub owner: Option<String>,
    /// Archives to replay.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `misdirectd graph ...`.
#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    #[command(subcommand)]
    pub cmd: GraphCmd,
}

#[derive(Subcommand, Debug, Clone)]
pub enum GraphCmd {
    /// Sizes of every tenant's graph and of the store (JSON).
    Stats(ConfigArg),
    /// What the graph knows about one address, per tenant.
    Show(AddressArgs),
    /// Run the retention job once now (`privacy.retention_days`).
    Purge(ConfigArg),
    /// Fill an empty store with a synthetic organisation of about `--edges`
    /// sender-recipient edges (addresses `p<N>@corp.example` and
    /// `x<N>@partner<M>.example`), for load tests and for sizing a machine.
    Synth(SynthArgs),
}

/// `misdirectd graph synth`.
#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Approximate number of sender-recipient edges.
    #[arg(long)]
    pub edges: usize,
    /// Tenant to fill.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Seed of the generator (the same seed gives the same graph).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// An address argument plus `--config`.
#[derive(Args, Debug, Clone)]
pub struct AddressArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    pub address: String,
}

/// Write to stdout; a closed pipe ends the command with an error instead of
/// a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _already_set = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// Key file and store of a configuration, loaded.
pub struct Opened {
    pub cfg: Config,
    pub keys: Arc<Keys>,
    pub store: Store,
    pub graphs: HashMap<String, Graph>,
}

/// Open the key file (created when missing) and the store, and load it.
pub fn open(cfg: Config) -> anyhow::Result<Opened> {
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file)?);
    let store = Store::open(&cfg, keys.clone())?;
    let graphs = store.load(&cfg.graph)?;
    Ok(Opened {
        cfg,
        keys,
        store,
        graphs,
    })
}

fn normalise_arg(cfg: &Config, addr: &str) -> anyhow::Result<String> {
    Normalizer::new(cfg.addresses.clone())
        .normalize(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("address argument")
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    pub messages: u64,
    pub bad: u64,
    pub bad_by_reason: std::collections::BTreeMap<String, u64>,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// Commits to the embedded store; absent for the shared store, whose
    /// learning task batches on its own schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commits: Option<u64>,
}

/// `misdirectd import`: learn from archives into the store. Learning is
/// committed every `store.batch_interval`.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    init_logs();
    let cfg = args.config.load()?;
    let norm = Normalizer::new(cfg.addresses.clone());
    let owner = match &args.owner {
        Some(o) => Some(normalise_arg(&cfg, o)?),
        None => None,
    };
    let mut sources = Vec::new();
    for p in &args.paths {
        sources.extend(import::classify(p)?);
    }
    if cfg.store.backend == crate::config::store::StoreBackend::Postgres {
        return import_shared(cfg, &norm, owner, &sources, args.quiet);
    }
    let mut o = open(cfg)?;
    let bar = progress_bar(&sources, args.quiet);
    let started = Instant::now();
    let interval = o.cfg.store.batch_interval;
    let mut last_commit = Instant::now();
    let mut pending: HashMap<String, std::collections::HashSet<crate::graph::memory::RecordKey>> =
        HashMap::new();
    let mut commits = 0u64;
    let mut reader = Reader::new(&norm, owner);
    let mut failure: Option<anyhow::Error> = None;
    for src in &sources {
        let Opened {
            cfg, store, graphs, ..
        } = &mut o;
        let mut on_msg = |m: import::ImportedMessage, size: u64| {
            bar.inc(size);
            let Some(sender) = m.meta.sender() else {
                return;
            };
            let tenant = cfg.tenants.tenant_for(sender).to_string();
            let g = graphs
                .entry(tenant.clone())
                .or_insert_with(|| Graph::new(cfg.graph.clone()));
            if let Some(input) =
                crate::graph::LearnInput::from_meta(&m.meta, &m.meta.recipients, m.ts)
            {
                g.learn(&input);
                g.touched_by(&input, pending.entry(tenant).or_default());
            }
            if last_commit.elapsed() >= interval && failure.is_none() {
                if let Err(e) = commit_pending(store, graphs, &mut pending) {
                    failure = Some(e);
                }
                commits += 1;
                last_commit = Instant::now();
            }
        };
        reader.read(src, &mut on_msg)?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        bar.set_message(format!("{} messages", reader.counts.messages));
    }
    commit_pending(&o.store, &o.graphs, &mut pending)?;
    commits += 1;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let counts = reader.counts;
    let summary = ImportSummary {
        messages: counts.messages,
        bad: counts.bad_total(),
        bad_by_reason: counts.bad.clone(),
        seconds: secs,
        messages_per_second: counts.messages as f64 / secs.max(1e-9),
        commits: Some(commits),
    };
    emit(&serde_json::to_string(&summary)?)?;
    Ok(())
}

/// The import progress bar over the sources' bytes (hidden with `quiet`).
fn progress_bar(sources: &[import::Source], quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(import::total_bytes(sources));
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// `import` into the shared PostgreSQL store: every message goes through
/// the same learning path as the daemon's (a [`GraphHandle`] on the store,
/// batched into the shared learning log every `store.batch_interval`).
/// Fails when learning could not all be written (database unreachable).
fn import_shared(
    cfg: Config,
    norm: &Normalizer,
    owner: Option<String>,
    sources: &[import::Source],
    quiet: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file)?);
    let (handle, learner) = rt.block_on(GraphHandle::open(&cfg, keys))?;
    let bar = progress_bar(sources, quiet);
    let started = Instant::now();
    let mut reader = Reader::new(norm, owner);
    let mut closed = false;
    for src in sources {
        let mut on_msg = |m: import::ImportedMessage, size: u64| {
            bar.inc(size);
            let Some(sender) = m.meta.sender() else {
                return;
            };
            let ev = crate::store::LearnEvent {
                tenant: handle.tenant_for(sender),
                recipients: m.meta.recipients.clone(),
                meta: m.meta,
                ts: m.ts,
                kind: crate::store::LearnKind::Delivered,
            };
            if !closed && rt.block_on(handle.learn_wait(ev)).is_err() {
                closed = true;
            }
        };
        reader.read(src, &mut on_msg)?;
        bar.set_message(format!("{} messages", reader.counts.messages));
    }
    bar.finish_and_clear();
    let shared = handle.shared_store().cloned();
    drop(handle);
    rt.block_on(learner)?;
    if closed {
        anyhow::bail!("the learning task stopped during the import");
    }
    if let Some(pg) = shared {
        let (left, dropped) = (pg.queued_bytes(), pg.dropped_batches());
        if left > 0 || dropped > 0 {
            anyhow::bail!(
                "the shared store was unreachable: {left} bytes of learning not written, {dropped} batches dropped"
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let counts = reader.counts;
    emit(&serde_json::to_string(&ImportSummary {
        messages: counts.messages,
        bad: counts.bad_total(),
        bad_by_reason: counts.bad.clone(),
        seconds: secs,
        messages_per_second: counts.messages as f64 / secs.max(1e-9),
        commits: None,
    })?)?;
    Ok(())
}

fn commit_pending(
    store: &Store,
    graphs: &HashMap<String, Graph>,
    pending: &mut HashMap<String, std::collections::HashSet<crate::graph::memory::RecordKey>>,
) -> anyhow::Result<()> {
    let mut batch = Batch::default();
    for (t, keys) in pending.iter() {
        if let Some(g) = graphs.get(t) {
            store.encode(&mut batch, t, g, keys.iter().copied());
        }
    }
    store.commit(batch)?;
    pending.clear();
    Ok(())
}

/// `misdirectd replay`, with the scorer to use (the baseline by default).
pub fn replay_with(args: ReplayArgs, scorer: Arc<dyn Scorer>) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    let norm = Normalizer::new(cfg.addresses.clone());
    let owner = match &args.owner {
        Some(o) => Some(normalise_arg(&cfg, o)?),
        None => None,
    };
    let mut r = Replay {
        graphs: HashMap::new(),
        graph_cfg: cfg.graph.clone(),
        tenants: cfg.tenants.clone(),
        scorer,
        policy: Policy::new(cfg.policy.clone()),
        learn: !args.no_learn,
    };
    let mut summary = ReplaySummary::default();
    if !args.history.is_empty() {
        let (hist, counts) = import::read_all(&args.history, &norm, owner.clone())?;
        summary.history = r.history(hist);
        merge_counts(&mut summary.read, counts);
    }
    let (msgs, counts) = import::read_all(&args.paths, &norm, owner)?;
    merge_counts(&mut summary.read, counts);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    r.run(msgs, &mut out, &mut summary)?;
    out.flush()?;
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn merge_counts(into: &mut import::ReadCounts, c: import::ReadCounts) {
    into.messages += c.messages;
    for (k, v) in c.bad {
        *into.bad.entry(k).or_default() += v;
    }
}

/// `misdirectd replay` with the configured scorer (`[model]`).
pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let scorer = args.config.load()?.model.scorer()?;
    replay_with(args, scorer)
}

/// `misdirectd graph ...`.
pub fn graph(args: GraphArgs) -> anyhow::Result<()> {
    match args.cmd {
        GraphCmd::Stats(c) => stats(&c),
        GraphCmd::Show(a) => show(&a),
        GraphCmd::Purge(c) => purge(&c),
        GraphCmd::Synth(a) => synth(&a),
    }
}

fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    init_logs();
    let mut o = open(a.config.load()?)?;
    if o.graphs.get(&a.tenant).is_some_and(|g| g.edge_count() > 0) {
        anyhow::bail!(
            "tenant {} already has a graph in this store: synth only fills an empty one",
            a.tenant
        );
    }
    let started = Instant::now();
    let org =
        crate::graph::synth::Org::new(crate::graph::synth::Org::people_for_edges(a.edges), a.seed);
    let mut messages = 0u64;
    {
        let Opened { cfg, graphs, .. } = &mut o;
        let g = graphs
            .entry(a.tenant.clone())
            .or_insert_with(|| Graph::new(cfg.graph.clone()));
        org.for_each_message(a.seed, |sender, rcpts, ts| {
            g.learn(&crate::graph::LearnInput {
                sender,
                sender_name: None,
                recipients: rcpts,
                message_id: None,
                subject: None,
                attachments: Vec::new(),
                ts,
            });
            messages += 1;
        });
    }
    // The store was empty for this tenant: write the whole graph once, in
    // one transaction, into a fresh file that replaces it.
    let store = o.store.rewrite(&o.cfg, &o.graphs)?;
    o.store = store;
    let g = o.graphs.get(&a.tenant);
    emit(&serde_json::to_string(&serde_json::json!({
        "tenant": a.tenant,
        "messages": messages,
        "edges": g.map(|g| g.edge_count()).unwrap_or(0),
        "co_recipient_pairs": g.map(|g| g.co_count_total()).unwrap_or(0),
        "addresses": g.map(|g| g.address_count()).unwrap_or(0),
        "seconds": started.elapsed().as_secs_f64(),
    }))?)?;
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn stats(c: &ConfigArg) -> anyhow::Result<()> {
    let o = open(c.load()?)?;
    let mut tenants: Vec<_> = o.graphs.iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(b.0));
    let per: Vec<_> = tenants
        .iter()
        .map(|(t, g)| {
            serde_json::json!({
                "tenant": t,
                "addresses": g.live_address_count(),
                "edges": g.edge_count(),
                "co_recipient_pairs": g.co_count_total(),
                "domains": g.domain_count(),
                "threads": g.thread_count(),
                "subjects": g.subject_count(),
                "attachment_keys": g.attachment_count(),
                "memory_bytes_estimate": g.approx_bytes(),
            })
        })
        .collect();
    let out = serde_json::json!({
        "store": o.cfg.store.path.display().to_string(),
        "store_file_bytes": file_size(&o.cfg.store.path),
        "tenants": per,
    });
    emit(&serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

fn show(a: &AddressArgs) -> anyhow::Result<()> {
    let o = open(a.config.load()?)?;
    let addr = normalise_arg(&o.cfg, &a.address)?;
    let mut tenants: Vec<_> = o.graphs.iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(b.0));
    let mut found = false;
    let mut text = String::new();
    use std::fmt::Write as _;
    for (t, g) in tenants {
        if g.id(&addr).is_none() {
            continue;
        }
        found = true;
        let s = g.sender(&addr);
        let f = g.address(&addr);
        writeln!(text, "tenant {t}: {addr}")?;
        writeln!(
            text,
            "  sent {} messages to {} contacts; received {} messages from {} senders",
            s.messages, s.contacts, f.received, f.senders
        )?;
        let names = g.display_names(&addr);
        if !names.is_empty() {
            writeln!(text, "  display names: {}", names.join(" | "))?;
        }
        let mut contacts = Vec::new();
        g.for_each_contact(&addr, &mut |c, e| {
            contacts.push((c.to_string(), *e));
        });
        contacts.sort_by(|x, y| y.1.weight.total_cmp(&x.1.weight));
        for (c, e) in contacts.iter().take(20) {
            writeln!(
                text,
                "  -> {c}: to {} cc {} bcc {}, last {}, weight {:.2}",
                e.to,
                e.cc,
                e.bcc,
                crate::graph::memory::format_ts(e.last),
                e.weight
            )?;
        }
        if contacts.len() > 20 {
            writeln!(text, "  ... {} more contacts", contacts.len() - 20)?;
        }
    }
    if !found {
        anyhow::bail!("{addr}: not in the graph");
    }
    emit(text.trim_end())
}

fn purge(c: &ConfigArg) -> anyhow::Result<()> {
    init_logs();
    let mut o = open(c.load()?)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let Some(cutoff) = store::retention_cutoff(o.cfg.privacy.retention_days, now) else {
        emit("{\"retention\":\"off\"}")?;
        return Ok(());
    };
    let (counts, batch) = store::purge_all(&mut o.graphs, Some(&o.store), cutoff);
    o.store.commit(batch)?;
    let removed = counts
        .iter()
        .any(|(_, c)| c.edges + c.co_pairs + c.threads + c.addresses > 0);
    let Opened {
        cfg, store, graphs, ..
    } = o;
    if removed {
        // Drop the freed pages that still held the purged records.
        store.rewrite(&cfg, &graphs)?;
    }
    store::log_purge(cutoff, &counts);
    let out: Vec<_> = counts
        .iter()
        .map(|(t, c)| serde_json::json!({"tenant": t, "removed": c}))
        .collect();
    emit(
        &serde_json::json!({"cutoff": crate::graph::memory::format_ts(cutoff), "tenants": out})
            .to_string(),
    )
}

/// A held message and the role an address has in it.
type HeldRole = (crate::outbound::spool::HeldMeta, &'static str);

/// Held messages in the hold spool (directory, or the shared store's with
/// `store.backend = "postgres"`) whose envelope sender or a recipient is
/// `addr` (normalised), with the role it has in each. Nothing when the
/// spool directory does not exist.
fn held_involving(
    cfg: &Config,
    addr: &str,
) -> anyhow::Result<(Option<crate::store::pg_spool::HoldSpool>, Vec<HeldRole>)> {
    let dir = cfg.hold_spool_dir();
    if cfg.store.backend == crate::config::store::StoreBackend::Embedded && !dir.is_dir() {
        return Ok((None, Vec::new()));
    }
    let norm = Normalizer::new(cfg.addresses.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let keys = crate::cli::hold::load_keys(cfg).await?;
        let spool = crate::cli::hold::open_spool(cfg, keys).await?;
        let out = spool.involving(&norm, addr).await?;
        Ok((Some(spool), out))
    })
}

/// Held messages an erasure removed, and those a relay was still
/// releasing or discarding after [`ERASE_WAIT`].
#[derive(Default)]
struct HeldErased {
    removed: usize,
    busy: usize,
}

impl HeldErased {
    /// An error when some held message could not be erased.
    fn check(&self) -> anyhow::Result<()> {
        if self.busy > 0 {
            anyhow::bail!(
                "{} held message(s) involving the address were still being released or discarded by a relay after {}s; run `misdirectd forget` again",
                self.busy,
                ERASE_WAIT.as_secs()
            );
        }
        Ok(())
    }
}

/// Remove the held messages involving `addr` durably, each under a claim
/// (see [`HoldSpool::erase`](crate::store::pg_spool::HoldSpool::erase)).
fn forget_held(cfg: &Config, addr: &str) -> anyhow::Result<HeldErased> {
    let (spool, held) = held_involving(cfg, addr)?;
    let Some(spool) = spool else {
        return Ok(HeldErased::default());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = HeldErased::default();
        for (m, _) in &held {
            match spool.erase(&m.id, ERASE_WAIT).await? {
                Erased::Removed => out.removed += 1,
                Erased::Gone => {}
                Erased::Busy => out.busy += 1,
            }
        }
        Ok(out)
    })
}

/// Remove the queued DSNs to or naming `addr` from this relay's outbox
/// (`<server.data_dir>/outbox`; none when it does not exist).
fn forget_dsns(cfg: &Config, addr: &str) -> anyhow::Result<usize> {
    let dir = cfg.server.data_dir.join("outbox");
    if !dir.is_dir() {
        return Ok(0);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let keys = crate::cli::hold::load_keys(cfg).await?;
        let outbox = crate::outbound::outbox::Outbox::open(dir, keys).await?;
        Ok(outbox.erase_naming(addr).await?)
    })
}

/// `misdirectd forget ADDRESS`: erase the address from every tenant and
/// every held message to or from it, durably. Prints what was removed
/// (counts only) and logs an audit line that does not name the address.
pub fn forget(a: AddressArgs) -> anyhow::Result<()> {
    init_logs();
    let cfg = a.config.load()?;
    if cfg.store.backend == crate::config::store::StoreBackend::Postgres {
        let addr = normalise_arg(&cfg, &a.address)?;
        let held = forget_held(&cfg, &addr)?;
        let dsns = forget_dsns(&cfg, &addr)?;
        let r = crate::cli::postgres::forget(cfg, &addr)?;
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("held".into(), held.removed.into());
            o.insert("dsns".into(), dsns.into());
        }
        emit(&serde_json::to_string(&v)?)?;
        return held.check();
    }
    let mut o = open(cfg)?;
    let addr = normalise_arg(&o.cfg, &a.address)?;
    let (report, batch) = store::forget_all(&mut o.graphs, Some(&o.store), &addr);
    o.store.commit(batch)?;
    // The commit above is the durable erasure; the rewrite also drops the
    // freed pages that still held the erased records.
    if report.tenants > 0 {
        o.store.rewrite(&o.cfg, &o.graphs)?;
    }
    let held = forget_held(&o.cfg, &addr)?;
    let dsns = forget_dsns(&o.cfg, &addr)?;
    tracing::info!(
        target: "audit",
        tenants = report.tenants,
        records = report.records,
        held = held.removed,
        dsns,
        "Erasure of one address performed."
    );
    let mut v = serde_json::to_value(&report)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("held".into(), held.removed.into());
        obj.insert("dsns".into(), dsns.into());
    }
    emit(&serde_json::to_string(&v)?)?;
    held.check()
}

/// `misdirectd export ADDRESS`: everything stored about the address, per
/// tenant, as readable JSON.
pub fn export(a: AddressArgs) -> anyhow::Result<()> {
    let cfg = a.config.load()?;
    let graphs = if cfg.store.backend == crate::config::store::StoreBackend::Postgres {
        crate::cli::postgres::load_graphs(&cfg)?
    } else {
        open(cfg.clone())?.graphs
    };
    let addr = normalise_arg(&cfg, &a.address)?;
    let mut tenants: Vec<_> = graphs.iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(b.0));
    let per: Vec<_> = tenants
        .into_iter()
        .filter_map(|(t, g)| {
            g.export(&addr)
                .map(|v| serde_json::json!({"tenant": t, "data": v}))
        })
        .collect();
    let held: Vec<_> = held_involving(&cfg, &addr)?
        .1
        .into_iter()
        .map(|(m, role)| {
            serde_json::json!({
                "id": m.id,
                "tenant": m.tenant,
                "role": role,
                "held_at": crate::graph::memory::format_ts(m.held_at),
                "expires_at": crate::graph::memory::format_ts(m.expires_at),
                "action": m.verdict.action,
                "score": m.verdict.score,
            })
        })
        .collect();
    let out = serde_json::json!({
        "address": addr,
        "exported_at": crate::graph::memory::format_ts(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        ),
        "tenants": per,
        "held": held,
    });
    emit(&serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

/// `misdirectd rotate-key`: add a new key to the key file and rewrite the
/// store under it (new pseudonyms, resealed records).
pub fn rotate_key(c: ConfigArg) -> anyhow::Result<()> {
    init_logs();
    let cfg = c.load()?;
    let o = open(cfg.clone())?;
    let (keys, id) = Keys::rotate(&cfg.privacy.key_file)?;
    drop(o.store);
    let store = Store::open(&cfg, Arc::new(keys))?;
    let store = store.rekey(&cfg, &o.graphs)?;
    drop(store);
    tracing::info!(
        key_id = id,
        "Key rotated; graph store rewritten under the new key."
    );
    emit(&format!("{{\"key_id\":{id}}}"))?;
    Ok(())
}
