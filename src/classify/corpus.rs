//! Reader for the header corpus (JSON lines, optionally gzip-compressed; see
//! the corpus README): one object per message with `user`, `folder`, `date`,
//! `from`, `to`, `cc`, `subject`, `attachments`, ... into [`MessageMeta`].
//!
//! The corpus's `bcc` is a copy of `cc` (a conversion artefact), so it is
//! ignored.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;

use crate::address::Normalizer;
use crate::message::{Attachment, Field, Mailbox, MessageMeta, Recipient};

/// One corpus message with its mailbox owner and folder.
#[derive(Debug, Clone)]
pub struct CorpusMessage {
    pub owner: String,
    pub folder: String,
    pub meta: MessageMeta,
}

impl CorpusMessage {
    /// True for a message from one of the owner's sent folders.
    pub fn is_sent_folder(&self) -> bool {
        let f = self.folder.to_ascii_lowercase();
        matches!(f.as_str(), "sent" | "sent_items" | "_sent_mail" | "_sent")
    }
}

/// Why the corpus could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: String,
        line: usize,
        msg: String,
    },
}

#[derive(Deserialize)]
struct Row {
    user: String,
    #[serde(default)]
    folder: String,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    in_reply_to: Option<String>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    x_from: Option<String>,
    #[serde(default)]
    attachments: Vec<String>,
}

/// Parse an RFC 3339 UTC date into Unix seconds.
pub fn parse_date(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()?;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Some(d.as_secs() as i64),
        Err(e) => Some(-(e.duration().as_secs() as i64)),
    }
}

fn row_to_message(row: Row, norm: &Normalizer) -> CorpusMessage {
    let normalize = |a: &str| norm.normalize(a).ok();
    let from = row
        .from
        .as_deref()
        .and_then(normalize)
        .map(|address| Mailbox {
            address,
            name: row
                .x_from
                .as_deref()
                .map(str::trim)
                // Notes/Outlook wrote "Name </O=ENRON/...>" or an address.
                .filter(|n| !n.is_empty() && !n.contains(['<', '@', '/']))
                .map(str::to_string),
        });
    let mut recipients: Vec<Recipient> = Vec::new();
    for (field, list) in [(Field::To, &row.to), (Field::Cc, &row.cc)] {
        for a in list {
            let Some(address) = normalize(a) else {
                continue;
            };
            if recipients.iter().any(|r| r.address == address) {
                continue;
            }
            recipients.push(Recipient {
                address,
                name: None,
                field,
            });
        }
    }
    let meta = MessageMeta {
        // Without angle brackets, as mail-parser gives Message-IDs.
        message_id: row.message_id.map(|m| {
            m.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        }),
        date: row.date.as_deref().and_then(parse_date),
        from,
        recipients,
        in_reply_to: row
            .in_reply_to
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        references: row.references,
        subject: row.subject,
        attachments: row
            .attachments
            .into_iter()
            .map(|name| Attachment { name, size: 0 })
            .collect(),
    };
    CorpusMessage {
        owner: row.user,
        folder: row.folder,
        meta,
    }
}

/// One corpus JSON line as a message (its `bcc`, a copy of `cc` in this
/// corpus, is ignored).
pub fn parse_line(line: &str, norm: &Normalizer) -> Result<CorpusMessage, serde_json::Error> {
    serde_json::from_str::<Row>(line).map(|row| row_to_message(row, norm))
}

/// Read messages from a reader of JSON lines; `path` is only for errors.
pub fn read_lines<R: Read>(
    r: R,
    path: &str,
    norm: &Normalizer,
    out: &mut Vec<CorpusMessage>,
) -> Result<(), CorpusError> {
    let reader = BufReader::new(r);
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| CorpusError::Io {
            path: path.to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|e| CorpusError::Parse {
            path: path.to_string(),
            line: i + 1,
            msg: e.to_string(),
        })?;
        out.push(row_to_message(row, norm));
    }
    Ok(())
}

/// Read one corpus file (`.jsonl` or `.jsonl.gz`, decided by the name).
pub fn read_file(path: &Path, norm: &Normalizer) -> Result<Vec<CorpusMessage>, CorpusError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| CorpusError::Io {
        path: p.clone(),
        source,
    })?;
    let mut out = Vec::new();
    if p.ends_with(".gz") {
        read_lines(flate2::read::MultiGzDecoder::new(f), &p, norm, &mut out)?;
    } else {
        read_lines(f, &p, norm, &mut out)?;
    }
    Ok(out)
}

/// Read several corpus files.
pub fn read_files(
    paths: &[std::path::PathBuf],
    norm: &Normalizer,
) -> Result<Vec<CorpusMessage>, CorpusError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_file(p, norm)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressConfig;

    #[test]
    fn reads_a_row() {
        let line = r#"{"user": "allen-p", "folder": "_sent_mail", "message_id": "<1@x>", "date": "2001-05-14T23:39:00Z", "from": "Phillip.Allen@enron.com", "to": ["a@enron.com", "b@enron.com"], "cc": ["b@enron.com", "c@x.org"], "bcc": ["b@enron.com", "c@x.org"], "subject": "RE: hi", "in_reply_to": null, "references": [], "x_from": "Phillip K Allen", "attachments": ["q.xls"]}"#;
        let mut out = Vec::new();
        let norm = Normalizer::new(AddressConfig::default());
        read_lines(line.as_bytes(), "t", &norm, &mut out).unwrap();
        let m = &out[0];
        assert_eq!(m.owner, "allen-p");
        assert!(m.is_sent_folder());
        assert_eq!(m.meta.sender(), Some("phillip.allen@enron.com"));
        assert_eq!(m.meta.date, Some(989883540));
        let r: Vec<_> = m
            .meta
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.field))
            .collect();
        assert_eq!(
            r,
            vec![
                ("a@enron.com", Field::To),
                ("b@enron.com", Field::To),
                ("c@x.org", Field::Cc)
            ]
        );
        assert_eq!(m.meta.attachments[0].name, "q.xls");
        let bad = "{not json";
        assert!(matches!(
            read_lines(bad.as_bytes(), "t", &norm, &mut out),
            Err(CorpusError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn parses_old_dates() {
        assert_eq!(parse_date("1980-01-01T00:00:00Z"), Some(315532800));
        assert_eq!(parse_date("nonsense"), None);
    }
}
