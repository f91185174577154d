//! The checker against brute force on small random histories: every order of every allowed
//! subset of operations is tried, so the two must agree on every history. This guards the
//! search's prunings (the cache, trying identical operations in one order only).

use quorumlab_experiment::checker::{check_history, decide_history, CheckLimits, Decision};
use quorumlab_experiment::history::{History, Op, OpKind, Outcome, Value};

/// SplitMix64: a tiny seeded generator, so each failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history of up to `max_ops` operations on one or two keys, with few values (so reads and
/// compare-and-swaps often match), overlapping intervals, and some failed and unknown outcomes.
fn random_history(rng: &mut Rng, max_ops: u64) -> History {
    let n = 1 + rng.below(max_ops);
    let keys = 1 + rng.below(2) as u32;
    let ops = (0..n)
        .map(|id| {
            let key = rng.below(u64::from(keys)) as u32;
            let value = |rng: &mut Rng| rng.below(3) as Value;
            let kind = match rng.below(3) {
                0 => OpKind::Put {
                    key,
                    value: value(rng),
                },
                1 => OpKind::Get { key },
                _ => OpKind::Cas {
                    key,
                    expect: value(rng),
                    new: value(rng),
                },
            };
            let invoke_us = rng.below(20);
            let complete_us = invoke_us + rng.below(12);
            let outcome = match (rng.below(10), kind) {
                (0, _) => Outcome::Fail,
                (1, _) => Outcome::Info,
                (_, OpKind::Get { .. }) => Outcome::Ok {
                    read: Some((rng.below(4) > 0).then(|| value(rng))),
                    swapped: None,
                },
                (_, OpKind::Cas { .. }) => Outcome::Ok {
                    read: None,
                    swapped: Some(rng.below(2) == 0),
                },
                _ => Outcome::Ok {
                    read: None,
                    swapped: None,
                },
            };
            Op {
                id,
                client: id as u32,
                kind,
                invoke_us,
                complete_us,
                outcome,
                node: None,
            }
        })
        .collect();
    History { ops }
}

/// The register's rule for one operation in state `s`, as the checker documents it.
fn apply(s: Option<Value>, op: &Op) -> Option<Option<Value>> {
    match (op.kind, op.outcome) {
        (OpKind::Put { value, .. }, _) => Some(Some(value)),
        (OpKind::Get { .. }, Outcome::Ok { read, .. }) => (read == Some(s)).then_some(s),
        (OpKind::Get { .. }, _) => Some(s),
        (OpKind::Cas { expect, new, .. }, Outcome::Ok { swapped, .. }) => match swapped {
            Some(true) => (s == Some(expect)).then_some(Some(new)),
            _ => (s != Some(expect)).then_some(s),
        },
        (OpKind::Cas { expect, new, .. }, _) => Some(if s == Some(expect) { Some(new) } else { s }),
    }
}

/// Whether some order of the operations that must have happened (`ok`), plus any subset of those
/// that may have (`info` writes), respects real time and the register, per key. A `fail` never
/// happened; an `info` read observed nothing and may go anywhere, so it is left out.
fn brute_force(history: &History) -> bool {
    let mut keys: Vec<u32> = history.ops.iter().map(|o| o.kind.key()).collect();
    keys.sort();
    keys.dedup();
    keys.iter().all(|&key| {
        let ops: Vec<&Op> = history
            .ops
            .iter()
            .filter(|o| o.kind.key() == key)
            .filter(|o| match o.outcome {
                Outcome::Fail => false,
                Outcome::Info => o.kind.is_write(),
                Outcome::Ok { .. } => true,
            })
            .collect();
        let mut placed = vec![false; ops.len()];
        search(&ops, &mut placed, None)
    })
}

/// Depth-first over every order: place any unplaced operation that no unplaced one must precede
/// (it completed before this one was invoked), or stop if only unknown ones are left.
fn search(ops: &[&Op], placed: &mut [bool], state: Option<Value>) -> bool {
    let must_remain = |i: usize| !placed[i] && ops[i].outcome != Outcome::Info;
    if !(0..ops.len()).any(must_remain) {
        return true;
    }
    for i in 0..ops.len() {
        if placed[i] {
            continue;
        }
        let blocked = (0..ops.len()).any(|j| {
            !placed[j] && ops[j].outcome != Outcome::Info && ops[j].complete_us < ops[i].invoke_us
        });
        if blocked {
            continue;
        }
        if let Some(next) = apply(state, ops[i]) {
            placed[i] = true;
            let found = search(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_checker_agrees_with_brute_force_on_small_histories() {
    let mut rng = Rng(7);
    let (mut yes, mut no) = (0, 0);
    for case in 0..30_000 {
        let history = random_history(&mut rng, 8);
        let expected = brute_force(&history);
        let decided = decide_history(&history, CheckLimits::default());
        let verdict = check_history(&history, CheckLimits::default());
        assert_eq!(
            decided == Decision::Linearizable,
            expected,
            "case {case}: decide says {decided:?}, brute force {expected}: {history:?}"
        );
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "case {case}: {verdict:?} vs brute force {expected}: {history:?}"
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both answers must be common, or the comparison proves little.
    assert!(yes > 3_000 && no > 3_000, "{yes} linearizable, {no} not");
}
