//! `quorumlab engines` end to end: both real engines (an own Postgres 15, RocksDB on Debian's
//! librocksdb) on the smallest scale, and every kind of bad input refused in one line, exit 2,
//! with nothing made and nothing of the user's touched.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use quorumlab_engines::server::OwnPostgres;
use serde_json::Value;

fn engines(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .arg("engines")
        .args(args)
        .env_remove("QUORUMLAB_ENGINES_POSTGRES_URL")
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// The refusal is one line on stderr, exit 2, mentioning `needle`.
fn refused(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    stderr
}

/// A temp dir the `postgres` user can reach (an own server runs as that user when we are root).
fn reachable_temp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path(), mode).unwrap();
    dir
}

/// No process still runs with `dir` on its command line (the own Postgres was stopped).
fn assert_no_process_under(dir: &Path) {
    let left = Command::new("pgrep")
        .args(["-f", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(left.is_empty(), "processes left: {left}");
}

fn postgres_installed() -> bool {
    if OwnPostgres::installed() {
        return true;
    }
    quorumlab_testkit::skip("Postgres 15 is not installed (apt-get install postgresql-15)");
    false
}

#[test]
fn bad_scales_mixes_and_distributions_are_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("report");
    let paths = [
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for (flag, value, needle) in [
        ("--scale", "1x", "scale \"1x\" does not parse"),
        ("--scale", "1m,ten", "scale \"ten\" does not parse"),
        ("--workload", "70/20", "workload \"70/20\" does not parse"),
        ("--workload", "60/30/30", "summing to 100"),
        (
            "--keys",
            "gaussian",
            "key distribution \"gaussian\" does not parse",
        ),
        ("--durability", "sometimes", "durability \"sometimes\""),
        ("--threads", "0", "--threads 0"),
    ] {
        let mut args = vec![flag, value];
        args.extend(paths);
        refused(&engines(&args, &[]), needle);
        assert!(
            !data.exists() && !out.exists(),
            "{flag} {value} made something"
        );
    }
}

#[test]
fn a_data_directory_with_something_in_it_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious"), "the user's").unwrap();
    let out = dir.path().join("report");
    let run = engines(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    refused(&run, "is not empty");
    let names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious"]);
    assert_eq!(
        std::fs::read_to_string(data.join("precious")).unwrap(),
        "the user's"
    );
    assert!(!out.exists());
}

#[test]
fn an_unreachable_postgres_is_refused_without_its_password() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://alice:hunter2secret@127.0.0.1:{port}/lab");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = engines(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            dir.path().join("r").to_str().unwrap(),
        ],
        &[("QUORUMLAB_ENGINES_POSTGRES_URL", &url)],
    );
    let stderr = refused(&run, "is unreachable");
    assert!(stderr.contains("alice:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
    assert!(!data.exists());
}

#[test]
fn a_table_already_there_is_refused_and_kept() {
    if !postgres_installed() {
        return;
    }
    let dir = reachable_temp_dir();
    let server_dir = dir.path().join("pg");
    std::fs::create_dir(&server_dir).unwrap();
    let server = OwnPostgres::start(&server_dir, 16).unwrap();
    let sql_in = |db: &str, statement: &str| {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-d", db, "-p"])
            .arg(server.port.to_string())
            .args(["-U", "postgres", "-tAc", statement])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sql = |statement: &str| sql_in("postgres", statement);
    sql("CREATE TABLE quorumlab_engines_kv (k bigint PRIMARY KEY, v bytea); INSERT INTO quorumlab_engines_kv VALUES (1, 'mine')");
    let data = dir.path().join("data");
    let run = engines(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            dir.path().join("r").to_str().unwrap(),
        ],
        &[("QUORUMLAB_ENGINES_POSTGRES_URL", &server.url())],
    );
    refused(&run, "already exists");
    assert_eq!(sql("SELECT count(*) FROM quorumlab_engines_kv"), "1");
    assert!(!data.exists());

    // A role that may not checkpoint is refused before anything is made.
    sql("CREATE DATABASE other");
    let other = format!("postgres://postgres@127.0.0.1:{}/other", server.port);
    sql("CREATE ROLE plain LOGIN");
    let plain = format!("postgres://plain@127.0.0.1:{}/other", server.port);
    let run = engines(
        &["--data-dir", data.to_str().unwrap()],
        &[("QUORUMLAB_ENGINES_POSTGRES_URL", &plain)],
    );
    refused(&run, "grant it pg_checkpoint and pg_monitor");
    assert!(!data.exists());

    // In another database of the same server the run goes ahead, gives RocksDB the server's
    // shared_buffers (16 MiB here), and drops only the table it made.
    let report = dir.path().join("r");
    let run = engines(
        &[
            "--scale",
            "5k",
            "--phase-ms",
            "200",
            "--workload",
            "mixed",
            "--keys",
            "uniform",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
        ],
        &[("QUORUMLAB_ENGINES_POSTGRES_URL", &other)],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("shared_buffers = 16MB") && md.contains("block cache = 16 MiB"),
        "{md}"
    );
    assert!(
        md.contains(&format!("127.0.0.1:{}/other", server.port)),
        "{md}"
    );
    assert_eq!(sql("SELECT count(*) FROM quorumlab_engines_kv"), "1");
    let left = "SELECT to_regclass('quorumlab_engines_kv') IS NULL";
    assert_eq!(sql_in("other", left), "t", "the run's own table dropped");
    assert!(!data.exists());
}

#[test]
fn ctrl_c_stops_the_run_and_removes_what_it_made() {
    if !postgres_installed() {
        return;
    }
    let dir = reachable_temp_dir();
    let data = dir.path().join("data");
    let report = dir.path().join("report");
    let child = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args([
            "engines",
            "--scale",
            "200k",
            "--phase-ms",
            "1000",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&report)
        .env_remove("QUORUMLAB_ENGINES_POSTGRES_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once both engines are loaded and measuring has begun.
    let rocks = data.join("rocksdb-200k");
    let started = std::time::Instant::now();
    while !(rocks.join("CURRENT").exists() && started.elapsed().as_secs() >= 4) {
        assert!(started.elapsed().as_secs() < 60, "the run never got going");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: interrupted; what the run made has been removed"),
        "{stderr}"
    );
    assert!(!data.exists(), "data directory left behind");
    assert!(!report.exists(), "a report from an interrupted run");
    assert_no_process_under(&data);
}

fn cells(json: &Value) -> &Vec<Value> {
    json["cells"].as_array().unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn both_engines_run_every_workload_on_the_smallest_scale() {
    if !postgres_installed() {
        return;
    }
    let dir = reachable_temp_dir();
    let data = dir.path().join("data");
    let report = dir.path().join("report");
    let run = engines(
        &[
            "--scale",
            "1m",
            "--phase-ms",
            "700",
            "--threads",
            "2",
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&run.stdout).unwrap();
    check_outcome(&json);
    check_report(&report);
    // The report renders again from its JSON, the same to the byte; junk is refused.
    let again = dir.path().join("again");
    let rerun = engines(
        &[
            "--report-from",
            report.join("report.json").to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let md = |d: &Path| std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_eq!(md(&report), md(&again));
    let junk = engines(
        &[
            "--report-from",
            report.join("1M-p99.svg").to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        &[],
    );
    refused(&junk, "is not an engines report.json");
    // The run made the data directory, so it removed it; its own Postgres is gone.
    assert!(!data.exists(), "data directory left behind");
    assert_no_process_under(&data);
}

fn check_outcome(json: &Value) {
    let logical_keys = 1_000_000 * (8 + 100);
    let loads = json["loads"].as_array().unwrap();
    assert_eq!(loads.len(), 2);
    for load in loads {
        // Each engine really holds at least the logical bytes, and wrote at least them to its WAL.
        assert!(
            u(&load["footprint"]["data_bytes"]) >= logical_keys,
            "{load}"
        );
        assert!(u(&load["written"]["wal_bytes"]) >= logical_keys, "{load}");
    }
    let cells = cells(json);
    assert_eq!(cells.len(), 16, "4 workloads x 2 distributions x 2 engines");
    for pair in cells.chunks(2) {
        let engines: Vec<&str> = pair.iter().map(|c| c["engine"].as_str().unwrap()).collect();
        assert_eq!(engines, ["postgres", "rocksdb"]);
        assert_eq!(
            pair[0]["open_rate_ops_s"], pair[1]["open_rate_ops_s"],
            "one rate for both"
        );
        assert_eq!(pair[0]["mix"], pair[1]["mix"]);
    }
    for c in cells {
        assert!(c["throughput_ops_s"].as_f64().unwrap() > 100.0, "{c}");
        assert!(
            u(&c["p50_us"]) <= u(&c["p99_us"]) && u(&c["p99_us"]) <= u(&c["max_us"]),
            "{c}"
        );
        // Every write reached the WAL: its record carries at least the key and the value.
        assert!(u(&c["writes"]) > 0, "{c}");
        assert!(
            u(&c["written"]["wal_bytes"]) >= u(&c["logical_written_bytes"]),
            "{c}"
        );
        let debt = &c["compaction_debt_bytes"];
        assert_eq!(debt.is_null(), c["engine"] == "postgres", "{c}");
    }
}

fn check_report(report: &Path) {
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let verdicts = md
        .split("## When each engine wins, and why")
        .nth(1)
        .unwrap();
    let rows = verdicts.lines().filter(|l| l.starts_with("| 1M |")).count();
    assert_eq!(rows, 8, "{verdicts}");
    assert!(
        md.contains("shared_buffers = 128MB"),
        "the settings as Postgres reports them"
    );
    assert!(
        md.contains("block cache = 128 MiB"),
        "the settings as RocksDB reports them"
    );
    for metric in ["throughput", "p99", "write-amp", "space-amp"] {
        let file = format!("1M-{metric}.svg");
        assert!(md.contains(&format!("]({file})")), "{file} linked");
        let svg = std::fs::read_to_string(report.join(&file)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("fill=\"#336791\"").count(),
            9,
            "a legend and 8 postgres bars"
        );
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(cells(&json).len(), 16);
}
