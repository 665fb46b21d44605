//! Configuration sections: policy, hold, encrypt, admin (see config/misdirectd.toml for documentation).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when scoring itself fails (model missing, store error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deliver, with an `X-Misdirect-Warning` header saying it was not checked.
    #[default]
    Open,
    /// Answer `451 4.3.0` so the upstream retries later.
    Closed,
}

/// Thresholds that replace the global ones for one tenant or sender domain.
/// Unset fields keep the value from the level above.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdOverride {
    pub encrypt_at: Option<f64>,
    pub hold_at: Option<f64>,
    pub reject_at: Option<f64>,
}

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
    /// `open` (deliver with a warning header) or `closed` (451 4.3.0) when
    /// scoring fails.
    pub fail_mode: FailMode,
    /// Recipient domains that never trigger an action (exact match; a
    /// leading `.` also matches every subdomain, e.g. `.example.com`).
    pub allow_domains: Vec<String>,
    /// Sender and recipient address pairs that never trigger an action,
    /// e.g. `[["alice@example.com", "bob@partner.org"]]`.
    pub allow_pairs: Vec<[String; 2]>,
    /// Threshold overrides per tenant name (`[policy.tenant.NAME]`).
    pub tenant: BTreeMap<String, ThresholdOverride>,
    /// Threshold overrides per sender domain (`[policy.sender_domain."example.com"]`);
    /// they win over the tenant's.
    pub sender_domain: BTreeMap<String, ThresholdOverride>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            encrypt_at: None,
            hold_at: Some(0.961),
            reject_at: None,
            fail_mode: FailMode::Open,
            allow_domains: Vec::new(),
            allow_pairs: Vec::new(),
            tenant: BTreeMap::new(),
            sender_domain: BTreeMap::new(),
        }
    }
}

fn check_thresholds(path: &str, t: [(&str, Option<f64>); 3], errs: &mut Vec<String>) {
    for (k, v) in t {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                errs.push(format!("{path}.{k}: must be between 0 and 1, got {v}"));
            }
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        check_thresholds(
            path,
            [
                ("encrypt_at", self.encrypt_at),
                ("hold_at", self.hold_at),
                ("reject_at", self.reject_at),
            ],
            errs,
        );
        for (name, o) in &self.tenant {
            check_thresholds(
                &format!("{path}.tenant.{name}"),
                [
                    ("encrypt_at", o.encrypt_at),
                    ("hold_at", o.hold_at),
                    ("reject_at", o.reject_at),
                ],
                errs,
            );
        }
        for (name, o) in &self.sender_domain {
            check_thresholds(
                &format!("{path}.sender_domain.\"{name}\""),
                [
                    ("encrypt_at", o.encrypt_at),
                    ("hold_at", o.hold_at),
                    ("reject_at", o.reject_at),
                ],
                errs,
            );
        }
        for (i, d) in self.allow_domains.iter().enumerate() {
            if d.trim_start_matches('.').is_empty() || d.contains('@') {
                errs.push(format!("{path}.allow_domains[{i}]: not a domain: {d:?}"));
            }
        }
        for (i, [s, r]) in self.allow_pairs.iter().enumerate() {
            if !s.contains('@') || !r.contains('@') {
                errs.push(format!(
                    "{path}.allow_pairs[{i}]: both entries must be addresses"
                ));
            }
        }
    }
}

/// What happens to a held message nobody released in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryAction {
    #[default]
    Discard,
    Release,
}

/// `[hold]` section: the quarantine spool, the sender's notice and release
/// by reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HoldConfig {
    /// Directory of the hold spool (unset: `<server.data_dir>/spool`).
    pub spool_dir: Option<PathBuf>,
    /// Domain of the release address (`<release_prefix>+<token>@<release_domain>`).
    /// Mail to it passes through misdirect on its way out and is swallowed.
    pub release_domain: String,
    /// Local-part prefix of the release address.
    pub release_prefix: String,
    /// Secret for the release tokens (HMAC-SHA256). Prefer `secret_file`.
    pub secret: String,
    /// File holding the secret (its first line); wins over `secret`.
    pub secret_file: Option<PathBuf>,
    /// How long a release token in a notice stays valid.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// How long a message stays held before the expiry action.
    #[serde(with = "humantime_serde")]
    pub hold_lifetime: Duration,
    /// `discard` or `release` when a hold expires.
    pub expiry_action: ExpiryAction,
    /// How often the expiry job looks at the spool.
    #[serde(with = "humantime_serde")]
    pub expiry_interval: Duration,
    /// From address of notices (default: the release address itself).
    pub notice_from: Option<String>,
    /// SMTP next hop (`host:port`) for released messages when the CLI
    /// `hold release` acts on the spool itself (the daemon always uses
    /// `[relay]`).
    pub next_hop: Option<String>,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            spool_dir: None,
            release_domain: "misdirect.invalid".into(),
            release_prefix: "release".into(),
            secret: String::new(),
            secret_file: None,
            token_lifetime: Duration::from_secs(3 * 86400),
            hold_lifetime: Duration::from_secs(7 * 86400),
            expiry_action: ExpiryAction::Discard,
            expiry_interval: Duration::from_secs(60),
            notice_from: None,
            next_hop: None,
        }
    }
}

impl HoldConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.release_domain.is_empty() || self.release_domain.contains('@') {
            errs.push(format!("{path}.release_domain: must be a domain"));
        }
        let p = &self.release_prefix;
        if p.is_empty()
            || p.len() > 10
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            errs.push(format!(
                "{path}.release_prefix: 1 to 10 characters of a-z, 0-9, '-'"
            ));
        }
        if self.secret_file.is_none() && self.secret.len() < 16 && !self.secret.is_empty() {
            errs.push(format!("{path}.secret: at least 16 characters"));
        }
        for (k, d) in [
            ("token_lifetime", self.token_lifetime),
            ("hold_lifetime", self.hold_lifetime),
            ("expiry_interval", self.expiry_interval),
        ] {
            if d.is_zero() {
                errs.push(format!("{path}.{k}: must be more than 0"));
            }
        }
        if let Some(h) = &self.next_hop {
            if h.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                errs.push(format!("{path}.next_hop: expected host:port, got {h:?}"));
            }
        }
    }

    /// The token secret: `secret_file`'s first line, else `secret`. An error
    /// when neither gives at least 16 bytes.
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        let s = match &self.secret_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("hold.secret_file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            None => self.secret.clone(),
        };
        if s.len() < 16 {
            return Err(
                "hold secret: set hold.secret or hold.secret_file (at least 16 characters)".into(),
            );
        }
        Ok(s.into_bytes())
    }
}

/// For recipients without a certificate when a message is to be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptFallback {
    /// Hold the copy for those recipients (sender notice, release as usual).
    #[default]
    Hold,
    /// Deliver it unencrypted with an `X-Misdirect-Encryption: none` header.
    Tag,
}

/// `[encrypt]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EncryptConfig {
    /// Directory of recipient certificates: `<address>.pem` (lower-case address).
    pub cert_dir: PathBuf,
    /// `hold` or `tag` for recipients without a certificate.
    pub fallback: EncryptFallback,
}

impl Default for EncryptConfig {
    fn default() -> Self {
        EncryptConfig {
            cert_dir: PathBuf::from("/etc/misdirect/certs"),
            fallback: EncryptFallback::Hold,
        }
    }
}

impl EncryptConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.cert_dir.as_os_str().is_empty() {
            errs.push(format!("{path}.cert_dir: must not be empty"));
        }
    }
}

/// `[admin]` section: the HTTP admin API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {
    /// Listen address, e.g. `127.0.0.1:8025` (unset: no admin API).
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token required on every request.
    pub token: String,
    /// File holding the token (its first line); wins over `token`.
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if let Some(l) = self.listen {
            if !l.ip().is_loopback() {
                errs.push(format!(
                    "{path}.listen: must be a loopback address, got {l}"
                ));
            }
            if self.token_file.is_none() && self.token.len() < 16 {
                errs.push(format!(
                    "{path}.token: at least 16 characters when the admin API is on"
                ));
            }
        }
    }

    /// The bearer token: `token_file`'s first line, else `token`.
    pub fn load_token(&self) -> Result<String, String> {
        let t = match &self.token_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("admin.token_file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            None => self.token.clone(),
        };
        if t.len() < 16 {
            return Err("admin token: at least 16 characters".into());
        }
        Ok(t)
    }
}
