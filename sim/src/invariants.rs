//! Raft's safety properties, checked while the simulation runs.
//!
//! The [`Monitor`] sees every node's role changes, durable log writes and applied entries, in
//! simulated-time order, and records a violation the moment one of these breaks:
//!
//! - **Election safety**: at most one leader per term.
//! - **Log matching**: if two logs hold an entry with the same index and term, they are identical
//!   up to that index. Checked on every write: each node's log is kept as a chain of prefix
//!   hashes, and the first chain seen for an (index, term) is what every later holder must match.
//! - **Leader completeness**: a new leader's log holds every committed entry. An entry counts as
//!   committed by Raft's own rule, judged from outside the implementation: a majority of nodes
//!   wrote an entry of term T while they were in term T (so the leader of T replicated it), which
//!   commits it and everything before it. A committed entry overwritten in any log is a violation
//!   too.
//! - **State machine safety**: every node applies the same entry at the same index.
//!
//! Violations are recorded rather than panicking so that a sweep can name the seed to replay;
//! reads are judged separately, by the linearizability checker over the client history.

use std::collections::{BTreeMap, HashMap};

use raft::storage::MemStorage;
use raft::Storage;

/// Records safety violations observed during one run.
#[derive(Debug, Default)]
pub struct Monitor {
    voters: usize,
    leader_by_term: BTreeMap<u64, u64>,
    /// index -> (term, fingerprint of the entry data, node that applied it first)
    applied: BTreeMap<u64, (u64, u64, u64)>,
    /// Per node (index 0 is n1): its durable log as (term, prefix hash), position i is index i+1.
    logs: Vec<Vec<(u64, u64)>>,
    /// The first prefix hash seen for each (index, term), and which node had it.
    first_chain: HashMap<(u64, u64), (u64, u64)>,
    /// Nodes (bit per node) that wrote an (index, term) entry while in that term, until committed.
    written_in_term: HashMap<(u64, u64), u64>,
    /// Terms of the committed prefix: position i is index i+1.
    committed: Vec<u64>,
    violations: Vec<String>,
}

/// FNV-1a of an entry's payload: stable across runs and platforms, unlike the std hasher.
pub fn fingerprint(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The prefix hash through one more entry.
fn chain(previous: u64, term: u64, print: u64) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&previous.to_le_bytes());
    bytes[8..16].copy_from_slice(&term.to_le_bytes());
    bytes[16..].copy_from_slice(&print.to_le_bytes());
    fingerprint(&bytes)
}

impl Monitor {
    /// A monitor for a cluster of `voters` members.
    pub fn new(voters: usize) -> Monitor {
        Monitor {
            voters,
            logs: vec![Vec::new(); voters],
            ..Monitor::default()
        }
    }

    /// A node became leader of `term`: no other node led it, and its log holds every committed
    /// entry and every applied one.
    pub fn on_leader(&mut self, node: u64, term: u64) {
        if let Some(&other) = self.leader_by_term.get(&term) {
            if other != node {
                self.violations.push(format!(
                    "election safety: n{other} and n{node} both led term {term}"
                ));
            }
        }
        self.leader_by_term.insert(term, node);
        let log = &self.logs[node as usize - 1];
        let held = |index: u64| log.get(index as usize - 1).map(|&(t, _)| t);
        let missing = self
            .committed
            .iter()
            .enumerate()
            .map(|(i, &t)| (i as u64 + 1, t, "a majority committed".to_string()))
            .chain(
                self.applied
                    .iter()
                    .map(|(&i, &(t, _, by))| (i, t, format!("n{by} applied"))),
            )
            .find(|&(index, t, _)| held(index) != Some(t));
        if let Some((index, entry_term, who)) = missing {
            self.violations.push(format!(
                "leader completeness: n{node} leads term {term} without entry {index} (term {entry_term}) that {who}"
            ));
        }
    }

    /// `node`, in `node_term`, wrote `entries` (index, term, payload fingerprint) to its durable
    /// log, replacing whatever it held from the first of them on.
    pub fn on_persisted(&mut self, node: u64, node_term: u64, entries: &[(u64, u64, u64)]) {
        let Some(&(first, ..)) = entries.first() else {
            return;
        };
        let n = node as usize - 1;
        assert!(
            first as usize <= self.logs[n].len() + 1,
            "n{node} wrote index {first} past the end of its log"
        );
        self.check_not_overwriting_committed(node, entries);
        self.logs[n].truncate(first as usize - 1);
        for &(index, term, print) in entries {
            let previous = self.logs[n].last().map_or(0, |&(_, h)| h);
            let hash = chain(previous, term, print);
            self.logs[n].push((term, hash));
            self.check_log_matching_at(node, index, term, hash);
            if term == node_term {
                let writers = self.written_in_term.entry((index, term)).or_default();
                *writers |= 1 << n;
                if writers.count_ones() as usize > self.voters / 2 {
                    self.commit_through(n, index);
                }
            }
        }
    }

    /// A node that holds a committed entry never replaces it with another. (A node that never
    /// had it, such as a deposed leader in a minority, may still write its own entry there: that
    /// one is uncommitted and will be truncated.)
    fn check_not_overwriting_committed(&mut self, node: u64, entries: &[(u64, u64, u64)]) {
        let n = node as usize - 1;
        for &(index, term, _) in entries {
            let Some(&committed) = self.committed.get(index as usize - 1) else {
                return;
            };
            let held = self.logs[n].get(index as usize - 1).map(|&(t, _)| t);
            if held == Some(committed) && term != committed {
                self.violations.push(format!(
                    "leader completeness: n{node} overwrote committed entry {index} (term {committed}) with term {term}"
                ));
                return;
            }
        }
    }

    /// Two logs holding the same (index, term) must hold the same prefix.
    fn check_log_matching_at(&mut self, node: u64, index: u64, term: u64, hash: u64) {
        match self.first_chain.get(&(index, term)) {
            Some(&(h, by)) if h != hash => self.violations.push(format!(
                "log matching: n{by} and n{node} both hold entry {index} of term {term} but their logs differ before it"
            )),
            Some(_) => {}
            None => {
                self.first_chain.insert((index, term), (hash, node));
            }
        }
    }

    /// Everything through `index` in node `n`'s log is committed.
    fn commit_through(&mut self, n: usize, index: u64) {
        let through = index as usize;
        if through <= self.committed.len() {
            return;
        }
        let from = self.committed.len();
        let terms: Vec<u64> = self.logs[n][from..through]
            .iter()
            .map(|&(t, _)| t)
            .collect();
        self.committed.extend(terms);
        self.written_in_term.retain(|&(i, _), _| i > index);
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
        let mut m = Monitor::new(3);
        m.on_leader(1, 3);
        m.on_leader(1, 3);
        assert!(m.violations().is_empty());
        m.on_leader(2, 3);
        assert_eq!(m.violations().len(), 1);
        assert!(m.violations()[0].starts_with("election safety"));
    }

    #[test]
    fn an_entry_a_majority_wrote_in_its_term_is_committed_before_anyone_applies_it() {
        let mut m = Monitor::new(3);
        m.on_persisted(1, 2, &[(1, 2, 10)]);
        m.on_leader(3, 3);
        assert!(m.violations().is_empty(), "one copy commits nothing");
        m.on_persisted(2, 2, &[(1, 2, 10)]);
        m.on_leader(3, 4);
        assert!(
            m.violations()[0].starts_with("leader completeness: n3 leads term 4 without entry 1 (term 2) that a majority committed"),
            "{:?}",
            m.violations()
        );
    }

    #[test]
    fn an_old_term_entry_on_a_majority_is_not_committed_by_itself() {
        // Raft's figure 8: an entry of term 2 copied to a majority by the leader of term 4 is
        // not committed until an entry of term 4 is; a leader without it breaks nothing.
        let mut m = Monitor::new(3);
        m.on_persisted(1, 2, &[(1, 2, 10)]);
        m.on_persisted(2, 4, &[(1, 2, 10)]);
        m.on_leader(3, 5);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        m.on_persisted(3, 5, &[(1, 5, 11)]);
        assert!(
            m.violations().is_empty(),
            "overwriting an uncommitted entry is allowed"
        );
    }

    #[test]
    fn overwriting_a_committed_entry_is_a_violation() {
        let mut m = Monitor::new(3);
        m.on_persisted(1, 2, &[(1, 2, 10), (2, 2, 11)]);
        m.on_persisted(2, 2, &[(1, 2, 10), (2, 2, 11)]);
        m.on_persisted(3, 3, &[(1, 2, 10), (2, 3, 12)]);
        assert!(
            m.violations().is_empty(),
            "n3 never held entry 2: its own is just uncommitted"
        );
        m.on_persisted(1, 3, &[(2, 3, 12)]);
        assert!(
            m.violations()[0].contains("n1 overwrote committed entry 2 (term 2) with term 3"),
            "{:?}",
            m.violations()
        );
    }

    #[test]
    fn logs_that_share_an_entry_but_not_its_prefix_break_log_matching_at_once() {
        let mut m = Monitor::new(3);
        // Nothing here is committed: only n1 wrote term-2 entries while in term 2.
        m.on_persisted(1, 2, &[(1, 1, 10), (2, 2, 20)]);
        m.on_persisted(2, 3, &[(1, 1, 10), (2, 2, 20)]);
        m.on_persisted(3, 3, &[(1, 3, 30)]);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        m.on_persisted(3, 3, &[(2, 2, 20)]);
        assert!(
            m.violations()[0].starts_with("log matching: n1 and n3 both hold entry 2 of term 2"),
            "{:?}",
            m.violations()
        );
    }

    #[test]
    fn applying_a_different_entry_at_an_index_is_a_violation() {
        let mut m = Monitor::new(3);
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
        let mut m = Monitor::new(3);
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
        let mut m = Monitor::new(3);
        m.on_applied(1, 1, 1, b"x");
        m.on_leader(2, 2);
        assert!(m.violations()[0].starts_with("leader completeness"));
    }
}
