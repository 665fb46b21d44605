//! `misdirectd hold ...` and `misdirectd check` run as the real binary on a
//! configuration and spool made in a temp dir; releases go to a real SMTP
//! next hop on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use std::path::Path;
use std::process::Command;

use actions_common::*;

fn write_config(dir: &Path, sink: std::net::SocketAddr, extra: &str) -> std::path::PathBuf {
    let p = dir.join("misdirectd.toml");
    std::fs::write(
        &p,
        format!(
            "[model]\nscorer = \"never-seen\"\n[policy]\nhold_at = 0.8\n{extra}\n[hold]\nspool_dir = {:?}\nrelease_domain = \"confirm.acme.test\"\nsecret = \"{SECRET}\"\nnext_hop = \"{sink}\"\n[privacy]\nkey_file = {:?}\n[store]\npath = {:?}\n",
            dir.join("hold").display().to_string(),
            dir.join("keys.json").display().to_string(),
            dir.join("graph.redb").display().to_string()
        ),
    )
    .unwrap();
    p
}

fn misdirectd(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cli_lists_shows_releases_discards() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let cfg_path = write_config(dir.path(), sink.addr, "");
    let svc = service(hold_config(dir.path(), sink.addr), None).await;
    let now = misdirect::hold::now();
    let a = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), now)
        .await
        .unwrap();
    let b = svc
        .hold(
            "default",
            &envelope(),
            b"Subject: b\r\n\r\nbody b\r\n",
            &verdict(),
            now + 1,
        )
        .await
        .unwrap();
    let c = cfg_path.to_str().unwrap();

    let (ok, out, err) = misdirectd(&["hold", "-c", c, "list"]);
    assert!(ok, "{err}");
    assert!(out.contains(&a.id) && out.contains(&b.id), "{out}");
    assert!(
        out.contains("alice@acme.test -> bob@partner.test, bob@rival.test"),
        "{out}"
    );
    assert!(out.contains("0.930"), "{out}");
    assert!(out.trim_end().ends_with("2 held"), "{out}");

    let (ok, out, _) = misdirectd(&["hold", "-c", c, "list", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let (ok, out, _) = misdirectd(&["hold", "-c", c, "show", &a.id]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["hold"]["verdict"]["recipients"][1]["reasons"][0],
        "you have never written to bob@rival.test, and nobody here has"
    );
    assert!(v["headers"]
        .as_str()
        .unwrap()
        .contains("Subject: Q3 pricing"));
    assert!(!out.contains("Confidential numbers"));

    let (ok, out, err) = misdirectd(&["hold", "-c", c, "release", &a.id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("released {}", a.id));
    let got = sink.next().await;
    assert!(got.raw.ends_with(ORIGINAL));
    assert_eq!(
        got.envelope.rcpt_to,
        vec!["bob@partner.test", "bob@rival.test"]
    );

    let (ok, out, _) = misdirectd(&["hold", "-c", c, "discard", &b.id]);
    assert!(ok);
    assert_eq!(out.trim(), format!("discarded {}", b.id));
    assert!(svc.list().await.unwrap().is_empty());

    // Unknown and malformed ids: a clear error and a failing exit status.
    let (ok, _, err) = misdirectd(&["hold", "-c", c, "release", &b.id]);
    assert!(!ok);
    assert!(err.contains(&format!("no held message {}", b.id)), "{err}");
    let (ok, _, err) = misdirectd(&["hold", "-c", c, "show", "../../etc/passwd"]);
    assert!(!ok);
    assert!(err.contains("invalid hold id"), "{err}");
    sink.assert_empty();
}

/// With the daemon stopped, `hold discard` and `hold release` open the
/// graph store themselves: the discard is remembered for the flagged
/// recipient, and a later release of mail to it is learnt and supersedes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cli_discard_and_release_teach_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let cfg_path = write_config(dir.path(), sink.addr, "");
    let c = cfg_path.to_str().unwrap();
    let svc = service(hold_config(dir.path(), sink.addr), None).await;
    let now = misdirect::hold::now();
    let a = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), now)
        .await
        .unwrap();
    let (ok, out, err) = misdirectd(&["hold", "-c", c, "discard", &a.id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("discarded {}", a.id));
    let cfg = misdirect::config::Config::load(&cfg_path).unwrap();
    let graph = |cfg: &misdirect::config::Config| {
        let keys = std::sync::Arc::new(
            misdirect::privacy::Keys::load_or_create(&cfg.privacy.key_file).unwrap(),
        );
        let store = misdirect::store::Store::open(cfg, keys).unwrap();
        store.load(&cfg.graph).unwrap().remove("default").unwrap()
    };
    {
        use misdirect::graph::GraphView;
        let g = graph(&cfg);
        // Only the flagged recipient (0.93) is marked, not bob@partner.test.
        assert!(g.discarded("alice@acme.test", "bob@rival.test").is_some());
        assert_eq!(g.discarded("alice@acme.test", "bob@partner.test"), None);
        assert!(g.edge("alice@acme.test", "bob@rival.test").is_none());
    }

    let b = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), now + 1)
        .await
        .unwrap();
    let (ok, out, err) = misdirectd(&["hold", "-c", c, "release", &b.id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("released {}", b.id));
    assert!(sink.next().await.raw.ends_with(ORIGINAL));
    {
        use misdirect::graph::GraphView;
        let g = graph(&cfg);
        assert_eq!(g.edge("alice@acme.test", "bob@rival.test").unwrap().to, 1);
        assert_eq!(g.discarded("alice@acme.test", "bob@rival.test"), None);
    }
    sink.assert_empty();
}

fn eml(from: &str, to: &str, date: &str, id: &str) -> String {
    format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: s {id}\r\nDate: {date}\r\nMessage-ID: <{id}@acme.test>\r\n\r\nx\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_verdict_score_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink().await;
    let hist = dir.path().join("history");
    std::fs::create_dir_all(&hist).unwrap();
    for i in 0..3 {
        std::fs::write(
            hist.join(format!("{i}.eml")),
            eml(
                "alice@acme.test",
                "bob@partner.test",
                "Mon, 2 Nov 2026 09:00:00 +0000",
                &format!("h{i}"),
            ),
        )
        .unwrap();
    }
    let msg = dir.path().join("msg.eml");
    std::fs::write(
        &msg,
        "From: <alice@acme.test>\r\nTo: <bob@partner.test>, <bob@rival.test>\r\nSubject: Q3\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nx\r\n",
    )
    .unwrap();
    let c = write_config(dir.path(), sink.addr, "");
    let (ok, out, err) = misdirectd(&[
        "check",
        "-c",
        c.to_str().unwrap(),
        "--history",
        hist.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("action: hold"), "{out}");
    assert!(out.contains("score: 0.9000"), "{out}");
    assert!(out.contains("3 history messages"), "{out}");
    assert!(out.contains("bob@rival.test (to) 0.9000"), "{out}");
    assert!(
        out.contains("you have never written to bob@rival.test, and nobody here has"),
        "{out}"
    );
    assert!(
        out.contains("you wrote to bob@partner.test 3 times"),
        "{out}"
    );

    // The same message with rival.test allow-listed: delivered, and why.
    let c = write_config(dir.path(), sink.addr, "allow_domains = [\"rival.test\"]");
    let (ok, out, _) = misdirectd(&[
        "check",
        "-c",
        c.to_str().unwrap(),
        "--history",
        hist.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    assert!(ok);
    assert!(out.contains("action: deliver"), "{out}");
    assert!(out.contains("note: allow-listed: bob@rival.test"), "{out}");

    // A reject threshold: the SMTP reply the sender's bounce will carry.
    let c = write_config(dir.path(), sink.addr, "reject_at = 0.85");
    let (ok, out, _) = misdirectd(&[
        "check",
        "-c",
        c.to_str().unwrap(),
        "--json",
        "--history",
        hist.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"]["action"], "reject");
    let (_, out, _) = misdirectd(&[
        "check",
        "-c",
        c.to_str().unwrap(),
        "--history",
        hist.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    assert!(
        out.contains("reply: 550 5.7.1 Refused: recipient <bob@rival.test> looks misaddressed"),
        "{out}"
    );

    // A bad configuration is named, key by key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\nhold_at = 2.0\n[hold]\nrelease_prefix = \"Bad Prefix\"\n",
    )
    .unwrap();
    let (ok, _, err) = misdirectd(&["check", "-c", bad.to_str().unwrap(), msg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("policy.hold_at") && err.contains("hold.release_prefix"),
        "{err}"
    );
}

#[test]
fn shipped_config_sections_parse() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/misdirectd.toml");
    let (ok, out, err) = misdirectd(&["check-config", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(": ok"), "{out}");
    let cfg = misdirect::config::Config::load(&p).unwrap();
    assert_eq!(
        cfg.hold.token_lifetime,
        std::time::Duration::from_secs(3 * 86400)
    );
    assert_eq!(cfg.policy.hold_at, Some(0.961));
}
