//! Graph stores: where the association graph lives between restarts, and the
//! handle the relay uses to read it and to learn.
//!
//! Reads for scoring always come from memory ([`GraphHandle::with_view`]).
//! Learning goes through a bounded queue to a background task
//! ([`GraphHandle::learn`]) so it never delays an SMTP reply.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::config::TenantsConfig;
use crate::graph::{Graph, GraphConfig, GraphView, LearnInput, Ts};
use crate::message::{MessageMeta, Recipient};

/// One message to learn from, owned so it can cross the queue.
#[derive(Debug, Clone)]
pub struct LearnEvent {
    pub tenant: String,
    pub meta: MessageMeta,
    /// Every recipient (header recipients and envelope-only ones as Bcc).
    pub recipients: Vec<Recipient>,
    pub ts: Ts,
}

impl LearnEvent {
    /// Apply to an in-memory tenant map.
    pub fn apply(&self, graphs: &mut HashMap<String, Graph>, cfg: &GraphConfig) {
        if let Some(input) = LearnInput::from_meta(&self.meta, &self.recipients, self.ts) {
            graphs
                .entry(self.tenant.clone())
                .or_insert_with(|| Graph::new(cfg.clone()))
                .learn(&input);
        }
    }
}

/// Shared, cheaply clonable handle on every tenant's graph.
#[derive(Clone)]
pub struct GraphHandle {
    graphs: Arc<RwLock<HashMap<String, Graph>>>,
    tx: mpsc::Sender<LearnEvent>,
    tenants: Arc<TenantsConfig>,
}

/// Why a learn event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("learning queue full")]
    Full,
    #[error("learning task stopped")]
    Closed,
}

impl GraphHandle {
    /// A purely in-memory graph (nothing persisted) with its learning task.
    /// The task ends when every handle is dropped.
    pub fn in_memory(
        cfg: GraphConfig,
        tenants: TenantsConfig,
        queue: usize,
    ) -> (GraphHandle, tokio::task::JoinHandle<()>) {
        let graphs: Arc<RwLock<HashMap<String, Graph>>> = Arc::default();
        let (tx, mut rx) = mpsc::channel::<LearnEvent>(queue.max(1));
        let g = graphs.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                if let Ok(mut map) = g.write() {
                    for ev in batch.drain(..) {
                        ev.apply(&mut map, &cfg);
                    }
                }
                batch.clear();
            }
        });
        (
            GraphHandle {
                graphs,
                tx,
                tenants: Arc::new(tenants),
            },
            task,
        )
    }

    /// The tenant a sender address belongs to.
    pub fn tenant_for(&self, sender: &str) -> String {
        self.tenants.tenant_for(sender).to_string()
    }

    /// Run `f` with a read view of one tenant's graph (an empty graph when the
    /// tenant has learnt nothing yet).
    pub fn with_view<R>(&self, tenant: &str, f: impl FnOnce(&dyn GraphView) -> R) -> R {
        let empty = Graph::default();
        match self.graphs.read() {
            Ok(map) => match map.get(tenant) {
                Some(g) => f(g),
                None => f(&empty),
            },
            Err(poisoned) => {
                let map = poisoned.into_inner();
                match map.get(tenant) {
                    Some(g) => f(g),
                    None => f(&empty),
                }
            }
        }
    }

    /// Queue a message for learning; never waits.
    pub fn learn(&self, ev: LearnEvent) -> Result<(), LearnError> {
        self.tx.try_send(ev).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LearnError::Full,
            mpsc::error::TrySendError::Closed(_) => LearnError::Closed,
        })
    }

    /// Shared access to the graphs, for stores and admin commands.
    pub fn graphs(&self) -> &Arc<RwLock<HashMap<String, Graph>>> {
        &self.graphs
    }
}
