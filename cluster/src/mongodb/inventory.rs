//! MongoDB scenarios on the hosts an inventory names: the replica set that Ansible's `mongodb`
//! role made on the `mongodb` group, with kills and partitions through the hosts' agents.
//!
//! The set outlives runs, so before each run the driver gives it the scenario's settings with
//! `replSetReconfig` (heartbeat interval, election and catch-up timeouts, chaining, priorities),
//! starts every member and heals every link; afterwards it heals and starts them again.

use std::path::Path;

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use quorumlab_experiment::fault::{Fault, FaultExecutor};
use quorumlab_experiment::mongodb::{MongoSettings, WriteConcern};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::system::System;
use quorumlab_proto::agent::Action;

use super::run::{run_on_set, target_error, MongoRealRun, MONGOD_UNIT};
use super::uri::ReplSetUri;
use crate::inventory::Inventory;
use crate::lab::{Lab, LabError};
use crate::run::{RealLab, RunError};

/// `mongod`'s port on every member (the role's `mongod.conf`).
const MONGOD_PORT: u16 = 27017;

/// A provisioned replica set as a fault runner: its agents do what a real lab does, and the
/// driver sends `replSetStepDown`.
struct InventorySet(RealLab);

impl FaultExecutor for InventorySet {
    fn runner(&self) -> &'static str {
        "the replica set of the inventory"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::StepDown { .. } => Ok(()),
            Fault::DuplicateRequests { .. } => {
                Err("the driver sends each insert once (retryable writes are off)".into())
            }
            other => self.0.supports(other),
        }
    }
}

/// The URI of the inventory's `mongodb` group, checked against the scenario.
fn uri_of(
    inventory: &Inventory,
    scenario: &Scenario,
    mongo: &MongoSettings,
) -> Result<ReplSetUri, RunError> {
    let group = &inventory.mongodb.0;
    let nodes = scenario.topology.nodes;
    if group.len() != nodes {
        return Err(LabError::Settings(format!(
            "inventory {}: the scenario needs {nodes} MongoDB members but the mongodb group has {} (give --nodes {})",
            inventory.path.display(),
            group.len(),
            group.len()
        ))
        .into());
    }
    let set = inventory.var_str("mongodb_replica_set").unwrap_or("rs0");
    let hosts: Vec<String> = group
        .iter()
        .map(|h| format!("{}:{MONGOD_PORT}", h.addr))
        .collect();
    ReplSetUri::parse(
        &format!("mongodb://{}/?replicaSet={set}", hosts.join(",")),
        &mongo.replica_set,
    )
}

/// Gives the set the scenario's settings (`replSetReconfig` on the primary).
async fn reconfigure(uri: &ReplSetUri, mongo: &MongoSettings) -> Result<(), RunError> {
    let fail = |what: &str, e: mongodb::error::Error| target_error(uri, what, e);
    let client = Client::with_uri_str(&uri.uri)
        .await
        .map_err(|e| fail("cannot be used", e))?;
    let admin = client.database("admin");
    let answer = admin
        .run_command(doc! { "replSetGetConfig": 1 })
        .await
        .map_err(|e| fail("is unreachable", e))?;
    let mut config: Document = answer
        .get_document("config")
        .map_err(|e| RunError::Target(format!("replSetGetConfig answered without a config: {e}")))?
        .clone();
    let version = config.get_i32("version").unwrap_or(1);
    config.insert("version", version + 1);
    let mut settings = config.get_document("settings").cloned().unwrap_or_default();
    settings.insert(
        "heartbeatIntervalMillis",
        mongo.heartbeat_interval_ms as i64,
    );
    settings.insert("electionTimeoutMillis", mongo.election_timeout_ms as i64);
    settings.insert("catchUpTimeoutMillis", mongo.catch_up_timeout_ms);
    settings.insert("chainingAllowed", mongo.chaining_allowed);
    config.insert("settings", settings);
    let members: Vec<Bson> = config
        .get_array("members")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m {
            Bson::Document(mut d) => {
                d.insert("priority", mongo.priority(i));
                Bson::Document(d)
            }
            other => other,
        })
        .collect();
    config.insert("members", members);
    admin
        .run_command(doc! { "replSetReconfig": config })
        .await
        .map_err(|e| fail("refused the scenario's settings (replSetReconfig)", e))?;
    Ok(())
}

/// Starts every member's `mongod` and heals every link.
async fn restore(lab: &Lab, members: usize) -> Result<(), RunError> {
    lab.heal_all().await?;
    for id in NodeId::all(members) {
        lab.signal(id, MONGOD_UNIT, Action::Start).await?;
    }
    Ok(())
}

/// Runs `scenario` once with write concern `w` on the replica set of `inventory`'s `mongodb`
/// group, leaving its members started and its links healed.
pub async fn run_mongo_on_inventory(
    scenario: &Scenario,
    w: WriteConcern,
    run: u64,
    inventory: &Inventory,
    state_dir: &Path,
) -> Result<MongoRealRun, RunError> {
    let System::Mongodb(mongo) = &scenario.system else {
        unreachable!("only MongoDB scenarios reach here");
    };
    let uri = uri_of(inventory, scenario, mongo)?;
    let lab = Lab::from_inventory(inventory, inventory.mongodb.0.clone(), state_dir)?;
    InventorySet(RealLab::of_hosts(&lab).await?)
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(|reason| RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason,
        })?;
    let members = scenario.topology.nodes;
    restore(&lab, members).await?;
    reconfigure(&uri, mongo).await?;
    let result = run_on_set(scenario, (w, run), &uri, Some(&lab)).await;
    restore(&lab, members).await?;
    result
}
