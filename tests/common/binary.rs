//! The `misdirectd` binary as a child process: start it on a configuration,
//! wait for its banner, stop it with SIGTERM (and check the clean exit) or
//! kill it. Killed when dropped, so a failing test leaves no daemon behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the daemon binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `misdirectd serve`.
pub struct DaemonProcess {
    pub child: Child,
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the daemon's stdout and stderr go.
pub enum Output<'a> {
    /// stdout discarded, stderr to the test's.
    Inherit,
    /// Both into this file.
    File(&'a Path),
}

impl DaemonProcess {
    /// `misdirectd serve --config CONFIG`; returns once the daemon's SMTP
    /// port (`port`, as the configuration says) answers with its banner.
    pub fn spawn(config: &Path, port: u16, out: Output<'_>) -> DaemonProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_misdirectd"));
        cmd.args(["serve", "--config"]).arg(config);
        match out {
            Output::Inherit => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
            Output::File(p) => {
                let f = std::fs::File::create(p).unwrap();
                cmd.env_remove("RUST_LOG")
                    .stdout(f.try_clone().unwrap())
                    .stderr(f);
            }
        }
        let d = DaemonProcess {
            child: cmd.spawn().unwrap(),
            port,
        };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::Read;
                let mut b = [0u8; 3];
                if s.read_exact(&mut b).is_ok() && &b == b"220" {
                    return d;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Send a signal (`"-HUP"`, `"-TERM"`, ...).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn terminate(mut self) {
        self.signal("-TERM");
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// One request to a daemon's admin API on `127.0.0.1:port`: the status and
/// the JSON body.
pub async fn admin_http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
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

/// A header's value in a message's header section (first match).
pub fn header<'a>(raw: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(raw).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// The release address from a hold notice's Reply-To.
pub fn release_address(notice: &super::Received) -> String {
    header(&notice.data, "Reply-To")
        .unwrap()
        .trim_matches(['<', '>'])
        .to_string()
}

/// The admin API bearer token of [`admin_daemon_config`].
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// Configuration of a daemon with the embedded store and the admin API:
/// next hop at `hop`, state under `dir/data`, `sections` appended (the
/// test's `[policy]`, `[hold]`, `[encrypt]`). Scores with the "never emailed
/// before" baseline so that each test picks its action exactly.
pub fn admin_daemon_config(
    dir: &Path,
    port: u16,
    admin: u16,
    hop: u16,
    sections: &str,
) -> std::path::PathBuf {
    let data = dir.join("data");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{d}\"\n\
         [relay]\nhost = \"127.0.0.1\"\nport = {hop}\ntls = \"none\"\n\
         [store]\npath = \"{d}/graph.redb\"\nbatch_interval = \"100ms\"\n\
         [privacy]\nkey_file = \"{d}/keys.json\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [metrics]\nenabled = false\n[log]\nlevel = \"warn\"\n\
         [model]\nscorer = \"never-seen\"\n{sections}\n",
        d = data.display()
    );
    let path = dir.join("misdirectd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A daemon with its admin API ([`admin_daemon_config`]); killed when
/// dropped.
pub struct AdminDaemon {
    pub proc: DaemonProcess,
    pub admin: u16,
    pub config: std::path::PathBuf,
}

impl AdminDaemon {
    /// Write the configuration under `dir` and start the daemon.
    pub async fn start(dir: &Path, hop: u16, sections: &str) -> AdminDaemon {
        let (port, admin) = (free_port(), free_port());
        let config = admin_daemon_config(dir, port, admin, hop, sections);
        AdminDaemon::spawn(config, port, admin).await
    }

    /// Start the daemon on an existing configuration.
    pub async fn spawn(config: std::path::PathBuf, port: u16, admin: u16) -> AdminDaemon {
        let c = config.clone();
        let proc =
            tokio::task::spawn_blocking(move || DaemonProcess::spawn(&c, port, Output::Inherit))
                .await
                .unwrap();
        AdminDaemon {
            proc,
            admin,
            config,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.proc.addr()
    }

    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig)
    }

    /// SIGTERM and wait for a clean exit (the next hop keeps running).
    pub async fn terminate(self) {
        let proc = self.proc;
        tokio::task::spawn_blocking(move || proc.terminate())
            .await
            .unwrap();
    }

    /// One message over SMTP; the final reply.
    pub async fn send(&self, from: &str, to: &[&str], msg: &[u8]) -> String {
        let mut c = super::Client::greeted(self.addr()).await;
        c.expect("EHLO client.test", "250").await;
        c.send_mail(from, to, msg).await
    }

    /// An admin API request: (status, JSON body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        admin_http(self.admin, method, path, token, body).await
    }

    /// `GET /holds`.
    pub async fn holds(&self) -> Vec<serde_json::Value> {
        let (st, v) = self.http("GET", "/holds", Some(ADMIN_TOKEN), b"").await;
        assert_eq!(st, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// `POST /check` until the verdict satisfies `ok` (the daemon learns
    /// asynchronously); that verdict, or `None` after about six seconds.
    pub async fn check_until(
        &self,
        msg: &[u8],
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        for _ in 0..300 {
            let (st, v) = self.http("POST", "/check", Some(ADMIN_TOKEN), msg).await;
            assert_eq!(st, 200, "{v}");
            if ok(&v["verdict"]) {
                return Some(v["verdict"].clone());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        None
    }

    /// `sender` writes to `known` (delivered: a daemon scoring with the
    /// never-seen baseline holds nothing for a sender without history),
    /// then wait until it scores mail from `sender` to `stranger` 0.9.
    pub async fn teach_pair(
        &self,
        sender: &str,
        known: &str,
        stranger: &str,
        sink: &mut super::Sink,
    ) {
        let r = self
            .send(sender, &[known], &super::message(sender, known, "first"))
            .await;
        assert!(r.starts_with("250 "), "{r}");
        sink.recv().await;
        let probe = super::message(sender, stranger, "probe");
        let learnt = self
            .check_until(&probe, |v| v["score"].as_f64() == Some(0.9))
            .await;
        assert!(learnt.is_some(), "the delivered message was never learnt");
    }
}

/// A released message: the `X-Misdirect-Released: by <by>` header, then
/// the original byte for byte.
pub fn assert_released(got: &super::Received, original: &[u8], by: &str) {
    let prefix = format!("X-Misdirect-Released: by {by}; ");
    assert!(
        got.data.starts_with(prefix.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&got.data)
    );
    let end = got.data.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    assert_eq!(&got.data[end..], original);
}
