//! `POST /forget` on the running daemon: the built `misdirectd serve`
//! binary with the embedded store in a temp dir, mail over real SMTP, the
//! admin API over HTTP. Scores come from the never-seen baseline: once a
//! sender has history, a recipient it never wrote to scores 0.9 and one it
//! wrote to scores 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{admin_daemon_config, free_port, AdminDaemon, ADMIN_TOKEN};
use common::{message, Sink};

const TOKEN: &str = ADMIN_TOKEN;
const ALICE: &str = "alice@acme.test";
const BOB: &str = "bob@partner.test";
const STRANGER: &str = "stranger@elsewhere.test";
const HOLD: &str = "[policy]\nhold_at = 0.8\n[hold]\nrelease_domain = \"confirm.acme.test\"\n";

type Daemon = AdminDaemon;

impl AdminDaemon {
    /// The live daemon's score for one message from `from` to `to`.
    async fn score(&self, from: &str, to: &str) -> f64 {
        let (st, v) = self
            .http("POST", "/check", Some(TOKEN), &message(from, to, "probe"))
            .await;
        assert_eq!(st, 200, "{v}");
        v["verdict"]["score"].as_f64().unwrap()
    }

    async fn forget(&self, address: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "address": address }).to_string();
        self.http("POST", "/forget", Some(TOKEN), body.as_bytes())
            .await
    }
}

fn export(config: &Path, addr: &str) -> serde_json::Value {
    cli_json(config, "export", addr)
}

/// `misdirectd CMD --config CONFIG ADDR`, which must succeed; its JSON.
fn cli_json(config: &Path, cmd: &str, addr: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args([cmd, "--config"])
        .arg(config)
        .arg(addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_on_the_running_daemon_erases_graph_store_and_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let (port, admin) = (free_port(), free_port());
    let config = admin_daemon_config(dir.path(), port, admin, sink.addr.port(), HOLD);
    let d = Daemon::spawn(config.clone(), port, admin).await;

    // Alice writes to Bob (delivered: no history yet) and the daemon learns it.
    d.teach_pair(ALICE, BOB, STRANGER, &mut sink).await;
    assert_eq!(d.score(ALICE, BOB).await, 0.0);
    // A message to a stranger is held.
    let r = d
        .send(ALICE, &[STRANGER], &message(ALICE, STRANGER, "held"))
        .await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    sink.recv().await; // the notice
    assert_eq!(d.holds().await.len(), 1);

    // Refusals: no token, wrong method, a body that is not JSON, an
    // address that does not parse.
    let body = br#"{"address": "bob@partner.test"}"#;
    assert_eq!(d.http("POST", "/forget", None, body).await.0, 401);
    assert_eq!(d.http("GET", "/forget", Some(TOKEN), b"").await.0, 405);
    let (st, v) = d.http("POST", "/forget", Some(TOKEN), b"bob").await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = d.forget("not an address").await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(d.score(ALICE, BOB).await, 0.0, "a refused erasure erased");

    // Erase Bob (spelt in another case): Alice's mail to him now scores as
    // never seen, at once.
    let (st, v) = d.forget("Bob@Partner.TEST").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenants"], 1, "{v}");
    assert!(v["records"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["held"], 0, "{v}");
    assert_eq!(d.score(ALICE, BOB).await, 0.9);
    // The store file was rewritten: not even Bob's pseudonym is left in it
    // (no freed page keeps his records), while Alice's still is.
    let keys = misdirect::privacy::Keys::load(&dir.path().join("data").join("keys.json")).unwrap();
    let store = std::fs::read(dir.path().join("data").join("graph.redb")).unwrap();
    let has = |addr: &str| {
        let ps = keys.pseudonym_bytes("default", addr);
        store.windows(ps.len()).any(|w| w == ps)
    };
    assert!(!has(BOB), "Bob's pseudonym is still in the store file");
    assert!(has(ALICE));
    // Unknown now: nothing to erase.
    let (st, v) = d.forget(BOB).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["tenants"].as_u64(), v["held"].as_u64()),
        (Some(0), Some(0))
    );

    // Erasing the stranger removes the held message to it.
    let (st, v) = d.forget(STRANGER).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["held"], 1, "{v}");
    assert!(d.holds().await.is_empty());
    assert!(sink.nothing_more().await, "an erased hold was delivered");

    // Learning goes on after the live rewrite: Dave (no history, so
    // delivered) writes to Carol and the daemon, on the new store file,
    // learns it and keeps it across the restart below.
    let (dave, carol) = ("dave@acme.test", "carol@partner.test");
    let r = d.send(dave, &[carol], &message(dave, carol, "later")).await;
    assert!(r.starts_with("250 "), "{r}");
    sink.recv().await;
    let start = Instant::now();
    while d.score(dave, STRANGER).await != 0.9 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never learnt Dave -> Carol"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Durable: after a restart the daemon still has never seen Bob, and the
    // store (read with the daemon stopped) holds nothing about him.
    d.terminate().await;
    let e = export(&config, BOB);
    assert_eq!(e["tenants"], serde_json::json!([]), "{e}");
    let e = export(&config, ALICE);
    assert_eq!(
        e["tenants"][0]["data"]["sent_to"],
        serde_json::json!([]),
        "{e}"
    );
    let d = Daemon::spawn(config, port, admin).await;
    assert_eq!(d.score(ALICE, BOB).await, 0.9);
    assert_eq!(d.score("dave@acme.test", "carol@partner.test").await, 0.0);
    assert_eq!(d.score("dave@acme.test", STRANGER).await, 0.9);
    d.terminate().await;
}

/// Erasing an address also removes the queued DSNs naming it: DSNs the
/// next hop deferred (to Alice, about a refused address) leave the outbox
/// with that address's erasure, through the admin API and through
/// `misdirectd forget` on the stopped daemon's files, before they could go
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_the_queued_dsns_naming_the_address() {
    const GONE: [&str; 2] = ["gone@partner.test", "left@partner.test"];
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    {
        let mut c = sink.ctl.lock().unwrap();
        c.tempfail_null_sender = true;
        c.reject_rcpts.extend(GONE.iter().map(|g| g.to_string()));
    }
    let d = Daemon::start(dir.path(), sink.addr.port(), "").await;
    for gone in GONE {
        let r = d
            .send(ALICE, &[BOB, gone], &message(ALICE, BOB, "partial"))
            .await;
        assert!(r.starts_with("250") && r.contains("is queued"), "{r}");
        assert_eq!(sink.recv().await.rcpt_to, vec![BOB]);
    }
    let outbox = dir.path().join("data").join("outbox");
    let queued = || {
        std::fs::read_dir(&outbox)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "dsn")
            })
            .count()
    };
    assert_eq!(queued(), 2);
    // Someone else's erasure leaves them.
    let (st, v) = d.forget(STRANGER).await;
    assert_eq!((st, &v["dsns"]), (200, &serde_json::json!(0)), "{v}");
    assert_eq!(queued(), 2);
    let (st, v) = d.forget(GONE[0]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["dsns"], 1, "{v}");
    assert_eq!(queued(), 1);
    let config = d.config.clone();
    d.terminate().await;
    let v = cli_json(&config, "forget", GONE[1]);
    assert_eq!(v["dsns"], 1, "{v}");
    assert_eq!(queued(), 0);
    assert!(sink.nothing_more().await);
}
