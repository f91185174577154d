//! etcd on the command line: simulated runs with their timeline, stepping and report; sweeps;
//! real runs and `compare` on a lab of real etcd members; `cluster up etcd`.

mod show;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use quorumlab_cluster::etcd::EtcdTiming;
use quorumlab_cluster::etcd::{run_etcd, run_etcd_on_inventory, RealRun};
use quorumlab_cluster::lab::Lab;
use quorumlab_cluster::run::check_supported;
use quorumlab_experiment::measure::{RunSummary, SafetyCounts};
use quorumlab_experiment::Scenario;
use quorumlab_sim::sweep::sweep;
use quorumlab_sim::RunConfig;

use super::cli::{
    refuse_option, Build, RealOptions, SimOptions, SweepOptions, SystemCli, UpOptions,
};
use crate::cmd::{Inconclusive, SafetyViolation};
use crate::lab_setup::{install_if_missing, this_binary, Package};
use crate::runtime::{progress, runtime, seed_progress};
use crate::table;

/// The Debian packages an etcd lab runs.
const PACKAGES: &[Package] = &[("etcd-server", quorumlab_cluster::etcd::ETCD_BINARY)];

/// Runs one seed with the default settings and prints it as `sim` does; for the demo, which
/// then tells what the run showed.
pub fn sim_and_print(scenario: &Scenario, seed: u64) -> Result<RunSummary> {
    let config = Etcd { scenario }.run_config(seed, &Build::default());
    let out = quorumlab_sim::run(scenario, &config)?;
    show::print_run(&out, false);
    Ok(out.summary)
}

/// Refuses the broken builds only the Postgres and sharded models have.
fn refuse_pg_only(build: &Build) -> Result<()> {
    refuse_option(
        build.orphan_reads,
        "--orphan-reads",
        "etcd",
        "there are no shards in an etcd scenario",
    )?;
    refuse_option(
        build.broken_patroni_timing,
        "--broken-patroni-timing",
        "etcd",
        "there is no Patroni in an etcd scenario",
    )
}

/// The exit status runs earn: 1 if any broke a safety property, 3 if any history went undecided.
fn judge(runs: &[RunSummary], what: &str) -> Result<()> {
    let counts = SafetyCounts::of(runs);
    if let Some(why) = runs.iter().find_map(|s| s.why_unsafe()) {
        return Err(SafetyViolation(format!("{what} broke a safety property: {why}")).into());
    }
    if counts.unknown > 0 {
        return Err(Inconclusive(format!(
            "{what}: the checker could not decide {} of {} histories within its search budget",
            counts.unknown,
            runs.len()
        ))
        .into());
    }
    Ok(())
}

/// Simulated milliseconds per world step when `--step-ms` is not given.
const STEP_MS_DEFAULT: u64 = 4;

/// An etcd scenario.
pub struct Etcd<'a> {
    /// The scenario, with `system = "etcd"`.
    pub scenario: &'a Scenario,
}

impl Etcd<'_> {
    fn run_config(&self, seed: u64, build: &Build) -> RunConfig {
        RunConfig {
            stale_reads: build.stale_reads,
            step: Duration::from_millis(build.step_ms.unwrap_or(STEP_MS_DEFAULT)),
            ..RunConfig::seeded(seed)
        }
    }

    /// Runs the scenario for real `runs` times, a fresh lab each.
    fn real_runs(&self, options: &RealOptions) -> Result<Vec<RealRun>> {
        if options.inventory.is_none() {
            // On an inventory's hosts the run asks their agents what their kernels can do.
            check_supported(self.scenario)?;
        }
        install_if_missing(PACKAGES)?;
        let binary = this_binary()?;
        let rt = runtime()?;
        let bar = progress(options.runs, "real runs");
        let mut out = Vec::new();
        for run in 1..=options.runs {
            // A real run's number seeds its workload, as a seed does in the simulator.
            let _run = tracing::info_span!("run", scenario = %self.scenario.name, run, seed = run)
                .entered();
            let real = match options.inventory {
                Some(inventory) => rt.block_on(run_etcd_on_inventory(
                    self.scenario,
                    run,
                    inventory,
                    options.state_dir,
                )),
                None => rt.block_on(run_etcd(self.scenario, run, options.state_dir, &binary)),
            };
            out.push(real?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

impl SystemCli for Etcd<'_> {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn sim(&self, options: &SimOptions) -> Result<()> {
        refuse_pg_only(&options.build)?;
        let config = RunConfig {
            record_messages: options.report.is_some(),
            record_views: options.step,
            ..self.run_config(options.seed, &options.build)
        };
        let out = quorumlab_sim::run(self.scenario, &config)?;
        if let Some(dir) = &options.report {
            let path = show::write_report(&out, dir)?;
            if !options.json {
                eprintln!("report written to {}", path.display());
            }
        }
        if options.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else if options.step {
            if !std::io::stdin().is_terminal() {
                eprintln!("(stdin is not a terminal: stepping reads one line per event)");
            }
            show::step_through(&out)?;
        } else {
            show::print_run(&out, options.ops);
        }
        judge(std::slice::from_ref(&out.summary), "this run")
    }

    fn sweep(&self, options: &SweepOptions) -> Result<()> {
        refuse_pg_only(&options.build)?;
        let template = self.run_config(0, &options.build);
        let bar = seed_progress(options.seeds.end() - options.seeds.start() + 1)?;
        let started = Instant::now();
        let (report, summaries) =
            sweep(self.scenario, options.seeds.clone(), &template, &|done| {
                bar.set_position(done)
            })?;
        bar.finish_and_clear();
        if options.json {
            let value = serde_json::json!({ "report": report, "runs": summaries });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            show::print_sweep(&report, started.elapsed());
        }
        if let Some((seed, _)) = report.unsafe_seeds.first() {
            let what = format!(
                "{} seed(s) broke a safety property",
                report.unsafe_seeds.len()
            );
            return Err(options.failure(what, *seed).into());
        }
        judge(&summaries, "the sweep")
    }

    fn fails(&self, seed: u64, build: &Build) -> Result<bool> {
        refuse_pg_only(build)?;
        let out = quorumlab_sim::run(self.scenario, &self.run_config(seed, build))?;
        Ok(!out.summary.is_safe())
    }

    fn run(&self, options: &RealOptions) -> Result<()> {
        let results = self.real_runs(options)?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
            return Ok(());
        }
        println!(
            "{} on a real etcd {} cluster, {} run(s)",
            self.scenario.name, self.scenario.topology.nodes, options.runs
        );
        for r in &results {
            show::print_real_run(r);
        }
        let summaries = table::summaries(&results);
        if results.len() > 1 {
            table::print_distributions(
                &format!("over {} runs", options.runs),
                &table::distributions(&RunSummary::METRICS, &summaries),
            );
            println!("histories: {}", SafetyCounts::of(&summaries).describe());
        }
        judge(&summaries, "the real runs")
    }

    fn compare(&self, options: &RealOptions) -> Result<()> {
        self.refuse_compare_target(options)?;
        if options.inventory.is_none() {
            // On an inventory's hosts the run asks their agents what their kernels can do.
            check_supported(self.scenario)?;
        }
        let (_, sim) = sweep(
            self.scenario,
            1..=options.sim_seeds,
            &RunConfig::seeded(0),
            &|_| {},
        )?;
        let real = table::summaries(&self.real_runs(options)?);
        let rows = table::compare_rows(&RunSummary::METRICS, &sim, &real);
        let counts = SafetyCounts::of(&real);
        let runs = options.runs;
        if options.json {
            let value = serde_json::json!({ "scenario": self.scenario.name, "runs": runs, "seeds": options.sim_seeds, "metrics": rows, "real_histories": counts });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let versions = [crate::machine::version(
            quorumlab_cluster::etcd::ETCD_BINARY,
        )];
        options.print_comparison_heading(&self.scenario.name, "a real etcd cluster", &versions);
        table::print_comparison("metric", &rows, options.style);
        table::print_comparison_legend(runs);
        println!(
            "\nreal histories: {}; the simulator runs the same raft library logic, \
             real etcd adds disk fsyncs, gRPC and a real scheduler — the ratio shows what the model leaves out.",
            counts.describe()
        );
        judge(&real, "the real runs")
    }

    fn cluster_up(&self, options: &UpOptions) -> Result<()> {
        refuse_option(
            options.shards.is_some(),
            "--shards",
            "etcd",
            "it has no shards; give --nodes",
        )?;
        refuse_option(
            options.replicas.is_some(),
            "--replicas",
            "etcd",
            "every member votes; give --nodes",
        )?;
        refuse_option(
            options.mode.is_some(),
            "--mode",
            "etcd",
            "replication modes are Postgres settings",
        )?;
        install_if_missing(PACKAGES)?;
        let nodes = options.nodes.unwrap_or(self.scenario.topology.nodes);
        let timing = EtcdTiming {
            heartbeat_ms: self.scenario.topology.heartbeat_ms,
            election_timeout_ms: self.scenario.topology.election_timeout_ms,
        };
        let lab =
            runtime()?.block_on(Lab::up(options.state_dir, nodes, timing, &this_binary()?))?;
        println!(
            "etcd cluster of {nodes} up in {} (hosts: namespaces ql{}-n1..n{nodes})",
            options.state_dir.display(),
            lab.net.as_ref().map_or(0, |n| n.id)
        );
        Ok(())
    }
}
