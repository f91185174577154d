//! What a lab records about its sharded cluster: a leaf, so that the lab's state (`crate::lab`)
//! can hold it without importing the sharded lab that brings it up.

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::routing::Bounds;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use crate::postgres::settings::{superuser_options, PG_PORT};

/// What `lab.json` records about a sharded cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCluster {
    /// Hosts `n1..=n{shards}` run one shard each (`s1` on `n1`).
    pub shards: usize,
    /// Number of chunks the key space is cut into (even bounds).
    pub chunks: usize,
    /// Password of the `postgres` superuser on every shard.
    pub superuser_password: String,
    /// The hosts that run routers (nothing else), in router order: `r1` first. Empty for a lab
    /// recorded before routers had hosts; its routers run in the driver's own namespace.
    #[serde(default)]
    pub router_hosts: Vec<NodeId>,
    /// Every shard's Postgres port: 5432 on the lab's hosts, the inventory's `shard_pg_port`
    /// beside Patroni's Postgres on provisioned ones.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    PG_PORT
}

impl ShardCluster {
    /// Connection options for the shard at `addr`.
    pub fn connect_options(&self, addr: std::net::IpAddr) -> PgConnectOptions {
        superuser_options(addr, &self.superuser_password).port(self.port)
    }

    /// The chunk bounds.
    pub fn bounds(&self) -> Bounds {
        Bounds::even(self.chunks)
    }
}
