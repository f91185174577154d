//! The oplog: entries ordered by optime, a member's written and applied positions in it, and the
//! search for the common point with a sync source that rollback needs.

use serde::{Deserialize, Serialize};

/// An oplog position: the term of the primary that wrote the entry, then its timestamp. Optimes
/// order by term first (protocol version 1), so a newer primary's entries sort after every entry
/// of an older term, whatever the clocks say.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct OpTime {
    /// The primary's term.
    pub term: u64,
    /// When the primary wrote it, in microseconds of the (simulated) wall clock; unique per
    /// primary, so an optime names one entry.
    pub ts_us: u64,
}

impl OpTime {
    /// `optimeDate` as `replSetGetStatus` reports it: the timestamp's whole seconds, in ms.
    pub fn optime_date_ms(self) -> u64 {
        self.ts_us / 1_000_000 * 1000
    }
}

impl std::fmt::Display for OpTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(t{}, {:.3}s)", self.term, self.ts_us as f64 / 1e6)
    }
}

/// One oplog entry: an insert of a document whose `_id` is `write_id`, or a no-op (a new
/// primary's first entry, the idle primary's periodic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position.
    pub optime: OpTime,
    /// The inserted document's id; `None` for a no-op.
    pub write_id: Option<u64>,
    /// A heartbeat document's sequence number, for the lag measurements.
    pub heartbeat: Option<u64>,
}

/// A member's oplog: what it has written (durably: writes are journaled as they are written) and
/// how far it has applied, so reads at read concern `local` see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Oplog {
    entries: Vec<Entry>,
    applied: usize,
}

impl Oplog {
    /// The newest written optime (the zero optime when empty).
    pub fn last_written(&self) -> OpTime {
        self.entries.last().map_or(OpTime::default(), |e| e.optime)
    }

    /// The newest applied optime.
    pub fn last_applied(&self) -> OpTime {
        match self.applied {
            0 => OpTime::default(),
            n => self.entries[n - 1].optime,
        }
    }

    /// Entries written but not yet applied.
    pub fn unapplied(&self) -> usize {
        self.entries.len() - self.applied
    }

    /// Appends an entry; optimes only grow.
    pub fn append(&mut self, entry: Entry) {
        assert!(
            entry.optime > self.last_written(),
            "oplog order: {} after {}",
            entry.optime,
            self.last_written()
        );
        self.entries.push(entry);
    }

    /// Applies up to `n` written entries; returns how many were applied.
    pub fn apply(&mut self, n: usize) -> usize {
        let n = n.min(self.unapplied());
        self.applied += n;
        n
    }

    /// Whether an entry with exactly this optime is in the oplog (the zero optime always is).
    pub fn contains(&self, optime: OpTime) -> bool {
        optime == OpTime::default()
            || self
                .entries
                .binary_search_by(|e| e.optime.cmp(&optime))
                .is_ok()
    }

    /// Up to `max` entries after `after` (which must be in the oplog).
    pub fn after(&self, after: OpTime, max: usize) -> Vec<Entry> {
        let from = self.entries.partition_point(|e| e.optime <= after);
        self.entries[from..].iter().take(max).copied().collect()
    }

    /// The optimes after `after`, for a member looking for its common point with this oplog.
    pub fn optimes_after(&self, after: OpTime) -> Vec<OpTime> {
        let from = self.entries.partition_point(|e| e.optime <= after);
        self.entries[from..].iter().map(|e| e.optime).collect()
    }

    /// Rolls back to the newest entry that `source` (optimes after `base`, which both oplogs
    /// share) also has: removes and returns every later entry.
    pub fn roll_back_to_common_point(&mut self, base: OpTime, source: &[OpTime]) -> Vec<Entry> {
        let common = self
            .entries
            .iter()
            .rev()
            .map(|e| e.optime)
            .find(|t| *t <= base || source.binary_search(t).is_ok())
            .unwrap_or_default();
        let keep = self.entries.partition_point(|e| e.optime <= common);
        self.applied = self.applied.min(keep);
        self.entries.split_off(keep)
    }

    /// The newest applied entry at or before `upto` that is a heartbeat document, and the
    /// newest applied insert's id at or before `upto` (what a read sees).
    pub fn visible(&self, upto: OpTime) -> (Option<(u64, OpTime)>, Option<u64>) {
        let end = self.entries[..self.applied].partition_point(|e| e.optime <= upto);
        let seen = &self.entries[..end];
        let heartbeat = seen
            .iter()
            .rev()
            .find_map(|e| e.heartbeat.map(|h| (h, e.optime)));
        let newest = seen.iter().rev().find_map(|e| e.write_id);
        (heartbeat, newest)
    }

    /// Every written entry's write id (the documents this member holds).
    pub fn write_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().filter_map(|e| e.write_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, ts_us: u64, id: u64) -> Entry {
        Entry {
            optime: OpTime { term, ts_us },
            write_id: Some(id),
            heartbeat: None,
        }
    }

    #[test]
    fn rollback_removes_what_the_source_lacks_after_the_common_point() {
        let mut old = Oplog::default();
        for (t, ts, id) in [(1, 10, 1), (1, 20, 2), (1, 30, 3), (1, 40, 4)] {
            old.append(entry(t, ts, id));
        }
        old.apply(4);
        // The new primary has (1,10), (1,20) and then its own term-2 entries.
        let source = [OpTime { term: 1, ts_us: 20 }, OpTime { term: 2, ts_us: 25 }];
        let base = OpTime { term: 1, ts_us: 10 };
        let gone = old.roll_back_to_common_point(base, &source);
        assert_eq!(
            gone.iter().map(|e| e.write_id.unwrap()).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(old.last_written(), OpTime { term: 1, ts_us: 20 });
        assert_eq!(old.last_applied(), old.last_written());
        assert!(old.contains(base) && !old.contains(OpTime { term: 1, ts_us: 30 }));
    }

    #[test]
    fn reads_see_applied_entries_only() {
        let mut log = Oplog::default();
        log.append(entry(1, 10, 7));
        log.append(entry(1, 20, 8));
        log.apply(1);
        assert_eq!(log.visible(OpTime { term: 9, ts_us: 0 }).1, Some(7));
        assert_eq!(log.optimes_after(OpTime { term: 1, ts_us: 10 }).len(), 1);
        assert_eq!(
            OpTime {
                term: 1,
                ts_us: 2_500_000
            }
            .optime_date_ms(),
            2000
        );
    }
}
