//! The contract between the commands and the systems: what each command asks of a system
//! ([`SystemCli`]) and the options it passes.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use quorumlab_cluster::run::FiredFault;

/// How a simulated run is built: the deliberately broken builds a checker should object to, and
/// the simulator's step. The same flags on `sim`, `sweep` and `shrink`, so a replay is exact.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Build {
    /// Deliberately broken build: serve reads from any node's local state (the checker should
    /// object). etcd scenarios.
    #[arg(long)]
    pub stale_reads: bool,
    /// Deliberately broken build: Patroni's retry_timeout raised to its ttl, breaking the rule
    /// loop_wait + 2*retry_timeout <= ttl (an isolated primary outlives its lease). Postgres
    /// scenarios.
    #[arg(long)]
    pub broken_patroni_timing: bool,
    /// Simulated milliseconds per world step (etcd: default 4; sharded: default 2); larger is
    /// faster but rounds latencies coarser. etcd and sharded scenarios.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub step_ms: Option<u64>,
    /// Deliberately broken build: shards answer reads from every document they hold, orphaned
    /// copies too (the read checks should object). Sharded scenarios.
    #[arg(long)]
    pub orphan_reads: bool,
}

impl Build {
    /// The flags that give this build on the command line, each with a leading space.
    pub fn flags(&self) -> String {
        let mut flags = String::new();
        if let Some(ms) = self.step_ms {
            flags.push_str(&format!(" --step-ms {ms}"));
        }
        if self.stale_reads {
            flags.push_str(" --stale-reads");
        }
        if self.broken_patroni_timing {
            flags.push_str(" --broken-patroni-timing");
        }
        if self.orphan_reads {
            flags.push_str(" --orphan-reads");
        }
        flags
    }
}

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
    /// The build and step: deliberately broken or not.
    pub build: Build,
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
    /// The build and step the seeds run with.
    pub build: Build,
}

impl SweepOptions {
    /// The error for a sweep whose first failing seed is `seed`: what broke and how to replay
    /// it (`sim sweep --shrink` adds the shrunk scenario on its way out).
    pub fn failure(&self, what: String, seed: u64) -> SweepFailed {
        SweepFailed {
            message: format!("{what}; replay one with `{}`", self.replay(seed)),
            seed,
        }
    }

    /// The command that replays one seed of this sweep exactly: the scenario as named, and every
    /// option that shapes a run (`--nodes`, `--step-ms`, `--stale-reads`) the sweep was given,
    /// e.g. `quorumlab sim ./my\ scenario.toml --seed 7 --nodes 5`.
    pub fn replay(&self, seed: u64) -> String {
        let mut command = format!("quorumlab sim {} --seed {seed}", shell_word(&self.named));
        if let Some(n) = self.nodes {
            command.push_str(&format!(" --nodes {n}"));
        }
        command + &self.build.flags()
    }
}

/// A sweep found a seed that broke a safety property (exit code 1, like
/// [`crate::cmd::SafetyViolation`]); the seed is kept so that `--shrink` can shrink it.
#[derive(Debug)]
pub struct SweepFailed {
    /// What broke, with the replay command.
    pub message: String,
    /// The first failing seed.
    pub seed: u64,
}

impl std::fmt::Display for SweepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SweepFailed {}

/// `word` as a shell reads it back: quoted when it holds anything but plain path characters.
pub fn shell_word(word: &str) -> String {
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
    /// `compare`: simulated seeds beside the real runs.
    pub sim_seeds: u64,
    /// `compare`: how to print the table.
    pub style: crate::table::Style,
    /// Run on the hosts this inventory names (machines or VMs, provisioned by Ansible) instead of
    /// a fresh namespace lab per run.
    pub inventory: Option<&'a quorumlab_cluster::inventory::Inventory>,
    /// `compare --target`: the cluster the user runs, by URL (MongoDB replica sets).
    pub targets: Option<&'a [String]>,
}

impl RealOptions<'_> {
    /// Where the real runs happen, for a heading, and the flag that says so in a command line.
    pub fn hosts(&self) -> (String, String) {
        match self.inventory {
            Some(inventory) => {
                let path = inventory.path.display();
                (
                    format!("the machines of {path} (systemd, provisioned by Ansible)"),
                    format!(" --inventory {path}"),
                )
            }
            None => ("namespace hosts".into(), String::new()),
        }
    }

    /// The comparison's heading: the simulator beside `against` (e.g. "a real etcd cluster") on
    /// the hosts these options name, with the date, the machine and `versions`.
    pub fn print_comparison_heading(
        &self,
        scenario: &str,
        against: &str,
        versions: &[Option<String>],
    ) {
        let (hosts, flags) = self.hosts();
        crate::table::print_comparison_heading(
            self.style,
            scenario,
            (&format!("{against} on {hosts}"), &flags),
            (self.sim_seeds, self.runs),
            versions,
        );
    }
}

/// What `cluster up` was asked for beyond the scenario.
pub struct UpOptions<'a> {
    /// etcd members (`--nodes`).
    pub nodes: Option<usize>,
    /// Postgres replicas besides the primary (`--replicas`).
    pub replicas: Option<usize>,
    /// Replication mode (`--mode`).
    pub mode: Option<&'a str>,
    /// Shards holding chunks (`--shards`).
    pub shards: Option<usize>,
    /// The lab's state directory.
    pub state_dir: &'a Path,
    /// Provisioned hosts to make the lab on (`--inventory`, sharded only) instead of namespaces.
    pub inventory: Option<&'a quorumlab_cluster::inventory::Inventory>,
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
            "--target measures Postgres clusters and MongoDB replica sets, not {} ones",
            self.name()
        )
    }

    /// `compare SCENARIO`: simulator beside reality.
    fn compare(&self, _options: &RealOptions) -> Result<()> {
        bail!("there is no real {} lab to compare with yet", self.name())
    }

    /// Refuses `compare --target` for a system that compares only with its own labs.
    fn refuse_compare_target(&self, options: &RealOptions) -> Result<()> {
        refuse_option(
            options.targets.is_some(),
            "compare --target",
            self.name(),
            "it compares with a lab it makes (drop --target)",
        )
    }

    /// Whether `seed` breaks a safety property with `build` (the shrinker's test); refuses a
    /// build the system has no such thing for.
    fn fails(&self, seed: u64, build: &Build) -> Result<bool>;

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

/// The faults the agents counted during a real run (their own `/metrics`), as one line, or
/// `None` when they were not read.
pub fn agent_faults_line(counted: Option<&BTreeMap<String, u64>>) -> Option<String> {
    let counted = counted?;
    let kinds: Vec<String> = counted.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Some(format!(
        "  the agents' own count of faults applied: {}",
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        }
    ))
}

/// Writes a report's files (name, text) into `dir`: temporary names first, then renamed, so a
/// failure leaves nothing half written. Returns the HTML pages.
pub fn write_report_files(dir: &Path, files: &[(String, String)]) -> Result<Vec<PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    for (name, text) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    let mut pages = Vec::new();
    for (name, _) in files {
        std::fs::rename(dir.join(format!(".{name}.tmp")), dir.join(name))?;
        if name.ends_with(".html") {
            pages.push(dir.join(name));
        }
    }
    Ok(pages)
}

/// `--step`'s prompt: waits for Enter; false when the user typed `q` or input ended.
pub fn next_step(input: &mut impl std::io::BufRead) -> Result<bool> {
    use std::io::Write;
    print!("> ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 || line.trim() == "q" {
        println!();
        return Ok(false);
    }
    Ok(true)
}
