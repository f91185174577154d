//! `run` and `compare` for Postgres scenarios: every replication mode the scenario lists, on real
//! Patroni clusters and in the simulator, measured alike.

use std::path::Path;

use anyhow::{Context, Result};
use quorumlab_cluster::pg_run::{run_postgres, PgRealRun};
use quorumlab_experiment::measure::Distribution;
use quorumlab_experiment::postgres::ReplicationMode;
use quorumlab_experiment::replication::{LagMethod, PgRunSummary};
use quorumlab_experiment::Scenario;

/// A measurement of one run, by name.
type Metric = (&'static str, fn(&PgRunSummary) -> Option<f64>);

/// What `run --runs N` and `compare` report for Postgres scenarios, in order.
const METRICS: [Metric; 7] = [
    ("fault to leader key lost (ms)", |s| {
        s.detection_ms.map(|v| v as f64)
    }),
    ("fault to new primary's first write (ms)", |s| {
        s.failover_ms.map(|v| v as f64)
    }),
    ("write unavailability (ms)", |s| {
        s.fault_at_ms.map(|_| s.write_unavailable_ms as f64)
    }),
    ("old primary acked writes for (ms)", |s| {
        s.old_primary_acked_for_ms.map(|v| v as f64)
    }),
    ("two primaries at once (ms)", |s| {
        s.fault_at_ms.map(|_| s.dual_primary_ms as f64)
    }),
    ("acknowledged writes lost", |s| Some(s.lost_writes as f64)),
    ("write latency p50 (ms)", |s| {
        s.write_latency_ms.map(|d| d.p50)
    }),
];

fn metric(runs: &[PgRunSummary], f: fn(&PgRunSummary) -> Option<f64>) -> Option<Distribution> {
    Distribution::of(runs.iter().filter_map(f))
}

fn modes(scenario: &Scenario) -> Vec<ReplicationMode> {
    match &scenario.system {
        quorumlab_experiment::System::Postgres(pg) => pg.modes.clone(),
        quorumlab_experiment::System::Etcd => vec![ReplicationMode::Async],
    }
}

/// Runs `scenario` for real `runs` times in each of its modes.
pub fn real_runs(scenario: &Scenario, runs: u64, state_dir: &Path) -> Result<Vec<PgRealRun>> {
    crate::real::install_postgres_if_missing()?;
    let binary = std::env::current_exe().context("cannot find the quorumlab binary")?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let modes = modes(scenario);
    let bar = crate::real::progress(runs * modes.len() as u64, "real runs");
    let mut out = Vec::new();
    for mode in modes {
        for run in 1..=runs {
            out.push(rt.block_on(run_postgres(scenario, mode, run, state_dir, &binary))?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

/// Prints one run's failover measurements.
fn print_run(s: &PgRunSummary, faults: &str) {
    println!("\n{} run {}: {faults}", s.mode, s.seed);
    if s.fault_at_ms.is_some() {
        println!(
            "  leader key lost after {}; new primary {} took its first write after {}",
            opt_ms(s.detection_ms),
            s.new_primary.as_deref().unwrap_or("-"),
            opt_ms(s.failover_ms)
        );
        println!(
            "  longest stretch with no write acknowledged: {} ms; old primary acked writes for {} after the fault",
            s.write_unavailable_ms,
            opt_ms(s.old_primary_acked_for_ms)
        );
        println!(
            "  two primaries acknowledging writes at once: {}",
            if s.split_brain() {
                format!("YES, for {} ms (split brain)", s.dual_primary_ms)
            } else {
                "no".into()
            }
        );
    }
    println!(
        "  acknowledged writes: {}, lost: {}{}",
        s.acked_writes,
        s.lost_writes,
        if s.lost_ids.is_empty() {
            String::new()
        } else {
            format!(
                " (ids {}{})",
                s.lost_ids
                    .iter()
                    .take(5)
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.lost_writes > 5 { ", ..." } else { "" }
            )
        }
    );
    if let Some(d) = s.write_latency_ms {
        println!(
            "  write latency before the fault: p50 {:.1} ms, p99 {:.1} ms",
            d.p50, d.p99
        );
    }
    if !s.lag.is_empty() {
        print_lag(s);
    }
}

/// Prints the lag table: one row per phase and replica, one column per method.
pub fn print_lag(s: &PgRunSummary) {
    println!(
        "\n  {:<8} {:<4} {}",
        "phase",
        "node",
        LagMethod::ALL
            .iter()
            .map(|m| format!("{:>22}", m.label()))
            .collect::<String>()
    );
    println!(
        "  {:<8} {:<4} {}",
        "",
        "",
        LagMethod::ALL
            .iter()
            .map(|_| format!("{:>22}", "p50/p99/max (NULLs)"))
            .collect::<String>()
    );
    let mut rows: Vec<(&str, &str)> = s
        .lag
        .iter()
        .map(|l| (l.phase.as_str(), l.replica.as_str()))
        .collect();
    rows.dedup();
    let mut seen = std::collections::BTreeSet::new();
    rows.retain(|r| seen.insert(*r));
    for (phase, replica) in rows {
        let cells: String = LagMethod::ALL
            .iter()
            .map(|&m| {
                let cell = s
                    .lag
                    .iter()
                    .find(|l| l.phase == phase && l.replica == replica && l.method == m)
                    .map_or("-".to_string(), |l| {
                        let nulls = if l.nulls > 0 {
                            format!(" ({})", l.nulls)
                        } else {
                            String::new()
                        };
                        match l.value {
                            Some(d) => format!("{:.0}/{:.0}/{:.0}{nulls}", d.p50, d.p99, d.max),
                            None => format!("NULL{nulls}"),
                        }
                    });
                format!("{cell:>22}")
            })
            .collect();
        println!("  {phase:<8} {replica:<4} {cells}");
    }
}

/// `run SCENARIO` for a Postgres scenario.
pub fn run(scenario: &Scenario, runs: u64, json: bool, state_dir: &Path) -> Result<()> {
    let results = real_runs(scenario, runs, state_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{} on a real Postgres 15 cluster under Patroni on etcd: primary + {} replicas, {runs} run(s) per mode",
        scenario.name,
        scenario.topology.nodes - 1
    );
    for r in &results {
        let faults = r
            .faults
            .iter()
            .map(|f| format!("{:.3}s {}", f.at_ms as f64 / 1e3, f.label))
            .collect::<Vec<_>>()
            .join("; ");
        print_run(&r.summary, &faults);
    }
    if runs > 1 {
        for mode in modes(scenario) {
            let of_mode: Vec<PgRunSummary> = results
                .iter()
                .filter(|r| r.summary.mode == mode)
                .map(|r| r.summary.clone())
                .collect();
            println!(
                "\n{:<42} {:>8} {:>8} {:>8}",
                format!("{mode}, over {runs} runs"),
                "p50",
                "p99",
                "max"
            );
            for (name, f) in METRICS {
                match metric(&of_mode, f) {
                    Some(d) => println!("{name:<42} {:>8.0} {:>8.0} {:>8.0}", d.p50, d.p99, d.max),
                    None => println!("{name:<42} {:>8} {:>8} {:>8}", "-", "-", "-"),
                }
            }
        }
    }
    Ok(())
}

/// `run SCENARIO --target URL...`: the scenario's workload and measurements on any cluster.
pub fn run_targets(scenario: &Scenario, targets: &[String], json: bool) -> Result<()> {
    if !matches!(scenario.system, quorumlab_experiment::System::Postgres(_)) {
        anyhow::bail!(
            "--target measures Postgres clusters; {} is an etcd scenario",
            scenario.name
        );
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let run = rt.block_on(quorumlab_cluster::pg_run::run_on_urls(scenario, targets))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
        return Ok(());
    }
    println!(
        "{} against {} given node(s) ({} replication)",
        scenario.name,
        targets.len(),
        run.summary.mode
    );
    print_run(&run.summary, "");
    Ok(())
}

/// `sim SCENARIO --seed S` for a Postgres scenario: every mode, its trace and its measurements.
pub fn sim(scenario: &Scenario, seed: u64, json: bool) -> Result<()> {
    let mut runs = Vec::new();
    for mode in modes(scenario) {
        runs.push(quorumlab_sim::postgres::run_pg(scenario, mode, seed)?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!(
        "{} in the simulator, seed {seed}: primary + {} replicas under a Patroni model on a simulated etcd",
        scenario.name,
        scenario.topology.nodes - 1
    );
    for run in &runs {
        println!(
            "
{} mode:",
            run.summary.mode
        );
        for e in &run.trace {
            println!("  {:>9.3}s  {:<6} {}", e.at_us as f64 / 1e6, e.node, e.what);
        }
        print_run(&run.summary, "");
    }
    Ok(())
}

/// `compare SCENARIO --runs N` for a Postgres scenario: simulator beside reality, per mode.
pub fn compare(scenario: &Scenario, runs: u64, json: bool, state_dir: &Path) -> Result<()> {
    use rayon::prelude::*;
    let modes = modes(scenario);
    let mut sim: Vec<PgRunSummary> = Vec::new();
    for &mode in &modes {
        let runs: Vec<_> = (1..=runs)
            .into_par_iter()
            .map(|seed| quorumlab_sim::postgres::run_pg(scenario, mode, seed).map(|r| r.summary))
            .collect::<Result<_, _>>()?;
        sim.extend(runs);
    }
    let real: Vec<PgRunSummary> = real_runs(scenario, runs, state_dir)?
        .into_iter()
        .map(|r| r.summary)
        .collect();
    let table: Vec<serde_json::Value> = modes
        .iter()
        .map(|&mode| {
            let of = |all: &[PgRunSummary]| -> Vec<PgRunSummary> {
                all.iter().filter(|s| s.mode == mode).cloned().collect()
            };
            let (s, r) = (of(&sim), of(&real));
            let metrics: Vec<serde_json::Value> = METRICS
                .iter()
                .map(|(name, f)| {
                    serde_json::json!({ "metric": name, "sim": metric(&s, *f), "real": metric(&r, *f) })
                })
                .collect();
            serde_json::json!({ "mode": mode, "metrics": metrics })
        })
        .collect();
    if json {
        let value = serde_json::json!({ "scenario": scenario.name, "runs": runs, "modes": table });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{} — simulator ({runs} seeds) beside a real Postgres 15 + Patroni 3.0 + etcd 3.4 cluster ({runs} runs), per mode",
        scenario.name
    );
    let cell = |d: &serde_json::Value, k: &str| {
        d.get(k)
            .and_then(serde_json::Value::as_f64)
            .map_or("-".into(), |v| {
                if v != 0.0 && v.abs() < 10.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            })
    };
    for mode in &table {
        println!(
            "\n{:<42} {:>9} {:>9} {:>9} {:>9}",
            format!("{} replication", mode["mode"].as_str().unwrap_or_default()),
            "sim p50",
            "sim max",
            "real p50",
            "real max"
        );
        for row in mode["metrics"].as_array().into_iter().flatten() {
            println!(
                "{:<42} {:>9} {:>9} {:>9} {:>9}",
                row["metric"].as_str().unwrap_or_default(),
                cell(&row["sim"], "p50"),
                cell(&row["sim"], "max"),
                cell(&row["real"], "p50"),
                cell(&row["real"], "max"),
            );
        }
    }
    println!(
        "\nThe simulator models Patroni's loop and lease, WAL shipping and commit waits; it leaves out \
         Postgres's own CPU and fsync costs and rounds network latency up to whole milliseconds."
    );
    Ok(())
}
