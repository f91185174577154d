//! A real etcd cluster on namespace hosts: bring it up, ask its state, tear it down.
//!
//! `up` creates the hosts, writes each host's agent configuration (the only service it may run is
//! `etcd`, with this member's flags), starts one agent per host inside its namespace, records
//! everything in `STATE_DIR/lab.json` *before* starting etcd (so `down` works after any crash), then
//! asks every agent to start etcd and waits until a leader is known. `down` kills every process in
//! the lab's namespaces by PID, removes the namespaces and the bridge, and deletes the state; a
//! second `down` finds nothing to do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use serde::{Deserialize, Serialize};

use crate::agent::{connect, AgentClient, AgentConfig, ServiceSpec};
use crate::hosts::{is_root, HostError, LabNet};
use quorumlab_proto::agent::{Action, LinksRequest, SignalRequest};

/// etcd's client port on every host.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port on every host.
pub const PEER_PORT: u16 = 2380;
/// The agent's port on every host.
pub const AGENT_PORT: u16 = 7070;
/// Where Debian's etcd-server puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// Why a lab operation failed; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Hosts could not be made.
    #[error(transparent)]
    Host(#[from] HostError),
    /// etcd is not installed.
    #[error("etcd is not installed at {ETCD_BINARY}: apt-get install etcd-server (cargo xtask test does it)")]
    NoEtcd,
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
    /// The hosts.
    pub net: LabNet,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Shared agent token.
    pub token: String,
    /// Agent process ids, per host.
    pub agent_pids: Vec<u32>,
    /// Hosts `n1..=n{etcd_members}` run an etcd member.
    pub etcd_members: usize,
    /// The Postgres cluster on this lab's hosts, if it has one.
    #[serde(default)]
    pub postgres: Option<crate::postgres::PgCluster>,
}

/// Extra services for host `i` (1-based), given the lab's hosts and that host's directory.
pub type HostServices<'a> =
    &'a dyn Fn(&LabNet, usize, &Path) -> Result<BTreeMap<String, ServiceSpec>, LabError>;

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

fn agent_error(host: usize, status: tonic::Status) -> LabError {
    LabError::Agent {
        host: format!("n{host}"),
        reason: status.message().to_string(),
    }
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes a file only its owner may read.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| state_err(path, e))
}

/// A random hex string of 32 characters (tokens, lab passwords).
pub fn random_token() -> Result<String, LabError> {
    let mut buf = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| state_err(Path::new("/dev/urandom"), e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
    fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    /// Client endpoints of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (1..=self.etcd_members)
            .map(|i| format!("http://{}:{CLIENT_PORT}", self.net.addr(i)))
            .collect()
    }

    /// The agent address of host `i`.
    pub fn agent_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.net.addr(i), AGENT_PORT)
    }

    /// Reads the lab recorded in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Lab, LabError> {
        let file = Lab::file(state_dir);
        let text = std::fs::read_to_string(&file)
            .map_err(|_| LabError::NotUp(state_dir.display().to_string()))?;
        serde_json::from_str(&text).map_err(|e| state_err(&file, e))
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
        let nodes = hosts;
        if !(1..=9).contains(&etcd_members) || etcd_members > hosts {
            return Err(LabError::Size(etcd_members));
        }
        if !is_root() {
            return Err(HostError::NotRoot.into());
        }
        if !Path::new(ETCD_BINARY).exists() {
            return Err(LabError::NoEtcd);
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
            .find(|&id| !LabNet { id, hosts: nodes }.exists())
            .ok_or_else(|| LabError::Timeout("no free lab id (250 labs are up)".into()))?;
        let net = LabNet { id, hosts: nodes };
        let mut lab = Lab {
            net: net.clone(),
            state_dir: state_dir.to_path_buf(),
            token: random_token()?,
            agent_pids: vec![],
            etcd_members,
            postgres: None,
        };
        lab.save()?;
        let started = lab.start_hosts(timing, agent_binary, services).await;
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

    async fn start_hosts(
        &mut self,
        timing: EtcdTiming,
        agent_binary: &Path,
        services: HostServices<'_>,
    ) -> Result<(), LabError> {
        self.net.create()?;
        let token_file = self.state_dir.join("agent.token");
        write_secret(&token_file, self.token.as_bytes())?;
        let initial_cluster: Vec<String> = (1..=self.etcd_members)
            .map(|i| format!("n{i}=http://{}:{PEER_PORT}", self.net.addr(i)))
            .collect();
        for i in 1..=self.net.hosts {
            let dir = self.state_dir.join(format!("n{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
            let addr = self.net.addr(i);
            let args = vec![
                format!("--name=n{i}"),
                format!("--data-dir={}", dir.join("etcd-data").display()),
                format!("--listen-peer-urls=http://{addr}:{PEER_PORT}"),
                format!("--initial-advertise-peer-urls=http://{addr}:{PEER_PORT}"),
                format!("--listen-client-urls=http://{addr}:{CLIENT_PORT}"),
                format!("--advertise-client-urls=http://{addr}:{CLIENT_PORT}"),
                format!("--initial-cluster={}", initial_cluster.join(",")),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token=quorumlab-{}", self.net.id),
                format!("--heartbeat-interval={}", timing.heartbeat_ms),
                format!("--election-timeout={}", timing.election_timeout_ms),
                "--pre-vote=true".into(),
            ];
            let mut host_services = services(&self.net, i, &dir)?;
            if i <= self.etcd_members {
                host_services.insert(
                    "etcd".to_string(),
                    ServiceSpec {
                        program: ETCD_BINARY.into(),
                        args,
                        log: dir.join("etcd.log"),
                        user: None,
                        pid_files: vec![],
                    },
                );
            }
            let config = AgentConfig {
                listen: self.agent_addr(i),
                token_file: token_file.clone(),
                services: host_services,
                peers: (1..=self.net.hosts)
                    .filter(|&j| j != i)
                    .map(|j| (format!("n{j}"), self.net.addr(j)))
                    .collect(),
            };
            let config_file = dir.join("agent.toml");
            std::fs::write(
                &config_file,
                toml::to_string(&config).expect("agent config serialises"),
            )
            .map_err(|e| state_err(&config_file, e))?;
            let log =
                std::fs::File::create(dir.join("agent.log")).map_err(|e| state_err(&dir, e))?;
            let err_log = log.try_clone().map_err(|e| state_err(&dir, e))?;
            use std::os::unix::process::CommandExt;
            let child = std::process::Command::new("ip")
                .args(["netns", "exec", &self.net.namespace(i)])
                .arg(agent_binary)
                .args(["agent", "--config"])
                .arg(&config_file)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .process_group(0)
                .spawn()
                .map_err(|e| state_err(agent_binary, e))?;
            self.agent_pids.push(child.id());
            self.save()?;
        }
        for i in 1..=self.etcd_members {
            self.signal_etcd(i, Action::Start).await?;
        }
        self.wait_for_leader(Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// A client for host `i`'s agent.
    pub async fn agent(&self, i: usize) -> Result<AgentClient, LabError> {
        connect(self.agent_addr(i), &self.token, Duration::from_secs(10))
            .await
            .map_err(LabError::Timeout)
    }

    /// Asks host `i`'s agent to start, stop, kill, pause or resume its etcd.
    pub async fn signal_etcd(&self, i: usize, action: Action) -> Result<(), LabError> {
        self.signal(i, "etcd", action).await
    }

    /// Asks host `i`'s agent to start, stop, kill, pause or resume one of its services.
    pub async fn signal(&self, i: usize, service: &str, action: Action) -> Result<(), LabError> {
        let request = SignalRequest {
            service: service.into(),
            action: action as i32,
        };
        self.agent(i)
            .await?
            .signal(request)
            .await
            .map_err(|e| agent_error(i, e))?;
        Ok(())
    }

    /// Asks host `i`'s agent to cut (or heal) its links to `peers` (1-based host numbers).
    pub async fn links(&self, i: usize, peers: &[u64], cut: bool) -> Result<(), LabError> {
        let request = LinksRequest {
            peers: peers.iter().map(|p| format!("n{p}")).collect(),
            cut,
        };
        self.agent(i)
            .await?
            .links(request)
            .await
            .map_err(|e| agent_error(i, e))?;
        Ok(())
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

    /// Stops everything the lab in `state_dir` started and removes its hosts and state.
    /// Returns whether there was anything to stop.
    pub fn down(state_dir: &Path) -> Result<bool, LabError> {
        let lab = match Lab::load(state_dir) {
            Ok(lab) => lab,
            Err(LabError::NotUp(_)) => return Ok(false),
            Err(e) => return Err(e),
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
        for i in 1..=lab.net.hosts {
            kill_namespace_processes(&lab.net.namespace(i));
        }
        lab.net.destroy();
        std::fs::remove_dir_all(state_dir).map_err(|e| state_err(state_dir, e))?;
        Ok(true)
    }
}

/// Asks every member for its status, keeping each member's client between polls so that a
/// poller running every few milliseconds does not open a new connection each time. A member that
/// fails to answer loses its client and is connected afresh on the next poll.
pub struct StatusProbe {
    endpoints: Vec<String>,
    clients: Vec<Option<Client>>,
}

impl StatusProbe {
    /// A probe for every member of `lab`; nothing is connected until the first poll.
    pub fn new(lab: &Lab) -> StatusProbe {
        let endpoints = lab.endpoints();
        StatusProbe {
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
                let name = format!("n{}", i + 1);
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
