//! Independent peers from Debian against the built daemon: Postfix's
//! smtp-source and smtp-sink, swaks with STARTTLS, and a kill -9 under load.
//! A missing tool fails the test, naming the package to install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{free_port, DaemonProcess as Daemon, Output};
use common::{Client, Sink};

/// The path of a Debian tool, or a failure naming its package.
fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install it with `apt-get install -y {package}`");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `extra` goes into `[server]`. Scores with the "never emailed before"
/// baseline, so that a stranger is held deterministically.
fn spawn_daemon(dir: &Path, hop_port: u16, extra: &str) -> Daemon {
    spawn_daemon_with(dir, hop_port, extra, "enabled = false\n")
}

/// [`spawn_daemon`] with `metrics` in `[metrics]`.
fn spawn_daemon_with(dir: &Path, hop_port: u16, extra: &str, metrics: &str) -> Daemon {
    let port = free_port();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{}\"\nmax_connections = 64\n{extra}\n\
         [relay]\nhost = \"127.0.0.1\"\nport = {hop_port}\ntls = \"none\"\npool_size = 8\n\
         [store]\npath = \"{data}/graph.redb\"\n[privacy]\nkey_file = \"{data}/keys.json\"\n\
         [metrics]\n{metrics}[log]\nlevel = \"warn\"\n\
         [model]\nscorer = \"never-seen\"\n[policy]\nhold_at = 0.8\n",
        dir.join("data").display(),
        data = dir.join("data").display()
    );
    let path = dir.join("misdirectd.toml");
    std::fs::write(&path, cfg).unwrap();
    Daemon::spawn(&path, port, Output::Inherit)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn postfix_smtp_source_through_misdirectd_to_smtp_sink() {
    let source = tool("smtp-source", "postfix");
    let sink_bin = tool("smtp-sink", "postfix");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    // smtp-sink drops privileges to nobody when run as root.
    Command::new("chmod")
        .arg("777")
        .arg(&dump)
        .status()
        .unwrap();
    let sink_port = free_port();
    let mut cmd = Command::new(&sink_bin);
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let mut sink = cmd
        .arg("-d")
        .arg(format!("{}/", dump.display()))
        .arg(format!("127.0.0.1:{sink_port}"))
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = spawn_daemon(dir.path(), sink_port, "");
    let messages = 3000;
    let st = Command::new(&source)
        .args(["-s", "20", "-m", &messages.to_string(), "-l", "2000"])
        .args(["-f", "alice@example.com", "-t", "bob@example.org"])
        .args(["-M", "source.test"])
        .arg(format!("127.0.0.1:{}", daemon.port))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(st.success(), "smtp-source failed: {st}");
    let start = Instant::now();
    while count_files(&dump) < messages && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = count_files(&dump);
    daemon.terminate();
    let _ = sink.kill();
    let _ = sink.wait();
    assert_eq!(n, messages, "messages at the sink");
    let first = std::fs::read_dir(&dump)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = String::from_utf8_lossy(&std::fs::read(first).unwrap()).into_owned();
    assert!(text.contains("X-Misdirect-Score: "), "{text}");
    assert!(text.contains("by relay.test (misdirectd)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_starttls_through_the_daemon() {
    let swaks = tool("swaks", "swaks libnet-ssleay-perl");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut sink = Sink::start().await;
    let extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls = true\n",
        cert.display(),
        key.display()
    );
    let metrics_port = free_port();
    let daemon = spawn_daemon_with(
        dir.path(),
        sink.addr.port(),
        &extra,
        &format!("enabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let server = format!("127.0.0.1:{}", daemon.port);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&swaks)
            .args(["--server", &server])
            .args([
                "--tls",
                "--from",
                "alice@example.com",
                "--to",
                "bob@example.org",
            ])
            .args(["--helo", "swaks.test", "--header", "Subject: over tls"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks failed ({}): {log}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("<-  220 2.0.0 Ready to start TLS"), "{log}");
    assert!(log.contains("<~  250 2.0.0 Ok: queued as"), "{log}");
    let got = sink.recv().await;
    assert_eq!(got.rcpt_to, vec!["bob@example.org"]);
    let text = String::from_utf8_lossy(&got.data);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("Subject: over tls"), "{text}");
    let metrics = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("misdirect_messages_total{action=\"deliver\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("misdirect_message_latency_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("misdirect_open_connections"), "{metrics}");
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let daemon = spawn_daemon(dir.path(), sink.addr.port(), "");
    let addr = daemon.addr();

    // Give alice a history so messages to strangers are held.
    let mut c = Client::greeted(addr).await;
    c.expect("EHLO load.test", "250").await;
    let teach = common::message("alice@example.com", "bob@example.org", "teach");
    let r = c
        .send_mail("alice@example.com", &["bob@example.org"], &teach)
        .await;
    assert!(r.starts_with("250"), "{r}");
    drop(c);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..10 {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let mut c = Client {
                io: tokio::io::BufReader::new(s),
            };
            if !c.reply().await.starts_with("220")
                || !c.cmd("EHLO load.test").await.starts_with("250")
            {
                return;
            }
            for i in 0.. {
                let to = if i % 2 == 0 {
                    "bob@example.org".to_string()
                } else {
                    format!("stranger{w}x{i}@elsewhere.example")
                };
                let id = format!("load-{w}-{i}");
                let msg = common::message("alice@example.com", &to, &id);
                let steps = [
                    "MAIL FROM:<alice@example.com>".to_string(),
                    format!("RCPT TO:<{to}>"),
                    "DATA".to_string(),
                ];
                for s in &steps {
                    let r = c.cmd(s).await;
                    if r.is_empty() || !(r.starts_with('2') || r.starts_with('3')) {
                        return;
                    }
                }
                c.send(&common::dot_stuff(&msg)).await;
                let r = c.cmd(".").await;
                if r.is_empty() {
                    return;
                }
                if r.starts_with("250") {
                    acked.lock().unwrap().push((id, r));
                }
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 200 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill_9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "load did not get going: {} acked",
        acked.len()
    );

    let mut at_sink = std::collections::HashSet::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sink.rx.recv()).await {
        at_sink.insert(String::from_utf8_lossy(&m.data).into_owned());
    }
    let spool = misdirect::outbound::spool::Spool::open(
        dir.path().join("data").join("spool"),
        std::sync::Arc::new(
            misdirect::privacy::Keys::load(&dir.path().join("data").join("keys.json")).unwrap(),
        ),
    )
    .await
    .unwrap();
    let mut in_spool = Vec::new();
    for meta in spool.list().await.unwrap() {
        let (_, raw) = spool.get(&meta.id).await.unwrap().unwrap();
        in_spool.push(String::from_utf8_lossy(&raw).into_owned());
    }
    let mut held = 0;
    for (id, reply) in &acked {
        let needle = format!("Message-ID: <{id}@example.com>");
        let sunk = at_sink.iter().any(|m| m.contains(&needle));
        let kept = in_spool.iter().any(|m| m.contains(&needle));
        assert!(
            sunk || kept,
            "{id} got {reply:?} but is neither at the sink nor in the spool"
        );
        if reply.contains("Held as") {
            assert!(kept, "{id} was held but is not in the spool");
            held += 1;
        }
    }
    assert!(
        held > 0,
        "no message was held; the spool side was not exercised"
    );
    eprintln!(
        "kill -9 under load: {} acknowledged ({held} held), {} at the sink, {} in the spool",
        acked.len(),
        at_sink.len(),
        in_spool.len()
    );
}

#[test]
fn a_missing_tool_fails_naming_its_package() {
    let err = std::panic::catch_unwind(|| tool("misdirect-no-such-tool", "some-package"))
        .expect_err("a missing tool must fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("apt-get install -y some-package"), "{msg}");
}

fn greeting(port: u16) -> String {
    use std::io::{BufRead, BufReader};
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(dir.path(), free_port(), "");
    let path = dir.path().join("misdirectd.toml");
    let hup = |d: &Daemon| d.signal("-HUP");
    let wait_for = |port: u16, want: &str| {
        let start = Instant::now();
        loop {
            let g = greeting(port);
            if g.starts_with(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "still {g:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(greeting(daemon.port).starts_with("220 relay.test "));
    let good = std::fs::read_to_string(&path)
        .unwrap()
        .replace("hostname = \"relay.test\"", "hostname = \"reloaded.test\"");
    std::fs::write(&path, &good).unwrap();
    hup(&daemon);
    wait_for(daemon.port, "220 reloaded.test ");
    std::fs::write(&path, format!("{good}\n[tenants]\nbogus = 1\n")).unwrap();
    hup(&daemon);
    std::thread::sleep(Duration::from_millis(500));
    assert!(greeting(daemon.port).starts_with("220 reloaded.test "));
    daemon.terminate();
}

#[test]
fn serve_refuses_a_bad_config_naming_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nmax_recipients = 0\nlisten = \"x\"\n[relay]\nprot = 25\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["server.max_recipients", "server.listen", "relay.prot"] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
}
