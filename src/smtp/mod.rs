//! The SMTP server side: one [`session`] per connection, its [`reply`]
//! values and the DATA decoder ([`data`]).

pub mod data;
pub mod reply;
pub mod session;
