//! The SMTP envelope of one transaction.

use serde::{Deserialize, Serialize};

/// Envelope as received: reverse path, forward paths and the ESMTP
/// parameters that must survive relaying.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path exactly as given (empty for the null sender `<>`).
    pub mail_from: String,
    /// Forward paths exactly as given, in order.
    pub rcpt_to: Vec<String>,
    /// `BODY=8BITMIME` was declared.
    #[serde(default)]
    pub body_8bit: bool,
    /// `SMTPUTF8` was declared.
    #[serde(default)]
    pub smtputf8: bool,
}
