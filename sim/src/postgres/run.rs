//! One simulated run of a Postgres scenario: the cluster is bootstrapped (etcd elects a leader,
//! `n1` takes the leader key, standbys connect), then the workload, the faults and the
//! measurements run exactly as the real driver's do ([`quorumlab_experiment::replication`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use quorumlab_experiment::fault::{plan_fault, Disruption, Fault, FaultExecutor, NodeState};
use quorumlab_experiment::history::{History, Outcome};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::{Phase, PostgresSettings, ReplicationMode, SyncCommit};
use quorumlab_experiment::replication::{
    compose_write_id, reduce_lag, summarize, write_op, FailoverObservation, LagMethod,
    PgRunSummary, PROBE_CLIENT,
};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::system::System;
use serde::{Deserialize, Serialize};
use tokio::task::spawn_local;
use turmoil::net::UdpSocket;

use super::host::{
    ask, db_host, ok, record, sample, PgEvent, PgHostConfig, PgPacket, PgWorld, PgWorldRef,
};
use super::server::{PgRole, PgServer};
use crate::host::{node_host, Lossiness, World};
use crate::node::NodeConfig;
use crate::run::SimError;

/// Simulated time before the workload starts: etcd elects a leader and Patroni bootstraps.
pub const BOOTSTRAP_MS: u64 = 3000;
/// etcd members in a Postgres world.
const ETCD_MEMBERS: u64 = 3;

/// One simulated run of a Postgres scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgSimRun {
    /// The measurements.
    pub summary: PgRunSummary,
    /// What happened, in order (times from the workload's start).
    pub trace: Vec<PgEvent>,
    /// Every client operation.
    pub history: History,
}

quorumlab_experiment::run_record!(PgSimRun, PgRunSummary);

/// The Postgres simulator as a fault runner: turmoil cuts links, killed servers are dropped, and
/// database hosts' datagrams and the etcd members' Raft messages are delayed, lost and duplicated,
/// so it carries out every fault.
pub struct PgSim;

impl FaultExecutor for PgSim {
    fn runner(&self) -> &'static str {
        "the Postgres simulator"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::DuplicateRequests { .. } => {
                Err("the Postgres model's writers hold one connection each and never resend".into())
            }
            Fault::Bandwidth { .. } => Err(
                "it models replication bandwidth as [postgres] bandwidth_mb_per_s, not as a fault"
                    .into(),
            ),
            Fault::StepDown { .. } => Err(crate::run::STEP_DOWN_IS_MONGODB.into()),
            _ => Ok(()),
        }
    }
}

/// Runs `scenario` (system `postgres`) once in `mode` with `seed`.
pub fn run_pg(scenario: &Scenario, mode: ReplicationMode, seed: u64) -> Result<PgSimRun, SimError> {
    let _sim = crate::trace::sim_span(&scenario.name, seed, &mode.to_string()).entered();
    let System::Postgres(pg) = &scenario.system else {
        let why = format!("{} is not a postgres scenario", scenario.name);
        return Err(SimError::Unsupported(why));
    };
    PgSim
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(SimError::Unsupported)?;
    let db_nodes = scenario.topology.nodes as u64;
    let hosts = db_nodes.max(ETCD_MEMBERS);
    let config = host_config(pg, mode, db_nodes, seed);
    let phases = pg.phases_or(scenario.duration_ms, scenario.workload.rate_per_s);
    let world = fresh_world(&config, phases);
    let etcd: crate::host::WorldRef = Rc::new(RefCell::new(World::for_members(
        ETCD_MEMBERS as usize,
        scenario.topology.heartbeat_ms * 1000,
    )));
    let duration = Duration::from_millis(BOOTSTRAP_MS + scenario.duration_ms);
    let net = &scenario.network;
    let mut sim = turmoil::Builder::new()
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration + Duration::from_secs(120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(net.latency_ms_min))
        .max_message_latency(Duration::from_millis(net.latency_ms_max))
        .rng_seed(seed)
        .build();
    let election_ticks =
        (scenario.topology.election_timeout_ms / scenario.topology.heartbeat_ms) as usize;
    add_hosts(&mut sim, hosts, (&world, &etcd), &config, election_ticks);
    let measuring_lag = !pg.phases.is_empty();
    add_workload(&mut sim, &world, scenario, db_nodes, measuring_lag);
    let fault = drive(&mut sim, scenario, (&world, &etcd), hosts, duration)?;
    let end_us = duration.as_micros() as u64 - config.start_us;
    let state = world.borrow();
    let run = measure(scenario, (mode, seed), &state, fault, end_us, measuring_lag);
    Ok(run)
}

/// What every database host of the run is configured with.
fn host_config(
    pg: &PostgresSettings,
    mode: ReplicationMode,
    db_nodes: u64,
    seed: u64,
) -> PgHostConfig {
    PgHostConfig {
        db_nodes,
        etcd_members: ETCD_MEMBERS,
        ttl_ms: pg.ttl_s * 1000,
        loop_wait_ms: pg.loop_wait_s * 1000,
        retry_timeout_ms: pg.retry_timeout_s * 1000,
        maximum_lag_on_failover: pg.maximum_lag_on_failover_bytes,
        mode,
        synchronous_commit: match mode {
            ReplicationMode::Async => SyncCommit::Local,
            ReplicationMode::Sync => pg.synchronous_commit,
        },
        bandwidth: pg.bandwidth_mb_per_s * 1e6,
        replay_rate: pg.replay_mb_per_s * 1e6,
        start_us: BOOTSTRAP_MS * 1000,
        seed,
    }
}

/// The world at bootstrap: `n1` primary (with `n2` synchronous in sync mode), the rest standbys.
fn fresh_world(config: &PgHostConfig, phases: Vec<Phase>) -> PgWorldRef {
    let servers = (1..=config.db_nodes)
        .map(|i| {
            let mut server = if i == 1 {
                PgServer::primary(config.synchronous_commit)
            } else {
                PgServer::standby(NodeId(1), config.synchronous_commit)
            };
            if i == 1 && config.mode == ReplicationMode::Sync {
                server.sync_standby = Some(NodeId(2));
            }
            Some(server)
        })
        .collect();
    Rc::new(RefCell::new(PgWorld {
        servers,
        phases,
        start_us: config.start_us,
        seed: config.seed,
        ..PgWorld::default()
    }))
}

/// Hosts `n1..`: the first three run an etcd member, the database hosts Postgres and Patroni.
fn add_hosts(
    sim: &mut turmoil::Sim<'_>,
    hosts: u64,
    (world, etcd): (&PgWorldRef, &crate::host::WorldRef),
    config: &PgHostConfig,
    election_ticks: usize,
) {
    let seed = config.seed;
    for id in NodeId::all(hosts as usize) {
        let (world, etcd, config) = (world.clone(), etcd.clone(), config.clone());
        sim.host(id.to_string(), move || {
            let (world, etcd, config) = (world.clone(), etcd.clone(), config.clone());
            async move {
                if id.0 <= ETCD_MEMBERS {
                    let node_config = NodeConfig {
                        id: id.0,
                        voters: ETCD_MEMBERS,
                        election_ticks,
                        rng_seed: seed.wrapping_mul(31).wrapping_add(id.0),
                        stale_reads: false,
                    };
                    let store = etcd.borrow().stores[id.index()].clone();
                    tokio::task::spawn_local(node_host(etcd, node_config, store));
                }
                if id.0 <= config.db_nodes {
                    db_host(world, config, id).await
                } else {
                    std::future::pending().await
                }
            }
        });
    }
}

/// The clients, the same as the real driver's: a primary tracker, writers, an every-node prober
/// and, for phased (lag) scenarios, a heartbeat writer, its watchers and a view sampler.
fn add_workload(
    sim: &mut turmoil::Sim<'_>,
    world: &PgWorldRef,
    scenario: &Scenario,
    db_nodes: u64,
    measuring_lag: bool,
) {
    let start = Duration::from_millis(BOOTSTRAP_MS);
    let until = start + Duration::from_millis(scenario.duration_ms);
    let timeout = Duration::from_millis(scenario.workload.timeout_ms);
    let clients = scenario
        .workload
        .clients
        .clamp(1, PROBE_CLIENT as usize - 1) as u64;
    let world = world.clone();
    sim.client("clients", async move {
        tokio::time::sleep(start).await;
        let primary = Rc::new(Cell::new(NodeId(1)));
        let mut tasks = vec![spawn_local(track_primary(
            world.clone(),
            primary.clone(),
            db_nodes,
            until,
        ))];
        for client in 0..clients {
            let writer = writer(
                world.clone(),
                client,
                clients,
                timeout,
                primary.clone(),
                until,
            );
            tasks.push(spawn_local(writer));
        }
        tasks.push(spawn_local(prober(world.clone(), db_nodes, until)));
        if measuring_lag {
            tasks.push(spawn_local(heartbeat(
                world.clone(),
                primary.clone(),
                until,
            )));
            tasks.push(spawn_local(view_sampler(world.clone(), db_nodes, until)));
            for replica in NodeId::all(db_nodes as usize).skip(1) {
                tasks.push(spawn_local(heartbeat_watcher(
                    world.clone(),
                    replica,
                    until,
                )));
            }
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    });
}

/// When the first fault fired (µs after the workload's start) and who was primary then.
type FirstFault = (Option<u64>, Option<NodeId>);

/// Steps the world to the end, firing the scenario's faults on time, then lets it settle until
/// some node is primary (as the real driver waits), within a minute.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    (world, etcd): (&PgWorldRef, &crate::host::WorldRef),
    hosts: u64,
    duration: Duration,
) -> Result<FirstFault, SimError> {
    let start_us = BOOTSTRAP_MS * 1000;
    let mut pending = scenario.faults.iter().peekable();
    let (mut fault_at_us, mut old_primary) = (None, None);
    while sim.elapsed() < duration {
        let now_us = sim.elapsed().as_micros() as u64;
        while let Some(step) = pending.next_if(|s| start_us + s.at_ms * 1000 <= now_us) {
            let primary = current_primary(world);
            if fault_at_us.is_none() {
                fault_at_us = Some(now_us - start_us);
                old_primary = primary;
            }
            let plan = plan_fault(&step.fault, &node_states(world, hosts, primary));
            let label = plan.label(&step.fault);
            crate::trace::emit(now_us - start_us, "fault", &label);
            world.borrow_mut().events.push(PgEvent {
                at_us: now_us - start_us,
                node: "fault".into(),
                what: label,
            });
            let latency_ms_max = scenario.network.latency_ms_max;
            apply(sim, (world, etcd), &plan.steps, hosts, latency_ms_max);
        }
        step(sim)?;
    }
    let settle_until = duration + Duration::from_secs(60);
    while current_primary(world).is_none() && sim.elapsed() < settle_until {
        step(sim)?;
    }
    Ok((fault_at_us, old_primary))
}

/// One step of the world; a host's error ends the run.
fn step(sim: &mut turmoil::Sim<'_>) -> Result<(), SimError> {
    sim.step().map(|_| ()).map_err(|e| SimError::Host {
        at_ms: sim.elapsed().as_millis() as u64,
        reason: e.to_string(),
    })
}

/// What a fault resolves its nodes against: who is primary, who is down.
fn node_states(world: &PgWorldRef, hosts: u64, primary: Option<NodeId>) -> Vec<NodeState> {
    let state = world.borrow();
    NodeId::all(hosts as usize)
        .map(|i| NodeState {
            term: 0,
            leader: Some(i) == primary,
            crashed: state.servers.get(i.index()).is_some_and(Option::is_none),
        })
        .collect()
}

/// When the old primary's leader key was lost: its lease ran out, or another member took the
/// key, whichever came first (µs after the workload's start).
fn detected_at_us(state: &PgWorld, (fault_at_us, old_primary): FirstFault) -> Option<u64> {
    let old = old_primary?;
    let fault = fault_at_us? + state.start_us;
    let last_old = state
        .lock_writes
        .iter()
        .filter(|(_, l)| l.holder == old)
        .map(|(_, l)| l.expires_ms * 1000)
        .max();
    let first_other = state
        .lock_writes
        .iter()
        .filter(|(at, l)| l.holder != old && *at >= fault)
        .map(|(at, _)| *at)
        .min();
    let detected = match (last_old, first_other) {
        (Some(e), Some(o)) => e.min(o),
        (e, o) => e.or(o)?,
    };
    Some(detected.max(fault) - state.start_us)
}

/// The run's measurements, taken the way the real driver takes them.
fn measure(
    scenario: &Scenario,
    (mode, seed): (ReplicationMode, u64),
    state: &PgWorld,
    fault: FirstFault,
    end_us: u64,
    measuring_lag: bool,
) -> PgSimRun {
    let new_primary = current_primary_of(state);
    let surviving_ids: BTreeSet<u64> = new_primary
        .and_then(|p| state.servers[p.index()].as_ref())
        .map(|s| s.wal.iter().map(|r| r.write_id).collect())
        .unwrap_or_default();
    let history = History::from_completed(state.ops.clone());
    let seen = FailoverObservation {
        fault_at_us: fault.0,
        old_primary: fault.1.map(|p| p.to_string()),
        new_primary: new_primary.map(|p| p.to_string()),
        detected_at_us: detected_at_us(state, fault),
        surviving_ids,
        end_us,
    };
    let db_nodes = scenario.topology.nodes;
    let mut summary = summarize(&scenario.name, mode, seed, db_nodes, &history, &seen);
    if measuring_lag {
        let order: Vec<String> = state.phases.iter().map(|p| p.name.clone()).collect();
        summary.lag = reduce_lag(&state.samples, &order);
    }
    PgSimRun {
        summary,
        trace: state.events.clone(),
        history,
    }
}

fn current_primary(world: &PgWorldRef) -> Option<NodeId> {
    current_primary_of(&world.borrow())
}

/// The first node whose server is primary, if any.
fn current_primary_of(state: &PgWorld) -> Option<NodeId> {
    NodeId::all(state.servers.len()).find(|&i| {
        state.servers[i.index()]
            .as_ref()
            .is_some_and(|s| s.role == PgRole::Primary)
    })
}

/// Carries out a fault's steps on the simulated world: links, processes, and the latency, loss and
/// duplication of the database hosts' datagrams and of the etcd members' Raft messages.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    (world, etcd): (&PgWorldRef, &crate::host::WorldRef),
    steps: &[Disruption],
    hosts: u64,
    latency_ms_max: u64,
) {
    for step in steps {
        match *step {
            Disruption::Cut(a, b) => sim.partition(a.to_string(), b.to_string()),
            Disruption::CutOneway(a, b) => sim.partition_oneway(a.to_string(), b.to_string()),
            Disruption::Kill(id) => {
                let mut state = world.borrow_mut();
                if let Some(slot) = state.servers.get_mut(id.index()) {
                    *slot = None;
                }
            }
            Disruption::Start(id) => {
                let mut state = world.borrow_mut();
                let primary = current_primary_of(&state);
                if let Some(slot) = state.servers.get_mut(id.index()) {
                    if slot.is_none() {
                        *slot = Some(PgServer::standby(
                            primary.unwrap_or(NodeId(1)),
                            SyncCommit::Local,
                        ));
                    }
                }
            }
            Disruption::HealAll => {
                for a in NodeId::all(hosts as usize) {
                    for b in NodeId::all(hosts as usize).filter(|&b| b != a) {
                        sim.repair(a.to_string(), b.to_string());
                    }
                }
                sim.set_max_message_latency(Duration::from_millis(latency_ms_max));
                world.borrow_mut().lossiness = Lossiness::default();
                etcd.borrow_mut().lossiness = Lossiness::default();
            }
            Disruption::Delay { ms_max } => {
                sim.set_max_message_latency(Duration::from_millis(ms_max))
            }
            Disruption::Loss(rate) => {
                world.borrow_mut().lossiness.loss = rate;
                etcd.borrow_mut().lossiness.loss = rate;
            }
            Disruption::Duplicate(rate) => {
                world.borrow_mut().lossiness.duplicate = rate;
                etcd.borrow_mut().lossiness.duplicate = rate;
            }
            Disruption::DuplicateRequests(_)
            | Disruption::Bandwidth(_)
            | Disruption::StepDown { .. } => {
                unreachable!("refused by PgSim::supports before the run")
            }
        }
    }
}

fn bind(port: u16) -> impl std::future::Future<Output = std::io::Result<UdpSocket>> {
    UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
}

fn elapsed() -> Duration {
    turmoil::elapsed()
}

fn now() -> u64 {
    crate::host::now_us()
}

/// Asks every node `pg_is_in_recovery()` every 100 ms; publishes the first that says no.
async fn track_primary(
    world: PgWorldRef,
    primary: Rc<Cell<NodeId>>,
    nodes: u64,
    until: Duration,
) -> turmoil::Result {
    let _ = world;
    let socket = bind(7000).await?;
    let mut buf = vec![0u8; 4096];
    let mut seq = 0;
    while elapsed() < until {
        for i in NodeId::all(nodes as usize) {
            seq += 1;
            let answer = ask(
                &socket,
                &mut buf,
                i,
                PgPacket::IsPrimary { seq },
                seq,
                Duration::from_millis(300),
            )
            .await;
            if let Some(PgPacket::Primary { yes: true, .. }) = answer {
                primary.set(i);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn writer(
    world: PgWorldRef,
    client: u64,
    clients: u64,
    timeout: Duration,
    primary: Rc<Cell<NodeId>>,
    until: Duration,
) -> turmoil::Result {
    let socket = bind(7100 + client as u16).await?;
    let mut buf = vec![0u8; 4096];
    let start_us = world.borrow().start_us;
    let mut n = 0;
    while elapsed() < until {
        let phase = world.borrow().phase_at(now() - start_us).clone();
        if phase.rate_per_s == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let period = Duration::from_secs_f64(clients as f64 / phase.rate_per_s as f64);
        let began = elapsed();
        n += 1;
        let next_id = compose_write_id(0, client as u32, n);
        let target = primary.get();
        let invoke_us = now() - start_us;
        let insert = PgPacket::Insert {
            seq: next_id,
            id: next_id,
            payload: u64::from(phase.row_bytes),
            heartbeat: None,
        };
        let outcome = match ask(&socket, &mut buf, target, insert, next_id, timeout).await {
            Some(PgPacket::InsertOk { .. }) => ok(),
            Some(_) => Outcome::Fail,
            None => Outcome::Info,
        };
        record(
            &world,
            write_op(
                client as u32,
                next_id,
                (invoke_us, now() - start_us),
                outcome,
                target.to_string(),
            ),
        );
        if let Some(rest) = period.checked_sub(elapsed() - began) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(())
}

/// Tries one insert on every node every 100 ms; records the acknowledged ones.
async fn prober(world: PgWorldRef, nodes: u64, until: Duration) -> turmoil::Result {
    let socket = bind(7200).await?;
    let mut buf = vec![0u8; 4096];
    let start_us = world.borrow().start_us;
    let mut n = 0;
    while elapsed() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // An idle phase stays idle: no writes at all, or the views could not be seen to mislead.
        if world.borrow().phase_at(now() - start_us).rate_per_s == 0 {
            continue;
        }
        for i in NodeId::all(nodes as usize) {
            n += 1;
            let next_id = compose_write_id(0, PROBE_CLIENT, n);
            let invoke_us = now() - start_us;
            let insert = PgPacket::Insert {
                seq: next_id,
                id: next_id,
                payload: 5,
                heartbeat: None,
            };
            if let Some(PgPacket::InsertOk { .. }) = ask(
                &socket,
                &mut buf,
                i,
                insert,
                next_id,
                Duration::from_millis(500),
            )
            .await
            {
                record(
                    &world,
                    write_op(
                        PROBE_CLIENT,
                        next_id,
                        (invoke_us, now() - start_us),
                        ok(),
                        i.to_string(),
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Writes a heartbeat row every 100 ms while the phase has writes.
async fn heartbeat(
    world: PgWorldRef,
    primary: Rc<Cell<NodeId>>,
    until: Duration,
) -> turmoil::Result {
    let socket = bind(7300).await?;
    let mut buf = vec![0u8; 4096];
    let start_us = world.borrow().start_us;
    let mut seq = 0;
    while elapsed() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if world.borrow().phase_at(now() - start_us).rate_per_s == 0 {
            continue;
        }
        seq += 1;
        let insert = PgPacket::Insert {
            seq,
            id: compose_write_id(1, 0, seq),
            payload: 20,
            heartbeat: Some(seq),
        };
        let _ = ask(
            &socket,
            &mut buf,
            primary.get(),
            insert,
            seq,
            Duration::from_secs(1),
        )
        .await;
    }
    Ok(())
}

/// Polls one replica every 10 ms; each newly visible heartbeat's lag is now minus its commit.
async fn heartbeat_watcher(world: PgWorldRef, replica: NodeId, until: Duration) -> turmoil::Result {
    let socket = bind(7400 + replica.0 as u16).await?;
    let mut buf = vec![0u8; 4096];
    let mut seq = 0;
    let mut last_seen = 0;
    while elapsed() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seq += 1;
        let answer = ask(
            &socket,
            &mut buf,
            replica,
            PgPacket::ReadHeartbeat { seq },
            seq,
            Duration::from_millis(100),
        )
        .await;
        if let Some(PgPacket::Heartbeat {
            latest: Some((hb, committed_us)),
            ..
        }) = answer
        {
            if hb > last_seen {
                last_seen = hb;
                let lag_ms = now().saturating_sub(committed_us) as f64 / 1000.0;
                sample(&world, replica, LagMethod::Heartbeat, Some(lag_ms));
            }
        }
    }
    Ok(())
}

/// Every 100 ms: `pg_stat_replication` on the primary, the replay timestamp's age on standbys.
async fn view_sampler(world: PgWorldRef, nodes: u64, until: Duration) -> turmoil::Result {
    let socket = bind(7500).await?;
    let mut buf = vec![0u8; 1 << 16];
    let mut seq = 0;
    while elapsed() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in NodeId::all(nodes as usize) {
            seq += 1;
            let answer = ask(
                &socket,
                &mut buf,
                i,
                PgPacket::Views { seq },
                seq,
                Duration::from_millis(100),
            )
            .await;
            let Some(PgPacket::ViewRows {
                primary,
                replication,
                replay_age_us,
                ..
            }) = answer
            else {
                continue;
            };
            if primary {
                for (standby, lags, bytes) in replication {
                    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
                    sample(&world, standby, LagMethod::WriteLag, ms(lags[0]));
                    sample(&world, standby, LagMethod::FlushLag, ms(lags[1]));
                    sample(&world, standby, LagMethod::ReplayLag, ms(lags[2]));
                    sample(&world, standby, LagMethod::Bytes, Some(bytes as f64));
                }
            } else {
                sample(
                    &world,
                    i,
                    LagMethod::ReplayAge,
                    replay_age_us.map(|us| us as f64 / 1000.0),
                );
            }
        }
    }
    Ok(())
}
