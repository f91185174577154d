//! What a sharded cluster's run measured, computed one way for every runner: the migrations (how
//! many, how long, bytes moved), the write pause a critical section causes (latency of writes that
//! overlapped one against the rest), stale-config retries, orphaned documents and how long they
//! stayed, and the checks on the reads through routers.
//!
//! Writes are `put`s in the [`History`] (the value is the document's `_id`, the key its shard-key
//! value's number); reads return sets of ids, so they are [`ReadRecord`]s beside it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{History, Key, OpKind, Outcome};
use crate::measure::Metric;
use crate::stats::Sample;

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationOutcome {
    /// The config servers record the recipient as the owner.
    Committed,
    /// It stopped before its commit; the donor still owns the chunk.
    Aborted,
    /// Still under way when the run ended.
    Running,
}

/// One chunk migration, as the donor saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// 1 for the first migration of the run.
    pub number: u64,
    /// The chunk (1-based, in key order).
    pub chunk: u32,
    /// Donor shard (`s1` is 0).
    pub from: usize,
    /// Recipient shard.
    pub to: usize,
    /// When the donor accepted it, µs since the workload started.
    pub started_us: u64,
    /// When the donor entered its critical section, if it did.
    pub critical_from_us: Option<u64>,
    /// When it left it.
    pub critical_to_us: Option<u64>,
    /// When it ended (committed or aborted).
    pub ended_us: Option<u64>,
    /// How it ended.
    pub outcome: MigrationOutcome,
    /// Bytes the recipient cloned and caught up on.
    pub bytes: u64,
    /// Why it aborted, if it did.
    pub why: Option<String>,
}

/// A read through a router: the documents with one shard-key value, from the owning shard
/// (`targeted`) or from every shard (a query without the shard key, merged by the router).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRecord {
    /// The reading client.
    pub client: u32,
    /// The shard-key value's number (as in the writes' `key`).
    pub key: Key,
    /// Sent to every shard.
    pub broadcast: bool,
    /// When it was sent, µs.
    pub invoke_us: u64,
    /// When it was answered, µs.
    pub complete_us: u64,
    /// The ids returned, as merged by the router (a repeat means two shards returned the
    /// same document); `None` when the read failed.
    pub ids: Option<Vec<u64>>,
}

/// How long a range stayed orphaned on a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrphanSpan {
    /// The shard holding the copy it no longer owns.
    pub shard: usize,
    /// The chunk.
    pub chunk: u32,
    /// Documents (workload documents; preloaded bytes are not counted).
    pub docs: u64,
    /// When it became an orphan, µs.
    pub from_us: u64,
    /// When the range deleter removed it (`None`: still there at the end).
    pub deleted_us: Option<u64>,
}

/// p50, p99 and max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl LatencyMs {
    fn of(values: &[f64]) -> Option<LatencyMs> {
        let sample = Sample::of(values.iter().copied())?;
        Some(LatencyMs {
            count: values.len(),
            p50: sample.quantile(0.5),
            p99: sample.quantile(0.99),
            max: sample.quantile(1.0),
        })
    }
}

/// What one run of a sharded scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedRunSummary {
    /// Scenario name.
    pub scenario: String,
    /// Seed (simulator) or run number (real).
    pub seed: u64,
    /// Migrations the donors accepted.
    pub migrations_started: u64,
    /// Of them, committed.
    pub migrations_committed: u64,
    /// Of them, aborted.
    pub migrations_aborted: u64,
    /// Duration of committed migrations, ms.
    pub migration_ms: Option<LatencyMs>,
    /// Longest critical section, ms.
    pub critical_section_ms_max: Option<u64>,
    /// Bytes moved by committed and aborted migrations.
    pub bytes_moved: u64,
    /// Latency of acknowledged writes that overlapped a critical section of their chunk.
    pub write_ms_inside: Option<LatencyMs>,
    /// Latency of the other acknowledged writes.
    pub write_ms_outside: Option<LatencyMs>,
    /// Acknowledged writes.
    pub acked_writes: u64,
    /// Writes with an unknown outcome (timed out, or the router gave up).
    pub unknown_writes: u64,
    /// Acknowledged writes no owning shard holds at the end.
    pub lost_writes: u64,
    /// Times a router was told its routing table was stale and retried.
    pub stale_config_retries: u64,
    /// Most orphaned documents at any moment.
    pub orphans_max: u64,
    /// Orphaned documents left at the end.
    pub orphans_left: u64,
    /// Longest time from a range becoming orphaned to its deletion, ms.
    pub orphan_ms_max: Option<u64>,
    /// Reads through routers.
    pub reads: u64,
    /// Reads that broke a rule (missed an acknowledged write, returned a document twice or one
    /// never written).
    pub bad_reads: u64,
    /// The first few bad reads, described.
    pub bad_read_examples: Vec<String>,
    /// Invariants seen broken (ownership at the end, chunk versions going back, the config
    /// servers' Raft safety).
    pub invariant_violations: Vec<String>,
}

impl ShardedRunSummary {
    /// Every metric, in table order.
    pub const METRICS: [Metric<ShardedRunSummary>; 12] = [
        Metric {
            name: "migrations committed",
            of: |s| Some(s.migrations_committed as f64),
        },
        Metric {
            name: "migrations aborted",
            of: |s| Some(s.migrations_aborted as f64),
        },
        Metric {
            name: "migration p50 (ms)",
            of: |s| s.migration_ms.map(|l| l.p50),
        },
        Metric {
            name: "longest critical section (ms)",
            of: |s| s.critical_section_ms_max.map(|v| v as f64),
        },
        Metric {
            name: "MiB moved",
            of: |s| Some(s.bytes_moved as f64 / (1 << 20) as f64),
        },
        Metric {
            name: "write p99 outside critical sections (ms)",
            of: |s| s.write_ms_outside.map(|l| l.p99),
        },
        Metric {
            name: "write max inside critical sections (ms)",
            of: |s| s.write_ms_inside.map(|l| l.max),
        },
        Metric {
            name: "stale-config retries",
            of: |s| Some(s.stale_config_retries as f64),
        },
        Metric {
            name: "orphaned documents (peak)",
            of: |s| Some(s.orphans_max as f64),
        },
        Metric {
            name: "orphaned until deleted, longest (ms)",
            of: |s| s.orphan_ms_max.map(|v| v as f64),
        },
        Metric {
            name: "acknowledged writes lost",
            of: |s| Some(s.lost_writes as f64),
        },
        Metric {
            name: "bad reads",
            of: |s| Some(s.bad_reads as f64),
        },
    ];

    /// Why this run broke the cluster's promises, if it did: a lost acknowledged write, a bad
    /// read or a broken invariant.
    pub fn why_unsafe(&self) -> Option<String> {
        if let Some(first) = self.invariant_violations.first() {
            return Some(format!("invariant broken: {first}"));
        }
        if self.lost_writes > 0 {
            return Some(format!(
                "{} acknowledged write(s) owned by no shard at the end",
                self.lost_writes
            ));
        }
        if let Some(first) = self.bad_read_examples.first() {
            return Some(format!("{} bad read(s), e.g. {first}", self.bad_reads));
        }
        None
    }
}

/// What the runner saw beyond the client history.
#[derive(Debug, Clone, Default)]
pub struct ShardedObservation {
    /// Every migration.
    pub migrations: Vec<MigrationRecord>,
    /// Every range that was orphaned.
    pub orphans: Vec<OrphanSpan>,
    /// The reads.
    pub reads: Vec<ReadRecord>,
    /// Stale-config retries counted by the routers.
    pub stale_config_retries: u64,
    /// Ids each owning shard holds at the end, for the documents' chunks it owns.
    pub owned_ids: BTreeMap<u64, usize>,
    /// Ids held by more than one owner at the end (an ownership invariant broken).
    pub doubly_owned: Vec<u64>,
    /// Invariants seen broken during the run.
    pub invariant_violations: Vec<String>,
    /// Which chunk each written key belongs to (for inside/outside critical sections).
    pub chunk_of_key: BTreeMap<Key, u32>,
}

/// Computes the summary from the history and what the runner saw.
pub fn summarize(
    scenario: &str,
    seed: u64,
    history: &History,
    seen: &ShardedObservation,
) -> ShardedRunSummary {
    let mut violations = seen.invariant_violations.clone();
    for id in seen.doubly_owned.iter().take(5) {
        violations.push(format!("document {id} is owned by two shards at the end"));
    }
    let committed: Vec<&MigrationRecord> = seen
        .migrations
        .iter()
        .filter(|m| m.outcome == MigrationOutcome::Committed)
        .collect();
    let durations: Vec<f64> = committed
        .iter()
        .filter_map(|m| Some((m.ended_us? - m.started_us) as f64 / 1000.0))
        .collect();
    let critical_ms = seen
        .migrations
        .iter()
        .filter_map(|m| Some((m.critical_to_us? - m.critical_from_us?) / 1000))
        .max();
    let (inside, outside) = write_latencies(history, seen);
    let acked: Vec<u64> = history
        .ops
        .iter()
        .filter(|op| op.is_ok_write())
        .filter_map(|op| match op.kind {
            OpKind::Put { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let lost = acked
        .iter()
        .filter(|id| !seen.owned_ids.contains_key(id))
        .count() as u64;
    let bad = bad_reads(history, &seen.reads);
    ShardedRunSummary {
        scenario: scenario.to_string(),
        seed,
        migrations_started: seen.migrations.len() as u64,
        migrations_committed: committed.len() as u64,
        migrations_aborted: seen
            .migrations
            .iter()
            .filter(|m| m.outcome == MigrationOutcome::Aborted)
            .count() as u64,
        migration_ms: LatencyMs::of(&durations),
        critical_section_ms_max: critical_ms,
        bytes_moved: seen.migrations.iter().map(|m| m.bytes).sum(),
        write_ms_inside: LatencyMs::of(&inside),
        write_ms_outside: LatencyMs::of(&outside),
        acked_writes: acked.len() as u64,
        unknown_writes: history
            .ops
            .iter()
            .filter(|op| op.kind.is_write() && op.outcome == Outcome::Info)
            .count() as u64,
        lost_writes: lost,
        stale_config_retries: seen.stale_config_retries,
        orphans_max: orphans_peak(&seen.orphans),
        orphans_left: seen
            .orphans
            .iter()
            .filter(|o| o.deleted_us.is_none())
            .map(|o| o.docs)
            .sum(),
        orphan_ms_max: seen
            .orphans
            .iter()
            .filter_map(|o| Some((o.deleted_us? - o.from_us) / 1000))
            .max(),
        reads: seen.reads.len() as u64,
        bad_reads: bad.len() as u64,
        bad_read_examples: bad.into_iter().take(5).collect(),
        invariant_violations: violations,
    }
}

/// Latencies (ms) of acknowledged writes that overlapped a critical section of their chunk, and
/// of the rest.
fn write_latencies(history: &History, seen: &ShardedObservation) -> (Vec<f64>, Vec<f64>) {
    let mut sections: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for m in &seen.migrations {
        if let Some(from) = m.critical_from_us {
            let to = m.critical_to_us.unwrap_or(u64::MAX);
            sections.entry(m.chunk).or_default().push((from, to));
        }
    }
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for op in history.ops.iter().filter(|op| op.is_ok_write()) {
        let ms = (op.complete_us - op.invoke_us) as f64 / 1000.0;
        let chunk = seen.chunk_of_key.get(&op.kind.key());
        let overlaps = chunk.and_then(|c| sections.get(c)).is_some_and(|spans| {
            spans
                .iter()
                .any(|&(from, to)| op.invoke_us < to && op.complete_us > from)
        });
        if overlaps {
            inside.push(ms);
        } else {
            outside.push(ms);
        }
    }
    (inside, outside)
}

/// The most orphaned documents at one moment.
fn orphans_peak(spans: &[OrphanSpan]) -> u64 {
    let mut changes: Vec<(u64, i64)> = Vec::new();
    for o in spans {
        changes.push((o.from_us, o.docs as i64));
        if let Some(to) = o.deleted_us {
            changes.push((to, -(o.docs as i64)));
        }
    }
    // At one instant, deletions count before new orphans: a peak is never two ranges at once
    // unless they overlapped in time.
    changes.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, delta) in changes {
        now += delta;
        peak = peak.max(now);
    }
    peak as u64
}

/// Reads that broke a rule: each must return every document of its key acknowledged before it
/// was sent, nothing whose insert had not been sent before it was answered, and no document
/// twice (a repeat is an orphan returned beside its owner's copy).
pub fn bad_reads(history: &History, reads: &[ReadRecord]) -> Vec<String> {
    let mut writes: BTreeMap<Key, Vec<(u64, u64, u64, bool)>> = BTreeMap::new();
    for op in &history.ops {
        if let OpKind::Put { key, value } = op.kind {
            let acked = matches!(op.outcome, Outcome::Ok { .. });
            writes
                .entry(key)
                .or_default()
                .push((value, op.invoke_us, op.complete_us, acked));
        }
    }
    let mut bad = Vec::new();
    for r in reads {
        let Some(ids) = &r.ids else { continue };
        let got: BTreeSet<u64> = ids.iter().copied().collect();
        let of_key = writes.get(&r.key).map(Vec::as_slice).unwrap_or(&[]);
        let how = if r.broadcast { "broadcast" } else { "targeted" };
        let at = format!(
            "{how} read of k{} at {:.3}s",
            r.key,
            r.invoke_us as f64 / 1e6
        );
        if got.len() < ids.len() {
            bad.push(format!(
                "{at} returned a document twice (an orphan beside its owner's copy)"
            ));
            continue;
        }
        if let Some(missed) = of_key
            .iter()
            .find(|w| w.3 && w.2 < r.invoke_us && !got.contains(&w.0))
        {
            bad.push(format!(
                "{at} missed document {}, acknowledged at {:.3}s",
                missed.0,
                missed.2 as f64 / 1e6
            ));
            continue;
        }
        let sent_before: BTreeSet<u64> = of_key
            .iter()
            .filter(|w| w.1 < r.complete_us)
            .map(|w| w.0)
            .collect();
        if let Some(phantom) = got.iter().find(|id| !sent_before.contains(id)) {
            bad.push(format!(
                "{at} returned document {phantom}, never written to that key"
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn put(key: Key, value: u64, invoke_us: u64, complete_us: u64, ok: bool) -> Op {
        Op {
            id: 0,
            client: 0,
            kind: OpKind::Put { key, value },
            invoke_us,
            complete_us,
            outcome: if ok {
                Outcome::Ok {
                    read: None,
                    swapped: None,
                }
            } else {
                Outcome::Info
            },
            node: None,
        }
    }

    fn read(key: Key, at: (u64, u64), ids: &[u64], broadcast: bool) -> ReadRecord {
        ReadRecord {
            client: 9,
            key,
            broadcast,
            invoke_us: at.0,
            complete_us: at.1,
            ids: Some(ids.to_vec()),
        }
    }

    #[test]
    fn reads_must_see_acknowledged_writes_and_nothing_twice_or_unwritten() {
        let history = History {
            ops: vec![put(1, 10, 0, 5, true), put(1, 11, 20, 30, false)],
        };
        let good = [
            read(1, (6, 8), &[10], false),
            read(1, (25, 28), &[10, 11], true),
        ];
        assert!(bad_reads(&history, &good).is_empty());
        let missed = read(1, (6, 8), &[], false);
        let twice = read(1, (40, 41), &[10, 10], true);
        let phantom = read(1, (6, 8), &[10, 11], false);
        let found = bad_reads(&history, &[missed, twice, phantom]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("missed document 10"));
        assert!(found[1].contains("twice"));
        assert!(found[2].contains("never written"));
    }

    #[test]
    fn orphan_peak_counts_overlapping_ranges_only() {
        let span = |docs, from_us, deleted_us| OrphanSpan {
            shard: 0,
            chunk: 1,
            docs,
            from_us,
            deleted_us,
        };
        assert_eq!(orphans_peak(&[span(5, 0, Some(10)), span(7, 10, None)]), 7);
        assert_eq!(orphans_peak(&[span(5, 0, Some(11)), span(7, 10, None)]), 12);
    }
}
