//! Configuration sections: model (see config/misdirectd.toml for documentation).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::model::{ModelError, ModelScorer};

/// Which scorer the daemon, `replay` and `check` use.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScorerKind {
    /// The trained model (`path`, or the shipped one).
    #[default]
    Model,
    /// The "never emailed before" baseline: 0 for a known contact, 0.5 for an
    /// address colleagues wrote to, 0.9 for one nobody here wrote to. For
    /// comparison and tests.
    NeverSeen,
}

/// `[model]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
    /// `model` (default) or `never-seen`.
    pub scorer: ScorerKind,
    /// Model file (written by `misdirectd train`). Unset: the model shipped
    /// in the binary (`models/default.json` at build time).
    pub path: Option<PathBuf>,
}

impl ModelConfig {
    /// A set `path` must name a readable model file that this build accepts
    /// (format version, feature count and names).
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if let Some(p) = &self.path {
            if let Err(e) = crate::classify::model::ModelFile::load(p) {
                errs.push(format!("{path}.path: {e}"));
            }
        }
    }

    /// Load the configured model, or the shipped one.
    pub fn load(&self) -> Result<ModelScorer, ModelError> {
        ModelScorer::load(self.path.as_deref())
    }

    /// The configured scorer, with the admins' discards applied on top
    /// ([`crate::scorer::WithFeedback`]). Reads the model file: call it at
    /// startup, off the async runtime.
    pub fn scorer(&self) -> Result<std::sync::Arc<dyn crate::scorer::Scorer>, ModelError> {
        use crate::scorer::{Scorer, WithFeedback};
        use std::sync::Arc;
        let inner: Arc<dyn Scorer> = match self.scorer {
            ScorerKind::Model => Arc::new(self.load()?),
            ScorerKind::NeverSeen => Arc::new(crate::classify::baseline::NeverSeenScorer),
        };
        Ok(Arc::new(WithFeedback(inner)))
    }
}
