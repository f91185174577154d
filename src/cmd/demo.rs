//! `quorumlab demo`: the guided first run — a simulated 3-node etcd cluster loses touch with its
//! leader, told as it happens. Needs nothing installed. The closing story is built from what this
//! run measured and what the checker decided, never assumed.

use anyhow::Result;
use quorumlab_experiment::{RunSummary, Scenario, Verdict};

use super::{Inconclusive, SafetyViolation};

/// Runs the demo: `etcd-leader-isolate`, seed 1, with the story around it.
pub fn command() -> Result<()> {
    let scenario = Scenario::load("etcd-leader-isolate")?;
    println!("quorumlab demo: a simulated 3-node etcd cluster loses touch with its leader.\n");
    println!("Everything below is simulated: real Raft code (raft-rs, a port of etcd's library),");
    println!("a simulated network and clock (turmoil), and clients writing and reading keys.");
    println!(
        "The run is deterministic: `quorumlab sim etcd-leader-isolate --seed 1` prints it again.\n"
    );
    let summary = crate::system::etcd::sim_and_print(&scenario, 1)?;
    println!();
    tell_election(&summary);
    let verdict = tell_verdict(&summary);
    println!(
        "\nNext: `quorumlab sim etcd-leader-isolate --step` to walk through it, `--report out/` for"
    );
    println!(
        "pictures, `quorumlab sim sweep etcd-leader-isolate --seeds 1..200` for distributions."
    );
    verdict
}

/// What the cluster did about the lost leader, from the run's own measurements.
fn tell_election(s: &RunSummary) {
    println!(
        "What happened: cut off from the majority, the leader could commit nothing more. The other"
    );
    println!(
        "two nodes stopped hearing heartbeats; when an election timer ran out, one first asked"
    );
    println!("for pre-votes (which do not bump the term), then campaigned.");
    match s.election_ms {
        Some(ms) => println!(
            "This run elected a new leader {ms} ms after the fault, and the longest stretch with no\n\
             write acknowledged was {} ms. Writes sent to the isolated leader never committed; over\n\
             the whole run clients saw {} operations fail and {} time out (outcome unknown).",
            s.write_unavailable_ms, s.ops.fail, s.ops.info
        ),
        None => println!("This run elected no newer leader before it ended."),
    }
}

/// The checker's verdict on this run, told as it is; a broken or undecided run fails the demo.
fn tell_verdict(s: &RunSummary) -> Result<()> {
    match (&s.verdict, s.invariant_violations.first()) {
        (_, Some(broken)) => Err(SafetyViolation(format!("an invariant broke: {broken}")).into()),
        (Verdict::Linearizable, None) => {
            println!(
                "The checker found a linearization of all {} operations: no client saw an",
                s.ops.ok + s.ops.fail + s.ops.info
            );
            println!("acknowledged write vanish or read a stale value, and every invariant held.");
            Ok(())
        }
        (Verdict::NotLinearizable { .. }, None) => {
            println!(
                "The checker found NO linearization: {}.",
                s.verdict.headline()
            );
            Err(SafetyViolation(s.verdict.headline()).into())
        }
        (Verdict::Unknown { reason }, None) => {
            println!(
                "The checker could not decide ({reason}); nothing is claimed about this history."
            );
            Err(Inconclusive(s.verdict.headline()).into())
        }
    }
}
