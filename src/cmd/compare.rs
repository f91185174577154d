//! `quorumlab compare SCENARIO --runs N`: the simulator's prediction beside real measurement, for
//! the same scenario file, metric by metric.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::load_scenario;
use crate::lab_setup::STATE_DIR_DEFAULT;
use crate::system::{self, RealOptions};

/// `compare`'s arguments.
#[derive(Args)]
pub struct CompareArgs {
    /// Built-in scenario name or path to a scenario .toml file.
    scenario: String,
    /// Seeds in the simulator and runs on the real cluster.
    #[arg(long, default_value_t = 5)]
    runs: u64,
    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
    /// Where the lab keeps its state, data and logs.
    #[arg(long, default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

/// Runs the comparison through the scenario's system.
pub fn command(args: CompareArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, None)?;
    let system = system::of(&scenario);
    system.compare(&RealOptions {
        runs: args.runs,
        json: args.json,
        state_dir: &args.state_dir,
    })
}
