//! `quorumlab sim shrink SCENARIO --seed N`: a failing seed shrunk to its cause, written as a
//! scenario file that reproduces it with one command (and `sim sweep --shrink`, which shrinks the
//! first failing seed it finds).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use quorumlab_experiment::Scenario;
use quorumlab_sim::shrink::shrink;

use super::load_scenario;
use crate::runtime::spinner;
use crate::system::{self, shell_word, Build};

/// `sim shrink`'s arguments.
#[derive(Args)]
pub struct ShrinkArgs {
    /// Built-in scenario name or path to a scenario .toml file.
    scenario: String,
    /// The failing seed (kept: the shrunk scenario fails with the same seed).
    #[arg(long)]
    seed: u64,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    #[command(flatten)]
    build: Build,
    /// Where to write the shrunk scenario [default: NAME-seedN-shrunk.toml here].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// What shrinking produced.
pub struct ShrinkReport {
    /// The file written.
    pub path: PathBuf,
    /// The command that reproduces the failure from it.
    pub replay: String,
}

/// Runs `sim shrink`.
pub fn command(args: ShrinkArgs) -> Result<()> {
    let report = shrink_to_file(&args.scenario, args.nodes, args.seed, &args.build, args.out)?;
    println!("reproduce with: {}", report.replay);
    Ok(())
}

/// Shrinks seed `seed` of the scenario `named` (with `nodes` and `build`) and writes the result;
/// refuses a seed that does not fail.
pub fn shrink_to_file(
    named: &str,
    nodes: Option<usize>,
    seed: u64,
    build: &Build,
    out: Option<PathBuf>,
) -> Result<ShrinkReport> {
    let original = load_scenario(named, nodes)?;
    let path =
        out.unwrap_or_else(|| PathBuf::from(format!("{}-seed{seed}-shrunk.toml", original.name)));
    let bar = spinner("runs tried while shrinking");
    let mut fails = |candidate: &Scenario| {
        bar.inc(1);
        system::of(candidate).fails(seed, build)
    };
    let shrunk = shrink(&original, seed, &mut fails)?;
    bar.finish_and_clear();
    let Some(shrunk) = shrunk else {
        bail!(
            "seed {seed} of {} does not fail{}; nothing to shrink",
            original.name,
            build.flags()
        );
    };
    let mut scenario = shrunk.scenario;
    scenario.name = format!("{}-shrunk", original.name);
    scenario.description = format!(
        "{} shrunk from seed {seed}: {} of its {} faults, {} ms, {} clients at {}/s on {} keys; still fails.",
        original.name,
        scenario.faults.len(),
        original.faults.len() + original.chaos.as_ref().map_or(0, |c| c.faults as usize),
        scenario.duration_ms,
        scenario.workload.clients,
        scenario.workload.rate_per_s,
        scenario.workload.keys
    );
    write_verified(&path, &scenario, seed, build)?;
    eprintln!(
        "shrunk {} seed {seed} in {} runs: {} fault(s), {} ms, {} client(s) at {}/s, {} key(s); written to {}",
        original.name,
        shrunk.runs,
        scenario.faults.len(),
        scenario.duration_ms,
        scenario.workload.clients,
        scenario.workload.rate_per_s,
        scenario.workload.keys,
        path.display()
    );
    let replay = format!(
        "quorumlab sim {} --seed {seed}{}",
        shell_word(&path.display().to_string()),
        build.flags()
    );
    Ok(ShrinkReport { path, replay })
}

/// Writes the scenario as TOML, whole or not at all, after checking the text reads back and
/// still fails.
fn write_verified(path: &Path, scenario: &Scenario, seed: u64, build: &Build) -> Result<()> {
    let text = format!(
        "# Written by `quorumlab sim shrink`: the smallest failing scenario found for seed {seed}.\n\
         # Reproduce: quorumlab sim <this file> --seed {seed}{}\n{}",
        build.flags(),
        scenario.to_toml().context("cannot write the scenario as TOML")?
    );
    let again = Scenario::parse(&text, &path.display().to_string())?;
    if !system::of(&again).fails(seed, build)? {
        bail!("the shrunk scenario did not fail again when read back from its TOML (a bug)");
    }
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, text)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
