//! Linearizability checker for the key-value model, after Porcupine and Knossos.
//!
//! A history is linearizable if every operation can be given a single instant between its
//! invocation and completion such that, in that order, the operations obey a sequential register
//! per key. Keys are independent (P-compositionality), so each key's sub-history is checked alone
//! ([`search`]); a key that has no linearization is shrunk to a smallest set of operations that
//! still has none ([`minimize`]), which is what the verdict names.
//!
//! Outcomes map onto the search as Jepsen does: `fail` operations never happened and are dropped;
//! an `info` write may have happened at any time after its invocation, so it gets an infinite
//! completion time; an `info` read observed nothing and is dropped.
//!
//! The search is exponential in the worst case, so it spends a budget counted in search steps and
//! answers [`Verdict::Unknown`] past it rather than hanging. Steps, not seconds: a loaded machine
//! gets the same verdict as an idle one, so simulated traces stay byte-identical.

mod minimize;
mod search;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{History, Key, Op, OpKind, Outcome, Value};

use search::{check_register, Budget, Search};

/// How much searching the checker may do before answering `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// Search steps for the whole history (each step places, skips or undoes one operation);
    /// shrinking a failing key spends up to as many again.
    pub steps_max: u64,
}

impl Default for CheckLimits {
    /// 200 million steps: a few seconds of search, far more than any history the lab records needs.
    fn default() -> Self {
        CheckLimits {
            steps_max: 200_000_000,
        }
    }
}

/// The checker's judgement of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key has none; the smallest set of its operations that has none is named.
    NotLinearizable {
        /// The key whose history is not linearizable.
        key: Key,
        /// What went wrong, e.g. `stale read`.
        kind: String,
        /// Operations that together cannot be linearized, in invocation order.
        ops: Vec<Op>,
        /// Whether dropping any one of `ops` makes the rest linearizable (false only when the
        /// budget ran out while shrinking).
        #[serde(default)]
        minimal: bool,
    },
    /// The step budget ran out before an answer.
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

    /// Whether the history was shown not to be linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }

    /// Whether the checker gave up.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }
}

/// Each key's operations that constrain the search: `fail` ones never happened, and an `info` read
/// observed nothing.
fn by_key(history: &History) -> BTreeMap<Key, Vec<&Op>> {
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
    by_key
}

/// The first key whose search finds no linearization (or runs out of budget), with its
/// operations and what the search said; `None` when every key has one.
fn first_failing_key(history: &History, limits: CheckLimits) -> Option<(Key, Vec<&Op>, Search)> {
    let mut budget = Budget {
        steps_left: limits.steps_max,
    };
    by_key(history)
        .into_iter()
        .find_map(|(key, ops)| match check_register(&ops, &mut budget) {
            Search::Linearizable => None,
            found => Some((key, ops, found)),
        })
}

/// Checks a whole history, key by key, within `limits`.
pub fn check_history(history: &History, limits: CheckLimits) -> Verdict {
    match first_failing_key(history, limits) {
        None | Some((_, _, Search::Linearizable)) => Verdict::Linearizable,
        Some((key, ops, Search::Stuck { op_index })) => explain(key, &ops, op_index, limits),
        Some((key, _, Search::Exhausted)) => Verdict::Unknown {
            reason: format!(
                "search budget of {} steps spent on k{key}",
                limits.steps_max
            ),
        },
    }
}

/// A yes/no answer without the explanation: what a benchmark against another checker times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// This key's has none.
    NotLinearizable {
        /// The first key found without one.
        key: Key,
    },
    /// The step budget ran out first.
    Unknown,
}

/// Decides a history, key by key, within `limits`: the search alone, without shrinking a
/// failing key to the operations [`check_history`] names (which can cost as much again).
pub fn decide_history(history: &History, limits: CheckLimits) -> Decision {
    match first_failing_key(history, limits) {
        None | Some((_, _, Search::Linearizable)) => Decision::Linearizable,
        Some((key, _, Search::Stuck { .. })) => Decision::NotLinearizable { key },
        Some((_, _, Search::Exhausted)) => Decision::Unknown,
    }
}

/// The verdict for a key with no linearization: its operations shrunk to a smallest failing set,
/// named after the operation the search could not place.
fn explain(key: Key, ops: &[&Op], stuck: usize, limits: CheckLimits) -> Verdict {
    let mut budget = Budget {
        steps_left: limits.steps_max,
    };
    let shrunk = minimize::minimize(ops, stuck, &mut budget);
    let mut set: Vec<Op> = shrunk.ops.iter().map(|&o| o.clone()).collect();
    set.sort_by_key(|o| (o.invoke_us, o.id));
    let culprit = match check_register(
        &shrunk.ops,
        &mut Budget {
            steps_left: u64::MAX,
        },
    ) {
        Search::Stuck { op_index } => shrunk.ops[op_index],
        _ => ops[stuck],
    };
    let wrote = |v: Value| {
        ops.iter().any(|o| match o.kind {
            OpKind::Put { value, .. } => value == v,
            OpKind::Cas { new, .. } => new == v,
            OpKind::Get { .. } => false,
        })
    };
    let never_written =
        matches!(culprit.outcome, Outcome::Ok { read: Some(Some(v)), .. } if !wrote(v));
    let kind = match culprit.kind {
        OpKind::Get { .. } if never_written => "read of a value never written",
        OpKind::Get { .. } => "stale read",
        OpKind::Cas { .. } => "impossible compare-and-swap",
        OpKind::Put { .. } => "lost write",
    };
    Verdict::NotLinearizable {
        key,
        kind: kind.to_string(),
        ops: set,
        minimal: shrunk.minimal,
    }
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
        let Verdict::NotLinearizable {
            key,
            kind,
            ops,
            minimal,
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((key, kind.as_str(), minimal), (3, "stale read", true));
        let ids: Vec<u64> = ops.iter().map(|o| o.id).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn the_named_set_leaves_out_bystanders() {
        // A hundred well-behaved writes and reads, then a stale read buried among them.
        let mut ops = Vec::new();
        for i in 0..100u64 {
            let t = i * 100;
            ops.push(op(2 * i, OpKind::Put { key: 0, value: i }, t, t + 10, ok()));
            ops.push(op(
                2 * i + 1,
                OpKind::Get { key: 0 },
                t + 20,
                t + 30,
                read(Some(i)),
            ));
        }
        ops.push(op(500, OpKind::Get { key: 0 }, 5_040, 5_050, read(Some(3))));
        let Verdict::NotLinearizable { ops, minimal, .. } = check(ops) else {
            panic!("expected a violation")
        };
        // put 3, one later put that completed before the read, and the read itself.
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!((ops[0].id, ops[2].id), (6, 500));
        assert!(ops[1].kind.is_write() && ops[1].complete_us < 5_040);
        assert!(minimal);
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
    fn step_budget_answers_unknown_and_the_same_way_every_time() {
        // Many concurrent info writes and no way to place the final read: exponential search.
        let mut ops: Vec<Op> = (0..40)
            .map(|i| op(i, OpKind::Put { key: 0, value: i }, i, i + 1, Outcome::Info))
            .collect();
        ops.push(op(99, OpKind::Get { key: 0 }, 100, 200, read(Some(1000))));
        let history = History { ops };
        let limits = CheckLimits { steps_max: 20_000 };
        let v = check_history(&history, limits);
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
        assert_eq!(check_history(&history, limits), v);
    }
}
