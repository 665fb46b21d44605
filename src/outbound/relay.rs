//! Relaying to the next hop over lettre's async SMTP client connections,
//! pooled here.
//!
//! The envelope goes out unchanged; every RCPT is answered on its own, so a
//! next hop that refuses some recipients still gets the message for the
//! others, and the refused ones are reported for a DSN. Nothing is sent twice.
//!
//! Why not lettre's `AsyncSmtpTransport` pool: its sockets keep Nagle's
//! algorithm on, and lettre writes the message and the final `CRLF.CRLF` in
//! two writes, so every message waited for the next hop's delayed ACK
//! (about 40 ms each on Linux). Connections made here set `TCP_NODELAY`,
//! then lettre's `AsyncSmtpConnection` does EHLO, STARTTLS, AUTH and the
//! commands.
//!
//! When the next hop offers PIPELINING (RFC 2920; lettre does not record it,
//! so a second EHLO after STARTTLS and before AUTH asks), MAIL, every RCPT
//! and DATA go out in one write and their replies are read afterwards. The
//! message is dot-stuffed here and written together with its final
//! `CRLF.CRLF` in one write (lettre writes them separately); a message that
//! is not UTF-8 goes through lettre's `message` instead. After a failed
//! transaction on a pipelining connection the connection is closed without
//! QUIT, as replies to the rest of the group may still be unread.

use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as SmtpError;
use tokio::sync::Semaphore;

use crate::config::server::RelayTls;
use crate::config::RelayConfig;
use crate::envelope::Envelope;

/// Idle pooled connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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

/// One failed step of a transaction.
#[derive(Debug)]
enum StepError {
    Smtp(SmtpError),
    Connect(std::io::Error),
    Timeout,
}

impl StepError {
    /// No reply was read: the connection itself failed.
    fn is_network(&self) -> bool {
        match self {
            StepError::Smtp(e) => e.status().is_none(),
            StepError::Connect(_) | StepError::Timeout => true,
        }
    }

    fn code(&self) -> Option<u16> {
        match self {
            StepError::Smtp(e) => e.status().and_then(|c| c.to_string().parse().ok()),
            StepError::Connect(_) | StepError::Timeout => None,
        }
    }

    fn text(&self) -> String {
        match self {
            StepError::Smtp(e) => match e.source() {
                Some(s) => s.to_string(),
                None => e.to_string(),
            },
            StepError::Connect(e) => format!("connect: {e}"),
            StepError::Timeout => "timed out".into(),
        }
    }

    fn outcome(&self) -> RelayOutcome {
        match self.code() {
            Some(code) if (500..600).contains(&code) => RelayOutcome::Rejected {
                code,
                text: self.text(),
            },
            Some(code) => RelayOutcome::Deferred {
                reason: format!("{code} {}", self.text()),
            },
            None => RelayOutcome::Deferred {
                reason: self.text(),
            },
        }
    }
}

/// A connection to the next hop and what it offers beyond lettre's view.
struct Conn {
    conn: AsyncSmtpConnection,
    pipelining: bool,
}

/// What to do with a connection after a transaction.
enum After {
    /// Back to the pool.
    Reuse,
    /// QUIT and close.
    Quit,
    /// Close without a word.
    Drop,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Inner {
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    tls: Tls,
    credentials: Option<Credentials>,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
}

/// The next hop: at most `pool_size` connections, idle ones reused.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .finish()
    }
}

/// Check a reverse/forward path as the relay sends it: a user part and a
/// domain around the last `@`, without lettre's stricter syntax checks (the
/// SMTP parser already accepted it), and no space, control character
/// (CR, LF) or angle bracket, since the path goes out as it is, in
/// `MAIL FROM:<..>` / `RCPT TO:<..>`: nothing can end the command early.
fn to_address(a: &str) -> Result<&str, RelayError> {
    match a.rsplit_once('@') {
        Some((user, domain))
            if !user.is_empty()
                && !domain.is_empty()
                && !a
                    .bytes()
                    .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f) =>
        {
            Ok(a)
        }
        _ => Err(RelayError::Address(a.to_string())),
    }
}

/// True when `a` can be relayed (used at MAIL/RCPT time).
pub fn relayable_address(a: &str) -> bool {
    to_address(a).is_ok()
}

/// `RCPT TO:<rcpt>` CRLF, as lettre's `Rcpt` writes it without parameters.
fn push_rcpt(cmds: &mut String, rcpt: &str) {
    cmds.push_str("RCPT TO:<");
    cmds.push_str(rcpt);
    cmds.push_str(">\r\n");
}

/// lettre appends `CRLF.CRLF` itself; drop the message's own final CRLF so
/// the next hop receives exactly the bytes given.
fn wire_body(msg: &[u8]) -> &[u8] {
    msg.strip_suffix(b"\r\n").unwrap_or(msg)
}

/// Text lettre writes as it is (`command` sends `to_string()`): used to
/// put several commands, or a whole message, into one write.
struct Raw<'a>(&'a str);

impl std::fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The DATA payload: `msg` (see [`wire_body`]) dot-stuffed as lettre does it
/// (a `.` at the start of the message or after CRLF is doubled), then
/// `CRLF.CRLF`. Written straight into the one string lettre's `command`
/// makes of it, so the message is copied once.
struct Stuffed<'a>(&'a str);

impl std::fmt::Display for Stuffed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self.0;
        let b = msg.as_bytes();
        let mut last = 0;
        if b.first() == Some(&b'.') {
            f.write_str(".")?;
        }
        for hit in memchr::memmem::find_iter(b, b"\r\n.") {
            // `hit + 2` is the ASCII dot, so a char boundary.
            f.write_str(&msg[last..hit + 2])?;
            f.write_str(".")?;
            last = hit + 2;
        }
        f.write_str(&msg[last..])?;
        f.write_str("\r\n.\r\n")
    }
}

/// True when an EHLO reply offers PIPELINING.
fn offers_pipelining(r: &Response) -> bool {
    r.message().skip(1).any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("PIPELINING"))
    })
}

fn reply_text(r: &Response) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    // Writing to a String cannot fail.
    let _ = write!(s, "{} ", r.code());
    for (i, line) in r.message().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(line);
    }
    s
}

impl Relay {
    /// Set up the next hop (connections are made on first use).
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
        Ok(Relay {
            inner: Arc::new(Inner {
                host: cfg.host.clone(),
                port: cfg.port,
                timeout: cfg.timeout,
                hello,
                tls,
                credentials,
                idle: Mutex::new(Vec::new()),
                slots: Semaphore::new(cfg.pool_size.max(1) as usize),
            }),
        })
    }

    async fn step<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, SmtpError>>,
    ) -> Result<T, StepError> {
        match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StepError::Smtp(e)),
            Err(_) => Err(StepError::Timeout),
        }
    }

    async fn connect(&self) -> Result<Conn, StepError> {
        let i = &self.inner;
        let tcp = match tokio::time::timeout(
            i.timeout,
            tokio::net::TcpStream::connect((i.host.as_str(), i.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(StepError::Connect(e)),
            Err(_) => return Err(StepError::Timeout),
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed on next-hop socket.");
        }
        let mut conn = self
            .step(AsyncSmtpConnection::connect_with_transport(
                Box::new(tcp),
                &i.hello,
            ))
            .await?;
        match &i.tls {
            Tls::Opportunistic(p) if conn.can_starttls() => {
                self.step(conn.starttls(p.clone(), &i.hello)).await?
            }
            Tls::Required(p) => self.step(conn.starttls(p.clone(), &i.hello)).await?,
            _ => {}
        }
        // lettre keeps no record of PIPELINING: ask again (before AUTH, as
        // EHLO resets the session).
        let ehlo = self.step(conn.command(Ehlo::new(i.hello.clone()))).await?;
        let pipelining = offers_pipelining(&ehlo);
        if let Some(c) = &i.credentials {
            self.step(conn.auth(&[Mechanism::Plain, Mechanism::Login], c))
                .await?;
        }
        Ok(Conn { conn, pipelining })
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = match self.inner.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < IDLE_TIMEOUT && !i.conn.conn.has_broken() {
                return Some(i.conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        if conn.conn.has_broken() {
            return;
        }
        let mut idle = match self.inner.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Relay `msg` to every envelope recipient.
    pub async fn send_raw(&self, env: &Envelope, msg: &[u8]) -> RelayOutcome {
        let Ok(_slot) = self.inner.slots.acquire().await else {
            return RelayOutcome::Deferred {
                reason: "relay closed".into(),
            };
        };
        let from = if env.mail_from.is_empty() {
            None
        } else {
            match to_address(&env.mail_from) {
                Ok(a) => Some(a),
                Err(e) => {
                    return RelayOutcome::Rejected {
                        code: 550,
                        text: e.to_string(),
                    }
                }
            }
        };
        // A pooled connection the next hop has since closed fails on its
        // first command; then one fresh connection is tried.
        let mut reused = self.take_idle();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(c) => c,
                // Boxed: a new connection is rare (pooled), and its future
                // (TLS, EHLO, AUTH) would make every send's future large.
                None => match Box::pin(self.connect()).await {
                    Ok(c) => c,
                    Err(e) => return e.outcome(),
                },
            };
            match self.transaction(&mut conn, from, env, msg).await {
                Ok((outcome, after)) => {
                    match after {
                        After::Reuse => self.put_idle(conn),
                        After::Quit => Box::pin(self.quit(conn)).await,
                        // Mid-DATA: QUIT would be read as message text.
                        After::Drop => drop(conn),
                    }
                    return outcome;
                }
                Err((e, first)) => {
                    if conn.pipelining {
                        // Replies to pipelined commands may still be on
                        // their way (or a non-conforming next hop may have
                        // said 354): a QUIT now could be misread. Just close.
                        drop(conn);
                    } else {
                        Box::pin(self.quit(conn)).await;
                    }
                    let stale = first && (e.is_network() || e.code() == Some(421));
                    if was_reused && stale {
                        continue;
                    }
                    return e.outcome();
                }
            }
        }
    }

    /// Send QUIT (bounded by the relay timeout) and close.
    async fn quit(&self, mut conn: Conn) {
        let _ = tokio::time::timeout(self.inner.timeout, conn.conn.abort()).await;
    }

    /// One transaction. Err carries whether it failed on the first command.
    async fn transaction(
        &self,
        c: &mut Conn,
        from: Option<&str>,
        env: &Envelope,
        msg: &[u8],
    ) -> Result<(RelayOutcome, After), (StepError, bool)> {
        let conn = &mut c.conn;
        // MAIL as lettre's `Mail` writes it, parameters in the same order.
        let mut cmds = String::with_capacity(64 + 48 * env.rcpt_to.len());
        cmds.push_str("MAIL FROM:<");
        cmds.push_str(from.unwrap_or(""));
        cmds.push('>');
        if !msg.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Ok((
                    RelayOutcome::Rejected {
                        code: 554,
                        text: "5.6.3 next hop does not accept 8-bit data (no 8BITMIME)".into(),
                    },
                    After::Reuse,
                ));
            }
            cmds.push_str(" BODY=8BITMIME");
        }
        let utf8 =
            env.smtputf8 || !env.mail_from.is_ascii() || env.rcpt_to.iter().any(|r| !r.is_ascii());
        if utf8 {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Ok((
                    RelayOutcome::Rejected {
                        code: 553,
                        text: "5.6.7 next hop does not accept UTF-8 addresses (no SMTPUTF8)".into(),
                    },
                    After::Reuse,
                ));
            }
            cmds.push_str(" SMTPUTF8");
        }
        let mut rejected = Vec::new();
        let mut rcpts = Vec::with_capacity(env.rcpt_to.len());
        for r in &env.rcpt_to {
            match to_address(r) {
                Ok(a) => rcpts.push((r, a)),
                Err(e) => rejected.push(RcptFailure {
                    address: r.clone(),
                    code: 550,
                    text: e.to_string(),
                }),
            }
        }
        cmds.push_str("\r\n");
        // With PIPELINING, MAIL, the RCPTs and DATA (when there is a
        // recipient to send it for) go out in one write.
        let pipelined = c.pipelining;
        let data_sent = pipelined && !rcpts.is_empty();
        if pipelined {
            for (_, a) in &rcpts {
                push_rcpt(&mut cmds, a);
            }
            if data_sent {
                cmds.push_str("DATA\r\n");
            }
        }
        // A failed MAIL leaves unread replies behind when pipelined: the
        // caller aborts the connection on any error.
        self.step(conn.command(Raw(&cmds)))
            .await
            .map_err(|e| (e, true))?;
        let mut accepted = 0usize;
        for (r, a) in rcpts {
            let reply = if pipelined {
                self.step(conn.read_response()).await
            } else {
                let mut cmd = String::with_capacity(a.len() + 12);
                push_rcpt(&mut cmd, a);
                self.step(conn.command(Raw(&cmd))).await
            };
            match reply {
                Ok(_) => accepted += 1,
                Err(e) if e.code().is_some_and(|c| (500..600).contains(&c)) => {
                    rejected.push(RcptFailure {
                        address: r.clone(),
                        code: e.code().unwrap_or(550),
                        text: e.text(),
                    })
                }
                // A 4xx for any recipient defers the whole message: the
                // upstream retries it all and nothing was delivered yet.
                Err(e) => return Err((e, false)),
            }
        }
        if accepted == 0 {
            let outcome = match rejected.into_iter().next() {
                Some(f) => RelayOutcome::Rejected {
                    code: f.code,
                    text: f.text,
                },
                None => RelayOutcome::Rejected {
                    code: 554,
                    text: "5.5.1 no valid recipients".into(),
                },
            };
            if data_sent {
                // DATA with no recipient must be refused; a next hop that
                // says 354 anyway waits for a message: drop the connection.
                // No reply at all (timeout, network error): the
                // connection is out of step, so it is dropped too.
                match self.step(conn.read_response()).await {
                    Err(e) if e.code().is_some() => {}
                    _ => return Ok((outcome, After::Drop)),
                }
            }
            let after = match self.step(conn.command(Rset)).await {
                Ok(_) => After::Reuse,
                Err(_) => After::Quit,
            };
            return Ok((outcome, after));
        }
        let data = if data_sent {
            self.step(conn.read_response()).await
        } else {
            self.step(conn.command(Data)).await
        };
        data.map_err(|e| (e, false))?;
        let body = wire_body(msg);
        let resp = match std::str::from_utf8(body) {
            Ok(text) => self.step(conn.command(Stuffed(text))).await,
            Err(_) => self.step(conn.message(body)).await,
        }
        .map_err(|e| (e, false))?;
        let reply = reply_text(&resp);
        Ok((
            if rejected.is_empty() {
                RelayOutcome::Delivered { reply }
            } else {
                RelayOutcome::Partial { reply, rejected }
            },
            After::Reuse,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(msg: &str) -> String {
        Stuffed(msg).to_string()
    }

    /// A path goes into MAIL/RCPT as it is, so nothing in it may end the
    /// command or the path early.
    #[test]
    fn paths_that_could_inject_commands_are_not_relayable() {
        for ok in [
            "a@b.test",
            "\"odd local\"@b.test".replace(' ', "_").as_str(),
            "a+b@c.test",
        ] {
            assert!(relayable_address(ok), "{ok}");
        }
        for bad in [
            "a@b.test\r\nRCPT TO:<c@d.test>",
            "a@b.test>",
            "<a@b.test",
            "a b@c.test",
            "a@b.test\n",
            "a\u{7f}@b.test",
            "@b.test",
            "a@",
            "ab.test",
        ] {
            assert!(!relayable_address(bad), "{bad:?}");
            assert!(to_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn data_payload_stuffs_dots_at_line_starts_only() {
        assert_eq!(stuffed(""), "\r\n.\r\n");
        assert_eq!(stuffed(".a"), "..a\r\n.\r\n");
        assert_eq!(
            stuffed("x\r\n.\r\n..y\r\nz.w\r\n."),
            "x\r\n..\r\n...y\r\nz.w\r\n..\r\n.\r\n"
        );
        // Only CRLF starts a line (as lettre stuffs): bare LF and CR do not.
        assert_eq!(stuffed("a\n.b\r.c"), "a\n.b\r.c\r\n.\r\n");
        assert_eq!(
            stuffed("caf\u{e9}\r\n.\u{20ac}"),
            "caf\u{e9}\r\n..\u{20ac}\r\n.\r\n"
        );
    }
}
