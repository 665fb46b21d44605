//! Relay harness: what it costs to put misdirectd in the mail path.
//!
//! `cargo bench --bench relay` starts, on loopback only, Postfix's
//! `smtp-sink` as the final hop and drives three set-ups side by side with
//! Postfix's `smtp-source`:
//!
//! * `direct`: smtp-source straight to the sink (the limit);
//! * `postfix`: through a throwaway Postfix instance configured as a plain
//!   relay to the same sink (what admins run today);
//! * `misdirectd`: through misdirectd (scoring every recipient) to the sink.
//!
//! For each it runs concurrency 1, 20 and 100 with 4 KiB and 64 KiB messages
//! and prints messages per second, and misdirectd's CPU time (user + system,
//! all threads, from /proc/<pid>/stat before and after each run) per relayed
//! message: a figure that does not depend on what else the machine is
//! doing, unlike the rates. It also prints, for each set-up, the whole
//! machine's busy CPU time per message (every process: smtp-source, the
//! sink, Postfix or misdirectd; from /proc/stat) and how busy the cores
//! were, and from those the ratio to direct that misdirectd could reach if
//! every core were kept busy (`md/direct max`): on a machine where the
//! peers share misdirectd's cores, the peers' own CPU bounds the ratio.
//! Those machine-wide figures count whatever else runs: measure on an idle
//! machine. Postfix is store-and-forward, so its
//! figure is taken when its queue is empty again (every message delivered);
//! misdirectd and the sink answer only after delivery anyway. A second pass
//! with the harness's own SMTP client measures per-message latency (MAIL FROM
//! to the final `250`) at concurrency 1 and 20, p50 and p99, over
//! `RELAY_BENCH_LATENCY_MESSAGES` (default 10,000) messages per set-up and
//! round, sent in five chunks with the set-ups taking turns (a p99 rests on
//! the slowest 1%: 100 messages of 10,000). Finally it reports misdirectd's
//! peak RSS.
//!
//! Environment: `RELAY_BENCH_MESSAGES` (default 2000) scales the message
//! count; `RELAY_BENCH_SETUPS` (default `direct,postfix,misdirectd`) picks
//! set-ups; `RELAY_BENCH_GRAPH_EDGES` (default 0) first fills misdirectd's
//! store with a synthetic organisation of that many edges
//! (`misdirectd graph synth`), so that the RSS figures show a loaded graph;
//! `RELAY_BENCH_OUT` names a file for the results as JSON;
//! `RELAY_BENCH_SIZES` (default `4,64`) picks message sizes in KiB;
//! `RELAY_BENCH_MISDIRECTD` runs another misdirectd binary (an older build,
//! to compare) instead of this one; `RELAY_BENCH_ROUNDS` (default 1) runs
//! every measurement that many times, each round every set-up in turn, and
//! prints the medians (misdirectd's ratios and added p99 as the medians of
//! each round's own, which are listed too), so that the machine's slow
//! spells weigh less.
//! Needs Debian's `postfix` (smtp-sink, smtp-source, postfix) and root (Postfix
//! starts its daemons as root and drops to the `postfix` user).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

const CONCURRENCY: [usize; 3] = [1, 20, 100];
const SIZES: [usize; 2] = [4 * 1024, 64 * 1024];
const LATENCY_CONCURRENCY: [usize; 2] = [1, 20];
/// Chunks a set-up's latency messages are split into (see the latency pass).
const LATENCY_CHUNKS: usize = 5;

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("harness: stopped {}", self.name);
    }
}

/// A throwaway Postfix instance, stopped when dropped.
struct Postfix {
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        eprintln!("harness: stopped postfix relay");
    }
}

fn tool(name: &str) -> Res<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "{name} not found: install Debian's postfix package (apt-get install postfix)"
    ))
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_port(port: u16, what: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not listen on port {port} within 30 s"))
}

fn start_sink(port: u16) -> Res<Proc> {
    let child = Command::new(tool("smtp-sink")?)
        .args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("smtp-sink: {e}"))?;
    let p = Proc {
        name: "smtp-sink".into(),
        child,
    };
    wait_port(port, "smtp-sink")?;
    Ok(p)
}

fn start_postfix(port: u16, sink: u16) -> Res<Postfix> {
    let dir = tempfile::Builder::new()
        .prefix("misdirect-bench-postfix")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let d = dir.path();
    let conf = d.join("etc");
    for sub in ["etc", "queue", "data"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
    }
    // Postfix's daemons run as the postfix user and must reach the queue.
    let _ = Command::new("chmod").arg("755").arg(d).status();
    let _ = Command::new("chown")
        .args(["postfix"])
        .arg(d.join("data"))
        .status();
    let master = std::fs::read_to_string("/etc/postfix/master.cf")
        .map_err(|e| format!("/etc/postfix/master.cf: {e} (install postfix)"))?;
    let mut out = String::new();
    for line in master.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("smtp ") && fields.get(1) == Some(&"inet") {
            continue; // no listener on port 25
        }
        if !line.starts_with('#') && !line.starts_with(' ') && fields.len() >= 8 && fields[4] == "y"
        {
            // chroot off: the throwaway queue is not a chroot jail
            let mut f = fields.clone();
            f[4] = "n";
            out.push_str(&f.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd\n"));
    std::fs::write(conf.join("master.cf"), out).map_err(|e| e.to_string())?;
    let main = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {q}\n\
         data_directory = {data}\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         myhostname = bench-relay.localdomain\n\
         mydestination =\n\
         mynetworks = 127.0.0.0/8\n\
         relayhost = [127.0.0.1]:{sink}\n\
         smtp_dns_support_level = disabled\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         maillog_file = {d}/maillog\n\
         maillog_file_prefixes = {d}\n\
         default_process_limit = 200\n\
         smtpd_client_connection_count_limit = 0\n\
         smtpd_client_message_rate_limit = 0\n\
         smtp_destination_concurrency_limit = 100\n\
         default_destination_concurrency_limit = 100\n\
         in_flow_delay = 0\n",
        q = d.join("queue").display(),
        data = d.join("data").display(),
        d = d.display(),
    );
    std::fs::write(conf.join("main.cf"), main).map_err(|e| e.to_string())?;
    let st = Command::new(tool("postfix")?)
        .arg("-c")
        .arg(&conf)
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("postfix start: {e}"))?;
    let pf = Postfix { conf, _dir: dir };
    if !st.success() {
        let log = std::fs::read_to_string(pf._dir.path().join("maillog")).unwrap_or_default();
        return Err(format!("postfix start failed:\n{log}"));
    }
    wait_port(port, "postfix")?;
    Ok(pf)
}

fn start_misdirectd(port: u16, sink: u16, graph_edges: usize) -> Res<(Proc, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("misdirect-bench")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let cfg = dir.path().join("misdirectd.toml");
    std::fs::write(&cfg, misdirectd_config(port, sink, dir.path())).map_err(|e| e.to_string())?;
    if graph_edges > 0 {
        eprintln!(
            "harness: filling misdirectd's store with a synthetic graph of ~{graph_edges} edges"
        );
        let out = Command::new(misdirectd_bin())
            .args([
                "graph",
                "synth",
                "--edges",
                &graph_edges.to_string(),
                "--config",
            ])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .output()
            .map_err(|e| format!("misdirectd graph synth: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "misdirectd graph synth failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("harness: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    let child = Command::new(misdirectd_bin())
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("misdirectd: {e}"))?;
    let p = Proc {
        name: "misdirectd".into(),
        child,
    };
    wait_port(port, "misdirectd")?;
    Ok((p, dir))
}

/// The misdirectd binary to run: `RELAY_BENCH_MISDIRECTD`, else this build's.
fn misdirectd_bin() -> PathBuf {
    std::env::var_os("RELAY_BENCH_MISDIRECTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_misdirectd")))
}

fn misdirectd_config(port: u16, sink: u16, data: &Path) -> String {
    format!(
        "[server]\n\
         listen = \"127.0.0.1:{port}\"\n\
         data_dir = \"{data}\"\n\
         max_connections = 1000\n\
         [relay]\n\
         host = \"127.0.0.1\"\n\
         port = {sink}\n\
         tls = \"none\"\n\
         pool_size = 100\n\
         [metrics]\n\
         enabled = false\n\
         [store]\n\
         path = \"{data}/graph.redb\"\n\
         [privacy]\n\
         key_file = \"{data}/keys.json\"\n\
         retention_days = 0\n",
        data = data.display()
    )
}

/// Run smtp-source; returns the wall time.
fn source(port: u16, conc: usize, msgs: usize, size: usize) -> Res<Duration> {
    let t0 = Instant::now();
    let out = Command::new(tool("smtp-source")?)
        .args([
            "-d",
            "-s",
            &conc.to_string(),
            "-m",
            &msgs.to_string(),
            "-l",
            &size.to_string(),
            "-f",
            "alice@bench.example",
            "-t",
            "bob@partner.example",
            "-S",
            "benchmark",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("smtp-source: {e}"))?;
    let el = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "smtp-source to port {port} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(el)
}

fn postfix_drained(pf: &Postfix) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(&pf.conf)
            .arg("-p")
            .output()
            .map_err(|e| format!("postqueue: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Mail queue is empty") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("postfix queue did not drain in 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn message(size: usize, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@bench.example>\r\n\
         To: Bob <bob@partner.example>\r\n\
         Subject: latency probe {n}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <probe-{n}@bench.example>\r\n\
         \r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ.\r\n";
    while m.len() + line.len() < size {
        m.extend_from_slice(line);
    }
    m
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Res<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        if line.len() < 4 {
            return Err(format!("bad reply {line:?}"));
        }
        if line.as_bytes()[3] == b' ' {
            return line[..3].parse().map_err(|_| format!("bad reply {line:?}"));
        }
    }
}

fn expect(r: &mut BufReader<TcpStream>, class: u16, what: &str) -> Res<()> {
    let code = read_reply(r)?;
    if code / 100 != class {
        return Err(format!("{what}: got {code}"));
    }
    Ok(())
}

/// One connection sending `msgs` messages one after another; latencies of
/// each transaction (MAIL FROM to the final reply).
fn latency_conn(port: u16, msgs: usize, size: usize, id: usize) -> Res<Vec<Duration>> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    expect(&mut r, 2, "greeting")?;
    w.write_all(b"EHLO bench.example\r\n")
        .map_err(|e| e.to_string())?;
    expect(&mut r, 2, "EHLO")?;
    let mut out = Vec::with_capacity(msgs);
    for i in 0..msgs {
        let body = message(size, id * 1_000_000 + i);
        let t0 = Instant::now();
        w.write_all(b"MAIL FROM:<alice@bench.example>\r\n")
            .map_err(|e| e.to_string())?;
        expect(&mut r, 2, "MAIL")?;
        w.write_all(b"RCPT TO:<bob@partner.example>\r\n")
            .map_err(|e| e.to_string())?;
        expect(&mut r, 2, "RCPT")?;
        w.write_all(b"DATA\r\n").map_err(|e| e.to_string())?;
        expect(&mut r, 3, "DATA")?;
        w.write_all(&body).map_err(|e| e.to_string())?;
        w.write_all(b".\r\n").map_err(|e| e.to_string())?;
        expect(&mut r, 2, "end of data")?;
        out.push(t0.elapsed());
    }
    let _ = w.write_all(b"QUIT\r\n");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    Ok(out)
}

/// `conc` connections at once, each sending `per_conn` messages; every
/// transaction's latency.
fn latency(port: u16, conc: usize, per_conn: usize, size: usize) -> Res<Vec<Duration>> {
    let handles: Vec<_> = (0..conc)
        .map(|id| std::thread::spawn(move || latency_conn(port, per_conn, size, id)))
        .collect();
    let mut all = Vec::with_capacity(conc * per_conn);
    for h in handles {
        let v = h
            .join()
            .map_err(|_| "latency thread panicked".to_string())??;
        all.extend(v);
    }
    Ok(all)
}

/// p50 and p99 of `all` in milliseconds (NaN for none).
fn p50_p99(all: &mut [Duration]) -> (f64, f64) {
    all.sort();
    let q = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    (q(0.50), q(0.99))
}

/// Clock ticks per second of /proc's CPU times (`sysconf(_SC_CLK_TCK)`; 100 on
/// Linux unless told otherwise).
fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system, all threads, including ones that have
/// exited) the process has used so far, from /proc/<pid>/stat.
fn cpu_secs(pid: u32, tck: f64) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tck)
}

/// The machine's CPU time so far, in clock ticks summed over every core:
/// (busy, total), from the first line of /proc/stat. Busy is everything
/// but idle and iowait.
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either way: the harness only runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("relay harness: run it with `cargo bench --bench relay`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("relay harness failed: {e}");
        std::process::exit(1);
    }
}

/// The median of `v` (the mean of the middle two for an even count; NaN
/// for none).
fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `v`'s figures with `digits` decimals, separated by spaces.
fn join(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run() -> Res<()> {
    let base: usize = std::env::var("RELAY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rounds: usize = std::env::var("RELAY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let latency_msgs: usize = std::env::var("RELAY_BENCH_LATENCY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for t in ["smtp-sink", "smtp-source", "postfix", "postqueue"] {
        tool(t)?;
    }
    let sink_port = free_port()?;
    let _sink = start_sink(sink_port)?;
    let pf_port = free_port()?;
    let pf = start_postfix(pf_port, sink_port)?;
    let md_port = free_port()?;
    let wanted =
        std::env::var("RELAY_BENCH_SETUPS").unwrap_or_else(|_| "direct,postfix,misdirectd".into());
    let graph_edges: usize = std::env::var("RELAY_BENCH_GRAPH_EDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let md = if wanted.contains("misdirectd") {
        Some(start_misdirectd(md_port, sink_port, graph_edges)?)
    } else {
        None
    };
    let rss_loaded = md
        .as_ref()
        .and_then(|(p, _)| rss_kib(p.child.id(), "VmRSS:"));
    let setups: Vec<(&str, u16)> = [
        ("direct", sink_port),
        ("postfix", pf_port),
        ("misdirectd", md_port),
    ]
    .into_iter()
    .filter(|(n, _)| wanted.contains(n))
    .collect();

    // Warm-up: pools, caches, Postfix processes.
    for &(_, port) in &setups {
        source(port, 20, 200, 4096)?;
    }
    postfix_drained(&pf)?;

    let tck = clk_tck();
    let md_pid = md.as_ref().map(|(p, _)| p.child.id());
    let md_cpu = || md_pid.and_then(|pid| cpu_secs(pid, tck));
    let mut rate: BTreeMap<(usize, usize, &str), f64> = BTreeMap::new();
    // misdirectd / Postfix and misdirectd / direct, each round's.
    type Ratios = (Vec<f64>, Vec<f64>);
    let mut ratios: BTreeMap<(usize, usize), Ratios> = BTreeMap::new();
    // misdirectd's CPU time (user + system) per relayed message, µs.
    let mut cpu_us: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    // The whole machine's busy CPU per message (µs) and busy share of all
    // cores, per set-up.
    let mut machine: BTreeMap<(usize, usize, &str), (f64, f64)> = BTreeMap::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("\nThroughput (smtp-source -d; messages per second, end to end)");
    println!("md cpu: misdirectd's CPU time (user + system, all threads) per relayed message");
    println!(
        "machine: every process's busy CPU time per message, and how busy the {cores} cores were"
    );
    println!(
        "md/direct max: the ratio if misdirectd's run kept every core busy (cores / machine CPU per message, over direct's rate)"
    );
    println!(
        "{:>5} {:>7} {:>7} | {:>10} {:>10} {:>10} | {:>9} {:>9} | {:>11} | {:>17} {:>17} | {:>13}",
        "conc",
        "size",
        "msgs",
        "direct",
        "postfix",
        "misdirectd",
        "md/pfx",
        "md/direct",
        "md cpu µs",
        "direct machine",
        "md machine",
        "md/direct max"
    );
    let sizes: Vec<usize> = match std::env::var("RELAY_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .filter_map(|k| k.trim().parse::<usize>().ok())
            .map(|k| k * 1024)
            .collect(),
        Err(_) => SIZES.to_vec(),
    };
    for size in sizes {
        for conc in CONCURRENCY {
            let msgs = if size > 16 * 1024 { base / 2 } else { base }.max(conc);
            // Each round runs every set-up once, so that a slow spell of the
            // machine falls on all of them alike; the figures printed are
            // the medians over the rounds, misdirectd's ratios the medians
            // of each round's own ratios.
            let mut runs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            let mut mach_runs: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            let mut cpu_runs = Vec::new();
            for _ in 0..rounds {
                for &(name, port) in &setups {
                    let cpu0 = if name == "misdirectd" { md_cpu() } else { None };
                    let m0 = machine_ticks();
                    let t0 = Instant::now();
                    source(port, conc, msgs, size)?;
                    if name == "postfix" {
                        postfix_drained(&pf)?;
                    }
                    let el = t0.elapsed().as_secs_f64();
                    if let (Some((b0, t0)), Some((b1, t1))) = (m0, machine_ticks()) {
                        let busy = (b1 - b0) as f64 / tck;
                        let share = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
                        mach_runs
                            .entry(name)
                            .or_default()
                            .push((busy * 1e6 / msgs as f64, share));
                    }
                    runs.entry(name).or_default().push(msgs as f64 / el);
                    if let (Some(a), Some(b)) = (cpu0, md_cpu()) {
                        cpu_runs.push((b - a) * 1e6 / msgs as f64);
                    }
                }
            }
            for (&name, r) in &runs {
                rate.insert((size, conc, name), median(r));
            }
            for (&name, m) in &mach_runs {
                let (us, share): (Vec<f64>, Vec<f64>) = m.iter().copied().unzip();
                machine.insert((size, conc, name), (median(&us), median(&share)));
            }
            if !cpu_runs.is_empty() {
                cpu_us.insert((size, conc), median(&cpu_runs));
            }
            // misdirectd's rate over another set-up's, round by round.
            let per_round = |other: &str| -> Vec<f64> {
                match (runs.get("misdirectd"), runs.get(other)) {
                    (Some(m), Some(o)) => m.iter().zip(o).map(|(m, o)| m / o).collect(),
                    _ => Vec::new(),
                }
            };
            let (vs_pfx, vs_direct) = (per_round("postfix"), per_round("direct"));
            let (md_pfx, md_direct) = (median(&vs_pfx), median(&vs_direct));
            ratios.insert((size, conc), (vs_pfx, vs_direct));
            let g = |n| rate.get(&(size, conc, n)).copied().unwrap_or(f64::NAN);
            let mach = |n| {
                machine
                    .get(&(size, conc, n))
                    .copied()
                    .unwrap_or((f64::NAN, f64::NAN))
            };
            let (dm, mm) = (mach("direct"), mach("misdirectd"));
            println!(
                "{:>5} {:>6}K {:>7} | {:>10.0} {:>10.0} {:>10.0} | {:>9.2} {:>9.2} | {:>11.1} | {:>7.1} µs {:>4.0}% {:>7.1} µs {:>4.0}% | {:>13.2}",
                conc,
                size / 1024,
                msgs,
                g("direct"),
                g("postfix"),
                g("misdirectd"),
                md_pfx,
                md_direct,
                cpu_us.get(&(size, conc)).copied().unwrap_or(f64::NAN),
                dm.0,
                dm.1 * 100.0,
                mm.0,
                mm.1 * 100.0,
                cores * 1e6 / mm.0 / g("direct"),
            );
        }
    }

    if rounds > 1 {
        println!("\nEach of the {rounds} rounds' ratios (the table gives their medians)");
        for ((size, conc), (pfx, direct)) in &ratios {
            println!(
                "{:>5} {:>6}K | md/pfx {} | md/direct {}",
                conc,
                size / 1024,
                join(pfx, 2),
                join(direct, 2)
            );
        }
    }

    println!(
        "\nLatency per message, MAIL FROM to final 250 (ms), 4 KiB, harness client, {latency_msgs} messages per set-up and round"
    );
    println!(
        "{:>5} | {:>17} {:>17} {:>17} | {:>14}",
        "conc", "direct p50/p99", "postfix p50/p99", "misdirectd p50/p99", "added p99"
    );
    let mut lat = BTreeMap::new();
    let mut added_runs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for conc in LATENCY_CONCURRENCY {
        // Each set-up's messages of a round go in LATENCY_CHUNKS chunks,
        // the set-ups taking turns chunk by chunk, so that a slow spell of
        // the machine (seconds long) falls on every set-up alike; a round's
        // p50 and p99 are over all its chunks' messages.
        let per_conn = (latency_msgs / LATENCY_CHUNKS / conc).max(1);
        let mut runs: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for _ in 0..rounds {
            let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
            for _ in 0..LATENCY_CHUNKS {
                for &(name, port) in &setups {
                    samples
                        .entry(name)
                        .or_default()
                        .extend(latency(port, conc, per_conn, 4096)?);
                    // Postfix answers 250 once queued and delivers
                    // afterwards: let it finish before the next set-up is
                    // timed on the same cores.
                    if name == "postfix" {
                        postfix_drained(&pf)?;
                    }
                }
            }
            for (name, mut all) in samples {
                runs.entry(name).or_default().push(p50_p99(&mut all));
            }
        }
        for (&name, r) in &runs {
            let (p50, p99): (Vec<f64>, Vec<f64>) = r.iter().copied().unzip();
            lat.insert((conc, name), (median(&p50), median(&p99)));
        }
        // misdirectd's p99 over direct's, round by round.
        let added: Vec<f64> = match (runs.get("misdirectd"), runs.get("direct")) {
            (Some(m), Some(d)) => m.iter().zip(d).map(|(m, d)| m.1 - d.1).collect(),
            _ => Vec::new(),
        };
        let g = |n| lat.get(&(conc, n)).copied().unwrap_or((f64::NAN, f64::NAN));
        let (d, p, m) = (g("direct"), g("postfix"), g("misdirectd"));
        println!(
            "{:>5} | {:>8.3}/{:<8.3} {:>8.3}/{:<8.3} {:>8.3}/{:<8.3} | {:>14.3}",
            conc,
            d.0,
            d.1,
            p.0,
            p.1,
            m.0,
            m.1,
            median(&added)
        );
        added_runs.insert(conc, added);
    }
    if rounds > 1 {
        for (conc, added) in &added_runs {
            println!("{conc:>5} | added p99 each round: {}", join(added, 3));
        }
    }
    let rss = md
        .as_ref()
        .and_then(|(p, _)| rss_kib(p.child.id(), "VmHWM:"));
    if md.is_some() {
        let mib = |k: Option<u64>| k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "\nmisdirectd RSS with its graph loaded ({graph_edges} synthetic edges requested), before traffic: {}",
            mib(rss_loaded).unwrap_or_else(|| "not readable".into())
        );
        println!(
            "misdirectd peak RSS during the run: {}",
            mib(rss).unwrap_or_else(|| "not readable".into())
        );
    }

    if let Ok(path) = std::env::var("RELAY_BENCH_OUT") {
        use serde_json::json;
        // (A figure that could not be taken, NaN, is written as null.)
        let doc = json!({
            "throughput": rate.iter().map(|((size, conc, name), r)| json!({
                "setup": name, "size": size, "concurrency": conc, "msgs_per_s": r,
            })).collect::<Vec<_>>(),
            "misdirectd_cpu_us_per_msg": cpu_us.iter().map(|((size, conc), us)| json!({
                "size": size, "concurrency": conc, "cpu_us": us,
            })).collect::<Vec<_>>(),
            "machine_cpu": machine.iter().map(|((size, conc, name), (us, share))| json!({
                "setup": name, "size": size, "concurrency": conc,
                "busy_us_per_msg": us, "busy_share": share,
            })).collect::<Vec<_>>(),
            "misdirectd_ratios_per_round": ratios.iter().map(|((size, conc), (pfx, direct))| json!({
                "size": size, "concurrency": conc, "md_postfix": pfx, "md_direct": direct,
            })).collect::<Vec<_>>(),
            "cores": cores,
            "rounds": rounds,
            "latency_messages_per_round": latency_msgs,
            "latency_ms": lat.iter().map(|((conc, name), (p50, p99))| json!({
                "setup": name, "concurrency": conc, "p50": p50, "p99": p99,
            })).collect::<Vec<_>>(),
            "graph_edges_requested": graph_edges,
            "misdirectd_loaded_rss_kib": rss_loaded.unwrap_or(0),
            "misdirectd_peak_rss_kib": rss.unwrap_or(0),
        });
        std::fs::write(&path, format!("{doc}\n")).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}
