//! RocksDB (an LSM tree) in this process, through the `rocksdb` crate on Debian's librocksdb.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBatch, WriteOptions, DB};

use crate::engine::{Client, Durability, Engine, Footprint, Shared, Written};
use crate::workload::{key_bytes, Op};

/// A RocksDB database in a directory this run made.
pub struct Rocks {
    db: DB,
    options: Options,
    dir: PathBuf,
    sync: bool,
    value_bytes: usize,
}

impl Rocks {
    /// Opens a new database in `dir` (which must not hold one) with the shared settings:
    /// block cache of `cache_mib`, bloom filters, no compression (the values are random).
    pub fn create(dir: &Path, shared: &Shared) -> Result<Rocks> {
        let mut table = BlockBasedOptions::default();
        let cache = Cache::new_lru_cache((shared.cache_mib * 1024 * 1024) as usize)
            .context("RocksDB block cache")?;
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks live in the block cache, as Postgres's index pages live in
        // shared_buffers: otherwise RocksDB would hold them in memory beyond the shared budget.
        table.set_cache_index_and_filter_blocks(true);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_error_if_exists(true);
        options.set_block_based_table_factory(&table);
        options.set_compression_type(DBCompressionType::None);
        options.enable_statistics();
        let db = DB::open(&options, dir)
            .with_context(|| format!("cannot open RocksDB in {}", dir.display()))?;
        Ok(Rocks {
            db,
            options,
            dir: dir.to_path_buf(),
            sync: shared.durability == Durability::Synced,
            value_bytes: shared.value_bytes,
        })
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.sync);
        w
    }

    /// A ticker from a statistics dump (`Options::get_statistics`), e.g. `rocksdb.wal.bytes`.
    fn ticker(stats: &str, name: &str) -> u64 {
        stats
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(" COUNT : ")?;
                rest.trim().parse().ok()
            })
            .unwrap_or(0)
    }

    fn property(&self, name: &str) -> Result<u64> {
        Ok(self.db.property_int_value(name)?.unwrap_or(0))
    }
}

/// Sums the sizes of the files under `dir` whose names `pick` accepts.
fn bytes_in(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if pick(&entry.file_name().to_string_lossy()) {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

impl Engine for Rocks {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn load_batch(&self, from: u64, to: u64, value: &dyn Fn(u64, &mut [u8])) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut bytes = vec![0; self.value_bytes];
        for key in from..to {
            value(key, &mut bytes);
            batch.put(key_bytes(key), &bytes);
        }
        Ok(self.db.write_opt(batch, &self.write_options())?)
    }

    fn client(&self) -> Result<Box<dyn Client + '_>> {
        Ok(Box::new(RocksClient {
            rocks: self,
            write: self.write_options(),
        }))
    }

    fn settle(&self) -> Result<()> {
        Ok(self.db.flush()?)
    }

    fn written(&self) -> Result<Written> {
        // One dump for all three tickers: it is a few hundred lines of text.
        let stats = self.options.get_statistics().unwrap_or_default();
        Ok(Written {
            wal_bytes: Self::ticker(&stats, "rocksdb.wal.bytes"),
            data_bytes: Self::ticker(&stats, "rocksdb.flush.write.bytes")
                + Self::ticker(&stats, "rocksdb.compact.write.bytes"),
        })
    }

    fn footprint(&self) -> Result<Footprint> {
        Ok(Footprint {
            data_bytes: bytes_in(&self.dir, |n| {
                n.ends_with(".sst") || n.starts_with("MANIFEST")
            })?,
            // WAL files are numbered (000004.log); LOG is RocksDB's own diagnostic log.
            wal_bytes: bytes_in(&self.dir, |n| {
                n.ends_with(".log") && n.starts_with(|c: char| c.is_ascii_digit())
            })?,
        })
    }

    fn quiesce(&self, limit: std::time::Duration) -> Result<bool> {
        let until = std::time::Instant::now() + limit;
        loop {
            let busy = self.property("rocksdb.num-running-compactions")?
                + self.property("rocksdb.num-running-flushes")?;
            if busy == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn fetch(&self, key: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key_bytes(key))?)
    }

    fn compaction_debt(&self) -> Result<Option<u64>> {
        Ok(Some(
            self.property("rocksdb.estimate-pending-compaction-bytes")?,
        ))
    }

    fn settings(&self) -> Result<Vec<(String, String)>> {
        let cache = self.property("rocksdb.block-cache-capacity")?;
        Ok(vec![
            (
                "block cache".into(),
                format!("{} MiB", cache / (1024 * 1024)),
            ),
            ("write buffer (memtable)".into(), "64 MiB (default)".into()),
            ("WAL sync per write".into(), self.sync.to_string()),
            ("compression".into(), "none".into()),
            ("bloom filter".into(), "10 bits per key".into()),
            (
                "index and filter blocks".into(),
                "in the block cache".into(),
            ),
            (
                "compaction".into(),
                "leveled (default), 2 background jobs".into(),
            ),
        ])
    }
}

struct RocksClient<'a> {
    rocks: &'a Rocks,
    write: WriteOptions,
}

impl Client for RocksClient<'_> {
    fn apply(&mut self, op: Op, value: &[u8]) -> Result<()> {
        let db = &self.rocks.db;
        match op {
            Op::Get(key) => {
                db.get_pinned(key_bytes(key))?;
            }
            Op::Put(key) => db.put_opt(key_bytes(key), value, &self.write)?,
            Op::Scan(key, len) => {
                let mut iter = db.raw_iterator();
                iter.seek(key_bytes(key));
                for _ in 0..len {
                    if !iter.valid() {
                        break;
                    }
                    std::hint::black_box(iter.value());
                    iter.next();
                }
                iter.status()?;
            }
        }
        Ok(())
    }
}
