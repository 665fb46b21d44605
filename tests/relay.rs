//! The relay end to end: real SMTP over loopback, in-process next hop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{message, split_trace, start, Client, Sink};

#[tokio::test]
async fn delivers_with_envelope_unchanged_and_body_byte_identical() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    let mut c = Client::greeted(d.addr).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    for ext in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(ehlo.contains(ext), "{ext} not advertised: {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered without a certificate"
    );
    let long_line = "x".repeat(5000);
    let mut original = Vec::new();
    original.extend_from_slice(
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n",
    );
    original.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n \r\n");
    original.extend_from_slice(b"8-bit: \xe2\x82\xac \xff\xfe raw\r\n");
    original.extend_from_slice(long_line.as_bytes());
    original.extend_from_slice(b"\r\nbare\rcr and bare\nlf\r\nlast line\r\n");
    c.expect("MAIL FROM:<alice@example.com> BODY=8BITMIME", "250 2.1.0")
        .await;
    c.expect("RCPT TO:<bob@example.org>", "250 2.1.5").await;
    c.expect("RCPT TO:<Carol+tag@Example.org>", "250 2.1.5")
        .await;
    c.expect("DATA", "354").await;
    c.send(&common::dot_stuff(&original)).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = sink.recv().await;
    assert_eq!(got.mail_from, "alice@example.com");
    assert_eq!(
        got.rcpt_to,
        vec!["bob@example.org", "Carol+tag@Example.org"]
    );
    let (trace, body) = split_trace(&got.data);
    assert_eq!(body, original, "message bytes changed in transit");
    assert!(trace.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby relay.test (misdirectd) with ESMTP id "), "{trace}");
    assert!(
        trace
            .contains("X-Misdirect-Score: 0.0000; action=deliver; model=baseline-never-seen-1\r\n"),
        "{trace}"
    );
    c.expect("QUIT", "221 2.0.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelined_transactions_in_one_write() {
    let mut sink = Sink::start().await;
    // Deliver everything: the second message's recipient is new to the sender.
    let d = start(sink.addr, |c| c.policy.hold_at = None).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m1 = message("a@example.com", "b@example.org", "one");
    let m2 = message("a@example.com", "c@example.org", "two");
    let mut batch = Vec::new();
    batch.extend_from_slice(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<no-at-sign>\r\nDATA\r\n",
    );
    c.send(&batch).await;
    for expect in ["250 2.1.0", "250 2.1.5", "501 5.1.3", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(expect), "expected {expect}, got {r}");
    }
    let mut batch = common::dot_stuff(&m1);
    batch.extend_from_slice(
        b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n",
    );
    c.send(&batch).await;
    for expect in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(expect), "expected {expect}, got {r}");
    }
    let mut batch = common::dot_stuff(&m2);
    batch.extend_from_slice(b".\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    c.send(&batch).await;
    for expect in ["250 2.0.0 Ok", "250 2.0.0", "250 2.0.0", "221"] {
        let r = c.reply().await;
        assert!(r.starts_with(expect), "expected {expect}, got {r}");
    }
    let a = sink.recv().await;
    let b = sink.recv().await;
    assert_eq!(a.rcpt_to, vec!["b@example.org"]);
    assert_eq!(split_trace(&a.data).1, m1);
    assert_eq!(b.rcpt_to, vec!["c@example.org"]);
    assert_eq!(split_trace(&b.data).1, m2);
}

#[tokio::test]
async fn bad_and_out_of_order_commands() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_bad_commands = 50).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    c.expect("FOO bar", "500 5.5.2").await;
    c.expect("HELO client.test", "250").await;
    c.expect("RCPT TO:<b@example.org>", "503 5.5.1").await;
    c.expect("DATA", "503 5.5.1").await;
    c.expect("MAIL FROM:no-brackets-at-all", "501 5.").await;
    c.expect("MAIL FROM:<a@example.com> FROBNICATE=1", "5")
        .await;
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0").await;
    c.expect("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    c.expect("DATA", "503 5.5.1").await;
    c.expect("RCPT TO:<>", "501 5.1.3").await;
    c.expect("VRFY bob", "252 2.5.0").await;
    c.expect("EXPN staff", "502 5.5.1").await;
    c.expect("AUTH PLAIN AGFhAGI=", "502 5.5.1").await;
    c.expect("STARTTLS", "502 5.5.1").await;
    c.expect("RSET", "250 2.0.0").await;
    c.expect("NOOP", "250 2.0.0").await;
    c.expect("QUIT", "221").await;
}

#[tokio::test]
async fn too_many_bad_commands_gets_421_and_close() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_bad_commands = 3).await;
    let mut c = Client::greeted(d.addr).await;
    for _ in 0..3 {
        c.expect("BOGUS", "500 5.5.2").await;
    }
    let r = c.cmd("BOGUS").await;
    assert!(r.starts_with("500 5.5.2"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn open_relay_attempt_refused_with_554() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.server.allowed_networks = vec!["10.0.0.0/8".into(), "192.0.2.0/24".into()]
    })
    .await;
    let mut c = Client::connect(d.addr).await;
    let r = c.reply().await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(c.closed().await);
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn connection_limit_gets_421() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_connections = 1).await;
    let mut first = Client::greeted(d.addr).await;
    let mut second = Client::connect(d.addr).await;
    let r = second.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(second.closed().await);
    first.expect("QUIT", "221").await;
    assert!(first.closed().await);
    // The slot is free again once the first session ended.
    let mut third = Client::connect(d.addr).await;
    let mut r = third.reply().await;
    for _ in 0..50 {
        if r.starts_with("220") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        third = Client::connect(d.addr).await;
        r = third.reply().await;
    }
    assert!(r.starts_with("220"), "{r}");
}

#[tokio::test]
async fn recipient_limit_gets_452() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_recipients = 2).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<a@example.com>", "250").await;
    c.expect("RCPT TO:<b@example.org>", "250").await;
    c.expect("RCPT TO:<c@example.org>", "250").await;
    c.expect("RCPT TO:<d@example.org>", "452 4.5.3").await;
    c.expect("DATA", "354").await;
    c.send(&message("a@example.com", "b@example.org", "lim"))
        .await;
    let r = c.cmd(".").await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        sink.recv().await.rcpt_to,
        vec!["b@example.org", "c@example.org"]
    );
}

#[tokio::test]
async fn size_limit_gets_552_for_size_param_and_for_data() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_message_size = 1000).await;
    let mut c = Client::greeted(d.addr).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    c.expect("MAIL FROM:<a@example.com> SIZE=1001", "552 5.3.4")
        .await;
    c.expect("MAIL FROM:<a@example.com> SIZE=900", "250").await;
    c.expect("RCPT TO:<b@example.org>", "250").await;
    c.expect("DATA", "354").await;
    let mut big = message("a@example.com", "b@example.org", "big");
    big.extend_from_slice("y".repeat(2000).as_bytes());
    big.extend_from_slice(b"\r\n");
    c.send(&big).await;
    let r = c.cmd(".").await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session stays usable and in sync.
    let r = c
        .send_mail(
            "a@example.com",
            &["b@example.org"],
            &message("a@example.com", "b@example.org", "small"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.recv().await;
    assert!(String::from_utf8_lossy(&got.data).contains("Subject: small"));
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn long_command_line_gets_500() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| c.server.max_line_length = 512).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(600));
    c.expect(&long, "500 5.5.2").await;
    c.expect("MAIL FROM:<a@example.com>", "250").await;
}

#[tokio::test]
async fn idle_and_data_timeouts_get_421() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.server.command_timeout = Duration::from_millis(300);
        c.server.data_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.closed().await);

    let mut c = Client::greeted(d.addr).await;
    c.expect("HELO client.test", "250").await;
    c.expect("MAIL FROM:<a@example.com>", "250").await;
    c.expect("RCPT TO:<b@example.org>", "250").await;
    c.expect("DATA", "354").await;
    c.send(b"Subject: half\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn next_hop_down_gives_451_then_delivers_after_it_returns() {
    let hole = common::dead_port().await;
    let hop = hole.local_addr().unwrap();
    drop(hole);
    let d = start(hop, |_| {}).await;
    let m = message("a@example.com", "b@example.org", "retry");
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert!(d.cell.current().spool().list().await.unwrap().is_empty());
    // The upstream keeps the message and retries; the next hop is back.
    let mut sink = Sink::start_on(tokio::net::TcpListener::bind(hop).await.unwrap());
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(split_trace(&sink.recv().await.data).1, m);
}

#[tokio::test]
async fn next_hop_tempfail_gives_451() {
    let mut sink = Sink::start().await;
    sink.ctl.lock().unwrap().tempfail = true;
    let d = start(sink.addr, |_| {}).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let r = c
        .send_mail(
            "a@example.com",
            &["b@example.org", "c@example.org"],
            &message("a@example.com", "b@example.org", "t"),
        )
        .await;
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn next_hop_5xx_for_all_recipients_is_passed_back() {
    let mut sink = Sink::start().await;
    sink.ctl.lock().unwrap().reject_all = true;
    let d = start(sink.addr, |_| {}).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("a@example.com", "b@example.org", "x");
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(
        r.starts_with("550 5.7.1 Next hop refused: relaying denied"),
        "{r}"
    );
    let r = c
        .send_mail("a@example.com", &["b@example.org", "c@example.org"], &m)
        .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(sink.nothing_more().await);
}

/// `from`'s message to b@ and gone@ through daemon `d`: the message and
/// the daemon's reply.
async fn send_partial(d: &common::Daemon, from: &str) -> (Vec<u8>, String) {
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message(from, "b@example.org", "partial");
    let r = c
        .send_mail(from, &["b@example.org", "gone@example.org"], &m)
        .await;
    (m, r)
}

/// A daemon whose next hop refuses `refused` (gone@ among them) and, with
/// `defer_dsns`, answers MAIL with the null sender (a DSN) `451`.
async fn partial_hop(
    sink: &Sink,
    refused: &[&str],
    defer_dsns: bool,
    adjust: impl FnOnce(&mut misdirect::config::Config),
) -> common::Daemon {
    {
        let mut c = sink.ctl.lock().unwrap();
        c.reject_rcpts.extend(refused.iter().map(|r| r.to_string()));
        c.tempfail_null_sender = defer_dsns;
    }
    start(sink.addr, adjust).await
}

/// Alice's message to b@ and gone@ through a daemon whose next hop refuses
/// `refused` (gone@ among them): the message and the daemon's reply.
async fn send_partially_refused(sink: &Sink, refused: &[&str]) -> (Vec<u8>, String) {
    let d = partial_hop(sink, refused, false, |_| {}).await;
    send_partial(&d, "alice@example.com").await
}

#[tokio::test]
async fn partial_rejection_gives_250_and_dsn_to_sender() {
    let mut sink = Sink::start().await;
    let (m, r) = send_partially_refused(&sink, &["gone@example.org"]).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        r.trim_end()
            .ends_with("1 recipient(s) refused by next hop, DSN sent"),
        "{r}"
    );
    let delivered = sink.recv().await;
    assert_eq!(delivered.mail_from, "alice@example.com");
    assert_eq!(delivered.rcpt_to, vec!["b@example.org"]);
    assert_eq!(split_trace(&delivered.data).1, m);
    let dsn = sink.recv().await;
    assert_eq!(dsn.mail_from, "", "a DSN goes out with the null sender");
    assert_eq!(dsn.rcpt_to, vec!["alice@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; gone@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Subject: partial"),
        "original headers missing: {text}"
    );
    assert!(!text.contains("Hello."), "DSN must not carry the body");
    assert!(sink.nothing_more().await);
}

/// When the next hop refuses the DSN too, the reply says so instead of
/// claiming it was sent; the accepted recipient still has the message.
#[tokio::test]
async fn partial_rejection_with_an_undeliverable_dsn_says_so() {
    let mut sink = Sink::start().await;
    // The DSN goes to the envelope sender, which this hop refuses too.
    let (m, r) = send_partially_refused(&sink, &["gone@example.org", "alice@example.com"]).await;
    assert!(
        r.starts_with("250 2.0.0")
            && r.trim_end().ends_with(
                "1 recipient(s) refused by next hop, the DSN to the sender could not be delivered"
            ),
        "{r}"
    );
    let delivered = sink.recv().await;
    assert_eq!(delivered.rcpt_to, vec!["b@example.org"]);
    assert_eq!(split_trace(&delivered.data).1, m);
    assert!(sink.nothing_more().await);
}

/// The files waiting in a daemon's DSN outbox (`<data_dir>/outbox`).
fn outbox_files(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("outbox"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "dsn"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// When the next hop takes the message for some recipients but not the
/// DSN about the others (4xx), the DSN is queued before the upstream's
/// `250`, and a later outbox pass sends it once the next hop takes it.
#[tokio::test]
async fn a_dsn_the_next_hop_defers_is_queued_and_sent_later() {
    let mut sink = Sink::start().await;
    let d = partial_hop(&sink, &["gone@example.org"], true, |_| {}).await;
    let (_, r) = send_partial(&d, "alice@example.com").await;
    assert!(
        r.starts_with("250 2.0.0")
            && r.trim_end().ends_with(
                "1 recipient(s) refused by next hop, the DSN to the sender is queued (next hop unavailable)"
            ),
        "{r}"
    );
    assert_eq!(sink.recv().await.rcpt_to, vec!["b@example.org"]);
    assert!(sink.nothing_more().await);
    assert_eq!(outbox_files(d.dir.path()), 1);
    let p = d.cell.current();
    let now = misdirect::hold::now();
    // Still deferred: it stays.
    let pass = p.retry_outbox(now).await.unwrap();
    assert_eq!((pass.sent, pass.waiting), (0, 1), "{pass:?}");
    assert_eq!(outbox_files(d.dir.path()), 1);
    sink.ctl.lock().unwrap().tempfail_null_sender = false;
    let pass = p.retry_outbox(now).await.unwrap();
    assert_eq!((pass.sent, pass.waiting), (1, 0), "{pass:?}");
    let dsn = sink.recv().await;
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, vec!["alice@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains(
            "Final-Recipient: rfc822; gone@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(text.contains("Subject: partial"), "{text}");
    assert_eq!(outbox_files(d.dir.path()), 0);
    assert!(sink.nothing_more().await);
}

/// A queued DSN older than `[relay] dsn_lifetime` is dropped untried; one
/// the next hop refuses for good (5xx) is dropped too.
#[tokio::test]
async fn queued_dsns_leave_when_too_old_or_refused_for_good() {
    let mut sink = Sink::start().await;
    let d = partial_hop(&sink, &["gone@example.org"], true, |cfg| {
        cfg.relay.dsn_lifetime = Duration::from_secs(3600);
    })
    .await;
    for from in ["alice@example.com", "carol@example.com"] {
        let (_, r) = send_partial(&d, from).await;
        assert!(r.contains("is queued"), "{r}");
        sink.recv().await;
    }
    assert_eq!(outbox_files(d.dir.path()), 2);
    let p = d.cell.current();
    let pass = p.retry_outbox(misdirect::hold::now() + 3601).await.unwrap();
    assert_eq!(pass.expired, 2, "{pass:?}");
    assert_eq!(outbox_files(d.dir.path()), 0);
    // Refused for good: the sender's address is now unknown at the hop.
    let (_, r) = send_partial(&d, "alice@example.com").await;
    assert!(r.contains("is queued"), "{r}");
    sink.recv().await;
    {
        let mut ctl = sink.ctl.lock().unwrap();
        ctl.tempfail_null_sender = false;
        ctl.reject_rcpts.insert("alice@example.com".into());
    }
    let pass = p.retry_outbox(misdirect::hold::now()).await.unwrap();
    assert_eq!((pass.refused, pass.sent), (1, 0), "{pass:?}");
    assert_eq!(outbox_files(d.dir.path()), 0);
    assert!(sink.nothing_more().await);
}

/// The `250` for a message whose DSN was queued holds across `kill -9`:
/// the restarted daemon keeps the DSN while the next hop defers it and
/// sends it on a later pass (every `dsn_retry_interval`) once it takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_dsn_survives_kill_9_and_goes_out_after_the_restart() {
    use common::binary::{free_port, DaemonProcess, Output};
    let mut sink = Sink::start().await;
    sink.ctl.lock().unwrap().tempfail_null_sender = true;
    sink.ctl
        .lock()
        .unwrap()
        .reject_rcpts
        .insert("gone@example.org".into());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let config = dir.path().join("misdirectd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\ndata_dir = \"{d}\"\n\
             [relay]\nhost = \"127.0.0.1\"\nport = {hop}\ntls = \"none\"\ndsn_retry_interval = \"300ms\"\n\
             [store]\npath = \"{d}/graph.redb\"\n[privacy]\nkey_file = \"{d}/keys.json\"\n\
             [metrics]\nenabled = false\n[log]\nlevel = \"warn\"\n[model]\nscorer = \"never-seen\"\n",
            d = data.display(),
            hop = sink.addr.port()
        ),
    )
    .unwrap();
    let c2 = config.clone();
    let daemon =
        tokio::task::spawn_blocking(move || DaemonProcess::spawn(&c2, port, Output::Inherit))
            .await
            .unwrap();
    let mut c = Client::greeted(daemon.addr()).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("alice@example.com", "b@example.org", "partial");
    let r = c
        .send_mail(
            "alice@example.com",
            &["b@example.org", "gone@example.org"],
            &m,
        )
        .await;
    assert!(r.starts_with("250 2.0.0") && r.contains("is queued"), "{r}");
    assert_eq!(sink.recv().await.rcpt_to, vec!["b@example.org"]);
    daemon.kill_9();
    assert_eq!(outbox_files(&data), 1);
    let c2 = config.clone();
    let daemon =
        tokio::task::spawn_blocking(move || DaemonProcess::spawn(&c2, port, Output::Inherit))
            .await
            .unwrap();
    // Passes come and go while the next hop defers it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(outbox_files(&data), 1);
    assert!(sink.nothing_more().await);
    sink.ctl.lock().unwrap().tempfail_null_sender = false;
    let dsn = sink.recv().await;
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, vec!["alice@example.com"]);
    assert!(String::from_utf8_lossy(&dsn.data).contains("gone@example.org"));
    for _ in 0..100 {
        if outbox_files(&data) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox_files(&data), 0);
    drop(daemon);
    assert!(sink.nothing_more().await);
}

/// Teach the graph that alice writes to bob, then wait until it learnt.
async fn teach(d: &common::Daemon, sink: &mut Sink) {
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let r = c
        .send_mail(
            "alice@example.com",
            &["bob@example.org"],
            &message("alice@example.com", "bob@example.org", "hi"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    sink.recv().await;
    for _ in 0..200 {
        let n = d
            .graph
            .with_view("default", |g| g.sender("alice@example.com").messages);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the delivered message was never learnt");
}

#[tokio::test]
async fn hold_verdict_is_in_the_spool_before_250() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    teach(&d, &mut sink).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("alice@example.com", "stranger@elsewhere.example", "oops");
    let r = c
        .send_mail("alice@example.com", &["stranger@elsewhere.example"], &m)
        .await;
    assert!(r.starts_with("250 2.0.0 Held as "), "{r}");
    let id = r.trim_end().rsplit(' ').next().unwrap().to_string();
    // Straight after the 250, without waiting: the file is there.
    let spool = d.cell.current().spool().clone();
    let (meta, raw) = spool
        .get(&id)
        .await
        .unwrap()
        .expect("held message not in spool");
    assert_eq!(raw, m);
    assert_eq!(meta.envelope.mail_from, "alice@example.com");
    assert_eq!(meta.envelope.rcpt_to, vec!["stranger@elsewhere.example"]);
    assert_eq!(meta.verdict.action, misdirect::verdict::Action::Hold);
    assert!(d
        .dir
        .path()
        .join("spool")
        .join(format!("{id}.held"))
        .exists());
    // What reaches the next hop is the notice to the sender, not the message.
    let notice = sink.recv().await;
    assert_eq!(notice.rcpt_to, vec!["alice@example.com".to_string()]);
    assert_eq!(notice.mail_from, "");
    assert!(String::from_utf8_lossy(&notice.data).contains("X-Misdirect-Notice: hold\r\n"));
    assert!(
        sink.nothing_more().await,
        "a held message must not be relayed"
    );
}

#[tokio::test]
async fn reject_verdict_gets_550_571() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| c.policy.reject_at = Some(0.85)).await;
    teach(&d, &mut sink).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let r = c
        .send_mail(
            "alice@example.com",
            &["stranger@elsewhere.example"],
            &message("alice@example.com", "stranger@elsewhere.example", "no"),
        )
        .await;
    assert!(
        r.starts_with(
            "550 5.7.1 Refused: recipient <stranger@elsewhere.example> looks misaddressed"
        ),
        "{r}"
    );
    assert!(sink.nothing_more().await);
    assert!(d.cell.current().spool().list().await.unwrap().is_empty());
}

#[tokio::test]
async fn reload_refuses_bad_config_and_applies_good_one() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    let dir = d.dir.path().display().to_string();
    let hop = sink.addr;
    let before = d.cell.current().config().server.hostname.clone();
    let bad = "[server]\nhostname = \"new.test\"\nmax_recipients = 0\nbogus_key = 1\n";
    let err = d
        .cell
        .reload_toml(bad, "bad.toml")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.bogus_key"), "{err}");
    assert!(err.contains("server.max_recipients"), "{err}");
    assert_eq!(d.cell.current().config().server.hostname, before);
    let mut c = Client::connect(d.addr).await;
    assert!(c.reply().await.starts_with("220 relay.test "));

    let good = format!(
        "[server]\nhostname = \"new.test\"\ndata_dir = \"{dir}\"\n[relay]\nhost = \"{}\"\nport = {}\ntls = \"none\"\n[metrics]\nenabled = false\n",
        hop.ip(),
        hop.port()
    );
    d.cell.reload_toml(&good, "good.toml").await.unwrap();
    let mut c = Client::connect(d.addr).await;
    let g = c.reply().await;
    assert!(g.starts_with("220 new.test "), "{g}");

    // A file that does not exist is refused too.
    let missing = d.dir.path().join("missing.toml");
    assert!(d.cell.reload(&missing).await.is_err());
    assert_eq!(d.cell.current().config().server.hostname, "new.test");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_sessions_with_421() {
    let sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.server.shutdown_grace = Duration::from_secs(5)
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    d.trigger.trigger();
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(c.closed().await);
    tokio::time::timeout(Duration::from_secs(10), d.server)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(d.addr).await.is_err());
}

#[test]
fn shipped_config_is_valid_and_equals_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/misdirectd.toml");
    let cfg = misdirect::config::Config::load(&path).unwrap();
    let def = misdirect::config::Config::default();
    assert_eq!(cfg.server, def.server);
    assert_eq!(cfg.relay, def.relay);
    assert_eq!(cfg.metrics, def.metrics);
    assert_eq!(cfg.log, def.log);
    assert_eq!(cfg.policy, def.policy);
    assert_eq!(cfg.addresses, def.addresses);
    assert_eq!(cfg.tenants, def.tenants);
    assert_eq!(
        serde_json::to_value(&cfg.graph).unwrap(),
        serde_json::to_value(&def.graph).unwrap()
    );
}

#[test]
fn config_errors_name_every_bad_relay_key() {
    let e = misdirect::config::Config::from_toml(
        "[server]\nlisten = \"nowhere\"\nallowed_networks = [\"10.0.0.0/33\"]\nrequire_tls = true\n\
         [relay]\ntls = \"sometimes\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tls"), "{e}");
    let e = misdirect::config::Config::from_toml(
        "[server]\nlisten = \"nowhere\"\nallowed_networks = [\"10.0.0.0/33\"]\nrequire_tls = true\n\
         [relay]\npool_size = 0\nusername = \"u\"\n[metrics]\nlisten = \"0.0.0.0:9325\"\n",
    )
    .unwrap_err()
    .to_string();
    for key in [
        "server.listen",
        "server.allowed_networks[0]",
        "server.require_tls",
        "relay.pool_size",
        "relay.username/password",
        "metrics.listen",
    ] {
        assert!(e.contains(key), "{key} not named in: {e}");
    }
}

#[tokio::test]
async fn shutdown_lets_a_transaction_in_flight_finish() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.server.shutdown_grace = Duration::from_secs(10)
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<a@example.com>", "250").await;
    c.expect("RCPT TO:<b@example.org>", "250").await;
    c.expect("DATA", "354").await;
    let m = message("a@example.com", "b@example.org", "inflight");
    c.send(&m[..20]).await;
    d.trigger.trigger();
    // New connections are no longer accepted once the loop has stopped.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(d.addr).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::net::TcpStream::connect(d.addr).await.is_err());
    c.send(&m[20..]).await;
    let r = c.cmd(".").await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert_eq!(split_trace(&sink.recv().await.data).1, m);
    tokio::time::timeout(Duration::from_secs(10), d.server)
        .await
        .expect("server did not stop")
        .unwrap();
}

struct ReleaseInterceptor {
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl misdirect::pipeline::Intercept for ReleaseInterceptor {
    fn wants(&self, env: &misdirect::envelope::Envelope) -> bool {
        env.rcpt_to.iter().any(|r| r == "release@relay.test")
    }

    fn handle<'a>(
        &'a self,
        _ctx: &'a misdirect::pipeline::TxContext,
        _env: &'a misdirect::envelope::Envelope,
        raw: &'a [u8],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = misdirect::smtp::reply::Reply> + Send + 'a>,
    > {
        Box::pin(async move {
            self.seen.lock().unwrap().push(raw.to_vec());
            misdirect::smtp::reply::Reply::new(250, "2.0.0", "Release request taken")
        })
    }
}

#[tokio::test]
async fn interceptor_takes_matching_transactions_before_scoring() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    let current = d.cell.current();
    let icpt = std::sync::Arc::new(ReleaseInterceptor {
        seen: Default::default(),
    });
    let p = misdirect::pipeline::Pipeline::build(
        (**current.config()).clone(),
        current.shared().clone(),
    )
    .await
    .unwrap()
    .with_interceptor(icpt.clone());
    d.cell.replace(p);
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("alice@example.com", "release@relay.test", "release");
    let r = c
        .send_mail("alice@example.com", &["release@relay.test"], &m)
        .await;
    assert!(r.starts_with("250 2.0.0 Release request taken"), "{r}");
    assert_eq!(icpt.seen.lock().unwrap().as_slice(), &[m]);
    assert!(sink.nothing_more().await);
    // Everything else still goes the normal way.
    let m = message("alice@example.com", "bob@example.org", "normal");
    let r = c
        .send_mail("alice@example.com", &["bob@example.org"], &m)
        .await;
    assert!(r.starts_with("250 2.0.0 Ok"), "{r}");
    assert_eq!(split_trace(&sink.recv().await.data).1, m);
}

#[tokio::test]
async fn next_hop_auth_is_used_when_configured() {
    let mut sink = Sink::start().await;
    sink.ctl.lock().unwrap().require_auth = true;
    let d = start(sink.addr, |c| {
        c.relay.username = Some("relayuser".into());
        c.relay.password = Some("s3cret".into());
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("a@example.com", "b@example.org", "auth");
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(split_trace(&sink.recv().await.data).1, m);
    assert_eq!(
        sink.ctl.lock().unwrap().auth_seen.as_deref(),
        Some("|relayuser|s3cret")
    );
}

#[tokio::test]
async fn required_tls_to_a_next_hop_without_starttls_gives_451() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.relay.tls = misdirect::config::server::RelayTls::Required
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("a@example.com", "b@example.org", "tlsreq");
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("451 4.4.1"), "{r}");
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn smuggling_attempt_with_bare_lf_dot_is_refused() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<a@example.com>", "250").await;
    c.expect("RCPT TO:<b@example.org>", "250").await;
    c.expect("DATA", "354").await;
    c.send(b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: forged\r\n\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("550 5.6.0"), "{r}");
    c.expect("NOOP", "250").await;
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn encrypt_verdict_without_certificate_is_relayed_tagged() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.policy.encrypt_at = Some(0.0);
        c.policy.hold_at = None;
        c.encrypt.fallback = misdirect::config::EncryptFallback::Tag;
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let m = message("a@example.com", "b@example.org", "enc");
    let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let (trace, body) = split_trace(&sink.recv().await.data);
    assert!(trace.contains("; action=encrypt; "), "{trace}");
    let tag = b"X-Misdirect-Encryption: none; no certificate for recipient\r\n";
    assert_eq!(&body[..tag.len()], tag);
    assert_eq!(&body[tag.len()..], &m[..]);
}

#[tokio::test]
async fn scoring_failure_is_fail_closed_451() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| {
        c.policy.fail_mode = misdirect::config::FailMode::Closed
    })
    .await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    // No From header: the baseline scorer has no sender to score against.
    let m = b"To: <b@example.org>\r\nSubject: no from\r\n\r\nbody\r\n";
    let r = c.send_mail("a@example.com", &["b@example.org"], m).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(sink.nothing_more().await);
}

#[tokio::test]
async fn next_hop_connections_are_reused_and_a_closed_one_is_replaced() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |c| c.relay.pool_size = 1).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    for i in 0..3 {
        let m = message("a@example.com", "b@example.org", &format!("reuse{i}"));
        let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        assert_eq!(split_trace(&sink.recv().await.data).1, m);
    }
    assert_eq!(
        sink.ctl.lock().unwrap().connections,
        1,
        "pooled connection not reused"
    );
    // The next hop now hangs up after every message: the pooled connection
    // it closed is detected and a fresh one carries the message.
    sink.ctl.lock().unwrap().close_after_message = true;
    for i in 0..3 {
        let m = message("a@example.com", "b@example.org", &format!("fresh{i}"));
        let r = c.send_mail("a@example.com", &["b@example.org"], &m).await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        assert_eq!(split_trace(&sink.recv().await.data).1, m);
    }
    assert!(sink.nothing_more().await, "a message was sent twice");
}

/// A scorer that scores 0 and records the `explain_from` the relay passes.
struct Recording(std::sync::Mutex<Vec<(String, f64)>>);

impl misdirect::scorer::Scorer for Recording {
    fn name(&self) -> &str {
        "recording"
    }

    fn score(
        &self,
        g: &dyn misdirect::graph::GraphView,
        input: &misdirect::scorer::ScoreInput<'_>,
    ) -> Result<misdirect::verdict::Scores, misdirect::scorer::ScoreError> {
        self.score_explaining(g, input, 0.0)
    }

    fn score_explaining(
        &self,
        _: &dyn misdirect::graph::GraphView,
        input: &misdirect::scorer::ScoreInput<'_>,
        explain_from: f64,
    ) -> Result<misdirect::verdict::Scores, misdirect::scorer::ScoreError> {
        let sender = input.meta.sender().unwrap_or("").to_string();
        self.0.lock().unwrap().push((sender, explain_from));
        Ok(misdirect::verdict::Scores {
            model: "recording".into(),
            recipients: vec![],
        })
    }
}

/// The relay asks for reasons only from the sender's lowest action
/// threshold (the global one, or its domain's override); `check` always
/// asks for them.
#[tokio::test]
async fn reasons_are_asked_for_from_the_senders_lowest_threshold() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |_| {}).await;
    let current = d.cell.current();
    let mut cfg = (**current.config()).clone();
    cfg.policy.encrypt_at = None;
    cfg.policy.hold_at = Some(0.8);
    cfg.policy.reject_at = Some(0.97);
    cfg.policy.sender_domain.insert(
        "lax.test".into(),
        misdirect::config::policy::ThresholdOverride {
            encrypt_at: None,
            hold_at: Some(0.95),
            reject_at: None,
        },
    );
    let rec = std::sync::Arc::new(Recording(Default::default()));
    let shared = misdirect::pipeline::Shared {
        scorer: rec.clone(),
        graph: current.shared().graph.clone(),
    };
    let p = misdirect::pipeline::Pipeline::build(cfg, shared)
        .await
        .unwrap();
    d.cell.replace(p);
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    for from in ["alice@example.com", "bob@lax.test"] {
        let m = message(from, "carol@example.org", "hello");
        let r = c.send_mail(from, &["carol@example.org"], &m).await;
        assert!(r.starts_with("250 2.0.0 Ok"), "{r}");
        sink.recv().await;
    }
    let check = d
        .cell
        .current()
        .check(message("alice@example.com", "carol@example.org", "check"))
        .await;
    assert!(check.verdict.is_some());
    assert_eq!(
        rec.0.lock().unwrap().as_slice(),
        &[
            ("alice@example.com".to_string(), 0.8),
            ("bob@lax.test".to_string(), 0.95),
            ("alice@example.com".to_string(), 0.0),
        ]
    );
}
