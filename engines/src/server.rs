//! A Postgres 15 server of the experiment's own: initdb in a directory this run made, a free
//! loopback port, `shared_buffers` set to the shared cache size, stopped by PID when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running server; dropping it stops it (fast shutdown, then SIGKILL if it will not stop).
pub struct OwnPostgres {
    data: PathBuf,
    pub port: u16,
    pid: i32,
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A Postgres program, run as the `postgres` user when we are root (Postgres refuses root).
fn pg_command(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed: {}", stderr.trim().replace('\n', " "));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl OwnPostgres {
    /// Whether Postgres 15's programs are installed.
    pub fn installed() -> bool {
        Path::new(PG_BIN).join("initdb").exists()
    }

    /// initdb into `dir` (made by the caller, empty) and start the server.
    pub fn start(dir: &Path, cache_mib: u64) -> Result<OwnPostgres> {
        if !Self::installed() {
            bail!("Postgres 15 is not installed (apt-get install postgresql-15)");
        }
        if is_root() {
            run(
                Command::new("chown").arg("postgres:postgres").arg(dir),
                "chown postgres",
            )?;
        }
        let data = dir.join("data");
        run(
            pg_command("initdb")
                .args(["-U", "postgres", "--auth=trust", "-D"])
                .arg(&data),
            "initdb (the postgres user must be able to reach the data directory)",
        )?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers={cache_mib}MB",
            dir.display()
        );
        run(
            pg_command("pg_ctl")
                .args(["start", "-w", "-t", "120", "-D"])
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.join("postgres.log")),
            "pg_ctl start",
        )?;
        let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))?;
        let pid = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no PID")?;
        tracing::info!(pid, port, data = %data.display(), "own Postgres started");
        Ok(OwnPostgres { data, port, pid })
    }

    /// The URL to reach it as the superuser (trust authentication on loopback).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the postmaster this run started; SIGINT is Postgres's fast shutdown.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        for _ in 0..400 {
            if !alive(self.pid) {
                tracing::info!(pid = self.pid, data = %self.data.display(), "own Postgres stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::warn!(
            pid = self.pid,
            "own Postgres did not stop in 10 s; killing it"
        );
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}
