//! Configuration sections: model (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

/// `[model]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {}

impl ModelConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}
