//! One simulated run of a sharded scenario: the config servers elect a leader and the balancer
//! writes the routing table; then the workload runs through the routers while the balancer
//! migrates chunks and faults fire, on time or at a migration's step; then every fault is healed,
//! every process restarted, and a last linearizable read of the routing table is the truth the
//! end state is checked against.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use quorumlab_experiment::fault::{plan_fault, Disruption, Fault, FaultExecutor, NodeState};
use quorumlab_experiment::history::{History, Op, Outcome};
use quorumlab_experiment::rebalance::{summarize, ShardedObservation, ShardedRunSummary};
use quorumlab_experiment::report::{FaultSpan, RoleSpan, Timeline};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::sharded::{Layout, ShardedSettings, StepFault, StepFaultKind};
use quorumlab_experiment::system::System;
use quorumlab_experiment::NodeId;
use serde::{Deserialize, Serialize};

use super::clients::{balancer, router_host, BalancerPlan, RouterPlan};
use super::host::{config_client, shard_host, ShardedEvent, ShardedWorld, ShardedWorldRef};
use super::plan::{ClusterPlan, ReplayError};
use super::routing::Table;
use super::shard::{Durable, ShardConfig};
use crate::host::{node_host, Lossiness, World as RaftWorld, WorldRef as RaftWorldRef};
use crate::node::{NodeConfig, Role};
use crate::run::{mix, SeededLoss, SimError};

/// Simulated time before the workload starts: the config servers elect a leader and the
/// routing table is written.
pub const SETUP_MS: u64 = 3000;
/// After the workload: the longest wait to heal, restart and settle before the last table read
/// (a cluster at rest is read sooner).
const SETTLE_MS: u64 = 8000;
/// After the workload: the shortest wait before the last table read, so restarted processes
/// have begun their recovery before the cluster is judged at rest.
const SETTLE_MIN_MS: u64 = 500;

/// How a sharded run is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardedBuild {
    /// Deliberately broken: shards answer reads from every document they hold, orphans too.
    pub orphan_reads: bool,
    /// Snapshot every host's view at every trace line (for `--step`).
    pub record_views: bool,
    /// Simulated milliseconds per world step; 0 takes [`STEP_MS_DEFAULT`].
    pub step_ms: u64,
}

/// Simulated milliseconds per world step unless asked otherwise: message latencies and every
/// timer round up to it, and a run's wall time falls in proportion to it.
pub const STEP_MS_DEFAULT: u64 = 2;

/// One simulated run of a sharded scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardedSimRun {
    /// The measurements.
    pub summary: ShardedRunSummary,
    /// What happened, in order.
    pub trace: Vec<ShardedEvent>,
    /// Every host's view just after each trace line (`--step` only; not in the JSON).
    #[serde(skip)]
    pub views: Vec<Vec<String>>,
    /// The migrations.
    pub migrations: Vec<quorumlab_experiment::rebalance::MigrationRecord>,
    /// Each stale-config retry: when (µs) and which router (0 is `r1`).
    pub stale_retries: Vec<(u64, usize)>,
    /// Every client write.
    pub history: History,
}

quorumlab_experiment::run_record!(ShardedSimRun, ShardedRunSummary);

/// The sharded simulator as a fault runner.
pub struct ShardedSim;

impl FaultExecutor for ShardedSim {
    fn runner(&self) -> &'static str {
        "the sharded-cluster simulator"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::StepDown { .. } => Err(crate::run::STEP_DOWN_IS_MONGODB.into()),
            Fault::DuplicateRequests { .. } => Err("routers send each request once".into()),
            Fault::Bandwidth { .. } => Err(
                "it models a migration's speed as [sharded] clone_bytes_per_s, not bandwidth"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Runs `scenario` (system `sharded`) once with `seed`.
pub fn run_sharded(
    scenario: &Scenario,
    seed: u64,
    build: ShardedBuild,
) -> Result<ShardedSimRun, SimError> {
    let _sim = crate::trace::sim_span(&scenario.name, seed, "").entered();
    let System::Sharded(settings) = &scenario.system else {
        return Err(SimError::Unsupported(format!(
            "{} is not a sharded scenario",
            scenario.name
        )));
    };
    ShardedSim
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(SimError::Unsupported)?;
    let plan = ClusterPlan::of(scenario, settings)
        .map_err(|e: ReplayError| SimError::Unsupported(e.to_string()))?;
    let layout = settings.layout();
    let net = &scenario.network;
    let workload_end = Duration::from_millis(SETUP_MS + scenario.duration_ms);
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(
            workload_end + Duration::from_millis(SETTLE_MS) + Duration::from_secs(120),
        )
        .tick_duration(Duration::from_millis(if build.step_ms == 0 {
            STEP_MS_DEFAULT
        } else {
            build.step_ms
        }))
        .min_message_latency(Duration::from_millis(net.latency_ms_min))
        .max_message_latency(Duration::from_millis(net.latency_ms_max))
        .rng_seed(seed)
        // Every client of a router may refresh at once, each sending a read per chunk to the
        // config leader: room for them all, as a TCP listener's backlog would give.
        .udp_capacity(4096)
        .build();
    let world = fresh_world(scenario, settings, &plan, seed, build);
    let raft = add_config_servers(&mut sim, scenario, layout, seed);
    for s in 0..layout.shards {
        let world = world.clone();
        sim.host(layout.shard(s).to_string(), move || {
            shard_host(world.clone(), s)
        });
    }
    add_routers(&mut sim, &world, scenario, settings, &plan, seed);
    let final_table = Rc::new(RefCell::new(None));
    add_balancer(
        &mut sim,
        &world,
        scenario,
        settings,
        &plan,
        seed,
        &final_table,
    );
    let mut driver = Driver::new(scenario, settings, layout, &world, &raft);
    driver.drive(&mut sim, workload_end, &final_table)?;
    let table = final_table.borrow().clone();
    let state = world.borrow();
    let raft_state = raft.borrow();
    let end_us = driver.now_us.saturating_sub(state.start_us);
    let run = measure(scenario, seed, (&state, &raft_state), table, end_us);
    Ok(run)
}

/// The shards' configurations and starting state, the routing table and the world.
fn fresh_world(
    scenario: &Scenario,
    settings: &ShardedSettings,
    plan: &ClusterPlan,
    seed: u64,
    build: ShardedBuild,
) -> ShardedWorldRef {
    let layout = settings.layout();
    let configs: Vec<ShardConfig> = (0..layout.shards)
        .map(|me| ShardConfig {
            me,
            doc_bytes: settings.doc_bytes,
            clone_batch_bytes: settings.clone_batch_bytes,
            clone_bytes_per_s: settings.clone_bytes_per_s,
            catch_up_docs_max: settings.catch_up_docs_max,
            migration_timeout_us: settings.migration_timeout_ms * 1000,
            range_deletion_delay_us: settings.range_deletion_delay_ms * 1000,
            orphan_reads: build.orphan_reads,
        })
        .collect();
    let mut durables = vec![Durable::default(); layout.shards];
    for (chunk, entry) in plan.table.iter().enumerate() {
        durables[entry.shard]
            .bulk
            .insert(chunk as u32, plan.bulk_bytes[chunk]);
    }
    let mut world = ShardedWorld::new(
        layout,
        plan.bounds.clone(),
        plan.points.clone(),
        configs,
        durables,
        &plan.table,
    );
    world.start_us = SETUP_MS * 1000;
    world.loss = SeededLoss::new(seed);
    world.latency_max = Duration::from_millis(scenario.network.latency_ms_max);
    world.record_views = build.record_views;
    world.config_views = (0..layout.config_servers)
        .map(|i| format!("cfg{}: follower", i + 1))
        .collect();
    Rc::new(RefCell::new(world))
}

/// The config servers: the etcd model's members on hosts `n1..nC`, with their own Raft world.
fn add_config_servers(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    layout: Layout,
    seed: u64,
) -> RaftWorldRef {
    let members = layout.config_servers;
    let raft = Rc::new(RefCell::new(RaftWorld::for_members(
        members,
        scenario.topology.heartbeat_ms * 1000,
    )));
    let election_ticks =
        (scenario.topology.election_timeout_ms / scenario.topology.heartbeat_ms) as usize;
    for i in 0..members {
        let id = layout.config_server(i);
        let raft = raft.clone();
        let store = raft.borrow().stores[id.index()].clone();
        let incarnation = Rc::new(RefCell::new(0u64));
        sim.host(id.to_string(), move || {
            *incarnation.borrow_mut() += 1;
            let config = NodeConfig {
                id: id.0,
                voters: members as u64,
                election_ticks,
                rng_seed: mix(seed, id.0, *incarnation.borrow()),
                stale_reads: false,
            };
            node_host(raft.clone(), config, store.clone())
        });
    }
    raft
}

fn add_routers(
    sim: &mut turmoil::Sim<'_>,
    world: &ShardedWorldRef,
    scenario: &Scenario,
    settings: &ShardedSettings,
    plan: &ClusterPlan,
    seed: u64,
) {
    let w = &scenario.workload;
    let clients = w.clients.max(1) as u32;
    let layout = settings.layout();
    let period = Duration::from_micros(
        1_000_000 * u64::from(clients) / (w.rate_per_s * plan.rate_factor).max(1),
    );
    for r in 0..layout.routers {
        let mine: Vec<u32> = (0..clients)
            .filter(|c| *c as usize % layout.routers == r)
            .collect();
        let route = RouterPlan {
            world: world.clone(),
            router: r,
            clients: mine,
            period,
            mix: [w.put.max(1), w.get],
            keys: plan.points.len() as u32,
            keys_in_order: plan.keys_in_order,
            timeout: Duration::from_millis(w.timeout_ms),
            retries: settings.router_retries,
            start: Duration::from_millis(SETUP_MS),
            until: Duration::from_millis(SETUP_MS + scenario.duration_ms),
            seed,
        };
        let incarnation = Rc::new(RefCell::new(0u64));
        sim.host(layout.router(r).to_string(), move || {
            *incarnation.borrow_mut() += 1;
            router_host(route.clone(), *incarnation.borrow())
        });
    }
}

/// The balancer's host: the balancer until the workload ends, then the final reader. One host
/// for both, because every host costs a runtime tick per world step (and a link to every other
/// host), whether or not it has anything to do.
fn add_balancer(
    sim: &mut turmoil::Sim<'_>,
    world: &ShardedWorldRef,
    scenario: &Scenario,
    settings: &ShardedSettings,
    plan: &ClusterPlan,
    seed: u64,
    final_table: &Rc<RefCell<Option<Table>>>,
) {
    let workload_end = Duration::from_millis(SETUP_MS + scenario.duration_ms);
    let plan = BalancerPlan {
        world: world.clone(),
        initial: plan.table.clone(),
        policy: settings.balancer,
        imbalance_chunks: settings.imbalance_chunks,
        moves: plan.moves.clone(),
        interval: Duration::from_millis(settings.balancer_interval_ms),
        answer_timeout: Duration::from_millis(settings.migration_timeout_ms * 2 + 2000),
        start: Duration::from_millis(SETUP_MS),
        until: workload_end,
        seed,
    };
    let world = world.clone();
    let out = final_table.clone();
    sim.client("balancer", async move {
        balancer(plan).await?;
        read_final_table(&world, &out, workload_end).await
    });
}

/// Reads the routing table once everything has settled (the cluster at rest, or `SETTLE_MS`
/// after the workload at the latest): the truth the end state is checked against.
async fn read_final_table(
    world: &ShardedWorldRef,
    out: &Rc<RefCell<Option<Table>>>,
    workload_end: Duration,
) -> turmoil::Result {
    let latest = workload_end + Duration::from_millis(SETTLE_MS);
    let earliest = workload_end + Duration::from_millis(SETTLE_MIN_MS);
    loop {
        let now = turmoil::elapsed();
        if now >= latest || (now >= earliest && world.borrow().at_rest()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chunks = world.borrow().bounds.len() as u32;
    let mut client = config_client(world, 28_100).await?;
    loop {
        if let Some(table) = client.read_table(chunks, u64::MAX).await? {
            *out.borrow_mut() = Some(table);
            return Ok(());
        }
    }
}

/// Fires the faults, on time and at migration steps, and records the config servers' leaders.
struct Driver<'a> {
    scenario: &'a Scenario,
    settings: &'a ShardedSettings,
    layout: Layout,
    world: ShardedWorldRef,
    raft: RaftWorldRef,
    crashed: Vec<bool>,
    /// Repairs due: (µs of simulated time, what).
    repairs: Vec<(u64, Repair)>,
    step_faults_fired: Vec<bool>,
    steps_seen: usize,
    leader_seen: Option<(NodeId, u64)>,
    /// Simulated time now, µs (the driver's clock).
    now_us: u64,
}

#[derive(Debug, Clone)]
enum Repair {
    Restart(NodeId),
    Rejoin(Vec<(NodeId, NodeId)>),
}

impl<'a> Driver<'a> {
    fn new(
        scenario: &'a Scenario,
        settings: &'a ShardedSettings,
        layout: Layout,
        world: &ShardedWorldRef,
        raft: &RaftWorldRef,
    ) -> Driver<'a> {
        Driver {
            scenario,
            settings,
            layout,
            world: world.clone(),
            raft: raft.clone(),
            crashed: vec![false; layout.hosts()],
            repairs: Vec::new(),
            step_faults_fired: vec![false; settings.step_faults.len()],
            steps_seen: 0,
            leader_seen: None,
            now_us: 0,
        }
    }

    fn drive(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        workload_end: Duration,
        final_table: &Rc<RefCell<Option<Table>>>,
    ) -> Result<(), SimError> {
        let start_us = SETUP_MS * 1000;
        let mut pending = self.scenario.faults.iter().peekable();
        while sim.elapsed() < workload_end {
            let now_us = sim.elapsed().as_micros() as u64;
            while let Some(step) = pending.next_if(|s| start_us + s.at_ms * 1000 <= now_us) {
                let plan = plan_fault(&step.fault, &self.node_states());
                self.fault_line(plan.label(&step.fault));
                for d in &plan.steps {
                    self.disrupt(sim, d);
                }
            }
            self.step_faults(sim, now_us);
            self.due_repairs(sim, now_us, false);
            step(sim)?;
            self.now_us = sim.elapsed().as_micros() as u64;
            self.watch_config_leader();
        }
        self.settle(sim);
        let give_up = workload_end + Duration::from_millis(SETTLE_MS) + Duration::from_secs(100);
        while final_table.borrow().is_none() && sim.elapsed() < give_up {
            step(sim)?;
            self.now_us = sim.elapsed().as_micros() as u64;
            self.watch_config_leader();
        }
        Ok(())
    }

    /// After the workload: every fault healed and every process restarted.
    fn settle(&mut self, sim: &mut turmoil::Sim<'_>) {
        let now_us = sim.elapsed().as_micros() as u64;
        self.due_repairs(sim, now_us, true);
        self.disrupt(sim, &Disruption::HealAll);
        for id in NodeId::all(self.layout.hosts()) {
            if self.crashed[id.index()] {
                self.disrupt(sim, &Disruption::Start(id));
            }
        }
        self.fault_line("workload over: every fault healed, every process running".into());
    }

    fn fault_line(&mut self, what: String) {
        self.line("fault".into(), what);
    }

    /// A trace line timed by the driver's clock (outside any host).
    fn line(&mut self, node: String, what: String) {
        let mut world = self.world.borrow_mut();
        let at_us = self.now_us.saturating_sub(world.start_us);
        world.event_at(ShardedEvent { at_us, node, what });
    }

    /// Which host leads the config servers, for `leader` in faults; shards and routers are never
    /// leaders.
    fn node_states(&self) -> Vec<NodeState> {
        let raft = self.raft.borrow();
        NodeId::all(self.layout.hosts())
            .map(|id| {
                let crashed = self.crashed[id.index()];
                match raft.views.get(id.index()) {
                    Some(v) if id.index() < self.layout.config_servers => NodeState {
                        term: v.term,
                        leader: v.role == Role::Leader,
                        crashed,
                    },
                    _ => NodeState {
                        term: 0,
                        leader: false,
                        crashed,
                    },
                }
            })
            .collect()
    }

    /// Fires the step faults whose migration has reached their step.
    fn step_faults(&mut self, sim: &mut turmoil::Sim<'_>, now_us: u64) {
        let reached: Vec<_> = self.world.borrow().steps_reached[self.steps_seen..].to_vec();
        self.steps_seen += reached.len();
        for (number, step, donor, recipient) in reached {
            let nth = self
                .world
                .borrow()
                .migrations
                .iter()
                .position(|m| m.number == number)
                .map(|i| i as u64 + 1);
            for (i, fault) in self.settings.step_faults.iter().enumerate() {
                if self.step_faults_fired[i] || fault.at != step || nth != Some(fault.migration) {
                    continue;
                }
                self.step_faults_fired[i] = true;
                self.fault_line(fault.label());
                self.fire(sim, fault, (donor, recipient), now_us);
            }
        }
    }

    fn fire(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        fault: &StepFault,
        (donor, recipient): (usize, usize),
        now_us: u64,
    ) {
        let until = now_us + fault.for_ms * 1000;
        let layout = self.layout;
        match fault.kind {
            StepFaultKind::CrashDonor | StepFaultKind::CrashRecipient => {
                let s = if fault.kind == StepFaultKind::CrashDonor {
                    donor
                } else {
                    recipient
                };
                self.disrupt(sim, &Disruption::Kill(layout.shard(s)));
                self.repairs.push((until, Repair::Restart(layout.shard(s))));
            }
            StepFaultKind::IsolateDonorFromConfig => {
                let cut: Vec<(NodeId, NodeId)> = (0..layout.config_servers)
                    .map(|c| (layout.shard(donor), layout.config_server(c)))
                    .collect();
                for &(a, b) in &cut {
                    sim.partition(a.to_string(), b.to_string());
                }
                self.repairs.push((until, Repair::Rejoin(cut)));
            }
            StepFaultKind::IsolateRouter => {
                let router = layout.router(0);
                let cut: Vec<(NodeId, NodeId)> = NodeId::all(layout.hosts())
                    .filter(|&id| id != router)
                    .map(|id| (router, id))
                    .collect();
                for &(a, b) in &cut {
                    sim.partition(a.to_string(), b.to_string());
                }
                self.repairs.push((until, Repair::Rejoin(cut)));
            }
        }
    }

    /// Carries out the repairs that are due (all of them when `all`).
    fn due_repairs(&mut self, sim: &mut turmoil::Sim<'_>, now_us: u64, all: bool) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.repairs)
            .into_iter()
            .partition(|(at, _)| all || *at <= now_us);
        self.repairs = later;
        for (_, repair) in due {
            match repair {
                Repair::Restart(id) => {
                    self.fault_line(format!("restart {id} ({})", self.layout.part(id)));
                    self.disrupt(sim, &Disruption::Start(id));
                }
                Repair::Rejoin(links) => {
                    self.fault_line("heal the step fault's cut".into());
                    for (a, b) in links {
                        sim.repair(a.to_string(), b.to_string());
                    }
                }
            }
        }
    }

    /// Carries out one primitive disruption.
    fn disrupt(&mut self, sim: &mut turmoil::Sim<'_>, d: &Disruption) {
        let hosts = self.layout.hosts();
        let now_us = sim.elapsed().as_micros() as u64;
        match *d {
            Disruption::Cut(a, b) => sim.partition(a.to_string(), b.to_string()),
            Disruption::CutOneway(a, b) => sim.partition_oneway(a.to_string(), b.to_string()),
            Disruption::Kill(id) => {
                sim.crash(id.to_string());
                self.crashed[id.index()] = true;
                if let Some(s) = self.layout.shard_of(id) {
                    self.world.borrow_mut().kill(s);
                } else if id.index() < self.layout.config_servers {
                    self.raft.borrow_mut().record_crash(now_us, id);
                }
            }
            Disruption::Start(id) => {
                if self.crashed[id.index()] {
                    sim.bounce(id.to_string());
                    self.crashed[id.index()] = false;
                }
            }
            Disruption::HealAll => {
                for a in NodeId::all(hosts) {
                    for b in NodeId::all(hosts).filter(|&b| b != a) {
                        sim.repair(a.to_string(), b.to_string());
                    }
                }
                sim.set_max_message_latency(Duration::from_millis(
                    self.scenario.network.latency_ms_max,
                ));
                self.world.borrow_mut().loss.lossiness = Lossiness::default();
                self.raft.borrow_mut().lossiness = Lossiness::default();
            }
            Disruption::Delay { ms_max } => {
                sim.set_max_message_latency(Duration::from_millis(ms_max))
            }
            Disruption::Loss(rate) => {
                self.world.borrow_mut().loss.lossiness.loss = rate;
                self.raft.borrow_mut().lossiness.loss = rate;
            }
            Disruption::Duplicate(rate) => {
                self.world.borrow_mut().loss.lossiness.duplicate = rate;
                self.raft.borrow_mut().lossiness.duplicate = rate;
            }
            Disruption::DuplicateRequests(_)
            | Disruption::Bandwidth(_)
            | Disruption::StepDown { .. } => {
                unreachable!("refused by ShardedSim::supports before the run")
            }
        }
    }

    /// A trace line when the config servers' leader changes, and their views for `--step`.
    fn watch_config_leader(&mut self) {
        let raft = self.raft.borrow();
        let leader = raft
            .views
            .iter()
            .enumerate()
            .filter(|(i, v)| v.role == Role::Leader && !self.crashed[*i])
            .max_by_key(|(_, v)| v.term)
            .map(|(i, v)| (NodeId(i as u64 + 1), v.term));
        let views: Vec<String> = raft
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| format!("cfg{}: {} term {}", i + 1, v.role, v.term))
            .collect();
        drop(raft);
        self.world.borrow_mut().config_views = views;
        if let Some((id, term)) = leader.filter(|_| leader != self.leader_seen) {
            self.leader_seen = leader;
            self.line(
                format!("{id}/cfg"),
                format!("config server leader, term {term}"),
            );
        }
    }
}

fn step(sim: &mut turmoil::Sim<'_>) -> Result<(), SimError> {
    sim.step().map(|_| ()).map_err(|e| SimError::Host {
        at_ms: sim.elapsed().as_millis() as u64,
        reason: e.to_string(),
    })
}

/// The run's measurements, with the end state checked against the last table read.
fn measure(
    scenario: &Scenario,
    seed: u64,
    (state, raft): (&ShardedWorld, &RaftWorld),
    table: Option<Table>,
    end_us: u64,
) -> ShardedSimRun {
    let mut ops = state.ops.clone();
    for (&client, &(kind, invoke_us)) in &state.in_flight {
        ops.push(Op {
            id: 0,
            client,
            kind,
            invoke_us,
            complete_us: end_us,
            outcome: Outcome::Info,
            node: None,
        });
    }
    let history = History::from_completed(ops);
    let mut seen = ShardedObservation {
        migrations: state.migrations.clone(),
        orphans: state.orphans.clone(),
        reads: state.reads.clone(),
        stale_config_retries: state.stale_retries.len() as u64,
        invariant_violations: state.violations.clone(),
        ..ShardedObservation::default()
    };
    for what in raft.monitor.violations() {
        seen.invariant_violations
            .push(format!("config servers: {what}"));
    }
    match &table {
        Some(table) => own_at_end(state, table, &mut seen),
        None => seen
            .invariant_violations
            .push("the config servers could not be read after the run".into()),
    }
    for op in &history.ops {
        let key = op.kind.key();
        seen.chunk_of_key
            .insert(key, state.bounds.chunk_of(state.points[key as usize]) + 1);
    }
    let summary = summarize(&scenario.name, seed, &history, &seen);
    ShardedSimRun {
        summary,
        trace: state.events.clone(),
        views: state.views.clone(),
        migrations: state.migrations.clone(),
        stale_retries: state.stale_retries.clone(),
        history,
    }
}

/// Who owns each document at the end: the shard the config servers name for its chunk, if it
/// holds it; a document that two shards each hold in a chunk they believe theirs is owned twice.
fn own_at_end(state: &ShardedWorld, table: &Table, seen: &mut ShardedObservation) {
    let mut believers: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (s, shard) in state.shards.iter().enumerate() {
        let durable = shard.as_ref().map_or(&state.durables[s], |sh| sh.durable());
        for (&chunk, docs) in &durable.docs {
            let owner = table[chunk as usize].shard == s;
            let believes = shard
                .as_ref()
                .and_then(|sh| sh.table())
                .is_some_and(|t| t[chunk as usize].shard == s);
            for &(_, id) in docs {
                if owner {
                    seen.owned_ids.insert(id, s);
                }
                if believes {
                    believers.entry(id).or_default().push(s);
                }
            }
        }
    }
    seen.doubly_owned = believers
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(id, _)| id)
        .collect();
}

impl ShardedSimRun {
    /// What the report draws: each shard's part in migrations over time (donating, critical
    /// section, receiving), the faults as bands, and the summary.
    pub fn timeline(&self, scenario: &Scenario) -> Timeline {
        let System::Sharded(settings) = &scenario.system else {
            unreachable!("a sharded run")
        };
        let layout = settings.layout();
        let end_us = scenario.duration_ms * 1000;
        let mut roles = Vec::new();
        for m in &self.migrations {
            let ended = m.ended_us.unwrap_or(end_us);
            let critical = m.critical_from_us.unwrap_or(ended);
            roles.push(RoleSpan {
                node: m.from,
                from_us: m.started_us,
                to_us: critical,
                role: "donating".into(),
                term: m.number,
            });
            if let Some(from) = m.critical_from_us {
                let to = m.critical_to_us.unwrap_or(ended);
                roles.push(RoleSpan {
                    node: m.from,
                    from_us: from,
                    to_us: to,
                    role: "critical section".into(),
                    term: m.number,
                });
            }
            roles.push(RoleSpan {
                node: m.to,
                from_us: m.started_us,
                to_us: ended,
                role: "receiving".into(),
                term: m.number,
            });
        }
        let faults: Vec<FaultSpan> = self
            .trace
            .iter()
            .filter(|e| e.node == "fault")
            .map(|e| FaultSpan {
                from_us: e.at_us,
                to_us: (e.at_us + 200_000).min(end_us),
                label: e.what.clone(),
            })
            .collect();
        let s = &self.summary;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        Timeline {
            title: format!("{}, seed {}", scenario.name, s.seed),
            description: scenario.description.clone(),
            nodes: (0..layout.shards)
                .map(|i| format!("{} s{}", layout.shard(i), i + 1))
                .collect(),
            duration_us: end_us,
            roles,
            faults,
            messages: vec![],
            summary: vec![
                (
                    "migrations committed / aborted".into(),
                    format!("{} / {}", s.migrations_committed, s.migrations_aborted),
                ),
                ("migration p50".into(), ms(s.migration_ms.map(|l| l.p50))),
                (
                    "longest critical section".into(),
                    s.critical_section_ms_max
                        .map_or("-".into(), |v| format!("{v} ms")),
                ),
                (
                    "write p99 outside / max inside critical sections".into(),
                    format!(
                        "{} / {}",
                        ms(s.write_ms_outside.map(|l| l.p99)),
                        ms(s.write_ms_inside.map(|l| l.max))
                    ),
                ),
                (
                    "stale-config retries".into(),
                    s.stale_config_retries.to_string(),
                ),
                (
                    "orphaned documents (peak)".into(),
                    s.orphans_max.to_string(),
                ),
                ("acknowledged writes lost".into(), s.lost_writes.to_string()),
                ("bad reads".into(), s.bad_reads.to_string()),
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
