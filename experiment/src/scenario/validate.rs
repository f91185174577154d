//! What makes a scenario impossible to run, or a fault that could never matter: each problem
//! names the field it is about (`faults[1].at_ms`), so a file's error can point at the line.

use std::collections::HashSet;

use crate::fault::{Fault, FaultStep, NodeRef};
use crate::mongodb::MongoSettings;
use crate::system::System;

use crate::problem::{problem, Problem};

use super::{Scenario, NODES_MAX};

/// Every check, in the order a reader meets the fields in a file.
pub(crate) fn check(s: &Scenario) -> Result<(), Problem> {
    check_topology(s)?;
    check_workload(s)?;
    check_system(s)?;
    for (i, step) in s.faults.iter().enumerate() {
        check_fault(s, i, step)?;
    }
    check_chaos(s)
}

/// Most hosts a sharded scenario may have.
const SHARDED_HOSTS_MAX: usize = 64;

/// Topology, its timing, the network and the duration.
fn check_topology(s: &Scenario) -> Result<(), Problem> {
    let t = &s.topology;
    // A sharded cluster's hosts are its config servers, shards and routers together.
    let nodes_max = if matches!(s.system, System::Sharded(_)) {
        SHARDED_HOSTS_MAX
    } else {
        NODES_MAX
    };
    if t.nodes == 0 || t.nodes > nodes_max {
        return problem(
            "topology.nodes",
            format!("topology.nodes is {}; it must be 1 to {nodes_max}", t.nodes),
        );
    }
    if t.heartbeat_ms == 0 {
        return problem("topology.heartbeat_ms", "heartbeat_ms must be > 0");
    }
    if t.election_timeout_ms < 2 * t.heartbeat_ms {
        return problem(
            "topology.election_timeout_ms",
            format!(
                "election_timeout_ms ({}) must be at least twice heartbeat_ms ({})",
                t.election_timeout_ms, t.heartbeat_ms
            ),
        );
    }
    if !t.election_timeout_ms.is_multiple_of(t.heartbeat_ms) {
        // Raft counts both in ticks of one heartbeat, so the timeout is a whole number of them.
        return problem(
            "topology.election_timeout_ms",
            format!(
                "election_timeout_ms ({}) must be a whole number of heartbeats (heartbeat_ms = {}): Raft counts it in heartbeat ticks",
                t.election_timeout_ms, t.heartbeat_ms
            ),
        );
    }
    if s.network.latency_ms_min > s.network.latency_ms_max {
        return problem(
            "network.latency_ms_min",
            "network.latency_ms_min exceeds latency_ms_max",
        );
    }
    if s.duration_ms == 0 {
        return problem("duration_ms", "duration_ms must be > 0");
    }
    Ok(())
}

fn check_workload(s: &Scenario) -> Result<(), Problem> {
    let w = &s.workload;
    for (name, value) in [
        ("clients", w.clients as u64),
        ("keys", u64::from(w.keys)),
        ("timeout_ms", w.timeout_ms),
    ] {
        if value == 0 {
            return problem(
                format!("workload.{name}"),
                format!("workload.{name} must be > 0"),
            );
        }
    }
    if w.rate_per_s == 0 {
        return problem("workload.rate_per_s", "workload.rate_per_s must be > 0: with no operations there is nothing to measure or check");
    }
    if w.put + w.get + w.cas == 0 {
        return problem(
            "workload.put",
            "workload mix is empty: put + get + cas weights are 0",
        );
    }
    Ok(())
}

/// What the system's own settings require.
fn check_system(s: &Scenario) -> Result<(), Problem> {
    let nodes = s.topology.nodes;
    let pg = match &s.system {
        System::Etcd => return Ok(()),
        System::Mongodb(mongo) => return check_mongodb(s, mongo),
        System::Sharded(sharded) => return sharded.check(nodes),
        System::Postgres(pg) => pg,
    };
    if nodes < 2 {
        return problem(
            "topology.nodes",
            format!("a Postgres scenario needs at least 1 replica (topology.nodes >= 2); it asks for {}", nodes.saturating_sub(1)),
        );
    }
    pg.check()?;
    let phases_ms: u64 = pg.phases.iter().map(|p| p.ms).sum();
    if phases_ms > s.duration_ms {
        return problem(
            "postgres.phases",
            format!(
                "postgres phases last {phases_ms} ms, longer than duration_ms ({})",
                s.duration_ms
            ),
        );
    }
    Ok(())
}

/// A replica set's settings, and phases that fit in the run.
fn check_mongodb(s: &Scenario, mongo: &MongoSettings) -> Result<(), Problem> {
    mongo.check(s.topology.nodes)?;
    let phases_ms: u64 = mongo.phases.iter().map(|p| p.ms).sum();
    if phases_ms > s.duration_ms {
        return problem(
            "mongodb.phases",
            format!(
                "mongodb phases last {phases_ms} ms, longer than duration_ms ({})",
                s.duration_ms
            ),
        );
    }
    Ok(())
}

/// One scheduled fault: inside the run, naming nodes that exist, with sensible parameters.
fn check_fault(s: &Scenario, i: usize, step: &FaultStep) -> Result<(), Problem> {
    let nodes = s.topology.nodes;
    let label = step.fault.label();
    let at = |field: &str| format!("faults[{i}].{field}");
    if step.at_ms >= s.duration_ms {
        return problem(
            at("at_ms"),
            format!(
                "fault '{label}' at {} ms never fires: the run ends at duration_ms = {} ms",
                step.at_ms, s.duration_ms
            ),
        );
    }
    for node in step.fault.node_refs() {
        if let NodeRef::Node(id) = node {
            if id.index() >= nodes {
                return problem(format!("faults[{i}]"), format!("fault '{label}' names {node}, but the cluster has only {nodes} nodes (n1..n{nodes})"));
            }
        }
    }
    match &step.fault {
        Fault::Partition { groups } => check_groups(groups, &at("groups")),
        Fault::PartitionOneway { from, to } if from == to => problem(
            at("to"),
            format!("a one-way partition from {from} to itself cuts nothing"),
        ),
        Fault::Loss { rate } | Fault::Duplicate { rate } | Fault::DuplicateRequests { rate }
            if !(0.0..=1.0).contains(rate) =>
        {
            problem(
                at("rate"),
                format!("rate {rate} is not a probability in [0, 1]"),
            )
        }
        Fault::Delay { ms_max } if *ms_max < s.network.latency_ms_min => {
            problem(at("ms_max"), "delay ms_max is below network.latency_ms_min")
        }
        Fault::Bandwidth { kbit_per_s: 0 } => problem(
            at("kbit_per_s"),
            "a bandwidth of 0 kbit/s is a partition: use isolate",
        ),
        Fault::Bridge { .. } if nodes < 3 => {
            problem(at("bridge"), "a bridge partition needs at least 3 nodes")
        }
        _ => Ok(()),
    }
}

/// At least two non-empty groups, and no node in two of them.
fn check_groups(groups: &[Vec<NodeRef>], field: &str) -> Result<(), Problem> {
    if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
        return problem(field, "a partition needs at least two non-empty groups");
    }
    let mut seen = HashSet::new();
    for (g, group) in groups.iter().enumerate() {
        for node in group {
            if !seen.insert(node) {
                return problem(
                    format!("{field}[{g}]"),
                    format!("{node} is in more than one group; partition groups must not overlap"),
                );
            }
        }
    }
    Ok(())
}

/// The chaos window lies within the run.
fn check_chaos(s: &Scenario) -> Result<(), Problem> {
    match &s.chaos {
        Some(chaos) if chaos.from_ms >= chaos.to_ms || chaos.to_ms > s.duration_ms => problem(
            "chaos.to_ms",
            "chaos window must satisfy from_ms < to_ms <= duration_ms",
        ),
        _ => Ok(()),
    }
}
