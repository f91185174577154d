//! Running a Postgres scenario for real: a fresh Patroni cluster per run, a write workload through
//! `sqlx`, the scenario's faults through the node agents, and the measurements the simulator
//! makes of the same scenario ([`PgRunSummary`]).
//!
//! Writers insert numbered rows into `ql_writes` on whichever node is primary (found by
//! `pg_is_in_recovery()`), each insert recorded as an operation whose value is the row's id. A
//! prober tries one insert on *every* node every 100 ms, so a second primary is seen even while
//! the writers still use the first. A watcher reads Patroni's leader key in etcd every 20 ms to
//! time detection. With phases (`pg-lag`), a heartbeat row is written every 100 ms and each replica
//! is polled every 10 ms for it, beside samples of `pg_stat_replication` and the replica's replay
//! timestamp. After the run, the ids on the final primary are compared with the acknowledged ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use quorumlab_experiment::fault::{plan_fault, Fault, FaultExecutor, NodeState};
use quorumlab_experiment::history::{History, Op, Outcome};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::{phase_at, Phase, ReplicationMode};
use quorumlab_experiment::replication::{
    compose_write_id, reduce_lag, summarize, write_op, FailoverObservation, LagMethod, LagSample,
    PgRunSummary, PROBE_CLIENT,
};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::system::System;
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use tokio::sync::watch;

use super::lab::{self as postgres, PgNodes, LEADER_KEY};
use super::settings::PatroniSettings;
use crate::lab::{Lab, LabError};
use crate::run::{agent_faults_between, carry_out, check_supported, FiredFault, RealLab, RunError};

/// How often the prober tries every node.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the heartbeat row is written.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How often replicas are polled for the heartbeat.
const HEARTBEAT_POLL: Duration = Duration::from_millis(10);
/// How often the replication views are sampled.
const VIEW_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the leader key is read.
const LEADER_KEY_POLL: Duration = Duration::from_millis(20);

/// One real run of a Postgres scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgRealRun {
    /// The measurements.
    pub summary: PgRunSummary,
    /// The faults fired.
    pub faults: Vec<FiredFault>,
    /// The client history (writers and prober).
    pub history: History,
    /// The faults the agents applied during the run, by kind, as their own `/metrics` count them
    /// (`None` without agents, or when one serves no metrics).
    #[serde(default)]
    pub agent_faults: Option<BTreeMap<String, u64>>,
}

quorumlab_experiment::run_record!(PgRealRun, PgRunSummary);

struct Shared {
    started: Instant,
    ops: Mutex<Vec<Op>>,
    samples: Mutex<Vec<LagSample>>,
    phases: Vec<Phase>,
    db_nodes: usize,
    nodes: PgNodes,
    run: u64,
}

impl Shared {
    /// A run starting now on `nodes`, with the workload's `phases`.
    fn new(nodes: &PgNodes, phases: Vec<Phase>, run: u64) -> Shared {
        Shared {
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            phases,
            db_nodes: nodes.len(),
            nodes: nodes.clone(),
            run,
        }
    }

    /// The client operations so far, in invocation order, numbered.
    fn history(&self) -> History {
        History::from_completed(std::mem::take(&mut *self.ops.lock().expect("ops")))
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The phase running at `at_us`.
    fn phase_at(&self, at_us: u64) -> &Phase {
        phase_at(&self.phases, at_us)
    }

    fn record(&self, op: Op) {
        self.ops.lock().expect("ops").push(op);
    }

    fn sample(&self, replica: NodeId, method: LagMethod, value: Option<f64>) {
        let phase = self.phase_at(self.now_us()).name.clone();
        self.samples.lock().expect("samples").push(LagSample {
            phase,
            replica: replica.to_string(),
            method,
            value,
        });
    }
}

/// Runs `scenario` (system `postgres`) once in `mode` on a fresh cluster in `state_dir`.
pub async fn run_postgres(
    scenario: &Scenario,
    mode: ReplicationMode,
    run_number: u64,
    state_dir: &Path,
    agent_binary: &Path,
) -> Result<PgRealRun, RunError> {
    let System::Postgres(pg) = &scenario.system else {
        return Err(RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason: "not a postgres scenario".into(),
        });
    };
    check_supported(scenario)?;
    let settings = PatroniSettings::from_scenario(pg, mode);
    let replicas = scenario.topology.nodes - 1;
    let lab = postgres::up(state_dir, replicas, &settings, agent_binary).await?;
    let result = run_on_lab(scenario, run_number, &lab).await;
    Lab::down(state_dir)?;
    result
}

/// Runs `scenario` once on a Postgres lab that is already up (in the lab's replication mode);
/// the lab stays up afterwards. Write ids carry `run_number`, so runs can share the table.
pub async fn run_on_lab(
    scenario: &Scenario,
    run_number: u64,
    lab: &Lab,
) -> Result<PgRealRun, RunError> {
    RealLab::of_hosts(lab).await?.check(scenario)?;
    let nodes = PgNodes::of_lab(lab)?;
    let mode = postgres::cluster(lab)?.patroni.mode;
    run_on_nodes(scenario, run_number, nodes, mode, Some(lab)).await
}

/// A cluster given by URLs as a fault runner: there are no node agents, so it carries out none.
struct TargetCluster;

impl FaultExecutor for TargetCluster {
    fn runner(&self) -> &'static str {
        "a cluster given by --target"
    }

    fn supports(&self, _fault: &Fault) -> Result<(), String> {
        Err("faults need the lab's node agents; with --target only fault-free scenarios (pg-lag) run".into())
    }
}

/// Runs `scenario`'s workload and measurements (no faults: there are no agents) against any
/// Postgres cluster given by URLs, e.g. an operator's own primary and replicas. It creates the
/// tables `ql_writes` and `ql_heartbeat` in the database the URLs name.
pub async fn run_on_urls(scenario: &Scenario, urls: &[String]) -> Result<PgRealRun, RunError> {
    TargetCluster
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(|reason| RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason,
        })?;
    let nodes = PgNodes::from_urls(urls)?;
    for id in nodes.ids() {
        let conn = nodes.connect(id, Duration::from_secs(5)).await?;
        let _ = conn.close().await;
    }
    let primary = nodes.wait_for_primary(None, Duration::from_secs(5)).await?;
    let mut conn = nodes.connect(primary, Duration::from_secs(5)).await?;
    let standbys: String =
        sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| LabError::Postgres(format!("asking the primary for its settings: {e}")))?;
    let _ = conn.close().await;
    let mode = if standbys.trim().is_empty() {
        ReplicationMode::Async
    } else {
        ReplicationMode::Sync
    };
    run_on_nodes(scenario, 1, nodes, mode, None).await
}

async fn run_on_nodes(
    scenario: &Scenario,
    run_number: u64,
    nodes: PgNodes,
    mode: ReplicationMode,
    lab: Option<&Lab>,
) -> Result<PgRealRun, RunError> {
    let System::Postgres(pg) = &scenario.system else {
        return Err(RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason: "not a postgres scenario".into(),
        });
    };
    let primary = nodes
        .wait_for_primary(None, Duration::from_secs(30))
        .await?;
    prepare_tables(&nodes, primary).await?;
    let phases = pg.phases_or(scenario.duration_ms, scenario.workload.rate_per_s);
    let shared = Arc::new(Shared::new(&nodes, phases, run_number));
    let measuring_lag = !pg.phases.is_empty();
    let agents_before = match lab {
        Some(lab) => lab.agent_faults().await,
        None => None,
    };
    let (stop_tx, stop) = watch::channel(false);
    let detection = Arc::new(Mutex::new(Detection::default()));
    let mut tasks = spawn_workload(&shared, scenario, primary, measuring_lag, &stop);
    if let Some(lab) = lab {
        let endpoints = lab.endpoints();
        let watch = watch_leader_key(shared.clone(), endpoints, detection.clone(), primary, stop);
        tasks.push(tokio::spawn(watch));
    }
    let fired = fire_faults(lab, scenario, &shared, primary, &detection).await;
    tokio::time::sleep_until((shared.started + Duration::from_millis(scenario.duration_ms)).into())
        .await;
    let end_us = shared.now_us();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let (fired, fault_at_us) = fired?;
    let agent_faults = match lab {
        Some(lab) => agent_faults_between(agents_before, lab.agent_faults().await),
        None => None,
    };
    // Let the cluster settle, then read what survived on whichever node is primary now.
    let new_primary = nodes
        .wait_for_primary(None, Duration::from_secs(scenario.duration_ms / 1000 + 60))
        .await?;
    let detected_at_us = detection.lock().expect("detection").detected_at_us;
    let seen = FailoverObservation {
        fault_at_us,
        old_primary: Some(primary.to_string()),
        new_primary: Some(new_primary.to_string()),
        detected_at_us,
        surviving_ids: surviving_ids(&nodes, new_primary).await?,
        end_us,
    };
    let history = shared.history();
    let mut summary = summarize(
        &scenario.name,
        mode,
        run_number,
        nodes.len(),
        &history,
        &seen,
    );
    if measuring_lag {
        let order: Vec<String> = shared.phases.iter().map(|p| p.name.clone()).collect();
        summary.lag = reduce_lag(&shared.samples.lock().expect("samples"), &order);
    }
    Ok(PgRealRun {
        summary,
        faults: fired,
        history,
        agent_faults,
    })
}

/// The same clients as the simulator's: writers on the tracked primary, an every-node prober
/// and, for phased (lag) scenarios, a heartbeat writer, its watchers and a view sampler.
fn spawn_workload(
    shared: &Arc<Shared>,
    scenario: &Scenario,
    primary: NodeId,
    measuring_lag: bool,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (primary_tx, primary_rx) = watch::channel(primary);
    let clients = scenario
        .workload
        .clients
        .clamp(1, PROBE_CLIENT as usize - 1);
    let timeout = Duration::from_millis(scenario.workload.timeout_ms);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let writer = writer(
            shared.clone(),
            client as u32,
            clients as u64,
            timeout,
            primary_rx.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(writer));
    }
    tasks.push(tokio::spawn(prober(shared.clone(), stop.clone())));
    if measuring_lag {
        let beat = heartbeat(shared.clone(), primary_rx.clone(), stop.clone());
        tasks.push(tokio::spawn(beat));
        tasks.push(tokio::spawn(view_sampler(shared.clone(), stop.clone())));
        for replica in shared.nodes.ids().filter(|&id| id != primary) {
            let watcher = heartbeat_watcher(shared.clone(), replica, stop.clone());
            tasks.push(tokio::spawn(watcher));
        }
    }
    let tracker = track_primary(shared.clone(), primary_tx, stop.clone());
    tasks.push(tokio::spawn(tracker));
    tasks
}

/// Fires the scenario's faults on time through the lab's agents (none without a lab); returns
/// what fired and when the first one did.
async fn fire_faults(
    lab: Option<&Lab>,
    scenario: &Scenario,
    shared: &Shared,
    primary: NodeId,
    detection: &Mutex<Detection>,
) -> Result<(Vec<FiredFault>, Option<u64>), RunError> {
    let Some(lab) = lab else {
        return Ok((Vec::new(), None));
    };
    let (mut fired, mut fault_at_us) = (Vec::new(), None);
    for step in &scenario.faults {
        let at = shared.started + Duration::from_millis(step.at_ms);
        tokio::time::sleep_until(at.into()).await;
        let states: Vec<NodeState> = lab
            .nodes()
            .map(|host| NodeState {
                term: 0,
                leader: host == primary,
                crashed: false,
            })
            .collect();
        let plan = plan_fault(&step.fault, &states);
        fault_at_us.get_or_insert(shared.now_us());
        // A database host crash: Patroni and its Postgres, killed with SIGKILL.
        carry_out(lab, &plan.steps, "patroni").await?;
        detection.lock().expect("detection").armed = true;
        fired.push(FiredFault {
            at_ms: step.at_ms,
            label: plan.label(&step.fault),
        });
    }
    Ok((fired, fault_at_us))
}

async fn prepare_tables(nodes: &PgNodes, primary: NodeId) -> Result<(), LabError> {
    let mut conn = nodes.connect(primary, Duration::from_secs(5)).await?;
    for statement in [
        "CREATE TABLE IF NOT EXISTS ql_writes (id bigint PRIMARY KEY, client int NOT NULL, \
         payload text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        "CREATE TABLE IF NOT EXISTS ql_heartbeat (seq bigint PRIMARY KEY, \
         written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .map_err(|e| LabError::Postgres(format!("creating tables on n{primary}: {e}")))?;
    }
    let _ = conn.close().await;
    Ok(())
}

async fn surviving_ids(nodes: &PgNodes, primary: NodeId) -> Result<BTreeSet<u64>, LabError> {
    let mut conn = nodes.connect(primary, Duration::from_secs(5)).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ql_writes")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| LabError::Postgres(format!("reading ql_writes on n{primary}: {e}")))?;
    let _ = conn.close().await;
    Ok(ids.into_iter().map(|id| id as u64).collect())
}

/// Outcome of one insert: ok, a definite refusal (never applied), or unknown (may have committed).
fn classify(result: Result<Result<(), sqlx::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match result {
        Ok(Ok(())) => Outcome::Ok {
            read: None,
            swapped: None,
        },
        // The server answered with an error (read-only, shutting down): the insert did not commit.
        Ok(Err(sqlx::Error::Database(_))) => Outcome::Fail,
        // The connection broke or the answer never came: the commit may or may not have happened.
        _ => Outcome::Info,
    }
}

async fn insert(
    conn: &mut PgConnection,
    id: u64,
    client: u32,
    payload: &str,
    timeout: Duration,
) -> Outcome {
    classify(
        tokio::time::timeout(
            timeout,
            sqlx::query("INSERT INTO ql_writes (id, client, payload) VALUES ($1, $2, $3)")
                .bind(id as i64)
                .bind(client as i32)
                .bind(payload)
                .execute(&mut *conn),
        )
        .await
        .map(|r| r.map(|_| ())),
    )
}

/// One writer: inserts at its share of the current phase's rate, one at a time, into the node it
/// believes is primary; after a failure it waits for the primary tracker's next answer.
async fn writer(
    shared: Arc<Shared>,
    client: u32,
    clients: u64,
    timeout: Duration,
    mut primary: watch::Receiver<NodeId>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<(NodeId, PgConnection)> = None;
    let mut n: u64 = 0;
    let mut next_at = Instant::now();
    while !*stop.borrow() {
        let phase = shared.phase_at(shared.now_us()).clone();
        if phase.rate_per_s == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.changed() => {}
            }
            next_at = Instant::now();
            continue;
        }
        let period = Duration::from_secs_f64(clients as f64 / phase.rate_per_s as f64);
        next_at = (next_at + period).max(Instant::now() - period);
        tokio::select! {
            _ = tokio::time::sleep_until(next_at.into()) => {}
            _ = stop.changed() => continue,
        }
        let target = *primary.borrow_and_update();
        if conn.as_ref().is_none_or(|(node, _)| *node != target) {
            conn = shared
                .nodes
                .connect(target, timeout)
                .await
                .ok()
                .map(|c| (target, c));
        }
        n += 1;
        let next_id = compose_write_id(shared.run, client, n);
        let payload = Alphanumeric.sample_string(&mut rand::thread_rng(), phase.row_bytes as usize);
        let invoke_us = shared.now_us();
        let outcome = match conn.as_mut() {
            Some((_, c)) => insert(c, next_id, client, &payload, timeout).await,
            None => Outcome::Fail,
        };
        let ok = matches!(outcome, Outcome::Ok { .. });
        shared.record(write_op(
            client,
            next_id,
            (invoke_us, shared.now_us()),
            outcome,
            target.to_string(),
        ));
        if !ok {
            conn = None;
        }
    }
}

/// Follows the primary: asks every node `pg_is_in_recovery()` every 100 ms (over kept
/// connections) and publishes the node that says no (the lowest-numbered one if two do, which is
/// itself a split brain).
async fn track_primary(
    shared: Arc<Shared>,
    primary: watch::Sender<NodeId>,
    stop: watch::Receiver<bool>,
) {
    let mut probe = shared.nodes.role_probe();
    while !*stop.borrow() {
        for i in shared.nodes.ids() {
            if probe.is_primary(i, Duration::from_millis(300)).await {
                primary.send_if_modified(|p| std::mem::replace(p, i) != i);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probe.close().await;
}

/// Tries one insert on every node every 100 ms (not in idle phases), keeping a connection per node.
async fn prober(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = PROBE_CLIENT;
    let timeout = Duration::from_millis(500);
    let mut conns: Vec<Option<PgConnection>> = (0..shared.db_nodes).map(|_| None).collect();
    let mut n = 0;
    while !*stop.borrow() {
        tokio::time::sleep(PROBE_INTERVAL).await;
        // An idle phase stays idle: no writes at all, or the views could not be seen to mislead.
        if shared.phase_at(shared.now_us()).rate_per_s == 0 {
            continue;
        }
        for i in shared.nodes.ids() {
            if conns[i.index()].is_none() {
                conns[i.index()] = shared.nodes.connect(i, timeout).await.ok();
            }
            let Some(conn) = conns[i.index()].as_mut() else {
                continue;
            };
            n += 1;
            let next_id = compose_write_id(shared.run, client, n);
            let invoke_us = shared.now_us();
            let outcome = insert(conn, next_id, client, "probe", timeout).await;
            match outcome {
                Outcome::Ok { .. } => shared.record(write_op(
                    client,
                    next_id,
                    (invoke_us, shared.now_us()),
                    outcome,
                    i.to_string(),
                )),
                // A replica refusing a write is the normal case; only a broken link is news.
                Outcome::Fail => {}
                Outcome::Info => conns[i.index()] = None,
            }
        }
    }
}

/// When the leader key was seen lost, once the fault has armed the watcher.
#[derive(Debug, Default)]
struct Detection {
    armed: bool,
    detected_at_us: Option<u64>,
}

/// Reads Patroni's leader key every 20 ms; once the fault has fired, records when the key is
/// first gone or names another member.
async fn watch_leader_key(
    shared: Arc<Shared>,
    endpoints: Vec<String>,
    detection: Arc<Mutex<Detection>>,
    primary: NodeId,
    stop: watch::Receiver<bool>,
) {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(500));
    let mut client: Option<Client> = None;
    let holder = primary.to_string();
    while !*stop.borrow() {
        tokio::time::sleep(LEADER_KEY_POLL).await;
        let waiting = {
            let d = detection.lock().expect("detection");
            d.armed && d.detected_at_us.is_none()
        };
        if !waiting {
            continue;
        }
        if client.is_none() {
            client = Client::connect(&endpoints, Some(options.clone()))
                .await
                .ok();
        }
        let Some(c) = client.as_mut() else { continue };
        match c.get(LEADER_KEY, None).await {
            Ok(answer) => {
                let value = answer.kvs().first().map(|kv| kv.value().to_vec());
                if value.as_deref() != Some(holder.as_bytes()) {
                    let at = shared.now_us();
                    detection
                        .lock()
                        .expect("detection")
                        .detected_at_us
                        .get_or_insert(at);
                }
            }
            Err(_) => client = None,
        }
    }
}

/// Writes the heartbeat row every 100 ms while the phase has writes (an idle primary stays idle).
async fn heartbeat(
    shared: Arc<Shared>,
    primary: watch::Receiver<NodeId>,
    stop: watch::Receiver<bool>,
) {
    let mut conn: Option<(NodeId, PgConnection)> = None;
    let mut seq = compose_write_id(shared.run, 0, 0) as i64;
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    while !*stop.borrow() {
        ticker.tick().await;
        if shared.phase_at(shared.now_us()).rate_per_s == 0 {
            continue;
        }
        let target = *primary.borrow();
        if conn.as_ref().is_none_or(|(node, _)| *node != target) {
            conn = shared
                .nodes
                .connect(target, Duration::from_secs(1))
                .await
                .ok()
                .map(|c| (target, c));
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        seq += 1;
        if sqlx::query("INSERT INTO ql_heartbeat (seq) VALUES ($1)")
            .bind(seq)
            .execute(&mut *c)
            .await
            .is_err()
        {
            conn = None;
        }
    }
}

/// Polls one replica every 10 ms for heartbeat rows it has not shown before; each row's lag is
/// the replica's clock at first sight minus the primary's at write (one machine, one clock).
async fn heartbeat_watcher(shared: Arc<Shared>, replica: NodeId, stop: watch::Receiver<bool>) {
    let mut conn: Option<PgConnection> = None;
    let mut last_seen = compose_write_id(shared.run, 0, 0) as i64;
    while !*stop.borrow() {
        tokio::time::sleep(HEARTBEAT_POLL).await;
        if conn.is_none() {
            conn = shared
                .nodes
                .connect(replica, Duration::from_secs(1))
                .await
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let rows = sqlx::query(
            "SELECT seq, (extract(epoch FROM clock_timestamp() - written_at) * 1000)::float8 \
             FROM ql_heartbeat WHERE seq > $1 ORDER BY seq",
        )
        .bind(last_seen)
        .fetch_all(&mut *c)
        .await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    last_seen = row.get(0);
                    let lag: f64 = row.get(1);
                    shared.sample(replica, LagMethod::Heartbeat, Some(lag.max(0.0)));
                }
            }
            Err(_) => conn = None,
        }
    }
}

/// Samples `pg_stat_replication` on the primary and the replay timestamp's age on each replica.
async fn view_sampler(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut conns: Vec<Option<PgConnection>> = (0..shared.db_nodes).map(|_| None).collect();
    let mut ticker = tokio::time::interval(VIEW_SAMPLE_INTERVAL);
    while !*stop.borrow() {
        ticker.tick().await;
        for i in shared.nodes.ids() {
            if conns[i.index()].is_none() {
                conns[i.index()] = shared.nodes.connect(i, Duration::from_secs(1)).await.ok();
            }
            let Some(c) = conns[i.index()].as_mut() else {
                continue;
            };
            let in_recovery: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut *c)
                .await;
            let sampled = match in_recovery {
                Ok(false) => sample_stat_replication(&shared, c).await,
                Ok(true) => sqlx::query_scalar::<_, Option<f64>>(
                    "SELECT (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8",
                )
                .fetch_one(&mut *c)
                .await
                .map(|age| shared.sample(i, LagMethod::ReplayAge, age)),
                Err(e) => Err(e),
            };
            if sampled.is_err() {
                conns[i.index()] = None;
            }
        }
    }
}

async fn sample_stat_replication(
    shared: &Shared,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    let ms = |column: &str| format!("(extract(epoch FROM {column}) * 1000)::float8");
    let rows = sqlx::query(&format!(
        "SELECT application_name, {}, {}, {}, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 FROM pg_stat_replication",
        ms("write_lag"),
        ms("flush_lag"),
        ms("replay_lag")
    ))
    .fetch_all(conn)
    .await?;
    for row in rows {
        let name: String = row.get(0);
        let Ok(replica) = name.parse::<NodeId>() else {
            continue;
        };
        for (column, method) in [
            (1, LagMethod::WriteLag),
            (2, LagMethod::FlushLag),
            (3, LagMethod::ReplayLag),
            (4, LagMethod::Bytes),
        ] {
            let value: Option<f64> = row.get(column);
            shared.sample(replica, method, value);
        }
    }
    Ok(())
}
