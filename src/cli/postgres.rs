//! Commands on the shared PostgreSQL store: `migrate --from embedded --to
//! postgres`, and `forget` / `export` when `store.backend = "postgres"`
//! (these work while relays run: the relays reload after an erasure).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::cli::graph::ConfigArg;
use crate::config::Config;
use crate::graph::Graph;
use crate::outbound::spool::Spool;
use crate::privacy::Keys;
use crate::store::pg_spool::PgSpool;
use crate::store::postgres;
use crate::store::Store;

/// A store backend named on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendArg {
    Embedded,
    Postgres,
}

/// `misdirectd migrate`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Store to read (`embedded`: `store.path` and the spool under
    /// `server.data_dir`).
    #[arg(long, value_enum)]
    pub from: BackendArg,
    /// Store to write (`postgres`: `store.url`; it must hold no graph yet).
    #[arg(long, value_enum)]
    pub to: BackendArg,
}

/// What a migration moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateSummary {
    pub tenants: usize,
    pub edges: usize,
    pub addresses: usize,
    pub held: usize,
}

async fn load_keys(cfg: &Config) -> anyhow::Result<Arc<Keys>> {
    let kf = cfg.privacy.key_file.clone();
    let keys = tokio::task::spawn_blocking(move || Keys::load_or_create(&kf))
        .await
        .context("key file task")??;
    Ok(Arc::new(keys))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `misdirectd migrate --from embedded --to postgres`.
pub fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    if a.from != BackendArg::Embedded || a.to != BackendArg::Postgres {
        anyhow::bail!("only --from embedded --to postgres is supported");
    }
    let cfg = a.config.load()?;
    let summary = runtime()?.block_on(migrate_embedded_to_postgres(&cfg))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Copy the embedded graph (`store.path`) and the directory spool's held
/// messages (`<server.data_dir>/spool`) into PostgreSQL (`store.url`).
/// The target must hold no graph; held messages are kept in the directory
/// too (remove it once the relays run on the shared store).
pub async fn migrate_embedded_to_postgres(cfg: &Config) -> anyhow::Result<MigrateSummary> {
    let keys = load_keys(cfg).await?;
    let path = cfg.store.path.clone();
    let gcfg = cfg.graph.clone();
    let k = keys.clone();
    let graphs: HashMap<String, Graph> = tokio::task::spawn_blocking(move || {
        let store = Store::open_embedded(&path, k)?;
        store.load(&gcfg)
    })
    .await
    .context("embedded store task")?
    .with_context(|| format!("reading the embedded store {}", cfg.store.path.display()))?;
    let pool = Arc::new(postgres::pool_for(&cfg.store).await?);
    postgres::migrate_schema(&pool).await?;
    postgres::key_id(&pool, &keys).await?;
    let tenants = postgres::write_graphs(&pool, &keys, &graphs).await?;
    let mut held = 0;
    let spool_dir = cfg.server.data_dir.join("spool");
    if tokio::fs::try_exists(&spool_dir).await.unwrap_or(false) {
        let dir = Spool::open(&spool_dir, keys.clone()).await?;
        let pg = PgSpool::new(pool.clone(), keys.clone()).await?;
        for m in dir.list().await? {
            if let Some((meta, raw)) = dir.get(&m.id).await? {
                pg.put(&meta, &raw).await?;
                held += 1;
            }
        }
    }
    let summary = MigrateSummary {
        tenants,
        edges: graphs.values().map(Graph::edge_count).sum(),
        addresses: graphs.values().map(Graph::live_address_count).sum(),
        held,
    };
    tracing::info!(
        tenants = summary.tenants,
        edges = summary.edges,
        held = summary.held,
        "Embedded store migrated to PostgreSQL."
    );
    Ok(summary)
}

/// `misdirectd forget ADDRESS` on the shared store: erase from the log,
/// the snapshots and the held messages in one transaction.
pub fn forget(cfg: Config, addr: &str) -> anyhow::Result<postgres::DbForget> {
    runtime()?.block_on(async {
        let keys = load_keys(&cfg).await?;
        let pool = postgres::pool_for(&cfg.store).await?;
        postgres::migrate_schema(&pool).await?;
        let key_id = postgres::key_id(&pool, &keys).await?;
        Ok(postgres::forget_in_db(&pool, keys, key_id, &cfg.graph, addr).await?)
    })
}

/// Every tenant's graph as the shared store holds it (for `export`).
pub fn load_graphs(cfg: &Config) -> anyhow::Result<HashMap<String, Graph>> {
    runtime()?.block_on(async {
        let keys = load_keys(cfg).await?;
        let (_pool, _key_id, graphs) = postgres::open_admin(cfg, keys).await?;
        Ok(graphs)
    })
}
