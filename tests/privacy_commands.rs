//! Privacy promises through the real commands: key file handling, erasure,
//! export, retention, key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use graph_support::*;
use misdirect::address::{AddressConfig, Normalizer};
use misdirect::classify::baseline::NeverSeenScorer;
use misdirect::graph::GraphView;
use misdirect::message::MessageMeta;
use misdirect::privacy::Keys;
use misdirect::scorer::{ScoreInput, Scorer};
use misdirect::store::Store;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// alice writes to bob and carol together, dave writes to bob.
fn fixture(dir: &std::path::Path, ts: i64) -> std::path::PathBuf {
    let mbox = dir.join("sent.mbox");
    write_mbox(
        &mbox,
        &[
            msg("alice@a.test", &["bob@x.test", "carol@x.test"], &[], ts, 1),
            msg(
                "alice@a.test",
                &["bob@x.test"],
                &["erin@y.test"],
                ts + 60,
                2,
            ),
            msg("dave@a.test", &["bob@x.test"], &[], ts + 120, 3),
        ],
    );
    mbox
}

fn score_of(cfg: &misdirect::config::Config, from: &str, to: &str) -> (f64, Vec<String>) {
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let store = Store::open(cfg, keys).unwrap();
    let graphs = store.load(&cfg.graph).unwrap();
    let raw = format!("From: {from}\r\nTo: {to}\r\nSubject: x\r\n\r\n");
    let meta = MessageMeta::parse(raw.as_bytes(), &Normalizer::new(AddressConfig::default()));
    let s = NeverSeenScorer
        .score(
            &graphs["default"],
            &ScoreInput {
                meta: &meta,
                recipients: &meta.recipients,
                now: now(),
            },
        )
        .unwrap();
    (s.recipients[0].score, s.recipients[0].reasons.clone())
}

#[test]
fn key_file_is_created_private_and_a_readable_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    run_ok(&["graph", "stats", "--config", c]);
    let key = dir.path().join("data/keys.json");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700);
    let smode = std::fs::metadata(dir.path().join("data/graph.redb"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(smode, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["graph", "stats", "--config", c]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(!run(&["graph", "stats", "--config", c]).status.success());
}

#[test]
fn forget_erases_everywhere_durably_and_the_address_scores_as_never_seen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let c = cfg_path.to_str().unwrap();
    let mbox = fixture(dir.path(), now() - 86400);
    run_ok(&["import", "--quiet", "--config", c, mbox.to_str().unwrap()]);
    let cfg = load_config(&cfg_path);
    assert_eq!(score_of(&cfg, "alice@a.test", "bob@x.test").0, 0.0);
    // carol: alice never wrote to her alone, but she knows her.
    let export = run_ok(&["export", "--config", c, "bob@x.test"]);
    let v: serde_json::Value = serde_json::from_str(&export).unwrap();
    let data = &v["tenants"][0]["data"];
    assert_eq!(data["address"], "bob@x.test");
    assert_eq!(data["messages_received"], 3);
    assert_eq!(data["distinct_senders"], 2);
    assert_eq!(data["received_from"].as_array().unwrap().len(), 2);
    assert_eq!(data["co_recipient_pairs"].as_array().unwrap().len(), 2);
    assert_eq!(data["display_names"][0], serde_json::Value::Null);

    let out = run(&["forget", "--config", c, "Bob@X.test"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("\"tenants\":1"), "{stdout}");
    assert!(
        stderr.contains("Erasure of one address performed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("bob"),
        "audit line names the address: {stderr}"
    );
    assert!(!stdout.contains("bob"));

    // Afterwards: nothing to export or show; scores as never seen by anyone.
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["export", "--config", c, "bob@x.test"])).unwrap();
    assert_eq!(v["tenants"].as_array().unwrap().len(), 0);
    assert!(!run(&["graph", "show", "--config", c, "bob@x.test"])
        .status
        .success());
    let (score, reasons) = score_of(&cfg, "alice@a.test", "bob@x.test");
    assert_eq!(score, 0.9, "{reasons:?}");
    assert!(reasons[0].contains("nobody here has"));
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let store = Store::open(&cfg, keys).unwrap();
    let g = &store.load(&cfg.graph).unwrap()["default"];
    assert!(g.edge("alice@a.test", "bob@x.test").is_none());
    assert!(g.edge("dave@a.test", "bob@x.test").is_none());
    assert_eq!(g.co_count("alice@a.test", "bob@x.test", "carol@x.test"), 0);
    assert_eq!(g.co_count("alice@a.test", "bob@x.test", "erin@y.test"), 0);
    assert_eq!(g.address("bob@x.test"), Default::default());
    let mut p = g
        .thread_participants(&["m1.".to_string() + &(now() - 86400).to_string() + "@fixture.test"]);
    p.sort();
    assert!(!p.contains(&"bob@x.test".to_string()));
    // Not even its pseudonym is left in any file.
    let ps = Keys::load_or_create(&cfg.privacy.key_file)
        .unwrap()
        .pseudonym_bytes("default", "bob@x.test");
    drop(store);
    assert_eq!(any_file_contains(&dir.path().join("data"), &ps), None);
    let alice_ps = Keys::load_or_create(&cfg.privacy.key_file)
        .unwrap()
        .pseudonym_bytes("default", "alice@a.test");
    assert!(any_file_contains(&dir.path().join("data"), &alice_ps).is_some());
    // Others are untouched.
    assert_eq!(g.edge("alice@a.test", "carol@x.test").unwrap().to, 1);
    assert_eq!(g.domain("x.test").addresses, 1);
    assert_eq!(g.sender("dave@a.test").messages, 1);
}

#[test]
fn export_is_readable_json_of_everything_about_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let c = cfg_path.to_str().unwrap();
    let ts = now() - 3600;
    let mbox = fixture(dir.path(), ts);
    run_ok(&["import", "--quiet", "--config", c, mbox.to_str().unwrap()]);
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["export", "--config", c, "alice@a.test"])).unwrap();
    let d = &v["tenants"][0]["data"];
    assert_eq!(d["display_names"][0], "Sender Name");
    assert_eq!(d["messages_sent"], 2);
    let sent: Vec<&str> = d["sent_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 3);
    assert!(sent.contains(&"bob@x.test") && sent.contains(&"erin@y.test"));
    assert_eq!(d["sent_to_domains"].as_array().unwrap().len(), 2);
    assert_eq!(d["threads_participated"], 2);
    assert_eq!(
        d["first_sent"],
        misdirect::graph::memory::format_ts(ts).as_str()
    );
}

/// Import `msgs` into a store with `retention_days = 30`, run `misdirectd
/// graph purge` once, and return its JSON report, its log and the default
/// tenant's graph reloaded from the store.
fn import_then_purge(msgs: &[Msg<'_>]) -> (serde_json::Value, String, misdirect::graph::Graph) {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    // Same store, but with retention on.
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("retention_days = 0", "retention_days = 30");
    std::fs::write(&cfg_path, text).unwrap();
    let c = cfg_path.to_str().unwrap();
    let mbox = dir.path().join("mix.mbox");
    write_mbox(&mbox, msgs);
    run_ok(&["import", "--quiet", "--config", c, mbox.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["graph", "purge", "--config", c])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let cfg = load_config(&cfg_path);
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let store = Store::open(&cfg, keys).unwrap();
    let g = store.load(&cfg.graph).unwrap().remove("default").unwrap();
    (v, log, g)
}

#[test]
fn retention_purges_what_was_not_seen_for_retention_days() {
    let old = now() - 40 * 86400;
    let recent = now() - 86400;
    let (v, log, g) = import_then_purge(&[
        msg("alice@a.test", &["old@x.test"], &[], old, 1),
        msg(
            "alice@a.test",
            &["new@x.test", "old2@x.test"],
            &[],
            old + 60,
            2,
        ),
        msg("alice@a.test", &["new@x.test"], &[], recent, 3),
    ]);
    let removed = &v["tenants"][0]["removed"];
    assert_eq!(removed["edges"], 2);
    assert_eq!(removed["co_pairs"], 1);
    assert_eq!(removed["addresses"], 2);
    assert!(
        log.contains("Retention removed") && log.contains("cutoff"),
        "{log}"
    );
    assert!(g.edge("alice@a.test", "old@x.test").is_none());
    assert!(g.edge("alice@a.test", "old2@x.test").is_none());
    assert_eq!(g.edge("alice@a.test", "new@x.test").unwrap().to, 2);
    assert_eq!(g.address("old@x.test"), Default::default());
    assert!(g.id("old@x.test").is_none());
}

/// A subject that went on (each message within `[graph] thread_window`
/// of the previous one) kept naming an address whose only message was
/// older than the retention period, and so kept the address: retention
/// now takes it out of the subject, and the address goes.
#[test]
fn retention_takes_expired_addresses_out_of_a_subject_that_went_on() {
    // Same subject throughout, gaps of 25 and 14 days (the window is 30).
    let (v, _, g) = import_then_purge(&[
        msg("alice@a.test", &["old@x.test"], &[], now() - 40 * 86400, 1),
        msg("alice@a.test", &["mid@x.test"], &[], now() - 15 * 86400, 2),
        msg("alice@a.test", &["new@x.test"], &[], now() - 86400, 3),
    ]);
    assert_eq!(v["tenants"][0]["removed"]["addresses"], 1);
    assert!(g.id("old@x.test").is_none());
    let mut subject = g.subject_participants("alice@a.test", "Quarterly numbers");
    subject.sort();
    assert_eq!(subject, ["alice@a.test", "mid@x.test", "new@x.test"]);
}

/// An attachment list entry keeps its own date: "alice sent plan.pdf to
/// carol" 40 days ago leaves with retention (30 days) although alice wrote
/// to carol yesterday, and the list keeps the recipient it was sent to
/// within the period.
#[test]
fn retention_takes_an_old_attachment_recipient_out_while_the_contact_goes_on() {
    let (v, _, g) = import_then_purge(&[
        msg(
            "alice@a.test",
            &["carol@x.test"],
            &[],
            now() - 40 * 86400,
            1,
        )
        .attaching("plan.pdf"),
        msg("alice@a.test", &["dave@x.test"], &[], now() - 5 * 86400, 2).attaching("plan.pdf"),
        msg("alice@a.test", &["carol@x.test"], &[], now() - 86400, 3),
    ]);
    assert_eq!(v["tenants"][0]["removed"]["addresses"], 0);
    assert!(g.edge("alice@a.test", "carol@x.test").is_some());
    assert_eq!(
        g.attachment_recipients("alice@a.test", "plan.pdf"),
        ["dave@x.test"]
    );
}

use std::process::Command;

#[test]
fn rotate_key_rewrites_the_store_and_old_sealed_data_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let c = cfg_path.to_str().unwrap();
    let mbox = fixture(dir.path(), now() - 3600);
    run_ok(&["import", "--quiet", "--config", c, mbox.to_str().unwrap()]);
    let cfg = load_config(&cfg_path);
    let old_keys = Keys::load_or_create(&cfg.privacy.key_file).unwrap();
    let sealed = old_keys.seal(b"held message");
    let before = run_ok(&["export", "--config", c, "alice@a.test"]);
    let out = run_ok(&["rotate-key", "--config", c]);
    assert!(out.contains("\"key_id\":2"), "{out}");
    let new_keys = Keys::load_or_create(&cfg.privacy.key_file).unwrap();
    assert_eq!(new_keys.current_id(), 2);
    assert_eq!(new_keys.open(&sealed).unwrap(), b"held message");
    assert_ne!(
        old_keys.pseudonym("default", "alice@a.test"),
        new_keys.pseudonym("default", "alice@a.test")
    );
    let after = run_ok(&["export", "--config", c, "alice@a.test"]);
    // No record under the old pseudonyms is left in the store file.
    assert_eq!(
        any_file_contains(
            &dir.path().join("data"),
            &old_keys.pseudonym_bytes_with(1, "default", "alice@a.test")
        ),
        None
    );
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["exported_at"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&before), strip(&after));
    // New learning lands under the new key and reloads.
    let more = dir.path().join("more.mbox");
    write_mbox(
        &more,
        &[msg("alice@a.test", &["zoe@z.test"], &[], now(), 9)],
    );
    run_ok(&["import", "--quiet", "--config", c, more.to_str().unwrap()]);
    let keys = Arc::new(new_keys);
    let store = Store::open(&cfg, keys).unwrap();
    let g = &store.load(&cfg.graph).unwrap()["default"];
    assert_eq!(g.sender("alice@a.test").messages, 3);
    assert!(g.edge("alice@a.test", "zoe@z.test").is_some());
}

#[tokio::test]
async fn the_daemon_runs_the_retention_job() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let c = cfg_path.to_str().unwrap();
    let mbox = dir.path().join("mix.mbox");
    write_mbox(
        &mbox,
        &[
            msg("alice@a.test", &["old@x.test"], &[], now() - 40 * 86400, 1),
            msg("alice@a.test", &["new@x.test"], &[], now() - 86400, 2),
        ],
    );
    run_ok(&["import", "--quiet", "--config", c, mbox.to_str().unwrap()]);
    let mut cfg = load_config(&cfg_path);
    cfg.privacy.retention_days = 30;
    cfg.privacy.retention_interval = std::time::Duration::from_millis(100);
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let (h, task) = misdirect::store::GraphHandle::open(&cfg, keys)
        .await
        .unwrap();
    for _ in 0..200 {
        if h.with_view("default", |g| {
            g.edge("alice@a.test", "old@x.test").is_none()
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    h.with_view("default", |g| {
        assert!(g.edge("alice@a.test", "old@x.test").is_none());
        assert!(g.edge("alice@a.test", "new@x.test").is_some());
    });
    drop(h);
    task.await.unwrap();
    // Durable: a fresh load no longer has it.
    let store = Store::open(
        &cfg,
        Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap()),
    )
    .unwrap();
    let g = &store.load(&cfg.graph).unwrap()["default"];
    assert!(g.edge("alice@a.test", "old@x.test").is_none());
    assert!(g.id("old@x.test").is_none());
}

#[test]
fn commands_refuse_a_store_another_process_has_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), "");
    let c = cfg_path.to_str().unwrap();
    let cfg = load_config(&cfg_path);
    let keys = Arc::new(Keys::load_or_create(&cfg.privacy.key_file).unwrap());
    let held = Store::open(&cfg, keys).unwrap();
    let out = run(&["forget", "--config", c, "bob@x.test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    drop(held);
    run_ok(&["forget", "--config", c, "bob@x.test"]);
}
