//! Measurements: one run's summary and distributions over many runs.
//!
//! The same [`RunSummary`] comes out of a simulated run and a real one, so a sweep over seeds and a
//! series of real runs reduce to the same [`Distribution`]s and can be put side by side.

use serde::{Deserialize, Serialize};

use crate::checker::Verdict;
use crate::history::{History, OutcomeCounts};

/// What one run of a scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Scenario name.
    pub scenario: String,
    /// Seed (simulator) or run number (real cluster).
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// When the first leadership-disrupting fault fired, in milliseconds.
    pub fault_at_ms: Option<u64>,
    /// From that fault to a leader elected in a newer term, in milliseconds.
    pub election_ms: Option<u64>,
    /// Longest client-visible stretch with no write acknowledged, from the fault on, in milliseconds.
    pub write_unavailable_ms: u64,
    /// Operation outcomes.
    pub ops: OutcomeCounts,
    /// Elections won over the whole run.
    pub leaders_elected: u64,
    /// The linearizability checker's verdict.
    pub verdict: Verdict,
    /// Invariant violations seen while the run was going on (empty when all is well).
    pub invariant_violations: Vec<String>,
}

impl RunSummary {
    /// What `run --runs N`, `sweep` and `compare` report for etcd scenarios, in order.
    pub const METRICS: [Metric<RunSummary>; 4] = [
        Metric {
            name: "fault to new leader (ms)",
            of: |s| s.election_ms.map(|v| v as f64),
        },
        Metric {
            name: "write unavailability (ms)",
            of: |s| Some(s.write_unavailable_ms as f64),
        },
        Metric {
            name: "failed + unknown operations",
            of: |s| Some((s.ops.fail + s.ops.info) as f64),
        },
        Metric {
            name: "leaders elected",
            of: |s| Some(s.leaders_elected as f64),
        },
    ];

    /// Whether no safety property was seen broken (an undecided history counts as not broken:
    /// see [`RunSummary::is_shown_safe`]).
    pub fn is_safe(&self) -> bool {
        self.invariant_violations.is_empty()
            && !matches!(self.verdict, Verdict::NotLinearizable { .. })
    }

    /// Whether the run kept every invariant and its history was shown linearizable.
    pub fn is_shown_safe(&self) -> bool {
        self.invariant_violations.is_empty() && self.verdict.is_linearizable()
    }

    /// The first broken property, named: an invariant, else the checker's headline.
    pub fn why_unsafe(&self) -> Option<String> {
        match (self.invariant_violations.first(), &self.verdict) {
            (Some(broken), _) => Some(broken.clone()),
            (None, v) if v.is_violation() => Some(v.headline()),
            _ => None,
        }
    }
}

/// Runs counted by what their safety checks concluded; an undecided history is never counted as
/// linearizable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyCounts {
    /// Runs that kept every invariant with a history shown linearizable.
    pub shown_safe: usize,
    /// Runs that broke an invariant or whose history is not linearizable.
    pub broken: usize,
    /// Runs with no broken invariant whose history the checker could not decide.
    pub unknown: usize,
}

impl SafetyCounts {
    /// Counts `runs`.
    pub fn of(runs: &[RunSummary]) -> SafetyCounts {
        let mut c = SafetyCounts::default();
        for run in runs {
            if !run.is_safe() {
                c.broken += 1;
            } else if run.is_shown_safe() {
                c.shown_safe += 1;
            } else {
                c.unknown += 1;
            }
        }
        c
    }

    /// E.g. `linearizable 9/10, NOT linearizable 0, unknown 1`; just `linearizable 10/10` when
    /// every run was decided safe.
    pub fn describe(&self) -> String {
        let total = self.shown_safe + self.broken + self.unknown;
        if self.shown_safe == total {
            return format!("linearizable {total}/{total}");
        }
        format!(
            "linearizable {}/{total}, NOT linearizable or an invariant broken {}, unknown (checker budget spent) {}",
            self.shown_safe, self.broken, self.unknown
        )
    }
}

/// A named measurement of one run, read from its summary: a row of every table and comparison.
pub struct Metric<S> {
    /// What it is, with its unit, e.g. `write unavailability (ms)`.
    pub name: &'static str,
    /// Its value in one run (`None` where the run has none, e.g. no fault fired).
    pub of: fn(&S) -> Option<f64>,
}

impl<S> Metric<S> {
    /// The metric's distribution over `runs` (runs without a value are left out).
    pub fn over(&self, runs: &[S]) -> Option<Distribution> {
        Distribution::of(runs.iter().filter_map(self.of))
    }
}

/// What every record of a run offers, whatever the system and whether simulated or real: its
/// summary and the client history behind it. The command line prints and compares any run
/// through this.
pub trait RunRecord {
    /// The run's measurements.
    type Summary;
    /// The measurements.
    fn summary(&self) -> &Self::Summary;
    /// Every client operation of the run.
    fn history(&self) -> &History;
}

/// Implements [`RunRecord`] for a run type with `summary` and `history` fields.
#[macro_export]
macro_rules! run_record {
    ($run:ty, $summary:ty) => {
        impl $crate::measure::RunRecord for $run {
            type Summary = $summary;
            fn summary(&self) -> &$summary {
                &self.summary
            }
            fn history(&self) -> &$crate::history::History {
                &self.history
            }
        }
    };
}

/// Percentiles of one metric over many runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Smallest sample.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Distribution {
    /// Summarises samples; `None` when there are none.
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Option<Distribution> {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Distribution {
            count: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let d = Distribution::of((1..=100).map(f64::from)).unwrap();
        assert_eq!((d.p50, d.p99, d.max, d.min), (50.0, 99.0, 100.0, 1.0));
        assert_eq!(Distribution::of([7.0]).unwrap().p99, 7.0);
        assert!(Distribution::of([]).is_none());
    }
}
