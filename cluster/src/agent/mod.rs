//! The node agent: a small gRPC service on each host that does only what scenarios need.
//!
//! It starts, stops (SIGTERM), kills (SIGKILL), pauses (SIGSTOP) and resumes (SIGCONT) the
//! services named in its configuration — processes of its own (namespace hosts) or systemd units
//! ([`units`]: machines and VMs) — cuts and heals this host's links to named peers with nftables
//! ([`links`]), says which network faults the kernel can do, and reports process status and host
//! time. It never runs a command it was sent: programs, units and peers are fixed when the agent
//! starts, and calls can only name them.
//!
//! It speaks only TLS ([`crate::pki`]): the caller must present a certificate from the lab's CA
//! *and* the shared token (`authorization: Bearer <token>`); a plaintext call fails the
//! handshake, another CA's certificate is refused, and a wrong token gets `UNAUTHENTICATED`.

pub mod links;
pub mod metrics;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quorumlab_proto::agent::agent_server::{Agent, AgentServer};
use quorumlab_proto::agent::{
    Action, CapabilitiesReply, CapabilitiesRequest, LinksReply, LinksRequest, ProcessStatus,
    ShapeReply, ShapeRequest, SignalRequest, StatusRequest,
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

/// How long a stopped service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A service the agent may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// File that receives its stdout and stderr.
    pub log: PathBuf,
    /// Run as this user instead of the agent's (Postgres refuses to run as root).
    #[serde(default)]
    pub user: Option<String>,
    /// Processes the service starts in sessions of their own, which outlive it (Patroni's
    /// postmaster), named by their pid files. A kill reaches them and their process groups too
    /// (the postmaster's backends), as a host crash would.
    #[serde(default)]
    pub pid_files: Vec<PathBuf>,
}

impl ServiceSpec {
    /// Pids named in this service's pid files right now.
    fn detached_pids(&self) -> Vec<u32> {
        detached_pids(&self.pid_files)
    }
}

/// Pids named in `pid_files` right now (first line of each file).
fn detached_pids(pid_files: &[PathBuf]) -> Vec<u32> {
    pid_files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|text| text.lines().next()?.trim().parse().ok())
        .filter(|&pid: &u32| pid > 1)
        .collect()
}

/// The uid and gid of `user`, from the password database.
fn user_ids(user: &str) -> Result<(u32, u32), Status> {
    let name = std::ffi::CString::new(user)
        .map_err(|_| Status::invalid_argument("user name contains NUL"))?;
    // SAFETY: getpwnam reads a NUL-terminated name; the result is copied out before any other
    // call could overwrite the static buffer it points into.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(Status::failed_precondition(format!(
            "no such user '{user}'"
        )));
    }
    // SAFETY: non-null pointer returned by getpwnam just above.
    let entry = unsafe { &*entry };
    Ok((entry.pw_uid, entry.pw_gid))
}

/// The agent's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address to listen on (only this one).
    pub listen: SocketAddr,
    /// File holding the shared token.
    pub token_file: PathBuf,
    /// The agent's certificate and key, and the CA its callers' certificates must come from.
    pub tls: AgentTls,
    /// Services the agent runs itself, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Services systemd runs, by name (`[units.etcd] unit = "etcd.service"`).
    #[serde(default)]
    pub units: BTreeMap<String, units::UnitSpec>,
    /// Peer hosts by name, for cutting links.
    #[serde(default)]
    pub peers: BTreeMap<String, IpAddr>,
    /// Where to serve `GET /metrics` (plain HTTP; faults applied, calls refused), if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// The agent's TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    /// This host's certificate, signed by the lab's CA.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
    /// The lab's CA: callers must present a certificate it signed.
    pub client_ca: PathBuf,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file is missing or malformed.
    #[error("agent config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("agent server on {listen}: {reason}")]
    Serve {
        /// Listen address.
        listen: SocketAddr,
        /// What failed.
        reason: String,
    },
}

impl AgentConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let err = |reason: String| AgentError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.message().replace('\n', " ")))
    }
}

struct Running {
    child: Child,
    paused: bool,
}

/// The gRPC service implementation.
pub struct NodeAgent {
    config: AgentConfig,
    token: String,
    processes: Mutex<BTreeMap<String, Running>>,
    /// Units paused by this agent (systemd does not say).
    paused_units: Mutex<BTreeSet<String>>,
    cut: Mutex<BTreeMap<String, (IpAddr, links::Cut)>>,
    /// What the host's outgoing traffic is shaped with, and on which interface.
    shaping: Mutex<(Option<String>, links::Shaping)>,
    metrics: std::sync::Arc<metrics::AgentMetrics>,
}

fn host_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn signal(pid: u32, sig: libc::c_int) -> Result<(), Status> {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Status::internal(format!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        )))
    }
}

/// SIGKILLs a detached process and every process in its group: Patroni's postmaster with its
/// backends, as a host crash would. Why the group: a backend outlives its postmaster until it
/// notices, and in those milliseconds it could still acknowledge a commit after the kill was
/// reported done. The agent's own group is never signalled; ESRCH only means it had gone.
fn kill_detached(pid: u32) {
    // SAFETY: getpgid(2), getpgrp(2) and kill(2) take plain integers and touch no memory of ours.
    let (group, own) = unsafe { (libc::getpgid(pid as libc::pid_t), libc::getpgrp()) };
    if group > 1 && group != own {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    let _ = signal(pid, libc::SIGKILL);
}

/// Whether `pid` is stopped (state `T` in /proc), as Linux reports it.
fn is_stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    Some(state == 'T' || state == 't')
}

/// Waits until `pid` is stopped (or running again), up to `limit`.
fn wait_for_stopped(pid: u32, stopped: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if is_stopped(pid) == Some(stopped) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Waits for `child` to exit, up to `limit`.
fn wait_for_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

impl NodeAgent {
    /// An agent for `config`, checking calls against `token`.
    pub fn new(config: AgentConfig, token: String) -> NodeAgent {
        assert!(!token.is_empty(), "an agent needs a non-empty token");
        NodeAgent {
            config,
            token,
            processes: Mutex::new(BTreeMap::new()),
            paused_units: Mutex::new(BTreeSet::new()),
            cut: Mutex::new(BTreeMap::new()),
            shaping: Mutex::new((None, links::Shaping::default())),
            metrics: metrics::AgentMetrics::new(),
        }
    }

    /// What this agent has counted.
    pub fn metrics(&self) -> std::sync::Arc<metrics::AgentMetrics> {
        self.metrics.clone()
    }

    /// Counts a call's outcome: a fault of `kind` applied (when it is one), or the refusal, and
    /// logs it.
    fn counted<T>(&self, kind: Option<String>, result: Result<T, Status>) -> Result<T, Status> {
        match (&result, kind) {
            (Ok(_), Some(kind)) => {
                self.metrics.applied(&kind);
                tracing::info!(fault = %kind, "fault applied");
            }
            (Ok(_), None) => {}
            (Err(status), kind) => {
                self.metrics.refused(status.code());
                tracing::warn!(call = kind.as_deref().unwrap_or("query"), code = ?status.code(), reason = status.message(), "call refused");
            }
        }
        result
    }

    fn status_of(&self, service: &str, processes: &mut BTreeMap<String, Running>) -> ProcessStatus {
        let exited = processes
            .get_mut(service)
            .is_some_and(|r| matches!(r.child.try_wait(), Ok(Some(_))));
        if exited {
            processes.remove(service);
        }
        let running = processes.get(service);
        ProcessStatus {
            service: service.to_string(),
            running: running.is_some(),
            pid: running.map_or(0, |r| r.child.id()),
            paused: running.is_some_and(|r| r.paused),
            host_time_unix_ms: host_time_ms(),
        }
    }

    /// Refuses a service this agent was not configured with, naming those it was.
    fn unknown(&self, service: &str) -> Status {
        let known: Vec<&str> = self
            .config
            .services
            .keys()
            .chain(self.config.units.keys())
            .map(String::as_str)
            .collect();
        Status::not_found(format!(
            "unknown service '{service}' (this agent runs: {})",
            known.join(", ")
        ))
    }

    fn unit_status(&self, service: &str, unit: &units::UnitSpec) -> Result<ProcessStatus, Status> {
        let pid = units::main_pid(&unit.unit)?;
        let paused = pid != 0 && self.paused_units.lock().expect("units").contains(service);
        Ok(ProcessStatus {
            service: service.to_string(),
            running: pid != 0,
            pid,
            paused,
            host_time_unix_ms: host_time_ms(),
        })
    }

    fn signal_unit(
        &self,
        service: &str,
        unit: &units::UnitSpec,
        action: Action,
    ) -> Result<ProcessStatus, Status> {
        units::signal(unit, action)?;
        let mut paused = self.paused_units.lock().expect("units");
        if action == Action::Pause {
            paused.insert(service.to_string());
        } else {
            paused.remove(service);
        }
        drop(paused);
        self.unit_status(service, unit)
    }

    fn spec(&self, service: &str) -> Result<&ServiceSpec, Status> {
        self.config
            .services
            .get(service)
            .ok_or_else(|| self.unknown(service))
    }

    fn start(
        &self,
        service: &str,
        spec: &ServiceSpec,
        processes: &mut BTreeMap<String, Running>,
    ) -> Result<(), Status> {
        if self.status_of(service, processes).running {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| {
                Status::failed_precondition(format!("cannot open log {}: {e}", spec.log.display()))
            })?;
        let err_log = log
            .try_clone()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0);
        if let Some(user) = &spec.user {
            let (uid, gid) = user_ids(user)?;
            command
                .uid(uid)
                .gid(gid)
                .env("HOME", spec.log.parent().unwrap_or(Path::new("/")))
                .env("USER", user);
        }
        let child = command.spawn().map_err(|e| {
            Status::failed_precondition(format!("cannot start {}: {e}", spec.program.display()))
        })?;
        processes.insert(
            service.to_string(),
            Running {
                child,
                paused: false,
            },
        );
        Ok(())
    }

    /// Stops every service the agent started and heals every link it cut (on agent shutdown).
    /// Systemd units are the host's, and keep running.
    pub fn stop_all(&self) {
        let mut cut = self.cut.lock().expect("link table");
        if !cut.is_empty() {
            links::remove_table();
            cut.clear();
        }
        drop(cut);
        let mut shaping = self.shaping.lock().expect("shaping");
        if let (Some(dev), shaped) = &*shaping {
            if *shaped != links::Shaping::default() {
                let _ = links::apply_shaping(dev, &links::Shaping::default());
            }
        }
        *shaping = (None, links::Shaping::default());
        drop(shaping);
        let mut processes = self.processes.lock().expect("process table");
        for (service, mut running) in std::mem::take(&mut *processes) {
            let _ = signal(running.child.id(), libc::SIGKILL);
            let _ = running.child.wait();
            if let Some(spec) = self.config.services.get(&service) {
                for pid in spec.detached_pids() {
                    kill_detached(pid);
                }
            }
        }
    }
}

/// Ends a process the agent started: SIGTERM with a grace period (`graceful`) or SIGKILL, which
/// also reaches the service's detached processes, as a crash of the host would.
fn end_process(mut running: Running, spec: &ServiceSpec, graceful: bool) -> Result<(), Status> {
    let pid = running.child.id();
    if running.paused {
        let _ = signal(pid, libc::SIGCONT);
    }
    let (sig, grace) = if graceful {
        (libc::SIGTERM, STOP_GRACE)
    } else {
        (libc::SIGKILL, Duration::from_secs(5))
    };
    signal(pid, sig)?;
    if !wait_for_exit(&mut running.child, grace) {
        signal(pid, libc::SIGKILL)?;
        let _ = running.child.wait();
    }
    if !graceful {
        for detached in spec.detached_pids() {
            kill_detached(detached);
        }
    }
    Ok(())
}

impl Drop for NodeAgent {
    /// An agent never leaves its services behind, however it ends.
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The calls themselves; [`Agent`] below counts each one's outcome.
impl NodeAgent {
    async fn signal_call(
        &self,
        request: Request<SignalRequest>,
    ) -> Result<Response<ProcessStatus>, Status> {
        let req = request.into_inner();
        let action = Action::try_from(req.action)
            .map_err(|_| Status::invalid_argument(format!("unknown action {}", req.action)))?;
        if let Some(unit) = self.config.units.get(&req.service) {
            return Ok(Response::new(self.signal_unit(
                &req.service,
                unit,
                action,
            )?));
        }
        let spec = self.spec(&req.service)?.clone();
        let mut processes = self.processes.lock().expect("process table");
        let pid = processes.get(&req.service).map(|r| r.child.id());
        match (action, pid) {
            (Action::Unspecified, _) => return Err(Status::invalid_argument("action is required")),
            (Action::Start, _) => self.start(&req.service, &spec, &mut processes)?,
            (Action::Stop | Action::Kill, Some(_)) => {
                let running = processes.remove(&req.service).expect("present");
                end_process(running, &spec, action == Action::Stop)?;
            }
            (Action::Pause | Action::Resume, Some(pid)) => {
                let pause = action == Action::Pause;
                signal(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT })?;
                // Signals arrive asynchronously: answer only once the process is in the new state.
                if !wait_for_stopped(pid, pause, Duration::from_secs(2)) {
                    return Err(Status::internal(format!(
                        "pid {pid} did not {} in time",
                        if pause { "stop" } else { "continue" }
                    )));
                }
                processes.get_mut(&req.service).expect("present").paused = pause;
            }
            (_, None) => {
                return Err(Status::failed_precondition(format!(
                    "service '{}' is not running",
                    req.service
                )));
            }
        }
        Ok(Response::new(self.status_of(&req.service, &mut processes)))
    }

    async fn links_call(
        &self,
        request: Request<LinksRequest>,
    ) -> Result<Response<LinksReply>, Status> {
        let req = request.into_inner();
        let how = if req.inbound_only {
            links::Cut::Inbound
        } else {
            links::Cut::Both
        };
        let peers: Vec<(String, IpAddr)> = req
            .peers
            .iter()
            .map(|p| {
                self.config
                    .peers
                    .get(p)
                    .map(|ip| (p.clone(), *ip))
                    .ok_or_else(|| Status::not_found(format!("unknown peer '{p}'")))
            })
            .collect::<Result<_, _>>()?;
        let mut cut = self.cut.lock().expect("link table");
        let mut next = cut.clone();
        for (name, ip) in peers {
            if req.cut {
                next.insert(name, (ip, how));
            } else {
                next.remove(&name);
            }
        }
        links::apply(&next)?;
        *cut = next;
        Ok(Response::new(LinksReply {
            cut_peers: cut.keys().cloned().collect(),
        }))
    }

    async fn shape_call(
        &self,
        request: Request<ShapeRequest>,
    ) -> Result<Response<ShapeReply>, Status> {
        let req = request.into_inner();
        let rate_ok = |r: Option<f64>| r.is_none_or(|r| (0.0..=1.0).contains(&r));
        if !rate_ok(req.loss_rate) || !rate_ok(req.duplicate_rate) {
            return Err(Status::invalid_argument(
                "rates are probabilities in [0, 1]",
            ));
        }
        let mut shaping = self.shaping.lock().expect("shaping");
        let dev = match &shaping.0 {
            Some(dev) => dev.clone(),
            None => {
                let peer = self.config.peers.values().next().ok_or_else(|| {
                    Status::failed_precondition("no peers configured: no link to shape")
                })?;
                links::interface_to(*peer)?
            }
        };
        let mut next = if req.clear {
            links::Shaping::default()
        } else {
            shaping.1
        };
        next.delay_ms_max = req.delay_ms_max.unwrap_or(next.delay_ms_max);
        next.loss_rate = req.loss_rate.unwrap_or(next.loss_rate);
        next.duplicate_rate = req.duplicate_rate.unwrap_or(next.duplicate_rate);
        next.rate_kbit_per_s = req.rate_kbit_per_s.unwrap_or(next.rate_kbit_per_s);
        let qdisc = links::apply_shaping(&dev, &next)?;
        *shaping = (Some(dev), next);
        Ok(Response::new(ShapeReply { qdisc }))
    }

    async fn capabilities_call(
        &self,
        _request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesReply>, Status> {
        Ok(Response::new(CapabilitiesReply {
            nftables: links::has_nftables(),
            netem: links::has_qdisc("netem"),
            tbf: links::has_qdisc("tbf"),
        }))
    }

    async fn status_call(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ProcessStatus>, Status> {
        let req = request.into_inner();
        if let Some(unit) = self.config.units.get(&req.service) {
            return Ok(Response::new(self.unit_status(&req.service, unit)?));
        }
        self.spec(&req.service)?;
        let mut processes = self.processes.lock().expect("process table");
        Ok(Response::new(self.status_of(&req.service, &mut processes)))
    }
}

#[tonic::async_trait]
impl Agent for NodeAgent {
    async fn signal(
        &self,
        request: Request<SignalRequest>,
    ) -> Result<Response<ProcessStatus>, Status> {
        let kind = Action::try_from(request.get_ref().action)
            .ok()
            .map(|a| format!("signal-{}", a.as_str_name().to_lowercase()));
        let result = self.signal_call(request).await;
        self.counted(kind, result)
    }

    async fn links(&self, request: Request<LinksRequest>) -> Result<Response<LinksReply>, Status> {
        let kind = match request.get_ref().cut {
            true => "cut-links",
            false => "heal-links",
        };
        let result = self.links_call(request).await;
        self.counted(Some(kind.to_string()), result)
    }

    async fn shape(&self, request: Request<ShapeRequest>) -> Result<Response<ShapeReply>, Status> {
        let kind = match request.get_ref().clear {
            true => "clear-shaping",
            false => "shape",
        };
        let result = self.shape_call(request).await;
        self.counted(Some(kind.to_string()), result)
    }

    async fn capabilities(
        &self,
        request: Request<CapabilitiesRequest>,
    ) -> Result<Response<CapabilitiesReply>, Status> {
        let result = self.capabilities_call(request).await;
        self.counted(None, result)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ProcessStatus>, Status> {
        let result = self.status_call(request).await;
        self.counted(None, result)
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's TLS: this host's identity, and client certificates required from the lab's CA.
fn server_tls(config: &AgentConfig) -> Result<tonic::transport::ServerTlsConfig, AgentError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let identity =
        tonic::transport::Identity::from_pem(read(&config.tls.cert)?, read(&config.tls.key)?);
    let ca = tonic::transport::Certificate::from_pem(read(&config.tls.client_ca)?);
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(ca))
}

/// Serves `agent` on its configured address until `shutdown` completes, then stops its services.
pub async fn serve(
    agent: NodeAgent,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let listen = agent.config.listen;
    let expected = format!("Bearer {}", agent.token);
    let agent = std::sync::Arc::new(agent);
    let service = AgentServer::from_arc(agent.clone());
    let counts = agent.metrics();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        match req.metadata().get("authorization") {
            Some(value) if same_secret(value.as_bytes(), expected.as_bytes()) => Ok(req),
            _ => {
                counts.refused(tonic::Code::Unauthenticated);
                tracing::warn!("call refused: missing or wrong agent token");
                Err(Status::unauthenticated("missing or wrong agent token"))
            }
        }
    };
    // The metrics listener lives as long as the gRPC server.
    let _metrics = agent
        .config
        .metrics_listen
        .map(|addr| AbortOnDrop(tokio::spawn(metrics::serve_metrics(addr, agent.metrics()))));
    crate::pki::install_crypto_provider();
    let tls = server_tls(&agent.config)?;
    let result = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| AgentError::Serve {
            listen,
            reason: e.to_string(),
        })?
        .add_service(tonic::service::interceptor::InterceptedService::new(
            service, check,
        ))
        .serve_with_shutdown(listen, shutdown)
        .await
        .map_err(|e| AgentError::Serve {
            listen,
            reason: e.to_string(),
        });
    agent.stop_all();
    result
}

/// A client that sends the token with every call.
pub type AgentClient = quorumlab_proto::agent::agent_client::AgentClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TokenInterceptor>,
>;

/// Adds the agent token to outgoing calls.
#[derive(Clone)]
pub struct TokenInterceptor(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Connects to an agent at `addr` over TLS, trusting only the lab's CA, presenting the driver's
/// certificate, and sending the token with every call; retries until `timeout` (agents start
/// asynchronously).
pub async fn connect(
    addr: SocketAddr,
    tls: &crate::pki::DriverTls,
    timeout: Duration,
) -> Result<AgentClient, String> {
    crate::pki::install_crypto_provider();
    let value = format!("Bearer {}", tls.token)
        .parse()
        .map_err(|_| "token must be ASCII".to_string())?;
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &tls.cert_pem,
            &tls.key_pem,
        ));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(config)
        .map_err(|e| format!("agent at {addr}: TLS: {e}"))?
        .connect_timeout(Duration::from_millis(500));
    let deadline = Instant::now() + timeout;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(
                    quorumlab_proto::agent::agent_client::AgentClient::with_interceptor(
                        channel,
                        TokenInterceptor(value),
                    ),
                )
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "agent at {addr} not reachable: {}",
                    error_chain(&e)
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An error with its causes, on one line (a TLS refusal is two levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}
