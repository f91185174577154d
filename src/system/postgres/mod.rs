//! Postgres under Patroni on the command line: every replication mode the scenario lists, in the
//! simulator and on real labs, measured alike; `run --target` on a cluster the user runs;
//! `cluster up postgres`.

mod show;

use anyhow::Result;
use quorumlab_cluster::postgres::{lab, PatroniSettings};
use quorumlab_cluster::postgres::{
    run_on_urls, run_postgres, run_postgres_on_inventory, PgRealRun,
};
use quorumlab_cluster::run::check_supported;
use quorumlab_experiment::postgres::{PostgresSettings, ReplicationMode};
use quorumlab_experiment::replication::PgRunSummary;
use quorumlab_experiment::{Scenario, System};
use quorumlab_sim::postgres::run_pg;
use quorumlab_sim::sweep::sweep_pg;

use super::cli::{
    agent_faults_line, fired_faults, refuse_option, Build, RealOptions, SimOptions, SweepOptions,
    SystemCli, UpOptions,
};
use crate::cmd::SafetyViolation;
use crate::lab_setup::{install_if_missing, this_binary, Package};
use crate::runtime::{progress, runtime, seed_progress};
use crate::table;

/// Exit 1 if any run had two primaries acknowledging writes at once.
fn split_brain<'a>(runs: impl Iterator<Item = &'a PgRunSummary>) -> Result<()> {
    for run in runs {
        if run.split_brain() {
            return Err(SafetyViolation(format!(
                "{} mode: two primaries acknowledged writes for {} ms",
                run.mode, run.dual_primary_ms
            ))
            .into());
        }
    }
    Ok(())
}

/// The Debian packages a Postgres lab runs.
const PACKAGES: &[Package] = &[
    ("etcd-server", quorumlab_cluster::etcd::ETCD_BINARY),
    ("patroni", quorumlab_cluster::postgres::PATRONI_BINARY),
    ("postgresql-15", "/usr/lib/postgresql/15/bin/postgres"),
];

/// A Postgres scenario and its `[postgres]` settings.
pub struct Postgres<'a> {
    /// The scenario, with `system = "postgres"`.
    pub scenario: &'a Scenario,
    /// Its settings.
    pub settings: &'a PostgresSettings,
}

impl Postgres<'_> {
    fn modes(&self) -> &[ReplicationMode] {
        &self.settings.modes
    }

    /// Refuses the simulator options only the etcd model has.
    fn refuse_etcd_only(&self, build: &Build) -> Result<()> {
        let (stale_reads, step_ms) = (build.stale_reads, build.step_ms);
        refuse_option(
            build.orphan_reads,
            "--orphan-reads",
            "postgres",
            "there are no shards in a Postgres scenario",
        )?;
        refuse_option(
            stale_reads,
            "--stale-reads",
            "postgres",
            "it breaks etcd's read path",
        )?;
        refuse_option(
            step_ms.is_some(),
            "--step-ms",
            "postgres",
            "the Postgres model steps in whole milliseconds",
        )
    }

    /// The scenario as `build` runs it: with `--broken-patroni-timing`, retry_timeout is raised
    /// to the ttl, so an isolated primary keeps retrying the DCS after its lease has expired.
    fn built(&self, build: &Build) -> Scenario {
        let mut scenario = self.scenario.clone();
        if let (true, System::Postgres(pg)) = (build.broken_patroni_timing, &mut scenario.system) {
            pg.retry_timeout_s = pg.ttl_s;
        }
        scenario
    }

    /// Runs the scenario for real `runs` times in each of its modes.
    fn real_runs(&self, options: &RealOptions) -> Result<Vec<PgRealRun>> {
        if options.inventory.is_none() {
            // On an inventory's hosts the run asks their agents what their kernels can do.
            check_supported(self.scenario)?;
        }
        install_if_missing(PACKAGES)?;
        let binary = this_binary()?;
        let rt = runtime()?;
        let bar = progress(options.runs * self.modes().len() as u64, "real runs");
        let mut out = Vec::new();
        for &mode in self.modes() {
            for run in 1..=options.runs {
                let _run =
                    tracing::info_span!("run", scenario = %self.scenario.name, run, seed = run, mode = ?mode)
                        .entered();
                let real = match options.inventory {
                    Some(inventory) => rt.block_on(run_postgres_on_inventory(
                        self.scenario,
                        mode,
                        run,
                        inventory,
                        options.state_dir,
                    )),
                    None => rt.block_on(run_postgres(
                        self.scenario,
                        mode,
                        run,
                        options.state_dir,
                        &binary,
                    )),
                };
                out.push(real?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Prints a distributions table per mode.
    fn print_per_mode(&self, summaries: &[PgRunSummary], over: &str) {
        for &mode in self.modes() {
            let of_mode: Vec<PgRunSummary> = summaries
                .iter()
                .filter(|s| s.mode == mode)
                .cloned()
                .collect();
            println!();
            table::print_distributions(
                &format!("{mode}, over {over}"),
                &table::distributions(&PgRunSummary::METRICS, &of_mode),
            );
        }
    }
}

impl SystemCli for Postgres<'_> {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn sim(&self, options: &SimOptions) -> Result<()> {
        self.refuse_etcd_only(&options.build)?;
        refuse_option(
            options.step,
            "--step",
            "postgres",
            "the Postgres model records no per-event node views; its trace prints in full",
        )?;
        refuse_option(
            options.report.is_some(),
            "--report",
            "postgres",
            "the HTML report draws Raft roles and messages only",
        )?;
        refuse_option(
            options.ops,
            "--ops",
            "postgres",
            "its trace already lists every event",
        )?;
        let scenario = self.built(&options.build);
        let mut runs = Vec::new();
        for &mode in self.modes() {
            runs.push(run_pg(&scenario, mode, options.seed)?);
        }
        if options.json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
            return split_brain(runs.iter().map(|r| &r.summary));
        }
        println!(
            "{} in the simulator, seed {}: primary + {} replicas under a Patroni model on a simulated etcd",
            self.scenario.name,
            options.seed,
            self.scenario.topology.nodes - 1
        );
        for run in &runs {
            println!("\n{} mode:", run.summary.mode);
            for e in &run.trace {
                println!("  {:>9.3}s  {:<6} {}", e.at_us as f64 / 1e6, e.node, e.what);
            }
            show::print_run(&run.summary, "");
        }
        split_brain(runs.iter().map(|r| &r.summary))
    }

    fn sweep(&self, options: &SweepOptions) -> Result<()> {
        self.refuse_etcd_only(&options.build)?;
        let scenario = self.built(&options.build);
        let seeds = options.seeds.end() - options.seeds.start() + 1;
        let bar = seed_progress(seeds * self.modes().len() as u64)?;
        let mut summaries = Vec::new();
        for &mode in self.modes() {
            let base = bar.position();
            let runs = sweep_pg(&scenario, mode, options.seeds.clone(), &|done| {
                bar.set_position(base + done)
            })?;
            summaries.extend(runs);
        }
        bar.finish_and_clear();
        let split: Vec<&PgRunSummary> = summaries.iter().filter(|s| s.split_brain()).collect();
        if options.json {
            let value = serde_json::json!({ "scenario": self.scenario.name, "seeds": seeds, "runs": summaries });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("{} — {seeds} seeds per mode", self.scenario.name);
            self.print_per_mode(&summaries, &format!("{seeds} seeds"));
            for s in split.iter().take(20) {
                println!(
                    "UNSAFE seed {} ({}): two primaries acknowledged writes for {} ms",
                    s.seed, s.mode, s.dual_primary_ms
                );
            }
        }
        if let Some(first) = split.first() {
            let what = format!("{} run(s) had two primaries at once", split.len());
            return Err(options.failure(what, first.seed).into());
        }
        Ok(())
    }

    fn fails(&self, seed: u64, build: &Build) -> Result<bool> {
        self.refuse_etcd_only(build)?;
        let scenario = self.built(build);
        for &mode in self.modes() {
            if run_pg(&scenario, mode, seed)?.summary.split_brain() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn run(&self, options: &RealOptions) -> Result<()> {
        let results = self.real_runs(options)?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
            return Ok(());
        }
        println!(
            "{} on a real Postgres 15 cluster under Patroni on etcd: primary + {} replicas, {} run(s) per mode",
            self.scenario.name,
            self.scenario.topology.nodes - 1,
            options.runs
        );
        for r in &results {
            show::print_run(&r.summary, &fired_faults(&r.faults));
            if let Some(line) = agent_faults_line(r.agent_faults.as_ref()) {
                println!("{line}");
            }
        }
        if options.runs > 1 {
            let summaries = table::summaries(&results);
            self.print_per_mode(&summaries, &format!("{} runs", options.runs));
        }
        Ok(())
    }

    fn run_targets(&self, targets: &[String], json: bool) -> Result<()> {
        let run = runtime()?.block_on(run_on_urls(self.scenario, targets))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&run)?);
            return Ok(());
        }
        println!(
            "{} against {} given node(s) ({} replication)",
            self.scenario.name,
            targets.len(),
            run.summary.mode
        );
        show::print_run(&run.summary, "");
        Ok(())
    }

    fn compare(&self, options: &RealOptions) -> Result<()> {
        self.refuse_compare_target(options)?;
        if options.inventory.is_none() {
            // On an inventory's hosts the run asks their agents what their kernels can do.
            check_supported(self.scenario)?;
        }
        let runs = options.runs;
        let mut sim: Vec<PgRunSummary> = Vec::new();
        for &mode in self.modes() {
            sim.extend(sweep_pg(
                self.scenario,
                mode,
                1..=options.sim_seeds,
                &|_| {},
            )?);
        }
        let real = table::summaries(&self.real_runs(options)?);
        let of = |all: &[PgRunSummary], mode| -> Vec<PgRunSummary> {
            all.iter().filter(|s| s.mode == mode).cloned().collect()
        };
        let per_mode: Vec<(ReplicationMode, Vec<table::Comparison>)> = self
            .modes()
            .iter()
            .map(|&m| {
                let rows = table::compare_rows(&PgRunSummary::METRICS, &of(&sim, m), &of(&real, m));
                (m, rows)
            })
            .collect();
        if options.json {
            let modes: Vec<serde_json::Value> = per_mode
                .iter()
                .map(|(mode, rows)| serde_json::json!({ "mode": mode, "metrics": rows }))
                .collect();
            let value = serde_json::json!({ "scenario": self.scenario.name, "runs": runs, "seeds": options.sim_seeds, "modes": modes });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let versions = [
            crate::machine::version("/usr/lib/postgresql/15/bin/postgres"),
            crate::machine::version(quorumlab_cluster::postgres::PATRONI_BINARY),
            crate::machine::version(quorumlab_cluster::etcd::ETCD_BINARY),
        ];
        options.print_comparison_heading(
            &self.scenario.name,
            "a real Postgres + Patroni + etcd cluster",
            &versions,
        );
        for (mode, rows) in &per_mode {
            table::print_comparison(&format!("{mode} replication"), rows, options.style);
        }
        table::print_comparison_legend(runs);
        println!(
            "\nThe simulator models Patroni's loop and lease, WAL shipping and commit waits; it leaves out \
             Postgres's own CPU and fsync costs and rounds network latency up to whole milliseconds."
        );
        Ok(())
    }

    fn cluster_up(&self, options: &UpOptions) -> Result<()> {
        refuse_option(
            options.shards.is_some(),
            "--shards",
            "postgres",
            "it replicates rather than shards; give --replicas",
        )?;
        refuse_option(
            options.nodes.is_some(),
            "--nodes",
            "postgres",
            "give --replicas (the primary is one more node; etcd runs on the first three hosts)",
        )?;
        let mode = match options.mode {
            Some("sync") => ReplicationMode::Sync,
            Some(_) => ReplicationMode::Async,
            None => self.modes()[0],
        };
        let replicas = options.replicas.unwrap_or(self.scenario.topology.nodes - 1);
        install_if_missing(PACKAGES)?;
        let settings = PatroniSettings::from_scenario(self.settings, mode);
        let lab = runtime()?.block_on(lab::up(
            options.state_dir,
            replicas,
            &settings,
            &this_binary()?,
        ))?;
        println!(
            "Postgres primary + {replicas} replicas ({mode}) under Patroni on etcd, up in {} (hosts: namespaces ql{}-n1..n{})",
            options.state_dir.display(),
            lab.net.as_ref().map_or(0, |n| n.id),
            lab.hosts.len()
        );
        Ok(())
    }
}
