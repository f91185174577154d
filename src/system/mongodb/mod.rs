//! MongoDB replica sets on the command line: every write concern the scenario lists, in the
//! simulator (sim, sweep, `--step`, shrink) and against a replica set the user names
//! (`run --target mongodb://...`, `compare --target`).

mod show;

use anyhow::{bail, Result};
use quorumlab_cluster::inventory::Inventory;
use quorumlab_cluster::mongodb::{run_mongo_on_inventory, run_on_uri, MongoRealRun, ReplSetUri};
use quorumlab_experiment::mongodb::{MongoSettings, ReadConcern, WriteConcern};
use quorumlab_experiment::replset::MongoRunSummary;
use quorumlab_experiment::Scenario;
use quorumlab_sim::mongodb::run_mongo;
use quorumlab_sim::sweep::sweep_mongo;

use super::cli::{
    fired_faults, refuse_option, Build, RealOptions, SimOptions, SweepOptions, SystemCli,
};
use crate::cmd::SafetyViolation;
use crate::runtime::{progress, runtime, seed_progress};
use crate::table;

/// A replica set to run on.
enum RealSet<'a> {
    /// Named by its URI.
    Target(ReplSetUri),
    /// The `mongodb` group of an inventory, with its agents; the state directory.
    Inventory(&'a Inventory, &'a std::path::Path),
}

impl RealSet<'_> {
    fn describe(&self) -> (String, String) {
        match self {
            RealSet::Target(uri) => (
                format!("the replica set {}", uri.redacted()),
                " --target URI".into(),
            ),
            RealSet::Inventory(inventory, _) => {
                let path = inventory.path.display();
                (
                    format!("the replica set on the machines of {path} (provisioned by Ansible)"),
                    format!(" --inventory {path}"),
                )
            }
        }
    }
}

/// A MongoDB scenario and its `[mongodb]` settings.
pub struct Mongodb<'a> {
    /// The scenario, with `system = "mongodb"`.
    pub scenario: &'a Scenario,
    /// Its settings.
    pub settings: &'a MongoSettings,
}

impl Mongodb<'_> {
    fn concerns(&self) -> &[WriteConcern] {
        &self.settings.write_concerns
    }

    fn majority_reads(&self) -> bool {
        self.settings.read_concern == ReadConcern::Majority
    }

    /// Exit 1 if any run broke a replica set promise.
    fn judge<'s>(&self, runs: impl IntoIterator<Item = &'s MongoRunSummary>) -> Result<()> {
        for run in runs {
            if let Some(why) = run.why_unsafe(self.majority_reads()) {
                let what = format!("{} run {}: {why}", run.write_concern, run.seed);
                return Err(SafetyViolation(what).into());
            }
        }
        Ok(())
    }

    /// Refuses the deliberately broken builds and the etcd model's step.
    fn refuse_build(&self, build: &Build) -> Result<()> {
        let why = "it has no such broken build";
        refuse_option(build.stale_reads, "--stale-reads", "mongodb", why)?;
        refuse_option(build.orphan_reads, "--orphan-reads", "mongodb", why)?;
        refuse_option(
            build.broken_patroni_timing,
            "--broken-patroni-timing",
            "mongodb",
            why,
        )?;
        refuse_option(
            build.step_ms.is_some(),
            "--step-ms",
            "mongodb",
            "the MongoDB model steps in whole milliseconds",
        )
    }

    fn heading(&self, seed: u64) -> String {
        let s = self.settings;
        format!(
            "{} in the simulator, seed {seed}: replica set {} of {} members (heartbeat {} ms, election timeout {} ms, chaining {}), reads at {}",
            self.scenario.name,
            s.replica_set,
            self.scenario.topology.nodes,
            s.heartbeat_interval_ms,
            s.election_timeout_ms,
            if s.chaining_allowed { "on" } else { "off" },
            s.read_concern
        )
    }

    fn print_per_concern(&self, summaries: &[MongoRunSummary], over: &str) {
        for &w in self.concerns() {
            let of: Vec<MongoRunSummary> = summaries
                .iter()
                .filter(|s| s.write_concern == w)
                .cloned()
                .collect();
            println!();
            table::print_distributions(
                &format!("{w}, over {over}"),
                &table::distributions(&MongoRunSummary::METRICS, &of),
            );
        }
    }

    /// The replica set a `--target` names, checked against the scenario before anything runs.
    fn target(&self, targets: &[String]) -> Result<ReplSetUri> {
        let [uri] = targets else {
            bail!("give one --target: the replica set's URI, mongodb://h1,h2,h3/?replicaSet=NAME");
        };
        Ok(ReplSetUri::parse(uri, &self.settings.replica_set)?)
    }

    /// Where real runs happen: from `--target` or `--inventory`, refused when neither is given.
    fn real_set<'o>(&self, options: &'o RealOptions) -> Result<RealSet<'o>> {
        match (options.targets, options.inventory) {
            (Some(targets), _) => Ok(RealSet::Target(self.target(targets)?)),
            (None, Some(inventory)) => Ok(RealSet::Inventory(inventory, options.state_dir)),
            (None, None) => bail!(
                "MongoDB runs need a replica set: give --target 'mongodb://h1,h2,h3/?replicaSet={}' \
                 or --inventory with a mongodb group provisioned by ansible/site.yml (no mongod can be \
                 installed on this machine, so there is no MongoDB lab to make)",
                self.settings.replica_set
            ),
        }
    }

    fn real_runs(&self, set: &RealSet, runs: u64) -> Result<Vec<MongoRealRun>> {
        let rt = runtime()?;
        let bar = progress(runs * self.concerns().len() as u64, "real runs");
        let mut out = Vec::new();
        for &w in self.concerns() {
            for run in 1..=runs {
                let _run = tracing::info_span!("run", scenario = %self.scenario.name, run, seed = run, write_concern = %w)
                    .entered();
                let real = match set {
                    RealSet::Target(uri) => rt.block_on(run_on_uri(self.scenario, w, run, uri)),
                    RealSet::Inventory(inventory, state_dir) => rt.block_on(
                        run_mongo_on_inventory(self.scenario, w, run, inventory, state_dir),
                    ),
                };
                out.push(real?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

impl SystemCli for Mongodb<'_> {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn sim(&self, options: &SimOptions) -> Result<()> {
        self.refuse_build(&options.build)?;
        let mut runs = Vec::new();
        for &w in self.concerns() {
            runs.push(run_mongo(self.scenario, w, options.seed)?);
        }
        if let Some(dir) = &options.report {
            let pages = show::write_report(self.scenario, &runs, dir)?;
            if !options.json {
                for page in pages {
                    eprintln!("report written to {}", page.display());
                }
            }
        }
        if options.json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
            return self.judge(runs.iter().map(|r| &r.summary));
        }
        let heading = self.heading(options.seed);
        if options.step {
            for run in &runs {
                let title = format!("{heading}\n\n{} writes:", run.summary.write_concern);
                if !show::step_through(&title, run)? {
                    break;
                }
            }
            return self.judge(runs.iter().map(|r| &r.summary));
        }
        println!("{heading}");
        for run in &runs {
            println!("\n{} writes:", run.summary.write_concern);
            for e in &run.trace {
                println!("{}", show::event_line(e));
            }
            if options.ops {
                show::print_ops(run);
            }
            show::print_run(&run.summary, "");
        }
        self.judge(runs.iter().map(|r| &r.summary))
    }

    fn sweep(&self, options: &SweepOptions) -> Result<()> {
        self.refuse_build(&options.build)?;
        let seeds = options.seeds.end() - options.seeds.start() + 1;
        let bar = seed_progress(seeds * self.concerns().len() as u64)?;
        let mut summaries = Vec::new();
        for &w in self.concerns() {
            let base = bar.position();
            let runs = sweep_mongo(self.scenario, w, options.seeds.clone(), &|done| {
                bar.set_position(base + done)
            })?;
            summaries.extend(runs);
        }
        bar.finish_and_clear();
        let broken: Vec<(&MongoRunSummary, String)> = summaries
            .iter()
            .filter_map(|s| Some((s, s.why_unsafe(self.majority_reads())?)))
            .collect();
        if options.json {
            let value = serde_json::json!({ "scenario": self.scenario.name, "seeds": seeds, "runs": summaries });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("{} — {seeds} seeds per write concern", self.scenario.name);
            self.print_per_concern(&summaries, &format!("{seeds} seeds"));
            for (s, why) in broken.iter().take(20) {
                println!("UNSAFE seed {} ({}): {why}", s.seed, s.write_concern);
            }
        }
        if let Some((first, _)) = broken.first() {
            let what = format!("{} run(s) broke a replica set promise", broken.len());
            return Err(options.failure(what, first.seed).into());
        }
        Ok(())
    }

    fn fails(&self, seed: u64, build: &Build) -> Result<bool> {
        self.refuse_build(build)?;
        for &w in self.concerns() {
            let run = run_mongo(self.scenario, w, seed)?;
            if run.summary.why_unsafe(self.majority_reads()).is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn run(&self, options: &RealOptions) -> Result<()> {
        let set = self.real_set(options)?;
        let results = self.real_runs(&set, options.runs)?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
            return self.judge(results.iter().map(|r| &r.summary));
        }
        println!(
            "{} against {}, {} run(s) per write concern",
            self.scenario.name,
            set.describe().0,
            options.runs
        );
        for r in &results {
            show::print_run(&r.summary, &fired_faults(&r.faults));
        }
        if options.runs > 1 {
            self.print_per_concern(
                &table::summaries(&results),
                &format!("{} runs", options.runs),
            );
        }
        self.judge(results.iter().map(|r| &r.summary))
    }

    fn run_targets(&self, targets: &[String], json: bool) -> Result<()> {
        self.run(&RealOptions {
            runs: 1,
            json,
            state_dir: std::path::Path::new("."),
            sim_seeds: 0,
            style: table::Style::Text,
            inventory: None,
            targets: Some(targets),
        })
    }

    fn compare(&self, options: &RealOptions) -> Result<()> {
        let set = self.real_set(options)?;
        let mut sim = Vec::new();
        for &w in self.concerns() {
            sim.extend(sweep_mongo(
                self.scenario,
                w,
                1..=options.sim_seeds,
                &|_| {},
            )?);
        }
        let real = table::summaries(&self.real_runs(&set, options.runs)?);
        let of = |all: &[MongoRunSummary], w| -> Vec<MongoRunSummary> {
            all.iter()
                .filter(|s| s.write_concern == w)
                .cloned()
                .collect()
        };
        let per: Vec<(WriteConcern, Vec<table::Comparison>)> = self
            .concerns()
            .iter()
            .map(|&w| {
                let rows =
                    table::compare_rows(&MongoRunSummary::METRICS, &of(&sim, w), &of(&real, w));
                (w, rows)
            })
            .collect();
        if options.json {
            let concerns: Vec<serde_json::Value> = per
                .iter()
                .map(|(w, rows)| serde_json::json!({ "write_concern": w, "metrics": rows }))
                .collect();
            let value = serde_json::json!({ "scenario": self.scenario.name, "runs": options.runs, "seeds": options.sim_seeds, "write_concerns": concerns });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return self.judge(&real);
        }
        let (against, flags) = set.describe();
        table::print_comparison_heading(
            options.style,
            &self.scenario.name,
            (&against, &flags),
            (options.sim_seeds, options.runs),
            &[],
        );
        for (w, rows) in &per {
            table::print_comparison(&format!("{w} writes"), rows, options.style);
        }
        table::print_comparison_legend(options.runs);
        self.judge(&real)
    }
}
