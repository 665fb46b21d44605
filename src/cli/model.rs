//! `misdirectd train` and `misdirectd eval`: train the misdirection model on
//! a header corpus and evaluate it against the baselines on held-back
//! mailbox owners and time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::address::{AddressConfig, Normalizer};
use crate::classify::corpus;
use crate::classify::eval::{self, message_scores, Report};
use crate::classify::model::ModelFile;
use crate::classify::train::{self, Algorithm, Dataset, DatasetConfig, Role, TrainConfig};

/// Options shared by `train` and `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Corpus files (JSON lines, `.jsonl` or `.jsonl.gz`).
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Seed of the corruption generator.
    #[arg(long, default_value_t = DatasetConfig::default().seed)]
    pub seed: u64,
    /// Split date (RFC 3339): train before it, evaluate from it on.
    #[arg(long, default_value = "2001-09-01T00:00:00Z")]
    pub split: String,
    /// Senders with fewer earlier messages are not used as examples.
    #[arg(long, default_value_t = DatasetConfig::default().min_history)]
    pub min_history: u32,
    /// Classifier: `logistic`, `trees` (bagged smartcore decision trees) or
    /// `stack` (both, stacked on the calibration rows).
    #[arg(long, default_value = "stack")]
    pub algorithm: String,
    /// L2 penalty of the logistic regression.
    #[arg(long, default_value_t = TrainConfig::default().alpha)]
    pub alpha: f64,
    /// Bagged trees: number of trees.
    #[arg(long, default_value_t = TrainConfig::default().trees)]
    pub trees: usize,
    /// Bagged trees: maximum depth.
    #[arg(long, default_value_t = TrainConfig::default().max_depth)]
    pub max_depth: u16,
}

fn algorithm(s: &str) -> anyhow::Result<Algorithm> {
    match s {
        "logistic" => Ok(Algorithm::Logistic),
        "trees" => Ok(Algorithm::Trees),
        "stack" => Ok(Algorithm::Stack),
        other => anyhow::bail!("unknown algorithm {other:?} (logistic, trees or stack)"),
    }
}

fn dataset(args: &DataArgs) -> anyhow::Result<(Dataset, DatasetConfig)> {
    let split = corpus::parse_date(&args.split)
        .ok_or_else(|| anyhow::anyhow!("--split: not an RFC 3339 date: {}", args.split))?;
    let cfg = DatasetConfig {
        seed: args.seed,
        split_time: split,
        min_history: args.min_history,
        ..Default::default()
    };
    let t = Instant::now();
    let norm = Normalizer::new(AddressConfig::default());
    let msgs = corpus::read_files(&args.corpus, &norm)?;
    eprintln!("read {} messages in {:.1?}", msgs.len(), t.elapsed());
    let t = Instant::now();
    let ds = train::build_dataset(msgs, &cfg);
    let count = |r: Role| ds.samples.iter().filter(|s| s.role == r).count();
    eprintln!(
        "{} unique messages; examples (messages as sent + corrupted copies): train {}, calibration {}, test {}; built in {:.1?}",
        ds.unique,
        count(Role::Train),
        count(Role::Calib),
        count(Role::Test),
        t.elapsed()
    );
    Ok((ds, cfg))
}

fn train_cfg(args: &DataArgs) -> anyhow::Result<TrainConfig> {
    Ok(TrainConfig {
        algorithm: algorithm(&args.algorithm)?,
        alpha: args.alpha,
        trees: args.trees,
        max_depth: args.max_depth,
        ..Default::default()
    })
}

/// Evaluate baselines and `model` on the test examples.
pub fn reports(ds: &Dataset, model: &ModelFile) -> Vec<Report> {
    let never = message_scores(ds, Role::Test, |s| s.never.clone());
    let rank = message_scores(ds, Role::Test, |s| s.rank.clone());
    let m = message_scores(ds, Role::Test, |s| {
        s.feats.iter().map(|f| model.probability(f)).collect()
    });
    vec![
        eval::evaluate("(a) never emailed", &never),
        eval::evaluate("(b) freq/recency rank", &rank),
        eval::evaluate(&format!("(c) model {}", model.name), &m),
    ]
}

fn owners_line(ds: &Dataset, role: Role) -> String {
    let mut v: Vec<&str> = ds
        .owners
        .iter()
        .filter(|(_, r)| **r == role)
        .map(|(o, _)| o.as_str())
        .collect();
    v.sort_unstable();
    v.join(" ")
}

fn print_split(ds: &Dataset) {
    println!("train owners: {}", owners_line(ds, Role::Train));
    println!("calibration owners: {}", owners_line(ds, Role::Calib));
    println!("test owners: {}", owners_line(ds, Role::Test));
}

/// `misdirectd train`.
pub fn run_train(args: &DataArgs, out: &Path, name: Option<String>) -> anyhow::Result<()> {
    let (ds, _) = dataset(args)?;
    let tc = train_cfg(args)?;
    let name = name.unwrap_or_else(|| {
        let kind = match tc.algorithm {
            Algorithm::Logistic => "logreg",
            Algorithm::Trees => "trees",
            Algorithm::Stack => "stack",
        };
        format!("misdirect-{kind}-1")
    });
    let t = Instant::now();
    let mut model = train::train(&ds, &tc, &name)?;
    eprintln!("fitted in {:.1?}", t.elapsed());
    let reps = reports(&ds, &model);
    let table = eval::table(&reps);
    model.notes = serde_json::json!({
        "corpus": args.corpus.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()).collect::<Vec<_>>(),
        "split": args.split,
        "seed": args.seed,
        "min_history": args.min_history,
        "algorithm": args.algorithm,
        "held_out_metrics": table,
    });
    // Compact unless small: tree models would be several times larger.
    let json = match model.classifier {
        crate::classify::model::Classifier::Logistic { .. } => serde_json::to_vec_pretty(&model)?,
        _ => serde_json::to_vec(&model)?,
    };
    if let Some(dir) = out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(out, &json)?;
    print_split(&ds);
    println!("{table}");
    println!("wrote {} ({} bytes)", out.display(), json.len());
    Ok(())
}

/// `misdirectd eval`: with `--model`, evaluates that model file on the test
/// split; otherwise fits on the training split first.
pub fn run_eval(args: &DataArgs, model: Option<&Path>, explain: usize) -> anyhow::Result<()> {
    let (ds, _) = dataset(args)?;
    let m = match model {
        Some(p) => ModelFile::load(p)?,
        None => train::train(&ds, &train_cfg(args)?, "candidate")?,
    };
    print_split(&ds);
    println!("{}", eval::table(&reports(&ds, &m)));
    if explain > 0 {
        explain_top(&ds, &m, explain);
    }
    Ok(())
}

/// Print the `n` highest-scored legitimate test messages and the `n`
/// lowest-scored misdirected ones, with reasons.
fn explain_top(ds: &Dataset, m: &ModelFile, n: usize) {
    let mut scored: Vec<(f64, &train::Sample)> = ds
        .samples
        .iter()
        .filter(|s| s.role == Role::Test)
        .map(|s| {
            let sc = s.feats.iter().map(|f| m.probability(f)).fold(0.0, f64::max);
            (sc, s)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let show = |title: &str, it: &mut dyn Iterator<Item = &(f64, &train::Sample)>| {
        println!("{title}");
        for (sc, s) in it.take(n) {
            let kind = s.kind.map(|k| k.as_str()).unwrap_or("legit");
            println!("  {sc:.4} {kind} wrong={:?}", s.wrong);
            for (i, a) in s.rcpts.iter().enumerate() {
                let p = m.probability(&s.feats[i]);
                let r = crate::classify::model::reasons(a, &s.evidence[i]);
                println!("    {p:.4} {a}: {}", r.join("; "));
            }
        }
    };
    show(
        "highest-scored legitimate messages:",
        &mut scored.iter().filter(|x| x.1.kind.is_none()),
    );
    show(
        "lowest-scored misdirected messages:",
        &mut scored.iter().rev().filter(|x| x.1.kind.is_some()),
    );
}
