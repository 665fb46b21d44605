//! Configuration sections: policy, hold, encrypt, admin (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

/// `[policy]` section: score thresholds. A message's score is its worst
/// recipient's; the highest threshold it reaches picks the action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyConfig {
    /// Encrypt at or above this score (unset: never).
    pub encrypt_at: Option<f64>,
    /// Hold at or above this score (unset: never).
    pub hold_at: Option<f64>,
    /// Reject at or above this score (unset: never).
    pub reject_at: Option<f64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            encrypt_at: None,
            hold_at: Some(0.8),
            reject_at: None,
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        for (k, v) in [
            ("encrypt_at", self.encrypt_at),
            ("hold_at", self.hold_at),
            ("reject_at", self.reject_at),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    errs.push(format!("{path}.{k}: must be between 0 and 1, got {v}"));
                }
            }
        }
    }
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
