//! Holds in the shared PostgreSQL store, end to end: two built
//! `misdirectd serve` processes on one throwaway PostgreSQL cluster (see
//! tests/pg_support), real SMTP over loopback, the in-process next hop from
//! tests/common, each relay's admin API over HTTP. Scores come from the
//! never-seen baseline: once a sender has history, a recipient nobody here
//! wrote to scores 0.9 and is held (`hold_at = 0.8`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod pg_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::{assert_released, free_port, release_address, AdminDaemon, ADMIN_TOKEN};
use common::{message, Received, Sink};
use pg_support::PgCluster;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = ADMIN_TOKEN;
const ALICE: &str = "alice@acme.test";
const BOB: &str = "bob@partner.test";
const STRANGER: &str = "stranger@elsewhere.test";

/// The store, key file and hold settings every relay of the deployment
/// shares (`shared`: the directory of the common key file), next hop `hop`,
/// `hold_extra` appended to `[hold]`.
fn common_sections(pg: &PgCluster, shared: &Path, hop: u16, hold_extra: &str) -> String {
    format!(
        "[relay]\nhost = \"127.0.0.1\"\nport = {hop}\ntls = \"none\"\n\
         [store]\nbackend = \"postgres\"\nurl = \"{url}\"\nbatch_interval = \"100ms\"\nrefresh_interval = \"200ms\"\n\
         [privacy]\nkey_file = \"{k}/keys.json\"\nretention_days = 0\n\
         [policy]\nhold_at = 0.8\n\
         [hold]\nrelease_domain = \"confirm.acme.test\"\nsecret = \"shared-release-secret-0123456789\"\n\
         next_hop = \"127.0.0.1:{hop}\"\n{hold_extra}\
         [model]\nscorer = \"never-seen\"\n",
        url = pg.url(),
        k = shared.display()
    )
}

/// One relay process (killed when dropped) with its admin API.
type Daemon = AdminDaemon;

impl AdminDaemon {
    /// `misdirectd serve` with its own state directory under `dir` and the
    /// deployment's `common` sections.
    async fn start_relay(dir: &Path, common: &str) -> AdminDaemon {
        let (port, admin) = (free_port(), free_port());
        let data = dir.join("data");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{d}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
             [metrics]\nenabled = false\n[log]\nlevel = \"warn\"\n{common}",
            d = data.display()
        );
        let config = dir.join("misdirectd.toml");
        std::fs::write(&config, text).unwrap();
        AdminDaemon::spawn(config, port, admin).await
    }

    /// The ids of the held messages (`GET /holds`).
    async fn hold_ids(&self) -> Vec<String> {
        self.holds()
            .await
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    }

    async fn release(&self, id: &str) -> (u16, serde_json::Value) {
        self.http("POST", &format!("/holds/{id}/release"), Some(TOKEN), b"")
            .await
    }

    /// Alice writes to Bob (delivered: no history yet); wait until this
    /// relay scores a stranger from Alice 0.9.
    async fn teach(&self, sink: &mut Sink) {
        self.teach_pair(ALICE, BOB, STRANGER, sink).await
    }

    /// Send Alice -> `<subject>@elsewhere.test` (a new recipient each time:
    /// a release teaches the graph its pair), expect it held; returns the
    /// hold id, the release address from the notice the next hop got, and
    /// the message.
    async fn hold(&self, subject: &str, sink: &mut Sink) -> (String, String, Vec<u8>) {
        let to = stranger(subject);
        let m = message(ALICE, &to, subject);
        let r = self.send(ALICE, &[&to], &m).await;
        assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
        let id = r.trim_end().rsplit(' ').next().unwrap().to_string();
        let notice = sink.recv().await;
        assert_eq!(notice.rcpt_to, vec![ALICE.to_string()]);
        (id, release_address(&notice), m)
    }
}

fn stranger(subject: &str) -> String {
    format!("{subject}@elsewhere.test")
}

/// A released message: to the stranger of `subject`, our header, then the
/// original byte for byte.
fn assert_released_to(got: &Received, original: &[u8], subject: &str, by: &str) {
    assert_eq!(got.rcpt_to, vec![stranger(subject)]);
    assert_released(got, original, by);
}

/// A TCP relay to `to` that waits `delay` before connecting each accepted
/// connection through: a slow next hop, so that a delivery takes long
/// enough for a second release of the same hold to start meanwhile.
async fn slow_hop(to: std::net::SocketAddr, delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut out = TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    port
}

/// Fields drop in order: the relays stop before the database does.
struct Deployment {
    a: Daemon,
    b: Daemon,
    shared: tempfile::TempDir,
    common: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _pg: PgCluster,
}

/// Two relays on one database, next hop `hop`.
async fn two_relays(hop: u16) -> Deployment {
    two_relays_with(hop, "").await
}

/// [`two_relays`] with more `[hold]` settings.
async fn two_relays_with(hop: u16, hold_extra: &str) -> Deployment {
    let pg = PgCluster::start();
    let shared = tempfile::tempdir().unwrap();
    let common = common_sections(&pg, shared.path(), hop, hold_extra);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Daemon::start_relay(da.path(), &common).await;
    let b = Daemon::start_relay(db.path(), &common).await;
    Deployment {
        a,
        b,
        shared,
        common,
        _dirs: (da, db),
        _pg: pg,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_made_on_relay_a_is_listed_and_released_on_relay_b() {
    let mut sink = Sink::start().await;
    let d = two_relays(sink.addr.port()).await;
    d.a.teach(&mut sink).await;

    // Held at A: B's admin API lists it, and B's release delivers it once.
    let (id, _, m1) = d.a.hold("one", &mut sink).await;
    assert!(sink.nothing_more().await, "the held message must not leave");
    assert_eq!(d.b.hold_ids().await, vec![id.clone()]);
    assert_eq!(d.a.hold_ids().await, vec![id.clone()]);
    let (st, v) =
        d.b.http("GET", &format!("/holds/{id}"), Some(TOKEN), b"")
            .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["headers"].as_str().unwrap().contains("Subject: one\r\n"));
    let (st, v) = d.b.release(&id).await;
    assert_eq!(st, 200, "{v}");
    assert_released_to(&sink.recv().await, &m1, "one", "admin");
    assert!(sink.nothing_more().await, "released more than once");
    assert!(d.a.hold_ids().await.is_empty());
    assert!(d.b.hold_ids().await.is_empty());
    // Gone for every relay.
    assert_eq!(d.a.release(&id).await.0, 404);
    assert_eq!(d.b.release(&id).await.0, 404);

    // The sender's reply to the notice of a hold made at A, sent through
    // B: B releases it (delivered once) and swallows the reply.
    let (id2, release, m2) = d.a.hold("two", &mut sink).await;
    assert!(release.ends_with("@confirm.acme.test"), "{release}");
    assert_eq!(d.b.hold_ids().await, vec![id2.clone()]);
    let reply = format!("From: <{ALICE}>\r\nTo: <{release}>\r\nSubject: Re: Held\r\n\r\nyes\r\n");
    let r = d.b.send(ALICE, &[&release], reply.as_bytes()).await;
    assert!(r.starts_with("250 "), "{r}");
    let got = sink.recv().await;
    assert_eq!(got.mail_from, ALICE);
    assert_released_to(&got, &m2, "two", "sender");
    assert!(
        sink.nothing_more().await,
        "the reply must be swallowed and the hold released once"
    );
    assert!(d.a.hold_ids().await.is_empty());
    assert!(d.b.hold_ids().await.is_empty());
    // The same reply again (through A this time) releases nothing.
    let r = d.a.send(ALICE, &[&release], reply.as_bytes()).await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(sink.nothing_more().await, "a second reply released again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_releases_from_two_relays_deliver_once() {
    let mut sink = Sink::start().await;
    // Every delivery waits half a second before reaching the next hop, so
    // both releases are under way at once.
    let hop = slow_hop(sink.addr, Duration::from_millis(500)).await;
    let d = two_relays(hop).await;
    d.a.teach(&mut sink).await;
    for round in 0..3 {
        let subject = format!("race{round}");
        let (id, _, m) = d.a.hold(&subject, &mut sink).await;
        // B lists it (same table) before both race for it.
        assert_eq!(d.b.hold_ids().await, vec![id.clone()]);
        let ((sa, va), (sb, vb)) = tokio::join!(d.a.release(&id), d.b.release(&id));
        let mut statuses = [sa, sb];
        statuses.sort();
        // One delivered; the other was told another request acts on it
        // (409), or that it is gone (404) if it came after the removal.
        assert!(
            statuses == [200, 409] || statuses == [200, 404],
            "A: {sa} {va}, B: {sb} {vb}"
        );
        assert_released_to(&sink.recv().await, &m, &subject, "admin");
        assert!(
            sink.nothing_more().await,
            "round {round}: the hold was delivered twice"
        );
        assert!(d.a.hold_ids().await.is_empty());
    }
    // A discard on A racing a release on B: one of them acts; the message
    // leaves once if the release won, never if the discard did.
    let (id, _, m) = d.a.hold("race-discard", &mut sink).await;
    let discard = format!("/holds/{id}/discard");
    let ((sa, va), (sb, vb)) = tokio::join!(
        d.a.http("POST", &discard, Some(TOKEN), b""),
        d.b.release(&id)
    );
    assert!(
        (sa == 200) != (sb == 200) && [409, 404].contains(&sa.max(sb)),
        "A discard: {sa} {va}, B release: {sb} {vb}"
    );
    if sb == 200 {
        assert_released_to(&sink.recv().await, &m, "race-discard", "admin");
    }
    assert!(
        sink.nothing_more().await,
        "delivered after a discard or twice"
    );
    assert!(d.b.hold_ids().await.is_empty());
}

/// The hold CLI on the postgres configuration (no daemon involved in the
/// release; it delivers through `[hold] next_hop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cli_lists_and_releases_from_the_shared_store() {
    let mut sink = Sink::start().await;
    let d = two_relays(sink.addr.port()).await;
    d.a.teach(&mut sink).await;
    let (id, _, m) = d.a.hold("cli", &mut sink).await;
    let cli_dir = tempfile::tempdir().unwrap();
    let file: PathBuf = cli_dir.path().join("misdirectd.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\ndata_dir = \"{}\"\n{}",
            cli_dir.path().join("data").display(),
            d.common
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
            .arg(args[0])
            .arg("--config")
            .arg(&file)
            .args(&args[1..])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = tokio::task::block_in_place(|| run(&["hold", "list"]));
    assert!(ok, "{err}");
    assert!(out.contains(&id), "{out}");
    assert!(out.contains("1 held"), "{out}");
    // A release whose delivery fails (nothing listens at its next hop)
    // gives its claim up: relay B releases the hold straight after.
    let dead = common::dead_port().await.local_addr().unwrap().port();
    let dead_file = cli_dir.path().join("dead-hop.toml");
    std::fs::write(
        &dead_file,
        std::fs::read_to_string(&file).unwrap().replace(
            &format!("next_hop = \"127.0.0.1:{}\"", sink.addr.port()),
            &format!("next_hop = \"127.0.0.1:{dead}\""),
        ),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_misdirectd"))
            .args(["hold", "--config"])
            .arg(&dead_file)
            .args(["release", &id])
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("delivery failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.b.hold_ids().await, vec![id.clone()]);
    let (st, v) = d.b.release(&id).await;
    assert_eq!(st, 200, "{v}");
    assert_released_to(&sink.recv().await, &m, "cli", "admin");
    // Another hold for the CLI release itself.
    let (id, _, m) = d.a.hold("cli2", &mut sink).await;
    let (ok, out, err) = tokio::task::block_in_place(|| run(&["hold", "release", &id]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("released {id}"));
    assert_released_to(&sink.recv().await, &m, "cli2", "admin");
    assert!(sink.nothing_more().await);
    assert!(d.a.hold_ids().await.is_empty());
    assert!(d.b.hold_ids().await.is_empty());
    let (ok, out, _) = tokio::task::block_in_place(|| run(&["hold", "list"]));
    assert!(ok);
    assert!(out.contains("0 held"), "{out}");
    // Releasing it again: a clear error, nothing delivered.
    let (ok, _, err) = tokio::task::block_in_place(|| run(&["hold", "release", &id]));
    assert!(!ok);
    assert!(err.contains("no held message"), "{err}");
    assert!(sink.nothing_more().await);
    // show and discard on a hold made at A.
    let (id, _, _) = d.a.hold("cli3", &mut sink).await;
    let (ok, out, err) = tokio::task::block_in_place(|| run(&["hold", "show", &id]));
    assert!(ok, "{err}");
    assert!(out.contains("Subject: cli3"), "{out}");
    assert!(!out.contains("Hello."), "the body must not be shown: {out}");
    let (ok, out, err) = tokio::task::block_in_place(|| run(&["hold", "discard", &id]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("discarded {id}"));
    assert!(sink.nothing_more().await, "a discarded message left");
    assert!(d.b.hold_ids().await.is_empty());
    // No directory spool was made: the holds live in the database only.
    assert!(!cli_dir.path().join("data/spool").exists());
    assert!(d.shared.path().join("keys.json").exists());
}

/// Both relays run the expiry task over the shared holds: an expired hold
/// is released by one of them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_released_once_by_the_two_relays_expiry_tasks() {
    let mut sink = Sink::start().await;
    let d = two_relays_with(
        sink.addr.port(),
        "hold_lifetime = \"1s\"\nexpiry_interval = \"200ms\"\nexpiry_action = \"release\"\n",
    )
    .await;
    d.a.teach(&mut sink).await;
    for round in 0..3 {
        let subject = format!("expiry{round}");
        let (id, _, m) = d.a.hold(&subject, &mut sink).await;
        assert_released_to(&sink.recv().await, &m, &subject, "expiry");
        assert!(
            sink.nothing_more().await,
            "round {round}: the expired hold was released twice"
        );
        assert!(!d.b.hold_ids().await.contains(&id));
    }
}
