//! The README cannot drift: every `quorumlab ...` command in its code blocks that needs neither
//! root nor a running database is run here, as written, from a scratch directory. Two long ones
//! run smaller (the substitutions are listed below and printed); commands that need root (a lab)
//! or a database are listed as not run, with the reason.

use std::path::Path;
use std::process::{Command, Stdio};

const README: &str = include_str!("../README.md");

/// Commands the README shows at full size, run here smaller: (as written, as run).
const SMALLER: &[(&str, &str)] = &[
    ("--seeds 1..1000", "--seeds 1..20"),
    ("--seeds 1..=200", "--seeds 1..=10"),
    ("sim bench", "sim bench --seeds 20"),
    ("--kills 1000", "--kills 50"),
    ("--cuts 100", "--cuts 3"),
    (
        "kv bench --json",
        "kv bench --seconds 0.2 --recovery-mib 8 --json",
    ),
    (
        "--scale 1m,10m,100m --out docs/engines",
        "--scale 5k --phase-ms 200 --workload mixed --keys uniform",
    ),
    (
        "--scale 1m",
        "--scale 5k --phase-ms 200 --workload range-scan",
    ),
    (
        "--durability relaxed",
        "--durability relaxed --scale 5k --phase-ms 200",
    ),
];

/// Why a command is not run here, by its subcommand; `None`: it runs.
fn not_run_because(args: &[&str]) -> Option<&'static str> {
    match args.first().copied() {
        Some("cluster" | "run" | "compare") => Some("needs root: a lab of network namespaces"),
        Some("machines") => {
            Some("needs root: systemd-nspawn machines (tests/machines.rs runs them)")
        }
        Some("serve" | "load" | "migrate-online") => Some("needs a running database or service"),
        _ => None,
    }
}

/// Every line of a fenced code block that starts with `quorumlab `, without its comment.
fn readme_commands() -> Vec<String> {
    let mut in_block = false;
    let mut commands = Vec::new();
    for line in README.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.split(" #").next().unwrap_or_default().trim();
        if in_block && line.starts_with("quorumlab ") {
            commands.push(line.to_string());
        }
    }
    commands
}

/// Runs one README command (a `| jq ...` tail is replaced by parsing the JSON here).
fn run_one(command: &str, dir: &Path) -> Result<(), String> {
    let (command, piped_to_jq) = match command.split_once(" | jq") {
        Some((head, _)) => (head, true),
        None => (command, false),
    };
    let mut shown = command.to_string();
    for (written, smaller) in SMALLER {
        shown = shown.replace(written, smaller);
    }
    let args: Vec<&str> = shown.split_whitespace().skip(1).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 1 is a verdict (a broken build caught); exit 2 would be the README's own mistake.
    if !matches!(out.status.code(), Some(0 | 1)) || out.stdout.is_empty() {
        return Err(format!("{shown}: {} {stderr}", out.status));
    }
    if piped_to_jq {
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map_err(|e| format!("{shown}: not JSON: {e}"))?;
    }
    Ok(())
}

#[test]
fn every_readme_command_that_needs_no_root_runs_as_written() {
    let dir = std::env::temp_dir().join(format!("quorumlab-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let workloads = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
    std::os::unix::fs::symlink(&workloads, dir.join("workloads")).unwrap();
    let histories = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::os::unix::fs::symlink(&histories, dir.join("tests/histories")).unwrap();
    let commands = readme_commands();
    assert!(
        commands.len() >= 20,
        "found only {} commands",
        commands.len()
    );
    let (mut ran, mut failures) = (0, Vec::new());
    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        if let Some(why) = not_run_because(&args) {
            eprintln!("not run: {command} ({why})");
            continue;
        }
        if let Err(e) = run_one(command, &dir) {
            failures.push(e);
        }
        ran += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("ran {ran} README commands; smaller than written: {SMALLER:?}");
    assert!(ran >= 12, "only {ran} README commands ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
