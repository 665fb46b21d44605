//! Each feature moves the way it should on crafted histories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use misdirect::classify::features::{extract, idx, RecipientFeatures};
use misdirect::graph::{Graph, GraphConfig, LearnInput};
use misdirect::message::{Attachment, Field, Mailbox, MessageMeta, Recipient};

const DAY: i64 = 86400;
const T0: i64 = 1_000_000_000;
const ALICE: &str = "alice@corp.com";

fn r(a: &str, f: Field) -> Recipient {
    Recipient {
        address: a.into(),
        name: None,
        field: f,
    }
}

fn learn(g: &mut Graph, from: &str, rcpts: &[&str], subject: &str, att: &[&str], ts: i64) {
    let rs: Vec<Recipient> = rcpts.iter().map(|a| r(a, Field::To)).collect();
    g.learn(&LearnInput {
        sender: from,
        sender_name: None,
        recipients: &rs,
        message_id: None,
        subject: Some(subject),
        attachments: att.to_vec(),
        ts,
    });
}

/// Alice writes to bob (30x, 10 of them with carol), to dave at a partner
/// (5x), once to bobby.x; bob replies; eve writes to frank; an attachment
/// went to bob; a "budget" thread with bob and carol.
fn history() -> Graph {
    let mut g = Graph::new(GraphConfig::default());
    let mut t = T0;
    for i in 0..30 {
        if i < 10 {
            learn(
                &mut g,
                ALICE,
                &["bob@corp.com", "carol@corp.com"],
                "status",
                &[],
                t,
            );
        } else {
            learn(&mut g, ALICE, &["bob@corp.com"], "hello", &[], t);
        }
        t += DAY;
    }
    for _ in 0..5 {
        learn(&mut g, ALICE, &["dave@partner.com"], "deal", &[], t);
        t += DAY;
    }
    learn(&mut g, ALICE, &["bobby.x@corp.com"], "once", &[], t);
    learn(&mut g, "bob@corp.com", &[ALICE], "re", &[], t);
    learn(&mut g, "eve@corp.com", &["frank@corp.com"], "x", &[], t);
    learn(
        &mut g,
        "frank@corp.com",
        &["eve@corp.com", "bob@corp.com"],
        "y",
        &[],
        t,
    );
    learn(&mut g, ALICE, &["bob@corp.com"], "plan", &["Q3.xls"], t);
    learn(
        &mut g,
        ALICE,
        &["bob@corp.com", "carol@corp.com"],
        "budget",
        &[],
        t,
    );
    g
}

const NOW: i64 = T0 + 40 * DAY;

fn meta(subject: &str, att: &[&str]) -> MessageMeta {
    MessageMeta {
        from: Some(Mailbox {
            address: ALICE.into(),
            name: None,
        }),
        subject: Some(subject.into()),
        date: Some(NOW),
        attachments: att
            .iter()
            .map(|n| Attachment {
                name: n.to_string(),
                size: 1,
            })
            .collect(),
        ..Default::default()
    }
}

fn feats(g: &Graph, m: &MessageMeta, rcpts: &[Recipient], now: i64) -> Vec<RecipientFeatures> {
    extract(g, ALICE, m, rcpts, now)
}

fn one(g: &Graph, addr: &str) -> RecipientFeatures {
    feats(g, &meta("new topic", &[]), &[r(addr, Field::To)], NOW).remove(0)
}

#[test]
fn history_counts_recency_and_share() {
    let g = history();
    let bob = one(&g, "bob@corp.com");
    let dave = one(&g, "dave@partner.com");
    let stranger = one(&g, "zed@corp.com");
    assert_eq!(bob.values[idx::NEVER_WRITTEN], 0.0);
    assert_eq!(stranger.values[idx::NEVER_WRITTEN], 1.0);
    assert!(bob.values[idx::LOG_COUNT] > dave.values[idx::LOG_COUNT]);
    assert_eq!(stranger.values[idx::LOG_COUNT], 0.0);
    assert!(bob.values[idx::SHARE] > dave.values[idx::SHARE]);
    assert!(bob.values[idx::LOG_WEIGHT] > dave.values[idx::LOG_WEIGHT]);
    assert!(stranger.values[idx::LOG_DAYS_SINCE] > dave.values[idx::LOG_DAYS_SINCE]);
    let later = feats(
        &g,
        &meta("x", &[]),
        &[r("bob@corp.com", Field::To)],
        NOW + 100 * DAY,
    )
    .remove(0);
    assert!(later.values[idx::LOG_DAYS_SINCE] > bob.values[idx::LOG_DAYS_SINCE]);
    assert!(later.values[idx::LOG_WEIGHT] < bob.values[idx::LOG_WEIGHT]);
    assert_eq!(bob.evidence.count, 32);
}

#[test]
fn reciprocity_and_org_familiarity() {
    let g = history();
    let bob = one(&g, "bob@corp.com");
    let dave = one(&g, "dave@partner.com");
    assert!(bob.values[idx::LOG_REPLY_COUNT] > 0.0);
    assert_eq!(dave.values[idx::LOG_REPLY_COUNT], 0.0);
    let frank = one(&g, "frank@corp.com");
    let zed = one(&g, "zed@corp.com");
    assert!(frank.values[idx::LOG_ORG_SENDERS] > 0.0);
    assert_eq!(zed.values[idx::LOG_ORG_SENDERS], 0.0);
    assert!(frank.values[idx::LOG_RCPT_SENT] > 0.0);
    assert_eq!(zed.values[idx::LOG_RCPT_SENT], 0.0);
    assert_eq!(frank.values[idx::NEW_UNKNOWN_TO_ORG], 0.0);
    assert_eq!(zed.values[idx::NEW_UNKNOWN_TO_ORG], 1.0);
    // frank has mail with bob, a contact of alice: a neighbour.
    assert!(frank.values[idx::LOG_NEIGHBOUR_LINKS] > 0.0);
    assert_eq!(frank.values[idx::NEW_NO_NEIGHBOURS], 0.0);
    assert_eq!(zed.values[idx::NEW_NO_NEIGHBOURS], 1.0);
}

#[test]
fn sender_and_message_shape() {
    let g = history();
    let rs = [
        r("bob@corp.com", Field::To),
        r("carol@corp.com", Field::Cc),
        r("dave@partner.com", Field::Bcc),
    ];
    let f = feats(&g, &meta("x", &[]), &rs, NOW);
    assert_eq!(f[0].values[idx::FIELD_CC], 0.0);
    assert_eq!(f[1].values[idx::FIELD_CC], 1.0);
    assert_eq!(f[2].values[idx::FIELD_BCC], 1.0);
    assert!((f[0].values[idx::LOG_N_RCPTS] - 3f32.ln()).abs() < 1e-6);
    assert_eq!(f[0].values[idx::HAS_OTHERS], 1.0);
    let single = one(&g, "bob@corp.com");
    assert_eq!(single.values[idx::HAS_OTHERS], 0.0);
    assert_eq!(single.values[idx::LOG_N_RCPTS], 0.0);
    let newbie = Graph::new(GraphConfig::default());
    let n = one(&newbie, "bob@corp.com");
    assert!(single.values[idx::LOG_SENDER_MSGS] > n.values[idx::LOG_SENDER_MSGS]);
    assert!(single.values[idx::LOG_SENDER_CONTACTS] > n.values[idx::LOG_SENDER_CONTACTS]);
}

#[test]
fn co_recipients_and_a_stranger_in_a_familiar_group() {
    let g = history();
    let rs = [
        r("bob@corp.com", Field::To),
        r("carol@corp.com", Field::To),
        r("dave@partner.com", Field::To),
        r("zed@corp.com", Field::To),
    ];
    let f = feats(&g, &meta("x", &[]), &rs, NOW);
    // bob and carol were named together 11 times; dave never with them.
    assert!(f[0].values[idx::LOG_CO_MAX] > 0.0);
    assert!(f[0].values[idx::CO_FRAC] > f[2].values[idx::CO_FRAC]);
    assert_eq!(f[2].values[idx::CO_FRAC], 0.0);
    // zed is new to alice while the others are all known.
    assert_eq!(f[3].values[idx::OTHERS_KNOWN_FRAC], 1.0);
    assert_eq!(f[3].values[idx::NEW_IN_KNOWN_GROUP], 1.0);
    assert_eq!(f[0].values[idx::NEW_IN_KNOWN_GROUP], 0.0);
    assert_eq!(f[3].values[idx::NEW_UNLINKED_IN_GROUP], 1.0);
    assert_eq!(f[3].values[idx::OTHERS_LINKED_FRAC], 0.0);
    // frank (new to alice) wrote to bob: linked to the other recipient.
    let rs2 = [r("frank@corp.com", Field::To), r("bob@corp.com", Field::To)];
    let f2 = feats(&g, &meta("x", &[]), &rs2, NOW);
    assert_eq!(f2[0].values[idx::OTHERS_LINKED_FRAC], 1.0);
    assert_eq!(f2[0].values[idx::NEW_UNLINKED_IN_GROUP], 0.0);
}

#[test]
fn domains() {
    let g = history();
    let known_dom = one(&g, "newguy@partner.com");
    let new_dom = one(&g, "someone@elsewhere.org");
    assert_eq!(known_dom.values[idx::DOMAIN_NEW], 0.0);
    assert!(known_dom.values[idx::LOG_DOMAIN_COUNT] > 0.0);
    assert_eq!(new_dom.values[idx::DOMAIN_NEW], 1.0);
    assert_eq!(new_dom.values[idx::LOG_DOMAIN_COUNT], 0.0);
    assert_eq!(one(&g, "zed@corp.com").values[idx::INTERNAL], 1.0);
    assert_eq!(one(&g, "zed@corp.com").values[idx::NEW_INTERNAL], 1.0);
    assert_eq!(known_dom.values[idx::INTERNAL], 0.0);
    assert_eq!(one(&g, "x@hotmail.com").values[idx::FREEMAIL], 1.0);
    assert_eq!(known_dom.values[idx::FREEMAIL], 0.0);
    assert!(
        one(&g, "zed@corp.com").values[idx::LOG_ORG_DOMAIN_SENDERS]
            > new_dom.values[idx::LOG_ORG_DOMAIN_SENDERS]
    );
}

#[test]
fn lookalikes() {
    let g = history();
    let typo = one(&g, "bob@corp.co");
    assert_eq!(typo.values[idx::LOOKALIKE1], 1.0);
    assert!(typo.values[idx::LOG_LOOKALIKE_COUNT] > 0.0);
    assert_eq!(typo.values[idx::LOOKALIKE_SILENT], 1.0);
    let (addr, dist, count) = typo.evidence.lookalike.clone().unwrap();
    assert_eq!((addr.as_str(), dist, count), ("bob@corp.com", 1, 32));
    let homoglyph = one(&g, "b0b@corp.com");
    assert_eq!(homoglyph.values[idx::LOOKALIKE1], 1.0);
    let two = one(&g, "bxbx@corp.com");
    assert_eq!(two.values[idx::LOOKALIKE1], 0.0);
    assert_eq!(two.values[idx::LOOKALIKE2], 1.0);
    let far = one(&g, "zed@corp.com");
    assert_eq!(
        far.values[idx::LOOKALIKE1] + far.values[idx::LOOKALIKE2],
        0.0
    );
    assert_eq!(far.values[idx::LOG_LOOKALIKE_COUNT], 0.0);
    // A known contact is never its own lookalike.
    assert_eq!(one(&g, "bob@corp.com").values[idx::LOOKALIKE1], 0.0);
    let other_domain = one(&g, "bob@gmail.com");
    assert_eq!(other_domain.values[idx::SAME_LOCAL_OTHER_DOMAIN], 1.0);
    assert_eq!(other_domain.values[idx::SAME_LOCAL_SILENT], 1.0);
    assert_eq!(far.values[idx::SAME_LOCAL_OTHER_DOMAIN], 0.0);
}

#[test]
fn autocomplete_sibling() {
    let g = history();
    // bobby.x@ was written once; bob@ (same first three letters) 32 times.
    let rare = one(&g, "bobby.x@corp.com");
    let frequent = one(&g, "bob@corp.com");
    assert!(rare.values[idx::SIBLING_DOMINANCE] > 2.0);
    assert_eq!(frequent.values[idx::SIBLING_DOMINANCE], 0.0);
    assert_eq!(rare.evidence.sibling.as_ref().unwrap().0, "bob@corp.com");
}

#[test]
fn thread_context() {
    let g = history();
    let rs = [
        r("bob@corp.com", Field::To),
        r("dave@partner.com", Field::To),
    ];
    let f = feats(&g, &meta("RE: Budget", &[]), &rs, NOW);
    assert_eq!(f[0].values[idx::IS_REPLY], 1.0);
    assert_eq!(f[0].values[idx::THREAD_KNOWN], 1.0);
    assert_eq!(f[0].values[idx::NOT_IN_THREAD], 0.0);
    assert_eq!(f[1].values[idx::NOT_IN_THREAD], 1.0);
    let fresh = feats(&g, &meta("Budget", &[]), &rs, NOW);
    assert_eq!(fresh[1].values[idx::IS_REPLY], 0.0);
    assert_eq!(fresh[1].values[idx::NOT_IN_THREAD], 0.0);
    let unknown = feats(&g, &meta("RE: something else", &[]), &rs, NOW);
    assert_eq!(unknown[1].values[idx::THREAD_KNOWN], 0.0);
    assert_eq!(unknown[1].values[idx::NOT_IN_THREAD], 0.0);
}

#[test]
fn forwards_and_replies_that_leave_the_thread() {
    let g = history();
    // A forward of the budget thread to dave: forwarding outside the thread
    // is what forwards are for.
    let dave = [r("dave@partner.com", Field::To)];
    let fw = feats(&g, &meta("FW: Budget", &[]), &dave, NOW);
    assert_eq!(fw[0].values[idx::THREAD_KNOWN], 1.0);
    assert_eq!(fw[0].values[idx::NOT_IN_THREAD], 0.0);
    assert_eq!(fw[0].values[idx::THREAD_NONE_IN], 0.0);
    // The same as a reply: dave was not in the thread, and nobody from it
    // is among the recipients.
    let re = feats(&g, &meta("RE: Budget", &[]), &dave, NOW);
    assert_eq!(re[0].values[idx::NOT_IN_THREAD], 1.0);
    assert_eq!(re[0].values[idx::THREAD_NONE_IN], 1.0);
    // A reply to bob that adds dave keeps someone from the thread.
    let rs = [
        r("bob@corp.com", Field::To),
        r("dave@partner.com", Field::Cc),
    ];
    let added = feats(&g, &meta("RE: Budget", &[]), &rs, NOW);
    assert_eq!(added[0].values[idx::THREAD_NONE_IN], 0.0);
    assert_eq!(added[1].values[idx::THREAD_NONE_IN], 0.0);
    assert_eq!(added[1].values[idx::NOT_IN_THREAD], 1.0);
    // dave was never named with bob or carol; bobby.x neither.
    assert_eq!(added[1].values[idx::LOG_THREAD_CO], 0.0);
    assert_eq!(added[0].values[idx::LOG_THREAD_CO], 0.0);
}

#[test]
fn thread_co_recipients_and_window() {
    let mut g = Graph::new(GraphConfig::default());
    let t = T0;
    // Alice often writes to bob together with carol, never with dave.
    for i in 0..5 {
        learn(
            &mut g,
            ALICE,
            &["bob@corp.com", "carol@corp.com"],
            "ops",
            &[],
            t + i,
        );
    }
    learn(&mut g, ALICE, &["dave@corp.com"], "lunch", &[], t + 10);
    // The "deal" thread: bob writes to alice, then alice replies to bob.
    learn(&mut g, "bob@corp.com", &[ALICE], "deal", &[], t + DAY);
    learn(
        &mut g,
        ALICE,
        &["bob@corp.com"],
        "RE: deal",
        &[],
        t + 2 * DAY,
    );
    let now = t + 3 * DAY;
    let carol = feats(
        &g,
        &meta("RE: deal", &[]),
        &[r("carol@corp.com", Field::To)],
        now,
    );
    let dave = feats(
        &g,
        &meta("RE: deal", &[]),
        &[r("dave@corp.com", Field::To)],
        now,
    );
    assert_eq!(carol[0].values[idx::NOT_IN_THREAD], 1.0);
    assert_eq!(dave[0].values[idx::NOT_IN_THREAD], 1.0);
    assert!((carol[0].values[idx::LOG_THREAD_CO] - (6f32).ln()).abs() < 1e-5);
    assert_eq!(dave[0].values[idx::LOG_THREAD_CO], 0.0);
    // Erin joins the thread in a later message from bob: the thread keeps
    // everyone in it, not only the latest message's participants.
    learn(
        &mut g,
        "bob@corp.com",
        &[ALICE, "erin@corp.com"],
        "RE: deal",
        &[],
        t + 4 * DAY,
    );
    learn(
        &mut g,
        "erin@corp.com",
        &["bob@corp.com"],
        "RE: deal",
        &[],
        t + 5 * DAY,
    );
    let now = t + 6 * DAY;
    let both = feats(
        &g,
        &meta("RE: deal", &[]),
        &[r("bob@corp.com", Field::To), r("erin@corp.com", Field::To)],
        now,
    );
    assert_eq!(both[0].values[idx::THREAD_KNOWN], 1.0);
    assert_eq!(both[0].values[idx::NOT_IN_THREAD], 0.0);
    assert_eq!(both[1].values[idx::NOT_IN_THREAD], 0.0);
    // Months later, an unrelated "deal" conversation between bob and erin
    // starts a new thread that alice is not in.
    learn(
        &mut g,
        "bob@corp.com",
        &["erin@corp.com"],
        "deal",
        &[],
        t + 100 * DAY,
    );
    let later = feats(
        &g,
        &meta("RE: deal", &[]),
        &[r("bob@corp.com", Field::To)],
        t + 101 * DAY,
    );
    assert_eq!(later[0].values[idx::THREAD_KNOWN], 0.0);
}

#[test]
fn attachment_context() {
    let g = history();
    let rs = [
        r("bob@corp.com", Field::To),
        r("dave@partner.com", Field::To),
    ];
    let f = feats(&g, &meta("numbers", &["q3.XLS"]), &rs, NOW);
    assert_eq!(f[0].values[idx::HAS_ATTACHMENT], 1.0);
    assert_eq!(f[0].values[idx::ATTACHMENT_TO_RCPT], 1.0);
    assert_eq!(f[0].values[idx::ATTACHMENT_TO_OTHERS], 0.0);
    assert_eq!(f[1].values[idx::ATTACHMENT_TO_RCPT], 0.0);
    assert_eq!(f[1].values[idx::ATTACHMENT_TO_OTHERS], 1.0);
    let none = feats(&g, &meta("numbers", &[]), &rs, NOW);
    assert_eq!(none[1].values[idx::HAS_ATTACHMENT], 0.0);
    assert_eq!(none[1].values[idx::ATTACHMENT_TO_OTHERS], 0.0);
}
