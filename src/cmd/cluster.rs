//! `quorumlab cluster up|status|down`: a real local lab left running (hosts are network
//! namespaces; root). `up` is the system's own; `status` and `down` read what the lab recorded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use quorumlab_cluster::lab::Lab;
use quorumlab_cluster::postgres::lab as postgres;
use quorumlab_cluster::sharded;
use quorumlab_experiment::SystemName;

use super::load_scenario;
use crate::lab_setup::STATE_DIR_DEFAULT;
use crate::runtime::runtime;
use crate::system::{self, UpOptions};

/// `cluster`'s arguments.
#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
    /// Where the lab keeps its state, data and logs.
    #[arg(long, global = true, default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start a cluster: `cluster up etcd --nodes 3`, `cluster up postgres --replicas 2` or
    /// `cluster up sharded --shards 3`.
    Up {
        /// The system to run: etcd, postgres (Patroni-managed, on its own etcd), or sharded
        /// (Postgres shards, the chunk map in etcd).
        system: SystemName,
        /// etcd: members (default: the scenario's nodes).
        #[arg(long)]
        nodes: Option<usize>,
        /// Postgres: streaming replicas besides the primary (default: the scenario's nodes - 1).
        #[arg(long)]
        replicas: Option<usize>,
        /// The scenario whose settings configure the lab (default: etcd-leader-kill for etcd,
        /// pg-failover for postgres, whose [postgres] section gives Patroni's settings).
        #[arg(long)]
        scenario: Option<String>,
        /// Postgres: replication mode (default: the scenario's first).
        #[arg(long, value_parser = ["async", "sync"])]
        mode: Option<String>,
        /// Sharded: shards holding chunks (default: the scenario's; its new_shards start empty).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Show members, leader, term and health (and each Postgres node's role and lag).
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the lab started and remove its hosts (safe to repeat).
    Down,
}

/// Runs one `cluster` action.
pub fn command(args: ClusterArgs) -> Result<()> {
    let state_dir = &args.state_dir;
    match args.action {
        ClusterAction::Up {
            system,
            nodes,
            replicas,
            scenario,
            mode,
            shards,
        } => {
            let scenario =
                load_scenario(scenario.as_deref().unwrap_or(system.lab_scenario()), None)?;
            if scenario.system.name() != system {
                bail!(
                    "scenario {} has system = \"{}\"; `cluster up {system}` needs one with system = \"{system}\"",
                    scenario.name,
                    scenario.system.name()
                );
            }
            system::of(&scenario).cluster_up(&UpOptions {
                nodes,
                replicas,
                mode: mode.as_deref(),
                shards,
                state_dir,
            })?;
            status(state_dir, false)
        }
        ClusterAction::Status { json } => status(state_dir, json),
        ClusterAction::Down => down(state_dir),
    }
}

/// `cluster status`: the etcd members every lab has, and the Postgres nodes or shards when it
/// runs them.
fn status(state_dir: &Path, json: bool) -> Result<()> {
    let lab = Lab::load(state_dir)?;
    let rt = runtime()?;
    let members = rt.block_on(lab.status(Duration::from_millis(500)));
    let pg_nodes = match &lab.postgres {
        Some(_) => Some(rt.block_on(postgres::status(&lab, Duration::from_secs(1)))?),
        None => None,
    };
    let shards = match &lab.sharded {
        Some(_) => Some(rt.block_on(sharded::status::status(&lab, Duration::from_secs(1)))?),
        None => None,
    };
    if json {
        let value = serde_json::json!({
            "etcd": members,
            "postgres": pg_nodes,
            "sharded": shards.as_ref().map(|(version, shards)| {
                serde_json::json!({ "collection_version": version, "shards": shards })
            }),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if let Some(nodes) = &pg_nodes {
        print_pg_nodes(nodes);
    }
    if let Some((version, shards)) = &shards {
        print_shards(*version, shards);
    }
    print_members(&members);
    Ok(())
}

fn print_pg_nodes(nodes: &[postgres::PgNodeStatus]) {
    println!(
        "{:<5} {:<18} {:<8} {:>8} {:>14} {:>14} {:>10}",
        "node", "endpoint", "role", "timeline", "received lsn", "replayed lsn", "lag bytes"
    );
    for n in nodes {
        println!(
            "{:<5} {:<18} {:<8} {:>8} {:>14} {:>14} {:>10}",
            n.name,
            n.endpoint,
            if n.up { n.role.as_str() } else { "DOWN" },
            n.timeline,
            n.received_lsn,
            n.replayed_lsn,
            n.lag_bytes.map_or("-".to_string(), |b| b.to_string())
        );
    }
    println!();
}

fn print_shards(version: u64, shards: &[sharded::status::ShardStatus]) {
    println!("chunk map at collection version {version}");
    println!(
        "{:<5} {:<18} {:<6} {:<24} {:>10} {:>8}",
        "shard", "endpoint", "health", "chunks", "owned rows", "orphans"
    );
    let count = |n: Option<i64>| n.map_or("-".to_string(), |n| n.to_string());
    for s in shards {
        let chunks: Vec<String> = s.chunks.iter().map(u32::to_string).collect();
        println!(
            "{:<5} {:<18} {:<6} {:<24} {:>10} {:>8}",
            s.name,
            s.endpoint,
            if s.up { "up" } else { "DOWN" },
            if chunks.is_empty() {
                "-".to_string()
            } else {
                chunks.join(",")
            },
            count(s.owned_rows),
            count(s.orphan_rows)
        );
    }
    println!();
}

fn print_members(members: &[quorumlab_cluster::etcd::MemberStatus]) {
    println!(
        "{:<5} {:<26} {:<6} {:<8} {:>6} {:>10}",
        "node", "endpoint", "health", "role", "term", "raft index"
    );
    for m in members {
        println!(
            "{:<5} {:<26} {:<6} {:<8} {:>6} {:>10}",
            m.name,
            m.endpoint,
            if m.up { "up" } else { "DOWN" },
            if m.leader {
                "leader"
            } else if m.up {
                "follower"
            } else {
                "-"
            },
            m.term,
            m.raft_index
        );
    }
}

/// `cluster down`.
fn down(state_dir: &Path) -> Result<()> {
    if Lab::down(state_dir)? {
        println!("lab in {} stopped and removed", state_dir.display());
    } else {
        println!("no lab in {}; nothing to stop", state_dir.display());
    }
    Ok(())
}
