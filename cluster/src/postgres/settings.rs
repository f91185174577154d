//! What a Postgres lab is configured with and records: Patroni's settings (from the scenario's
//! `[postgres]` table) and, in `lab.json`, the cluster's size and superuser password.

use quorumlab_experiment::postgres::{PostgresSettings, ReplicationMode, SyncCommit};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

use std::net::IpAddr;

/// Postgres's port on every database host.
pub const PG_PORT: u16 = 5432;
/// Patroni settings that a scenario chooses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatroniSettings {
    /// Leader key TTL, seconds.
    pub ttl_s: u64,
    /// HA loop period, seconds.
    pub loop_wait_s: u64,
    /// Retry budget for DCS and Postgres calls, seconds.
    pub retry_timeout_s: u64,
    /// Replicas further behind than this are not promoted.
    pub maximum_lag_on_failover_bytes: u64,
    /// Asynchronous streaming or Patroni's synchronous mode.
    pub mode: ReplicationMode,
    /// `synchronous_commit` in synchronous mode.
    pub synchronous_commit: SyncCommit,
}

impl PatroniSettings {
    /// The settings a scenario asks for, in `mode`.
    pub fn from_scenario(pg: &PostgresSettings, mode: ReplicationMode) -> PatroniSettings {
        PatroniSettings {
            ttl_s: pg.ttl_s,
            loop_wait_s: pg.loop_wait_s,
            retry_timeout_s: pg.retry_timeout_s,
            maximum_lag_on_failover_bytes: pg.maximum_lag_on_failover_bytes,
            mode,
            synchronous_commit: pg.synchronous_commit,
        }
    }

    /// Patroni's rule, checked before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.loop_wait_s == 0 || self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s {
            return Err(format!(
                "Patroni needs 0 < loop_wait and loop_wait + 2*retry_timeout <= ttl, but {} + 2*{} > {}",
                self.loop_wait_s, self.retry_timeout_s, self.ttl_s
            ));
        }
        Ok(())
    }
}

/// What `lab.json` records about the Postgres cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgCluster {
    /// Hosts `n1..=n{db_nodes}` run Patroni and Postgres.
    pub db_nodes: usize,
    /// Password of the `postgres` superuser (the lab's clients connect as it).
    pub superuser_password: String,
    /// Patroni's settings.
    pub patroni: PatroniSettings,
}

impl PgCluster {
    /// Connection options for the node at `addr`.
    pub fn connect_options(&self, addr: IpAddr) -> PgConnectOptions {
        superuser_options(addr, &self.superuser_password)
    }
}

/// Connection options for the lab's `postgres` superuser on the server at `addr`: every lab
/// client (Patroni's cluster and the sharded one alike) connects this way.
pub fn superuser_options(addr: IpAddr, password: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&addr.to_string())
        .port(PG_PORT)
        .username("postgres")
        .password(password)
        .database("postgres")
        .application_name("quorumlab")
        .disable_statement_logging()
}
