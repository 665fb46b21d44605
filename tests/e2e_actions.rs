//! The actions end to end through the built `misdirectd serve` binary: real
//! SMTP in, the in-process next hop from tests/common out, the admin API
//! over HTTP, the persistent store in a temp dir. Scores come from the
//! never-seen baseline scorer: a sender without history scores 0 for
//! everyone; once it has history, a recipient nobody here wrote to scores
//! 0.9 and one it wrote to scores 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::{assert_released, header, release_address, AdminDaemon, ADMIN_TOKEN};
use common::{message, split_trace, Sink};

const TOKEN: &str = ADMIN_TOKEN;
const ALICE: &str = "alice@acme.test";
const BOB: &str = "bob@partner.test";
const STRANGER: &str = "stranger@elsewhere.test";

type Daemon = AdminDaemon;

impl AdminDaemon {
    /// Send ALICE -> STRANGER with this subject, which must be held; the
    /// message and the hold id.
    async fn hold_stranger(&self, subject: &str) -> (Vec<u8>, String) {
        let m = message(ALICE, STRANGER, subject);
        let r = self.send(ALICE, &[STRANGER], &m).await;
        let id = r.strip_prefix("250 2.0.0 Held as ");
        assert!(id.is_some(), "{r}");
        (m, id.unwrap_or_default().trim().to_string())
    }

    /// Teach the graph that alice writes to bob (delivered at once: alice
    /// has no history yet), and wait until the daemon scores a stranger
    /// from alice 0.9.
    async fn teach(&self, sink: &mut Sink) {
        self.teach_from(ALICE, sink).await
    }

    /// [`teach`](Self::teach) for any sender.
    async fn teach_from(&self, sender: &str, sink: &mut Sink) {
        self.teach_pair(sender, BOB, STRANGER, sink).await
    }
}

const HOLD: &str = "[policy]\nhold_at = 0.8\n[hold]\nrelease_domain = \"confirm.acme.test\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_reply_release_learns_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(dir.path(), sink.addr.port(), HOLD).await;
    d.teach(&mut sink).await;

    // A message to a stranger is held; the sender's notice reaches the next hop.
    let (m, _) = d.hold_stranger("q3-figures").await;
    let notice = sink.recv().await;
    assert_eq!(notice.mail_from, "");
    assert_eq!(notice.rcpt_to, vec![ALICE.to_string()]);
    assert_eq!(header(&notice.data, "X-Misdirect-Notice"), Some("hold"));
    let release = release_address(&notice);
    assert!(release.ends_with("@confirm.acme.test"), "{release}");
    assert!(sink.nothing_more().await, "the held message must not leave");
    assert_eq!(d.holds().await.len(), 1);

    // The sender replies through the relay: swallowed, and the original
    // reaches the next hop byte for byte after our header.
    let reply = format!("From: <{ALICE}>\r\nTo: <{release}>\r\nSubject: Re: Held\r\n\r\nyes\r\n");
    let r = d.send(ALICE, &[&release], reply.as_bytes()).await;
    assert!(r.starts_with("250 "), "{r}");
    let got = sink.recv().await;
    assert_eq!(got.mail_from, ALICE);
    assert_eq!(got.rcpt_to, vec![STRANGER.to_string()]);
    assert_released(&got, &m, "sender");
    assert!(
        sink.nothing_more().await,
        "the reply itself must be swallowed"
    );
    assert!(d.holds().await.is_empty());

    // Released means learnt: the same pair now goes straight through.
    let again = message(ALICE, STRANGER, "q3-followup");
    let delivered = d.check_until(&again, |v| v["action"] == "deliver").await;
    assert!(delivered.is_some(), "the release was not learnt");
    let r = d.send(ALICE, &[STRANGER], &again).await;
    assert!(r.starts_with("250 2.0.0 Ok"), "{r}");
    let (trace, body) = split_trace(&sink.recv().await.data);
    assert!(trace.contains("action=deliver"), "{trace}");
    assert_eq!(body, again);

    // Learning survives a restart (persistent store), and so does the
    // generated release-token secret.
    let (config, port, admin) = (d.config.clone(), d.proc.port, d.admin);
    d.terminate().await;
    let secret = std::fs::metadata(dir.path().join("data/hold.secret")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&secret.permissions()) & 0o777,
        0o600
    );
    let d = Daemon::spawn(config, port, admin).await;
    let r = d.send(ALICE, &[STRANGER], &again).await;
    assert!(r.starts_with("250 2.0.0 Ok"), "after restart: {r}");
    sink.recv().await;
    let r = d
        .send(
            ALICE,
            &["other@elsewhere.test"],
            &message(ALICE, "other@elsewhere.test", "x"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Held as "), "history lost: {r}");
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_expired_replies_release_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        &format!("{HOLD}token_lifetime = \"2s\"\n"),
    )
    .await;
    d.teach(&mut sink).await;
    d.hold_stranger("held").await;
    let release = release_address(&sink.recv().await);

    // Forged: one character of the token changed to another base32 letter
    // (tokens are read case-insensitively, so a change of case alone is
    // the same token).
    let (local, domain) = release.split_once('@').unwrap();
    let mut forged: Vec<char> = local.chars().collect();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == 'b' { 'c' } else { 'b' };
    let forged = format!("{}@{domain}", forged.into_iter().collect::<String>());
    let reply = |from: &str, to: &str| {
        format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: Re\r\n\r\nok\r\n").into_bytes()
    };
    let r = d.send(ALICE, &[&forged], &reply(ALICE, &forged)).await;
    assert!(r.starts_with("250 "), "{r}");
    // From another sender (valid token).
    let mallory = "mallory@acme.test";
    let r = d
        .send(mallory, &[&release], &reply(mallory, &release))
        .await;
    assert!(r.starts_with("250 "), "{r}");
    // Right envelope sender, other header From.
    let r = d.send(ALICE, &[&release], &reply(mallory, &release)).await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(sink.nothing_more().await, "something was released");
    assert_eq!(d.holds().await.len(), 1);

    // Expired: the token lived 2 s.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = d.send(ALICE, &[&release], &reply(ALICE, &release)).await;
    assert!(r.starts_with("250 "), "{r}");
    assert!(sink.nothing_more().await, "an expired token released");
    assert_eq!(d.holds().await.len(), 1);
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_release_discard_and_check_on_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(dir.path(), sink.addr.port(), HOLD).await;
    d.teach(&mut sink).await;
    let m1 = message(ALICE, STRANGER, "one");
    let m2 = message(ALICE, STRANGER, "two");
    for m in [&m1, &m2] {
        let r = d.send(ALICE, &[STRANGER], m).await;
        assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
        sink.recv().await; // the notice
    }
    let (st, _) = d.http("GET", "/holds", None, b"").await;
    assert_eq!(st, 401);
    let (st, _) = d
        .http("GET", "/holds", Some("wrong-token-0123456789"), b"")
        .await;
    assert_eq!(st, 401);
    let holds = d.holds().await;
    assert_eq!(holds.len(), 2);
    let mut ids = Vec::new();
    for h in &holds {
        let id = h["id"].as_str().unwrap().to_string();
        let (st, v) = d
            .http("GET", &format!("/holds/{id}"), Some(TOKEN), b"")
            .await;
        assert_eq!(st, 200);
        ids.push((
            v["headers"].as_str().unwrap().contains("Subject: one\r\n"),
            id,
        ));
    }
    ids.sort();
    // (false, two), (true, one)
    let (id2, id1) = (ids[0].1.clone(), ids[1].1.clone());
    assert!(ids[1].0 && !ids[0].0, "{ids:?}");
    let (st, v) = d
        .http("POST", &format!("/holds/{id1}/release"), Some(TOKEN), b"")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_released(&sink.recv().await, &m1, "admin");
    let (st, v) = d
        .http("POST", &format!("/holds/{id2}/discard"), Some(TOKEN), b"")
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(sink.nothing_more().await, "a discarded message left");
    assert!(d.holds().await.is_empty());
    let (st, _) = d
        .http("POST", &format!("/holds/{id2}/release"), Some(TOKEN), b"")
        .await;
    assert_eq!(st, 404);

    // `misdirectd check` while the daemon runs: through the admin API.
    let eml = dir.path().join("probe.eml");
    std::fs::write(&eml, message(ALICE, "new@elsewhere.test", "probe")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["check", "-c"])
        .arg(&d.config)
        .arg(&eml)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("action: hold"), "{text}");
    assert!(text.contains("score: 0.9000"), "{text}");
    assert!(text.contains("daemon at 127.0.0.1:"), "{text}");

    // Stopped daemon, no [admin]: check opens the store itself.
    let config = d.config.clone();
    d.terminate().await;
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[admin]").unwrap();
    let end = start + text[start..].find("[metrics]").unwrap();
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["check", "-c"])
        .arg(&config)
        .arg(&eml)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("action: hold"), "{text}");
    assert!(text.contains("(tenant default, store "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_released_by_the_expiry_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        &format!("{HOLD}hold_lifetime = \"1s\"\nexpiry_interval = \"200ms\"\nexpiry_action = \"release\"\n"),
    )
    .await;
    d.teach(&mut sink).await;
    let (m, _) = d.hold_stranger("expiring").await;
    sink.recv().await; // the notice
    assert_released(&sink.recv().await, &m, "expiry");
    // The spool entry is removed only after the next hop accepted the
    // message, so the sink can see it a moment before the removal.
    let mut left = d.holds().await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = d.holds().await;
    }
    assert!(left.is_empty(), "{left:?}");
    d.terminate().await;
}

fn make_cert(dir: &Path, addr: &str) -> PathBuf {
    let key = dir.join(format!("{addr}.key"));
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={addr}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(dir.join("certs").join(format!("{addr}.pem")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(out).unwrap()
}

fn encrypt_sections(dir: &Path, fallback: &str) -> String {
    format!(
        "[policy]\nencrypt_at = 0.5\nhold_at = 0.95\n[encrypt]\ncert_dir = \"{}\"\nfallback = \"{fallback}\"\n[hold]\nrelease_domain = \"confirm.acme.test\"\n",
        dir.join("certs").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_with_certificate_and_tag_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let carol = "carol@elsewhere.test";
    let key = make_cert(dir.path(), STRANGER);
    let mut sink = Sink::start().await;
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        &encrypt_sections(dir.path(), "tag"),
    )
    .await;
    d.teach(&mut sink).await;
    let m = format!(
        "From: <{ALICE}>\r\nTo: <{STRANGER}>, <{carol}>\r\nSubject: secret\r\nMessage-ID: <s@acme.test>\r\n\r\nline one\r\n.dot line\r\né 8bit\r\n"
    )
    .into_bytes();
    let r = d.send(ALICE, &[STRANGER, carol], &m).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let mut got = [sink.recv().await, sink.recv().await];
    got.sort_by_key(|g| g.rcpt_to.clone());
    // carol has no certificate: delivered tagged.
    assert_eq!(got[0].rcpt_to, vec![carol.to_string()]);
    let (trace, body) = split_trace(&got[0].data);
    assert!(trace.contains("action=encrypt"), "{trace}");
    let tag = b"X-Misdirect-Encryption: none; no certificate for recipient\r\n";
    assert_eq!(&body[..tag.len()], tag);
    assert_eq!(&body[tag.len()..], &m[..]);
    // The stranger's copy is S/MIME that openssl turns back into the original.
    assert_eq!(got[1].rcpt_to, vec![STRANGER.to_string()]);
    let (trace, outer) = split_trace(&got[1].data);
    assert!(trace.contains("action=encrypt"), "{trace}");
    assert!(
        header(&outer, "Content-Type")
            .unwrap()
            .starts_with("application/pkcs7-mime"),
        "{}",
        String::from_utf8_lossy(&outer)
    );
    assert!(!outer.windows(8).any(|w| w == b"line one"));
    assert_eq!(decrypt(dir.path(), &outer, STRANGER, &key), m);
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_without_certificate_holds_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        &encrypt_sections(dir.path(), "hold"),
    )
    .await;
    d.teach(&mut sink).await;
    d.hold_stranger("nocert").await;
    let notice = sink.recv().await;
    assert_eq!(notice.rcpt_to, vec![ALICE.to_string()]);
    assert!(sink.nothing_more().await);
    let holds = d.holds().await;
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0]["verdict"]["action"], "encrypt");
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_reject_and_threshold_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let sections = "[policy]\nhold_at = 0.8\nallow_domains = [\".trusted.test\"]\nallow_pairs = [[\"alice@acme.test\", \"pal@elsewhere.test\"]]\n\
         [policy.sender_domain.\"lax.test\"]\nhold_at = 0.95\n";
    let d = Daemon::start(dir.path(), sink.addr.port(), sections).await;
    d.teach(&mut sink).await;
    // Allow-listed domain (subdomain match) and pair: delivered, score 0.
    for to in ["x@mail.trusted.test", "pal@elsewhere.test"] {
        let m = message(ALICE, to, "allowed");
        let r = d.send(ALICE, &[to], &m).await;
        assert!(r.starts_with("250 2.0.0 Ok"), "{to}: {r}");
        let (trace, body) = split_trace(&sink.recv().await.data);
        assert!(
            trace.contains("X-Misdirect-Score: 0.0000; action=deliver"),
            "{trace}"
        );
        assert_eq!(body, m);
    }

    // Sender-domain override: carl's domain holds at 0.95, so a recipient
    // nobody wrote to (0.9) is delivered; dave's domain has the global 0.8.
    let carl = "carl@lax.test";
    d.teach_from(carl, &mut sink).await;
    let m = message(carl, "new1@elsewhere.test", "c1");
    let r = d.send(carl, &["new1@elsewhere.test"], &m).await;
    assert!(r.starts_with("250 2.0.0 Ok"), "{r}");
    let (trace, _) = split_trace(&sink.recv().await.data);
    assert!(
        trace.contains("X-Misdirect-Score: 0.9000; action=deliver"),
        "{trace}"
    );
    let dave = "dave@strict.test";
    d.teach_from(dave, &mut sink).await;
    let r = d
        .send(
            dave,
            &["new2@elsewhere.test"],
            &message(dave, "new2@elsewhere.test", "d1"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    sink.recv().await; // the notice

    // SIGHUP with a reject threshold: 550 5.7.1 with the reason.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("hold_at = 0.8", "reject_at = 0.85")).unwrap();
    d.signal("-HUP");
    let m = message(ALICE, STRANGER, "rej");
    let mut r = String::new();
    for _ in 0..100 {
        r = d.send(ALICE, &[STRANGER], &m).await;
        if r.starts_with("550") {
            break;
        }
        // Still the old policy: held (and notified).
        assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
        sink.recv().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.starts_with(&format!(
            "550 5.7.1 Refused: recipient <{STRANGER}> looks misaddressed (you have never written to {STRANGER}, and nobody here has)"
        )),
        "{r}"
    );
    // A bad file is refused and the reject policy stays.
    std::fs::write(
        &d.config,
        format!(
            "{}\n[policy.bogus]\n",
            text.replace("hold_at = 0.8", "reject_at = 0.85")
        ),
    )
    .unwrap();
    d.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = d.send(ALICE, &[STRANGER], &m).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(sink.nothing_more().await);
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_failure_fail_open_and_fail_closed() {
    // No From header: the baseline scorer has no sender to score against.
    let m = b"To: <b@example.org>\r\nSubject: no from\r\n\r\nbody\r\n";
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        "[policy]\nfail_mode = \"open\"\n",
    )
    .await;
    let r = d.send(ALICE, &["b@example.org"], m).await;
    assert!(r.starts_with("250 2.0.0 Ok"), "{r}");
    let got = sink.recv().await;
    let text = String::from_utf8_lossy(&got.data);
    let warn = "X-Misdirect-Warning: not checked for misdirection (scoring unavailable)\r\n";
    let at = text.find(warn).expect("no warning header");
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(!text.contains("X-Misdirect-Score"), "{text}");
    assert_eq!(&got.data[at + warn.len()..], &m[..]);
    d.terminate().await;

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        sink.addr.port(),
        "[policy]\nfail_mode = \"closed\"\n",
    )
    .await;
    let r = d.send(ALICE, &["b@example.org"], m).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(sink.nothing_more().await);
    d.terminate().await;
}

/// An admin's discard is a judgement the daemon remembers: the same pair
/// is held again with a score of 1.0 and a reason naming the
/// discard; `misdirectd hold release` (through the running daemon's admin
/// API) then delivers it and the daemon learns the pair is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_is_remembered_and_cli_release_through_the_daemon_is_learnt() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::start().await;
    let d = Daemon::start(dir.path(), sink.addr.port(), HOLD).await;
    d.teach(&mut sink).await;
    let (_, id) = d.hold_stranger("first-try").await;
    sink.recv().await; // the notice
    let (st, v) = d
        .http("POST", &format!("/holds/{id}/discard"), Some(TOKEN), b"")
        .await;
    assert_eq!(st, 200, "{v}");

    // The next message to the pair is scored with the discard in mind.
    let again = message(ALICE, STRANGER, "second-try");
    let verdict = d
        .check_until(&again, |v| v["score"].as_f64() == Some(1.0))
        .await
        .expect("the discard was never learnt");
    assert_eq!(verdict["action"], "hold", "{verdict}");
    let reason = verdict["recipients"][0]["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "an earlier message from you to {STRANGER} was held and then discarded by an administrator on "
        )),
        "{reason}"
    );
    let r = d.send(ALICE, &[STRANGER], &again).await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    let id2 = r
        .trim_start_matches("250 2.0.0 Held as ")
        .trim()
        .to_string();
    let notice = sink.recv().await;
    let text = mail_parser::MessageParser::default()
        .parse(&notice.data[..])
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap();
    assert!(text.contains("discarded by an administrator"), "{text}");

    // The admin (CLI, daemon running with [admin]) releases it: delivered
    // by the daemon, which learns the pair.
    let out = Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(["hold", "-c"])
        .arg(&d.config)
        .args(["release", &id2])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("released {id2} (by the daemon at ")),
        "{said}"
    );
    assert_released(&sink.recv().await, &again, "admin");
    let third = message(ALICE, STRANGER, "third");
    let delivered = d.check_until(&third, |v| v["action"] == "deliver").await;
    assert!(
        delivered.is_some(),
        "the release through the CLI was not learnt"
    );
    let r = d.send(ALICE, &[STRANGER], &third).await;
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    assert!(!r.contains("Held"), "{r}");
    sink.recv().await;
    d.terminate().await;
}
