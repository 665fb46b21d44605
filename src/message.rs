//! Message metadata: everything misdirect looks at, and nothing more.
//!
//! Parsed with `mail-parser` from the raw message. Body text is never read
//! into this structure and never stored; attachments contribute only their
//! file name and decoded size.

#[cfg(test)]
use std::sync::LazyLock;

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, ContentType, HeaderValue};
#[cfg(test)]
use mail_parser::{HeaderName, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use crate::address::Normalizer;

/// The mail-parser configuration the header reader ([`read_headers`])
/// reproduces for a message's top-level headers: the headers misdirect reads
/// (addresses, date, ids, subject, MIME structure) decoded, every other one
/// skipped. The reference parse in the tests uses it.
#[cfg(test)]
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

/// The mail-parser configuration [`read_headers`] reproduces for a MIME
/// part's headers: only the ones that say what the part is.
#[cfg(test)]
static PART_PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .default_header_ignore()
});

/// Multipart nesting deeper than this is not looked into.
const MAX_MULTIPART_DEPTH: usize = 32;

impl MessageMeta {
    /// Parse the raw message. Never fails: a message mail-parser cannot make
    /// sense of yields empty metadata (the envelope still carries the
    /// recipients). Addresses that do not normalise are dropped.
    ///
    /// Only header blocks are parsed: split into fields here as mail-parser
    /// splits them, fields of headers misdirect does not read skipped, the
    /// others decoded with mail-parser's value parsers (which decode RFC 2047
    /// and RFC 2231 parameters such as encoded file names; see
    /// [`read_headers`]); bodies are never decoded. The MIME structure is walked here, by boundary: a delimiter is
    /// a line starting with `--boundary`, followed by an optional `--` (the
    /// close delimiter) and then only white space. A multipart whose final
    /// delimiter is missing ends at the end of its enclosing part; one with
    /// no delimiter at all is reported as an attachment, as mail-parser does.
    /// Parts are classified as attachments as mail-parser's
    /// `Message::attachments()` does (every non-text leaf, text parts that
    /// are not body text, each `message/rfc822` part without looking into it).
    ///
    /// An attachment's size is its transfer-decoded size, counted without
    /// decoding: for base64, 3 bytes per 4 alphabet characters plus 1 or 2
    /// for a final group of 2 or 3 (characters outside the alphabet, padding
    /// included, are skipped; exact unless padding appears before the end);
    /// for quoted-printable, the bytes the decoding would produce
    /// (`=XX` is one byte, soft line breaks and white space before a line
    /// break count nothing); otherwise the raw length of the part's body up
    /// to the line break before the next delimiter. Unlike mail-parser, text
    /// in a charset other than UTF-8 is not converted to UTF-8 before being
    /// counted, and a part with broken base64 or a final part without its
    /// closing delimiter keeps its own type instead of becoming text.
    pub fn parse(raw: &[u8], norm: &Normalizer) -> MessageMeta {
        let body_at = header_end(raw);
        let Some(h) = read_headers(&raw[..body_at.unwrap_or(raw.len())], Block::Message) else {
            return MessageMeta::default();
        };
        let mut meta = MessageMeta::from_headers(&h, norm);
        if let Some(at) = body_at {
            let mut ctx = Container::top();
            walk_part(h.part(&raw[at..]), &mut ctx, 0, &mut meta.attachments);
        }
        meta
    }

    /// Everything but the attachments, from the top-level headers.
    fn from_headers(h: &Headers<'_>, norm: &Normalizer) -> MessageMeta {
        let mut meta = MessageMeta {
            message_id: h
                .get(Hdr::MessageId)
                .and_then(|v| v.as_text())
                .map(|s| s.to_string()),
            date: h
                .get(Hdr::Date)
                .and_then(|v| v.as_datetime())
                .map(|d| d.to_timestamp()),
            subject: h
                .get(Hdr::Subject)
                .and_then(|v| v.as_text())
                .map(|s| s.to_string()),
            ..Default::default()
        };
        meta.from = h.address(Hdr::From).and_then(|a| {
            a.iter().find_map(|ad| {
                let address = norm.normalize(ad.address.as_deref()?).ok()?;
                Some(Mailbox {
                    address,
                    name: clean_name(ad.name.as_deref()),
                })
            })
        });
        let fields: [(Field, Option<&Address>); 3] = [
            (Field::To, h.address(Hdr::To)),
            (Field::Cc, h.address(Hdr::Cc)),
            (Field::Bcc, h.address(Hdr::Bcc)),
        ];
        let mut index = RecipientIndex::default();
        for (field, addrs) in fields {
            let Some(addrs) = addrs else { continue };
            for ad in addrs.iter() {
                let Some(raw_addr) = ad.address.as_deref() else {
                    continue;
                };
                let Ok(address) = norm.normalize(raw_addr) else {
                    continue;
                };
                if index.find(&meta.recipients, &address).is_some() {
                    continue;
                }
                index.push(
                    &mut meta.recipients,
                    Recipient {
                        address,
                        name: clean_name(ad.name.as_deref()),
                        field,
                    },
                );
            }
        }
        meta.in_reply_to = id_list(h.get(Hdr::InReplyTo));
        meta.references = id_list(h.get(Hdr::References));
        meta
    }

    /// The normalised sender address, if any.
    pub fn sender(&self) -> Option<&str> {
        self.from.as_ref().map(|m| m.address.as_str())
    }
}

/// The previous parser, kept as the reference the header-only one is tested
/// against: mail-parser parses the whole message, decoding every body part.
#[cfg(test)]
pub(crate) fn parse_reference(raw: &[u8], norm: &Normalizer) -> MessageMeta {
    let Some(msg) = PARSER.parse(raw) else {
        return MessageMeta::default();
    };
    let mut meta = MessageMeta::from_headers(&Headers::of_message(&msg), norm);
    for part in msg.attachments() {
        let name = part.attachment_name().unwrap_or("").to_string();
        meta.attachments.push(Attachment {
            name,
            size: part.len() as u64,
        });
    }
    meta
}

/// The headers [`read_headers`] decodes. The last three are not used: they
/// are decoded because mail-parser's configurations decode them, so that
/// their fields end where mail-parser ends them; the values are dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hdr {
    From,
    To,
    Cc,
    Bcc,
    Date,
    MessageId,
    InReplyTo,
    References,
    Subject,
    ContentType,
    ContentDisposition,
    ContentTransferEncoding,
    ContentId,
    ContentDescription,
    ContentLocation,
}

/// Headers with a value kept: the ones before `ContentId`.
const KEPT: usize = 12;

/// Which header block is read: a message's top level decodes the address,
/// date, id and subject headers too; a MIME part only the MIME ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Message,
    Part,
}

impl Hdr {
    /// The header a lower-cased field name is, as mail-parser's name table
    /// has it (names longer than 34 bytes are never known there).
    fn lookup(lc: &[u8]) -> Option<Hdr> {
        Some(match lc {
            b"from" => Hdr::From,
            b"to" => Hdr::To,
            b"cc" => Hdr::Cc,
            b"bcc" => Hdr::Bcc,
            b"date" => Hdr::Date,
            b"message-id" => Hdr::MessageId,
            b"in-reply-to" => Hdr::InReplyTo,
            b"references" => Hdr::References,
            b"subject" => Hdr::Subject,
            b"content-type" => Hdr::ContentType,
            b"content-disposition" => Hdr::ContentDisposition,
            b"content-transfer-encoding" => Hdr::ContentTransferEncoding,
            b"content-id" => Hdr::ContentId,
            b"content-description" => Hdr::ContentDescription,
            b"content-location" => Hdr::ContentLocation,
            _ => return None,
        })
    }

    /// Whether mail-parser's configuration for `block` decodes this header.
    fn decoded_in(self, block: Block) -> bool {
        block == Block::Message
            || matches!(
                self,
                Hdr::ContentType
                    | Hdr::ContentDisposition
                    | Hdr::ContentTransferEncoding
                    | Hdr::ContentId
                    | Hdr::ContentDescription
                    | Hdr::ContentLocation
            )
    }

    /// The reader of this header's plain shapes, tried before mail-parser's
    /// parser (Content-ID is never kept, so it has none).
    fn fast_path(self) -> Option<FastPath> {
        match self {
            Hdr::From | Hdr::To | Hdr::Cc | Hdr::Bcc => Some(plain_addresses),
            Hdr::MessageId | Hdr::InReplyTo | Hdr::References => Some(plain_ids),
            Hdr::ContentType | Hdr::ContentDisposition => Some(plain_content_type),
            Hdr::Subject
            | Hdr::ContentTransferEncoding
            | Hdr::ContentDescription
            | Hdr::ContentLocation => Some(plain_unstructured),
            _ => None,
        }
    }

    /// Decode the value at the stream's position with the parser
    /// mail-parser's configuration uses for this header.
    fn parse_value<'x>(self, s: &mut MessageStream<'x>) -> HeaderValue<'x> {
        match self {
            Hdr::From | Hdr::To | Hdr::Cc | Hdr::Bcc => s.parse_address(),
            Hdr::Date => s.parse_date(),
            Hdr::MessageId | Hdr::InReplyTo | Hdr::References | Hdr::ContentId => s.parse_id(),
            Hdr::ContentType | Hdr::ContentDisposition => s.parse_content_type(),
            Hdr::Subject
            | Hdr::ContentTransferEncoding
            | Hdr::ContentDescription
            | Hdr::ContentLocation => s.parse_unstructured(),
        }
    }
}

/// The decoded values of one header block: for each header misdirect uses,
/// the value of its last field (mail-parser's accessors read the last one).
#[derive(Default)]
struct Headers<'x> {
    values: [Option<HeaderValue<'x>>; KEPT],
}

impl<'x> Headers<'x> {
    fn get(&self, h: Hdr) -> Option<&HeaderValue<'x>> {
        self.values.get(h as usize)?.as_ref()
    }

    fn address(&self, h: Hdr) -> Option<&Address<'x>> {
        self.get(h).and_then(|v| v.as_address())
    }

    fn content_type(&self, h: Hdr) -> Option<&ContentType<'x>> {
        self.get(h).and_then(|v| v.as_content_type())
    }

    /// The part these headers head, with `body` as its body; the attachment
    /// name as mail-parser's `attachment_name` gives it.
    fn part<'h>(&'h self, body: &'x [u8]) -> Part<'x, 'h> {
        let content_type = self.content_type(Hdr::ContentType);
        let disposition = self.content_type(Hdr::ContentDisposition);
        Part {
            content_type,
            disposition,
            encoding: self
                .get(Hdr::ContentTransferEncoding)
                .and_then(|v| v.as_text()),
            name: disposition
                .and_then(|d| d.attribute("filename"))
                .or_else(|| content_type.and_then(|c| c.attribute("name"))),
            body,
        }
    }

    /// The same values taken from a message mail-parser built.
    #[cfg(test)]
    fn of_message(msg: &mail_parser::Message<'x>) -> Headers<'x> {
        use mail_parser::GetHeader;
        let names = [
            HeaderName::From,
            HeaderName::To,
            HeaderName::Cc,
            HeaderName::Bcc,
            HeaderName::Date,
            HeaderName::MessageId,
            HeaderName::InReplyTo,
            HeaderName::References,
            HeaderName::Subject,
            HeaderName::ContentType,
            HeaderName::ContentDisposition,
            HeaderName::ContentTransferEncoding,
        ];
        Headers {
            values: names.map(|n| {
                msg.parts
                    .first()
                    .and_then(|p| p.headers.header_value(&n))
                    .cloned()
            }),
        }
    }
}

/// Read a header block as mail-parser's `parse_headers` does with
/// [`PARSER`] (`Block::Message`) or [`PART_PARSER`] (`Block::Part`), without
/// building a message: fields are split as mail-parser splits them, names
/// matched as its name table matches them (white space inside a name
/// ignored, case ignored), a field whose header is not decoded is skipped to
/// the next line break not followed by a space or tab, and decoded values
/// come from mail-parser's own value parsers, which also say where their
/// field ends. `None` when the block holds no field at all (mail-parser then
/// returns no message).
fn read_headers(data: &[u8], block: Block) -> Option<Headers<'_>> {
    let mut h = Headers {
        values: Default::default(),
    };
    let mut fields = 0usize;
    let mut pos = 0usize;
    let mut stream: Option<MessageStream<'_>> = None;
    'fields: loop {
        // White space (and empty lines of it) before a field; a line break
        // on its own ends the block.
        loop {
            match data.get(pos) {
                Some(b'\n') => break 'fields,
                None => break 'fields,
                Some(c) if !c.is_ascii_whitespace() => break,
                Some(_) => pos += 1,
            }
        }
        let Some(name) = field_name(data, &mut pos) else {
            if pos >= data.len() {
                break;
            }
            continue;
        };
        fields += 1;
        let hdr = name.filter(|h| h.decoded_in(block));
        match hdr {
            Some(hdr) => {
                // The common plain shapes of addresses, ids and MIME types
                // are read here; anything else goes to mail-parser's
                // parser, which reads those shapes the same way.
                let value = match hdr.fast_path().and_then(|f| f(data, pos)) {
                    Some((value, end)) => {
                        pos = end;
                        value
                    }
                    None => {
                        let s = stream.get_or_insert_with(|| MessageStream::new(data));
                        s.skip_bytes(pos.saturating_sub(s.offset()));
                        let value = hdr.parse_value(s);
                        pos = s.offset();
                        value
                    }
                };
                if let Some(slot) = h.values.get_mut(hdr as usize) {
                    *slot = Some(value);
                }
            }
            None => pos = skip_field(data, pos),
        }
    }
    (fields > 0).then_some(h)
}

/// A fast path for one kind of field value: the value read from an offset
/// and the offset after the field, or `None` to leave it to mail-parser.
type FastPath = fn(&[u8], usize) -> Option<(HeaderValue<'_>, usize)>;

/// Skip white space in a field's value from `i`: spaces, tabs and line
/// breaks (`CRLF` or `LF`) followed by a space or tab, which fold the field
/// onto the next line. Returns the first other byte's offset.
fn skip_folding_ws(data: &[u8], mut i: usize) -> usize {
    loop {
        match data.get(i) {
            Some(b' ' | b'\t') => i += 1,
            Some(b'\r') if data.get(i + 1) == Some(&b'\n') => match data.get(i + 2) {
                Some(b' ' | b'\t') => i += 3,
                _ => return i,
            },
            Some(b'\n') => match data.get(i + 1) {
                Some(b' ' | b'\t') => i += 2,
                _ => return i,
            },
            _ => return i,
        }
    }
}

/// The end of a field at `i` (after [`skip_folding_ws`]): just after a line
/// break (`CRLF` or `LF`) not followed by a space or tab; `None` for
/// anything else, the end of the data included (where mail-parser's
/// parsers drop the last address or every id).
fn field_end(data: &[u8], i: usize) -> Option<usize> {
    match data.get(i) {
        Some(b'\n') => Some(i + 1),
        Some(b'\r') if data.get(i + 1) == Some(&b'\n') => Some(i + 2),
        _ => None,
    }
}

/// A byte of an address in the plain shapes [`plain_addresses`] reads.
fn is_plain_addr_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+' | b'@')
}

/// A byte of an unquoted display name in those shapes (spaces apart).
fn is_plain_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'\'')
}

/// A byte of a quoted display name in those shapes: printable ASCII but
/// the quote, the backslash and `=` (which may start an encoded word).
fn is_plain_quoted_byte(c: u8) -> bool {
    matches!(c, b' '..=b'~') && !matches!(c, b'"' | b'\\' | b'=')
}

/// How many bytes from `i` pass `ok`.
fn run_len(data: &[u8], i: usize, ok: fn(u8) -> bool) -> usize {
    data.get(i..)
        .map_or(0, |r| r.iter().take_while(|&&c| ok(c)).count())
}

/// The non-empty content of a delimited item (`"Name"`, `<addr>`, `<id>`)
/// whose opening byte is at `i`: its range, when bytes passing `ok` run up
/// to `close`.
fn delimited(data: &[u8], i: usize, ok: fn(u8) -> bool, close: u8) -> Option<(usize, usize)> {
    let a = i + 1;
    let b = a + run_len(data, a, ok);
    (b > a && data.get(b) == Some(&close)).then_some((a, b))
}

/// `data[a..b]` as text: the fast paths read only ASCII, so it always is.
fn field_text(data: &[u8], a: usize, b: usize) -> Option<&str> {
    data.get(a..b).and_then(|s| std::str::from_utf8(s).ok())
}

/// The address list of an address field whose value, from `start` (just
/// after the colon), has only the plain shapes nearly every client writes:
/// items `addr`, `<addr>`, `Name <addr>` or `"Name" <addr>` separated by
/// commas, with spaces, tabs and folding between them. Returns the value
/// mail-parser's `parse_address` gives for it, and the offset where that
/// parser stops (after the field's line break); `None` for any other value
/// (groups, comments, encoded words, escapes, 8-bit bytes, empty items, a
/// field without a line break at the end), which is left to mail-parser.
/// `address_fast_path_matches_mail_parser` holds the two parsers to the
/// same results.
fn plain_addresses(data: &[u8], start: usize) -> Option<(HeaderValue<'_>, usize)> {
    let text = |a: usize, b: usize| field_text(data, a, b).map(std::borrow::Cow::Borrowed);
    // `<addr>` at `i`: the address's range and the offset after `>`.
    let angle = |i: usize| {
        let (a, b) = delimited(data, i, is_plain_addr_byte, b'>')?;
        Some((a, b, b + 1))
    };
    let mut list = Vec::new();
    let mut i = skip_folding_ws(data, start);
    loop {
        let &c = data.get(i)?;
        let (name, address, next) = if c == b'"' {
            let (q, qe) = delimited(data, i, is_plain_quoted_byte, b'"')?;
            let j = skip_folding_ws(data, qe + 1);
            if data.get(j) != Some(&b'<') {
                return None;
            }
            let (a, b, next) = angle(j)?;
            (Some(text(q, qe)?), text(a, b)?, next)
        } else if c == b'<' {
            let (a, b, next) = angle(i)?;
            (None, text(a, b)?, next)
        } else {
            // A bare address, or an unquoted name (words separated by
            // spaces) before `<addr>`.
            let after = i + run_len(data, i, is_plain_addr_byte);
            if data.get(i..after).is_some_and(|a| a.contains(&b'@')) {
                (None, text(i, after)?, after)
            } else {
                let mut end = i;
                let mut j = i;
                while let Some(&c) = data.get(j) {
                    if is_plain_name_byte(c) {
                        j += 1;
                        end = j;
                    } else if c == b' ' {
                        j += 1;
                    } else {
                        break;
                    }
                }
                if end == i {
                    return None;
                }
                let k = skip_folding_ws(data, end);
                if data.get(k) != Some(&b'<') {
                    return None;
                }
                let (a, b, next) = angle(k)?;
                (Some(text(i, end)?), text(a, b)?, next)
            }
        };
        list.push(mail_parser::Addr {
            name,
            address: Some(address),
        });
        let j = skip_folding_ws(data, next);
        if data.get(j) == Some(&b',') {
            i = skip_folding_ws(data, j + 1);
            continue;
        }
        let end = field_end(data, j)?;
        return Some((HeaderValue::Address(Address::List(list)), end));
    }
}

/// A byte of a message id in the plain shape [`plain_ids`] reads.
fn is_plain_id_byte(c: u8) -> bool {
    c.is_ascii_graphic() && c != b'<' && c != b'>'
}

/// The ids of a message-id field (Message-ID, In-Reply-To, References)
/// whose value, from `start`, is only `<id>` items of printable ASCII with
/// white space and folding between them: mail-parser's `parse_id` value
/// for it and the offset where that parser stops; `None` for anything
/// else, left to mail-parser (`id_fast_path_matches_mail_parser`).
fn plain_ids(data: &[u8], start: usize) -> Option<(HeaderValue<'_>, usize)> {
    let mut ids: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    let mut i = skip_folding_ws(data, start);
    while data.get(i) == Some(&b'<') {
        let (a, b) = delimited(data, i, is_plain_id_byte, b'>')?;
        ids.push(std::borrow::Cow::Borrowed(field_text(data, a, b)?));
        i = skip_folding_ws(data, b + 1);
    }
    let end = field_end(data, i)?;
    let value = match ids.len() {
        0 => return None,
        1 => HeaderValue::Text(ids.pop()?),
        _ => HeaderValue::TextList(ids),
    };
    Some((value, end))
}

/// The text of an unstructured field (Subject, Content-Transfer-Encoding,
/// …) whose value, from `start`, is one line without an encoded word
/// (`=?`) and in UTF-8: the line without its leading and trailing spaces,
/// tabs and CRs, borrowed from the message (`Empty` when nothing is left),
/// as mail-parser's `parse_unstructured` gives it, and the offset after the
/// line break where that parser stops. `None` for a folded field, one
/// with `=?` or other bytes than UTF-8, or one without a line break at the
/// end (where mail-parser gives `Empty`), which are left to mail-parser.
/// `unstructured_fast_path_matches_mail_parser` holds the two to the same
/// results.
fn plain_unstructured(data: &[u8], start: usize) -> Option<(HeaderValue<'_>, usize)> {
    // Up to the line break, unless `=?` (or the end of the data) comes first.
    let nl = start + plain_run(data, start, |c| c != b'\n');
    if data.get(nl) != Some(&b'\n') || matches!(data.get(nl + 1), Some(b' ' | b'\t')) {
        return None;
    }
    let line = data.get(start..nl)?;
    let blank = |c: &u8| matches!(c, b' ' | b'\t' | b'\r');
    let Some(a) = line.iter().position(|c| !blank(c)) else {
        return Some((HeaderValue::Empty, nl + 1));
    };
    let b = line.iter().rposition(|c| !blank(c))? + 1;
    let text = field_text(line, a, b)?;
    Some((HeaderValue::Text(std::borrow::Cow::Borrowed(text)), nl + 1))
}

/// A byte of a type, subtype or parameter name in the plain shapes
/// [`plain_content_type`] reads.
fn is_plain_ct_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'+' | b'_')
}

/// A byte of an unquoted parameter value in those shapes (`=` is checked
/// apart: not before `?`, which may start an encoded word).
fn is_plain_ct_token_byte(c: u8) -> bool {
    c.is_ascii_graphic() && !matches!(c, b';' | b'"' | b'\\' | b'\'' | b'(' | b')' | b'*')
}

/// The length of the value at `data[i..]` whose bytes pass `ok`, with no
/// `=?` in it.
fn plain_run(data: &[u8], i: usize, ok: fn(u8) -> bool) -> usize {
    let rest = data.get(i..).unwrap_or_default();
    let mut n = 0;
    while let Some(&c) = rest.get(n) {
        if !ok(c) || (c == b'=' && rest.get(n + 1) == Some(&b'?')) {
            break;
        }
        n += 1;
    }
    n
}

/// The type of a Content-Type or Content-Disposition field whose value,
/// from `start`, has the plain shape nearly every client writes:
/// `type/subtype` (or a disposition's one token) then `; name=token` or
/// `; name="quoted"` parameters, with white space and folding around the
/// semicolons. Returns mail-parser's `parse_content_type` value for it
/// (names lower-cased as that parser does) and where that parser stops;
/// `None` for anything else (comments, escapes, RFC 2231 continuations,
/// encoded words, 8-bit bytes, empty values), left to mail-parser
/// (`content_type_fast_path_matches_mail_parser`).
fn plain_content_type(data: &[u8], start: usize) -> Option<(HeaderValue<'_>, usize)> {
    use std::borrow::Cow;
    let text = |a: usize, b: usize| field_text(data, a, b);
    let name = |a: usize, b: usize| -> Option<Cow<'_, str>> {
        let t = text(a, b)?;
        Some(if t.bytes().any(|c| c.is_ascii_uppercase()) {
            Cow::Owned(t.to_ascii_lowercase())
        } else {
            Cow::Borrowed(t)
        })
    };
    let mut i = skip_folding_ws(data, start);
    let t_len = plain_run(data, i, is_plain_ct_name_byte);
    if t_len == 0 {
        return None;
    }
    let c_type = name(i, i + t_len)?;
    i += t_len;
    let c_subtype = if data.get(i) == Some(&b'/') {
        let s_len = plain_run(data, i + 1, is_plain_ct_name_byte);
        if s_len == 0 {
            return None;
        }
        let sub = name(i + 1, i + 1 + s_len)?;
        i += 1 + s_len;
        Some(sub)
    } else {
        None
    };
    let mut attributes = Vec::new();
    loop {
        i = skip_folding_ws(data, i);
        if data.get(i) != Some(&b';') {
            break;
        }
        i = skip_folding_ws(data, i + 1);
        let n_len = plain_run(data, i, is_plain_ct_name_byte);
        if n_len == 0 {
            // `;` at the end of the field.
            break;
        }
        let attr = name(i, i + n_len)?;
        i += n_len;
        if data.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        let value = if data.get(i) == Some(&b'"') {
            // No `=?` inside: mail-parser decodes encoded words there.
            let q = i + 1;
            let len = plain_run(data, q, |c| {
                matches!(c, b' '..=b'~') && !matches!(c, b'"' | b'\\')
            });
            if len == 0 || data.get(q + len) != Some(&b'"') {
                return None;
            }
            i = q + len + 1;
            text(q, q + len)?
        } else {
            let len = plain_run(data, i, is_plain_ct_token_byte);
            if len == 0 {
                return None;
            }
            i += len;
            text(i - len, i)?
        };
        attributes.push(mail_parser::Attribute {
            name: attr,
            value: Cow::Borrowed(value),
        });
    }
    let end = field_end(data, i)?;
    let value = HeaderValue::ContentType(ContentType {
        c_type,
        c_subtype,
        attributes: (!attributes.is_empty()).then_some(attributes),
    });
    Some((value, end))
}

/// Read a field name from `pos` (the first byte that is not white space) as
/// mail-parser's `parse_header_name` does: every byte up to the first ':'
/// after a byte that is not white space, white space left out, lower-cased;
/// a line break before that means no field (`None`), and so does the end of
/// the data with no such byte. `Some(None)` is a field of a header
/// [`read_headers`] does not decode. `pos` ends after the ':' (or the line
/// break, or at the end).
fn field_name(data: &[u8], pos: &mut usize) -> Option<Option<Hdr>> {
    const MAX_NAME: usize = 34;
    let mut name = [0u8; MAX_NAME];
    let mut len = 0usize;
    let found = loop {
        let Some(&c) = data.get(*pos) else {
            break len > 0;
        };
        *pos += 1;
        match c {
            b':' if len > 0 => break true,
            b'\n' => break false,
            c if c == b':' || c.is_ascii_whitespace() => {}
            c => {
                if let Some(slot) = name.get_mut(len) {
                    *slot = c.to_ascii_lowercase();
                }
                len += 1;
            }
        }
    };
    found.then(|| name.get(..len).and_then(Hdr::lookup))
}

/// The end of a field's value that is not decoded: just after the first
/// line break not followed by a space or tab (that one is part of the
/// field), or the end of the data.
fn skip_field(data: &[u8], mut pos: usize) -> usize {
    while let Some(nl) = data.get(pos..).and_then(|r| memchr::memchr(b'\n', r)) {
        pos += nl + 1;
        match data.get(pos) {
            Some(b' ' | b'\t') => pos += 1,
            _ => return pos,
        }
    }
    data.len()
}

/// The offset just after the header block (after its terminating line that
/// holds only white space), or `None` when there is no such line.
fn header_end(b: &[u8]) -> Option<usize> {
    let mut line = 0;
    while line < b.len() {
        let nl = memchr::memchr(b'\n', &b[line..]).map(|p| line + p);
        let end = nl.unwrap_or(b.len());
        if b[line..end]
            .iter()
            .all(|&c| c == b' ' || c == b'\t' || c == b'\r')
        {
            return nl.map(|p| p + 1);
        }
        line = end + 1;
    }
    None
}

/// What a part's enclosing container is, as mail-parser tracks it to decide
/// which parts are body text and which are attachments.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Alternative,
    Related,
    Digest,
    Other,
}

struct Container {
    kind: Kind,
    in_alternative: bool,
    need_html: bool,
    need_text: bool,
    /// Parts seen so far in this container.
    parts: usize,
}

impl Container {
    fn top() -> Container {
        Container {
            kind: Kind::Message,
            in_alternative: false,
            need_html: true,
            need_text: true,
            parts: 0,
        }
    }
}

/// One MIME part: the headers that matter, and its raw body.
struct Part<'a, 'h> {
    content_type: Option<&'h mail_parser::ContentType<'a>>,
    disposition: Option<&'h mail_parser::ContentType<'a>>,
    encoding: Option<&'h str>,
    name: Option<&'h str>,
    body: &'a [u8],
}

#[derive(PartialEq, Eq)]
enum Mime {
    Plain,
    Html,
    TextOther,
    Inline,
    Message,
    Other,
}

/// Classify one part and record it when it is an attachment; descend into
/// multiparts.
fn walk_part(part: Part<'_, '_>, ctx: &mut Container, depth: usize, out: &mut Vec<Attachment>) {
    ctx.parts += 1;
    let ct = part.content_type;
    if let Some(c) = ct {
        if c.ctype().eq_ignore_ascii_case("multipart") {
            if let Some(boundary) = c.attribute("boundary") {
                let kind = match c.subtype() {
                    Some("alternative") => Kind::Alternative,
                    Some("related") => Kind::Related,
                    Some("digest") => Kind::Digest,
                    _ => Kind::Other,
                };
                let mut inner = Container {
                    kind,
                    in_alternative: ctx.in_alternative || kind == Kind::Alternative,
                    need_html: ctx.need_html,
                    need_text: ctx.need_text,
                    parts: 0,
                };
                if depth >= MAX_MULTIPART_DEPTH
                    || walk_multipart(part.body, boundary.as_bytes(), &mut inner, depth + 1, out)
                {
                    return;
                }
            }
            // No boundary, or none found: mail-parser makes it a text part
            // that is not inline, i.e. an attachment.
            out.push(attachment(&part));
            return;
        }
    }
    let (mut inline, is_text, mime) = match ct {
        Some(c) => match c.ctype() {
            "text" => match c.subtype() {
                Some("plain") => (true, true, Mime::Plain),
                Some("html") => (true, true, Mime::Html),
                _ => (false, true, Mime::TextOther),
            },
            "image" | "audio" | "video" => (true, false, Mime::Inline),
            "message" if matches!(c.subtype(), Some("rfc822") | Some("global")) => {
                (false, false, Mime::Message)
            }
            _ => (false, false, Mime::Other),
        },
        None if ctx.kind == Kind::Digest => (false, false, Mime::Message),
        None => (true, true, Mime::Plain),
    };
    if !is_text {
        // Binary leaves and enclosed messages are always attachments.
        out.push(attachment(&part));
        return;
    }
    inline = inline
        && !part.disposition.is_some_and(|d| d.is_attachment())
        && (ctx.parts == 1
            || ctx.kind != Kind::Related
                && (mime == Mime::Inline || ct.is_none_or(|c| !c.has_attribute("name"))));
    let (add_html, add_text) = if ctx.kind == Kind::Alternative {
        match mime {
            Mime::Html => (true, false),
            Mime::Plain => (false, true),
            _ => (false, false),
        }
    } else if inline {
        if ctx.in_alternative && (ctx.need_text || ctx.need_html) {
            match mime {
                Mime::Html => ctx.need_text = false,
                Mime::Plain => ctx.need_html = false,
                _ => (),
            }
        }
        (ctx.need_html, ctx.need_text)
    } else {
        (false, false)
    };
    let is_html = mime == Mime::Html;
    if is_html && !add_html || !is_html && !add_text {
        out.push(attachment(&part));
    }
}

fn attachment(part: &Part<'_, '_>) -> Attachment {
    let enc = part.encoding.unwrap_or("");
    let size = if enc.eq_ignore_ascii_case("base64") {
        base64_decoded_len(part.body)
    } else if enc.eq_ignore_ascii_case("quoted-printable") {
        qp_decoded_len(part.body)
    } else {
        part.body.len()
    };
    Attachment {
        name: part.name.unwrap_or("").to_string(),
        size: size as u64,
    }
}

/// Walk the parts of a multipart body. Returns `false` when the body holds
/// no delimiter at all (nothing was recorded then).
fn walk_multipart(
    body: &[u8],
    boundary: &[u8],
    ctx: &mut Container,
    depth: usize,
    out: &mut Vec<Attachment>,
) -> bool {
    if boundary.is_empty() {
        return false;
    }
    let delimiters = Delimiters::new(boundary);
    let Some(first) = delimiters.find(body, 0) else {
        return false;
    };
    if first.close {
        return true;
    }
    let mut start = first.next;
    loop {
        let next = delimiters.find(body, start);
        let end = next.as_ref().map_or(body.len(), |d| d.break_at.max(start));
        let bytes = &body[start..end];
        let at = header_end(bytes);
        let headers =
            read_headers(&bytes[..at.unwrap_or(bytes.len())], Block::Part).unwrap_or_default();
        walk_part(
            headers.part(at.map_or(&[][..], |a| &bytes[a..])),
            ctx,
            depth,
            out,
        );
        match next {
            Some(d) if !d.close && d.next < body.len() => start = d.next,
            _ => return true,
        }
    }
}

struct Delimiter {
    /// Where the line break before the delimiter line starts (the end of
    /// the preceding part).
    break_at: usize,
    /// Just after the delimiter line.
    next: usize,
    /// `--boundary--`
    close: bool,
}

/// Finds delimiter lines of one boundary: `\n--boundary` searched with
/// memchr's substring search.
struct Delimiters<'b> {
    boundary: &'b [u8],
    finder: memchr::memmem::Finder<'static>,
}

impl<'b> Delimiters<'b> {
    fn new(boundary: &'b [u8]) -> Delimiters<'b> {
        let mut needle = Vec::with_capacity(boundary.len() + 3);
        needle.extend_from_slice(b"\n--");
        needle.extend_from_slice(boundary);
        Delimiters {
            boundary,
            finder: memchr::memmem::Finder::new(&needle).into_owned(),
        }
    }

    /// The first delimiter line at or after `from` (the start of a line).
    fn find(&self, b: &[u8], from: usize) -> Option<Delimiter> {
        if from == 0 {
            if let Some(d) = self.at_line(b, 0) {
                return Some(d);
            }
        }
        // Search from the line break that ends the previous line.
        let mut pos = from.saturating_sub(1);
        while pos < b.len() {
            let hit = pos + self.finder.find(&b[pos..])?;
            if hit + 1 >= from {
                if let Some(d) = self.at_line(b, hit + 1) {
                    return Some(d);
                }
            }
            pos = hit + 1;
        }
        None
    }

    /// A delimiter line starting at `line`, if the line is one: `--boundary`,
    /// an optional `--`, then only white space.
    fn at_line(&self, b: &[u8], line: usize) -> Option<Delimiter> {
        let rest = b.get(line..)?;
        if !(rest.starts_with(b"--") && rest[2..].starts_with(self.boundary)) {
            return None;
        }
        let mut i = line + 2 + self.boundary.len();
        let close = b[i..].starts_with(b"--");
        if close {
            i += 2;
        }
        let eol = memchr::memchr(b'\n', &b[i..]).map(|p| i + p);
        let tail = &b[i..eol.unwrap_or(b.len())];
        if !tail.iter().all(|&c| c == b' ' || c == b'\t' || c == b'\r') {
            return None;
        }
        let break_at = if line >= 2 && b[line - 2] == b'\r' {
            line - 2
        } else {
            line.saturating_sub(1)
        };
        Some(Delimiter {
            break_at,
            next: eol.map_or(b.len(), |p| p + 1),
            close,
        })
    }
}

/// Decoded length of a base64 body, without decoding it (see
/// [`MessageMeta::parse`]).
fn base64_decoded_len(b: &[u8]) -> usize {
    // Branch-free, with a byte-wide counter per block of 64 bytes, so that
    // the compiler vectorises the count 16 or 32 bytes at a time with no
    // scalar tail per block (a `usize` counter per byte kept it to a few
    // bytes per cycle); only the last, short block is counted byte by byte.
    let mut blocks = b.chunks_exact(64);
    let mut n: usize = (&mut blocks)
        .map(|block| {
            let k = block
                .iter()
                .fold(0u8, |k, &c| k + u8::from(is_base64_alphabet(c)));
            usize::from(k)
        })
        .sum();
    n += blocks
        .remainder()
        .iter()
        .filter(|&&c| is_base64_alphabet(c))
        .count();
    n / 4 * 3
        + match n % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

/// `A`-`Z`, `a`-`z`, `0`-`9`, `+` and `/`, without branches.
#[inline(always)]
fn is_base64_alphabet(c: u8) -> bool {
    let alpha = (c | 0x20).wrapping_sub(b'a') < 26;
    let digit = c.wrapping_sub(b'0') < 10;
    alpha | digit | (c == b'+') | (c == b'/')
}

/// Decoded length of a quoted-printable body, without decoding it (see
/// [`MessageMeta::parse`]): a line break counts as CRLF once a CR has been
/// seen, as LF before that (as mail-parser decodes it).
fn qp_decoded_len(b: &[u8]) -> usize {
    #[derive(PartialEq)]
    enum St {
        Plain,
        Eq,
        Hex1,
    }
    let mut n = 0usize;
    let mut ws = 0usize;
    let mut crlf = 1;
    let mut st = St::Plain;
    for &c in b {
        match c {
            b'=' if st == St::Plain => st = St::Eq,
            b'\n' => {
                if st == St::Eq {
                    st = St::Plain;
                } else {
                    n -= ws.min(n);
                    n += crlf;
                    st = St::Plain;
                }
                ws = 0;
            }
            b'\r' => crlf = 2,
            _ => match st {
                St::Plain => {
                    ws = if c == b' ' || c == b'\t' { ws + 1 } else { 0 };
                    n += 1;
                }
                St::Eq => {
                    if c.is_ascii_hexdigit() {
                        st = St::Hex1;
                    } else if !c.is_ascii_whitespace() {
                        st = St::Plain;
                        n += 2;
                        ws = 0;
                    }
                }
                St::Hex1 => {
                    st = St::Plain;
                    n += if c.is_ascii_hexdigit() { 1 } else { 3 };
                    ws = 0;
                }
            },
        }
    }
    n
}

fn clean_name(n: Option<&str>) -> Option<String> {
    // `trim_matches('"')` by bytes: a quote is one byte and never part of
    // another character, so the cut is on a character boundary.
    let t = n?.trim();
    let b = t.as_bytes();
    let start = b.iter().position(|&c| c != b'"').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b'"').map_or(start, |e| e + 1);
    let n = t.get(start..end).unwrap_or("").trim();
    if n.is_empty() {
        None
    } else {
        Some(n.to_string())
    }
}

fn id_list(v: Option<&HeaderValue>) -> Vec<String> {
    let Some(v) = v else { return Vec::new() };
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
    let mut out_index = RecipientIndex::default();
    let named = RecipientIndex::over(&meta.recipients);
    for raw in rcpt_to {
        let address = norm
            .normalize(raw)
            .unwrap_or_else(|_| raw.trim().to_lowercase());
        if out_index.find(&out, &address).is_some() {
            continue;
        }
        let r = match named.find(&meta.recipients, &address) {
            // The header's recipient has this very address: only its name
            // and field are taken from it.
            Some(i) => Recipient {
                address,
                name: meta.recipients[i].name.clone(),
                field: meta.recipients[i].field,
            },
            None => Recipient {
                address,
                name: None,
                field: Field::Bcc,
            },
        };
        out_index.push(&mut out, r);
    }
    out
}

/// Lists up to this long are searched one address after the other.
const LINEAR_LOOKUP_MAX: usize = 16;

/// Finds an address in a list of recipients that grows only by
/// [`RecipientIndex::push`]: by comparing every address while the list is
/// short, beyond [`LINEAR_LOOKUP_MAX`] by a 64-bit fingerprint of the
/// address (mapped to the first recipient with that fingerprint), compared
/// exactly, with a full scan when fingerprints collide. Either way the
/// result is the first recipient with that address.
#[derive(Default)]
struct RecipientIndex {
    by_fingerprint: Option<hashbrown::HashMap<u64, usize, foldhash::fast::FixedState>>,
    /// How many recipients of the list `by_fingerprint` has taken in.
    indexed: usize,
}

/// The fingerprint of an address: foldhash with a fixed seed.
fn fingerprint(address: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6d69_7364_6972_6563).hash_one(address)
}

impl RecipientIndex {
    /// An index of an existing list.
    fn over(list: &[Recipient]) -> RecipientIndex {
        let mut index = RecipientIndex::default();
        index.update(list);
        index
    }

    /// The position of the first recipient with this address.
    fn find(&self, list: &[Recipient], address: &str) -> Option<usize> {
        let Some(map) = &self.by_fingerprint else {
            return list.iter().position(|r| r.address == address);
        };
        let i = *map.get(&fingerprint(address))?;
        if list.get(i).is_some_and(|r| r.address == address) {
            Some(i)
        } else {
            list.iter().position(|r| r.address == address)
        }
    }

    /// Append a recipient to the indexed list.
    fn push(&mut self, list: &mut Vec<Recipient>, r: Recipient) {
        list.push(r);
        self.update(list);
    }

    /// Take in the recipients appended since the last call: nothing while
    /// the list is short, all of them when it first grows past the limit.
    fn update(&mut self, list: &[Recipient]) {
        if self.by_fingerprint.is_none() {
            if list.len() <= LINEAR_LOOKUP_MAX {
                return;
            }
            self.by_fingerprint = Some(hashbrown::HashMap::with_capacity_and_hasher(
                list.len() * 2,
                foldhash::fast::FixedState::default(),
            ));
        }
        let Some(map) = &mut self.by_fingerprint else {
            return;
        };
        for (i, r) in list.iter().enumerate().skip(self.indexed) {
            map.entry(fingerprint(&r.address)).or_insert(i);
        }
        self.indexed = list.len();
    }
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

#[cfg(test)]
mod reference_tests {
    use super::*;
    use crate::address::AddressConfig;

    fn norm() -> Normalizer {
        Normalizer::new(AddressConfig::default())
    }

    const HEAD: &str = "From: \"Alice A\" <alice@example.com>\r\n\
To: Bob <bob@example.com>, =?UTF-8?Q?J=C3=B6rg?= <jorg@example.de>\r\n\
Cc: carol@example.org\r\n\
Subject: =?UTF-8?B?UXVhcnRhbHNiZXJpY2h0?=\r\n\
Date: Tue, 3 Nov 2026 09:00:00 +0100\r\n\
Message-ID: <x1@example.com>\r\n\
MIME-Version: 1.0\r\n";

    fn b64(data: &[u8]) -> String {
        use base64::Engine;
        let enc = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = String::new();
        for chunk in enc.as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            out.push_str("\r\n");
        }
        out
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Leaf parts: (headers, body) with the body already transfer-encoded.
    fn leaves() -> Vec<(String, String)> {
        let qp_body = "Caf=C3=A9 au lait =\r\ncontinued line   \r\nsecond=3Dline\r\n=E2=82=AC 10";
        vec![
            (
                "Content-Type: text/plain; charset=utf-8\r\n".into(),
                "Hello Bob,\r\nsee attached.\r\n".into(),
            ),
            (
                "Content-Type: text/html; charset=utf-8\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n"
                    .into(),
                format!("<p>{qp_body}</p>"),
            ),
            (
                "Content-Type: application/pdf; name=\"q3.pdf\"\r\n\
                 Content-Disposition: attachment; filename=\"q3.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n"
                    .into(),
                b64(&bytes(1000)),
            ),
            (
                "Content-Type: application/octet-stream\r\n\
                 Content-Disposition: attachment;\r\n filename*=UTF-8''%C3%BCbersicht%20Q3.xlsx\r\n\
                 Content-Transfer-Encoding: base64\r\n"
                    .into(),
                b64(&bytes(1001)),
            ),
            (
                "Content-Type: image/png; name=\"=?UTF-8?Q?B=C3=BCro.png?=\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\
                 Content-ID: <img1@example.com>\r\n"
                    .into(),
                b64(&bytes(1002)),
            ),
            (
                "Content-Type: text/plain; charset=utf-8; name=\"notes.txt\"\r\n\
                 Content-Disposition: attachment; filename=\"notes.txt\"\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n"
                    .into(),
                qp_body.into(),
            ),
            (
                "Content-Type: text/csv; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 8bit\r\n"
                    .into(),
                "name,größe\r\nä,1\r\n".into(),
            ),
            (
                "Content-Type: text/plain; charset=utf-8\r\n\
                 Content-Disposition: inline\r\n\
                 Content-Transfer-Encoding: 8bit\r\n"
                    .into(),
                "Grüße aus Köln\r\n".into(),
            ),
            (
                "Content-Type: application/zip\r\n\
                 Content-Disposition: attachment; filename=\"a.zip\"\r\n"
                    .into(),
                "PK not really a zip, 7bit\r\nline two".into(),
            ),
            (
                "Content-Type: message/rfc822\r\n\
                 Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
                    .into(),
                "From: x@example.net\r\nTo: y@example.net\r\nSubject: inner\r\n\r\ninner body\r\n"
                    .into(),
            ),
            (
                "Content-Type: audio/mpeg; name=\"voice.mp3\"\r\n\
                 Content-Transfer-Encoding: base64\r\n"
                    .into(),
                b64(&bytes(5)),
            ),
            (
                String::new(),
                "no headers at all, default text/plain\r\n".into(),
            ),
        ]
    }

    fn multipart(subtype: &str, boundary: &str, parts: &[(String, String)], close: bool) -> String {
        let mut m = format!(
            "Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\n\
             This is a multi-part message in MIME format.\r\n"
        );
        for (h, b) in parts {
            m.push_str(&format!("--{boundary}\r\n{h}\r\n{b}\r\n"));
        }
        if close {
            m.push_str(&format!("--{boundary}--\r\nepilogue\r\n"));
        }
        m
    }

    fn as_part(multipart_text: String) -> (String, String) {
        match multipart_text.split_once("\r\n\r\n") {
            Some((h, b)) => (format!("{h}\r\n"), b.to_string()),
            None => (multipart_text, String::new()),
        }
    }

    /// Crafted messages on which the new parser must agree with the full
    /// mail-parser parse.
    fn corpus() -> Vec<String> {
        let l = leaves();
        let mut out = Vec::new();
        // Every leaf alone as the whole message.
        for (h, b) in &l {
            out.push(format!("{HEAD}{h}\r\n{b}"));
        }
        // Pairs and triples of leaves in mixed / related / alternative.
        for sub in ["mixed", "related", "alternative", "digest", "report"] {
            for i in 0..l.len() {
                for j in 0..l.len() {
                    // A headerless part of a digest is an enclosed message
                    // whose text mail-parser takes for headers: see
                    // `digest_part_without_headers`.
                    let parts = vec![l[i].clone(), l[j].clone(), l[(i + j) % l.len()].clone()];
                    if sub == "digest" && parts.iter().any(|p| p.0.is_empty()) {
                        continue;
                    }
                    out.push(format!("{HEAD}{}", multipart(sub, "b1=_x", &parts, true)));
                }
            }
        }
        // Nested: mixed( alternative(plain, related(html, png)), attachments )
        let related = as_part(multipart(
            "related",
            "rel",
            &[l[1].clone(), l[4].clone()],
            true,
        ));
        let alt = as_part(multipart(
            "alternative",
            "alt",
            &[l[0].clone(), related],
            true,
        ));
        for k in 2..l.len() {
            out.push(format!(
                "{HEAD}{}",
                multipart(
                    "mixed",
                    "outer",
                    &[alt.clone(), l[k].clone(), l[2].clone()],
                    true
                )
            ));
        }
        // Alternative with the html in a nested related, then a plain text.
        let rel2 = as_part(multipart(
            "related",
            "r2",
            &[l[1].clone(), l[4].clone()],
            true,
        ));
        out.push(format!(
            "{HEAD}{}",
            multipart("alternative", "a2", &[rel2.clone(), l[0].clone()], true)
        ));
        out.push(format!(
            "{HEAD}{}",
            multipart(
                "mixed",
                "m3",
                &[
                    as_part(multipart("mixed", "m4", &[rel2, l[7].clone()], true)),
                    l[3].clone()
                ],
                true
            )
        ));
        // LF-only line endings.
        for m in out.clone().iter().take(40) {
            out.push(m.replace("\r\n", "\n"));
        }
        // No MIME at all; headers only; 8-bit body.
        out.push(format!("{HEAD}\r\nplain body\r\n"));
        out.push(HEAD.to_string());
        out.push(format!("{HEAD}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄrger über Öl\r\n"));
        out
    }

    #[test]
    fn header_only_parser_matches_full_parse() {
        let n = norm();
        let corpus = corpus();
        let mut with_attachments = 0;
        for (i, raw) in corpus.iter().enumerate() {
            let new = MessageMeta::parse(raw.as_bytes(), &n);
            let old = parse_reference(raw.as_bytes(), &n);
            assert_eq!(new, old, "message {i} differs:\n{raw}");
            if !new.attachments.is_empty() {
                with_attachments += 1;
            }
        }
        // The sizes the README states for this comparison.
        assert_eq!(corpus.len(), 754);
        assert_eq!(with_attachments, 701);
    }

    fn atts(raw: &str) -> Vec<(String, u64)> {
        MessageMeta::parse(raw.as_bytes(), &norm())
            .attachments
            .into_iter()
            .map(|a| (a.name, a.size))
            .collect()
    }

    #[test]
    fn missing_final_delimiter_keeps_the_last_part_as_it_is() {
        let pdf = b64(&bytes(300));
        let raw = format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nbody text\r\n\
             --b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{pdf}"
        );
        assert_eq!(atts(&raw), vec![("a.pdf".to_string(), 300)]);
        // Truncated in the middle of the base64: what is there is counted.
        let cut = &raw[..raw.len() - 80];
        let a = atts(cut);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, "a.pdf");
        assert!(a[0].1 < 300 && a[0].1 > 200, "{a:?}");
        // The text body alone, without its final delimiter, is no attachment.
        let raw = format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nbody text\r\n"
        );
        assert_eq!(atts(&raw), vec![]);
    }

    #[test]
    fn multipart_without_any_delimiter_is_one_unnamed_attachment() {
        let raw = format!(
            "{HEAD}Content-Type: multipart/mixed; boundary=\"nowhere\"\r\n\r\n\
             --elsewhere\r\nContent-Type: text/plain\r\n\r\nxyz\r\n"
        );
        let body_len = "--elsewhere\r\nContent-Type: text/plain\r\n\r\nxyz\r\n".len();
        assert_eq!(atts(&raw), vec![(String::new(), body_len as u64)]);
        assert_eq!(
            parse_reference(raw.as_bytes(), &norm()).attachments.len(),
            1
        );
    }

    #[test]
    fn digest_part_without_headers_counts_its_raw_body() {
        let raw = format!(
            "{HEAD}Content-Type: multipart/digest; boundary=\"d\"\r\n\r\n\
             --d\r\n\r\nFrom: a@example.net\r\nSubject: one\r\n\r\nhi\r\n--d--\r\n"
        );
        let inner = "From: a@example.net\r\nSubject: one\r\n\r\nhi".len();
        assert_eq!(atts(&raw), vec![(String::new(), inner as u64)]);
        assert_eq!(
            parse_reference(raw.as_bytes(), &norm()),
            MessageMeta::parse(raw.as_bytes(), &norm())
        );
    }

    #[test]
    fn attachments_inside_a_forwarded_message_are_not_listed() {
        let inner = multipart(
            "mixed",
            "in",
            &[leaves()[0].clone(), leaves()[2].clone()],
            true,
        );
        let inner = format!("From: x@example.net\r\nSubject: fwd\r\n{inner}");
        let raw = format!(
            "{HEAD}{}",
            multipart(
                "mixed",
                "out",
                &[
                    leaves()[0].clone(),
                    (
                        "Content-Type: message/rfc822\r\n".to_string(),
                        inner.clone()
                    )
                ],
                true
            )
        );
        assert_eq!(atts(&raw), vec![(String::new(), inner.len() as u64)]);
        assert_eq!(
            parse_reference(raw.as_bytes(), &norm()),
            MessageMeta::parse(raw.as_bytes(), &norm())
        );
    }

    #[test]
    fn text_in_another_charset_is_counted_in_its_own_bytes() {
        // "caf\xe9" in Latin-1: 4 bytes; mail-parser converts it to UTF-8 (5).
        let mut raw = format!(
            "{HEAD}Content-Type: text/plain; charset=iso-8859-1; name=\"menu.txt\"\r\n\
             Content-Disposition: attachment; filename=\"menu.txt\"\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n"
        )
        .into_bytes();
        raw.extend_from_slice(b"caf\xe9");
        let new = MessageMeta::parse(&raw, &norm());
        assert_eq!(
            new.attachments,
            vec![Attachment {
                name: "menu.txt".into(),
                size: 4
            }]
        );
        let old = parse_reference(&raw, &norm());
        assert_eq!(old.attachments[0].size, 5);
    }

    /// Random field values built from items (`plain` and `odd`), `seps`,
    /// `leads` and `tails`
    /// (see the fast-path tests), each after a field name, so that a fast
    /// path starts where the reader would call it: after the colon.
    fn field_values(
        seed: u64,
        leads: &[&[u8]],
        (plain, odd): (&[&[u8]], &[&[u8]]),
        seps: &[&[u8]],
        tails: &[&[u8]],
    ) -> Vec<Vec<u8>> {
        let mut rnd = crate::testutil::xorshift_below(seed);
        (0..20_000)
            .map(|_| {
                let mut b = b"X:".to_vec();
                b.extend_from_slice(leads[rnd(leads.len())]);
                for k in 0..1 + rnd(4) {
                    if k > 0 {
                        b.extend_from_slice(seps[rnd(seps.len())]);
                    }
                    // One item in eight of the odd shapes.
                    let items = if rnd(8) == 0 { odd } else { plain };
                    b.extend_from_slice(items[rnd(items.len())]);
                }
                b.extend_from_slice(tails[rnd(tails.len())]);
                b
            })
            .collect()
    }

    /// Compare a fast path with mail-parser's parser on `values`: wherever
    /// the fast path reads a value, it is mail-parser's value and ends where
    /// mail-parser stops. Returns how many values the fast path read.
    fn fast_path_agrees(
        values: &[Vec<u8>],
        fast: FastPath,
        slow: for<'x> fn(&mut MessageStream<'x>) -> HeaderValue<'x>,
    ) -> usize {
        let mut read = 0;
        for v in values {
            let Some((ours, end)) = fast(v, 2) else {
                continue;
            };
            read += 1;
            let mut s = MessageStream::new(v);
            s.skip_bytes(2);
            let theirs = slow(&mut s);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(v));
            assert_eq!(end, s.offset(), "{:?}", String::from_utf8_lossy(v));
        }
        read
    }

    #[test]
    fn address_fast_path_matches_mail_parser() {
        let items: &[&[u8]] = &[
            // Plain shapes.
            b"a@b.c",
            b"Bob.Smith+tag@Example.COM",
            b"<x@y.z>",
            b"\"Alice A\" <alice@ex.com>",
            b"\"Smith, J. (Sales)\" <j@x.org>",
            b"\" Spaced \" <s@x.org>",
            b"Bob <bob@x.y>",
            b"Bob  O'Brien-Smith <b@x.y>",
            b"Bob\r\n <folded@x.y>",
            b"\"Q\"\r\n\t<q@x.y>",
        ];
        // Shapes left to mail-parser.
        let odd: &[&[u8]] = &[
            b"=?UTF-8?Q?J=C3=B6rg?= <j@x.de>",
            b"\"=?UTF-8?Q?J=C3=B6rg?=\" <j@x.de>",
            b"(comment) c@x.org",
            b"c@x.org (Carol)",
            b"team: a@x.org, b@x.org;",
            b"undisclosed-recipients:;",
            b"\"Esc\\\"aped\" <e@x.org>",
            b"J\xc3\xb6rg <j@x.de>",
            b"\"J\xc3\xb6rg\" <j@x.de>",
            b"<a@b> Name",
            b"a@b c@d",
            b"Bob<b@x.y>",
            b"\"x\"<y@z.w>",
            b"<a b@c.d>",
            b"<>",
            b"\"\" <e@x.org>",
            b"Bob @ x <a@b.c>",
            b"<a@b.c",
            b"a@b.c>",
            b"\"unterminated <u@v.w>",
            b"Bob\r\n Smith <b@x.y>",
            b"a\r@b.c",
            b"",
        ];
        let seps: &[&[u8]] = &[
            b",",
            b", ",
            b",\r\n ",
            b"\r\n\t, ",
            b" ,",
            b",,",
            b";",
            b"\n ,",
        ];
        let leads: &[&[u8]] = &[b"", b" ", b"  \t", b"\r\n ", b"\n\t"];
        let tails: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"",
            b" \r\n",
            b"\r\r\n",
            b"\n\t\n",
            b"\r\nNext: x\r\n",
            b",\r\n",
            b"\r\n \r\n\r\n",
        ];
        let values = field_values(0x5eed_add7, leads, (items, odd), seps, tails);
        let read = fast_path_agrees(&values, plain_addresses, |s| s.parse_address());
        // Many values are read here, and many left to mail-parser.
        assert!(read > 5_000 && read < values.len() - 5_000, "{read}");
    }

    #[test]
    fn id_fast_path_matches_mail_parser() {
        let items: &[&[u8]] = &[
            b"<m1@example.com>",
            b"<20261123101500.4711@corp.example>",
            b"<a.b-c$d!#%&'*+/=?^_`{|}~@x>",
            b"<\"quoted\"@x>",
        ];
        // Left to mail-parser.
        let odd: &[&[u8]] = &[
            b"m1@example.com",
            b"<a b@c>",
            b"<<a>>",
            b"<>",
            b"<\xc3\xa9@x>",
            b"(comment)",
            b"<a@b>junk",
            b"<a@b",
            b"",
        ];
        let seps: &[&[u8]] = &[b"", b" ", b"\r\n ", b"\n\t", b"\t \t", b","];
        let leads: &[&[u8]] = &[b"", b" ", b"\r\n ", b"\n "];
        let tails: &[&[u8]] = &[b"\r\n", b"\n", b"", b" \r\n", b"\r\r\n", b"\r\nNext: x\r\n"];
        let values = field_values(0x1d50_f1d5, leads, (items, odd), seps, tails);
        let read = fast_path_agrees(&values, plain_ids, |s| s.parse_id());
        assert!(read > 5_000 && read < values.len() - 5_000, "{read}");
    }

    #[test]
    fn unstructured_fast_path_matches_mail_parser() {
        let items: &[&[u8]] = &[
            b"Q3 forecast",
            b"RE: Lunch?",
            b"base64",
            b"7bit",
            b"a\rb",
            b"x = y? z",
            b"caf\xc3\xa9",
            b"100%",
        ];
        // Left to mail-parser (or read to Empty).
        let odd: &[&[u8]] = &[
            b"=?UTF-8?Q?J=C3=B6rg?=",
            b"=?x",
            b"a=?b",
            b"\xff\xfe",
            b"\xc3",
            b"",
            b"\r",
        ];
        let seps: &[&[u8]] = &[b" ", b"\t", b"\r\n ", b"\n\t", b"  ", b"\r"];
        let leads: &[&[u8]] = &[b"", b" ", b"\t ", b"\r\n ", b"\r"];
        let tails: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"",
            b" \r\n",
            b"\r\r\n",
            b"\t\n",
            b"\r\nNext: x\r\n",
        ];
        let values = field_values(0x5b1e_c7ed, leads, (items, odd), seps, tails);
        let read = fast_path_agrees(&values, plain_unstructured, |s| s.parse_unstructured());
        assert!(read > 5_000 && read < values.len() - 5_000, "{read}");
    }

    #[test]
    fn content_type_fast_path_matches_mail_parser() {
        let types: &[&[u8]] = &[
            b"text/plain",
            b"multipart/mixed",
            b"Text/HTML",
            b"application/vnd.ms-excel",
            b"attachment",
        ];
        let params: &[&[u8]] = &[
            b"charset=utf-8",
            b"charset=UTF-8",
            b"Charset=\"ISO-8859-1\"",
            b"boundary=\"----=_Part_1_2.3\"",
            b"boundary=b1=_x",
            b"name=\"Q3 forecast; final (v2).pdf\"",
            b"filename=q3.pdf",
            b"format=flowed",
        ];
        let odd: &[&[u8]] = &[
            b"name*=UTF-8''%C3%BCber.txt",
            b"name*0=\"a\"",
            b"name=\"=?UTF-8?Q?J=C3=B6rg?=\"",
            b"name==?UTF-8?Q?x?=",
            b"name=\"esc\\\"aped\"",
            b"name=\"\"",
            b"name=",
            b"name = x",
            b"(comment)",
            b"text/plain (comment)",
            b"name=\"J\xc3\xb6rg.pdf\"",
            b"text/",
            b"/plain",
            b"name=\"unterminated",
            b"a b",
            b"",
        ];
        let seps: &[&[u8]] = &[b"; ", b";", b";\r\n ", b"\r\n\t; ", b" ;", b";;", b" "];
        let leads: &[&[u8]] = &[b"", b" ", b"\r\n ", b"\n\t"];
        let tails: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"",
            b" \r\n",
            b";\r\n",
            b"\r\r\n",
            b"\r\nNext: x\r\n",
        ];
        // A type, then parameters; one item in eight of the odd shapes.
        let mut rnd = crate::testutil::xorshift_below(0xc0_47e7);
        let values: Vec<Vec<u8>> = (0..20_000)
            .map(|_| {
                let mut b = b"X:".to_vec();
                b.extend_from_slice(leads[rnd(leads.len())]);
                for k in 0..1 + rnd(4) {
                    let items = match (rnd(8), k) {
                        (0, _) => odd,
                        (_, 0) => types,
                        _ => params,
                    };
                    if k > 0 {
                        b.extend_from_slice(seps[rnd(seps.len())]);
                    }
                    b.extend_from_slice(items[rnd(items.len())]);
                }
                b.extend_from_slice(tails[rnd(tails.len())]);
                b
            })
            .collect();
        let read = fast_path_agrees(&values, plain_content_type, |s| s.parse_content_type());
        assert!(read > 3_000 && read < values.len() - 3_000, "{read}");
    }

    #[test]
    fn base64_block_count_equals_the_simple_count() {
        let mut rnd = crate::testutil::xorshift(0x0bad_cafe_f00d_1234u64);
        let simple = |b: &[u8]| {
            let n = b
                .iter()
                .filter(|c| c.is_ascii_alphanumeric() || **c == b'+' || **c == b'/')
                .count();
            n / 4 * 3 + [0, 0, 1, 2][n % 4]
        };
        for len in (0..400).chain([1000, 4096, 4097, 65_535, 65_536, 70_000]) {
            // Every byte value, and base64 text with line breaks.
            let any: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            assert_eq!(base64_decoded_len(&any), simple(&any), "{len} random bytes");
            let text: Vec<u8> = (0..len)
                .map(|i| {
                    if i % 78 == 76 {
                        b'\r'
                    } else if i % 78 == 77 {
                        b'\n'
                    } else {
                        b"ABCxyz019+/="[(rnd() % 12) as usize]
                    }
                })
                .collect();
            assert_eq!(
                base64_decoded_len(&text),
                simple(&text),
                "{len} base64 bytes"
            );
        }
        // All 64 bytes of a block in the alphabet (the byte counter's
        // most): 323 characters are 80 groups of 3 bytes and 2 more.
        assert_eq!(base64_decoded_len(&[b'A'; 64 * 5 + 3]), 242);
    }

    #[test]
    fn decoded_sizes_are_exact_for_every_length() {
        for n in 0..200usize {
            let data = bytes(n);
            let enc = b64(&data);
            assert_eq!(base64_decoded_len(enc.as_bytes()), n, "base64 of {n} bytes");
        }
        assert_eq!(qp_decoded_len(b"a=3Db"), 3);
        assert_eq!(qp_decoded_len(b"soft =\r\nbreak"), 10);
        assert_eq!(qp_decoded_len(b"trail  \r\nx"), 8);
        assert_eq!(qp_decoded_len(b"lf only\nx"), 9);
        // `=Z` is kept as two bytes; a cut `=4` at the very end counts nothing.
        assert_eq!(qp_decoded_len(b"bad =ZZ and =4"), 12);
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let n = norm();
        let mut rnd = crate::testutil::xorshift(0x2545_f491_4f6c_dd1du64);
        let corpus = corpus();
        for raw in corpus.iter().step_by(7) {
            let b = raw.as_bytes();
            for cut in (0..b.len()).step_by(b.len() / 40 + 1) {
                let m = MessageMeta::parse(&b[..cut], &n);
                assert!(m.attachments.len() <= 10);
            }
            let mut junk = b.to_vec();
            for _ in 0..30 {
                let i = (rnd() as usize) % junk.len().max(1);
                if let Some(c) = junk.get_mut(i) {
                    *c = match rnd() % 4 {
                        0 => b'\n',
                        1 => b'-',
                        2 => b'=',
                        _ => rnd() as u8,
                    };
                }
            }
            let m = MessageMeta::parse(&junk, &n);
            assert!(m.attachments.len() <= 10);
        }
        // Nesting far deeper than anything real.
        let mut raw = String::from(HEAD);
        for d in 0..500 {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"d{d}\"\r\n\r\n--d{d}\r\n"
            ));
        }
        raw.push_str("Content-Type: application/pdf; name=\"deep.pdf\"\r\n\r\nxx\r\n");
        let m = MessageMeta::parse(raw.as_bytes(), &n);
        assert!(m.attachments.len() <= 1);
        assert_eq!(m.sender(), Some("alice@example.com"));
    }

    /// Every name [`Hdr::lookup`] knows, as mail-parser names the header.
    fn hdr_names() -> Vec<(Hdr, HeaderName<'static>)> {
        vec![
            (Hdr::From, HeaderName::From),
            (Hdr::To, HeaderName::To),
            (Hdr::Cc, HeaderName::Cc),
            (Hdr::Bcc, HeaderName::Bcc),
            (Hdr::Date, HeaderName::Date),
            (Hdr::MessageId, HeaderName::MessageId),
            (Hdr::InReplyTo, HeaderName::InReplyTo),
            (Hdr::References, HeaderName::References),
            (Hdr::Subject, HeaderName::Subject),
            (Hdr::ContentType, HeaderName::ContentType),
            (Hdr::ContentDisposition, HeaderName::ContentDisposition),
            (
                Hdr::ContentTransferEncoding,
                HeaderName::ContentTransferEncoding,
            ),
            (Hdr::ContentId, HeaderName::ContentId),
            (Hdr::ContentDescription, HeaderName::ContentDescription),
            (Hdr::ContentLocation, HeaderName::ContentLocation),
        ]
    }

    #[test]
    fn header_names_are_looked_up_as_mail_parser_does() {
        let table = hdr_names();
        let mut names: Vec<String> = Vec::new();
        for (_, n) in &table {
            let s = n.as_str().to_string();
            names.push(s.clone());
            names.push(s.to_ascii_uppercase());
            names.push(s.to_ascii_lowercase());
            names.push(format!(" {s} "));
            names.push(format!(":{s}"));
            names.push(format!("::{s}"));
            names.push(format!("{s}x"));
            names.push(format!("x{s}"));
            names.push(format!("Resent-{s}"));
            names.push(s.replace('-', " - "));
            names.push(s.replace('-', ""));
            names.push(s.replace('-', "_"));
            let mid = s.len() / 2;
            names.push(format!("{}\t{}", &s[..mid], &s[mid..]));
            names.push(format!("{}\r{}", &s[..mid], &s[mid..]));
            names.push(format!("{}\n{}", &s[..mid], &s[mid..]));
        }
        names.extend(
            [
                "",
                " ",
                ":",
                "Reply-To",
                "Sender",
                "Received",
                "X-Mailer",
                "DKIM-Signature",
                "Content-Language",
                "X-Ms-Exchange-Organization-AuthSource-Longer-Than-34",
                "Content-Transfer-Encoding-Extended",
                "Fröm",
                "From\u{ff}",
                "Message-Id",
                "MESSAGE-ID",
                "In-Reply-To-",
                "T o",
                "C C",
            ]
            .map(String::from),
        );
        for name in &names {
            for rest in [": value\r\n", ":", "", "\n: x"] {
                let data = format!("{name}{rest}");
                let data = data.as_bytes();
                let mut stream = MessageStream::new(data);
                let theirs = stream.parse_header_name();
                let mut pos = 0;
                let ours = field_name(data, &mut pos);
                let expected = theirs.map(|t| table.iter().find(|(_, n)| *n == t).map(|(h, _)| *h));
                assert_eq!(ours, expected, "{name:?}{rest:?}");
                assert_eq!(pos.min(data.len()), stream.offset(), "{name:?}{rest:?}");
            }
        }
        // Every name in the table is found in every case.
        for (h, n) in &table {
            let lc = n.as_str().to_ascii_lowercase();
            assert_eq!(Hdr::lookup(lc.as_bytes()), Some(*h));
            assert_eq!(Hdr::lookup(n.as_str().as_bytes()), None, "only lower case");
        }
        assert!(names.len() > 200);
    }

    /// Header blocks built from fields of every kind mail-parser tells
    /// apart: folded, encoded words, groups, comments, duplicates, odd case
    /// and spacing in names, 8-bit and invalid UTF-8, empty values, lines
    /// without a colon, stray white space, with and without a final blank
    /// line.
    fn header_blocks() -> Vec<Vec<u8>> {
        let names = [
            "From",
            "To",
            "Cc",
            "Bcc",
            "Date",
            "Message-ID",
            "In-Reply-To",
            "References",
            "Subject",
            "Content-Type",
            "Content-Disposition",
            "Content-Transfer-Encoding",
            "Content-ID",
            "Content-Description",
            "Content-Location",
            "FROM",
            "to",
            "cC",
            "Fr om",
            " Subject",
            "X-Mailer",
            "Received",
            "DKIM-Signature",
            "Reply-To",
            "Sender",
            "X-A-Very-Long-Header-Name-Beyond-Thirty-Four",
            ":To",
            "Resent-From",
        ];
        let values: &[&[u8]] = &[
            b" \"Alice A\" <Alice@Example.com>",
            b" Bob <bob@example.com>, =?UTF-8?Q?J=C3=B6rg?= <jorg@example.de>",
            b" team: a@x.org, \"B, b\" <b@x.org>;, c@y.org",
            b" (comment) carol@example.org (Carol)",
            b" d@e.f,\r\n\tg@h.i,\r\n  <J@K.L>",
            b" undisclosed-recipients:;",
            b" <m1@example.com> <m2@example.com>",
            b" <m3@example.com>\r\n <m4@example.com>",
            b" Tue, 3 Nov 2026 09:00:00 +0100",
            b" 3 Nov 2026 09:00 -0000 (UTC)",
            b" not a date",
            b" =?UTF-8?B?UXVhcnRhbHNiZXJpY2h0?= and =?ISO-8859-1?Q?caf=E9?=",
            b" Re: \xc3\x84rger \xff\xfe raw 8-bit",
            b" multipart/mixed; boundary=\"b1=_x\"",
            b" text/plain;\r\n charset=utf-8; name*=UTF-8''%C3%BCber.txt",
            b" attachment; filename=\"q3.pdf\"",
            b" base64",
            b" QUOTED-printable (comment)",
            b" from mx.example ([10.0.0.1]) by mx2;\r\n\tTue, 3 Nov 2026 09:00:00 +0100",
            b" v=1; a=rsa-sha256;\r\n\tb=QUJD\r\n\t DEF=",
            b"",
            b" ",
            b"\r\n\tfolded right away <x@y.z>",
            b" \"unterminated <u@v.w>",
            b" <<<>>>@@",
            b" a@b\rc@d",
            b" with: colon: in value",
        ];
        let tails: &[&[u8]] = &[b"\r\n", b"\n", b"\r\n", b"\n\t\n", b"\r\r\n"];
        let mut rnd = crate::testutil::xorshift_below(0x2545_f491_4f6c_dd1du64);
        let mut out = Vec::new();
        for _ in 0..3000 {
            let mut b = Vec::new();
            if rnd(10) == 0 {
                b.extend_from_slice(b"  \t");
            }
            for _ in 0..1 + rnd(12) {
                match rnd(20) {
                    0 => b.extend_from_slice(b"a line without a colon"),
                    1 => b.extend_from_slice(b" \t "),
                    _ => {
                        b.extend_from_slice(names[rnd(names.len())].as_bytes());
                        b.extend_from_slice(if rnd(8) == 0 { b" :" } else { b":" });
                        b.extend_from_slice(values[rnd(values.len())]);
                    }
                }
                b.extend_from_slice(tails[rnd(tails.len())]);
            }
            match rnd(4) {
                0 => {}
                1 => b.extend_from_slice(b"\r\n"),
                2 => b.extend_from_slice(b"\n"),
                _ => {
                    // Cut anywhere.
                    let cut = rnd(b.len() + 1);
                    b.truncate(cut);
                }
            }
            out.push(b);
        }
        out.push(Vec::new());
        out.push(b"\r\n".to_vec());
        out.push(b"From".to_vec());
        out.push(b"From:".to_vec());
        out.push(b": :\r\n".to_vec());
        out.push(b"To: a@b.c\r\n\r\nTo: late@b.c\r\n".to_vec());
        out.push(b"To: a@b.c\nTo:\n".to_vec());
        out.push(b"Subject: one\r\nSubject: two\r\n".to_vec());
        out
    }

    #[test]
    fn header_reader_matches_mail_parser_parse_headers() {
        let blocks = header_blocks();
        let mut seen = [0usize; KEPT];
        let mut none = 0;
        for (i, b) in blocks.iter().enumerate() {
            for (block, parser) in [(Block::Message, &*PARSER), (Block::Part, &*PART_PARSER)] {
                let ours = read_headers(b, block);
                let theirs = parser.parse_headers(b.as_slice());
                match (&ours, &theirs) {
                    (None, None) => none += 1,
                    (Some(o), Some(t)) => {
                        let mut t = Headers::of_message(t);
                        if block == Block::Part {
                            // Headers a part's configuration does not decode
                            // are there as empty values; misdirect reads
                            // only the MIME ones of a part.
                            for v in t.values.iter_mut().take(Hdr::ContentType as usize) {
                                *v = None;
                            }
                        }
                        assert!(
                            o.values == t.values,
                            "block {i} differs:\n{}\nours {:?}\ntheirs {:?}",
                            String::from_utf8_lossy(b),
                            o.values,
                            t.values
                        );
                        for (k, v) in o.values.iter().enumerate() {
                            if v.is_some() {
                                seen[k] += 1;
                            }
                        }
                    }
                    _ => panic!(
                        "block {i}: ours {} theirs {}:\n{}",
                        ours.is_some(),
                        theirs.is_some(),
                        String::from_utf8_lossy(b)
                    ),
                }
            }
        }
        // Every header was decoded in many blocks, and some had no field.
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
        assert!(none > 2, "{none}");
        // Whole messages built on these blocks: the metadata but the
        // attachments is what mail-parser's header parse gives for the
        // block `parse` reads (which ends at the first line of only white
        // space, even one mail-parser would take as folding).
        let n = norm();
        for b in blocks.iter().step_by(3) {
            let mut raw = b.clone();
            raw.extend_from_slice(b"\r\nbody\r\n");
            let block = &raw[..header_end(&raw).unwrap_or(raw.len())];
            let expected = PARSER
                .parse_headers(block)
                .map_or_else(MessageMeta::default, |m| {
                    MessageMeta::from_headers(&Headers::of_message(&m), &n)
                });
            let mut meta = MessageMeta::parse(&raw, &n);
            meta.attachments.clear();
            assert_eq!(meta, expected, "{}", String::from_utf8_lossy(&raw));
        }
    }

    /// The dedupe before fingerprints: each address compared with every
    /// one kept so far.
    fn envelope_recipients_linear(
        meta: &MessageMeta,
        rcpt_to: &[String],
        norm: &Normalizer,
    ) -> Vec<Recipient> {
        let mut out: Vec<Recipient> = Vec::new();
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

    #[test]
    fn repeated_recipients_are_kept_once_in_first_field_order() {
        let n = norm();
        let mut rnd = crate::testutil::xorshift_below(0x1234_5678_9abc_def1u64);
        for count in [1usize, 3, 15, 16, 17, 18, 33, 60, 150] {
            let pool = count * 2 / 3 + 1;
            let mut headers = String::from("From: s@corp.example\r\n");
            let mut expected: Vec<Recipient> = Vec::new();
            let mut rcpt_to = Vec::new();
            for (field, hname) in [(Field::To, "To"), (Field::Cc, "Cc"), (Field::Bcc, "Bcc")] {
                let mut spelled = Vec::new();
                for _ in 0..count / 3 + 1 {
                    let k = rnd(pool);
                    let (text, name) = match rnd(4) {
                        0 => (
                            format!("\"Person {k}\" <P{k}@Example.COM>"),
                            Some(format!("Person {k}")),
                        ),
                        1 => (format!("p{k}+tag{}@example.com", rnd(9)), None),
                        2 => (format!("<p{k}@EXAMPLE.com>"), None),
                        _ => (
                            format!("Person{k} <p{k}@example.com>"),
                            Some(format!("Person{k}")),
                        ),
                    };
                    let address = format!("p{k}@example.com");
                    rcpt_to.push(format!("<P{k}+x@example.com>"));
                    if !expected.iter().any(|r| r.address == address) {
                        expected.push(Recipient {
                            address,
                            name,
                            field,
                        });
                    }
                    spelled.push(text);
                }
                headers.push_str(&format!("{hname}: {}\r\n", spelled.join(",\r\n ")));
            }
            for k in 0..count / 4 {
                rcpt_to.push(format!("stranger{k}@elsewhere.example"));
                rcpt_to.push(format!("not an address {}", k % 3));
            }
            // Shuffle the envelope.
            for i in (1..rcpt_to.len()).rev() {
                rcpt_to.swap(i, rnd(i + 1));
            }
            let raw = format!("{headers}Subject: x\r\n\r\nbody\r\n");
            let meta = MessageMeta::parse(raw.as_bytes(), &n);
            assert_eq!(meta.recipients, expected, "{count} recipients");
            assert_eq!(meta, parse_reference(raw.as_bytes(), &n));
            let env = envelope_recipients(&meta, &rcpt_to, &n);
            assert_eq!(
                env,
                envelope_recipients_linear(&meta, &rcpt_to, &n),
                "{count}"
            );
            // A list with repeats (not one from_headers makes) is searched
            // for its first match too.
            let mut doubled = meta.clone();
            doubled
                .recipients
                .extend(meta.recipients.iter().rev().map(|r| Recipient {
                    field: Field::Cc,
                    ..r.clone()
                }));
            assert_eq!(
                envelope_recipients(&doubled, &rcpt_to, &n),
                envelope_recipients_linear(&doubled, &rcpt_to, &n)
            );
        }
    }

    #[test]
    fn fingerprints_differ_for_close_addresses() {
        let base = "alice.smith@example.com";
        let mut close = vec![base.to_string()];
        for (i, _) in base.char_indices() {
            for c in ['a', 'b', 'z', '.', '0', '+', 'A'] {
                let mut s = base.to_string();
                s.replace_range(i..i + 1, &c.to_string());
                close.push(s.clone());
                s.insert(i, c);
                close.push(s);
            }
            let mut s = base.to_string();
            s.remove(i);
            close.push(s);
        }
        close.push(format!("{base}."));
        close.push(format!("{base}\0"));
        close.extend((0..2000).map(|k| format!("p{k}@example.com")));
        close.sort();
        close.dedup();
        let fps: std::collections::HashSet<u64> = close.iter().map(|a| fingerprint(a)).collect();
        assert_eq!(fps.len(), close.len());

        // A collision (forced by pointing one fingerprint at another
        // address) still finds the right recipient, and a missing one none.
        let list: Vec<Recipient> = close
            .iter()
            .take(40)
            .map(|a| Recipient {
                address: a.clone(),
                name: None,
                field: Field::To,
            })
            .collect();
        let mut index = RecipientIndex::over(&list);
        for (i, r) in list.iter().enumerate() {
            assert_eq!(index.find(&list, &r.address), Some(i));
        }
        assert_eq!(index.find(&list, "nobody@example.com"), None);
        if let Some(map) = &mut index.by_fingerprint {
            map.insert(fingerprint(&list[30].address), 3);
        }
        assert_eq!(index.find(&list, &list[30].address), Some(30));
        // Short lists are not fingerprinted at all.
        assert!(RecipientIndex::over(&list[..LINEAR_LOOKUP_MAX])
            .by_fingerprint
            .is_none());
    }
}
