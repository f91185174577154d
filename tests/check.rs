//! `quorumlab check`: the checker on histories the lab did not write (Jepsen EDN) and on its own,
//! with the exit codes a script can rely on: 0 linearizable, 1 not, 3 unknown, 2 bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quorumlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(args)
        .output()
        .expect("run quorumlab")
}

fn history(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/histories")
        .join(name)
        .display()
        .to_string()
}

/// `sim --json` of a seed the stale-read build breaks.
fn stale_read_run() -> Output {
    quorumlab(&[
        "sim",
        "etcd-leader-isolate",
        "--seed",
        "3",
        "--stale-reads",
        "--json",
    ])
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary directory removed when the test ends, passed or failed.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("quorumlab-check-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

#[test]
fn a_jepsen_cas_register_history_is_linearizable_exit_0() {
    let out = quorumlab(&["check", &history("cas-register-ok.edn")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cas-register model, 6 operations from 3 clients"),
        "{text}"
    );
    assert!(text.contains("fail 1, unknown 1"), "{text}");
    assert!(text.contains("\n  linearizable"), "{text}");
}

#[test]
fn a_stale_read_names_exactly_the_three_operations_and_exit_1() {
    let dir = temp_dir("stale");
    let report = dir.0.display().to_string();
    let out = quorumlab(&[
        "check",
        &history("independent-stale-read.edn"),
        "--report",
        &report,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("NOT linearizable (stale read on k0)"),
        "{text}"
    );
    assert!(
        text.contains("these 3 operations cannot be linearized together"),
        "{text}"
    );
    let named: Vec<&str> = text.lines().filter(|l| l.starts_with("    #")).collect();
    assert_eq!(named.len(), 3, "{text}");
    assert!(named[0].contains("put k0=1 -> ok"), "{text}");
    assert!(named[1].contains("put k0=2 -> ok"), "{text}");
    assert!(named[2].contains("client 2 get k0 -> ok 1"), "{text}");
    let page = std::fs::read_to_string(dir.0.join("history.html")).expect("report written");
    assert_eq!(
        page.matches("fill=\"#d32f2f\"").count(),
        6,
        "three marked ops, in close-up and overview"
    );
    assert!(page.contains("client 4"), "every process has a lane");
}

#[test]
fn the_labs_own_json_is_checked_and_the_budget_answers_unknown_exit_3() {
    let dir = temp_dir("json");
    let file = dir.0.join("run.json");
    let out = quorumlab(&["sim", "etcd-leader-isolate", "--seed", "3", "--json"]);
    std::fs::write(&file, &out.stdout).expect("write");
    let file = file.display().to_string();
    let ok = quorumlab(&["check", &file]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let starved = quorumlab(&["check", &file, "--steps", "100"]);
    assert_eq!(starved.status.code(), Some(3), "{}", stdout(&starved));
    assert!(stdout(&starved).contains("unknown (search budget of 100 steps"));
    let json = quorumlab(&["check", &file, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(doc[0]["verdict"]["verdict"], "linearizable");
}

#[test]
fn the_stale_read_build_is_caught_and_named_with_a_handful_of_operations() {
    let dir = temp_dir("broken");
    let file = dir.0.join("broken.json");
    let out = stale_read_run();
    std::fs::write(&file, &out.stdout).expect("write");
    let out = quorumlab(&["check", &file.display().to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let verdict = &doc[0]["verdict"];
    assert_eq!(verdict["verdict"], "not-linearizable");
    assert_eq!(verdict["minimal"], true);
    // The read, the write it saw, and the writes that could have overwritten it in between: a
    // handful out of thousands.
    let ops = verdict["ops"].as_array().expect("ops");
    assert!((3..=8).contains(&ops.len()), "{verdict}");
    let read = ops.last().expect("ops");
    assert_eq!(read["f"], "get", "{verdict}");
    assert!(ops
        .iter()
        .any(|o| o["f"] == "put" && o["value"] == read["outcome"]["read"]));
}

#[test]
fn bad_histories_are_one_line_with_where_and_exit_2() {
    let dir = temp_dir("bad");
    for (name, text, needle) in [
        (
            "a.edn",
            "{:process 0 :type :invoke :f :write :value 1}\n{:process 0, :type :invoke, :f :read}",
            "a.edn:2:1: operation has no :value",
        ),
        (
            "b.edn",
            "{:process 0 :type :ok :f :write :value 1}",
            "b.edn:1:1: process 0 completes an operation it never invoked",
        ),
        (
            "c.edn",
            "{:process 0 :type :invoke :f :append :value [1 2]}",
            "c.edn:1:30: :f must be :read, :write or :cas",
        ),
        ("d.edn", "{:process 0 :type :invoke", "d.edn:1:1: unclosed"),
        (
            "e.json",
            "{\"ops\": [{\"id\": 1}]}",
            "e.json: not a history the lab wrote",
        ),
        ("f.json", "{\"ops\": [", "f.json:1:9: not JSON or EDN"),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("write");
        let out = quorumlab(&["check", &path.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: expected {needle:?} in {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty(), "nothing half-written");
    }
}

#[test]
fn ids_that_do_not_tell_operations_apart_are_renumbered_and_only_the_named_are_marked() {
    let dir = temp_dir("ids");
    let out = stale_read_run();
    let mut doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for op in doc["history"]["ops"].as_array_mut().expect("ops") {
        op["id"] = 0.into(); // as another tool, or an old run, might write them
    }
    let file = dir.0.join("zero-ids.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    let report = dir.0.join("report");
    let out = quorumlab(&[
        "check",
        &file.display().to_string(),
        "--report",
        &report.display().to_string(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let verdicts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let named = verdicts[0]["verdict"]["ops"].as_array().expect("ops");
    let ids: std::collections::HashSet<u64> =
        named.iter().map(|o| o["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), named.len(), "named operations have distinct ids");
    let page = std::fs::read_to_string(report.join("history.html")).expect("page");
    assert_eq!(
        page.matches("fill=\"#d32f2f\"").count(),
        2 * named.len(),
        "each named operation is marked once in the close-up and once in the overview, no other"
    );
}

#[test]
fn jepsen_logs_are_read_as_porcupine_reads_them() {
    // A timed-out cas that took effect, a failed cas linearized without swapping, a timed-out
    // write and a timed-out read: linearizable.
    let out = quorumlab(&["check", &history("jepsen-cas-ok.log")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("cas-register model, 7 operations from 4 clients"));
    let out = quorumlab(&["check", &history("jepsen-stale-read.log")]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("NOT linearizable (stale read on k0)"));
}

#[test]
fn bench_times_every_history_in_a_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let out = quorumlab(&[
        "check",
        "--bench",
        dir.to_str().unwrap(),
        "--repeats",
        "3",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let verdicts: Vec<(&str, bool)> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["history"].as_str().unwrap(),
                r["linearizable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("cas-register-ok.edn", true),
            ("independent-stale-read.edn", false),
            ("jepsen-cas-ok.log", true),
            ("jepsen-stale-read.log", false),
        ]
    );
    assert!(doc["results"][0]["median_ms"].as_f64().unwrap() > 0.0);

    // Beside another checker's verdicts and times: agreeing, exit 0; one verdict apart, exit 1.
    let base = temp_dir("bench-baseline");
    let rows = |stale_ok: bool| {
        serde_json::json!([
            {"history": "jepsen-cas-ok.log", "linearizable": true, "expected": true, "median_ms": 0.5},
            {"history": "jepsen-stale-read.log", "linearizable": stale_ok, "median_ms": 0.5},
        ])
        .to_string()
    };
    let file = base.0.join("baseline.json");
    let with_baseline = |file: &Path| {
        quorumlab(&[
            "check",
            "--bench",
            dir.to_str().unwrap(),
            "--baseline",
            file.to_str().unwrap(),
        ])
    };
    std::fs::write(&file, rows(false)).unwrap();
    let out = with_baseline(&file);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("baseline: 1.0 ms in total"),
        "{}",
        stdout(&out)
    );
    std::fs::write(&file, rows(true)).unwrap();
    let out = with_baseline(&file);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jepsen-stale-read.log"));

    // Not a directory, or a directory with a bad history: one line, exit 2, nothing on stdout.
    let out = quorumlab(&["check", "--bench", &history("jepsen-stale-read.log")]);
    assert_eq!(out.status.code(), Some(2));
    let bad = temp_dir("bench-bad");
    std::fs::write(bad.0.join("a.log"), "INFO  jepsen.util - 0 :ok :read 1\n").unwrap();
    let out = quorumlab(&["check", "--bench", bad.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a.log:1:1: process 0 completes nothing"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
