//! Real etcd 3.4 clusters on network-namespace hosts, driven through the node agents: a real
//! leader is killed with SIGKILL, a real leader is cut off with blackhole routes.
//!
//! These need root (namespaces) and Debian's etcd-server; `cargo xtask test` installs etcd and CI
//! runs as root. Elsewhere each test prints why it is skipped and passes without running.

use std::path::Path;

use quorumlab_cluster::etcd::run_etcd;
use quorumlab_experiment::fault::{Fault, FaultStep, NodeRef};
use quorumlab_experiment::{Scenario, Verdict};

mod common;

use common::LabDir;

/// What these tests run.
const NEEDS: &[common::Requirement] = &[common::ETCD];

fn short(mut scenario: Scenario, duration_ms: u64, faults: Vec<FaultStep>) -> Scenario {
    scenario.duration_ms = duration_ms;
    scenario.faults = faults;
    scenario.validate().unwrap();
    scenario
}

fn run(scenario: &Scenario, dir: &LabDir) -> quorumlab_cluster::etcd::RealRun {
    let binary = Path::new(env!("CARGO_BIN_EXE_quorumlab"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run_etcd(scenario, 1, &dir.0, binary)).unwrap()
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn killing_the_leader_elects_a_new_one_and_the_history_stays_linearizable() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("kill");
    let scenario = short(
        Scenario::load("etcd-leader-kill").unwrap(),
        11_000,
        vec![
            FaultStep {
                at_ms: 3_000,
                fault: Fault::Crash {
                    node: NodeRef::Leader,
                },
            },
            FaultStep {
                at_ms: 8_000,
                fault: Fault::Restart {
                    node: NodeRef::Crashed,
                },
            },
        ],
    );
    let out = run(&scenario, &dir);
    let s = &out.summary;
    assert!(
        out.faults[0].label.starts_with("crash leader (n"),
        "{:?}",
        out.faults
    );
    let election = s
        .election_ms
        .expect("a new leader was observed after the kill");
    assert!(election < 5_000, "election took {election} ms");
    assert!(s.ops.ok > 200, "{:?}", s.ops);
    assert_eq!(s.verdict, Verdict::Linearizable);
    // The lab's agents count, on their own /metrics, exactly the kill and the restart.
    let counted = out.agent_faults.expect("the lab's agents serve metrics");
    let expected: std::collections::BTreeMap<String, u64> =
        [("signal-kill".into(), 1), ("signal-start".into(), 1)].into();
    assert_eq!(counted, expected);
    assert!(
        !dir.0.join("lab.json").exists(),
        "the run tears its cluster down"
    );
    assert!(
        !namespaces().contains("-n1"),
        "namespaces left behind: {}",
        namespaces()
    );
}

#[test]
fn an_isolated_leader_never_acknowledges_a_write() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("isolate");
    let scenario = short(
        Scenario::load("etcd-leader-isolate").unwrap(),
        11_000,
        vec![
            FaultStep {
                at_ms: 3_000,
                fault: Fault::Isolate {
                    node: NodeRef::Leader,
                },
            },
            FaultStep {
                at_ms: 8_000,
                fault: Fault::Heal,
            },
        ],
    );
    let out = run(&scenario, &dir);
    let isolated = &out.faults[0];
    let old_leader = isolated.label.split(['(', ')']).nth(1).unwrap().to_string();
    // A fault's time is taken once it has been carried out: the cut's is when every link was
    // down, but the heal's is when the last link came back, and the old leader can acknowledge
    // as soon as the first does. So the window ends when the heal began: its scheduled time.
    let cut_us = isolated.at_ms * 1000;
    let heal_us = scenario.faults[1].at_ms * 1000;
    assert!(heal_us <= out.faults[1].at_ms * 1000);
    let acked_by_old_leader: Vec<_> = out
        .history
        .ops
        .iter()
        .filter(|op| op.is_ok_write() && op.invoke_us >= cut_us && op.complete_us < heal_us)
        .filter(|op| op.node.as_deref() == Some(old_leader.as_str()))
        .collect();
    assert!(
        acked_by_old_leader.is_empty(),
        "{old_leader} acknowledged {acked_by_old_leader:?}"
    );
    assert!(
        out.summary.election_ms.is_some(),
        "the majority elected a new leader"
    );
    assert_eq!(out.summary.verdict, Verdict::Linearizable);
}
