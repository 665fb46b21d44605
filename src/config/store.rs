//! Configuration sections: store (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

/// `[store]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StoreConfig {}

impl StoreConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[privacy]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PrivacyConfig {}

impl PrivacyConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[tenants]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TenantsConfig {}

impl TenantsConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}
