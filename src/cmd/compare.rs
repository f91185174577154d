//! `quorumlab compare SCENARIO --runs N`: the simulator's prediction beside real measurement, for
//! the same scenario file, metric by metric: hundreds of simulated seeds (cheap) against N real
//! runs, with where reality falls among the seeds and a two-sample KS test per metric.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use quorumlab_cluster::inventory::Inventory;

use super::load_scenario;
use crate::lab_setup::STATE_DIR_DEFAULT;
use crate::system::{self, RealOptions};
use crate::table::Style;

/// `compare`'s arguments.
#[derive(Args)]
pub struct CompareArgs {
    /// Built-in scenario name or path to a scenario .toml file.
    scenario: String,
    /// Runs on the real cluster (a fresh lab each).
    #[arg(long, default_value_t = 5)]
    runs: u64,
    /// Seeds in the simulator: at least 200, so its 5th and 95th percentiles mean something.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(200..))]
    seeds: u64,
    /// Print the table as JSON.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the table as Markdown, headed by the date, the machine and the versions measured:
    /// what the README publishes.
    #[arg(long)]
    markdown: bool,
    /// Run on the hosts an Ansible inventory names (`quorumlab machines up` writes one; or your
    /// own VMs), provisioned with ansible/site.yml, instead of a fresh namespace lab per run.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// MongoDB scenarios: compare with a replica set you run, by its URI
    /// (mongodb://h1,h2,h3/?replicaSet=rs0), instead of a lab.
    #[arg(long = "target", value_name = "URI", conflicts_with = "inventory")]
    targets: Vec<String>,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Where the lab keeps its state, data and logs.
    #[arg(long, default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

/// Runs the comparison through the scenario's system.
pub fn command(args: CompareArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.nodes)?;
    let inventory = args.inventory.as_deref().map(Inventory::load).transpose()?;
    let system = system::of(&scenario);
    system.compare(&RealOptions {
        runs: args.runs,
        json: args.json,
        state_dir: &args.state_dir,
        sim_seeds: args.seeds,
        style: if args.markdown {
            Style::Markdown
        } else {
            Style::Text
        },
        inventory: inventory.as_ref(),
        targets: (!args.targets.is_empty()).then_some(args.targets.as_slice()),
    })
}
