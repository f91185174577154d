//! `quorumlab scenarios`: the built-in scenarios, one line each.

use anyhow::Result;
use quorumlab_experiment::Scenario;

/// Lists every built-in scenario with its size, length and first sentence.
pub fn command() -> Result<()> {
    for name in Scenario::builtin_names() {
        let s = Scenario::load(name)?;
        let first = s.description.split(". ").next().unwrap_or_default();
        println!(
            "{name:<26} {} nodes, {:>3} s  {first}.",
            s.topology.nodes,
            s.duration_ms / 1000
        );
    }
    Ok(())
}
