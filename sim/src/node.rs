//! One etcd member as a pure state machine: raft-rs's `RawNode` plus the key-value store on top.
//!
//! An [`EtcdNode`] is driven only by [`EtcdNode::tick`], [`EtcdNode::step`] (a Raft message from a
//! peer) and [`EtcdNode::request`] (a client's request), and answers with [`Output`]s: messages to
//! send, replies to clients and observations for the trace. It never touches a socket or a clock,
//! which is why the turmoil adapter in [`crate::host`] can run it in simulated time; a tokio adapter
//! could run it on a real network unchanged.
//!
//! Raft is configured as etcd 3.4 runs it: one tick per heartbeat interval, an election timeout of
//! ten ticks randomized in [10, 20), pre-vote and check-quorum on, and linearizable reads through
//! ReadIndex (`ReadOnlyOption::Safe`). Writes go through the log; reads do not.

use std::collections::{BTreeMap, BTreeSet};

use quorumlab_experiment::history::{Key, OpKind, Value};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, ReadOnlyOption, StateRole, Storage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::wire::{Command, Reply, Request};

/// The Raft role of a node, as shown in timelines.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before starting a real election (does not bump the term).
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
    /// Process not running (crashed).
    Down,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Down => "down",
        })
    }
}

/// Static settings of one member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Raft id (1-based; node `n3` has id 3).
    pub id: u64,
    /// Number of voters; ids are `1..=voters`.
    pub voters: u64,
    /// Election timeout in ticks (etcd: election-timeout / heartbeat-interval).
    pub election_ticks: usize,
    /// Seed for this incarnation's election-timeout randomization.
    pub rng_seed: u64,
    /// The deliberately broken build: answer gets from local state on any node, without ReadIndex.
    pub stale_reads: bool,
}

/// Something the node wants done or known.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a Raft message to peer `msg.to`.
    Send(Message),
    /// Answer a client.
    Reply {
        /// The client.
        client: u32,
        /// Its request's sequence number.
        seq: u64,
        /// The answer.
        reply: Reply,
    },
    /// The node's role or term changed.
    Role {
        /// New role.
        role: Role,
        /// Current term.
        term: u64,
        /// Leader this node knows of (0 if none).
        leader: u64,
    },
    /// This node granted a (pre-)vote.
    VoteGranted {
        /// Candidate that got the vote.
        to: u64,
        /// Term the vote is for.
        term: u64,
        /// A pre-vote, which does not change any term.
        pre_vote: bool,
    },
    /// A committed entry was applied to the key-value store.
    Applied {
        /// Log index.
        index: u64,
        /// Term the entry was proposed in.
        term: u64,
        /// Entry payload (empty for a leader's no-op).
        data: Vec<u8>,
    },
    /// Entries were written to the node's durable log (replacing any from the first index on).
    Persisted {
        /// The node's current term when it wrote them.
        node_term: u64,
        /// `(index, term, fingerprint of the payload)`, in index order.
        entries: Vec<(u64, u64, u64)>,
    },
}

/// One etcd member: Raft consensus plus the key-value state machine it replicates.
pub struct EtcdNode {
    raw: RawNode<MemStorage>,
    store: MemStorage,
    config: NodeConfig,
    kv: BTreeMap<Key, Value>,
    rng: SmallRng,
    /// Writes this node proposed as leader, waiting to be applied: (client, seq).
    proposed: BTreeSet<(u32, u64)>,
    /// Reads waiting for ReadIndex confirmation, by context.
    reads_confirming: BTreeMap<Vec<u8>, Request>,
    /// Reads confirmed at a read index, waiting for apply to reach it.
    reads_applying: Vec<(u64, Request)>,
    role: Role,
    term: u64,
    outputs: Vec<Output>,
}

impl EtcdNode {
    /// Starts a member on `store`, the durable Raft state that survives a crash. A fresh store
    /// gets the voter set; an existing one keeps its log and hard state, and the key-value store is
    /// rebuilt by replaying the committed log.
    pub fn start(config: NodeConfig, store: MemStorage) -> EtcdNode {
        assert!(
            config.id >= 1 && config.id <= config.voters,
            "node id outside the voter set"
        );
        if store
            .initial_state()
            .expect("memory storage")
            .conf_state
            .voters
            .is_empty()
        {
            let voters: Vec<u64> = (1..=config.voters).collect();
            store.wl().set_conf_state(ConfState::from((voters, vec![])));
        }
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: 1,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            // Appends stay well inside one datagram (see host::DATAGRAM_BYTES_MAX).
            max_size_per_msg: 64 * 1024,
            max_inflight_msgs: 256,
            applied: 0,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, store.clone(), &logger).expect("valid raft config");
        let mut node = EtcdNode {
            raw,
            store,
            rng: SmallRng::seed_from_u64(config.rng_seed),
            config,
            kv: BTreeMap::new(),
            proposed: BTreeSet::new(),
            reads_confirming: BTreeMap::new(),
            reads_applying: Vec::new(),
            role: Role::Follower,
            term: 0,
            outputs: Vec::new(),
        };
        node.settle();
        node
    }

    /// Advances the logical clock by one heartbeat interval.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.settle();
    }

    /// Handles a Raft message from a peer.
    pub fn step(&mut self, msg: Message) {
        debug_assert_eq!(
            msg.to, self.config.id,
            "message delivered to the wrong node"
        );
        // Errors here are stale or foreign messages (e.g. from a peer not in the voter set); Raft
        // ignores them by design, and so do we.
        let _ = self.raw.step(msg);
        self.settle();
    }

    /// Handles a client request.
    pub fn request(&mut self, request: Request) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        match request.op {
            OpKind::Get { key } if self.config.stale_reads => {
                let value = self.kv.get(&key).copied();
                self.reply(request, Reply::Get(value));
            }
            _ if !is_leader => {
                let hint = self.raw.raft.leader_id;
                self.reply(request, Reply::NotLeader { hint });
            }
            OpKind::Get { .. } => {
                let ctx = read_context(&request);
                self.reads_confirming.insert(ctx.clone(), request);
                self.raw.read_index(ctx);
            }
            op @ (OpKind::Put { .. } | OpKind::Cas { .. }) => {
                let command = Command {
                    client: request.client,
                    seq: request.seq,
                    op,
                };
                match self.raw.propose(vec![], command.encode()) {
                    Ok(()) => {
                        self.proposed.insert((request.client, request.seq));
                    }
                    Err(_) => self.reply(request, Reply::NotLeader { hint: 0 }),
                }
            }
        }
        self.settle();
    }

    /// Takes everything the node produced since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.outputs.drain(..)
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Highest log index known committed.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Highest log index applied to the key-value store.
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// The durable Raft state (log and hard state).
    pub fn store(&self) -> &MemStorage {
        &self.store
    }

    fn reply(&mut self, request: Request, reply: Reply) {
        self.outputs.push(Output::Reply {
            client: request.client,
            seq: request.seq,
            reply,
        });
    }

    /// Processes everything raft-rs has ready, until it has nothing more: persist, send, apply.
    fn settle(&mut self) {
        self.derandomize_election_timeout();
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            self.send_all(ready.take_messages());
            for rs in ready.take_read_states() {
                if let Some(request) = self.reads_confirming.remove(&rs.request_ctx) {
                    self.reads_applying.push((rs.index, request));
                }
            }
            self.apply(ready.take_committed_entries());
            if !ready.entries().is_empty() {
                self.store
                    .wl()
                    .append(ready.entries())
                    .expect("append to memory storage");
                self.outputs.push(Output::Persisted {
                    node_term: self.raw.raft.term,
                    entries: ready
                        .entries()
                        .iter()
                        .map(|e| (e.index, e.term, crate::invariants::fingerprint(&e.data)))
                        .collect(),
                });
            }
            if let Some(hs) = ready.hs() {
                self.store.wl().set_hardstate(hs.clone());
            }
            self.send_all(ready.take_persisted_messages());
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.store.wl().mut_hard_state().set_commit(commit);
            }
            self.send_all(light.take_messages());
            self.apply(light.take_committed_entries());
            self.raw.advance_apply();
            self.answer_applied_reads();
        }
        self.observe_role();
    }

    /// raft-rs draws each randomized election timeout from the thread-local RNG, which would make
    /// runs differ for the same seed. Whenever raft-rs has just reset its election clock, redraw the
    /// timeout from this node's seeded RNG, over the same range, before it is ever compared.
    fn derandomize_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let ticks = self.config.election_ticks;
            let timeout = self.rng.gen_range(ticks..2 * ticks);
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    fn send_all(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            let granted = !msg.reject
                && matches!(
                    msg.get_msg_type(),
                    MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
                );
            if granted {
                self.outputs.push(Output::VoteGranted {
                    to: msg.to,
                    term: msg.term,
                    pre_vote: msg.get_msg_type() == MessageType::MsgRequestPreVoteResponse,
                });
            }
            self.outputs.push(Output::Send(msg));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                let command =
                    Command::decode(&entry.data).expect("the log holds only our commands");
                let reply = self.apply_command(&command.op);
                if self.proposed.remove(&(command.client, command.seq)) {
                    self.outputs.push(Output::Reply {
                        client: command.client,
                        seq: command.seq,
                        reply,
                    });
                }
            }
            self.outputs.push(Output::Applied {
                index: entry.index,
                term: entry.term,
                data: entry.data.to_vec(),
            });
        }
    }

    fn apply_command(&mut self, op: &OpKind) -> Reply {
        match *op {
            OpKind::Put { key, value } => {
                self.kv.insert(key, value);
                Reply::Put
            }
            OpKind::Cas { key, expect, new } => {
                let swap = self.kv.get(&key) == Some(&expect);
                if swap {
                    self.kv.insert(key, new);
                }
                Reply::Cas(swap)
            }
            OpKind::Get { .. } => unreachable!("gets are never written to the log"),
        }
    }

    fn answer_applied_reads(&mut self) {
        let applied = self.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads_applying
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.reads_applying = waiting;
        for (_, request) in ready {
            let value = self.kv.get(&request.op.key()).copied();
            self.reply(request, Reply::Get(value));
        }
    }

    fn observe_role(&mut self) {
        let role = Role::from(self.raw.raft.state);
        let term = self.raw.raft.term;
        if (role, term) == (self.role, self.term) {
            return;
        }
        assert!(
            term >= self.term,
            "term went backwards on n{}: {} -> {term}",
            self.config.id,
            self.term
        );
        if self.role == Role::Leader && role != Role::Leader {
            // Stepping down: in-flight requests get no answer, so clients see an unknown outcome
            // for writes (they may still commit under the next leader) and a timeout for reads.
            self.proposed.clear();
            self.reads_confirming.clear();
            self.reads_applying.clear();
        }
        self.role = role;
        self.term = term;
        self.outputs.push(Output::Role {
            role,
            term,
            leader: self.raw.raft.leader_id,
        });
    }
}

fn read_context(request: &Request) -> Vec<u8> {
    let mut ctx = request.client.to_le_bytes().to_vec();
    ctx.extend_from_slice(&request.seq.to_le_bytes());
    ctx
}
