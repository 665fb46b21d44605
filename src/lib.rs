//! misdirect: an SMTP relay that stops misaddressed outgoing mail.
//!
//! Pipeline: the SMTP session ([`smtp`]) receives a message, [`message`]
//! parses its metadata, the [`graph`] holds each sender's history, a
//! [`scorer::Scorer`] ([`classify`]) scores every recipient, the policy picks
//! an [`verdict::Action`], and [`outbound`] relays, holds, encrypts or
//! rejects.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod address;
pub mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub mod encrypt;
pub mod envelope;
pub mod graph;
pub mod hold;
pub mod import;
pub mod memory;
pub mod message;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod privacy;
pub mod replay;
pub mod scorer;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod verdict;

#[cfg(test)]
mod testutil;
