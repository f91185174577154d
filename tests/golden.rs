//! Same scenario and seed, same bytes — across code changes too. `tests/golden/sim-json.sha256`
//! holds the SHA-256 of `quorumlab sim NAME --seed S --json` for every built-in scenario and seeds
//! 1..=10, recorded before the simulator and the command line were reshaped (and re-recorded once
//! since, when simulated operations got unique ids: the same operations, numbered and listed in
//! invocation order, with the trace's op events pointing at their new places, were checked to
//! match the old output otherwise; and again when the simulated etcd client became a balanced
//! channel, a deliberate change to the model). A change that moves
//! one byte of a trace, a history or a summary fails here; a change that means to (a new model
//! detail) records the new hashes with `QUORUMLAB_RECORD_GOLDEN=1 cargo test --test golden` and
//! says so in its commit.

use std::process::Command;

use sha2::{Digest, Sha256};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/sim-json.sha256");

fn sim_json_hash(scenario: &str, seed: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .args(["sim", scenario, "--seed", &seed.to_string(), "--json"])
        .output()
        .expect("run quorumlab");
    assert!(
        out.status.success(),
        "sim {scenario} --seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{:x}", Sha256::digest(&out.stdout))
}

fn run(part: &[(String, u64)]) -> Vec<(String, u64, String)> {
    part.iter()
        .map(|(n, s)| (n.clone(), *s, sim_json_hash(n, *s)))
        .collect()
}

#[test]
fn every_builtin_scenario_prints_the_recorded_json_bytes_for_seeds_1_to_10() {
    let recorded = std::fs::read_to_string(GOLDEN).expect("read the golden hashes");
    let expected: Vec<(String, u64, String)> = recorded
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 3, "malformed golden line: {line}");
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect();
    let builtins = Command::new(env!("CARGO_BIN_EXE_quorumlab"))
        .arg("scenarios")
        .output()
        .expect("list scenarios");
    let names: Vec<String> = String::from_utf8_lossy(&builtins.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    let wanted: Vec<(String, u64)> = names
        .iter()
        .flat_map(|n| (1..=10).map(move |seed| (n.clone(), seed)))
        .collect();
    // Two at a time: the machine has two cores, and each run is a separate process.
    let actual: Vec<(String, u64, String)> = std::thread::scope(|scope| {
        let (left, right) = wanted.split_at(wanted.len() / 2);
        let a = scope.spawn(|| run(left));
        let mut all = run(right);
        let mut first = a.join().expect("first half");
        first.append(&mut all);
        first
    });
    if std::env::var_os("QUORUMLAB_RECORD_GOLDEN").is_some() {
        let text: String = actual
            .iter()
            .map(|(n, s, h)| format!("{n} {s} {h}\n"))
            .collect();
        std::fs::write(GOLDEN, text).expect("write the golden hashes");
        return;
    }
    assert_eq!(
        expected.len(),
        actual.len(),
        "the golden file covers {} runs; the built-in scenarios make {}",
        expected.len(),
        actual.len()
    );
    let changed: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("{} seed {}: {} -> {}", e.0, e.1, &e.2[..12], &a.2[..12]))
        .collect();
    assert!(
        changed.is_empty(),
        "{} run(s) print different bytes:\n{}",
        changed.len(),
        changed.join("\n")
    );
}
