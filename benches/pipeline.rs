//! Per-message cost of the in-process pipeline: metadata parsing alone, and
//! parse → recipients → tenant → graph lookup → score → decide, for
//! realistic messages with 1, 5 and 50 recipients against a synthetic
//! organisation graph of about a million edges (`PIPELINE_BENCH_EDGES`
//! changes the size); and parsing alone for the 5-recipient message behind
//! about 30 headers misdirect does not read (`parse_many_headers`). As in
//! the relay, reasons are written only when a recipient reaches the
//! sender's lowest action threshold (each message's score and action are
//! printed at the start). Times are the thread's CPU time (see
//! `common/cpu_time.rs`): messages per second per core is 1 / (time per
//! message).

#[path = "common/cpu_time.rs"]
mod cpu_time;

use std::hint::black_box;

use cpu_time::CpuTime;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use misdirect::address::{AddressConfig, Normalizer};
use misdirect::config::{PolicyConfig, TenantsConfig};
use misdirect::graph::synth::{person, Org};
use misdirect::graph::GraphConfig;
use misdirect::message::{envelope_recipients, MessageMeta};
use misdirect::policy::{Context, Policy};
use misdirect::scorer::{ScoreInput, Scorer};
use misdirect::store::GraphHandle;

/// The shipped model, as the daemon uses it by default.
fn scorer() -> Box<dyn Scorer> {
    match misdirect::classify::model::ModelScorer::shipped() {
        Ok(m) => Box::new(m),
        Err(e) => panic!("shipped model: {e}"),
    }
}

/// A realistic outgoing message: display names, Cc, threading headers, a
/// multipart body with a PDF attachment; about 6 KiB.
fn message(sender: &str, rcpts: &[String]) -> Vec<u8> {
    let (to, cc) = rcpts.split_at(rcpts.len().min(3));
    let names = |v: &[String]| {
        v.iter()
            .map(|a| format!("\"{}\" <{a}>", a.split('@').next().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",\r\n ")
    };
    let mut m = format!(
        "Received: from workstation.corp.example ([10.1.2.3]) by mx.corp.example\r\n\
         From: \"Sender Person\" <{sender}>\r\n\
         To: {}\r\n",
        names(to)
    );
    if !cc.is_empty() {
        m.push_str(&format!("Cc: {}\r\n", names(cc)));
    }
    m.push_str(
        "Subject: RE: Q3 forecast and the revised pipeline numbers\r\n\
         Date: Mon, 23 Nov 2026 10:15:00 +0100\r\n\
         Message-ID: <20261123101500.4711@corp.example>\r\n\
         In-Reply-To: <20261122090000.4242@corp.example>\r\n\
         References: <20261120080000.1@corp.example> <20261122090000.4242@corp.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    for _ in 0..40 {
        m.push_str("Thanks for the numbers, see my comments inline and the attached sheet.\r\n");
    }
    m.push_str(
        "--b1\r\nContent-Type: application/pdf; name=\"forecast-q3.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"forecast-q3.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
    );
    for _ in 0..30 {
        m.push_str(
            "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29kZT4+\r\n",
        );
    }
    m.push_str("--b1--\r\n");
    m.into_bytes()
}

/// The same message behind about 30 headers misdirect does not read, as
/// mail arriving through a few hops carries them: a Received chain, ARC and
/// DKIM signatures, authentication results, list and X-* headers.
fn message_many_headers(sender: &str, rcpts: &[String]) -> Vec<u8> {
    let mut m = String::new();
    for hop in 0..6 {
        m.push_str(&format!(
            "Received: from mx{hop}.relay.example (mx{hop}.relay.example [192.0.2.{hop}])\r\n\
             \tby mx{}.corp.example (Postfix) with ESMTPS id 4Bx{hop}Kq2zLmT\r\n\
             \tfor <inbox@corp.example>; Mon, 23 Nov 2026 10:15:0{hop} +0100 (CET)\r\n",
            hop + 1
        ));
    }
    for i in 1..=2 {
        m.push_str(&format!(
            "ARC-Seal: i={i}; a=rsa-sha256; t=1795432500; cv=none; d=relay.example; s=arc-2026;\r\n\
             \tb=Qm9ndXMgc2lnbmF0dXJlIGRhdGEgZm9yIHRoZSBiZW5jaG1hcmsgb25seSwgbm90IGEgcmVhbCBz\r\n\
             \t aWduYXR1cmUgYXQgYWxsLCBqdXN0IGJ5dGVzIG9mIHRoZSByaWdodCBzaGFwZQ==\r\n\
             ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d=relay.example;\r\n\
             \ts=arc-2026; t=1795432500; h=from:to:cc:subject:date:message-id;\r\n\
             \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
             \tb=U29tZSBtb3JlIGJvZ3VzIHNpZ25hdHVyZSBieXRlcyB0byBmaWxsIHRoZSBoZWFkZXIgbGluZQ==\r\n\
             ARC-Authentication-Results: i={i}; mx.relay.example; dkim=pass header.d=corp.example;\r\n\
             \tspf=pass smtp.mailfrom=corp.example; dmarc=pass header.from=corp.example\r\n"
        ));
    }
    m.push_str(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=corp.example; s=sel2026;\r\n\
         \tt=1795432500; h=from:to:cc:subject:date:message-id:in-reply-to:references;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \tb=Qm9ndXMgRERLSU0gc2lnbmF0dXJlIGZvciB0aGUgYmVuY2htYXJrLCBub3QgYSByZWFsIG9uZS4u\r\n\
         \t Li4gbW9yZSBieXRlcyBvZiB0aGUgcmlnaHQgc2hhcGUgYW5kIGxlbmd0aCBmb3IgYSBoZWFkZXI=\r\n\
         Authentication-Results: mx1.corp.example; dkim=pass (2048-bit key)\r\n\
         \theader.d=corp.example header.i=@corp.example; spf=pass smtp.mailfrom=corp.example\r\n\
         Received-SPF: pass (mx1.corp.example: domain of corp.example designates 192.0.2.1\r\n\
         \tas permitted sender) client-ip=192.0.2.1;\r\n\
         Return-Path: <bounces+4711@corp.example>\r\n\
         X-Mailer: Microsoft Outlook 16.0\r\n\
         X-MS-Has-Attach: yes\r\n\
         X-MS-TNEF-Correlator: \r\n\
         X-Originating-IP: [10.1.2.3]\r\n\
         X-MS-Exchange-Organization-SCL: -1\r\n\
         X-MS-Exchange-Organization-AuthSource: ex1.corp.example\r\n\
         X-MS-Exchange-Organization-AuthAs: Internal\r\n\
         X-Forefront-Antispam-Report: CIP:10.1.2.3;CTRY:;LANG:en;SCL:1;SRV:;IPV:NLI;\r\n\
         \tSFV:NSPM;H:ex1.corp.example;PTR:;CAT:NONE;SFS:(13230040)(366004);DIR:OUT;\r\n\
         X-Spam-Status: No, score=-2.1 required=5.0 tests=BAYES_00,DKIM_SIGNED,\r\n\
         \tDKIM_VALID,DKIM_VALID_AU,SPF_PASS autolearn=ham version=3.4.6\r\n\
         X-Spam-Checker-Version: SpamAssassin 3.4.6 on mx1.corp.example\r\n\
         List-Unsubscribe: <mailto:unsubscribe@lists.corp.example?subject=unsubscribe>\r\n\
         Thread-Topic: Q3 forecast and the revised pipeline numbers\r\n\
         Thread-Index: AQHZ8k3v2b0c5c7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9==\r\n\
         Accept-Language: en-US, de-DE\r\n\
         Content-Language: en-US\r\n",
    );
    let mut raw = m.into_bytes();
    raw.extend_from_slice(&message(sender, rcpts));
    raw
}

fn bench(c: &mut Criterion<CpuTime>) {
    let edges: usize = std::env::var("PIPELINE_BENCH_EDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let org = Org::new(Org::people_for_edges(edges), 1);
    let graph = org.graph(1, GraphConfig::default());
    eprintln!(
        "pipeline bench: {} edges, {} co-recipient pairs, {} addresses",
        graph.edge_count(),
        graph.co_count_total(),
        graph.address_count()
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let _guard = rt.enter();
    let (handle, _task) =
        GraphHandle::in_memory(GraphConfig::default(), TenantsConfig::default(), 1024);
    if let Ok(mut map) = handle.graphs().write() {
        map.insert("default".into(), graph);
    }
    let norm = Normalizer::new(AddressConfig::default());
    let policy = Policy::new(PolicyConfig::default());
    let scorer = scorer();
    let sender_ix = 4321 % org.people;
    let sender = person(sender_ix);
    let circle = org.circle(sender_ix).to_vec();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 5, 50] {
        // Mostly known contacts, one stranger from elsewhere in the company.
        let mut rcpts: Vec<String> = circle.iter().take(n.saturating_sub(1)).cloned().collect();
        rcpts.push(person((sender_ix + org.people / 2) % org.people));
        while rcpts.len() < n {
            rcpts.push(format!("extra{}@partner9.example", rcpts.len()));
        }
        let raw = message(&sender, &rcpts);
        let rcpt_to: Vec<String> = rcpts.iter().map(|a| format!("<{a}>")).collect();
        {
            let meta = MessageMeta::parse(&raw, &norm);
            let recipients = envelope_recipients(&meta, &rcpt_to, &norm);
            let scores = handle.with_view("default", |g| {
                scorer.score(
                    g,
                    &ScoreInput {
                        meta: &meta,
                        recipients: &recipients,
                        now: meta.date.unwrap_or(0),
                    },
                )
            });
            if let Ok(s) = scores {
                eprintln!(
                    "pipeline bench: {n} recipients, message score {:.4}, action {}",
                    s.message_score(),
                    policy.decide(s).action
                );
            }
        }
        group.bench_with_input(BenchmarkId::new("parse", n), &raw, |b, raw| {
            b.iter(|| black_box(MessageMeta::parse(black_box(raw), &norm)))
        });
        group.bench_with_input(BenchmarkId::new("full", n), &raw, |b, raw| {
            b.iter(|| {
                let meta = MessageMeta::parse(black_box(raw), &norm);
                let recipients = envelope_recipients(&meta, &rcpt_to, &norm);
                let sender = meta.sender().unwrap_or("");
                let tenant = handle.tenant_for(sender);
                let ctx = Context {
                    tenant: &tenant,
                    sender,
                };
                // As the relay: reasons only if a recipient reaches the
                // sender's lowest action threshold.
                let explain_from = policy.thresholds(&ctx).lowest();
                let scores = handle.with_view(&tenant, |g| {
                    scorer.score_explaining(
                        g,
                        &ScoreInput {
                            meta: &meta,
                            recipients: &recipients,
                            now: meta.date.unwrap_or(0),
                        },
                        explain_from,
                    )
                });
                black_box(scores.map(|s| policy.decide_for(&ctx, s)))
            })
        });
        if n == 5 {
            let raw = message_many_headers(&sender, &rcpts);
            group.bench_with_input(BenchmarkId::new("parse_many_headers", n), &raw, |b, raw| {
                b.iter(|| black_box(MessageMeta::parse(black_box(raw), &norm)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime).sample_size(30);
    targets = bench
}
criterion_main!(benches);
