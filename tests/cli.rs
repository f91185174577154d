//! The command line as a user meets it: bad input gives one clear line and exit code 2, JSON
//! parses, reports are written whole.

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
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");
}

/// A temporary directory removed when the test ends, passed or failed.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("quorumlab-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[test]
fn a_sharded_lab_on_an_inventory_needs_as_many_shard_hosts_as_shards() {
    let dir = temp_dir("shard-inventory");
    let inventory = dir.join("inventory.yml");
    std::fs::write(
        &inventory,
        "all:\n  hosts:\n    a: { ansible_host: 192.0.2.1 }\n    b: { ansible_host: 192.0.2.2 }\n  children:\n    etcd: { hosts: { a: {}, b: {} } }\n    shards: { hosts: { a: {}, b: {} } }\n",
    )
    .unwrap();
    let state = dir.join("state");
    let up = |system: &str| {
        quorumlab(&[
            "cluster",
            "up",
            system,
            "--shards",
            "2",
            "--inventory",
            inventory.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
    };
    // shard-add-shard's layout: two shards holding chunks and one added.
    assert_user_error(
        &up("sharded"),
        "3 shards are needed (2 holding chunks, 1 added) but the shards group has 2",
    );
    assert_user_error(&up("etcd"), "provisioned by Ansible");
    assert!(!state.exists(), "nothing written");
}

#[test]
fn unknown_scenario_is_one_line_and_exit_2() {
    assert_user_error(
        &quorumlab(&["sim", "etcd-no-such-thing"]),
        "unknown scenario 'etcd-no-such-thing'",
    );
}

#[test]
fn malformed_scenario_file_is_one_line_and_exit_2() {
    let dir = temp_dir("malformed");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\nsystem = \"etcd\"\n[topology\nnodes = 3\n",
    )
    .unwrap();
    assert_user_error(
        &quorumlab(&["sim", path.to_str().unwrap()]),
        "bad.toml:3:10: invalid table header",
    );
    std::fs::write(
        &path,
        "name = \"bad\"\nsystem = \"etcd\"\nduration_ms = 10\n",
    )
    .unwrap();
    assert_user_error(
        &quorumlab(&["sim", path.to_str().unwrap()]),
        "missing field",
    );
}

#[test]
fn scenario_mistakes_name_the_file_line_column_and_field() {
    let dir = temp_dir("located");
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/etcd-leader-isolate.toml"
    ))
    .unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "at_ms = 15000",
            "at_ms = 30000",
            ":34:1: faults[1].at_ms:",
            "never fires",
        ),
        (
            "kind = \"isolate\"\nnode = \"leader\"",
            "kind = \"partition-oneway\"\nfrom = \"n1\"\nto = \"n1\"",
            ":32:1: faults[0].to:",
            "from n1 to itself",
        ),
        (
            "node = \"leader\"",
            "kind = \"partition\"\ngroups = [[\"n1\", \"n2\"], [\"n2\", \"n3\"]]",
            ":",
            "must not overlap",
        ),
        (
            "rate_per_s = 100",
            "rate_per_s = 0",
            ":20:1: workload.rate_per_s:",
            "must be > 0",
        ),
        (
            "election_timeout_ms = 1000",
            "election_timeout_ms = 1050",
            ":12:1: topology.election_timeout_ms:",
            "whole number of heartbeats",
        ),
        (
            "at_ms = 5000",
            "at_mss = 5000",
            ":29:1: faults[0].at_mss:",
            "did you mean `at_ms`?",
        ),
        (
            "clients = 4",
            "clientz = 4",
            ":19:1: workload.clientz: unknown field `clientz`",
            "expected one of `clients`",
        ),
    ];
    for (i, (from, to, place, what)) in cases.iter().enumerate() {
        let mut text = base.replacen(from, to, 1);
        if what.contains("overlap") {
            text = text.replacen("kind = \"isolate\"\n", "", 1);
        }
        assert_ne!(text, base, "case {i} changed nothing");
        let path = dir.join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = quorumlab(&["sim", path.to_str().unwrap()]);
        let expected = format!("{}{place}", path.display());
        assert_user_error(&out, &expected);
        assert_user_error(&out, what);
    }
}

#[test]
fn timeline_lines_print_in_time_order() {
    for (scenario, seed) in [
        ("etcd-leader-isolate", "1"),
        ("etcd-chaos", "3"),
        ("etcd-minority-partition", "1"),
    ] {
        let out = quorumlab(&["sim", scenario, "--seed", seed]);
        let text = String::from_utf8_lossy(&out.stdout);
        let times: Vec<f64> = text
            .lines()
            .skip_while(|l| *l != "timeline")
            .take_while(|l| *l != "summary")
            .filter_map(|l| l.trim_start().split_once("s ")?.0.parse().ok())
            .collect();
        assert!(times.len() > 10, "{text}");
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{scenario} seed {seed}: {times:?}"
        );
    }
}

#[test]
fn impossible_topologies_are_rejected() {
    assert_user_error(
        &quorumlab(&["sim", "etcd-leader-kill", "--nodes", "0"]),
        "topology.nodes is 0",
    );
    let dir = temp_dir("topology");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/etcd-leader-kill.toml"
    ))
    .unwrap()
    .replace("node = \"leader\"", "node = \"n9\"");
    let path = dir.join("n9.toml");
    std::fs::write(&path, text).unwrap();
    assert_user_error(
        &quorumlab(&["sim", path.to_str().unwrap()]),
        "names n9, but the cluster has only 3 nodes",
    );
}

#[test]
fn bad_seed_range_is_a_usage_error() {
    let out = quorumlab(&["sim", "sweep", "etcd-leader-kill", "--seeds", "9..1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty seed range"));
}

#[test]
fn json_output_parses_and_holds_trace_history_and_summary() {
    let out = quorumlab(&["sim", "etcd-leader-kill", "--seed", "2", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["trace"].as_array().unwrap().len() > 10);
    assert!(v["history"]["ops"].as_array().unwrap().len() > 100);
    assert_eq!(v["summary"]["verdict"]["verdict"], "linearizable");
}

#[test]
fn a_simulated_runs_trace_can_be_watched_as_tracing_events_without_changing_it() {
    let args = ["sim", "etcd-leader-kill", "--seed", "2", "--json"];
    let quiet = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "no log lines by default");
    let watched = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(args)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "quorumlab_sim::trace=debug")
        .output()
        .unwrap();
    assert!(watched.status.success());
    assert_eq!(
        watched.stdout, quiet.stdout,
        "the trace itself is unchanged"
    );
    let trace: serde_json::Value = serde_json::from_slice(&quiet.stdout).unwrap();
    let trace = trace["trace"].as_array().unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8(watched.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), trace.len(), "one event per trace line");
    for (event, line) in events.iter().zip(trace) {
        assert_eq!(event["target"], "quorumlab_sim::trace");
        assert_eq!(
            event["fields"]["sim_us"], line["at_us"],
            "stamped with simulated time"
        );
        assert_eq!(event["fields"]["node"], line["node"]);
        assert_eq!(event["span"]["name"], "sim");
        assert_eq!(event["span"]["scenario"], "etcd-leader-kill");
        assert_eq!(event["span"]["seed"], 2);
    }
}

#[test]
fn report_writes_a_page_with_timeline_and_message_diagram() {
    let dir = temp_dir("report");
    let out = quorumlab(&[
        "sim",
        "etcd-leader-isolate",
        "--report",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.contains("Roles and terms") && html.contains("Messages around the fault"));
    assert!(html.matches("<svg").count() >= 2);
    assert!(html.contains("PreVote t"), "the election's votes are drawn");
    assert!(dir.join("run.json").exists());
}

#[test]
fn step_mode_advances_one_event_per_line_and_shows_every_node() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["sim", "etcd-leader-kill", "--step"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n\n\nq\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("> ").count(), 4, "{stdout}");
    assert!(
        stdout.contains("n1:") && stdout.contains("n3:") && stdout.contains("commit"),
        "{stdout}"
    );
}

#[test]
fn demo_runs_with_nothing_installed_and_explains_itself() {
    let out = quorumlab(&["demo"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("became LEADER"));
    assert!(stdout.contains("checker: linearizable"));
    assert!(stdout.contains("What happened"));
    assert!(
        stdout.contains("The checker found a linearization of all"),
        "the story states the verdict this run got: {stdout}"
    );
}

#[test]
fn a_single_run_that_breaks_safety_exits_1_and_says_what_broke() {
    let out = quorumlab(&["sim", "etcd-leader-isolate", "--seed", "3", "--stale-reads"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this run broke a safety property: NOT linearizable (stale read"),
        "{stderr}"
    );
    let json = quorumlab(&[
        "sim",
        "etcd-leader-isolate",
        "--seed",
        "3",
        "--stale-reads",
        "--json",
    ]);
    assert_eq!(
        json.status.code(),
        Some(1),
        "JSON is printed whole, and the exit says it failed"
    );
    serde_json::from_slice::<serde_json::Value>(&json.stdout).expect("whole JSON");
    let fine = quorumlab(&["sim", "etcd-leader-isolate", "--seed", "3"]);
    assert_eq!(fine.status.code(), Some(0));
}

#[test]
fn shard_bad_input_is_one_line_and_exit_2() {
    let dir = temp_dir("shard");
    let path = dir.join("w.toml");
    std::fs::write(&path, "name = \"w\"\n[[datasets]\nname = 1\n").unwrap();
    assert_user_error(
        &quorumlab(&["shard", path.to_str().unwrap()]),
        "malformed workload",
    );
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/accounts.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("fields = [\"currency\"]", "fields = [\"region\"]");
    std::fs::write(&path, text).unwrap();
    assert_user_error(
        &quorumlab(&["shard", path.to_str().unwrap()]),
        "names field 'region'",
    );
    assert_user_error(&quorumlab(&["shard", shipped, "--shards", "0"]), "0 shards");
    assert!(!dir.join("accounts-shard-keys.svg").exists());
}

#[test]
fn shard_prints_verdicts_writes_a_chart_and_json() {
    let dir = temp_dir("shard-ok");
    let chart = dir.join("chart.svg");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/accounts.toml");
    let out = quorumlab(&[
        "shard",
        shipped,
        "--growth",
        "1,10",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verdicts") && stdout.contains("currency") && stdout.contains("BAD"),
        "{stdout}"
    );
    assert!(std::fs::read_to_string(&chart).unwrap().starts_with("<svg"));
    let out = quorumlab(&[
        "shard",
        shipped,
        "--growth",
        "1",
        "--json",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["keys"].as_array().unwrap().len(), 4);
}

#[test]
fn sweep_of_the_broken_build_exits_1_and_its_replay_hint_reproduces_the_seed_exactly() {
    let dir = temp_dir("replay");
    let path = dir.join("my scenario.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scenarios/etcd-leader-isolate.toml"
        ),
        &path,
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let out = quorumlab(&[
        "sim",
        "sweep",
        path,
        "--seeds",
        "1..4",
        "--stale-reads",
        "--nodes",
        "5",
        "--step-ms",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = stderr
        .split('`')
        .nth(1)
        .expect("a replay command in backticks");
    for flag in ["--nodes 5", "--step-ms 8", "--stale-reads", "'"] {
        assert!(hint.contains(flag), "{flag} missing from {hint}");
    }
    let seed: u64 = hint
        .split("--seed ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let why = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("UNSAFE seed {seed}: ")))
        .expect("the seed named in the hint is listed as unsafe")
        .to_string();
    // Run the hint as a user pastes it, through a shell.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_quorumlab"))
        .parent()
        .unwrap();
    let replay = Command::new("sh")
        .arg("-c")
        .arg(hint)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .output()
        .unwrap();
    assert_eq!(
        replay.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replay_out = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay_out.contains(&format!("checker: {why}")),
        "replay did not reproduce `{why}`: {replay_out}"
    );
}

#[test]
fn cluster_up_without_root_is_one_line_and_exit_2() {
    let is_root = quorumlab_cluster::hosts::is_root();
    if !is_root || !std::path::Path::new("/usr/sbin/runuser").exists() {
        // Not root already: the plain call must refuse (unless etcd is missing, which it reports).
        let out = quorumlab(&[
            "cluster",
            "up",
            "etcd",
            "--state-dir",
            "/nonexistent/quorumlab",
        ]);
        assert_eq!(out.status.code(), Some(2));
        return;
    }
    let reachable = Command::new("/usr/sbin/runuser")
        .args([
            "-u",
            "nobody",
            "--",
            "test",
            "-x",
            env!("CARGO_BIN_EXE_quorumlab"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        quorumlab_testkit::skip(
            "user nobody cannot reach the test binary (checkout in a private directory)",
        );
        return;
    }
    let out = Command::new("/usr/sbin/runuser")
        .args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_quorumlab"),
            "cluster",
            "up",
            "etcd",
        ])
        .args(["--state-dir", "/tmp/quorumlab-nobody-never-created"])
        .output()
        .unwrap();
    assert_user_error(&out, "needs root");
    assert!(!std::path::Path::new("/tmp/quorumlab-nobody-never-created").exists());
}

#[test]
fn cluster_down_with_nothing_up_is_harmless() {
    let dir = temp_dir("down");
    let state = dir.join("state");
    for _ in 0..2 {
        let out = quorumlab(&["cluster", "down", "--state-dir", state.to_str().unwrap()]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to stop"));
    }
}

/// pg-failover's text with one line replaced.
fn pg_scenario_with(dir: &std::path::Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/pg-failover.toml"
    ))
    .unwrap();
    assert!(text.contains(from), "{from}");
    let path = dir.join("pg.toml");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path.display().to_string()
}

#[test]
fn postgres_scenarios_with_no_replica_or_a_broken_patroni_rule_are_refused() {
    let dir = temp_dir("pg-bad");
    let no_replica = pg_scenario_with(&dir, "nodes = 3", "nodes = 1");
    for command in ["sim", "run", "compare"] {
        assert_user_error(
            &quorumlab(&[command, &no_replica]),
            "needs at least 1 replica (topology.nodes >= 2); it asks for 0",
        );
    }
    let broken = pg_scenario_with(&dir, "ttl_s = 10", "ttl_s = 9");
    assert_user_error(
        &quorumlab(&["sim", &broken]),
        "Patroni needs loop_wait + 2*retry_timeout <= ttl, but 2 + 2*4 > 9",
    );
    assert_user_error(
        &quorumlab(&["cluster", "up", "postgres", "--scenario", &broken]),
        "Patroni needs loop_wait + 2*retry_timeout <= ttl",
    );
    assert_user_error(
        &quorumlab(&["cluster", "up", "postgres", "--replicas", "0"]),
        "a Postgres lab needs 1 to 6 replicas, not 0",
    );
}

#[test]
fn simulated_failover_prints_its_trace_and_the_same_measurements_as_json() {
    let out = quorumlab(&["sim", "pg-failover", "--seed", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "async mode:",
        "sync mode:",
        "crash leader (n1)",
        "took the leader key: promoting",
        "acknowledged writes:",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let out = quorumlab(&["sim", "pg-failover", "--seed", "3", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let summary = &run["summary"];
        assert!(
            summary["failover_ms"].as_u64().unwrap() > summary["detection_ms"].as_u64().unwrap()
        );
        assert_eq!(summary["lost_writes"], 0);
    }
}

#[test]
fn an_unreachable_or_malformed_postgres_target_is_one_line_and_exit_2() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert_user_error(
        &quorumlab(&[
            "run",
            "pg-lag",
            "--target",
            "postgres://app:s3cret@127.0.0.1:1/db",
        ]),
        "cannot reach Postgres on n1 (127.0.0.1:1)",
    );
    let out = quorumlab(&[
        "run",
        "pg-lag",
        "--target",
        "postgres://app:s3cret@db:port/x",
    ]);
    assert_user_error(&out, "is not a Postgres URL");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
    assert_user_error(
        &quorumlab(&[
            "run",
            "pg-failover",
            "--target",
            "postgres://127.0.0.1:1/db",
        ]),
        "faults need the lab's node agents",
    );
}

#[test]
fn the_simulated_report_says_when_acknowledged_writes_were_lost() {
    // Replicas behind a thin WAL link: the crash finds writes only the primary had.
    let dir = temp_dir("pg-thin");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/pg-failover.toml"
    ))
    .unwrap()
    .replace(
        "modes = [\"async\", \"sync\"]",
        "modes = [\"async\", \"sync\"]\nbandwidth_mb_per_s = 0.02",
    );
    let path = dir.join("thin.toml");
    std::fs::write(&path, text).unwrap();
    let out = quorumlab(&["sim", path.to_str().unwrap(), "--seed", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (async_part, sync_part) = text.split_once("\nsync mode:").unwrap();
    let lost = |part: &str| -> u64 {
        let line = part
            .lines()
            .find(|l| l.contains("acknowledged writes:"))
            .unwrap();
        line.split("lost: ")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(lost(async_part) > 0, "{async_part}");
    assert!(
        async_part.contains("(ids "),
        "the lost ids are named: {async_part}"
    );
    assert_eq!(lost(sync_part), 0, "{sync_part}");
}

#[test]
fn serve_needs_its_database_url_from_the_environment_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .arg("serve")
        .env_remove("QUORUMLAB_DATABASE_URL")
        .output()
        .unwrap();
    assert_user_error(&out, "set QUORUMLAB_DATABASE_URL");
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "QUORUMLAB_DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/db",
        )
        .output()
        .unwrap();
    assert_user_error(&out, "database:");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn load_says_in_one_line_when_there_is_no_service_or_no_lab() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["load", "--target", &format!("http://127.0.0.1:{free_port}")])
        .output()
        .unwrap();
    assert_user_error(&out, "does not answer");
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["load", "--rate", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let empty = std::env::temp_dir().join(format!("quorumlab-nolab-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["serve", "--lab", "--state-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_user_error(&out, "no lab is up");
}

#[test]
fn etcd_only_simulator_options_are_refused_for_postgres_in_one_line() {
    for args in [
        &["sim", "pg-failover", "--step"][..],
        &[
            "sim",
            "pg-failover",
            "--report",
            "/tmp/quorumlab-never-written",
        ],
        &["sim", "pg-lag", "--ops"],
        &["sim", "pg-lag", "--stale-reads"],
        &["sim", "pg-lag", "--step-ms", "2"],
        &[
            "sim",
            "sweep",
            "pg-lag",
            "--seeds",
            "1..2",
            "--step-ms",
            "8",
        ],
        &["sim", "sweep", "pg-lag", "--seeds", "1..2", "--stale-reads"],
    ] {
        let option = args
            .iter()
            .find(|a| a.starts_with("--") && **a != "--seeds");
        assert_user_error(
            &quorumlab(args),
            &format!(
                "{} is not available for postgres scenarios",
                option.unwrap()
            ),
        );
    }
    assert!(!std::path::Path::new("/tmp/quorumlab-never-written").exists());
}

#[test]
fn options_of_another_system_are_refused_in_one_line() {
    assert_user_error(
        &quorumlab(&[
            "run",
            "etcd-leader-kill",
            "--target",
            "postgres://u@127.0.0.1:1/db",
        ]),
        "--target measures Postgres clusters and MongoDB replica sets, not etcd ones",
    );
    assert_user_error(
        &quorumlab(&["cluster", "up", "etcd", "--replicas", "2"]),
        "--replicas is not available for etcd scenarios",
    );
    assert_user_error(
        &quorumlab(&["cluster", "up", "postgres", "--nodes", "3"]),
        "--nodes is not available for postgres scenarios",
    );
    assert_user_error(
        &quorumlab(&["cluster", "up", "etcd", "--scenario", "pg-lag"]),
        "scenario pg-lag has system = \"postgres\"",
    );
}

#[test]
fn a_postgres_sweep_runs_every_mode_in_the_postgres_simulator() {
    let out = quorumlab(&["sim", "sweep", "pg-failover", "--seeds", "1..4", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8, "4 seeds in each of async and sync");
    for run in runs {
        assert!(
            run["detection_ms"].as_u64().is_some(),
            "Postgres summaries: {run}"
        );
    }
    let text = quorumlab(&["sim", "sweep", "pg-failover", "--seeds", "1..4"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("async, over 4 seeds") && text.contains("sync, over 4 seeds"));
    assert!(text.contains("fault to leader key lost (ms)"), "{text}");
}

#[test]
fn a_fault_the_real_lab_cannot_do_is_refused_before_anything_starts() {
    let dir = temp_dir("netem");
    let lossy = pg_scenario_with(
        &dir,
        "kind = \"crash\"\nnode = \"leader\"",
        "kind = \"loss\"\nrate = 0.2",
    );
    for command in ["run", "compare"] {
        let state = dir.join(format!("state-{command}"));
        let out = quorumlab(&[command, &lossy, "--state-dir", state.to_str().unwrap()]);
        assert_user_error(&out, "the real lab cannot carry out fault 'loss 20%'");
        assert!(!state.exists(), "nothing started for {command}");
        let out = quorumlab(&[
            command,
            "etcd-chaos",
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        assert_user_error(&out, "the real lab cannot run chaos, which may draw");
    }
    // The simulator carries the same fault out.
    let out = quorumlab(&["sim", &lossy, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts the `[[faults]]` tables of a scenario file.
fn faults_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .matches("[[faults]]")
        .count()
}

#[test]
fn shrinking_a_broken_build_leaves_at_most_two_faults_and_a_file_that_still_fails() {
    let dir = temp_dir("shrink");
    for (scenario, seed, flag) in [
        ("etcd-leader-isolate", "3", "--stale-reads"),
        ("etcd-chaos", "1", "--stale-reads"),
        ("pg-isolate-primary", "1", "--broken-patroni-timing"),
    ] {
        let out_file = dir.join(format!("{scenario}.toml"));
        let out_path = out_file.to_str().unwrap();
        let out = quorumlab(&[
            "sim", "shrink", scenario, "--seed", seed, flag, "--out", out_path,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{scenario}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("--seed {seed} {flag}")),
            "{stdout}"
        );
        assert!(
            faults_in(&out_file) <= 2,
            "{scenario}: {}",
            std::fs::read_to_string(&out_file).unwrap()
        );
        let replay = quorumlab(&["sim", out_path, "--seed", seed, flag]);
        assert_eq!(
            replay.status.code(),
            Some(1),
            "{scenario}: the shrunk file must still fail"
        );
        let healthy = quorumlab(&["sim", out_path, "--seed", seed]);
        assert_eq!(
            healthy.status.code(),
            Some(0),
            "{scenario}: and only with the broken build"
        );
    }
}

#[test]
fn shrinking_a_seed_that_does_not_fail_is_refused_and_writes_nothing() {
    let dir = temp_dir("shrink-ok");
    let out_file = dir.join("never.toml");
    let out = quorumlab(&[
        "sim",
        "shrink",
        "etcd-leader-isolate",
        "--seed",
        "3",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_user_error(
        &out,
        "seed 3 of etcd-leader-isolate does not fail; nothing to shrink",
    );
    assert!(!out_file.exists());
    assert_user_error(
        &quorumlab(&["sim", "etcd-leader-kill", "--broken-patroni-timing"]),
        "--broken-patroni-timing is not available for etcd scenarios",
    );
}

#[test]
fn sweep_shrink_writes_the_first_failing_seed_beside_the_replay_hint() {
    let dir = temp_dir("sweep-shrink");
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args([
            "sim",
            "sweep",
            "etcd-chaos",
            "--seeds",
            "1..2",
            "--stale-reads",
            "--shrink",
        ])
        .current_dir(&*dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shrunk to etcd-chaos-seed1-shrunk.toml"),
        "{stderr}"
    );
    assert!(faults_in(&dir.join("etcd-chaos-seed1-shrunk.toml")) <= 2);
}
