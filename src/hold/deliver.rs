//! [`Deliver`] over SMTP to one next hop with lettre (no TLS: a next hop on
//! a trusted network, as for the relay itself). The message arrives at the
//! next hop byte for byte as given.

use std::str::FromStr;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{Deliver, DeliverError, DeliverFuture};
use crate::envelope::Envelope;

/// Sends to `host:port` over plain SMTP.
#[derive(Clone)]
pub struct SmtpDeliver {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpDeliver {
    pub fn new(host: &str, port: u16) -> Self {
        SmtpDeliver {
            transport: AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .build(),
        }
    }

    /// From `host:port`.
    pub fn from_host_port(hp: &str) -> Result<Self, String> {
        let (h, p) = hp
            .rsplit_once(':')
            .ok_or_else(|| format!("expected host:port, got {hp:?}"))?;
        let p: u16 = p.parse().map_err(|_| format!("bad port in {hp:?}"))?;
        Ok(SmtpDeliver::new(h.trim_matches(['[', ']']), p))
    }
}

fn addr(a: &str) -> Result<lettre::Address, DeliverError> {
    lettre::Address::from_str(a.trim_matches(['<', '>'])).map_err(|e| DeliverError {
        permanent: true,
        message: format!("bad address {a:?}: {e}"),
    })
}

impl Deliver for SmtpDeliver {
    fn send<'a>(&'a self, envelope: &'a Envelope, raw: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let from = if envelope.mail_from.is_empty() {
                None
            } else {
                Some(addr(&envelope.mail_from)?)
            };
            let to = envelope
                .rcpt_to
                .iter()
                .map(|r| addr(r))
                .collect::<Result<Vec<_>, _>>()?;
            let env = lettre::address::Envelope::new(from, to).map_err(|e| DeliverError {
                permanent: true,
                message: e.to_string(),
            })?;
            // lettre always ends DATA with "\r\n.\r\n"; a message that
            // already ends in CRLF would gain an empty line.
            let body = raw.strip_suffix(b"\r\n").unwrap_or(raw);
            self.transport
                .send_raw(&env, body)
                .await
                .map(|_| ())
                .map_err(|e| DeliverError {
                    permanent: e.is_permanent(),
                    message: e.to_string(),
                })
        })
    }
}
