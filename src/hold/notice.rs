//! The notice a sender gets when a message is held: an RFC 5322 message in
//! plain words, from/reply-to the release address.

use base64::Engine;

use crate::graph::Ts;
use crate::outbound::spool::HeldMeta;

/// Everything a notice needs besides the held message's metadata.
#[derive(Debug, Clone)]
pub struct NoticeParts<'a> {
    /// The release address (with the token) the sender replies to.
    pub release_address: &'a str,
    /// From address (the release address when `None`).
    pub from: Option<&'a str>,
    /// Subject and Message-ID of the held message, if it had them.
    pub subject: Option<&'a str>,
    pub message_id: Option<&'a str>,
    /// When the reply stops working.
    pub token_expires_at: Ts,
    /// What happens when nobody releases it: "discarded" or "sent anyway".
    pub on_expiry: &'a str,
    pub now: Ts,
}

/// RFC 5322 date of a Unix time (UTC).
pub fn rfc5322_date(t: Ts) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An unstructured header value: as is when printable ASCII, else an
/// RFC 2047 UTF-8 base64 encoded word.
fn header_text(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.is_ascii() {
        clean
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(clean.as_bytes())
        )
    }
}

/// Build the notice for a held message. Lines end in CRLF; the body is
/// UTF-8 sent base64-encoded so it passes any next hop.
pub fn build_notice(meta: &HeldMeta, p: &NoticeParts<'_>) -> Vec<u8> {
    let sender = &meta.envelope.mail_from;
    let subject = p.subject.unwrap_or("(no subject)");
    let mut worst: Vec<_> = meta.verdict.recipients.iter().collect();
    worst.sort_by(|a, b| b.score.total_cmp(&a.score));
    let flagged: Vec<_> = worst
        .iter()
        .enumerate()
        .filter(|(i, r)| *i == 0 || r.score >= 0.5)
        .map(|(_, r)| *r)
        .collect();

    let mut body = String::new();
    body.push_str(&format!(
        "Your message \"{}\" to {} has not been sent yet.\n\n",
        subject
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>(),
        meta.envelope.rcpt_to.join(", ")
    ));
    body.push_str("It looks as if it may be going to the wrong person:\n\n");
    for r in &flagged {
        body.push_str(&format!("  * {}\n", r.address));
        if r.reasons.is_empty() {
            body.push_str("      this recipient does not fit your usual correspondence\n");
        }
        for reason in &r.reasons {
            body.push_str(&format!("      {reason}\n"));
        }
    }
    body.push_str(
        "\nIf the recipients are right, simply reply to this message (what you \
         write does not matter) and it will be sent at once.\n",
    );
    body.push_str(&format!(
        "Replying works until {}.\n",
        rfc5322_date(p.token_expires_at)
    ));
    body.push_str(&format!(
        "If nobody releases it, the message will be {} on {}.\n\n",
        p.on_expiry,
        rfc5322_date(meta.expires_at)
    ));
    body.push_str(&format!(
        "If a recipient is wrong, do nothing: fix the address and send the message again.\n\n\
         Hold reference: {}\n",
        meta.id
    ));

    let from = p.from.unwrap_or(p.release_address);
    let mut out = String::new();
    out.push_str(&format!("From: Misdirect <{from}>\r\n"));
    out.push_str(&format!("Reply-To: <{}>\r\n", p.release_address));
    out.push_str(&format!("To: <{sender}>\r\n"));
    out.push_str(&format!(
        "Subject: {}\r\n",
        header_text(&format!("Held, please confirm: {subject}"))
    ));
    out.push_str(&format!("Date: {}\r\n", rfc5322_date(p.now)));
    out.push_str(&format!(
        "Message-ID: <hold-{}@{}>\r\n",
        meta.id,
        crate::address::domain_of(p.release_address)
    ));
    if let Some(mid) = p.message_id {
        let mid = mid.trim_matches(|c| c == '<' || c == '>');
        if !mid.is_empty() && mid.is_ascii() && !mid.contains(['\r', '\n']) {
            out.push_str(&format!("In-Reply-To: <{mid}>\r\nReferences: <{mid}>\r\n"));
        }
    }
    out.push_str("Auto-Submitted: auto-generated\r\n");
    out.push_str("X-Misdirect-Notice: hold\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_000_000),
            "Wed, 18 Nov 2026 11:06:40 +0000"
        );
        assert_eq!(header_text("Q3 plan"), "Q3 plan");
        assert_eq!(header_text("Grüße"), "=?UTF-8?B?R3LDvMOfZQ==?=");
    }
}
