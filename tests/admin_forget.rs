//! `POST /forget` on the running daemon: the built `misdirectd serve`
//! binary with the embedded store in a temp dir, mail over real SMTP, the
//! admin API over HTTP. Scores come from the never-seen baseline: once a
//! sender has history, a recipient it never wrote to scores 0.9 and one it
//! wrote to scores 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{message, Client, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "admin-token-0123456789";
const ALICE: &str = "alice@acme.test";
const BOB: &str = "bob@partner.test";
const STRANGER: &str = "stranger@elsewhere.test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16, admin: u16, hop: u16) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{d}\"\n\
         [relay]\nhost = \"127.0.0.1\"\nport = {hop}\ntls = \"none\"\n\
         [store]\npath = \"{d}/graph.redb\"\nbatch_interval = \"100ms\"\n\
         [privacy]\nkey_file = \"{d}/keys.json\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
         [metrics]\nenabled = false\n[log]\nlevel = \"warn\"\n\
         [model]\nscorer = \"never-seen\"\n\
         [policy]\nhold_at = 0.8\n[hold]\nrelease_domain = \"confirm.acme.test\"\n",
        d = data.display()
    );
    let path = dir.join("misdirectd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    async fn spawn(config: PathBuf, port: u16, admin: u16) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let d = Daemon { child, port, admin };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut b = [0u8; 3];
                if s.read_exact(&mut b).await.is_ok() && &b == b"220" {
                    return d;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn terminate(mut self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, from: &str, to: &[&str], msg: &[u8]) -> String {
        let mut c = Client::greeted(([127, 0, 0, 1], self.port).into()).await;
        c.expect("EHLO client.test", "250").await;
        c.send_mail(from, to, msg).await
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let text = String::from_utf8(resp).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    /// The live daemon's score for one message from `from` to `to`.
    async fn score(&self, from: &str, to: &str) -> f64 {
        let (st, v) = self
            .http("POST", "/check", Some(TOKEN), &message(from, to, "probe"))
            .await;
        assert_eq!(st, 200, "{v}");
        v["verdict"]["score"].as_f64().unwrap()
    }

    async fn holds(&self) -> Vec<serde_json::Value> {
        let (st, v) = self.http("GET", "/holds", Some(TOKEN), b"").await;
        assert_eq!(st, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    async fn forget(&self, address: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "address": address }).to_string();
        self.http("POST", "/forget", Some(TOKEN), body.as_bytes())
            .await
    }
}

fn export(config: &Path, addr: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["export", "--config"])
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
    let config = write_config(dir.path(), port, admin, sink.addr.port());
    let d = Daemon::spawn(config.clone(), port, admin).await;

    // Alice writes to Bob (delivered: no history yet) and the daemon learns it.
    let r = d.send(ALICE, &[BOB], &message(ALICE, BOB, "first")).await;
    assert!(r.starts_with("250 "), "{r}");
    sink.recv().await;
    let start = Instant::now();
    while d.score(ALICE, BOB).await != 0.0 || d.score(ALICE, STRANGER).await != 0.9 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never learnt Alice -> Bob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A message to a stranger is held.
    let r = d
        .send(ALICE, &[STRANGER], &message(ALICE, STRANGER, "held"))
        .await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    sink.recv().await; // the notice
    assert_eq!(d.holds().await.len(), 1);

    // Refusals: no token, wrong method, a body without an address, an
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
    d.terminate().await;
}
