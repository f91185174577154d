//! A lab: hosts, one node agent per host, and the record of it all in `STATE_DIR/lab.json`.
//!
//! The hosts are either network namespaces on a bridge that the lab makes itself ([`Lab::create`],
//! recorded before anything starts so that `down` can always find and stop what it started), or
//! hosts an inventory names — local machines or an operator's VMs, provisioned by Ansible with
//! their agents already running ([`Lab::from_inventory`]), which the lab never removes. Either
//! way a run reaches hosts only through their agents, over TLS. What runs on the hosts — etcd
//! members, Patroni and Postgres — is the business of [`crate::etcd`] and [`crate::postgres`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use quorumlab_proto::agent::{Action, LinksRequest, ShapeRequest, SignalRequest};
use serde::{Deserialize, Serialize};

use crate::agent::{connect, AgentClient, AgentConfig, AgentTls, ServiceSpec};
use crate::hosts::{is_root, HostError, LabNet};
use crate::inventory::{Inventory, InventoryError, InventoryHost};
use crate::pki::{self, write_secret, DriverTls, PkiError};
use crate::postgres::settings::PgCluster;
use crate::sharded::settings::ShardCluster;

/// The agent's port on every host.
pub const AGENT_PORT: u16 = 7070;

/// The port of every lab agent's `GET /metrics`.
pub const AGENT_METRICS_PORT: u16 = 7071;

/// Why a lab operation failed; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Hosts could not be made.
    #[error(transparent)]
    Host(#[from] HostError),
    /// etcd is not installed (at the path given).
    #[error(
        "etcd is not installed at {0}: apt-get install etcd-server (cargo xtask test does it)"
    )]
    NoEtcd(&'static str),
    /// The requested size is impossible.
    #[error("an etcd cluster needs 1 to 9 nodes, not {0}")]
    Size(usize),
    /// A lab is already up in this state directory.
    #[error("a lab is already up in {0}; run `quorumlab cluster down` first")]
    AlreadyUp(String),
    /// No lab is recorded in this state directory.
    #[error("no lab is up in {0} (`quorumlab cluster up etcd` starts one)")]
    NotUp(String),
    /// Files in the state directory.
    #[error("state directory {path}: {reason}")]
    State {
        /// The path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The inventory cannot be used.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The lab's TLS material or secrets could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// An agent or etcd did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// Settings that cannot work (Patroni's rule, replica counts).
    #[error("{0}")]
    Settings(String),
    /// Postgres or Patroni is not installed.
    #[error("{0}")]
    NoPostgres(String),
    /// Postgres refused or could not be reached.
    #[error("{0}")]
    Postgres(String),
    /// An agent refused or failed a call.
    #[error("agent on {host}: {reason}")]
    Agent {
        /// Host name.
        host: String,
        /// gRPC status message.
        reason: String,
    },
}

/// What `lab.json` records about a running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    /// The hosts, numbered `n1`, `n2`, ... in this order.
    pub hosts: Vec<InventoryHost>,
    /// The namespaces this lab made for them; `None` for hosts an inventory names, which the lab
    /// neither made nor removes.
    pub net: Option<LabNet>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// What the driver needs to call the agents.
    pub tls: DriverTls,
    /// Agent process ids, per host (empty for inventory hosts: systemd runs their agents).
    pub agent_pids: Vec<u32>,
    /// The hosts that run an etcd member, in member order.
    pub etcd: Vec<NodeId>,
    /// The Postgres cluster on this lab's hosts, if it has one.
    #[serde(default)]
    pub postgres: Option<PgCluster>,
    /// The Postgres shards on this lab's hosts, if it has them.
    #[serde(default)]
    pub sharded: Option<ShardCluster>,
}

/// The services a host may run, given the lab's hosts, the host and its directory.
pub type HostServices<'a> =
    &'a dyn Fn(&LabNet, NodeId, &Path) -> Result<BTreeMap<String, ServiceSpec>, LabError>;

pub(crate) fn agent_error(host: NodeId, status: tonic::Status) -> LabError {
    LabError::Agent {
        host: host.to_string(),
        reason: status.message().to_string(),
    }
}

pub(crate) fn state_err(path: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl Lab {
    fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    /// The address of `host`.
    pub fn addr(&self, host: NodeId) -> std::net::IpAddr {
        self.hosts[host.index()].addr
    }

    /// Every host of the lab, `n1` first.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        NodeId::all(self.hosts.len())
    }

    /// The faults every agent of the lab has applied so far, by kind (`signal-kill`,
    /// `cut-links`, ...), summed over the hosts, read from the agents' own `/metrics`. `None`
    /// when an agent serves no metrics or did not answer (logged).
    pub async fn agent_faults(&self) -> Option<BTreeMap<String, u64>> {
        let mut sum = BTreeMap::new();
        for host in &self.hosts {
            let port = host.metrics_port?;
            let addr = SocketAddr::new(host.addr, port);
            let text = match crate::agent::metrics::scrape(addr, Duration::from_secs(2)).await {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(host = %host.name, error = %e, "agent metrics not read");
                    return None;
                }
            };
            for (kind, n) in crate::agent::metrics::faults_applied(&text) {
                *sum.entry(kind).or_insert(0) += n;
            }
        }
        Some(sum)
    }

    /// The agent address of `host`.
    pub fn agent_addr(&self, host: NodeId) -> SocketAddr {
        let h = &self.hosts[host.index()];
        SocketAddr::new(h.addr, h.agent_port)
    }

    /// A lab on the hosts an inventory names for one system (`hosts`, numbered in that order),
    /// whose agents systemd already runs; `etcd` lists the hosts of the inventory's etcd group.
    pub fn from_inventory(
        inventory: &Inventory,
        hosts: Vec<InventoryHost>,
        state_dir: &Path,
    ) -> Result<Lab, LabError> {
        let mut hosts = hosts;
        for member in &inventory.etcd.0 {
            if !hosts.contains(member) {
                hosts.push(member.clone());
            }
        }
        let etcd = inventory
            .etcd
            .0
            .iter()
            .map(|m| NodeId::from_index(hosts.iter().position(|h| h == m).expect("added above")))
            .collect();
        Ok(Lab {
            hosts,
            net: None,
            state_dir: state_dir.to_path_buf(),
            tls: DriverTls::load(&inventory.pki_dir)?,
            agent_pids: vec![],
            etcd,
            postgres: None,
            sharded: None,
        })
    }

    /// Reads the lab recorded in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Lab, LabError> {
        let file = Lab::file(state_dir);
        let text = std::fs::read_to_string(&file)
            .map_err(|_| LabError::NotUp(state_dir.display().to_string()))?;
        serde_json::from_str(&text).map_err(|e| state_err(&file, e))
    }

    /// Creates `hosts` hosts with an agent on each that may run the `services` named for it
    /// (started later, through the agents), and records the lab in `state_dir`. Hosts
    /// `n1..=n{etcd_members}` are recorded as running etcd. On failure, whatever was made is
    /// removed again.
    pub fn create(
        state_dir: &Path,
        hosts: usize,
        etcd_members: usize,
        agent_binary: &Path,
        services: HostServices<'_>,
    ) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(HostError::NotRoot.into());
        }
        if Lab::file(state_dir).exists() {
            return Err(LabError::AlreadyUp(state_dir.display().to_string()));
        }
        std::fs::create_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
        // Others may pass through (Postgres runs as its own user in a host directory below) but
        // not list it; the files holding secrets are readable by their owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| state_err(state_dir, e))?;
        let id = (1..=250u8)
            .find(|&id| !LabNet { id, hosts }.exists())
            .ok_or_else(|| LabError::Timeout("no free lab id (250 labs are up)".into()))?;
        let net = LabNet { id, hosts };
        let hosts: Vec<InventoryHost> = net
            .nodes()
            .map(|host| InventoryHost {
                name: host.to_string(),
                addr: net.addr(host),
                agent_port: AGENT_PORT,
                metrics_port: Some(AGENT_METRICS_PORT),
            })
            .collect();
        let names: Vec<_> = hosts.iter().map(|h| (h.name.clone(), h.addr)).collect();
        pki::ensure(&state_dir.join("pki"), &names)?;
        let mut lab = Lab {
            hosts,
            net: Some(net),
            state_dir: state_dir.to_path_buf(),
            tls: DriverTls::load(&state_dir.join("pki"))?,
            agent_pids: vec![],
            etcd: NodeId::all(etcd_members).collect(),
            postgres: None,
            sharded: None,
        };
        lab.save()?;
        let started = lab.start_agents(agent_binary, services);
        if started.is_err() {
            let _ = Lab::down(state_dir);
        }
        started?;
        Ok(lab)
    }

    /// Records the lab in `lab.json` (owner-only: it holds the agent token and passwords).
    pub fn save(&self) -> Result<(), LabError> {
        let file = Lab::file(&self.state_dir);
        let tmp = file.with_extension("json.tmp");
        write_secret(
            &tmp,
            &serde_json::to_vec_pretty(self).expect("lab serialises"),
        )?;
        std::fs::rename(&tmp, &file).map_err(|e| state_err(&file, e))
    }

    /// Creates the hosts and starts one agent in each, recording every pid as it starts.
    fn start_agents(
        &mut self,
        agent_binary: &Path,
        services: HostServices<'_>,
    ) -> Result<(), LabError> {
        let net = self
            .net
            .clone()
            .expect("a lab that makes its hosts has a net");
        net.create()?;
        let pki_dir = self.state_dir.join("pki");
        for host in net.nodes() {
            let dir = self.state_dir.join(host.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
            let (cert, key) = pki::host_files(&pki_dir, &host.to_string());
            let config = AgentConfig {
                listen: self.agent_addr(host),
                token_file: pki_dir.join(pki::TOKEN),
                tls: AgentTls {
                    cert,
                    key,
                    client_ca: pki_dir.join(pki::CA_CERT),
                },
                services: services(&net, host, &dir)?,
                units: BTreeMap::new(),
                peers: net
                    .nodes()
                    .filter(|&peer| peer != host)
                    .map(|peer| (peer.to_string(), net.addr(peer)))
                    .collect(),
                metrics_listen: Some(SocketAddr::new(net.addr(host), AGENT_METRICS_PORT)),
            };
            let pid = self.start_agent(host, &dir, &config, agent_binary)?;
            self.agent_pids.push(pid);
            self.save()?;
        }
        Ok(())
    }

    /// Writes `host`'s agent configuration and starts its agent inside the host's namespace.
    fn start_agent(
        &self,
        host: NodeId,
        dir: &Path,
        config: &AgentConfig,
        agent_binary: &Path,
    ) -> Result<u32, LabError> {
        let config_file = dir.join("agent.toml");
        std::fs::write(
            &config_file,
            toml::to_string(config).expect("agent config serialises"),
        )
        .map_err(|e| state_err(&config_file, e))?;
        let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| state_err(dir, e))?;
        let err_log = log.try_clone().map_err(|e| state_err(dir, e))?;
        use std::os::unix::process::CommandExt;
        let namespace = self.net.as_ref().expect("namespace lab").namespace(host);
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &namespace])
            .arg(agent_binary)
            .args(["agent", "--config"])
            .arg(&config_file)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .spawn()
            .map_err(|e| state_err(agent_binary, e))?;
        Ok(child.id())
    }

    /// A client for `host`'s agent.
    pub async fn agent(&self, host: NodeId) -> Result<AgentClient, LabError> {
        let addr = self.agent_addr(host);
        connect(addr, &self.tls, Duration::from_secs(10))
            .await
            .map_err(LabError::Timeout)
    }

    /// Asks `host`'s agent to start, stop, kill, pause or resume one of its services.
    pub async fn signal(
        &self,
        host: NodeId,
        service: &str,
        action: Action,
    ) -> Result<(), LabError> {
        let request = SignalRequest {
            service: service.into(),
            action: action as i32,
        };
        self.agent(host)
            .await?
            .signal(request)
            .await
            .map_err(|e| agent_error(host, e))?;
        Ok(())
    }

    /// Asks `host`'s agent to cut (or heal) its links to `peers`: both ways, or with
    /// `inbound_only` only what `peers` send to `host`.
    pub async fn links(
        &self,
        host: NodeId,
        peers: &[NodeId],
        cut: bool,
        inbound_only: bool,
    ) -> Result<(), LabError> {
        let request = LinksRequest {
            peers: peers
                .iter()
                .map(|&p| self.hosts[p.index()].name.clone())
                .collect(),
            cut,
            inbound_only,
        };
        self.agent(host)
            .await?
            .links(request)
            .await
            .map_err(|e| agent_error(host, e))?;
        Ok(())
    }

    /// Shapes what every host sends (`request`'s unset fields keep their value on each host).
    pub async fn shape_all(&self, request: ShapeRequest) -> Result<(), LabError> {
        for host in self.nodes() {
            self.agent(host)
                .await?
                .shape(request)
                .await
                .map_err(|e| agent_error(host, e))?;
        }
        Ok(())
    }

    /// Cuts (or heals) every link between `host` and the lab's other hosts.
    pub async fn cut_off(&self, host: NodeId, cut: bool) -> Result<(), LabError> {
        let peers: Vec<NodeId> = self.nodes().filter(|&p| p != host).collect();
        self.links(host, &peers, cut, false).await
    }

    /// Heals every link of every host.
    pub async fn heal_all(&self) -> Result<(), LabError> {
        for host in self.nodes() {
            self.cut_off(host, false).await?;
        }
        Ok(())
    }

    /// Stops everything the lab in `state_dir` started and removes its hosts and state.
    /// Returns whether there was anything to stop.
    pub fn down(state_dir: &Path) -> Result<bool, LabError> {
        let lab = match Lab::load(state_dir) {
            Ok(lab) => lab,
            Err(LabError::NotUp(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(net) = &lab.net else {
            // Inventory hosts are not the lab's to remove; only its record goes.
            std::fs::remove_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
            return Ok(true);
        };
        // Ask the agents first: each kills and reaps the etcd it started, leaving no zombies.
        for &pid in &lab.agent_pids {
            // SAFETY: kill(2) on a pid this lab recorded; a stale pid only yields ESRCH.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: kill(pid, 0) only checks that the process exists.
        let alive = |pid: u32| unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        while lab.agent_pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Then make sure: whatever still runs in the lab's namespaces is killed.
        for host in net.nodes() {
            kill_namespace_processes(&net.namespace(host));
        }
        net.destroy();
        std::fs::remove_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
        Ok(true)
    }
}

/// Kills every process inside a namespace (etcd orphaned by a killed agent included).
fn kill_namespace_processes(namespace: &str) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2); the pid belongs to a process inside our own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
