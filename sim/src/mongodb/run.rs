//! One simulated run of a MongoDB scenario: the set is initiated (`n1` primary in term 1), then
//! the workload, the faults and the measurements run as the real driver's do
//! ([`quorumlab_experiment::replset`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use quorumlab_experiment::fault::{plan_fault, Disruption, Fault, FaultExecutor, NodeState};
use quorumlab_experiment::history::History;
use quorumlab_experiment::mongodb::{MongoSettings, WriteConcern};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::replication::{reduce_lag, FailoverObservation};
use quorumlab_experiment::replset::{
    primary_changes, summarize, MongoRunSummary, ReplSetObservation,
};
use quorumlab_experiment::report::{FaultSpan, RoleSpan, Timeline};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::system::System;
use serde::{Deserialize, Serialize};
use tokio::task::spawn_local;

use super::clients::{self, ClientPlan};
use super::host::{member_host, MemberView, MongoEvent, MongoWorld, MongoWorldRef};
use super::member::{Durable, Member, MemberConfig, MemberState};
use crate::host::Lossiness;
use crate::run::{mix, SeededLoss, SimError};

/// Simulated time before the workload starts: heartbeats settle after `rs.initiate()`.
pub const BOOTSTRAP_MS: u64 = 3000;

/// One simulated run of a MongoDB scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MongoSimRun {
    /// The measurements.
    pub summary: MongoRunSummary,
    /// What happened, in order (times from the workload's start).
    pub trace: Vec<MongoEvent>,
    /// Every member's view just after each trace line (for `--step`; not in the JSON).
    #[serde(skip)]
    pub views: Vec<Vec<MemberView>>,
    /// Every client operation.
    pub history: History,
}

quorumlab_experiment::run_record!(MongoSimRun, MongoRunSummary);

/// The MongoDB simulator as a fault runner: turmoil cuts links, killed members are dropped (their
/// journaled oplog, term and vote kept), members' datagrams are delayed, lost and duplicated, and
/// `replSetStepDown` is a command to the member.
pub struct MongoSim;

impl FaultExecutor for MongoSim {
    fn runner(&self) -> &'static str {
        "the MongoDB simulator"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::DuplicateRequests { .. } => Err(
                "the model's writers send each insert once (retryable writes are not modelled)"
                    .into(),
            ),
            Fault::Bandwidth { .. } => Err(
                "it models a secondary's speed as [mongodb] apply_ops_per_s, not bandwidth".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Runs `scenario` (system `mongodb`) once with write concern `w` and `seed`.
pub fn run_mongo(scenario: &Scenario, w: WriteConcern, seed: u64) -> Result<MongoSimRun, SimError> {
    let _sim = crate::trace::sim_span(&scenario.name, seed, &w.to_string()).entered();
    let System::Mongodb(mongo) = &scenario.system else {
        let why = format!("{} is not a mongodb scenario", scenario.name);
        return Err(SimError::Unsupported(why));
    };
    MongoSim
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(SimError::Unsupported)?;
    let members = scenario.topology.nodes as u64;
    let world = fresh_world(scenario, mongo, seed);
    let duration = Duration::from_millis(BOOTSTRAP_MS + scenario.duration_ms);
    let net = &scenario.network;
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration + Duration::from_secs(180))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(net.latency_ms_min))
        .max_message_latency(Duration::from_millis(net.latency_ms_max))
        .rng_seed(seed)
        .build();
    for id in NodeId::all(members as usize) {
        let world = world.clone();
        sim.host(id.to_string(), move || member_host(world.clone(), id));
    }
    add_workload(&mut sim, &world, scenario, mongo, w);
    let fault = drive(&mut sim, scenario, &world, duration)?;
    let end_us = duration.as_micros() as u64 - BOOTSTRAP_MS * 1000;
    let state = world.borrow();
    Ok(measure(scenario, mongo, (w, seed), &state, fault, end_us))
}

/// Each member's configuration, from the scenario's `[mongodb]` table.
fn member_config(mongo: &MongoSettings, members: usize, id: NodeId, seed: u64) -> MemberConfig {
    MemberConfig {
        id,
        priorities: (0..members).map(|i| mongo.priority(i)).collect(),
        heartbeat_interval_us: mongo.heartbeat_interval_ms * 1000,
        election_timeout_us: mongo.election_timeout_ms * 1000,
        catch_up_timeout_us: u64::try_from(mongo.catch_up_timeout_ms)
            .ok()
            .map(|ms| ms * 1000),
        chaining_allowed: mongo.chaining_allowed,
        apply_ops_per_s: mongo.apply_ops_per_s,
        rng_seed: mix(seed, id.0, 0x6d6f),
    }
}

/// The set just after `rs.initiate()` on `n1`.
fn fresh_world(scenario: &Scenario, mongo: &MongoSettings, seed: u64) -> MongoWorldRef {
    let n = scenario.topology.nodes;
    let configs: Vec<MemberConfig> = NodeId::all(n)
        .map(|id| member_config(mongo, n, id, seed))
        .collect();
    let members = configs
        .iter()
        .map(|c| Some(Member::initiated(c.clone(), c.id == NodeId(1), 0)))
        .collect();
    let phases = mongo.phases_or(scenario.duration_ms, scenario.workload.rate_per_s);
    let mut world = MongoWorld {
        members,
        configs,
        durables: vec![Durable::default(); n],
        step_downs: vec![None; n],
        incarnations: vec![0; n],
        phases,
        start_us: BOOTSTRAP_MS * 1000,
        loss: SeededLoss::new(seed),
        ..MongoWorld::default()
    };
    world.primary_of_term.insert(1, NodeId(1));
    Rc::new(RefCell::new(world))
}

/// The clients: a watcher, writers, a reader and, for phased (lag) scenarios, a heartbeat writer,
/// its watchers and a status sampler.
fn add_workload(
    sim: &mut turmoil::Sim<'_>,
    world: &MongoWorldRef,
    scenario: &Scenario,
    mongo: &MongoSettings,
    w: WriteConcern,
) {
    let start = Duration::from_millis(BOOTSTRAP_MS);
    let plan = ClientPlan {
        world: world.clone(),
        members: scenario.topology.nodes as u64,
        primary: Rc::new(Cell::new(NodeId(1))),
        until: start + Duration::from_millis(scenario.duration_ms),
        write_concern: (
            w,
            (mongo.wtimeout_ms > 0).then_some(mongo.wtimeout_ms * 1000),
        ),
        read_concern: mongo.read_concern,
        timeout: Duration::from_millis(scenario.workload.timeout_ms),
    };
    let clients = scenario.workload.clients.clamp(1, 90) as u64;
    let measuring_lag = !mongo.phases.is_empty();
    sim.client("clients", async move {
        tokio::time::sleep(start).await;
        let mut tasks = vec![
            spawn_local(clients::watcher(plan.clone())),
            spawn_local(clients::reader(plan.clone())),
        ];
        for client in 0..clients {
            tasks.push(spawn_local(clients::writer(plan.clone(), client, clients)));
        }
        if measuring_lag {
            tasks.push(spawn_local(clients::heartbeat(plan.clone())));
            tasks.push(spawn_local(clients::status_sampler(plan.clone())));
            for member in NodeId::all(plan.members as usize) {
                tasks.push(spawn_local(clients::heartbeat_watcher(
                    plan.clone(),
                    member,
                )));
            }
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    });
}

/// When the first fault fired (µs after the workload's start), who was primary then, and in
/// which term.
type FirstFault = (Option<u64>, Option<(NodeId, u64)>);

/// Steps the world to the end, firing faults on time, then lets it settle until some member is
/// a writable primary (as the real driver waits), within two minutes.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    world: &MongoWorldRef,
    duration: Duration,
) -> Result<FirstFault, SimError> {
    let start_us = BOOTSTRAP_MS * 1000;
    let mut pending = scenario.faults.iter().peekable();
    let mut first: FirstFault = (None, None);
    while sim.elapsed() < duration {
        let now_us = sim.elapsed().as_micros() as u64;
        while let Some(step) = pending.next_if(|s| start_us + s.at_ms * 1000 <= now_us) {
            let states = node_states(world);
            if first.0.is_none() {
                first = (Some(now_us - start_us), primary_of(&world.borrow()));
            }
            let plan = plan_fault(&step.fault, &states);
            world.borrow_mut().event_at(MongoEvent {
                at_us: now_us - start_us,
                node: "fault".into(),
                what: plan.label(&step.fault),
            });
            apply(sim, world, &plan.steps, scenario.network.latency_ms_max);
            world.borrow_mut().refresh_last_view();
        }
        step(sim)?;
    }
    let settle_until = duration + Duration::from_secs(120);
    while primary_of(&world.borrow()).is_none() && sim.elapsed() < settle_until {
        step(sim)?;
    }
    Ok(first)
}

fn step(sim: &mut turmoil::Sim<'_>) -> Result<(), SimError> {
    sim.step().map(|_| ()).map_err(|e| SimError::Host {
        at_ms: sim.elapsed().as_millis() as u64,
        reason: e.to_string(),
    })
}

/// What a fault resolves its nodes against: who is primary (in which term), who is down.
fn node_states(world: &MongoWorldRef) -> Vec<NodeState> {
    world
        .borrow()
        .members
        .iter()
        .map(|m| match m {
            Some(m) => NodeState {
                term: m.term(),
                leader: m.state() == MemberState::Primary,
                crashed: false,
            },
            None => NodeState {
                term: 0,
                leader: false,
                crashed: true,
            },
        })
        .collect()
}

/// The writable primary with the newest term, and that term.
fn primary_of(world: &MongoWorld) -> Option<(NodeId, u64)> {
    NodeId::all(world.members.len())
        .filter_map(|id| {
            let m = world.members[id.index()].as_ref()?;
            m.is_writable_primary().then_some((id, m.term()))
        })
        .max_by_key(|(_, term)| *term)
}

/// Carries out a fault's steps on the simulated set.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    world: &MongoWorldRef,
    steps: &[Disruption],
    latency_ms_max: u64,
) {
    let members = world.borrow().members.len();
    let now_us = sim.elapsed().as_micros() as u64;
    for step in steps {
        match *step {
            Disruption::Cut(a, b) => sim.partition(a.to_string(), b.to_string()),
            Disruption::CutOneway(a, b) => sim.partition_oneway(a.to_string(), b.to_string()),
            Disruption::Kill(id) => world.borrow_mut().kill(id),
            Disruption::Start(id) => {
                let mut world = world.borrow_mut();
                world.restart(id, now_us);
                let at_us = now_us.saturating_sub(world.start_us);
                let what = "mongod started: journal recovered, rejoining as a secondary".into();
                world.event_at(MongoEvent {
                    at_us,
                    node: id.to_string(),
                    what,
                });
            }
            Disruption::StepDown {
                node,
                step_down_secs,
                catch_up_secs,
            } => {
                world.borrow_mut().step_downs[node.index()] = Some((step_down_secs, catch_up_secs))
            }
            Disruption::HealAll => {
                for a in NodeId::all(members) {
                    for b in NodeId::all(members).filter(|&b| b != a) {
                        sim.repair(a.to_string(), b.to_string());
                    }
                }
                sim.set_max_message_latency(Duration::from_millis(latency_ms_max));
                world.borrow_mut().loss.lossiness = Lossiness::default();
            }
            Disruption::Delay { ms_max } => {
                sim.set_max_message_latency(Duration::from_millis(ms_max))
            }
            Disruption::Loss(rate) => world.borrow_mut().loss.lossiness.loss = rate,
            Disruption::Duplicate(rate) => world.borrow_mut().loss.lossiness.duplicate = rate,
            Disruption::DuplicateRequests(_) | Disruption::Bandwidth(_) => {
                unreachable!("refused by MongoSim::supports before the run")
            }
        }
    }
}

/// The run's measurements, taken the way the real driver takes them.
fn measure(
    scenario: &Scenario,
    mongo: &MongoSettings,
    (w, seed): (WriteConcern, u64),
    state: &MongoWorld,
    (fault_at_us, old): FirstFault,
    end_us: u64,
) -> MongoSimRun {
    let final_primary = primary_of(state).map(|(id, _)| id);
    let surviving_ids: BTreeSet<u64> = final_primary
        .and_then(|p| state.members[p.index()].as_ref())
        .map(|m| m.write_ids().collect())
        .unwrap_or_default();
    let (elected_at_us, old_primary_again_at_us) =
        primary_changes(&state.primaries_seen, fault_at_us, old);
    let seen = ReplSetObservation {
        failover: FailoverObservation {
            fault_at_us,
            old_primary: old.map(|(id, _)| id.to_string()),
            new_primary: final_primary.map(|p| p.to_string()),
            detected_at_us: None,
            surviving_ids,
            end_us,
        },
        elected_at_us,
        old_primary_again_at_us,
        rolled_back_entries: Some(state.rolled_back_entries),
        invariant_violations: state.violations.clone(),
    };
    let history = History::from_completed(state.ops.clone());
    let members = scenario.topology.nodes;
    let mut summary = summarize((&scenario.name, w, seed, members), &history, &seen);
    if !mongo.phases.is_empty() {
        let order: Vec<String> = state.phases.iter().map(|p| p.name.clone()).collect();
        summary.lag = reduce_lag(&state.samples, &order);
    }
    MongoSimRun {
        summary,
        trace: state.events.clone(),
        views: state.views.clone(),
        history,
    }
}

impl MongoSimRun {
    /// What the report draws: each member's state and term over time, the faults as bands, and
    /// the summary.
    pub fn timeline(&self, scenario: &Scenario) -> Timeline {
        let end_us = scenario.duration_ms * 1000;
        let members = scenario.topology.nodes;
        let mut roles = Vec::new();
        for m in 0..members {
            let mut from_us = 0;
            let mut current: Option<(String, u64)> = None;
            for (e, views) in self.trace.iter().zip(&self.views) {
                let view = &views[m];
                let role = match view.state.as_str() {
                    "PRIMARY" => "primary",
                    "PRIMARY*" => "primary, not yet writable",
                    "DOWN" => "down",
                    _ => "secondary",
                };
                let now = (role.to_string(), view.term);
                if current.as_ref() != Some(&now) {
                    if let Some((role, term)) = current.take() {
                        roles.push(RoleSpan {
                            node: m,
                            from_us,
                            to_us: e.at_us,
                            role,
                            term,
                        });
                    }
                    // Before the first line, members are as the first line shows them.
                    from_us = if roles.iter().any(|r| r.node == m) {
                        e.at_us
                    } else {
                        0
                    };
                    current = Some(now);
                }
            }
            if let Some((role, term)) = current {
                roles.push(RoleSpan {
                    node: m,
                    from_us,
                    to_us: end_us,
                    role,
                    term,
                });
            }
        }
        let mut faults: Vec<FaultSpan> = Vec::new();
        let mut fired = scenario.faults.iter();
        for e in self.trace.iter().filter(|e| e.node == "fault") {
            let Some(step) = fired.next() else { break };
            if step.fault.is_repair() {
                for f in faults.iter_mut().filter(|f| f.to_us == end_us) {
                    f.to_us = e.at_us;
                }
            } else {
                faults.push(FaultSpan {
                    from_us: e.at_us,
                    to_us: end_us,
                    label: e.what.clone(),
                });
            }
        }
        let s = &self.summary;
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        Timeline {
            title: format!("{} ({}), seed {}", scenario.name, s.write_concern, s.seed),
            description: scenario.description.clone(),
            nodes: NodeId::all(members).map(|id| id.to_string()).collect(),
            duration_us: end_us,
            roles,
            faults,
            messages: vec![],
            summary: vec![
                ("fault to new primary elected".into(), ms(s.election_ms)),
                (
                    "fault to new primary's first write".into(),
                    ms(s.failover_ms),
                ),
                (
                    "write unavailability".into(),
                    format!("{} ms", s.write_unavailable_ms),
                ),
                ("acknowledged writes".into(), s.acked_writes.to_string()),
                ("acknowledged writes lost".into(), s.lost_writes.to_string()),
                (
                    "oplog entries rolled back".into(),
                    s.rolled_back_entries.map_or("-".into(), |n| n.to_string()),
                ),
                (
                    "reads of writes later lost".into(),
                    s.reads_of_lost_writes.to_string(),
                ),
                (
                    "invariants".into(),
                    if s.invariant_violations.is_empty() {
                        "held".into()
                    } else {
                        s.invariant_violations.join("; ")
                    },
                ),
            ],
        }
    }
}
