//! How etcd runs look on a terminal and on disk: the learner's timeline, the summary, stepping, the
//! sweep table, the HTML report and one real run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use quorumlab_cluster::etcd::RealRun;
use quorumlab_experiment::report::render_html;
use quorumlab_experiment::Verdict;
use quorumlab_sim::sweep::SweepReport;
use quorumlab_sim::trace::{Event, EventKind};
use quorumlab_sim::RunOutput;

use crate::system::cli::next_step;
use crate::table;

/// Consecutive client operations folded into one timeline line.
#[derive(Default)]
struct OpBatch {
    first_us: u64,
    last_us: u64,
    ok: u64,
    writes_ok: u64,
    fail: u64,
    unknown: u64,
}

impl OpBatch {
    fn add(&mut self, e: &Event, outcome: &str, what: &str) {
        if self.ok + self.fail + self.unknown == 0 {
            self.first_us = e.at_us;
        }
        self.last_us = e.at_us;
        match outcome {
            "ok" => {
                self.ok += 1;
                if !what.starts_with("get") {
                    self.writes_ok += 1;
                }
            }
            "fail" => self.fail += 1,
            _ => self.unknown += 1,
        }
    }

    fn flush(&mut self) -> Option<String> {
        if self.ok + self.fail + self.unknown == 0 {
            return None;
        }
        let mut parts = vec![format!(
            "{} ok ({} writes acknowledged)",
            self.ok, self.writes_ok
        )];
        if self.fail > 0 {
            parts.push(format!("{} failed", self.fail));
        }
        if self.unknown > 0 {
            parts.push(format!("{} unknown outcome", self.unknown));
        }
        let line = format!(
            "{:>9.3}s  clients  {} (until {:.3}s)",
            self.first_us as f64 / 1e6,
            parts.join(", "),
            self.last_us as f64 / 1e6
        );
        *self = OpBatch::default();
        Some(line)
    }
}

/// The timeline lines, in time order: node and fault events one per line, client operations folded between them
/// (or one per line with `every_op`).
pub fn timeline_lines(out: &RunOutput, every_op: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut batch = OpBatch::default();
    // Each simulated host records at its own clock reading within a world step, so the trace can
    // be a few milliseconds out of order; the reader gets it in time order (stable: ties keep
    // the order they happened in).
    let mut in_time_order: Vec<&Event> = out.trace.iter().collect();
    in_time_order.sort_by_key(|e| e.at_us);
    for e in in_time_order {
        match &e.what {
            EventKind::Op { outcome, what, .. } if !every_op => batch.add(e, outcome, what),
            _ => {
                lines.extend(batch.flush());
                lines.push(e.timeline_line());
            }
        }
    }
    lines.extend(batch.flush());
    lines
}

/// The summary block.
pub fn summary_lines(out: &RunOutput) -> Vec<String> {
    let s = &out.summary;
    let mut lines = vec![
        match (s.fault_at_ms, s.election_ms) {
            (Some(at), Some(e)) => format!(
                "fault at {:.3}s -> new leader after {e} ms",
                at as f64 / 1e3
            ),
            (Some(at), None) => format!(
                "fault at {:.3}s -> no newer leader was needed or elected",
                at as f64 / 1e3
            ),
            (None, _) => "no leadership-disrupting fault".to_string(),
        },
        format!(
            "longest stretch with no write acknowledged: {} ms",
            s.write_unavailable_ms
        ),
        format!(
            "operations: {} ok, {} failed, {} unknown outcome",
            s.ops.ok, s.ops.fail, s.ops.info
        ),
        format!("leaders elected: {}", s.leaders_elected),
        format!("checker: {}", s.verdict.headline()),
    ];
    if let Verdict::NotLinearizable { ops, .. } = &s.verdict {
        lines.push("  offending operations (the one that cannot be placed first):".into());
        lines.extend(ops.iter().map(|op| format!("    {}", op.describe())));
    }
    if s.invariant_violations.is_empty() {
        lines.push("invariants: election safety, log matching, state machine safety, leader completeness all held".into());
    } else {
        lines.extend(
            s.invariant_violations
                .iter()
                .map(|v| format!("INVARIANT VIOLATED: {v}")),
        );
    }
    lines
}

fn header(out: &RunOutput) -> Vec<String> {
    let sc = &out.scenario;
    let schedule: Vec<String> = out
        .schedule
        .iter()
        .map(|f| format!("{:.3}s {}", f.at_ms as f64 / 1e3, f.fault.label()))
        .collect();
    vec![
        format!(
            "{} — seed {}, {} nodes, {} s simulated",
            sc.name,
            out.seed,
            sc.topology.nodes,
            sc.duration_ms / 1000
        ),
        format!(
            "faults: {}",
            if schedule.is_empty() {
                "none".to_string()
            } else {
                schedule.join("; ")
            }
        ),
    ]
}

/// Prints a run for a reader: header, timeline, summary.
pub fn print_run(out: &RunOutput, every_op: bool) {
    for line in header(out) {
        println!("{line}");
    }
    println!("\ntimeline");
    for line in timeline_lines(out, every_op) {
        println!("{line}");
    }
    println!("\nsummary");
    for line in summary_lines(out) {
        println!("  {line}");
    }
}

/// Interactive stepping: one event per Enter, with every node's role, term and commit index.
pub fn step_through(out: &RunOutput) -> Result<()> {
    for line in header(out) {
        println!("{line}");
    }
    println!("Enter: next event   q + Enter: quit (client operations are skipped)\n");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    for (i, e) in out.trace.iter().enumerate() {
        if matches!(e.what, EventKind::Op { .. }) {
            continue;
        }
        println!("{}", e.timeline_line());
        if let Some(views) = out.views.get(i) {
            let row: Vec<String> = views
                .iter()
                .enumerate()
                .map(|(n, v)| {
                    format!(
                        "n{}: {:<13} term {:<3} commit {:<5}",
                        n + 1,
                        v.role.to_string(),
                        v.term,
                        v.commit
                    )
                })
                .collect();
            println!("           {}", row.join(" | "));
        }
        if !next_step(&mut input)? {
            return Ok(());
        }
    }
    println!("\nsummary");
    for line in summary_lines(out) {
        println!("  {line}");
    }
    Ok(())
}

/// Writes `index.html` (and `run.json`) into `dir`; returns the page's path.
pub fn write_report(out: &RunOutput, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let page = dir.join("index.html");
    let html = render_html(&out.timeline());
    let json = serde_json::to_string(out)?;
    // Write to temporary names first so a failure never leaves a half-written report.
    let tmp_page = dir.join(".index.html.tmp");
    let tmp_json = dir.join(".run.json.tmp");
    std::fs::write(&tmp_page, html)
        .with_context(|| format!("cannot write {}", tmp_page.display()))?;
    std::fs::write(&tmp_json, json)
        .with_context(|| format!("cannot write {}", tmp_json.display()))?;
    std::fs::rename(&tmp_json, dir.join("run.json"))?;
    std::fs::rename(&tmp_page, &page)?;
    Ok(page)
}

/// Prints a sweep's distributions and any seeds to replay.
pub fn print_sweep(report: &SweepReport, wall: Duration) {
    println!(
        "{} — {} seeds in {:.1} s wall",
        report.scenario,
        report.seeds,
        wall.as_secs_f64()
    );
    table::print_distributions(
        "metric (ms)",
        &[
            ("fault to new leader", report.election_ms),
            ("write unavailability", report.write_unavailable_ms),
        ],
    );
    if report.seeds_without_new_leader > 0 {
        println!(
            "seeds where no newer leader was elected after the fault: {}",
            report.seeds_without_new_leader
        );
    }
    if !report.seeds_unknown.is_empty() {
        println!(
            "UNKNOWN: the checker spent its search budget before deciding seeds {:?}; \
             they are not counted as linearizable",
            report.seeds_unknown
        );
    }
    if report.unsafe_seeds.is_empty() && report.seeds_unknown.is_empty() {
        println!("safety: every seed kept every invariant and a linearizable history");
    } else if report.unsafe_seeds.is_empty() {
        println!(
            "safety: no seed broke an invariant; {} of {} histories shown linearizable",
            report.seeds - report.seeds_unknown.len() as u64,
            report.seeds
        );
    } else {
        for (seed, why) in report.unsafe_seeds.iter().take(20) {
            println!("UNSAFE seed {seed}: {why}");
        }
    }
}

/// `p50/p99` of a latency distribution, or `-`.
fn ms(d: &Option<quorumlab_experiment::Distribution>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}/{:.0}", d.p50, d.p99))
}

/// Prints one real run: its faults, election, unavailability, outcomes, latency and verdict.
pub fn print_real_run(r: &RealRun) {
    let s = &r.summary;
    println!(
        "\nrun {}: faults: {}",
        s.seed,
        crate::system::cli::fired_faults(&r.faults)
    );
    if let Some(line) = crate::system::cli::agent_faults_line(r.agent_faults.as_ref()) {
        println!("{line}");
    }
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
