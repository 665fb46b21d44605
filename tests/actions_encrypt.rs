//! S/MIME encryption: certificates made with openssl, the encrypted message
//! sent over real SMTP to a loopback next hop, and `openssl cms -decrypt`
//! with each recipient's key must give back the original byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use std::path::Path;
use std::process::Command;

use actions_common::*;
use misdirect::config::{EncryptConfig, EncryptFallback};
use misdirect::encrypt::{EncryptError, Encryptor, ENCRYPTION_HEADER};
use misdirect::envelope::Envelope;
use misdirect::hold::{Deliver, SmtpDeliver};

fn make_cert(dir: &Path, addr: &str) -> std::path::PathBuf {
    let key = dir.join(format!("{addr}.key"));
    let cert = dir.join("certs").join(format!("{addr}.pem"));
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={addr}"))
        .arg("-addext")
        .arg(format!("subjectAltName=email:{addr}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    key
}

fn decrypt(dir: &Path, msg: &[u8], addr: &str, key: &Path) -> Vec<u8> {
    let inp = dir.join("in.eml");
    let out = dir.join("out.eml");
    std::fs::write(&inp, msg).unwrap();
    let st = Command::new("openssl")
        .args(["cms", "-decrypt", "-binary", "-in"])
        .arg(&inp)
        .arg("-recip")
        .arg(dir.join("certs").join(format!("{addr}.pem")))
        .arg("-inkey")
        .arg(key)
        .arg("-out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "decrypt for {addr}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(&out).unwrap()
}

#[tokio::test]
async fn encrypt_for_each_certificate_and_tag_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let bob_key = make_cert(dir.path(), "bob@partner.test");
    let carol_key = make_cert(dir.path(), "carol@partner.test");
    let mut original = ORIGINAL.to_vec();
    original.extend_from_slice("8bit body: Grüße\r\n".as_bytes());
    let env = Envelope {
        mail_from: "alice@acme.test".into(),
        rcpt_to: vec![
            "Bob@Partner.test".into(),
            "dave@nocert.test".into(),
            "carol@partner.test".into(),
        ],
        body_8bit: true,
        ..Default::default()
    };
    let enc = Encryptor::new(EncryptConfig {
        cert_dir: dir.path().join("certs"),
        fallback: EncryptFallback::Tag,
    });
    let plan = enc.prepare(&env, &original).await.unwrap();
    let (eenv, emsg) = plan.encrypted.unwrap();
    assert_eq!(eenv.rcpt_to, vec!["Bob@Partner.test", "carol@partner.test"]);
    let (fenv, fmsg) = plan.fallback.unwrap();
    assert_eq!(fenv.rcpt_to, vec!["dave@nocert.test"]);
    assert_eq!(plan.fallback_action, EncryptFallback::Tag);

    // Through a real SMTP next hop.
    let mut sink = sink().await;
    let d = SmtpDeliver::new("127.0.0.1", sink.addr.port());
    d.send(&eenv, &emsg).await.unwrap();
    d.send(&fenv, &fmsg).await.unwrap();
    let got = sink.next().await;
    assert_eq!(got.raw, emsg);
    assert_eq!(header(&got.raw, "Subject").unwrap(), "Q3 pricing");
    assert_eq!(header(&got.raw, ENCRYPTION_HEADER).unwrap(), "smime");
    assert!(header(&got.raw, "Content-Type")
        .unwrap()
        .starts_with("application/pkcs7-mime; smime-type=enveloped-data"));
    assert!(!String::from_utf8_lossy(&got.raw).contains("Confidential numbers"));
    for (addr, key) in [
        ("bob@partner.test", &bob_key),
        ("carol@partner.test", &carol_key),
    ] {
        assert_eq!(decrypt(dir.path(), &got.raw, addr, key), original, "{addr}");
    }
    let tagged = sink.next().await;
    assert_eq!(tagged.envelope.rcpt_to, vec!["dave@nocert.test"]);
    assert_eq!(
        header(&tagged.raw, ENCRYPTION_HEADER).unwrap(),
        "none; no certificate for recipient"
    );
    assert!(tagged.raw.ends_with(&original));

    // Someone else's key cannot open it.
    let eve_key = make_cert(dir.path(), "eve@partner.test");
    std::fs::write(dir.path().join("in.eml"), &got.raw).unwrap();
    let st = Command::new("openssl")
        .args(["cms", "-decrypt", "-in"])
        .arg(dir.path().join("in.eml"))
        .arg("-recip")
        .arg(dir.path().join("certs/eve@partner.test.pem"))
        .arg("-inkey")
        .arg(&eve_key)
        .output()
        .unwrap();
    assert!(!st.status.success());
}

#[tokio::test]
async fn fallback_hold_and_bad_certificates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let enc = Encryptor::new(EncryptConfig {
        cert_dir: dir.path().join("certs"),
        fallback: EncryptFallback::Hold,
    });
    // Nobody has a certificate: everything goes to the fallback, unchanged.
    let plan = enc.prepare(&envelope(), ORIGINAL).await.unwrap();
    assert!(plan.encrypted.is_none());
    let (fenv, fmsg) = plan.fallback.unwrap();
    assert_eq!(fenv, envelope());
    assert_eq!(fmsg, ORIGINAL);
    assert_eq!(plan.fallback_action, EncryptFallback::Hold);

    // A broken certificate file is an error, not a silent plaintext send.
    std::fs::write(
        dir.path().join("certs/bob@partner.test.pem"),
        "not a certificate",
    )
    .unwrap();
    let err = enc.prepare(&envelope(), ORIGINAL).await.unwrap_err();
    assert!(matches!(err, EncryptError::Cert { .. }), "{err}");
    // Path tricks do not escape the directory.
    assert!(enc.cert_for("../../etc/passwd@x").await.unwrap().is_none());
}
