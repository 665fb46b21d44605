//! Configuration sections: policy (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

/// `[policy]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyConfig {}

impl PolicyConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[hold]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HoldConfig {}

impl HoldConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[encrypt]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EncryptConfig {}

impl EncryptConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[admin]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {}

impl AdminConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}
