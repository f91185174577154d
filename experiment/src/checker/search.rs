//! The Wing–Gong–Lowe search over one key's operations, with Lowe's cache.
//!
//! Walk the calls in time order and tentatively linearize one whose effect the register allows;
//! when the walk reaches the completion of an operation not yet placed, undo the last placement and
//! try the next call. A cache of (set of linearized operations, register value) prunes states
//! already explored. Every loop iteration is one step of the caller's budget, so the answer
//! depends only on the history, never on how busy the machine is.

use crate::history::{Op, Outcome, Value};

use super::step;

/// What the search found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    /// The operations have a linearization.
    Linearizable,
    /// None exists; `op_index` is the operation whose completion the deepest attempt could not pass.
    Stuck { op_index: usize },
    /// The step budget ran out first.
    Exhausted,
}

/// Search steps left to spend; shared by every key of a history so the whole check is bounded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) steps_left: u64,
}

impl Budget {
    fn spend(&mut self) -> bool {
        match self.steps_left.checked_sub(1) {
            Some(left) => {
                self.steps_left = left;
                true
            }
            None => false,
        }
    }
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

/// The set of linearized operations, with a Zobrist hash kept up to date as bits flip, so the
/// cache can be probed without hashing or copying the whole set.
#[derive(Clone, PartialEq, Eq)]
struct OpSet {
    bits: Vec<u64>,
    hash: u64,
}

impl OpSet {
    fn new(len: usize) -> Self {
        OpSet {
            bits: vec![0; len.div_ceil(64)],
            hash: 0,
        }
    }
    fn contains(&self, i: usize) -> bool {
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.bits[i / 64] ^= 1 << (i % 64);
        self.hash ^= mix(i as u64 + 1);
    }
}

/// SplitMix64's finalizer: a well-spread 64-bit value per operation index or register value.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// States already explored: (linearized set, register value) pairs in one flat arena, found
/// through an open-addressing table of their indices. One allocation per growth instead of one
/// per state: allocating and freeing a set per state cost more than the search itself.
struct Cache {
    /// Words of each set.
    words: usize,
    /// Entry `i`'s set is `bits[i * words..(i + 1) * words]`.
    bits: Vec<u64>,
    states: Vec<Option<Value>>,
    hashes: Vec<u64>,
    /// Entry indices by hash; `EMPTY` where free. Its length is a power of two, at least twice
    /// the entries.
    slots: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

impl Cache {
    fn new(words: usize) -> Self {
        Cache {
            words,
            bits: Vec::new(),
            states: Vec::new(),
            hashes: Vec::new(),
            slots: vec![EMPTY; 1024],
        }
    }

    /// Records the state; false if it was already there.
    fn insert(&mut self, set: &OpSet, state: Option<Value>) -> bool {
        let h = set.hash ^ state.map_or(0, |v| mix(v ^ 0x5555_5555_5555_5555));
        if self.states.len() * 2 >= self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let e = self.slots[i];
            if e == EMPTY {
                break;
            }
            let e = e as usize;
            if self.hashes[e] == h
                && self.states[e] == state
                && self.bits[e * self.words..(e + 1) * self.words] == set.bits[..]
            {
                return false;
            }
            i = (i + 1) & mask;
        }
        assert!(
            self.states.len() < EMPTY as usize,
            "cache entries fit in u32"
        );
        self.slots[i] = self.states.len() as u32;
        self.bits.extend_from_slice(&set.bits);
        self.states.push(state);
        self.hashes.push(h);
        true
    }

    fn grow(&mut self) {
        let mut slots = vec![EMPTY; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for (e, &h) in self.hashes.iter().enumerate() {
            let mut i = h as usize & mask;
            while slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            slots[i] = e as u32;
        }
        self.slots = slots;
    }
}

/// When an operation's effect may have happened until: its completion, or never known for `info`.
pub(super) fn completion_us(op: &Op) -> u64 {
    if op.outcome == Outcome::Info {
        u64::MAX
    } else {
        op.complete_us
    }
}

/// The operations' calls and returns as a doubly linked list in time order (the search lifts
/// calls out of it and puts them back); `entries[0]` is the head sentinel.
fn event_list(ops: &[&Op]) -> Vec<Entry> {
    // Events sorted by time; a call sorts before a return at the same instant, so operations that
    // touch at a boundary count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        let complete = completion_us(op);
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
        next: if n == 0 { NIL } else { 1 },
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

/// What an operation does to the register, as far as the search can tell: operations with the
/// same effect are interchangeable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Effect {
    Write(Value),
    Read(Option<Value>),
    /// A compare-and-swap that swapped.
    Swapped(Value, Value),
    /// One that was linearized without swapping.
    Kept(Value),
    /// One whose outcome is unknown: it swaps if it can.
    MaybeSwapped(Value, Value),
    /// An operation the register allows anywhere (a read that saw nothing).
    Any,
}

fn effect(op: &Op) -> Effect {
    use crate::history::OpKind;
    match (op.kind, op.outcome) {
        (OpKind::Put { value, .. }, _) => Effect::Write(value),
        (OpKind::Get { .. }, Outcome::Ok { read: Some(r), .. }) => Effect::Read(r),
        (OpKind::Get { .. }, _) => Effect::Any,
        (
            OpKind::Cas { expect, new, .. },
            Outcome::Ok {
                swapped: Some(true),
                ..
            },
        ) => Effect::Swapped(expect, new),
        (OpKind::Cas { expect, .. }, Outcome::Ok { .. }) => Effect::Kept(expect),
        (OpKind::Cas { expect, new, .. }, _) => Effect::MaybeSwapped(expect, new),
    }
}

/// For each operation, the twin that must be linearized before it (`NIL`: none): the previous
/// operation with the same effect whose interval starts and ends no later. Such twins can
/// always trade places in a linearization (and an unknown write can take an earlier unknown
/// twin's turn), so the search only tries them in order: without this, every subset of a
/// history's identical timed-out writes is a state of its own.
fn twins(ops: &[&Op]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (effect(ops[i]), ops[i].invoke_us, completion_us(ops[i]), i));
    let mut before = vec![NIL; ops.len()];
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if effect(ops[a]) == effect(ops[b]) && completion_us(ops[a]) <= completion_us(ops[b]) {
            before[b] = a;
        }
    }
    before
}

/// Searches for a linearization of one key's operations, spending at most the budget's steps.
pub(super) fn check_register(ops: &[&Op], budget: &mut Budget) -> Search {
    let mut entries = event_list(ops);
    let twin_before = twins(ops);
    let mut state: Option<Value> = None;
    let mut linearized = OpSet::new(ops.len());
    let mut cache = Cache::new(linearized.bits.len());
    let mut calls: Vec<(usize, Option<Value>)> = Vec::new();
    let mut deepest: (usize, usize) = (0, NIL);
    let mut cursor = entries[0].next;

    while entries[0].next != NIL {
        if !budget.spend() {
            return Search::Exhausted;
        }
        assert!(
            cursor != NIL,
            "the search ran off the end of the event list"
        );
        let entry = entries[cursor];
        let in_turn = |op: usize| twin_before[op] == NIL || linearized.contains(twin_before[op]);
        if entry.is_call {
            if !in_turn(entry.op) {
                cursor = entry.next;
                continue;
            }
            if let Some(next_state) = step(state, ops[entry.op]) {
                linearized.flip(entry.op);
                if cache.insert(&linearized, next_state) {
                    calls.push((cursor, state));
                    state = next_state;
                    lift(&mut entries, cursor);
                    cursor = entries[0].next;
                    continue;
                }
                linearized.flip(entry.op);
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
            linearized.flip(entries[call].op);
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
