//! `quorumlab sim SCENARIO`: one seed in the deterministic simulator (and the `sweep` and `bench`
//! subcommands).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::load_scenario;
use crate::system::{self, Build, SimOptions};

/// `sim`: one run, or a subcommand.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimArgs {
    #[command(subcommand)]
    action: Option<SimAction>,
    #[command(flatten)]
    run: OneRunArgs,
}

#[derive(Subcommand)]
enum SimAction {
    /// Run many seeds in parallel and report distributions and any seed that broke a safety
    /// property.
    Sweep(super::sweep::SweepArgs),
    /// Measure simulator speed and checker speed; prints JSON.
    Bench(super::bench::BenchArgs),
    /// Shrink a failing seed: drop faults, shorten the run and lighten the workload while it
    /// still fails, then write the smallest failing scenario as a TOML file.
    Shrink(super::shrink::ShrinkArgs),
}

#[derive(Args)]
struct OneRunArgs {
    /// Built-in scenario name (see `quorumlab scenarios`) or path to a scenario .toml file.
    #[arg(required = true)]
    scenario: Option<String>,
    /// Seed: the same seed gives the same run, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Walk through the run event by event (Enter: next event, q: quit). etcd, MongoDB and
    /// sharded scenarios.
    #[arg(long, conflicts_with = "json")]
    step: bool,
    /// Print the full trace, history and summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write a self-contained HTML report (timeline and message diagram) into this directory.
    /// etcd, MongoDB and sharded scenarios.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// List every client operation in the timeline instead of summarising them. etcd, MongoDB
    /// and sharded scenarios.
    #[arg(long)]
    ops: bool,
    #[command(flatten)]
    build: Build,
}

/// Runs `sim` or one of its subcommands.
pub fn command(args: SimArgs) -> Result<()> {
    match args.action {
        Some(SimAction::Sweep(sweep)) => super::sweep::command(sweep),
        Some(SimAction::Bench(bench)) => super::bench::command(bench),
        Some(SimAction::Shrink(shrink)) => super::shrink::command(shrink),
        None => one_run(args.run),
    }
}

fn one_run(args: OneRunArgs) -> Result<()> {
    let scenario = load_scenario(args.scenario.as_deref().unwrap_or_default(), args.nodes)?;
    let system = system::of(&scenario);
    system.sim(&SimOptions {
        seed: args.seed,
        step: args.step,
        json: args.json,
        report: args.report,
        ops: args.ops,
        build: args.build,
    })
}
