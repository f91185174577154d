//! Sharded clusters on the command line: the simulator's config servers, shards, routers and
//! balancer (sim, sweep, `--step`, `--report`, shrink), and the real side: Postgres shards with
//! the chunk map in etcd (`cluster up sharded`), where `run` and `compare` take the same scenario
//! files on namespace hosts or on an inventory's provisioned shards (no timed faults yet; step
//! faults that crash a shard, or cut a router off on namespace hosts).

mod show;

use anyhow::Result;
use quorumlab_cluster::sharded::inventory::{
    refused_on_inventory, run_sharded_on_inventory, up_on_inventory,
};
use quorumlab_cluster::sharded::lab::Layout;
use quorumlab_cluster::sharded::run::{run_sharded_real, unsupported, RealShardedRun};
use quorumlab_experiment::rebalance::ShardedRunSummary;
use quorumlab_experiment::sharded::ShardedSettings;
use quorumlab_experiment::Scenario;
use quorumlab_sim::sharded::plan::ClusterPlan;
use quorumlab_sim::sharded::{run_sharded, ShardedBuild};
use quorumlab_sim::sweep::sweep_sharded;

use super::cli::{
    fired_faults, refuse_option, Build, RealOptions, SimOptions, SweepOptions, SystemCli, UpOptions,
};
use crate::cmd::SafetyViolation;
use crate::lab_setup::{install_if_missing, this_binary, Package};
use crate::runtime::{progress, runtime, seed_progress};
use crate::table;

/// The Debian packages a sharded lab runs.
const PACKAGES: &[Package] = &[
    ("etcd-server", quorumlab_cluster::etcd::ETCD_BINARY),
    ("postgresql-15", "/usr/lib/postgresql/15/bin/postgres"),
];

/// A sharded scenario and its `[sharded]` settings.
pub struct Sharded<'a> {
    /// The scenario, with `system = "sharded"`.
    pub scenario: &'a Scenario,
    /// Its settings.
    pub settings: &'a ShardedSettings,
}

impl Sharded<'_> {
    /// The simulator's build from the command line's; refuses the other systems' broken builds,
    /// and a growth replay that cannot be set up (before anything runs).
    fn build(&self, build: &Build, record_views: bool) -> Result<ShardedBuild> {
        let why = "it has no such broken build";
        refuse_option(build.stale_reads, "--stale-reads", "sharded", why)?;
        refuse_option(
            build.broken_patroni_timing,
            "--broken-patroni-timing",
            "sharded",
            why,
        )?;
        ClusterPlan::of(self.scenario, self.settings)?;
        Ok(ShardedBuild {
            orphan_reads: build.orphan_reads,
            record_views,
            step_ms: build.step_ms.unwrap_or(0),
        })
    }

    /// Refuses in one line, before anything starts, what a real sharded run cannot do.
    fn check_real(&self, options: &RealOptions) -> Result<()> {
        let on_inventory = options
            .inventory
            .and_then(|_| refused_on_inventory(self.settings));
        if let Some(why) = unsupported(self.scenario, self.settings).or(on_inventory) {
            anyhow::bail!(quorumlab_cluster::run::RunError::Unsupported {
                scenario: self.scenario.name.clone(),
                reason: why,
            });
        }
        Ok(())
    }

    /// `options.runs` real runs, each on a fresh namespace lab, or on the inventory's shards
    /// made fresh.
    fn real_runs(&self, options: &RealOptions) -> Result<Vec<RealShardedRun>> {
        self.check_real(options)?;
        if options.inventory.is_none() {
            install_if_missing(PACKAGES)?;
        }
        let (binary, rt) = (this_binary()?, runtime()?);
        let bar = progress(options.runs, "real runs");
        let mut out = Vec::new();
        for run in 1..=options.runs {
            let _run = tracing::info_span!("run", scenario = %self.scenario.name, run, seed = run)
                .entered();
            let real = match options.inventory {
                Some(inventory) => rt.block_on(run_sharded_on_inventory(
                    self.scenario,
                    run,
                    inventory,
                    options.state_dir,
                )),
                None => rt.block_on(run_sharded_real(
                    self.scenario,
                    run,
                    options.state_dir,
                    &binary,
                )),
            };
            out.push(real?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Exit 1 if any run broke a promise of the cluster.
    fn judge<'s>(&self, runs: impl IntoIterator<Item = &'s ShardedRunSummary>) -> Result<()> {
        for run in runs {
            if let Some(why) = run.why_unsafe() {
                return Err(SafetyViolation(format!("seed {}: {why}", run.seed)).into());
            }
        }
        Ok(())
    }

    /// Which host plays which part, in one line.
    fn heading(&self, seed: u64) -> String {
        let s = self.settings;
        let l = s.layout();
        let span = |first: u64, n: usize| match n {
            1 => format!("n{first}"),
            _ => format!("n{first}-n{}", first + n as u64 - 1),
        };
        let new = match s.new_shards {
            0 => String::new(),
            n => format!(", the last {n} new and empty"),
        };
        format!(
            "{} in the simulator, seed {seed}: {} config servers ({}), {} shards s1-s{} ({}{new}), {} routers ({}); balancer {:?}",
            self.scenario.name,
            l.config_servers,
            span(l.config_server(0).0, l.config_servers),
            l.shards,
            l.shards,
            span(l.shard(0).0, l.shards),
            l.routers,
            span(l.router(0).0, l.routers),
            s.balancer
        )
        .replace("Even", "even").replace("Shuffle", "shuffle")
    }
}

impl SystemCli for Sharded<'_> {
    fn name(&self) -> &'static str {
        "sharded"
    }

    fn cluster_up(&self, options: &UpOptions) -> Result<()> {
        let why = "give --shards (etcd runs on the first three hosts)";
        refuse_option(options.nodes.is_some(), "--nodes", "sharded", why)?;
        refuse_option(options.replicas.is_some(), "--replicas", "sharded", why)?;
        refuse_option(
            options.mode.is_some(),
            "--mode",
            "sharded",
            "its shards do not replicate",
        )?;
        let s = self.settings;
        let full = options.shards.unwrap_or(s.shards);
        let layout = Layout {
            shards: full + s.new_shards,
            empty: s.new_shards,
            chunks: s.chunks,
            routers: s.routers,
        };
        if let Some(inventory) = options.inventory {
            runtime()?.block_on(up_on_inventory(inventory, layout, options.state_dir))?;
            println!(
                "{} Postgres shards ({} empty) with {} chunks on the inventory's hosts, the chunk map in its etcd, routers in the driver; recorded in {}",
                layout.shards,
                layout.empty,
                layout.chunks,
                options.state_dir.display()
            );
            return Ok(());
        }
        install_if_missing(PACKAGES)?;
        let lab = runtime()?.block_on(quorumlab_cluster::sharded::lab::up(
            options.state_dir,
            layout,
            &this_binary()?,
        ))?;
        println!(
            "{} Postgres shards ({} empty) with {} chunks, the chunk map in etcd, {} router hosts, up in {} (hosts: namespaces ql{}-n1..n{})",
            layout.shards,
            layout.empty,
            layout.chunks,
            layout.routers,
            options.state_dir.display(),
            lab.net.as_ref().map_or(0, |n| n.id),
            lab.hosts.len()
        );
        Ok(())
    }

    fn sim(&self, options: &SimOptions) -> Result<()> {
        let build = self.build(&options.build, options.step)?;
        let run = run_sharded(self.scenario, options.seed, build)?;
        if let Some(dir) = &options.report {
            let pages = show::write_report(self.scenario, &run, dir)?;
            if !options.json {
                for page in pages {
                    eprintln!("report written to {}", page.display());
                }
            }
        }
        if options.json {
            println!("{}", serde_json::to_string_pretty(&run)?);
            return self.judge([&run.summary]);
        }
        let heading = self.heading(options.seed);
        if options.step {
            show::step_through(&heading, &run)?;
            return self.judge([&run.summary]);
        }
        println!("{heading}\n");
        for e in &run.trace {
            println!("{}", show::event_line(e));
        }
        if options.ops {
            show::print_ops(&run);
        }
        show::print_migrations(&run.migrations);
        show::print_run(&run.summary, "seed");
        self.judge([&run.summary])
    }

    fn sweep(&self, options: &SweepOptions) -> Result<()> {
        let build = self.build(&options.build, false)?;
        let seeds = options.seeds.end() - options.seeds.start() + 1;
        let bar = seed_progress(seeds)?;
        let summaries = sweep_sharded(self.scenario, build, options.seeds.clone(), &|done| {
            bar.set_position(done)
        })?;
        bar.finish_and_clear();
        let broken: Vec<(&ShardedRunSummary, String)> = summaries
            .iter()
            .filter_map(|s| Some((s, s.why_unsafe()?)))
            .collect();
        if options.json {
            let value = serde_json::json!({ "scenario": self.scenario.name, "seeds": seeds, "runs": summaries });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("{} — {seeds} seeds\n", self.scenario.name);
            table::print_distributions(
                &format!("over {seeds} seeds"),
                &table::distributions(&ShardedRunSummary::METRICS, &summaries),
            );
            for (s, why) in broken.iter().take(20) {
                println!("UNSAFE seed {}: {why}", s.seed);
            }
        }
        if let Some((first, _)) = broken.first() {
            let what = format!(
                "{} run(s) broke a promise of the sharded cluster",
                broken.len()
            );
            return Err(options.failure(what, first.seed).into());
        }
        Ok(())
    }

    fn run(&self, options: &RealOptions) -> Result<()> {
        let runs = self.real_runs(options)?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
            return self.judge(runs.iter().map(|r| &r.summary));
        }
        let s = self.settings;
        println!(
            "{} on real Postgres 15 shards: {} shards ({} empty at the start), {} chunks, the chunk map in etcd, {} routers; balancer {:?}, {} run(s)",
            self.scenario.name,
            s.shards + s.new_shards,
            s.new_shards,
            s.chunks,
            s.routers,
            s.balancer,
            options.runs
        );
        for r in &runs {
            show::print_migrations(&r.migrations);
            show::print_run(&r.summary, "run");
            if !r.faults.is_empty() {
                println!("  step faults: {}", fired_faults(&r.faults));
            }
        }
        self.judge(runs.iter().map(|r| &r.summary))
    }

    fn compare(&self, options: &RealOptions) -> Result<()> {
        self.refuse_compare_target(options)?;
        self.check_real(options)?;
        let build = self.build(&Build::default(), false)?;
        let seeds = 1..=options.sim_seeds;
        let sim = sweep_sharded(self.scenario, build, seeds, &|_| {})?;
        let real = table::summaries(&self.real_runs(options)?);
        let rows = table::compare_rows(&ShardedRunSummary::METRICS, &sim, &real);
        if options.json {
            let value = serde_json::json!({ "scenario": self.scenario.name, "runs": options.runs, "seeds": options.sim_seeds, "metrics": rows });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let versions = [
            crate::machine::version("/usr/lib/postgresql/15/bin/postgres"),
            crate::machine::version(quorumlab_cluster::etcd::ETCD_BINARY),
        ];
        options.print_comparison_heading(
            &self.scenario.name,
            "real Postgres shards with the chunk map in etcd",
            &versions,
        );
        table::print_comparison("writes through the routers", &rows, options.style);
        table::print_comparison_legend(options.runs);
        println!(
            "\nThe simulator clones at [sharded] clone_bytes_per_s and rounds latency to its 2 ms step; \
             the real move is Postgres logical replication (a subscription's initial copy, then streaming), \
             and the real routers read with Postgres queries that check the shard's own ownership."
        );
        Ok(())
    }

    fn fails(&self, seed: u64, build: &Build) -> Result<bool> {
        let build = self.build(build, false)?;
        Ok(run_sharded(self.scenario, seed, build)?
            .summary
            .why_unsafe()
            .is_some())
    }
}
