//! turmoil adapters for the MongoDB model: a member host (a `mongod`, port 27017) and the world
//! its hosts, clients and the driver share.
//!
//! A member host ticks its [`Member`] every millisecond and answers datagrams: other members'
//! [`Msg`]s, and the clients' requests (`insert`, `find`, `hello`, `replSetGetStatus`). A killed
//! `mongod` is a `None` member: it answers clients with refusals (the kernel's RST) and members
//! with nothing; its [`Durable`] state waits in the world for a restart.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::Op;
use quorumlab_experiment::mongodb::{ReadConcern, WriteConcern};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::Phase;
use quorumlab_experiment::replication::{LagMethod, LagSample};
use serde::{Deserialize, Serialize};
use turmoil::net::UdpSocket;

use super::member::{Durable, Effects, Member, MemberConfig, MemberState, Msg, WriteReply};
use super::oplog::OpTime;
use crate::host::now_us;
use crate::run::{mix, SeededLoss};

/// `mongod`'s port.
pub const MONGOD_PORT: u16 = 27017;
/// The member task's tick.
const TICK: Duration = Duration::from_millis(1);
const DATAGRAM_BYTES_MAX: usize = 1 << 20;

/// One line of a run's trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MongoEvent {
    /// Microseconds since the workload started (0 during bootstrap).
    pub at_us: u64,
    /// Member, client or `fault`.
    pub node: String,
    /// What happened.
    pub what: String,
}

/// One member as `--step` shows it beside each event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// `PRIMARY`, `SECONDARY` or `DOWN`; a primary not yet taking writes is `PRIMARY*`.
    pub state: String,
    /// Its term.
    pub term: u64,
    /// Its newest applied optime.
    pub applied: OpTime,
    /// Its majority commit point.
    pub commit_point: OpTime,
}

impl MemberView {
    fn of(member: &Option<Member>) -> MemberView {
        let Some(m) = member else {
            return MemberView {
                state: "DOWN".into(),
                term: 0,
                applied: OpTime::default(),
                commit_point: OpTime::default(),
            };
        };
        let state = match (m.state(), m.is_writable_primary()) {
            (MemberState::Primary, true) => "PRIMARY",
            (MemberState::Primary, false) => "PRIMARY*",
            (MemberState::Secondary, _) => "SECONDARY",
        };
        MemberView {
            state: state.into(),
            term: m.term(),
            applied: m.last_applied(),
            commit_point: m.commit_point(),
        }
    }
}

/// The simulated replica set of one run: what its hosts, clients and driver share.
#[derive(Default)]
pub struct MongoWorld {
    /// Each member; `None` while its process is down.
    pub members: Vec<Option<Member>>,
    /// Each member's configuration.
    pub configs: Vec<MemberConfig>,
    /// A killed member's durable state, kept for its restart.
    pub durables: Vec<Durable>,
    /// `replSetStepDown` commands the driver left for a member's next tick.
    pub step_downs: Vec<Option<(u64, u64)>>,
    /// Restarts so far per member (seeds each incarnation's election offsets).
    pub incarnations: Vec<u64>,
    /// Client operations.
    pub ops: Vec<Op>,
    /// Lag samples.
    pub samples: Vec<LagSample>,
    /// Trace.
    pub events: Vec<MongoEvent>,
    /// Every member's view just after each trace line (for `--step`).
    pub views: Vec<Vec<MemberView>>,
    /// Who the watcher saw as primary, when it changed: (µs since start, member, term).
    pub primaries_seen: Vec<(u64, NodeId, u64)>,
    /// Who became primary in each term (the election-safety check).
    pub primary_of_term: BTreeMap<u64, NodeId>,
    /// Every optime a primary declared majority-committed.
    pub committed: BTreeSet<OpTime>,
    /// Oplog entries rolled back so far.
    pub rolled_back_entries: u64,
    /// Protocol invariants seen broken.
    pub violations: Vec<String>,
    /// Workload phases.
    pub phases: Vec<Phase>,
    /// Workload start, µs.
    pub start_us: u64,
    /// Loss and duplication of members' datagrams (faults `loss`, `duplicate`).
    pub loss: SeededLoss,
}

/// Shared handle.
pub type MongoWorldRef = Rc<RefCell<MongoWorld>>;

impl MongoWorld {
    /// A trace line, timed now (inside a simulated host).
    pub fn event(&mut self, node: String, what: String) {
        let at_us = now_us().saturating_sub(self.start_us);
        self.event_at(MongoEvent { at_us, node, what });
    }

    /// A trace line, with every member's view as it is now.
    pub fn event_at(&mut self, event: MongoEvent) {
        crate::trace::emit(event.at_us, &event.node, &event.what);
        self.events.push(event);
        let views = self.members.iter().map(MemberView::of).collect();
        self.views.push(views);
    }

    /// The phase `at_us` after the start.
    pub fn phase_at(&self, at_us: u64) -> &Phase {
        quorumlab_experiment::postgres::phase_at(&self.phases, at_us)
    }

    /// Replaces the newest trace line's member views with how the members are now (after the
    /// driver has carried out the fault that line names).
    pub fn refresh_last_view(&mut self) {
        let views = self.members.iter().map(MemberView::of).collect();
        if let Some(last) = self.views.last_mut() {
            *last = views;
        }
    }

    /// Kills member `id`'s process, keeping what it had made durable.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(member) = self.members[id.index()].take() {
            self.durables[id.index()] = member.durable().clone();
        }
    }

    /// Starts member `id` again from its durable state at `now_us`.
    pub fn restart(&mut self, id: NodeId, now_us: u64) {
        if self.members[id.index()].is_some() {
            return;
        }
        self.incarnations[id.index()] += 1;
        let mut config = self.configs[id.index()].clone();
        config.rng_seed = mix(config.rng_seed, self.incarnations[id.index()], 7);
        let durable = self.durables[id.index()].clone();
        self.members[id.index()] = Some(Member::start(config, durable, now_us));
    }

    /// Takes in one call's effects on member `id`: trace lines and the run-wide checks (at most
    /// one primary per term; no majority-committed entry rolled back).
    fn absorb(&mut self, id: NodeId, fx: &mut Effects) {
        for what in fx.events.drain(..) {
            self.event(id.to_string(), what);
        }
        self.committed.extend(fx.committed.drain(..));
        if let Some(term) = fx.became_primary.take() {
            let first = *self.primary_of_term.entry(term).or_insert(id);
            if first != id {
                self.violations.push(format!(
                    "election safety: {first} and {id} were both primary in term {term}"
                ));
            }
        }
        let rolled_back = std::mem::take(&mut fx.rolled_back);
        self.rolled_back_entries += rolled_back.len() as u64;
        for entry in rolled_back {
            if self.committed.contains(&entry.optime) {
                self.violations.push(format!(
                    "{id} rolled back {}, which a majority had committed",
                    entry.optime
                ));
            }
        }
    }
}

/// A datagram of the MongoDB model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Packet {
    /// Between members.
    Peer {
        /// Sender.
        from: NodeId,
        /// The message.
        msg: Msg,
    },
    /// `insert` of a document.
    Insert {
        /// Request number.
        seq: u64,
        /// `_id`.
        id: u64,
        /// A heartbeat document's sequence.
        heartbeat: Option<u64>,
        /// Write concern.
        w: WriteConcern,
        /// `wtimeout`, µs.
        wtimeout_us: Option<u64>,
    },
    /// Its answer.
    Written {
        /// Request number.
        seq: u64,
        /// What happened.
        reply: WriteReply,
    },
    /// `find` the newest document on the primary at a read concern.
    Read {
        /// Request number.
        seq: u64,
        /// Read concern.
        concern: ReadConcern,
    },
    /// Its answer: the newest id (`Err`: not primary).
    ReadResult {
        /// Request number.
        seq: u64,
        /// The id, if any document is visible.
        result: Result<Option<u64>, WriteReply>,
    },
    /// `hello`.
    Hello {
        /// Request number.
        seq: u64,
    },
    /// Its answer.
    HelloReply {
        /// Request number.
        seq: u64,
        /// `isWritablePrimary`.
        primary: bool,
        /// The member's term (the driver's `electionId`).
        term: u64,
    },
    /// The newest heartbeat document a member shows.
    ReadHeartbeat {
        /// Request number.
        seq: u64,
    },
    /// Its answer: (sequence, the primary's write time in µs).
    HeartbeatDoc {
        /// Request number.
        seq: u64,
        /// The document.
        latest: Option<(u64, u64)>,
    },
    /// `replSetGetStatus`.
    Status {
        /// Request number.
        seq: u64,
    },
    /// Its answer.
    StatusReply {
        /// Request number.
        seq: u64,
        /// Whether the answering member is primary.
        primary: bool,
        /// `members[].optimeDate` (ms) as the answering member knows them.
        optime_dates_ms: Vec<(NodeId, u64)>,
    },
    /// The process is down: connection refused.
    Refused {
        /// Request number.
        seq: u64,
    },
}

impl Packet {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("packets serialise")
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Packet> {
        serde_json::from_slice(bytes).ok()
    }

    fn reply_seq(&self) -> Option<u64> {
        match *self {
            Packet::Written { seq, .. }
            | Packet::ReadResult { seq, .. }
            | Packet::HelloReply { seq, .. }
            | Packet::HeartbeatDoc { seq, .. }
            | Packet::StatusReply { seq, .. }
            | Packet::Refused { seq } => Some(seq),
            _ => None,
        }
    }
}

/// Member `id`'s address.
pub fn member_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(id.to_string()), MONGOD_PORT)
}

/// Binds a UDP socket on `port`.
pub fn bind(port: u16) -> impl std::future::Future<Output = std::io::Result<UdpSocket>> {
    UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
}

/// The member host's side of one `mongod`: its socket and the writes waiting on it.
struct Mongod {
    world: MongoWorldRef,
    me: NodeId,
    socket: UdpSocket,
    /// Writes waiting for the commit point: token → (client, request number).
    waiting: BTreeMap<u64, (SocketAddr, u64)>,
    next_token: u64,
}

/// Runs member host `me` until the simulation ends.
pub async fn member_host(world: MongoWorldRef, me: NodeId) -> turmoil::Result {
    let socket = bind(MONGOD_PORT).await?;
    let mut host = Mongod {
        world,
        me,
        socket,
        waiting: BTreeMap::new(),
        next_token: 0,
    };
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let deadline = tokio::time::Instant::now() + TICK;
        while let Ok(Ok((len, from))) =
            tokio::time::timeout_at(deadline, host.socket.recv_from(&mut buf)).await
        {
            if let Some(packet) = Packet::decode(&buf[..len]) {
                host.handle(packet, from);
            }
        }
        host.tick();
    }
}

impl Mongod {
    /// Ticks the member (and carries out a step-down the driver left for it).
    fn tick(&mut self) {
        let mut fx = Effects::default();
        {
            let mut world = self.world.borrow_mut();
            let step_down = world.step_downs[self.me.index()].take();
            let Some(member) = world.members[self.me.index()].as_mut() else {
                // The process is gone, and with it every waiting write's connection.
                self.waiting.clear();
                return;
            };
            let now = now_us();
            if let Some(periods) = step_down {
                member.step_down_command(periods, now, &mut fx);
            }
            member.tick(now, &mut fx);
        }
        self.flush(fx);
    }

    fn handle(&mut self, packet: Packet, from: SocketAddr) {
        let now = now_us();
        let mut fx = Effects::default();
        let answer = {
            let mut world = self.world.borrow_mut();
            let Some(member) = world.members[self.me.index()].as_mut() else {
                drop(world);
                if let Some(seq) = request_seq(&packet) {
                    self.send(&Packet::Refused { seq }, from);
                }
                return;
            };
            match packet {
                Packet::Peer { from, msg } => {
                    member.receive(from, msg, now, &mut fx);
                    None
                }
                Packet::Insert {
                    seq,
                    id,
                    heartbeat,
                    w,
                    wtimeout_us,
                } => {
                    let token = self.next_token;
                    self.next_token += 1;
                    match member.insert((token, id, heartbeat), (w, wtimeout_us), now, &mut fx) {
                        Some(reply) => Some(Packet::Written { seq, reply }),
                        None => {
                            self.waiting.insert(token, (from, seq));
                            None
                        }
                    }
                }
                other => answer_query(member, other),
            }
        };
        if let Some(answer) = answer {
            self.send(&answer, from);
        }
        self.flush(fx);
    }

    /// Sends what a call made happen and records the rest in the world.
    fn flush(&mut self, mut fx: Effects) {
        for (to, msg) in std::mem::take(&mut fx.send) {
            let packet = Packet::Peer { from: self.me, msg };
            self.send(&packet, member_addr(to));
        }
        for (token, reply) in std::mem::take(&mut fx.replies) {
            if let Some((client, seq)) = self.waiting.remove(&token) {
                self.send(&Packet::Written { seq, reply }, client);
            }
        }
        self.world.borrow_mut().absorb(self.me, &mut fx);
    }

    /// Sends one datagram through the run's loss and duplication. Members speak TCP, where a
    /// lost segment arrives late and a duplicate is discarded; the model's receivers already treat
    /// a gap or a repeat that way (a fetch is resent, a stale batch or vote is ignored).
    fn send(&self, packet: &Packet, to: SocketAddr) {
        let copies = self.world.borrow_mut().loss.copies_to_send();
        let bytes = packet.encode();
        for _ in 0..copies {
            let _ = self.socket.try_send_to(&bytes, to);
        }
    }
}

/// A client request's number, for a refusal.
fn request_seq(packet: &Packet) -> Option<u64> {
    match *packet {
        Packet::Insert { seq, .. }
        | Packet::Read { seq, .. }
        | Packet::Hello { seq }
        | Packet::ReadHeartbeat { seq }
        | Packet::Status { seq } => Some(seq),
        _ => None,
    }
}

/// Answers the read-only requests.
fn answer_query(member: &Member, packet: Packet) -> Option<Packet> {
    Some(match packet {
        Packet::Read { seq, concern } => Packet::ReadResult {
            seq,
            result: member.read(concern),
        },
        Packet::Hello { seq } => Packet::HelloReply {
            seq,
            primary: member.is_writable_primary(),
            term: member.term(),
        },
        Packet::ReadHeartbeat { seq } => Packet::HeartbeatDoc {
            seq,
            latest: member.newest_heartbeat().map(|(hb, t)| (hb, t.ts_us)),
        },
        Packet::Status { seq } => Packet::StatusReply {
            seq,
            primary: member.state() == MemberState::Primary,
            optime_dates_ms: member
                .status()
                .into_iter()
                .map(|(id, t)| (id, t.optime_date_ms()))
                .collect(),
        },
        _ => return None,
    })
}

/// One request from a client socket to member `node`, answered within `timeout`.
pub async fn ask(
    socket: &UdpSocket,
    buf: &mut [u8],
    node: NodeId,
    packet: Packet,
    seq: u64,
    timeout: Duration,
) -> Option<Packet> {
    let _ = socket.try_send_to(&packet.encode(), member_addr(node));
    tokio::time::timeout(timeout, async {
        loop {
            let Ok((len, _)) = socket.recv_from(buf).await else {
                return None;
            };
            if let Some(reply) = Packet::decode(&buf[..len]) {
                if reply.reply_seq() == Some(seq) {
                    return Some(reply);
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Records a lag sample in the phase running now.
pub fn sample(world: &MongoWorldRef, member: NodeId, method: LagMethod, value: Option<f64>) {
    let mut state = world.borrow_mut();
    let at = now_us().saturating_sub(state.start_us);
    let phase = state.phase_at(at).name.clone();
    state.samples.push(LagSample {
        phase,
        replica: member.to_string(),
        method,
        value,
    });
}
