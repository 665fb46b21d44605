//! Configuration sections: model (see config/misdirectd.toml for documentation).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::model::{ModelError, ModelScorer};

/// `[model]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
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
}
