//! One SMTP session: the state machine over `smtp-proto`'s parser.
//!
//! Commands are read one line at a time from a buffered stream, so pipelined
//! batches work; replies are buffered and flushed whenever no further input
//! is already waiting. STARTTLS swaps the stream and drops anything the
//! client pipelined after it (RFC 3207).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{
    Error as ProtoError, Request, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS,
    MAIL_SMTPUTF8,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, info};

use crate::envelope::Envelope;
use crate::outbound::relay::relayable_address;
use crate::pipeline::{Pipeline, TxContext};
use crate::shutdown::Shutdown;
use crate::smtp::data::DataDecoder;
use crate::smtp::reply::{write_line, Reply};

/// Any byte stream a session can run on (TCP, TLS over TCP, test pipes).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = BufReader<Box<dyn Io>>;

struct Tx {
    mail_from: String,
    rcpt_to: Vec<String>,
    body_8bit: bool,
    smtputf8: bool,
}

enum Line {
    Ok(Vec<u8>),
    TooLong,
    Eof,
    Timeout,
    Shutdown,
    Io(std::io::Error),
}

enum Next {
    Reply(Reply),
    /// A fixed `250` reply (enhanced code, text): written without building
    /// a [`Reply`].
    Ok(&'static str, &'static str),
    Data,
    StartTls,
    Quit,
}

/// Session state.
pub struct Session {
    p: Arc<Pipeline>,
    peer: SocketAddr,
    shutdown: Shutdown,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    tx: Option<Tx>,
    bad: u32,
    out: Vec<u8>,
    /// The command line being read, kept between commands so that reading
    /// one does not allocate.
    line: Vec<u8>,
}

fn r(code: u16, enh: &'static str, text: &'static str) -> Reply {
    Reply::new(code, enh, text)
}

impl Session {
    pub fn new(p: Arc<Pipeline>, peer: SocketAddr, shutdown: Shutdown) -> Session {
        Session {
            p,
            peer,
            shutdown,
            helo: None,
            esmtp: false,
            tls: false,
            tx: None,
            bad: 0,
            out: Vec::with_capacity(512),
            line: Vec::with_capacity(128),
        }
    }

    /// Run the session to its end on `stream`.
    pub async fn run(mut self, stream: Box<dyn Io>) {
        let mut io: Stream = BufReader::with_capacity(super::READ_BUFFER, stream);
        let greeting = format!("{} ESMTP misdirectd", self.p.config().server.hostname);
        self.push(&Reply::new(220, "", greeting));
        if let Err(e) = self.flush(&mut io).await {
            debug!(error = %e, "Client gone before greeting.");
            return;
        }
        loop {
            if io.buffer().is_empty() {
                if let Err(e) = self.flush(&mut io).await {
                    debug!(error = %e, "Write failed; session ends.");
                    return;
                }
            }
            let line = match self.read_line(&mut io).await {
                Line::Ok(l) => l,
                Line::TooLong => {
                    self.bad_command(r(500, "5.5.2", "Line too long"));
                    if self.too_many_errors(&mut io).await {
                        return;
                    }
                    continue;
                }
                Line::Eof => return,
                Line::Io(e) => {
                    debug!(error = %e, "Read failed; session ends.");
                    return;
                }
                Line::Timeout => {
                    self.close_with(&mut io, r(421, "4.4.2", "Timeout, closing connection"))
                        .await;
                    return;
                }
                Line::Shutdown => {
                    self.close_with(&mut io, r(421, "4.3.2", "Service shutting down"))
                        .await;
                    return;
                }
            };
            let next = self.command(&line);
            self.line = line;
            match next {
                Next::Reply(reply) => {
                    if reply.is_client_error() {
                        self.bad_command(reply);
                        if self.too_many_errors(&mut io).await {
                            return;
                        }
                    } else {
                        self.push(&reply);
                    }
                }
                Next::Ok(enhanced, text) => write_line(&mut self.out, 250, b' ', enhanced, text),
                Next::Quit => {
                    self.close_with(&mut io, r(221, "2.0.0", "Bye")).await;
                    return;
                }
                Next::Data => {
                    if !self.data(&mut io).await {
                        return;
                    }
                }
                Next::StartTls => {
                    let Some(cfg) = self.p.tls().cloned() else {
                        self.push(&r(454, "4.7.0", "TLS not available"));
                        continue;
                    };
                    self.push(&r(220, "2.0.0", "Ready to start TLS"));
                    if self.flush(&mut io).await.is_err() {
                        return;
                    }
                    if !io.buffer().is_empty() {
                        debug!("Discarding input pipelined after STARTTLS.");
                    }
                    let plain = io.into_inner();
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let timeout = self.p.config().server.command_timeout;
                    let tls = match tokio::time::timeout(timeout, acceptor.accept(plain)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            info!(error = %e, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            info!("TLS handshake timed out.");
                            return;
                        }
                    };
                    io = BufReader::with_capacity(super::READ_BUFFER, Box::new(tls));
                    self.tls = true;
                    self.helo = None;
                    self.esmtp = false;
                    self.tx = None;
                }
            }
        }
    }

    fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    async fn flush(&mut self, io: &mut Stream) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let w = io.get_mut();
        w.write_all(&self.out).await?;
        w.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn close_with(&mut self, io: &mut Stream, reply: Reply) {
        self.push(&reply);
        if self.flush(io).await.is_ok() {
            // Orderly close; a failure only means the client is gone.
            if io.get_mut().shutdown().await.is_err() {
                debug!("Client closed first.");
            }
        }
    }

    fn bad_command(&mut self, reply: Reply) {
        self.bad += 1;
        self.push(&reply);
    }

    /// After a bad command: close with 421 once the limit is passed.
    async fn too_many_errors(&mut self, io: &mut Stream) -> bool {
        if self.bad > self.p.config().server.max_bad_commands {
            info!(bad_commands = self.bad, "Too many bad commands; closing.");
            self.close_with(io, r(421, "4.7.0", "Too many errors, closing connection"))
                .await;
            true
        } else {
            false
        }
    }

    async fn read_line(&mut self, io: &mut Stream) -> Line {
        let max = self.p.config().server.max_line_length;
        let timeout = self.p.config().server.command_timeout;
        let mut shutdown = self.shutdown.clone();
        // Commands already buffered (pipelined) are served even during
        // shutdown; only waiting for new input is interrupted.
        let buffered = !io.buffer().is_empty();
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let read = async {
            let mut too_long = false;
            loop {
                let buf = match io.fill_buf().await {
                    Ok(b) => b,
                    Err(e) => return Line::Io(e),
                };
                if buf.is_empty() {
                    return Line::Eof;
                }
                let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(p) => (p + 1, true),
                    None => (buf.len(), false),
                };
                if !too_long {
                    if line.len() + take > max {
                        too_long = true;
                        line.clear();
                    } else {
                        line.extend_from_slice(&buf[..take]);
                    }
                }
                io.consume(take);
                if done {
                    return if too_long {
                        Line::TooLong
                    } else {
                        Line::Ok(line)
                    };
                }
            }
        };
        if buffered {
            return match tokio::time::timeout(timeout, read).await {
                Ok(l) => l,
                Err(_) => Line::Timeout,
            };
        }
        tokio::select! {
            res = tokio::time::timeout(timeout, read) => match res {
                Ok(l) => l,
                Err(_) => Line::Timeout,
            },
            _ = shutdown.recv() => Line::Shutdown,
        }
    }

    fn command(&mut self, line: &[u8]) -> Next {
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return Next::Reply(parse_error(e)),
        };
        let cfg = &self.p.config().server;
        match req {
            Request::Ehlo { host } => {
                self.helo = Some(host.to_string());
                self.esmtp = true;
                self.tx = None;
                let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
                    format!("{} Hello {host} [{}]", cfg.hostname, self.peer.ip()).into(),
                    "PIPELINING".into(),
                    format!("SIZE {}", cfg.max_message_size).into(),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "SMTPUTF8".into(),
                ];
                if self.p.tls().is_some() && !self.tls {
                    lines.push("STARTTLS".into());
                }
                Next::Reply(Reply {
                    code: 250,
                    enhanced: "".into(),
                    lines,
                })
            }
            Request::Helo { host } => {
                self.helo = Some(host.to_string());
                self.esmtp = false;
                self.tx = None;
                Next::Reply(Reply::new(250, "", cfg.hostname.clone()))
            }
            Request::Lhlo { .. } => Next::Reply(r(500, "5.5.1", "LHLO is not supported")),
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return Next::Reply(r(503, "5.5.1", "Send EHLO or HELO first"));
                }
                if cfg.require_tls && !self.tls {
                    return Next::Reply(r(530, "5.7.0", "Must issue a STARTTLS command first"));
                }
                if self.tx.is_some() {
                    return Next::Reply(r(503, "5.5.1", "Nested MAIL command"));
                }
                if from.flags & (MAIL_BODY_BINARYMIME | MAIL_REQUIRETLS) != 0 {
                    return Next::Reply(r(555, "5.5.4", "Unsupported parameter"));
                }
                if from.size > cfg.max_message_size {
                    return Next::Reply(r(
                        552,
                        "5.3.4",
                        "Message size exceeds fixed maximum message size",
                    ));
                }
                let addr = from.address.to_string();
                if !addr.is_empty() && !relayable_address(&addr) {
                    return Next::Reply(r(501, "5.1.7", "Bad sender address syntax"));
                }
                self.tx = Some(Tx {
                    mail_from: addr,
                    rcpt_to: Vec::new(),
                    body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
                    smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
                });
                Next::Ok("2.1.0", "Sender OK")
            }
            Request::Rcpt { to } => {
                let max = cfg.max_recipients;
                let Some(tx) = self.tx.as_mut() else {
                    return Next::Reply(r(503, "5.5.1", "Need MAIL command first"));
                };
                if tx.rcpt_to.len() >= max {
                    return Next::Reply(r(452, "4.5.3", "Too many recipients"));
                }
                let addr = to.address.to_string();
                if !relayable_address(&addr) {
                    return Next::Reply(r(501, "5.1.3", "Bad recipient address syntax"));
                }
                tx.rcpt_to.push(addr);
                Next::Ok("2.1.5", "Recipient OK")
            }
            Request::Data => match &self.tx {
                None => Next::Reply(r(503, "5.5.1", "Need MAIL command first")),
                Some(tx) if tx.rcpt_to.is_empty() => {
                    Next::Reply(r(503, "5.5.1", "Need RCPT command first"))
                }
                Some(_) => Next::Data,
            },
            Request::Bdat { .. } => Next::Reply(r(502, "5.5.1", "BDAT is not supported")),
            Request::Rset => {
                self.tx = None;
                Next::Ok("2.0.0", "OK")
            }
            Request::Noop { .. } => Next::Ok("2.0.0", "OK"),
            Request::Vrfy { .. } => Next::Reply(r(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Quit => Next::Quit,
            Request::StartTls => {
                if self.tls {
                    Next::Reply(r(503, "5.5.1", "Already in TLS"))
                } else if self.p.tls().is_none() {
                    Next::Reply(r(502, "5.5.1", "STARTTLS is not offered"))
                } else if self.tx.is_some() {
                    Next::Reply(r(503, "5.5.1", "STARTTLS not allowed during a transaction"))
                } else {
                    Next::StartTls
                }
            }
            Request::Auth { .. } => Next::Reply(r(502, "5.5.1", "AUTH is not offered")),
            Request::Expn { .. }
            | Request::Help { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Next::Reply(r(502, "5.5.1", "Command not implemented")),
        }
    }

    /// DATA: returns false when the session must end.
    async fn data(&mut self, io: &mut Stream) -> bool {
        self.push(&r(354, "", "End data with <CR><LF>.<CR><LF>"));
        if self.flush(io).await.is_err() {
            return false;
        }
        let (max_size, data_timeout) = {
            let c = &self.p.config().server;
            (c.max_message_size, c.data_timeout)
        };
        let mut dec = DataDecoder::new(max_size);
        loop {
            let buf = match tokio::time::timeout(data_timeout, io.fill_buf()).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    debug!(error = %e, "Read failed during DATA.");
                    return false;
                }
                Err(_) => {
                    self.close_with(io, r(421, "4.4.2", "Timeout, closing connection"))
                        .await;
                    return false;
                }
            };
            if buf.is_empty() {
                debug!("Client closed during DATA; transaction dropped.");
                return false;
            }
            let (n, done) = dec.feed(buf);
            io.consume(n);
            if done {
                break;
            }
        }
        let Some(tx) = self.tx.take() else {
            return true;
        };
        if dec.overflowed() {
            self.push(&r(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
            return true;
        }
        if dec.bare_dot() {
            info!("Message with a dot after a bare CR or LF refused.");
            self.push(&r(
                550,
                "5.6.0",
                "Bare CR or LF followed by '.' is not accepted; use CRLF line endings",
            ));
            return true;
        }
        let env = Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            body_8bit: tx.body_8bit,
            smtputf8: tx.smtputf8,
        };
        let ctx = TxContext {
            peer: self.peer.ip().to_canonical(),
            helo: self.helo.clone().unwrap_or_default(),
            protocol: match (self.esmtp, self.tls) {
                (true, true) => "ESMTPS",
                (true, false) => "ESMTP",
                (false, _) => "SMTP",
            },
        };
        let reply = self.p.process(&ctx, env, dec.into_message()).await;
        self.push(&reply);
        true
    }
}

fn parse_error(e: ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => r(500, "5.5.2", "Syntax error, command unrecognized"),
        ProtoError::InvalidSenderAddress => r(501, "5.1.7", "Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => r(501, "5.1.3", "Bad recipient address syntax"),
        ProtoError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter {param}"))
        }
        ProtoError::UnsupportedParameter { .. } => r(555, "5.5.4", "Unsupported parameter"),
        ProtoError::ResponseTooLong => r(500, "5.5.2", "Line too long"),
        ProtoError::NeedsMoreData { .. } => r(500, "5.5.2", "Syntax error, incomplete command"),
        ProtoError::InvalidResponse { .. } => r(500, "5.5.2", "Syntax error"),
    }
}

/// Write a one-line reply and close (used before a session starts: 554 for
/// a refused network, 421 when full). Bounded so a stuck client cannot hold
/// the task.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reply: &Reply) {
    let wire = reply.to_wire();
    let write = async {
        stream.write_all(wire.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .is_err()
    {
        debug!("Refusal not written in time.");
    }
}
