//! Test harness: the daemon in-process on 127.0.0.1:0, an in-process next
//! hop that records what it receives, and a line-oriented SMTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use misdirect::classify::baseline::NeverSeenScorer;
use misdirect::config::Config;
use misdirect::pipeline::{Pipeline, PipelineCell, Shared};
use misdirect::server::{self, ServerDeps};
use misdirect::shutdown::{self, ShutdownTrigger};
use misdirect::store::GraphHandle;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub mod binary;

/// One message as the next hop received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Message bytes after undoing dot-stuffing, CRLF kept.
    pub data: Vec<u8>,
}

/// How the next hop behaves.
#[derive(Debug, Default)]
pub struct SinkCtl {
    /// Recipients answered `550 5.1.1`.
    pub reject_rcpts: HashSet<String>,
    /// Every RCPT answered `550 5.7.1`.
    pub reject_all: bool,
    /// Every MAIL answered `451 4.3.0`.
    pub tempfail: bool,
    /// MAIL with the null sender (DSNs) answered `451 4.3.0`.
    pub tempfail_null_sender: bool,
    /// Offer AUTH PLAIN and require it before MAIL.
    pub require_auth: bool,
    /// The decoded `AUTH PLAIN` credentials last received.
    pub auth_seen: Option<String>,
    /// Close the connection right after accepting each message.
    pub close_after_message: bool,
    /// Connections accepted so far.
    pub connections: usize,
}

/// In-process next hop: a minimal ESMTP server written independently of
/// the daemon's code.
pub struct Sink {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Received>,
    pub ctl: Arc<Mutex<SinkCtl>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn arg_addr(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

impl Sink {
    pub async fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Sink::start_on(l)
    }

    pub fn start_on(l: TcpListener) -> Sink {
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let ctl: Arc<Mutex<SinkCtl>> = Arc::default();
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let tx = tx.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = sink_session(s, tx, c).await;
                });
            }
        });
        Sink {
            addr,
            rx,
            ctl,
            task,
        }
    }

    /// Wait for the next received message.
    pub async fn recv(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("next hop received nothing within 30 s")
            .expect("sink stopped")
    }

    /// True when nothing (more) arrived within a short while; what did
    /// arrive is printed, for the failing test's output.
    pub async fn nothing_more(&mut self) -> bool {
        match tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await {
            Err(_) => true,
            Ok(got) => {
                if let Some(m) = got {
                    eprintln!(
                        "unexpected at the next hop: from <{}> to {:?}:\n{}",
                        m.mail_from,
                        m.rcpt_to,
                        String::from_utf8_lossy(&m.data)
                    );
                }
                false
            }
        }
    }
}

/// A port with nothing listening on it (bound, then released).
pub async fn dead_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn sink_session(
    s: TcpStream,
    tx: mpsc::UnboundedSender<Received>,
    ctl: Arc<Mutex<SinkCtl>>,
) -> std::io::Result<()> {
    ctl.lock().unwrap().connections += 1;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut from = String::new();
    let mut rcpts = Vec::new();
    let mut authed = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let up = line.to_ascii_uppercase();
        let reply: String = if up.starts_with("EHLO") {
            let auth = if ctl.lock().unwrap().require_auth {
                "250-AUTH PLAIN\r\n"
            } else {
                ""
            };
            format!("250-sink\r\n{auth}250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000\r\n")
        } else if up.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            ctl.lock().unwrap().auth_seen = Some(String::from_utf8_lossy(&b).replace('\0', "|"));
            authed = true;
            "235 2.7.0 ok\r\n".into()
        } else if up.starts_with("MAIL FROM:") && ctl.lock().unwrap().require_auth && !authed {
            "530 5.7.0 authentication required\r\n".into()
        } else if up.starts_with("HELO") {
            "250 sink\r\n".into()
        } else if up.starts_with("MAIL FROM:") {
            let c = ctl.lock().unwrap();
            if c.tempfail || (c.tempfail_null_sender && arg_addr(&line).is_empty()) {
                "451 4.3.0 try later\r\n".into()
            } else {
                from = arg_addr(&line);
                rcpts.clear();
                "250 2.1.0 ok\r\n".into()
            }
        } else if up.starts_with("RCPT TO:") {
            let a = arg_addr(&line);
            let c = ctl.lock().unwrap();
            if c.reject_all {
                "550 5.7.1 relaying denied\r\n".into()
            } else if c.reject_rcpts.contains(&a) {
                format!("550 5.1.1 <{a}>: no such user\r\n")
            } else {
                rcpts.push(a);
                "250 2.1.5 ok\r\n".into()
            }
        } else if up.starts_with("DATA") {
            w.write_all(b"354 go\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                if l.first() == Some(&b'.') {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            let _ = tx.send(Received {
                mail_from: from.clone(),
                rcpt_to: std::mem::take(&mut rcpts),
                data,
            });
            if ctl.lock().unwrap().close_after_message {
                w.write_all(b"250 2.0.0 queued at sink\r\n").await?;
                return Ok(());
            }
            "250 2.0.0 queued at sink\r\n".into()
        } else if up.starts_with("RSET") || up.starts_with("NOOP") {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if up.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.1 unknown\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
}

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub cell: Arc<PipelineCell>,
    pub trigger: ShutdownTrigger,
    pub graph: GraphHandle,
    pub dir: tempfile::TempDir,
    pub server: tokio::task::JoinHandle<()>,
}

/// Configuration for tests: next hop at `hop`, state in `dir`, no metrics.
pub fn test_config(hop: SocketAddr, dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    // The never-seen baseline scores a stranger 0.9: hold it.
    cfg.policy.hold_at = Some(0.8);
    cfg.server.data_dir = dir.to_path_buf();
    cfg.server.hostname = "relay.test".into();
    cfg.relay.host = hop.ip().to_string();
    cfg.relay.port = hop.port();
    cfg.relay.tls = misdirect::config::server::RelayTls::None;
    cfg.relay.timeout = Duration::from_secs(10);
    cfg.metrics.enabled = false;
    cfg
}

/// Start the daemon in-process with a next hop at `hop`; `adjust` edits the
/// test configuration first.
pub async fn start(hop: SocketAddr, adjust: impl FnOnce(&mut Config)) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(hop, dir.path());
    adjust(&mut cfg);
    let (graph, _task) = GraphHandle::in_memory(cfg.graph.clone(), cfg.tenants.clone(), 1000);
    let shared = Shared {
        scorer: Arc::new(NeverSeenScorer),
        graph: graph.clone(),
    };
    let pipeline = Pipeline::build(cfg, shared).await.unwrap();
    let cell = Arc::new(PipelineCell::new(pipeline));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    let server = tokio::spawn(server::run(
        listener,
        ServerDeps {
            pipeline: cell.clone(),
        },
        sd,
    ));
    Daemon {
        addr,
        cell,
        trigger,
        graph,
        dir,
        server,
    }
}

/// A line-oriented SMTP client over any stream.
pub struct Client<S> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let s = TcpStream::connect(addr).await.unwrap();
        Client {
            io: BufReader::new(s),
        }
    }

    /// Connect and read the greeting, asserting it is 220.
    pub async fn greeted(addr: SocketAddr) -> Client<TcpStream> {
        let mut c = Client::connect(addr).await;
        let g = c.reply().await;
        assert!(g.starts_with("220 "), "greeting: {g}");
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Read one (possibly multi-line) reply; empty string at EOF (or when
    /// the peer reset the connection, e.g. because it was killed).
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n =
                match tokio::time::timeout(Duration::from_secs(30), self.io.read_line(&mut line))
                    .await
                    .expect("no reply within 30 s")
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                    Err(e) => panic!("reading a reply: {e}"),
                };
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    /// Write bytes; a peer that is gone (reset, broken pipe) shows as an
    /// empty reply on the next read.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.io.get_mut().write_all(bytes).await {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
            assert!(
                matches!(e.kind(), BrokenPipe | ConnectionReset),
                "writing: {e}"
            );
        }
    }

    /// Send one command line and return the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Send a command and assert the reply starts with `expect`.
    pub async fn expect(&mut self, line: &str, expect: &str) -> String {
        let r = self.cmd(line).await;
        assert!(
            r.starts_with(expect),
            "{line:?}: expected {expect:?}, got {r:?}"
        );
        r
    }

    /// True when the server closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.io.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// A full transaction; returns the final reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.expect("DATA", "354").await;
        self.send(&dot_stuff(message)).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Dot-stuff a CRLF message for the wire (it must end with CRLF).
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 16);
    let mut at_start = true;
    for &b in msg {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    out
}

/// A simple message from `from` to `to`.
pub fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// Split what the next hop received into (prepended trace headers, rest).
pub fn split_trace(data: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(data);
    let marker = "X-Misdirect-Score: ";
    let start = text.find(marker).expect("no X-Misdirect-Score header");
    let end = start + text[start..].find("\r\n").unwrap() + 2;
    (text[..end].to_string(), data[end..].to_vec())
}
