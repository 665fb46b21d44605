//! Logging (tracing) and Prometheus metrics.
//!
//! Metric names are constants here so every emitter and the documentation
//! agree.

use std::net::SocketAddr;

use crate::config::{LogConfig, MetricsConfig};

/// Messages that reached the pipeline, by outcome (`action` label: deliver,
/// encrypt, hold, reject, tempfail (451), refused (next hop 5xx for all),
/// unchecked (scoring failed, delivered fail-open), release_reply (a reply
/// to a hold notice, swallowed), intercepted).
pub const MESSAGES: &str = "misdirect_messages_total";
/// Seconds from end of DATA to the reply.
pub const MESSAGE_LATENCY: &str = "misdirect_message_latency_seconds";
/// Next-hop failures (`kind`: deferred, rejected, partial, dsn).
pub const NEXT_HOP_FAILURES: &str = "misdirect_next_hop_failures_total";
/// Open SMTP connections.
pub const OPEN_CONNECTIONS: &str = "misdirect_open_connections";
/// Connections refused at connect (`reason`: network, limit).
pub const REFUSED_CONNECTIONS: &str = "misdirect_refused_connections_total";
/// Learn events dropped because the learning queue was full or closed.
pub const LEARN_DROPPED: &str = "misdirect_learn_dropped_total";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter: {0}")]
    Filter(String),
    #[error("metrics listener {0}: {1}")]
    Metrics(String, String),
}

/// Install the global tracing subscriber (stderr; colours only on a
/// terminal). `RUST_LOG` overrides `log.level`.
pub fn init_logging(cfg: &LogConfig) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        _ => tracing_subscriber::EnvFilter::try_new(&cfg.level),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    if tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_err()
    {
        tracing::debug!("A tracing subscriber was already installed; keeping it.");
    }
    Ok(())
}

/// Start the Prometheus exporter on its loopback listener (must run inside
/// the tokio runtime).
pub fn init_metrics(cfg: &MetricsConfig) -> Result<(), TelemetryError> {
    if !cfg.enabled {
        return Ok(());
    }
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|_| TelemetryError::Metrics(cfg.listen.clone(), "not an address".into()))?;
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(MESSAGE_LATENCY.into()),
            &buckets,
        )
        .and_then(|b| b.install())
        .map_err(|e| TelemetryError::Metrics(cfg.listen.clone(), e.to_string()))?;
    describe();
    Ok(())
}

fn describe() {
    metrics::describe_counter!(MESSAGES, "Messages by final action.");
    metrics::describe_histogram!(
        MESSAGE_LATENCY,
        metrics::Unit::Seconds,
        "Time from end of DATA to the reply."
    );
    metrics::describe_counter!(NEXT_HOP_FAILURES, "Next-hop failures by kind.");
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Open SMTP connections.");
    metrics::describe_counter!(REFUSED_CONNECTIONS, "Connections refused at connect.");
    metrics::describe_counter!(LEARN_DROPPED, "Learn events dropped (queue full).");
}
