//! Shared helpers for the actions tests: a real SMTP sink on loopback that
//! records every message it accepts, and hold-service fixtures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use misdirect::address::Normalizer;
use misdirect::config::{ExpiryAction, HoldConfig};
use misdirect::envelope::Envelope;
use misdirect::hold::{HoldService, SmtpDeliver, TokenKey};
use misdirect::message::Field;
use misdirect::outbound::spool::Spool;
use misdirect::store::GraphHandle;
use misdirect::verdict::{Action, RecipientScore, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    pub raw: Vec<u8>,
}

/// An SMTP server on 127.0.0.1:0 that accepts everything (or answers 451
/// to DATA while `fail` is set) and sends each message to a channel.
pub struct Sink {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Received>,
    pub fail: Arc<AtomicBool>,
}

fn path_arg(line: &str) -> String {
    let s = line.find('<').map(|i| &line[i + 1..]).unwrap_or("");
    s.split('>').next().unwrap_or("").to_string()
}

pub async fn sink() -> Sink {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            let fail = f.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut env = Envelope::default();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let up = line.to_ascii_uppercase();
                    if up.starts_with("EHLO") {
                        w.write_all(b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                            .await
                            .unwrap();
                    } else if up.starts_with("HELO") || up.starts_with("NOOP") {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    } else if up.starts_with("MAIL FROM:") {
                        env = Envelope {
                            mail_from: path_arg(&line),
                            ..Default::default()
                        };
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    } else if up.starts_with("RCPT TO:") {
                        env.rcpt_to.push(path_arg(&line));
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    } else if up.starts_with("DATA") {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        let mut raw = Vec::new();
                        loop {
                            let mut l = Vec::new();
                            r.read_until(b'\n', &mut l).await.unwrap();
                            if l == b".\r\n" || l.is_empty() {
                                break;
                            }
                            if l.starts_with(b"..") {
                                l.remove(0);
                            }
                            raw.extend_from_slice(&l);
                        }
                        if fail.load(Ordering::SeqCst) {
                            w.write_all(b"451 4.3.0 sink says later\r\n").await.unwrap();
                        } else {
                            tx.send(Received {
                                envelope: std::mem::take(&mut env),
                                raw,
                            })
                            .unwrap();
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        }
                    } else if up.starts_with("RSET") {
                        env = Envelope::default();
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    } else if up.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        w.write_all(b"502 5.5.2 what\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    Sink { addr, rx, fail }
}

impl Sink {
    /// The next message, waiting up to 20 s (a generous bound, not a
    /// timing assertion).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.rx.recv())
            .await
            .expect("sink got nothing")
            .expect("sink closed")
    }

    /// Nothing has arrived so far.
    pub fn assert_empty(&mut self) {
        assert!(
            self.rx.try_recv().is_err(),
            "sink unexpectedly got a message"
        );
    }
}

pub fn hold_config(dir: &std::path::Path, sink: SocketAddr) -> HoldConfig {
    HoldConfig {
        spool_dir: Some(dir.join("hold")),
        release_domain: "confirm.acme.test".into(),
        secret: SECRET.into(),
        token_lifetime: std::time::Duration::from_secs(3600),
        hold_lifetime: std::time::Duration::from_secs(7200),
        expiry_action: ExpiryAction::Discard,
        next_hop: Some(sink.to_string()),
        ..Default::default()
    }
}

pub async fn service(cfg: HoldConfig, graph: Option<GraphHandle>) -> HoldService {
    // The key file next to the spool (where the CLI tests' config names it).
    let dir = cfg.spool_dir.as_ref().unwrap();
    let keys = misdirect::privacy::Keys::load_or_create(&dir.parent().unwrap().join("keys.json"));
    let spool = Spool::open(dir, Arc::new(keys.unwrap())).await.unwrap();
    let deliver = SmtpDeliver::from_host_port(cfg.next_hop.as_deref().unwrap()).unwrap();
    HoldService::new(
        spool,
        TokenKey::new(cfg.load_secret().unwrap()),
        cfg,
        Arc::new(deliver),
        Normalizer::default(),
        graph,
    )
}

pub const ORIGINAL: &[u8] = b"From: Alice <alice@acme.test>\r\n\
To: Bob <bob@partner.test>, Mallory <bob@rival.test>\r\n\
Subject: Q3 pricing\r\n\
Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\
Message-ID: <q3-1@acme.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Confidential numbers.\r\n\
.leading dot line\r\n";

pub fn envelope() -> Envelope {
    Envelope {
        mail_from: "alice@acme.test".into(),
        rcpt_to: vec!["bob@partner.test".into(), "bob@rival.test".into()],
        ..Default::default()
    }
}

pub fn verdict() -> Verdict {
    Verdict {
        score: 0.93,
        action: Action::Hold,
        model: "test-model".into(),
        recipients: vec![
            RecipientScore {
                address: "bob@partner.test".into(),
                field: Field::To,
                score: 0.05,
                reasons: vec!["you wrote to bob@partner.test 12 times".into()],
            },
            RecipientScore {
                address: "bob@rival.test".into(),
                field: Field::To,
                score: 0.93,
                reasons: vec![
                    "you have never written to bob@rival.test, and nobody here has".into(),
                ],
            },
        ],
        note: None,
    }
}

/// Decode the base64 body of a notice.
pub fn notice_text(raw: &[u8]) -> String {
    use base64::Engine;
    let s = String::from_utf8_lossy(raw);
    let body = s.split_once("\r\n\r\n").unwrap().1;
    let b: String = body.split_whitespace().collect();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

/// The value of a header in a raw message.
pub fn header(raw: &[u8], name: &str) -> Option<String> {
    let s = String::from_utf8_lossy(raw);
    let head = s.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Release address from a notice's Reply-To.
pub fn release_address(notice: &[u8]) -> String {
    header(notice, "Reply-To")
        .unwrap()
        .trim_matches(['<', '>'])
        .to_string()
}

/// A reply from `from` (envelope and header) to `to`.
pub fn reply(from: &str, to: &str) -> (Envelope, Vec<u8>) {
    (
        Envelope {
            mail_from: from.into(),
            rcpt_to: vec![to.into()],
            ..Default::default()
        },
        format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: Re: Held, please confirm: Q3 pricing\r\n\r\nyes, send it\r\n"
        )
        .into_bytes(),
    )
}
