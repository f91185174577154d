//! The routing table of a sharded cluster: which shard owns each chunk, at which version, as the
//! config store keeps it — the simulator's config servers (its etcd model) and the real cluster's
//! etcd alike.
//!
//! Key 0 holds the collection version, the highest chunk version handed out; key `c + 1` holds
//! chunk `c`'s entry (its version and owner) packed into one value, so a migration commits by one
//! compare-and-swap on that key. Chunk boundaries are fixed for a run (splits are metadata-only
//! and made before it), so chunk numbers never change meaning.

use crate::history::{Key, Value};

/// The config store's key of the collection version.
pub const COLLECTION_VERSION_KEY: Key = 0;

/// One chunk's routing entry: its version (raised by every migration of it) and its owner.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Entry {
    /// The chunk's version; a newer owner always has a higher one.
    pub version: u64,
    /// The owning shard (0 is `s1`).
    pub shard: usize,
}

impl Entry {
    /// Packed as stored: version in the high 48 bits, shard in the low 16.
    pub fn encode(self) -> Value {
        assert!(self.shard < 1 << 16 && self.version < 1 << 48);
        (self.version << 16) | self.shard as u64
    }

    /// The inverse of [`Entry::encode`].
    pub fn decode(value: Value) -> Entry {
        Entry {
            version: value >> 16,
            shard: (value & 0xffff) as usize,
        }
    }
}

/// The config store's key of chunk `chunk` (0-based).
pub fn chunk_key(chunk: u32) -> Key {
    chunk + 1
}

/// Chunk boundaries: chunk `c` covers shard-key points `[lows[c], lows[c + 1])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    lows: Vec<u64>,
}

impl Bounds {
    /// `chunks` chunks of equal width over the 64-bit point space.
    pub fn even(chunks: usize) -> Bounds {
        assert!(chunks > 0);
        let width = u64::MAX / chunks as u64 + 1;
        Bounds {
            lows: (0..chunks as u64).map(|c| c * width).collect(),
        }
    }

    /// Explicit lower bounds, the first 0 and increasing.
    pub fn from_lows(lows: Vec<u64>) -> Bounds {
        assert!(lows.first() == Some(&0), "the first chunk starts at 0");
        assert!(lows.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Bounds { lows }
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.lows.len()
    }

    /// Whether there are none (never: a collection has at least one chunk).
    pub fn is_empty(&self) -> bool {
        self.lows.is_empty()
    }

    /// The chunk holding `point`.
    pub fn chunk_of(&self, point: u64) -> u32 {
        (self.lows.partition_point(|&lo| lo <= point) - 1) as u32
    }

    /// Chunk `chunk`'s range of points.
    pub fn range(&self, chunk: u32) -> PointRange {
        let c = chunk as usize;
        PointRange {
            low: self.lows[c],
            high: self.lows.get(c + 1).copied(),
        }
    }

    /// The chunk whose range is exactly `range`: a range that covers parts of several chunks,
    /// or only part of one, names no chunk (a move never splits or joins chunks).
    pub fn chunk_with_range(&self, range: PointRange) -> Result<u32, RangeError> {
        if range.high.is_some_and(|high| high <= range.low) {
            return Err(RangeError::Empty(range));
        }
        let first = self.chunk_of(range.low);
        let last = range
            .high
            .map_or(self.len() as u32 - 1, |high| self.chunk_of(high - 1));
        if first != last {
            return Err(RangeError::Overlaps {
                range,
                first: (first, self.range(first)),
                last: (last, self.range(last)),
            });
        }
        if self.range(first) != range {
            return Err(RangeError::Inside {
                range,
                chunk: (first, self.range(first)),
            });
        }
        Ok(first)
    }
}

/// A range of shard-key points: `low` up to `high` (excluded), or to the end of the point space
/// when `high` is `None`. Written `0x4000000000000000..0x8000000000000000` (or `0x...` then `..`
/// for the last chunk); decimal works too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointRange {
    /// First point in the range.
    pub low: u64,
    /// First point after it; `None`: the range runs to the end.
    pub high: Option<u64>,
}

impl std::fmt::Display for PointRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#018x}..", self.low)?;
        match self.high {
            Some(high) => write!(f, "{high:#018x}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for PointRange {
    type Err = String;

    fn from_str(text: &str) -> Result<PointRange, String> {
        let point = |s: &str| {
            let s = s.trim().replace('_', "");
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .map_err(|e| format!("'{s}' is not a point (0x-hex or decimal u64): {e}"))
        };
        let (low, high) = text
            .split_once("..")
            .ok_or_else(|| format!("'{text}' is not a range: write LOW..HIGH or LOW.. (points)"))?;
        Ok(PointRange {
            low: point(low)?,
            high: match high.trim() {
                "" => None,
                high => Some(point(high)?),
            },
        })
    }
}

/// Why a range names no chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Nothing in it.
    #[error("range {0} is empty")]
    Empty(PointRange),
    /// It overlaps several chunks.
    #[error(
        "range {range} overlaps chunks {} ({}) to {} ({}): a move takes exactly one chunk's range",
        first.0, first.1, last.0, last.1
    )]
    Overlaps {
        /// The range asked for.
        range: PointRange,
        /// The first chunk it touches, with its range.
        first: (u32, PointRange),
        /// The last.
        last: (u32, PointRange),
    },
    /// It is only part of one chunk.
    #[error(
        "range {range} is only part of chunk {} ({}): a move takes exactly one chunk's range",
        chunk.0, chunk.1
    )]
    Inside {
        /// The range asked for.
        range: PointRange,
        /// The chunk it is inside, with its range.
        chunk: (u32, PointRange),
    },
}

/// A whole routing table as read from the config servers: one entry per chunk.
pub type Table = Vec<Entry>;

/// The first chunk whose version is lower in `new` than in `old`: chunk versions never go back.
pub fn version_went_back(old: &Table, new: &Table) -> Option<(u32, u64, u64)> {
    old.iter()
        .zip(new)
        .enumerate()
        .find(|(_, (o, n))| n.version < o.version)
        .map(|(c, (o, n))| (c as u32, o.version, n.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_order_by_version_first() {
        let e = Entry {
            version: 7,
            shard: 3,
        };
        assert_eq!(Entry::decode(e.encode()), e);
        let newer = Entry {
            version: 8,
            shard: 0,
        };
        assert!(newer.encode() > e.encode());
    }

    #[test]
    fn a_range_names_a_chunk_only_when_it_is_that_chunks_whole_range() {
        let b = Bounds::even(4);
        let range = |s: &str| s.parse::<PointRange>().unwrap();
        assert_eq!(
            b.chunk_with_range(range("0x4000000000000000..0x8000000000000000")),
            Ok(1)
        );
        assert_eq!(b.chunk_with_range(range("0xc000000000000000..")), Ok(3));
        assert_eq!(b.chunk_with_range(range("0..4611686018427387904")), Ok(0));
        let overlaps = b
            .chunk_with_range(range("0x2000000000000000..0x9000000000000000"))
            .unwrap_err();
        assert!(matches!(
            overlaps,
            RangeError::Overlaps {
                first: (0, _),
                last: (2, _),
                ..
            }
        ));
        assert_eq!(
            overlaps.to_string(),
            "range 0x2000000000000000..0x9000000000000000 overlaps chunks 0 \
             (0x0000000000000000..0x4000000000000000) to 2 (0x8000000000000000..0xc000000000000000): \
             a move takes exactly one chunk's range"
        );
        assert!(matches!(
            b.chunk_with_range(range("0x4000000000000000..0x5000000000000000")),
            Err(RangeError::Inside { chunk: (1, _), .. })
        ));
        assert!(matches!(
            b.chunk_with_range(range("0x8000000000000000..")),
            Err(RangeError::Overlaps {
                first: (2, _),
                last: (3, _),
                ..
            })
        ));
        assert!(matches!(
            b.chunk_with_range(range("5..5")),
            Err(RangeError::Empty(_))
        ));
        assert!("5".parse::<PointRange>().is_err());
        assert!("0xzz..".parse::<PointRange>().is_err());
    }

    #[test]
    fn even_bounds_cover_the_point_space() {
        let b = Bounds::even(4);
        assert_eq!(b.chunk_of(0), 0);
        assert_eq!(b.chunk_of(u64::MAX), 3);
        assert_eq!(b.chunk_of(u64::MAX / 4 + 1), 1);
    }
}
