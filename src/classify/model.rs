//! The trained model: file format, loading checks, and [`ModelScorer`], the
//! [`Scorer`] the relay uses.
//!
//! A model file is JSON: format name and version, the feature names it was
//! trained with (checked against [`features::FEATURES`] at load, in order),
//! standardisation constants, the classifier, and the Platt calibration that
//! turns its raw output into a probability.

use serde::{Deserialize, Serialize};

use crate::classify::features::{self, Evidence, RecipientFeatures, N_FEATURES};
use crate::graph::GraphView;
use crate::scorer::{ScoreError, ScoreInput, Scorer};
use crate::verdict::{RecipientScore, Scores};

/// Value of the `format` field.
pub const FORMAT: &str = "misdirect-model";
/// Version of the file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Senders with fewer earlier messages than this are outside what the model
/// was trained and evaluated on: [`ModelScorer`] gives their recipients
/// score 0 with a reason saying so (the policy may treat that as it likes).
pub const MIN_HISTORY: u32 = 20;

/// The shipped default model, embedded in the binary.
pub const SHIPPED: &[u8] = include_bytes!("../../models/default.json");

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model file is not valid JSON for this format: {0}")]
    Json(String),
    #[error("not a misdirect model file (format {0:?})")]
    Format(String),
    #[error(
        "model format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("model has {found} features, this build computes {expected}")]
    FeatureCount { found: usize, expected: usize },
    #[error("model feature {index} is {found:?}, this build computes {expected:?} there")]
    FeatureName {
        index: usize,
        found: String,
        expected: String,
    },
    #[error("model is inconsistent: {0}")]
    Invalid(String),
}

/// One node of a binary decision tree: a split (`feature`, `threshold`,
/// children) or a leaf (`value`: the class the fitted tree predicts there,
/// 0 or 1, as smartcore keeps no leaf probabilities). Thresholds are stored
/// as `f32`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Split feature; `None` for a leaf.
    pub feature: Option<u16>,
    pub threshold: f32,
    /// Child when `x[feature] <= threshold`.
    pub left: u32,
    pub right: u32,
    pub value: f32,
}

/// The classifier producing a raw score (before calibration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Classifier {
    /// Logistic regression on standardised features: raw = w.z + b.
    Logistic { coef: Vec<f64>, intercept: f64 },
    /// Bagged decision trees on standardised features: raw = logit of the
    /// mean leaf value.
    Trees { trees: Vec<Vec<TreeNode>> },
    /// Both, stacked: raw = w_logistic * logistic raw + w_trees * trees raw
    /// + bias, the weights fitted on the calibration rows.
    Stack {
        coef: Vec<f64>,
        intercept: f64,
        trees: Vec<Vec<TreeNode>>,
        w_logistic: f64,
        w_trees: f64,
        bias: f64,
    },
}

fn trees_raw(trees: &[Vec<TreeNode>], z: &[f64; N_FEATURES]) -> f64 {
    let mut sum = 0.0;
    for t in trees {
        sum += tree_value(t, z);
    }
    let p = (sum / trees.len().max(1) as f64).clamp(1e-3, 1.0 - 1e-3);
    (p / (1.0 - p)).ln()
}

fn check_trees(trees: &[Vec<TreeNode>]) -> Result<(), ModelError> {
    if trees.is_empty() {
        return Err(ModelError::Invalid("no trees".into()));
    }
    for t in trees {
        for n in t {
            let bad_child = (n.left as usize) >= t.len() || (n.right as usize) >= t.len();
            if let Some(f) = n.feature {
                if f as usize >= N_FEATURES || bad_child {
                    return Err(ModelError::Invalid("tree node out of range".into()));
                }
            }
        }
    }
    Ok(())
}

/// A model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: String,
    pub version: u32,
    /// Model name reported in score headers, e.g. `misdirect-logreg-2026-11-23`.
    pub name: String,
    pub features: Vec<String>,
    /// Per-feature mean and scale: z = (x - mean) / scale.
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub classifier: Classifier,
    /// Platt calibration: p = 1 / (1 + exp(-(a * raw + b))).
    pub platt_a: f64,
    pub platt_b: f64,
    /// Free-form training notes (data, split, date), for the model card.
    #[serde(default)]
    pub notes: serde_json::Value,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl ModelFile {
    /// Parse and check a model file.
    pub fn from_bytes(b: &[u8]) -> Result<ModelFile, ModelError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(b).map_err(|e| ModelError::Json(e.to_string()))?;
        if head.format != FORMAT {
            return Err(ModelError::Format(head.format));
        }
        if head.version != FORMAT_VERSION {
            return Err(ModelError::Version {
                found: head.version,
            });
        }
        let m: ModelFile =
            serde_json::from_slice(b).map_err(|e| ModelError::Json(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// Read and check a model file from disk.
    pub fn load(path: &std::path::Path) -> Result<ModelFile, ModelError> {
        let b = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ModelFile::from_bytes(&b)
    }

    /// Check feature names and vector sizes against this build.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.features.len() != N_FEATURES {
            return Err(ModelError::FeatureCount {
                found: self.features.len(),
                expected: N_FEATURES,
            });
        }
        for (i, (found, (expected, _))) in self.features.iter().zip(features::FEATURES).enumerate()
        {
            if found != expected {
                return Err(ModelError::FeatureName {
                    index: i,
                    found: found.clone(),
                    expected: expected.to_string(),
                });
            }
        }
        if self.mean.len() != N_FEATURES || self.scale.len() != N_FEATURES {
            return Err(ModelError::Invalid("mean/scale length".into()));
        }
        if self.scale.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(ModelError::Invalid("scale must be positive".into()));
        }
        match &self.classifier {
            Classifier::Logistic { coef, intercept } => {
                if coef.len() != N_FEATURES || !intercept.is_finite() {
                    return Err(ModelError::Invalid("coefficient count".into()));
                }
            }
            Classifier::Trees { trees } => check_trees(trees)?,
            Classifier::Stack {
                coef,
                intercept,
                trees,
                w_logistic,
                w_trees,
                bias,
            } => {
                if coef.len() != N_FEATURES
                    || !intercept.is_finite()
                    || !w_logistic.is_finite()
                    || !w_trees.is_finite()
                    || !bias.is_finite()
                {
                    return Err(ModelError::Invalid("stack weights".into()));
                }
                check_trees(trees)?;
            }
        }
        if !self.platt_a.is_finite() || !self.platt_b.is_finite() {
            return Err(ModelError::Invalid("calibration".into()));
        }
        Ok(())
    }

    /// Standardise a feature row.
    fn z(&self, x: &[f32; N_FEATURES]) -> [f64; N_FEATURES] {
        let mut z = [0f64; N_FEATURES];
        for i in 0..N_FEATURES {
            z[i] = (x[i] as f64 - self.mean[i]) / self.scale[i];
        }
        z
    }

    /// Raw (uncalibrated) score of a feature row.
    pub fn raw(&self, x: &[f32; N_FEATURES]) -> f64 {
        let z = self.z(x);
        match &self.classifier {
            Classifier::Logistic { coef, intercept } => {
                coef.iter().zip(z.iter()).map(|(w, v)| w * v).sum::<f64>() + intercept
            }
            Classifier::Trees { trees } => trees_raw(trees, &z),
            Classifier::Stack {
                coef,
                intercept,
                trees,
                w_logistic,
                w_trees,
                bias,
            } => {
                let lr = coef.iter().zip(z.iter()).map(|(w, v)| w * v).sum::<f64>() + intercept;
                w_logistic * lr + w_trees * trees_raw(trees, &z) + bias
            }
        }
    }

    /// Calibrated probability that the recipient is a misdirection.
    pub fn probability(&self, x: &[f32; N_FEATURES]) -> f64 {
        sigmoid(self.platt_a * self.raw(x) + self.platt_b)
    }
}

fn tree_value(t: &[TreeNode], z: &[f64; N_FEATURES]) -> f64 {
    let mut i = 0usize;
    // A well-formed tree reaches a leaf in fewer steps than it has nodes.
    for _ in 0..=t.len() {
        let Some(n) = t.get(i) else { return 0.0 };
        match n.feature {
            None => return n.value as f64,
            Some(f) => {
                i = if z[f as usize] <= n.threshold as f64 {
                    n.left as usize
                } else {
                    n.right as usize
                };
            }
        }
    }
    0.0
}

/// Marks a leaf in a [`FlatNode`]'s feature bits: the index of the padding slot of
/// a [`Padded`] row, which holds NaN, so a leaf's comparison is false and
/// the walk stays on the leaf (its `right` is itself).
const LEAF: u32 = N_FEATURES as u32;

/// A standardised row padded with NaN to 64 slots (see [`LEAF`]): a
/// feature index masked to 6 bits is always in it.
type Padded = [f64; 64];

// The features and the leaf's padding slot fit in a padded row.
const _: () = assert!(N_FEATURES < 64);

/// Rows walked through each tree together (independent walks overlap
/// their memory loads instead of waiting on one another).
const LANES: usize = 12;

/// Bits of [`FlatNode::packed`] holding the feature index (the rest hold
/// the right child's index).
const FEATURE_BITS: u32 = 6;

/// Nodes a [`Forest`] can address: the right child's index has the
/// `32 - FEATURE_BITS` upper bits of [`FlatNode::packed`].
const MAX_NODES: usize = 1 << (32 - FEATURE_BITS);

/// One node of a [`Forest`]: 8 bytes. A split sends `z[feature] <=
/// threshold` to the next node in the array (trees are laid out in
/// pre-order) and the rest to `right`; a leaf (`feature == LEAF`) holds its
/// value in `threshold` and its own index in `right`. The threshold (or
/// leaf value) is the file's own `f32`, widened to `f64` exactly at each
/// comparison, as the file's walk does.
#[derive(Debug, Clone, Copy)]
struct FlatNode {
    threshold: f32,
    /// `feature | right << FEATURE_BITS`.
    packed: u32,
}

impl FlatNode {
    fn new(threshold: f32, feature: u32, right: u32) -> Self {
        FlatNode {
            threshold,
            packed: feature | right << FEATURE_BITS,
        }
    }

    fn feature(self) -> u32 {
        self.packed & ((1 << FEATURE_BITS) - 1)
    }

    fn right(self) -> u32 {
        self.packed >> FEATURE_BITS
    }

    fn set_right(&mut self, right: u32) {
        self.packed = self.feature() | right << FEATURE_BITS;
    }
}

// Every feature and the leaf mark fit in the feature bits.
const _: () = assert!(LEAF < 1 << FEATURE_BITS);
const _: () = assert!(std::mem::size_of::<FlatNode>() == 8);

/// The bagged trees of a model flattened at load into one array in
/// pre-order (left child next to its parent), thresholds widened to `f64`
/// once. Evaluates exactly as [`ModelFile::raw`] does: same comparisons,
/// same leaf values, summed in the same tree order.
#[derive(Debug, Clone, Default)]
struct Forest {
    nodes: Vec<FlatNode>,
    /// Index of each tree's root in `nodes`, in file order, and the most
    /// splits on a path from it to a leaf: that many steps reach a leaf
    /// from the root on any row (a leaf steps to itself).
    roots: Vec<(u32, u32)>,
}

impl Forest {
    /// Flatten `trees`; `None` when a tree is not a plain tree (a node
    /// reached twice, as in a hand-edited file with a cycle) or the trees
    /// have [`MAX_NODES`] nodes or more, which keeps the file's own walk
    /// for that model.
    fn build(trees: &[Vec<TreeNode>]) -> Option<Forest> {
        let total: usize = trees.iter().map(|t| t.len().max(1)).sum();
        if total >= MAX_NODES {
            return None;
        }
        let mut f = Forest {
            nodes: Vec::with_capacity(total),
            roots: Vec::with_capacity(trees.len()),
        };
        for t in trees {
            let root = u32::try_from(f.nodes.len()).ok()?;
            if t.is_empty() {
                // The file's walk yields 0 for an empty tree.
                f.nodes.push(FlatNode::new(0.0, LEAF, root));
                f.roots.push((root, 0));
                continue;
            }
            let mut seen = vec![false; t.len()];
            let mut depth = 0u32;
            // Pre-order: push right then left; patch each split's `right`
            // when its right child is laid out.
            let mut stack: Vec<(usize, Option<usize>, u32)> = vec![(0, None, 0)];
            while let Some((i, parent, d)) = stack.pop() {
                let n = t.get(i)?;
                if std::mem::replace(seen.get_mut(i)?, true) {
                    return None;
                }
                let at = f.nodes.len();
                let at32 = u32::try_from(at).ok()?;
                if let Some(p) = parent {
                    f.nodes.get_mut(p)?.set_right(at32);
                }
                match n.feature {
                    None => {
                        depth = depth.max(d);
                        f.nodes.push(FlatNode::new(n.value, LEAF, at32))
                    }
                    Some(feat) => {
                        // A feature this build does not compute: the
                        // file's walk (which reads it as NaN) is kept.
                        if usize::from(feat) >= N_FEATURES {
                            return None;
                        }
                        f.nodes.push(FlatNode::new(n.threshold, u32::from(feat), 0));
                        stack.push((n.right as usize, Some(at), d + 1));
                        stack.push((n.left as usize, None, d + 1));
                    }
                }
            }
            f.roots.push((root, depth));
        }
        Some(f)
    }

    /// The trees' raw output (as `trees_raw`) for each of `rows` into
    /// `out`, walking up to [`LANES`] rows through each tree together.
    fn raw_rows(&self, rows: &[Padded], out: &mut [f64]) {
        for (rows, out) in rows.chunks(LANES).zip(out.chunks_mut(LANES)) {
            let sums: &[f64] = match rows.len() {
                1 => &self.sums::<1>(rows),
                2 => &self.sums::<2>(rows),
                3 => &self.sums::<3>(rows),
                4 => &self.sums::<4>(rows),
                5 => &self.sums::<5>(rows),
                6 => &self.sums::<6>(rows),
                7 => &self.sums::<7>(rows),
                8 => &self.sums::<8>(rows),
                9 => &self.sums::<9>(rows),
                10 => &self.sums::<10>(rows),
                11 => &self.sums::<11>(rows),
                _ => &self.sums::<12>(rows),
            };
            for (o, s) in out.iter_mut().zip(sums) {
                let p = (s / self.roots.len().max(1) as f64).clamp(1e-3, 1.0 - 1e-3);
                *o = (p / (1.0 - p)).ln();
            }
        }
    }

    /// Sum of the leaf values of the first `K` of `rows` (all of them are
    /// `K` long but for the last chunk), in tree order: `K` walks in
    /// lockstep, unrolled, their positions in registers.
    fn sums<const K: usize>(&self, rows: &[Padded]) -> [f64; K] {
        let mut z: [&Padded; K] = [&NAN_ROW; K];
        for (z, row) in z.iter_mut().zip(rows) {
            *z = row;
        }
        let mut sum = [0f64; K];
        for &(root, depth) in &self.roots {
            let mut at = [root as usize; K];
            for _ in 0..depth {
                for l in 0..K {
                    let Some(n) = self.nodes.get(at[l]) else {
                        continue;
                    };
                    let v = z[l][n.feature() as usize];
                    // Branch-free select (the comparison is as
                    // unpredictable as the data): left child when
                    // `v <= threshold`, else `right`.
                    let left = (v <= f64::from(n.threshold)) as usize;
                    let right = n.right() as usize;
                    at[l] = right ^ ((right ^ (at[l] + 1)) & left.wrapping_neg());
                }
            }
            for l in 0..K {
                // Only a malformed walk ends off a leaf: it counts 0.
                sum[l] += match self.nodes.get(at[l]) {
                    Some(n) if n.feature() == LEAF => f64::from(n.threshold),
                    _ => 0.0,
                };
            }
        }
        sum
    }
}

/// A row of NaN (fills the lanes of a last, shorter chunk).
const NAN_ROW: Padded = [f64::NAN; 64];

/// The trained model as a [`Scorer`].
#[derive(Debug, Clone)]
pub struct ModelScorer {
    model: ModelFile,
    /// The model's trees flattened (`None` for a logistic model or a file
    /// whose trees are not plain trees: then the file's walk is used).
    forest: Option<Forest>,
}

impl ModelScorer {
    pub fn new(model: ModelFile) -> Self {
        let forest = match &model.classifier {
            Classifier::Logistic { .. } => None,
            Classifier::Trees { trees } | Classifier::Stack { trees, .. } => Forest::build(trees),
        };
        ModelScorer { model, forest }
    }

    /// Raw (uncalibrated) score of a feature row through the flattened
    /// trees; the same value as [`ModelFile::raw`].
    pub fn raw(&self, x: &[f32; N_FEATURES]) -> f64 {
        let mut out = [0f64];
        self.raw_rows(std::slice::from_ref(x), &mut out);
        out[0]
    }

    /// [`Self::raw`] of every row into `out` (as long as `rows`), the rows
    /// walked through each tree together.
    pub fn raw_rows(&self, rows: &[[f32; N_FEATURES]], out: &mut [f64]) {
        self.raw_each(rows.iter(), out);
    }

    /// [`Self::raw_rows`] of the rows `rows` yields (as many as `out`
    /// holds), standardised and walked [`LANES`] at a time in a buffer on
    /// the stack.
    fn raw_each<'r>(&self, rows: impl Iterator<Item = &'r [f32; N_FEATURES]>, out: &mut [f64]) {
        let Some(forest) = &self.forest else {
            for (o, x) in out.iter_mut().zip(rows) {
                *o = self.model.raw(x);
            }
            return;
        };
        let mut rows = rows.take(out.len());
        // The padding slots stay NaN: only the features are written.
        let mut padded = [NAN_ROW; LANES];
        let mut trees = [0f64; LANES];
        for out in out.chunks_mut(LANES) {
            let mut k = 0;
            for (p, x) in padded.iter_mut().zip(rows.by_ref().take(out.len())) {
                p[..N_FEATURES].copy_from_slice(&self.model.z(x));
                k += 1;
            }
            if k == 0 {
                return;
            }
            forest.raw_rows(&padded[..k], &mut trees[..k]);
            self.combine(&padded[..k], &trees[..k], &mut out[..k]);
        }
    }

    /// The model's raw output from standardised rows `z` and their trees'
    /// output `trees`.
    fn combine(&self, z: &[Padded], trees: &[f64], out: &mut [f64]) {
        for ((o, z), &t) in out.iter_mut().zip(z).zip(trees) {
            let z = &z[..N_FEATURES];
            *o = match &self.model.classifier {
                Classifier::Logistic { coef, intercept } => {
                    coef.iter().zip(z.iter()).map(|(w, v)| w * v).sum::<f64>() + intercept
                }
                Classifier::Trees { .. } => t,
                Classifier::Stack {
                    coef,
                    intercept,
                    w_logistic,
                    w_trees,
                    bias,
                    ..
                } => {
                    let lr = coef.iter().zip(z.iter()).map(|(w, v)| w * v).sum::<f64>() + intercept;
                    w_logistic * lr + w_trees * t + bias
                }
            };
        }
    }

    /// Calibrated probability of each of `feats`, as [`Self::probability`].
    pub fn probabilities(&self, feats: &[RecipientFeatures]) -> Vec<f64> {
        let mut raw = vec![0f64; feats.len()];
        self.raw_each(feats.iter().map(|f| &f.values), &mut raw);
        for r in raw.iter_mut() {
            *r = sigmoid(self.model.platt_a * *r + self.model.platt_b);
        }
        raw
    }

    /// The model shipped in the binary.
    pub fn shipped() -> Result<Self, ModelError> {
        Ok(ModelScorer::new(ModelFile::from_bytes(SHIPPED)?))
    }

    /// From a model file path, or the shipped model when `None`.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ModelError> {
        match path {
            Some(p) => Ok(ModelScorer::new(ModelFile::load(p)?)),
            None => ModelScorer::shipped(),
        }
    }

    pub fn model(&self) -> &ModelFile {
        &self.model
    }

    /// Probability for one feature row.
    pub fn probability(&self, f: &RecipientFeatures) -> f64 {
        sigmoid(self.model.platt_a * self.raw(&f.values) + self.model.platt_b)
    }
}

fn times(n: u32) -> String {
    match n {
        1 => "once".to_string(),
        2 => "twice".to_string(),
        n => format!("{n} times"),
    }
}

fn edits(d: u32) -> &'static str {
    match d {
        0 => "looks almost the same as",
        1 => "is one letter from",
        _ => "is two letters from",
    }
}

/// Plain-language reasons for one recipient, most telling first.
pub fn reasons(address: &str, ev: &Evidence) -> Vec<String> {
    let mut out = Vec::new();
    if ev.sender_history == 0 {
        out.push("you have no sending history yet, so nothing to compare with".to_string());
        return out;
    }
    if ev.count == 0 {
        let mut s = format!("you have never written to {address}");
        if let Some((c, d, n)) = &ev.lookalike {
            s.push_str(&format!(
                "; it {} {c}, whom you wrote to {}",
                edits(*d),
                times(*n)
            ));
        } else if let Some((c, n)) = &ev.same_local {
            s.push_str(&format!(
                "; you wrote to {c} (same name, another domain) {}",
                times(*n)
            ));
        } else if ev.others > 0 && ev.others_known == ev.others {
            s.push_str(", though you know every other recipient");
        }
        out.push(s);
        if ev.org_senders == 0 && ev.rcpt_sent == 0 {
            out.push(format!(
                "nobody in your organisation has written to {address}, and no mail from it has been seen"
            ));
        } else if ev.org_senders == 0 {
            out.push(format!(
                "nobody in your organisation has written to {address}"
            ));
        }
        if ev.neighbour_links == 0 {
            out.push(format!(
                "none of your contacts has exchanged mail with {address}"
            ));
        }
        if ev.others_checked > 0 && ev.others_linked == 0 {
            out.push(format!(
                "none of the other recipients has exchanged mail with {address}"
            ));
        }
        if ev.domain_count == 0 {
            out.push(format!(
                "you have never written to anyone at {}",
                crate::address::domain_of(address)
            ));
        }
    } else {
        let when = ev
            .days_since
            .map(|d| format!(", last {} days ago", d.round() as i64))
            .unwrap_or_default();
        out.push(format!("you wrote to {address} {}{when}", times(ev.count)));
        if let Some((c, n)) = &ev.sibling {
            out.push(format!("you write more often to {c} ({})", times(*n)));
        }
        if ev.others_known > 0 && ev.others_co == 0 {
            out.push(format!(
                "you have never written to {address} together with the other recipients"
            ));
        }
    }
    if ev.not_in_thread {
        out.push(format!(
            "{address} was not in the earlier messages of this thread"
        ));
    }
    if let Some(name) = &ev.attachment_elsewhere {
        out.push(format!(
            "you sent {name} before to others, not to {address}"
        ));
    }
    out
}

impl Scorer for ModelScorer {
    fn name(&self) -> &str {
        &self.model.name
    }

    fn score(&self, g: &dyn GraphView, input: &ScoreInput<'_>) -> Result<Scores, ScoreError> {
        self.score_explaining(g, input, 0.0)
    }

    fn score_explaining(
        &self,
        g: &dyn GraphView,
        input: &ScoreInput<'_>,
        explain_from: f64,
    ) -> Result<Scores, ScoreError> {
        let sender = input.meta.sender().ok_or(ScoreError::NoSender)?;
        let history = g.sender(sender).messages;
        if history < MIN_HISTORY {
            let recipients = input
                .recipients
                .iter()
                .map(|r| RecipientScore {
                    address: r.address.clone(),
                    field: r.field,
                    score: 0.0,
                    reasons: vec![format!(
                        "not scored: {sender} has sent {history} messages so far, fewer than the {MIN_HISTORY} needed to compare with"
                    )],
                })
                .collect();
            return Ok(Scores {
                model: self.model.name.clone(),
                recipients,
            });
        }
        let feats = features::extract(g, sender, input.meta, input.recipients, input.now);
        let probs = self.probabilities(&feats);
        let score_of = |p: f64| if p.is_finite() { p } else { 1.0 };
        let explain = probs.iter().any(|&p| score_of(p) >= explain_from);
        let recipients = input
            .recipients
            .iter()
            .zip(feats.iter())
            .zip(probs)
            .map(|((r, f), p)| RecipientScore {
                address: r.address.clone(),
                field: r.field,
                score: score_of(p),
                reasons: if explain {
                    reasons(&r.address, &f.evidence)
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(Scores {
            model: self.model.name.clone(),
            recipients,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Feature rows spread over the ranges the extractor produces: 0/1
    /// flags, logs of counts, fractions; plus rows built to sit exactly on
    /// split thresholds.
    fn rows(model: &ModelFile, n: usize) -> Vec<[f32; N_FEATURES]> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let mut x = [0f32; N_FEATURES];
            for v in x.iter_mut() {
                *v = match rng.gen_range(0..4) {
                    0 => f32::from(u8::from(rng.gen_bool(0.5))),
                    1 => rng.gen_range(0.0..1.0),
                    2 => rng.gen_range(0.0..12.0),
                    _ => (rng.gen_range(0..200) as f32).ln_1p(),
                };
            }
            if k % 4 == 0 {
                // Put some features on a threshold of the first tree.
                if let Classifier::Stack { trees, .. } | Classifier::Trees { trees } =
                    &model.classifier
                {
                    for node in trees[k % trees.len()].iter().take(8) {
                        if let Some(f) = node.feature {
                            let f = f as usize;
                            x[f] = (node.threshold as f64 * model.scale[f] + model.mean[f]) as f32;
                        }
                    }
                }
            }
            out.push(x);
        }
        out
    }

    #[test]
    fn flattened_trees_score_exactly_as_the_file_walk() {
        let scorer = ModelScorer::shipped().unwrap();
        assert!(scorer.forest.is_some(), "the shipped model is flattened");
        let model = scorer.model().clone();
        for x in rows(&model, 20_000) {
            assert_eq!(
                scorer.raw(&x).to_bits(),
                model.raw(&x).to_bits(),
                "row {x:?}"
            );
            let f = RecipientFeatures {
                values: x,
                evidence: Evidence::default(),
            };
            assert_eq!(
                scorer.probability(&f).to_bits(),
                model.probability(&x).to_bits()
            );
        }
    }

    /// Rows walked together (batches of every size around the lane count)
    /// score exactly as one at a time through the file's trees, and the
    /// batch probabilities are the one-row ones.
    #[test]
    fn rows_scored_together_match_the_file_walk() {
        let scorer = ModelScorer::shipped().unwrap();
        let model = scorer.model().clone();
        let all = rows(&model, 3_000);
        let mut start = 0;
        let mut size = 1;
        while start < all.len() {
            let batch = &all[start..(start + size).min(all.len())];
            let mut out = vec![0f64; batch.len()];
            scorer.raw_rows(batch, &mut out);
            for (x, r) in batch.iter().zip(&out) {
                assert_eq!(r.to_bits(), model.raw(x).to_bits(), "batch of {size}");
            }
            let feats: Vec<RecipientFeatures> = batch
                .iter()
                .map(|x| RecipientFeatures {
                    values: *x,
                    evidence: Evidence::default(),
                })
                .collect();
            for (f, p) in feats.iter().zip(scorer.probabilities(&feats)) {
                assert_eq!(p.to_bits(), model.probability(&f.values).to_bits());
            }
            start += size;
            size = size % (2 * LANES + 3) + 1;
        }
    }

    /// Every flattened node holds its file node's threshold (or leaf
    /// value) bit for bit, its feature and its children: the flattened
    /// tree is the file's tree, node for node, and each comparison widens
    /// the same `f32` to `f64` as the file's walk does.
    #[test]
    fn raw_thresholds_are_exact() {
        let scorer = ModelScorer::shipped().unwrap();
        let forest = scorer.forest.as_ref().unwrap();
        let Classifier::Stack { trees, .. } = &scorer.model().classifier else {
            panic!("the shipped model is stacked");
        };
        assert_eq!(forest.roots.len(), trees.len());
        let mut checked = 0usize;
        for (t, &(root, _)) in trees.iter().zip(&forest.roots) {
            // (file node, flat node) pairs still to compare.
            let mut todo = vec![(0usize, root as usize)];
            while let Some((i, k)) = todo.pop() {
                let (n, f) = (&t[i], forest.nodes[k]);
                match n.feature {
                    None => {
                        assert_eq!(f.feature(), LEAF);
                        assert_eq!(f.threshold.to_bits(), n.value.to_bits());
                        assert_eq!(f64::from(f.threshold).to_bits(), (n.value as f64).to_bits());
                        assert_eq!(f.right() as usize, k);
                    }
                    Some(feat) => {
                        assert_eq!(f.feature(), u32::from(feat));
                        assert_eq!(f.threshold.to_bits(), n.threshold.to_bits());
                        assert_eq!(
                            f64::from(f.threshold).to_bits(),
                            (n.threshold as f64).to_bits()
                        );
                        todo.push((n.left as usize, k + 1));
                        todo.push((n.right as usize, f.right() as usize));
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, forest.nodes.len());
        // Packing keeps every field at its extremes.
        let mut n = FlatNode::new(-0.0, LEAF, (MAX_NODES - 1) as u32);
        assert_eq!((n.feature(), n.right()), (LEAF, (MAX_NODES - 1) as u32));
        n.set_right(5);
        assert_eq!((n.feature(), n.right()), (LEAF, 5));
        assert_eq!(n.threshold.to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn trees_only_model_is_flattened_and_identical() {
        let mut model = ModelScorer::shipped().unwrap().model().clone();
        let Classifier::Stack { trees, .. } = model.classifier.clone() else {
            panic!("the shipped model is stacked");
        };
        model.classifier = Classifier::Trees { trees };
        model.check().unwrap();
        let scorer = ModelScorer::new(model.clone());
        assert!(scorer.forest.is_some());
        for x in rows(&model, 5_000) {
            assert_eq!(scorer.raw(&x).to_bits(), model.raw(&x).to_bits());
        }
    }

    #[test]
    fn a_tree_with_a_cycle_keeps_the_file_walk() {
        let mut model = ModelScorer::shipped().unwrap().model().clone();
        let leaf = |v: f32| TreeNode {
            feature: None,
            threshold: 0.0,
            left: 0,
            right: 0,
            value: v,
        };
        // Node 1 loops back to the root on its left side.
        let cyclic = vec![
            TreeNode {
                feature: Some(0),
                threshold: 0.5,
                left: 1,
                right: 2,
                value: 0.0,
            },
            TreeNode {
                feature: Some(1),
                threshold: 0.5,
                left: 0,
                right: 2,
                value: 0.0,
            },
            leaf(1.0),
        ];
        model.classifier = Classifier::Trees {
            trees: vec![cyclic, vec![leaf(1.0)], Vec::new()],
        };
        model.check().unwrap();
        let scorer = ModelScorer::new(model.clone());
        assert!(scorer.forest.is_none());
        let mut x = [0f32; N_FEATURES];
        for (a, b) in [(0.0, 0.0), (0.0, 5.0), (5.0, 0.0)] {
            x[0] = a;
            x[1] = b;
            assert_eq!(scorer.raw(&x).to_bits(), model.raw(&x).to_bits());
        }
        // An empty tree counts 0, as in the file walk.
        model.classifier = Classifier::Trees {
            trees: vec![vec![leaf(1.0)], Vec::new()],
        };
        let scorer = ModelScorer::new(model.clone());
        assert!(scorer.forest.is_some());
        assert_eq!(scorer.raw(&x).to_bits(), model.raw(&x).to_bits());
        assert!(
            (scorer.raw(&x) - 0.0).abs() < 1e-12,
            "mean leaf 0.5 is logit 0"
        );
    }
}
