//! Relaying to the next hop with lettre's pooled async SMTP transport.
//!
//! The envelope goes out unchanged. The common case is one pooled
//! `send_raw`. When the next hop refuses permanently and there is more than
//! one recipient, the transaction is replayed on a fresh connection one
//! command at a time to learn which recipients it refuses: the accepted ones
//! get the message, the refused ones are reported for a DSN. Nothing was
//! delivered by the first attempt (lettre stops before DATA on a refused
//! RCPT, and a refused DATA delivers nothing), so nothing is sent twice.

use std::error::Error as _;
use std::time::Duration;

use lettre::address::Envelope as LettreEnvelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use lettre::transport::smtp::{Error as SmtpError, PoolConfig};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::server::RelayTls;
use crate::config::RelayConfig;
use crate::envelope::Envelope;

/// Why the relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay: bad address {0:?}")]
    Address(String),
    #[error("relay TLS: {0}")]
    Tls(String),
}

/// A recipient the next hop refused permanently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptFailure {
    pub address: String,
    pub code: u16,
    pub text: String,
}

/// What the next hop did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Accepted for every recipient; the next hop's reply.
    Delivered { reply: String },
    /// Accepted for some recipients, refused permanently for the others.
    Partial {
        reply: String,
        rejected: Vec<RcptFailure>,
    },
    /// Refused permanently for every recipient.
    Rejected { code: u16, text: String },
    /// Not delivered now: unreachable, 4xx, TLS failure, timeout.
    Deferred { reason: String },
}

/// The next hop.
#[derive(Clone)]
pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    tls: Tls,
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

/// Split a reverse/forward path into a lettre address without lettre's
/// stricter syntax checks (the SMTP parser already accepted it).
fn to_address(a: &str) -> Result<Address, RelayError> {
    let (user, domain) = a
        .rsplit_once('@')
        .ok_or_else(|| RelayError::Address(a.to_string()))?;
    if user.is_empty() || domain.is_empty() {
        return Err(RelayError::Address(a.to_string()));
    }
    Ok(Address::new_dangerous(user, domain))
}

/// True when `a` can be relayed (used at MAIL/RCPT time).
pub fn relayable_address(a: &str) -> bool {
    to_address(a).is_ok() && !a.bytes().any(|b| b <= b' ' || b == b'<' || b == b'>')
}

fn code_of(e: &SmtpError) -> Option<u16> {
    e.status().and_then(|c| c.to_string().parse().ok())
}

fn text_of(e: &SmtpError) -> String {
    match e.source() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

fn lettre_envelope(env: &Envelope, rcpts: &[String]) -> Result<LettreEnvelope, RelayError> {
    let from = if env.mail_from.is_empty() {
        None
    } else {
        Some(to_address(&env.mail_from)?)
    };
    let to = rcpts
        .iter()
        .map(|r| to_address(r))
        .collect::<Result<Vec<_>, _>>()?;
    LettreEnvelope::new(from, to).map_err(|e| RelayError::Address(e.to_string()))
}

/// lettre appends `CRLF.CRLF` itself; drop the message's own final CRLF so
/// the next hop receives exactly the bytes given.
fn wire_body(msg: &[u8]) -> &[u8] {
    msg.strip_suffix(b"\r\n").unwrap_or(msg)
}

impl Relay {
    /// Build the pooled transport (connects lazily).
    pub fn new(cfg: &RelayConfig, hostname: &str) -> Result<Relay, RelayError> {
        let hello = ClientId::Domain(cfg.hello_name.clone().unwrap_or_else(|| hostname.into()));
        let params = || {
            TlsParameters::builder(cfg.host.clone())
                .dangerous_accept_invalid_certs(cfg.tls_accept_invalid_certs)
                .dangerous_accept_invalid_hostnames(cfg.tls_accept_invalid_certs)
                .build_rustls()
                .map_err(|e| RelayError::Tls(e.to_string()))
        };
        let tls = match cfg.tls {
            RelayTls::None => Tls::None,
            RelayTls::Opportunistic => Tls::Opportunistic(params()?),
            RelayTls::Required => Tls::Required(params()?),
        };
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.clone())),
            _ => None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port)
            .hello_name(hello.clone())
            .timeout(Some(cfg.timeout))
            .tls(tls.clone())
            .pool_config(PoolConfig::new().max_size(cfg.pool_size));
        if let Some(c) = &credentials {
            b = b.credentials(c.clone());
        }
        Ok(Relay {
            transport: b.build(),
            host: cfg.host.clone(),
            port: cfg.port,
            timeout: cfg.timeout,
            hello,
            tls,
            credentials,
        })
    }

    /// Relay `msg` to every envelope recipient.
    pub async fn send_raw(&self, env: &Envelope, msg: &[u8]) -> RelayOutcome {
        let lenv = match lettre_envelope(env, &env.rcpt_to) {
            Ok(e) => e,
            Err(e) => {
                return RelayOutcome::Rejected {
                    code: 550,
                    text: e.to_string(),
                }
            }
        };
        match self.transport.send_raw(&lenv, wire_body(msg)).await {
            Ok(resp) => RelayOutcome::Delivered {
                reply: format!(
                    "{} {}",
                    resp.code(),
                    resp.message().collect::<Vec<_>>().join(" ")
                ),
            },
            Err(e) if e.is_permanent() && env.rcpt_to.len() > 1 => self.send_each(env, msg).await,
            Err(e) if e.is_permanent() => RelayOutcome::Rejected {
                code: code_of(&e).unwrap_or(550),
                text: text_of(&e),
            },
            Err(e) => RelayOutcome::Deferred {
                reason: e.to_string(),
            },
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let wrapper = None;
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        match &self.tls {
            Tls::Opportunistic(p) if conn.can_starttls() => {
                conn.starttls(p.clone(), &self.hello).await?
            }
            Tls::Required(p) => conn.starttls(p.clone(), &self.hello).await?,
            _ => {}
        }
        if let Some(c) = &self.credentials {
            conn.auth(
                &[
                    lettre::transport::smtp::authentication::Mechanism::Plain,
                    lettre::transport::smtp::authentication::Mechanism::Login,
                ],
                c,
            )
            .await?;
        }
        Ok(conn)
    }

    /// One command at a time, to find out which recipients are refused.
    async fn send_each(&self, env: &Envelope, msg: &[u8]) -> RelayOutcome {
        let deferred = |e: SmtpError| RelayOutcome::Deferred {
            reason: e.to_string(),
        };
        let mut conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => return deferred(e),
        };
        let from = match env.mail_from.is_empty() {
            true => None,
            false => match to_address(&env.mail_from) {
                Ok(a) => Some(a),
                Err(e) => {
                    return RelayOutcome::Rejected {
                        code: 550,
                        text: e.to_string(),
                    }
                }
            },
        };
        let mut params = Vec::new();
        if !msg.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        if env.smtputf8 {
            params.push(MailParameter::SmtpUtfEight);
        }
        let outcome = async {
            conn.command(Mail::new(from, params)).await?;
            let mut rejected = Vec::new();
            let mut accepted = 0usize;
            for r in &env.rcpt_to {
                let addr = match to_address(r) {
                    Ok(a) => a,
                    Err(e) => {
                        rejected.push(RcptFailure {
                            address: r.clone(),
                            code: 550,
                            text: e.to_string(),
                        });
                        continue;
                    }
                };
                match conn.command(Rcpt::new(addr, vec![])).await {
                    Ok(_) => accepted += 1,
                    Err(e) if e.is_permanent() => rejected.push(RcptFailure {
                        address: r.clone(),
                        code: code_of(&e).unwrap_or(550),
                        text: text_of(&e),
                    }),
                    Err(e) => return Err(e),
                }
            }
            if accepted == 0 {
                let first = rejected.first().cloned();
                return Ok(match first {
                    Some(f) => RelayOutcome::Rejected {
                        code: f.code,
                        text: f.text,
                    },
                    None => RelayOutcome::Rejected {
                        code: 554,
                        text: "no valid recipients".into(),
                    },
                });
            }
            conn.command(Data).await?;
            let resp = conn.message(wire_body(msg)).await?;
            let reply = format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            );
            Ok(if rejected.is_empty() {
                RelayOutcome::Delivered { reply }
            } else {
                RelayOutcome::Partial { reply, rejected }
            })
        }
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) if e.is_permanent() => RelayOutcome::Rejected {
                code: code_of(&e).unwrap_or(550),
                text: text_of(&e),
            },
            Err(e) => deferred(e),
        };
        if conn.quit().await.is_err() {
            conn.abort().await;
        }
        outcome
    }
}
