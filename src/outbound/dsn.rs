//! Delivery status notifications (RFC 3464) for recipients the next hop
//! refused after the upstream was already answered `250`.
//!
//! The report carries the original message's header section only
//! (`text/rfc822-headers`), never its body.

use crate::outbound::relay::RcptFailure;

/// Everything a DSN needs.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA, From domain).
    pub hostname: &'a str,
    /// The next hop (Remote-MTA).
    pub remote: &'a str,
    /// Envelope sender of the original message (the DSN's recipient).
    pub sender: &'a str,
    /// Queue id of the original message (for the Message-ID).
    pub queue_id: &'a str,
    /// Unix seconds now.
    pub now: i64,
    pub failures: &'a [RcptFailure],
    /// The original message (only its header section is used).
    pub original: &'a [u8],
}

/// The RFC 3463 status code at the start of a reply text, if any.
pub fn enhanced_status(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.next().is_none()
        && [subject, detail]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(first)
}

/// The header section of a message, CRLF-terminated.
pub fn header_section(msg: &[u8]) -> &[u8] {
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &msg[..p + 2],
        None => msg,
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Build the DSN message (CRLF line endings).
pub fn build(d: &DsnInput<'_>) -> Vec<u8> {
    let date = mail_parser::DateTime::from_timestamp(d.now).to_rfc822();
    let boundary = format!("misdirect-dsn-{}", d.queue_id);
    let host = clean(d.hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
To: <{}>\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Date: {date}\r\n\
Message-ID: <dsn-{}@{host}>\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
\r\n\
This is a MIME-encapsulated delivery status notification.\r\n\
\r\n\
--{boundary}\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Your message could not be delivered to the following recipients:\r\n\r\n",
        clean(d.sender),
        clean(d.queue_id),
    ));
    for f in d.failures {
        m.push_str(&format!(
            "  <{}>: {} {}\r\n",
            clean(&f.address),
            f.code,
            clean(&f.text)
        ));
    }
    m.push_str(&format!(
        "\r\nIt was delivered to the other recipients.\r\n\
\r\n\
--{boundary}\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; {host}\r\n\
X-Misdirect-Queue-ID: {}\r\n\
Arrival-Date: {date}\r\n",
        clean(d.queue_id)
    ));
    for f in d.failures {
        let status = enhanced_status(&f.text).unwrap_or("5.0.0");
        m.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\n\
Action: failed\r\n\
Status: {status}\r\n\
Remote-MTA: dns; {}\r\n\
Diagnostic-Code: smtp; {} {}\r\n",
            clean(&f.address),
            clean(d.remote),
            f.code,
            clean(&f.text)
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    out.extend_from_slice(header_section(d.original));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_each_failed_recipient_and_omits_body() {
        let failures = vec![RcptFailure {
            address: "x@example.net".into(),
            code: 550,
            text: "5.1.1 no such user".into(),
        }];
        let dsn = build(&DsnInput {
            hostname: "relay.test",
            remote: "127.0.0.1",
            sender: "alice@example.com",
            queue_id: "q1",
            now: 0,
            failures: &failures,
            original: b"Subject: hi\r\nFrom: a@b\r\n\r\nsecret body\r\n",
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822; x@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Subject: hi\r\nFrom: a@b\r\n"));
        assert!(!text.contains("secret body"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(enhanced_status("4.4.1 later"), Some("4.4.1"));
        assert_eq!(enhanced_status("no code"), None);
    }
}
