//! From documents and queries to points and ranges of the 64-bit chunk key space.
//!
//! A ranged key packs its fields, most significant first, into one order-preserving `u64`: each
//! field gets as many bits as its values need, and if the fields need more than 64 bits the least
//! significant ones lose their low bits (order is kept, ties grow). A hashed key scrambles the
//! packed value, which spreads writes but destroys range locality. A query is *targeted* when it
//! fixes a prefix of a ranged key (or every field of a hashed key); otherwise it is broadcast.

use crate::workload::{Dataset, Distribution, KeyField, KeySpec, DAY_MS};

/// How many bits a field's values need.
fn field_bits(dataset: &Dataset, key_field: KeyField, span_ms: u64) -> u32 {
    let values = match dataset.fields[key_field.field].dist {
        Distribution::Uniform { cardinality }
        | Distribution::Zipf { cardinality, .. }
        | Distribution::Enum { cardinality } => cardinality,
        Distribution::Monotonic if key_field.by_day => span_ms / DAY_MS + 1,
        Distribution::Monotonic => span_ms + 1,
    };
    64 - values.saturating_sub(1).leading_zeros()
}

/// A shard key compiled against its dataset.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    fields: Vec<KeyField>,
    /// Left shift of each field's value in the packed key.
    shifts: Vec<u32>,
    /// Right shift applied to each field's value first (when the fields need more than 64 bits).
    drops: Vec<u32>,
    widths: Vec<u32>,
    hashed: bool,
}

/// A query reduced to the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The query can be routed to the chunks overlapping this inclusive range.
    Range(u64, u64),
    /// The query must go to every shard.
    Broadcast,
}

/// What a query fixes: equality values per dataset field, and an optional timestamp range.
#[derive(Debug, Clone)]
pub struct QueryShape {
    /// `eq[f]` is `Some(v)` when the query fixes dataset field `f` to `v`.
    pub eq: Vec<Option<u64>>,
    /// Dataset field and inclusive `[from_ms, to_ms]` range.
    pub range: Option<(usize, u64, u64)>,
}

/// SplitMix64: a fast, well-mixed bijection on `u64` (for hashed keys and scattering ids).
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl KeyLayout {
    /// Lays out `key`'s fields; `span_ms` is how far timestamps will reach.
    pub fn new(dataset: &Dataset, key: &KeySpec, fields: Vec<KeyField>, span_ms: u64) -> KeyLayout {
        let widths: Vec<u32> = fields
            .iter()
            .map(|&f| field_bits(dataset, f, span_ms))
            .collect();
        let mut budget = 64u32;
        let mut kept = Vec::with_capacity(widths.len());
        for &w in &widths {
            let k = w.min(budget);
            kept.push(k);
            budget -= k;
        }
        let drops: Vec<u32> = widths.iter().zip(&kept).map(|(w, k)| w - k).collect();
        let mut shifts = vec![0; widths.len()];
        let mut shift = 0;
        for i in (0..widths.len()).rev() {
            shifts[i] = shift;
            shift += kept[i];
        }
        KeyLayout {
            fields,
            shifts,
            drops,
            widths: kept,
            hashed: key.hashed,
        }
    }

    fn field_value(&self, i: usize, value: u64) -> u64 {
        let v = if self.fields[i].by_day {
            value / DAY_MS
        } else {
            value
        };
        if self.widths[i] == 0 {
            return 0;
        }
        let v = v >> self.drops[i];
        let mask = if self.widths[i] >= 64 {
            u64::MAX
        } else {
            (1u64 << self.widths[i]) - 1
        };
        (v & mask) << self.shifts[i]
    }

    /// The key-space point of a document with these field values.
    pub fn point(&self, doc: &[u64]) -> u64 {
        let packed = (0..self.fields.len()).fold(0u64, |acc, i| {
            acc | self.field_value(i, doc[self.fields[i].field])
        });
        if self.hashed {
            mix64(packed)
        } else {
            packed
        }
    }

    /// Where a query must go.
    pub fn target(&self, q: &QueryShape) -> Target {
        let n = self.fields.len();
        if self.hashed {
            let mut packed = 0;
            for (i, f) in self.fields.iter().enumerate() {
                match q.eq[f.field] {
                    Some(v) => packed |= self.field_value(i, v),
                    None => return Target::Broadcast,
                }
            }
            let p = mix64(packed);
            return Target::Range(p, p);
        }
        // Every bit of field i, and every bit of the fields after it.
        let all_of = |i: usize| {
            if self.widths[i] == 0 {
                0
            } else {
                (u64::MAX >> (64 - self.widths[i])) << self.shifts[i]
            }
        };
        let all_below = |i: usize| {
            if self.shifts[i] >= 64 {
                u64::MAX
            } else {
                (1u64 << self.shifts[i]) - 1
            }
        };
        let mut prefix = 0;
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(v) = q.eq[f.field] {
                prefix |= self.field_value(i, v);
                continue;
            }
            if let Some((_, from, to)) = q.range.filter(|r| r.0 == f.field) {
                return Target::Range(
                    prefix | self.field_value(i, from),
                    prefix | self.field_value(i, to) | all_below(i),
                );
            }
            if i == 0 {
                return Target::Broadcast;
            }
            return Target::Range(prefix, prefix | all_of(i) | all_below(i));
        }
        debug_assert!(n > 0);
        Target::Range(prefix, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{FieldSpec, Workload};

    fn dataset() -> Dataset {
        Dataset {
            name: "e".into(),
            writes_per_step: 1,
            step_days: 1,
            doc_bytes: 1,
            fields: vec![
                FieldSpec {
                    name: "user".into(),
                    dist: Distribution::Uniform { cardinality: 256 },
                },
                FieldSpec {
                    name: "ts".into(),
                    dist: Distribution::Monotonic,
                },
            ],
            queries: vec![],
        }
    }

    fn layout(fields: &[&str], hashed: bool) -> KeyLayout {
        let key = KeySpec {
            name: "k".into(),
            dataset: "e".into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
            hashed,
        };
        let w = Workload {
            name: "w".into(),
            description: String::new(),
            cluster: Default::default(),
            growth: vec![1],
            datasets: vec![dataset()],
            keys: vec![key.clone()],
        };
        let resolved = w.key_fields(&key).unwrap();
        KeyLayout::new(&dataset(), &key, resolved, 10 * DAY_MS)
    }

    #[test]
    fn compound_ranged_key_orders_by_user_then_day() {
        let k = layout(&["user", "day(ts)"], false);
        assert!(k.point(&[1, 9 * DAY_MS]) < k.point(&[2, 0]));
        assert!(k.point(&[2, 0]) < k.point(&[2, DAY_MS]));
        assert_eq!(k.point(&[2, 10]), k.point(&[2, 20]), "same day, same point");
    }

    #[test]
    fn equality_on_the_prefix_targets_one_user_range() {
        let k = layout(&["user", "day(ts)"], false);
        let by_user = QueryShape {
            eq: vec![Some(5), None],
            range: None,
        };
        let Target::Range(lo, hi) = k.target(&by_user) else {
            panic!()
        };
        assert!(lo <= k.point(&[5, 0]) && k.point(&[5, 9 * DAY_MS]) <= hi);
        assert!(k.point(&[4, 9 * DAY_MS]) < lo && hi < k.point(&[6, 0]));
        let by_time = QueryShape {
            eq: vec![None, None],
            range: Some((1, 0, DAY_MS)),
        };
        assert_eq!(
            k.target(&by_time),
            Target::Broadcast,
            "no user: every shard"
        );
    }

    #[test]
    fn hashed_key_targets_only_full_equality() {
        let k = layout(&["user"], true);
        assert!(
            matches!(k.target(&QueryShape { eq: vec![Some(3), None], range: None }), Target::Range(a, b) if a == b)
        );
        assert_eq!(
            k.target(&QueryShape {
                eq: vec![None, None],
                range: Some((1, 0, 5))
            }),
            Target::Broadcast
        );
    }

    #[test]
    fn timestamp_key_turns_a_time_range_into_a_key_range() {
        let k = layout(&["ts"], false);
        let q = QueryShape {
            eq: vec![None, None],
            range: Some((1, DAY_MS, 2 * DAY_MS)),
        };
        assert_eq!(
            k.target(&q),
            Target::Range(k.point(&[0, DAY_MS]), k.point(&[0, 2 * DAY_MS]))
        );
    }
}
