//! Configuration sections: store, privacy, tenants (see config/misdirectd.toml for documentation).

use serde::{Deserialize, Serialize};

use crate::address::domain_of;

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

/// One tenant: an organisation whose data is kept apart from every other.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TenantConfig {
    /// Tenant name (used in store keys and logs).
    pub name: String,
    /// Sender domains that belong to this tenant (exact match, lower-case).
    pub domains: Vec<String>,
}

/// `[tenants]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TenantsConfig {
    /// Tenant for senders whose domain no tenant lists.
    pub default: String,
    /// `[[tenants.tenant]]` entries.
    pub tenant: Vec<TenantConfig>,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            default: "default".into(),
            tenant: Vec::new(),
        }
    }
}

impl TenantsConfig {
    /// The tenant a (normalised) sender address belongs to.
    pub fn tenant_for(&self, sender: &str) -> &str {
        let d = domain_of(sender);
        self.tenant
            .iter()
            .find(|t| t.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
            .map(|t| t.name.as_str())
            .unwrap_or(&self.default)
    }

    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.default.is_empty() {
            errs.push(format!("{path}.default: must not be empty"));
        }
        for (i, t) in self.tenant.iter().enumerate() {
            if t.name.is_empty() {
                errs.push(format!("{path}.tenant[{i}].name: must not be empty"));
            }
        }
    }
}
