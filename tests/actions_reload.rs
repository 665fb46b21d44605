//! Thresholds reload without a restart: `SharedPolicy::reload` and SIGHUP.
//! (Alone in its binary: it sends SIGHUP to its own process.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use misdirect::config::Config;
use misdirect::message::Field;
use misdirect::policy::{Context, Policy, SharedPolicy};
use misdirect::verdict::{Action, RecipientScore, Scores};

fn scores(s: f64) -> Scores {
    Scores {
        model: "m".into(),
        recipients: vec![RecipientScore {
            address: "x@y.test".into(),
            field: Field::To,
            score: s,
            reasons: vec![],
        }],
    }
}

#[tokio::test]
async fn thresholds_reload_on_sighup_and_bad_files_keep_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("misdirectd.toml");
    std::fs::write(&path, "[policy]\nhold_at = 0.8\n").unwrap();
    let cfg = Config::load(&path).unwrap();
    let shared = SharedPolicy::new(Policy::new(cfg.policy));
    let ctx = Context {
        tenant: "default",
        sender: "a@acme.test",
    };
    assert_eq!(
        shared.current().decide_for(&ctx, scores(0.6)).action,
        Action::Deliver
    );

    let _task = shared.reload_on_sighup(path.clone()).unwrap();
    std::fs::write(
        &path,
        "[policy]\nhold_at = 0.5\n[policy.tenant.default]\nreject_at = 0.9\n",
    )
    .unwrap();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut reloaded = false;
    for _ in 0..500 {
        if shared.current().decide_for(&ctx, scores(0.6)).action == Action::Hold {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the thresholds");
    assert_eq!(
        shared.current().decide_for(&ctx, scores(0.95)).action,
        Action::Reject
    );

    // A broken file: an error naming the key, and the policy in force stays.
    std::fs::write(&path, "[policy]\nhold_at = 7\n").unwrap();
    let err = shared.reload(&path).await.unwrap_err().to_string();
    assert!(err.contains("policy.hold_at"), "{err}");
    assert_eq!(
        shared.current().decide_for(&ctx, scores(0.6)).action,
        Action::Hold
    );
}
