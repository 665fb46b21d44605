//! Reading mail archives into message metadata: mbox files, maildir folders
//! (Maildir++ sub-folders included), single `.eml` files, and the dev
//! corpus's JSON lines (`.jsonl`, `.jsonl.gz`).
//!
//! A message that cannot be used (no sender, no recipients, no date) is
//! counted with its reason and skipped; it never stops a read.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use mail_parser::mailbox::{maildir, mbox};

use crate::address::Normalizer;
use crate::graph::Ts;
use crate::message::{Mailbox, MessageMeta, Recipient};

/// Kind of archive at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Mbox(PathBuf),
    Maildir(PathBuf),
    Eml(PathBuf),
    Jsonl(PathBuf),
}

/// Archive read errors (a whole path unreadable; bad messages are counted
/// instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |e| ImportError::Io(p.display().to_string(), e)
}

/// Decide what a path holds: a directory with `cur` and `new` is a maildir,
/// another directory is searched for archives; `.jsonl`/`.jsonl.gz` files are
/// corpus JSON lines; a file starting with `From ` is an mbox; any other file
/// is one message.
pub fn classify(path: &Path) -> Result<Vec<Source>, ImportError> {
    let md = fs::metadata(path).map_err(io_err(path))?;
    if md.is_dir() {
        if path.join("cur").is_dir() && path.join("new").is_dir() {
            return Ok(vec![Source::Maildir(path.to_path_buf())]);
        }
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        let mut out = Vec::new();
        for e in entries {
            out.extend(classify(&e)?);
        }
        return Ok(out);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") {
        return Ok(vec![Source::Jsonl(path.to_path_buf())]);
    }
    let mut head = [0u8; 5];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io_err(path))?;
    if &head[..n] == b"From " {
        Ok(vec![Source::Mbox(path.to_path_buf())])
    } else {
        Ok(vec![Source::Eml(path.to_path_buf())])
    }
}

/// Counts of messages read and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadCounts {
    pub messages: u64,
    /// Skipped messages by reason.
    pub bad: BTreeMap<String, u64>,
}

impl ReadCounts {
    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }
    fn bad(&mut self, reason: &str) {
        *self.bad.entry(reason.to_string()).or_default() += 1;
    }
}

/// One usable message: metadata with a sender, at least one recipient and
/// a time.
#[derive(Debug, Clone)]
pub struct ImportedMessage {
    pub meta: MessageMeta,
    pub ts: Ts,
}

/// Reads archives message by message.
pub struct Reader<'a> {
    pub norm: &'a Normalizer,
    /// Sender for messages without a usable From.
    pub owner: Option<String>,
    pub counts: ReadCounts,
}

impl<'a> Reader<'a> {
    pub fn new(norm: &'a Normalizer, owner: Option<String>) -> Self {
        Reader {
            norm,
            owner,
            counts: ReadCounts::default(),
        }
    }

    /// Turn parsed metadata into a usable message, or count why not.
    fn accept(
        &mut self,
        mut meta: MessageMeta,
        fallback_ts: Option<Ts>,
    ) -> Option<ImportedMessage> {
        if meta.from.is_none() {
            match &self.owner {
                Some(o) => {
                    meta.from = Some(Mailbox {
                        address: o.clone(),
                        name: None,
                    })
                }
                None => {
                    self.counts.bad("no usable From address");
                    return None;
                }
            }
        }
        if meta.recipients.is_empty() {
            self.counts.bad("no recipients");
            return None;
        }
        let Some(ts) = meta.date.or(fallback_ts.filter(|t| *t > 0)) else {
            self.counts.bad("no usable date");
            return None;
        };
        self.counts.messages += 1;
        Some(ImportedMessage { meta, ts })
    }

    fn raw(&mut self, raw: &[u8], fallback_ts: Option<Ts>) -> Option<ImportedMessage> {
        let meta = MessageMeta::parse(raw, self.norm);
        if meta == MessageMeta::default() {
            self.counts.bad("not a parsable message");
            return None;
        }
        self.accept(meta, fallback_ts)
    }

    /// Read one source, calling `f` for each usable message with its size
    /// in bytes (for progress).
    pub fn read(
        &mut self,
        src: &Source,
        f: &mut dyn FnMut(ImportedMessage, u64),
    ) -> Result<(), ImportError> {
        match src {
            Source::Eml(p) => {
                let raw = fs::read(p).map_err(io_err(p))?;
                let mtime = file_mtime(p);
                if let Some(m) = self.raw(&raw, mtime) {
                    f(m, raw.len() as u64);
                }
            }
            Source::Mbox(p) => {
                let file = fs::File::open(p).map_err(io_err(p))?;
                for item in mbox::MessageIterator::new(BufReader::new(file)) {
                    match item {
                        Ok(msg) => {
                            let date = msg.internal_date() as Ts;
                            let len = msg.contents().len() as u64;
                            if let Some(m) = self.raw(msg.contents(), Some(date)) {
                                f(m, len);
                            }
                        }
                        Err(e) => return Err(ImportError::Io(p.display().to_string(), e)),
                    }
                }
            }
            Source::Maildir(p) => {
                let folders =
                    maildir::FolderIterator::new(p.clone(), Some(".")).map_err(io_err(p))?;
                for folder in folders {
                    let folder = folder.map_err(io_err(p))?;
                    for item in folder {
                        match item {
                            Ok(msg) => {
                                let len = msg.contents().len() as u64;
                                let date = msg.internal_date() as Ts;
                                if let Some(m) = self.raw(msg.contents(), Some(date)) {
                                    f(m, len);
                                }
                            }
                            Err(_) => self.counts.bad("unreadable maildir file"),
                        }
                    }
                }
            }
            Source::Jsonl(p) => {
                let file = fs::File::open(p).map_err(io_err(p))?;
                let reader: Box<dyn BufRead> = if p.extension().is_some_and(|e| e == "gz") {
                    Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
                } else {
                    Box::new(BufReader::new(file))
                };
                for line in reader.lines() {
                    let line = line.map_err(io_err(p))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let len = line.len() as u64;
                    match crate::classify::corpus::parse_line(&line, self.norm) {
                        Ok(row) => {
                            if let Some(m) = self.accept(row.meta, None) {
                                f(m, len);
                            }
                        }
                        Err(_) => self.counts.bad("invalid JSON line"),
                    }
                }
            }
        }
        Ok(())
    }
}

fn file_mtime(p: &Path) -> Option<Ts> {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as Ts)
}

/// Total size of the files behind these sources (for a progress bar).
pub fn total_bytes(sources: &[Source]) -> u64 {
    fn dir_size(p: &Path) -> u64 {
        fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            dir_size(&p)
                        } else {
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    sources
        .iter()
        .map(|s| match s {
            Source::Maildir(p) => dir_size(p),
            // Compressed JSON lines grow about tenfold; the bar is only a guide.
            Source::Jsonl(p) if p.extension().is_some_and(|e| e == "gz") => {
                fs::metadata(p).map(|m| m.len() * 10).unwrap_or(0)
            }
            Source::Mbox(p) | Source::Eml(p) | Source::Jsonl(p) => {
                fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// Read every message of these paths into memory.
pub fn read_all(
    paths: &[PathBuf],
    norm: &Normalizer,
    owner: Option<String>,
) -> Result<(Vec<ImportedMessage>, ReadCounts), ImportError> {
    let mut reader = Reader::new(norm, owner);
    let mut out = Vec::new();
    for p in paths {
        for src in classify(p)? {
            reader.read(&src, &mut |m, _| out.push(m))?;
        }
    }
    Ok((out, reader.counts))
}

/// The recipients to learn from and score: the header recipients.
pub fn recipients_of(meta: &MessageMeta) -> Vec<Recipient> {
    meta.recipients.clone()
}
