//! Interop with an independent peer: notices and released messages sent by
//! `SmtpDeliver` to Postfix's `smtp-sink` (dumping one file per message).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};

use actions_common::*;
use misdirect::hold::{Actor, Deliver, SmtpDeliver};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_reaches_postfix_smtp_sink() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A free loopback port for smtp-sink.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("/usr/sbin/smtp-sink");
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let _sink = Kill(
        cmd.arg("-d")
            .arg(format!("{}/%M.", dump.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("10")
            .spawn()
            .expect("smtp-sink (postfix) must be installed"),
    );
    let mut up = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(up, "smtp-sink did not start");

    let mut cfg = hold_config(dir.path(), format!("127.0.0.1:{port}").parse().unwrap());
    cfg.next_hop = Some(format!("127.0.0.1:{port}"));
    let svc = service(cfg, None).await;
    let m = svc
        .hold_and_notify(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict(),
            misdirect::hold::now(),
        )
        .await
        .unwrap();
    svc.release(&m.id, Actor::Admin, misdirect::hold::now())
        .await
        .unwrap();
    // And one plain delivery of the original.
    SmtpDeliver::new("127.0.0.1", port)
        .send(&envelope(), ORIGINAL)
        .await
        .unwrap();

    let mut files = Vec::new();
    for _ in 0..500 {
        files = std::fs::read_dir(&dump)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        if files.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(files.len(), 3);
    // smtp-sink strips CRs and adds its own headers and trailing lines.
    let lf = String::from_utf8_lossy(ORIGINAL).replace("\r\n", "\n");
    let texts: Vec<String> = files
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert!(texts
        .iter()
        .any(|t| t.contains("Reply-To: <release+") && t.contains("X-Misdirect-Notice: hold")));
    assert!(texts
        .iter()
        .any(|t| t.contains("X-Misdirect-Released: by admin;") && t.contains(&lf)));
    assert_eq!(
        texts.iter().filter(|t| t.contains(&lf)).count(),
        2,
        "{texts:?}"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
