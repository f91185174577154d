//! Measurements of a MongoDB replica set under failover and load: what `mongo-primary-kill`,
//! `mongo-isolate-primary`, `mongo-stepdown` and `mongo-lag` report, computed the same way from a
//! simulated run and a real one.
//!
//! Writes are inserts whose `_id` is the write's id, recorded as `put`s in the history (see
//! [`crate::replication::write_op`]); reads ask the primary for the newest id it shows at the
//! readers' read concern and are recorded as `get`s of key 0. After the run, the ids on the final
//! primary decide which acknowledged writes survived and which reads saw a write that did not.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::history::{History, OpKind, Outcome};
use crate::measure::{Distribution, Metric};
use crate::mongodb::WriteConcern;
use crate::node::NodeId;
use crate::replication::{FailoverFigures, FailoverObservation, PhaseLag};

/// One run of a MongoDB scenario, as both the simulator and the real driver report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MongoRunSummary {
    /// Scenario name.
    pub scenario: String,
    /// The writers' write concern in this run.
    pub write_concern: WriteConcern,
    /// Seed (simulator) or run number (real replica set).
    pub seed: u64,
    /// Members of the set.
    pub members: usize,
    /// When the first fault fired, in milliseconds since the start.
    pub fault_at_ms: Option<u64>,
    /// The primary when the fault fired.
    pub old_primary: Option<String>,
    /// The primary at the end.
    pub new_primary: Option<String>,
    /// From the fault to another member (or a newer term) answering `hello` as primary.
    pub election_ms: Option<u64>,
    /// From the fault to the first write acknowledged by a different primary.
    pub failover_ms: Option<u64>,
    /// Longest client-visible stretch with no acknowledged write, from the fault on.
    pub write_unavailable_ms: u64,
    /// After the fault, how long the old primary went on acknowledging writes.
    pub old_primary_acked_for_ms: Option<u64>,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Acknowledged writes missing from the final primary (rolled back, for `w:1`).
    pub lost_writes: u64,
    /// Ids of the lost writes (at most 50 listed).
    pub lost_ids: Vec<u64>,
    /// Acknowledged `w:"majority"` writes missing from the final primary: always 0, or MongoDB's
    /// promise is broken.
    pub majority_acked_lost: u64,
    /// Oplog entries rolled back by members rejoining the set, as the members reported them
    /// (the simulator knows; a real run leaves it out).
    pub rolled_back_entries: Option<u64>,
    /// Reads answered, and reads that returned a write missing from the final primary (a dirty
    /// read; never with read concern `majority`).
    pub reads: u64,
    /// See [`MongoRunSummary::reads`].
    pub reads_of_lost_writes: u64,
    /// Latency of acknowledged writes before the fault (all of them without one), milliseconds.
    pub write_latency_ms: Option<Distribution>,
    /// Secondary lag per phase, member and method (`mongo-lag`).
    pub lag: Vec<PhaseLag>,
    /// Protocol invariants broken during the run (at most one primary per term; no
    /// majority-committed entry rolled back), as the model saw them; empty when all held.
    pub invariant_violations: Vec<String>,
}

impl MongoRunSummary {
    /// What `run --runs N`, `sweep` and `compare` report for MongoDB scenarios, in order.
    pub const METRICS: [Metric<MongoRunSummary>; 8] = [
        Metric {
            name: "fault to new primary elected (ms)",
            of: |s| s.election_ms.map(|v| v as f64),
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
            name: "acknowledged writes lost",
            of: |s| Some(s.lost_writes as f64),
        },
        Metric {
            name: "oplog entries rolled back",
            of: |s| s.rolled_back_entries.map(|v| v as f64),
        },
        Metric {
            name: "reads of writes later lost",
            of: |s| Some(s.reads_of_lost_writes as f64),
        },
        Metric {
            name: "write latency p50 (ms)",
            of: |s| s.write_latency_ms.map(|d| d.p50),
        },
    ];

    /// The first broken safety property, named: a protocol invariant, a lost majority write, or
    /// a majority read of a write that was then lost.
    pub fn why_unsafe(&self, majority_reads: bool) -> Option<String> {
        if let Some(broken) = self.invariant_violations.first() {
            return Some(broken.clone());
        }
        if self.majority_acked_lost > 0 {
            return Some(format!(
                "{} write(s) acknowledged with w:majority are missing from the final primary",
                self.majority_acked_lost
            ));
        }
        if majority_reads && self.reads_of_lost_writes > 0 {
            return Some(format!(
                "{} read(s) with read concern majority returned a write that was then lost",
                self.reads_of_lost_writes
            ));
        }
        None
    }
}

/// What a MongoDB runner observed besides the client history.
#[derive(Debug, Clone, Default)]
pub struct ReplSetObservation {
    /// The fault, the primaries, the surviving ids, the end (as for Postgres; its
    /// `detected_at_us` is unused).
    pub failover: FailoverObservation,
    /// When the watcher first saw a new primary after the fault, microseconds.
    pub elected_at_us: Option<u64>,
    /// When the old primary was seen primary again in a newer term (a priority takeover, say):
    /// its acknowledgements from then on are not the old term's.
    pub old_primary_again_at_us: Option<u64>,
    /// Oplog entries rolled back, when the runner can know.
    pub rolled_back_entries: Option<u64>,
    /// Invariants the model saw broken.
    pub invariant_violations: Vec<String>,
}

/// From the watcher's record of who answered `hello` as primary — (µs, member, term), one entry
/// per change — and the primary when the fault fired: when a new primary (another member, or a
/// newer term) was first seen after the fault, and when the old one was seen primary again in a
/// newer term. The simulator and the real driver measure both through this.
pub fn primary_changes(
    seen: &[(u64, NodeId, u64)],
    fault_at_us: Option<u64>,
    old: Option<(NodeId, u64)>,
) -> (Option<u64>, Option<u64>) {
    let first_after = |pred: &dyn Fn(NodeId, u64) -> bool| {
        let f = fault_at_us?;
        seen.iter()
            .find(|(at, id, term)| *at >= f && pred(*id, *term))
            .map(|(at, _, _)| *at)
    };
    let elected = first_after(&|id, term| old.is_none_or(|(o, t)| id != o || term > t));
    let old_again = first_after(&|id, term| old.is_some_and(|(o, t)| id == o && term > t));
    (elected, old_again)
}

/// The id a read returned, if it returned one.
fn read_id(kind: &OpKind, outcome: &Outcome) -> Option<u64> {
    match (kind, outcome) {
        (OpKind::Get { .. }, Outcome::Ok { read, .. }) => read.flatten(),
        _ => None,
    }
}

/// The old primary's last acknowledgement after the fault and before it was primary again.
fn old_term_last_ack(history: &History, seen: &ReplSetObservation) -> Option<u64> {
    let fault = seen.failover.fault_at_us?;
    let again = seen.old_primary_again_at_us.unwrap_or(u64::MAX);
    history
        .ops
        .iter()
        .filter(|op| op.is_ok_write() && op.node.is_some() && op.node == seen.failover.old_primary)
        .map(|op| op.complete_us)
        .filter(|t| (fault..again).contains(t))
        .max()
}

/// Measures one run from its history and observations.
pub fn summarize(
    (scenario, write_concern, seed, members): (&str, WriteConcern, u64, usize),
    history: &History,
    seen: &ReplSetObservation,
) -> MongoRunSummary {
    let failover = &seen.failover;
    let figures = FailoverFigures::of(history, failover);
    let since = |t| FailoverFigures::since_fault_ms(failover, t);
    let lost: BTreeSet<u64> = figures.lost_ids.iter().copied().collect();
    let written: BTreeSet<u64> = history
        .ops
        .iter()
        .filter_map(|op| crate::replication::write_id(&op.kind))
        .collect();
    let reads: Vec<u64> = history
        .ops
        .iter()
        .filter_map(|op| read_id(&op.kind, &op.outcome))
        .collect();
    // A read of an id nobody lost can still name a write whose ack never came (its outcome
    // unknown): it counts as lost only when that id is missing from the final primary too.
    let gone = |id: &u64| written.contains(id) && !failover.surviving_ids.contains(id);
    MongoRunSummary {
        scenario: scenario.to_string(),
        write_concern,
        seed,
        members,
        fault_at_ms: failover.fault_at_us.map(|f| f / 1000),
        old_primary: failover.old_primary.clone(),
        new_primary: failover.new_primary.clone(),
        election_ms: since(seen.elected_at_us),
        failover_ms: since(figures.new_first_us),
        write_unavailable_ms: figures.write_unavailable_us / 1000,
        old_primary_acked_for_ms: since(old_term_last_ack(history, seen)),
        acked_writes: figures.acked_writes,
        lost_writes: lost.len() as u64,
        majority_acked_lost: match write_concern {
            WriteConcern::Majority => lost.len() as u64,
            WriteConcern::W1 => 0,
        },
        lost_ids: figures.lost_ids.into_iter().take(50).collect(),
        rolled_back_entries: seen.rolled_back_entries,
        reads: reads.len() as u64,
        reads_of_lost_writes: reads.iter().filter(|id| gone(id)).count() as u64,
        write_latency_ms: figures.write_latency_ms,
        lag: vec![],
        invariant_violations: seen.invariant_violations.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn op(id: u64, kind: OpKind, (invoke_ms, complete_ms): (u64, u64), node: &str) -> Op {
        Op {
            id,
            client: 0,
            kind,
            invoke_us: invoke_ms * 1000,
            complete_us: complete_ms * 1000,
            outcome: Outcome::Ok {
                read: match kind {
                    OpKind::Get { .. } => Some(Some(3)),
                    _ => None,
                },
                swapped: None,
            },
            node: Some(node.to_string()),
        }
    }

    #[test]
    fn lost_majority_writes_and_dirty_reads_are_named() {
        let put = |v| OpKind::Put { key: 0, value: v };
        let history = History {
            ops: vec![
                op(1, put(1), (0, 2), "n1"),
                op(2, put(3), (100, 105), "n1"),
                op(3, OpKind::Get { key: 0 }, (106, 107), "n1"),
                op(4, put(4), (9000, 9010), "n2"),
            ],
        };
        let seen = ReplSetObservation {
            failover: FailoverObservation {
                fault_at_us: Some(100_000),
                old_primary: Some("n1".into()),
                new_primary: Some("n2".into()),
                surviving_ids: [1, 4].into(),
                end_us: 10_000_000,
                ..FailoverObservation::default()
            },
            elected_at_us: Some(8_000_000),
            old_primary_again_at_us: None,
            rolled_back_entries: Some(2),
            invariant_violations: vec![],
        };
        let w1 = summarize(("x", WriteConcern::W1, 1, 3), &history, &seen);
        assert_eq!((w1.lost_writes, w1.lost_ids.clone()), (1, vec![3]));
        assert_eq!((w1.reads, w1.reads_of_lost_writes), (1, 1));
        assert_eq!((w1.election_ms, w1.failover_ms), (Some(7900), Some(8910)));
        assert_eq!(w1.why_unsafe(false), None, "w:1 may lose writes");
        assert!(w1
            .why_unsafe(true)
            .unwrap()
            .contains("read concern majority"));
        let majority = summarize(("x", WriteConcern::Majority, 1, 3), &history, &seen);
        assert_eq!(majority.majority_acked_lost, 1);
        assert!(majority.why_unsafe(false).unwrap().contains("w:majority"));
    }
}
