//! Training: builds the labelled data set from a corpus without leakage and
//! fits the classifier and its calibration.
//!
//! The graph is built in Date order. For each real sent message, features
//! are computed from the history strictly before it (the message is learned
//! only afterwards), once for the message as sent (legitimate) and once for
//! a corrupted copy (see [`corrupt`]) whose wrong recipient is known.
//!
//! Split: mailbox owners are assigned by a stable hash of their id to
//! *train* (55%), *calibration* (15%) or *test* (30%); a split date cuts
//! time. Training and calibration use their owners' messages before the
//! split date; testing uses the test owners' messages from the split date
//! on. Every message of every owner still feeds the history graph in Date
//! order (history is not a label), so features see what a deployed relay
//! would have seen.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};
use smartcore::tree::decision_tree_classifier::{
    DecisionTreeClassifier, DecisionTreeClassifierParameters,
};

use crate::classify::baseline::NeverSeenScorer;
use crate::classify::corpus::CorpusMessage;
use crate::classify::corrupt::{corrupt, CorruptionKind, Pools};
use crate::classify::features::{self, N_FEATURES};
use crate::classify::model::{Classifier, ModelFile, TreeNode, FORMAT, FORMAT_VERSION};
use crate::classify::ranking::FreqRecencyScorer;
use crate::graph::memory::key_hash;
use crate::graph::{Graph, GraphConfig, GraphView, LearnInput};
use crate::scorer::{ScoreInput, Scorer};

/// Where an owner's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Train,
    Calib,
    Test,
}

/// Data-set settings.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// RNG seed for the corruptions.
    pub seed: u64,
    /// Split date (Unix seconds): training before, testing from it on.
    pub split_time: i64,
    /// Messages with more recipients are not used as examples (they still
    /// feed the graph).
    pub max_recipients: usize,
    /// Senders with fewer earlier messages are not used as examples.
    pub min_history: u32,
    /// Messages dated before/after these are treated as bogus and skipped.
    pub min_time: i64,
    pub max_time: i64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            seed: 20261123,
            // 2001-09-01T00:00:00Z
            split_time: 999_302_400,
            max_recipients: 50,
            min_history: crate::classify::model::MIN_HISTORY,
            // 1998-01-01 .. 2003-01-01
            min_time: 883_612_800,
            max_time: 1_041_379_200,
        }
    }
}

/// The role of a mailbox owner (stable across runs and machines).
pub fn owner_role(owner: &str) -> Role {
    match key_hash(owner) % 100 {
        0..=29 => Role::Test,
        30..=44 => Role::Calib,
        _ => Role::Train,
    }
}

/// One example: a message as sent or a corrupted copy, with the features
/// of each recipient and the baselines' message scores.
#[derive(Debug, Clone)]
pub struct Sample {
    pub role: Role,
    pub ts: i64,
    /// `None` for the real message.
    pub kind: Option<CorruptionKind>,
    /// Index of the wrong recipient in a corrupted copy.
    pub wrong: Option<usize>,
    pub feats: Vec<[f32; N_FEATURES]>,
    /// Recipient addresses and the evidence behind their features (for
    /// `eval --explain`).
    pub rcpts: Vec<String>,
    pub evidence: Vec<features::Evidence>,
    /// Per-recipient scores of baseline (a) never-seen and (b) ranking.
    pub never: Vec<f64>,
    pub rank: Vec<f64>,
}

/// The labelled data set.
#[derive(Debug, Default)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// Messages read, unique messages, and messages learned.
    pub read: usize,
    pub unique: usize,
    pub owners: HashMap<String, Role>,
}

/// Remove cross-mailbox and cross-folder duplicates (same sender,
/// recipients, date and subject); a copy in a sent folder wins, so its
/// owner is the one who sent it.
fn dedupe(msgs: Vec<CorpusMessage>) -> Vec<CorpusMessage> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<CorpusMessage> = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut rc: Vec<&str> = m
            .meta
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        rc.sort_unstable();
        let key = format!(
            "{}|{}|{}|{}",
            m.meta.sender().unwrap_or(""),
            rc.join(","),
            m.meta.date.unwrap_or(0),
            m.meta.subject.as_deref().unwrap_or("")
        );
        match index.get(&key) {
            Some(&i) => {
                if !out[i].is_sent_folder() && m.is_sent_folder() {
                    out[i] = m;
                }
            }
            None => {
                index.insert(key, out.len());
                out.push(m);
            }
        }
    }
    out
}

/// Build the data set: one pass over the corpus in Date order.
pub fn build_dataset(msgs: Vec<CorpusMessage>, cfg: &DatasetConfig) -> Dataset {
    let read = msgs.len();
    let mut msgs = dedupe(msgs);
    let unique = msgs.len();
    msgs.retain(|m| {
        m.meta
            .date
            .is_some_and(|d| d >= cfg.min_time && d < cfg.max_time)
            && m.meta.sender().is_some()
    });
    msgs.sort_by_key(|m| m.meta.date.unwrap_or(0));
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut g = Graph::new(GraphConfig::default());
    let mut pools = Pools::default();
    let mut ds = Dataset {
        read,
        unique,
        ..Default::default()
    };
    let never = NeverSeenScorer;
    let rank = FreqRecencyScorer;
    for m in &msgs {
        let ts = m.meta.date.unwrap_or(0);
        let Some(sender) = m.meta.sender() else {
            continue;
        };
        let role = owner_role(&m.owner);
        ds.owners.insert(m.owner.clone(), role);
        let in_period = match role {
            Role::Test => ts >= cfg.split_time,
            Role::Train | Role::Calib => ts < cfg.split_time,
        };
        let n = m.meta.recipients.len();
        if in_period
            && m.is_sent_folder()
            && n >= 1
            && n <= cfg.max_recipients
            && g.sender(sender).messages >= cfg.min_history
        {
            let mut variants: Vec<(Option<CorruptionKind>, Option<usize>, Vec<_>)> =
                vec![(None, None, m.meta.recipients.clone())];
            let mut kinds = CorruptionKind::ALL;
            // First kind uniformly at random, the others as fall-backs.
            kinds.shuffle(&mut rng);
            for k in kinds {
                if let Some(c) =
                    corrupt(k, &g, &pools, sender, &m.meta, &m.meta.recipients, &mut rng)
                {
                    variants.push((Some(c.kind), Some(c.wrong), c.recipients));
                    break;
                }
            }
            for (kind, wrong, rcpts) in variants {
                let (feats, evidence) = features::extract(&g, sender, &m.meta, &rcpts, ts)
                    .into_iter()
                    .map(|f| (f.values, f.evidence))
                    .unzip();
                let input = ScoreInput {
                    meta: &m.meta,
                    recipients: &rcpts,
                    now: ts,
                };
                let s_never = never
                    .score(&g, &input)
                    .map(|s| s.recipients.iter().map(|r| r.score).collect())
                    .unwrap_or_default();
                let s_rank = rank
                    .score(&g, &input)
                    .map(|s| s.recipients.iter().map(|r| r.score).collect())
                    .unwrap_or_default();
                ds.samples.push(Sample {
                    role,
                    ts,
                    kind,
                    wrong,
                    feats,
                    rcpts: rcpts.iter().map(|r| r.address.clone()).collect(),
                    evidence,
                    never: s_never,
                    rank: s_rank,
                });
            }
        }
        if let Some(li) = LearnInput::from_meta(&m.meta, &m.meta.recipients, ts) {
            g.learn(&li);
        }
        pools.observe(&m.meta);
    }
    ds
}

/// Recipient-level rows of the samples in `role`: features and label
/// (1 for the wrong recipient of a corrupted copy).
pub fn rows(ds: &Dataset, role: Role) -> (Vec<[f32; N_FEATURES]>, Vec<i32>) {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for s in ds.samples.iter().filter(|s| s.role == role) {
        for (i, f) in s.feats.iter().enumerate() {
            x.push(*f);
            y.push(i32::from(s.wrong == Some(i)));
        }
    }
    (x, y)
}

/// Which classifier to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Logistic,
    Trees,
    /// Logistic regression and bagged trees, stacked on the calibration rows.
    Stack,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub algorithm: Algorithm,
    /// L2 penalty of the logistic regression (smartcore's `alpha`).
    pub alpha: f64,
    /// Bagged trees: count, rows per tree, depth, minimum leaf size.
    pub trees: usize,
    pub tree_rows: usize,
    pub max_depth: u16,
    pub min_leaf: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algorithm: Algorithm::Stack,
            alpha: 1.0,
            trees: 60,
            tree_rows: 20_000,
            max_depth: 10,
            min_leaf: 20,
            seed: 7,
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("not enough examples: {0}")]
    TooFew(String),
    #[error("smartcore: {0}")]
    Fit(String),
}

fn standardise(x: &[[f32; N_FEATURES]]) -> (Vec<f64>, Vec<f64>) {
    let n = x.len().max(1) as f64;
    let mut mean = vec![0.0; N_FEATURES];
    let mut var = vec![0.0; N_FEATURES];
    for r in x {
        for j in 0..N_FEATURES {
            mean[j] += r[j] as f64 / n;
        }
    }
    for r in x {
        for j in 0..N_FEATURES {
            var[j] += (r[j] as f64 - mean[j]).powi(2) / n;
        }
    }
    let scale = var
        .iter()
        .map(|v| if v.sqrt() > 1e-9 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, scale)
}

fn z_rows(x: &[[f32; N_FEATURES]], mean: &[f64], scale: &[f64]) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            (0..N_FEATURES)
                .map(|j| (r[j] as f64 - mean[j]) / scale[j])
                .collect()
        })
        .collect()
}

fn fit_lr(z: &Vec<Vec<f64>>, y: &Vec<i32>, alpha: f64) -> Result<(Vec<f64>, f64), TrainError> {
    let xm = DenseMatrix::from_2d_vec(z).map_err(|e| TrainError::Fit(e.to_string()))?;
    let params = LogisticRegressionParameters::default().with_alpha(alpha);
    let lr = LogisticRegression::fit(&xm, y, params).map_err(|e| TrainError::Fit(e.to_string()))?;
    let coef = lr.coefficients();
    let (_, m) = smartcore::linalg::basic::arrays::Array::shape(coef);
    let w: Vec<f64> = (0..m)
        .map(|j| *smartcore::linalg::basic::arrays::Array::get(coef, (0, j)))
        .collect();
    let b = *smartcore::linalg::basic::arrays::Array::get(lr.intercept(), (0, 0));
    Ok((w, b))
}

/// Extract the nodes of a fitted smartcore tree (its nodes are private but
/// serialised) into [`TreeNode`]s. smartcore sends `x <= split_value` to the
/// true child.
fn tree_nodes(
    t: &DecisionTreeClassifier<f64, i32, DenseMatrix<f64>, Vec<i32>>,
) -> Result<Vec<TreeNode>, TrainError> {
    let v = serde_json::to_value(t).map_err(|e| TrainError::Fit(e.to_string()))?;
    let classes: Vec<i64> = v["classes"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_i64()).collect())
        .unwrap_or_default();
    let nodes = v["nodes"]
        .as_array()
        .ok_or_else(|| TrainError::Fit("tree has no nodes".into()))?;
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let output = n["output"].as_u64().unwrap_or(0) as usize;
        let value = classes.get(output).copied().unwrap_or(0) as f32;
        let tc = n["true_child"].as_u64();
        let fc = n["false_child"].as_u64();
        match (tc, fc, n["split_value"].as_f64()) {
            (Some(l), Some(r), Some(th)) => out.push(TreeNode {
                feature: Some(n["split_feature"].as_u64().unwrap_or(0) as u16),
                threshold: th as f32,
                left: l as u32,
                right: r as u32,
                value,
            }),
            _ => out.push(TreeNode {
                feature: None,
                threshold: 0.0,
                left: 0,
                right: 0,
                value,
            }),
        }
    }
    Ok(out)
}

fn fit_trees(
    z: &[Vec<f64>],
    y: &[i32],
    cfg: &TrainConfig,
) -> Result<Vec<Vec<TreeNode>>, TrainError> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut trees = Vec::with_capacity(cfg.trees);
    for t in 0..cfg.trees {
        let n = cfg.tree_rows.min(z.len());
        let idx: Vec<usize> = (0..n).map(|_| rng.gen_range(0..z.len())).collect();
        let xs: Vec<Vec<f64>> = idx.iter().map(|&i| z[i].clone()).collect();
        let ys: Vec<i32> = idx.iter().map(|&i| y[i]).collect();
        let xm = DenseMatrix::from_2d_vec(&xs).map_err(|e| TrainError::Fit(e.to_string()))?;
        let params = DecisionTreeClassifierParameters::default()
            .with_max_depth(cfg.max_depth)
            .with_min_samples_leaf(cfg.min_leaf);
        let params = DecisionTreeClassifierParameters {
            seed: Some(cfg.seed + t as u64),
            ..params
        };
        let tree = DecisionTreeClassifier::fit(&xm, &ys, params)
            .map_err(|e| TrainError::Fit(e.to_string()))?;
        trees.push(tree_nodes(&tree)?);
    }
    Ok(trees)
}

/// Fit the classifier on the train rows and the Platt calibration on the
/// calibration rows.
pub fn train(ds: &Dataset, cfg: &TrainConfig, name: &str) -> Result<ModelFile, TrainError> {
    let (x, y) = rows(ds, Role::Train);
    let pos = y.iter().filter(|v| **v == 1).count();
    if pos < 10 || pos == y.len() {
        return Err(TrainError::TooFew(format!(
            "{} training rows, {pos} misdirected",
            y.len()
        )));
    }
    let (mean, scale) = standardise(&x);
    let z = z_rows(&x, &mean, &scale);
    let classifier = match cfg.algorithm {
        Algorithm::Logistic => {
            let (coef, intercept) = fit_lr(&z, &y, cfg.alpha)?;
            Classifier::Logistic { coef, intercept }
        }
        Algorithm::Trees => Classifier::Trees {
            trees: fit_trees(&z, &y, cfg)?,
        },
        Algorithm::Stack => {
            let (coef, intercept) = fit_lr(&z, &y, cfg.alpha)?;
            Classifier::Stack {
                coef,
                intercept,
                trees: fit_trees(&z, &y, cfg)?,
                w_logistic: 1.0,
                w_trees: 0.0,
                bias: 0.0,
            }
        }
    };
    let mut model = ModelFile {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        name: name.to_string(),
        features: features::feature_names(),
        mean,
        scale,
        classifier,
        platt_a: 1.0,
        platt_b: 0.0,
        notes: serde_json::Value::Null,
    };
    let (xc, yc) = rows(ds, Role::Calib);
    let cpos = yc.iter().filter(|v| **v == 1).count();
    if cpos < 10 || cpos == yc.len() {
        return Err(TrainError::TooFew(format!(
            "{} calibration rows, {cpos} misdirected",
            yc.len()
        )));
    }
    if let Classifier::Stack {
        coef,
        intercept,
        trees,
        ..
    } = &model.classifier
    {
        // Stacking weights from the calibration rows: the stacker is itself
        // a logistic regression, so it is the calibration (Platt 1, 0).
        let lr_only = Classifier::Logistic {
            coef: coef.clone(),
            intercept: *intercept,
        };
        let trees_only = Classifier::Trees {
            trees: trees.clone(),
        };
        let mut a = model.clone();
        a.classifier = lr_only;
        let mut b = model.clone();
        b.classifier = trees_only;
        let both: Vec<Vec<f64>> = xc.iter().map(|r| vec![a.raw(r), b.raw(r)]).collect();
        let (w, bias) = fit_lr(&both, &yc, 0.0)?;
        if let Classifier::Stack {
            w_logistic,
            w_trees,
            bias: bb,
            ..
        } = &mut model.classifier
        {
            *w_logistic = w.first().copied().unwrap_or(1.0);
            *w_trees = w.get(1).copied().unwrap_or(0.0);
            *bb = bias;
        }
        return Ok(model);
    }
    let raw: Vec<Vec<f64>> = xc.iter().map(|r| vec![model.raw(r)]).collect();
    let (a, b) = fit_lr(&raw, &yc, 0.0)?;
    model.platt_a = a.first().copied().unwrap_or(1.0);
    model.platt_b = b;
    Ok(model)
}
