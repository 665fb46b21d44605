//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, `pg_ctl start` on a free loopback port, stopped on drop.
//! As root, the server runs as the `postgres` user (initdb refuses root).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    extra: String,
}

fn find_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    match found.pop() {
        Some(b) => b,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql: \
             apt-get install postgresql"
        ),
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl PgCluster {
    /// initdb + start. Panics with the install hint when PostgreSQL is
    /// missing.
    pub fn start() -> PgCluster {
        PgCluster::start_with(|_| String::new())
    }

    /// Like [`PgCluster::start`], with extra server options made by `extra`
    /// from the cluster directory (files written there are given to the
    /// server's user, mode 0600).
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> PgCluster {
        let bin = find_bin();
        let dir = tempfile::tempdir().unwrap();
        let run_as = if is_root() {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown postgres failed (no postgres user?)");
            Some("postgres".to_string())
        } else {
            None
        };
        let extra = extra(dir.path());
        if run_as.is_some() {
            for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(f.path())
                    .status()
                    .unwrap();
            }
        }
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let c = PgCluster {
            dir,
            port: free_port(),
            bin,
            run_as,
            extra,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        c.start_server();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start (or restart after [`PgCluster::stop`]) on the same port.
    pub fn start_server(&self) {
        let data = self.data();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100 {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stop the server (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Connection string for the `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// `pg_dump` of the whole database as plain SQL.
    pub fn dump(&self) -> Vec<u8> {
        let exe = self.bin.join("pg_dump");
        let out = Command::new(exe)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
