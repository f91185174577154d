//! The metric tables every system prints: distributions over runs, and the simulator beside
//! reality. Which metrics a system has is data ([`Metric`] lists in `experiment`); how a table
//! looks is decided here, once.

use quorumlab_experiment::measure::{Distribution, Metric, RunRecord};
use quorumlab_experiment::replication::{LagMethod, PhaseLag};
use quorumlab_experiment::stats::{ks_two_sample, Ks, Sample};
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

/// One metric, simulated beside real: where the real median falls among the simulated seeds,
/// and how far apart the two distributions are.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// The metric's name.
    pub metric: &'static str,
    /// Over the simulated seeds.
    pub sim: Option<Distribution>,
    /// The simulated 5th and 95th percentiles: the band reality should fall in.
    pub sim_p5: Option<f64>,
    /// See `sim_p5`.
    pub sim_p95: Option<f64>,
    /// Over the real runs.
    pub real: Option<Distribution>,
    /// Real median over simulated median (`None` when either is missing or the simulated is 0).
    pub ratio_p50_real_over_sim: Option<f64>,
    /// The real median's percentile among the simulated values.
    pub real_p50_percentile_in_sim: Option<f64>,
    /// Two-sample Kolmogorov–Smirnov distance and p-value, simulated against real.
    pub ks: Option<Ks>,
    /// Whether the real median lies outside the simulated 5–95% band.
    pub outside_sim_band: bool,
}

/// Every metric over the simulated and the real runs.
pub fn compare_rows<S>(metrics: &[Metric<S>], sim: &[S], real: &[S]) -> Vec<Comparison> {
    metrics
        .iter()
        .map(|m| {
            let values = |runs: &[S]| Sample::of(runs.iter().filter_map(m.of));
            let (sim_sample, real_sample) = (values(sim), values(real));
            let (s, r) = (m.over(sim), m.over(real));
            let ratio = match (s, r) {
                (Some(s), Some(r)) if s.p50 > 0.0 => Some(r.p50 / s.p50),
                _ => None,
            };
            let band = sim_sample.as_ref().map(|s| (s.quantile(0.05), s.quantile(0.95)));
            let real_p50 = real_sample.as_ref().map(Sample::median);
            Comparison {
                metric: m.name,
                sim: s,
                sim_p5: band.map(|b| b.0),
                sim_p95: band.map(|b| b.1),
                real: r,
                ratio_p50_real_over_sim: ratio,
                real_p50_percentile_in_sim: sim_sample.as_ref().zip(real_p50).map(|(s, x)| s.percentile_of(x)),
                ks: sim_sample.as_ref().zip(real_sample.as_ref()).map(|(s, r)| ks_two_sample(s, r)),
                outside_sim_band: matches!((band, real_p50), (Some((lo, hi)), Some(x)) if x < lo || x > hi),
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

/// How a comparison table is printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns for a terminal.
    Text,
    /// A Markdown table, for a README.
    Markdown,
}

const COMPARISON_COLUMNS: [&str; 8] = [
    "sim p5",
    "sim p50",
    "sim p95",
    "real p50",
    "real/sim",
    "real p50 pct",
    "KS D",
    "KS p",
];

/// One comparison row's cells after the metric's name.
fn comparison_cells(r: &Comparison) -> [String; 8] {
    [
        figure(r.sim_p5),
        figure(r.sim.map(|d| d.p50)),
        figure(r.sim_p95),
        figure(r.real.map(|d| d.p50)),
        r.ratio_p50_real_over_sim
            .map_or("-".into(), |v| format!("{v:.2}")),
        r.real_p50_percentile_in_sim
            .map_or("-".into(), |p| format!("{p:.0}")),
        r.ks.map_or("-".into(), |k| format!("{:.2}", k.d)),
        r.ks.map_or("-".into(), |k| format!("{:.3}", k.p_value)),
    ]
}

/// Prints a comparison under `title`: the simulated band and median, the real median with its
/// percentile among the seeds, and the KS test; a metric whose real median is outside the
/// simulated 5–95% band is marked `OUTSIDE`.
pub fn print_comparison(title: &str, rows: &[Comparison], style: Style) {
    let w = name_width(rows.iter().map(|r| r.metric.len()), title);
    let flag = |r: &Comparison| {
        if r.outside_sim_band {
            "OUTSIDE 5-95%"
        } else {
            ""
        }
    };
    match style {
        Style::Text => {
            print!("\n{title:<w$}");
            COMPARISON_COLUMNS.iter().for_each(|c| print!(" {c:>9}"));
            println!();
            for r in rows {
                print!("{:<w$}", r.metric);
                comparison_cells(r).iter().for_each(|c| print!(" {c:>9}"));
                println!("  {}", flag(r));
            }
        }
        Style::Markdown => {
            println!("\n| {title} | {} | flag |", COMPARISON_COLUMNS.join(" | "));
            println!("|---|{}---|", "--:|".repeat(COMPARISON_COLUMNS.len()));
            for r in rows {
                println!(
                    "| {} | {} | {} |",
                    r.metric,
                    comparison_cells(r).join(" | "),
                    flag(r)
                );
            }
        }
    }
}

/// The line above a comparison: what was compared, when, on what, with which versions, and (for
/// Markdown, which is published) the command that printed it.
pub fn print_comparison_heading(
    style: Style,
    scenario: &str,
    (real, flags): (&str, &str),
    (seeds, runs): (u64, u64),
    versions: &[Option<String>],
) {
    let what = format!("{scenario} — the simulator ({seeds} seeds) beside {real} ({runs} runs)");
    let versions: Vec<&str> = versions.iter().flatten().map(String::as_str).collect();
    let on = format!(
        "{}, {}; {}",
        crate::machine::today(),
        crate::machine::describe(),
        versions.join(", ")
    );
    match style {
        Style::Text => println!("{what}\nmeasured {on}"),
        Style::Markdown => println!(
            "{what}. Measured {on}; printed by `quorumlab compare {scenario} --runs {runs} --seeds {seeds}{flags} --markdown`."
        ),
    }
}

/// How to read the comparison's columns, printed under it.
pub fn print_comparison_legend(runs: u64) {
    println!(
        "\nsim p5/p50/p95: over the simulated seeds; real p50 pct: where the real median falls among \
         them; KS D, KS p: two-sample Kolmogorov-Smirnov distance and p-value (with {runs} real runs, \
         p is coarse); OUTSIDE: the real median is outside the simulated 5-95% band."
    );
}

/// Prints a lag table: one row per phase and replica, one column per method.
pub fn print_lag(lag: &[PhaseLag], methods: &[LagMethod]) {
    println!(
        "\n  {:<8} {:<4} {}",
        "phase",
        "node",
        methods
            .iter()
            .map(|m| format!("{:>22}", m.label()))
            .collect::<String>()
    );
    println!(
        "  {:<8} {:<4} {}",
        "",
        "",
        methods
            .iter()
            .map(|_| format!("{:>22}", "p50/p99/max (NULLs)"))
            .collect::<String>()
    );
    let mut rows: Vec<(&str, &str)> = lag
        .iter()
        .map(|l| (l.phase.as_str(), l.replica.as_str()))
        .collect();
    rows.dedup();
    let mut seen = std::collections::BTreeSet::new();
    rows.retain(|r| seen.insert(*r));
    for (phase, replica) in rows {
        let cells: String = methods
            .iter()
            .map(|&m| {
                let cell = lag
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

/// ` (ids 1, 2, 3, 4, 5, ...)` for the first ids of `total`, or nothing when there are none.
pub fn some_ids(ids: &[u64], total: u64) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = ids.iter().take(5).map(u64::to_string).collect();
    let more = if total > 5 { ", ..." } else { "" };
    format!(" (ids {}{more})", shown.join(", "))
}
