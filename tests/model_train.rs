//! End to end on a small synthetic corpus written to a temp file: read it,
//! build the leakage-free data set, train, save, load, evaluate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;

use misdirect::address::{AddressConfig, Normalizer};
use misdirect::classify::corpus;
use misdirect::classify::eval;
use misdirect::classify::model::ModelFile;
use misdirect::classify::train::{self, owner_role, DatasetConfig, Role, TrainConfig};

fn date(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64),
    )
    .to_string()
}

/// Owners u0..u29 at corp.com, each writing to a team of five colleagues
/// (pairs, with reply subjects), once a day for 120 days.
fn write_corpus(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let t0 = 990_000_000i64;
    for day in 0..120i64 {
        for u in 0..30usize {
            let team: Vec<String> = (1..=5)
                .map(|k| format!("member{}.team{}@corp.com", k, u))
                .collect();
            let a = &team[(day as usize) % 5];
            let b = &team[(day as usize + 1) % 5];
            let to = if day % 3 == 0 {
                vec![a.clone(), b.clone()]
            } else {
                vec![a.clone()]
            };
            let subject = if day % 2 == 0 {
                format!("RE: topic {}", day / 2)
            } else {
                format!("topic {}", day / 2 + 1)
            };
            let line = serde_json::json!({
                "user": format!("u{u}"), "folder": "sent_items",
                "message_id": format!("<{day}.{u}@x>"), "date": date(t0 + day * 86400 + u as i64),
                "from": format!("owner{u}@corp.com"), "to": to, "cc": [], "bcc": [],
                "subject": subject, "in_reply_to": null, "references": [], "attachments": []
            });
            writeln!(f, "{line}").unwrap();
            // The colleague answers (inbox copy).
            let reply = serde_json::json!({
                "user": format!("u{u}"), "folder": "inbox",
                "message_id": format!("<r{day}.{u}@x>"), "date": date(t0 + day * 86400 + 3600),
                "from": a, "to": [format!("owner{u}@corp.com")], "cc": [], "bcc": [],
                "subject": format!("RE: {}", day), "attachments": []
            });
            writeln!(f, "{reply}").unwrap();
        }
    }
}

#[test]
fn trains_saves_loads_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.jsonl");
    write_corpus(&path);
    let roles: Vec<Role> = (0..30).map(|u| owner_role(&format!("u{u}"))).collect();
    assert!(
        roles.contains(&Role::Train) && roles.contains(&Role::Calib) && roles.contains(&Role::Test)
    );

    let msgs = corpus::read_file(&path, &Normalizer::new(AddressConfig::default())).unwrap();
    assert_eq!(msgs.len(), 30 * 120 * 2);
    let cfg = DatasetConfig {
        split_time: 990_000_000 + 80 * 86400,
        min_history: 5,
        ..Default::default()
    };
    let ds = train::build_dataset(msgs, &cfg);
    // No example before the sender has history; test examples only after
    // the split, training examples only before it.
    for s in &ds.samples {
        match s.role {
            Role::Test => assert!(s.ts >= cfg.split_time),
            _ => assert!(s.ts < cfg.split_time),
        }
        assert_eq!(s.feats.len(), s.rcpts.len());
        if let Some(w) = s.wrong {
            assert!(w < s.rcpts.len());
        }
    }
    let corrupted = ds.samples.iter().filter(|s| s.kind.is_some()).count();
    assert!(corrupted > 100);

    // The shipped kind (stacked), with few trees to keep the test short.
    let tc = TrainConfig {
        trees: 5,
        tree_rows: 2000,
        ..Default::default()
    };
    let model = train::train(&ds, &tc, "test-model").unwrap();
    assert!(matches!(
        model.classifier,
        misdirect::classify::model::Classifier::Stack { .. }
    ));
    let out = dir.path().join("m.json");
    std::fs::write(&out, serde_json::to_vec(&model).unwrap()).unwrap();
    let loaded = ModelFile::load(&out).unwrap();
    assert_eq!(loaded.name, model.name);
    assert_eq!(loaded.features, model.features);
    // JSON keeps the numbers to within a unit in the last place.
    for s in &ds.samples {
        for f in &s.feats {
            assert!((loaded.probability(f) - model.probability(f)).abs() < 1e-9);
        }
    }

    let scores = eval::message_scores(&ds, Role::Test, |s| {
        s.feats.iter().map(|f| loaded.probability(f)).collect()
    });
    let rep = eval::evaluate("model", &scores);
    assert!(rep.legit > 0 && rep.misdirected > 0);
    // On this regular synthetic mail the model separates well.
    assert!(rep.auc > 0.9, "auc {}", rep.auc);
    let never = eval::evaluate(
        "never",
        &eval::message_scores(&ds, Role::Test, |s| s.never.clone()),
    );
    assert!(never.auc < rep.auc);
}
