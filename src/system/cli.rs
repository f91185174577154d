//! The contract between the commands and the systems: what each command asks of a system
//! ([`SystemCli`]) and the options it passes.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use quorumlab_cluster::run::FiredFault;

/// How `sim SCENARIO` was asked to run and show one seed (default: seed 0, the plain timeline).
#[derive(Default)]
pub struct SimOptions {
    /// The seed.
    pub seed: u64,
    /// Walk through the run event by event.
    pub step: bool,
    /// Print JSON instead of text.
    pub json: bool,
    /// Write an HTML report into this directory.
    pub report: Option<PathBuf>,
    /// List every client operation.
    pub ops: bool,
    /// The deliberately broken build (reads from any node's local state).
    pub stale_reads: bool,
    /// Simulated milliseconds per world step, when given.
    pub step_ms: Option<u64>,
}

/// How `sim sweep SCENARIO` was asked to run many seeds.
pub struct SweepOptions {
    /// The scenario as the user named it (built-in name or path), for the replay hint.
    pub named: String,
    /// `--nodes`, when given, for the replay hint.
    pub nodes: Option<usize>,
    /// The seeds.
    pub seeds: RangeInclusive<u64>,
    /// Print JSON instead of text.
    pub json: bool,
    /// The deliberately broken build.
    pub stale_reads: bool,
    /// Simulated milliseconds per world step, when given.
    pub step_ms: Option<u64>,
}

impl SweepOptions {
    /// The command that replays one seed of this sweep exactly: the scenario as named, and every
    /// option that shapes a run (`--nodes`, `--step-ms`, `--stale-reads`) the sweep was given,
    /// e.g. `quorumlab sim ./my\ scenario.toml --seed 7 --nodes 5`.
    pub fn replay(&self, seed: u64) -> String {
        let mut command = format!("quorumlab sim {} --seed {seed}", shell_word(&self.named));
        if let Some(n) = self.nodes {
            command.push_str(&format!(" --nodes {n}"));
        }
        if let Some(ms) = self.step_ms {
            command.push_str(&format!(" --step-ms {ms}"));
        }
        if self.stale_reads {
            command.push_str(" --stale-reads");
        }
        command
    }
}

/// `word` as a shell reads it back: quoted when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// How `run` and `compare` were asked to use a real lab.
pub struct RealOptions<'a> {
    /// Runs (and, for `compare`, seeds).
    pub runs: u64,
    /// Print JSON instead of text.
    pub json: bool,
    /// The lab's state directory.
    pub state_dir: &'a Path,
}

/// What `cluster up` was asked for beyond the scenario.
pub struct UpOptions<'a> {
    /// etcd members (`--nodes`).
    pub nodes: Option<usize>,
    /// Postgres replicas besides the primary (`--replicas`).
    pub replicas: Option<usize>,
    /// Replication mode (`--mode`).
    pub mode: Option<&'a str>,
    /// The lab's state directory.
    pub state_dir: &'a Path,
}

/// One system's side of every command. Each method either does what is asked or refuses in one
/// line; the defaults refuse, so a new system starts out honest.
pub trait SystemCli {
    /// The system's name in messages, e.g. `etcd`.
    fn name(&self) -> &'static str;

    /// `sim SCENARIO`: one seed in the simulator.
    fn sim(&self, options: &SimOptions) -> Result<()>;

    /// `sim sweep SCENARIO`: many seeds in the simulator, as distributions.
    fn sweep(&self, options: &SweepOptions) -> Result<()>;

    /// `run SCENARIO`: real runs on a fresh lab each.
    fn run(&self, _options: &RealOptions) -> Result<()> {
        bail!("there is no real {} lab yet", self.name())
    }

    /// `run SCENARIO --target URL...`: the workload against a cluster the user runs.
    fn run_targets(&self, _targets: &[String], _json: bool) -> Result<()> {
        bail!(
            "--target measures Postgres clusters, not {} ones",
            self.name()
        )
    }

    /// `compare SCENARIO`: simulator beside reality.
    fn compare(&self, _options: &RealOptions) -> Result<()> {
        bail!("there is no real {} lab to compare with yet", self.name())
    }

    /// `cluster up`: a lab configured from the scenario, left running.
    fn cluster_up(&self, _options: &UpOptions) -> Result<()> {
        bail!("cluster up cannot start {} yet", self.name())
    }
}

/// Refuses an option that `system` has no use for, naming both.
pub fn refuse_option(given: bool, option: &str, system: &str, why: &str) -> Result<()> {
    if given {
        bail!("{option} is not available for {system} scenarios: {why}");
    }
    Ok(())
}

/// The faults a real run fired, as one timeline line: `6.000s crash leader (n1); ...`.
pub fn fired_faults(faults: &[FiredFault]) -> String {
    faults
        .iter()
        .map(|f| format!("{:.3}s {}", f.at_ms as f64 / 1e3, f.label))
        .collect::<Vec<_>>()
        .join("; ")
}
