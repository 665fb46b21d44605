//! Model files: load checks (format, version, feature count and names) and
//! the shipped model scoring crafted histories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use misdirect::classify::features::{feature_names, N_FEATURES};
use misdirect::classify::model::{ModelError, ModelFile, ModelScorer, FORMAT_VERSION, SHIPPED};
use misdirect::config::ModelConfig;
use misdirect::graph::{Graph, GraphConfig, LearnInput};
use misdirect::message::{Field, Mailbox, MessageMeta, Recipient};
use misdirect::scorer::{ScoreInput, Scorer};

const DAY: i64 = 86400;
const T0: i64 = 1_000_000_000;
const ALICE: &str = "alice@corp.com";

fn r(a: &str) -> Recipient {
    Recipient {
        address: a.into(),
        name: None,
        field: Field::To,
    }
}

fn shipped_json() -> serde_json::Value {
    serde_json::from_slice(SHIPPED).unwrap()
}

#[test]
fn shipped_model_loads_and_matches_this_build() {
    let m = ModelFile::from_bytes(SHIPPED).unwrap();
    assert_eq!(m.version, FORMAT_VERSION);
    assert_eq!(m.features, feature_names());
    assert_eq!(m.features.len(), N_FEATURES);
    let s = ModelScorer::shipped().unwrap();
    assert_eq!(s.name(), m.name);
    assert!(SHIPPED.len() < 4 << 20);
}

#[test]
fn refuses_wrong_version_count_names_and_format() {
    let mut v = shipped_json();
    v["version"] = serde_json::json!(FORMAT_VERSION + 1);
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(e, ModelError::Version { found } if found == FORMAT_VERSION + 1),
        "{e}"
    );

    let mut v = shipped_json();
    v["features"].as_array_mut().unwrap().pop();
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(e, ModelError::FeatureCount { found, expected } if found == N_FEATURES - 1 && expected == N_FEATURES),
        "{e}"
    );

    let mut v = shipped_json();
    v["features"][3] = serde_json::json!("something_else");
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ModelError::FeatureName { index: 3, .. }), "{e}");

    let mut v = shipped_json();
    v["format"] = serde_json::json!("other");
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ModelError::Format(_)), "{e}");

    let mut v = shipped_json();
    v["scale"][0] = serde_json::json!(0.0);
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ModelError::Invalid(_)), "{e}");

    // The shipped model is stacked; a tree pointing outside itself is refused.
    let mut v = shipped_json();
    assert_eq!(v["classifier"]["kind"], "stack");
    let nodes = v["classifier"]["trees"][0].as_array_mut().unwrap();
    let split = nodes.iter_mut().find(|n| !n["feature"].is_null()).unwrap();
    split["left"] = serde_json::json!(u32::MAX);
    let e = ModelFile::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ModelError::Invalid(_)), "{e}");

    let e = ModelFile::from_bytes(b"{ not json").unwrap_err();
    assert!(matches!(e, ModelError::Json(_)), "{e}");
}

#[test]
fn loads_from_a_file_and_config_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("m.json");
    std::fs::write(&good, SHIPPED).unwrap();
    let s = ModelScorer::load(Some(&good)).unwrap();
    assert_eq!(s.model(), &ModelFile::from_bytes(SHIPPED).unwrap());

    let mut errs = Vec::new();
    ModelConfig {
        path: Some(good.clone()),
        ..Default::default()
    }
    .validate("model", &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(ModelConfig::default().load().is_ok());

    let missing = dir.path().join("missing.json");
    ModelConfig {
        path: Some(missing.clone()),
        ..Default::default()
    }
    .validate("model", &mut errs);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("model.path: cannot read model file"),
        "{errs:?}"
    );
    assert!(matches!(
        ModelScorer::load(Some(&missing)),
        Err(ModelError::Io { .. })
    ));

    let mut v = shipped_json();
    v["version"] = serde_json::json!(99);
    let old = dir.path().join("old.json");
    std::fs::write(&old, serde_json::to_vec(&v).unwrap()).unwrap();
    let mut errs = Vec::new();
    ModelConfig {
        path: Some(old),
        ..Default::default()
    }
    .validate("model", &mut errs);
    assert!(errs[0].contains("version 99"), "{errs:?}");
}

/// Alice writes to bob 40 times and to carol and dave together 15 times;
/// colleagues write to each other.
fn history() -> Graph {
    let mut g = Graph::new(GraphConfig::default());
    let mut t = T0;
    let learn = |g: &mut Graph, from: &str, to: &[&str], subject: &str, t: i64| {
        let rs: Vec<Recipient> = to.iter().map(|a| r(a)).collect();
        g.learn(&LearnInput {
            sender: from,
            sender_name: None,
            recipients: &rs,
            message_id: None,
            subject: Some(subject),
            attachments: vec![],
            ts: t,
        });
    };
    for i in 0..40 {
        learn(&mut g, ALICE, &["bob@corp.com"], "weekly", t);
        learn(&mut g, "bob@corp.com", &[ALICE], "RE: weekly", t + 3600);
        if i % 3 == 0 {
            learn(
                &mut g,
                ALICE,
                &["carol@corp.com", "dave@corp.com"],
                "project",
                t,
            );
            learn(
                &mut g,
                "carol@corp.com",
                &["dave@corp.com", ALICE],
                "RE: project",
                t + 7200,
            );
        }
        t += DAY;
    }
    g
}

/// A message from Alice to `to` on day 41, and its recipients.
fn message_to(to: &[&str]) -> (MessageMeta, Vec<Recipient>) {
    let rs: Vec<Recipient> = to.iter().map(|a| r(a)).collect();
    let meta = MessageMeta {
        from: Some(Mailbox {
            address: ALICE.into(),
            name: None,
        }),
        recipients: rs.clone(),
        subject: Some("weekly".into()),
        date: Some(T0 + 41 * DAY),
        ..Default::default()
    };
    (meta, rs)
}

fn score(g: &Graph, to: &[&str]) -> misdirect::verdict::Scores {
    let (meta, rs) = message_to(to);
    let s = ModelScorer::shipped().unwrap();
    s.score(
        g,
        &ScoreInput {
            meta: &meta,
            recipients: &rs,
            now: T0 + 41 * DAY,
        },
    )
    .unwrap()
}

#[test]
fn misaddressed_message_scores_above_an_ordinary_one() {
    let g = history();
    let ordinary = score(&g, &["bob@corp.com"]);
    let typo = score(&g, &["bob@corp.co"]);
    assert!(
        typo.message_score() > ordinary.message_score() + 0.5,
        "typo {} vs ordinary {}",
        typo.message_score(),
        ordinary.message_score()
    );
    assert!(ordinary.message_score() < 0.5, "{ordinary:?}");
    let reasons = &typo.recipients[0].reasons;
    assert!(
        reasons.iter().any(|x| x
            == "you have never written to bob@corp.co; it is one letter from bob@corp.com, whom you wrote to 40 times"),
        "{reasons:?}"
    );

    // A stranger nobody knows added to a familiar pair is the worst recipient.
    let group = score(&g, &["carol@corp.com", "dave@corp.com"]);
    let added = score(
        &g,
        &[
            "carol@corp.com",
            "dave@corp.com",
            "mallory@elsewhere.example",
        ],
    );
    assert!(added.message_score() > group.message_score());
    assert_eq!(added.worst().unwrap().address, "mallory@elsewhere.example");
}

/// Reasons are written for every recipient when one of them scores at
/// least `explain_from`, and for none otherwise; the scores never change.
#[test]
fn reasons_only_when_a_recipient_reaches_explain_from() {
    let g = history();
    let to = ["bob@corp.com", "bob@corp.co"];
    let full = score(&g, &to);
    let worst = full.message_score();
    assert!(full.recipients.iter().all(|r| !r.reasons.is_empty()));
    let (meta, rs) = message_to(&to);
    let input = ScoreInput {
        meta: &meta,
        recipients: &rs,
        now: T0 + 41 * DAY,
    };
    let s = ModelScorer::shipped().unwrap();
    // At the worst score (and below it): as `score`, every recipient.
    for from in [0.0, worst / 2.0, worst] {
        assert_eq!(
            s.score_explaining(&g, &input, from).unwrap(),
            full,
            "{from}"
        );
    }
    // Above it, or with no threshold at all: same scores, no reasons.
    for from in [worst + 1e-9, f64::INFINITY] {
        let quiet = s.score_explaining(&g, &input, from).unwrap();
        assert_eq!(quiet.recipients.len(), 2);
        for (q, f) in quiet.recipients.iter().zip(&full.recipients) {
            assert_eq!((&q.address, q.score), (&f.address, f.score));
            assert!(q.reasons.is_empty(), "{q:?}");
        }
    }
}

#[test]
fn a_sender_without_enough_history_is_not_scored() {
    let mut g = Graph::new(GraphConfig::default());
    for i in 0..5 {
        g.learn(&LearnInput {
            sender: ALICE,
            sender_name: None,
            recipients: &[r("bob@corp.com")],
            message_id: None,
            subject: None,
            attachments: vec![],
            ts: T0 + i,
        });
    }
    let s = score(&g, &["bob@corp.co"]);
    assert_eq!(s.message_score(), 0.0);
    assert!(
        s.recipients[0].reasons[0].starts_with("not scored: alice@corp.com has sent 5 messages")
    );
}

#[test]
fn no_sender_is_an_error() {
    let g = history();
    let meta = MessageMeta::default();
    let rs = [r("bob@corp.com")];
    let s = ModelScorer::shipped().unwrap();
    let e = s.score(
        &g,
        &ScoreInput {
            meta: &meta,
            recipients: &rs,
            now: T0,
        },
    );
    assert!(matches!(e, Err(misdirect::scorer::ScoreError::NoSender)));
}
