//! A register workload's client, as both runners drive it: which operation comes next from two
//! draws, and what the client remembers between operations — how many writes it issued (so every
//! value it writes is new) and the last value it saw of each key (what its next cas expects).

use std::collections::BTreeMap;

use crate::history::{Key, OpKind, Outcome, Value};

/// One client's memory of the register.
#[derive(Debug, Clone)]
pub struct RegisterClient {
    /// Weights of put, get and cas.
    mix: [u32; 3],
    /// This client's values start here, so no two clients write the same value.
    base: Value,
    writes: u64,
    last_seen: BTreeMap<Key, Value>,
}

impl RegisterClient {
    /// Client number `client` (0-based) with the `[put, get, cas]` weights.
    pub fn new(client: u32, mix: [u32; 3]) -> RegisterClient {
        assert!(mix.iter().sum::<u32>() > 0, "an empty operation mix");
        RegisterClient {
            mix,
            base: (u64::from(client) + 1) * 1_000_000_000,
            writes: 0,
            last_seen: BTreeMap::new(),
        }
    }

    /// The total weight: draw `pick` below it.
    pub fn total_weight(&self) -> u32 {
        self.mix.iter().sum()
    }

    /// The next operation on `key`, chosen by `pick` (drawn in `0..total_weight()`).
    pub fn next_op(&mut self, key: Key, pick: u32) -> OpKind {
        assert!(pick < self.total_weight());
        if pick < self.mix[0] {
            self.writes += 1;
            let value = self.base + self.writes;
            OpKind::Put { key, value }
        } else if pick < self.mix[0] + self.mix[1] {
            OpKind::Get { key }
        } else {
            self.writes += 1;
            let expect = self.last_seen.get(&key).copied().unwrap_or(0);
            let new = self.base + self.writes;
            OpKind::Cas { key, expect, new }
        }
    }

    /// Remembers what a completed operation showed of its key: the value written by an
    /// acknowledged put or successful cas, or the value a read returned.
    pub fn learn(&mut self, op: OpKind, outcome: &Outcome) {
        let Outcome::Ok { read, swapped } = outcome else {
            return;
        };
        let seen = match (op, read, swapped) {
            (OpKind::Put { value, .. }, _, _) => Some(value),
            (OpKind::Get { .. }, Some(Some(v)), _) => Some(*v),
            (OpKind::Cas { new, .. }, _, Some(true)) => Some(new),
            _ => None,
        };
        if let Some(value) = seen {
            self.last_seen.insert(op.key(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_unique_and_cas_expects_the_last_value_seen() {
        let mut c = RegisterClient::new(1, [1, 1, 1]);
        assert_eq!(
            c.next_op(3, 0),
            OpKind::Put {
                key: 3,
                value: 2_000_000_001
            }
        );
        let ok = Outcome::Ok {
            read: None,
            swapped: None,
        };
        c.learn(
            OpKind::Put {
                key: 3,
                value: 2_000_000_001,
            },
            &ok,
        );
        assert_eq!(
            c.next_op(3, 2),
            OpKind::Cas {
                key: 3,
                expect: 2_000_000_001,
                new: 2_000_000_002
            }
        );
        c.learn(
            OpKind::Get { key: 3 },
            &Outcome::Ok {
                read: Some(Some(7)),
                swapped: None,
            },
        );
        assert_eq!(
            c.next_op(3, 2),
            OpKind::Cas {
                key: 3,
                expect: 7,
                new: 2_000_000_003
            }
        );
        c.learn(OpKind::Put { key: 3, value: 9 }, &Outcome::Info);
        assert_eq!(
            c.next_op(3, 1),
            OpKind::Get { key: 3 },
            "an unknown outcome teaches nothing"
        );
    }
}
