//! Tenants over a real SMTP conversation: one tenant's mail never changes
//! another tenant's scores, while a colleague's mail in the same tenant does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{message, start, Client, Daemon, Sink};
use misdirect::config::store::TenantConfig;

/// Send one message and return the score header the next hop received.
async fn score_of(d: &Daemon, sink: &mut Sink, from: &str, to: &str, subject: &str) -> String {
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.send_mail(from, &[to], &message(from, to, subject)).await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.recv().await;
    let text = String::from_utf8_lossy(&got.data).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("X-Misdirect-Score: "))
        .unwrap_or_else(|| panic!("no score header in {text}"));
    line["X-Misdirect-Score: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Wait until the daemon's learner has applied `from -> to` in `tenant`.
async fn learnt(d: &Daemon, tenant: &str, from: &str, to: &str) {
    for _ in 0..500 {
        if d.graph.with_view(tenant, |g| g.edge(from, to).is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{tenant}: {from} -> {to} never learnt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_mail_leaves_scores_unchanged() {
    let mut sink = Sink::start().await;
    let d = start(sink.addr, |cfg| {
        cfg.tenants.tenant = vec![
            TenantConfig {
                name: "acme".into(),
                domains: vec!["acme.test".into()],
            },
            TenantConfig {
                name: "globex".into(),
                domains: vec!["globex.test".into()],
            },
        ];
        cfg.policy.hold_at = None; // deliver everything: the header shows the score
    })
    .await;

    // Both senders have a history in their own tenant.
    score_of(&d, &mut sink, "alice@acme.test", "bob@partner.test", "a1").await;
    learnt(&d, "acme", "alice@acme.test", "bob@partner.test").await;
    score_of(&d, &mut sink, "frank@acme.test", "zed@partner.test", "f1").await;
    learnt(&d, "acme", "frank@acme.test", "zed@partner.test").await;
    for i in 0..3 {
        let s = format!("c{i}");
        score_of(&d, &mut sink, "carol@globex.test", "dave@partner.test", &s).await;
    }
    learnt(&d, "globex", "carol@globex.test", "dave@partner.test").await;

    // Globex writes to dave all the time; for acme he is still a stranger
    // nobody there has written to.
    let s = score_of(&d, &mut sink, "alice@acme.test", "dave@partner.test", "a2").await;
    assert_eq!(s, "0.9000", "globex's history must not reach acme");
    // Control: a colleague in the same tenant does change the score.
    let s = score_of(&d, &mut sink, "alice@acme.test", "zed@partner.test", "a3").await;
    assert_eq!(s, "0.5000", "frank's history counts within acme");
    // And acme's learning is not visible to globex either.
    let s = score_of(&d, &mut sink, "carol@globex.test", "zed@partner.test", "c9").await;
    assert_eq!(s, "0.9000");
    assert!(d.graph.with_view("globex", |g| g
        .edge("alice@acme.test", "bob@partner.test")
        .is_none()));
}
