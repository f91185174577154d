//! One simulated run of a scenario: build the turmoil world, drive it step by step, fire the
//! scenario's faults on time, then judge the history and summarise.
//!
//! Everything random — network latency, election timeouts, the workload, chaos faults — derives
//! from the one seed, and nothing reads the wall clock, so a run is a pure function of
//! (scenario, seed, [`RunConfig`]): the trace is the same, byte for byte, every time.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use quorumlab_experiment::checker::{check_history, CheckLimits, Verdict};
use quorumlab_experiment::fault::{
    plan_fault, Chaos, Disruption, Fault, FaultExecutor, FaultStep, NodeRef, NodeState,
};
use quorumlab_experiment::history::{History, Op, Outcome};
use quorumlab_experiment::measure::RunSummary;
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::report::{FaultSpan, MessageArrow, RoleSpan, Timeline};
use quorumlab_experiment::scenario::Scenario;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::host::{
    client_task, node_host, ClientPlan, Lossiness, MessageRecord, NodeView, World, WorldRef,
};
use crate::node::{NodeConfig, Role};
use crate::trace::{Event, EventKind};

/// How to run a scenario, beyond the scenario itself.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// The deliberately broken build: gets are served from any node's local state.
    pub stale_reads: bool,
    /// Record Raft messages around the first fault, for the sequence diagram.
    pub record_messages: bool,
    /// Record every node's state at every event, for `--step`.
    pub record_views: bool,
    /// turmoil's step: simulated time advanced per step of the world.
    pub step: Duration,
    /// Budget for the linearizability check.
    pub check_limits: CheckLimits,
}

impl RunConfig {
    /// Defaults for a seed: correct build, no recording, 4 ms steps (message latencies are rounded
    /// up to whole steps), 10 s checker budget.
    pub fn seeded(seed: u64) -> RunConfig {
        RunConfig {
            seed,
            stale_reads: false,
            record_messages: false,
            record_views: false,
            step: Duration::from_millis(4),
            check_limits: CheckLimits::default(),
        }
    }
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A simulated host returned an error (a bug in the model or adapter).
    #[error("simulated host failed at {at_ms} ms: {reason}")]
    Host {
        /// Simulated time of the failure.
        at_ms: u64,
        /// What the host said.
        reason: String,
    },
    /// The scenario asks for something this simulator cannot do; nothing was run.
    #[error("{0}")]
    Unsupported(String),
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutput {
    /// The scenario as run (after `--nodes`).
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    /// The fault schedule, including faults drawn by chaos.
    pub schedule: Vec<FaultStep>,
    /// What happened, in order.
    pub trace: Vec<Event>,
    /// Client operations.
    pub history: History,
    /// Measurements and verdicts.
    pub summary: RunSummary,
    /// Raft messages around the first fault (only with `record_messages`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub messages: Vec<MessageRecord>,
    /// Node states at each trace event (only with `record_views`).
    #[serde(skip)]
    pub views: Vec<Vec<NodeView>>,
}

quorumlab_experiment::run_record!(RunOutput, RunSummary);

/// Why runners of other systems refuse `step-down`.
pub(crate) const STEP_DOWN_IS_MONGODB: &str =
    "step-down is MongoDB's replSetStepDown; this system has no such command (use crash or isolate)";

/// The etcd simulator as a fault runner: turmoil cuts links and crashes hosts, and senders drop,
/// duplicate and delay Raft messages, so it carries out every fault.
pub struct EtcdSim;

impl FaultExecutor for EtcdSim {
    fn runner(&self) -> &'static str {
        "the etcd simulator"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Bandwidth { .. } => Err("it does not model bandwidth (messages are small and latency is what it draws); run it on real hosts".into()),
            Fault::StepDown { .. } => Err(STEP_DOWN_IS_MONGODB.into()),
            _ => Ok(()),
        }
    }
}

/// Runs `scenario` once.
pub fn run(scenario: &Scenario, config: &RunConfig) -> Result<RunOutput, SimError> {
    let _sim = crate::trace::sim_span(&scenario.name, config.seed, "").entered();
    EtcdSim
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(SimError::Unsupported)?;
    let duration = Duration::from_millis(scenario.duration_ms);
    let schedule = fault_schedule(scenario, config.seed);
    let world = fresh_world(scenario, config, &schedule);
    let net = &scenario.network;
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration + Duration::from_secs(60))
        .tick_duration(config.step)
        .min_message_latency(Duration::from_millis(net.latency_ms_min))
        .max_message_latency(Duration::from_millis(net.latency_ms_max))
        .rng_seed(config.seed)
        .build();
    add_members(&mut sim, &world, scenario, config);
    add_clients(&mut sim, &world, scenario, config);
    let first_fault = drive(&mut sim, &world, scenario, &schedule)?;
    let mut state = world.borrow_mut();
    Ok(finish(&mut state, scenario, config, schedule, first_fault))
}

/// A cluster of followers that have seen nothing, recording what `config` asks for.
fn fresh_world(scenario: &Scenario, config: &RunConfig, schedule: &[FaultStep]) -> WorldRef {
    let nodes = scenario.topology.nodes;
    let mut state = World::for_members(nodes, scenario.topology.heartbeat_ms * 1000);
    state.record_views = config.record_views;
    if config.record_messages {
        // The sequence diagram shows the election around the first fault that can cause one.
        if let Some(first) = schedule.iter().find(|s| s.fault.disrupts_leadership()) {
            let start = first.at_ms.saturating_sub(300) * 1000;
            state.message_window_us = Some((start, start + 3_300_000));
        }
    }
    Rc::new(RefCell::new(state))
}

/// One host per member; a restarted host keeps its durable Raft state and draws a new seed.
fn add_members(sim: &mut turmoil::Sim, world: &WorldRef, scenario: &Scenario, config: &RunConfig) {
    let nodes = scenario.topology.nodes;
    let election_ticks =
        (scenario.topology.election_timeout_ms / scenario.topology.heartbeat_ms) as usize;
    for id in NodeId::all(nodes) {
        let world = world.clone();
        let store = world.borrow().stores[id.index()].clone();
        let incarnation = Rc::new(RefCell::new(0u64));
        let (seed, stale_reads) = (config.seed, config.stale_reads);
        sim.host(id.to_string(), move || {
            *incarnation.borrow_mut() += 1;
            let node_config = NodeConfig {
                id: id.0,
                voters: nodes as u64,
                election_ticks,
                rng_seed: mix(seed, id.0, *incarnation.borrow()),
                stale_reads,
            };
            node_host(world.clone(), node_config, store.clone())
        });
    }
}

/// The workload's clients, each on its own seeded schedule.
fn add_clients(sim: &mut turmoil::Sim, world: &WorldRef, scenario: &Scenario, config: &RunConfig) {
    let w = &scenario.workload;
    let plans: Vec<ClientPlan> = (0..w.clients as u32)
        .map(|client| ClientPlan {
            client,
            nodes: scenario.topology.nodes as u64,
            period: Duration::from_micros(1_000_000 * w.clients as u64 / w.rate_per_s.max(1)),
            mix: [w.put, w.get, w.cas],
            keys: w.keys,
            timeout: Duration::from_millis(w.timeout_ms),
            retries: w.retries,
            retry_timed_out_writes: w.retry_timed_out_writes,
            until: Duration::from_millis(scenario.duration_ms),
            seed: mix(config.seed, 1000 + u64::from(client), 0),
        })
        .collect();
    let world = world.clone();
    sim.client("clients", async move {
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| tokio::task::spawn_local(client_task(world.clone(), plan)))
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    });
}

/// When the first leadership-disrupting fault fired (ms) and the highest term then.
type FirstFault = Option<(u64, u64)>;

/// Steps the world to the end, firing each scheduled fault once its time has come.
fn drive(
    sim: &mut turmoil::Sim,
    world: &WorldRef,
    scenario: &Scenario,
    schedule: &[FaultStep],
) -> Result<FirstFault, SimError> {
    let duration = Duration::from_millis(scenario.duration_ms);
    let mut pending = schedule.iter().peekable();
    let mut crashed: Vec<bool> = vec![false; scenario.topology.nodes];
    let mut first_fault: FirstFault = None;
    while sim.elapsed() < duration {
        let now_ms = sim.elapsed().as_millis() as u64;
        while let Some(step) = pending.next_if(|s| s.at_ms <= now_ms) {
            if first_fault.is_none() && step.fault.disrupts_leadership() {
                let term = world.borrow().views.iter().map(|v| v.term).max();
                let term = term.unwrap_or(0);
                first_fault = Some((now_ms, term));
            }
            apply_fault(sim, world, scenario, &step.fault, &mut crashed, now_ms);
        }
        sim.step().map_err(|e| SimError::Host {
            at_ms: sim.elapsed().as_millis() as u64,
            reason: e.to_string(),
        })?;
    }
    Ok(first_fault)
}

/// Checks the logs and the history, measures the run and hands over everything it recorded.
fn finish(
    state: &mut World,
    scenario: &Scenario,
    config: &RunConfig,
    schedule: Vec<FaultStep>,
    first_fault: FirstFault,
) -> RunOutput {
    let end_us = scenario.duration_ms * 1000;
    let stores = state.stores.clone();
    state.monitor.check_log_matching(&stores);
    for (client, (kind, invoke_us)) in std::mem::take(&mut state.in_flight) {
        state.ops.push(Op {
            id: 0,
            client,
            kind,
            invoke_us,
            complete_us: end_us,
            outcome: Outcome::Info,
            node: None,
        });
    }
    let (history, moved_to) = History::from_completed_renumbered(std::mem::take(&mut state.ops));
    for event in &mut state.events {
        if let EventKind::Op { op, .. } = &mut event.what {
            *op = moved_to[*op];
        }
    }
    let verdict = check_history(&history, config.check_limits);
    if let Verdict::NotLinearizable { kind, key, .. } = &verdict {
        let what = format!("linearizability: {kind} on k{key}");
        state.record(end_us, "checker".into(), EventKind::Violation { what });
    }
    let events = std::mem::take(&mut state.events);
    let fault_at_ms = first_fault.map(|(at, _)| at);
    let summary = RunSummary {
        scenario: scenario.name.clone(),
        seed: config.seed,
        nodes: scenario.topology.nodes,
        fault_at_ms,
        election_ms: election_ms(&events, first_fault),
        write_unavailable_ms: history.longest_write_gap_us(fault_at_ms.unwrap_or(0) * 1000, end_us)
            / 1000,
        ops: history.counts(),
        leaders_elected: state.monitor.leaders_elected(),
        verdict,
        invariant_violations: state.monitor.violations().to_vec(),
    };
    RunOutput {
        scenario: scenario.clone(),
        seed: config.seed,
        schedule,
        trace: events,
        history,
        summary,
        messages: std::mem::take(&mut state.messages),
        views: std::mem::take(&mut state.view_log),
    }
}

/// From the first disrupting fault to a leader elected in a newer term than any before it.
fn election_ms(events: &[Event], first_fault: FirstFault) -> Option<u64> {
    let (at, term_at_fault) = first_fault?;
    events.iter().find_map(|e| match e.what {
        EventKind::Role {
            role: Role::Leader,
            term,
        } if term > term_at_fault && e.at_us >= at * 1000 => Some(e.at_us / 1000 - at),
        _ => None,
    })
}

/// Derives an independent seed for a component (node id, incarnation, client) from the run seed.
pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// The next uniform draw in [0, 1) of a seeded sequence: a pure function of `seed` and the
/// draw's number (`draws`, counted up).
pub(crate) fn uniform_draw(seed: u64, draws: &mut u64) -> f64 {
    *draws += 1;
    (mix(seed, *draws, 0) >> 11) as f64 / (1u64 << 53) as f64
}

/// Seeded loss and duplication for a world's senders: the current [`Lossiness`] and the draw
/// sequence, a pure function of the run's seed and how many draws came before.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeededLoss {
    /// The loss and duplication now in force.
    pub lossiness: Lossiness,
    seed: u64,
    draws: u64,
}

impl SeededLoss {
    /// No loss yet, drawing from `seed`.
    pub fn new(seed: u64) -> SeededLoss {
        SeededLoss {
            seed,
            ..SeededLoss::default()
        }
    }

    /// How many copies of a datagram go out now: 0 (lost), 1, or 2 (duplicated).
    pub fn copies_to_send(&mut self) -> usize {
        let (seed, draws) = (self.seed, &mut self.draws);
        self.lossiness.copies_to_send(|| uniform_draw(seed, draws))
    }
}

/// The scenario's faults plus those chaos draws from the seed, in time order.
pub fn fault_schedule(scenario: &Scenario, seed: u64) -> Vec<FaultStep> {
    let mut schedule = scenario.faults.clone();
    if let Some(chaos) = &scenario.chaos {
        let mut rng = SmallRng::seed_from_u64(mix(seed, 0xc4a05, 0));
        let slot = (chaos.to_ms - chaos.from_ms) / u64::from(chaos.faults.max(1));
        for i in 0..u64::from(chaos.faults) {
            let start = chaos.from_ms + i * slot;
            let at_ms = start + rng.gen_range(0..=slot / 4);
            let heal_ms = at_ms + rng.gen_range(slot / 4..=slot / 2).max(1);
            let fault = Chaos::menu()[rng.gen_range(0..8)].clone();
            if matches!(fault, Fault::Crash { .. }) {
                schedule.push(FaultStep {
                    at_ms: heal_ms,
                    fault: Fault::Restart {
                        node: NodeRef::Crashed,
                    },
                });
            }
            schedule.push(FaultStep { at_ms, fault });
            schedule.push(FaultStep {
                at_ms: heal_ms,
                fault: Fault::Heal,
            });
        }
    }
    schedule.sort_by_key(|s| s.at_ms);
    schedule
}

/// Fires one fault on the simulated world and records it in the trace.
fn apply_fault(
    sim: &mut turmoil::Sim,
    world: &WorldRef,
    scenario: &Scenario,
    fault: &Fault,
    crashed: &mut [bool],
    now_ms: u64,
) {
    let nodes = scenario.topology.nodes;
    let states: Vec<NodeState> = world
        .borrow()
        .views
        .iter()
        .zip(crashed.iter())
        .map(|(v, &crashed)| NodeState {
            term: v.term,
            leader: v.role == Role::Leader,
            crashed,
        })
        .collect();
    let plan = plan_fault(fault, &states);
    for step in &plan.steps {
        match *step {
            Disruption::Cut(a, b) => sim.partition(a.to_string(), b.to_string()),
            Disruption::CutOneway(a, b) => sim.partition_oneway(a.to_string(), b.to_string()),
            Disruption::Kill(id) => {
                sim.crash(id.to_string());
                crashed[id.index()] = true;
                world.borrow_mut().record_crash(now_ms * 1000, id);
            }
            Disruption::Start(id) => {
                sim.bounce(id.to_string());
                crashed[id.index()] = false;
            }
            Disruption::Delay { ms_max } => {
                sim.set_max_message_latency(Duration::from_millis(ms_max))
            }
            Disruption::Loss(rate) => world.borrow_mut().lossiness.loss = rate,
            Disruption::Duplicate(rate) => world.borrow_mut().lossiness.duplicate = rate,
            Disruption::Bandwidth(_) | Disruption::StepDown { .. } => {
                unreachable!("refused before the run by EtcdSim::supports")
            }
            Disruption::DuplicateRequests(rate) => {
                world.borrow_mut().lossiness.duplicate_requests = rate
            }
            Disruption::HealAll => {
                for a in NodeId::all(nodes) {
                    for b in NodeId::all(nodes).filter(|&b| b > a) {
                        sim.repair(a.to_string(), b.to_string());
                    }
                }
                sim.set_max_message_latency(Duration::from_millis(scenario.network.latency_ms_max));
                world.borrow_mut().lossiness = Lossiness::default();
            }
        }
    }
    world.borrow_mut().record(
        now_ms * 1000,
        "lab".into(),
        EventKind::Fault {
            label: plan.label(fault),
        },
    );
}

impl RunOutput {
    /// The report's picture of this run: role spans per node, fault bands and messages.
    pub fn timeline(&self) -> Timeline {
        let nodes = self.scenario.topology.nodes;
        Timeline {
            title: format!("{} — seed {}", self.scenario.name, self.seed),
            description: self.scenario.description.clone(),
            nodes: NodeId::all(nodes).map(|id| id.to_string()).collect(),
            duration_us: self.scenario.duration_ms * 1000,
            roles: self.role_spans(),
            faults: self.fault_spans(),
            messages: self.election_messages(),
            summary: self.summary_rows(),
        }
    }

    /// Each node's roles over time, one span per role and term.
    fn role_spans(&self) -> Vec<RoleSpan> {
        let end_us = self.scenario.duration_ms * 1000;
        let mut roles = Vec::new();
        let mut current: Vec<(u64, Role, u64)> =
            vec![(0, Role::Follower, 0); self.scenario.topology.nodes];
        let node_index = |name: &str| {
            name.strip_prefix('n')
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| NodeId(n).index())
        };
        for e in &self.trace {
            let EventKind::Role { role, term } = &e.what else {
                continue;
            };
            let Some(i) = node_index(&e.node) else {
                continue;
            };
            let (from, old_role, old_term) = current[i];
            if e.at_us > from {
                roles.push(RoleSpan {
                    node: i,
                    from_us: from,
                    to_us: e.at_us,
                    role: old_role.to_string(),
                    term: old_term,
                });
            }
            current[i] = (e.at_us, *role, *term);
        }
        for (i, (from, role, term)) in current.into_iter().enumerate() {
            roles.push(RoleSpan {
                node: i,
                from_us: from,
                to_us: end_us,
                role: role.to_string(),
                term,
            });
        }
        roles
    }

    /// A band from each harmful fault to the repair that ended it (or the end of the run).
    fn fault_spans(&self) -> Vec<FaultSpan> {
        let end_us = self.scenario.duration_ms * 1000;
        let mut faults: Vec<FaultSpan> = Vec::new();
        // Fault events are recorded one per fired schedule step, in schedule order.
        let mut fired = self.schedule.iter();
        for e in &self.trace {
            let EventKind::Fault { label } = &e.what else {
                continue;
            };
            let step = fired.next().expect("a fault event for every fired step");
            if step.fault.is_repair() {
                for f in faults.iter_mut().filter(|f| f.to_us == end_us) {
                    f.to_us = e.at_us;
                }
            } else {
                faults.push(FaultSpan {
                    from_us: e.at_us,
                    to_us: end_us,
                    label: label.clone(),
                });
            }
        }
        faults
    }

    /// The Raft messages of the election: from just before the fault to just after the next leader.
    fn election_messages(&self) -> Vec<MessageArrow> {
        let s = &self.summary;
        let fault_us = s.fault_at_ms.map_or(0, |ms| ms * 1000);
        let window_end_us = s
            .election_ms
            .map_or(fault_us + 2_500_000, |ms| fault_us + ms * 1000 + 200_000);
        self.messages
            .iter()
            .filter(|m| m.send_us + 200_000 >= fault_us && m.send_us <= window_end_us)
            .map(|m| MessageArrow {
                from: NodeId(m.from).index(),
                to: NodeId(m.to).index(),
                send_us: m.send_us,
                recv_us: m.recv_us,
                label: format!(
                    "{} t{}",
                    m.kind.trim_start_matches("Msg").replace("Request", ""),
                    m.term
                ),
            })
            .collect()
    }

    /// The report's summary table.
    fn summary_rows(&self) -> Vec<(String, String)> {
        let s = &self.summary;
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        vec![
            ("fault injected at".into(), ms(s.fault_at_ms)),
            ("fault to new leader".into(), ms(s.election_ms)),
            (
                "longest stretch with no write acknowledged".into(),
                format!("{} ms", s.write_unavailable_ms),
            ),
            (
                "operations ok / failed / unknown".into(),
                format!("{} / {} / {}", s.ops.ok, s.ops.fail, s.ops.info),
            ),
            ("leaders elected".into(), s.leaders_elected.to_string()),
            ("linearizability".into(), s.verdict.headline()),
            (
                "invariants".into(),
                if s.invariant_violations.is_empty() {
                    "all held".into()
                } else {
                    s.invariant_violations.join("; ")
                },
            ),
        ]
    }
}
