//! A sharded scenario on a real lab: the same file the simulator runs, on Postgres shards with
//! the chunk map in etcd, measured into the simulator's [`ShardedRunSummary`].
//!
//! Each chunk starts with `chunk_bytes` of preloaded documents, as in the simulator. The
//! scenario's clients insert and read through its routers (client `c` uses router `c %
//! routers`, each router on its own host when the lab has router hosts) at the scenario's rate
//! and mix; every read is checked as the simulator checks them (nothing acknowledged before it
//! missed, no orphan or repeat returned). The balancer takes the simulator's policy
//! ([`BalancerPolicy::next_move`], seeded by the run number) and moves one chunk at a time until
//! the workload ends; a committed move's donor copy is range-deleted `range_deletion_delay_ms`
//! later, between moves (the balancer's task does both, one at a time). A step fault kills an
//! end's Postgres as the move reaches its step, starts it again `for_ms` later and recovers the
//! move ([`recover`]), or cuts the first router's host off for `for_ms`. Afterwards every
//! chunk's owner (by the map) is read: an acknowledged id that no owner holds is lost, and a shard
//! that still claims a chunk the map gives to another breaks the one-owner invariant.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorumlab_experiment::history::{History, Op, OpKind, Outcome};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::rebalance::{
    summarize, MigrationOutcome, MigrationRecord, OrphanSpan, ReadRecord, ShardedObservation,
    ShardedRunSummary,
};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::sharded::{MigrationStep, ShardedSettings, StepFaultKind};
use quorumlab_experiment::system::System;
use quorumlab_proto::agent::Action;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::oneshot;

use super::lab::{self as sharded, chunk_table, connect, shard_host};
use super::map::ChunkMap;
use super::mover::{
    delete_range, move_chunk, recover, MoveEnd, MoveHooks, MoveLimits, MoveOutcome, MoveReport,
    Strike,
};
use super::router::{point_of, Router, RouterOptions, WriteOutcome};
use super::status::pg;
use crate::lab::{Lab, LabError};
use crate::netns::NamespaceRuntime;
use crate::run::{FiredFault, RunError};

/// After the workload: the longest wait for a pending range deletion before the end is read.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a failed move's ends have to come back before its recovery gives up.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// One real run of a sharded scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealShardedRun {
    /// The measurements, as the simulator makes them.
    pub summary: ShardedRunSummary,
    /// Every migration, timed from the workload's start (as the simulator records them).
    pub migrations: Vec<MigrationRecord>,
    /// Every move, as the mover reported it.
    pub moves: Vec<MoveReport>,
    /// Every client write.
    pub history: History,
    /// The step faults as they were carried out (kills, restarts, cuts, heals), in order.
    #[serde(default)]
    pub faults: Vec<FiredFault>,
}

quorumlab_experiment::run_record!(RealShardedRun, ShardedRunSummary);

/// What a real sharded run cannot do yet, in one line each; `None` when it can run `scenario`.
pub fn unsupported(scenario: &Scenario, settings: &ShardedSettings) -> Option<String> {
    if !scenario.faults.is_empty() || scenario.chaos.is_some() {
        return Some("timed faults are not run on real shards yet (step faults are)".into());
    }
    if settings.growth_replay.is_some() {
        return Some("a growth replay runs in the simulator only".into());
    }
    settings
        .step_faults
        .iter()
        .find(|f| f.kind == StepFaultKind::IsolateDonorFromConfig)
        .map(|f| {
            format!(
                "the step fault \"{}\" runs in the simulator only: a real donor never talks to the \
                 config store (the driver commits the move)",
                f.kind
            )
        })
}

/// Runs `scenario` once on a fresh sharded lab in `state_dir`, then takes the lab down.
pub async fn run_sharded_real(
    scenario: &Scenario,
    run_number: u64,
    state_dir: &Path,
    agent_binary: &Path,
) -> Result<RealShardedRun, RunError> {
    let System::Sharded(settings) = &scenario.system else {
        return Err(unsupported_error(scenario, "not a sharded scenario".into()));
    };
    if let Some(why) = unsupported(scenario, settings) {
        return Err(unsupported_error(scenario, why));
    }
    let layout = sharded::Layout {
        shards: settings.shards + settings.new_shards,
        empty: settings.new_shards,
        chunks: settings.chunks,
        routers: settings.routers,
    };
    let lab = sharded::up(state_dir, layout, agent_binary).await?;
    let result = run_on_lab(scenario, settings, run_number, &lab).await;
    Lab::down(state_dir)?;
    Ok(result?)
}

fn unsupported_error(scenario: &Scenario, reason: String) -> RunError {
    RunError::Unsupported {
        scenario: scenario.name.clone(),
        reason,
    }
}

/// Runs `scenario` once on a sharded lab that is up and fresh.
pub async fn run_on_lab(
    scenario: &Scenario,
    settings: &ShardedSettings,
    run_number: u64,
    lab: &Lab,
) -> Result<RealShardedRun, LabError> {
    let w = &scenario.workload;
    let options = RouterOptions {
        retries: settings.router_retries,
        write_timeout: Duration::from_millis(w.timeout_ms),
        ..RouterOptions::default()
    };
    let router_hosts = sharded::cluster(lab)?.router_hosts.clone();
    let cuts_router = settings
        .step_faults
        .iter()
        .any(|f| f.kind == StepFaultKind::IsolateRouter);
    if cuts_router && router_hosts.is_empty() {
        return Err(LabError::Settings(format!(
            "{}: cutting a router off needs routers on hosts of their own, and the lab in {} has none (bring it up again)",
            scenario.name,
            lab.state_dir.display()
        )));
    }
    preload(lab, settings).await?;
    let plan = ClientPlan::of(scenario, settings.routers.max(1), run_number);
    let mut routers = Routers::start(lab, &router_hosts, options, plan).await?;
    let start = Instant::now();
    let until = start + Duration::from_millis(scenario.duration_ms);
    routers.go((start, until));
    let balanced = balance(lab, settings, run_number, (start, until)).await;
    let routed = routers.finish().await;
    let mut balanced = balanced?;
    balanced.finish_heals().await?;
    let routed = routed?;
    balanced.finish_range_deletions(lab, start).await;
    let history = History { ops: routed.ops };
    let migrations = balanced.migrations.clone();
    let seen = observe(
        lab,
        (routed.stale_retries, routed.reads),
        &history,
        balanced.migrations,
        balanced.orphans,
    )
    .await?;
    let summary = summarize(&scenario.name, run_number, &history, &seen);
    Ok(RealShardedRun {
        summary,
        migrations,
        moves: balanced.moves,
        history,
        faults: balanced.fired,
    })
}

/// Fills every chunk with `chunk_bytes` of documents of `doc_bytes` each, on its owner, as the
/// simulator's chunks start (ids below 1, so they are never taken for the workload's).
async fn preload(lab: &Lab, settings: &ShardedSettings) -> Result<(), LabError> {
    let table = ChunkMap::connect(lab)
        .await?
        .read(settings.chunks)
        .await?
        .table;
    let doc_bytes = settings.doc_bytes.max(32);
    let docs = settings.chunk_bytes / doc_bytes;
    // A row's header, id and key take about 40 of a document's bytes; the text takes the rest.
    let pad = doc_bytes.saturating_sub(40);
    for (chunk, entry) in table.iter().enumerate() {
        let mut conn = connect(lab, entry.shard, Duration::from_secs(5)).await?;
        let sql = format!(
            "INSERT INTO {} (id, key, doc) SELECT -g - {offset}, 0, repeat('x', {pad}) FROM generate_series(0, {last}) g",
            chunk_table(chunk as u32),
            offset = chunk as u64 * docs,
            last = docs.saturating_sub(1),
        );
        sqlx::query(&sql).execute(&mut conn).await.map_err(|e| {
            LabError::Postgres(format!(
                "preloading chunk {chunk}: {}",
                crate::postgres::lab::one_line(&e.to_string())
            ))
        })?;
    }
    Ok(())
}

/// How the scenario's clients write and read: client `c` through router `c % routers`, each at
/// its share of the rate, an insert or a read by the scenario's mix (as the simulator's
/// clients choose: half the reads broadcast to every shard, half targeted at the owner).
#[derive(Debug, Clone, Copy)]
struct ClientPlan {
    clients: u64,
    routers: u64,
    period: Duration,
    keys: u32,
    /// Inserts and reads in the mix (a compare-and-set counts as an insert here).
    mix: [u32; 2],
    run_number: u64,
}

impl ClientPlan {
    fn of(scenario: &Scenario, routers: usize, run_number: u64) -> ClientPlan {
        let w = &scenario.workload;
        let clients = w.clients.max(1) as u64;
        ClientPlan {
            clients,
            routers: routers as u64,
            period: Duration::from_micros(1_000_000 * clients / w.rate_per_s.max(1)),
            keys: w.keys.max(1),
            mix: [(w.put + w.cas).max(1), w.get],
            run_number,
        }
    }

    /// The clients that write through router `router`.
    fn clients_of(&self, router: usize) -> impl Iterator<Item = u64> + '_ {
        (0..self.clients).filter(move |c| c % self.routers == router as u64)
    }
}

/// Client `c`: an insert or a read through `router` every `period` until `until`.
async fn client(
    router: Arc<Router>,
    plan: ClientPlan,
    c: u64,
    (start, until): (Instant, Instant),
) -> Routed {
    let mut rng = SmallRng::seed_from_u64(plan.run_number << 16 | c);
    let mut ticker = tokio::time::interval(plan.period);
    let mut done = Routed::default();
    let [puts, gets] = plan.mix;
    for seq in 1.. {
        ticker.tick().await;
        if Instant::now() >= until {
            break;
        }
        let key = rng.gen_range(0..plan.keys);
        if rng.gen_range(0..puts + gets) < puts {
            let id = (c << 40) | seq;
            done.ops
                .push(write(&router, c as u32, (id, key), start).await);
        } else {
            let broadcast = rng.gen_bool(0.5);
            done.reads
                .push(read(&router, c as u32, key, broadcast, start).await);
        }
    }
    done
}

/// One read through `router`, as the simulator records reads.
async fn read(
    router: &Router,
    client: u32,
    key: u32,
    broadcast: bool,
    start: Instant,
) -> ReadRecord {
    let invoke_us = start.elapsed().as_micros() as u64;
    let ids = router.read(u64::from(key), broadcast).await;
    ReadRecord {
        client,
        key,
        broadcast,
        invoke_us,
        complete_us: start.elapsed().as_micros() as u64,
        ids,
    }
}

/// What the routers' clients did.
#[derive(Debug, Default)]
struct Routed {
    ops: Vec<Op>,
    reads: Vec<ReadRecord>,
    stale_retries: u64,
}

/// The run's routers, each with its clients, started and waiting for the workload's window.
/// A router runs on its own host (in that host's namespace, so a cut there cuts it) when the
/// lab gave it one, else in the driver's.
struct Routers {
    /// Keeps the routers' namespace runtimes alive until their tasks are done.
    runtimes: Vec<NamespaceRuntime>,
    tasks: Vec<tokio::task::JoinHandle<Result<Routed, LabError>>>,
    go: Vec<oneshot::Sender<(Instant, Instant)>>,
}

impl Routers {
    async fn start(
        lab: &Lab,
        hosts: &[NodeId],
        options: RouterOptions,
        plan: ClientPlan,
    ) -> Result<Routers, LabError> {
        let mut routers = Routers {
            runtimes: Vec::new(),
            tasks: Vec::new(),
            go: Vec::new(),
        };
        let mut ready = Vec::new();
        for r in 0..plan.routers as usize {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (go_tx, go_rx) = oneshot::channel();
            let side = router_side(lab.clone(), options, plan, r, (ready_tx, go_rx));
            let namespace = hosts
                .get(r)
                .and_then(|&host| Some(lab.net.as_ref()?.namespace(host)));
            let task = match namespace {
                Some(namespace) => {
                    let runtime =
                        NamespaceRuntime::start(&namespace).map_err(LabError::Settings)?;
                    let task = runtime.spawn(side);
                    routers.runtimes.push(runtime);
                    task
                }
                None => tokio::spawn(side),
            };
            routers.tasks.push(task);
            routers.go.push(go_tx);
            ready.push(ready_rx);
        }
        for (r, ready) in ready.into_iter().enumerate() {
            if ready.await.is_err() {
                // The router's task ended before it was ready: its error says why.
                let task = routers.tasks.remove(r);
                return Err(match task.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => LabError::Timeout(format!("router r{} stopped", r + 1)),
                    Err(e) => LabError::Timeout(format!("router r{}: {e}", r + 1)),
                });
            }
        }
        Ok(routers)
    }

    /// Lets every router's clients start writing, within `window`.
    fn go(&mut self, window: (Instant, Instant)) {
        for go in self.go.drain(..) {
            let _ = go.send(window);
        }
    }

    /// Waits for every client, and stops the routers.
    async fn finish(self) -> Result<Routed, LabError> {
        let mut all = Routed::default();
        for task in self.tasks {
            let routed = task
                .await
                .map_err(|e| LabError::Timeout(format!("a router's task: {e}")))??;
            all.ops.extend(routed.ops);
            all.reads.extend(routed.reads);
            all.stale_retries += routed.stale_retries;
        }
        // Client by client, each in its own order (a stable sort), as one task per client
        // would have listed them.
        all.ops.sort_by_key(|op| op.client);
        drop(self.runtimes);
        Ok(all)
    }
}

/// Router `r` and its clients: starts the router, says it is ready, waits for the window, runs
/// the clients through it and stops it (on the runtime it ran on, so its connections close
/// there).
async fn router_side(
    lab: Lab,
    options: RouterOptions,
    plan: ClientPlan,
    r: usize,
    (ready, go): (oneshot::Sender<()>, oneshot::Receiver<(Instant, Instant)>),
) -> Result<Routed, LabError> {
    let router = Arc::new(Router::start(&lab, options).await?);
    let _ = ready.send(());
    let Ok(window) = go.await else {
        return Ok(Routed::default());
    };
    let clients: Vec<_> = plan
        .clients_of(r)
        .map(|c| tokio::spawn(client(router.clone(), plan, c, window)))
        .collect();
    let mut routed = Routed::default();
    for c in clients {
        let done = c
            .await
            .map_err(|e| LabError::Timeout(format!("a client of router r{}: {e}", r + 1)))?;
        routed.ops.extend(done.ops);
        routed.reads.extend(done.reads);
    }
    routed.stale_retries = router.stats.stale_retries.load(Ordering::Relaxed);
    Ok(routed)
}

/// One insert through `router`, as a history operation (its value is the row's id).
async fn write(router: &Router, client: u32, (id, key): (u64, u32), start: Instant) -> Op {
    let invoke_us = start.elapsed().as_micros() as u64;
    let (outcome, node) = match router.insert(id, u64::from(key)).await {
        WriteOutcome::Ok { shard, .. } => (
            Outcome::Ok {
                read: None,
                swapped: None,
            },
            Some(format!("s{}", shard + 1)),
        ),
        WriteOutcome::Fail(_) => (Outcome::Fail, None),
        WriteOutcome::Unknown(_) => (Outcome::Info, None),
    };
    Op {
        id,
        client,
        kind: OpKind::Put { key, value: id },
        invoke_us,
        complete_us: start.elapsed().as_micros() as u64,
        outcome,
        node,
    }
}

/// What the balancer did.
struct Balanced {
    migrations: Vec<MigrationRecord>,
    moves: Vec<MoveReport>,
    orphans: Vec<OrphanSpan>,
    /// Range deletions not yet done: (when due, index into `orphans`), in order.
    deletions: Vec<(Instant, usize)>,
    /// Cut hosts, each healed by its task when its step fault's `for_ms` is up (with what to
    /// call it then).
    heals: Vec<(String, tokio::task::JoinHandle<Result<Instant, LabError>>)>,
    /// The step faults carried out so far.
    fired: Vec<FiredFault>,
    /// When the workload started.
    start: Instant,
}

impl Balanced {
    /// Carries out the range deletions due by now, timing each.
    async fn delete_due_ranges(&mut self, lab: &Lab, start: Instant) {
        while let Some(&(due, i)) = self.deletions.first() {
            if due > Instant::now() {
                return;
            }
            self.deletions.remove(0);
            let (shard, chunk) = (self.orphans[i].shard, self.orphans[i].chunk);
            // A deletion that fails (the shard down) leaves the orphan counted as left.
            if let Ok(rows) = delete_range(lab, shard, chunk).await {
                let at = start.elapsed().as_micros() as u64;
                self.orphans[i].deleted_us = (rows > 0).then_some(at);
            }
        }
    }

    /// After the workload: the range deletions due within [`SETTLE`], each at its time.
    async fn finish_range_deletions(&mut self, lab: &Lab, start: Instant) {
        let deadline = Instant::now() + SETTLE;
        while let Some(&(due, _)) = self.deletions.first() {
            if due > deadline {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
            self.delete_due_ranges(lab, start).await;
        }
    }
}

/// The balancer: one move at a time, by the scenario's policy, until `until`.
async fn balance(
    lab: &Lab,
    settings: &ShardedSettings,
    run_number: u64,
    (start, until): (Instant, Instant),
) -> Result<Balanced, LabError> {
    let mut map = ChunkMap::connect(lab).await?;
    let mut rng = SmallRng::seed_from_u64(run_number);
    let shards = settings.shards + settings.new_shards;
    let interval = Duration::from_millis(settings.balancer_interval_ms);
    let mut done = Balanced {
        migrations: Vec::new(),
        moves: Vec::new(),
        orphans: Vec::new(),
        deletions: Vec::new(),
        heals: Vec::new(),
        fired: Vec::new(),
        start,
    };
    let router_hosts = sharded::cluster(lab)?.router_hosts.clone();
    loop {
        tokio::time::sleep(interval).await;
        done.delete_due_ranges(lab, start).await;
        if Instant::now() >= until {
            return Ok(done);
        }
        let table = map.read(settings.chunks).await?.table;
        let pick = settings.balancer.next_move(
            &table,
            shards,
            settings.imbalance_chunks,
            &mut |lo, hi| rng.gen_range(lo..hi),
        );
        let Some((chunk, to)) = pick else { continue };
        let number = done.moves.len() as u64 + 1;
        let mut hooks = MoveHooks {
            strike_at: strike_at(settings, number, &router_hosts),
            ..MoveHooks::default()
        };
        let report = move_chunk(
            lab,
            &mut map,
            chunk,
            to,
            number,
            MoveLimits::default(),
            &mut hooks,
        )
        .await?;
        if let Some((shard, at)) = hooks.killed {
            done.fire(at, format!("kill s{}'s Postgres", shard + 1));
        }
        if let Some(restarted) = settle_kill(lab, &mut map, settings, &report, &hooks).await? {
            let shard = hooks.killed.map_or(0, |(shard, _)| shard);
            done.fire(restarted, format!("restart s{}'s Postgres", shard + 1));
        }
        if let Some((host, cut_at)) = hooks.isolated {
            let router = router_hosts.iter().position(|&h| h == host).unwrap_or(0) + 1;
            done.fire(cut_at, format!("cut r{router} ({host}) off"));
            let heal_at = cut_at + Duration::from_millis(for_ms(settings, number));
            let task = tokio::spawn(heal(lab.clone(), host, heal_at));
            done.heals.push((format!("heal r{router} ({host})"), task));
        }
        done.record(settings, &report, &hooks, start);
    }
}

/// The strike the scenario's step faults ask for in move `number` (the first router is the
/// first of `router_hosts`).
fn strike_at(
    settings: &ShardedSettings,
    number: u64,
    router_hosts: &[NodeId],
) -> Option<(MigrationStep, Strike)> {
    let fault = settings
        .step_faults
        .iter()
        .find(|f| f.migration == number)?;
    let strike = match fault.kind {
        StepFaultKind::CrashDonor => Strike::Kill(MoveEnd::Donor),
        StepFaultKind::CrashRecipient => Strike::Kill(MoveEnd::Recipient),
        StepFaultKind::IsolateRouter => Strike::Isolate(*router_hosts.first()?),
        StepFaultKind::IsolateDonorFromConfig => return None,
    };
    Some((fault.at, strike))
}

/// How long move `number`'s step fault lasts.
fn for_ms(settings: &ShardedSettings, number: u64) -> u64 {
    settings
        .step_faults
        .iter()
        .find(|f| f.migration == number)
        .map_or(0, |f| f.for_ms)
}

/// Heals every link of `host` at `at`; returns when it was done.
async fn heal(lab: Lab, host: NodeId, at: Instant) -> Result<Instant, LabError> {
    tokio::time::sleep_until(at.into()).await;
    lab.cut_off(host, false).await?;
    Ok(Instant::now())
}

/// After a move whose end was killed: starts it again `for_ms` after the kill, then recovers the
/// move so that the chunk has exactly the owner the map names. Returns when it was started.
async fn settle_kill(
    lab: &Lab,
    map: &mut ChunkMap,
    settings: &ShardedSettings,
    report: &MoveReport,
    hooks: &MoveHooks,
) -> Result<Option<Instant>, LabError> {
    let Some((shard, killed_at)) = hooks.killed else {
        return Ok(None);
    };
    let for_ms = for_ms(settings, report.move_id);
    tokio::time::sleep_until((killed_at + Duration::from_millis(for_ms)).into()).await;
    lab.signal(shard_host(shard), "postgres", Action::Start)
        .await?;
    let restarted = Instant::now();
    recover(lab, map, report, RECOVERY_LIMIT).await?;
    Ok(Some(restarted))
}

impl Balanced {
    /// Notes a step fault carried out at `at`.
    fn fire(&mut self, at: Instant, label: String) {
        let at_ms = at.saturating_duration_since(self.start).as_millis() as u64;
        tracing::info!(fault = %label, at_ms, "fault step");
        self.fired.push(FiredFault { at_ms, label });
    }

    /// Waits until every cut host is healed.
    async fn finish_heals(&mut self) -> Result<(), LabError> {
        for (label, heal) in std::mem::take(&mut self.heals) {
            let healed = heal
                .await
                .map_err(|e| LabError::Timeout(format!("{label}: {e}")))??;
            self.fire(healed, label);
        }
        self.fired.sort_by_key(|f| f.at_ms);
        Ok(())
    }

    /// Records a finished move: its migration record, and for a committed one the donor's copy
    /// as an orphan with its range deletion scheduled.
    fn record(
        &mut self,
        settings: &ShardedSettings,
        report: &MoveReport,
        hooks: &MoveHooks,
        start: Instant,
    ) {
        let us = |at: Instant| at.saturating_duration_since(start).as_micros() as u64;
        let started = hooks.when(MigrationStep::Clone).unwrap_or(start);
        let ended_us = us(started) + report.total_ms * 1000;
        let critical_from_us = hooks.when(MigrationStep::CriticalSection).map(us);
        let committed = report.outcome == MoveOutcome::Committed;
        let critical_to_us = critical_from_us.map(|from| match committed {
            true => from + report.critical_ms * 1000,
            false => ended_us,
        });
        let why = match &report.outcome {
            MoveOutcome::Committed => None,
            MoveOutcome::Aborted(why) | MoveOutcome::InDoubt(why) => Some(why.clone()),
        };
        tracing::info!(
            chunk = report.chunk,
            donor = %format!("s{}", report.from + 1),
            recipient = %format!("s{}", report.to + 1),
            committed,
            total_ms = report.total_ms,
            critical_ms = report.critical_ms,
            bytes = report.bytes,
            why = why.as_deref().unwrap_or(""),
            "chunk move {}", report.move_id
        );
        self.migrations.push(MigrationRecord {
            number: report.move_id,
            chunk: report.chunk,
            from: report.from,
            to: report.to,
            started_us: us(started),
            critical_from_us,
            critical_to_us,
            ended_us: Some(ended_us),
            outcome: match committed {
                true => MigrationOutcome::Committed,
                false => MigrationOutcome::Aborted,
            },
            bytes: report.bytes,
            why,
        });
        if committed {
            self.schedule_range_deletion(settings, report, ended_us);
        }
        self.moves.push(report.clone());
    }

    fn schedule_range_deletion(
        &mut self,
        settings: &ShardedSettings,
        report: &MoveReport,
        from_us: u64,
    ) {
        self.orphans.push(OrphanSpan {
            shard: report.from,
            chunk: report.chunk,
            docs: report.rows,
            from_us,
            deleted_us: None,
        });
        let due = Instant::now() + Duration::from_millis(settings.range_deletion_delay_ms);
        self.deletions.push((due, self.orphans.len() - 1));
    }
}

/// The end state, read from every shard against the map, with what the routers counted.
async fn observe(
    lab: &Lab,
    (stale_config_retries, reads): (u64, Vec<ReadRecord>),
    history: &History,
    migrations: Vec<MigrationRecord>,
    orphans: Vec<OrphanSpan>,
) -> Result<ShardedObservation, LabError> {
    let chunks = sharded::cluster(lab)?.chunks;
    let table = ChunkMap::connect(lab).await?.read(chunks).await?.table;
    let mut seen = ShardedObservation {
        migrations,
        orphans,
        stale_config_retries,
        reads,
        ..ShardedObservation::default()
    };
    for shard in 0..sharded::cluster(lab)?.shards {
        let claims = shard_claims(lab, shard, chunks).await?;
        for (chunk, ids) in claims {
            let owner = table[chunk as usize].shard;
            if owner != shard {
                seen.invariant_violations.push(format!(
                    "s{} claims chunk {chunk}, which the map gives to s{}",
                    shard + 1,
                    owner + 1
                ));
                seen.doubly_owned.extend(ids);
                continue;
            }
            for id in ids {
                seen.owned_ids.insert(id, shard);
            }
        }
    }
    let bounds = sharded::cluster(lab)?.bounds();
    for op in &history.ops {
        if let OpKind::Put { key, .. } = op.kind {
            seen.chunk_of_key
                .insert(key, bounds.chunk_of(point_of(u64::from(key))));
        }
    }
    Ok(seen)
}

/// The chunks `shard` claims (`ql_owned`), each with the ids its table holds.
async fn shard_claims(
    lab: &Lab,
    shard: usize,
    chunks: usize,
) -> Result<BTreeMap<u32, Vec<u64>>, LabError> {
    let mut conn = connect(lab, shard, Duration::from_secs(5)).await?;
    let claimed: Vec<i32> = sqlx::query("SELECT chunk FROM ql_owned ORDER BY chunk")
        .fetch_all(&mut conn)
        .await
        .map_err(pg)?
        .iter()
        .map(|row| row.get::<i32, _>(0))
        .collect();
    let mut out = BTreeMap::new();
    for chunk in claimed {
        assert!(
            (chunk as usize) < chunks,
            "a claim on chunk {chunk} of {chunks}"
        );
        let ids: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT id FROM {}", chunk_table(chunk as u32)))
                .fetch_all(&mut conn)
                .await
                .map_err(pg)?;
        out.insert(chunk as u32, ids.into_iter().map(|id| id as u64).collect());
    }
    Ok(out)
}
