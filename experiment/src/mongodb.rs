//! The settings of a MongoDB scenario (`system = "mongodb"`, its `[mongodb]` table): the replica
//! set's configuration as `rs.conf()` spells it (protocol version 1 timing, priorities, chaining),
//! the write and read concerns the workload uses, the workload's phases and the simulator's apply
//! speed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::postgres::Phase;
use crate::problem::{problem, Problem};

/// A write concern's `w`: what a write waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WriteConcern {
    /// `w: 1`: the primary has applied it. An acknowledged write can still be rolled back.
    #[serde(rename = "1")]
    W1,
    /// `w: "majority"`: a majority of voting members have it durably (journaled), so no later
    /// primary can lack it.
    #[serde(rename = "majority")]
    Majority,
}

impl fmt::Display for WriteConcern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteConcern::W1 => "w:1",
            WriteConcern::Majority => "w:majority",
        })
    }
}

/// A read concern's `level`: which of a member's data a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadConcern {
    /// `local`: the member's newest applied data, which may later be rolled back.
    Local,
    /// `majority`: data up to the member's majority commit point, which is never rolled back.
    Majority,
}

impl fmt::Display for ReadConcern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadConcern::Local => "local",
            ReadConcern::Majority => "majority",
        })
    }
}

/// A replica set's configuration and the workload's concerns. Timing is in milliseconds as in
/// `rs.conf().settings`; the topology's `nodes` counts the members (all voting, data-bearing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    /// The replica set's name (`rs0`); a real target's `replicaSet` must match it.
    #[serde(default = "default_replica_set")]
    pub replica_set: String,
    /// `settings.heartbeatIntervalMillis`: how often every member pings every other.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// `settings.electionTimeoutMillis`: silence from the primary after which a secondary stands
    /// for election (plus a random offset up to 15% of it), and after which a primary that hears
    /// no majority steps down.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// `settings.catchUpTimeoutMillis`: how long a new primary waits to fetch entries a member it
    /// can see has and it lacks; -1 (the default) waits as long as it takes.
    #[serde(default = "default_catch_up_timeout_ms")]
    pub catch_up_timeout_ms: i64,
    /// `settings.chainingAllowed`: secondaries may sync from other secondaries.
    #[serde(default = "default_true")]
    pub chaining_allowed: bool,
    /// `members[i].priority`, in member order; empty means 1 for every member. 0 never stands.
    #[serde(default)]
    pub priorities: Vec<f64>,
    /// Write concerns the scenario is run with, one after another.
    #[serde(default = "default_write_concerns")]
    pub write_concerns: Vec<WriteConcern>,
    /// `wtimeout` of `w: "majority"` writes: past it the write reports a write-concern error
    /// (its outcome unknown, since it is not undone); 0 waits without limit.
    #[serde(default)]
    pub wtimeout_ms: u64,
    /// The readers' read concern.
    #[serde(default = "default_read_concern")]
    pub read_concern: ReadConcern,
    /// Workload phases; when empty, the workload's rate runs for the whole scenario.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Simulator only: how many oplog entries a secondary applies per second.
    #[serde(default = "default_apply_ops_per_s")]
    pub apply_ops_per_s: u64,
}

fn default_replica_set() -> String {
    "rs0".into()
}

fn default_heartbeat_interval_ms() -> u64 {
    2000
}

fn default_election_timeout_ms() -> u64 {
    10_000
}

fn default_catch_up_timeout_ms() -> i64 {
    -1
}

fn default_true() -> bool {
    true
}

fn default_write_concerns() -> Vec<WriteConcern> {
    vec![WriteConcern::W1]
}

fn default_read_concern() -> ReadConcern {
    ReadConcern::Local
}

fn default_apply_ops_per_s() -> u64 {
    20_000
}

impl MongoSettings {
    /// Member `index`'s priority (from 0), 1 when none is given.
    pub fn priority(&self, index: usize) -> f64 {
        self.priorities.get(index).copied().unwrap_or(1.0)
    }

    /// The workload phases, with the whole run as one `steady` phase when none are given.
    pub fn phases_or(&self, duration_ms: u64, rate_per_s: u64) -> Vec<Phase> {
        crate::postgres::phases_or(&self.phases, duration_ms, rate_per_s)
    }

    /// The ranges MongoDB itself accepts, and those that make a run meaningful, for `nodes`
    /// members; the problem names the field.
    pub(crate) fn check(&self, nodes: usize) -> Result<(), Problem> {
        if self.replica_set.is_empty() || self.replica_set.contains(['/', ' ', ',']) {
            return problem(
                "mongodb.replica_set",
                format!(
                    "mongodb.replica_set '{}' is not a replica set name (non-empty, no '/', ' ' or ',')",
                    self.replica_set
                ),
            );
        }
        if self.heartbeat_interval_ms == 0 {
            return problem(
                "mongodb.heartbeat_interval_ms",
                "mongodb.heartbeat_interval_ms must be > 0",
            );
        }
        if self.election_timeout_ms < self.heartbeat_interval_ms {
            return problem(
                "mongodb.election_timeout_ms",
                format!(
                    "mongodb.election_timeout_ms ({}) must be at least heartbeat_interval_ms ({})",
                    self.election_timeout_ms, self.heartbeat_interval_ms
                ),
            );
        }
        if self.catch_up_timeout_ms < -1 {
            return problem(
                "mongodb.catch_up_timeout_ms",
                "mongodb.catch_up_timeout_ms is -1 (no limit) or >= 0",
            );
        }
        self.check_members(nodes)?;
        if self.write_concerns.is_empty() {
            return problem(
                "mongodb.write_concerns",
                "mongodb.write_concerns is empty (use [\"1\"], [\"majority\"] or both)",
            );
        }
        if self.apply_ops_per_s == 0 {
            return problem(
                "mongodb.apply_ops_per_s",
                "mongodb.apply_ops_per_s must be > 0",
            );
        }
        if let Some(i) = self.phases.iter().position(|p| p.ms == 0) {
            return problem(
                format!("mongodb.phases[{i}].ms"),
                "every mongodb phase needs ms > 0",
            );
        }
        Ok(())
    }

    /// Priorities: one per member at most, each in MongoDB's 0..=1000, someone electable.
    fn check_members(&self, nodes: usize) -> Result<(), Problem> {
        if self.priorities.len() > nodes {
            return problem(
                "mongodb.priorities",
                format!(
                    "mongodb.priorities names {} members but topology.nodes is {nodes}",
                    self.priorities.len()
                ),
            );
        }
        if let Some(i) = self
            .priorities
            .iter()
            .position(|p| !(0.0..=1000.0).contains(p))
        {
            return problem(
                format!("mongodb.priorities[{i}]"),
                "a member's priority is 0 to 1000",
            );
        }
        if (0..nodes).all(|i| self.priority(i) == 0.0) {
            return problem(
                "mongodb.priorities",
                "every member has priority 0, so none can ever be primary",
            );
        }
        Ok(())
    }
}
