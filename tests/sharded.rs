//! Sharded clusters on the command line: the simulator's runs and sweeps, the deliberately
//! broken build judged unsafe (exit 1), and bad input refused in one line (exit 2, nothing on
//! stdout).

use std::process::{Command, Output};

fn quorumlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(args)
        .output()
        .expect("run quorumlab")
}

fn assert_user_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "more than one line: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");
}

/// A copy of a built-in scenario file with `from` replaced by `to`, in a temporary file.
fn edited(name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/");
    let text = std::fs::read_to_string(format!("{path}{name}.toml")).unwrap();
    assert!(text.contains(from), "{from} not in {name}");
    let out = std::env::temp_dir().join(format!("ql-sharded-{}-{name}.toml", std::process::id()));
    std::fs::write(&out, text.replace(from, to)).unwrap();
    out
}

#[test]
fn sim_shows_the_migrations_and_what_they_cost() {
    let out = quorumlab(&["sim", "shard-add-shard", "--seed", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "3 config servers (n1-n3), 4 shards s1-s4 (n4-n7, the last 1 new and empty), 2 routers (n8-n9)",
        "critical section entered",
        "range deleter: chunk 1 removed",
        "migrations: 3 started, 3 committed, 0 aborted",
        "writes inside critical sections:",
        "stale-config retries by routers:",
    ] {
        assert!(text.contains(needle), "'{needle}' not in:\n{text}");
    }
    let json = quorumlab(&["sim", "shard-donor-crash", "--json"]);
    assert!(json.status.success());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(value["migrations"][0]["outcome"], "aborted");
    assert_eq!(value["summary"]["lost_writes"], 0);
}

#[test]
fn a_sweep_gives_distributions_and_the_broken_build_is_judged_unsafe() {
    let out = quorumlab(&["sim", "sweep", "shard-add-shard", "--seeds", "1..=4"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("longest critical section (ms)"), "{text}");
    let broken = quorumlab(&["sim", "shard-add-shard", "--orphan-reads"]);
    assert_eq!(
        broken.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("returned a document twice"), "{stderr}");
}

#[test]
fn the_report_draws_each_shard_in_its_migrations() {
    let dir = std::env::temp_dir().join(format!("ql-sharded-report-{}", std::process::id()));
    let out = quorumlab(&["sim", "shard-add-shard", "--report", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.join("index.html")).expect("index.html");
    assert!(
        page.contains("critical section") && page.contains("receiving"),
        "roles drawn"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let bad_step = edited("shard-donor-crash", "\"critical-section\"", "\"handshake\"");
    assert_user_error(
        &quorumlab(&["sim", bad_step.to_str().unwrap()]),
        "'handshake' is not a migration step (known: clone, catch-up, critical-section, commit, range-deletion)",
    );
    let no_key = edited("shard-grow-10x", "key = \"ts\"", "key = \"user_name\"");
    assert_user_error(
        &quorumlab(&["sim", no_key.to_str().unwrap()]),
        "no candidate key 'user_name'",
    );
    let crowded = edited("shard-add-shard", "shards = 3", "shards = 9");
    assert_user_error(
        &quorumlab(&["sim", crowded.to_str().unwrap()]),
        "needs 15 hosts",
    );
    assert_user_error(
        &quorumlab(&["sim", "shard-add-shard", "--stale-reads"]),
        "--stale-reads",
    );
    assert_user_error(
        &quorumlab(&["sim", "etcd-leader-kill", "--orphan-reads"]),
        "--orphan-reads",
    );
    let config_cut = edited(
        "shard-stale-router",
        "kind = \"isolate-router\"",
        "kind = \"isolate-donor-from-config\"",
    );
    assert_user_error(
        &quorumlab(&["run", config_cut.to_str().unwrap()]),
        "runs in the simulator only: a real donor never talks to the config store",
    );
    assert_user_error(
        &quorumlab(&["compare", "shard-grow-10x"]),
        "a growth replay runs in the simulator only",
    );
    for path in [bad_step, no_key, crowded, config_cut] {
        std::fs::remove_file(path).unwrap();
    }
}
