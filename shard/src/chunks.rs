//! The sharded cluster as a pure model: MongoDB-style range chunks over a 64-bit key space.
//!
//! Chunk `i` covers `[chunks[i].lo, chunks[i + 1].lo)`. A chunk that grows past the size limit
//! splits at the middle of the key values it has seen; one that holds a single key value cannot
//! split and becomes *jumbo*. The balancer moves chunks from the fullest to the emptiest shard when
//! they differ by more than a threshold, one migration per shard at a time and at most half the
//! shards in parallel.

/// One chunk: a key range on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Inclusive lower bound of the range.
    pub lo: u64,
    /// Owning shard.
    pub shard: usize,
    /// Bytes stored.
    pub bytes: u64,
    /// Smallest key value written into it.
    pub key_min: u64,
    /// Largest key value written into it.
    pub key_max: u64,
    /// Holds one key value and is over the size limit: cannot split, cannot migrate.
    pub jumbo: bool,
    /// Writes since the counters were last reset (for the hottest-chunk measure).
    pub writes: u64,
}

/// One migration the balancer made: the chunk's range, its bytes and its two shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Inclusive lower bound of the chunk moved.
    pub lo: u64,
    /// Exclusive upper bound (`None`: the end of the key space).
    pub hi: Option<u64>,
    /// Its bytes when moved.
    pub bytes: u64,
    /// Donor.
    pub from: usize,
    /// Recipient.
    pub to: usize,
}

/// The chunk map of one sharded collection.
#[derive(Debug, Clone)]
pub struct ChunkMap {
    chunks: Vec<Chunk>,
    shards: usize,
    chunk_bytes_max: u64,
}

fn empty_chunk(lo: u64, shard: usize) -> Chunk {
    Chunk {
        lo,
        shard,
        bytes: 0,
        key_min: u64::MAX,
        key_max: 0,
        jumbo: false,
        writes: 0,
    }
}

impl ChunkMap {
    /// A ranged collection: one chunk covering everything, on shard 0 (MongoDB's primary shard).
    pub fn ranged(shards: usize, chunk_bytes_max: u64) -> ChunkMap {
        assert!(shards > 0 && chunk_bytes_max > 0);
        ChunkMap {
            chunks: vec![empty_chunk(0, 0)],
            shards,
            chunk_bytes_max,
        }
    }

    /// A hashed collection: pre-split into two chunks per shard, evenly over the hash space.
    pub fn presplit(shards: usize, chunk_bytes_max: u64) -> ChunkMap {
        assert!(shards > 0 && chunk_bytes_max > 0);
        let n = 2 * shards as u64;
        let width = u64::MAX / n + 1;
        let chunks = (0..n)
            .map(|i| empty_chunk(i * width, (i as usize) % shards))
            .collect();
        ChunkMap {
            chunks,
            shards,
            chunk_bytes_max,
        }
    }

    /// Builds a map from explicit (lower bound, shard) pairs, for tests and hand-checked cases.
    pub fn from_bounds(shards: usize, chunk_bytes_max: u64, bounds: &[(u64, usize)]) -> ChunkMap {
        assert!(
            bounds.first().is_some_and(|b| b.0 == 0),
            "the first chunk must start at 0"
        );
        assert!(
            bounds.windows(2).all(|w| w[0].0 < w[1].0),
            "bounds must increase"
        );
        assert!(bounds.iter().all(|b| b.1 < shards));
        ChunkMap {
            chunks: bounds.iter().map(|&(lo, s)| empty_chunk(lo, s)).collect(),
            shards,
            chunk_bytes_max,
        }
    }

    /// The chunks, in key order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    fn index_of(&self, key: u64) -> usize {
        self.chunks.partition_point(|c| c.lo <= key) - 1
    }

    /// Stores a document at `key`; returns the shard that took the write.
    pub fn insert(&mut self, key: u64, bytes: u64) -> usize {
        let i = self.index_of(key);
        let chunk = &mut self.chunks[i];
        chunk.bytes += bytes;
        chunk.writes += 1;
        chunk.key_min = chunk.key_min.min(key);
        chunk.key_max = chunk.key_max.max(key);
        let shard = chunk.shard;
        if chunk.bytes > self.chunk_bytes_max && !chunk.jumbo {
            self.split(i);
        }
        shard
    }

    /// Splits chunk `i` at the middle of its seen key values, sharing bytes and write counts in
    /// proportion (keys are assumed spread evenly between the extremes), or marks it jumbo.
    fn split(&mut self, i: usize) {
        let c = &self.chunks[i];
        if c.key_min == c.key_max {
            self.chunks[i].jumbo = true;
            return;
        }
        let span = c.key_max - c.key_min;
        let at = c.key_min + span / 2 + 1;
        debug_assert!(at > c.key_min && at <= c.key_max);
        let lower_share = (at - c.key_min) as f64 / (span as f64 + 1.0);
        let lower_bytes = (c.bytes as f64 * lower_share) as u64;
        let lower_writes = (c.writes as f64 * lower_share) as u64;
        let upper = Chunk {
            lo: at,
            shard: c.shard,
            bytes: c.bytes - lower_bytes,
            key_min: at,
            key_max: c.key_max,
            jumbo: false,
            writes: c.writes - lower_writes,
        };
        let lower = &mut self.chunks[i];
        lower.bytes = lower_bytes;
        lower.writes = lower_writes;
        lower.key_max = at - 1;
        self.chunks.insert(i + 1, upper);
    }

    /// Bytes stored per shard.
    pub fn shard_bytes(&self) -> Vec<u64> {
        let mut bytes = vec![0; self.shards];
        for c in &self.chunks {
            bytes[c.shard] += c.bytes;
        }
        bytes
    }

    /// One balancer round; returns the bytes migrated.
    pub fn balance(&mut self, imbalance_chunks: u64) -> u64 {
        self.balance_moves(imbalance_chunks)
            .iter()
            .map(|m| m.bytes)
            .sum()
    }

    /// One balancer round; returns its migrations.
    pub fn balance_moves(&mut self, imbalance_chunks: u64) -> Vec<Move> {
        let mut sizes = self.shard_bytes();
        let mut busy = vec![false; self.shards];
        let parallel_max = (self.shards / 2).max(1);
        let threshold = imbalance_chunks * self.chunk_bytes_max;
        let mut moves = Vec::new();
        for _ in 0..parallel_max {
            let free = || (0..self.shards).filter(|&s| !busy[s]);
            let (Some(donor), Some(recipient)) = (
                free().max_by_key(|&s| (sizes[s], s)),
                free().min_by_key(|&s| (sizes[s], s)),
            ) else {
                break;
            };
            if donor == recipient || sizes[donor] - sizes[recipient] <= threshold {
                break;
            }
            // Move the donor's lowest movable chunk, as MongoDB's balancer walks ranges in order.
            let Some(i) = self
                .chunks
                .iter()
                .position(|c| c.shard == donor && !c.jumbo && c.bytes > 0)
            else {
                busy[donor] = true;
                continue;
            };
            let hi = self.chunks.get(i + 1).map(|c| c.lo);
            let chunk = &mut self.chunks[i];
            chunk.shard = recipient;
            sizes[donor] -= chunk.bytes;
            sizes[recipient] += chunk.bytes;
            moves.push(Move {
                lo: chunk.lo,
                hi,
                bytes: chunk.bytes,
                from: donor,
                to: recipient,
            });
            busy[donor] = true;
            busy[recipient] = true;
        }
        moves
    }

    /// The distinct shards whose chunks overlap `[lo, hi]`.
    pub fn shards_for_range(&self, lo: u64, hi: u64) -> Vec<usize> {
        assert!(lo <= hi);
        let mut shards: Vec<usize> = self.chunks[self.index_of(lo)..]
            .iter()
            .take_while(|c| c.lo <= hi)
            .map(|c| c.shard)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// Shards that own at least one chunk: where an untargeted query is broadcast.
    pub fn shards_with_chunks(&self) -> usize {
        self.shards_for_range(0, u64::MAX).len()
    }

    /// Number of jumbo chunks.
    pub fn jumbo_count(&self) -> usize {
        self.chunks.iter().filter(|c| c.jumbo).count()
    }

    /// Resets the per-chunk write counters (at the start of a growth step).
    pub fn reset_writes(&mut self) {
        self.chunks.iter_mut().for_each(|c| c.writes = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_splits_at_the_middle_of_seen_keys_and_stays_on_its_shard() {
        let mut m = ChunkMap::ranged(2, 1000);
        for k in 0..20 {
            m.insert(k * 10, 100);
        }
        assert!(m.chunks().len() >= 2);
        assert!(m.chunks().iter().all(|c| c.shard == 0));
        assert!(m.chunks().windows(2).all(|w| w[0].lo < w[1].lo));
        assert_eq!(m.chunks().iter().map(|c| c.bytes).sum::<u64>(), 2000);
    }

    #[test]
    fn single_key_chunk_becomes_jumbo_and_never_moves() {
        let mut m = ChunkMap::ranged(2, 1000);
        for _ in 0..50 {
            m.insert(7, 100);
        }
        assert_eq!(m.jumbo_count(), 1);
        assert_eq!(m.balance(1), 0, "a jumbo chunk cannot migrate");
    }

    #[test]
    fn balancer_moves_from_fullest_to_emptiest_one_migration_per_shard() {
        let fill = |bounds: &[(u64, usize)]| {
            let mut m = ChunkMap::from_bounds(4, 1000, bounds);
            for i in 0..bounds.len() as u64 {
                for _ in 0..10 {
                    m.insert(i * 100 + 1, 100);
                }
            }
            m
        };
        // All on shard 0: it can donate only once per round, so one migration.
        let mut one_donor = fill(&(0..8).map(|i| (i * 100, 0)).collect::<Vec<_>>());
        assert_eq!(one_donor.balance(1), 1000);
        assert_eq!(one_donor.shard_bytes(), vec![7000, 1000, 0, 0]);
        // Shards 0 and 1 full: two migrations in parallel (the cap is 4 / 2 = 2), to 2 and 3.
        let mut two_donors = fill(
            &(0..8)
                .map(|i| (i * 100, (i / 4) as usize))
                .collect::<Vec<_>>(),
        );
        assert_eq!(two_donors.balance(1), 2000);
        assert_eq!(two_donors.shard_bytes(), vec![3000, 3000, 1000, 1000]);
    }

    #[test]
    fn range_routing_counts_distinct_shards() {
        let m = ChunkMap::from_bounds(3, 1000, &[(0, 0), (100, 1), (200, 2), (300, 0)]);
        assert_eq!(m.shards_for_range(10, 20), vec![0]);
        assert_eq!(m.shards_for_range(50, 150), vec![0, 1]);
        assert_eq!(m.shards_for_range(150, 350), vec![0, 1, 2]);
        assert_eq!(m.shards_for_range(300, u64::MAX), vec![0]);
        assert_eq!(m.shards_with_chunks(), 3);
    }

    #[test]
    fn presplit_spreads_chunks_round_robin() {
        let m = ChunkMap::presplit(4, 1000);
        assert_eq!(m.chunks().len(), 8);
        assert_eq!(m.shards_with_chunks(), 4);
    }
}
