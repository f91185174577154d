//! One growth step of the experiment, recorded for the simulator to replay as a timed protocol:
//! the chunk map at the step's start, the migrations the balancer made during it, and a sample of
//! the step's shard-key points in write order.
//!
//! The simulator's chunks are fixed for a run, so splits are taken as made up front: the replayed
//! chunks are the step's *final* chunks, each starting on the shard its range was on when the step
//! began, carrying an equal share of its starting chunk's bytes. A migration the experiment made
//! of a range that split later becomes one move per final piece.

use crate::chunks::{Chunk, ChunkMap, Move};
use crate::keyspace::KeyLayout;
use crate::workload::{KeySpec, Workload, WorkloadError, DAY_MS};
use crate::{grow, KeyRun};

/// Points sampled from the step's writes.
const POINTS_SAMPLED: usize = 4096;

/// The workloads shipped in `workloads/`, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("accounts", include_str!("../../workloads/accounts.toml")),
    (
        "activity-events",
        include_str!("../../workloads/activity-events.toml"),
    ),
];

/// A built-in workload by name, or a workload file by path.
pub fn load_workload(name_or_path: &str) -> Result<Workload, WorkloadError> {
    match BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
        Some((name, text)) => Workload::parse(text, name),
        None => Workload::load(std::path::Path::new(name_or_path)),
    }
}

/// What a replay needs of one growth step.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthStep {
    /// The step's growth factor.
    pub growth: u64,
    /// Shards in the cluster.
    pub shards: usize,
    /// Lower bounds of the step's final chunks.
    pub lows: Vec<u64>,
    /// Each final chunk's shard at the step's start.
    pub owners: Vec<usize>,
    /// Each final chunk's bytes at the step's start.
    pub bytes: Vec<u64>,
    /// The migrations, in order: (final chunk, recipient).
    pub moves: Vec<(usize, usize)>,
    /// Migrations the experiment's balancer made in the step.
    pub experiment_migrations: usize,
    /// Chunk splits during the step.
    pub splits: usize,
    /// Shard-key points of the step's writes, sampled in order.
    pub points: Vec<u64>,
}

/// What a key's run records of the step being replayed.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// The step to record (1-based).
    step: usize,
    writes_per_step: u64,
    start: Vec<Chunk>,
    moves: Vec<Move>,
    points: Vec<u64>,
    seen: u64,
}

impl Recorder {
    pub(crate) fn step_started(&mut self, step: usize, map: &ChunkMap) {
        if step == self.step {
            self.start = map.chunks().to_vec();
        }
    }

    pub(crate) fn write(&mut self, step: usize, point: u64) {
        if step != self.step {
            return;
        }
        let every = (self.writes_per_step / POINTS_SAMPLED as u64).max(1);
        if self.seen.is_multiple_of(every) && self.points.len() < POINTS_SAMPLED {
            self.points.push(point);
        }
        self.seen += 1;
    }

    pub(crate) fn moved(&mut self, step: usize, moves: &[Move]) {
        if step == self.step {
            self.moves.extend_from_slice(moves);
        }
    }
}

/// Runs the experiment for key `key` through growth step `step` (1-based) and records it.
pub fn growth_step(
    workload: &Workload,
    key: &str,
    step: usize,
    seed: u64,
) -> Result<GrowthStep, WorkloadError> {
    let invalid = |reason: String| WorkloadError::Invalid {
        name: workload.name.clone(),
        reason,
    };
    let spec: &KeySpec = workload
        .keys
        .iter()
        .find(|k| k.name == key)
        .ok_or_else(|| {
            let known: Vec<&str> = workload.keys.iter().map(|k| k.name.as_str()).collect();
            invalid(format!(
                "no candidate key '{key}' (known: {})",
                known.join(", ")
            ))
        })?;
    if step == 0 || step > workload.growth.len() {
        return Err(invalid(format!(
            "no growth step {step}: the workload has {} ({:?})",
            workload.growth.len(),
            workload.growth
        )));
    }
    let dataset = workload.dataset(&spec.dataset).expect("validated dataset");
    let span_ms = dataset.step_days * DAY_MS * workload.growth.len() as u64;
    let layout = KeyLayout::new(dataset, spec, workload.key_fields(spec)?, span_ms);
    let shards = workload.cluster.shards;
    let mut run = KeyRun::new(spec, dataset, layout, shards, &workload.cluster);
    run.recorder = Some(Recorder {
        step,
        writes_per_step: dataset.writes_per_step * workload.growth[step - 1],
        ..Recorder::default()
    });
    grow(
        workload,
        dataset,
        &workload.growth[..step],
        seed,
        vec![&mut run],
    );
    let recorder = run.recorder.take().expect("set above");
    Ok(lay_out(
        recorder,
        run.map.chunks(),
        shards,
        workload.growth[step - 1],
    ))
}

/// The replay's chunks and moves from what was recorded and the step's final chunks.
fn lay_out(r: Recorder, end: &[Chunk], shards: usize, growth: u64) -> GrowthStep {
    let lows: Vec<u64> = end.iter().map(|c| c.lo).collect();
    let start_of = |lo: u64| r.start.partition_point(|c| c.lo <= lo) - 1;
    let mut pieces = vec![0u64; r.start.len()];
    for &lo in &lows {
        pieces[start_of(lo)] += 1;
    }
    let owners: Vec<usize> = lows.iter().map(|&lo| r.start[start_of(lo)].shard).collect();
    let mut bytes: Vec<u64> = lows
        .iter()
        .map(|&lo| {
            let i = start_of(lo);
            r.start[i].bytes / pieces[i]
        })
        .collect();
    let mut moves = Vec::new();
    for m in &r.moves {
        let covered: Vec<usize> = (0..lows.len())
            .filter(|&j| lows[j] >= m.lo && m.hi.is_none_or(|hi| lows[j] < hi))
            .collect();
        for &j in &covered {
            // A piece carries its share of what the experiment moved: the data written during
            // the step is there from the replay's start, so the bytes moved match the step's.
            bytes[j] = bytes[j].max(m.bytes / covered.len() as u64);
            moves.push((j, m.to));
        }
    }
    GrowthStep {
        growth,
        shards,
        splits: lows.len() - r.start.len(),
        lows,
        owners,
        bytes,
        moves,
        experiment_migrations: r.moves.len(),
        points: r.points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_step_starts_where_the_experiment_was_and_moves_what_it_moved() {
        let w = load_workload("accounts").expect("built-in");
        let step = growth_step(&w, "ts", 2, 1).expect("key and step exist");
        assert_eq!(step.growth, 10);
        assert_eq!(step.lows.len(), step.owners.len());
        assert!(step.lows.windows(2).all(|p| p[0] < p[1]));
        assert!(!step.points.is_empty());
        assert!(step.moves.len() >= step.experiment_migrations);
        assert!(step.owners.iter().all(|&s| s < step.shards));
        assert!(growth_step(&w, "nope", 2, 1).is_err());
        assert!(growth_step(&w, "ts", 9, 1).is_err());
    }
}
