//! `quorumlab sim bench`: the simulator's and the checker's speed, as JSON.
//!
//! Five figures, each against a stated target: simulated seconds per wall second for a 5-node
//! cluster under 200 client ops/s; a many-seed sweep of `etcd-leader-isolate`; and the
//! linearizability checker on 10,000-operation histories, one linearizable and one not (recorded
//! with the stale-read build; its time includes shrinking to the operations named), and on a
//! 100,000-operation history, all recorded by the simulator itself (so they have real
//! concurrency, timeouts and unknown outcomes); and a sharded cluster under continuous chunk
//! migrations, one seed and a sweep.

use std::time::{Duration, Instant};

use anyhow::Result;
use quorumlab_experiment::checker::{check_history, CheckLimits, Verdict};
use quorumlab_experiment::{History, Scenario};
use quorumlab_sim::sweep::sweep;
use quorumlab_sim::RunConfig;
use serde_json::json;

fn scenario_with(name: &str, f: impl FnOnce(&mut Scenario)) -> Result<Scenario> {
    let mut s = Scenario::load(name)?;
    f(&mut s);
    s.validate()?;
    Ok(s)
}

/// `sim bench`'s arguments.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seeds in the sweep benchmark.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// Simulated milliseconds per world step.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=20))]
    step_ms: u64,
    /// Seeds in the sharded-cluster sweep benchmark.
    #[arg(long, default_value_t = 200)]
    sharded_seeds: u64,
    /// Simulated milliseconds per world step of the sharded benchmarks (the sharded model's
    /// default when not given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=20))]
    sharded_step_ms: Option<u64>,
}

/// Runs every benchmark and prints one JSON document.
pub fn command(args: BenchArgs) -> Result<()> {
    let (sweep_seeds, step) = (args.seeds, Duration::from_millis(args.step_ms));
    let config = |seed| RunConfig {
        step,
        ..RunConfig::seeded(seed)
    };
    eprintln!("bench 1/5: 5-node cluster, 200 ops/s, 30 s simulated (3 seeds)");
    let five = scenario_with("etcd-minority-partition", |s| {
        s.workload.rate_per_s = 200;
        s.duration_ms = 30_000;
    })?;
    let started = Instant::now();
    for seed in 1..=3 {
        quorumlab_sim::run(&five, &config(seed))?;
    }
    let wall = started.elapsed().as_secs_f64() / 3.0;
    let sim_speed = 30.0 / wall;

    eprintln!("bench 2/5: sweep of etcd-leader-isolate, {sweep_seeds} seeds x 30 s simulated");
    let isolate = Scenario::load("etcd-leader-isolate")?;
    let started = Instant::now();
    let (report, _) = sweep(&isolate, 1..=sweep_seeds, &config(0), &|_| {})?;
    let sweep_wall = started.elapsed().as_secs_f64();

    eprintln!("bench 3/5: checker on 10,000-operation histories from 5 clients, one key");
    let ten_k = scenario_with("etcd-leader-isolate", |s| {
        s.workload.clients = 5;
        s.workload.rate_per_s = 200;
        s.workload.keys = 1;
        s.duration_ms = 54_000;
    })?;
    let passing = timed_check(&quorumlab_sim::run(&ten_k, &config(7))?.history);
    let broken = RunConfig {
        stale_reads: true,
        ..config(7)
    };
    let failing = timed_check(&quorumlab_sim::run(&ten_k, &broken)?.history);

    eprintln!("bench 4/5: checker on a 100,000-operation multi-key history");
    let hundred_k = scenario_with("etcd-leader-isolate", |s| {
        s.workload.clients = 20;
        s.workload.rate_per_s = 1000;
        s.workload.keys = 64;
        s.duration_ms = 105_000;
        s.faults.iter_mut().for_each(|f| f.at_ms *= 3);
    })?;
    let big = timed_check(&quorumlab_sim::run(&hundred_k, &config(7))?.history);
    let sharded = bench_sharded(args.sharded_seeds, args.sharded_step_ms)?;

    let doc = json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "cpu": crate::machine::cpu_model() },
        "step_ms": step.as_millis() as u64,
        "sim_5_nodes_200_ops": { "simulated_s_per_wall_s": round(sim_speed), "wall_s_per_30_simulated_s": round(wall) },
        "sweep_etcd_leader_isolate": {
            "seeds": sweep_seeds, "wall_s": round(sweep_wall),
            "aggregate_simulated_s_per_wall_s": round(sweep_seeds as f64 * 30.0 / sweep_wall),
            "target_wall_s_for_1000_seeds": 60, "unsafe_seeds": report.unsafe_seeds.len(),
        },
        "checker_10k_ops_5_clients": passing.json(1.0),
        "checker_10k_ops_5_clients_not_linearizable": failing.json(1.0),
        "checker_100k_ops_multi_key": big.json(10.0),
        "sharded_churn_60s": sharded,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// `shard-churn` (3 config servers, 4 shards, 2 routers, 60 simulated seconds of continuous
/// migrations): one seed's wall time (mean of 3) and a sweep of `seeds` seeds.
fn bench_sharded(seeds: u64, step_ms: Option<u64>) -> Result<serde_json::Value> {
    use quorumlab_sim::sharded::{run_sharded, ShardedBuild, STEP_MS_DEFAULT};
    let churn = Scenario::load("shard-churn")?;
    let step_ms = step_ms.unwrap_or(STEP_MS_DEFAULT);
    let build = ShardedBuild {
        step_ms,
        ..ShardedBuild::default()
    };
    eprintln!("bench 5/5: shard-churn, 60 s simulated: 3 seeds, then a sweep of {seeds} seeds");
    let started = Instant::now();
    let mut migrations = 0;
    for seed in 1..=3 {
        migrations += run_sharded(&churn, seed, build)?
            .summary
            .migrations_committed;
    }
    let wall = started.elapsed().as_secs_f64() / 3.0;
    let started = Instant::now();
    let runs = quorumlab_sim::sweep::sweep_sharded(&churn, build, 1..=seeds, &|_| {})?;
    let sweep_wall = started.elapsed().as_secs_f64();
    let unsafe_seeds = runs.iter().filter(|r| r.why_unsafe().is_some()).count();
    Ok(json!({
        "step_ms": step_ms,
        "wall_s_per_seed": round(wall), "target_wall_s_per_seed": 1.0,
        "migrations_committed_per_seed": migrations / 3,
        "sweep": { "seeds": seeds, "wall_s": round(sweep_wall), "target_wall_s_for_200_seeds": 60, "unsafe_seeds": unsafe_seeds },
    }))
}

/// One timed check: the history's size, the wall time and what the checker said.
struct TimedCheck {
    ops: usize,
    wall_s: f64,
    verdict: Verdict,
}

impl TimedCheck {
    fn json(&self, target_wall_s: f64) -> serde_json::Value {
        let named = match &self.verdict {
            Verdict::NotLinearizable { ops, .. } => Some(ops.len()),
            _ => None,
        };
        json!({
            "ops": self.ops, "wall_s": round(self.wall_s), "target_wall_s": target_wall_s,
            "verdict": self.verdict.headline(), "ops_named": named,
        })
    }
}

/// Checks `history` with the default step budget (shrinking included), timing it.
fn timed_check(history: &History) -> TimedCheck {
    let started = Instant::now();
    let verdict = check_history(history, CheckLimits::default());
    TimedCheck {
        ops: history.ops.len(),
        wall_s: started.elapsed().as_secs_f64(),
        verdict,
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
