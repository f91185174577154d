//! Many seeds of one scenario, in parallel, reduced to distributions.
//!
//! Each seed is an independent, deterministic run, so seeds spread over all cores with rayon and
//! the result does not depend on the order they finish in.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use quorumlab_experiment::measure::{Distribution, RunSummary};
use quorumlab_experiment::mongodb::WriteConcern;
use quorumlab_experiment::postgres::ReplicationMode;
use quorumlab_experiment::rebalance::ShardedRunSummary;
use quorumlab_experiment::replication::PgRunSummary;
use quorumlab_experiment::replset::MongoRunSummary;
use quorumlab_experiment::scenario::Scenario;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::mongodb::run_mongo;
use crate::postgres::run_pg;
use crate::run::{run, RunConfig, SimError};
use crate::sharded::{run_sharded, ShardedBuild};

/// The outcome of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// Seeds run.
    pub seeds: u64,
    /// Fault to new leader, over seeds where a new leader was needed and elected (ms).
    pub election_ms: Option<Distribution>,
    /// Seeds where a leadership-disrupting fault fired but no newer leader was seen.
    pub seeds_without_new_leader: u64,
    /// Write unavailability window (ms).
    pub write_unavailable_ms: Option<Distribution>,
    /// Seeds whose history the checker could not decide in time.
    pub seeds_unknown: Vec<u64>,
    /// Seeds that broke an invariant or linearizability, with the first problem; replay with `--seed`.
    pub unsafe_seeds: Vec<(u64, String)>,
}

/// Runs `seeds` of `scenario`; `progress` is called with the number of seeds finished so far.
pub fn sweep(
    scenario: &Scenario,
    seeds: RangeInclusive<u64>,
    template: &RunConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(SweepReport, Vec<RunSummary>), SimError> {
    let done = AtomicU64::new(0);
    let mut summaries: Vec<RunSummary> = seeds
        .clone()
        .into_par_iter()
        .map(|seed| {
            let config = RunConfig {
                seed,
                ..template.clone()
            };
            let out = run(scenario, &config).map(|o| o.summary);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            out
        })
        .collect::<Result<_, _>>()?;
    summaries.sort_by_key(|s| s.seed);
    Ok((reduce(scenario, &summaries), summaries))
}

/// Reduces per-seed summaries to a report.
pub fn reduce(scenario: &Scenario, summaries: &[RunSummary]) -> SweepReport {
    let disrupted: Vec<&RunSummary> = summaries
        .iter()
        .filter(|s| s.fault_at_ms.is_some())
        .collect();
    SweepReport {
        scenario: scenario.name.clone(),
        seeds: summaries.len() as u64,
        election_ms: Distribution::of(
            disrupted
                .iter()
                .filter_map(|s| s.election_ms)
                .map(|v| v as f64),
        ),
        seeds_without_new_leader: disrupted.iter().filter(|s| s.election_ms.is_none()).count()
            as u64,
        write_unavailable_ms: Distribution::of(
            summaries.iter().map(|s| s.write_unavailable_ms as f64),
        ),
        seeds_unknown: summaries
            .iter()
            .filter(|s| s.is_safe() && !s.is_shown_safe())
            .map(|s| s.seed)
            .collect(),
        unsafe_seeds: summaries
            .iter()
            .filter_map(|s| Some((s.seed, s.why_unsafe()?)))
            .collect(),
    }
}

/// Runs one simulation per seed of `seeds`, in parallel, in seed order; `progress` is called
/// with the number of seeds finished so far.
fn per_seed<S: Send>(
    seeds: RangeInclusive<u64>,
    progress: &(dyn Fn(u64) + Sync),
    run_seed: impl Fn(u64) -> Result<S, SimError> + Sync,
) -> Result<Vec<S>, SimError> {
    let done = AtomicU64::new(0);
    let mut out: Vec<(u64, S)> = seeds
        .into_par_iter()
        .map(|seed| {
            let summary = run_seed(seed);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            summary.map(|s| (seed, s))
        })
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|(seed, _)| *seed);
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

/// Runs `seeds` of a Postgres scenario in `mode`, in parallel, sorted by seed; `progress` is
/// called with the number of seeds finished so far.
pub fn sweep_pg(
    scenario: &Scenario,
    mode: ReplicationMode,
    seeds: RangeInclusive<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<PgRunSummary>, SimError> {
    per_seed(seeds, progress, |seed| {
        run_pg(scenario, mode, seed).map(|r| r.summary)
    })
}

/// Runs `seeds` of a MongoDB scenario with write concern `w`, in parallel, sorted by seed;
/// `progress` is called with the number of seeds finished so far.
pub fn sweep_mongo(
    scenario: &Scenario,
    w: WriteConcern,
    seeds: RangeInclusive<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<MongoRunSummary>, SimError> {
    per_seed(seeds, progress, |seed| {
        run_mongo(scenario, w, seed).map(|r| r.summary)
    })
}

/// Runs `seeds` of a sharded scenario built as `build`, in parallel, sorted by seed; `progress`
/// is called with the number of seeds finished so far.
pub fn sweep_sharded(
    scenario: &Scenario,
    build: ShardedBuild,
    seeds: RangeInclusive<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<ShardedRunSummary>, SimError> {
    per_seed(seeds, progress, |seed| {
        run_sharded(scenario, seed, build).map(|r| r.summary)
    })
}
