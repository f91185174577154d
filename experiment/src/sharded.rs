//! The settings of a sharded-cluster scenario (`system = "sharded"`, its `[sharded]` table): how
//! many config servers, shards and routers; the collection's chunks; how the balancer and a chunk
//! migration behave; faults tied to a migration's steps; and, optionally, a growth step of a
//! shard-key workload to replay.
//!
//! Hosts are numbered in this order: config servers first (`n1..nC`), then the shards that hold
//! chunks at the start, then the new empty shards, then the routers. The scenario's
//! `topology.nodes` must count them all, so the existing fault vocabulary (`crash n5`) names the
//! same host the trace shows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::NodeId;
use crate::problem::{problem, Problem};
use crate::routing::Table;

/// A step of a chunk migration (MongoDB's `moveChunk`), as faults and the trace name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MigrationStep {
    /// The recipient starts cloning the chunk's documents from the donor.
    Clone,
    /// The clone is done; the recipient fetches the changes made meanwhile.
    CatchUp,
    /// The donor blocks writes (then reads) to the chunk.
    CriticalSection,
    /// The donor asks the config servers to record the recipient as the chunk's owner.
    Commit,
    /// The donor deletes its now-orphaned copy of the range.
    RangeDeletion,
}

impl MigrationStep {
    /// Every step, in the order a migration takes them.
    pub const ALL: [MigrationStep; 5] = [
        MigrationStep::Clone,
        MigrationStep::CatchUp,
        MigrationStep::CriticalSection,
        MigrationStep::Commit,
        MigrationStep::RangeDeletion,
    ];
}

impl fmt::Display for MigrationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationStep::Clone => "clone",
            MigrationStep::CatchUp => "catch-up",
            MigrationStep::CriticalSection => "critical-section",
            MigrationStep::Commit => "commit",
            MigrationStep::RangeDeletion => "range-deletion",
        })
    }
}

impl FromStr for MigrationStep {
    type Err = String;

    fn from_str(s: &str) -> Result<MigrationStep, String> {
        MigrationStep::ALL
            .into_iter()
            .find(|step| step.to_string() == s)
            .ok_or_else(|| {
                let known: Vec<String> = MigrationStep::ALL.iter().map(|s| s.to_string()).collect();
                format!(
                    "'{s}' is not a migration step (known: {})",
                    known.join(", ")
                )
            })
    }
}

impl TryFrom<String> for MigrationStep {
    type Error = String;

    fn try_from(s: String) -> Result<MigrationStep, String> {
        s.parse()
    }
}

impl From<MigrationStep> for String {
    fn from(step: MigrationStep) -> String {
        step.to_string()
    }
}

/// What a migration-step fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepFaultKind {
    /// The donor shard's process dies (restarted `for_ms` later).
    CrashDonor,
    /// The recipient shard's process dies (restarted `for_ms` later).
    CrashRecipient,
    /// The donor cannot reach any config server (healed `for_ms` later).
    IsolateDonorFromConfig,
    /// The first router is cut off from every other host (healed `for_ms` later).
    IsolateRouter,
}

impl fmt::Display for StepFaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepFaultKind::CrashDonor => "crash the donor",
            StepFaultKind::CrashRecipient => "crash the recipient",
            StepFaultKind::IsolateDonorFromConfig => "cut the donor off from the config servers",
            StepFaultKind::IsolateRouter => "cut the first router off",
        })
    }
}

/// A fault that fires when a migration reaches a step, not at a fixed time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFault {
    /// The step that fires it.
    pub at: MigrationStep,
    /// Which migration of the run (1 is the first to start).
    #[serde(default = "default_migration")]
    pub migration: u64,
    /// What happens.
    pub kind: StepFaultKind,
    /// How long until the crashed process is restarted or the cut healed.
    #[serde(default = "default_for_ms")]
    pub for_ms: u64,
}

impl StepFault {
    /// `crash the donor at critical-section of migration 1, for 3000 ms`.
    pub fn label(&self) -> String {
        format!(
            "{} at {} of migration {}, for {} ms",
            self.kind, self.at, self.migration, self.for_ms
        )
    }
}

fn default_migration() -> u64 {
    1
}

fn default_for_ms() -> u64 {
    5000
}

/// How the balancer chooses migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerPolicy {
    /// MongoDB's: move a chunk from the shard with the most chunks to the one with the fewest
    /// while they differ by at least `imbalance_chunks`.
    Even,
    /// A stress test: every round moves a seeded random chunk to another shard, so migrations
    /// never stop.
    Shuffle,
}

impl BalancerPolicy {
    /// The balancer's next migration of a chunk in `table` over `shards`: (chunk, recipient), or
    /// `None` when there is nothing to move. `draw(lo, hi)` is a uniform draw in `lo..hi` from the
    /// caller's seeded generator, so the simulator and the real balancer choose alike.
    pub fn next_move(
        self,
        table: &Table,
        shards: usize,
        imbalance_chunks: usize,
        draw: &mut dyn FnMut(usize, usize) -> usize,
    ) -> Option<(u32, usize)> {
        match self {
            BalancerPolicy::Even => {
                let mut counts = vec![0usize; shards];
                for e in table {
                    counts[e.shard] += 1;
                }
                let donor = (0..shards).max_by_key(|&s| (counts[s], std::cmp::Reverse(s)))?;
                let recipient = (0..shards).min_by_key(|&s| (counts[s], s))?;
                if counts[donor] < counts[recipient] + imbalance_chunks {
                    return None;
                }
                let chunk = table.iter().position(|e| e.shard == donor)? as u32;
                Some((chunk, recipient))
            }
            BalancerPolicy::Shuffle => {
                let chunk = draw(0, table.len()) as u32;
                let from = table[chunk as usize].shard;
                let to = (from + draw(1, shards.max(2))) % shards;
                (to != from).then_some((chunk, to))
            }
        }
    }
}

/// A growth step of a `quorumlab shard` workload to replay: its chunk map at the step's start
/// and the migrations the experiment's balancer made during it, now timed in the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowthReplay {
    /// The workload: a built-in name (`accounts`) or a path.
    pub workload: String,
    /// The candidate key whose chunk map is replayed.
    pub key: String,
    /// Which growth step (1 is the first), e.g. 2 for the 10x step of `[1, 10, 100]`.
    pub step: usize,
}

/// A sharded cluster's shape and the balancer's and migrations' behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedSettings {
    /// Config servers: one Raft group (the etcd model) that holds the routing table.
    #[serde(default = "default_config_servers")]
    pub config_servers: usize,
    /// Shards that hold the collection's chunks at the start.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Empty shards added at the start, for the balancer to fill.
    #[serde(default)]
    pub new_shards: usize,
    /// Routers (mongos); each runs its share of the workload's clients beside it.
    #[serde(default = "default_routers")]
    pub routers: usize,
    /// Chunks at the start, spread round-robin over the first `shards` (a growth replay takes
    /// the experiment's instead).
    #[serde(default = "default_chunks")]
    pub chunks: usize,
    /// Data already in each chunk at the start, in bytes (cloned like the workload's documents).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Bytes of one workload document.
    #[serde(default = "default_doc_bytes")]
    pub doc_bytes: u64,
    /// How fast a recipient takes in cloned data, bytes per second.
    #[serde(default = "default_clone_bytes_per_s")]
    pub clone_bytes_per_s: u64,
    /// Largest clone batch, in bytes.
    #[serde(default = "default_clone_batch_bytes")]
    pub clone_batch_bytes: u64,
    /// The recipient reports itself caught up when a batch of changes holds at most this many
    /// documents; the donor then enters the critical section.
    #[serde(default = "default_catch_up_docs_max")]
    pub catch_up_docs_max: usize,
    /// How the balancer picks migrations.
    #[serde(default = "default_policy")]
    pub balancer: BalancerPolicy,
    /// `even`: the smallest difference in chunk counts that starts a migration.
    #[serde(default = "default_imbalance_chunks")]
    pub imbalance_chunks: usize,
    /// Time between balancer rounds.
    #[serde(default = "default_balancer_interval_ms")]
    pub balancer_interval_ms: u64,
    /// Silence from the other shard after which a migration aborts (before its commit).
    #[serde(default = "default_migration_timeout_ms")]
    pub migration_timeout_ms: u64,
    /// Delay before a donor deletes a migrated range (MongoDB's `orphanCleanupDelaySecs`).
    #[serde(default = "default_range_deletion_delay_ms")]
    pub range_deletion_delay_ms: u64,
    /// Stale-config retries a router makes for one operation before it gives up.
    #[serde(default = "default_router_retries")]
    pub router_retries: u32,
    /// Faults that fire at a migration's step.
    #[serde(default)]
    pub step_faults: Vec<StepFault>,
    /// Replay a growth step of a shard-key workload instead of `chunks`.
    #[serde(default)]
    pub growth_replay: Option<GrowthReplay>,
}

fn default_config_servers() -> usize {
    3
}
fn default_shards() -> usize {
    3
}
fn default_routers() -> usize {
    2
}
fn default_chunks() -> usize {
    12
}
fn default_chunk_bytes() -> u64 {
    4 << 20
}
fn default_doc_bytes() -> u64 {
    200
}
fn default_clone_bytes_per_s() -> u64 {
    16 << 20
}
fn default_clone_batch_bytes() -> u64 {
    1 << 20
}
fn default_catch_up_docs_max() -> usize {
    20
}
fn default_policy() -> BalancerPolicy {
    BalancerPolicy::Even
}
fn default_imbalance_chunks() -> usize {
    2
}
fn default_balancer_interval_ms() -> u64 {
    1000
}
fn default_migration_timeout_ms() -> u64 {
    3000
}
fn default_range_deletion_delay_ms() -> u64 {
    5000
}
fn default_router_retries() -> u32 {
    10
}

/// Which host plays which part, from the settings: the numbering every runner and the trace use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Config servers.
    pub config_servers: usize,
    /// Shards, the new ones included.
    pub shards: usize,
    /// Routers.
    pub routers: usize,
}

impl Layout {
    /// Hosts in all.
    pub fn hosts(&self) -> usize {
        self.config_servers + self.shards + self.routers
    }

    /// Config server `i` (0-based).
    pub fn config_server(&self, i: usize) -> NodeId {
        NodeId(1 + i as u64)
    }

    /// Shard `s` (0-based; shard `s` is named `s{s+1}`).
    pub fn shard(&self, s: usize) -> NodeId {
        NodeId(1 + (self.config_servers + s) as u64)
    }

    /// Router `r` (0-based).
    pub fn router(&self, r: usize) -> NodeId {
        NodeId(1 + (self.config_servers + self.shards + r) as u64)
    }

    /// The shard a host is, if it is one.
    pub fn shard_of(&self, id: NodeId) -> Option<usize> {
        let i = id.index();
        (i >= self.config_servers && i < self.config_servers + self.shards)
            .then(|| i - self.config_servers)
    }

    /// The part a host plays, for the trace: `cfg`, `s2`, `r1`.
    pub fn part(&self, id: NodeId) -> String {
        let i = id.index();
        if i < self.config_servers {
            "cfg".into()
        } else if let Some(s) = self.shard_of(id) {
            format!("s{}", s + 1)
        } else {
            format!("r{}", i - self.config_servers - self.shards + 1)
        }
    }
}

impl ShardedSettings {
    /// The hosts' parts.
    pub fn layout(&self) -> Layout {
        Layout {
            config_servers: self.config_servers,
            shards: self.shards + self.new_shards,
            routers: self.routers,
        }
    }

    /// Checks the settings against the scenario's host count.
    pub(crate) fn check(&self, hosts: usize) -> Result<(), Problem> {
        let layout = self.layout();
        if self.config_servers == 0 || self.shards == 0 || self.routers == 0 {
            return problem(
                "sharded",
                "a sharded cluster needs at least 1 config server, 1 shard and 1 router",
            );
        }
        if layout.hosts() != hosts {
            return problem(
                "topology.nodes",
                format!(
                    "the [sharded] layout needs {} hosts ({} config servers + {} shards + {} new shards + {} routers), but topology.nodes is {hosts}",
                    layout.hosts(), self.config_servers, self.shards, self.new_shards, self.routers
                ),
            );
        }
        if self.growth_replay.is_none() && self.chunks < self.shards {
            return problem(
                "sharded.chunks",
                format!(
                    "{} chunks cannot spread over {} shards: give at least one chunk per shard",
                    self.chunks, self.shards
                ),
            );
        }
        if self.chunks > 4096 {
            return problem("sharded.chunks", "at most 4096 chunks");
        }
        if self.clone_bytes_per_s == 0 || self.clone_batch_bytes == 0 || self.doc_bytes == 0 {
            return problem(
                "sharded.clone_bytes_per_s",
                "clone_bytes_per_s, clone_batch_bytes and doc_bytes must be > 0",
            );
        }
        if self.migration_timeout_ms == 0 || self.balancer_interval_ms == 0 {
            return problem(
                "sharded.migration_timeout_ms",
                "migration_timeout_ms and balancer_interval_ms must be > 0",
            );
        }
        for (i, fault) in self.step_faults.iter().enumerate() {
            if fault.migration == 0 {
                return problem(
                    format!("sharded.step_faults[{i}].migration"),
                    "migrations are numbered from 1",
                );
            }
        }
        if let Some(replay) = &self.growth_replay {
            if replay.step == 0 {
                return problem(
                    "sharded.growth_replay.step",
                    "growth steps are numbered from 1",
                );
            }
        }
        Ok(())
    }
}
