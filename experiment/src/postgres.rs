//! The settings of a Postgres scenario (`system = "postgres"`, its `[postgres]` table): Patroni's
//! timing, the replication modes to run, `synchronous_commit`, the workload's phases and the
//! simulator's replay speed and bandwidth.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::problem::{problem, Problem};

/// How commits wait for standbys, as Patroni configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Asynchronous streaming: a commit waits for the primary's own WAL flush only.
    Async,
    /// Patroni's `synchronous_mode`: one standby is synchronous, and commits wait for it at the
    /// `synchronous_commit` level; Patroni promotes only that standby.
    Sync,
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        })
    }
}

/// Postgres `synchronous_commit`: what a commit waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncCommit {
    /// Nothing: not even the primary's own WAL flush.
    Off,
    /// The primary's WAL flush only.
    Local,
    /// The synchronous standby has written the WAL (to its OS, not yet flushed).
    RemoteWrite,
    /// The synchronous standby has flushed the WAL.
    On,
    /// The synchronous standby has replayed the WAL, so reads there see the commit.
    RemoteApply,
}

impl fmt::Display for SyncCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncCommit::Off => "off",
            SyncCommit::Local => "local",
            SyncCommit::RemoteWrite => "remote_write",
            SyncCommit::On => "on",
            SyncCommit::RemoteApply => "remote_apply",
        })
    }
}

/// One stretch of a Postgres write workload at a fixed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Name shown in reports (`idle`, `steady`, `burst`).
    pub name: String,
    /// How long it lasts, in milliseconds.
    pub ms: u64,
    /// Inserts per second (0 for idle).
    pub rate_per_s: u64,
    /// Payload bytes per inserted row.
    #[serde(default = "default_row_bytes")]
    pub row_bytes: u32,
}

fn default_row_bytes() -> u32 {
    100
}

/// The phase running `at_us` microseconds after the start (the last one once all have ended).
pub fn phase_at(phases: &[Phase], at_us: u64) -> &Phase {
    let mut end = 0;
    for phase in phases {
        end += phase.ms * 1000;
        if at_us < end {
            return phase;
        }
    }
    phases.last().expect("at least one phase")
}

/// `phases`, or the whole run as one `steady` phase at `rate_per_s` when there are none.
pub fn phases_or(phases: &[Phase], duration_ms: u64, rate_per_s: u64) -> Vec<Phase> {
    if phases.is_empty() {
        vec![Phase {
            name: "steady".into(),
            ms: duration_ms,
            rate_per_s,
            row_bytes: default_row_bytes(),
        }]
    } else {
        phases.to_vec()
    }
}

/// Postgres replication and Patroni settings. Patroni's timing is in whole seconds, as in its
/// configuration; the topology's `nodes` counts the primary and its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Patroni `ttl`: how long the leader key lives without being renewed.
    pub ttl_s: u64,
    /// Patroni `loop_wait`: time between HA loop runs.
    pub loop_wait_s: u64,
    /// Patroni `retry_timeout`: how long DCS and Postgres operations are retried before the
    /// leader gives up (and demotes).
    pub retry_timeout_s: u64,
    /// Patroni `maximum_lag_on_failover`: replicas further behind than this are not promoted.
    #[serde(default = "default_max_lag")]
    pub maximum_lag_on_failover_bytes: u64,
    /// Replication modes the scenario is run in, one after another.
    #[serde(default = "default_modes")]
    pub modes: Vec<ReplicationMode>,
    /// `synchronous_commit` in `sync` mode (`async` mode commits wait for the local flush).
    #[serde(default = "default_sync_commit")]
    pub synchronous_commit: SyncCommit,
    /// Workload phases; when empty, the workload's rate runs for the whole scenario.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Simulator only: how fast a replica replays WAL, in MB/s.
    #[serde(default = "default_replay_mb_per_s")]
    pub replay_mb_per_s: f64,
    /// Simulator only: WAL stream bandwidth per replica, in MB/s.
    #[serde(default = "default_bandwidth_mb_per_s")]
    pub bandwidth_mb_per_s: f64,
}

fn default_max_lag() -> u64 {
    1 << 20
}

fn default_modes() -> Vec<ReplicationMode> {
    vec![ReplicationMode::Async]
}

fn default_sync_commit() -> SyncCommit {
    SyncCommit::On
}

fn default_replay_mb_per_s() -> f64 {
    200.0
}

fn default_bandwidth_mb_per_s() -> f64 {
    100.0
}

impl PostgresSettings {
    /// The workload phases, with the whole run as one `steady` phase when none are given.
    pub fn phases_or(&self, duration_ms: u64, rate_per_s: u64) -> Vec<Phase> {
        phases_or(&self.phases, duration_ms, rate_per_s)
    }

    /// Checks Patroni's own rule and the ranges that make sense.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|p| p.reason)
    }

    /// As [`PostgresSettings::validate`], naming the field at fault.
    pub(crate) fn check(&self) -> Result<(), Problem> {
        if self.loop_wait_s == 0 || self.retry_timeout_s == 0 {
            return problem(
                "postgres.loop_wait_s",
                "postgres.loop_wait_s and retry_timeout_s must be > 0",
            );
        }
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s {
            return problem(
                "postgres.ttl_s",
                format!(
                    "Patroni needs loop_wait + 2*retry_timeout <= ttl, but {} + 2*{} > {}",
                    self.loop_wait_s, self.retry_timeout_s, self.ttl_s
                ),
            );
        }
        if self.modes.is_empty() {
            return problem(
                "postgres.modes",
                "postgres.modes is empty (use [\"async\"], [\"sync\"] or both)",
            );
        }
        if !(self.replay_mb_per_s > 0.0 && self.bandwidth_mb_per_s > 0.0) {
            return problem(
                "postgres.replay_mb_per_s",
                "postgres.replay_mb_per_s and bandwidth_mb_per_s must be > 0",
            );
        }
        if let Some(i) = self.phases.iter().position(|p| p.ms == 0) {
            return problem(
                format!("postgres.phases[{i}].ms"),
                "every postgres phase needs ms > 0",
            );
        }
        Ok(())
    }
}
