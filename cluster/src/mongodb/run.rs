//! One real run of a MongoDB scenario against a replica set the user names: the simulator's
//! workload and instruments, spoken through the official driver.
//!
//! Every member gets its own direct connection (`directConnection=true`, retryable writes off, so
//! each outcome is exactly what the server said): a watcher asks each `hello` every 20 ms, writers
//! insert to the primary it saw last, a reader reads the newest document there, and for phased
//! scenarios a heartbeat document and `replSetGetStatus` measure lag. Lost writes are counted
//! exactly: every acknowledged `_id` is looked up on the final primary.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::WriteConcern as DriverWriteConcern;
use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern as DriverReadConcern};
use mongodb::{Client, Collection};
use quorumlab_experiment::fault::{plan_fault, Disruption, Fault, FaultExecutor, NodeState};
use quorumlab_experiment::history::{History, Op, OpKind, Outcome};
use quorumlab_experiment::mongodb::{MongoSettings, ReadConcern, WriteConcern};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::replication::{
    compose_write_id, reduce_lag, write_op, FailoverObservation, LagMethod, LagSample, PROBE_CLIENT,
};
use quorumlab_experiment::replset::{
    primary_changes, summarize, MongoRunSummary, ReplSetObservation,
};
use quorumlab_experiment::{Scenario, System};
use serde::{Deserialize, Serialize};

use super::uri::ReplSetUri;
use crate::lab::Lab;
use crate::run::{carry_out, FiredFault, RunError};

/// The agents' name for each member's `mongod` (its systemd unit, per the Ansible agent role).
pub(super) const MONGOD_UNIT: &str = "mongod";

/// The database the lab's collections live in.
const DATABASE: &str = "quorumlab";

/// One real run of a MongoDB scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MongoRealRun {
    /// The measurements.
    pub summary: MongoRunSummary,
    /// The faults fired.
    pub faults: Vec<FiredFault>,
    /// Every client operation.
    pub history: History,
}

quorumlab_experiment::run_record!(MongoRealRun, MongoRunSummary);

/// A replica set given by `--target` as a fault runner: with no node agents, it can only ask the
/// primary to step down (`replSetStepDown`, through the driver).
pub struct TargetSet;

impl FaultExecutor for TargetSet {
    fn runner(&self) -> &'static str {
        "a replica set given by --target"
    }

    fn supports(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::StepDown { .. } => Ok(()),
            _ => Err("kills and partitions need node agents on the members; with --target only step-down and fault-free scenarios (mongo-stepdown, mongo-lag) run".into()),
        }
    }
}

/// What the run's tasks share.
struct Shared {
    start: Instant,
    members: Vec<Client>,
    primary: Mutex<Option<(NodeId, u64)>>,
    primaries_seen: Mutex<Vec<(u64, NodeId, u64)>>,
    ops: Mutex<Vec<Op>>,
    samples: Mutex<Vec<LagSample>>,
    settings: MongoSettings,
    phases: Vec<quorumlab_experiment::postgres::Phase>,
    run: u64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn primary(&self) -> Option<NodeId> {
        self.primary.lock().expect("lock").map(|(id, _)| id)
    }

    fn collection(&self, id: NodeId) -> Collection<Document> {
        self.members[id.index()]
            .database(DATABASE)
            .collection("ql_writes")
    }

    fn rate_now(&self) -> u64 {
        quorumlab_experiment::postgres::phase_at(&self.phases, self.now_us()).rate_per_s
    }

    fn sample(&self, member: NodeId, method: LagMethod, value: f64) {
        let at = self.now_us();
        let phase = quorumlab_experiment::postgres::phase_at(&self.phases, at)
            .name
            .clone();
        self.samples.lock().expect("lock").push(LagSample {
            phase,
            replica: member.to_string(),
            method,
            value: Some(value),
        });
    }
}

/// A driver's error about `uri` as one line for the user, its password masked wherever it was.
pub(super) fn target_error(uri: &ReplSetUri, what: &str, e: impl std::fmt::Display) -> RunError {
    let reason = quorumlab_experiment::secret::scrub(&e.to_string(), &uri.uri);
    RunError::Target(format!("{} {what}: {reason}", uri.redacted()))
}

/// One direct connection per member, retryable writes off; the set is checked first: reachable,
/// named as the scenario says, with at least as many members as the scenario asks for.
async fn connect(uri: &ReplSetUri, nodes: usize) -> Result<Vec<Client>, RunError> {
    if uri.hosts.len() < nodes {
        return Err(RunError::Target(format!(
            "the scenario asks for {nodes} members, but {} names {}; list every member in the URI",
            uri.redacted(),
            uri.hosts.len()
        )));
    }
    let mut clients = Vec::new();
    for host in &uri.hosts {
        let mut options = ClientOptions::parse(uri.direct(host))
            .await
            .map_err(|e| target_error(uri, "is not a valid URI", e))?;
        options.retry_writes = Some(false);
        options.retry_reads = Some(false);
        options.server_selection_timeout = Some(Duration::from_secs(3));
        options.connect_timeout = Some(Duration::from_secs(3));
        let client =
            Client::with_options(options).map_err(|e| target_error(uri, "cannot be used", e))?;
        clients.push(client);
    }
    let status = clients[0]
        .database("admin")
        .run_command(doc! { "replSetGetStatus": 1 })
        .await
        .map_err(|e| target_error(uri, &format!("is unreachable ({})", uri.hosts[0]), e))?;
    let set = status.get_str("set").unwrap_or_default();
    if set != uri.replica_set {
        return Err(RunError::Target(format!(
            "{} answers as replica set '{set}', not '{}'",
            uri.redacted(),
            uri.replica_set
        )));
    }
    let members = status.get_array("members").map_or(0, Vec::len);
    if members < nodes {
        return Err(RunError::Target(format!(
            "the scenario asks for {nodes} members, but the set at {} has {members}",
            uri.redacted()
        )));
    }
    Ok(clients)
}

/// Runs `scenario` (system `mongodb`) once with write concern `w` against the set at `uri`;
/// only a step-down can be fired (there are no agents).
pub async fn run_on_uri(
    scenario: &Scenario,
    w: WriteConcern,
    run: u64,
    uri: &ReplSetUri,
) -> Result<MongoRealRun, RunError> {
    TargetSet
        .check_faults(&scenario.faults, scenario.chaos.as_ref())
        .map_err(|reason| RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason,
        })?;
    run_on_set(scenario, (w, run), uri, None).await
}

/// One run on the set at `uri`; kills and link faults go through `lab`'s agents (checked by
/// the caller), a step-down through the driver.
pub(super) async fn run_on_set(
    scenario: &Scenario,
    (w, run): (WriteConcern, u64),
    uri: &ReplSetUri,
    lab: Option<&Lab>,
) -> Result<MongoRealRun, RunError> {
    let System::Mongodb(mongo) = &scenario.system else {
        return Err(RunError::Unsupported {
            scenario: scenario.name.clone(),
            reason: "not a mongodb scenario".into(),
        });
    };
    let nodes = scenario.topology.nodes;
    let members = connect(uri, nodes).await?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        members: members.into_iter().take(nodes).collect(),
        primary: Mutex::new(None),
        primaries_seen: Mutex::new(vec![]),
        ops: Mutex::new(vec![]),
        samples: Mutex::new(vec![]),
        settings: mongo.clone(),
        phases: mongo.phases_or(scenario.duration_ms, scenario.workload.rate_per_s),
        run,
    });
    let until = Duration::from_millis(scenario.duration_ms);
    let mut tasks = vec![tokio::spawn(watcher(shared.clone(), until))];
    wait_for_primary(&shared, Duration::from_secs(30)).await?;
    let clients = scenario.workload.clients.clamp(1, 90) as u64;
    let timeout = Duration::from_millis(scenario.workload.timeout_ms);
    for client in 0..clients {
        let task = writer(shared.clone(), (client, clients), w, timeout, until);
        tasks.push(tokio::spawn(task));
    }
    tasks.push(tokio::spawn(reader(shared.clone(), timeout, until)));
    if !mongo.phases.is_empty() {
        tasks.push(tokio::spawn(heartbeat(shared.clone(), until)));
        tasks.push(tokio::spawn(status_sampler(shared.clone(), until)));
    }
    let fired = fire_faults(&shared, scenario, lab).await;
    for task in tasks {
        let _ = task.await;
    }
    let faults = fired?;
    finish(&shared, scenario, w, faults).await
}

async fn wait_for_primary(shared: &Shared, within: Duration) -> Result<NodeId, RunError> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = shared.primary() {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            return Err(RunError::Target(format!(
                "no member answered hello as writable primary within {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The term a primary's `electionId` carries (protocol version 1 puts it in the last 8 bytes).
fn term_of(hello: &Document) -> u64 {
    hello.get_object_id("electionId").map_or(0, |oid| {
        let bytes = oid.bytes();
        u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"))
    })
}

/// `hello` to every member every 20 ms; the writable primary with the newest term is the one to
/// write to, and each change is recorded.
async fn watcher(shared: Arc<Shared>, until: Duration) {
    // It runs 60 s past the workload, so the final primary is known after a late election.
    let until = until + Duration::from_secs(60);
    while shared.start.elapsed() < until {
        let mut newest: Option<(u64, NodeId)> = None;
        for (i, client) in shared.members.iter().enumerate() {
            let admin = client.database("admin");
            let hello = admin.run_command(doc! { "hello": 1 });
            let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(200), hello).await
            else {
                continue;
            };
            if reply.get_bool("isWritablePrimary").unwrap_or(false) {
                newest = newest.max(Some((term_of(&reply), NodeId::from_index(i))));
            }
        }
        if let Some((term, id)) = newest {
            let mut current = shared.primary.lock().expect("lock");
            if current.is_none_or(|(cid, ct)| (cid, ct) != (id, term) && term >= ct) {
                *current = Some((id, term));
                let at = shared.now_us();
                shared
                    .primaries_seen
                    .lock()
                    .expect("lock")
                    .push((at, id, term));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a failed insert means for its outcome: refused before anything was written, or unknown.
fn outcome_of(e: &DriverError) -> Outcome {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } => Outcome::Fail,
        // NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary: refused as sent.
        ErrorKind::Command(c) if [10107, 13435, 13436].contains(&c.code) => Outcome::Fail,
        _ => Outcome::Info,
    }
}

fn driver_write_concern(w: WriteConcern, wtimeout_ms: u64) -> DriverWriteConcern {
    let mut concern = DriverWriteConcern::default();
    concern.w = Some(match w {
        WriteConcern::W1 => Acknowledgment::Nodes(1),
        WriteConcern::Majority => Acknowledgment::Majority,
    });
    if wtimeout_ms > 0 {
        concern.w_timeout = Some(Duration::from_millis(wtimeout_ms));
    }
    concern
}

/// One writer: inserts `{_id, run}` to the watcher's primary at its share of the rate.
async fn writer(
    shared: Arc<Shared>,
    (client, clients): (u64, u64),
    w: WriteConcern,
    timeout: Duration,
    until: Duration,
) {
    let concern = driver_write_concern(w, shared.settings.wtimeout_ms);
    let mut n = 0;
    while shared.start.elapsed() < until {
        let rate = shared.rate_now();
        if rate == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let period = Duration::from_secs_f64(clients as f64 / rate as f64);
        let began = Instant::now();
        n += 1;
        let id = compose_write_id(shared.run, client as u32, n);
        let Some(target) = shared.primary() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let invoke_us = shared.now_us();
        let collection = shared.collection(target);
        let insert = collection
            .insert_one(doc! { "_id": id as i64, "run": shared.run as i64 })
            .write_concern(concern.clone());
        let outcome = match tokio::time::timeout(timeout, insert).await {
            Ok(Ok(_)) => Outcome::Ok {
                read: None,
                swapped: None,
            },
            Ok(Err(e)) => outcome_of(&e),
            Err(_) => Outcome::Info,
        };
        let op = write_op(
            client as u32,
            id,
            (invoke_us, shared.now_us()),
            outcome,
            target.to_string(),
        );
        shared.ops.lock().expect("lock").push(op);
        if let Some(rest) = period.checked_sub(began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// Every 50 ms, the newest document of this run on the primary at the scenario's read concern.
async fn reader(shared: Arc<Shared>, timeout: Duration, until: Duration) {
    let concern = match shared.settings.read_concern {
        ReadConcern::Local => DriverReadConcern::local(),
        ReadConcern::Majority => DriverReadConcern::majority(),
    };
    while shared.start.elapsed() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(target) = shared.primary() else {
            continue;
        };
        let invoke_us = shared.now_us();
        let collection = shared.collection(target);
        let find = collection
            .find_one(doc! { "run": shared.run as i64 })
            .sort(doc! { "_id": -1 })
            .read_concern(concern.clone());
        let Ok(Ok(found)) = tokio::time::timeout(timeout, find).await else {
            continue;
        };
        let id = found.and_then(|d| d.get_i64("_id").ok()).map(|v| v as u64);
        let op = Op {
            id: 0,
            client: PROBE_CLIENT - 1,
            kind: OpKind::Get { key: 0 },
            invoke_us,
            complete_us: shared.now_us(),
            outcome: Outcome::Ok {
                read: Some(id),
                swapped: None,
            },
            node: Some(target.to_string()),
        };
        shared.ops.lock().expect("lock").push(op);
    }
}

/// A heartbeat document on the primary every 100 ms while the phase has writes; each member is
/// polled every 10 ms for the newest it shows, and the first sight of each is its lag.
async fn heartbeat(shared: Arc<Shared>, until: Duration) {
    let mut seq: i64 = 0;
    let mut last_seen = vec![0i64; shared.members.len()];
    let mut next_write = Instant::now();
    let heartbeats = |id: NodeId| {
        shared.members[id.index()]
            .database(DATABASE)
            .collection::<Document>("ql_heartbeat")
    };
    while shared.start.elapsed() < until {
        if Instant::now() >= next_write && shared.rate_now() > 0 {
            next_write = Instant::now() + Duration::from_millis(100);
            if let Some(p) = shared.primary() {
                seq += 1;
                let at = shared.now_us() as i64;
                let doc = doc! { "run": shared.run as i64, "seq": seq, "at_us": at };
                let _ = heartbeats(p).insert_one(doc).await;
            }
        }
        for id in NodeId::all(shared.members.len()) {
            if Some(id) == shared.primary() {
                continue;
            }
            let collection = heartbeats(id);
            let newest = collection
                .find_one(doc! { "run": shared.run as i64 })
                .sort(doc! { "seq": -1 });
            if let Ok(Some(doc)) = newest.await {
                let (s, at) = (
                    doc.get_i64("seq").unwrap_or(0),
                    doc.get_i64("at_us").unwrap_or(0),
                );
                if s > last_seen[id.index()] {
                    last_seen[id.index()] = s;
                    let lag_ms = shared.now_us().saturating_sub(at as u64) as f64 / 1000.0;
                    shared.sample(id, LagMethod::Heartbeat, lag_ms);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn optime_date_ms(member: &Document) -> Option<i64> {
    member
        .get_datetime("optimeDate")
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Every 100 ms, `replSetGetStatus` on every member: the primary's view of each secondary's
/// `optimeDate` behind its own, and each secondary's own `optimeDate`'s age.
async fn status_sampler(shared: Arc<Shared>, until: Duration) {
    while shared.start.elapsed() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (i, client) in shared.members.iter().enumerate() {
            let answering = NodeId::from_index(i);
            let Ok(status) = client
                .database("admin")
                .run_command(doc! { "replSetGetStatus": 1 })
                .await
            else {
                continue;
            };
            let date = status
                .get_datetime("date")
                .map_or(0, |d| d.timestamp_millis());
            let members = status.get_array("members").cloned().unwrap_or_default();
            let docs: Vec<&Document> = members.iter().filter_map(Bson::as_document).collect();
            let me = docs.iter().find(|m| m.get_bool("self").unwrap_or(false));
            let primary = me.is_some_and(|m| m.get_str("stateStr") == Ok("PRIMARY"));
            if primary {
                let own = me.and_then(|m| optime_date_ms(m)).unwrap_or(0);
                for (j, m) in docs.iter().enumerate().filter(|(j, _)| *j != i) {
                    if let Some(d) = optime_date_ms(m) {
                        let behind = (own - d).max(0) as f64;
                        shared.sample(NodeId::from_index(j), LagMethod::OptimeLag, behind);
                    }
                }
            } else if let Some(d) = me.and_then(|m| optime_date_ms(m)) {
                shared.sample(answering, LagMethod::OptimeAge, (date - d).max(0) as f64);
            }
        }
    }
}

/// Fires the scenario's faults on time: a step-down through the driver to the member it names,
/// the rest through `lab`'s agents on the members' `mongod` units.
async fn fire_faults(
    shared: &Shared,
    scenario: &Scenario,
    lab: Option<&Lab>,
) -> Result<Vec<FiredFault>, RunError> {
    let mut fired = Vec::new();
    let mut crashed = vec![false; shared.members.len()];
    for step in &scenario.faults {
        let at = Duration::from_millis(step.at_ms);
        if let Some(wait) = at.checked_sub(shared.start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let primary = *shared.primary.lock().expect("lock");
        let states: Vec<NodeState> = NodeId::all(shared.members.len())
            .map(|id| NodeState {
                term: primary.filter(|(p, _)| *p == id).map_or(0, |(_, t)| t),
                leader: primary.is_some_and(|(p, _)| p == id),
                crashed: crashed[id.index()],
            })
            .collect();
        let plan = plan_fault(&step.fault, &states);
        for disruption in &plan.steps {
            match (*disruption, lab) {
                (
                    Disruption::StepDown {
                        node,
                        step_down_secs,
                        catch_up_secs,
                    },
                    _,
                ) => {
                    let command = doc! {
                        "replSetStepDown": step_down_secs as i64,
                        "secondaryCatchUpPeriodSecs": catch_up_secs as i64,
                    };
                    tracing::info!(fault = ?disruption, target = "replSetStepDown", "fault step");
                    // Its answer (ok, or "no electable secondaries caught up") shows in hello;
                    // a refusal is logged, not an error of the run.
                    let answer = shared.members[node.index()]
                        .database("admin")
                        .run_command(command)
                        .await;
                    if let Err(e) = answer {
                        tracing::info!(node = %node, answer = %e, "step-down not done");
                    }
                }
                (other, Some(lab)) => {
                    match other {
                        Disruption::Kill(id) => crashed[id.index()] = true,
                        Disruption::Start(id) => crashed[id.index()] = false,
                        _ => {}
                    }
                    carry_out(lab, &[other], MONGOD_UNIT).await?;
                }
                (other, None) => unreachable!("{other:?} refused before the run by TargetSet"),
            }
        }
        fired.push(FiredFault {
            at_ms: step.at_ms,
            label: plan.label(&step.fault),
        });
    }
    Ok(fired)
}

/// Measures the run: the final primary's ids of this run decide what survived.
async fn finish(
    shared: &Shared,
    scenario: &Scenario,
    w: WriteConcern,
    faults: Vec<FiredFault>,
) -> Result<MongoRealRun, RunError> {
    let end_us = shared.now_us();
    let final_primary = wait_for_primary(shared, Duration::from_secs(60)).await.ok();
    let mut surviving_ids = BTreeSet::new();
    if let Some(p) = final_primary {
        let mut cursor = shared
            .collection(p)
            .find(doc! { "run": shared.run as i64 })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| RunError::Target(format!("reading back the run's writes: {e}")))?;
        while cursor
            .advance()
            .await
            .map_err(|e| RunError::Target(format!("reading back the run's writes: {e}")))?
        {
            if let Ok(id) = cursor.current().get_i64("_id") {
                surviving_ids.insert(id as u64);
            }
        }
    }
    let fault_at_us = scenario.faults.first().map(|f| f.at_ms * 1000);
    let seen_primaries = shared.primaries_seen.lock().expect("lock").clone();
    let old = fault_at_us.and_then(|f| {
        seen_primaries
            .iter()
            .rev()
            .find(|(at, _, _)| *at < f)
            .map(|(_, id, term)| (*id, *term))
    });
    let (elected_at_us, old_primary_again_at_us) =
        primary_changes(&seen_primaries, fault_at_us, old);
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
        rolled_back_entries: None,
        invariant_violations: vec![],
    };
    let history = History::from_completed(shared.ops.lock().expect("lock").clone());
    let members = scenario.topology.nodes;
    let mut summary = summarize((&scenario.name, w, shared.run, members), &history, &seen);
    if !shared.settings.phases.is_empty() {
        let order: Vec<String> = shared.phases.iter().map(|p| p.name.clone()).collect();
        summary.lag = reduce_lag(&shared.samples.lock().expect("lock"), &order);
    }
    Ok(MongoRealRun {
        summary,
        faults,
        history,
    })
}
