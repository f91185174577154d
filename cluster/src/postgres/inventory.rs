//! Postgres scenarios on the hosts an inventory names: the Patroni cluster that Ansible's
//! `patroni` role made on the `postgres` group, on the `etcd` group's etcd.
//!
//! The cluster outlives runs, so before each run the driver gives it the scenario's settings
//! through Patroni's REST API (`PATCH /config`, as `patronictl edit-config` does: ttl,
//! loop_wait, retry_timeout, maximum_lag_on_failover and synchronous mode are cluster-wide,
//! dynamic settings kept in etcd), starts every member, heals every link, waits until the
//! replicas stream, and drops the lab's tables so the run starts empty.

use std::path::Path;
use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::{ReplicationMode, SyncCommit};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::system::System;
use quorumlab_proto::agent::Action;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::lab::{connect, signal_patroni, wait_for_primary, wait_for_streaming, PATRONI_PORT};
use super::run::{run_on_lab, PgRealRun};
use super::settings::{PatroniSettings, PgCluster};
use crate::inventory::Inventory;
use crate::lab::{Lab, LabError};
use crate::pki;
use crate::run::{RealLab, RunError};

/// The Postgres cluster of `inventory`, to run `scenario` on in `mode`.
fn lab_of_inventory(
    inventory: &Inventory,
    scenario: &Scenario,
    mode: ReplicationMode,
    state_dir: &Path,
) -> Result<Lab, RunError> {
    let System::Postgres(pg) = &scenario.system else {
        unreachable!("only Postgres scenarios reach here");
    };
    let group = &inventory.postgres.0;
    if group.len() != scenario.topology.nodes {
        return Err(LabError::Settings(format!(
            "inventory {}: the scenario needs {} Postgres nodes but the postgres group has {} (give --nodes {})",
            inventory.path.display(),
            scenario.topology.nodes,
            group.len(),
            group.len()
        ))
        .into());
    }
    let settings = PatroniSettings::from_scenario(pg, mode);
    settings.validate().map_err(LabError::Settings)?;
    let password_file = inventory.pki_dir.join(pki::PG_SUPERUSER_PASSWORD);
    let password = std::fs::read_to_string(&password_file)
        .map_err(|e| crate::lab::state_err(&password_file, e))?;
    let mut lab = Lab::from_inventory(inventory, group.clone(), state_dir)?;
    lab.postgres = Some(PgCluster {
        db_nodes: group.len(),
        superuser_password: password.trim().to_string(),
        patroni: settings,
    });
    Ok(lab)
}

/// Patroni's dynamic configuration for `settings`, as `PATCH /config` takes it.
fn dynamic_config(settings: &PatroniSettings) -> serde_json::Value {
    let sync = settings.mode == ReplicationMode::Sync;
    let commit = if sync {
        settings.synchronous_commit
    } else {
        SyncCommit::Local
    };
    serde_json::json!({
        "ttl": settings.ttl_s,
        "loop_wait": settings.loop_wait_s,
        "retry_timeout": settings.retry_timeout_s,
        "maximum_lag_on_failover": settings.maximum_lag_on_failover_bytes,
        "synchronous_mode": sync,
        "postgresql": {"parameters": {"synchronous_commit": commit.to_string()}},
    })
}

/// Sends `PATCH /config` to the Patroni REST API of `host`; Patroni writes it to etcd, and every
/// member applies it on its next loop.
async fn patch_config(lab: &Lab, host: NodeId, body: &serde_json::Value) -> Result<(), LabError> {
    let addr = std::net::SocketAddr::new(lab.addr(host), PATRONI_PORT);
    let body = body.to_string();
    let request = format!(
        "PATCH /config HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let failed =
        |why: String| LabError::Postgres(format!("Patroni REST API on {host} ({addr}): {why}"));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| failed("no answer within 10 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(failed(format!("PATCH /config answered '{status}'")))
    }
}

/// Brings the inventory's cluster to the state a run starts from.
async fn prepare(lab: &Lab) -> Result<(), LabError> {
    lab.restore_etcd().await?;
    let pg = super::lab::cluster(lab)?.clone();
    for host in NodeId::all(pg.db_nodes) {
        signal_patroni(lab, host, Action::Resume).await.ok();
        signal_patroni(lab, host, Action::Start).await?;
    }
    let primary = wait_for_primary(lab, None, Duration::from_secs(90)).await?;
    patch_config(lab, primary, &dynamic_config(&pg.patroni)).await?;
    // The new settings (synchronous mode above all) take effect on Patroni's next loops.
    let limit = Duration::from_secs(pg.patroni.loop_wait_s * 3 + 60);
    wait_for_streaming(lab, primary, pg.db_nodes - 1, limit).await?;
    wait_for_sync_setting(lab, primary, pg.patroni.mode, limit).await?;
    let mut conn = connect(lab, primary, Duration::from_secs(5)).await?;
    sqlx::query("DROP TABLE IF EXISTS ql_writes, ql_heartbeat")
        .execute(&mut conn)
        .await
        .map_err(|e| LabError::Postgres(format!("dropping the lab's tables on {primary}: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// Waits until the primary's `synchronous_standby_names` says `mode` (empty: asynchronous).
async fn wait_for_sync_setting(
    lab: &Lab,
    primary: NodeId,
    mode: ReplicationMode,
    limit: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + limit;
    loop {
        let mut conn = connect(lab, primary, Duration::from_secs(2)).await?;
        let names: Option<String> =
            sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
                .fetch_one(&mut conn)
                .await
                .ok();
        let _ = conn.close().await;
        let sync_now = names.is_some_and(|n| !n.trim().is_empty());
        if sync_now == (mode == ReplicationMode::Sync) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(format!(
                "Patroni did not switch {primary} to {mode} replication within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `scenario` once in `mode` on the Postgres cluster an inventory names; the hosts are left
/// with every member started and every link healed.
pub async fn run_postgres_on_inventory(
    scenario: &Scenario,
    mode: ReplicationMode,
    run_number: u64,
    inventory: &Inventory,
    state_dir: &Path,
) -> Result<PgRealRun, RunError> {
    let lab = lab_of_inventory(inventory, scenario, mode, state_dir)?;
    RealLab::of_hosts(&lab).await?.check(scenario)?;
    prepare(&lab).await?;
    let result = run_on_lab(scenario, run_number, &lab).await;
    lab.heal_all().await?;
    for host in NodeId::all(lab.postgres.as_ref().map_or(0, |pg| pg.db_nodes)) {
        signal_patroni(&lab, host, Action::Start).await?;
    }
    result
}
