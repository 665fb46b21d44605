//! Message metadata: everything misdirect looks at, and nothing more.
//!
//! Parsed with `mail-parser` from the raw message. Body text is never read
//! into this structure and never stored; attachments contribute only their
//! file name and decoded size.

use std::sync::LazyLock;

use mail_parser::{Address, HeaderName, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use crate::address::Normalizer;

/// A parser that decodes only the headers misdirect reads (addresses, date,
/// ids, subject, MIME structure) and skips every other header; built once.
static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .header_date(HeaderName::Date)
        .header_address(HeaderName::From)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_address(HeaderName::Bcc)
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::InReplyTo)
        .header_id(HeaderName::References)
        .header_text(HeaderName::Subject)
        .default_header_ignore()
});

/// Which header a recipient was named in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    To,
    Cc,
    Bcc,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::To => "to",
            Field::Cc => "cc",
            Field::Bcc => "bcc",
        }
    }
}

/// One mailbox: normalised address plus the display name, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A recipient of the message, with the header field that named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub field: Field,
}

/// An attachment: file name and decoded size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub size: u64,
}

/// Metadata of one message, addresses normalised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub message_id: Option<String>,
    /// Date header as Unix seconds (UTC); `None` when absent or unparsable.
    pub date: Option<i64>,
    pub from: Option<Mailbox>,
    /// To, Cc and Bcc recipients in header order, each address once
    /// (first field wins).
    pub recipients: Vec<Recipient>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: Option<String>,
    pub attachments: Vec<Attachment>,
}

impl MessageMeta {
    /// Parse the raw message. Never fails: a message mail-parser cannot make
    /// sense of yields empty metadata (the envelope still carries the
    /// recipients). Addresses that do not normalise are dropped.
    pub fn parse(raw: &[u8], norm: &Normalizer) -> MessageMeta {
        let Some(msg) = PARSER.parse(raw) else {
            return MessageMeta::default();
        };
        let mut meta = MessageMeta {
            message_id: msg.message_id().map(|s| s.to_string()),
            date: msg.date().map(|d| d.to_timestamp()),
            subject: msg.subject().map(|s| s.to_string()),
            ..Default::default()
        };
        meta.from = msg.from().and_then(|a| {
            a.iter().find_map(|ad| {
                let address = norm.normalize(ad.address.as_deref()?).ok()?;
                Some(Mailbox {
                    address,
                    name: clean_name(ad.name.as_deref()),
                })
            })
        });
        let fields: [(Field, Option<&Address>); 3] = [
            (Field::To, msg.to()),
            (Field::Cc, msg.cc()),
            (Field::Bcc, msg.bcc()),
        ];
        for (field, addrs) in fields {
            let Some(addrs) = addrs else { continue };
            for ad in addrs.iter() {
                let Some(raw_addr) = ad.address.as_deref() else {
                    continue;
                };
                let Ok(address) = norm.normalize(raw_addr) else {
                    continue;
                };
                if meta.recipients.iter().any(|r| r.address == address) {
                    continue;
                }
                meta.recipients.push(Recipient {
                    address,
                    name: clean_name(ad.name.as_deref()),
                    field,
                });
            }
        }
        meta.in_reply_to = id_list(msg.in_reply_to());
        meta.references = id_list(msg.references());
        for part in msg.attachments() {
            let name = part.attachment_name().unwrap_or("").to_string();
            meta.attachments.push(Attachment {
                name,
                size: part.len() as u64,
            });
        }
        meta
    }

    /// The normalised sender address, if any.
    pub fn sender(&self) -> Option<&str> {
        self.from.as_ref().map(|m| m.address.as_str())
    }
}

fn clean_name(n: Option<&str>) -> Option<String> {
    let n = n?.trim().trim_matches('"').trim();
    if n.is_empty() {
        None
    } else {
        Some(n.to_string())
    }
}

fn id_list(v: &mail_parser::HeaderValue) -> Vec<String> {
    if let Some(list) = v.as_text_list() {
        list.iter().map(|s| s.to_string()).collect()
    } else if let Some(t) = v.as_text() {
        vec![t.to_string()]
    } else {
        Vec::new()
    }
}

/// The recipients a transaction delivers to: every envelope recipient,
/// normalised, with the header field and display name that named it; one
/// named in no header is a Bcc. Envelope recipients that do not normalise
/// are kept verbatim (lower-cased) so that they are still scored.
pub fn envelope_recipients(
    meta: &MessageMeta,
    rcpt_to: &[String],
    norm: &Normalizer,
) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = Vec::with_capacity(rcpt_to.len());
    for raw in rcpt_to {
        let address = norm
            .normalize(raw)
            .unwrap_or_else(|_| raw.trim().to_lowercase());
        if out.iter().any(|r| r.address == address) {
            continue;
        }
        match meta.recipients.iter().find(|r| r.address == address) {
            Some(r) => out.push(r.clone()),
            None => out.push(Recipient {
                address,
                name: None,
                field: Field::Bcc,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressConfig;

    #[test]
    fn parses_metadata_without_body() {
        let raw = b"From: \"Alice A\" <Alice@Example.com>\r\n\
To: Bob <bob@example.com>, carol@example.org\r\n\
Cc: bob@example.com, Dan <dan+x@EXAMPLE.net>\r\n\
Subject: RE: plans\r\n\
Date: Mon, 14 May 2001 16:39:00 -0700\r\n\
Message-ID: <m2@example.com>\r\n\
In-Reply-To: <m1@example.com>\r\n\
References: <m0@example.com> <m1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsecret body\r\n\
--b\r\nContent-Type: application/pdf; name=\"q3.pdf\"\r\n\
Content-Disposition: attachment; filename=\"q3.pdf\"\r\n\r\n12345\r\n--b--\r\n";
        let m = MessageMeta::parse(raw, &Normalizer::new(AddressConfig::default()));
        assert_eq!(m.sender(), Some("alice@example.com"));
        assert_eq!(m.from.as_ref().unwrap().name.as_deref(), Some("Alice A"));
        let r: Vec<_> = m
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.field))
            .collect();
        assert_eq!(
            r,
            vec![
                ("bob@example.com", Field::To),
                ("carol@example.org", Field::To),
                ("dan@example.net", Field::Cc)
            ]
        );
        assert_eq!(m.date, Some(989883540));
        assert_eq!(m.message_id.as_deref(), Some("m2@example.com"));
        assert_eq!(m.in_reply_to, vec!["m1@example.com"]);
        assert_eq!(m.references, vec!["m0@example.com", "m1@example.com"]);
        assert_eq!(
            m.attachments,
            vec![Attachment {
                name: "q3.pdf".into(),
                size: 5
            }]
        );
        assert!(!format!("{m:?}").contains("secret body"));
    }
}
