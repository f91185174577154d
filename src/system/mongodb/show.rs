//! How MongoDB runs look on a terminal: the trace, one run's measurements, the lag table and the
//! event-by-event walk (`--step`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use quorumlab_experiment::history::{OpKind, Outcome};
use quorumlab_experiment::replication::LagMethod;
use quorumlab_experiment::replset::MongoRunSummary;
use quorumlab_experiment::report::render_html;
use quorumlab_experiment::Scenario;
use quorumlab_sim::mongodb::host::{MemberView, MongoEvent};
use quorumlab_sim::mongodb::MongoSimRun;

use crate::system::cli::{next_step, write_report_files};
use crate::table;

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

/// One trace line: time, member or client, what happened.
pub fn event_line(e: &MongoEvent) -> String {
    format!("  {:>9.3}s  {:<6} {}", e.at_us as f64 / 1e6, e.node, e.what)
}

/// Prints one run's measurements.
pub fn print_run(s: &MongoRunSummary, faults: &str) {
    println!("\n{} run {}: {faults}", s.write_concern, s.seed);
    if s.fault_at_ms.is_some() {
        println!(
            "  new primary seen after {}; {} took its first write after {}",
            opt_ms(s.election_ms),
            s.new_primary.as_deref().unwrap_or("-"),
            opt_ms(s.failover_ms)
        );
        println!(
            "  longest stretch with no write acknowledged: {} ms; old primary acked writes for {} after the fault",
            s.write_unavailable_ms,
            opt_ms(s.old_primary_acked_for_ms)
        );
    }
    println!(
        "  acknowledged writes: {}, lost: {}{}",
        s.acked_writes,
        s.lost_writes,
        table::some_ids(&s.lost_ids, s.lost_writes)
    );
    if let Some(entries) = s.rolled_back_entries {
        println!("  oplog entries rolled back by rejoining members: {entries}");
    }
    println!(
        "  reads: {}, of them returning a write later lost: {}",
        s.reads, s.reads_of_lost_writes
    );
    if let Some(d) = s.write_latency_ms {
        println!(
            "  write latency before the fault: p50 {:.1} ms, p99 {:.1} ms",
            d.p50, d.p99
        );
    }
    for broken in &s.invariant_violations {
        println!("  INVARIANT BROKEN: {broken}");
    }
    if !s.lag.is_empty() {
        table::print_lag(&s.lag, &LagMethod::MONGODB);
    }
}

/// Prints a run's client operations, one a line.
pub fn print_ops(run: &MongoSimRun) {
    println!("\n  client operations ({}):", run.history.ops.len());
    for op in &run.history.ops {
        let what = match op.kind {
            OpKind::Put { value, .. } => format!("insert {value}"),
            OpKind::Get { .. } => "read newest".to_string(),
            OpKind::Cas { .. } => "cas".to_string(),
        };
        let outcome = match &op.outcome {
            Outcome::Ok {
                read: Some(Some(id)),
                ..
            } => format!("ok, saw {id}"),
            Outcome::Ok { .. } => "ok".into(),
            Outcome::Fail => "refused".into(),
            Outcome::Info => "unknown (timed out or interrupted)".into(),
        };
        println!(
            "  {:>9.3}s  c{:<3} {:<4} {what}: {outcome}",
            op.invoke_us as f64 / 1e6,
            op.client,
            op.node.as_deref().unwrap_or("-")
        );
    }
}

fn views_line(views: &[MemberView]) -> String {
    views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "n{}: {:<9} term {:<2} applied {} committed {}",
                i + 1,
                v.state,
                v.term,
                v.applied,
                v.commit_point
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Walks through a run event by event, each with every member's state, term, applied optime
/// and commit point (Enter: next, q: quit).
pub fn step_through(heading: &str, run: &MongoSimRun) -> Result<bool> {
    println!("{heading}");
    println!("Enter: next event   q + Enter: quit   (PRIMARY*: elected, not yet taking writes)\n");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    for (e, views) in run.trace.iter().zip(&run.views) {
        println!("{}", event_line(e));
        println!("             {}", views_line(views));
        if !next_step(&mut input)? {
            return Ok(false);
        }
    }
    print_run(&run.summary, "");
    Ok(true)
}

/// Writes one HTML page per write concern (`index.html` for the first, `<w>.html` for the rest)
/// and the runs as JSON into `dir`; temporary names first, so a failure leaves nothing half
/// written. Returns the pages.
pub fn write_report(scenario: &Scenario, runs: &[MongoSimRun], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let name = match i {
            0 => "index.html".to_string(),
            _ => format!(
                "{}.html",
                run.summary.write_concern.to_string().replace(':', "-")
            ),
        };
        files.push((name, render_html(&run.timeline(scenario))));
    }
    files.push(("runs.json".into(), serde_json::to_string(runs)?));
    write_report_files(dir, &files)
}
