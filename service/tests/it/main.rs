//! The service's integration tests, built and linked as one binary instead of one per file: the
//! API, its indexes, the online migration, replica reads and failover against real Postgres 15
//! servers, and activity events against MongoDB when one is named.

#[path = "../common/mod.rs"]
mod common;
mod http;

mod activity;
mod api;
mod failover;
mod indexes;
mod observability;
mod online_migration;
mod replicas;

use tokio::sync::{Mutex, MutexGuard};

static SERVERS: Mutex<()> = Mutex::const_new(());

/// Tests that start Postgres servers hold this while they run, so they run one at a time as they
/// did as separate binaries: on two cores, a million-row index build beside a failover deadline
/// would measure the machine, not the service.
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERVERS.lock().await
}
