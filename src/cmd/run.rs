//! `quorumlab run SCENARIO`: the scenario on real clusters, a fresh lab per run, measured the way
//! the simulator measures it; with `--inventory`, on the hosts an Ansible inventory names; with
//! `--target`, on a Postgres cluster the user runs (no faults).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use quorumlab_cluster::inventory::Inventory;

use super::load_scenario;
use crate::lab_setup::STATE_DIR_DEFAULT;
use crate::system::{self, RealOptions};

/// `run`'s arguments.
#[derive(Args)]
pub struct RunArgs {
    /// Built-in scenario name or path to a scenario .toml file.
    scenario: String,
    /// How many runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Measure your own cluster instead of a lab. Postgres scenarios without faults (pg-lag):
    /// every node's URL (postgres://user:password@host:port/db), primary and replicas in any
    /// order; it creates the tables ql_writes and ql_heartbeat there. MongoDB scenarios without
    /// kills or partitions (mongo-stepdown, mongo-lag): the replica set's URI,
    /// mongodb://h1,h2,h3/?replicaSet=rs0; it writes to the database quorumlab.
    #[arg(long = "target", value_name = "URL", conflicts_with = "runs")]
    targets: Vec<String>,
    /// Run on the hosts an Ansible inventory names (`quorumlab machines up` writes one; or your
    /// own VMs), provisioned with ansible/site.yml, instead of a fresh namespace lab per run.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Print every run as JSON.
    #[arg(long)]
    json: bool,
    /// Where the lab keeps its state, data and logs.
    #[arg(long, default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

/// Runs the scenario through its system's real side.
pub fn command(args: RunArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.nodes)?;
    let inventory = args.inventory.as_deref().map(Inventory::load).transpose()?;
    let system = system::of(&scenario);
    if !args.targets.is_empty() {
        return system.run_targets(&args.targets, args.json);
    }
    system.run(&RealOptions {
        runs: args.runs,
        json: args.json,
        state_dir: &args.state_dir,
        sim_seeds: 0,
        style: crate::table::Style::Text,
        inventory: inventory.as_ref(),
        targets: None,
    })
}
