//! The chunk map in the lab's etcd: the real cluster's config store.
//!
//! Under [`PREFIX`]: `version` holds the collection version (the highest chunk version handed
//! out), `chunk/<c>` holds chunk `c`'s [`Entry`] packed as in the simulator, and `critical/<c>`
//! exists while a move of chunk `c` is in its critical section (routers that see it hold writes
//! to that chunk). A move commits by one transaction: both values compared, both written — a
//! compare-and-swap, so two movers can never both win, and a version never goes back.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use quorumlab_experiment::routing::{Entry, Table};

use crate::lab::{Lab, LabError};

/// Where the chunk map lives in etcd.
pub const PREFIX: &str = "/quorumlab/sharded/";

/// The map as one read saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct MapView {
    /// Each chunk's entry.
    pub table: Table,
    /// Chunks in a move's critical section.
    pub critical: BTreeSet<u32>,
    /// The collection version.
    pub version: u64,
    /// etcd's revision of the read (a watch from `revision + 1` misses nothing).
    pub revision: i64,
}

/// A client of the chunk map.
pub struct ChunkMap {
    client: Client,
}

fn chunk_key(chunk: u32) -> String {
    format!("{PREFIX}chunk/{chunk:04}")
}

fn critical_key(chunk: u32) -> String {
    format!("{PREFIX}critical/{chunk:04}")
}

fn version_key() -> String {
    format!("{PREFIX}version")
}

fn etcd_err(what: &str, e: etcd_client::Error) -> LabError {
    LabError::Timeout(format!("etcd: {what}: {e}"))
}

impl ChunkMap {
    /// Connects to the lab's etcd.
    pub async fn connect(lab: &Lab) -> Result<ChunkMap, LabError> {
        ChunkMap::connect_to(&lab.endpoints(), Duration::from_secs(2)).await
    }

    /// Connects to etcd at `endpoints`, every request bounded by `timeout`.
    pub async fn connect_to(endpoints: &[String], timeout: Duration) -> Result<ChunkMap, LabError> {
        let options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| etcd_err("not reachable", e))?;
        Ok(ChunkMap { client })
    }

    /// The etcd client, for watching the map.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Deletes the whole map (what an earlier run on the same etcd left).
    pub async fn clear(&mut self) -> Result<(), LabError> {
        self.client
            .delete(
                PREFIX,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map(|_| ())
            .map_err(|e| etcd_err("deleting the chunk map", e))
    }

    /// Writes a fresh map: every chunk's entry and the collection version.
    pub async fn write_initial(&mut self, table: &Table) -> Result<(), LabError> {
        let top = table.iter().map(|e| e.version).max().unwrap_or(1);
        let mut puts = vec![TxnOp::put(version_key(), top.to_string(), None)];
        for (c, entry) in table.iter().enumerate() {
            puts.push(TxnOp::put(
                chunk_key(c as u32),
                entry.encode().to_string(),
                None,
            ));
        }
        // etcd limits a transaction's operations (128 by default): write in slices.
        for slice in puts.chunks(100) {
            self.client
                .txn(Txn::new().and_then(slice.to_vec()))
                .await
                .map_err(|e| etcd_err("writing the chunk map", e))?;
        }
        Ok(())
    }

    /// Reads the whole map (linearizably).
    pub async fn read(&mut self, chunks: usize) -> Result<MapView, LabError> {
        let response = self
            .client
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_err("reading the chunk map", e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut view = MapView {
            table: vec![
                Entry {
                    version: 0,
                    shard: 0
                };
                chunks
            ],
            critical: BTreeSet::new(),
            version: 0,
            revision,
        };
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            let value = kv.value_str().unwrap_or_default();
            apply(&mut view, key, Some(value));
        }
        if view.table.iter().any(|e| e.version == 0) {
            return Err(LabError::Postgres(format!(
                "the chunk map under {PREFIX} in etcd is incomplete (is a sharded lab up?)"
            )));
        }
        Ok(view)
    }

    /// Moves chunk `chunk` from `old` to `new` if the map still holds `old` and the collection
    /// version is still `version`: one compare-and-swap. Returns whether it swapped.
    pub async fn commit(
        &mut self,
        chunk: u32,
        old: Entry,
        new: Entry,
        version: u64,
    ) -> Result<bool, LabError> {
        assert!(
            new.version > old.version,
            "a commit raises the chunk's version"
        );
        let txn = Txn::new()
            .when([
                Compare::value(chunk_key(chunk), CompareOp::Equal, old.encode().to_string()),
                Compare::value(version_key(), CompareOp::Equal, version.to_string()),
            ])
            .and_then([
                TxnOp::put(chunk_key(chunk), new.encode().to_string(), None),
                TxnOp::put(version_key(), new.version.to_string(), None),
            ]);
        let response = self
            .client
            .txn(txn)
            .await
            .map_err(|e| etcd_err("committing a move", e))?;
        Ok(response.succeeded())
    }

    /// Marks chunk `chunk` as in a move's critical section (`Some(move_id)`) or not (`None`).
    pub async fn set_critical(&mut self, chunk: u32, move_id: Option<u64>) -> Result<(), LabError> {
        let result = match move_id {
            Some(id) => self
                .client
                .put(critical_key(chunk), id.to_string(), None)
                .await
                .map(|_| ()),
            None => self
                .client
                .delete(critical_key(chunk), None)
                .await
                .map(|_| ()),
        };
        result.map_err(|e| etcd_err("marking a critical section", e))
    }
}

/// Applies one key's value (`None`: deleted) to `view`; keys outside the map are ignored.
pub fn apply(view: &mut MapView, key: &str, value: Option<&str>) {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return;
    };
    let number = |s: &str| s.parse::<u64>().ok();
    if rest == "version" {
        if let Some(v) = value.and_then(number) {
            view.version = v;
        }
    } else if let Some(c) = rest
        .strip_prefix("chunk/")
        .and_then(|c| c.parse::<usize>().ok())
    {
        if let (Some(slot), Some(v)) = (view.table.get_mut(c), value.and_then(number)) {
            *slot = Entry::decode(v);
        }
    } else if let Some(c) = rest
        .strip_prefix("critical/")
        .and_then(|c| c.parse::<u32>().ok())
    {
        if value.is_some() {
            view.critical.insert(c);
        } else {
            view.critical.remove(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_apply_to_the_view_and_strangers_are_ignored() {
        let mut view = MapView {
            table: vec![
                Entry {
                    version: 1,
                    shard: 0
                };
                3
            ],
            critical: BTreeSet::new(),
            version: 1,
            revision: 0,
        };
        let moved = Entry {
            version: 2,
            shard: 2,
        };
        apply(&mut view, &chunk_key(1), Some(&moved.encode().to_string()));
        apply(&mut view, &version_key(), Some("2"));
        apply(&mut view, &critical_key(1), Some("7"));
        apply(&mut view, "/elsewhere/chunk/0001", Some("9"));
        assert_eq!(view.table[1], moved);
        assert_eq!(view.version, 2);
        assert!(view.critical.contains(&1));
        apply(&mut view, &critical_key(1), None);
        assert!(view.critical.is_empty());
        assert_eq!(
            view.table[0],
            Entry {
                version: 1,
                shard: 0
            }
        );
    }
}
