//! Operation histories: what clients asked, when, and what they were told.
//!
//! Each operation is recorded from the client's side, as Jepsen and etcd's robustness tests do:
//! an invocation time, a completion time and an outcome. The outcome is `ok` (the system answered),
//! `fail` (the system definitely did not apply it, e.g. "not leader") or `info` (unknown: the client
//! timed out, so the write may or may not have taken effect). Times are microseconds since the start
//! of the run, whether the clock was simulated or real.

use serde::{Deserialize, Serialize};

/// A key in the key-value workload (`k0`, `k1`, ...).
pub type Key = u32;

/// A value written by the workload; every put writes a value never written before.
pub type Value = u64;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum OpKind {
    /// Write `value` to `key`.
    Put {
        /// The key.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Read `key`.
    Get {
        /// The key.
        key: Key,
    },
    /// Set `key` to `new` only if it currently holds `expect`.
    Cas {
        /// The key.
        key: Key,
        /// Value the key must hold.
        expect: Value,
        /// Value to write.
        new: Value,
    },
}

impl OpKind {
    /// The key this operation touches.
    pub fn key(&self) -> Key {
        match *self {
            OpKind::Put { key, .. } | OpKind::Get { key } | OpKind::Cas { key, .. } => key,
        }
    }

    /// Whether the operation may change state.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get { .. })
    }
}

/// What the client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// The operation completed. `read` is the value a get saw (`None`: key absent);
    /// `swapped` says whether a compare-and-swap took effect.
    Ok {
        /// For gets: the value read (`"read": null` in JSON is a read of an absent key).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        read: Option<Option<Value>>,
        /// For compare-and-swap: whether the swap happened.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        swapped: Option<bool>,
    },
    /// The operation definitely did not take effect.
    Fail,
    /// Unknown outcome: the operation may or may not have taken effect.
    Info,
}

/// A field that is present, even as `null`, is `Some`: serde's default would read `null` as absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(d).map(Some)
}

/// One client operation, from invocation to completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique id within the history.
    pub id: u64,
    /// The client that issued it (one operation in flight per client).
    pub client: u32,
    /// What was asked.
    #[serde(flatten)]
    pub kind: OpKind,
    /// When the client sent it, in microseconds since the run started.
    pub invoke_us: u64,
    /// When the client got its answer or gave up, in microseconds since the run started.
    pub complete_us: u64,
    /// What the client was told.
    pub outcome: Outcome,
    /// The node that answered, if any (for reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Op {
    /// A successful write: what the write-availability measurement counts.
    pub fn is_ok_write(&self) -> bool {
        self.kind.is_write() && matches!(self.outcome, Outcome::Ok { .. })
    }

    /// The request and its answer, e.g. `get k3 -> ok 17`.
    pub fn describe_brief(&self) -> String {
        let what = match self.kind {
            OpKind::Put { key, value } => format!("put k{key}={value}"),
            OpKind::Get { key } => format!("get k{key}"),
            OpKind::Cas { key, expect, new } => format!("cas k{key} {expect}->{new}"),
        };
        let result = match self.outcome {
            Outcome::Ok {
                read: Some(Some(v)),
                ..
            } => format!("ok {v}"),
            Outcome::Ok {
                read: Some(None), ..
            } => "ok (absent)".to_string(),
            Outcome::Ok {
                swapped: Some(false),
                ..
            } => "ok (not swapped)".to_string(),
            Outcome::Ok { .. } => "ok".to_string(),
            Outcome::Fail => "fail".to_string(),
            Outcome::Info => "unknown".to_string(),
        };
        format!("{what} -> {result}")
    }

    /// One line for checker reports, e.g. `#12 client 3 get k3 -> ok 17 [1.200s..1.204s]`.
    pub fn describe(&self) -> String {
        format!(
            "#{} client {} {} [{:.3}s..{:.3}s]",
            self.id,
            self.client,
            self.describe_brief(),
            self.invoke_us as f64 / 1e6,
            self.complete_us as f64 / 1e6
        )
    }
}

/// A whole run's operations, in invocation order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Every operation.
    pub ops: Vec<Op>,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Completed operations.
    pub ok: u64,
    /// Operations definitely not applied.
    pub fail: u64,
    /// Operations with unknown outcome.
    pub info: u64,
}

impl History {
    /// The history of completed operations recorded in any order: sorted by invocation (then
    /// client) and numbered in that order, so every runner numbers its operations alike.
    pub fn from_completed(ops: Vec<Op>) -> History {
        Self::from_completed_renumbered(ops).0
    }

    /// As [`History::from_completed`], also returning where each operation went: `moved_to[i]` is
    /// the new index (and id) of the operation recorded `i`-th, for traces that point into it.
    pub fn from_completed_renumbered(ops: Vec<Op>) -> (History, Vec<usize>) {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| (ops[i].invoke_us, ops[i].client));
        let mut moved_to = vec![0; ops.len()];
        for (new, &old) in order.iter().enumerate() {
            moved_to[old] = new;
        }
        let mut slots: Vec<Option<Op>> = ops.into_iter().map(Some).collect();
        let ops = order
            .iter()
            .enumerate()
            .map(|(new, &old)| {
                let mut op = slots[old].take().expect("each operation moves once");
                op.id = new as u64;
                op
            })
            .collect();
        (History { ops }, moved_to)
    }

    /// Counts ok / fail / info outcomes.
    pub fn counts(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok { .. } => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Info => c.info += 1,
            }
        }
        c
    }

    /// The longest stretch, in microseconds, with no write acknowledged, among stretches that
    /// end after `from_us`. Measured between write completions (and the run's end), as a client sees it.
    pub fn longest_write_gap_us(&self, from_us: u64, end_us: u64) -> u64 {
        let mut acks: Vec<u64> = self
            .ops
            .iter()
            .filter(|op| op.is_ok_write())
            .map(|op| op.complete_us)
            .collect();
        acks.sort_unstable();
        let mut last = acks
            .iter()
            .rev()
            .find(|&&t| t <= from_us)
            .copied()
            .unwrap_or(0);
        let mut longest = 0;
        for &t in acks
            .iter()
            .filter(|&&t| t > from_us)
            .chain(std::iter::once(&end_us))
        {
            longest = longest.max(t.saturating_sub(last));
            last = t;
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: u64, complete_us: u64, outcome: Outcome) -> Op {
        Op {
            id,
            client: 0,
            kind: OpKind::Put { key: 0, value: id },
            invoke_us: complete_us.saturating_sub(10),
            complete_us,
            outcome,
            node: None,
        }
    }

    #[test]
    fn write_gap_spans_the_fault_and_ignores_failures() {
        let ok = Outcome::Ok {
            read: None,
            swapped: None,
        };
        let h = History {
            ops: vec![
                put(1, 1_000, ok),
                put(2, 2_000, ok),
                put(3, 2_500, Outcome::Info),
                put(4, 9_000, ok),
                put(5, 9_500, ok),
            ],
        };
        assert_eq!(h.longest_write_gap_us(3_000, 10_000), 7_000);
        assert_eq!(
            h.counts(),
            OutcomeCounts {
                ok: 4,
                fail: 0,
                info: 1
            }
        );
    }

    #[test]
    fn op_json_is_flat_and_round_trips() {
        let op = put(
            7,
            100,
            Outcome::Ok {
                read: None,
                swapped: None,
            },
        );
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.contains("\"f\":\"put\""), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        let absent = Op {
            kind: OpKind::Get { key: 0 },
            outcome: Outcome::Ok {
                read: Some(None),
                swapped: None,
            },
            ..op
        };
        let json = serde_json::to_string(&absent).unwrap();
        assert!(json.contains("\"read\":null"), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), absent);
    }
}
