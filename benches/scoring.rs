//! Feature extraction plus scoring of one 5-recipient message (four known
//! recipients, one a typo of a contact) through the shipped model. Senders
//! with 500 and 4,000 contacts of varied names, and a worst case of 500
//! contacts whose addresses all differ in a few characters only (every one
//! passes the lookalike pre-filters). `model_5_rows`: the model alone
//! (standardise, walk the trees, combine) on the feature rows of the first
//! case's five recipients.
//! Times are the thread's CPU time (see `common/cpu_time.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use cpu_time::CpuTime;
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

const FIRST: &[&str] = &[
    "james",
    "mary",
    "robert",
    "patricia",
    "john",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "chris",
    "nancy",
    "daniel",
    "lisa",
    "matthew",
    "betty",
    "anthony",
    "sandra",
    "mark",
    "ashley",
    "paul",
    "kim",
    "steven",
    "emily",
    "andrew",
    "donna",
    "kenneth",
    "michelle",
    "joshua",
    "carol",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "phillips",
];
const DOMAINS: &[&str] = &[
    "corp.com",
    "partner.com",
    "bank.example",
    "law-firm.example",
    "gov.example",
];

type AddrFn = fn(usize) -> String;

fn varied(i: usize) -> String {
    let n = FIRST.len() * LAST.len();
    let suffix = if i >= n {
        format!("{}", i / n)
    } else {
        String::new()
    };
    format!(
        "{}.{}{suffix}@{}",
        FIRST[i % FIRST.len()],
        LAST[(i / FIRST.len()) % LAST.len()],
        DOMAINS[i % DOMAINS.len()]
    )
}

fn similar(i: usize) -> String {
    format!("person{}.name{}@corp{}.com", i, i % 97, i % 7)
}

fn graph(contacts: usize, addr: fn(usize) -> String) -> Graph {
    let mut g = Graph::new(GraphConfig::default());
    let mut t = 1_000_000_000i64;
    for i in 0..contacts {
        let group: Vec<Recipient> = (0..3).map(|k| r(&addr((i + k) % contacts))).collect();
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

fn bench(c: &mut Criterion<CpuTime>) {
    let scorer = ModelScorer::shipped().unwrap();
    let cases: [(&str, usize, AddrFn); 3] = [
        ("varied", 500, varied),
        ("varied", 4000, varied),
        ("similar", 500, similar),
    ];
    for (label, contacts, addr) in cases {
        let g = graph(contacts, addr);
        let typo = addr(5).replace(".com", ".co");
        let rcpts = vec![r(&addr(1)), r(&addr(2)), r(&addr(3)), r(&addr(4)), r(&typo)];
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
        if contacts == 500 && label == "varied" {
            // The model alone on these five recipients' feature rows.
            let rows: Vec<_> =
                misdirect::classify::features::extract(&g, SENDER, &meta, &rcpts, now)
                    .into_iter()
                    .map(|f| f.values)
                    .collect();
            let mut out = [0f64; 5];
            c.bench_function("model_5_rows", |b| {
                b.iter(|| {
                    scorer.raw_rows(std::hint::black_box(&rows), &mut out);
                    std::hint::black_box(out[0])
                })
            });
        }
        c.bench_function(
            &format!("score_5_recipients_{contacts}_{label}_contacts"),
            |b| {
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
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench
}
criterion_main!(benches);
