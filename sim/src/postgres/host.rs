//! turmoil adapters for the Postgres model: a database host (Postgres and Patroni) and the
//! clients that measure it.
//!
//! A database host runs two tasks over one shared [`PgServer`]: the Postgres task (port 5432)
//! answers clients, streams WAL and ticks the server every millisecond; the Patroni task runs the
//! HA loop, reading and writing the leader lock in the simulated etcd through the same wire
//! protocol as any etcd client (port 8009), and answers peers asking for its WAL position (its
//! REST API, port 8008). Hosts `n1..n3` also run an etcd member ([`crate::host::node_host`]).
//! A killed Postgres is a `None` server: it answers nothing but refusals (the kernel's RST), and
//! its Patroni is gone with it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::{Op, OpKind, Outcome};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::{Phase, ReplicationMode, SyncCommit};
use quorumlab_experiment::replication::{LagMethod, LagSample};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use turmoil::net::UdpSocket;

use super::patroni::{decide, HaAction, HaView, LeaderLock, LEADER_KEY, OPTIME_KEY, SYNC_KEY};
use super::server::{Lsn, PgOutput, PgRole, PgServer, WalRecord};
use crate::host::{node_addr, now_us, Lossiness};
use crate::wire::{Packet, Reply, Request};

/// Postgres's port.
pub const PG_PORT: u16 = 5432;
/// Patroni's REST port (peers ask for WAL positions here).
pub const REST_PORT: u16 = 8008;
/// Patroni's etcd client port.
const DCS_PORT: u16 = 8009;
/// The port Patroni asks its peers' REST APIs from.
const PEER_ASK_PORT: u16 = 8010;
/// How long a promotion takes once the lock is held (end of recovery, checkpoint).
const PROMOTE_US: u64 = 100_000;
/// How long Patroni waits for one etcd answer before trying the next member.
const DCS_ATTEMPT: Duration = Duration::from_millis(300);
/// How long Patroni waits for peers' positions.
const PEER_WAIT: Duration = Duration::from_millis(200);
/// `wal_receiver_status_interval`.
const STATUS_INTERVAL_US: u64 = 1_000_000;
/// The Postgres task's tick.
const TICK: Duration = Duration::from_millis(1);
const DATAGRAM_BYTES_MAX: usize = 1 << 20;

/// Settings every database host shares.
#[derive(Debug, Clone)]
pub struct PgHostConfig {
    /// Database hosts.
    pub db_nodes: u64,
    /// etcd members (on hosts `n1..`).
    pub etcd_members: u64,
    /// Patroni timing, milliseconds.
    pub ttl_ms: u64,
    /// HA loop period.
    pub loop_wait_ms: u64,
    /// Retry budget.
    pub retry_timeout_ms: u64,
    /// `maximum_lag_on_failover`.
    pub maximum_lag_on_failover: u64,
    /// Replication mode.
    pub mode: ReplicationMode,
    /// `synchronous_commit` (`local` in async mode).
    pub synchronous_commit: SyncCommit,
    /// WAL stream bandwidth per standby, bytes/s.
    pub bandwidth: f64,
    /// Replay speed, bytes/s.
    pub replay_rate: f64,
    /// When the workload starts, microseconds (the cluster is bootstrapped before).
    pub start_us: u64,
    /// Seed for each member's loop phase.
    pub seed: u64,
}

/// A line of the Postgres run's trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgEvent {
    /// Microseconds since the workload started (negative during bootstrap is clamped to 0).
    pub at_us: u64,
    /// Host or client.
    pub node: String,
    /// What happened.
    pub what: String,
}

/// The simulated Postgres world of one run: what its hosts, clients and driver share.
#[derive(Default)]
pub struct PgWorld {
    /// Each database host's server; `None` while killed.
    pub servers: Vec<Option<PgServer>>,
    /// Client operations.
    pub ops: Vec<Op>,
    /// Lag samples.
    pub samples: Vec<LagSample>,
    /// Every successful write of the leader lock: (when, lock).
    pub lock_writes: Vec<(u64, LeaderLock)>,
    /// Trace.
    pub events: Vec<PgEvent>,
    /// Workload phases.
    pub phases: Vec<Phase>,
    /// Workload start, microseconds.
    pub start_us: u64,
    /// Current loss and duplication of the database hosts' datagrams (faults `loss`, `duplicate`).
    pub lossiness: Lossiness,
    /// Seeds the loss and duplication draws.
    pub seed: u64,
    /// Draws taken so far; draws happen only while loss or duplication is on, so fault-free runs
    /// are untouched by them.
    pub(super) draws: u64,
}

/// Shared handle.
pub type PgWorldRef = Rc<RefCell<PgWorld>>;

impl PgWorld {
    /// Records a successful write of the leader lock, asserting the lock's safety: a different
    /// holder may only take it once the previous lease has run out.
    fn lock_written(&mut self, lock: LeaderLock) {
        let now_ms = now_us() / 1000;
        if let Some((_, previous)) = self.lock_writes.last() {
            assert!(
                previous.holder == lock.holder || !previous.is_live(now_ms),
                "leader lock safety: n{} took the lock at {now_ms} ms while n{}'s lease ran to {} ms",
                lock.holder,
                previous.holder,
                previous.expires_ms
            );
        }
        self.lock_writes.push((now_us(), lock));
    }

    /// How many copies of a datagram go out now: 0 (lost), 1, or 2 (duplicated).
    fn copies_to_send(&mut self) -> usize {
        let (seed, draws) = (self.seed, &mut self.draws);
        self.lossiness
            .copies_to_send(|| crate::run::uniform_draw(seed, draws))
    }

    fn event(&mut self, node: String, what: String) {
        let at_us = now_us().saturating_sub(self.start_us);
        crate::trace::emit(at_us, &node, &what);
        self.events.push(PgEvent { at_us, node, what });
    }

    /// The phase at `at_us` after the start.
    pub fn phase_at(&self, at_us: u64) -> &Phase {
        quorumlab_experiment::postgres::phase_at(&self.phases, at_us)
    }
}

/// A datagram of the Postgres model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PgPacket {
    /// Insert a row.
    Insert {
        /// Request number.
        seq: u64,
        /// Write id.
        id: u64,
        /// Payload bytes.
        payload: u64,
        /// Heartbeat sequence, for heartbeat rows.
        heartbeat: Option<u64>,
    },
    /// The insert committed (at the configured durability).
    InsertOk {
        /// Request number.
        seq: u64,
    },
    /// The insert was refused (read-only, or the process is gone).
    Refused {
        /// Request number.
        seq: u64,
    },
    /// `SELECT pg_is_in_recovery()`.
    IsPrimary {
        /// Request number.
        seq: u64,
    },
    /// Answer to `IsPrimary`.
    Primary {
        /// Request number.
        seq: u64,
        /// Not in recovery.
        yes: bool,
    },
    /// Newest visible heartbeat row.
    ReadHeartbeat {
        /// Request number.
        seq: u64,
    },
    /// Answer: (sequence, committed at) of the newest visible heartbeat.
    Heartbeat {
        /// Request number.
        seq: u64,
        /// The row.
        latest: Option<(u64, u64)>,
    },
    /// `pg_stat_replication` on a primary, `pg_last_xact_replay_timestamp()` on a standby.
    Views {
        /// Request number.
        seq: u64,
    },
    /// Answer to `Views`.
    ViewRows {
        /// Request number.
        seq: u64,
        /// Whether the node is a primary (not in recovery).
        primary: bool,
        /// Primary: (standby, write/flush/replay lag µs, byte lag) per standby.
        replication: Vec<(NodeId, [Option<u64>; 3], u64)>,
        /// Standby: age of the last replayed commit, µs.
        replay_age_us: Option<u64>,
    },
    /// A standby asks its upstream to stream from `from`.
    StartStreaming {
        /// Position.
        from: Lsn,
        /// Its timeline.
        timeline: u64,
    },
    /// WAL for a standby.
    Wal {
        /// Sender's timeline.
        timeline: u64,
        /// Records.
        records: Vec<WalRecord>,
    },
    /// A standby's positions.
    StandbyStatus {
        /// Written, flushed, replayed.
        positions: [Lsn; 3],
    },
    /// Patroni REST: a peer's WAL position.
    Position {
        /// Request number.
        seq: u64,
    },
    /// Answer to `Position` (none while Postgres is down).
    PositionIs {
        /// Request number.
        seq: u64,
        /// Received LSN.
        lsn: Option<Lsn>,
    },
}

impl PgPacket {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("packets serialise")
    }

    fn decode(bytes: &[u8]) -> Option<PgPacket> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The address of database host `i`'s port.
pub fn host_addr(id: NodeId, port: u16) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(id.to_string()), port)
}

/// Which database host an address belongs to.
fn host_number(addr: SocketAddr, hosts: u64) -> Option<NodeId> {
    NodeId::all(hosts as usize).find(|id| turmoil::lookup(id.to_string()) == addr.ip())
}

fn bind(port: u16) -> impl std::future::Future<Output = std::io::Result<UdpSocket>> {
    UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
}

/// Runs database host `me`: its Postgres and its Patroni, until the simulation ends.
pub async fn db_host(world: PgWorldRef, config: PgHostConfig, me: NodeId) -> turmoil::Result {
    let patroni = tokio::task::spawn_local(patroni_task(world.clone(), config.clone(), me));
    let rest = tokio::task::spawn_local(rest_task(world.clone(), me));
    let result = postgres_task(world, config, me).await;
    patroni.abort();
    rest.abort();
    result
}

async fn postgres_task(world: PgWorldRef, config: PgHostConfig, me: NodeId) -> turmoil::Result {
    let socket = bind(PG_PORT).await?;
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut postmaster = Postmaster {
        world,
        config,
        me,
        waiting: BTreeMap::new(),
        next_token: 0,
        streaming_from: None,
        last_status_us: 0,
        last_tick_us: now_us(),
    };
    loop {
        let (outputs, replies) = tokio::select! {
            biased;
            received = socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                let Some(packet) = PgPacket::decode(&buf[..len]) else { continue };
                (Vec::new(), postmaster.on_packet(packet, from))
            }
            _ = ticker.tick() => postmaster.on_tick(),
        };
        let replies = postmaster.route(outputs, replies);
        for (to, packet) in replies {
            send(&postmaster.world, &socket, &packet.encode(), to);
        }
    }
}

/// What goes out: packets to addresses.
type Replies = Vec<(SocketAddr, PgPacket)>;

/// The network side of one host's Postgres: it feeds packets and time to the host's
/// [`PgServer`] (if its process runs) and turns what the server wants into packets.
struct Postmaster {
    world: PgWorldRef,
    config: PgHostConfig,
    me: NodeId,
    /// Commits waiting for acknowledgement: token -> (client address, request seq).
    waiting: BTreeMap<u64, (SocketAddr, u64)>,
    next_token: u64,
    /// The upstream this standby last asked to stream from.
    streaming_from: Option<NodeId>,
    last_status_us: u64,
    last_tick_us: u64,
}

impl Postmaster {
    /// One packet in; the direct answers out.
    fn on_packet(&mut self, packet: PgPacket, from: SocketAddr) -> Replies {
        let mut replies = Vec::new();
        let world = self.world.clone();
        let mut state = world.borrow_mut();
        let now = now_us();
        let Some(server) = state.servers[self.me.index()].as_mut() else {
            // The process is gone: the kernel refuses connections.
            if let PgPacket::Insert { seq, .. } = packet {
                replies.push((from, PgPacket::Refused { seq }));
            }
            self.streaming_from = None;
            return replies;
        };
        match packet {
            PgPacket::Insert {
                seq,
                id,
                payload,
                heartbeat,
            } => {
                self.next_token += 1;
                match server.commit(now, id, payload, heartbeat, self.next_token) {
                    Some(_) => {
                        self.waiting.insert(self.next_token, (from, seq));
                    }
                    None => replies.push((from, PgPacket::Refused { seq })),
                }
            }
            PgPacket::IsPrimary { seq } => {
                let yes = server.role == PgRole::Primary;
                replies.push((from, PgPacket::Primary { seq, yes }));
            }
            PgPacket::ReadHeartbeat { seq } => {
                let latest = server.visible_heartbeat();
                replies.push((from, PgPacket::Heartbeat { seq, latest }));
            }
            PgPacket::Views { seq } => replies.push((from, views(server, seq, now))),
            other => self.replicate(server, other, from, now),
        }
        replies
    }

    /// Replication traffic between primary and standbys: connect, WAL, status.
    fn replicate(&mut self, server: &mut PgServer, packet: PgPacket, from: SocketAddr, now: u64) {
        let sender = host_number(from, self.config.db_nodes);
        match packet {
            PgPacket::StartStreaming {
                from: lsn,
                timeline,
            } => {
                if let (PgRole::Primary, Some(standby)) = (server.role, sender) {
                    server.standby_connect(standby, lsn, timeline);
                }
            }
            PgPacket::Wal { timeline, records } => {
                let from_upstream = sender == server.upstream;
                if from_upstream && !server.receive(timeline, records) {
                    self.streaming_from = None;
                }
            }
            PgPacket::StandbyStatus { positions } => {
                if let Some(standby) = sender {
                    server.standby_reply(now, standby, positions);
                }
            }
            _ => {}
        }
    }

    /// Time passes: the server ticks; a standby (re)connects to its upstream when that changed
    /// and reports its positions on schedule.
    fn on_tick(&mut self) -> (Vec<PgOutput>, Replies) {
        let mut replies = Vec::new();
        let now = now_us();
        let dt = now.saturating_sub(self.last_tick_us);
        self.last_tick_us = now;
        let world = self.world.clone();
        let mut state = world.borrow_mut();
        let Some(server) = state.servers[self.me.index()].as_mut() else {
            self.streaming_from = None;
            self.waiting.clear();
            return (Vec::new(), replies);
        };
        let mut outputs = server.tick(now, dt, self.config.bandwidth, self.config.replay_rate);
        if server.role != PgRole::Standby {
            self.streaming_from = None;
            return (outputs, replies);
        }
        if server.upstream != self.streaming_from {
            self.streaming_from = server.upstream;
            if let Some(up) = server.upstream {
                let from = server.end_lsn();
                let timeline = server.timeline;
                let hello = PgPacket::StartStreaming { from, timeline };
                replies.push((host_addr(up, PG_PORT), hello));
            }
        }
        if now >= self.last_status_us + STATUS_INTERVAL_US {
            self.last_status_us = now;
            if let Some(up) = server.upstream {
                outputs.push(server.reply_to(up));
            }
        }
        (outputs, replies)
    }

    /// The server's outputs as packets, after the direct replies.
    fn route(&mut self, outputs: Vec<PgOutput>, mut replies: Replies) -> Replies {
        for output in outputs {
            match output {
                PgOutput::Ack(token) => {
                    if let Some((to, seq)) = self.waiting.remove(&token) {
                        replies.push((to, PgPacket::InsertOk { seq }));
                    }
                }
                PgOutput::Wal {
                    to,
                    timeline,
                    records,
                } => replies.push((host_addr(to, PG_PORT), PgPacket::Wal { timeline, records })),
                PgOutput::Reply {
                    to,
                    write,
                    flush,
                    replay,
                } => {
                    let positions = [write, flush, replay];
                    replies.push((
                        host_addr(to, PG_PORT),
                        PgPacket::StandbyStatus { positions },
                    ));
                }
            }
        }
        replies
    }
}

/// What `pg_stat_replication` and the replay timestamp show on `server` now.
fn views(server: &PgServer, seq: u64, now: u64) -> PgPacket {
    let end = server.end_lsn();
    let primary = server.role == PgRole::Primary;
    let replication = if primary {
        server
            .standbys
            .iter()
            .map(|(&id, p)| (id, p.lag_us, end.bytes_since(p.replay)))
            .collect()
    } else {
        vec![]
    };
    let replay_age_us = (server.role == PgRole::Standby)
        .then(|| server.last_replay_us().map(|t| now.saturating_sub(t)))
        .flatten();
    PgPacket::ViewRows {
        seq,
        primary,
        replication,
        replay_age_us,
    }
}

/// Patroni's view of etcd: one request at a time, to the member it believes leads.
struct DcsClient {
    world: PgWorldRef,
    socket: UdpSocket,
    client: u32,
    seq: u64,
    leader: u64,
    members: u64,
    buf: Vec<u8>,
}

impl DcsClient {
    /// Sends `op` until an answer comes or `deadline_us` passes.
    async fn call(&mut self, op: OpKind, deadline_us: u64) -> Option<Reply> {
        while now_us() < deadline_us {
            self.seq += 1;
            let request = Packet::Request(Request {
                client: self.client,
                seq: self.seq,
                op,
            });
            send(
                &self.world,
                &self.socket,
                &request.encode(),
                node_addr(self.leader),
            );
            let wait = DCS_ATTEMPT.min(Duration::from_micros(deadline_us - now_us()));
            let seq = self.seq;
            let answer = tokio::time::timeout(wait, async {
                loop {
                    let (len, _) = self.socket.recv_from(&mut self.buf).await?;
                    if let Ok(Packet::Reply { seq: s, reply, .. }) =
                        Packet::decode(&self.buf[..len])
                    {
                        if s == seq {
                            return Ok::<Reply, std::io::Error>(reply);
                        }
                    }
                }
            })
            .await;
            match answer {
                Ok(Ok(Reply::NotLeader { hint })) => {
                    self.leader = if hint != 0 {
                        hint
                    } else {
                        self.leader % self.members + 1
                    };
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(_)) | Err(_) => self.leader = self.leader % self.members + 1,
            }
        }
        None
    }
}

fn alive(world: &PgWorldRef, me: NodeId) -> bool {
    world.borrow().servers[me.index()].is_some()
}

/// Asks every other database host's Patroni for its WAL position; the best answer within
/// [`PEER_WAIT`].
async fn best_peer_position(
    world: &PgWorldRef,
    rest: &UdpSocket,
    me: NodeId,
    db_nodes: u64,
    seq: &mut u64,
) -> Option<Lsn> {
    *seq += 1;
    let ask = *seq;
    for peer in NodeId::all(db_nodes as usize).filter(|&p| p != me) {
        send(
            world,
            rest,
            &PgPacket::Position { seq: ask }.encode(),
            host_addr(peer, REST_PORT),
        );
    }
    let mut best = None;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(PEER_WAIT, async {
        loop {
            let Ok((len, _)) = rest.recv_from(&mut buf).await else {
                return;
            };
            if let Some(PgPacket::PositionIs {
                seq,
                lsn: Some(lsn),
            }) = PgPacket::decode(&buf[..len])
            {
                if seq == ask {
                    best = Some(best.map_or(lsn, |b: Lsn| b.max(lsn)));
                }
            }
        }
    })
    .await;
    best
}

/// Patroni's REST API: answers peers asking for this member's WAL position (nothing while its
/// Postgres is down, like a Patroni that died with it).
async fn rest_task(world: PgWorldRef, me: NodeId) -> turmoil::Result {
    let rest = bind(REST_PORT).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = rest.recv_from(&mut buf).await?;
        if let Some(PgPacket::Position { seq }) = PgPacket::decode(&buf[..len]) {
            let lsn = world.borrow().servers[me.index()]
                .as_ref()
                .map(PgServer::end_lsn);
            if lsn.is_some() {
                send(
                    &world,
                    &rest,
                    &PgPacket::PositionIs { seq, lsn }.encode(),
                    from,
                );
            }
        }
    }
}

/// Patroni's HA loop on host `me`: bootstrap (on `n1`), then one HA round per `loop_wait`.
async fn patroni_task(world: PgWorldRef, config: PgHostConfig, me: NodeId) -> turmoil::Result {
    let peers = bind(PEER_ASK_PORT).await?;
    let dcs = DcsClient {
        world: world.clone(),
        socket: bind(DCS_PORT).await?,
        client: 100 + me.0 as u32,
        seq: 0,
        leader: 1 + me.index() as u64 % config.etcd_members,
        members: config.etcd_members,
        buf: vec![0u8; 4096],
    };
    // Members' loops are not in phase: each starts at a seeded offset within one loop_wait.
    let mut rng = SmallRng::seed_from_u64(config.seed ^ me.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let offset = Duration::from_micros(rng.gen_range(0..config.loop_wait_ms * 1000));
    let mut patroni = Patroni {
        name: me.to_string(),
        ttl_us: config.ttl_ms * 1000,
        sync_mode: config.mode == ReplicationMode::Sync,
        world,
        config,
        me,
        dcs,
        peers,
        rest_seq: 0,
    };
    if me == NodeId(1) {
        patroni.bootstrap().await;
    }
    tokio::time::sleep(offset).await;
    loop {
        patroni.ha_round().await;
    }
}

/// One member's Patroni: its etcd client, its socket for asking peers' positions, and its
/// settings. Each HA action is one method.
struct Patroni {
    world: PgWorldRef,
    config: PgHostConfig,
    me: NodeId,
    name: String,
    dcs: DcsClient,
    peers: UdpSocket,
    rest_seq: u64,
    ttl_us: u64,
    sync_mode: bool,
}

impl Patroni {
    /// A lock held by this member for one `ttl` from now.
    fn my_lock(&self) -> LeaderLock {
        LeaderLock {
            holder: self.me,
            expires_ms: (now_us() + self.ttl_us) / 1000,
        }
    }

    fn is_primary(&self) -> bool {
        self.world.borrow().servers[self.me.index()]
            .as_ref()
            .is_some_and(|s| s.role == PgRole::Primary)
    }

    /// `n1` initialised the database: it takes the lock first (and names `n2` synchronous).
    async fn bootstrap(&mut self) {
        loop {
            let lock = self.my_lock();
            let put = OpKind::Put {
                key: LEADER_KEY,
                value: lock.encode(),
            };
            if let Some(Reply::Put) = self.dcs.call(put, now_us() + 1_000_000).await {
                let mut state = self.world.borrow_mut();
                state.lock_written(lock);
                state.event(
                    self.name.clone(),
                    "bootstrapped: holds the leader key".into(),
                );
                break;
            }
        }
        if self.sync_mode {
            let put = OpKind::Put {
                key: SYNC_KEY,
                value: 2,
            };
            let _ = self.dcs.call(put, now_us() + 1_000_000).await;
        }
    }

    /// One run of the HA loop: read the lock, decide, act, sleep until the next run.
    async fn ha_round(&mut self) {
        let loop_start = now_us();
        if !alive(&self.world, self.me) {
            // Patroni died with its Postgres (kill -9 of the database host's processes).
            tokio::time::sleep(Duration::from_millis(self.config.loop_wait_ms)).await;
            return;
        }
        let deadline = loop_start + self.config.retry_timeout_ms * 1000;
        let is_primary = self.is_primary();
        let read = self
            .dcs
            .call(OpKind::Get { key: LEADER_KEY }, deadline)
            .await;
        let Some(Reply::Get(value)) = read else {
            if is_primary {
                let why = "cannot reach etcd within retry_timeout: demoting";
                demote(&self.world, self.me, None, why);
            }
            return;
        };
        let lock = value.map(LeaderLock::decode);
        let action = self.decide(lock, deadline).await;
        let expect = value.unwrap_or(0);
        match action {
            HaAction::Renew => self.renew(expect, deadline, is_primary).await,
            HaAction::Follow(holder) => self.follow(holder, is_primary),
            HaAction::Acquire => {
                if self.acquire(expect, deadline).await {
                    return;
                }
            }
            HaAction::Wait => {}
        }
        self.sleep_until_next_round(loop_start, lock).await;
    }

    /// What Patroni would do with `lock`; with an expired lock it first asks the peers' positions,
    /// the leader's last optime and, in synchronous mode, `/sync`.
    async fn decide(&mut self, lock: Option<LeaderLock>, deadline: u64) -> HaAction {
        let now_ms = now_us() / 1000;
        let my_lsn = self.world.borrow().servers[self.me.index()]
            .as_ref()
            .map_or(Lsn::ZERO, PgServer::end_lsn);
        let Some(held) = lock else {
            return HaAction::Wait;
        };
        let (best_peer_lsn, leader_optime, sync_standby) = if held.is_live(now_ms) {
            (None, Lsn::ZERO, None)
        } else {
            self.failover_facts(deadline).await
        };
        decide(&HaView {
            me: self.me,
            lock,
            now_ms,
            my_lsn,
            best_peer_lsn,
            leader_optime,
            maximum_lag_on_failover: self.config.maximum_lag_on_failover,
            sync_standby,
        })
    }

    /// Before racing for an expired lock: the best peer position, the leader's last published
    /// optime (`Lsn(u64::MAX)` when unreadable) and, in synchronous mode, the `/sync` standby.
    async fn failover_facts(&mut self, deadline: u64) -> (Option<Lsn>, Lsn, Option<u64>) {
        let (me, db_nodes) = (self.me, self.config.db_nodes);
        let best =
            best_peer_position(&self.world, &self.peers, me, db_nodes, &mut self.rest_seq).await;
        let optime = match self
            .dcs
            .call(OpKind::Get { key: OPTIME_KEY }, deadline)
            .await
        {
            Some(Reply::Get(v)) => Lsn(v.unwrap_or(0)),
            _ => Lsn(u64::MAX),
        };
        let sync = if self.sync_mode {
            match self.dcs.call(OpKind::Get { key: SYNC_KEY }, deadline).await {
                Some(Reply::Get(v)) => Some(v.unwrap_or(0)),
                _ => Some(u64::MAX),
            }
        } else {
            None
        };
        (best, optime, sync)
    }

    /// The holder renews its lease by CAS; a primary that cannot, demotes.
    async fn renew(&mut self, expect: u64, deadline: u64, is_primary: bool) {
        let renewed = self.my_lock();
        let cas = OpKind::Cas {
            key: LEADER_KEY,
            expect,
            new: renewed.encode(),
        };
        match self.dcs.call(cas, deadline).await {
            Some(Reply::Cas(true)) => {
                self.world.borrow_mut().lock_written(renewed);
                let (me, sync_mode) = (self.me, self.sync_mode);
                publish_leader_state(&self.world, &mut self.dcs, me, sync_mode, deadline).await;
            }
            _ if is_primary => demote(
                &self.world,
                self.me,
                None,
                "failed to update the leader lock within retry_timeout: demoting",
            ),
            _ => {}
        }
    }

    /// Another member holds the lock: a primary demotes, a standby streams from the holder.
    fn follow(&mut self, holder: NodeId, is_primary: bool) {
        if is_primary {
            let why = "another member holds the leader key: demoting";
            demote(&self.world, self.me, Some(holder), why);
        } else if let Some(server) = self.world.borrow_mut().servers[self.me.index()].as_mut() {
            server.upstream = Some(holder);
        }
    }

    /// Races for the expired lock by CAS; the winner promotes itself and publishes its state.
    /// Returns whether it won (it then starts its next round at once).
    async fn acquire(&mut self, expect: u64, deadline: u64) -> bool {
        let mine = self.my_lock();
        let cas = OpKind::Cas {
            key: LEADER_KEY,
            expect,
            new: mine.encode(),
        };
        let Some(Reply::Cas(true)) = self.dcs.call(cas, deadline).await else {
            return false;
        };
        {
            let mut state = self.world.borrow_mut();
            state.lock_written(mine);
            state.event(self.name.clone(), "took the leader key: promoting".into());
        }
        tokio::time::sleep(Duration::from_micros(PROMOTE_US)).await;
        promote(&self.world, self.me);
        let (me, sync_mode, until) = (self.me, self.sync_mode, deadline + self.ttl_us);
        publish_leader_state(&self.world, &mut self.dcs, me, sync_mode, until).await;
        true
    }

    /// Sleeps until the next round, or until another holder's lock would expire (Patroni watches
    /// the key).
    async fn sleep_until_next_round(&self, loop_start: u64, lock: Option<LeaderLock>) {
        let mut next = loop_start + self.config.loop_wait_ms * 1000;
        if let Some(l) = lock.filter(|l| l.holder != self.me) {
            let expiry_us = l.expires_ms * 1000 + 1000;
            if expiry_us > now_us() {
                next = next.min(expiry_us);
            }
        }
        tokio::time::sleep(Duration::from_micros(next.max(now_us() + 1000) - now_us())).await;
    }
}

/// The leader publishes its WAL position and, in synchronous mode, picks and publishes the
/// synchronous standby before the primary waits for it.
async fn publish_leader_state(
    world: &PgWorldRef,
    dcs: &mut DcsClient,
    me: NodeId,
    sync_mode: bool,
    deadline: u64,
) {
    let (lsn, sync) = {
        let state = world.borrow();
        let Some(server) = state.servers[me.index()].as_ref() else {
            return;
        };
        let sync = server.standbys.keys().next().copied();
        (server.end_lsn(), sync)
    };
    let _ = dcs
        .call(
            OpKind::Put {
                key: OPTIME_KEY,
                value: lsn.0,
            },
            deadline,
        )
        .await;
    if sync_mode {
        let current = world.borrow().servers[me.index()]
            .as_ref()
            .and_then(|s| s.sync_standby);
        if let (Some(s), true) = (sync, current.is_none()) {
            if let Some(Reply::Put) = dcs
                .call(
                    OpKind::Put {
                        key: SYNC_KEY,
                        value: s.0,
                    },
                    deadline,
                )
                .await
            {
                let mut state = world.borrow_mut();
                if let Some(server) = state.servers[me.index()].as_mut() {
                    server.sync_standby = Some(s);
                }
                state.event(me.to_string(), format!("{s} is the synchronous standby"));
            }
        }
    }
}

fn promote(world: &PgWorldRef, me: NodeId) {
    let mut state = world.borrow_mut();
    let Some(server) = state.servers[me.index()].as_mut() else {
        return;
    };
    server.promote();
    let timeline = server.timeline;
    state.event(
        me.to_string(),
        format!("promoted: primary on timeline {timeline}"),
    );
}

fn demote(world: &PgWorldRef, me: NodeId, upstream: Option<NodeId>, why: &str) {
    let mut state = world.borrow_mut();
    let Some(server) = state.servers[me.index()].as_mut() else {
        return;
    };
    if server.role != PgRole::Primary {
        return;
    }
    server.demote(upstream);
    state.event(me.to_string(), why.to_string());
}

/// Sends one datagram from a database host through the run's loss and duplication. Postgres and
/// Patroni speak TCP, where a lost segment arrives late and a duplicate is discarded; the model's
/// receivers already treat a gap or a repeat that way (a standby reconnects from its end of WAL,
/// a repeated record or answer is ignored). A full send buffer drops the datagram, as UDP would.
fn send(world: &PgWorldRef, socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let copies = world.borrow_mut().copies_to_send();
    for _ in 0..copies {
        let _ = socket.try_send_to(bytes, to);
    }
}

/// One request from a client socket to host `node`'s Postgres, answered within `timeout`.
pub async fn ask(
    socket: &UdpSocket,
    buf: &mut [u8],
    node: NodeId,
    packet: PgPacket,
    seq: u64,
    timeout: Duration,
) -> Option<PgPacket> {
    let _ = socket.try_send_to(&packet.encode(), host_addr(node, PG_PORT));
    tokio::time::timeout(timeout, async {
        loop {
            let Ok((len, _)) = socket.recv_from(buf).await else {
                return None;
            };
            if let Some(reply) = PgPacket::decode(&buf[..len]) {
                if reply_seq(&reply) == Some(seq) {
                    return Some(reply);
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn reply_seq(p: &PgPacket) -> Option<u64> {
    match *p {
        PgPacket::InsertOk { seq }
        | PgPacket::Refused { seq }
        | PgPacket::Primary { seq, .. }
        | PgPacket::Heartbeat { seq, .. }
        | PgPacket::ViewRows { seq, .. }
        | PgPacket::PositionIs { seq, .. } => Some(seq),
        _ => None,
    }
}

/// Records a lag sample in the phase running now.
pub fn sample(world: &PgWorldRef, replica: NodeId, method: LagMethod, value: Option<f64>) {
    let mut state = world.borrow_mut();
    let at = now_us().saturating_sub(state.start_us);
    let phase = state.phase_at(at).name.clone();
    state.samples.push(LagSample {
        phase,
        replica: replica.to_string(),
        method,
        value,
    });
}

/// Records a client operation.
pub fn record(world: &PgWorldRef, op: Op) {
    world.borrow_mut().ops.push(op);
}

/// An acknowledged-write outcome.
pub fn ok() -> Outcome {
    Outcome::Ok {
        read: None,
        swapped: None,
    }
}
