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
/// Log lines dropped because the log writer fell behind (stderr blocked).
pub const LOG_LINES_DROPPED: &str = "misdirect_log_lines_dropped_total";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter: {0}")]
    Filter(String),
    #[error("log writer thread: {0}")]
    Writer(String),
    #[error("metrics listener {0}: {1}")]
    Metrics(String, String),
}

/// Log lines the writer thread may hold before new ones are dropped.
const LOG_QUEUE_LINES: usize = 16_384;

enum LogMsg {
    Line(Vec<u8>),
    /// Everything before this was written; acknowledge.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Hands each formatted log line to a dedicated thread that writes it to
/// stderr, so that a slow or blocked stderr (a pipe to journald that is
/// behind, a log file on a disk busy with an fsync) never stalls an async
/// worker. When the queue is full, lines are dropped and counted
/// ([`LOG_LINES_DROPPED`]) rather than waited for.
#[derive(Clone)]
struct QueuedStderr {
    tx: std::sync::mpsc::SyncSender<LogMsg>,
}

/// One log event's bytes, sent as one line when dropped.
struct QueuedLine {
    buf: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<LogMsg>,
}

impl std::io::Write for QueuedLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = LogMsg::Line(std::mem::take(&mut self.buf));
        if let Err(std::sync::mpsc::TrySendError::Full(_)) = self.tx.try_send(line) {
            metrics::counter!(LOG_LINES_DROPPED).increment(1);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedLine;
    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
        }
    }
}

/// Keep it alive while the daemon runs: dropping it waits (up to 2 s) until
/// the log lines queued so far are written.
pub struct LogGuard {
    tx: Option<std::sync::mpsc::SyncSender<LogMsg>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        // The queue can be full (the writer stuck behind a blocked stderr):
        // queue the flush request without blocking, retrying until the
        // deadline, so that exit never hangs on the log.
        let mut msg = LogMsg::Flush(ack_tx);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(m))
                    if std::time::Instant::now() < deadline =>
                {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = ack_rx.recv_timeout(left);
    }
}

/// Start the log writer thread: lines go to `out`, at most `cap` waiting.
fn queued_writer(
    mut out: impl std::io::Write + Send + 'static,
    cap: usize,
) -> std::io::Result<(QueuedStderr, LogGuard)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<LogMsg>(cap);
    std::thread::Builder::new()
        .name("misdirect-log".into())
        .spawn(move || {
            for msg in rx {
                match msg {
                    LogMsg::Line(l) => {
                        let _ = out.write_all(&l);
                    }
                    LogMsg::Flush(ack) => {
                        let _ = out.flush();
                        let _ = ack.send(());
                    }
                }
            }
        })?;
    Ok((QueuedStderr { tx: tx.clone() }, LogGuard { tx: Some(tx) }))
}

/// Install the global tracing subscriber (stderr, written by a dedicated
/// thread, see [`LogGuard`]; colours only on a terminal). `RUST_LOG`
/// overrides `log.level`.
pub fn init_logging(cfg: &LogConfig) -> Result<LogGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        _ => tracing_subscriber::EnvFilter::try_new(&cfg.level),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let (writer, guard) = queued_writer(std::io::stderr(), LOG_QUEUE_LINES)
        .map_err(|e| TelemetryError::Writer(e.to_string()))?;
    if tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_err()
    {
        tracing::debug!("A tracing subscriber was already installed; keeping it.");
    }
    Ok(guard)
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
    metrics::describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log writer fell behind."
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// A writer that says when a write starts, blocks until `gate` lets
    /// it through, then records.
    struct Gated {
        entered: std::sync::mpsc::Sender<()>,
        gate: std::sync::mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.gate.recv();
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &QueuedStderr, text: &str) {
        let mut l = w.make_writer();
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_blocked_output_never_blocks_the_logger_and_the_guard_flushes() {
        let (open, gate) = std::sync::mpsc::channel();
        let (entered, writing) = std::sync::mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (w, guard) = queued_writer(
            Gated {
                entered,
                gate,
                got: got.clone(),
            },
            2,
        )
        .unwrap();
        // The thread takes line 1 and blocks writing it; lines 2 and 3
        // fill the queue; 4 and 5 are dropped, without waiting.
        line(&w, "1\n");
        writing.recv().unwrap();
        for n in 2..=5 {
            line(&w, &format!("{n}\n"));
        }
        assert!(got.lock().unwrap().is_empty());
        for _ in 0..3 {
            open.send(()).unwrap();
        }
        drop(guard);
        assert_eq!(
            String::from_utf8(got.lock().unwrap().clone()).unwrap(),
            "1\n2\n3\n"
        );
    }

    /// Exit does not hang on the log: with the writer stuck and the queue
    /// full, dropping the guard gives up after its two seconds.
    #[test]
    fn the_guard_gives_up_on_a_stuck_writer_with_a_full_queue() {
        let (open, gate) = std::sync::mpsc::channel();
        let (entered, writing) = std::sync::mpsc::channel();
        let (w, guard) = queued_writer(
            Gated {
                entered,
                gate,
                got: Arc::default(),
            },
            2,
        )
        .unwrap();
        line(&w, "1\n");
        writing.recv().unwrap();
        line(&w, "2\n");
        line(&w, "3\n");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(guard);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "dropping the guard hung on a full queue"
        );
        drop(open);
    }
}
