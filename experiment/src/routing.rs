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
    fn even_bounds_cover_the_point_space() {
        let b = Bounds::even(4);
        assert_eq!(b.chunk_of(0), 0);
        assert_eq!(b.chunk_of(u64::MAX), 3);
        assert_eq!(b.chunk_of(u64::MAX / 4 + 1), 1);
    }
}
