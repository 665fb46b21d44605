//! What happens to a message after the verdict: relaying to the next hop,
//! holding in the spool, encrypting.

pub mod dsn;
pub mod outbox;
pub mod relay;
pub mod spool;
