//! Configuration sections: store, privacy, tenants (see config/misdirectd.toml for documentation).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::domain_of;

/// Which graph store backend to use.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded redb file, no server needed.
    #[default]
    Embedded,
    /// Shared PostgreSQL database (several relays, one graph).
    Postgres,
}

/// TLS to the PostgreSQL server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PgTls {
    /// Plain connection (loopback or a unix socket directory only).
    #[default]
    Disable,
    /// TLS (rustls, ring) required; the server certificate is checked
    /// against `tls_ca` (PEM).
    Require,
}

/// `[store]` section: where the association graph is persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StoreConfig {
    /// Store backend.
    pub backend: StoreBackend,
    /// Path of the embedded store file.
    pub path: PathBuf,
    /// How often learnt changes are committed to disk. A crash loses at most
    /// the learning of one interval (plus what is still queued).
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Bound of the learning queue between the relay and the store task.
    pub queue: usize,
    /// PostgreSQL connection string (`backend = "postgres"`), e.g.
    /// `host=127.0.0.1 port=5432 user=misdirect dbname=misdirect`.
    pub url: String,
    /// Connections each relay keeps to PostgreSQL at most.
    pub pool_size: usize,
    /// TLS to PostgreSQL.
    pub tls: PgTls,
    /// CA certificate (PEM) that signs the PostgreSQL server certificate
    /// (`tls = "require"`).
    pub tls_ca: Option<PathBuf>,
    /// How often each relay reads what other relays learnt: a relay's
    /// scores reflect another relay's learning at most
    /// `batch_interval + refresh_interval` after the message.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Memory budget (bytes) for learning queued while PostgreSQL is
    /// unreachable; beyond it the oldest batches are dropped (logged and
    /// counted in `misdirect_store_outage_dropped_total`).
    pub outage_queue: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("misdirect-data/graph.redb"),
            batch_interval: Duration::from_secs(1),
            queue: 10_000,
            url: String::new(),
            pool_size: 4,
            tls: PgTls::Disable,
            tls_ca: None,
            refresh_interval: Duration::from_secs(2),
            outage_queue: 64 << 20,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.path.as_os_str().is_empty() {
            errs.push(format!("{path}.path: must not be empty"));
        }
        if self.batch_interval.is_zero() {
            errs.push(format!("{path}.batch_interval: must be greater than zero"));
        }
        if self.queue == 0 {
            errs.push(format!("{path}.queue: must be at least 1"));
        }
        if self.backend == StoreBackend::Postgres {
            if self.url.trim().is_empty() {
                errs.push(format!("{path}.url: required with backend = \"postgres\""));
            } else if let Err(e) = self.url.parse::<tokio_postgres::Config>() {
                errs.push(format!("{path}.url: {e}"));
            }
            if self.pool_size == 0 {
                errs.push(format!("{path}.pool_size: must be at least 1"));
            }
            if self.refresh_interval.is_zero() {
                errs.push(format!(
                    "{path}.refresh_interval: must be greater than zero"
                ));
            }
            if self.outage_queue == 0 {
                errs.push(format!("{path}.outage_queue: must be at least 1 byte"));
            }
            if self.tls == PgTls::Require && self.tls_ca.is_none() {
                errs.push(format!("{path}.tls_ca: required with tls = \"require\""));
            }
        }
    }
}

/// `[privacy]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PrivacyConfig {
    /// Secret key file (created with mode 0600 on first start when missing;
    /// refused when group- or world-readable).
    pub key_file: PathBuf,
    /// Associations not seen for this many days are deleted (0: keep forever).
    pub retention_days: u32,
    /// How often the retention job runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Log addresses as pseudonyms (default) rather than in clear.
    pub pseudonymise_logs: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            key_file: PathBuf::from("misdirect-data/keys.json"),
            retention_days: 730,
            retention_interval: Duration::from_secs(3600),
            pseudonymise_logs: true,
        }
    }
}

impl PrivacyConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.key_file.as_os_str().is_empty() {
            errs.push(format!("{path}.key_file: must not be empty"));
        }
        if self.retention_interval.is_zero() {
            errs.push(format!(
                "{path}.retention_interval: must be greater than zero"
            ));
        }
    }
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
