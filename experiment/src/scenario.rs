//! Scenarios: what to run, as data.
//!
//! A scenario file (TOML, in `scenarios/`) names the system under test, its topology, the client
//! workload, a schedule of faults and how long to run. The simulator and the real driver read the
//! same file, so a prediction and a measurement always answer the same question. The built-in
//! scenarios are compiled into the binary; any other `.toml` path works too, so a user can write a
//! new scenario without touching Rust.
//!
//! Faults name nodes symbolically (`leader`, `follower`, `rest`, `n3`): the runner resolves them at
//! the moment the fault fires, because which node leads is only known then.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Scenario files shipped with quorumlab, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "etcd-leader-kill",
        include_str!("../../scenarios/etcd-leader-kill.toml"),
    ),
    (
        "etcd-leader-isolate",
        include_str!("../../scenarios/etcd-leader-isolate.toml"),
    ),
    (
        "etcd-minority-partition",
        include_str!("../../scenarios/etcd-minority-partition.toml"),
    ),
    (
        "etcd-bridge-partition",
        include_str!("../../scenarios/etcd-bridge-partition.toml"),
    ),
    (
        "etcd-chaos",
        include_str!("../../scenarios/etcd-chaos.toml"),
    ),
    ("pg-lag", include_str!("../../scenarios/pg-lag.toml")),
    (
        "pg-failover",
        include_str!("../../scenarios/pg-failover.toml"),
    ),
    (
        "pg-isolate-primary",
        include_str!("../../scenarios/pg-isolate-primary.toml"),
    ),
];

/// Largest cluster a scenario may ask for; Raft clusters beyond 7 voters are not a lab topic.
pub const NODES_MAX: usize = 7;

/// Why a scenario could not be loaded. Each message is one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a built-in name nor a readable file.
    #[error("unknown scenario '{name}' (built-in: {known}; or give a path to a .toml file)")]
    Unknown {
        /// What the user asked for.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// The file exists but could not be read.
    #[error("cannot read scenario file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML for a scenario.
    #[error("malformed scenario {source_name}: {reason}")]
    Malformed {
        /// File path or built-in name.
        source_name: String,
        /// What the parser said, folded to one line.
        reason: String,
    },
    /// The file parsed but describes something that cannot run.
    #[error("invalid scenario {name}: {reason}")]
    Invalid {
        /// Scenario name.
        name: String,
        /// What is impossible about it.
        reason: String,
    },
}

/// The database system a scenario exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// An etcd cluster: Raft consensus under a linearizable key-value store.
    Etcd,
    /// Postgres streaming replication managed by Patroni, with etcd as its DCS.
    Postgres,
}

/// A complete scenario: topology, timing, workload, faults and duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name used on the command line and in reports.
    pub name: String,
    /// One or two sentences for the learner: what happens and what to look for.
    #[serde(default)]
    pub description: String,
    /// System under test.
    pub system: System,
    /// Nodes and their timing.
    pub topology: Topology,
    /// Simulated network defaults (the real driver uses the real network).
    #[serde(default)]
    pub network: Network,
    /// The clients and what they send.
    pub workload: Workload,
    /// Total run time, in milliseconds.
    pub duration_ms: u64,
    /// Faults at fixed times.
    #[serde(default)]
    pub faults: Vec<FaultStep>,
    /// Faults drawn at random from the seed, in addition to `faults`.
    #[serde(default)]
    pub chaos: Option<Chaos>,
    /// Replication and failover settings (required when `system = "postgres"`).
    #[serde(default)]
    pub postgres: Option<PostgresSettings>,
}

/// How commits wait for standbys, as Patroni configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Asynchronous streaming: a commit waits for the primary's own WAL flush only.
    Async,
    /// Patroni's `synchronous_mode`: one standby is synchronous, and commits wait for it at the
    /// `synchronous_commit` level; Patroni promotes only that standby.
    Sync,
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        })
    }
}

/// Postgres `synchronous_commit`: what a commit waits for before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncCommit {
    /// Nothing: not even the primary's own WAL flush.
    Off,
    /// The primary's WAL flush only.
    Local,
    /// The synchronous standby has written the WAL (to its OS, not yet flushed).
    RemoteWrite,
    /// The synchronous standby has flushed the WAL.
    On,
    /// The synchronous standby has replayed the WAL, so reads there see the commit.
    RemoteApply,
}

impl fmt::Display for SyncCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncCommit::Off => "off",
            SyncCommit::Local => "local",
            SyncCommit::RemoteWrite => "remote_write",
            SyncCommit::On => "on",
            SyncCommit::RemoteApply => "remote_apply",
        })
    }
}

/// One stretch of a Postgres write workload at a fixed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Name shown in reports (`idle`, `steady`, `burst`).
    pub name: String,
    /// How long it lasts, in milliseconds.
    pub ms: u64,
    /// Inserts per second (0 for idle).
    pub rate_per_s: u64,
    /// Payload bytes per inserted row.
    #[serde(default = "default_row_bytes")]
    pub row_bytes: u32,
}

fn default_row_bytes() -> u32 {
    100
}

/// The phase running `at_us` microseconds after the start (the last one once all have ended).
pub fn phase_at(phases: &[Phase], at_us: u64) -> &Phase {
    let mut end = 0;
    for phase in phases {
        end += phase.ms * 1000;
        if at_us < end {
            return phase;
        }
    }
    phases.last().expect("at least one phase")
}

/// Postgres replication and Patroni settings. Patroni's timing is in whole seconds, as in its
/// configuration; the topology's `nodes` counts the primary and its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Patroni `ttl`: how long the leader key lives without being renewed.
    pub ttl_s: u64,
    /// Patroni `loop_wait`: time between HA loop runs.
    pub loop_wait_s: u64,
    /// Patroni `retry_timeout`: how long DCS and Postgres operations are retried before the
    /// leader gives up (and demotes).
    pub retry_timeout_s: u64,
    /// Patroni `maximum_lag_on_failover`: replicas further behind than this are not promoted.
    #[serde(default = "default_max_lag")]
    pub maximum_lag_on_failover_bytes: u64,
    /// Replication modes the scenario is run in, one after another.
    #[serde(default = "default_modes")]
    pub modes: Vec<ReplicationMode>,
    /// `synchronous_commit` in `sync` mode (`async` mode commits wait for the local flush).
    #[serde(default = "default_sync_commit")]
    pub synchronous_commit: SyncCommit,
    /// Workload phases; when empty, the workload's rate runs for the whole scenario.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Simulator only: how fast a replica replays WAL, in MB/s.
    #[serde(default = "default_replay_mb_per_s")]
    pub replay_mb_per_s: f64,
    /// Simulator only: WAL stream bandwidth per replica, in MB/s.
    #[serde(default = "default_bandwidth_mb_per_s")]
    pub bandwidth_mb_per_s: f64,
}

fn default_max_lag() -> u64 {
    1 << 20
}

fn default_modes() -> Vec<ReplicationMode> {
    vec![ReplicationMode::Async]
}

fn default_sync_commit() -> SyncCommit {
    SyncCommit::On
}

fn default_replay_mb_per_s() -> f64 {
    200.0
}

fn default_bandwidth_mb_per_s() -> f64 {
    100.0
}

impl PostgresSettings {
    /// The workload phases, with the whole run as one `steady` phase when none are given.
    pub fn phases_or(&self, duration_ms: u64, rate_per_s: u64) -> Vec<Phase> {
        if self.phases.is_empty() {
            vec![Phase {
                name: "steady".into(),
                ms: duration_ms,
                rate_per_s,
                row_bytes: default_row_bytes(),
            }]
        } else {
            self.phases.clone()
        }
    }

    /// Checks Patroni's own rule and the ranges that make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.loop_wait_s == 0 || self.retry_timeout_s == 0 {
            return Err("postgres.loop_wait_s and retry_timeout_s must be > 0".into());
        }
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s {
            return Err(format!(
                "Patroni needs loop_wait + 2*retry_timeout <= ttl, but {} + 2*{} > {}",
                self.loop_wait_s, self.retry_timeout_s, self.ttl_s
            ));
        }
        if self.modes.is_empty() {
            return Err("postgres.modes is empty (use [\"async\"], [\"sync\"] or both)".into());
        }
        if !(self.replay_mb_per_s > 0.0 && self.bandwidth_mb_per_s > 0.0) {
            return Err("postgres.replay_mb_per_s and bandwidth_mb_per_s must be > 0".into());
        }
        if self.phases.iter().any(|p| p.ms == 0) {
            return Err("every postgres phase needs ms > 0".into());
        }
        Ok(())
    }
}

/// Cluster shape and Raft timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Number of voting members (3 or 5 in the shipped scenarios).
    pub nodes: usize,
    /// Leader heartbeat interval (etcd `--heartbeat-interval`, default 100 ms).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Election timeout (etcd `--election-timeout`, default 1000 ms); randomized in [t, 2t).
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    100
}

fn default_election_timeout_ms() -> u64 {
    1000
}

/// Simulated one-way message latency bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Lowest one-way latency, in milliseconds.
    pub latency_ms_min: u64,
    /// Highest one-way latency, in milliseconds.
    pub latency_ms_max: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_ms_min: 1,
            latency_ms_max: 5,
        }
    }
}

/// Client workload: how many clients, how fast, which operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Number of independent clients; each has at most one operation in flight.
    pub clients: usize,
    /// Total operations per second across all clients (open loop, divided evenly).
    pub rate_per_s: u64,
    /// Relative weight of `put`.
    pub put: u32,
    /// Relative weight of `get`.
    pub get: u32,
    /// Relative weight of compare-and-swap.
    pub cas: u32,
    /// Number of distinct keys.
    pub keys: u32,
    /// How long a client waits for one attempt before giving up on it.
    pub timeout_ms: u64,
    /// How many further attempts after a definite refusal (not-leader); a timeout is never retried,
    /// because its outcome is unknown.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_retries() -> u32 {
    3
}

/// A fault and when it fires. (Unknown keys are caught by [`Fault`], which this flattens.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultStep {
    /// Time since the start of the run, in milliseconds.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub fault: Fault,
}

/// One fault. Nodes are named symbolically and resolved when the fault fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Cut one node off from every other node (clients still reach it).
    Isolate {
        /// The node to cut off.
        node: NodeRef,
    },
    /// Split the nodes into groups that cannot reach each other.
    Partition {
        /// The groups; `rest` stands for every node not named elsewhere.
        groups: Vec<Vec<NodeRef>>,
    },
    /// Drop messages in one direction only.
    PartitionOneway {
        /// Sender whose messages are dropped.
        from: NodeRef,
        /// Receiver that no longer hears `from`.
        to: NodeRef,
    },
    /// Two halves that reach each other only through one bridge node.
    Bridge {
        /// The node in both halves.
        bridge: NodeRef,
    },
    /// Kill a node's process (`kill -9`): its persisted Raft log and hard state survive.
    Crash {
        /// The node to kill.
        node: NodeRef,
    },
    /// Start a crashed node again.
    Restart {
        /// The node to start (`crashed` restarts every crashed node).
        node: NodeRef,
    },
    /// Raise the highest one-way message latency on every link.
    Delay {
        /// Highest latency, in milliseconds.
        ms_max: u64,
    },
    /// Drop each message with this probability.
    Loss {
        /// Probability in [0, 1].
        rate: f64,
    },
    /// Deliver each message twice with this probability.
    Duplicate {
        /// Probability in [0, 1].
        rate: f64,
    },
    /// Repair every link and remove delay, loss and duplication (crashed nodes stay down).
    Heal,
}

impl Fault {
    /// Short label for timelines and reports, e.g. `isolate leader`.
    pub fn label(&self) -> String {
        match self {
            Fault::Isolate { node } => format!("isolate {node}"),
            Fault::Partition { groups } => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(NodeRef::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                format!("partition {}", groups.join(" | "))
            }
            Fault::PartitionOneway { from, to } => format!("drop {from} -> {to}"),
            Fault::Bridge { bridge } => format!("bridge via {bridge}"),
            Fault::Crash { node } => format!("crash {node}"),
            Fault::Restart { node } => format!("restart {node}"),
            Fault::Delay { ms_max } => format!("delay up to {ms_max} ms"),
            Fault::Loss { rate } => format!("loss {:.0}%", rate * 100.0),
            Fault::Duplicate { rate } => format!("duplicate {:.0}%", rate * 100.0),
            Fault::Heal => "heal".to_string(),
        }
    }

    /// Whether this fault can cost the cluster its leader (and so starts an election clock).
    pub fn disrupts_leadership(&self) -> bool {
        !matches!(
            self,
            Fault::Heal | Fault::Restart { .. } | Fault::Delay { .. } | Fault::Duplicate { .. }
        )
    }

    fn node_refs(&self) -> Vec<&NodeRef> {
        match self {
            Fault::Isolate { node } | Fault::Crash { node } | Fault::Restart { node } => vec![node],
            Fault::Partition { groups } => groups.iter().flatten().collect(),
            Fault::PartitionOneway { from, to } => vec![from, to],
            Fault::Bridge { bridge } => vec![bridge],
            Fault::Delay { .. } | Fault::Loss { .. } | Fault::Duplicate { .. } | Fault::Heal => {
                vec![]
            }
        }
    }
}

/// A node named in a fault: a role resolved when the fault fires, or a fixed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NodeRef {
    /// The current leader (highest term).
    Leader,
    /// A follower not otherwise named in the same fault (lowest id first).
    Follower,
    /// Every node not named elsewhere in the same fault.
    Rest,
    /// Every node currently crashed.
    Crashed,
    /// Node `n{1-based index}`.
    Node(usize),
}

impl FromStr for NodeRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leader" => Ok(NodeRef::Leader),
            "follower" => Ok(NodeRef::Follower),
            "rest" => Ok(NodeRef::Rest),
            "crashed" => Ok(NodeRef::Crashed),
            _ => s
                .strip_prefix('n')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .map(NodeRef::Node)
                .ok_or_else(|| {
                    format!(
                        "'{s}' is not a node (use leader, follower, rest, crashed or n1, n2, ...)"
                    )
                }),
        }
    }
}

impl TryFrom<String> for NodeRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeRef> for String {
    fn from(r: NodeRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Leader => f.write_str("leader"),
            NodeRef::Follower => f.write_str("follower"),
            NodeRef::Rest => f.write_str("rest"),
            NodeRef::Crashed => f.write_str("crashed"),
            NodeRef::Node(n) => write!(f, "n{n}"),
        }
    }
}

/// Random faults drawn from the seed, VOPR-style: the drawn schedule is printed with the run so
/// any failure can be replayed with the same seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// How many faults to draw; each is followed by a heal (and a restart, for crashes).
    pub faults: u32,
    /// Earliest fault time, in milliseconds.
    pub from_ms: u64,
    /// Latest heal time, in milliseconds.
    pub to_ms: u64,
}

/// What a runner knows of one node when a fault fires; used to resolve [`NodeRef`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeState {
    /// The node's current term.
    pub term: u64,
    /// Whether it believes it leads.
    pub leader: bool,
    /// Whether its process is down.
    pub crashed: bool,
}

/// Resolves the symbolic nodes of one fault to node ids (1-based), group by group, the same way
/// in the simulator and on a real cluster. `leader` is the live node that leads in the highest
/// term (or, with none, the live node with the highest term); `follower` is the lowest-numbered
/// node not otherwise named; `rest` is every node not named elsewhere.
pub fn resolve_nodes(refs: &[Vec<NodeRef>], nodes: &[NodeState]) -> Vec<Vec<u64>> {
    let n = nodes.len() as u64;
    let state = |id: u64| nodes[id as usize - 1];
    let live = || (1..=n).filter(|&id| !state(id).crashed);
    let leader = live()
        .filter(|&id| state(id).leader)
        .max_by_key(|&id| (state(id).term, std::cmp::Reverse(id)))
        .or_else(|| live().max_by_key(|&id| (state(id).term, std::cmp::Reverse(id))))
        .unwrap_or(1);
    let named = |id: u64| {
        refs.iter()
            .flatten()
            .any(|r| *r == NodeRef::Node(id as usize))
    };
    let mut taken: Vec<u64> = Vec::new();
    let mut groups: Vec<Vec<u64>> = refs
        .iter()
        .map(|group| {
            let mut ids = Vec::new();
            for r in group {
                let chosen: Vec<u64> = match r {
                    NodeRef::Leader => vec![leader],
                    NodeRef::Node(i) => vec![*i as u64],
                    NodeRef::Crashed => (1..=n).filter(|&id| state(id).crashed).collect(),
                    NodeRef::Follower => (1..=n)
                        .find(|id| *id != leader && !taken.contains(id) && !named(*id))
                        .into_iter()
                        .collect(),
                    NodeRef::Rest => vec![],
                };
                taken.extend(&chosen);
                ids.extend(chosen);
            }
            ids
        })
        .collect();
    for (group, refs) in groups.iter_mut().zip(refs) {
        if refs.contains(&NodeRef::Rest) {
            group.extend((1..=n).filter(|id| !taken.contains(id)));
        }
    }
    groups
}

/// One primitive step of a fault, in terms any runner can carry out: the simulator on turmoil's
/// links and hosts, the real driver through node agents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disruption {
    /// Drop all traffic between two nodes, both ways.
    Cut(u64, u64),
    /// Drop traffic from the first node to the second.
    CutOneway(u64, u64),
    /// Kill a node's process (SIGKILL); its durable state survives.
    Kill(u64),
    /// Start a killed node's process again.
    Start(u64),
    /// Raise the highest one-way latency on every link.
    Delay {
        /// Milliseconds.
        ms_max: u64,
    },
    /// Drop each message with this probability.
    Loss(f64),
    /// Send each message twice with this probability.
    Duplicate(f64),
    /// Repair every link and remove delay, loss and duplication.
    HealAll,
}

/// A fault resolved against the cluster as it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// What to do, in order.
    pub steps: Vec<Disruption>,
    /// The resolved nodes for the timeline, e.g. `n2` or `n1,n3 | n2,n4,n5` (empty when none).
    pub resolved: String,
}

impl FaultPlan {
    /// The timeline label: the fault as written, then the nodes it resolved to.
    pub fn label(&self, fault: &Fault) -> String {
        if self.resolved.is_empty() {
            fault.label()
        } else {
            format!("{} ({})", fault.label(), self.resolved)
        }
    }
}

fn node_names(ids: &[u64]) -> String {
    ids.iter()
        .map(|id| format!("n{id}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Cuts every link between `a` and `b`.
fn cut_all(a: &[u64], b: &[u64], steps: &mut Vec<Disruption>) {
    for &x in a {
        for &y in b.iter().filter(|&&y| y != x) {
            steps.push(Disruption::Cut(x, y));
        }
    }
}

/// Turns a fault into primitive steps, resolving its symbolic nodes against `nodes` (index 0 is n1).
/// Killing a node that is down, or starting one that is up, is left out.
pub fn plan_fault(fault: &Fault, nodes: &[NodeState]) -> FaultPlan {
    let all: Vec<u64> = (1..=nodes.len() as u64).collect();
    let one = |r: NodeRef| resolve_nodes(&[vec![r]], nodes).remove(0);
    let mut steps = Vec::new();
    let resolved = match fault {
        Fault::Isolate { node } => {
            let target = one(*node);
            let others: Vec<u64> = all
                .iter()
                .copied()
                .filter(|i| !target.contains(i))
                .collect();
            cut_all(&target, &others, &mut steps);
            node_names(&target)
        }
        Fault::Partition { groups } => {
            let ids = resolve_nodes(groups, nodes);
            for (i, a) in ids.iter().enumerate() {
                for b in &ids[i + 1..] {
                    cut_all(a, b, &mut steps);
                }
            }
            ids.iter()
                .map(|g| node_names(g))
                .collect::<Vec<_>>()
                .join(" | ")
        }
        Fault::PartitionOneway { from, to } => {
            let ids = resolve_nodes(&[vec![*from], vec![*to]], nodes);
            for &a in &ids[0] {
                for &b in ids[1].iter().filter(|&&b| b != a) {
                    steps.push(Disruption::CutOneway(a, b));
                }
            }
            format!("{} -> {}", node_names(&ids[0]), node_names(&ids[1]))
        }
        Fault::Bridge { bridge } => {
            let b = one(*bridge);
            let others: Vec<u64> = all.iter().copied().filter(|i| !b.contains(i)).collect();
            let (left, right) = others.split_at(others.len() / 2);
            cut_all(left, right, &mut steps);
            format!(
                "{} | {} | {}",
                node_names(left),
                node_names(&b),
                node_names(right)
            )
        }
        Fault::Crash { node } => {
            let ids = one(*node);
            steps.extend(
                ids.iter()
                    .filter(|&&id| !nodes[id as usize - 1].crashed)
                    .map(|&id| Disruption::Kill(id)),
            );
            node_names(&ids)
        }
        Fault::Restart { node } => {
            let ids = one(*node);
            steps.extend(
                ids.iter()
                    .filter(|&&id| nodes[id as usize - 1].crashed)
                    .map(|&id| Disruption::Start(id)),
            );
            node_names(&ids)
        }
        Fault::Delay { ms_max } => {
            steps.push(Disruption::Delay { ms_max: *ms_max });
            String::new()
        }
        Fault::Loss { rate } => {
            steps.push(Disruption::Loss(*rate));
            String::new()
        }
        Fault::Duplicate { rate } => {
            steps.push(Disruption::Duplicate(*rate));
            String::new()
        }
        Fault::Heal => {
            steps.push(Disruption::HealAll);
            String::new()
        }
    };
    FaultPlan { steps, resolved }
}

impl Scenario {
    /// Names of the scenarios compiled into quorumlab.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).collect()
    }

    /// Loads a built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
            return Scenario::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        Err(ScenarioError::Unknown {
            name: name_or_path.to_string(),
            known: Scenario::builtin_names().join(", "),
        })
    }

    /// Parses and validates scenario TOML; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Malformed {
            source_name: source_name.to_string(),
            reason: e.message().replace('\n', " "),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Returns the scenario with a different node count, validated again.
    pub fn with_nodes(mut self, nodes: usize) -> Result<Scenario, ScenarioError> {
        self.topology.nodes = nodes;
        self.validate()?;
        Ok(self)
    }

    /// Checks everything that would make the scenario impossible to run.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |reason: String| ScenarioError::Invalid {
            name: self.name.clone(),
            reason,
        };
        let nodes = self.topology.nodes;
        if nodes == 0 || nodes > NODES_MAX {
            return Err(invalid(format!(
                "topology.nodes is {nodes}; it must be 1 to {NODES_MAX}"
            )));
        }
        let t = &self.topology;
        if t.heartbeat_ms == 0 || t.election_timeout_ms < 2 * t.heartbeat_ms {
            return Err(invalid(format!(
                "election_timeout_ms ({}) must be at least twice heartbeat_ms ({}), which must be > 0",
                t.election_timeout_ms, t.heartbeat_ms
            )));
        }
        if self.network.latency_ms_min > self.network.latency_ms_max {
            return Err(invalid(
                "network.latency_ms_min exceeds latency_ms_max".into(),
            ));
        }
        let w = &self.workload;
        if w.clients == 0 || w.keys == 0 || w.timeout_ms == 0 {
            return Err(invalid(
                "workload.clients, keys and timeout_ms must be > 0".into(),
            ));
        }
        if w.put + w.get + w.cas == 0 {
            return Err(invalid(
                "workload mix is empty: put + get + cas weights are 0".into(),
            ));
        }
        if self.duration_ms == 0 {
            return Err(invalid("duration_ms must be > 0".into()));
        }
        match (self.system, &self.postgres) {
            (System::Postgres, None) => {
                return Err(invalid(
                    "a postgres scenario needs a [postgres] section (ttl_s, loop_wait_s, retry_timeout_s)".into(),
                ))
            }
            (System::Postgres, Some(pg)) => {
                if nodes < 2 {
                    return Err(invalid(format!(
                        "a Postgres scenario needs at least 1 replica (topology.nodes >= 2); it asks for {}",
                        nodes.saturating_sub(1)
                    )));
                }
                pg.validate().map_err(invalid)?;
                let phases_ms: u64 = pg.phases.iter().map(|p| p.ms).sum();
                if phases_ms > self.duration_ms {
                    return Err(invalid(format!(
                        "postgres phases last {phases_ms} ms, longer than duration_ms ({})",
                        self.duration_ms
                    )));
                }
            }
            (System::Etcd, Some(_)) => {
                return Err(invalid(
                    "[postgres] settings belong to system = \"postgres\" scenarios".into(),
                ))
            }
            (System::Etcd, None) => {}
        }
        for step in &self.faults {
            if step.at_ms > self.duration_ms {
                return Err(invalid(format!(
                    "fault '{}' at {} ms is after the end of the run ({} ms)",
                    step.fault.label(),
                    step.at_ms,
                    self.duration_ms
                )));
            }
            for node in step.fault.node_refs() {
                if let NodeRef::Node(n) = node {
                    if *n > nodes {
                        return Err(invalid(format!(
                            "fault '{}' names {node}, but the cluster has only {nodes} nodes (n1..n{nodes})",
                            step.fault.label()
                        )));
                    }
                }
            }
            match &step.fault {
                Fault::Partition { groups }
                    if groups.len() < 2 || groups.iter().any(Vec::is_empty) =>
                {
                    return Err(invalid(
                        "a partition needs at least two non-empty groups".into(),
                    ));
                }
                Fault::Loss { rate } | Fault::Duplicate { rate } if !(0.0..=1.0).contains(rate) => {
                    return Err(invalid(format!(
                        "rate {rate} is not a probability in [0, 1]"
                    )));
                }
                Fault::Delay { ms_max } if *ms_max < self.network.latency_ms_min => {
                    return Err(invalid(
                        "delay ms_max is below network.latency_ms_min".into(),
                    ));
                }
                Fault::Bridge { .. } if nodes < 3 => {
                    return Err(invalid("a bridge partition needs at least 3 nodes".into()));
                }
                _ => {}
            }
        }
        if let Some(chaos) = &self.chaos {
            if chaos.from_ms >= chaos.to_ms || chaos.to_ms > self.duration_ms {
                return Err(invalid(
                    "chaos window must satisfy from_ms < to_ms <= duration_ms".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_parses_and_validates() {
        for name in Scenario::builtin_names() {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.name, name);
        }
    }

    #[test]
    fn unknown_scenario_names_the_builtins() {
        let err = Scenario::load("etcd-nope").unwrap_err().to_string();
        assert!(err.contains("unknown scenario 'etcd-nope'"), "{err}");
        assert!(err.contains("etcd-leader-kill"), "{err}");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let err = Scenario::parse("name = ", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed scenario x.toml"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn zero_nodes_and_missing_nodes_are_rejected() {
        let base = Scenario::load("etcd-leader-isolate").unwrap();
        let err = base.clone().with_nodes(0).unwrap_err().to_string();
        assert!(err.contains("topology.nodes is 0"), "{err}");
        let mut s = base;
        s.faults.push(FaultStep {
            at_ms: 10,
            fault: Fault::Crash {
                node: NodeRef::Node(9),
            },
        });
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("names n9"), "{err}");
    }

    #[test]
    fn symbolic_nodes_resolve_around_the_leader() {
        let mut nodes = vec![NodeState::default(); 5];
        nodes[2] = NodeState {
            term: 4,
            leader: true,
            crashed: false,
        };
        let groups = vec![
            vec![NodeRef::Leader, NodeRef::Follower],
            vec![NodeRef::Rest],
        ];
        assert_eq!(
            resolve_nodes(&groups, &nodes),
            vec![vec![3, 1], vec![2, 4, 5]]
        );
        nodes[2].crashed = true;
        assert_eq!(
            resolve_nodes(&[vec![NodeRef::Crashed]], &nodes),
            vec![vec![3]]
        );
    }

    #[test]
    fn faults_plan_into_primitive_steps() {
        let mut nodes = vec![NodeState::default(); 5];
        nodes[1] = NodeState {
            term: 2,
            leader: true,
            crashed: false,
        };
        let bridge = plan_fault(
            &Fault::Bridge {
                bridge: NodeRef::Leader,
            },
            &nodes,
        );
        assert_eq!(bridge.resolved, "n1,n3 | n2 | n4,n5");
        assert_eq!(bridge.steps.len(), 4, "{:?}", bridge.steps);
        assert!(bridge
            .steps
            .iter()
            .all(|d| !matches!(d, Disruption::Cut(2, _) | Disruption::Cut(_, 2))));
        let isolate = plan_fault(
            &Fault::Isolate {
                node: NodeRef::Leader,
            },
            &nodes,
        );
        assert_eq!(
            isolate.steps,
            vec![
                Disruption::Cut(2, 1),
                Disruption::Cut(2, 3),
                Disruption::Cut(2, 4),
                Disruption::Cut(2, 5)
            ]
        );
        assert_eq!(
            isolate.label(&Fault::Isolate {
                node: NodeRef::Leader
            }),
            "isolate leader (n2)"
        );
        nodes[1].crashed = true;
        assert!(
            plan_fault(
                &Fault::Crash {
                    node: NodeRef::Node(2)
                },
                &nodes
            )
            .steps
            .is_empty(),
            "already down"
        );
        assert_eq!(
            plan_fault(
                &Fault::Restart {
                    node: NodeRef::Crashed
                },
                &nodes
            )
            .steps,
            vec![Disruption::Start(2)]
        );
    }

    #[test]
    fn node_refs_round_trip() {
        for s in ["leader", "follower", "rest", "crashed", "n4"] {
            assert_eq!(s.parse::<NodeRef>().unwrap().to_string(), s);
        }
        assert!("n0".parse::<NodeRef>().is_err());
        assert!("boss".parse::<NodeRef>().is_err());
    }
}
