//! Configuration sections: server (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

/// `[server]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {}

impl ServerConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[relay]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RelayConfig {}

impl RelayConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[metrics]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {}

impl MetricsConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}

/// `[log]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {}

impl LogConfig {
    pub fn validate(&self, _path: &str, _errs: &mut Vec<String>) {}
}
