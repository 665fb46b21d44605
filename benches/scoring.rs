//! Feature extraction plus scoring of one 5-recipient message through the
//! shipped model, for a sender with 500 contacts (and, second case, 4,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use misdirect::classify::model::ModelScorer;
use misdirect::graph::{Graph, GraphConfig, LearnInput};
use misdirect::message::{Field, Mailbox, MessageMeta, Recipient};
use misdirect::scorer::{ScoreInput, Scorer};

const SENDER: &str = "alice.sender@corp.com";

fn r(a: &str) -> Recipient {
    Recipient {
        address: a.into(),
        name: None,
        field: Field::To,
    }
}

fn graph(contacts: usize) -> Graph {
    let mut g = Graph::new(GraphConfig::default());
    let mut t = 1_000_000_000i64;
    for i in 0..contacts {
        let group: Vec<Recipient> = (0..3)
            .map(|k| {
                r(&format!(
                    "person{}.name{}@corp{}.com",
                    (i + k) % contacts,
                    (i + k) % 97,
                    (i + k) % 7
                ))
            })
            .collect();
        g.learn(&LearnInput {
            sender: SENDER,
            sender_name: None,
            recipients: &group,
            message_id: None,
            subject: Some(&format!("topic {}", i % 50)),
            attachments: vec![],
            ts: t,
        });
        t += 600;
    }
    g
}

fn bench(c: &mut Criterion) {
    let scorer = ModelScorer::shipped().unwrap();
    for contacts in [500usize, 4000] {
        let g = graph(contacts);
        let rcpts = vec![
            r("person1.name1@corp1.com"),
            r("person2.name2@corp2.com"),
            r("person3.name3@corp3.com"),
            r("person4.name4@corp4.com"),
            r("person5.name5@corp5.co"),
        ];
        let meta = MessageMeta {
            from: Some(Mailbox {
                address: SENDER.into(),
                name: None,
            }),
            recipients: rcpts.clone(),
            subject: Some("RE: topic 3".into()),
            ..Default::default()
        };
        let now = 1_000_000_000 + 600 * contacts as i64;
        c.bench_function(&format!("score_5_recipients_{contacts}_contacts"), |b| {
            b.iter(|| {
                let s = scorer
                    .score(
                        &g,
                        &ScoreInput {
                            meta: &meta,
                            recipients: &rcpts,
                            now,
                        },
                    )
                    .unwrap();
                std::hint::black_box(s.message_score())
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
