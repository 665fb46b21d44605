//! Configuration sections: server, relay, metrics, log (see
//! config/misdirectd.toml for documentation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[server]` section: the SMTP listener and its limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// Name used in the greeting, the EHLO reply and the Received header.
    pub hostname: String,
    /// Client networks allowed to connect (CIDR); everyone else gets 554.
    pub allowed_networks: Vec<String>,
    /// Concurrent connections; one more gets 421.
    pub max_connections: usize,
    /// Recipients per message; one more gets 452.
    pub max_recipients: usize,
    /// Message size in bytes (after dot-unstuffing); larger gets 552.
    pub max_message_size: usize,
    /// Longest command line in bytes, CRLF included; longer gets 500.
    pub max_line_length: usize,
    /// Bad commands per session before 421 and close.
    pub max_bad_commands: u32,
    /// How long to wait for the next command (idle timeout).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long to wait for more message data during DATA.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// On SIGTERM, how long in-flight transactions may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain for STARTTLS (STARTTLS is offered when set).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for STARTTLS.
    pub tls_key: Option<PathBuf>,
    /// Refuse MAIL FROM before STARTTLS (530).
    pub require_tls: bool,
    /// Base directory for state (hold spool under `<data_dir>/spool`).
    pub data_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:2525".into(),
            hostname: "misdirect.localhost".into(),
            allowed_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_connections: 256,
            max_recipients: 100,
            max_message_size: 25 * 1024 * 1024,
            max_line_length: 1000,
            max_bad_commands: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            data_dir: PathBuf::from("misdirect-data"),
        }
    }
}

impl ServerConfig {
    /// The allowed networks, parsed (invalid entries are skipped; `validate`
    /// reports them).
    pub fn networks(&self) -> Vec<IpNet> {
        self.allowed_networks
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "{path}.listen: not an address:port, got {:?}",
                self.listen
            ));
        }
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            errs.push(format!("{path}.hostname: must be a non-empty host name"));
        }
        for (i, n) in self.allowed_networks.iter().enumerate() {
            if n.parse::<IpNet>().is_err() {
                errs.push(format!(
                    "{path}.allowed_networks[{i}]: not a CIDR network, got {n:?}"
                ));
            }
        }
        for (k, v) in [
            ("max_connections", self.max_connections),
            ("max_recipients", self.max_recipients),
            ("max_message_size", self.max_message_size),
            ("max_bad_commands", self.max_bad_commands as usize),
        ] {
            if v == 0 {
                errs.push(format!("{path}.{k}: must be at least 1"));
            }
        }
        if self.max_line_length < 512 {
            errs.push(format!(
                "{path}.max_line_length: must be at least 512 (RFC 5321), got {}",
                self.max_line_length
            ));
        }
        for (k, v) in [
            ("command_timeout", self.command_timeout),
            ("data_timeout", self.data_timeout),
        ] {
            if v.is_zero() {
                errs.push(format!("{path}.{k}: must be longer than 0"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => errs.push(format!("{path}.tls_key: required with tls_cert")),
            (None, Some(_)) => errs.push(format!("{path}.tls_cert: required with tls_key")),
            _ => {}
        }
        if self.require_tls && self.tls_cert.is_none() {
            errs.push(format!(
                "{path}.require_tls: needs tls_cert and tls_key to be set"
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            errs.push(format!("{path}.data_dir: must not be empty"));
        }
    }
}

/// How the relay secures its connection to the next hop.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain SMTP, never STARTTLS.
    None,
    /// STARTTLS when the next hop offers it.
    #[default]
    Opportunistic,
    /// STARTTLS or fail (the message is answered 451).
    Required,
}

/// `[relay]` section: the next hop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RelayConfig {
    /// Next-hop host name or IP address.
    pub host: String,
    /// Next-hop port.
    pub port: u16,
    /// `none`, `opportunistic` or `required`.
    pub tls: RelayTls,
    /// Accept any next-hop certificate (self-signed test hops only).
    pub tls_accept_invalid_certs: bool,
    /// AUTH user name (AUTH is used when both username and password are set).
    pub username: Option<String>,
    /// AUTH password.
    pub password: Option<String>,
    /// Most connections open to the next hop at once; idle ones are reused.
    pub pool_size: u32,
    /// Timeout for each next-hop command.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Name sent in EHLO (default: `server.hostname`).
    pub hello_name: Option<String>,
    /// How often DSNs the next hop did not take at once are sent again.
    #[serde(with = "humantime_serde")]
    pub dsn_retry_interval: Duration,
    /// How long such a DSN is tried before it is given up (and logged).
    #[serde(with = "humantime_serde")]
    pub dsn_lifetime: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            host: "127.0.0.1".into(),
            port: 2526,
            tls: RelayTls::Opportunistic,
            tls_accept_invalid_certs: false,
            username: None,
            password: None,
            pool_size: 8,
            timeout: Duration::from_secs(60),
            hello_name: None,
            dsn_retry_interval: Duration::from_secs(300),
            dsn_lifetime: Duration::from_secs(5 * 86400),
        }
    }
}

impl RelayConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if self.host.is_empty() {
            errs.push(format!("{path}.host: must not be empty"));
        }
        if self.port == 0 {
            errs.push(format!("{path}.port: must not be 0"));
        }
        if self.pool_size == 0 {
            errs.push(format!("{path}.pool_size: must be at least 1"));
        }
        if self.timeout.is_zero() {
            errs.push(format!("{path}.timeout: must be longer than 0"));
        }
        if self.username.is_some() != self.password.is_some() {
            errs.push(format!("{path}.username/password: set both or neither"));
        }
        if self.dsn_retry_interval.is_zero() {
            errs.push(format!("{path}.dsn_retry_interval: must be longer than 0"));
        }
    }
}

/// `[metrics]` section: the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// Listener address (must be loopback).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9325".into(),
        }
    }
}

impl MetricsConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        match self.listen.parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() => errs.push(format!(
                "{path}.listen: must be a loopback address, got {}",
                self.listen
            )),
            Ok(_) => {}
            Err(_) => errs.push(format!(
                "{path}.listen: not an address:port, got {:?}",
                self.listen
            )),
        }
    }
}

/// `[log]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax (`info`, `misdirect=debug`, ...);
    /// the `RUST_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl LogConfig {
    pub fn validate(&self, path: &str, errs: &mut Vec<String>) {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            errs.push(format!(
                "{path}.level: not a valid log filter, got {:?}",
                self.level
            ));
        }
    }
}
