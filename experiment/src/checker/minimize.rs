//! Shrinking a non-linearizable key history to a small set of operations that still cannot be
//! linearized and that explains why the whole history cannot, so a reader sees the cause (the
//! writes and the read that contradicts them) rather than a thousand bystanders.
//!
//! Removing an operation is only allowed where it cannot hide the cause, so that "this set
//! cannot be linearized" implies "the history cannot":
//!
//! - operations invoked after the point where the search got stuck (they cannot be placed
//!   before it);
//! - observers (gets, and compare-and-swaps that did not swap), which only add constraints;
//! - writes that are dead before the first kept constrained operation: one that completed before
//!   another write, which definitely happened, was invoked and completed, all before that
//!   operation began. Such a write can never be the register's value when the kept operations
//!   look at it.
//!
//! Any other write stays, since dropping a write can make a history *harder* to linearize (a
//! compare-and-swap that failed because some other write got there first). Observers are shrunk
//! by delta debugging (chunks, then single operations), and the kept writes follow from the
//! observers. Every trial is a full search on the same step budget, so the answer is
//! deterministic; if the budget runs out the set found so far is returned, still a valid witness
//! but perhaps not the smallest. A read also keeps the write it read from, so the set says where
//! a stale value came from.

use std::collections::HashSet;

use crate::history::{Op, OpKind, Outcome, Value};

use super::search::{check_register, completion_us, Budget, Search};

/// A non-linearizable set of operations and whether no observer can be dropped from it.
pub(super) struct Shrunk<'a> {
    pub(super) ops: Vec<&'a Op>,
    pub(super) minimal: bool,
}

/// Shrinks `ops` (not linearizable, stuck at `stuck`) within `budget`.
pub(super) fn minimize<'a>(ops: &[&'a Op], stuck: usize, budget: &mut Budget) -> Shrunk<'a> {
    let prefix = prefix_to(ops, stuck, budget);
    let (mut observers, writes): (Vec<&Op>, Vec<&Op>) = prefix.iter().partition(|o| is_observer(o));
    let witness = |observers: &[&'a Op]| with_live_writes(observers, &writes);
    let mut chunk = observers.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < observers.len() {
            let end = (start + chunk).min(observers.len());
            let candidate: Vec<&Op> = observers[..start]
                .iter()
                .chain(&observers[end..])
                .copied()
                .collect();
            match check_register(&witness(&candidate), budget) {
                Search::Stuck { .. } => observers = candidate,
                Search::Linearizable => start = end,
                Search::Exhausted => {
                    return Shrunk {
                        ops: witness(&observers),
                        minimal: false,
                    }
                }
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    Shrunk {
        ops: witness(&observers),
        minimal: true,
    }
}

/// An operation that constrains the register but never changes it.
fn is_observer(op: &Op) -> bool {
    match (op.kind, op.outcome) {
        (OpKind::Get { .. }, _) => true,
        (OpKind::Cas { .. }, Outcome::Ok { swapped, .. }) => swapped != Some(true),
        _ => false,
    }
}

/// `observers` with every write that may matter to them: writes not dead before the first kept
/// constrained operation, and the writes of values they observed. In invocation order.
fn with_live_writes<'a>(observers: &[&'a Op], writes: &[&'a Op]) -> Vec<&'a Op> {
    let observed: HashSet<Value> = observers.iter().filter_map(|o| observed(o)).collect();
    let mut from_us = observers
        .iter()
        .map(|o| o.invoke_us)
        .min()
        .unwrap_or(u64::MAX);
    // A kept compare-and-swap that swapped is constrained too: what is live must be live for it.
    loop {
        let dead_before = dead_before(writes, from_us);
        let earliest_kept = writes
            .iter()
            .filter(|w| completion_us(w) >= dead_before && matches!(w.kind, OpKind::Cas { .. }))
            .map(|w| w.invoke_us)
            .min()
            .unwrap_or(u64::MAX);
        if earliest_kept >= from_us {
            let mut set: Vec<&Op> = observers.to_vec();
            set.extend(writes.iter().filter(|w| {
                completion_us(w) >= dead_before || written(w).is_some_and(|v| observed.contains(&v))
            }));
            set.sort_by_key(|o| (o.invoke_us, o.id));
            return set;
        }
        from_us = earliest_kept;
    }
}

/// Writes completing before this time are dead at `from_us`: a write that definitely happened
/// was invoked after them and completed before `from_us`.
fn dead_before(writes: &[&Op], from_us: u64) -> u64 {
    writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Ok { .. }) && w.complete_us < from_us)
        .map(|w| w.invoke_us)
        .max()
        .unwrap_or(0)
}

/// The operations invoked no later than the stuck operation's completion, if those alone are
/// already not linearizable (usually so; a later write may explain an earlier read, so it is
/// checked), else all of them. Cutting the tail first keeps every later trial short.
fn prefix_to<'a>(ops: &[&'a Op], stuck: usize, budget: &mut Budget) -> Vec<&'a Op> {
    let until = completion_us(ops[stuck]);
    let prefix: Vec<&Op> = ops
        .iter()
        .filter(|o| o.invoke_us <= until)
        .copied()
        .collect();
    if prefix.len() < ops.len() && matches!(check_register(&prefix, budget), Search::Stuck { .. }) {
        prefix
    } else {
        ops.to_vec()
    }
}

/// The value an operation may write.
fn written(op: &Op) -> Option<Value> {
    match op.kind {
        OpKind::Put { value, .. } => Some(value),
        OpKind::Cas { new, .. } => Some(new),
        OpKind::Get { .. } => None,
    }
}

/// The value an operation saw: a read's result, or what a successful compare-and-swap found.
fn observed(op: &Op) -> Option<Value> {
    match (op.kind, op.outcome) {
        (OpKind::Get { .. }, Outcome::Ok { read: Some(v), .. }) => v,
        (
            OpKind::Cas { expect, .. },
            Outcome::Ok {
                swapped: Some(true),
                ..
            },
        ) => Some(expect),
        _ => None,
    }
}
