//! Fixtures shared by the graph, privacy and import tests: every fixture is
//! made in a temp dir by the test itself.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One fixture message.
pub struct Msg<'a> {
    pub from: &'a str,
    pub to: &'a [&'a str],
    pub cc: &'a [&'a str],
    pub ts: i64,
    pub subject: &'a str,
    pub id: String,
    /// A file attached under this name (a multipart message).
    pub attachment: Option<&'a str>,
}

impl<'a> Msg<'a> {
    /// The same message with a file attached under `name`.
    pub fn attaching(self, name: &'a str) -> Msg<'a> {
        Msg {
            attachment: Some(name),
            ..self
        }
    }
}

pub fn msg<'a>(from: &'a str, to: &'a [&'a str], cc: &'a [&'a str], ts: i64, n: usize) -> Msg<'a> {
    Msg {
        from,
        to,
        cc,
        ts,
        subject: "Quarterly numbers",
        id: format!("m{n}.{ts}@fixture.test"),
        attachment: None,
    }
}

/// RFC 5322 text of a message (with a body line that must never be stored).
pub fn rfc822(m: &Msg<'_>) -> String {
    let date = mail_parser::DateTime::from_timestamp(m.ts).to_rfc822();
    let mut s = format!(
        "From: \"Sender Name\" <{}>\r\nTo: {}\r\n",
        m.from,
        m.to.join(", ")
    );
    if !m.cc.is_empty() {
        s.push_str(&format!("Cc: {}\r\n", m.cc.join(", ")));
    }
    s.push_str(&format!(
        "Subject: {}\r\nDate: {date}\r\nMessage-ID: <{}>\r\n",
        m.subject, m.id
    ));
    match m.attachment {
        None => s.push_str("\r\nbody text that is never stored\r\n"),
        Some(name) => s.push_str(&format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nbody text that is never stored\r\n\
             --b1\r\nContent-Type: application/pdf\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
        )),
    }
    s
}

/// An mbox file of these messages.
pub fn write_mbox(path: &Path, msgs: &[Msg<'_>]) {
    let mut s = String::new();
    for m in msgs {
        s.push_str(&format!("From {} Mon Jan  1 00:00:00 2001\n", m.from));
        s.push_str(&rfc822(m).replace("\r\n", "\n"));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// A config file using `dir` for the store and key file, scoring with the
/// "never emailed before" baseline (these tests check the graph, not the
/// model).
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("misdirectd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nscorer = \"never-seen\"\n\n[policy]\nhold_at = 0.8\n\n[store]\npath = \"{}\"\nbatch_interval = \"50ms\"\n\n[privacy]\nkey_file = \"{}\"\nretention_days = 0\n{extra}\n",
            dir.join("data/graph.redb").display(),
            dir.join("data/keys.json").display()
        ),
    )
    .unwrap();
    cfg
}

/// Run `misdirectd ARGS`.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_misdirectd"))
        .args(args)
        .output()
        .unwrap()
}

/// Run and require success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "misdirectd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether any file under `dir` contains `needle` (bytes).
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    files_under(dir).into_iter().find(|p| {
        let b = std::fs::read(p).unwrap();
        b.windows(needle.len()).any(|w| w == needle)
    })
}

/// Config of a temp dir, loaded as the library sees it.
pub fn load_config(cfg: &Path) -> misdirect::config::Config {
    misdirect::config::Config::load(cfg).unwrap()
}

/// Checks that every contact of `sender` in `v` carries the sketch of its
/// own address (the lookalike scan reads the sketch instead of the
/// address), and returns how many contacts there are.
pub fn contact_sketches_match(v: &dyn misdirect::graph::GraphView, sender: &str) -> usize {
    let s = v.id_of(sender).expect("sender known");
    let mut n = 0;
    for (id, k, total) in v.contact_sketches(s) {
        let a = v.address_by_id_str(id).expect("contact address");
        assert_eq!(k, misdirect::graph::Sketch::of(a), "{a}");
        assert!(total > 0, "{a}");
        n += 1;
    }
    n
}
