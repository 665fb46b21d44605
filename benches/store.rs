//! Store comparison: embedded (redb) versus shared PostgreSQL (a throwaway
//! cluster on loopback). Prints, per store: scoring latency of a
//! 5-recipient message from the relay's in-memory graph, and relay
//! throughput (real SMTP, 4 concurrent clients x 1,000 messages, in-process
//! next hop; the clients set TCP_NODELAY); for
//! PostgreSQL also the delay until one relay's learning is seen by another.
//!
//! Run: `cargo bench --bench store` (needs `apt-get install postgresql`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use misdirect::classify::baseline::NeverSeenScorer;
use misdirect::config::store::StoreBackend;
use misdirect::config::Config;
use misdirect::message::{Field, Mailbox, MessageMeta, Recipient};
use misdirect::pipeline::{Pipeline, PipelineCell, Shared};
use misdirect::privacy::Keys;
use misdirect::scorer::{ScoreInput, Scorer};
use misdirect::server::{self, ServerDeps};
use misdirect::shutdown;
use misdirect::store::{GraphHandle, LearnEvent, LearnKind};
use tokio::net::TcpListener;

const SENDERS: usize = 50;
const RCPTS: usize = 500;
const HISTORY: usize = 5000;
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 1000;

fn rcpt(a: String) -> Recipient {
    Recipient {
        address: a,
        name: None,
        field: Field::To,
    }
}

fn event(i: usize) -> LearnEvent {
    let from = format!("s{}@corp.test", i % SENDERS);
    let rc: Vec<Recipient> = (0..3)
        .map(|k| rcpt(format!("r{}@corp.test", (i * 7 + k * 13) % RCPTS)))
        .collect();
    LearnEvent {
        tenant: "default".into(),
        meta: MessageMeta {
            from: Some(Mailbox {
                address: from,
                name: None,
            }),
            recipients: rc.clone(),
            ..Default::default()
        },
        recipients: rc,
        ts: 1_790_000_000 + i as i64,
        kind: LearnKind::Delivered,
    }
}

fn config(dir: &std::path::Path, hop: std::net::SocketAddr, url: Option<&str>) -> Config {
    let mut cfg = common::test_config(hop, dir);
    cfg.privacy.key_file = dir.join("keys.json");
    cfg.privacy.retention_days = 0;
    cfg.store.path = dir.join("graph.redb");
    if let Some(u) = url {
        cfg.store.backend = StoreBackend::Postgres;
        cfg.store.url = u.into();
        cfg.store.refresh_interval = Duration::from_millis(500);
    }
    cfg.store.batch_interval = Duration::from_millis(200);
    cfg
}

async fn open(cfg: &Config) -> GraphHandle {
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    GraphHandle::open(cfg, keys).await.unwrap().0
}

fn score_latency(g: &GraphHandle) -> Duration {
    let meta = MessageMeta {
        from: Some(Mailbox {
            address: "s3@corp.test".into(),
            name: None,
        }),
        ..Default::default()
    };
    let rc: Vec<Recipient> = (0..5)
        .map(|k| rcpt(format!("r{}@corp.test", k * 97)))
        .collect();
    let n = 50_000;
    let start = Instant::now();
    let mut sum = 0.0;
    for _ in 0..n {
        sum += g.with_view("default", |v| {
            NeverSeenScorer
                .score(
                    v,
                    &ScoreInput {
                        meta: &meta,
                        recipients: &rc,
                        now: 0,
                    },
                )
                .unwrap()
                .recipients
                .len() as f64
        });
    }
    assert_eq!(sum, 5.0 * n as f64);
    start.elapsed() / n
}

async fn relay_throughput(cfg: Config, g: GraphHandle, sink: &mut common::Sink) -> f64 {
    let pipeline = Pipeline::build(
        cfg,
        Shared {
            scorer: Arc::new(NeverSeenScorer),
            graph: g,
        },
    )
    .await
    .unwrap();
    let cell = Arc::new(PipelineCell::new(pipeline));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    tokio::spawn(server::run(l, ServerDeps { pipeline: cell }, sd));
    let (clients, per) = (CLIENTS, PER_CLIENT);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut cl = common::Client::greeted(addr).await;
            // The test client writes the message and the final "." in two
            // writes; with Nagle on, the second waits for the relay's
            // delayed ACK (40 ms on Linux) and the figure measures that.
            cl.io.get_ref().set_nodelay(true).unwrap();
            cl.expect("EHLO bench.test", "250").await;
            for i in 0..per {
                // Known sender and contact: delivered.
                let from = format!("s{}@corp.test", (c * per + i) % SENDERS);
                let to = format!("r{}@corp.test", ((c * per + i) * 7) % RCPTS);
                let msg = common::message(&from, &to, &format!("b{c}x{i}"));
                let r = cl.send_mail(&from, &[to.as_str()], &msg).await;
                assert!(r.starts_with("250"), "{r}");
            }
            cl.cmd("QUIT").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = 0;
    while got < clients * per {
        sink.recv().await;
        got += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    trigger.trigger();
    (clients * per) as f64 / secs
}

async fn fill(g: &GraphHandle) {
    for i in 0..HISTORY {
        while g.learn(event(i)).is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while g.with_view("default", |v| v.sender("s0@corp.test").messages) < (HISTORY / SENDERS) as u32
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sink = common::Sink::start().await;
        let pg = pg_support::PgCluster::start();
        for (name, url) in [("embedded", None), ("postgres", Some(pg.url()))] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(dir.path(), sink.addr, url.as_deref());
            let g = open(&cfg).await;
            fill(&g).await;
            let lat = score_latency(&g);
            let tput = relay_throughput(cfg.clone(), g.clone(), &mut sink).await;
            println!(
                "store={name} history={HISTORY} msgs: score 5 recipients {:.2} us/message; relay {tput:.0} messages/s ({CLIENTS} clients x {PER_CLIENT})",
                lat.as_secs_f64() * 1e6
            );
            if url.is_some() {
                let other = open(&cfg).await;
                let mut delays = Vec::new();
                for k in 0..5 {
                    let ev = event(HISTORY + k);
                    let from = ev.meta.from.clone().unwrap().address;
                    let to = ev.recipients[0].address.clone();
                    let before = other.with_view("default", |v| {
                        v.edge(&from, &to).map(|e| e.total()).unwrap_or(0)
                    });
                    let t = Instant::now();
                    g.learn(ev).unwrap();
                    while other.with_view("default", |v| {
                        v.edge(&from, &to).map(|e| e.total()).unwrap_or(0)
                    }) == before
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    delays.push(t.elapsed());
                }
                delays.sort();
                println!(
                    "store=postgres learning visible on another relay after: median {:?}, max {:?} (batch_interval {:?} + refresh_interval {:?})",
                    delays[2], delays[4], cfg.store.batch_interval, cfg.store.refresh_interval
                );
            }
        }
    });
}
