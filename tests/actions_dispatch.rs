//! `Actions`: each verdict carried out against a real SMTP next hop on
//! loopback, with the SMTP reply the upstream would get.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use std::process::Command;
use std::sync::Arc;

use actions_common::*;
use misdirect::actions::{Actions, Intercept, SCORE_HEADER};
use misdirect::config::{EncryptConfig, EncryptFallback};
use misdirect::encrypt::Encryptor;
use misdirect::hold::SmtpDeliver;
use misdirect::verdict::Action;

const T0: i64 = 1_795_900_000;

async fn actions(dir: &std::path::Path, sink: &Sink, fallback: EncryptFallback) -> Actions {
    let svc = service(hold_config(dir, sink.addr), None).await;
    Actions::new(
        svc,
        Encryptor::new(EncryptConfig {
            cert_dir: dir.join("certs"),
            fallback,
        }),
        Arc::new(SmtpDeliver::new("127.0.0.1", sink.addr.port())),
    )
}

fn verdict_with(a: Action) -> misdirect::verdict::Verdict {
    let mut v = verdict();
    v.action = a;
    v
}

#[tokio::test]
async fn deliver_reject_hold_and_release_reply() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let act = actions(dir.path(), &sink, EncryptFallback::Hold).await;

    let reply = act
        .apply(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict_with(Action::Deliver),
            T0,
        )
        .await;
    assert_eq!(reply, "250 2.0.0 Ok: delivered");
    let got = sink.next().await;
    assert_eq!(
        header(&got.raw, SCORE_HEADER).unwrap(),
        "0.9300; action=deliver; model=test-model"
    );
    assert!(got.raw.ends_with(ORIGINAL));

    let reply = act
        .apply(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict_with(Action::Reject),
            T0,
        )
        .await;
    assert!(
        reply.starts_with("550 5.7.1 Refused: recipient <bob@rival.test>"),
        "{reply}"
    );
    sink.assert_empty();

    let reply = act
        .apply(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict_with(Action::Hold),
            T0,
        )
        .await;
    assert!(reply.starts_with("250 2.0.0 Ok: held"), "{reply}");
    let notice = sink.next().await;
    let release = release_address(&notice.raw);
    assert_eq!(act.hold_service().list().await.unwrap().len(), 1);

    // Ordinary mail continues; the sender's reply is swallowed and releases.
    let env = envelope();
    assert_eq!(
        act.intercept(&env, ORIGINAL, T0).await,
        Intercept::Continue(env.clone())
    );
    let (e, r) = reply_from_alice(&release);
    assert_eq!(
        act.intercept(&e, &r, T0 + 5).await,
        Intercept::Done("250 2.0.0 Ok".into())
    );
    let out = sink.next().await;
    assert!(out.raw.ends_with(ORIGINAL));
    assert!(act.hold_service().list().await.unwrap().is_empty());

    // Next hop down: 451, nothing lost upstream.
    sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = act
        .apply(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict_with(Action::Deliver),
            T0,
        )
        .await;
    assert!(reply.starts_with("451 4.4.1"), "{reply}");
}

fn reply_from_alice(release: &str) -> (misdirect::envelope::Envelope, Vec<u8>) {
    reply("alice@acme.test", release)
}

#[tokio::test]
async fn encrypt_with_hold_fallback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let key = dir.path().join("bob.key");
    let cert = dir.path().join("certs/bob@partner.test.pem");
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bob",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success());
    let mut sink = sink().await;
    let act = actions(dir.path(), &sink, EncryptFallback::Hold).await;

    let reply = act
        .apply(
            "default",
            &envelope(),
            ORIGINAL,
            &verdict_with(Action::Encrypt),
            T0,
        )
        .await;
    assert!(
        reply.starts_with("250 2.0.0 Ok: encrypted where possible, held for the others"),
        "{reply}"
    );
    // The uncertified recipient's copy is held, and its sender notified.
    let held = act.hold_service().list().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].envelope.rcpt_to, vec!["bob@rival.test"]);
    let notice = sink.next().await;
    assert_eq!(notice.envelope.rcpt_to, vec!["alice@acme.test"]);
    // Bob's copy is encrypted and opens with his key.
    let enc = sink.next().await;
    assert_eq!(enc.envelope.rcpt_to, vec!["bob@partner.test"]);
    assert!(header(&enc.raw, SCORE_HEADER).is_some());
    std::fs::write(dir.path().join("in.eml"), &enc.raw).unwrap();
    let o = Command::new("openssl")
        .args(["cms", "-decrypt", "-binary", "-in"])
        .arg(dir.path().join("in.eml"))
        .arg("-recip")
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, ORIGINAL);
}
