//! The Postgres model: streaming replication under a Patroni-style failover manager whose leader
//! lock lives in the simulated etcd.
//!
//! Reading order: [`server`] (WAL, standbys, what a commit waits for), [`patroni`] (the HA
//! decision), [`host`] (how both meet the simulated network), [`run`] (one scenario run and its
//! measurements, the same ones the real driver takes).

pub mod host;
pub mod patroni;
pub mod run;
pub mod server;

pub use run::{run_pg, PgSimRun};
