//! Corruption generators: each kind produces the misdirection it claims,
//! marks the wrong recipient, and is reproducible from its seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use misdirect::address::{domain_of, local_of};
use misdirect::classify::corrupt::{corrupt, typo, CorruptionKind, Pools};
use misdirect::classify::features::bounded_distance;
use misdirect::graph::{Graph, GraphConfig, GraphView, LearnInput};
use misdirect::message::{Field, Mailbox, MessageMeta, Recipient};
use rand::rngs::StdRng;
use rand::SeedableRng;

const ALICE: &str = "alice@corp.com";

fn r(a: &str) -> Recipient {
    Recipient {
        address: a.into(),
        name: None,
        field: Field::To,
    }
}

fn msg(from: &str, rcpts: &[&str], subject: &str) -> MessageMeta {
    MessageMeta {
        from: Some(Mailbox {
            address: from.into(),
            name: None,
        }),
        recipients: rcpts.iter().map(|a| r(a)).collect(),
        subject: Some(subject.into()),
        ..Default::default()
    }
}

fn setup() -> (Graph, Pools) {
    let mut g = Graph::new(GraphConfig::default());
    let mut pools = Pools::default();
    let history = [
        msg(ALICE, &["bob.smith@corp.com", "carol@corp.com"], "budget"),
        msg(ALICE, &["bob.jones@corp.com"], "lunch"),
        msg(ALICE, &["dave@partner.com"], "deal"),
        msg(ALICE, &["erin@corp.com"], "misc"),
        msg("eve@corp.com", &["frank@corp.com", "gina@corp.com"], "x"),
        msg("henry@other.org", &["eve@corp.com"], "y"),
    ];
    for (i, m) in history.iter().enumerate() {
        g.learn(&LearnInput::from_meta(m, &m.recipients, 1_000_000 + i as i64).unwrap());
        pools.observe(m);
    }
    (g, pools)
}

#[test]
fn typo_is_one_edit_and_keeps_punctuation() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let t = typo("bob.smith", &mut rng).unwrap();
        assert_ne!(t, "bob.smith");
        assert_eq!(bounded_distance(t.as_bytes(), b"bob.smith", 3), 1, "{t}");
        assert!(t.contains('.'));
    }
    assert_eq!(typo("..", &mut rng), None);
}

#[test]
fn every_kind_does_what_it_says() {
    let (g, pools) = setup();
    let reply = msg(
        ALICE,
        &["bob.smith@corp.com", "carol@corp.com"],
        "RE: budget",
    );
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        for kind in CorruptionKind::ALL {
            let Some(c) = corrupt(kind, &g, &pools, ALICE, &reply, &reply.recipients, &mut rng)
            else {
                panic!("{kind:?} did not apply (seed {seed})");
            };
            assert_eq!(c.kind, kind);
            let wrong = &c.recipients[c.wrong].address;
            let originals: Vec<&str> = reply
                .recipients
                .iter()
                .map(|r| r.address.as_str())
                .collect();
            assert!(!originals.contains(&wrong.as_str()), "{kind:?}: {wrong}");
            // Every other recipient is an original one.
            for (i, x) in c.recipients.iter().enumerate() {
                if i != c.wrong {
                    assert!(originals.contains(&x.address.as_str()));
                }
            }
            match kind {
                CorruptionKind::Autocomplete => {
                    assert!(g.edge(ALICE, wrong).is_some());
                    assert_eq!(c.recipients.len(), 2);
                    // Shares the start of the replaced recipient's local part.
                    let replaced = originals[c.wrong];
                    assert_eq!(
                        local_of(wrong).as_bytes()[0],
                        local_of(replaced).as_bytes()[0]
                    );
                }
                CorruptionKind::Typo => {
                    assert!(g.edge(ALICE, wrong).is_none());
                    let replaced = originals[c.wrong];
                    assert!(bounded_distance(wrong.as_bytes(), replaced.as_bytes(), 3) == 1);
                }
                CorruptionKind::OtherDomain => {
                    let replaced = originals[c.wrong];
                    assert_eq!(local_of(wrong), local_of(replaced));
                    assert_ne!(domain_of(wrong), domain_of(replaced));
                }
                CorruptionKind::StrangerAdded => {
                    assert_eq!(c.recipients.len(), 3);
                    assert_eq!(domain_of(wrong), "corp.com");
                    assert!(g.edge(ALICE, wrong).is_none());
                    assert!(g.address(wrong).senders > 0);
                }
                CorruptionKind::OutsideThread => {
                    assert!(g.edge(ALICE, wrong).is_some());
                    assert!(!g.subject_participants(ALICE, "budget").contains(wrong));
                }
            }
        }
    }
}

#[test]
fn outside_thread_needs_a_known_reply() {
    let (g, pools) = setup();
    let mut rng = StdRng::seed_from_u64(3);
    let fresh = msg(ALICE, &["bob.smith@corp.com"], "budget");
    assert!(corrupt(
        CorruptionKind::OutsideThread,
        &g,
        &pools,
        ALICE,
        &fresh,
        &fresh.recipients,
        &mut rng
    )
    .is_none());
    let unknown = msg(ALICE, &["bob.smith@corp.com"], "RE: never seen");
    assert!(corrupt(
        CorruptionKind::OutsideThread,
        &g,
        &pools,
        ALICE,
        &unknown,
        &unknown.recipients,
        &mut rng
    )
    .is_none());
    // A forward goes outside the thread by design: not a reply to corrupt.
    let forward = msg(ALICE, &["bob.smith@corp.com"], "FW: budget");
    assert!(corrupt(
        CorruptionKind::OutsideThread,
        &g,
        &pools,
        ALICE,
        &forward,
        &forward.recipients,
        &mut rng
    )
    .is_none());
    let reply = msg(ALICE, &["bob.smith@corp.com"], "RE: budget");
    let c = corrupt(
        CorruptionKind::OutsideThread,
        &g,
        &pools,
        ALICE,
        &reply,
        &reply.recipients,
        &mut rng,
    )
    .unwrap();
    let wrong = c.recipients[c.wrong].address.as_str();
    assert!(!["bob.smith@corp.com", "carol@corp.com", ALICE].contains(&wrong));
    let empty = msg(ALICE, &[], "x");
    assert!(corrupt(
        CorruptionKind::Typo,
        &g,
        &pools,
        ALICE,
        &empty,
        &[],
        &mut rng
    )
    .is_none());
}

#[test]
fn same_seed_same_corruption() {
    let (g, pools) = setup();
    let m = msg(
        ALICE,
        &["bob.smith@corp.com", "carol@corp.com"],
        "RE: budget",
    );
    for kind in CorruptionKind::ALL {
        let a = corrupt(
            kind,
            &g,
            &pools,
            ALICE,
            &m,
            &m.recipients,
            &mut StdRng::seed_from_u64(9),
        );
        let b = corrupt(
            kind,
            &g,
            &pools,
            ALICE,
            &m,
            &m.recipients,
            &mut StdRng::seed_from_u64(9),
        );
        assert_eq!(a, b);
    }
}
