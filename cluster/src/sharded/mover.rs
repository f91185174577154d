//! A chunk move between live Postgres shards, by logical replication, in MongoDB's moveChunk
//! steps.
//!
//! 1. **Clone**: the donor publishes the chunk's table (and a marker table of this move); the
//!    recipient subscribes, which copies the rows and then streams every later change.
//! 2. **Catch-up**: wait until the donor's replication slot confirms the donor's current LSN.
//! 3. **Critical section**: the chunk is marked critical in etcd (routers hold its writes); the
//!    donor's fence deletes its ownership row, which waits for every write that passed the
//!    ownership check and refuses every later one; a marker row written after the fence reaching
//!    the recipient proves it has applied every write the donor acknowledged.
//! 4. **Commit**: the recipient takes ownership, then one compare-and-swap in etcd gives the chunk
//!    to it at a higher version. The critical mark is removed; routers send to the new owner.
//! 5. **Cleanup**: subscription, publication and markers dropped; the donor's copy is left as an
//!    orphan until [`delete_range`].
//!
//! Before the commit a failure aborts: the recipient's copy and ownership go, the donor owns the
//! chunk again. After it, the recipient owns it whatever fails. Either way exactly one shard owns
//! the chunk; an end that was down during the abort is put right by [`recover`] once it is back.
//!
//! [`MoveHooks`] lets a driver see when each step began and, as a step is reached, kill one end's
//! Postgres or cut a host off (a scenario's step fault).

use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::routing::Entry;
use quorumlab_experiment::sharded::MigrationStep;
use quorumlab_proto::agent::Action;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::lab::{chunk_table, cluster, connect, create_chunk_table, exec, own, shard_host};
use super::map::ChunkMap;
use crate::lab::{Lab, LabError};
use crate::postgres::lab::one_line;

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveOutcome {
    /// The recipient owns the chunk.
    Committed,
    /// The donor still owns it; why the move stopped.
    Aborted(String),
    /// The commit's fate could not be read back (etcd unreachable): the chunk is fenced on the
    /// donor and owned by nobody the map names until the move is recovered.
    InDoubt(String),
}

/// One move as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// Move number.
    pub move_id: u64,
    /// The chunk.
    pub chunk: u32,
    /// Donor (0 is `s1`).
    pub from: usize,
    /// Recipient.
    pub to: usize,
    /// The chunk's version after the move (unchanged if aborted).
    pub version: u64,
    /// Workload rows on the donor when the fence went up (preloaded rows, with ids below 1, are
    /// not counted).
    pub rows: u64,
    /// Bytes of the chunk's table on the donor when the fence went up.
    pub bytes: u64,
    /// Clone (initial copy) time.
    pub clone_ms: u64,
    /// Catch-up time (streaming until the slot confirmed the donor's LSN).
    pub catch_up_ms: u64,
    /// Critical section, from the critical mark to its removal.
    pub critical_ms: u64,
    /// The whole move.
    pub total_ms: u64,
    /// The donor's LSN just after the fence.
    pub fence_lsn: String,
    /// How it ended.
    pub outcome: MoveOutcome,
}

/// Which end of a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveEnd {
    /// The shard giving the chunk away.
    Donor,
    /// The shard taking it.
    Recipient,
}

/// What a step fault does as a move reaches its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Kill this end's Postgres (SIGKILL, through its agent).
    Kill(MoveEnd),
    /// Cut this host off from every other host of the lab (its agent's nftables rules; the
    /// driver still reaches its agent).
    Isolate(NodeId),
}

/// What a move shows its driver and lets it do, step by step.
#[derive(Debug, Default)]
pub struct MoveHooks {
    /// The step fault: at this step, strike.
    pub strike_at: Option<(MigrationStep, Strike)>,
    /// Each step the move reached, and when it began (filled in by the move).
    pub reached: Vec<(MigrationStep, Instant)>,
    /// The shard killed and when (filled in by the move).
    pub killed: Option<(usize, Instant)>,
    /// The host cut off and when (filled in by the move; healing it is the driver's business).
    pub isolated: Option<(NodeId, Instant)>,
}

impl MoveHooks {
    /// Records that the move reached `step`, and strikes if the step fault is for it. A strike
    /// that cannot be delivered leaves the move to go on: the run reports no kill or cut.
    async fn reach(&mut self, lab: &Lab, step: MigrationStep, (from, to): (usize, usize)) {
        self.reached.push((step, Instant::now()));
        let Some((at, strike)) = self.strike_at else {
            return;
        };
        if at != step || self.killed.is_some() || self.isolated.is_some() {
            return;
        }
        match strike {
            Strike::Kill(end) => {
                let shard = match end {
                    MoveEnd::Donor => from,
                    MoveEnd::Recipient => to,
                };
                let killed = lab
                    .signal(shard_host(shard), "postgres", Action::Kill)
                    .await;
                if killed.is_ok() {
                    self.killed = Some((shard, Instant::now()));
                }
            }
            Strike::Isolate(host) => {
                if lab.cut_off(host, true).await.is_ok() {
                    self.isolated = Some((host, Instant::now()));
                }
            }
        }
    }

    /// When the move reached `step`, if it did.
    pub fn when(&self, step: MigrationStep) -> Option<Instant> {
        self.reached
            .iter()
            .find(|(s, _)| *s == step)
            .map(|(_, at)| *at)
    }
}

/// Step limits of a move.
#[derive(Debug, Clone, Copy)]
pub struct MoveLimits {
    /// Longest wait for the initial copy.
    pub clone: Duration,
    /// Longest wait for catch-up, and for the marker in the critical section.
    pub catch_up: Duration,
}

impl Default for MoveLimits {
    fn default() -> MoveLimits {
        MoveLimits {
            clone: Duration::from_secs(60),
            catch_up: Duration::from_secs(10),
        }
    }
}

fn pg(e: sqlx::Error) -> LabError {
    LabError::Postgres(one_line(&e.to_string()))
}

/// The two ends of a move and its names.
struct Ends {
    chunks: usize,
    donor: PgConnection,
    recipient: PgConnection,
    name: String,
    marker: String,
}

/// Moves chunk `chunk` to shard `to`.
pub async fn move_chunk(
    lab: &Lab,
    map: &mut ChunkMap,
    chunk: u32,
    to: usize,
    move_id: u64,
    limits: MoveLimits,
    hooks: &mut MoveHooks,
) -> Result<MoveReport, LabError> {
    let started = Instant::now();
    let chunks = cluster(lab)?.chunks;
    let view = map.read(chunks).await?;
    let entry = view.table[chunk as usize];
    if entry.shard == to {
        return Err(LabError::Settings(format!(
            "chunk {chunk} is already on s{}",
            to + 1
        )));
    }
    let mut report = MoveReport {
        move_id,
        chunk,
        from: entry.shard,
        to,
        version: entry.version,
        rows: 0,
        bytes: 0,
        clone_ms: 0,
        catch_up_ms: 0,
        critical_ms: 0,
        total_ms: 0,
        fence_lsn: String::new(),
        outcome: MoveOutcome::Committed,
    };
    let timeout = Duration::from_secs(5);
    let mut ends = Ends {
        chunks,
        donor: connect(lab, entry.shard, timeout).await?,
        recipient: connect(lab, to, timeout).await?,
        name: format!("ql_move_{move_id}"),
        marker: format!("ql_marker_{move_id}"),
    };
    let steps = run_steps(lab, map, &mut ends, entry, &mut report, (limits, hooks));
    if let Err(e) = steps.await {
        // A failed step may have been the commit itself, its answer lost: the map says how it
        // ended, and only a move the map does not show committed is undone.
        match map.read(chunks).await {
            Ok(view) if view.table[chunk as usize].shard == to => {
                report.version = view.table[chunk as usize].version;
                let _ = map.set_critical(chunk, None).await;
            }
            Ok(_) => {
                report.outcome = MoveOutcome::Aborted(e.to_string());
                abort(map, &mut ends, chunk, entry).await;
            }
            Err(read) => {
                report.outcome = MoveOutcome::InDoubt(format!("{e}; then {read}"));
            }
        }
    }
    cleanup(&mut ends).await;
    report.total_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn run_steps(
    lab: &Lab,
    map: &mut ChunkMap,
    ends: &mut Ends,
    entry: Entry,
    report: &mut MoveReport,
    (limits, hooks): (MoveLimits, &mut MoveHooks),
) -> Result<(), LabError> {
    let chunk = report.chunk;
    let t = chunk_table(chunk);
    let ends_of = (report.from, report.to);
    hooks.reach(lab, MigrationStep::Clone, ends_of).await;
    let step = Instant::now();
    clone(lab, ends, chunk, report.from, limits).await?;
    report.clone_ms = step.elapsed().as_millis() as u64;

    hooks.reach(lab, MigrationStep::CatchUp, ends_of).await;
    let step = Instant::now();
    let lsn = current_lsn(&mut ends.donor).await?;
    wait_for_slot(&mut ends.donor, &ends.name, &lsn, limits.catch_up).await?;
    report.catch_up_ms = step.elapsed().as_millis() as u64;

    hooks
        .reach(lab, MigrationStep::CriticalSection, ends_of)
        .await;
    let critical = Instant::now();
    map.set_critical(chunk, Some(report.move_id)).await?;
    exec(
        &mut ends.donor,
        &format!("DELETE FROM ql_owned WHERE chunk = {chunk}"),
    )
    .await?;
    report.fence_lsn = current_lsn(&mut ends.donor).await?;
    let row = sqlx::query(&format!(
        "SELECT count(*) FILTER (WHERE id > 0), pg_total_relation_size('{t}')::bigint FROM {t}"
    ))
    .fetch_one(&mut ends.donor)
    .await
    .map_err(pg)?;
    report.rows = row.get::<i64, _>(0) as u64;
    report.bytes = row.get::<i64, _>(1) as u64;
    let marker = &ends.marker;
    exec(&mut ends.donor, &format!("INSERT INTO {marker} VALUES (1)")).await?;
    wait_for_marker(&mut ends.recipient, marker, limits.catch_up).await?;

    hooks.reach(lab, MigrationStep::Commit, ends_of).await;
    let version = commit(map, ends, chunk, entry, report.to).await?;
    report.version = version;
    map.set_critical(chunk, None).await?;
    report.critical_ms = critical.elapsed().as_millis() as u64;
    Ok(())
}

/// Publication on the donor, fresh table and subscription on the recipient; waits until the
/// initial copy is done.
async fn clone(
    lab: &Lab,
    ends: &mut Ends,
    chunk: u32,
    from: usize,
    limits: MoveLimits,
) -> Result<(), LabError> {
    let t = chunk_table(chunk);
    let (name, marker) = (&ends.name, &ends.marker);
    let marker_table = format!("CREATE TABLE {marker} (done integer PRIMARY KEY)");
    exec(&mut ends.donor, &marker_table).await?;
    exec(
        &mut ends.donor,
        &format!("CREATE PUBLICATION {name} FOR TABLE {t}, {marker}"),
    )
    .await?;
    // A copy left from an earlier stay of this chunk here is an orphan: gone before the new one.
    exec(&mut ends.recipient, &format!("DROP TABLE IF EXISTS {t}")).await?;
    create_chunk_table(&mut ends.recipient, chunk).await?;
    exec(&mut ends.recipient, &marker_table).await?;
    let (password, port) = (&cluster(lab)?.superuser_password, cluster(lab)?.port);
    let donor_addr = lab.addr(shard_host(from));
    exec(
        &mut ends.recipient,
        &format!(
            "CREATE SUBSCRIPTION {name} CONNECTION 'host={donor_addr} port={port} user=postgres password={password} dbname=postgres' PUBLICATION {name} WITH (copy_data = true)"
        ),
    )
    .await?;
    let copied = Poll {
        sql: "SELECT count(*) = 0 FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
              WHERE s.subname = $1 AND r.srsubstate <> 'r'",
        binds: &[name],
        every: Duration::from_millis(50),
        limit: limits.clone,
    };
    copied
        .until_true(&mut ends.recipient, || {
            format!("the initial copy of chunk {chunk}")
        })
        .await
}

/// A query returning one boolean, asked until it says true or `limit` passes.
struct Poll<'a> {
    sql: &'a str,
    binds: &'a [&'a str],
    every: Duration,
    limit: Duration,
}

impl Poll<'_> {
    /// Asks until true; a timeout names `what` did not finish.
    async fn until_true(
        &self,
        conn: &mut PgConnection,
        what: impl Fn() -> String,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + self.limit;
        loop {
            let mut query = sqlx::query_scalar::<_, Option<bool>>(self.sql);
            for bind in self.binds {
                query = query.bind(*bind);
            }
            if query.fetch_one(&mut *conn).await.map_err(pg)? == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "{} did not finish within {:?}",
                    what(),
                    self.limit
                )));
            }
            tokio::time::sleep(self.every).await;
        }
    }
}

async fn current_lsn(conn: &mut PgConnection) -> Result<String, LabError> {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(conn)
        .await
        .map_err(pg)
}

/// Waits until the move's slot on the donor has confirmed `lsn`.
async fn wait_for_slot(
    donor: &mut PgConnection,
    slot: &str,
    lsn: &str,
    limit: Duration,
) -> Result<(), LabError> {
    let confirmed = Poll {
        sql: "SELECT (SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots
                      WHERE slot_name = $1)",
        binds: &[slot, lsn],
        every: Duration::from_millis(20),
        limit,
    };
    confirmed
        .until_true(donor, || format!("the recipient's catch-up to {lsn}"))
        .await
}

async fn wait_for_marker(
    recipient: &mut PgConnection,
    marker: &str,
    limit: Duration,
) -> Result<(), LabError> {
    let sql = format!("SELECT count(*) > 0 FROM {marker}");
    let applied = Poll {
        sql: &sql,
        binds: &[],
        every: Duration::from_millis(5),
        limit,
    };
    applied
        .until_true(recipient, || {
            "the recipient's apply of the fence marker".into()
        })
        .await
}

/// The recipient takes ownership, then the map is swapped; on a lost swap the recipient gives
/// the ownership back. Returns the chunk's new version.
async fn commit(
    map: &mut ChunkMap,
    ends: &mut Ends,
    chunk: u32,
    entry: Entry,
    to: usize,
) -> Result<u64, LabError> {
    for _ in 0..5 {
        let view = map.read(ends.chunks).await?;
        if view.table[chunk as usize] != entry {
            return Err(LabError::Settings(format!(
                "chunk {chunk} changed in the map during its move"
            )));
        }
        let new = Entry {
            version: view.version + 1,
            shard: to,
        };
        own(&mut ends.recipient, chunk, new.version).await?;
        if map.commit(chunk, entry, new, view.version).await? {
            return Ok(new.version);
        }
    }
    Err(LabError::Timeout(format!(
        "the commit of chunk {chunk} lost its compare-and-swap five times"
    )))
}

/// Undoes a move that did not commit: the recipient neither owns nor holds the chunk, the donor
/// owns it again, the critical mark goes. Best effort: a shard that is down is fixed by
/// recovery when it is back.
async fn abort(map: &mut ChunkMap, ends: &mut Ends, chunk: u32, entry: Entry) {
    let t = chunk_table(chunk);
    let _ = exec(
        &mut ends.recipient,
        &format!("DELETE FROM ql_owned WHERE chunk = {chunk}"),
    )
    .await;
    let _ = exec(
        &mut ends.recipient,
        &format!("DROP SUBSCRIPTION IF EXISTS {}", ends.name),
    )
    .await;
    let _ = exec(&mut ends.recipient, &format!("DROP TABLE IF EXISTS {t}")).await;
    let _ = own(&mut ends.donor, chunk, entry.version).await;
    let _ = map.set_critical(chunk, None).await;
}

/// Drops the subscription, the publication and the markers (all that a move leaves but data).
async fn cleanup(ends: &mut Ends) {
    let (name, marker) = (ends.name.clone(), ends.marker.clone());
    let _ = exec(
        &mut ends.recipient,
        &format!("DROP SUBSCRIPTION IF EXISTS {name}"),
    )
    .await;
    let _ = exec(
        &mut ends.recipient,
        &format!("DROP TABLE IF EXISTS {marker}"),
    )
    .await;
    let _ = exec(
        &mut ends.donor,
        &format!("DROP PUBLICATION IF EXISTS {name}"),
    )
    .await;
    let _ = exec(&mut ends.donor, &format!("DROP TABLE IF EXISTS {marker}")).await;
}

/// Finishes a move that stopped with one end down, once both ends answer again (as a MongoDB
/// shard recovers its migration when it comes back): the subscription, publication and markers
/// go; the owner the map names records ownership at the map's version, the other end gives up
/// any claim and, if it was the recipient of a move that did not commit, its copy; the critical
/// mark goes. Idempotent; retries until both ends answer or `limit` passes.
pub async fn recover(
    lab: &Lab,
    map: &mut ChunkMap,
    report: &MoveReport,
    limit: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + limit;
    loop {
        match recover_once(lab, map, report).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Timeout(format!(
                    "recovering the move of chunk {} within {limit:?}: {e}",
                    report.chunk
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn recover_once(lab: &Lab, map: &mut ChunkMap, report: &MoveReport) -> Result<(), LabError> {
    let timeout = Duration::from_secs(2);
    let chunk = report.chunk;
    let mut ends = Ends {
        chunks: cluster(lab)?.chunks,
        donor: connect(lab, report.from, timeout).await?,
        recipient: connect(lab, report.to, timeout).await?,
        name: format!("ql_move_{}", report.move_id),
        marker: format!("ql_marker_{}", report.move_id),
    };
    let owner = map.read(ends.chunks).await?.table[chunk as usize];
    // Cleanup first: the recipient's subscription must be gone before its copy is dropped.
    exec(
        &mut ends.recipient,
        &format!("DROP SUBSCRIPTION IF EXISTS {}", ends.name),
    )
    .await?;
    cleanup(&mut ends).await;
    let disown = format!("DELETE FROM ql_owned WHERE chunk = {chunk}");
    if owner.shard == report.to {
        own(&mut ends.recipient, chunk, owner.version).await?;
        exec(&mut ends.donor, &disown).await?;
    } else {
        exec(&mut ends.recipient, &disown).await?;
        exec(
            &mut ends.recipient,
            &format!("DROP TABLE IF EXISTS {}", chunk_table(chunk)),
        )
        .await?;
        own(&mut ends.donor, chunk, owner.version).await?;
    }
    map.set_critical(chunk, None).await
}

/// Range deletion: drops `shard`'s copy of `chunk` unless it owns it. Returns the rows deleted.
pub async fn delete_range(lab: &Lab, shard: usize, chunk: u32) -> Result<u64, LabError> {
    let mut conn = connect(lab, shard, Duration::from_secs(5)).await?;
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM ql_owned WHERE chunk = $1")
        .bind(chunk as i32)
        .fetch_one(&mut conn)
        .await
        .map_err(pg)?;
    if owned > 0 {
        return Ok(0);
    }
    let t = chunk_table(chunk);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&t)
        .fetch_one(&mut conn)
        .await
        .map_err(pg)?;
    if !exists {
        return Ok(0);
    }
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
        .fetch_one(&mut conn)
        .await
        .map_err(pg)?;
    exec(&mut conn, &format!("DROP TABLE {t}")).await?;
    Ok(rows as u64)
}
