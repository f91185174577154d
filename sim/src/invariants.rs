//! Raft's safety properties, checked while the simulation runs.
//!
//! The [`Monitor`] sees every node's role changes and applied entries, in simulated-time order,
//! and records a violation the moment one of these breaks:
//!
//! - **Election safety**: at most one leader per term.
//! - **State machine safety**: every node applies the same entry at the same index — a committed
//!   entry is never changed.
//! - **Leader completeness**: a new leader's log holds every entry any node has applied — a
//!   committed entry is never lost.
//! - **Log matching** (checked over the final logs): if two logs hold an entry with the same index
//!   and term, they are identical up to that index.
//!
//! Violations are recorded rather than panicking so that a sweep can name the seed to replay;
//! reads are judged separately, by the linearizability checker over the client history.

use std::collections::BTreeMap;

use raft::storage::MemStorage;
use raft::Storage;

/// Records safety violations observed during one run.
#[derive(Debug, Default)]
pub struct Monitor {
    leader_by_term: BTreeMap<u64, u64>,
    /// index -> (term, fingerprint of the entry data, node that applied it first)
    applied: BTreeMap<u64, (u64, u64, u64)>,
    violations: Vec<String>,
}

fn fingerprint(data: &[u8]) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Monitor {
    /// A node became leader of `term`.
    pub fn on_leader(&mut self, node: u64, term: u64, log: &MemStorage) {
        if let Some(&other) = self.leader_by_term.get(&term) {
            if other != node {
                self.violations.push(format!(
                    "election safety: n{other} and n{node} both led term {term}"
                ));
            }
        }
        self.leader_by_term.insert(term, node);
        for (&index, &(entry_term, _, by)) in &self.applied {
            let held = log.term(index).ok();
            if held != Some(entry_term) {
                self.violations.push(format!(
                    "leader completeness: n{node} leads term {term} without entry {index} (term {entry_term}) that n{by} applied"
                ));
                break;
            }
        }
    }

    /// `node` applied the committed entry at `index`.
    pub fn on_applied(&mut self, node: u64, index: u64, term: u64, data: &[u8]) {
        let print = fingerprint(data);
        match self.applied.get(&index) {
            Some(&(t, p, by)) if (t, p) != (term, print) => self.violations.push(format!(
                "state machine safety: n{node} applied a different entry at index {index} (term {term}) than n{by} (term {t})"
            )),
            Some(_) => {}
            None => {
                self.applied.insert(index, (term, print, node));
            }
        }
    }

    /// Checks log matching across the final durable logs of all nodes (`logs[i]` is node i+1).
    pub fn check_log_matching(&mut self, logs: &[MemStorage]) {
        for (a, log_a) in logs.iter().enumerate() {
            for (b, log_b) in logs.iter().enumerate().skip(a + 1) {
                if let Some(index) = first_log_mismatch(log_a, log_b) {
                    self.violations.push(format!(
                        "log matching: n{} and n{} agree on a later entry but differ at index {index}",
                        a + 1,
                        b + 1
                    ));
                }
            }
        }
    }

    /// How many distinct terms had a leader.
    pub fn leaders_elected(&self) -> u64 {
        self.leader_by_term.len() as u64
    }

    /// Every violation recorded so far, in the order seen.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}

/// Finds the highest index at which both logs hold an entry of the same term, then checks that
/// every earlier entry is identical. Returns the first index where they differ, if any.
fn first_log_mismatch(a: &MemStorage, b: &MemStorage) -> Option<u64> {
    let last = a.last_index().ok()?.min(b.last_index().ok()?);
    let first = a.first_index().ok()?.max(b.first_index().ok()?);
    let agreed = (first..=last)
        .rev()
        .find(|&i| a.term(i).ok() == b.term(i).ok())?;
    let upto = |log: &MemStorage| {
        log.entries(
            first,
            agreed + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .ok()
    };
    let (ea, eb) = (upto(a)?, upto(b)?);
    ea.iter()
        .zip(&eb)
        .find(|(x, y)| x.term != y.term || x.data != y.data)
        .map(|(x, _)| x.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let mut m = Monitor::default();
        let log = MemStorage::new();
        m.on_leader(1, 3, &log);
        m.on_leader(1, 3, &log);
        assert!(m.violations().is_empty());
        m.on_leader(2, 3, &log);
        assert_eq!(m.violations().len(), 1);
        assert!(m.violations()[0].starts_with("election safety"));
    }

    #[test]
    fn applying_a_different_entry_at_an_index_is_a_violation() {
        let mut m = Monitor::default();
        m.on_applied(1, 5, 2, b"put k1=1");
        m.on_applied(2, 5, 2, b"put k1=1");
        assert!(m.violations().is_empty());
        m.on_applied(3, 5, 2, b"put k1=2");
        assert!(m.violations()[0].starts_with("state machine safety"));
    }

    fn log(entries: &[(u64, u64, &[u8])]) -> MemStorage {
        let store = MemStorage::new();
        let entries: Vec<raft::eraftpb::Entry> = entries
            .iter()
            .map(|&(index, term, data)| raft::eraftpb::Entry {
                index,
                term,
                data: data.to_vec().into(),
                ..Default::default()
            })
            .collect();
        store.wl().append(&entries).unwrap();
        store
    }

    #[test]
    fn logs_that_agree_later_but_differ_earlier_break_log_matching() {
        let mut m = Monitor::default();
        let a = log(&[(1, 1, b"x"), (2, 2, b"y")]);
        let b = log(&[(1, 1, b"z"), (2, 2, b"y")]);
        let c = log(&[(1, 1, b"x"), (2, 3, b"w")]);
        m.check_log_matching(&[a.clone(), c]);
        assert!(
            m.violations().is_empty(),
            "diverging tails are allowed: {:?}",
            m.violations()
        );
        m.check_log_matching(&[a, b]);
        assert_eq!(m.violations().len(), 1);
        assert!(
            m.violations()[0].contains("differ at index 1"),
            "{:?}",
            m.violations()
        );
    }

    #[test]
    fn a_leader_missing_an_applied_entry_is_a_violation() {
        let mut m = Monitor::default();
        m.on_applied(1, 1, 1, b"x");
        m.on_leader(2, 2, &MemStorage::new());
        assert!(m.violations()[0].starts_with("leader completeness"));
    }
}
