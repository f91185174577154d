//! turmoil adapters for the sharded cluster: the shard host (a `mongod --shardsvr`, port 27018)
//! and the world that hosts, clients and the driver share.
//!
//! A shard host ticks its [`Shard`] every millisecond and answers datagrams: routers' reads and
//! writes, other shards' migration messages and the balancer's moves. What the shard asks of the
//! config servers (a refresh, a commit) a worker task on the host carries out with its own
//! [`ConfigClient`], and hands back through the world. A killed shard is a `None` in the world; its
//! [`Durable`] state waits there for the restart.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::{Key, Op, OpKind};
use quorumlab_experiment::rebalance::{MigrationOutcome, MigrationRecord, OrphanSpan, ReadRecord};
use quorumlab_experiment::sharded::{Layout, MigrationStep};
use serde::{Deserialize, Serialize};
use turmoil::net::UdpSocket;

use super::config::{ConfigClient, Swap};
use super::routing::{chunk_key, Bounds, Entry, Table, COLLECTION_VERSION_KEY};
use super::shard::{Answer, Doc, Durable, Effects, Msg, Note, Shard, ShardConfig};
use crate::host::now_us;
use crate::mongodb::host::bind;
use crate::run::SeededLoss;

/// A shard's port.
pub const SHARD_PORT: u16 = 27018;
/// The port of a shard host's config worker.
const CONFIG_WORKER_PORT: u16 = 27019;
/// Longest a shard host sleeps with nothing due.
const IDLE_US: u64 = 100_000;
const DATAGRAM_BYTES_MAX: usize = 1 << 20;

/// One line of a run's trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedEvent {
    /// Microseconds since the workload started (0 during setup).
    pub at_us: u64,
    /// Host and part (`n5/s2`), client, or `fault`.
    pub node: String,
    /// What happened.
    pub what: String,
}

/// A datagram of the sharded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Packet {
    /// Between shards.
    Shard {
        /// Sender.
        from: usize,
        /// The message.
        msg: Msg,
    },
    /// Balancer → donor: move `chunk` (at `version`) to shard `to`.
    Move {
        /// Migration number.
        number: u64,
        /// The chunk.
        chunk: u32,
        /// Its version as the balancer read it.
        version: u64,
        /// Recipient.
        to: usize,
    },
    /// Donor → balancer.
    MoveResult {
        /// Migration number.
        number: u64,
        /// How it ended.
        outcome: MigrationOutcome,
    },
    /// Router → shard: insert.
    Write {
        /// Router's request token.
        token: u64,
        /// The chunk.
        chunk: u32,
        /// The document.
        doc: Doc,
        /// The chunk version the router believes.
        version: u64,
    },
    /// Router → shard: the documents with `key`.
    Read {
        /// Router's request token.
        token: u64,
        /// The chunk.
        chunk: u32,
        /// The key.
        key: Key,
        /// The chunk version the router believes.
        version: u64,
    },
    /// Shard → router.
    Answer {
        /// The request's token.
        token: u64,
        /// The answer.
        answer: Answer,
    },
}

impl Packet {
    /// Bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("packets serialise")
    }

    /// The inverse of [`Packet::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Packet> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What the config worker of a shard host is asked to do.
#[derive(Debug, Clone, Copy)]
enum ConfigJob {
    Refresh,
    Commit {
        number: u64,
        chunk: u32,
        expect: Entry,
        to: usize,
    },
}

/// The simulated sharded cluster of one run: what its hosts, clients and driver share.
pub struct ShardedWorld {
    /// Which host plays which part.
    pub layout: Layout,
    /// Chunk boundaries.
    pub bounds: Bounds,
    /// Each workload key's shard-key point.
    pub points: Vec<u64>,
    /// Each shard; `None` while its process is down.
    pub shards: Vec<Option<Shard>>,
    /// A killed shard's durable state, kept for its restart.
    pub durables: Vec<Durable>,
    /// Each shard's configuration.
    pub shard_configs: Vec<ShardConfig>,
    /// Client writes (reads are in `reads`).
    pub ops: Vec<Op>,
    /// Writes sent and not answered, by client: recorded as unknown when the run ends.
    pub in_flight: BTreeMap<u32, (OpKind, u64)>,
    /// Reads through routers.
    pub reads: Vec<ReadRecord>,
    /// Every migration a donor started, in order.
    pub migrations: Vec<MigrationRecord>,
    migration_index: BTreeMap<u64, usize>,
    /// Orphaned ranges.
    pub orphans: Vec<OrphanSpan>,
    open_orphans: BTreeMap<(usize, u32), usize>,
    /// Migration steps reached, for the driver's step faults: (number, step, donor, recipient).
    pub steps_reached: Vec<(u64, MigrationStep, usize, usize)>,
    /// The last migration each shard donated of each chunk (for `range-deletion` faults).
    donated: BTreeMap<(usize, u32), u64>,
    /// Stale-config retries by routers: when (µs since the start) and which router.
    pub stale_retries: Vec<(u64, usize)>,
    /// Invariants seen broken.
    pub violations: Vec<String>,
    /// Trace.
    pub events: Vec<ShardedEvent>,
    /// The trace line before which each host's view changed last (for `--step`).
    pub views: Vec<Vec<String>>,
    /// When the workload started, µs.
    pub start_us: u64,
    /// Loss and duplication of shard datagrams.
    pub loss: SeededLoss,
    /// Numbers handed out: migrations, config clients.
    pub next_migration: u64,
    next_config_client: u32,
    /// The largest message latency, µs (how long a config client waits to settle a swap).
    pub latency_max: Duration,
    /// The balancer has written the routing table: clients may start.
    pub table_ready: bool,
    /// Whether to snapshot every host's view at every trace line.
    pub record_views: bool,
    /// Each config server's role and term (written by the driver from the Raft world).
    pub config_views: Vec<String>,
}

/// A config worker's result.
#[derive(Debug, Clone)]
enum ConfigAnswer {
    Refreshed(Option<Table>),
    Committed {
        number: u64,
        result: Result<Entry, String>,
    },
}

/// Shared handle.
pub type ShardedWorldRef = Rc<RefCell<ShardedWorld>>;

impl ShardedWorld {
    /// A world of `layout`'s hosts, the shards holding `durables` and knowing `table`.
    pub fn new(
        layout: Layout,
        bounds: Bounds,
        points: Vec<u64>,
        configs: Vec<ShardConfig>,
        durables: Vec<Durable>,
        table: &Table,
    ) -> ShardedWorld {
        let shards = configs
            .iter()
            .zip(&durables)
            .map(|(c, d)| Some(Shard::start(c.clone(), d.clone(), Some(table.clone()))))
            .collect();
        ShardedWorld {
            layout,
            bounds,
            points,
            shards,
            durables,
            shard_configs: configs,
            ops: Vec::new(),
            in_flight: BTreeMap::new(),
            reads: Vec::new(),
            migrations: Vec::new(),
            migration_index: BTreeMap::new(),
            orphans: Vec::new(),
            open_orphans: BTreeMap::new(),
            steps_reached: Vec::new(),
            donated: BTreeMap::new(),
            stale_retries: Vec::new(),
            violations: Vec::new(),
            events: Vec::new(),
            views: Vec::new(),
            start_us: 0,
            loss: SeededLoss::default(),
            next_migration: 1,
            next_config_client: 1000,
            latency_max: Duration::from_millis(2),
            record_views: false,
            table_ready: false,
            config_views: Vec::new(),
        }
    }

    /// The cluster has come to rest: every shard is running and idle, and no client write is
    /// waiting for an answer. The final table read need not wait longer.
    pub fn at_rest(&self) -> bool {
        self.in_flight.is_empty()
            && self
                .shards
                .iter()
                .all(|s| s.as_ref().is_some_and(Shard::is_idle))
    }

    /// Microseconds since the workload started, now.
    pub fn since_start_us(&self) -> u64 {
        now_us().saturating_sub(self.start_us)
    }

    /// A trace line, timed now.
    pub fn event(&mut self, node: String, what: String) {
        let at_us = self.since_start_us();
        self.event_at(ShardedEvent { at_us, node, what });
    }

    /// A trace line, with every host's view as it is now when views are recorded.
    pub fn event_at(&mut self, event: ShardedEvent) {
        crate::trace::emit(event.at_us, &event.node, &event.what);
        self.events.push(event);
        if self.record_views {
            let views = self.host_views();
            self.views.push(views);
        }
    }

    /// One line per host: config servers' roles, shards' chunks and migrations.
    pub fn host_views(&self) -> Vec<String> {
        let mut views = self.config_views.clone();
        for (s, shard) in self.shards.iter().enumerate() {
            views.push(match shard {
                None => format!("s{}: DOWN", s + 1),
                Some(shard) => shard_view(s, shard),
            });
        }
        views
    }

    /// Kills shard `s`'s process, keeping what it made durable.
    pub fn kill(&mut self, s: usize) {
        if let Some(shard) = self.shards[s].take() {
            self.durables[s] = shard.durable().clone();
        }
    }

    /// Takes in one call's effects on shard `s`: trace lines and records.
    fn absorb(&mut self, s: usize, fx: &mut Effects) {
        let node = format!("{}/s{}", self.layout.shard(s), s + 1);
        for what in fx.events.drain(..) {
            self.event(node.clone(), what);
        }
        let now = self.since_start_us();
        for note in fx.notes.drain(..) {
            self.note(s, note, now);
        }
    }

    fn note(&mut self, s: usize, note: Note, now: u64) {
        match note {
            Note::Started { number, chunk, to } => {
                self.migration_index.insert(number, self.migrations.len());
                self.migrations.push(MigrationRecord {
                    number,
                    chunk: chunk + 1,
                    from: s,
                    to,
                    started_us: now,
                    critical_from_us: None,
                    critical_to_us: None,
                    ended_us: None,
                    outcome: MigrationOutcome::Running,
                    bytes: 0,
                    why: None,
                });
                self.donated.insert((s, chunk), number);
            }
            Note::Step { number, step } => {
                let m = self.migration(number);
                if step == MigrationStep::CriticalSection {
                    m.critical_from_us = Some(now);
                }
                let (from, to) = (m.from, m.to);
                self.steps_reached.push((number, step, from, to));
            }
            Note::CriticalSectionLeft { number } => {
                let m = self.migration(number);
                if m.critical_from_us.is_some() && m.critical_to_us.is_none() {
                    m.critical_to_us = Some(now);
                }
            }
            Note::Ended {
                number,
                outcome,
                bytes,
                why,
            } => {
                let m = self.migration(number);
                m.ended_us = Some(now);
                m.outcome = outcome;
                // A donor that crashed lost its count: keep what was known.
                m.bytes = m.bytes.max(bytes);
                m.why = why;
            }
            Note::Orphaned { chunk, docs } => {
                self.close_orphan(s, chunk, now);
                self.open_orphans.insert((s, chunk), self.orphans.len());
                self.orphans.push(OrphanSpan {
                    shard: s,
                    chunk: chunk + 1,
                    docs,
                    from_us: now,
                    deleted_us: None,
                });
            }
            Note::RangeDeleted { chunk } => {
                self.close_orphan(s, chunk, now);
                if let Some(&number) = self.donated.get(&(s, chunk)) {
                    let m = self.migration(number);
                    let (from, to) = (m.from, m.to);
                    self.steps_reached
                        .push((number, MigrationStep::RangeDeletion, from, to));
                }
            }
            Note::OrphanGone { chunk } => self.close_orphan(s, chunk, now),
            Note::VersionWentBack(what) => self
                .violations
                .push(format!("chunk version went back: {what}")),
        }
    }

    /// The record of migration `number` (numbers the balancer handed out; refused ones have
    /// none).
    fn migration(&mut self, number: u64) -> &mut MigrationRecord {
        let i = self.migration_index[&number];
        &mut self.migrations[i]
    }

    fn close_orphan(&mut self, s: usize, chunk: u32, now: u64) {
        if let Some(i) = self.open_orphans.remove(&(s, chunk)) {
            self.orphans[i].deleted_us = Some(now);
        }
    }

    /// Records a completed write.
    pub fn record_op(&mut self, op: Op) {
        self.ops.push(op);
    }
}

fn shard_view(s: usize, shard: &Shard) -> String {
    let owned = shard
        .table()
        .map(|t| t.iter().filter(|e| e.shard == s).count().to_string())
        .unwrap_or_else(|| "?".into());
    let docs: usize = shard.durable().docs.values().map(|d| d.len()).sum();
    let mut view = format!("s{}: {owned} chunks, {docs} docs", s + 1);
    if let Some((number, chunk, critical)) = shard.donating() {
        let cs = if critical { ", CRITICAL SECTION" } else { "" };
        view.push_str(&format!(", donating chunk {} (m{number}{cs})", chunk + 1));
    }
    if let Some(number) = shard.receiving() {
        view.push_str(&format!(", receiving m{number}"));
    }
    let orphans = shard.orphan_docs();
    if orphans > 0 {
        view.push_str(&format!(", {orphans} orphaned"));
    }
    view
}

/// A client of the config servers on `port`, with an etcd client id no other in the run has.
pub async fn config_client(world: &ShardedWorldRef, port: u16) -> std::io::Result<ConfigClient> {
    let (id, servers, latency_max) = {
        let mut w = world.borrow_mut();
        w.next_config_client += 1;
        (
            w.next_config_client,
            w.layout.config_servers as u64,
            w.latency_max,
        )
    };
    ConfigClient::bind(port, id, servers, latency_max).await
}

/// A token names the router host and client port that sent a request, so a shard can answer a
/// request it held: router (16 bits), port (16 bits), sequence (32 bits).
pub fn token(router: usize, port: u16, seq: u64) -> u64 {
    ((router as u64) << 48) | (u64::from(port) << 32) | (seq & 0xffff_ffff)
}

/// Where the answer to `token` goes.
pub fn router_of_token(layout: &Layout, token: u64) -> SocketAddr {
    let router = (token >> 48) as usize;
    let port = ((token >> 32) & 0xffff) as u16;
    SocketAddr::new(turmoil::lookup(layout.router(router).to_string()), port)
}

/// Shard `s`'s address.
pub fn shard_addr(layout: &Layout, s: usize) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(layout.shard(s).to_string()), SHARD_PORT)
}

/// The shard host's side of one shard: its socket and the balancer's address.
struct ShardHost {
    world: ShardedWorldRef,
    me: usize,
    socket: UdpSocket,
    balancer: Option<SocketAddr>,
    jobs: Rc<RefCell<VecDeque<ConfigJob>>>,
    /// Wakes the config worker when a job is queued.
    wake: Rc<tokio::sync::Notify>,
}

/// Runs shard host `s` until it is crashed; on a restart, from its durable state.
pub async fn shard_host(world: ShardedWorldRef, s: usize) -> turmoil::Result {
    {
        let mut w = world.borrow_mut();
        if w.shards[s].is_none() {
            let config = w.shard_configs[s].clone();
            let durable = w.durables[s].clone();
            w.shards[s] = Some(Shard::start(config, durable, None));
            let node = format!("{}/s{}", w.layout.shard(s), s + 1);
            w.event(
                node,
                "shard started: documents recovered, routing table unknown until refreshed".into(),
            );
        }
    }
    let socket = bind(SHARD_PORT).await?;
    let jobs = Rc::new(RefCell::new(VecDeque::new()));
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let wake = Rc::new(tokio::sync::Notify::new());
    tokio::task::spawn_local(config_worker(
        world.clone(),
        jobs.clone(),
        wake.clone(),
        answers_tx,
    ));
    let mut host = ShardHost {
        world,
        me: s,
        socket,
        balancer: None,
        jobs,
        wake,
    };
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        // The shard needs time only when something of its own is due; otherwise it waits for a
        // datagram or a config answer.
        let now = now_us();
        let due_us = host.world.borrow().shards[s]
            .as_ref()
            .map_or(now + IDLE_US, |sh| sh.next_due_us(now).min(now + IDLE_US));
        let due = tokio::time::Instant::now() + Duration::from_micros(due_us.saturating_sub(now));
        tokio::select! {
            biased;
            answer = answers.recv() => {
                if let Some(answer) = answer {
                    host.config_answer(answer);
                }
            }
            received = host.socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                if let Some(packet) = Packet::decode(&buf[..len]) {
                    host.handle(packet, from);
                }
            }
            _ = tokio::time::sleep_until(due) => host.tick(),
        }
    }
}

impl ShardHost {
    fn tick(&mut self) {
        let now = now_us();
        let mut fx = Effects::default();
        {
            let mut world = self.world.borrow_mut();
            let Some(shard) = world.shards[self.me].as_mut() else {
                return;
            };
            shard.tick(now, &mut fx);
        }
        self.flush(fx);
    }

    fn config_answer(&mut self, answer: ConfigAnswer) {
        let now = now_us();
        let mut fx = Effects::default();
        {
            let mut world = self.world.borrow_mut();
            let Some(shard) = world.shards[self.me].as_mut() else {
                return;
            };
            match answer {
                ConfigAnswer::Refreshed(table) => shard.refreshed(table, now, &mut fx),
                ConfigAnswer::Committed { number, result } => {
                    shard.commit_result(number, result, now, &mut fx)
                }
            }
        }
        self.flush(fx);
    }

    fn handle(&mut self, packet: Packet, from: SocketAddr) {
        let now = now_us();
        let mut fx = Effects::default();
        let answer = {
            let mut world = self.world.borrow_mut();
            let Some(shard) = world.shards[self.me].as_mut() else {
                return;
            };
            match packet {
                Packet::Shard { from, msg } => {
                    shard.receive(from, msg, now, &mut fx);
                    None
                }
                Packet::Move {
                    number,
                    chunk,
                    version,
                    to,
                } => {
                    self.balancer = Some(from);
                    shard.move_chunk(number, chunk, version, to, now, &mut fx);
                    None
                }
                Packet::Write {
                    token,
                    chunk,
                    doc,
                    version,
                } => shard
                    .write(token, chunk, doc, version, &mut fx)
                    .map(|answer| Packet::Answer { token, answer }),
                Packet::Read {
                    token,
                    chunk,
                    key,
                    version,
                } => shard
                    .read(token, chunk, key, version, &mut fx)
                    .map(|answer| Packet::Answer { token, answer }),
                Packet::Answer { .. } | Packet::MoveResult { .. } => None,
            }
        };
        if let Some(answer) = answer {
            self.send(&answer, from);
        }
        self.flush(fx);
    }

    /// Sends what a call made happen, queues its config work and records the rest.
    fn flush(&mut self, mut fx: Effects) {
        let layout = self.world.borrow().layout;
        for (to, msg) in std::mem::take(&mut fx.send) {
            let packet = Packet::Shard { from: self.me, msg };
            self.send(&packet, shard_addr(&layout, to));
        }
        for (token, answer) in std::mem::take(&mut fx.answers) {
            // The router's address travels in the token's high bits (see `token`).
            let to = router_of_token(&layout, token);
            self.send(&Packet::Answer { token, answer }, to);
        }
        if let (Some((number, outcome)), Some(to)) = (fx.balancer.take(), self.balancer) {
            self.send(&Packet::MoveResult { number, outcome }, to);
        }
        {
            let mut world = self.world.borrow_mut();
            if let Some(shard) = world.shards[self.me].as_mut() {
                if shard.take_refresh(&mut fx) {
                    self.jobs.borrow_mut().push_back(ConfigJob::Refresh);
                    self.wake.notify_one();
                }
            }
        }
        if let Some((number, chunk, expect, to)) = fx.commit.take() {
            self.jobs.borrow_mut().push_back(ConfigJob::Commit {
                number,
                chunk,
                expect,
                to,
            });
            self.wake.notify_one();
        }
        self.world.borrow_mut().absorb(self.me, &mut fx);
    }

    fn send(&self, packet: &Packet, to: SocketAddr) {
        let copies = self.world.borrow_mut().loss.copies_to_send();
        let bytes = packet.encode();
        for _ in 0..copies {
            let _ = self.socket.try_send_to(&bytes, to);
        }
    }
}

/// The shard host's config worker: carries out refreshes and commits one at a time.
async fn config_worker(
    world: ShardedWorldRef,
    jobs: Rc<RefCell<VecDeque<ConfigJob>>>,
    wake: Rc<tokio::sync::Notify>,
    answers: tokio::sync::mpsc::UnboundedSender<ConfigAnswer>,
) -> std::io::Result<()> {
    let chunks = world.borrow().bounds.len() as u32;
    let mut client = config_client(&world, CONFIG_WORKER_PORT).await?;
    loop {
        let job = jobs.borrow_mut().pop_front();
        let Some(job) = job else {
            wake.notified().await;
            continue;
        };
        let answer = match job {
            ConfigJob::Refresh => {
                let table = client.read_table(chunks, now_us() + 2_000_000).await?;
                ConfigAnswer::Refreshed(table)
            }
            ConfigJob::Commit {
                number,
                chunk,
                expect,
                to,
            } => {
                let result = commit(&mut client, chunk, expect, to).await?;
                ConfigAnswer::Committed { number, result }
            }
        };
        let _ = answers.send(answer);
    }
}

/// Records `to` as `chunk`'s owner at a new version, unless the chunk no longer holds `expect`.
/// It does not give up while the config servers are unreachable: the donor's critical section
/// lasts until the outcome is known, as MongoDB's does.
async fn commit(
    client: &mut ConfigClient,
    chunk: u32,
    expect: Entry,
    to: usize,
) -> std::io::Result<Result<Entry, String>> {
    let forever = u64::MAX;
    let version = bump_collection_version(client).await?;
    let new = Entry { version, shard: to };
    loop {
        match client
            .cas(chunk_key(chunk), expect.encode(), new.encode(), forever)
            .await?
        {
            Swap::Swapped => return Ok(Ok(new)),
            Swap::NotSwapped | Swap::Unknown => {
                let Some(now) = client.settle_after(chunk_key(chunk), forever).await? else {
                    continue;
                };
                match now.map(Entry::decode) {
                    Some(e) if e == new => return Ok(Ok(new)),
                    Some(e) if e == expect => continue,
                    other => {
                        return Ok(Err(format!(
                            "the chunk's entry changed to {other:?} meanwhile"
                        )))
                    }
                }
            }
        }
    }
}

/// Raises the collection version by one and returns it (a bump lost to a timeout only skips a
/// number).
async fn bump_collection_version(client: &mut ConfigClient) -> std::io::Result<u64> {
    loop {
        let Some(Some(current)) = client.get(COLLECTION_VERSION_KEY, u64::MAX).await? else {
            continue;
        };
        if client
            .cas(COLLECTION_VERSION_KEY, current, current + 1, u64::MAX)
            .await?
            == Swap::Swapped
        {
            return Ok(current + 1);
        }
    }
}
