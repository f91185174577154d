//! turmoil adapters: the I/O edge around the pure models.
//!
//! [`node_host`] runs one [`EtcdNode`] on a turmoil host: it turns UDP datagrams into
//! `step`/`request` calls, a simulated-time interval into `tick`, and the node's outputs back into
//! datagrams and trace events. [`client_task`] is one client of the workload: it sends requests to
//! the node it believes leads, times out, retries on a definite refusal and records every operation
//! in the history. Everything shared between hosts lives in [`World`] behind an `Rc`, which is
//! safe because turmoil runs every host on one thread, in a fixed order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use quorumlab_experiment::history::{Key, Op, OpKind, Outcome};
use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::register::RegisterClient;
use raft::storage::MemStorage;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use turmoil::net::UdpSocket;

use crate::invariants::Monitor;
use crate::node::{EtcdNode, NodeConfig, Output, Role};
use crate::trace::{Event, EventKind};
use crate::wire::{Packet, Reply, Request};

/// UDP port every node listens on.
pub const NODE_PORT: u16 = 2380;
/// First UDP port of the client sockets (client i binds `CLIENT_PORT_BASE + i`).
pub const CLIENT_PORT_BASE: u16 = 9000;
/// Largest datagram a host reads.
const DATAGRAM_BYTES_MAX: usize = 256 * 1024;

/// What the world knows of one node at this instant (for resolving `leader` in faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeView {
    /// Current role (`Down` while crashed).
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Highest committed index the node knows of.
    pub commit: u64,
}

/// Message loss and duplication applied by senders (turmoil has links that fail, not lossy ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lossiness {
    /// Probability that a message is dropped.
    pub loss: f64,
    /// Probability that a message is sent twice.
    pub duplicate: f64,
    /// Probability that a client request is sent twice.
    pub duplicate_requests: f64,
}

impl Lossiness {
    /// How many copies of a datagram go out now: 0 (lost), 1, or 2 (duplicated), from `draw`'s
    /// uniform draws in [0, 1). It draws only while loss or duplication is on, so fault-free runs
    /// are untouched by it.
    pub fn copies_to_send(&self, mut draw: impl FnMut() -> f64) -> usize {
        if self.loss > 0.0 && draw() < self.loss {
            return 0;
        }
        if self.duplicate > 0.0 && draw() < self.duplicate {
            return 2;
        }
        1
    }
}

/// A Raft message drawn in the report's sequence diagram.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MessageRecord {
    /// Sender node (1-based).
    pub from: u64,
    /// Receiver node (1-based).
    pub to: u64,
    /// Message type, e.g. `MsgRequestVote`.
    pub kind: String,
    /// Sender's term.
    pub term: u64,
    /// When it was sent, in microseconds.
    pub send_us: u64,
    /// When it was delivered, if it was.
    pub recv_us: Option<u64>,
}

/// The simulated etcd world of one run: what its hosts and the driver share (trace, safety
/// monitor, node views, history, loss settings, persisted Raft state).
#[derive(Default)]
pub struct World {
    /// The trace so far.
    pub events: Vec<Event>,
    /// Safety monitor.
    pub monitor: Monitor,
    /// Per-node view, index 0 is n1.
    pub views: Vec<NodeView>,
    /// Completed client operations (ids are assigned when the run ends).
    pub ops: Vec<Op>,
    /// Operations invoked and not yet answered, by client: when the run ends, these are recorded
    /// with an unknown outcome (a write may still have taken effect), as Jepsen records them.
    pub in_flight: std::collections::BTreeMap<u32, (OpKind, u64)>,
    /// Current loss and duplication.
    pub lossiness: Lossiness,
    /// Record Raft messages sent in this window (microseconds), for the sequence diagram.
    pub message_window_us: Option<(u64, u64)>,
    /// Recorded messages.
    pub messages: Vec<MessageRecord>,
    message_index: BTreeMap<(u64, u64), usize>,
    /// Which node stores which persisted Raft state (index 0 is n1); survives crashes.
    pub stores: Vec<MemStorage>,
    /// The Raft tick: one heartbeat interval, in microseconds.
    pub heartbeat_us: u64,
    /// Whether to snapshot every node's view at every event (for `--step`).
    pub record_views: bool,
    /// The snapshots, one per event, when `record_views` is on.
    pub view_log: Vec<Vec<NodeView>>,
    violations_reported: usize,
}

/// Shared handle to the run's state.
pub type WorldRef = Rc<RefCell<World>>;

/// Upper bound on recorded messages, so a long window cannot blow up a report.
const MESSAGES_RECORDED_MAX: usize = 2_000;

/// Simulated time since the run started, in microseconds.
pub fn now_us() -> u64 {
    turmoil::elapsed().as_micros() as u64
}

impl World {
    /// The state of a fresh cluster of `members` followers that have seen nothing, ticking every
    /// `heartbeat_us`.
    pub fn for_members(members: usize, heartbeat_us: u64) -> World {
        World {
            views: vec![
                NodeView {
                    role: Role::Follower,
                    term: 0,
                    commit: 0
                };
                members
            ],
            stores: (0..members).map(|_| MemStorage::new()).collect(),
            monitor: Monitor::new(members),
            heartbeat_us,
            ..World::default()
        }
    }

    fn push(&mut self, node: String, what: EventKind) {
        self.record(now_us(), node, what);
    }

    /// What the driver sees of member `me` now.
    fn set_view(&mut self, me: NodeId, node: &EtcdNode) {
        self.views[me.index()] = NodeView {
            role: node.role(),
            term: node.term(),
            commit: node.commit_index(),
        };
    }

    /// Puts the safety monitor's violations found since the last call into the trace.
    fn report_new_violations(&mut self, node: &str) {
        let reported = self.violations_reported;
        let new: Vec<String> = self.monitor.violations()[reported..].to_vec();
        self.violations_reported += new.len();
        for what in new {
            self.push(node.to_string(), EventKind::Violation { what });
        }
    }

    /// Records a completed client operation in the history and, as a line, in the trace.
    pub fn record_op(&mut self, client: &str, op: Op) {
        let outcome = match op.outcome {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "unknown",
        };
        let what = op.describe_brief();
        let index = self.ops.len();
        self.ops.push(op);
        let outcome = outcome.to_string();
        self.push(
            client.to_string(),
            EventKind::Op {
                op: index,
                outcome,
                what,
            },
        );
    }

    /// A node's process was killed: it shows as down until it restarts and reports again.
    pub fn record_crash(&mut self, at_us: u64, id: NodeId) {
        let view = &mut self.views[id.index()];
        view.role = Role::Down;
        let term = view.term;
        self.record(at_us, id.to_string(), EventKind::Process { up: false });
        let role = Role::Down;
        self.record(at_us, id.to_string(), EventKind::Role { role, term });
    }

    /// Appends an event to the trace (and a snapshot of every node, when recording views).
    pub fn record(&mut self, at_us: u64, node: String, what: EventKind) {
        debug_assert!(
            self.events.last().is_none_or(|e| e.at_us <= at_us),
            "trace out of order"
        );
        crate::trace::emit(at_us, &node, format_args!("{what:?}"));
        self.events.push(Event { at_us, node, what });
        if self.record_views {
            self.view_log.push(self.views.clone());
        }
    }

    fn record_send(&mut self, from: u64, packet_id: u64, msg: &raft::eraftpb::Message) {
        let now = now_us();
        let Some((start, end)) = self.message_window_us else {
            return;
        };
        if now < start || now > end || self.messages.len() >= MESSAGES_RECORDED_MAX {
            return;
        }
        self.message_index
            .insert((from, packet_id), self.messages.len());
        self.messages.push(MessageRecord {
            from,
            to: msg.to,
            kind: format!("{:?}", msg.get_msg_type()),
            term: msg.term,
            send_us: now,
            recv_us: None,
        });
    }

    fn record_receive(&mut self, from: u64, packet_id: u64) {
        if let Some(&i) = self.message_index.get(&(from, packet_id)) {
            self.messages[i].recv_us.get_or_insert(now_us());
        }
    }
}

/// The simulated address of etcd member `id` (its Raft id, from 1).
pub fn node_addr(id: u64) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(NodeId(id).to_string()), NODE_PORT)
}

/// Runs node `config.id` until the host is crashed. Called again by turmoil on restart, with the
/// same durable store and a fresh incarnation seed.
pub async fn node_host(world: WorldRef, config: NodeConfig, store: MemStorage) -> turmoil::Result {
    let me = NodeId(config.id);
    let tick = Duration::from_micros(world.borrow().heartbeat_us);
    let mut host = MemberHost {
        me,
        name: me.to_string(),
        socket: UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), NODE_PORT)).await?,
        rng: SmallRng::seed_from_u64(config.rng_seed ^ 0x5eed_1055),
        peers: (1..=config.voters).map(node_addr).collect(),
        clients: BTreeMap::new(),
        packet_id: 0,
    };
    let mut node = EtcdNode::start(config, store);
    // Real members' tick timers are not in phase: start each at a seeded offset within one tick.
    let phase = Duration::from_micros(host.rng.gen_range(0..tick.as_micros() as u64));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    {
        let mut state = world.borrow_mut();
        state.push(host.name.clone(), EventKind::Process { up: true });
        state.set_view(me, &node);
    }
    loop {
        tokio::select! {
            biased;
            received = host.socket.recv_from(&mut buf) => {
                let (len, from) = received?;
                host.deliver(&world, &mut node, &buf[..len], from);
            }
            _ = ticker.tick() => node.tick(),
        }
        let outputs: Vec<Output> = node.drain().collect();
        let mut state = world.borrow_mut();
        state.set_view(me, &node);
        for output in outputs {
            host.emit(&mut state, output);
        }
        state.report_new_violations(&host.name);
    }
}

/// The network side of one etcd member: its socket, peers and clients, and the randomness that
/// drops and duplicates what it sends while a loss or duplication fault is on.
struct MemberHost {
    me: NodeId,
    name: String,
    socket: UdpSocket,
    rng: SmallRng,
    peers: Vec<SocketAddr>,
    /// Where each client's requests came from, so replies find it.
    clients: BTreeMap<u32, SocketAddr>,
    packet_id: u64,
}

impl MemberHost {
    /// One datagram in: a Raft message steps the node, a client request goes to it.
    fn deliver(&mut self, world: &WorldRef, node: &mut EtcdNode, bytes: &[u8], from: SocketAddr) {
        match Packet::decode(bytes) {
            Ok(Packet::Raft { packet_id, msg }) => {
                world.borrow_mut().record_receive(msg.from, packet_id);
                node.step(*msg);
            }
            Ok(Packet::Request(request)) => {
                self.clients.insert(request.client, from);
                node.request(request);
            }
            Ok(Packet::Reply { .. }) | Err(_) => {}
        }
    }

    /// One output of the node out: a message sent, a reply, or an observation recorded.
    fn emit(&mut self, state: &mut World, output: Output) {
        let id = self.me.0;
        match output {
            Output::Send(msg) => self.send_raft(state, msg),
            Output::Reply { client, seq, reply } => {
                if let Some(&to) = self.clients.get(&client) {
                    let bytes = Packet::Reply { client, seq, reply }.encode();
                    let _ = self.socket.try_send_to(&bytes, to);
                }
            }
            Output::Role { role, term, .. } => {
                if role == Role::Leader {
                    state.monitor.on_leader(id, term);
                }
                state.push(self.name.clone(), EventKind::Role { role, term });
            }
            Output::VoteGranted { to, term, pre_vote } => {
                let to = NodeId(to).to_string();
                let vote = EventKind::VoteGranted { to, term, pre_vote };
                state.push(self.name.clone(), vote);
            }
            Output::Applied { index, term, data } => {
                state.monitor.on_applied(id, index, term, &data)
            }
            Output::Persisted { node_term, entries } => {
                state.monitor.on_persisted(id, node_term, &entries)
            }
        }
    }

    /// Sends a Raft message through the current loss and duplication.
    fn send_raft(&mut self, state: &mut World, msg: raft::eraftpb::Message) {
        let lossiness = state.lossiness;
        if self.rng.gen_bool(lossiness.loss) {
            return;
        }
        self.packet_id += 1;
        state.record_send(self.me.0, self.packet_id, &msg);
        let to = self.peers[NodeId(msg.to).index()];
        let packet_id = self.packet_id;
        let msg = Box::new(msg);
        let bytes = Packet::Raft { packet_id, msg }.encode();
        let copies = if self.rng.gen_bool(lossiness.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            // A full send buffer drops the datagram, as UDP would.
            let _ = self.socket.try_send_to(&bytes, to);
        }
    }
}

/// What one client sends and how patiently.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Client number (0-based).
    pub client: u32,
    /// Number of nodes.
    pub nodes: u64,
    /// Time between operation starts.
    pub period: Duration,
    /// Weights of put, get, cas.
    pub mix: [u32; 3],
    /// Number of keys.
    pub keys: Key,
    /// How long to wait for one attempt.
    pub timeout: Duration,
    /// Further attempts after a write timed out, with `retry_timed_out_writes`.
    pub retries: u32,
    /// Resend a write that timed out.
    pub retry_timed_out_writes: bool,
    /// Stop issuing operations at this time since the start.
    pub until: Duration,
    /// Seed for this client's choices.
    pub seed: u64,
}

/// Runs one client: an operation every `period`, at most one in flight, each recorded.
pub async fn client_task(world: WorldRef, plan: ClientPlan) -> turmoil::Result {
    let port = CLIENT_PORT_BASE + plan.client as u16;
    let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?;
    let mut ticker = tokio::time::interval(plan.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut client = Client {
        world: world.clone(),
        rng: SmallRng::seed_from_u64(plan.seed),
        channel_rng: SmallRng::seed_from_u64(plan.seed ^ 0xba1a_2ced_c4a2_2e15),
        refused_until_us: vec![0; plan.nodes as usize],
        seq: 0,
        register: RegisterClient::new(plan.client, plan.mix),
        buf: vec![0u8; 1024],
        socket,
        plan,
    };
    let name = format!("client{}", client.plan.client);
    let mut started = false;
    loop {
        ticker.tick().await;
        if turmoil::elapsed() >= client.plan.until {
            return Ok(());
        }
        // Like the real lab's clients, which start once the cluster is up, send nothing until a
        // first leader is elected.
        if !started {
            started = world.borrow().views.iter().any(|v| v.role == Role::Leader);
            if !started {
                continue;
            }
        }
        let kind = client.next_op();
        let invoke_us = now_us();
        world
            .borrow_mut()
            .in_flight
            .insert(client.plan.client, (kind, invoke_us));
        let (outcome, node) = client.perform(kind).await?;
        world.borrow_mut().in_flight.remove(&client.plan.client);
        let op = Op {
            id: 0, // numbered once the run ends (History::from_completed)
            client: client.plan.client,
            kind,
            invoke_us,
            complete_us: now_us(),
            outcome,
            node,
        };
        world.borrow_mut().record_op(&name, op);
    }
}

/// One workload client's state between operations.
///
/// Requests travel as `etcd-client`'s balanced channel sends them: each to a member picked at
/// random among those whose connection is up, whatever their role. A follower that knows the
/// leader passes the request on (here the client follows its redirect at once, the same number
/// of hops less one); a member that knows no leader drops the proposal, which the client sees as
/// an immediate failure; a member whose process is down refuses the connection at once, and the
/// channel leaves it out until it reconnects (one second later).
struct Client {
    /// For the current lossiness (duplicated requests) and which members are down.
    world: WorldRef,
    plan: ClientPlan,
    socket: UdpSocket,
    buf: Vec<u8>,
    rng: SmallRng,
    /// The channel's own draws, apart from the workload's, so the operations drawn do not depend
    /// on where they were sent.
    channel_rng: SmallRng,
    /// Per member (index 0 is n1): until when its connection is known refused, in µs.
    refused_until_us: Vec<u64>,
    seq: u64,
    /// What it issues next and remembers of each key.
    register: RegisterClient,
}

/// How long a refused connection stays out of the balanced channel.
const RECONNECT_US: u64 = 1_000_000;

/// How one attempt of an operation ended.
enum Attempt {
    /// An answer from `target`.
    Answered(Reply, u64),
    /// No answer within the timeout.
    TimedOut,
    /// `target`'s process is down: the connection was refused at once.
    Refused,
}

impl Client {
    /// Draws the next operation from the mix.
    fn next_op(&mut self) -> OpKind {
        let key = self.rng.gen_range(0..self.plan.keys);
        let pick = self.rng.gen_range(0..self.register.total_weight());
        self.register.next_op(key, pick)
    }

    /// A member for the next request: at random among those not known refused (all of them, if
    /// every one is).
    fn pick_member(&mut self) -> u64 {
        let now = now_us();
        let ready: Vec<u64> = (1..=self.plan.nodes)
            .filter(|&m| self.refused_until_us[NodeId(m).index()] <= now)
            .collect();
        if ready.is_empty() {
            return self.channel_rng.gen_range(1..=self.plan.nodes);
        }
        ready[self.channel_rng.gen_range(0..ready.len())]
    }

    /// Sends `op` through the channel until it is answered, fails or times out; returns its
    /// outcome and the node that answered.
    async fn perform(&mut self, op: OpKind) -> std::io::Result<(Outcome, Option<String>)> {
        let mut resends = 0;
        let mut target = self.pick_member();
        let mut redirects = 0;
        loop {
            match self.attempt(op, target).await? {
                Attempt::TimedOut => {
                    // No answer: a write may still commit, so its outcome is unknown; a read
                    // changed nothing, so it simply failed.
                    if op.is_write()
                        && self.plan.retry_timed_out_writes
                        && resends < self.plan.retries
                    {
                        resends += 1;
                        target = self.pick_member();
                        continue;
                    }
                    let outcome = if op.is_write() {
                        Outcome::Info
                    } else {
                        Outcome::Fail
                    };
                    return Ok((outcome, None));
                }
                Attempt::Refused => {
                    self.refused_until_us[NodeId(target).index()] = now_us() + RECONNECT_US;
                    return Ok((Outcome::Fail, None));
                }
                Attempt::Answered(Reply::NotLeader { hint }, _) => {
                    // A follower passes the request to the leader it knows; with none, the
                    // proposal is dropped and the client gets an error.
                    if hint == 0 || redirects >= self.plan.nodes {
                        return Ok((Outcome::Fail, None));
                    }
                    redirects += 1;
                    target = hint;
                }
                Attempt::Answered(reply, answered) => {
                    let outcome = self.learn(op, reply);
                    return Ok((outcome, Some(NodeId(answered).to_string())));
                }
            }
        }
    }

    /// One request to `target` and its reply.
    async fn attempt(&mut self, op: OpKind, target: u64) -> std::io::Result<Attempt> {
        if self.world.borrow().views[NodeId(target).index()].role == Role::Down {
            return Ok(Attempt::Refused);
        }
        self.seq += 1;
        let seq = self.seq;
        let client = self.plan.client;
        let request = Packet::Request(Request { client, seq, op }).encode();
        let _ = self.socket.try_send_to(&request, node_addr(target));
        // Drawn only while the fault is on, so runs without it keep every other draw in place.
        let twice = self.world.borrow().lossiness.duplicate_requests;
        if twice > 0.0 && self.rng.gen_bool(twice) {
            let _ = self.socket.try_send_to(&request, node_addr(target));
        }
        let (socket, buf) = (&self.socket, &mut self.buf);
        let reply = tokio::time::timeout(self.plan.timeout, async {
            loop {
                let (len, _) = socket.recv_from(buf).await?;
                if let Ok(Packet::Reply { seq: s, reply, .. }) = Packet::decode(&buf[..len]) {
                    if s == seq {
                        return Ok::<Reply, std::io::Error>(reply);
                    }
                }
            }
        })
        .await;
        match reply {
            Err(_elapsed) => Ok(Attempt::TimedOut),
            Ok(reply) => Ok(Attempt::Answered(reply?, target)),
        }
    }

    /// The outcome of an answered operation; what it read or wrote becomes the key's last value.
    fn learn(&mut self, op: OpKind, reply: Reply) -> Outcome {
        let outcome = match reply {
            Reply::Get(read) => Outcome::Ok {
                read: Some(read),
                swapped: None,
            },
            Reply::Cas(swapped) => Outcome::Ok {
                read: None,
                swapped: Some(swapped),
            },
            _ => Outcome::Ok {
                read: None,
                swapped: None,
            },
        };
        self.register.learn(op, &outcome);
        outcome
    }
}
