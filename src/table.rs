//! The metric tables every system prints: distributions over runs, and the simulator beside
//! reality. Which metrics a system has is data ([`Metric`] lists in `experiment`); how a table
//! looks is decided here, once.

use quorumlab_experiment::measure::{Distribution, Metric, RunRecord};
use serde::Serialize;

/// One row: a metric's name and its distribution (`None`: no run had a value).
pub type Row = (&'static str, Option<Distribution>);

/// The summaries of `runs`, whatever the system and whether simulated or real.
pub fn summaries<R: RunRecord>(runs: &[R]) -> Vec<R::Summary>
where
    R::Summary: Clone,
{
    runs.iter().map(|r| r.summary().clone()).collect()
}

/// Every metric's distribution over `runs`.
pub fn distributions<S>(metrics: &[Metric<S>], runs: &[S]) -> Vec<Row> {
    metrics.iter().map(|m| (m.name, m.over(runs))).collect()
}

fn name_width(names: impl Iterator<Item = usize>, title: &str) -> usize {
    names.chain([title.len()]).max().unwrap_or(0)
}

/// Prints `rows` under `title` as p50, p99, max and the number of runs with a value.
pub fn print_distributions(title: &str, rows: &[Row]) {
    let w = name_width(rows.iter().map(|(name, _)| name.len()), title);
    println!(
        "{title:<w$} {:>8} {:>8} {:>8} {:>7}",
        "p50", "p99", "max", "runs"
    );
    for (name, d) in rows {
        match d {
            Some(d) => println!(
                "{name:<w$} {:>8.0} {:>8.0} {:>8.0} {:>7}",
                d.p50, d.p99, d.max, d.count
            ),
            None => println!("{name:<w$} {:>8} {:>8} {:>8} {:>7}", "-", "-", "-", 0),
        }
    }
}

/// One metric, simulated beside real.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// The metric's name.
    pub metric: &'static str,
    /// Over the simulated seeds.
    pub sim: Option<Distribution>,
    /// Over the real runs.
    pub real: Option<Distribution>,
    /// Real median over simulated median (`None` when either is missing or the simulated is 0).
    pub ratio_p50_real_over_sim: Option<f64>,
}

/// Every metric over the simulated and the real runs.
pub fn compare_rows<S>(metrics: &[Metric<S>], sim: &[S], real: &[S]) -> Vec<Comparison> {
    metrics
        .iter()
        .map(|m| {
            let (s, r) = (m.over(sim), m.over(real));
            let ratio = match (s, r) {
                (Some(s), Some(r)) if s.p50 > 0.0 => Some(r.p50 / s.p50),
                _ => None,
            };
            Comparison {
                metric: m.name,
                sim: s,
                real: r,
                ratio_p50_real_over_sim: ratio,
            }
        })
        .collect()
}

/// A figure as a person reads it: one decimal below 10, none above.
fn figure(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v != 0.0 && v.abs() < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    })
}

/// Prints a comparison under `title`: medians and 99th percentiles side by side, and their ratio.
pub fn print_comparison(title: &str, rows: &[Comparison]) {
    let w = name_width(rows.iter().map(|r| r.metric.len()), title);
    println!(
        "\n{title:<w$} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "sim p50", "sim p99", "real p50", "real p99", "real/sim"
    );
    for r in rows {
        println!(
            "{:<w$} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r.metric,
            figure(r.sim.map(|d| d.p50)),
            figure(r.sim.map(|d| d.p99)),
            figure(r.real.map(|d| d.p50)),
            figure(r.real.map(|d| d.p99)),
            r.ratio_p50_real_over_sim
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
}
