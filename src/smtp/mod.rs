//! The SMTP server side: one [`session`] per connection, its [`reply`]
//! values and the DATA decoder ([`data`]).

pub mod data;
pub mod reply;
pub mod session;

/// Bytes read from a client at a time; the DATA reader reserves as much
/// for the message up front.
pub const READ_BUFFER: usize = 16 * 1024;
