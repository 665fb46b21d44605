//! Hold workflow end to end over real SMTP: the notice reaches the sender
//! through a loopback SMTP next hop, the sender's reply releases the message,
//! forged/expired/foreign replies release nothing, admin release/discard and
//! expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use actions_common::*;
use misdirect::config::{ExpiryAction, TenantsConfig};
use misdirect::graph::GraphConfig;
use misdirect::hold::{Actor, HoldError, Refusal, ReplyOutcome, TokenError, RELEASED_HEADER};
use misdirect::store::pg_spool::Erased;
use misdirect::store::GraphHandle;

const T0: i64 = 1_795_900_000;

fn released(o: ReplyOutcome) -> Result<String, Refusal> {
    match o {
        ReplyOutcome::Handled {
            result,
            other_rcpts,
        } => {
            assert!(other_rcpts.is_empty());
            result
        }
        ReplyOutcome::NotRelease => panic!("not recognised as a release reply"),
    }
}

#[tokio::test]
async fn hold_notice_then_release_by_reply() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let (graph, _task) =
        GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 16);
    let svc = service(hold_config(dir.path(), sink.addr), Some(graph.clone())).await;

    let meta = svc
        .hold_and_notify("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    assert_eq!(svc.list().await.unwrap().len(), 1);

    // The notice: to the sender, from the null sender, in plain words.
    let notice = sink.next().await;
    assert_eq!(notice.envelope.mail_from, "");
    assert_eq!(notice.envelope.rcpt_to, vec!["alice@acme.test"]);
    assert_eq!(header(&notice.raw, "To").unwrap(), "<alice@acme.test>");
    assert_eq!(
        header(&notice.raw, "Auto-Submitted").unwrap(),
        "auto-generated"
    );
    assert_eq!(
        header(&notice.raw, "In-Reply-To").unwrap(),
        "<q3-1@acme.test>"
    );
    assert!(header(&notice.raw, "Subject")
        .unwrap()
        .contains("Q3 pricing"));
    let text = notice_text(&notice.raw);
    assert!(text.contains("* bob@rival.test"), "{text}");
    assert!(
        text.contains("you have never written to bob@rival.test, and nobody here has"),
        "{text}"
    );
    assert!(!text.contains("* bob@partner.test"), "{text}");
    assert!(text.contains("reply to this message"), "{text}");
    assert!(text.contains(&meta.id), "{text}");
    let release = release_address(&notice.raw);
    assert!(release.starts_with("release+"), "{release}");
    assert!(release.ends_with("@confirm.acme.test"), "{release}");
    assert!(release.split('@').next().unwrap().len() <= 64);

    // Mail that is not to a release address is left alone.
    let (e, r) = reply("alice@acme.test", "carol@partner.test");
    assert!(matches!(
        svc.handle_reply(&e, &r, T0 + 60).await.unwrap(),
        ReplyOutcome::NotRelease
    ));

    // The sender replies (address case changed in transit): released.
    let (e, r) = reply("Alice@ACME.test", &release.to_uppercase());
    let id = released(svc.handle_reply(&e, &r, T0 + 60).await.unwrap()).unwrap();
    assert_eq!(id, meta.id);
    let out = sink.next().await;
    assert_eq!(out.envelope.mail_from, "alice@acme.test");
    assert_eq!(
        out.envelope.rcpt_to,
        vec!["bob@partner.test", "bob@rival.test"]
    );
    // The original, unchanged, after one added header.
    let first_line_end = out.raw.iter().position(|b| *b == b'\n').unwrap() + 1;
    assert!(out
        .raw
        .starts_with(format!("{RELEASED_HEADER}: by sender;").as_bytes()));
    assert_eq!(&out.raw[first_line_end..], ORIGINAL);
    assert!(svc.list().await.unwrap().is_empty());
    sink.assert_empty(); // the reply itself went nowhere

    // A second reply with the same token releases nothing more.
    let again = released(svc.handle_reply(&e, &r, T0 + 70).await.unwrap());
    assert_eq!(again, Err(Refusal::NotHeld));

    // The graph learnt the released pair.
    let mut learnt = false;
    for _ in 0..200 {
        learnt = graph.with_view("default", |g| {
            g.edge("alice@acme.test", "bob@rival.test").is_some()
        });
        if learnt {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(learnt, "released pair not learnt");
}

#[tokio::test]
async fn forged_foreign_and_expired_replies_release_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let svc = service(hold_config(dir.path(), sink.addr), None).await;
    let meta = svc
        .hold_and_notify("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    let release = release_address(&sink.next().await.raw);
    let (local, domain) = release.split_once('@').unwrap();

    // Forged: last MAC character changed.
    let mut forged = local.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    let (e, r) = reply("alice@acme.test", &format!("{forged}@{domain}"));
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 1).await.unwrap()),
        Err(Refusal::Token(TokenError::BadSignature))
    );
    // Forged: expiry pushed out.
    let parts: Vec<&str> = local.split('.').collect();
    let later = format!("{}.{:x}.{}@{domain}", parts[0], T0 + 999_999, parts[2]);
    let (e, r) = reply("alice@acme.test", &later);
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 1).await.unwrap()),
        Err(Refusal::Token(TokenError::BadSignature))
    );
    // Garbage and a bare release domain address.
    for bad in ["release+nonsense", "release", "someone"] {
        let (e, r) = reply("alice@acme.test", &format!("{bad}@{domain}"));
        assert!(
            released(svc.handle_reply(&e, &r, T0 + 1).await.unwrap()).is_err(),
            "{bad}"
        );
    }
    // The right token from someone else (envelope sender).
    let (e, r) = reply("mallory@acme.test", &release);
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 1).await.unwrap()),
        Err(Refusal::WrongSender)
    );
    // Right envelope sender, but a different header From.
    let (e, _) = reply("alice@acme.test", &release);
    let r = format!("From: <mallory@acme.test>\r\nTo: <{release}>\r\n\r\nok\r\n").into_bytes();
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 1).await.unwrap()),
        Err(Refusal::WrongSender)
    );
    // The right reply, too late (token lifetime 1 h).
    let (e, r) = reply("alice@acme.test", &release);
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 3600).await.unwrap()),
        Err(Refusal::Token(TokenError::Expired))
    );
    // Still held, nothing delivered.
    assert_eq!(svc.list().await.unwrap()[0].id, meta.id);
    sink.assert_empty();

    // The next hop refusing the release: an error, and the message stays held.
    sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (e, r) = reply("alice@acme.test", &release);
    assert!(matches!(
        svc.handle_reply(&e, &r, T0 + 2).await,
        Err(HoldError::Deliver(_))
    ));
    assert_eq!(svc.list().await.unwrap().len(), 1);
    sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        released(svc.handle_reply(&e, &r, T0 + 3).await.unwrap()),
        Ok(meta.id)
    );
    assert_eq!(sink.next().await.envelope.rcpt_to.len(), 2);
}

#[tokio::test]
async fn admin_release_discard_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let cfg = hold_config(dir.path(), sink.addr);
    let svc = service(cfg.clone(), None).await;
    let a = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    let b = svc
        .hold(
            "default",
            &envelope(),
            b"Subject: b\r\n\r\nb\r\n",
            &verdict(),
            T0 + 1,
        )
        .await
        .unwrap();
    let c = svc
        .hold(
            "default",
            &envelope(),
            b"Subject: c\r\n\r\nc\r\n",
            &verdict(),
            T0 + 5000,
        )
        .await
        .unwrap();

    let (m, raw) = svc.show(&a.id).await.unwrap();
    assert_eq!(m, a);
    assert_eq!(raw, ORIGINAL);
    svc.release(&a.id, Actor::Admin, T0 + 10).await.unwrap();
    let out = sink.next().await;
    assert!(out.raw.starts_with(b"X-Misdirect-Released: by admin;"));
    assert!(matches!(
        svc.release(&a.id, Actor::Admin, T0).await,
        Err(HoldError::NotFound(_))
    ));

    // Expiry (hold lifetime 2 h): b is due at T0+1+7200, c is not.
    assert!(svc.expire(T0 + 7200).await.unwrap().is_empty());
    let gone = svc.expire(T0 + 7201).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].id, b.id);
    assert_eq!(gone[0].action, ExpiryAction::Discard);
    let ids: Vec<_> = svc
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![c.id.clone()]);
    sink.assert_empty();

    // Expiry action `release`: c goes out.
    let mut rel = cfg.clone();
    rel.expiry_action = ExpiryAction::Release;
    let svc2 = service(rel, None).await;
    let gone = svc2.expire(T0 + 5000 + 7200).await.unwrap();
    assert_eq!(gone[0].action, ExpiryAction::Release);
    let out = sink.next().await;
    assert!(out.raw.starts_with(b"X-Misdirect-Released: by expiry;"));
    assert!(out.raw.ends_with(b"Subject: c\r\n\r\nc\r\n"));
    assert!(svc2.list().await.unwrap().is_empty());

    // Discard of something not held.
    let d = svc
        .hold("default", &envelope(), b"x\r\n", &verdict(), T0)
        .await
        .unwrap();
    svc.discard(&d.id, Actor::Admin).await.unwrap();
    assert!(matches!(
        svc.discard(&d.id, Actor::Admin).await,
        Err(HoldError::NotFound(_))
    ));
    assert!(svc.list().await.unwrap().is_empty());
    sink.assert_empty();
}

/// Eight releases and a discard of one hold at the same time: it is
/// delivered exactly once, every other call is refused, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_releases_deliver_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let svc = service(hold_config(dir.path(), sink.addr), None).await;
    let held = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..9 {
        let svc = svc.clone();
        let id = held.id.clone();
        tasks.push(tokio::spawn(async move {
            if i == 4 {
                svc.discard(&id, Actor::Admin).await
            } else {
                svc.release(&id, Actor::Admin, T0 + 1).await
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(HoldError::Busy(_) | HoldError::NotFound(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one release or discard acts");
    assert!(svc.list().await.unwrap().is_empty());
    // At most one copy reached the next hop (none if the discard won).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut delivered = 0;
    while sink.rx.try_recv().is_ok() {
        delivered += 1;
    }
    assert!(delivered <= 1, "delivered {delivered} times");
}

/// An erasure of a held message that a release is delivering waits for
/// the release (under the same claim) instead of removing the file under
/// it: the release delivers once and the erasure finds the message gone.
/// The next hop is a gate in front of the sink that holds the release's
/// connection until the erasure is known to be waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_waits_for_a_release_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = gate.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel::<()>();
    let (open_tx, open_rx) = tokio::sync::oneshot::channel::<()>();
    let sink_addr = sink.addr;
    tokio::spawn(async move {
        let (mut inbound, _) = gate.accept().await.unwrap();
        accepted_tx.send(()).unwrap();
        open_rx.await.unwrap();
        let mut out = tokio::net::TcpStream::connect(sink_addr).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
    });
    let svc = service(hold_config(dir.path(), gate_addr), None).await;
    let held = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    let release = tokio::spawn({
        let (svc, id) = (svc.clone(), held.id.clone());
        async move { svc.release(&id, Actor::Admin, T0 + 1).await }
    });
    accepted_rx.await.unwrap();
    let erase = tokio::spawn({
        let (svc, id) = (svc.clone(), held.id.clone());
        async move { svc.erase(&id).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !erase.is_finished(),
        "the erasure did not wait for the release"
    );
    assert_eq!(
        svc.list().await.unwrap().len(),
        1,
        "removed under the release"
    );
    open_tx.send(()).unwrap();
    release.await.unwrap().unwrap();
    assert_eq!(erase.await.unwrap().unwrap(), Erased::Gone);
    assert!(header(&sink.next().await.raw, RELEASED_HEADER).is_some());
    assert!(svc.list().await.unwrap().is_empty());
    // A hold nobody is releasing is removed at once.
    let held = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    assert_eq!(svc.erase(&held.id).await.unwrap(), Erased::Removed);
    assert!(svc.list().await.unwrap().is_empty());
    assert_eq!(svc.erase(&held.id).await.unwrap(), Erased::Gone);
}

/// Which discards teach the graph: an admin's discard of a suspected
/// misdirection marks the flagged recipient only; an expiry discard and a
/// discard of an encryption-fallback hold mark nothing.
#[tokio::test]
async fn only_an_admins_discard_of_a_suspected_misdirection_is_learnt() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let (graph, _task) =
        GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 16);
    let svc = service(hold_config(dir.path(), sink.addr), Some(graph.clone())).await;
    let discarded =
        |g: &GraphHandle, r: &str| g.with_view("default", |v| v.discarded("alice@acme.test", r));
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(100));

    // Expiry: nothing learnt.
    let a = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    assert_eq!(svc.expire(T0 + 7201).await.unwrap()[0].id, a.id);
    settle().await;
    assert_eq!(discarded(&graph, "bob@rival.test"), None);

    // An encryption fallback hold: nothing learnt.
    let mut enc = verdict();
    enc.action = misdirect::verdict::Action::Encrypt;
    let b = svc
        .hold("default", &envelope(), ORIGINAL, &enc, T0)
        .await
        .unwrap();
    svc.discard(&b.id, Actor::Admin).await.unwrap();
    settle().await;
    assert_eq!(discarded(&graph, "bob@rival.test"), None);

    // A suspected misdirection: the flagged recipient (0.93) only.
    let c = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), T0)
        .await
        .unwrap();
    svc.discard(&c.id, Actor::Admin).await.unwrap();
    let mut marked = None;
    for _ in 0..100 {
        marked = discarded(&graph, "bob@rival.test");
        if marked.is_some() {
            break;
        }
        settle().await;
    }
    assert!(marked.is_some());
    assert_eq!(discarded(&graph, "bob@partner.test"), None);
    sink.assert_empty();
}
