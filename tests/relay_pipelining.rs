//! How misdirectd talks to the next hop: MAIL, RCPT and DATA in one write
//! when the next hop offers PIPELINING, one command at a time when it does
//! not, and the message dot-stuffed either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{split_trace, start, Client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted next hop saw.
#[derive(Debug, Default)]
struct Seen {
    /// Commands that arrived while an earlier reply was still unsent, on a
    /// next hop that did not offer PIPELINING.
    early_commands: Vec<String>,
    /// Command groups answered together (pipelining next hop).
    groups: Vec<Vec<String>>,
    /// Messages received, dot-stuffing undone.
    messages: Vec<Vec<u8>>,
    /// Recipients refused.
    refused: Vec<String>,
}

/// A next hop written for this test. With `pipelining` it offers
/// PIPELINING and answers nothing from MAIL on until it has read the whole
/// group up to DATA (a client that waited for each reply would stall);
/// without, before each reply it waits 20 ms for anything more to arrive
/// and records a command that did (a client that pipelined anyway).
/// Recipients starting with `refuse` get 550; DATA without an accepted
/// recipient gets 554.
async fn next_hop(pipelining: bool) -> (std::net::SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = s2.clone();
            tokio::spawn(async move { session(s, pipelining, seen).await });
        }
    });
    (addr, seen)
}

async fn session(s: TcpStream, pipelining: bool, seen: Arc<Mutex<Seen>>) {
    let mut io = BufReader::new(s);
    io.get_mut().write_all(b"220 hop.test\r\n").await.unwrap();
    let mut pending: Vec<String> = Vec::new();
    let mut replies = String::new();
    let mut accepted = 0;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        let up = cmd.to_ascii_uppercase();
        if !pipelining {
            let more = !io.buffer().is_empty()
                || matches!(
                    tokio::time::timeout(Duration::from_millis(20), io.fill_buf()).await,
                    Ok(Ok(b)) if !b.is_empty()
                );
            if more {
                seen.lock().unwrap().early_commands.push(cmd.clone());
            }
        }
        let reply = if up.starts_with("EHLO") {
            if pipelining {
                "250-hop.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".to_string()
            } else {
                "250-hop.test\r\n250 8BITMIME\r\n".to_string()
            }
        } else if up.starts_with("MAIL") {
            accepted = 0;
            "250 2.1.0 ok\r\n".into()
        } else if up.starts_with("RCPT") {
            if up.contains("<REFUSE") {
                seen.lock().unwrap().refused.push(cmd.clone());
                "550 5.1.1 no such user\r\n".into()
            } else {
                accepted += 1;
                "250 2.1.5 ok\r\n".into()
            }
        } else if up == "DATA" {
            if accepted == 0 {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                "354 go ahead\r\n".into()
            }
        } else if up == "RSET" {
            "250 2.0.0 ok\r\n".into()
        } else if up == "QUIT" {
            io.get_mut().write_all(b"221 bye\r\n").await.unwrap();
            return;
        } else {
            "500 5.5.2 what\r\n".into()
        };
        let in_group = up.starts_with("MAIL") || up.starts_with("RCPT") || up == "DATA";
        if pipelining && in_group {
            pending.push(cmd.clone());
            replies.push_str(&reply);
            if up != "DATA" {
                continue;
            }
            seen.lock()
                .unwrap()
                .groups
                .push(std::mem::take(&mut pending));
        } else {
            replies.push_str(&reply);
        }
        io.get_mut().write_all(replies.as_bytes()).await.unwrap();
        replies.clear();
        if up == "DATA" && accepted > 0 {
            let mut msg = Vec::new();
            loop {
                let mut l = Vec::new();
                if io.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == b".\r\n" {
                    break;
                }
                let l = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                msg.extend_from_slice(l);
            }
            seen.lock().unwrap().messages.push(msg);
            io.get_mut()
                .write_all(b"250 2.0.0 queued\r\n")
                .await
                .unwrap();
        }
    }
}

fn message(body: &[u8]) -> Vec<u8> {
    from_message("alice@example.com", body)
}

fn from_message(from: &str, body: &[u8]) -> Vec<u8> {
    let mut m =
        format!("From: <{from}>\r\nTo: bob@example.org\r\nSubject: dots\r\n\r\n").into_bytes();
    m.extend_from_slice(body);
    m
}

async fn relay_through(pipelining: bool) -> Arc<Mutex<Seen>> {
    let (hop, seen) = next_hop(pipelining).await;
    let d = start(hop, |_| {}).await;
    let mut c = Client::greeted(d.addr).await;
    c.expect("EHLO client.test", "250").await;
    let utf8 = message(".leading dot\r\n..two\r\n.\r\ncaf\u{e9} \u{20ac}\r\nlast\r\n".as_bytes());
    let r = c
        .send_mail(
            "alice@example.com",
            &["bob@example.org", "carol@example.org"],
            &utf8,
        )
        .await;
    assert!(r.starts_with("250 "), "{r}");
    // Not UTF-8: goes through lettre's own DATA writer.
    let latin1 = message(b".caf\xe9\r\n");
    let r = c
        .send_mail("alice@example.com", &["bob@example.org"], &latin1)
        .await;
    assert!(r.starts_with("250 "), "{r}");
    // Every recipient refused by the next hop: passed back, and the
    // connection to the next hop stays usable for the next message. (A
    // sender without history, so that the never-seen scorer delivers.)
    let zed = from_message("zed@example.com", b"hello\r\n");
    let r = c
        .send_mail("zed@example.com", &["refuse@example.org"], &zed)
        .await;
    assert!(r.starts_with("550 "), "{r}");
    let r = c
        .send_mail("alice@example.com", &["bob@example.org"], &utf8)
        .await;
    assert!(r.starts_with("250 "), "{r}");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.messages.len(), 3, "{s:?}");
        for (got, sent) in s.messages.iter().zip([&utf8, &latin1, &utf8]) {
            assert_eq!(&split_trace(got).1, sent);
        }
        assert_eq!(s.refused.len(), 1);
    }
    c.expect("QUIT", "221").await;
    seen
}

#[tokio::test]
async fn pipelining_next_hop_gets_mail_rcpt_data_in_one_group() {
    let seen = relay_through(true).await;
    let s = seen.lock().unwrap();
    // A client waiting for each reply would have stalled at MAIL: the next
    // hop answered only after DATA arrived.
    assert_eq!(s.groups.len(), 4, "{:?}", s.groups);
    assert_eq!(s.groups[0].len(), 4, "{:?}", s.groups[0]);
    assert!(s.groups[0][0].starts_with("MAIL FROM:<alice@example.com>"));
    assert_eq!(s.groups[0][1], "RCPT TO:<bob@example.org>");
    assert_eq!(s.groups[0][2], "RCPT TO:<carol@example.org>");
    assert_eq!(s.groups[0][3], "DATA");
    assert_eq!(s.groups[2][1], "RCPT TO:<refuse@example.org>");
}

#[tokio::test]
async fn next_hop_without_pipelining_gets_one_command_at_a_time() {
    let seen = relay_through(false).await;
    let s = seen.lock().unwrap();
    assert!(s.early_commands.is_empty(), "{:?}", s.early_commands);
}
