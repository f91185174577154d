//! MongoDB on the command line: the simulator's runs, bad input refused in one line (exit 2,
//! nothing started, passwords never shown), and the real side against a replica set, which runs
//! only where `QUORUMLAB_MONGODB_URI` names one (no mongod can be installed here) and says
//! `skipped` otherwise.

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

fn scenario_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ql-mongo-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

const BASE: &str = r#"
name = "x"
system = "mongodb"
duration_ms = 10000
[topology]
nodes = 3
[workload]
clients = 1
rate_per_s = 10
put = 1
get = 0
cas = 0
keys = 1
timeout_ms = 1000
"#;

#[test]
fn the_simulator_runs_every_mongo_scenario_and_judges_it() {
    let out = quorumlab(&["sim", "mongo-isolate-primary", "--seed", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ROLLBACK"), "{text}");
    assert!(text.contains("can't see a majority"), "{text}");
    let json = quorumlab(&["sim", "mongo-stepdown", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "one run per write concern"
    );
    let sweep = quorumlab(&[
        "sim",
        "sweep",
        "mongo-stepdown",
        "--seeds",
        "1..=4",
        "--json",
    ]);
    assert!(
        sweep.status.success(),
        "{}",
        String::from_utf8_lossy(&sweep.stderr)
    );
    let step = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["sim", "mongo-stepdown", "--step"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stepped = String::from_utf8_lossy(&step.stdout);
    assert!(stepped.contains("n1: PRIMARY"), "{stepped}");
    let dir = std::env::temp_dir().join(format!("ql-mongo-report-{}", std::process::id()));
    let report = quorumlab(&[
        "sim",
        "mongo-primary-kill",
        "--report",
        dir.to_str().unwrap(),
    ]);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(page.contains("primary, not yet writable") && page.contains("crash leader (n1)"));
    assert!(dir.join("w-majority.html").exists() && dir.join("runs.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An etcd scenario that asks for a step-down, which only MongoDB has.
fn missing_step_down() -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/etcd-leader-kill.toml"
    ))
    .unwrap();
    let text = text + "\n[[faults]]\nat_ms = 3000\nkind = \"step-down\"\nnode = \"leader\"\n";
    scenario_file("etcd-step-down", &text)
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let wc = scenario_file(
        "wc",
        &format!("{BASE}[mongodb]\nwrite_concerns = [\"2\"]\n"),
    );
    assert_user_error(&quorumlab(&["sim", wc.to_str().unwrap()]), "write_concerns");
    let missing = scenario_file("missing", BASE);
    assert_user_error(
        &quorumlab(&["sim", missing.to_str().unwrap()]),
        "needs a [mongodb] section",
    );
    let wrong_set = quorumlab(&[
        "run",
        "mongo-stepdown",
        "--target",
        "mongodb://lab:s3cret@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/?replicaSet=other",
    ]);
    assert_user_error(&wrong_set, "the scenario's set is 'rs0'");
    assert!(!String::from_utf8_lossy(&wrong_set.stderr).contains("s3cret"));
    let too_few = quorumlab(&[
        "run",
        "mongo-stepdown",
        "--target",
        "mongodb://127.0.0.1:1/?replicaSet=rs0",
    ]);
    assert_user_error(&too_few, "asks for 3 members");
    let kill = quorumlab(&[
        "run",
        "mongo-primary-kill",
        "--target",
        "mongodb://h1,h2,h3/?replicaSet=rs0",
    ]);
    assert_user_error(&kill, "need node agents");
    let unreachable = quorumlab(&[
        "run",
        "mongo-stepdown",
        "--target",
        "mongodb://lab:s3cret@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/?replicaSet=rs0",
    ]);
    assert_user_error(&unreachable, "unreachable");
    assert!(!String::from_utf8_lossy(&unreachable.stderr).contains("s3cret"));
    assert_user_error(&quorumlab(&["run", "mongo-stepdown"]), "--target");
    let inventory = scenario_file(
        "inventory",
        "all:\n  hosts:\n    m1: { ansible_host: 10.0.0.11 }\n    m2: { ansible_host: 10.0.0.12 }\n  children:\n    mongodb:\n      hosts: { m1: {}, m2: {} }\n",
    );
    let short = quorumlab(&[
        "run",
        "mongo-isolate-primary",
        "--inventory",
        inventory.to_str().unwrap(),
    ]);
    assert_user_error(&short, "the mongodb group has 2");
    let _ = std::fs::remove_file(inventory);
    let other = quorumlab(&[
        "compare",
        "pg-failover",
        "--target",
        "mongodb://h1/?replicaSet=rs0",
    ]);
    assert_user_error(&other, "compare --target is not available for postgres");
    let etcd_step_down = missing_step_down();
    let step_down = quorumlab(&["sim", etcd_step_down.to_str().unwrap()]);
    let _ = std::fs::remove_file(&etcd_step_down);
    assert_user_error(&step_down, "step-down is MongoDB's replSetStepDown");
    let etcd = quorumlab(&["sim", "etcd-leader-kill", "--json"]);
    assert!(etcd.status.success());
    for f in [wc, missing] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn against_a_real_replica_set() {
    let Ok(uri) = std::env::var("QUORUMLAB_MONGODB_URI") else {
        quorumlab_testkit::skip_without_mongodb();
        return;
    };
    // A planned failover on the user's set: the step-down hands over, nothing acknowledged is lost.
    let out = quorumlab(&["run", "mongo-stepdown", "--target", &uri, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for run in runs.as_array().unwrap() {
        let s = &run["summary"];
        assert_eq!(s["lost_writes"], 0, "{s}");
        assert!(
            s["failover_ms"].as_u64().is_some(),
            "a new primary took writes: {s}"
        );
    }
}
