//! The shared PostgreSQL store against a real PostgreSQL server each test
//! starts itself (throwaway cluster, loopback port, stopped on drop).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod graph_support;
mod pg_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Sink};
use misdirect::classify::baseline::NeverSeenScorer;
use misdirect::config::store::StoreBackend;
use misdirect::config::Config;
use misdirect::envelope::Envelope;
use misdirect::graph::Graph;
use misdirect::message::{Field, Mailbox, MessageMeta, Recipient};
use misdirect::outbound::spool::{new_id, HeldMeta, Spool};
use misdirect::pipeline::{Pipeline, PipelineCell, Shared};
use misdirect::privacy::Keys;
use misdirect::scorer::{ScoreInput, Scorer};
use misdirect::server::{self, ServerDeps};
use misdirect::shutdown::{self, ShutdownTrigger};
use misdirect::store::pg_spool::{ClaimOutcome, HoldSpool, PgSpool};
use misdirect::store::postgres::{self, WireEvent};
use misdirect::store::{GraphHandle, LearnEvent, LearnKind, Store};
use misdirect::verdict::{Action, Verdict};
use pg_support::PgCluster;
use tokio::net::TcpListener;

const BATCH: Duration = Duration::from_millis(200);
const REFRESH: Duration = Duration::from_millis(300);

/// A relay configuration on the shared store; `shared` holds the key file
/// every relay of the deployment uses.
fn pg_config(hop: std::net::SocketAddr, dir: &Path, shared: &Path, url: &str) -> Config {
    let mut cfg = common::test_config(hop, dir);
    cfg.store.backend = StoreBackend::Postgres;
    cfg.store.url = url.to_string();
    cfg.store.batch_interval = BATCH;
    cfg.store.refresh_interval = REFRESH;
    cfg.privacy.key_file = shared.join("keys.json");
    // The fixtures use fixed past dates; the retention job is tested with
    // an explicit cutoff.
    cfg.privacy.retention_days = 0;
    cfg
}

/// A configuration file for the command-line tools on the shared store of
/// `cfg` (its key file).
fn cli_config(dir: &Path, pg: &PgCluster, cfg: &Config) -> std::path::PathBuf {
    let file = dir.join("misdirectd.toml");
    std::fs::write(
        &file,
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\nbatch_interval = \"200ms\"\n[privacy]\nkey_file = \"{}\"\nretention_days = 0\n",
            pg.url(),
            cfg.privacy.key_file.display()
        ),
    )
    .unwrap();
    file
}

/// `misdirectd ARGS --config FILE`, which must succeed; its stdout.
fn run_cli(file: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(args)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn keys(cfg: &Config) -> Arc<Keys> {
    Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap())
}

struct Relay {
    addr: std::net::SocketAddr,
    graph: GraphHandle,
    trigger: ShutdownTrigger,
    _dir: tempfile::TempDir,
}

/// A relay in-process (real SMTP on 127.0.0.1:0) on the shared store.
async fn relay(hop: std::net::SocketAddr, shared: &Path, url: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(hop, dir.path(), shared, url);
    let (graph, _task) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    let sh = Shared {
        scorer: Arc::new(NeverSeenScorer),
        graph: graph.clone(),
    };
    let pipeline = Pipeline::build(cfg, sh).await.unwrap();
    let cell = Arc::new(PipelineCell::new(pipeline));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    tokio::spawn(server::run(listener, ServerDeps { pipeline: cell }, sd));
    Relay {
        addr,
        graph,
        trigger,
        _dir: dir,
    }
}

async fn send(addr: std::net::SocketAddr, from: &str, to: &[&str], subject: &str) -> String {
    let mut c = Client::greeted(addr).await;
    c.expect("EHLO client.test", "250").await;
    let msg = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{subject}@corp.test>\r\n\r\nHello.\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", ")
    );
    let r = c.send_mail(from, to, msg.as_bytes()).await;
    c.cmd("QUIT").await;
    r
}

fn edge_total(g: &GraphHandle, from: &str, to: &str) -> u32 {
    g.with_view("default", |v| {
        v.edge(from, to).map(|e| e.total()).unwrap_or(0)
    })
}

/// Poll until `f` holds; returns how long it took (panics after `limit`).
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn score_on(g: &GraphHandle, from: &str, to: &str) -> f64 {
    let meta = MessageMeta {
        from: Some(Mailbox {
            address: from.into(),
            name: None,
        }),
        ..Default::default()
    };
    let rc = [Recipient {
        address: to.into(),
        name: None,
        field: Field::To,
    }];
    g.with_view("default", |v| {
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
            .recipients[0]
            .score
    })
}

fn event(from: &str, to: &[&str], ts: i64) -> LearnEvent {
    let recipients: Vec<Recipient> = to
        .iter()
        .map(|t| Recipient {
            address: t.to_string(),
            name: None,
            field: Field::To,
        })
        .collect();
    LearnEvent {
        tenant: "default".into(),
        meta: MessageMeta {
            from: Some(Mailbox {
                address: from.into(),
                name: Some("Alice Example".into()),
            }),
            recipients: recipients.clone(),
            subject: Some(format!("note {ts}")),
            ..Default::default()
        },
        recipients,
        ts,
        kind: LearnKind::Delivered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_learnt_through_one_relay_changes_the_others_score() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let a = relay(sink.addr, shared.path(), &pg.url()).await;
    let b = relay(sink.addr, shared.path(), &pg.url()).await;

    // B has never seen alice: a new recipient of hers scores 0 (no history).
    assert_eq!(score_on(&b.graph, "alice@corp.test", "eve@new.test"), 0.0);

    let r = send(a.addr, "alice@corp.test", &["bob@corp.test"], "first").await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.recv().await;
    assert_eq!(got.rcpt_to, vec!["bob@corp.test".to_string()]);

    // Within batch_interval + refresh_interval, B scores from A's learning.
    let took = until(Duration::from_secs(20), "B to see A's learning", || {
        edge_total(&b.graph, "alice@corp.test", "bob@corp.test") == 1
    })
    .await;
    eprintln!("learning on A visible on B after {took:?} (batch {BATCH:?} + refresh {REFRESH:?})");
    assert_eq!(score_on(&b.graph, "alice@corp.test", "bob@corp.test"), 0.0);
    assert_eq!(score_on(&b.graph, "alice@corp.test", "eve@new.test"), 0.9);

    // And through SMTP on B: the same message to a stranger is now held.
    let r = send(b.addr, "alice@corp.test", &["eve@new.test"], "second").await;
    assert!(r.starts_with("250"), "{r}");
    // The next hop gets only the hold notice to the sender, not the message.
    let notice = sink.recv().await;
    assert_eq!(notice.rcpt_to, vec!["alice@corp.test".to_string()]);
    assert!(sink.nothing_more().await, "held mail must not be relayed");
    let r = send(b.addr, "alice@corp.test", &["bob@corp.test"], "third").await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.recv().await;
    let text = String::from_utf8_lossy(&got.data).to_string();
    assert!(
        text.contains("X-Misdirect-Score: 0.0000; action=deliver"),
        "{text}"
    );
    a.trigger.trigger();
    b.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_learning_on_two_relays_loses_no_count() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hop = "127.0.0.1:9".parse().unwrap();
    let cfg = pg_config(hop, dir.path(), shared.path(), &pg.url());
    let k = keys(&cfg);
    let (a, _ta) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    let (b, _tb) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    const N: i64 = 300;
    let (a2, b2) = (a.clone(), b.clone());
    let wa = tokio::spawn(async move {
        for i in 0..N {
            while a2
                .learn(event(
                    "alice@corp.test",
                    &["bob@corp.test", "carol@corp.test"],
                    1_700_000_000 + i,
                ))
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    let wb = tokio::spawn(async move {
        for i in 0..N {
            while b2
                .learn(event(
                    "alice@corp.test",
                    &["bob@corp.test"],
                    1_700_000_000 + i,
                ))
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    wa.await.unwrap();
    wb.await.unwrap();
    let want = 2 * N as u32;
    for (name, h) in [("A", &a), ("B", &b)] {
        until(Duration::from_secs(30), name, || {
            edge_total(h, "alice@corp.test", "bob@corp.test") == want
        })
        .await;
        assert_eq!(
            edge_total(h, "alice@corp.test", "carol@corp.test"),
            N as u32
        );
        assert_eq!(
            h.with_view("default", |v| v.co_count(
                "alice@corp.test",
                "bob@corp.test",
                "carol@corp.test"
            )),
            N as u32
        );
    }
    // A relay started now loads the same counts from the database.
    let (c, _tc) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    assert_eq!(edge_total(&c, "alice@corp.test", "bob@corp.test"), want);
    assert_eq!(
        c.with_view("default", |v| v.sender("alice@corp.test").messages),
        want
    );
    // With their sketches, which the lookalike scan reads.
    assert_eq!(
        c.with_view("default", |v| graph_support::contact_sketches_match(
            v,
            "alice@corp.test"
        )),
        2
    );

    // A retried batch (same id) is applied once.
    let pool = postgres::pool_for(&cfg.store).await.unwrap();
    let key_id = postgres::key_id(&pool, &k).await.unwrap();
    let id: [u8; 16] = rand::random();
    let evs = vec![WireEvent::from_learn(event(
        "dan@corp.test",
        &["erin@corp.test"],
        1_700_000_500,
    ))];
    postgres::append_events(&pool, &k, key_id, 7, &id, &evs)
        .await
        .unwrap();
    postgres::append_events(&pool, &k, key_id, 7, &id, &evs)
        .await
        .unwrap();
    until(Duration::from_secs(20), "retried batch on A", || {
        edge_total(&a, "dan@corp.test", "erin@corp.test") == 1
    })
    .await;
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(edge_total(&a, "dan@corp.test", "erin@corp.test"), 1);
    let (d, _td) = GraphHandle::open(&cfg, k).await.unwrap();
    assert_eq!(edge_total(&d, "dan@corp.test", "erin@corp.test"), 1);
}

fn held_meta(id: &str, from: &str, to: &str) -> HeldMeta {
    HeldMeta {
        id: id.into(),
        tenant: "default".into(),
        envelope: Envelope {
            mail_from: from.into(),
            rcpt_to: vec![to.into()],
            ..Default::default()
        },
        verdict: Verdict {
            score: 0.9,
            action: Action::Hold,
            model: "m".into(),
            recipients: vec![],
            note: None,
        },
        held_at: 1_700_000_000,
        expires_at: 1_700_086_400,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_made_on_one_relay_is_released_on_the_other() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        shared.path(),
        &pg.url(),
    );
    let k = keys(&cfg);
    // Two relays: each its own pool on the same database.
    let a = HoldSpool::Postgres(PgSpool::connect(&cfg.store, k.clone()).await.unwrap());
    let b = HoldSpool::Postgres(PgSpool::connect(&cfg.store, k.clone()).await.unwrap());
    let id = new_id(1_700_000_000);
    let raw = b"From: <alice@corp.test>\r\nTo: <eve@new.test>\r\nSubject: Quarterly figures\r\n\r\nsecret body\r\n";
    a.put(&held_meta(&id, "alice@corp.test", "eve@new.test"), raw)
        .await
        .unwrap();
    let listed = b.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    let (meta, bytes) = b.get(&id).await.unwrap().unwrap();
    assert_eq!(meta.envelope.mail_from, "alice@corp.test");
    assert_eq!(bytes, raw.to_vec());
    // Sealed at rest: neither the address nor the body is in the database.
    let dump = pg.dump();
    assert!(!pg_support::contains(&dump, b"alice@corp.test"));
    assert!(!pg_support::contains(&dump, b"secret body"));
    // Released on B; A then finds it gone, and a second release is refused.
    assert!(b.remove(&id).await.unwrap());
    assert!(a.get(&id).await.unwrap().is_none());
    assert!(!a.remove(&id).await.unwrap());
    assert!(a.list().await.unwrap().is_empty());
    assert!(matches!(
        a.get("../x").await,
        Err(misdirect::outbound::spool::SpoolError::BadId)
    ));
    // The directory spool answers the same calls.
    let d = tempfile::tempdir().unwrap();
    let ds = HoldSpool::Dir(
        Spool::open(d.path(), Arc::new(Keys::from_secret([5; 32])))
            .await
            .unwrap(),
    );
    ds.put(&held_meta(&id, "alice@corp.test", "eve@new.test"), raw)
        .await
        .unwrap();
    assert_eq!(ds.list().await.unwrap().len(), 1);
    assert!(ds.remove(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_claim_is_held_by_one_relay_until_removed_given_up_or_lapsed() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    let k = keys(&cfg);
    let a = HoldSpool::Postgres(PgSpool::connect(&cfg.store, k.clone()).await.unwrap());
    let b = HoldSpool::Postgres(PgSpool::connect(&cfg.store, k.clone()).await.unwrap());
    let raw = b"From: <alice@corp.test>\r\n\r\nbody\r\n";
    let id = new_id(1_700_000_000);
    a.put(&held_meta(&id, "alice@corp.test", "eve@new.test"), raw)
        .await
        .unwrap();
    let lease = Duration::from_secs(600);
    let ClaimOutcome::Claimed(ca) = a.claim(&id, lease).await.unwrap() else {
        panic!("first claim refused");
    };
    // Claimed by A: B is told it is busy, and still sees the hold.
    assert_eq!(b.claim(&id, lease).await.unwrap(), ClaimOutcome::Busy);
    assert_eq!(a.claim(&id, lease).await.unwrap(), ClaimOutcome::Busy);
    assert_eq!(b.list().await.unwrap().len(), 1);
    // Given up (A's delivery failed): B may claim at once.
    a.unclaim(&ca).await.unwrap();
    let ClaimOutcome::Claimed(cb) = b.claim(&id, lease).await.unwrap() else {
        panic!("claim after unclaim refused");
    };
    // A's stale claim neither removes nor frees B's.
    assert!(!a.remove_claimed(&ca).await.unwrap());
    a.unclaim(&ca).await.unwrap();
    assert_eq!(a.claim(&id, lease).await.unwrap(), ClaimOutcome::Busy);
    assert!(b.remove_claimed(&cb).await.unwrap());
    assert_eq!(a.claim(&id, lease).await.unwrap(), ClaimOutcome::Missing);
    assert!(b.list().await.unwrap().is_empty());
    // A lease that has run out (a relay died mid-release) blocks nobody.
    let id2 = new_id(1_700_000_001);
    a.put(&held_meta(&id2, "alice@corp.test", "eve@new.test"), raw)
        .await
        .unwrap();
    let ClaimOutcome::Claimed(dead) = a.claim(&id2, Duration::ZERO).await.unwrap() else {
        panic!("claim refused");
    };
    let ClaimOutcome::Claimed(live) = b.claim(&id2, lease).await.unwrap() else {
        panic!("a lapsed claim still blocks");
    };
    assert!(!a.remove_claimed(&dead).await.unwrap());
    assert!(b.remove_claimed(&live).await.unwrap());
    assert!(matches!(
        a.claim("../x", lease).await,
        Err(misdirect::outbound::spool::SpoolError::BadId)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_relays_keep_delivering_and_learning_catches_up() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let a = relay(sink.addr, shared.path(), &pg.url()).await;
    let b = relay(sink.addr, shared.path(), &pg.url()).await;
    // History so that mail to bob scores 0 and is delivered.
    send(a.addr, "alice@corp.test", &["bob@corp.test"], "before").await;
    sink.recv().await;
    until(Duration::from_secs(20), "B to learn the first mail", || {
        edge_total(&b.graph, "alice@corp.test", "bob@corp.test") == 1
    })
    .await;

    pg.stop();
    for (i, r) in [&a, &b].into_iter().enumerate() {
        for j in 0..3 {
            let reply = send(
                r.addr,
                "alice@corp.test",
                &["bob@corp.test"],
                &format!("down-{i}-{j}"),
            )
            .await;
            assert!(reply.starts_with("250"), "{reply}");
            let got = sink.recv().await;
            assert!(String::from_utf8_lossy(&got.data).contains("action=deliver"));
        }
    }
    // Both notice the outage and hold their learning in the queue.
    for r in [&a, &b] {
        let s = r.graph.shared_store().unwrap().clone();
        until(Duration::from_secs(30), "the outage to be noticed", || {
            !s.is_up() && s.queued_bytes() > 0
        })
        .await;
    }
    // Each relay scores its own learning from memory meanwhile.
    for r in [&a, &b] {
        until(Duration::from_secs(20), "own learning in memory", || {
            edge_total(&r.graph, "alice@corp.test", "bob@corp.test") == 4
        })
        .await;
    }

    pg.start_server();
    for (name, r) in [("A", &a), ("B", &b)] {
        let s = r.graph.shared_store().unwrap().clone();
        until(Duration::from_secs(60), name, || {
            s.is_up()
                && s.queued_bytes() == 0
                && edge_total(&r.graph, "alice@corp.test", "bob@corp.test") == 7
        })
        .await;
        assert_eq!(s.dropped_batches(), 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(sink.addr, dir.path(), shared.path(), &pg.url());
    let (c, _t) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    assert_eq!(edge_total(&c, "alice@corp.test", "bob@corp.test"), 7);
    a.trigger.trigger();
    b.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_queue_drops_oldest_beyond_its_budget() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        shared.path(),
        &pg.url(),
    );
    cfg.store.outage_queue = 4096;
    let (a, _t) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    pg.stop();
    let s = a.shared_store().unwrap().clone();
    for i in 0..40 {
        a.learn(event(
            "alice@corp.test",
            &["bob@corp.test"],
            1_700_000_000 + i,
        ))
        .unwrap();
        tokio::time::sleep(BATCH).await;
    }
    until(Duration::from_secs(30), "batches dropped", || {
        s.dropped_batches() > 0
    })
    .await;
    assert!(s.queued_bytes() <= 4096, "{}", s.queued_bytes());
    // Memory keeps everything it learnt.
    assert_eq!(edge_total(&a, "alice@corp.test", "bob@corp.test"), 40);
    pg.start_server();
    until(Duration::from_secs(60), "queue written", || {
        s.is_up() && s.queued_bytes() == 0
    })
    .await;
    let (c, _t) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    let stored = edge_total(&c, "alice@corp.test", "bob@corp.test");
    assert!(stored > 0 && stored < 40, "stored {stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_export_on_the_shared_store() {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        shared.path(),
        &pg.url(),
    );
    let k = keys(&cfg);
    let (a, _ta) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    let (b, _tb) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    a.learn(event(
        "alice@corp.test",
        &["bob@corp.test", "carol@corp.test"],
        1_700_000_000,
    ))
    .unwrap();
    a.learn(event("bob@corp.test", &["carol@corp.test"], 1_700_000_100))
        .unwrap();
    let spool = PgSpool::connect(&cfg.store, k.clone()).await.unwrap();
    let id = new_id(1_700_000_000);
    spool
        .put(&held_meta(&id, "dave@corp.test", "bob@corp.test"), b"x")
        .await
        .unwrap();
    until(Duration::from_secs(20), "B to learn", || {
        edge_total(&b, "bob@corp.test", "carol@corp.test") == 1
    })
    .await;
    // Nothing in clear in the database.
    let dump = pg.dump();
    for addr in [
        "alice@corp.test",
        "bob@corp.test",
        "carol@corp.test",
        "Alice Example",
    ] {
        assert!(
            !pg_support::contains(&dump, addr.as_bytes()),
            "{addr} in clear"
        );
    }
    // Export reads it back (the key holder can).
    let graphs: HashMap<String, Graph> = {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || misdirect::cli::postgres::load_graphs(&c))
            .await
            .unwrap()
            .unwrap()
    };
    let exp = graphs["default"]
        .export("bob@corp.test")
        .unwrap()
        .to_string();
    assert!(exp.contains("carol@corp.test"), "{exp}");

    let report = b.forget("bob@corp.test").await.unwrap();
    assert!(report.tenants >= 1 && report.records > 0);
    for (name, h) in [("A", &a), ("B", &b)] {
        until(Duration::from_secs(20), name, || {
            edge_total(h, "alice@corp.test", "bob@corp.test") == 0
                && edge_total(h, "bob@corp.test", "carol@corp.test") == 0
        })
        .await;
        // What did not involve bob stays.
        assert_eq!(edge_total(h, "alice@corp.test", "carol@corp.test"), 1);
        assert_eq!(
            h.with_view("default", |v| v.address("bob@corp.test").senders),
            0
        );
    }
    let (c, _tc) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    assert_eq!(edge_total(&c, "alice@corp.test", "bob@corp.test"), 0);
    assert_eq!(edge_total(&c, "alice@corp.test", "carol@corp.test"), 1);
    assert!(c
        .with_view("default", |v| v.display_names("bob@corp.test"))
        .is_empty());
    // Held mail to the address is gone too.
    assert!(spool.get(&id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_an_embedded_graph_and_holds_then_compaction_keeps_it() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    cfg.store.path = dir.path().join("graph.redb");
    let k = keys(&cfg);
    // An embedded store with some history, and a directory spool hold.
    {
        let store = Store::open_embedded(&cfg.store.path, k.clone()).unwrap();
        let mut graphs: HashMap<String, Graph> = HashMap::new();
        for i in 0..5 {
            event(
                "alice@corp.test",
                &["bob@corp.test", "carol@corp.test"],
                1_700_000_000 + i,
            )
            .apply(&mut graphs, &cfg.graph);
        }
        let mut batch = misdirect::store::Batch::default();
        let g = &graphs["default"];
        store.encode(&mut batch, "default", g, g.all_records());
        store.commit(batch).unwrap();
    }
    let spool = Spool::open(dir.path().join("spool"), k.clone())
        .await
        .unwrap();
    let id = new_id(1_700_000_000);
    spool
        .put(
            &held_meta(&id, "alice@corp.test", "eve@new.test"),
            b"held bytes",
        )
        .await
        .unwrap();

    let s = misdirect::cli::postgres::migrate_embedded_to_postgres(&cfg)
        .await
        .unwrap();
    assert_eq!((s.tenants, s.edges, s.held), (1, 2, 1));
    // A second migration into the now non-empty store is refused.
    assert!(misdirect::cli::postgres::migrate_embedded_to_postgres(&cfg)
        .await
        .is_err());

    let (a, _ta) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    assert_eq!(edge_total(&a, "alice@corp.test", "bob@corp.test"), 5);
    assert_eq!(
        a.with_view("default", |v| v.co_count(
            "alice@corp.test",
            "bob@corp.test",
            "carol@corp.test"
        )),
        5
    );
    let pgs = PgSpool::connect(&cfg.store, k.clone()).await.unwrap();
    assert_eq!(
        pgs.get(&id).await.unwrap().unwrap().1,
        b"held bytes".to_vec()
    );

    // New learning on top, then compaction folds the log into snapshots
    // and purges what is older than the cutoff.
    a.learn(event("alice@corp.test", &["bob@corp.test"], 1_800_000_000))
        .unwrap();
    a.learn(event("frank@corp.test", &["gina@corp.test"], 1_600_000_000))
        .unwrap();
    let pool = postgres::pool_for(&cfg.store).await.unwrap();
    let c2 = cfg.clone();
    until(Duration::from_secs(20), "learning written", || {
        edge_total(&a, "frank@corp.test", "gina@corp.test") == 1
    })
    .await;
    tokio::time::sleep(BATCH * 3).await;
    assert!(
        postgres::compact(&pool, k.clone(), &c2.graph, Some(1_650_000_000))
            .await
            .unwrap()
    );
    let (b, _tb) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    assert_eq!(edge_total(&b, "alice@corp.test", "bob@corp.test"), 6);
    assert_eq!(edge_total(&b, "frank@corp.test", "gina@corp.test"), 0);
    // A relay that was running reloads past the compaction.
    until(
        Duration::from_secs(20),
        "A to reload after compaction",
        || edge_total(&a, "frank@corp.test", "gina@corp.test") == 0,
    )
    .await;
    assert_eq!(edge_total(&a, "alice@corp.test", "bob@corp.test"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_is_created_once_and_versioned() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    let pool = postgres::pool_for(&cfg.store).await.unwrap();
    // Several relays starting at once.
    let (x, y, z) = tokio::join!(
        postgres::migrate_schema(&pool),
        postgres::migrate_schema(&pool),
        postgres::migrate_schema(&pool)
    );
    assert_eq!((x.unwrap(), y.unwrap(), z.unwrap()), (2, 2, 2));
    let c = pool.get().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // A bad URL is a clear configuration error.
    let mut bad = cfg.clone();
    bad.store.url = "host=127.0.0.1 port=notaport".into();
    let mut errs = Vec::new();
    bad.validate_into(&mut errs);
    assert!(errs.iter().any(|e| e.starts_with("store.url")), "{errs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_connects_with_rustls_and_never_falls_back_to_plain() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pg = PgCluster::start_with(|d| {
        std::fs::write(d.join("server.crt"), ck.cert.pem()).unwrap();
        std::fs::write(d.join("server.key"), ck.signing_key.serialize_pem()).unwrap();
        format!(
            "-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
            d.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    );
    let mut cfg = pg_config("127.0.0.1:9".parse().unwrap(), dir.path(), dir.path(), &url);
    cfg.store.tls = misdirect::config::store::PgTls::Require;
    cfg.store.tls_ca = Some(ca.clone());
    let (g, _t) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    g.learn(event("alice@corp.test", &["bob@corp.test"], 1_700_000_000))
        .unwrap();
    let (h, _t2) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    until(Duration::from_secs(20), "learning over TLS", || {
        edge_total(&h, "alice@corp.test", "bob@corp.test") == 1
    })
    .await;
    // The session really is encrypted.
    let pool = postgres::pool_for(&cfg.store).await.unwrap();
    let c = pool.get().await.unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // A CA that did not sign the server certificate is refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let bad = postgres::pool_for(&cfg.store).await.unwrap();
    assert!(bad.get().await.is_err());
    // A server without TLS is refused rather than used in plain text.
    let plain = PgCluster::start();
    let mut cfg2 = cfg.clone();
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    cfg2.store.url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres",
        plain.port
    );
    let p2 = postgres::pool_for(&cfg2.store).await.unwrap();
    assert!(p2.get().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_apart_in_the_shared_store() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    cfg.tenants
        .tenant
        .push(misdirect::config::store::TenantConfig {
            name: "other".into(),
            domains: vec!["other.test".into()],
        });
    let k = keys(&cfg);
    let (a, _ta) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    let (b, _tb) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    a.learn(event("alice@corp.test", &["bob@corp.test"], 1_700_000_000))
        .unwrap();
    let mut ev = event("zoe@other.test", &["bob@corp.test"], 1_700_000_001);
    ev.tenant = a.tenant_for("zoe@other.test");
    assert_eq!(ev.tenant, "other");
    a.learn(ev).unwrap();
    until(Duration::from_secs(20), "B to learn both tenants", || {
        b.with_view("other", |v| v.sender("zoe@other.test").messages) == 1
            && edge_total(&b, "alice@corp.test", "bob@corp.test") == 1
    })
    .await;
    // Tenant "other"'s mail to bob leaves the default tenant's view of bob
    // unchanged, and the other way round.
    assert_eq!(
        b.with_view("default", |v| v.address("bob@corp.test").senders),
        1
    );
    assert_eq!(
        b.with_view("default", |v| v.sender("zoe@other.test").messages),
        0
    );
    assert_eq!(
        b.with_view("other", |v| v.sender("alice@corp.test").messages),
        0
    );
    let (c, _tc) = GraphHandle::open(&cfg, k).await.unwrap();
    assert_eq!(
        c.with_view("other", |v| v.address("bob@corp.test").senders),
        1
    );
    assert_eq!(
        c.with_view("default", |v| v.address("bob@corp.test").senders),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_export_commands_on_the_shared_store() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    let k = keys(&cfg);
    let (a, _ta) = GraphHandle::open(&cfg, k.clone()).await.unwrap();
    a.learn(event(
        "alice@corp.test",
        &["bob@corp.test", "carol@corp.test"],
        1_700_000_000,
    ))
    .unwrap();
    tokio::time::sleep(BATCH * 4).await;
    let file = cli_config(dir.path(), &pg, &cfg);
    let run = |args: &[&str]| run_cli(&file, args);
    // A message to Bob held in the shared store (by any relay).
    let spool = PgSpool::connect(&cfg.store, k.clone()).await.unwrap();
    let held_id = new_id(1_700_000_000);
    spool
        .put(
            &held_meta(&held_id, "alice@corp.test", "bob@corp.test"),
            b"From: <alice@corp.test>\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    let exported = tokio::task::block_in_place(|| run(&["export", "Bob@Corp.test"]));
    assert!(exported.contains("alice@corp.test"), "{exported}");
    let v: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(v["held"][0]["id"], held_id.as_str(), "{exported}");
    assert_eq!(v["held"][0]["role"], "recipient", "{exported}");
    let forgot = tokio::task::block_in_place(|| run(&["forget", "bob@corp.test"]));
    assert!(forgot.contains("\"tenants\":1"), "{forgot}");
    assert!(forgot.contains("\"held\":1"), "{forgot}");
    assert!(spool.get(&held_id).await.unwrap().is_none());
    let exported = tokio::task::block_in_place(|| run(&["export", "bob@corp.test"]));
    assert!(!exported.contains("alice@corp.test"), "{exported}");
    // The running relay reloads and forgets too.
    until(Duration::from_secs(20), "the relay to reload", || {
        edge_total(&a, "alice@corp.test", "bob@corp.test") == 0
    })
    .await;
    assert_eq!(edge_total(&a, "alice@corp.test", "carol@corp.test"), 1);
}

/// `misdirectd import` on a postgres configuration writes through the
/// shared learning log: a relay already running on the database sees the
/// imported history (polled for up to 20 s), and a second import of the
/// same archive adds to the counts (an import is new mail, not a merge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_writes_into_the_shared_store() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pg_config(
        "127.0.0.1:9".parse().unwrap(),
        dir.path(),
        dir.path(),
        &pg.url(),
    );
    let (running, _task) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    let mbox = dir.path().join("sent.mbox");
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&format!(
            "From alice@corp.test Mon Nov 23 09:00:00 2026\nFrom: Alice <alice@corp.test>\nTo: bob@partner.test\nCc: carol@corp.test\nSubject: note {i}\nDate: Mon, {} Nov 2026 09:00:00 +0000\nMessage-ID: <n{i}@corp.test>\n\nbody\n\n",
            1 + i % 28
        ));
    }
    std::fs::write(&mbox, text).unwrap();
    let file = cli_config(dir.path(), &pg, &cfg);
    let import = || {
        let out = run_cli(&file, &["import", "--quiet", mbox.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["messages"], 30, "{v}");
        assert_eq!(v["bad"], 0, "{v}");
    };
    tokio::task::block_in_place(import);
    until(
        Duration::from_secs(20),
        "the relay to see the import",
        || edge_total(&running, "alice@corp.test", "bob@partner.test") == 30,
    )
    .await;
    assert_eq!(
        edge_total(&running, "alice@corp.test", "carol@corp.test"),
        30
    );
    tokio::task::block_in_place(import);
    until(Duration::from_secs(20), "the second import", || {
        edge_total(&running, "alice@corp.test", "bob@partner.test") == 60
    })
    .await;
    // A relay started afterwards loads it from the database.
    let (fresh, _t) = GraphHandle::open(&cfg, keys(&cfg)).await.unwrap();
    assert_eq!(
        edge_total(&fresh, "alice@corp.test", "bob@partner.test"),
        60
    );
}
