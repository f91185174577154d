//! The real-cluster commands: `cluster up|status|down`, `run` and `compare`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quorumlab_cluster::etcd::{EtcdTiming, Lab};
use quorumlab_cluster::postgres::{self, PatroniSettings};
use quorumlab_cluster::run::{check_supported, run_etcd, RealRun};
use quorumlab_experiment::measure::{Distribution, RunSummary};
use quorumlab_experiment::postgres::ReplicationMode;
use quorumlab_experiment::Scenario;
use quorumlab_experiment::System;
use quorumlab_sim::sweep::sweep;
use quorumlab_sim::RunConfig;

/// Default directory for a local lab's state (data dirs, logs, PIDs).
pub const STATE_DIR_DEFAULT: &str = "/tmp/quorumlab-lab";

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the quorumlab binary for the agents")
}

/// `cluster up etcd --nodes N`.
pub fn up(system: &str, nodes: usize, state_dir: &Path) -> Result<()> {
    if system != "etcd" {
        bail!(
            "cluster up knows 'etcd' (Postgres and MongoDB labs are not built yet), not '{system}'"
        );
    }
    install_etcd_if_missing()?;
    let binary = this_binary()?;
    let lab = runtime()?.block_on(Lab::up(
        state_dir,
        nodes,
        EtcdTiming {
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
        },
        &binary,
    ))?;
    println!(
        "etcd cluster of {nodes} up in {} (hosts: namespaces ql{}-n1..n{nodes})",
        state_dir.display(),
        lab.net.id
    );
    status(state_dir, false)
}

/// `cluster up postgres --replicas N`: Patroni settings from `scenario`'s `[postgres]` section.
pub fn up_postgres(
    scenario: &Scenario,
    replicas: usize,
    mode: Option<&str>,
    state_dir: &Path,
) -> Result<()> {
    let System::Postgres(pg) = &scenario.system else {
        bail!(
            "scenario {} has no [postgres] section to take Patroni's settings from",
            scenario.name
        );
    };
    let mode = match mode {
        Some("sync") => ReplicationMode::Sync,
        Some(_) => ReplicationMode::Async,
        None => pg.modes[0],
    };
    install_postgres_if_missing()?;
    let binary = this_binary()?;
    let settings = PatroniSettings::from_scenario(pg, mode);
    let lab = runtime()?.block_on(postgres::up(state_dir, replicas, &settings, &binary))?;
    println!(
        "Postgres primary + {replicas} replicas ({mode}) under Patroni on etcd, up in {} (hosts: namespaces ql{}-n1..n{})",
        state_dir.display(),
        lab.net.id,
        lab.net.hosts
    );
    status(state_dir, false)
}

/// The Debian packages a lab runs, each with the file that shows it is installed.
const ETCD_PACKAGES: &[(&str, &str)] = &[("etcd-server", quorumlab_cluster::etcd::ETCD_BINARY)];
const POSTGRES_PACKAGES: &[(&str, &str)] = &[
    ("etcd-server", quorumlab_cluster::etcd::ETCD_BINARY),
    ("patroni", quorumlab_cluster::postgres::PATRONI_BINARY),
    ("postgresql-15", "/usr/lib/postgresql/15/bin/postgres"),
];

/// Installs etcd when it is missing and we are root (as `cargo xtask test` does).
pub(crate) fn install_etcd_if_missing() -> Result<()> {
    install_if_missing(ETCD_PACKAGES)
}

/// Installs etcd, Patroni and Postgres 15 when missing and we are root.
pub(crate) fn install_postgres_if_missing() -> Result<()> {
    install_if_missing(POSTGRES_PACKAGES)
}

fn install_if_missing(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() || !quorumlab_cluster::hosts::is_root() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get", missing.join(", "));
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    for args in [&["update", "-qq"][..], &install[..]] {
        let status = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed; install {} by hand",
                args.join(" "),
                missing.join(" ")
            );
        }
    }
    Ok(())
}

/// `cluster status`.
pub fn status(state_dir: &Path, json: bool) -> Result<()> {
    let lab = Lab::load(state_dir)?;
    let rt = runtime()?;
    let members = rt.block_on(lab.status(Duration::from_millis(500)));
    let pg_nodes = match &lab.postgres {
        Some(_) => Some(rt.block_on(postgres::status(&lab, Duration::from_secs(1)))?),
        None => None,
    };
    if json {
        let value = serde_json::json!({ "etcd": members, "postgres": pg_nodes });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if let Some(nodes) = &pg_nodes {
        println!(
            "{:<5} {:<18} {:<8} {:>8} {:>14} {:>14} {:>10}",
            "node", "endpoint", "role", "timeline", "received lsn", "replayed lsn", "lag bytes"
        );
        for n in nodes {
            println!(
                "{:<5} {:<18} {:<8} {:>8} {:>14} {:>14} {:>10}",
                n.name,
                n.endpoint,
                if n.up { n.role.as_str() } else { "DOWN" },
                n.timeline,
                n.received_lsn,
                n.replayed_lsn,
                n.lag_bytes.map_or("-".to_string(), |b| b.to_string())
            );
        }
        println!();
    }
    println!(
        "{:<5} {:<26} {:<6} {:<8} {:>6} {:>10}",
        "node", "endpoint", "health", "role", "term", "raft index"
    );
    for m in &members {
        println!(
            "{:<5} {:<26} {:<6} {:<8} {:>6} {:>10}",
            m.name,
            m.endpoint,
            if m.up { "up" } else { "DOWN" },
            if m.leader {
                "leader"
            } else if m.up {
                "follower"
            } else {
                "-"
            },
            m.term,
            m.raft_index
        );
    }
    Ok(())
}

/// `cluster down`.
pub fn down(state_dir: &Path) -> Result<()> {
    if Lab::down(state_dir)? {
        println!("lab in {} stopped and removed", state_dir.display());
    } else {
        println!("no lab in {}; nothing to stop", state_dir.display());
    }
    Ok(())
}

pub(crate) fn progress(runs: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(runs);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {what}  {{elapsed_precise}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Runs `scenario` for real `runs` times.
pub fn real_runs(scenario: &Scenario, runs: u64, state_dir: &Path) -> Result<Vec<RealRun>> {
    check_supported(scenario)?;
    let binary = this_binary()?;
    let rt = runtime()?;
    let bar = progress(runs, "real runs");
    let mut out = Vec::new();
    for run in 1..=runs {
        out.push(rt.block_on(run_etcd(scenario, run, state_dir, &binary))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn ms(d: &Option<Distribution>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}/{:.0}", d.p50, d.p99))
}

/// `run SCENARIO [--runs N] [--json]`.
pub fn run(scenario: &Scenario, runs: u64, json: bool, state_dir: &Path) -> Result<()> {
    if let System::Postgres(_) = scenario.system {
        return crate::pg::run(scenario, runs, json, state_dir);
    }
    let results = real_runs(scenario, runs, state_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{} on a real etcd {} cluster, {runs} run(s)",
        scenario.name, scenario.topology.nodes
    );
    for r in &results {
        let s = &r.summary;
        println!(
            "\nrun {}: faults: {}",
            s.seed,
            r.faults
                .iter()
                .map(|f| format!("{:.3}s {}", f.at_ms as f64 / 1e3, f.label))
                .collect::<Vec<_>>()
                .join("; ")
        );
        println!(
            "  fault to new leader: {}",
            s.election_ms
                .map_or("no newer leader".into(), |e| format!("{e} ms"))
        );
        println!(
            "  longest stretch with no write acknowledged: {} ms",
            s.write_unavailable_ms
        );
        println!(
            "  operations: {} ok, {} failed, {} unknown",
            s.ops.ok, s.ops.fail, s.ops.info
        );
        println!(
            "  latency p50/p99 ms: before {}  during {}  after {}",
            ms(&r.latency.before_ms),
            ms(&r.latency.during_ms),
            ms(&r.latency.after_ms)
        );
        println!("  checker: {}", s.verdict.headline());
    }
    if results.len() > 1 {
        let summaries: Vec<RunSummary> = results.iter().map(|r| r.summary.clone()).collect();
        println!(
            "\n{:<30} {:>8} {:>8} {:>8}",
            format!("over {runs} runs"),
            "p50",
            "p99",
            "max"
        );
        for (name, f) in METRICS {
            match metric(&summaries, f) {
                Some(d) => println!("{name:<30} {:>8.0} {:>8.0} {:>8.0}", d.p50, d.p99, d.max),
                None => println!("{name:<30} {:>8} {:>8} {:>8}", "-", "-", "-"),
            }
        }
        let linearizable = summaries.iter().filter(|s| s.is_safe()).count();
        println!("linearizable histories: {linearizable}/{runs}");
    }
    Ok(())
}

/// A measurement taken from each run's summary, by name.
type Metric = (&'static str, fn(&RunSummary) -> Option<f64>);

/// What `run --runs N` and `compare` report, in order.
const METRICS: [Metric; 4] = [
    ("fault to new leader (ms)", |s| {
        s.election_ms.map(|v| v as f64)
    }),
    ("write unavailability (ms)", |s| {
        Some(s.write_unavailable_ms as f64)
    }),
    ("failed + unknown operations", |s| {
        Some((s.ops.fail + s.ops.info) as f64)
    }),
    ("leaders elected", |s| Some(s.leaders_elected as f64)),
];

fn metric(
    summaries: &[RunSummary],
    f: impl Fn(&RunSummary) -> Option<f64>,
) -> Option<Distribution> {
    Distribution::of(summaries.iter().filter_map(f))
}

/// `compare SCENARIO --runs N`: simulator (N seeds) beside reality (N runs).
pub fn compare(scenario: &Scenario, runs: u64, json: bool, state_dir: &Path) -> Result<()> {
    if let System::Postgres(_) = scenario.system {
        return crate::pg::compare(scenario, runs, json, state_dir);
    }
    check_supported(scenario)?;
    let (_, sim) = sweep(scenario, 1..=runs, &RunConfig::seeded(0), &|_| {})?;
    let real: Vec<RunSummary> = real_runs(scenario, runs, state_dir)?
        .into_iter()
        .map(|r| r.summary)
        .collect();
    let rows: Vec<serde_json::Value> = METRICS
        .iter()
        .map(|(name, f)| {
            let (s, r) = (metric(&sim, f), metric(&real, f));
            let ratio = match (s, r) {
                (Some(s), Some(r)) if s.p50 > 0.0 => Some(r.p50 / s.p50),
                _ => None,
            };
            serde_json::json!({ "metric": name, "sim": s, "real": r, "ratio_p50_real_over_sim": ratio })
        })
        .collect();
    let unsafe_real = real.iter().filter(|s| !s.is_safe()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "scenario": scenario.name, "runs": runs, "metrics": rows, "real_runs_not_linearizable": unsafe_real })
            )?
        );
        return Ok(());
    }
    println!(
        "{} — simulator ({runs} seeds) beside a real etcd 3.4 cluster ({runs} runs)\n",
        scenario.name
    );
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "metric", "sim p50", "sim p99", "real p50", "real p99", "real/sim"
    );
    let show = |d: &serde_json::Value, k: &str| {
        d.get(k)
            .and_then(|v| v.as_f64())
            .map_or("-".into(), |v| format!("{v:.0}"))
    };
    for row in &rows {
        println!(
            "{:<30} {:>12} {:>12} {:>12} {:>12} {:>8}",
            row["metric"].as_str().unwrap_or_default(),
            show(&row["sim"], "p50"),
            show(&row["sim"], "p99"),
            show(&row["real"], "p50"),
            show(&row["real"], "p99"),
            row["ratio_p50_real_over_sim"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    println!(
        "\nreal histories linearizable: {}/{runs}; the simulator runs the same raft library logic, \
         real etcd adds disk fsyncs, gRPC and a real scheduler — the ratio shows what the model leaves out.",
        runs as usize - unsafe_real
    );
    Ok(())
}
