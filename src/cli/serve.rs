//! `misdirectd serve`: run the relay until SIGTERM; SIGHUP reloads.
//!
//! Besides the SMTP listener, serve runs the persistent association store
//! (`[store]`, keys from `[privacy] key_file`) with its learning task, the
//! hold expiry task (every `[hold] expiry_interval`), the DSN outbox task
//! (at start, then every `[relay] dsn_retry_interval`) and, when `[admin]
//! listen` is set, the admin API. SIGTERM stops them all: the store commits
//! what was learnt before the process exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminState};
use crate::hold::now;
use crate::privacy::Keys;

use crate::config::Config;
use crate::pipeline::{Pipeline, PipelineCell, Shared};
use crate::scorer::Scorer;
use crate::server::{self, ServerDeps};
use crate::store::GraphHandle;

/// Capacity of the learning queue (events beyond it are dropped and counted).
pub const LEARN_QUEUE: usize = 10_000;

/// How long shutdown waits for the store's last commit.
pub const STORE_FLUSH_WAIT: Duration = Duration::from_secs(30);

/// The scorer chosen at startup (`[model]`): the trained model unless
/// configured otherwise. Reads the model file, so it runs before the async
/// runtime starts; a model change needs a restart.
pub fn scorer_for(cfg: &Config) -> anyhow::Result<Arc<dyn Scorer>> {
    cfg.model.scorer().context("loading the model")
}

/// Load the configuration (`None`: the embedded defaults).
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(anyhow::Error::from),
        None => Ok(Config::default()),
    }
}

/// Entry point of `misdirectd serve`.
pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    // Before any thread allocates (see `memory`).
    crate::memory::limit_arenas();
    let cfg = load_config(config.as_deref())?;
    let _log = crate::telemetry::init_logging(&cfg.log)?;
    let scorer = scorer_for(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg, config, scorer))
}

/// Open the persistent association store named by the configuration.
pub async fn open_graph(
    cfg: &Config,
) -> anyhow::Result<(GraphHandle, tokio::task::JoinHandle<()>)> {
    let key_file = cfg.privacy.key_file.clone();
    let keys = tokio::task::spawn_blocking(move || Keys::load_or_create(&key_file))
        .await?
        .with_context(|| format!("key file {}", cfg.privacy.key_file.display()))?;
    GraphHandle::open(cfg, Arc::new(keys))
        .await
        .with_context(|| format!("association store {}", cfg.store.path.display()))
}

async fn serve(cfg: Config, path: Option<PathBuf>, scorer: Arc<dyn Scorer>) -> anyhow::Result<()> {
    crate::telemetry::init_metrics(&cfg.metrics)?;
    let (graph, learner) = open_graph(&cfg).await?;
    let shared = Shared { scorer, graph };
    let listen = cfg.server.listen.clone();
    let admin_cfg = cfg.admin.clone();
    let pipeline = Pipeline::build(cfg, shared).await?;
    let cell = Arc::new(PipelineCell::new(pipeline));
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin_listener = match admin_cfg.listen {
        Some(addr) => {
            let a = admin_cfg.clone();
            let token = tokio::task::spawn_blocking(move || a.load_token())
                .await?
                .map_err(anyhow::Error::msg)?;
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin API on {addr}"))?;
            info!(listen = %addr, "Admin API listening.");
            Some((l, token))
        }
        None => None,
    };
    let (trigger, shutdown) = crate::shutdown::channel();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let reload_cell = cell.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down."); break; }
                _ = int.recv() => { info!("SIGINT: shutting down."); break; }
                _ = hup.recv() => match &path {
                    Some(p) => {
                        info!(file = %p.display(), "SIGHUP: reloading configuration.");
                        // A refused reload is logged (as an error) inside and
                        // the old configuration stays.
                        if let Err(e) = reload_cell.reload(p).await {
                            debug!(error = %e, "Reload refused.");
                        }
                    }
                    None => info!("SIGHUP: no --config file given; nothing to reload."),
                },
            }
        }
        trigger.trigger();
    });
    let expiry = tokio::spawn(expiry_loop(cell.clone(), shutdown.clone()));
    let outbox = tokio::spawn(outbox_loop(cell.clone(), shutdown.clone()));
    let admin_task = admin_listener.map(|(l, token)| {
        let (hc, cc, fc) = (cell.clone(), cell.clone(), cell.clone());
        let state = AdminState::live(
            Arc::new(move || hc.current().hold().clone()),
            Arc::new(move |raw| {
                let p = cc.current();
                Box::pin(async move { p.check(raw).await })
            }),
            token,
        )
        .with_forget(Arc::new(move |addr| {
            let p = fc.current();
            Box::pin(async move { admin::forget_live(&p, &addr).await })
        }));
        let mut sd = shutdown.clone();
        tokio::spawn(admin::serve(l, state, async move { sd.recv().await }))
    });
    server::run(listener, ServerDeps { pipeline: cell }, shutdown).await;
    if let Some(t) = admin_task {
        if let Err(e) = t.await {
            warn!(error = %e, "Admin API task ended abnormally.");
        }
    }
    if let Err(e) = expiry.await {
        warn!(error = %e, "Expiry task ended abnormally.");
    }
    if let Err(e) = outbox.await {
        warn!(error = %e, "DSN outbox task ended abnormally.");
    }
    // Every graph handle is gone with the pipelines: the learning task
    // commits what is pending and ends.
    match tokio::time::timeout(STORE_FLUSH_WAIT, learner).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "Store task ended abnormally."),
        Err(_) => error!("Store task did not finish in time; the last learning may be lost."),
    }
    info!("Stopped.");
    Ok(())
}

/// Send the DSNs waiting in the outbox at start and then every `[relay]
/// dsn_retry_interval` (of the configuration in force) until shutdown.
async fn outbox_loop(cell: Arc<PipelineCell>, mut shutdown: crate::shutdown::Shutdown) {
    loop {
        let every = {
            let p = cell.current();
            let pass = tokio::select! {
                _ = shutdown.recv() => break,
                pass = p.retry_outbox(now()) => pass,
            };
            match pass {
                Ok(pass) if pass != Default::default() => info!(
                    sent = pass.sent,
                    refused = pass.refused,
                    expired = pass.expired,
                    waiting = pass.waiting,
                    "DSN outbox pass."
                ),
                Ok(_) => {}
                Err(e) => error!(error = %e, "DSN outbox pass failed."),
            }
            p.config().relay.dsn_retry_interval
        };
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Apply the hold expiry action every `[hold] expiry_interval` (of the
/// configuration in force) until shutdown.
async fn expiry_loop(cell: Arc<PipelineCell>, mut shutdown: crate::shutdown::Shutdown) {
    loop {
        let every = {
            let p = cell.current();
            match p.hold().expire(now()).await {
                Ok(done) if !done.is_empty() => info!(count = done.len(), "Held messages expired."),
                Ok(_) => {}
                Err(e) => error!(error = %e, "Expiry run failed."),
            }
            p.config().hold.expiry_interval
        };
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
