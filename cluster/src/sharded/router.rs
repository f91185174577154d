//! The router: a library the workload (and the reference service) write and read through.
//!
//! It caches the chunk map, keeps it fresh by watching etcd, and sends each write to the shard
//! its cached map names. A chunk marked critical is held: the write waits until the mark goes.
//! A shard that does not own the chunk refuses with [`STALE_SQLSTATE`]; the router then reads
//! the map afresh and retries (each such retry is counted) — so a router that missed a change,
//! cut off from etcd's watch, still never writes to an old owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use quorumlab_experiment::routing::Bounds;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::lab::{chunk_table, cluster, shard_host, STALE_SQLSTATE};
use super::map::{apply, ChunkMap, MapView, PREFIX};
use crate::lab::{Lab, LabError};
use crate::postgres::lab::one_line;

/// How much longer than the statement timeout a write waits for the shard's answer.
const ANSWER_SLACK: Duration = Duration::from_millis(200);

/// How one write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Committed on shard `shard` (0 is `s1`).
    Ok {
        /// The owner it was written to.
        shard: usize,
        /// How long it was held by a critical section.
        held_ms: u64,
    },
    /// Refused and known not written (stale after every retry, or a shard's plain refusal).
    Fail(String),
    /// Outcome unknown (the connection failed or timed out after sending).
    Unknown(String),
}

/// Counters of a router.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Writes retried after a shard answered "stale config".
    pub stale_retries: AtomicU64,
    /// Map reads after a stale answer.
    pub refreshes: AtomicU64,
    /// Writes that waited for a critical section.
    pub held: AtomicU64,
}

/// Router settings.
#[derive(Debug, Clone, Copy)]
pub struct RouterOptions {
    /// Keep the cache fresh by watching etcd (a router without it learns only from refusals).
    pub watch: bool,
    /// Retries after "stale config".
    pub retries: u32,
    /// Longest a write is held by a critical section before it fails.
    pub hold_max: Duration,
    /// Statement timeout of a write.
    pub write_timeout: Duration,
    /// Connections per shard.
    pub connections: u32,
    /// Deliberately broken: read each shard's table without asking whether it owns the chunk,
    /// so a broadcast returns a donor's orphans beside the owner's copy (what the read check
    /// must catch).
    pub orphan_reads: bool,
}

impl Default for RouterOptions {
    fn default() -> RouterOptions {
        RouterOptions {
            watch: true,
            retries: 10,
            hold_max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(2),
            connections: 8,
            orphan_reads: false,
        }
    }
}

/// A router over a lab's shards.
pub struct Router {
    shards: Vec<PgPool>,
    map: tokio::sync::Mutex<ChunkMap>,
    cache: Arc<Mutex<MapView>>,
    bounds: Bounds,
    chunks: usize,
    options: RouterOptions,
    /// Its counters.
    pub stats: RouterStats,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(task) = self.watch.take() {
            task.abort();
        }
    }
}

/// The shard-key point of a workload key: keys spread over the 64-bit space (hashed sharding),
/// as the simulator's routers place them.
pub fn point_of(key: u64) -> u64 {
    // splitmix64's finaliser: a bijection, so distinct keys never share a point.
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Router {
    /// A router over `lab`'s shards, its cache read from etcd.
    pub async fn start(lab: &Lab, options: RouterOptions) -> Result<Router, LabError> {
        let sharded = cluster(lab)?;
        let mut shards = Vec::new();
        for shard in 0..sharded.shards {
            let connect = sharded
                .connect_options(lab.addr(shard_host(shard)))
                .options([(
                    "statement_timeout",
                    options.write_timeout.as_millis().to_string(),
                )]);
            shards.push(
                PgPoolOptions::new()
                    .max_connections(options.connections)
                    .acquire_timeout(options.write_timeout)
                    .connect_lazy_with(connect),
            );
        }
        let mut map = ChunkMap::connect(lab).await?;
        let view = map.read(sharded.chunks).await?;
        let cache = Arc::new(Mutex::new(view));
        let watch = if options.watch {
            let map = ChunkMap::connect(lab).await?;
            Some(tokio::spawn(watch_map(map, cache.clone())))
        } else {
            None
        };
        Ok(Router {
            shards,
            map: tokio::sync::Mutex::new(map),
            cache,
            bounds: sharded.bounds(),
            chunks: sharded.chunks,
            options,
            stats: RouterStats::default(),
            watch,
        })
    }

    /// The chunk of workload key `key`.
    pub fn chunk_of(&self, key: u64) -> u32 {
        self.bounds.chunk_of(point_of(key))
    }

    /// The map as this router has it now.
    pub fn cached(&self) -> MapView {
        self.cache.lock().expect("not poisoned").clone()
    }

    /// Inserts row `id` with key `key` into its chunk, on the owner.
    pub async fn insert(&self, id: u64, key: u64) -> WriteOutcome {
        let chunk = self.chunk_of(key);
        let mut held_ms = 0;
        for _ in 0..=self.options.retries {
            let shard = match self.wait_unless_critical(chunk).await {
                Ok((shard, waited)) => {
                    held_ms += waited;
                    shard
                }
                Err(why) => return WriteOutcome::Fail(why),
            };
            let sql = format!(
                "INSERT INTO {} (id, key) VALUES ($1, $2)",
                chunk_table(chunk)
            );
            let insert = sqlx::query(&sql)
                .bind(id as i64)
                .bind(key as i64)
                .execute(&self.shards[shard]);
            // The statement timeout bounds a write the shard received; this bounds one whose
            // packets are dropped on the way (a router or shard cut off), as a client would,
            // a little later so that the shard's definite answer wins when it comes.
            let limit = self.options.write_timeout + ANSWER_SLACK;
            let Ok(written) = tokio::time::timeout(limit, insert).await else {
                return WriteOutcome::Unknown(format!(
                    "no answer from s{} within {limit:?}",
                    shard + 1
                ));
            };
            match written {
                Ok(_) => return WriteOutcome::Ok { shard, held_ms },
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(STALE_SQLSTATE) => {
                    self.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                    self.refresh().await;
                }
                // A missing table on a shard that never held the chunk: the map named it as
                // owner but it is not (yet) — as stale as the refusal above.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                    self.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                    self.refresh().await;
                }
                Err(sqlx::Error::Database(e)) => {
                    return WriteOutcome::Fail(one_line(e.message()));
                }
                Err(sqlx::Error::PoolTimedOut) => {
                    return WriteOutcome::Fail("no connection to the shard in time".into());
                }
                Err(e) => return WriteOutcome::Unknown(one_line(&e.to_string())),
            }
        }
        WriteOutcome::Fail(format!(
            "chunk {chunk} stale after {} retries",
            self.options.retries
        ))
    }

    /// Reads the ids of key `key`'s documents: from the owner the cached map names, or with
    /// `broadcast` from every shard (each answers for its own ownership: nothing when it does
    /// not own the chunk). A shard's "stale config" makes the router refresh and read again.
    /// `None` when the read failed or timed out.
    pub async fn read(&self, key: u64, broadcast: bool) -> Option<Vec<u64>> {
        let chunk = self.chunk_of(key);
        for _ in 0..=self.options.retries {
            self.wait_unless_critical(chunk).await.ok()?;
            let entry = self.cache.lock().expect("not poisoned").table[chunk as usize];
            let targets: Vec<usize> = match broadcast {
                true => (0..self.shards.len()).collect(),
                false => vec![entry.shard],
            };
            let mut ids = Vec::new();
            let mut stale = false;
            for shard in targets {
                let orphans_too = format!(
                    "SELECT id FROM {} WHERE key = $1 AND id > 0",
                    chunk_table(chunk)
                );
                let query = match self.options.orphan_reads {
                    false => sqlx::query_scalar::<_, i64>("SELECT ql_read($1, $2, $3, $4)")
                        .bind(chunk as i32)
                        .bind(key as i64)
                        .bind(entry.version as i64)
                        .bind(shard == entry.shard),
                    true => sqlx::query_scalar::<_, i64>(&orphans_too).bind(key as i64),
                }
                .fetch_all(&self.shards[shard]);
                let limit = self.options.write_timeout + ANSWER_SLACK;
                match tokio::time::timeout(limit, query).await.ok()? {
                    Ok(found) => ids.extend(found.into_iter().map(|id| id as u64)),
                    // The broken build's read of a shard that never held the chunk.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {}
                    Err(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some(STALE_SQLSTATE) =>
                    {
                        stale = true;
                        break;
                    }
                    Err(_) => return None,
                }
            }
            if !stale {
                return Some(ids);
            }
            self.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
            self.refresh().await;
        }
        None
    }

    /// The chunk's owner once no critical section holds it, and how long it waited (ms).
    async fn wait_unless_critical(&self, chunk: u32) -> Result<(usize, u64), String> {
        let started = Instant::now();
        let mut counted = false;
        loop {
            let (critical, owner) = {
                let view = self.cache.lock().expect("not poisoned");
                (
                    view.critical.contains(&chunk),
                    view.table[chunk as usize].shard,
                )
            };
            if !critical {
                return Ok((owner, started.elapsed().as_millis() as u64));
            }
            if !counted {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            if started.elapsed() > self.options.hold_max {
                return Err(format!(
                    "chunk {chunk} held by a critical section for over {:?}",
                    self.options.hold_max
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Reads the map afresh into the cache (chunk versions never go back in it).
    async fn refresh(&self) {
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let read = self.map.lock().await.read(self.chunks).await;
        if let Ok(fresh) = read {
            merge(&mut self.cache.lock().expect("not poisoned"), fresh);
        }
    }
}

/// Takes `fresh` into `cache` where it is newer: entries by version, marks by revision.
fn merge(cache: &mut MapView, fresh: MapView) {
    for (mine, theirs) in cache.table.iter_mut().zip(&fresh.table) {
        if theirs.version > mine.version {
            *mine = *theirs;
        }
    }
    if fresh.revision >= cache.revision {
        cache.critical = fresh.critical;
        cache.version = cache.version.max(fresh.version);
        cache.revision = fresh.revision;
    }
}

/// Applies every change under the map's prefix to `cache`, re-reading after a broken watch.
async fn watch_map(mut map: ChunkMap, cache: Arc<Mutex<MapView>>) {
    loop {
        let (chunks, from) = {
            let view = cache.lock().expect("not poisoned");
            (view.table.len(), view.revision + 1)
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        if let Ok(mut stream) = map.client().watch(PREFIX, Some(options)).await {
            while let Ok(Some(response)) = stream.message().await {
                let mut view = cache.lock().expect("not poisoned");
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str().unwrap_or_default();
                    let value = match event.event_type() {
                        EventType::Put => Some(kv.value_str().unwrap_or_default()),
                        EventType::Delete => None,
                    };
                    let mut next = view.clone();
                    apply(&mut next, key, value);
                    next.revision = kv.mod_revision();
                    merge(&mut view, next);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(fresh) = map.read(chunks).await {
            merge(&mut cache.lock().expect("not poisoned"), fresh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumlab_experiment::routing::Entry;
    use std::collections::BTreeSet;

    fn view(version: u64, revision: i64, critical: &[u32]) -> MapView {
        MapView {
            table: vec![
                Entry {
                    version,
                    shard: version as usize % 3
                };
                2
            ],
            critical: critical.iter().copied().collect::<BTreeSet<_>>(),
            version,
            revision,
        }
    }

    #[test]
    fn an_older_read_never_takes_an_entry_back() {
        let mut cache = view(5, 50, &[]);
        merge(&mut cache, view(4, 40, &[1]));
        assert_eq!(cache.table[0].version, 5);
        assert!(
            cache.critical.is_empty(),
            "an older read's marks are ignored too"
        );
        merge(&mut cache, view(6, 60, &[1]));
        assert_eq!(cache.table[0].version, 6);
        assert!(cache.critical.contains(&1));
    }

    #[test]
    fn points_spread_distinct_keys() {
        let points: BTreeSet<u64> = (0..1000).map(point_of).collect();
        assert_eq!(points.len(), 1000);
        let bounds = Bounds::even(4);
        let mut per_chunk = [0; 4];
        for p in points {
            per_chunk[bounds.chunk_of(p) as usize] += 1;
        }
        assert!(per_chunk.iter().all(|&n| n > 200), "{per_chunk:?}");
    }
}
