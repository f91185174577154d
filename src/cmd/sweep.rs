//! `quorumlab sim sweep SCENARIO --seeds A..B`: many seeds in parallel, reduced to distributions;
//! exit 1 when a seed broke a safety property, with the command that replays it.

use std::ops::RangeInclusive;

use anyhow::Result;
use clap::Args;

use super::load_scenario;
use super::SafetyViolation;
use crate::system::{self, Build, SweepFailed, SweepOptions};

/// `sim sweep`'s arguments.
#[derive(Args)]
pub struct SweepArgs {
    /// Built-in scenario name or path to a scenario .toml file.
    scenario: String,
    /// Seeds to run, as FIRST..LAST (inclusive).
    #[arg(long, default_value = "1..100", value_parser = parse_seeds)]
    seeds: RangeInclusive<u64>,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Print the report (and per-seed summaries) as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    build: Build,
    /// Shrink the first failing seed to its smallest failing scenario and write it as TOML
    /// (see `sim shrink`).
    #[arg(long)]
    shrink: bool,
}

/// Runs the sweep through the scenario's system.
pub fn command(args: SweepArgs) -> Result<()> {
    let scenario = load_scenario(&args.scenario, args.nodes)?;
    let system = system::of(&scenario);
    let swept = system.sweep(&SweepOptions {
        named: args.scenario.clone(),
        nodes: args.nodes,
        seeds: args.seeds,
        json: args.json,
        build: args.build.clone(),
    });
    match swept {
        Err(e) if e.is::<SweepFailed>() => {
            let failed = e.downcast::<SweepFailed>().expect("checked above");
            let mut message = failed.message;
            if args.shrink {
                let shrunk = super::shrink::shrink_to_file(
                    &args.scenario,
                    args.nodes,
                    failed.seed,
                    &args.build,
                    None,
                )?;
                message.push_str(&format!(
                    "; shrunk to {}: `{}`",
                    shrunk.path.display(),
                    shrunk.replay
                ));
            }
            Err(SafetyViolation(message).into())
        }
        other => other,
    }
}

/// Parses `FIRST..LAST` (or `FIRST..=LAST`) into a non-empty inclusive range.
pub fn parse_seeds(s: &str) -> std::result::Result<RangeInclusive<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a range like 1..1000"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a seed number"))?;
    let b: u64 = b
        .trim_start_matches('=')
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a seed number"))?;
    if a > b {
        return Err(format!("empty seed range {s}"));
    }
    Ok(a..=b)
}
