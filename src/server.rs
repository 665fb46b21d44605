//! The accept loop: network allow-list (554), connection limit (421),
//! one task per session, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn, Instrument};

use crate::pipeline::PipelineCell;
use crate::shutdown::Shutdown;
use crate::smtp::reply::Reply;
use crate::smtp::session::{refuse, Session};
use crate::telemetry;

/// What the accept loop needs.
#[derive(Clone)]
pub struct ServerDeps {
    /// The current pipeline (replaced on reload).
    pub pipeline: Arc<PipelineCell>,
}

/// Serve SMTP on `listener` until `shutdown` fires, then stop accepting and
/// wait up to `server.shutdown_grace` for running sessions to finish.
/// `server.max_connections` is read once here (a reload does not change it).
pub async fn run(listener: TcpListener, deps: ServerDeps, mut shutdown: Shutdown) {
    let max = deps.pipeline.current().config().server.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut backoff = Duration::from_millis(10);
    let mut next_session: u64 = 0;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections = max, "Listening.");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                warn!(error = %e, "Accept failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        next_session += 1;
        let pipeline = deps.pipeline.current();
        let span = tracing::info_span!("session", id = next_session, peer = %peer);
        if !pipeline.allows(peer.ip()) {
            metrics::counter!(telemetry::REFUSED_CONNECTIONS, "reason" => "network").increment(1);
            let host = pipeline.config().server.hostname.clone();
            tokio::spawn(
                async move {
                    info!("Client network not allowed; refused with 554.");
                    let reply = Reply::new(554, "5.7.1", format!("{host} Access denied"));
                    refuse(&mut stream, &reply).await;
                }
                .instrument(span),
            );
            continue;
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!(telemetry::REFUSED_CONNECTIONS, "reason" => "limit").increment(1);
                tokio::spawn(
                    async move {
                        info!("Connection limit reached; refused with 421.");
                        let reply =
                            Reply::new(421, "4.3.2", "Too many connections, try again later");
                        refuse(&mut stream, &reply).await;
                    }
                    .instrument(span),
                );
                continue;
            }
        };
        let alive = alive_tx.clone();
        let sd = shutdown.clone();
        tokio::spawn(
            async move {
                metrics::gauge!(telemetry::OPEN_CONNECTIONS).increment(1.0);
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed.");
                }
                Session::new(pipeline, peer, sd).run(Box::new(stream)).await;
                metrics::gauge!(telemetry::OPEN_CONNECTIONS).decrement(1.0);
                drop(permit);
                drop(alive);
            }
            .instrument(span),
        );
    }
    drop(listener);
    drop(alive_tx);
    let grace = deps.pipeline.current().config().server.shutdown_grace;
    info!(grace = ?grace, "Shutting down: no new connections; waiting for sessions.");
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        warn!(
            sessions = max - slots.available_permits(),
            "Shutdown grace expired with sessions still running."
        );
    } else {
        info!("All sessions finished.");
    }
}
