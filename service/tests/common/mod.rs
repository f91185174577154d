//! A throwaway Postgres 15 for tests: initdb in a temp dir, a free loopback port, stopped by PID
//! when dropped, whatever happened.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A Postgres server of its own: data in a temp dir, listening on a free loopback port.
pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    pid: Option<i32>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a Postgres program, as the `postgres` user when we are root (Postgres refuses root).
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

impl TempPostgres {
    /// An empty directory (owned by `postgres` when we are root) and a free port; nothing runs.
    fn prepare(tag: &str) -> Option<TempPostgres> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            quorumlab_testkit::skip("Postgres 15 is not installed (apt-get install postgresql-15)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("quorumlab-svc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(TempPostgres {
            dir,
            port,
            pid: None,
        })
    }

    fn run(command: &mut Command, what: &str) {
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server on `data` with extra `-c` settings, and records its PID.
    fn launch(&mut self, extra: &str) {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 {extra}",
            self.port,
            self.dir.display()
        );
        Self::run(
            pg_command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("postgres.log")),
            "pg_ctl start",
        );
        let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
        self.pid = pid.lines().next().and_then(|l| l.trim().parse().ok());
    }

    /// A fresh primary.
    pub fn start(tag: &str) -> Option<TempPostgres> {
        let mut pg = Self::prepare(tag)?;
        Self::run(
            pg_command("initdb")
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
                .arg(pg.dir.join("data")),
            "initdb",
        );
        pg.launch("");
        Some(pg)
    }

    /// A streaming replica of `primary` that applies each commit `apply_delay_ms` late
    /// (`recovery_min_apply_delay`): replica lag without a slow network.
    #[allow(dead_code)]
    pub fn start_replica_of(
        primary: &TempPostgres,
        tag: &str,
        apply_delay_ms: u64,
    ) -> TempPostgres {
        let mut pg = Self::prepare(tag).expect("Postgres is installed: the primary runs");
        Self::run(
            pg_command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-p",
                ])
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(pg.dir.join("data")),
            "pg_basebackup",
        );
        pg.launch(&format!("-c recovery_min_apply_delay={apply_delay_ms}ms"));
        pg
    }

    /// Promotes this replica to primary (`pg_ctl promote`), waiting until it accepts writes.
    #[allow(dead_code)]
    pub fn promote(&self) {
        Self::run(
            pg_command("pg_ctl")
                .args(["promote", "-w", "-t", "60", "-D"])
                .arg(self.dir.join("data")),
            "pg_ctl promote",
        );
    }

    /// Crashes the server: SIGKILL to the postmaster, as a machine failure would stop it.
    #[allow(dead_code)]
    pub fn crash(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill(2) on the postmaster this test started.
            unsafe { libc_kill(pid, 9) };
            // Its backends notice the postmaster is gone and exit on their own.
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) on the postmaster this test started; SIGQUIT is an immediate stop.
            unsafe { libc_kill(pid, 3) };
            for _ in 0..200 {
                // SAFETY: signal 0 only checks that the process exists.
                if unsafe { libc_kill(pid, 0) } != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            // SAFETY: as above; SIGKILL if it did not stop.
            unsafe { libc_kill(pid, 9) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
