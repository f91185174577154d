//! Measurements of a primary–replica database under failover and load: what `pg-failover`,
//! `pg-isolate-primary` and `pg-lag` report, computed the same way from a simulated run and a real
//! one.
//!
//! A write is a `put` whose value is the write's id; the op records which node acknowledged it.
//! After the run, the ids present on the final primary decide which acknowledged writes survived.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{History, Op, OpKind, Outcome};
use crate::measure::{Distribution, Metric};
use crate::postgres::ReplicationMode;

/// One run of a Postgres scenario, as both the simulator and the real driver report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgRunSummary {
    /// Scenario name.
    pub scenario: String,
    /// Replication mode of this run.
    pub mode: ReplicationMode,
    /// Seed (simulator) or run number (real cluster).
    pub seed: u64,
    /// Database nodes (primary and replicas).
    pub nodes: usize,
    /// When the fault fired, in milliseconds since the start.
    pub fault_at_ms: Option<u64>,
    /// The primary when the fault fired.
    pub old_primary: Option<String>,
    /// The primary at the end.
    pub new_primary: Option<String>,
    /// From the fault to the leader key in the DCS expiring or naming another node.
    pub detection_ms: Option<u64>,
    /// From the fault to the first write acknowledged by a different primary.
    pub failover_ms: Option<u64>,
    /// Longest client-visible stretch with no acknowledged write, from the fault on.
    pub write_unavailable_ms: u64,
    /// After the fault, how long the old primary went on acknowledging writes.
    pub old_primary_acked_for_ms: Option<u64>,
    /// How long two primaries both acknowledged writes (split brain when > 0).
    pub dual_primary_ms: u64,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Acknowledged writes missing from the final primary.
    pub lost_writes: u64,
    /// Ids of the lost writes (at most 50 listed).
    pub lost_ids: Vec<u64>,
    /// Latency of acknowledged writes before the fault (all of them without one), milliseconds.
    pub write_latency_ms: Option<Distribution>,
    /// Replica lag per phase, replica and method (`pg-lag`).
    pub lag: Vec<PhaseLag>,
}

impl PgRunSummary {
    /// Whether two primaries acknowledged writes at the same time.
    pub fn split_brain(&self) -> bool {
        self.dual_primary_ms > 0
    }

    /// What `run --runs N`, `sweep` and `compare` report for Postgres scenarios, in order.
    pub const METRICS: [Metric<PgRunSummary>; 7] = [
        Metric {
            name: "fault to leader key lost (ms)",
            of: |s| s.detection_ms.map(|v| v as f64),
        },
        Metric {
            name: "fault to new primary's first write (ms)",
            of: |s| s.failover_ms.map(|v| v as f64),
        },
        Metric {
            name: "write unavailability (ms)",
            of: |s| s.fault_at_ms.map(|_| s.write_unavailable_ms as f64),
        },
        Metric {
            name: "old primary acked writes for (ms)",
            of: |s| s.old_primary_acked_for_ms.map(|v| v as f64),
        },
        Metric {
            name: "two primaries at once (ms)",
            of: |s| s.fault_at_ms.map(|_| s.dual_primary_ms as f64),
        },
        Metric {
            name: "acknowledged writes lost",
            of: |s| Some(s.lost_writes as f64),
        },
        Metric {
            name: "write latency p50 (ms)",
            of: |s| s.write_latency_ms.map(|d| d.p50),
        },
    ];
}

/// The ways replica lag is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LagMethod {
    /// `pg_stat_replication.write_lag`.
    WriteLag,
    /// `pg_stat_replication.flush_lag`.
    FlushLag,
    /// `pg_stat_replication.replay_lag`.
    ReplayLag,
    /// `pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)`, in bytes.
    Bytes,
    /// Ground truth: a heartbeat row's write on the primary to its first sight on the replica.
    Heartbeat,
    /// `now() - pg_last_xact_replay_timestamp()` on the replica (misleads when idle).
    ReplayAge,
    /// MongoDB: the primary's `optimeDate` minus the member's, both from one `replSetGetStatus`
    /// on the primary (what `rs.printSecondaryReplicationInfo()` calls "behind the primary").
    OptimeLag,
    /// MongoDB: the reading's wall clock minus the member's own `optimeDate` (misleads when idle:
    /// it grows until the primary's periodic no-op write, every 10 s).
    OptimeAge,
}

impl LagMethod {
    /// Every method, in report order.
    pub const ALL: [LagMethod; 6] = [
        LagMethod::Heartbeat,
        LagMethod::WriteLag,
        LagMethod::FlushLag,
        LagMethod::ReplayLag,
        LagMethod::Bytes,
        LagMethod::ReplayAge,
    ];

    /// The methods a MongoDB scenario measures, in report order.
    pub const MONGODB: [LagMethod; 3] = [
        LagMethod::Heartbeat,
        LagMethod::OptimeLag,
        LagMethod::OptimeAge,
    ];

    /// Column label, with its unit.
    pub fn label(self) -> &'static str {
        match self {
            LagMethod::WriteLag => "write_lag ms",
            LagMethod::FlushLag => "flush_lag ms",
            LagMethod::ReplayLag => "replay_lag ms",
            LagMethod::Bytes => "byte lag",
            LagMethod::Heartbeat => "heartbeat ms",
            LagMethod::ReplayAge => "replay age ms",
            LagMethod::OptimeLag => "optime lag ms",
            LagMethod::OptimeAge => "optimeDate age ms",
        }
    }
}

/// One lag sample: `None` when the view said NULL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    /// Phase name.
    pub phase: String,
    /// Replica name.
    pub replica: String,
    /// How it was measured.
    pub method: LagMethod,
    /// Milliseconds (bytes for [`LagMethod::Bytes`]).
    pub value: Option<f64>,
}

/// Lag of one replica in one phase by one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseLag {
    /// Phase name.
    pub phase: String,
    /// Replica name.
    pub replica: String,
    /// How it was measured.
    pub method: LagMethod,
    /// Samples taken.
    pub samples: usize,
    /// Samples where the view said NULL.
    pub nulls: usize,
    /// The non-NULL samples.
    pub value: Option<Distribution>,
}

/// Reduces samples to one [`PhaseLag`] per (phase, replica, method), phases in `phase_order`.
pub fn reduce_lag(samples: &[LagSample], phase_order: &[String]) -> Vec<PhaseLag> {
    let mut groups: BTreeMap<(usize, String, LagMethod), Vec<Option<f64>>> = BTreeMap::new();
    for s in samples {
        let phase = phase_order
            .iter()
            .position(|p| *p == s.phase)
            .unwrap_or(usize::MAX);
        groups
            .entry((phase, s.replica.clone(), s.method))
            .or_default()
            .push(s.value);
    }
    groups
        .into_iter()
        .map(|((phase, replica, method), values)| PhaseLag {
            phase: phase_order.get(phase).cloned().unwrap_or_default(),
            replica,
            method,
            samples: values.len(),
            nulls: values.iter().filter(|v| v.is_none()).count(),
            value: Distribution::of(values.into_iter().flatten()),
        })
        .collect()
}

/// What a runner observed besides the client history, for [`summarize`].
#[derive(Debug, Clone, Default)]
pub struct FailoverObservation {
    /// When the fault fired, microseconds.
    pub fault_at_us: Option<u64>,
    /// The primary when it fired.
    pub old_primary: Option<String>,
    /// The primary at the end.
    pub new_primary: Option<String>,
    /// When the DCS leader key was first seen expired or held by another node after the fault.
    pub detected_at_us: Option<u64>,
    /// Write ids present on the final primary.
    pub surviving_ids: BTreeSet<u64>,
    /// The run's end, microseconds.
    pub end_us: u64,
}

/// The client number the every-node prober writes as.
pub const PROBE_CLIENT: u32 = 255;

/// A write id unique across runs on one table: run (bits 40..), client (32..40), count (..32).
pub fn compose_write_id(run: u64, client: u32, n: u64) -> u64 {
    debug_assert!(client <= PROBE_CLIENT && n < 1 << 32 && run < 1 << 23);
    run << 40 | u64::from(client) << 32 | n
}

/// A write as the history records it: a `put` of its id to key 0, answered by `node`.
pub fn write_op(
    client: u32,
    id: u64,
    (invoke_us, complete_us): (u64, u64),
    outcome: Outcome,
    node: String,
) -> Op {
    Op {
        id: 0,
        client,
        kind: OpKind::Put { key: 0, value: id },
        invoke_us,
        complete_us,
        outcome,
        node: Some(node),
    }
}

/// The id a write carries in the history (its `put` value), if the op is a write.
pub fn write_id(kind: &OpKind) -> Option<u64> {
    match *kind {
        OpKind::Put { value, .. } => Some(value),
        _ => None,
    }
}

/// What every primary–replica system's failover measures from a history, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverFigures {
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Acknowledged write ids missing from the final primary, in history order.
    pub lost_ids: Vec<u64>,
    /// The old primary's last acknowledgement after the fault.
    pub old_last_us: Option<u64>,
    /// The first acknowledgement by another node after the fault.
    pub new_first_us: Option<u64>,
    /// Latency of acknowledged writes before the fault (all of them without one), milliseconds.
    pub write_latency_ms: Option<Distribution>,
    /// Longest stretch with no acknowledged write, from the fault on.
    pub write_unavailable_us: u64,
}

impl FailoverFigures {
    /// Measures `history` against what the runner saw.
    pub fn of(history: &History, seen: &FailoverObservation) -> FailoverFigures {
        let fault = seen.fault_at_us;
        let acked: Vec<_> = history.ops.iter().filter(|op| op.is_ok_write()).collect();
        let lost_ids: Vec<u64> = acked
            .iter()
            .filter_map(|op| write_id(&op.kind))
            .filter(|id| !seen.surviving_ids.contains(id))
            .collect();
        let after = |t: u64| fault.is_some_and(|f| t >= f);
        let by_old = |op: &&&Op| op.node.is_some() && op.node == seen.old_primary;
        let old_last_us = acked
            .iter()
            .filter(|op| after(op.complete_us) && by_old(op))
            .map(|op| op.complete_us)
            .max();
        let new_first_us = acked
            .iter()
            .filter(|op| after(op.complete_us) && !by_old(op))
            .map(|op| op.complete_us)
            .min();
        let write_latency_ms = Distribution::of(
            acked
                .iter()
                .filter(|op| fault.is_none_or(|f| op.complete_us < f))
                .map(|op| (op.complete_us - op.invoke_us) as f64 / 1000.0),
        );
        FailoverFigures {
            acked_writes: acked.len() as u64,
            lost_ids,
            old_last_us,
            new_first_us,
            write_latency_ms,
            write_unavailable_us: fault.map_or(0, |f| history.longest_write_gap_us(f, seen.end_us)),
        }
    }

    /// Milliseconds from the fault to `t`.
    pub fn since_fault_ms(seen: &FailoverObservation, t: Option<u64>) -> Option<u64> {
        seen.fault_at_us
            .zip(t)
            .map(|(f, t)| t.saturating_sub(f) / 1000)
    }

    /// How long the old primary and another both acknowledged writes after the fault, ms.
    pub fn dual_primary_ms(&self) -> u64 {
        match (self.old_last_us, self.new_first_us) {
            (Some(old), Some(new)) if old > new => (old - new) / 1000,
            _ => 0,
        }
    }
}

/// Measures one run from its history and observations.
pub fn summarize(
    scenario: &str,
    mode: ReplicationMode,
    seed: u64,
    nodes: usize,
    history: &History,
    seen: &FailoverObservation,
) -> PgRunSummary {
    let figures = FailoverFigures::of(history, seen);
    let since = |t| FailoverFigures::since_fault_ms(seen, t);
    PgRunSummary {
        scenario: scenario.to_string(),
        mode,
        seed,
        nodes,
        fault_at_ms: seen.fault_at_us.map(|f| f / 1000),
        old_primary: seen.old_primary.clone(),
        new_primary: seen.new_primary.clone(),
        detection_ms: since(seen.detected_at_us),
        failover_ms: since(figures.new_first_us),
        write_unavailable_ms: figures.write_unavailable_us / 1000,
        old_primary_acked_for_ms: since(figures.old_last_us),
        dual_primary_ms: figures.dual_primary_ms(),
        acked_writes: figures.acked_writes,
        lost_writes: figures.lost_ids.len() as u64,
        lost_ids: figures.lost_ids.into_iter().take(50).collect(),
        write_latency_ms: figures.write_latency_ms,
        lag: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, invoke_ms: u64, complete_ms: u64, node: &str, ok: bool) -> Op {
        Op {
            id,
            client: 0,
            kind: OpKind::Put { key: 0, value: id },
            invoke_us: invoke_ms * 1000,
            complete_us: complete_ms * 1000,
            outcome: if ok {
                Outcome::Ok {
                    read: None,
                    swapped: None,
                }
            } else {
                Outcome::Fail
            },
            node: Some(node.to_string()),
        }
    }

    #[test]
    fn lost_writes_failover_and_split_brain_come_from_the_history() {
        let history = History {
            ops: vec![
                write(1, 0, 2, "n1", true),
                write(2, 90, 95, "n1", true),
                write(3, 100, 105, "n1", true),
                write(4, 200, 300, "n2", false),
                write(5, 400, 410, "n2", true),
                write(6, 420, 430, "n1", true),
            ],
        };
        let seen = FailoverObservation {
            fault_at_us: Some(100_000),
            old_primary: Some("n1".into()),
            new_primary: Some("n2".into()),
            detected_at_us: Some(350_000),
            surviving_ids: [1, 2, 5].into(),
            end_us: 500_000,
        };
        let s = summarize("x", ReplicationMode::Async, 1, 3, &history, &seen);
        assert_eq!(s.acked_writes, 5);
        assert_eq!((s.lost_writes, s.lost_ids.clone()), (2, vec![3, 6]));
        assert_eq!(s.detection_ms, Some(250));
        assert_eq!(s.failover_ms, Some(310));
        assert_eq!(s.old_primary_acked_for_ms, Some(330));
        assert_eq!(s.dual_primary_ms, 20);
        assert!(s.split_brain());
        assert_eq!(s.write_unavailable_ms, 305);
        assert_eq!(s.write_latency_ms.unwrap().max, 5.0);
    }

    #[test]
    fn lag_is_reduced_per_phase_replica_and_method_counting_nulls() {
        let sample = |phase: &str, value| LagSample {
            phase: phase.into(),
            replica: "n2".into(),
            method: LagMethod::ReplayLag,
            value,
        };
        let samples = vec![
            sample("steady", Some(3.0)),
            sample("idle", None),
            sample("idle", None),
            sample("steady", Some(5.0)),
        ];
        let lag = reduce_lag(&samples, &["idle".into(), "steady".into()]);
        assert_eq!(lag.len(), 2);
        assert_eq!((lag[0].phase.as_str(), lag[0].nulls), ("idle", 2));
        assert!(lag[0].value.is_none());
        assert_eq!(lag[1].value.unwrap().max, 5.0);
    }
}
