//! Linearizability checker for the key-value model, after Porcupine.
//!
//! A history is linearizable if every operation can be given a single instant between its
//! invocation and completion such that, in that order, the operations obey a sequential register
//! per key. Keys are independent (P-compositionality), so each key's sub-history is checked alone,
//! with the Wing–Gong–Lowe search: walk the calls in time order, tentatively linearize one, and
//! backtrack when a completion arrives for an operation not yet placed. A cache of (set of
//! linearized operations, register value) prunes states already explored.
//!
//! Outcomes map onto the search as Jepsen does: `fail` operations never happened and are dropped;
//! an `info` write may have happened at any time after its invocation, so it gets an infinite
//! completion time; an `info` read observed nothing and is dropped.
//!
//! The search is exponential in the worst case, so it honours a time limit and answers
//! [`Verdict::Unknown`] past it rather than hanging.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{History, Key, Op, OpKind, Outcome, Value};

/// How long the checker may search before answering `Unknown`.
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    /// Wall-clock budget for the whole history.
    pub time_max: Duration,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits {
            time_max: Duration::from_secs(10),
        }
    }
}

/// The checker's judgement of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key has none; the operations that could not be placed are named.
    NotLinearizable {
        /// The key whose history is not linearizable.
        key: Key,
        /// What went wrong, e.g. `stale read`.
        kind: String,
        /// The operation that could not be linearized, then the writes it contradicts.
        ops: Vec<Op>,
    },
    /// The time limit ran out before an answer.
    Unknown {
        /// Why no answer was reached.
        reason: String,
    },
}

impl Verdict {
    /// Short form for summaries: `linearizable`, `NOT linearizable (stale read on k3)`, `unknown`.
    pub fn headline(&self) -> String {
        match self {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable { key, kind, .. } => {
                format!("NOT linearizable ({kind} on k{key})")
            }
            Verdict::Unknown { reason } => format!("unknown ({reason})"),
        }
    }

    /// Whether the history was shown to be linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks a whole history, key by key, within `limits`.
pub fn check_history(history: &History, limits: CheckLimits) -> Verdict {
    let deadline = Instant::now() + limits.time_max;
    let mut by_key: BTreeMap<Key, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        let keep = match op.outcome {
            Outcome::Ok { .. } => true,
            Outcome::Fail => false,
            Outcome::Info => op.kind.is_write(),
        };
        if keep {
            by_key.entry(op.kind.key()).or_default().push(op);
        }
    }
    for (key, ops) in by_key {
        match check_register(&ops, deadline) {
            Search::Linearizable => {}
            Search::Stuck { op_index } => {
                let stuck = ops[op_index];
                let mut culprits = vec![stuck.clone()];
                culprits.extend(
                    ops.iter()
                        .filter(|o| o.kind.is_write() && o.complete_us <= stuck.invoke_us)
                        .filter(|o| matches!(o.outcome, Outcome::Ok { .. }))
                        .rev()
                        .take(2)
                        .map(|o| (*o).clone()),
                );
                let kind = match stuck.kind {
                    OpKind::Get { .. } => "stale read",
                    OpKind::Cas { .. } => "impossible compare-and-swap",
                    OpKind::Put { .. } => "lost write",
                };
                return Verdict::NotLinearizable {
                    key,
                    kind: kind.to_string(),
                    ops: culprits,
                };
            }
            Search::TimedOut => {
                return Verdict::Unknown {
                    reason: format!("time limit of {:?} reached on k{key}", limits.time_max),
                };
            }
        }
    }
    Verdict::Linearizable
}

/// The register model's transition: `Some(next)` if `op` may take effect on `state`.
fn step(state: Option<Value>, op: &Op) -> Option<Option<Value>> {
    match (op.kind, op.outcome) {
        (OpKind::Put { value, .. }, _) => Some(Some(value)),
        (OpKind::Get { .. }, Outcome::Ok { read, .. }) => (read == Some(state)).then_some(state),
        (
            OpKind::Cas { expect, new, .. },
            Outcome::Ok {
                swapped: Some(true),
                ..
            },
        ) => (state == Some(expect)).then_some(Some(new)),
        (OpKind::Cas { expect, .. }, Outcome::Ok { .. }) => {
            (state != Some(expect)).then_some(state)
        }
        (OpKind::Cas { expect, new, .. }, _) => Some(if state == Some(expect) {
            Some(new)
        } else {
            state
        }),
        (OpKind::Get { .. }, _) => Some(state),
    }
}

enum Search {
    Linearizable,
    Stuck { op_index: usize },
    TimedOut,
}

/// One call or return event in the doubly linked list the search lifts entries out of.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call, the index of its matching return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// Fixed-size set of operation indices, hashed as the cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct OpSet(Vec<u64>);

impl OpSet {
    fn new(len: usize) -> Self {
        OpSet(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing–Gong–Lowe search over one key's operations.
/// The operations' calls and returns as a doubly linked list in time order (the search lifts
/// calls out of it and puts them back); `entries[0]` is the head sentinel.
fn event_list(ops: &[&Op]) -> Vec<Entry> {
    // Events sorted by time; a call sorts before a return at the same instant, so operations that
    // touch at a boundary count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        let complete = if op.outcome == Outcome::Info {
            u64::MAX
        } else {
            op.complete_us
        };
        debug_assert!(
            op.invoke_us <= complete,
            "op #{} completes before it starts",
            op.id
        );
        events.push((op.invoke_us, false, i));
        events.push((complete, true, i));
    }
    events.sort_by_key(|&(t, is_return, i)| (t, is_return, i));

    // entries[0] is the head sentinel; event k lives at k + 1.
    let n = events.len();
    let mut entries = vec![Entry {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: 1,
    }];
    let mut return_slot = vec![NIL; ops.len()];
    for (k, &(_, is_return, op)) in events.iter().enumerate() {
        let next = if k + 1 < n { k + 2 } else { NIL };
        entries.push(Entry {
            op,
            is_call: !is_return,
            partner: NIL,
            prev: k,
            next,
        });
        if is_return {
            return_slot[op] = k + 1;
        }
    }
    for k in 1..=n {
        if entries[k].is_call {
            entries[k].partner = return_slot[entries[k].op];
        }
    }
    entries
}

fn check_register(ops: &[&Op], deadline: Instant) -> Search {
    let mut entries = event_list(ops);
    let mut state: Option<Value> = None;
    let mut linearized = OpSet::new(ops.len());
    let mut cache: HashSet<(OpSet, Option<Value>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<Value>)> = Vec::new();
    let mut deepest: (usize, usize) = (0, NIL);
    let mut cursor = entries[0].next;
    let mut iterations: u64 = 0;

    while entries[0].next != NIL {
        iterations += 1;
        if iterations.is_multiple_of(4096) && Instant::now() >= deadline {
            return Search::TimedOut;
        }
        assert!(
            cursor != NIL,
            "the search ran off the end of the event list"
        );
        let entry = entries[cursor];
        if entry.is_call {
            if let Some(next_state) = step(state, ops[entry.op]) {
                let mut candidate = linearized.clone();
                candidate.set(entry.op);
                if cache.insert((candidate.clone(), next_state)) {
                    calls.push((cursor, state));
                    state = next_state;
                    linearized = candidate;
                    lift(&mut entries, cursor);
                    cursor = entries[0].next;
                    continue;
                }
            }
            cursor = entry.next;
        } else {
            // A completion for an operation we have not linearized yet: backtrack.
            if calls.len() >= deepest.0 || deepest.1 == NIL {
                deepest = (calls.len(), entry.op);
            }
            let Some((call, previous)) = calls.pop() else {
                return Search::Stuck {
                    op_index: deepest.1,
                };
            };
            state = previous;
            linearized.clear(entries[call].op);
            unlift(&mut entries, call);
            cursor = entries[call].next;
        }
    }
    Search::Linearizable
}

/// Removes a call entry and its return entry from the list.
fn lift(entries: &mut [Entry], call: usize) {
    let ret = entries[call].partner;
    for k in [call, ret] {
        let Entry { prev, next, .. } = entries[k];
        entries[prev].next = next;
        if next != NIL {
            entries[next].prev = prev;
        }
    }
}

/// Puts a lifted call entry and its return entry back, in reverse order of removal.
fn unlift(entries: &mut [Entry], call: usize) {
    let ret = entries[call].partner;
    for k in [ret, call] {
        let Entry { prev, next, .. } = entries[k];
        entries[prev].next = k;
        if next != NIL {
            entries[next].prev = k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, kind: OpKind, invoke_us: u64, complete_us: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client: id as u32,
            kind,
            invoke_us,
            complete_us,
            outcome,
            node: None,
        }
    }
    fn ok() -> Outcome {
        Outcome::Ok {
            read: None,
            swapped: None,
        }
    }
    fn read(v: Option<Value>) -> Outcome {
        Outcome::Ok {
            read: Some(v),
            swapped: None,
        }
    }
    fn check(ops: Vec<Op>) -> Verdict {
        check_history(&History { ops }, CheckLimits::default())
    }

    #[test]
    fn sequential_register_is_linearizable() {
        let v = check(vec![
            op(1, OpKind::Put { key: 0, value: 1 }, 0, 10, ok()),
            op(2, OpKind::Get { key: 0 }, 20, 30, read(Some(1))),
            op(
                3,
                OpKind::Cas {
                    key: 0,
                    expect: 1,
                    new: 2,
                },
                40,
                50,
                Outcome::Ok {
                    read: None,
                    swapped: Some(true),
                },
            ),
            op(4, OpKind::Get { key: 0 }, 60, 70, read(Some(2))),
        ]);
        assert_eq!(v, Verdict::Linearizable);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let v = check(vec![
            op(1, OpKind::Put { key: 0, value: 1 }, 0, 10, ok()),
            op(2, OpKind::Put { key: 0, value: 2 }, 20, 60, ok()),
            op(3, OpKind::Get { key: 0 }, 30, 40, read(Some(2))),
            op(4, OpKind::Get { key: 0 }, 45, 50, read(Some(1))),
        ]);
        // Read of 2 then read of 1 while the put of 2 is still in flight: 2 was already visible,
        // so seeing 1 afterwards is a stale read.
        assert!(matches!(v, Verdict::NotLinearizable { .. }), "{v:?}");
    }

    #[test]
    fn stale_read_after_completed_write_is_caught_and_named() {
        let v = check(vec![
            op(1, OpKind::Put { key: 3, value: 1 }, 0, 10, ok()),
            op(2, OpKind::Put { key: 3, value: 2 }, 20, 30, ok()),
            op(3, OpKind::Get { key: 3 }, 40, 50, read(Some(1))),
        ]);
        let Verdict::NotLinearizable { key, kind, ops } = v else {
            panic!("{v:?}")
        };
        assert_eq!((key, kind.as_str()), (3, "stale read"));
        assert_eq!(ops[0].id, 3);
        assert_eq!(ops[1].id, 2);
    }

    #[test]
    fn unknown_write_may_or_may_not_apply() {
        let applied = check(vec![
            op(1, OpKind::Put { key: 0, value: 1 }, 0, 10, Outcome::Info),
            op(2, OpKind::Get { key: 0 }, 20, 30, read(Some(1))),
        ]);
        let not_applied = check(vec![
            op(1, OpKind::Put { key: 0, value: 1 }, 0, 10, Outcome::Info),
            op(2, OpKind::Get { key: 0 }, 20, 30, read(None)),
        ]);
        assert_eq!(applied, Verdict::Linearizable);
        assert_eq!(not_applied, Verdict::Linearizable);
    }

    #[test]
    fn failed_write_must_not_be_seen() {
        let v = check(vec![
            op(1, OpKind::Put { key: 0, value: 1 }, 0, 10, Outcome::Fail),
            op(2, OpKind::Get { key: 0 }, 20, 30, read(Some(1))),
        ]);
        assert!(matches!(v, Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn time_limit_answers_unknown() {
        // Many concurrent info writes and no way to place the final read: exponential search.
        let mut ops: Vec<Op> = (0..40)
            .map(|i| op(i, OpKind::Put { key: 0, value: i }, i, i + 1, Outcome::Info))
            .collect();
        ops.push(op(99, OpKind::Get { key: 0 }, 100, 200, read(Some(1000))));
        let started = Instant::now();
        let v = check_history(
            &History { ops },
            CheckLimits {
                time_max: Duration::from_millis(50),
            },
        );
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the limit was not honoured"
        );
    }
}
