//! How sharded runs look on a terminal: the trace, the migrations, the measurements, the walk
//! event by event (`--step`) and the HTML report.

use std::path::{Path, PathBuf};

use anyhow::Result;
use quorumlab_experiment::history::{OpKind, Outcome};
use quorumlab_experiment::rebalance::{LatencyMs, MigrationRecord, ShardedRunSummary};
use quorumlab_experiment::report::render_html;
use quorumlab_experiment::Scenario;
use quorumlab_sim::sharded::host::ShardedEvent;
use quorumlab_sim::sharded::ShardedSimRun;

use crate::system::cli::{next_step, write_report_files};

/// One trace line: time, host and part, what happened.
pub fn event_line(e: &ShardedEvent) -> String {
    format!("  {:>9.3}s  {:<8} {}", e.at_us as f64 / 1e6, e.node, e.what)
}

fn latency(l: Option<LatencyMs>) -> String {
    l.map_or("-".into(), |l| {
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} writes)",
            l.p50, l.p99, l.max, l.count
        )
    })
}

/// Prints one run's measurements, headed `{what} {seed}` (a simulated seed or a real run).
pub fn print_run(s: &ShardedRunSummary, what: &str) {
    println!("\n{what} {}:", s.seed);
    println!(
        "  migrations: {} started, {} committed, {} aborted; {:.1} MiB moved",
        s.migrations_started,
        s.migrations_committed,
        s.migrations_aborted,
        s.bytes_moved as f64 / (1 << 20) as f64
    );
    if let Some(m) = s.migration_ms {
        println!(
            "  a committed migration took p50 {:.0} ms, max {:.0} ms",
            m.p50, m.max
        );
    }
    if let Some(cs) = s.critical_section_ms_max {
        println!("  longest critical section: {cs} ms");
    }
    println!(
        "  writes inside critical sections:  {}",
        latency(s.write_ms_inside)
    );
    println!(
        "  writes outside critical sections: {}",
        latency(s.write_ms_outside)
    );
    println!(
        "  acknowledged writes: {}, unknown: {}, lost: {}",
        s.acked_writes, s.unknown_writes, s.lost_writes
    );
    println!(
        "  stale-config retries by routers: {}",
        s.stale_config_retries
    );
    println!(
        "  orphaned documents: peak {}, left at the end {}, longest until deleted {}",
        s.orphans_max,
        s.orphans_left,
        s.orphan_ms_max.map_or("-".into(), |v| format!("{v} ms"))
    );
    println!("  reads through routers: {}, bad: {}", s.reads, s.bad_reads);
    for bad in &s.bad_read_examples {
        println!("  BAD READ: {bad}");
    }
    for broken in &s.invariant_violations {
        println!("  INVARIANT BROKEN: {broken}");
    }
}

/// One line per migration.
pub fn print_migrations(migrations: &[MigrationRecord]) {
    if migrations.is_empty() {
        return;
    }
    println!("\n  migration  chunk  from  to    started   critical section   ended      outcome");
    let at = |us: Option<u64>| us.map_or("-".to_string(), |us| format!("{:.3}s", us as f64 / 1e6));
    for m in migrations {
        let critical = match (m.critical_from_us, m.critical_to_us) {
            (Some(from), Some(to)) => format!("{} ms", (to - from) / 1000),
            (Some(_), None) => "never left".into(),
            _ => "-".into(),
        };
        let why = m
            .why
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        println!(
            "  {:>9}  {:>5}  s{:<3} s{:<3} {:>8}  {:>17}  {:>8}  {:?}{why}",
            m.number,
            m.chunk,
            m.from + 1,
            m.to + 1,
            at(Some(m.started_us)),
            critical,
            at(m.ended_us),
            m.outcome
        );
    }
}

/// Prints every client write, one a line.
pub fn print_ops(run: &ShardedSimRun) {
    println!("\n  client writes ({}):", run.history.ops.len());
    for op in &run.history.ops {
        let OpKind::Put { key, value } = op.kind else {
            continue;
        };
        let outcome = match op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail => "refused (never applied)",
            Outcome::Info => "unknown (timed out)",
        };
        println!(
            "  {:>9.3}s  c{:<3} {:<4} insert {value} at k{key}: {outcome}",
            op.invoke_us as f64 / 1e6,
            op.client,
            op.node.as_deref().unwrap_or("-")
        );
    }
}

/// Walks through a run event by event, each with every host's view (Enter: next, q: quit).
pub fn step_through(heading: &str, run: &ShardedSimRun) -> Result<()> {
    println!("{heading}");
    println!("Enter: next event   q + Enter: quit\n");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    for (e, views) in run.trace.iter().zip(&run.views) {
        println!("{}", event_line(e));
        for view in views {
            println!("             {view}");
        }
        if !next_step(&mut input)? {
            return Ok(());
        }
    }
    print_run(&run.summary, "seed");
    Ok(())
}

/// Writes `index.html` (each shard's part in migrations over time) and `run.json` into `dir`.
pub fn write_report(scenario: &Scenario, run: &ShardedSimRun, dir: &Path) -> Result<Vec<PathBuf>> {
    let files = vec![
        (
            "index.html".to_string(),
            render_html(&run.timeline(scenario)),
        ),
        ("run.json".to_string(), serde_json::to_string(run)?),
    ];
    write_report_files(dir, &files)
}
