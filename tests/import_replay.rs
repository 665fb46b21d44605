//! `import` from mbox, maildir and .eml fixtures (bad messages counted,
//! never fatal) and the `replay` JSON line contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_support;

use std::sync::Arc;

use graph_support::*;
use misdirect::graph::GraphView;
use misdirect::privacy::Keys;
use misdirect::store::Store;

const T0: i64 = 1_000_000_000;

fn load(cfg_path: &std::path::Path) -> misdirect::graph::Graph {
    let cfg = load_config(cfg_path);
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let store = Store::open(&cfg, keys).unwrap();
    store
        .load(&cfg.graph)
        .unwrap()
        .remove("default")
        .unwrap_or_default()
}

#[test]
fn imports_mbox_maildir_and_eml_and_counts_bad_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    // mbox: two good messages and one without recipients.
    let mbox = dir.path().join("sent.mbox");
    write_mbox(
        &mbox,
        &[
            msg("alice@a.test", &["bob@x.test"], &[], T0, 1),
            msg(
                "alice@a.test",
                &["bob@x.test"],
                &["carol@x.test"],
                T0 + 60,
                2,
            ),
            msg("alice@a.test", &[], &[], T0 + 120, 3),
        ],
    );
    // maildir with a Maildir++ sub-folder.
    let md = dir.path().join("Maildir");
    for sub in [
        "cur",
        "new",
        "tmp",
        ".Archive/cur",
        ".Archive/new",
        ".Archive/tmp",
    ] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    std::fs::write(
        md.join("cur/1.host:2,S"),
        rfc822(&msg("dave@a.test", &["bob@x.test"], &[], T0 + 200, 4)),
    )
    .unwrap();
    std::fs::write(
        md.join(".Archive/new/2.host"),
        rfc822(&msg("erin@b.test", &["alice@a.test"], &[], T0 + 300, 5)),
    )
    .unwrap();
    // A garbage file among the maildir messages: counted, not fatal.
    std::fs::write(md.join("new/3.host"), b"\x00\x01 not mail").unwrap();
    // One .eml and one message without any From.
    let eml = dir.path().join("one.eml");
    std::fs::write(
        &eml,
        rfc822(&msg("frank@a.test", &["gina@y.test"], &[], T0 + 400, 6)),
    )
    .unwrap();
    let nofrom = dir.path().join("nofrom.eml");
    std::fs::write(
        &nofrom,
        "To: bob@x.test\r\nSubject: hi\r\nDate: Sun, 9 Sep 2001 01:46:40 +0000\r\n\r\nx\r\n",
    )
    .unwrap();

    let out = run_ok(&[
        "import",
        "--quiet",
        "--config",
        c,
        mbox.to_str().unwrap(),
        md.to_str().unwrap(),
        eml.to_str().unwrap(),
        nofrom.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"], 5, "{out}");
    assert_eq!(v["bad"], 3, "{out}");
    assert_eq!(v["bad_by_reason"]["no recipients"], 1, "{out}");
    assert_eq!(v["bad_by_reason"]["no usable From address"], 1, "{out}");
    assert_eq!(v["bad_by_reason"]["not a parsable message"], 1, "{out}");

    let g = load(&cfg);
    assert_eq!(g.edge("alice@a.test", "bob@x.test").unwrap().to, 2);
    assert_eq!(g.edge("alice@a.test", "carol@x.test").unwrap().cc, 1);
    assert_eq!(g.edge("dave@a.test", "bob@x.test").unwrap().to, 1);
    // Received mail: erin wrote to alice.
    assert_eq!(g.edge("erin@b.test", "alice@a.test").unwrap().to, 1);
    assert_eq!(g.address("alice@a.test").received, 1);
    assert_eq!(
        g.edge("frank@a.test", "gina@y.test").unwrap().first,
        T0 + 400
    );
    assert_eq!(g.address("bob@x.test").senders, 2);

    // --owner supplies the sender when From is missing.
    let out = run_ok(&[
        "import",
        "--quiet",
        "--config",
        c,
        "--owner",
        "Owner@A.test",
        nofrom.to_str().unwrap(),
    ]);
    assert!(out.contains("\"messages\":1"), "{out}");
    assert_eq!(load(&cfg).edge("owner@a.test", "bob@x.test").unwrap().to, 1);
}

#[test]
fn missing_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = run(&[
        "import",
        "--config",
        cfg.to_str().unwrap(),
        dir.path().join("nope.mbox").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.mbox"));
}

fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_prints_the_json_contract_in_date_order_and_learns_from_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    let history = dir.path().join("history.mbox");
    write_mbox(
        &history,
        &[msg("alice@a.test", &["bob@x.test"], &[], T0, 1)],
    );
    // Written out of Date order on purpose.
    let replay = dir.path().join("replay.mbox");
    write_mbox(
        &replay,
        &[
            msg("alice@a.test", &["bob@x.test"], &[], T0 + 2000, 3),
            msg(
                "alice@a.test",
                &["bob@x.test"],
                &["mallory@evil.test"],
                T0 + 1000,
                2,
            ),
            msg("alice@a.test", &["bob@x.test"], &[], T0 + 3000, 4),
        ],
    );
    let out = run_ok(&[
        "replay",
        "--config",
        c,
        "--history",
        history.to_str().unwrap(),
        replay.to_str().unwrap(),
    ]);
    let l = lines(&out);
    assert_eq!(l.len(), 3);
    let dates: Vec<&str> = l.iter().map(|v| v["date"].as_str().unwrap()).collect();
    assert_eq!(
        dates,
        vec![
            "2001-09-09T02:03:20Z",
            "2001-09-09T02:20:00Z",
            "2001-09-09T02:36:40Z"
        ]
    );
    let first = &l[0];
    // Keys in the contract's order, and nothing else.
    let raw = out.lines().next().unwrap();
    let pos: Vec<usize> = [
        "message_id",
        "date",
        "from",
        "score",
        "action",
        "model",
        "recipients",
    ]
    .iter()
    .map(|k| raw.find(&format!("\"{k}\":")).unwrap())
    .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert_eq!(first.as_object().unwrap().len(), 7);
    assert_eq!(
        first["message_id"],
        format!("m2.{}@fixture.test", T0 + 1000)
    );
    assert_eq!(first["from"], "alice@a.test");
    assert_eq!(first["score"], 0.9);
    assert_eq!(first["action"], "hold");
    assert_eq!(first["model"], "baseline-never-seen-1");
    let r = &first["recipients"];
    assert_eq!(r[0]["address"], "bob@x.test");
    assert_eq!(r[0]["field"], "to");
    assert_eq!(r[0]["score"], 0.0);
    assert_eq!(r[1]["address"], "mallory@evil.test");
    assert_eq!(r[1]["field"], "cc");
    assert_eq!(r[1]["score"], 0.9);
    assert!(r[1]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("never written"));
    // The held message was not learnt; the delivered one was.
    assert_eq!(l[1]["action"], "deliver");
    assert!(l[1]["recipients"][0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("1 times"));
    assert!(l[2]["recipients"][0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("2 times"));

    // --no-learn: scores only.
    let out = run_ok(&[
        "replay",
        "--config",
        c,
        "--no-learn",
        "--history",
        history.to_str().unwrap(),
        replay.to_str().unwrap(),
    ]);
    let l = lines(&out);
    assert!(l[2]["recipients"][0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("1 times"));
    // Replay never touches the store.
    assert!(!dir.path().join("data/graph.redb").exists());
}

#[test]
fn imports_corpus_json_lines_plain_and_gzipped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let rows = [
        r#"{"user":"u","folder":"sent","message_id":"<1.x@thyme>","date":"2001-05-14T23:39:00Z","from":"a.b@corp.test","to":["c@x.test"],"cc":["d@x.test"],"bcc":["d@x.test"],"subject":"RE: plan","x_from":"A B","attachments":["q3.xls"]}"#,
        r#"{"user":"u","folder":"sent","message_id":"<2.x@thyme>","date":"2001-05-15T10:00:00Z","from":"a.b@corp.test","to":[],"cc":[],"bcc":[],"subject":"note"}"#,
        "not json",
    ];
    let plain = dir.path().join("rows.jsonl");
    std::fs::write(&plain, rows.join("\n")).unwrap();
    let gz = dir.path().join("more.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(rows[0].replace("<1.x", "<3.x").as_bytes())
        .unwrap();
    enc.finish().unwrap();
    let out = run_ok(&[
        "import",
        "--quiet",
        "--config",
        cfg.to_str().unwrap(),
        plain.to_str().unwrap(),
        gz.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"], 2, "{out}");
    assert_eq!(v["bad_by_reason"]["no recipients"], 1, "{out}");
    assert_eq!(v["bad_by_reason"]["invalid JSON line"], 1, "{out}");
    let g = load(&cfg);
    let e = g.edge("a.b@corp.test", "d@x.test").unwrap();
    // The corpus's bcc copies cc, so it is ignored.
    assert_eq!((e.cc, e.bcc, e.first), (2, 0, 989_883_540));
    assert_eq!(g.display_names("a.b@corp.test"), vec!["A B"]);
    assert_eq!(g.attachment_recipients("a.b@corp.test", "Q3.xls").len(), 2);
}

/// `graph synth` fills an empty store with a synthetic organisation that
/// the daemon's loader then sees; it refuses a store that has a graph.
#[test]
fn graph_synth_fills_an_empty_store_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    let out = run(&["graph", "synth", "--config", c, "--edges", "50000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edges = summary["edges"].as_u64().unwrap();
    assert!((40_000..=60_000).contains(&edges), "{summary}");

    let stats = run(&["graph", "stats", "--config", c]);
    assert!(stats.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["tenants"][0]["edges"].as_u64(),
        Some(edges),
        "{stats}"
    );
    assert_eq!(
        stats["tenants"][0]["co_recipient_pairs"],
        summary["co_recipient_pairs"]
    );

    let again = run(&["graph", "synth", "--config", c, "--edges", "50000"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already has a graph"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
