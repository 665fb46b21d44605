//! The privacy promise at rest, through the built daemon: known addresses and
//! display names go through real SMTP (some delivered, one refused by the
//! next hop, some held), then no file the daemon wrote and no line it logged
//! contains them in any letter case. `forget` then removes an address and its
//! held message; `export` of another address is readable JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::{free_port, DaemonProcess as Daemon, Output};
use common::{Client, Sink};

const SENDER: &str = "Quillon.Vexmarrow@Acme-Privacy.test";
const SENDER_NAME: &str = "Quillon Vexmarrow";
const FRIEND: &str = "zephyrine.oakhallow@partner-privacy.test";
const FRIEND_NAME: &str = "Zephyrine Oakhallow";
const REFUSED: &str = "brannoch.quelltide@partner-privacy.test";
const REFUSED_NAME: &str = "Brannoch Quelltide";
const STRANGER: &str = "MIRELDA.Ulvenfrost@Elsewhere-Privacy.test";
const STRANGER_NAME: &str = "Mirelda Ulvenfrost";
const STRANGER2: &str = "tavish.grimbolde@faraway-privacy.test";
const STRANGER2_NAME: &str = "Tavish Grimbolde";

/// Config with state under `dir/data`; holds what nobody here wrote to.
fn write_config(dir: &Path, port: u16, hop: u16) -> PathBuf {
    write_config_with(dir, port, hop, "")
}

/// `privacy` goes into `[privacy]`.
fn write_config_with(dir: &Path, port: u16, hop: u16, privacy: &str) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{d}\"\n\
         [relay]\nhost = \"127.0.0.1\"\nport = {hop}\ntls = \"none\"\n\
         [store]\npath = \"{d}/graph.redb\"\nbatch_interval = \"100ms\"\n\
         [privacy]\nkey_file = \"{d}/keys.json\"\n{privacy}\n\
         [metrics]\nenabled = false\n[log]\nlevel = \"debug\"\n\
         [model]\nscorer = \"never-seen\"\n\
         [policy]\nhold_at = 0.8\n[hold]\nrelease_domain = \"confirm.acme-privacy.test\"\n",
        d = data.display()
    );
    let path = dir.join("misdirectd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn spawn(config: &Path, port: u16, log: &Path) -> Daemon {
    Daemon::spawn(config, port, Output::File(log))
}

fn message(to: &[(&str, &str)], subject: &str) -> Vec<u8> {
    let to: Vec<String> = to.iter().map(|(n, a)| format!("\"{n}\" <{a}>")).collect();
    format!(
        "From: \"{SENDER_NAME}\" <{SENDER}>\r\nTo: {}\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{subject}@acme-privacy.test>\r\n\r\nHello.\r\n",
        to.join(", ")
    )
    .into_bytes()
}

async fn send(port: u16, to: &[(&str, &str)], subject: &str) -> String {
    let mut c = Client::greeted(([127, 0, 0, 1], port).into()).await;
    c.expect("EHLO upstream.test", "250").await;
    let rcpts: Vec<&str> = to.iter().map(|(_, a)| *a).collect();
    let r = c.send_mail(SENDER, &rcpts, &message(to, subject)).await;
    c.expect("QUIT", "221").await;
    r
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every needle in lower case, upper case and as written.
fn needles() -> Vec<String> {
    let mut out = Vec::new();
    for n in [
        SENDER,
        SENDER_NAME,
        FRIEND,
        FRIEND_NAME,
        REFUSED,
        REFUSED_NAME,
        STRANGER,
        STRANGER_NAME,
        STRANGER2,
        STRANGER2_NAME,
    ] {
        out.push(n.to_string());
        out.push(n.to_lowercase());
        out.push(n.to_uppercase());
        // The local part alone and each word of a name.
        let part = n.split('@').next().unwrap();
        for w in part.split(['.', ' ']) {
            out.push(w.to_lowercase());
            out.push(w.to_uppercase());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    hay.windows(n.len()).any(|w| w == n)
}

fn run(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_daemon_writes_or_logs_names_an_address_and_forget_covers_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    sink.ctl
        .lock()
        .unwrap()
        .reject_rcpts
        .insert(REFUSED.to_string());
    let port = free_port();
    let config = write_config(dir.path(), port, sink.addr.port());
    let log = dir.path().join("daemon.log");
    let d = spawn(&config, port, &log).await;

    // No history yet: delivered and learnt; the next hop refuses one
    // recipient with a reply that echoes its address.
    let r = send(
        port,
        &[(FRIEND_NAME, FRIEND), (REFUSED_NAME, REFUSED)],
        "first",
    )
    .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert!(r.contains("1 recipient(s) refused"), "{r}");
    let got = sink.recv().await;
    assert_eq!(got.rcpt_to, vec![FRIEND.to_string()]);
    // The DSN to the sender.
    let dsn = sink.recv().await;
    assert_eq!(dsn.rcpt_to, vec![SENDER.to_string()]);
    // Learning is committed every 100 ms; the second message must see it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A known contact again: delivered.
    let r = send(port, &[(FRIEND_NAME, FRIEND)], "second").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert_eq!(sink.recv().await.rcpt_to, vec![FRIEND.to_string()]);
    // Strangers: held, the sender gets a notice.
    let r = send(port, &[(STRANGER_NAME, STRANGER)], "third").await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    let held_stranger = r.trim_end().rsplit(' ').next().unwrap().to_string();
    assert_eq!(sink.recv().await.rcpt_to, vec![SENDER.to_string()]);
    let r = send(port, &[(STRANGER2_NAME, STRANGER2)], "fourth").await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    let held_stranger2 = r.trim_end().rsplit(' ').next().unwrap().to_string();
    assert_eq!(sink.recv().await.rcpt_to, vec![SENDER.to_string()]);
    d.terminate();

    // Every file the daemon wrote, and its log.
    let mut files = Vec::new();
    files_under(&dir.path().join("data"), &mut files);
    let spooled: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "held"))
        .collect();
    assert_eq!(spooled.len(), 2, "{files:?}");
    assert!(files.iter().any(|p| p.ends_with("graph.redb")));
    files.push(log.clone());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("Message held"), "{log_text}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for n in needles() {
            assert!(!contains(&bytes, &n), "{} contains {n:?}", f.display());
        }
    }
    // The refusal is logged, naming the recipient by its pseudonym.
    let keys = misdirect::privacy::Keys::load(&dir.path().join("data/keys.json")).unwrap();
    let line = log_text
        .lines()
        .find(|l| l.contains("Next hop refused recipient"))
        .expect("refusal not logged");
    assert!(
        line.contains(&keys.log_name("default", REFUSED, true)),
        "{line}"
    );
    assert!(line.contains("<address>"), "{line}");

    // The spool is readable with the key file: `hold list`.
    let list: serde_json::Value =
        serde_json::from_str(&run(&config, &["hold", "list", "--json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&held_stranger.as_str()));
    assert!(ids.contains(&held_stranger2.as_str()));

    // Export of the sender: readable JSON with its associations and holds.
    let export: serde_json::Value =
        serde_json::from_str(&run(&config, &["export", SENDER])).unwrap();
    assert_eq!(export["address"], SENDER.to_lowercase());
    assert_eq!(export["tenants"].as_array().unwrap().len(), 1);
    let held = export["held"].as_array().unwrap();
    assert_eq!(held.len(), 2, "{export}");
    assert!(held.iter().all(|h| h["role"] == "sender"));
    assert!(!export.to_string().contains("Hello."));

    // Forget the first stranger: its held message goes too, durably.
    let out = run(&config, &["forget", STRANGER]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["held"], 1, "{out}");
    assert!(!dir
        .path()
        .join(format!("data/spool/{held_stranger}.held"))
        .exists());
    assert!(dir
        .path()
        .join(format!("data/spool/{held_stranger2}.held"))
        .exists());
    let export: serde_json::Value =
        serde_json::from_str(&run(&config, &["export", STRANGER])).unwrap();
    assert!(export["tenants"].as_array().unwrap().is_empty(), "{export}");
    assert!(export["held"].as_array().unwrap().is_empty(), "{export}");
    let list: serde_json::Value =
        serde_json::from_str(&run(&config, &["hold", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], held_stranger2.as_str());

    // Restarted, the daemon holds the stranger again (as never seen) and
    // still reads the other sealed hold.
    let port = free_port();
    let config = write_config(dir.path(), port, sink.addr.port());
    let d = spawn(&config, port, &dir.path().join("daemon2.log")).await;
    let r = send(port, &[(STRANGER_NAME, STRANGER)], "fifth").await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    d.terminate();
    let list: serde_json::Value =
        serde_json::from_str(&run(&config, &["hold", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// The control: with `pseudonymise_logs = false` the same scan finds the
/// refused recipient and the next hop's text in the log, in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pseudonymise_logs_off_the_refused_recipient_is_logged_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    sink.ctl
        .lock()
        .unwrap()
        .reject_rcpts
        .insert(REFUSED.to_string());
    let port = free_port();
    let config = write_config_with(
        dir.path(),
        port,
        sink.addr.port(),
        "pseudonymise_logs = false",
    );
    let log = dir.path().join("daemon.log");
    let d = spawn(&config, port, &log).await;
    let r = send(
        port,
        &[(FRIEND_NAME, FRIEND), (REFUSED_NAME, REFUSED)],
        "first",
    )
    .await;
    assert!(r.contains("1 recipient(s) refused"), "{r}");
    assert_eq!(sink.recv().await.rcpt_to, vec![FRIEND.to_string()]);
    d.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("Next hop refused recipient"))
        .expect("refusal not logged");
    assert!(line.contains(&format!("recipient={REFUSED}")), "{line}");
    assert!(
        line.contains(&format!("<{REFUSED}>: no such user")),
        "{line}"
    );
}
