//! Configuration: one serde struct per section, every section with working
//! defaults, validated as a whole so that every bad key is named at once.
//!
//! Sections live in files by area: `server.rs` (listener, TLS, limits, next
//! hop, metrics, logging), `policy.rs` (thresholds, hold, encrypt, admin
//! API), `store.rs` (store, privacy, tenants), `model.rs` (model file).

pub mod model;
pub mod policy;
pub mod server;
pub mod store;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use model::ModelConfig;
pub use policy::{
    AdminConfig, EncryptConfig, EncryptFallback, ExpiryAction, FailMode, HoldConfig, PolicyConfig,
    ThresholdOverride,
};
pub use server::{LogConfig, MetricsConfig, RelayConfig, ServerConfig};
pub use store::{PrivacyConfig, StoreConfig, TenantsConfig};

use crate::address::AddressConfig;
use crate::graph::GraphConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub relay: RelayConfig,
    pub addresses: AddressConfig,
    pub graph: GraphConfig,
    pub tenants: TenantsConfig,
    pub model: ModelConfig,
    pub policy: PolicyConfig,
    pub hold: HoldConfig,
    pub encrypt: EncryptConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub privacy: PrivacyConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// Every problem found in a configuration, each naming its key path.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Parse TOML text and validate it. Unknown keys, type errors and
    /// semantic errors are all reported, each with its key path.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        let mut unknown = Vec::new();
        let mut cfg: Config = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        // State files not named explicitly live under `[server] data_dir`.
        let set = |section: &str, key: &str| {
            text.parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get(section)?.as_table()?.get(key).cloned())
                .is_some()
        };
        if !set("store", "path") {
            cfg.store.path = cfg.server.data_dir.join("graph.redb");
        }
        if !set("privacy", "key_file") {
            cfg.privacy.key_file = cfg.server.data_dir.join("keys.json");
        }
        let mut errs: Vec<String> = unknown
            .into_iter()
            .map(|k| format!("{k}: unknown key"))
            .collect();
        cfg.validate_into(&mut errs);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Config::from_toml(&text)
    }

    /// Semantic checks of every section.
    /// The hold spool: `[hold] spool_dir`, else `<server.data_dir>/spool`.
    pub fn hold_spool_dir(&self) -> std::path::PathBuf {
        self.hold
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("spool"))
    }

    pub fn validate_into(&self, errs: &mut Vec<String>) {
        self.server.validate("server", errs);
        self.relay.validate("relay", errs);
        self.tenants.validate("tenants", errs);
        self.model.validate("model", errs);
        self.policy.validate("policy", errs);
        self.hold.validate("hold", errs);
        self.encrypt.validate("encrypt", errs);
        self.admin.validate("admin", errs);
        self.store.validate("store", errs);
        self.privacy.validate("privacy", errs);
        self.metrics.validate("metrics", errs);
        self.log.validate("log", errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_follow_data_dir_unless_named() {
        let cfg = Config::from_toml("[server]\ndata_dir = \"/var/lib/misdirect\"\n").unwrap();
        assert_eq!(cfg.store.path, Path::new("/var/lib/misdirect/graph.redb"));
        assert_eq!(
            cfg.privacy.key_file,
            Path::new("/var/lib/misdirect/keys.json")
        );
        assert_eq!(cfg.hold_spool_dir(), Path::new("/var/lib/misdirect/spool"));
        let cfg = Config::from_toml(
            "[server]\ndata_dir = \"/var/lib/misdirect\"\n[store]\npath = \"/srv/g.redb\"\n[privacy]\nkey_file = \"/etc/k.json\"\n",
        )
        .unwrap();
        assert_eq!(cfg.store.path, Path::new("/srv/g.redb"));
        assert_eq!(cfg.privacy.key_file, Path::new("/etc/k.json"));
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::from_toml("").unwrap();
        let mut errs = Vec::new();
        cfg.validate_into(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn names_every_unknown_key() {
        let e = Config::from_toml("bogus = 1\n[addresses]\nstrip_plus_tagz = true\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("addresses.strip_plus_tagz"), "{text}");
    }
}
