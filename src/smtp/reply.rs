//! SMTP replies: a code, an enhanced status code and text.

use std::borrow::Cow;

/// One SMTP reply (possibly multi-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `5.7.1`; empty for 220/221/354
    /// style replies that carry none.
    pub enhanced: Cow<'static, str>,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(
        code: u16,
        enhanced: impl Into<Cow<'static, str>>,
        text: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            code,
            enhanced: enhanced.into(),
            lines: vec![text.into()],
        }
    }

    /// Positive completion (2xx).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Counts as a client error for the bad-command limit.
    pub fn is_client_error(&self) -> bool {
        matches!(self.code, 500..=504 | 555)
    }

    /// Wire form, CRLF-terminated lines. Text is sanitised: no CR/LF inside
    /// a line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(|l| l.as_ref()).unwrap_or("");
            let sep = if i + 1 == n { b' ' } else { b'-' };
            write_line(out, self.code, sep, &self.enhanced, text);
        }
    }

    /// Wire form as a string (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// First line without code, for log lines.
    pub fn summary(&self) -> String {
        let text = self.lines.first().map(|l| l.as_ref()).unwrap_or("");
        if self.enhanced.is_empty() {
            format!("{} {text}", self.code)
        } else {
            format!("{} {} {text}", self.code, self.enhanced)
        }
    }
}

/// One line of a reply in wire form: code, `sep` (`b' '` on the last line,
/// `b'-'` before), the enhanced code if any, the text with CR and LF
/// replaced by spaces, CRLF. [`Reply::write_to`] writes each line with it;
/// a session writes fixed one-line replies with it directly.
pub fn write_line(out: &mut Vec<u8>, code: u16, sep: u8, enhanced: &str, text: &str) {
    push_code(out, code);
    out.push(sep);
    if !enhanced.is_empty() {
        out.extend_from_slice(enhanced.as_bytes());
        out.push(b' ');
    }
    // CR and LF are single bytes in UTF-8 (never part of another
    // character), so replacing them byte-wise keeps the text valid.
    let start = out.len();
    out.extend_from_slice(text.as_bytes());
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The reply code in decimal, without a temporary string.
fn push_code(out: &mut Vec<u8>, code: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = code;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(
            Reply::new(550, "5.7.1", "no\r\nway").to_wire(),
            "550 5.7.1 no  way\r\n"
        );
        let r = Reply {
            code: 250,
            enhanced: "".into(),
            lines: vec!["host".into(), "PIPELINING".into()],
        };
        assert_eq!(r.to_wire(), "250-host\r\n250 PIPELINING\r\n");
        // Non-ASCII text stays intact around a replaced line break.
        assert_eq!(
            Reply::new(421, "", "Grüße\naus Köln\r").to_wire(),
            "421 Grüße aus Köln \r\n"
        );
    }
}
