//! A real sharded cluster built from what is real here: Postgres 15 servers as shards, the lab's
//! etcd as the config store, and quorumlab's own router — how teams shard Postgres by hand.
//!
//! Read in this order: `lab` (the shards, their schema and ownership check, `cluster up
//! sharded`), `map` (the chunk map in etcd, changed only by compare-and-swap), `router` (caches
//! the map, watches it, sends each write to the owner it names and retries on "stale config"),
//! `mover` (a chunk move by logical replication, in moveChunk's steps, leaving exactly one owner),
//! `status` (what `cluster status` shows of each shard), `run` (a scenario on the real shards,
//! measured as the simulator measures it), `inventory` (the same on an inventory's provisioned
//! shards); `settings` (`ShardCluster`, what `lab.json` records).

pub mod inventory;
pub mod lab;
pub mod map;
pub mod mover;
pub mod router;
pub mod run;
pub mod settings;
pub mod status;
