//! `misdirectd serve`: run the relay until SIGTERM; SIGHUP reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::classify::baseline::NeverSeenScorer;
use crate::config::Config;
use crate::pipeline::{Pipeline, PipelineCell, Shared};
use crate::scorer::Scorer;
use crate::server::{self, ServerDeps};
use crate::store::GraphHandle;

/// Capacity of the learning queue (events beyond it are dropped and counted).
pub const LEARN_QUEUE: usize = 10_000;

/// The scorer chosen at startup.
pub fn scorer_for(_cfg: &Config) -> Arc<dyn Scorer> {
    Arc::new(NeverSeenScorer)
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
    let cfg = load_config(config.as_deref())?;
    crate::telemetry::init_logging(&cfg.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg, config))
}

async fn serve(cfg: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    crate::telemetry::init_metrics(&cfg.metrics)?;
    let (graph, _learner) =
        GraphHandle::in_memory(cfg.graph.clone(), cfg.tenants.clone(), LEARN_QUEUE);
    let shared = Shared {
        scorer: scorer_for(&cfg),
        graph,
    };
    let listen = cfg.server.listen.clone();
    let pipeline = Pipeline::build(cfg, shared).await?;
    let cell = Arc::new(PipelineCell::new(pipeline));
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
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
                        // A refused reload is logged inside and the old one stays.
                        if reload_cell.reload(p).await.is_err() {
                            error!("Reload failed; still running the previous configuration.");
                        }
                    }
                    None => info!("SIGHUP: no --config file given; nothing to reload."),
                },
            }
        }
        trigger.trigger();
    });
    server::run(listener, ServerDeps { pipeline: cell }, shutdown).await;
    info!("Stopped.");
    Ok(())
}
