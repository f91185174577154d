//! Shrinking a non-linearizable key history to a smallest set of operations that still cannot be
//! linearized, so a reader sees the cause (two writes and the read that contradicts them) rather
//! than a thousand bystanders.
//!
//! This is delta debugging over operations: try removing chunks, halving the chunk size down to
//! single operations, and keep every removal after which the rest is still not linearizable. The
//! result is 1-minimal: dropping any one of its operations makes it linearizable. Each trial is a
//! full search that spends the same step budget, so the answer is deterministic; if the budget
//! runs out the set found so far is returned, still non-linearizable but perhaps not minimal.
//!
//! A read never loses the write it read from: without it, a read alone "cannot be linearized"
//! (it saw a value nobody wrote), which is true and useless. So a candidate must keep, for every
//! value one of its operations observed, an operation that wrote that value, whenever the whole
//! history has one.

use std::collections::HashSet;

use crate::history::{Op, OpKind, Outcome, Value};

use super::search::{check_register, completion_us, Budget, Search};

/// A non-linearizable set of operations and whether it is known to be 1-minimal.
pub(super) struct Shrunk<'a> {
    pub(super) ops: Vec<&'a Op>,
    pub(super) minimal: bool,
}

/// Shrinks `ops` (not linearizable, stuck at `stuck`) within `budget`.
pub(super) fn minimize<'a>(ops: &[&'a Op], stuck: usize, budget: &mut Budget) -> Shrunk<'a> {
    let writers = Writers::of(ops);
    let mut kept = prefix_to(ops, stuck, budget);
    let mut chunk = kept.len().div_ceil(2);
    while chunk >= 1 {
        let mut start = 0;
        while start < kept.len() {
            let end = (start + chunk).min(kept.len());
            let candidate: Vec<&Op> = kept[..start].iter().chain(&kept[end..]).copied().collect();
            if !writers.explain(&candidate) {
                start = end;
                continue;
            }
            match check_register(&candidate, budget) {
                Search::Stuck { .. } => kept = candidate,
                Search::Linearizable => start = end,
                Search::Exhausted => {
                    return Shrunk {
                        ops: kept,
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
        ops: kept,
        minimal: true,
    }
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

/// Which values the history wrote, so a shrunk set can keep each observed value's writer.
struct Writers {
    written: HashSet<Value>,
}

impl Writers {
    fn of(ops: &[&Op]) -> Writers {
        Writers {
            written: ops.iter().filter_map(|o| written(o)).collect(),
        }
    }

    /// Whether every value observed in `ops` that the history wrote is written within `ops`.
    fn explain(&self, ops: &[&Op]) -> bool {
        let here: HashSet<Value> = ops.iter().filter_map(|o| written(o)).collect();
        let mut needed: HashSet<Value> = HashSet::new();
        for op in ops {
            if let Some(v) = observed(op) {
                if self.written.contains(&v) {
                    needed.insert(v);
                }
            }
        }
        needed.iter().all(|v| here.contains(v))
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
