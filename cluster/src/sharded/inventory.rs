//! Sharded scenarios on the hosts an inventory names: the plain Postgres shards Ansible's `shard`
//! role made on the `shards` group (port `shard_pg_port`), with the chunk map in the `etcd`
//! group's etcd. The routers run in the driver, so a scenario that cuts a router off is refused.
//!
//! The shards outlive runs, so before each run the driver starts every shard and etcd member,
//! heals every link, drops what an earlier run left (subscriptions, slots, publications, the
//! lab's tables) and makes the schema, the chunk tables and the map as a fresh lab has them.

use std::path::Path;

use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::sharded::{ShardedSettings, StepFaultKind};
use quorumlab_experiment::system::System;
use quorumlab_proto::agent::Action;

use super::lab::{initial_table, make_fresh, reset_shards, shard_host, Layout};
use super::run::{run_on_lab, unsupported, RealShardedRun};
use super::settings::ShardCluster;
use crate::inventory::Inventory;
use crate::lab::{state_err, Lab, LabError};
use crate::pki;
use crate::run::{RealLab, RunError};

/// The shards' Postgres port where the inventory does not say (`shard_pg_port`; Ansible's
/// `lab_defaults` has the same).
pub const SHARD_PG_PORT_DEFAULT: u16 = 5433;

/// Why a scenario with `settings` cannot run on an inventory's shards, beyond what a namespace
/// lab refuses.
pub fn refused_on_inventory(settings: &ShardedSettings) -> Option<String> {
    settings
        .step_faults
        .iter()
        .any(|f| f.kind == StepFaultKind::IsolateRouter)
        .then(|| {
            "cutting a router off needs routers on hosts of their own; on an inventory's hosts the \
             routers run in the driver (use a namespace lab: run without --inventory)"
                .into()
        })
}

/// The sharded cluster of `inventory`, as `layout` says (its router count aside: routers run in
/// the driver).
fn lab_of_inventory(
    inventory: &Inventory,
    layout: Layout,
    state_dir: &Path,
) -> Result<Lab, LabError> {
    let group = &inventory.shards.0;
    let needed = layout.shards;
    let path = inventory.path.display();
    if group.len() != needed {
        return Err(LabError::Settings(format!(
            "inventory {path}: {needed} shards are needed ({} holding chunks, {} added) but the shards group has {}",
            needed - layout.empty,
            layout.empty,
            group.len()
        )));
    }
    if inventory.etcd.0.is_empty() {
        return Err(LabError::Settings(format!(
            "inventory {path}: no etcd group (the chunk map lives in the lab's etcd)"
        )));
    }
    let port = match inventory.var_u64("shard_pg_port")? {
        None => SHARD_PG_PORT_DEFAULT,
        Some(p) => u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
            LabError::Settings(format!(
                "inventory {path}: all.vars.shard_pg_port: not a port number"
            ))
        })?,
    };
    let password_file = inventory.pki_dir.join(pki::PG_SUPERUSER_PASSWORD);
    let password =
        std::fs::read_to_string(&password_file).map_err(|e| state_err(&password_file, e))?;
    // The shards come first, so shard `s` is host `n{s+1}` as on a namespace lab.
    let mut lab = Lab::from_inventory(inventory, group.clone(), state_dir)?;
    lab.sharded = Some(ShardCluster {
        shards: needed,
        chunks: layout.chunks,
        superuser_password: password.trim().to_string(),
        router_hosts: Vec::new(),
        port,
    });
    Ok(lab)
}

/// Starts every etcd member and shard and heals every link.
async fn start_all(lab: &Lab, shards: usize) -> Result<(), LabError> {
    lab.restore_etcd().await?;
    for shard in 0..shards {
        lab.signal(shard_host(shard), "postgres", Action::Start)
            .await?;
    }
    Ok(())
}

/// Runs `scenario` once on the shards an inventory names; the hosts are left with every shard
/// and etcd member started and every link healed.
pub async fn run_sharded_on_inventory(
    scenario: &Scenario,
    run_number: u64,
    inventory: &Inventory,
    state_dir: &Path,
) -> Result<RealShardedRun, RunError> {
    let refuse = |reason: String| RunError::Unsupported {
        scenario: scenario.name.clone(),
        reason,
    };
    let System::Sharded(settings) = &scenario.system else {
        return Err(refuse("not a sharded scenario".into()));
    };
    if let Some(why) = unsupported(scenario, settings).or_else(|| refused_on_inventory(settings)) {
        return Err(refuse(why));
    }
    let layout = Layout {
        shards: settings.shards + settings.new_shards,
        empty: settings.new_shards,
        chunks: settings.chunks,
        routers: settings.routers,
    };
    let lab = lab_of_inventory(inventory, layout, state_dir)?;
    RealLab::of_hosts(&lab).await?.check(scenario)?;
    make_fresh_lab(&lab, layout).await?;
    let result = run_on_lab(scenario, settings, run_number, &lab).await;
    start_all(&lab, layout.shards).await?;
    Ok(result?)
}

/// Every shard and etcd member started, every link healed, what earlier runs left dropped, and
/// the schema, chunk tables and map of a fresh lab made.
async fn make_fresh_lab(lab: &Lab, layout: Layout) -> Result<(), LabError> {
    start_all(lab, layout.shards).await?;
    reset_shards(lab).await?;
    make_fresh(
        lab,
        &initial_table(layout.shards, layout.empty, layout.chunks),
    )
    .await
}

/// `cluster up sharded --inventory`: the inventory's shards made fresh as `layout` says and
/// recorded in `state_dir`, so that `cluster status`, `move-chunk` and `down` (which forgets the
/// record and leaves the hosts running) work as on a namespace lab.
pub async fn up_on_inventory(
    inventory: &Inventory,
    layout: Layout,
    state_dir: &Path,
) -> Result<Lab, LabError> {
    if state_dir.join("lab.json").exists() {
        return Err(LabError::AlreadyUp(state_dir.display().to_string()));
    }
    let lab = lab_of_inventory(inventory, layout, state_dir)?;
    make_fresh_lab(&lab, layout).await?;
    std::fs::create_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
    lab.save()?;
    Ok(lab)
}
