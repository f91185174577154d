//! `quorumlab cluster up|status|down|move-chunk`: a real local lab left running (hosts are network
//! namespaces; root). `up` is the system's own; `status`, `down` and a sharded lab's
//! `move-chunk` read what the lab recorded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use quorumlab_cluster::inventory::Inventory;
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
        /// Sharded: make the lab on the `shards` and `etcd` groups of this inventory (provisioned
        /// by ansible/site.yml) instead of namespace hosts: every shard reset, the map written.
        /// `down` then forgets the lab and leaves the hosts running.
        #[arg(long)]
        inventory: Option<PathBuf>,
    },
    /// Show members, leader, term and health (and each Postgres node's role and lag).
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the lab started and remove its hosts (safe to repeat).
    Down,
    /// Move one chunk of a sharded lab to another shard now, by logical replication: the
    /// balancer's move (copy, catch-up, critical section, compare-and-swap in etcd), then the
    /// donor's copy deleted. Name the chunk by number or by its exact range of shard-key points.
    MoveChunk {
        /// The chunk, numbered from 0 as `cluster status` lists them.
        #[arg(long)]
        chunk: Option<u32>,
        /// The chunk's exact range of points, LOW..HIGH (0x-hex or decimal; LOW.. for the last
        /// chunk); a range that overlaps several chunks or is part of one is refused.
        #[arg(long)]
        range: Option<String>,
        /// The shard to move it to: s1, s2, ...
        #[arg(long)]
        to: String,
        /// Print the move's report as JSON.
        #[arg(long)]
        json: bool,
    },
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
            inventory,
        } => {
            if inventory.is_some() && system != SystemName::Sharded {
                bail!(
                    "cluster up {system} --inventory: an inventory's {system} is provisioned by Ansible (ansible/site.yml); run scenarios on it with `run --inventory`"
                );
            }
            let inventory = inventory.as_deref().map(Inventory::load).transpose()?;
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
                inventory: inventory.as_ref(),
            })?;
            status(state_dir, false)
        }
        ClusterAction::Status { json } => status(state_dir, json),
        ClusterAction::Down => down(state_dir),
        ClusterAction::MoveChunk {
            chunk,
            range,
            to,
            json,
        } => move_chunk(state_dir, (chunk, range.as_deref()), &to, json),
    }
}

/// `cluster move-chunk`: checks the chunk and the shard against the lab, then moves it.
fn move_chunk(
    state_dir: &Path,
    (chunk, range): (Option<u32>, Option<&str>),
    to: &str,
    json: bool,
) -> Result<()> {
    use quorumlab_cluster::sharded::map::ChunkMap;
    use quorumlab_cluster::sharded::mover::{self, MoveHooks, MoveLimits, MoveOutcome};
    use quorumlab_experiment::routing::PointRange;

    let shard = parse_shard(to)?;
    let range: Option<PointRange> = range
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let lab = Lab::load(state_dir)?;
    let cluster = sharded::lab::cluster(&lab)?;
    if shard >= cluster.shards {
        bail!(
            "unknown shard {to}: the lab's shards are s1..s{}",
            cluster.shards
        );
    }
    let bounds = cluster.bounds();
    let chunk = match (chunk, range) {
        (Some(_), Some(_)) => bail!("give --chunk or --range, not both"),
        (None, None) => bail!("name the chunk to move: --chunk N or --range LOW..HIGH"),
        (Some(c), None) if c as usize >= cluster.chunks => {
            bail!(
                "unknown chunk {c}: the lab's chunks are 0..{}",
                cluster.chunks - 1
            )
        }
        (Some(c), None) => c,
        (None, Some(range)) => bounds.chunk_with_range(range)?,
    };
    let rt = runtime()?;
    let report = rt.block_on(async {
        let mut map = ChunkMap::connect(&lab).await?;
        // Unique among this lab's moves: names the move's publication and subscription.
        let move_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_millis() as u64);
        let mut hooks = MoveHooks::default();
        let limits = MoveLimits::default();
        let report = mover::move_chunk(&lab, &mut map, chunk, shard, move_id, limits, &mut hooks);
        let report = report.await?;
        if report.outcome == MoveOutcome::Committed {
            mover::delete_range(&lab, report.from, chunk).await?;
        }
        Ok::<_, quorumlab_cluster::lab::LabError>(report)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "chunk {chunk} ({}) s{} -> s{}: {:?} in {} ms (copy {} ms, catch-up {} ms, critical section {} ms); {} rows, {:.1} MiB; version {}",
            bounds.range(chunk),
            report.from + 1,
            report.to + 1,
            report.outcome,
            report.total_ms,
            report.clone_ms,
            report.catch_up_ms,
            report.critical_ms,
            report.rows,
            report.bytes as f64 / (1 << 20) as f64,
            report.version
        );
    }
    match report.outcome {
        MoveOutcome::Committed => Ok(()),
        MoveOutcome::Aborted(why) => bail!(
            "the move aborted (s{} still owns chunk {chunk}): {why}",
            report.from + 1
        ),
        MoveOutcome::InDoubt(why) => bail!(
            "the move's commit could not be read back (chunk {chunk} is fenced on s{}): {why}",
            report.from + 1
        ),
    }
}

/// `s3` -> 2.
fn parse_shard(name: &str) -> Result<usize> {
    match name.strip_prefix('s').map(str::parse::<usize>) {
        Some(Ok(n)) if n >= 1 => Ok(n - 1),
        _ => bail!("'{name}' is not a shard: write s1, s2, ..."),
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
