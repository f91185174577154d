//! `quorumlab demo`: the guided first run — a simulated 3-node etcd cluster loses touch with its
//! leader, told as it happens. Needs nothing installed.

use anyhow::Result;
use quorumlab_experiment::Scenario;

use crate::system::SimOptions;

/// Runs the demo: `etcd-leader-isolate`, seed 1, with the story around it.
pub fn command() -> Result<()> {
    let scenario = Scenario::load("etcd-leader-isolate")?;
    println!("quorumlab demo: a simulated 3-node etcd cluster loses touch with its leader.\n");
    println!("Everything below is simulated: real Raft code (raft-rs, a port of etcd's library),");
    println!("a simulated network and clock (turmoil), and clients writing and reading keys.");
    println!(
        "The run is deterministic: `quorumlab sim etcd-leader-isolate --seed 1` prints it again.\n"
    );
    crate::system::of(&scenario).sim(&SimOptions {
        seed: 1,
        ..SimOptions::default()
    })?;
    println!(
        "\nWhat happened: cut off from the majority, the leader could commit nothing more. The other"
    );
    println!(
        "two nodes stopped hearing heartbeats; when an election timer ran out, that node first"
    );
    println!("asked for pre-votes (which do not bump the term), then campaigned and won. The old");
    println!(
        "leader stepped down on its own (check-quorum: no majority heard for an election timeout)."
    );
    println!(
        "Writes sent to the isolated leader never committed, so clients saw them fail or time"
    );
    println!("out — and the checker confirms no client saw an acknowledged write vanish or a stale read.\n");
    println!(
        "Next: `quorumlab sim etcd-leader-isolate --step` to walk through it, `--report out/` for"
    );
    println!(
        "pictures, `quorumlab sim sweep etcd-leader-isolate --seeds 1..200` for distributions."
    );
    Ok(())
}
