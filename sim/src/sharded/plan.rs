//! The cluster a run starts from: chunk boundaries, the routing table, the data in each chunk,
//! the workload's shard-key points, and, for a growth replay, the migrations to make.

use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::sharded::ShardedSettings;
use quorumlab_shard::replay::{growth_step, load_workload};

use super::routing::{Bounds, Entry, Table};

/// A growth replay that cannot be set up: the workload, key or step does not exist, or its
/// cluster does not fit the scenario's.
#[derive(Debug, thiserror::Error)]
#[error("growth replay: {0}")]
pub struct ReplayError(String);

/// Where a run starts.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// Chunk boundaries.
    pub bounds: Bounds,
    /// The routing table at the start (every chunk at version 1).
    pub table: Table,
    /// Preloaded bytes per chunk.
    pub bulk_bytes: Vec<u64>,
    /// Each workload key's shard-key point.
    pub points: Vec<u64>,
    /// Keys are written in order (a replayed stream), not at random.
    pub keys_in_order: bool,
    /// The migrations to make, in order (a replay); `None`: the balancer's policy decides.
    pub moves: Option<Vec<(u32, usize)>>,
    /// The workload's rate is multiplied by this (a replay's growth factor).
    pub rate_factor: u64,
}

impl ClusterPlan {
    /// The plan `settings` describe.
    pub fn of(scenario: &Scenario, settings: &ShardedSettings) -> Result<ClusterPlan, ReplayError> {
        match &settings.growth_replay {
            None => Ok(ClusterPlan::even(scenario, settings)),
            Some(replay) => {
                ClusterPlan::replay(settings, &replay.workload, &replay.key, replay.step)
            }
        }
    }

    /// `chunks` equal chunks dealt round-robin over the starting shards, each holding
    /// `chunk_bytes`; keys spread over the point space.
    fn even(scenario: &Scenario, settings: &ShardedSettings) -> ClusterPlan {
        let chunks = settings.chunks;
        ClusterPlan {
            bounds: Bounds::even(chunks),
            table: (0..chunks)
                .map(|c| Entry {
                    version: 1,
                    shard: c % settings.shards,
                })
                .collect(),
            bulk_bytes: vec![settings.chunk_bytes; chunks],
            points: (0..scenario.workload.keys.max(1))
                .map(|k| spread(u64::from(k)))
                .collect(),
            keys_in_order: false,
            moves: None,
            rate_factor: 1,
        }
    }

    fn replay(
        settings: &ShardedSettings,
        workload: &str,
        key: &str,
        step: usize,
    ) -> Result<ClusterPlan, ReplayError> {
        let workload = load_workload(workload).map_err(|e| ReplayError(e.to_string()))?;
        let step_data =
            growth_step(&workload, key, step, 1).map_err(|e| ReplayError(e.to_string()))?;
        let shards = settings.shards + settings.new_shards;
        if step_data.shards != shards {
            return Err(ReplayError(format!(
                "workload '{}' runs {} shards; set [sharded] shards = {} (and new_shards = 0)",
                workload.name, step_data.shards, step_data.shards
            )));
        }
        Ok(ClusterPlan {
            bounds: Bounds::from_lows(step_data.lows.clone()),
            table: step_data
                .owners
                .iter()
                .map(|&shard| Entry { version: 1, shard })
                .collect(),
            bulk_bytes: step_data.bytes.clone(),
            points: step_data.points.clone(),
            keys_in_order: true,
            moves: Some(
                step_data
                    .moves
                    .iter()
                    .map(|&(c, to)| (c as u32, to))
                    .collect(),
            ),
            rate_factor: step_data.growth,
        })
    }
}

/// A key's number spread over the 64-bit point space (splitmix64's finalizer).
fn spread(k: u64) -> u64 {
    let mut x = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
