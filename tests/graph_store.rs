//! The persistent graph: reload after restart, crash safety under kill -9,
//! tenant separation, erasure, retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_support;

use std::sync::Arc;
use std::time::Duration;

use graph_support::*;
use misdirect::address::{AddressConfig, Normalizer};
use misdirect::classify::baseline::NeverSeenScorer;
use misdirect::graph::GraphView;
use misdirect::message::MessageMeta;
use misdirect::privacy::Keys;
use misdirect::scorer::{ScoreInput, Scorer};
use misdirect::store::{GraphHandle, LearnEvent, LearnKind, Store};

fn event(handle: &GraphHandle, m: &Msg<'_>) -> LearnEvent {
    let meta = MessageMeta::parse(
        rfc822(m).as_bytes(),
        &Normalizer::new(AddressConfig::default()),
    );
    LearnEvent {
        tenant: handle.tenant_for(meta.sender().unwrap()),
        recipients: meta.recipients.clone(),
        meta,
        ts: m.ts,
        kind: LearnKind::Delivered,
    }
}

fn scores(handle: &GraphHandle, m: &Msg<'_>) -> Vec<f64> {
    let meta = MessageMeta::parse(
        rfc822(m).as_bytes(),
        &Normalizer::new(AddressConfig::default()),
    );
    let tenant = handle.tenant_for(meta.sender().unwrap());
    handle.with_view(&tenant, |g| {
        NeverSeenScorer
            .score(
                g,
                &ScoreInput {
                    meta: &meta,
                    recipients: &meta.recipients,
                    now: m.ts,
                },
            )
            .unwrap()
            .recipients
            .iter()
            .map(|r| r.score)
            .collect()
    })
}

async fn open(cfg: &misdirect::config::Config) -> (GraphHandle, tokio::task::JoinHandle<()>) {
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    GraphHandle::open(cfg, keys).await.unwrap()
}

#[tokio::test]
async fn learning_survives_a_restart_and_nothing_at_rest_is_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), ""));
    let (h, task) = open(&cfg).await;
    for i in 0..5 {
        h.learn(event(
            &h,
            &msg(
                "alice@corp.test",
                &["bob@partner.test", "carol@partner.test"],
                &["dave@corp.test"],
                1_700_000_000 + i * 3600,
                i as usize,
            ),
        ))
        .unwrap();
    }
    drop(h);
    task.await.unwrap();

    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        let e = g.edge("alice@corp.test", "bob@partner.test").unwrap();
        assert_eq!((e.to, e.cc, e.first), (5, 0, 1_700_000_000));
        assert_eq!(e.last, 1_700_000_000 + 4 * 3600);
        assert_eq!(g.edge("alice@corp.test", "dave@corp.test").unwrap().cc, 5);
        assert_eq!(
            g.co_count("alice@corp.test", "carol@partner.test", "bob@partner.test"),
            5
        );
        assert_eq!(g.sender("alice@corp.test").messages, 5);
        assert_eq!(g.sender("alice@corp.test").contacts, 3);
        // Reloaded addresses get their sketches back.
        assert_eq!(contact_sketches_match(g, "alice@corp.test"), 3);
        assert_eq!(g.domain("partner.test").addresses, 2);
        assert_eq!(
            g.sender_domain("alice@corp.test", "partner.test")
                .unwrap()
                .total(),
            10
        );
        assert_eq!(g.display_names("alice@corp.test"), vec!["Sender Name"]);
        let mut p = g.thread_participants(&["m4.1700014400@fixture.test".into()]);
        p.sort();
        assert_eq!(
            p,
            vec![
                "alice@corp.test",
                "bob@partner.test",
                "carol@partner.test",
                "dave@corp.test"
            ]
        );
        assert_eq!(
            g.subject_participants("alice@corp.test", "RE: quarterly numbers")
                .len(),
            4
        );
    });
    drop(h);
    task.await.unwrap();

    for needle in [
        "alice@corp.test",
        "bob@partner.test",
        "alice",
        "partner.test",
        "Sender Name",
        "never stored",
    ] {
        assert_eq!(
            any_file_contains(dir.path(), needle.as_bytes()),
            None,
            "{needle} found at rest"
        );
    }
}

#[test]
fn kill_9_during_import_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let mbox = dir.path().join("big.mbox");
    let senders: Vec<String> = (0..40).map(|i| format!("s{i}@corp.test")).collect();
    let rcpts: Vec<String> = (0..400)
        .map(|i| format!("r{i}@ext{}.test", i % 37))
        .collect();
    let mut text = String::new();
    for n in 0..30_000usize {
        let s = &senders[n % senders.len()];
        let to = [rcpts[(n * 7) % rcpts.len()].as_str()];
        let cc = [rcpts[(n * 13 + 1) % rcpts.len()].as_str()];
        let m = msg(s, &to, &cc, 1_600_000_000 + n as i64 * 60, n);
        text.push_str(&format!("From {s} Mon Jan  1 00:00:00 2001\n"));
        text.push_str(&rfc822(&m).replace("\r\n", "\n"));
        text.push('\n');
    }
    std::fs::write(&mbox, text).unwrap();
    let store_path = dir.path().join("data/graph.redb");
    let cfg = load_config(&cfg_path);
    // Kill -9 once the store file passed `threshold` bytes. The file grows
    // while a commit is written, before it is durable: a kill then leaves
    // the store as it was (here: empty), which is consistent too. So the
    // threshold rises until a kill lands after some commit.
    let mut threshold = 2_000_000u64;
    let mut attempt = 0;
    let (keys, partial) = loop {
        attempt += 1;
        assert!(attempt <= 8, "no kill left a partial import");
        let _ = std::fs::remove_dir_all(dir.path().join("data"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_misdirectd"))
            .args([
                "import",
                "--quiet",
                "--config",
                cfg_path.to_str().unwrap(),
                mbox.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut killed = false;
        for _ in 0..3000 {
            std::thread::sleep(Duration::from_millis(10));
            if std::fs::metadata(&store_path).map(|m| m.len()).unwrap_or(0) > threshold {
                child.kill().unwrap(); // SIGKILL
                killed = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed && !status.success(),
            "import finished before it could be killed; make the fixture larger"
        );

        // Reopens, loads every record (a dangling reference would be an
        // error).
        let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
        let store = Store::open(&cfg, keys.clone()).unwrap();
        let graphs = store.load(&cfg.graph).unwrap();
        let Some(g) = graphs.get("default") else {
            // Killed during the first commit: nothing was stored.
            assert!(graphs.is_empty(), "{:?}", graphs.keys());
            threshold = threshold * 3 / 2;
            continue;
        };
        // Consistent: every edge's counts are mirrored by its recipient.
        let mut edges = 0u64;
        let mut to_r0 = 0u32;
        for s in &senders {
            g.for_each_contact(s, &mut |r, e| {
                edges += 1;
                if r == rcpts[0] {
                    to_r0 += e.total();
                }
            });
        }
        assert_eq!(edges as usize, g.edge_count());
        assert_eq!(g.address(&rcpts[0]).received, to_r0);
        assert!(g.edge_count() > 0, "a tenant without edges");
        break (keys, g.sender(&senders[0]).messages);
    };
    assert!(partial < 750, "sender 0 has {partial} of 750 messages");

    // A full import afterwards completes on the same store.
    let out = run_ok(&[
        "import",
        "--quiet",
        "--config",
        cfg_path.to_str().unwrap(),
        mbox.to_str().unwrap(),
    ]);
    assert!(out.contains("\"messages\":30000"), "{out}");
    let store = Store::open(&cfg, keys).unwrap();
    let graphs = store.load(&cfg.graph).unwrap();
    assert_eq!(
        graphs["default"].sender(&senders[0]).messages,
        750 + partial
    );
}

#[tokio::test]
async fn tenant_b_history_leaves_tenant_a_scores_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(
        dir.path(),
        "[tenants]\ndefault = \"a\"\n[[tenants.tenant]]\nname = \"b\"\ndomains = [\"b.test\"]\n",
    ));
    let (h, task) = open(&cfg).await;
    for i in 0..3 {
        h.learn(event(
            &h,
            &msg(
                "alice@a.test",
                &["bob@x.test"],
                &[],
                1_700_000_000 + i,
                i as usize,
            ),
        ))
        .unwrap();
    }
    let probe = msg(
        "alice@a.test",
        &["bob@x.test", "carol@y.test", "zed@b.test"],
        &[],
        1_700_100_000,
        99,
    );
    // Let the learning task apply the events (it is off the caller's path).
    for _ in 0..100 {
        if h.with_view("a", |g| g.sender("alice@a.test").messages) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = scores(&h, &probe);
    assert_eq!(before, vec![0.0, 0.9, 0.9]);
    // Tenant b writes a lot to carol, and zed (a b address) sends a lot.
    for i in 0..20 {
        h.learn(event(
            &h,
            &msg(
                "zed@b.test",
                &["carol@y.test", "bob@x.test"],
                &[],
                1_700_000_100 + i,
                100 + i as usize,
            ),
        ))
        .unwrap();
    }
    for _ in 0..100 {
        if h.with_view("b", |g| g.sender("zed@b.test").messages) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.with_view("b", |g| g.sender("zed@b.test").messages), 20);
    assert_eq!(scores(&h, &probe), before);
    drop(h);
    task.await.unwrap();
    // And after a restart from the store.
    let (h, task) = open(&cfg).await;
    assert_eq!(scores(&h, &probe), before);
    assert_eq!(h.with_view("a", |g| g.address("carol@y.test").senders), 0);
    assert_eq!(h.with_view("b", |g| g.address("carol@y.test").senders), 1);
    drop(h);
    task.await.unwrap();
}

#[tokio::test]
async fn handle_forget_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), ""));
    let (h, task) = open(&cfg).await;
    h.learn(event(
        &h,
        &msg(
            "alice@a.test",
            &["bob@x.test", "carol@x.test"],
            &[],
            1_700_000_000,
            1,
        ),
    ))
    .unwrap();
    for _ in 0..100 {
        if h.with_view("default", |g| g.sender("alice@a.test").contacts) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = h.forget("bob@x.test").await.unwrap();
    assert_eq!(r.tenants, 1);
    assert!(h.with_view("default", |g| g
        .edge("alice@a.test", "bob@x.test")
        .is_none()));
    drop(h);
    task.await.unwrap();
    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        assert!(g.edge("alice@a.test", "bob@x.test").is_none());
        assert!(g.edge("alice@a.test", "carol@x.test").is_some());
        assert_eq!(g.address("bob@x.test").received, 0);
        assert_eq!(g.co_count("alice@a.test", "bob@x.test", "carol@x.test"), 0);
        assert_eq!(g.domain("x.test").addresses, 1);
    });
    drop(h);
    task.await.unwrap();
}

#[tokio::test]
async fn records_learnt_across_restarts_update_the_same_store_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), ""));
    // Enough addresses that reload order (by pseudonym) differs from intern order.
    let rcpts: Vec<String> = (0..12).map(|i| format!("r{i}@x.test")).collect();
    let all: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for round in 0..3i64 {
        let (h, task) = open(&cfg).await;
        let mut order = all.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        h.learn(event(
            &h,
            &msg(
                "alice@a.test",
                &order,
                &[],
                1_700_000_000 + round,
                round as usize,
            ),
        ))
        .unwrap();
        drop(h);
        task.await.unwrap();
    }
    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        for a in &all {
            for b in &all {
                if a != b {
                    assert_eq!(g.co_count("alice@a.test", a, b), 3, "{a} {b}");
                }
            }
            assert_eq!(g.edge("alice@a.test", a).unwrap().to, 3);
        }
    });
    drop(h);
    task.await.unwrap();
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let counts = Store::open(&cfg, keys).unwrap().table_counts().unwrap();
    let get = |k: &str| {
        counts
            .iter()
            .find(|(n, _)| n == &format!("g/default/{k}"))
            .unwrap()
            .1
    };
    assert_eq!(get("co"), 66);
    assert_eq!(get("edge"), 12);
    assert_eq!(get("addr"), 13);
}

/// A discarded hold is remembered durably: the pair reads as discarded
/// after a restart, is exported, stops counting once mail to it is
/// delivered, and is erased with the address.
#[tokio::test]
async fn discarded_pairs_persist_until_delivery_and_are_erasable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(&write_config(dir.path(), ""));
    let t0 = 1_700_000_000;
    let (h, task) = open(&cfg).await;
    h.learn(event(
        &h,
        &msg("alice@corp.test", &["bob@corp.test"], &[], t0, 0),
    ))
    .unwrap();
    let discard = |h: &GraphHandle, ts: i64, n: usize| {
        let mut ev = event(
            h,
            &msg("alice@corp.test", &["mallory@else.test"], &[], ts, n),
        );
        ev.kind = LearnKind::Discarded;
        ev
    };
    h.learn(discard(&h, t0 + 120, 1)).unwrap();
    drop(h);
    task.await.unwrap();

    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        assert_eq!(
            g.discarded("alice@corp.test", "mallory@else.test"),
            Some(t0 + 120)
        );
        // A discard teaches nothing else: no edge, no co-recipients.
        assert!(g.edge("alice@corp.test", "mallory@else.test").is_none());
        assert_eq!(g.discarded("alice@corp.test", "bob@corp.test"), None);
        assert_eq!(g.discarded("bob@corp.test", "mallory@else.test"), None);
    });
    let export = {
        let map = h.graphs().read().unwrap();
        map["default"].export("mallory@else.test").unwrap()
    };
    assert_eq!(
        export["discarded_holds"][0]["sender"], "alice@corp.test",
        "{export}"
    );
    // Mail delivered to the pair later supersedes the discard.
    h.learn(event(
        &h,
        &msg("alice@corp.test", &["mallory@else.test"], &[], t0 + 600, 2),
    ))
    .unwrap();
    let mut superseded = false;
    for _ in 0..100 {
        superseded = h.with_view("default", |g| {
            g.discarded("alice@corp.test", "mallory@else.test")
                .is_none()
        });
        if superseded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(superseded);
    // A new discard after that delivery counts again; erasure removes it.
    h.learn(discard(&h, t0 + 900, 3)).unwrap();
    drop(h);
    task.await.unwrap();
    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        assert_eq!(
            g.discarded("alice@corp.test", "mallory@else.test"),
            Some(t0 + 900)
        );
    });
    h.forget("mallory@else.test").await.unwrap();
    drop(h);
    task.await.unwrap();
    let (h, task) = open(&cfg).await;
    h.with_view("default", |g| {
        assert_eq!(g.discarded("alice@corp.test", "mallory@else.test"), None);
    });
    let counts = {
        let map = h.graphs().read().unwrap();
        map["default"].discard_count()
    };
    assert_eq!(counts, 0);
    drop(h);
    task.await.unwrap();
}
