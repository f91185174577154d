//! A real etcd cluster on namespace hosts: bring it up, ask its state, tear it down.
//!
//! `up` creates the hosts, writes each host's agent configuration (the only service it may run is
//! `etcd`, with this member's flags), starts one agent per host inside its namespace, records
//! everything in `STATE_DIR/lab.json` *before* starting etcd (so `down` works after any crash), then
//! asks every agent to start etcd and waits until a leader is known. `down` kills every process in
//! the lab's namespaces by PID, removes the namespaces and the bridge, and deletes the state; a
//! second `down` finds nothing to do.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use quorumlab_experiment::node::NodeId;
use quorumlab_proto::agent::Action;
use serde::{Deserialize, Serialize};

use crate::agent::ServiceSpec;
use crate::hosts::LabNet;
use crate::inventory::Inventory;
use crate::lab::{HostServices, Lab, LabError};

/// etcd's client port on every host.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port on every host.
pub const PEER_PORT: u16 = 2380;
/// Where Debian's etcd-server puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// One member as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Host name (`n1`...).
    pub name: String,
    /// Client URL.
    pub endpoint: String,
    /// Whether it answered.
    pub up: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Its Raft term.
    pub term: u64,
    /// Its Raft index.
    pub raft_index: u64,
}

/// Etcd timing flags (milliseconds), from the scenario's topology.
#[derive(Debug, Clone, Copy)]
pub struct EtcdTiming {
    /// `--heartbeat-interval`.
    pub heartbeat_ms: u64,
    /// `--election-timeout`.
    pub election_timeout_ms: u64,
}

impl Lab {
    /// Client endpoints of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .map(|&member| format!("http://{}:{CLIENT_PORT}", self.addr(member)))
            .collect()
    }

    /// Brings up an etcd cluster of `nodes` members.
    pub async fn up(
        state_dir: &Path,
        nodes: usize,
        timing: EtcdTiming,
        agent_binary: &Path,
    ) -> Result<Lab, LabError> {
        Lab::up_with(state_dir, nodes, nodes, timing, agent_binary, &|_, _, _| {
            Ok(BTreeMap::new())
        })
        .await
    }

    /// Brings up `hosts` hosts, an etcd member on each of the first `etcd_members`, and an agent
    /// on every host that may also run the `services` named for it (started later, by the caller).
    pub async fn up_with(
        state_dir: &Path,
        hosts: usize,
        etcd_members: usize,
        timing: EtcdTiming,
        agent_binary: &Path,
        services: HostServices<'_>,
    ) -> Result<Lab, LabError> {
        if !(1..=9).contains(&etcd_members) || etcd_members > hosts {
            return Err(LabError::Size(etcd_members));
        }
        if !Path::new(ETCD_BINARY).exists() {
            return Err(LabError::NoEtcd(ETCD_BINARY));
        }
        let with_etcd = |net: &LabNet, host: NodeId, dir: &Path| {
            let mut host_services = services(net, host, dir)?;
            if host.index() < etcd_members {
                let member = etcd_member(net, host, etcd_members, timing, dir);
                host_services.insert("etcd".into(), member);
            }
            Ok(host_services)
        };
        let lab = Lab::create(state_dir, hosts, etcd_members, agent_binary, &with_etcd)?;
        let started = lab.start_etcd().await;
        if started.is_err() {
            let _ = Lab::down(state_dir);
        }
        started?;
        Ok(lab)
    }

    /// Starts every member and waits for a leader.
    async fn start_etcd(&self) -> Result<(), LabError> {
        for member in self.etcd.clone() {
            self.signal_etcd(member, Action::Start).await?;
        }
        self.wait_for_leader(Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Asks `member`'s agent to start, stop, kill, pause or resume its etcd.
    pub async fn signal_etcd(&self, member: NodeId, action: Action) -> Result<(), LabError> {
        self.signal(member, "etcd", action).await
    }

    /// Polls until some member reports a leader; returns the statuses then.
    pub async fn wait_for_leader(&self, limit: Duration) -> Result<Vec<MemberStatus>, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let members = self.status(Duration::from_millis(500)).await;
            if members.iter().any(|m| m.leader) {
                return Ok(members);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "no etcd leader within {limit:?}; see {}/n*/etcd.log",
                    self.state_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks every member for its status once, each within `timeout`.
    pub async fn status(&self, timeout: Duration) -> Vec<MemberStatus> {
        StatusProbe::new(self).poll(timeout).await
    }
}

/// The etcd timing the playbook configures unless the inventory says otherwise
/// (`ansible/roles/lab_defaults`).
const INVENTORY_TIMING_DEFAULT: EtcdTiming = EtcdTiming {
    heartbeat_ms: 100,
    election_timeout_ms: 1000,
};

impl Lab {
    /// The etcd cluster of an inventory's `etcd` group, checked against what a scenario needs:
    /// as many members as it names, with the timing it names (the inventory's
    /// `etcd_heartbeat_ms` and `etcd_election_timeout_ms`, which the playbook applied).
    pub fn etcd_of_inventory(
        inventory: &Inventory,
        members: usize,
        timing: EtcdTiming,
        state_dir: &Path,
    ) -> Result<Lab, LabError> {
        let group = &inventory.etcd.0;
        let refuse = |why: String| {
            LabError::Settings(format!("inventory {}: {why}", inventory.path.display()))
        };
        if group.len() != members {
            return Err(refuse(format!(
                "the scenario needs {members} etcd members but the etcd group has {} (give --nodes {})",
                group.len(),
                group.len()
            )));
        }
        let heartbeat_ms = inventory
            .var_u64("etcd_heartbeat_ms")?
            .unwrap_or(INVENTORY_TIMING_DEFAULT.heartbeat_ms);
        let election_ms = inventory
            .var_u64("etcd_election_timeout_ms")?
            .unwrap_or(INVENTORY_TIMING_DEFAULT.election_timeout_ms);
        if (heartbeat_ms, election_ms) != (timing.heartbeat_ms, timing.election_timeout_ms) {
            return Err(refuse(format!(
                "the scenario runs etcd with heartbeat {} ms and election timeout {} ms, the inventory's etcd with {heartbeat_ms} and {election_ms}: set etcd_heartbeat_ms and etcd_election_timeout_ms in all.vars and run the playbook again",
                timing.heartbeat_ms, timing.election_timeout_ms
            )));
        }
        Lab::from_inventory(inventory, group.clone(), state_dir)
    }

    /// Leaves the hosts as a run should find them: every link healed, every etcd member
    /// started, a leader elected.
    pub async fn restore_etcd(&self) -> Result<(), LabError> {
        self.heal_all().await?;
        for member in self.etcd.clone() {
            self.signal_etcd(member, Action::Resume).await.ok();
            self.signal_etcd(member, Action::Start).await?;
        }
        self.wait_for_leader(Duration::from_secs(30))
            .await
            .map(|_| ())
    }
}

/// The etcd service of `member` (its flags name every member of the initial cluster).
fn etcd_member(
    net: &LabNet,
    member: NodeId,
    members: usize,
    timing: EtcdTiming,
    dir: &Path,
) -> ServiceSpec {
    let initial_cluster: Vec<String> = NodeId::all(members)
        .map(|m| format!("{m}=http://{}:{PEER_PORT}", net.addr(m)))
        .collect();
    let addr = net.addr(member);
    let args = vec![
        format!("--name={member}"),
        format!("--data-dir={}", dir.join("etcd-data").display()),
        format!("--listen-peer-urls=http://{addr}:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{addr}:{PEER_PORT}"),
        format!("--listen-client-urls=http://{addr}:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{addr}:{CLIENT_PORT}"),
        format!("--initial-cluster={}", initial_cluster.join(",")),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token=quorumlab-{}", net.id),
        format!("--heartbeat-interval={}", timing.heartbeat_ms),
        format!("--election-timeout={}", timing.election_timeout_ms),
        "--pre-vote=true".into(),
    ];
    ServiceSpec {
        program: ETCD_BINARY.into(),
        args,
        log: dir.join("etcd.log"),
        user: None,
        pid_files: vec![],
    }
}

/// Asks every member for its status, keeping each member's client between polls so that a
/// poller running every few milliseconds does not open a new connection each time. A member that
/// fails to answer loses its client and is connected afresh on the next poll.
pub struct StatusProbe {
    names: Vec<String>,
    endpoints: Vec<String>,
    clients: Vec<Option<Client>>,
}

impl StatusProbe {
    /// A probe for every member of `lab`; nothing is connected until the first poll.
    pub fn new(lab: &Lab) -> StatusProbe {
        let endpoints = lab.endpoints();
        StatusProbe {
            names: lab.etcd.iter().map(NodeId::to_string).collect(),
            clients: vec![None; endpoints.len()],
            endpoints,
        }
    }

    /// Asks every member at once, each within `timeout`.
    pub async fn poll(&mut self, timeout: Duration) -> Vec<MemberStatus> {
        let asks = self
            .endpoints
            .iter()
            .cloned()
            .zip(self.clients.iter_mut().map(Option::take))
            .map(|(endpoint, cached)| async move {
                let answer = tokio::time::timeout(timeout, async {
                    let mut client = match cached {
                        Some(client) => client,
                        None => {
                            let options = ConnectOptions::new()
                                .with_connect_timeout(timeout)
                                .with_timeout(timeout);
                            Client::connect([endpoint.as_str()], Some(options))
                                .await
                                .ok()?
                        }
                    };
                    let status = client.status().await.ok()?;
                    let id = status.header()?.member_id();
                    Some((
                        (
                            status.leader() == id,
                            status.raft_term(),
                            status.raft_index(),
                        ),
                        client,
                    ))
                })
                .await
                .ok()
                .flatten();
                (endpoint, answer)
            });
        let answers = futures_join(asks).await;
        answers
            .into_iter()
            .enumerate()
            .map(|(i, (endpoint, answer))| {
                let name = self.names[i].clone();
                match answer {
                    Some(((leader, term, raft_index), client)) => {
                        self.clients[i] = Some(client);
                        MemberStatus {
                            name,
                            endpoint,
                            up: true,
                            leader,
                            term,
                            raft_index,
                        }
                    }
                    None => MemberStatus {
                        name,
                        endpoint,
                        up: false,
                        leader: false,
                        term: 0,
                        raft_index: 0,
                    },
                }
            })
            .collect()
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("status task"));
    }
    out
}
