//! Running a scenario for real: the same file the simulator reads, against a real etcd cluster.
//!
//! One run brings a fresh cluster up, lets clients send the scenario's operation mix through the
//! `etcd-client` crate (each operation recorded as invoke/complete with an ok, fail or unknown
//! outcome, exactly as in the simulator), polls every member's status every 20 ms to see who leads
//! in which term, fires the scenario's faults through the node agents at their times, then tears
//! the cluster down and measures the same [`RunSummary`] the simulator does, plus latency
//! percentiles before, during and after the fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use quorumlab_experiment::checker::{check_history, CheckLimits};
use quorumlab_experiment::fault::{plan_fault, Disruption, Fault, NodeState};
use quorumlab_experiment::history::{History, Op, OpKind, Outcome};
use quorumlab_experiment::measure::{Distribution, RunSummary};
use quorumlab_experiment::register::RegisterClient;
use quorumlab_experiment::scenario::Scenario;
use serde::{Deserialize, Serialize};

use super::lab::{EtcdTiming, StatusProbe};
use crate::inventory::Inventory;
use crate::lab::{Lab, LabError};
use crate::run::{agent_faults_between, carry_out, check_supported, FiredFault, RealLab, RunError};

/// How often the leader poller asks every member.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A leader observation from the poller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeaderSeen {
    /// When, in microseconds since the run started.
    pub at_us: u64,
    /// The leading member (1-based).
    pub node: u64,
    /// Its term.
    pub term: u64,
}

/// Latency percentiles of ok operations in one phase of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseLatency {
    /// Before the first fault.
    pub before_ms: Option<Distribution>,
    /// From the first fault to the first heal or restart.
    pub during_ms: Option<Distribution>,
    /// After that.
    pub after_ms: Option<Distribution>,
}

/// Everything one real run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealRun {
    /// The measurements, as the simulator reports them.
    pub summary: RunSummary,
    /// Latency per phase.
    pub latency: PhaseLatency,
    /// The faults fired.
    pub faults: Vec<FiredFault>,
    /// Leader changes seen by the poller.
    pub leaders: Vec<LeaderSeen>,
    /// The client history.
    pub history: History,
    /// The faults the agents applied during the run, by kind, as their own `/metrics` count them
    /// (`None` when an agent serves no metrics).
    #[serde(default)]
    pub agent_faults: Option<BTreeMap<String, u64>>,
}

quorumlab_experiment::run_record!(RealRun, RunSummary);

struct Shared {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    leaders: Mutex<Vec<LeaderSeen>>,
    /// Latest status per member: (up, leader, term).
    members: Mutex<Vec<NodeState>>,
    member_names: BTreeMap<u64, String>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }
}

/// Runs `scenario` once on a fresh cluster in `state_dir`; `agent_binary` is the quorumlab binary.
pub async fn run_etcd(
    scenario: &Scenario,
    run_number: u64,
    state_dir: &Path,
    agent_binary: &Path,
) -> Result<RealRun, RunError> {
    check_supported(scenario)?;
    let timing = EtcdTiming {
        heartbeat_ms: scenario.topology.heartbeat_ms,
        election_timeout_ms: scenario.topology.election_timeout_ms,
    };
    let lab = Lab::up(state_dir, scenario.topology.nodes, timing, agent_binary).await?;
    let result = drive(scenario, run_number, &lab).await;
    Lab::down(state_dir)?;
    result
}

/// Runs `scenario` once on the etcd cluster an inventory names (provisioned by Ansible, its
/// agents run by systemd): the members are started and the links healed first, the workload's
/// keys deleted so the history starts from empty registers as on a fresh cluster, and the hosts
/// are left as found afterwards.
pub async fn run_etcd_on_inventory(
    scenario: &Scenario,
    run_number: u64,
    inventory: &Inventory,
    state_dir: &Path,
) -> Result<RealRun, RunError> {
    let timing = EtcdTiming {
        heartbeat_ms: scenario.topology.heartbeat_ms,
        election_timeout_ms: scenario.topology.election_timeout_ms,
    };
    let lab = Lab::etcd_of_inventory(inventory, scenario.topology.nodes, timing, state_dir)?;
    RealLab::of_hosts(&lab).await?.check(scenario)?;
    lab.restore_etcd().await?;
    clear_keys(&lab, scenario.workload.keys).await?;
    let result = drive(scenario, run_number, &lab).await;
    lab.restore_etcd().await?;
    result
}

/// Deletes the register keys `k0..k{keys}` a run will use.
async fn clear_keys(lab: &Lab, keys: u32) -> Result<(), LabError> {
    let options = ConnectOptions::new().with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(lab.endpoints(), Some(options))
        .await
        .map_err(|e| LabError::Timeout(format!("etcd not reachable: {e}")))?;
    for key in 0..keys {
        client
            .delete(key_name(key), None)
            .await
            .map_err(|e| LabError::Timeout(format!("deleting {}: {e}", key_name(key))))?;
    }
    Ok(())
}

async fn member_names(lab: &Lab) -> Result<BTreeMap<u64, String>, LabError> {
    let options = ConnectOptions::new().with_timeout(Duration::from_secs(2));
    let mut client = Client::connect(lab.endpoints(), Some(options))
        .await
        .map_err(|e| LabError::Timeout(format!("etcd not reachable: {e}")))?;
    let list = client
        .member_list()
        .await
        .map_err(|e| LabError::Timeout(format!("member list: {e}")))?;
    Ok(list
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string()))
        .collect())
}

async fn drive(scenario: &Scenario, run_number: u64, lab: &Lab) -> Result<RealRun, RunError> {
    let nodes = scenario.topology.nodes;
    let shared = Arc::new(Shared {
        started: Instant::now(),
        ops: Mutex::new(Vec::new()),
        leaders: Mutex::new(Vec::new()),
        members: Mutex::new(vec![NodeState::default(); nodes]),
        member_names: member_names(lab).await?,
    });
    let duration = Duration::from_millis(scenario.duration_ms);
    let agents_before = lab.agent_faults().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(poll_leaders(lab.clone(), shared.clone(), stop_rx.clone()));
    let clients = spawn_clients(lab, scenario, run_number, &shared, &stop_rx);
    let fired = fire_faults(lab, scenario, &shared).await?;
    tokio::time::sleep_until((shared.started + duration).into()).await;
    let _ = stop_tx.send(true);
    for c in clients {
        let _ = c.await;
    }
    let _ = poller.await;
    let mut run = measure(scenario, run_number, &shared, fired);
    run.agent_faults = agent_faults_between(agents_before, lab.agent_faults().await);
    Ok(run)
}

/// The workload's clients, each with its own seeded schedule, through `etcd-client`.
fn spawn_clients(
    lab: &Lab,
    scenario: &Scenario,
    run_number: u64,
    shared: &Arc<Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let w = &scenario.workload;
    let period = Duration::from_micros(1_000_000 * w.clients as u64 / w.rate_per_s.max(1));
    (0..w.clients as u32)
        .map(|client| {
            let plan = ClientPlan {
                client,
                period,
                timeout: Duration::from_millis(w.timeout_ms),
                mix: [w.put, w.get, w.cas],
                keys: w.keys,
                seed: run_number.wrapping_mul(1000) + u64::from(client),
                resends: if w.retry_timed_out_writes {
                    w.retries
                } else {
                    0
                },
            };
            let endpoints = lab.endpoints();
            tokio::spawn(client_loop(endpoints, plan, shared.clone(), stop.clone()))
        })
        .collect()
}

/// The faults as fired, and the first leadership-disrupting one: (when in ms, highest term then).
struct Fired {
    faults: Vec<FiredFault>,
    first: Option<(u64, u64)>,
}

/// Fires the scenario's faults on time, resolving their nodes against the poller's latest view.
async fn fire_faults(lab: &Lab, scenario: &Scenario, shared: &Shared) -> Result<Fired, RunError> {
    let mut fired = Fired {
        faults: Vec::new(),
        first: None,
    };
    let mut crashed = vec![false; scenario.topology.nodes];
    for step in &scenario.faults {
        let at = shared.started + Duration::from_millis(step.at_ms);
        tokio::time::sleep_until(at.into()).await;
        let states: Vec<NodeState> = {
            let mut s = shared.members.lock().expect("members").clone();
            s.iter_mut()
                .zip(&crashed)
                .for_each(|(m, &c)| m.crashed |= c);
            s
        };
        if fired.first.is_none() && step.fault.disrupts_leadership() {
            let term = states.iter().map(|s| s.term).max().unwrap_or(0);
            fired.first = Some((shared.now_us() / 1000, term));
        }
        let label = fire(lab, &step.fault, &states, &mut crashed).await?;
        fired.faults.push(FiredFault {
            at_ms: shared.now_us() / 1000,
            label,
        });
    }
    Ok(fired)
}

/// The same measurements the simulator takes, plus latency before, during and after the fault.
fn measure(scenario: &Scenario, run_number: u64, shared: &Shared, fired: Fired) -> RealRun {
    let history = History::from_completed(std::mem::take(&mut *shared.ops.lock().expect("ops")));
    let leaders = std::mem::take(&mut *shared.leaders.lock().expect("leaders"));
    let fault_at_ms = fired.first.map(|(at, _)| at);
    let election_ms = fired.first.and_then(|(at, term_at_fault)| {
        leaders
            .iter()
            .find(|l| l.term > term_at_fault && l.at_us >= at * 1000)
            .map(|l| l.at_us / 1000 - at)
    });
    let end_us = scenario.duration_ms * 1000;
    let repair_ms = scenario
        .faults
        .iter()
        .find(|f| f.fault.is_repair())
        .map(|f| f.at_ms);
    let mut terms: Vec<u64> = leaders.iter().map(|l| l.term).collect();
    terms.dedup();
    let summary = RunSummary {
        scenario: scenario.name.clone(),
        seed: run_number,
        nodes: scenario.topology.nodes,
        fault_at_ms,
        election_ms,
        write_unavailable_ms: history.longest_write_gap_us(fault_at_ms.unwrap_or(0) * 1000, end_us)
            / 1000,
        ops: history.counts(),
        leaders_elected: terms.len() as u64,
        verdict: check_history(&history, CheckLimits::default()),
        invariant_violations: vec![],
    };
    RealRun {
        summary,
        latency: phase_latency(&history, fault_at_ms, repair_ms),
        faults: fired.faults,
        leaders,
        history,
        agent_faults: None,
    }
}

fn phase_latency(history: &History, fault_ms: Option<u64>, repair_ms: Option<u64>) -> PhaseLatency {
    let fault_us = fault_ms.map_or(u64::MAX, |m| m * 1000);
    let repair_us = repair_ms.map_or(u64::MAX, |m| m * 1000).max(fault_us);
    let lat = |keep: &dyn Fn(u64) -> bool| {
        Distribution::of(
            history
                .ops
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Ok { .. }) && keep(o.invoke_us))
                .map(|o| (o.complete_us - o.invoke_us) as f64 / 1000.0),
        )
    };
    PhaseLatency {
        before_ms: lat(&|t| t < fault_us),
        during_ms: lat(&|t| t >= fault_us && t < repair_us),
        after_ms: lat(&|t| t >= repair_us),
    }
}

/// Fires one fault through the agents; returns its timeline label.
async fn fire(
    lab: &Lab,
    fault: &Fault,
    states: &[NodeState],
    crashed: &mut [bool],
) -> Result<String, RunError> {
    let plan = plan_fault(fault, states);
    carry_out(lab, &plan.steps, "etcd").await?;
    for step in &plan.steps {
        match *step {
            Disruption::Kill(id) => crashed[id.index()] = true,
            Disruption::Start(id) => crashed[id.index()] = false,
            _ => {}
        }
    }
    Ok(plan.label(fault))
}

async fn poll_leaders(lab: Lab, shared: Arc<Shared>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<(u64, u64)> = None;
    let mut probe = StatusProbe::new(&lab);
    while !*stop.borrow() {
        ticker.tick().await;
        let statuses = probe.poll(POLL_INTERVAL * 2).await;
        let at_us = shared.now_us();
        let states: Vec<NodeState> = statuses
            .iter()
            .map(|m| NodeState {
                term: m.term,
                leader: m.leader,
                crashed: !m.up,
            })
            .collect();
        if let Some((node, m)) = statuses
            .iter()
            .enumerate()
            .filter(|(_, m)| m.leader)
            .max_by_key(|(_, m)| m.term)
        {
            let seen = (node as u64 + 1, m.term);
            if last != Some(seen) {
                last = Some(seen);
                shared.leaders.lock().expect("leaders").push(LeaderSeen {
                    at_us,
                    node: seen.0,
                    term: seen.1,
                });
            }
        }
        *shared.members.lock().expect("members") = states;
    }
}

struct ClientPlan {
    client: u32,
    period: Duration,
    timeout: Duration,
    mix: [u32; 3],
    keys: u32,
    seed: u64,
    /// Resend a write that got no answer, up to this many times (0: never), as the scenario's
    /// `retry_timed_out_writes` asks.
    resends: u32,
}

async fn client_loop(
    endpoints: Vec<String>,
    plan: ClientPlan,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(plan.seed);
    let options = ConnectOptions::new()
        .with_timeout(plan.timeout)
        .with_connect_timeout(plan.timeout);
    let Ok(mut client) = Client::connect(&endpoints, Some(options)).await else {
        return;
    };
    let mut ticker = tokio::time::interval(plan.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut register = RegisterClient::new(plan.client, plan.mix);
    while !*stop.borrow() {
        ticker.tick().await;
        let key = rng.gen_range(0..plan.keys);
        let pick = rng.gen_range(0..register.total_weight());
        let kind = register.next_op(key, pick);
        let invoke_us = shared.now_us();
        let mut answer = tokio::time::timeout(plan.timeout, perform(&mut client, kind)).await;
        for _ in 0..if kind.is_write() { plan.resends } else { 0 } {
            if matches!(answer, Ok(Ok(_))) {
                break;
            }
            answer = tokio::time::timeout(plan.timeout, perform(&mut client, kind)).await;
        }
        let complete_us = shared.now_us();
        let (outcome, member) = match answer {
            Ok(Ok((outcome, member))) => (outcome, Some(member)),
            // No answer or an error: a write may still commit, so it is unknown; a read simply failed.
            _ => (
                if kind.is_write() {
                    Outcome::Info
                } else {
                    Outcome::Fail
                },
                None,
            ),
        };
        register.learn(kind, &outcome);
        let node = member.and_then(|id| shared.member_names.get(&id).cloned());
        shared.ops.lock().expect("ops").push(Op {
            id: 0,
            client: plan.client,
            kind,
            invoke_us,
            complete_us,
            outcome,
            node,
        });
    }
}

fn key_name(key: u32) -> String {
    format!("k{key}")
}

/// Performs one operation; returns the outcome and the id of the member that answered.
async fn perform(client: &mut Client, kind: OpKind) -> Result<(Outcome, u64), etcd_client::Error> {
    let member = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.member_id());
    Ok(match kind {
        OpKind::Put { key, value } => {
            let r = client.put(key_name(key), value.to_string(), None).await?;
            (
                Outcome::Ok {
                    read: None,
                    swapped: None,
                },
                member(r.header()),
            )
        }
        OpKind::Get { key } => {
            let r = client.get(key_name(key), None).await?;
            let value = r
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok());
            (
                Outcome::Ok {
                    read: Some(value),
                    swapped: None,
                },
                member(r.header()),
            )
        }
        OpKind::Cas { key, expect, new } => {
            let txn = Txn::new()
                .when([Compare::value(
                    key_name(key),
                    CompareOp::Equal,
                    expect.to_string(),
                )])
                .and_then([TxnOp::put(key_name(key), new.to_string(), None)]);
            let r = client.txn(txn).await?;
            (
                Outcome::Ok {
                    read: None,
                    swapped: Some(r.succeeded()),
                },
                member(r.header()),
            )
        }
    })
}
