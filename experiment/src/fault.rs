//! Faults: what goes wrong in a scenario, as data, and how a runner carries it out.
//!
//! A [`FaultStep`] names a [`Fault`] and when it fires; faults name nodes symbolically
//! ([`NodeRef`]: `leader`, `follower`, `rest`, `crashed`, `n3`) because which node leads is only
//! known when the fault fires. [`plan_fault`] resolves a fault against the cluster as it is then
//! ([`NodeState`]) into primitive [`Disruption`]s, which every runner — the simulators and the real
//! labs — carries out the same way. [`Chaos`] draws faults from the seed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::NodeId;

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
    /// Deliver each client request twice with this probability, as a client library that
    /// resends on its own would: the node may apply a write twice (Raft traffic is untouched;
    /// `delay` already slows client messages too).
    DuplicateRequests {
        /// Probability in [0, 1].
        rate: f64,
    },
    /// Limit what every node sends to this rate, as a slow or saturated link would (real hosts:
    /// `tc tbf`; the simulators do not model bandwidth and refuse it).
    Bandwidth {
        /// Kilobits per second, more than 0.
        kbit_per_s: u64,
    },
    /// A planned failover: MongoDB's `replSetStepDown` on the named member (the primary, as
    /// `leader`). It stops taking writes, waits up to `catch_up_secs` for an electable secondary
    /// to catch up, steps down and stays ineligible for `step_down_secs`. (Systems without such a
    /// command refuse it.)
    StepDown {
        /// The member told to step down.
        node: NodeRef,
        /// `stepDownSecs`: how long it may not stand for election afterwards (MongoDB: 60).
        #[serde(default = "default_step_down_secs")]
        step_down_secs: u64,
        /// `secondaryCatchUpPeriodSecs`: how long it waits for a secondary to catch up (MongoDB: 10).
        #[serde(default = "default_catch_up_secs")]
        catch_up_secs: u64,
    },
    /// Repair every link and remove delay, loss, duplication and bandwidth limits (crashed nodes
    /// stay down).
    Heal,
}

fn default_step_down_secs() -> u64 {
    60
}

fn default_catch_up_secs() -> u64 {
    10
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
            Fault::DuplicateRequests { rate } => {
                format!("duplicate client requests {:.0}%", rate * 100.0)
            }
            Fault::Bandwidth { kbit_per_s } => format!("bandwidth {kbit_per_s} kbit/s"),
            Fault::StepDown { node, .. } => format!("step down {node}"),
            Fault::Heal => "heal".to_string(),
        }
    }

    /// Whether this fault can cost the cluster its leader (and so starts an election clock).
    pub fn disrupts_leadership(&self) -> bool {
        !matches!(
            self,
            Fault::Heal
                | Fault::Restart { .. }
                | Fault::Delay { .. }
                | Fault::Duplicate { .. }
                | Fault::DuplicateRequests { .. }
                | Fault::Bandwidth { .. }
        )
    }

    /// Whether this fault undoes earlier ones (a heal, a restart) rather than doing harm.
    pub fn is_repair(&self) -> bool {
        matches!(self, Fault::Heal | Fault::Restart { .. })
    }

    /// The nodes this fault names, as written.
    pub fn node_refs(&self) -> Vec<&NodeRef> {
        match self {
            Fault::Isolate { node }
            | Fault::Crash { node }
            | Fault::Restart { node }
            | Fault::StepDown { node, .. } => vec![node],
            Fault::Partition { groups } => groups.iter().flatten().collect(),
            Fault::PartitionOneway { from, to } => vec![from, to],
            Fault::Bridge { bridge } => vec![bridge],
            Fault::Delay { .. }
            | Fault::Loss { .. }
            | Fault::Duplicate { .. }
            | Fault::DuplicateRequests { .. }
            | Fault::Bandwidth { .. }
            | Fault::Heal => vec![],
        }
    }
}

/// A node named in a fault: a role resolved when the fault fires, or a fixed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// One fixed node, e.g. `n3`.
    Node(NodeId),
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
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n >= 1)
                .map(|n| NodeRef::Node(NodeId(n)))
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
            NodeRef::Node(id) => write!(f, "{id}"),
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

impl Chaos {
    /// The faults chaos draws from, in the order the seed picks them (index `0..8`). Each is
    /// followed by a heal, and a crash also by a restart.
    pub fn menu() -> [Fault; 8] {
        [
            Fault::Isolate {
                node: NodeRef::Leader,
            },
            Fault::Partition {
                groups: vec![
                    vec![NodeRef::Leader, NodeRef::Follower],
                    vec![NodeRef::Rest],
                ],
            },
            Fault::PartitionOneway {
                from: NodeRef::Leader,
                to: NodeRef::Follower,
            },
            Fault::Bridge {
                bridge: NodeRef::Follower,
            },
            Fault::Crash {
                node: NodeRef::Leader,
            },
            Fault::Loss { rate: 0.2 },
            Fault::Duplicate { rate: 0.3 },
            Fault::Delay { ms_max: 80 },
        ]
    }
}

/// The one contract every runner of faults keeps — the etcd and Postgres simulators and the real
/// labs: before anything starts, it says which faults it can carry out, so an unsupported fault
/// is refused up front and in the same words everywhere. (Carrying a fault out is each runner's
/// own: [`plan_fault`] gives the same [`Disruption`]s to all of them.)
pub trait FaultExecutor {
    /// The runner, in messages (e.g. `the real lab`).
    fn runner(&self) -> &'static str;

    /// Whether this runner can carry out `fault`; `Err` says why not, in one line.
    fn supports(&self, fault: &Fault) -> Result<(), String>;

    /// Checks every fault a scenario can fire: its schedule, and all that chaos may draw.
    fn check_faults(&self, faults: &[FaultStep], chaos: Option<&Chaos>) -> Result<(), String> {
        for step in faults {
            self.supports(&step.fault).map_err(|why| {
                format!(
                    "{} cannot carry out fault '{}': {why}",
                    self.runner(),
                    step.fault.label()
                )
            })?;
        }
        if chaos.is_some() {
            for fault in Chaos::menu() {
                self.supports(&fault).map_err(|why| {
                    format!(
                        "{} cannot run chaos, which may draw '{}': {why}",
                        self.runner(),
                        fault.label()
                    )
                })?;
            }
        }
        Ok(())
    }
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
pub fn resolve_nodes(refs: &[Vec<NodeRef>], nodes: &[NodeState]) -> Vec<Vec<NodeId>> {
    let all = || NodeId::all(nodes.len());
    let state = |id: NodeId| nodes[id.index()];
    let live = || all().filter(|&id| !state(id).crashed);
    let leader = live()
        .filter(|&id| state(id).leader)
        .max_by_key(|&id| (state(id).term, std::cmp::Reverse(id)))
        .or_else(|| live().max_by_key(|&id| (state(id).term, std::cmp::Reverse(id))))
        .unwrap_or(NodeId(1));
    let named = |id: NodeId| refs.iter().flatten().any(|r| *r == NodeRef::Node(id));
    let mut taken: Vec<NodeId> = Vec::new();
    let mut groups: Vec<Vec<NodeId>> = refs
        .iter()
        .map(|group| {
            let mut ids = Vec::new();
            for r in group {
                let chosen: Vec<NodeId> = match r {
                    NodeRef::Leader => vec![leader],
                    NodeRef::Node(id) => vec![*id],
                    NodeRef::Crashed => all().filter(|&id| state(id).crashed).collect(),
                    NodeRef::Follower => all()
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
            group.extend(all().filter(|id| !taken.contains(id)));
        }
    }
    groups
}

/// One primitive step of a fault, in terms any runner can carry out: the simulator on turmoil's
/// links and hosts, the real driver through node agents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disruption {
    /// Drop all traffic between two nodes, both ways.
    Cut(NodeId, NodeId),
    /// Drop traffic from the first node to the second.
    CutOneway(NodeId, NodeId),
    /// Kill a node's process (SIGKILL); its durable state survives.
    Kill(NodeId),
    /// Start a killed node's process again.
    Start(NodeId),
    /// Raise the highest one-way latency on every link.
    Delay {
        /// Milliseconds.
        ms_max: u64,
    },
    /// Drop each message with this probability.
    Loss(f64),
    /// Send each message twice with this probability.
    Duplicate(f64),
    /// Deliver client requests twice with this probability.
    DuplicateRequests(f64),
    /// Limit what every node sends, in kilobits per second.
    Bandwidth(u64),
    /// Repair every link and remove delay, loss and duplication.
    HealAll,
    /// Ask a member to step down (`replSetStepDown`), with its step-down and catch-up periods in
    /// seconds.
    StepDown {
        /// The member.
        node: NodeId,
        /// `stepDownSecs`.
        step_down_secs: u64,
        /// `secondaryCatchUpPeriodSecs`.
        catch_up_secs: u64,
    },
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

fn node_names(ids: &[NodeId]) -> String {
    ids.iter()
        .map(NodeId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Cuts every link between `a` and `b`.
fn cut_all(a: &[NodeId], b: &[NodeId], steps: &mut Vec<Disruption>) {
    for &x in a {
        for &y in b.iter().filter(|&&y| y != x) {
            steps.push(Disruption::Cut(x, y));
        }
    }
}

/// Turns a fault into primitive steps, resolving its symbolic nodes against `nodes` (index 0 is n1).
/// Killing a node that is down, or starting one that is up, is left out.
pub fn plan_fault(fault: &Fault, nodes: &[NodeState]) -> FaultPlan {
    let mut steps = Vec::new();
    let resolved = match fault {
        Fault::Isolate { .. }
        | Fault::Partition { .. }
        | Fault::PartitionOneway { .. }
        | Fault::Bridge { .. } => plan_links(fault, nodes, &mut steps),
        Fault::Crash { node } => plan_processes(*node, nodes, false, &mut steps),
        Fault::Restart { node } => plan_processes(*node, nodes, true, &mut steps),
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
        Fault::Bandwidth { kbit_per_s } => {
            steps.push(Disruption::Bandwidth(*kbit_per_s));
            String::new()
        }
        Fault::DuplicateRequests { rate } => {
            steps.push(Disruption::DuplicateRequests(*rate));
            String::new()
        }
        Fault::StepDown {
            node,
            step_down_secs,
            catch_up_secs,
        } => {
            let ids = resolve_nodes(&[vec![*node]], nodes).remove(0);
            for &id in ids.iter().filter(|id| !nodes[id.index()].crashed) {
                steps.push(Disruption::StepDown {
                    node: id,
                    step_down_secs: *step_down_secs,
                    catch_up_secs: *catch_up_secs,
                });
            }
            node_names(&ids)
        }
        Fault::Heal => {
            steps.push(Disruption::HealAll);
            String::new()
        }
    };
    FaultPlan { steps, resolved }
}

/// The links a partition-like fault cuts; returns the nodes it resolved to, for the timeline.
fn plan_links(fault: &Fault, nodes: &[NodeState], steps: &mut Vec<Disruption>) -> String {
    let all: Vec<NodeId> = NodeId::all(nodes.len()).collect();
    let one = |r: NodeRef| resolve_nodes(&[vec![r]], nodes).remove(0);
    match fault {
        Fault::Isolate { node } => {
            let target = one(*node);
            let others: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|i| !target.contains(i))
                .collect();
            cut_all(&target, &others, steps);
            node_names(&target)
        }
        Fault::Partition { groups } => {
            let ids = resolve_nodes(groups, nodes);
            for (i, a) in ids.iter().enumerate() {
                for b in &ids[i + 1..] {
                    cut_all(a, b, steps);
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
            let others: Vec<NodeId> = all.iter().copied().filter(|i| !b.contains(i)).collect();
            let (left, right) = others.split_at(others.len() / 2);
            cut_all(left, right, steps);
            format!(
                "{} | {} | {}",
                node_names(left),
                node_names(&b),
                node_names(right)
            )
        }
        _ => unreachable!("plan_links takes partition-like faults only, not {fault:?}"),
    }
}

/// Kills the named nodes that are up (or, to `start`, starts those that are down).
fn plan_processes(
    node: NodeRef,
    nodes: &[NodeState],
    start: bool,
    steps: &mut Vec<Disruption>,
) -> String {
    let ids = resolve_nodes(&[vec![node]], nodes).remove(0);
    for &id in &ids {
        match (start, nodes[id.index()].crashed) {
            (true, true) => steps.push(Disruption::Start(id)),
            (false, false) => steps.push(Disruption::Kill(id)),
            _ => {}
        }
    }
    node_names(&ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(groups: &[&[u64]]) -> Vec<Vec<NodeId>> {
        groups
            .iter()
            .map(|g| g.iter().copied().map(NodeId).collect())
            .collect()
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
        assert_eq!(resolve_nodes(&groups, &nodes), ids(&[&[3, 1], &[2, 4, 5]]));
        nodes[2].crashed = true;
        assert_eq!(
            resolve_nodes(&[vec![NodeRef::Crashed]], &nodes),
            ids(&[&[3]])
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
        assert!(bridge.steps.iter().all(|d| !matches!(
            d,
            Disruption::Cut(NodeId(2), _) | Disruption::Cut(_, NodeId(2))
        )));
        let isolate = plan_fault(
            &Fault::Isolate {
                node: NodeRef::Leader,
            },
            &nodes,
        );
        assert_eq!(
            isolate.steps,
            vec![
                Disruption::Cut(NodeId(2), NodeId(1)),
                Disruption::Cut(NodeId(2), NodeId(3)),
                Disruption::Cut(NodeId(2), NodeId(4)),
                Disruption::Cut(NodeId(2), NodeId(5))
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
                    node: NodeRef::Node(NodeId(2))
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
            vec![Disruption::Start(NodeId(2))]
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
