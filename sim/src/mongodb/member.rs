//! One replica set member as a pure state machine (protocol version 1): it is driven by
//! [`Member::tick`], [`Member::receive`] and the client calls, and answers with [`Effects`]:
//! messages to send, replies to clients and what happened, for the trace and the run's checks.
//!
//! What it models, after MongoDB's replication coordinator:
//! - **heartbeats** every `heartbeat_interval`, to and from every member; a member's view of the
//!   others (state, term, optimes, round-trip time) comes from them;
//! - **elections**: a secondary that hears no primary for `election_timeout` plus a random offset
//!   (up to 15% of it) stands if it is electable (priority > 0, not in a step-down period, sees a
//!   majority); a dry run first (no term change), then the real vote in `term + 1`. Voters refuse
//!   an older term, a second candidate in one term, and a candidate whose oplog is behind theirs;
//! - **priority takeover**: a secondary with a higher priority than the primary stands after
//!   `(rank + 1) * election_timeout` (rank: members above it) if it is within 2 s of the primary;
//! - a new primary's **catch-up** (to the newest optime a member it sees has, within
//!   `catch_up_timeout`), drain, and its first entry, a no-op in the new term;
//! - **the oplog**: secondaries pull from a sync source (the primary, or with chaining the
//!   nearest member ahead of them), apply at a set rate and report their positions upstream; the
//!   primary's **majority commit point** is the newest optime a majority has written, in its own
//!   term, and travels to the secondaries with heartbeats and batches;
//! - **write concern** `w:1` (acknowledged once applied on the primary) and `w:"majority"` (once
//!   the commit point passes it, or a write-concern error at `wtimeout`); **read concern** `local`
//!   and `majority`;
//! - a primary that **cannot see a majority** for `election_timeout` steps down, and so does one
//!   that sees a newer term; `replSetStepDown` waits for an electable secondary to catch up, then
//!   hands the election off to it (`replSetStepUp`, no dry run);
//! - **rollback**: a member whose oplog has entries its sync source lacks finds their common
//!   point and removes everything after it.
//!
//! Left out: arbiters, non-voting and hidden members, catch-up takeover, initial sync, oplog
//! truncation and the storage engine's own costs.

use std::collections::{BTreeMap, BTreeSet};

use quorumlab_experiment::mongodb::{ReadConcern, WriteConcern};
use quorumlab_experiment::node::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::oplog::{Entry, OpTime, Oplog};

/// Most entries one batch carries.
const BATCH_ENTRIES_MAX: usize = 1000;
/// How long a sync source holds a fetch when it has nothing new (`awaitData`).
const FETCH_AWAIT_US: u64 = 1_000_000;
/// An idle primary writes a no-op this often (`periodicNoopIntervalSecs`).
const PERIODIC_NOOP_US: u64 = 10_000_000;
/// How close to the primary a priority-takeover candidate must be
/// (`priorityTakeoverFreshnessWindowSeconds`).
const TAKEOVER_FRESHNESS_US: u64 = 2_000_000;

/// What every member of a set is configured with, as `rs.conf()` says, plus its own id.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This member.
    pub id: NodeId,
    /// Each member's priority, in member order.
    pub priorities: Vec<f64>,
    /// `heartbeatIntervalMillis`, in µs.
    pub heartbeat_interval_us: u64,
    /// `electionTimeoutMillis`, in µs.
    pub election_timeout_us: u64,
    /// `catchUpTimeoutMillis` in µs; `None` waits without limit.
    pub catch_up_timeout_us: Option<u64>,
    /// `chainingAllowed`.
    pub chaining_allowed: bool,
    /// Oplog entries a secondary applies per second.
    pub apply_ops_per_s: u64,
    /// Seeds this member's election offsets.
    pub rng_seed: u64,
}

impl MemberConfig {
    fn members(&self) -> usize {
        self.priorities.len()
    }

    fn majority(&self) -> usize {
        self.members() / 2 + 1
    }

    fn priority_of(&self, id: NodeId) -> f64 {
        self.priorities[id.index()]
    }
}

/// A member's replica set state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Takes writes (once caught up and drained).
    Primary,
    /// Replicates from a sync source.
    Secondary,
}

/// A message between members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// `replSetHeartbeat` and its response: the sender's view of itself.
    Heartbeat {
        /// Sender's term.
        term: u64,
        /// Whether the sender is primary.
        primary: bool,
        /// Sender's newest written optime.
        written: OpTime,
        /// Sender's newest applied optime.
        applied: OpTime,
        /// Sender's majority commit point.
        commit_point: OpTime,
        /// The request's send time, echoed by a response (for the round-trip time).
        sent_us: u64,
        /// Whether this is the response.
        response: bool,
    },
    /// `replSetRequestVotes`.
    RequestVote {
        /// The term the candidate stands in (its current term, for a dry run).
        term: u64,
        /// A dry run: would you vote? (nobody's term changes)
        dry_run: bool,
        /// The candidate's newest written optime.
        last_written: OpTime,
    },
    /// The answer to a vote request.
    Vote {
        /// The term voted in.
        term: u64,
        /// Whether it answers a dry run.
        dry_run: bool,
        /// Whether the vote is granted.
        granted: bool,
    },
    /// An oplog fetch (`getMore` on the sync source's oplog) with the fetcher's progress and its
    /// downstream members' (`replSetUpdatePosition`).
    Fetch {
        /// Entries after this one, please.
        after: OpTime,
        /// The fetcher's commit point: a floor both oplogs share.
        commit_point: OpTime,
        /// (member, written, applied) for the fetcher and those syncing from it.
        positions: Vec<(NodeId, OpTime, OpTime)>,
    },
    /// A batch of entries, with the source's term and commit point.
    Batch {
        /// Source's term.
        term: u64,
        /// The fetch it answers.
        after: OpTime,
        /// Entries after `after`.
        entries: Vec<Entry>,
        /// Source's commit point.
        commit_point: OpTime,
    },
    /// The source lacks the fetch's `after`: the fetcher has diverged (or the source cannot serve
    /// it, when `base` is not shared). Carries the source's optimes after `base`.
    Diverged {
        /// Source's term.
        term: u64,
        /// The fetcher's commit point, which the source has too (`None`: it does not, so it is
        /// no sync source for this fetcher).
        base: Option<OpTime>,
        /// The source's optimes after `base`.
        optimes: Vec<OpTime>,
    },
    /// `replSetUpdatePosition`: a secondary's progress (and its downstream members'), sent to its
    /// sync source whenever it has applied more.
    UpdatePosition {
        /// (member, written, applied).
        positions: Vec<(NodeId, OpTime, OpTime)>,
    },
    /// `replSetStepUp` (election handoff): stand now, without a dry run.
    StepUp {
        /// Sender's term.
        term: u64,
    },
}

impl Msg {
    fn term(&self) -> Option<u64> {
        match *self {
            Msg::Heartbeat { term, .. }
            | Msg::Vote { term, .. }
            | Msg::Batch { term, .. }
            | Msg::Diverged { term, .. }
            | Msg::StepUp { term } => Some(term),
            Msg::RequestVote { term, dry_run, .. } => (!dry_run).then_some(term),
            Msg::Fetch { .. } | Msg::UpdatePosition { .. } => None,
        }
    }
}

/// A write's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    /// Acknowledged at the write concern asked for.
    Ok,
    /// `NotWritablePrimary`: refused, nothing written.
    NotPrimary,
    /// `writeConcernError` (`wtimeout`): written on the primary, not yet on a majority.
    WriteConcernTimeout,
    /// `InterruptedDueToReplStateChange`: the primary stepped down while the write waited.
    Interrupted,
}

/// What one call made happen.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages to other members.
    pub send: Vec<(NodeId, Msg)>,
    /// Replies to waiting writes, by the token the host gave them.
    pub replies: Vec<(u64, WriteReply)>,
    /// Trace lines.
    pub events: Vec<String>,
    /// Optimes newly majority-committed (on a primary).
    pub committed: Vec<OpTime>,
    /// Entries this member rolled back.
    pub rolled_back: Vec<Entry>,
    /// The term this member became primary in.
    pub became_primary: Option<u64>,
}

/// What a member knows of another, from heartbeats and fetches.
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    last_heard_us: Option<u64>,
    primary: bool,
    term: u64,
    written: OpTime,
    applied: OpTime,
    ping_us: u64,
}

/// A candidacy in progress.
#[derive(Debug, Clone)]
struct Candidacy {
    term: u64,
    dry_run: bool,
    granted: BTreeSet<NodeId>,
    denied: BTreeSet<NodeId>,
    until_us: u64,
    why: &'static str,
}

/// A new primary's catch-up: the members whose heartbeat answers it awaits, the newest optime
/// they reported (and who has it), and when it gives up.
#[derive(Debug, Clone)]
struct CatchUp {
    awaiting: BTreeSet<NodeId>,
    target: Option<(OpTime, NodeId)>,
    until_us: Option<u64>,
}

/// A write waiting for the commit point (`w:"majority"`).
#[derive(Debug, Clone, Copy)]
struct Waiter {
    token: u64,
    optime: OpTime,
    deadline_us: Option<u64>,
}

/// What survives a crash: the oplog (journaled), the term and the last vote
/// (`local.replset.election`).
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// The oplog.
    pub oplog: Oplog,
    /// The term.
    pub term: u64,
    /// The last vote: (term, candidate).
    pub voted: Option<(u64, NodeId)>,
    /// The commit point last known (a floor for the common point after a restart).
    pub commit_point: OpTime,
}

/// One replica set member.
#[derive(Debug)]
pub struct Member {
    config: MemberConfig,
    rng: SmallRng,
    durable: Durable,
    state: MemberState,
    writable: bool,
    peers: Vec<Peer>,
    election_deadline_us: u64,
    takeover_at_us: Option<u64>,
    step_down_until_us: u64,
    candidacy: Option<Candidacy>,
    catch_up: Option<CatchUp>,
    stepping_down: Option<(u64, u64)>,
    sync_source: Option<NodeId>,
    fetch_sent_us: Option<u64>,
    /// Sync sources whose fetch timed out, not to be chosen again until then.
    denied_until_us: BTreeMap<NodeId, u64>,
    parked: BTreeMap<NodeId, (OpTime, u64)>,
    positions: BTreeMap<NodeId, (OpTime, OpTime)>,
    waiters: Vec<Waiter>,
    next_heartbeat_us: u64,
    apply_credit: f64,
    last_tick_us: u64,
    last_write_us: u64,
}

impl Member {
    /// A member starting (or restarting) from `durable` state at `now_us`, as a secondary.
    pub fn start(config: MemberConfig, durable: Durable, now_us: u64) -> Member {
        let peers = vec![Peer::default(); config.members()];
        let rng = SmallRng::seed_from_u64(config.rng_seed);
        let mut member = Member {
            config,
            rng,
            durable,
            state: MemberState::Secondary,
            writable: false,
            peers,
            election_deadline_us: 0,
            takeover_at_us: None,
            step_down_until_us: 0,
            candidacy: None,
            catch_up: None,
            stepping_down: None,
            sync_source: None,
            fetch_sent_us: None,
            denied_until_us: BTreeMap::new(),
            parked: BTreeMap::new(),
            positions: BTreeMap::new(),
            waiters: vec![],
            next_heartbeat_us: now_us,
            apply_credit: 0.0,
            last_tick_us: now_us,
            last_write_us: now_us,
        };
        // Members' heartbeats start at seeded phases, as independent processes' would.
        member.next_heartbeat_us =
            now_us + member.rng.gen_range(0..member.config.heartbeat_interval_us);
        // Recovery replays the journaled oplog before the member serves.
        let unapplied = member.durable.oplog.unapplied();
        member.durable.oplog.apply(unapplied);
        member.reset_election_timer(now_us);
        member
    }

    /// The set as `rs.initiate()` leaves it: this member primary in term 1 (when `primary`),
    /// every member with the initiating no-op entry.
    pub fn initiated(config: MemberConfig, primary: bool, now_us: u64) -> Member {
        let mut oplog = Oplog::default();
        let first = OpTime {
            term: 1,
            ts_us: now_us,
        };
        oplog.append(Entry {
            optime: first,
            write_id: None,
            heartbeat: None,
        });
        let durable = Durable {
            oplog,
            term: 1,
            voted: None,
            commit_point: first,
        };
        let mut member = Member::start(config, durable, now_us);
        // Everyone was just heard from: the set was initiated together.
        for peer in &mut member.peers {
            peer.last_heard_us = Some(now_us);
        }
        if primary {
            member.state = MemberState::Primary;
            member.writable = true;
        }
        member
    }

    /// What survives if the process dies now.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Its term.
    pub fn term(&self) -> u64 {
        self.durable.term
    }

    /// Whether it is primary and takes writes (`hello().isWritablePrimary`).
    pub fn is_writable_primary(&self) -> bool {
        self.state == MemberState::Primary && self.writable
    }

    /// Its state.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// Its majority commit point.
    pub fn commit_point(&self) -> OpTime {
        self.durable.commit_point
    }

    /// Its newest applied optime (`optime` in `replSetGetStatus`).
    pub fn last_applied(&self) -> OpTime {
        self.durable.oplog.last_applied()
    }

    /// The ids of every document it holds.
    pub fn write_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.durable.oplog.write_ids()
    }

    /// `replSetGetStatus` on this member: each member's applied optime as this one knows it
    /// (its own exactly; the others' from their reported positions and heartbeats).
    pub fn status(&self) -> Vec<(NodeId, OpTime)> {
        NodeId::all(self.config.members())
            .map(|id| {
                if id == self.config.id {
                    return (id, self.last_applied());
                }
                let reported = self.positions.get(&id).map_or(OpTime::default(), |p| p.1);
                (id, reported.max(self.peers[id.index()].applied))
            })
            .collect()
    }

    /// A read at `concern` on the primary: the newest visible insert's id (`NotPrimary` off it).
    pub fn read(&self, concern: ReadConcern) -> Result<Option<u64>, WriteReply> {
        if !self.is_writable_primary() {
            return Err(WriteReply::NotPrimary);
        }
        Ok(self.durable.oplog.visible(self.read_point(concern)).1)
    }

    /// The newest heartbeat document this member shows at read concern `local`: (sequence, its
    /// optime).
    pub fn newest_heartbeat(&self) -> Option<(u64, OpTime)> {
        self.durable.oplog.visible(self.last_applied()).0
    }

    fn read_point(&self, concern: ReadConcern) -> OpTime {
        match concern {
            ReadConcern::Local => self.last_applied(),
            ReadConcern::Majority => self.durable.commit_point.min(self.last_applied()),
        }
    }

    /// An insert of `write_id` (a heartbeat document when `heartbeat` is given) at `w`: answered
    /// now, or later through [`Effects::replies`] under `token`.
    pub fn insert(
        &mut self,
        (token, write_id, heartbeat): (u64, u64, Option<u64>),
        (w, wtimeout_us): (WriteConcern, Option<u64>),
        now_us: u64,
        fx: &mut Effects,
    ) -> Option<WriteReply> {
        if !self.is_writable_primary() {
            return Some(WriteReply::NotPrimary);
        }
        let optime = self.write(Some(write_id), heartbeat, now_us);
        match w {
            WriteConcern::W1 => Some(WriteReply::Ok),
            WriteConcern::Majority => {
                self.waiters.push(Waiter {
                    token,
                    optime,
                    deadline_us: wtimeout_us.map(|t| now_us + t),
                });
                self.advance_commit_point(fx);
                None
            }
        }
    }

    /// `replSetStepDown`: stop taking writes, wait up to `catch_up_secs` for an electable
    /// secondary to catch up, then step down for `step_down_secs`.
    pub fn step_down_command(
        &mut self,
        (step_down_secs, catch_up_secs): (u64, u64),
        now_us: u64,
        fx: &mut Effects,
    ) {
        if !self.is_writable_primary() {
            fx.events
                .push("replSetStepDown refused: not primary".into());
            return;
        }
        self.writable = false;
        self.stepping_down = Some((now_us + catch_up_secs * 1_000_000, step_down_secs));
        fx.events.push(format!(
            "replSetStepDown: writes blocked, waiting up to {catch_up_secs} s for an electable secondary"
        ));
        self.try_finish_step_down(now_us, fx);
    }

    /// Time passes: heartbeats, applying, timers.
    pub fn tick(&mut self, now_us: u64, fx: &mut Effects) {
        if now_us >= self.next_heartbeat_us {
            self.next_heartbeat_us = now_us + self.config.heartbeat_interval_us;
            for peer in self.others() {
                let beat = self.heartbeat(now_us, false);
                fx.send.push((peer, beat));
            }
        }
        if self.apply(now_us) > 0 && self.state == MemberState::Secondary {
            self.report_position(fx);
        }
        self.release_parked(now_us, fx);
        match self.state {
            MemberState::Primary => self.tick_primary(now_us, fx),
            MemberState::Secondary => self.tick_secondary(now_us, fx),
        }
        self.tick_catch_up(now_us, fx);
        self.check_invariants();
    }

    fn tick_primary(&mut self, now_us: u64, fx: &mut Effects) {
        if !self.sees_majority(now_us) {
            self.step_down(
                now_us,
                "can't see a majority of the set, relinquishing primary",
                fx,
            );
            return;
        }
        if self.stepping_down.is_some() {
            self.try_finish_step_down(now_us, fx);
        }
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|w| w.deadline_us.is_some_and(|d| now_us >= d))
            .map(|w| w.token)
            .collect();
        self.waiters.retain(|w| !expired.contains(&w.token));
        fx.replies.extend(
            expired
                .into_iter()
                .map(|t| (t, WriteReply::WriteConcernTimeout)),
        );
        if self.writable && now_us >= self.last_write_us + PERIODIC_NOOP_US {
            self.write(None, None, now_us);
            self.advance_commit_point(fx);
        }
    }

    fn tick_secondary(&mut self, now_us: u64, fx: &mut Effects) {
        if let Some(c) = &self.candidacy {
            if now_us >= c.until_us {
                fx.events
                    .push(format!("{} lost: no majority of votes in time", c.why));
                self.candidacy = None;
                self.reset_election_timer(now_us);
            }
        }
        if self.candidacy.is_none() && now_us >= self.election_deadline_us {
            self.reset_election_timer(now_us);
            self.stand(
                now_us,
                "election (no primary heard in the election timeout)",
                true,
                fx,
            );
        }
        if self.takeover_at_us.is_some_and(|t| now_us >= t) {
            self.takeover_at_us = None;
            if self.fresh_for_takeover(now_us) {
                self.stand(now_us, "priority takeover", true, fx);
            }
        }
        self.keep_fetching(now_us, fx);
    }

    /// A message from another member.
    pub fn receive(&mut self, from: NodeId, msg: Msg, now_us: u64, fx: &mut Effects) {
        self.peers[from.index()].last_heard_us = Some(now_us);
        if let Some(term) = msg.term() {
            if term > self.durable.term {
                self.durable.term = term;
                self.candidacy = None;
                if self.state == MemberState::Primary {
                    self.step_down(now_us, "a new term has begun", fx);
                }
            }
        }
        match msg {
            Msg::Heartbeat { .. } => self.on_heartbeat(from, msg, now_us, fx),
            Msg::RequestVote {
                term,
                dry_run,
                last_written,
            } => {
                let granted = self.vote(from, term, dry_run, last_written);
                let term = if dry_run { term } else { self.durable.term };
                let vote = Msg::Vote {
                    term,
                    dry_run,
                    granted,
                };
                fx.send.push((from, vote));
            }
            Msg::Vote {
                term,
                dry_run,
                granted,
            } => self.on_vote(from, (term, dry_run, granted), now_us, fx),
            Msg::Fetch {
                after,
                commit_point,
                positions,
            } => self.on_fetch(from, (after, commit_point), positions, now_us, fx),
            Msg::Batch {
                after,
                entries,
                commit_point,
                ..
            } => self.on_batch(from, after, entries, commit_point, now_us, fx),
            Msg::Diverged { base, optimes, .. } => self.on_diverged(from, base, &optimes, fx),
            Msg::UpdatePosition { positions } => self.on_positions(positions, now_us, fx),
            Msg::StepUp { .. } => {
                if self.state == MemberState::Secondary && self.electable(now_us, false) {
                    self.start_real_election(now_us, "election handed off (replSetStepUp)", fx);
                }
            }
        }
        self.check_invariants();
    }

    fn heartbeat(&self, now_us: u64, response: bool) -> Msg {
        Msg::Heartbeat {
            term: self.durable.term,
            primary: self.state == MemberState::Primary,
            written: self.durable.oplog.last_written(),
            applied: self.last_applied(),
            commit_point: self.durable.commit_point,
            sent_us: now_us,
            response,
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, msg: Msg, now_us: u64, fx: &mut Effects) {
        let Msg::Heartbeat {
            term,
            primary,
            written,
            applied,
            commit_point,
            sent_us,
            response,
        } = msg
        else {
            return;
        };
        let peer = &mut self.peers[from.index()];
        (peer.term, peer.primary, peer.written, peer.applied) = (term, primary, written, applied);
        if response {
            peer.ping_us = now_us.saturating_sub(sent_us);
            self.catch_up_heard(from, written);
        } else {
            let reply = self.heartbeat(sent_us, true);
            fx.send.push((from, reply));
        }
        if primary && term >= self.durable.term && self.state == MemberState::Secondary {
            self.reset_election_timer(now_us);
            self.learn_commit_point(commit_point);
            self.maybe_schedule_takeover(from, now_us);
        }
        if self.state == MemberState::Primary {
            self.advance_commit_point(fx);
            self.try_finish_step_down(now_us, fx);
        }
    }

    /// Whether to grant a vote (and, for a real one, record it durably).
    fn vote(&mut self, candidate: NodeId, term: u64, dry_run: bool, theirs: OpTime) -> bool {
        if term < self.durable.term || theirs < self.durable.oplog.last_written() {
            return false;
        }
        if dry_run {
            return true;
        }
        match self.durable.voted {
            Some((t, other)) if t == term && other != candidate => false,
            _ => {
                self.durable.voted = Some((term, candidate));
                true
            }
        }
    }

    fn on_vote(
        &mut self,
        from: NodeId,
        (term, dry_run, granted): (u64, bool, bool),
        now_us: u64,
        fx: &mut Effects,
    ) {
        let Some(c) = &mut self.candidacy else {
            return;
        };
        if c.term != term || c.dry_run != dry_run {
            return;
        }
        if !granted {
            c.denied.insert(from);
            if c.denied.len() > self.config.members() - self.config.majority() {
                fx.events
                    .push(format!("{} lost in term {term}: a majority refused", c.why));
                self.candidacy = None;
                self.reset_election_timer(now_us);
            }
            return;
        }
        c.granted.insert(from);
        if c.granted.len() < self.config.majority() {
            return;
        }
        let why = c.why;
        if dry_run {
            self.start_real_election(now_us, why, fx);
        } else {
            self.become_primary(now_us, why, fx);
        }
    }

    fn electable(&self, now_us: u64, need_majority: bool) -> bool {
        self.config.priority_of(self.config.id) > 0.0
            && now_us >= self.step_down_until_us
            && (!need_majority || self.sees_majority(now_us))
    }

    /// Stands for election: a dry run first, unless told otherwise.
    fn stand(&mut self, now_us: u64, why: &'static str, dry_run: bool, fx: &mut Effects) {
        if self.state != MemberState::Secondary || !self.electable(now_us, true) {
            return;
        }
        if !dry_run {
            self.start_real_election(now_us, why, fx);
            return;
        }
        fx.events
            .push(format!("{why}: dry run in term {}", self.durable.term));
        self.candidacy = Some(Candidacy {
            term: self.durable.term,
            dry_run: true,
            granted: [self.config.id].into(),
            denied: BTreeSet::new(),
            until_us: now_us + self.config.election_timeout_us,
            why,
        });
        self.request_votes(true, fx);
        self.on_vote(self.config.id, (self.durable.term, true, true), now_us, fx);
    }

    fn start_real_election(&mut self, now_us: u64, why: &'static str, fx: &mut Effects) {
        self.durable.term += 1;
        let term = self.durable.term;
        self.durable.voted = Some((term, self.config.id));
        fx.events.push(format!("{why}: standing in term {term}"));
        self.candidacy = Some(Candidacy {
            term,
            dry_run: false,
            granted: [self.config.id].into(),
            denied: BTreeSet::new(),
            until_us: now_us + self.config.election_timeout_us,
            why,
        });
        self.request_votes(false, fx);
        self.on_vote(self.config.id, (term, false, true), now_us, fx);
    }

    fn request_votes(&mut self, dry_run: bool, fx: &mut Effects) {
        let request = Msg::RequestVote {
            term: self.durable.term,
            dry_run,
            last_written: self.durable.oplog.last_written(),
        };
        for peer in self.others() {
            fx.send.push((peer, request.clone()));
        }
    }

    /// Won: primary, but not writable until caught up and drained.
    fn become_primary(&mut self, now_us: u64, why: &'static str, fx: &mut Effects) {
        self.candidacy = None;
        self.takeover_at_us = None;
        self.state = MemberState::Primary;
        self.writable = false;
        self.positions.clear();
        // Heartbeats restart at once, so the others learn of the new primary now.
        self.next_heartbeat_us = now_us;
        fx.became_primary = Some(self.durable.term);
        fx.events
            .push(format!("{why}: won, primary in term {}", self.durable.term));
        // Catch-up: the target is the newest optime in the answers to the heartbeats restarted
        // just now, from every member this one believes up.
        let awaiting: BTreeSet<NodeId> = self
            .others()
            .filter(|p| self.heard_within(*p, now_us))
            .collect();
        self.catch_up = Some(CatchUp {
            awaiting,
            target: None,
            until_us: self.config.catch_up_timeout_us.map(|t| now_us + t),
        });
        self.tick_catch_up(now_us, fx);
    }

    /// A heartbeat answer while catching up: one fewer to wait for, and maybe a newer target.
    fn catch_up_heard(&mut self, from: NodeId, written: OpTime) {
        if let Some(c) = &mut self.catch_up {
            c.awaiting.remove(&from);
            if written > c.target.map_or(OpTime::default(), |t| t.0) {
                c.target = Some((written, from));
            }
        }
    }

    fn tick_catch_up(&mut self, now_us: u64, fx: &mut Effects) {
        let Some(c) = &self.catch_up else {
            return;
        };
        let written = self.durable.oplog.last_written();
        let timed_out = c.until_us.is_some_and(|u| now_us >= u);
        let awaiting = c.awaiting.iter().any(|p| self.heard_within(*p, now_us));
        let target = c.target.filter(|(t, _)| *t > written);
        match (timed_out, awaiting, target) {
            (true, _, _) => {
                if let Some((t, _)) = target {
                    fx.events
                        .push(format!("catch-up timed out before {t}: written {written}"));
                }
                let caught = self.durable.oplog.unapplied();
                self.finish_transition(now_us, caught, fx);
            }
            (false, true, _) => {}
            (false, false, None) => {
                let caught = self.durable.oplog.unapplied();
                self.finish_transition(now_us, caught, fx);
            }
            (false, false, Some((t, from))) => {
                if self.sync_source != Some(from) {
                    fx.events
                        .push(format!("catch-up: fetching to {t} from {from}"));
                    self.sync_source = Some(from);
                    self.fetch_sent_us = None;
                }
                if !self.heard_within(from, now_us) {
                    fx.events
                        .push(format!("catch-up abandoned: {from} is no longer heard"));
                    let caught = self.durable.oplog.unapplied();
                    self.finish_transition(now_us, caught, fx);
                    return;
                }
                self.keep_fetching(now_us, fx);
            }
        }
    }

    /// Drains what is written, writes the new term's first entry and takes writes.
    fn finish_transition(&mut self, now_us: u64, caught: usize, fx: &mut Effects) {
        self.catch_up = None;
        self.sync_source = None;
        self.fetch_sent_us = None;
        let unapplied = self.durable.oplog.unapplied();
        self.durable.oplog.apply(unapplied);
        self.write(None, None, now_us);
        self.writable = true;
        fx.events.push(format!(
            "transition to primary complete in term {} ({caught} entries drained); writes permitted",
            self.durable.term
        ));
    }

    fn step_down(&mut self, now_us: u64, why: &str, fx: &mut Effects) {
        fx.events.push(format!("stepping down: {why}"));
        self.next_heartbeat_us = now_us;
        self.state = MemberState::Secondary;
        self.writable = false;
        self.catch_up = None;
        self.stepping_down = None;
        self.sync_source = None;
        self.fetch_sent_us = None;
        fx.replies.extend(
            self.waiters
                .drain(..)
                .map(|w| (w.token, WriteReply::Interrupted)),
        );
        self.reset_election_timer(now_us);
    }

    /// `replSetStepDown`'s wait: an electable secondary has everything, and a majority has it.
    fn try_finish_step_down(&mut self, now_us: u64, fx: &mut Effects) {
        let Some((until_us, step_down_secs)) = self.stepping_down else {
            return;
        };
        let mine = self.durable.oplog.last_written();
        let caught_up = self
            .others()
            .filter(|p| self.written_of(*p) >= mine && self.heard_within(*p, now_us))
            .filter(|p| self.config.priority_of(*p) > 0.0)
            .max_by(|a, b| {
                let (pa, pb) = (self.config.priority_of(*a), self.config.priority_of(*b));
                pa.total_cmp(&pb).then(b.cmp(a))
            });
        match caught_up {
            Some(target) if self.durable.commit_point >= mine => {
                self.step_down(now_us, "replSetStepDown", fx);
                self.step_down_until_us = now_us + step_down_secs * 1_000_000;
                fx.events.push(format!("handing off election to {target}"));
                let term = self.durable.term;
                fx.send.push((target, Msg::StepUp { term }));
            }
            _ if now_us >= until_us => {
                self.stepping_down = None;
                self.writable = true;
                fx.events.push(
                    "replSetStepDown failed: no electable secondaries caught up; writes permitted again"
                        .into(),
                );
            }
            _ => {}
        }
    }

    fn maybe_schedule_takeover(&mut self, primary: NodeId, now_us: u64) {
        let mine = self.config.priority_of(self.config.id);
        if self.takeover_at_us.is_some() || mine <= self.config.priority_of(primary) {
            return;
        }
        let rank = self.config.priorities.iter().filter(|p| **p > mine).count() as u64;
        let offset = self.offset_us();
        self.takeover_at_us = Some(now_us + (rank + 1) * self.config.election_timeout_us + offset);
    }

    fn fresh_for_takeover(&self, now_us: u64) -> bool {
        let mine = self.config.priority_of(self.config.id);
        self.others()
            .filter(|p| self.peers[p.index()].primary && self.heard_within(*p, now_us))
            .any(|p| {
                let theirs = self.peers[p.index()].applied.ts_us;
                self.config.priority_of(p) < mine
                    && theirs.saturating_sub(self.last_applied().ts_us) <= TAKEOVER_FRESHNESS_US
            })
    }

    /// A secondary (or a catching-up primary) keeps one fetch outstanding at its sync source.
    fn keep_fetching(&mut self, now_us: u64, fx: &mut Effects) {
        let timeout = FETCH_AWAIT_US + self.config.heartbeat_interval_us;
        if self.fetch_sent_us.is_some_and(|t| now_us < t + timeout) {
            return;
        }
        if let (Some(_), Some(source)) = (self.fetch_sent_us, self.sync_source) {
            // A fetch that timed out: that source is left alone for an election timeout.
            let until = now_us + self.config.election_timeout_us;
            self.denied_until_us.insert(source, until);
            self.sync_source = None;
        }
        if self
            .sync_source
            .is_some_and(|s| !self.heard_within(s, now_us))
        {
            self.sync_source = None;
        }
        if self.sync_source.is_none() {
            self.sync_source = self.choose_sync_source(now_us);
        }
        if let Some(source) = self.sync_source {
            self.send_fetch(source, now_us, fx);
        }
    }

    /// Whether to leave `source`: it is no primary while chaining is off, or it is no primary,
    /// not ahead of this member, and someone else is.
    fn should_change_sync_source(&self, source: NodeId, now_us: u64) -> bool {
        let peer = &self.peers[source.index()];
        if peer.primary {
            return false;
        }
        if !self.config.chaining_allowed {
            return true;
        }
        let mine = self.durable.oplog.last_written();
        let someone_ahead = self
            .others()
            .any(|p| self.heard_within(p, now_us) && self.peers[p.index()].written > mine);
        peer.written <= mine && someone_ahead
    }

    /// The nearest member that is primary or ahead of this one (only the primary, without
    /// chaining). A source is kept while it answers, so a caught-up secondary stays tailing it.
    fn choose_sync_source(&self, now_us: u64) -> Option<NodeId> {
        let mine = self.durable.oplog.last_written();
        self.others()
            .filter(|p| self.heard_within(*p, now_us))
            .filter(|p| self.denied_until_us.get(p).is_none_or(|t| now_us >= *t))
            .filter(|p| {
                let peer = &self.peers[p.index()];
                let primary = peer.primary && peer.written >= mine;
                primary || (self.config.chaining_allowed && peer.written > mine)
            })
            .min_by_key(|p| (self.peers[p.index()].ping_us, *p))
    }

    fn send_fetch(&mut self, source: NodeId, now_us: u64, fx: &mut Effects) {
        let positions = self.positions_report();
        let fetch = Msg::Fetch {
            after: self.durable.oplog.last_written(),
            commit_point: self.durable.commit_point,
            positions,
        };
        self.fetch_sent_us = Some(now_us);
        fx.send.push((source, fetch));
    }

    fn on_fetch(
        &mut self,
        from: NodeId,
        (after, their_commit): (OpTime, OpTime),
        positions: Vec<(NodeId, OpTime, OpTime)>,
        now_us: u64,
        fx: &mut Effects,
    ) {
        self.on_positions(positions, now_us, fx);
        let oplog = &self.durable.oplog;
        if !oplog.contains(after) {
            let base = oplog.contains(their_commit).then_some(their_commit);
            let optimes = base.map_or(vec![], |b| oplog.optimes_after(b));
            let term = self.durable.term;
            fx.send.push((
                from,
                Msg::Diverged {
                    term,
                    base,
                    optimes,
                },
            ));
            return;
        }
        if oplog.last_written() > after {
            let batch = self.batch(after);
            fx.send.push((from, batch));
        } else {
            self.parked.insert(from, (after, now_us + FETCH_AWAIT_US));
        }
    }

    /// Progress reported by members syncing from this one (directly or down a chain).
    fn on_positions(
        &mut self,
        positions: Vec<(NodeId, OpTime, OpTime)>,
        now_us: u64,
        fx: &mut Effects,
    ) {
        let mut moved = false;
        for (id, written, applied) in positions {
            let known = self.positions.entry(id).or_default();
            let newer = (known.0.max(written), known.1.max(applied));
            moved |= newer != *known;
            *known = newer;
        }
        match self.state {
            MemberState::Primary => {
                self.advance_commit_point(fx);
                self.try_finish_step_down(now_us, fx);
            }
            MemberState::Secondary if moved => self.report_position(fx),
            MemberState::Secondary => {}
        }
    }

    /// This member's and its downstream members' positions, for its sync source.
    fn positions_report(&self) -> Vec<(NodeId, OpTime, OpTime)> {
        let mut positions: Vec<(NodeId, OpTime, OpTime)> = self
            .positions
            .iter()
            .filter(|(id, _)| **id != self.config.id && Some(**id) != self.sync_source)
            .map(|(id, (w, a))| (*id, *w, *a))
            .collect();
        positions.push((
            self.config.id,
            self.durable.oplog.last_written(),
            self.last_applied(),
        ));
        positions
    }

    fn report_position(&self, fx: &mut Effects) {
        if let Some(source) = self.sync_source {
            let positions = self.positions_report();
            fx.send.push((source, Msg::UpdatePosition { positions }));
        }
    }

    fn batch(&self, after: OpTime) -> Msg {
        Msg::Batch {
            term: self.durable.term,
            after,
            entries: self.durable.oplog.after(after, BATCH_ENTRIES_MAX),
            commit_point: self.durable.commit_point,
        }
    }

    /// Answers held fetches that have new entries, or whose wait ran out (with an empty batch).
    fn release_parked(&mut self, now_us: u64, fx: &mut Effects) {
        let last = self.durable.oplog.last_written();
        let ready: Vec<(NodeId, OpTime)> = self
            .parked
            .iter()
            .filter(|(_, (after, until))| last > *after || now_us >= *until)
            .map(|(id, (after, _))| (*id, *after))
            .collect();
        for (id, after) in ready {
            self.parked.remove(&id);
            if self.durable.oplog.contains(after) {
                let batch = self.batch(after);
                fx.send.push((id, batch));
            }
        }
    }

    fn on_batch(
        &mut self,
        from: NodeId,
        after: OpTime,
        entries: Vec<Entry>,
        commit_point: OpTime,
        now_us: u64,
        fx: &mut Effects,
    ) {
        if self.sync_source != Some(from) || after != self.durable.oplog.last_written() {
            return;
        }
        self.fetch_sent_us = None;
        let peer = self.peers[from.index()];
        if peer.primary && peer.term >= self.durable.term && self.state == MemberState::Secondary {
            // A batch from the primary is news of it, like its heartbeat.
            self.reset_election_timer(now_us);
        }
        for entry in entries {
            self.durable.oplog.append(entry);
        }
        self.learn_commit_point(commit_point);
        if self.catch_up.is_none() && self.should_change_sync_source(from, now_us) {
            // The next tick chooses again.
            self.sync_source = None;
        } else if self.state == MemberState::Secondary || self.catch_up.is_some() {
            self.send_fetch(from, now_us, fx);
        }
    }

    fn on_diverged(
        &mut self,
        from: NodeId,
        base: Option<OpTime>,
        optimes: &[OpTime],
        fx: &mut Effects,
    ) {
        if self.sync_source != Some(from) {
            return;
        }
        self.fetch_sent_us = None;
        let Some(base) = base else {
            self.sync_source = None;
            return;
        };
        if self.state != MemberState::Secondary {
            return;
        }
        let gone = self.durable.oplog.roll_back_to_common_point(base, optimes);
        let ids: Vec<String> = gone
            .iter()
            .filter_map(|e| e.write_id)
            .take(8)
            .map(|id| id.to_string())
            .collect();
        fx.events.push(format!(
            "ROLLBACK: {} entries after {} that {from} lacks (ids {}{})",
            gone.len(),
            self.durable.oplog.last_written(),
            ids.join(", "),
            if gone.len() > ids.len() { ", ..." } else { "" }
        ));
        self.positions.clear();
        fx.rolled_back = gone;
    }

    /// A commit point heard from the primary or a sync source: taken when this oplog has it.
    fn learn_commit_point(&mut self, theirs: OpTime) {
        let oplog = &self.durable.oplog;
        let learned = if oplog.contains(theirs) {
            theirs
        } else if oplog.last_written().term == theirs.term && oplog.last_written() < theirs {
            oplog.last_written()
        } else {
            return;
        };
        self.durable.commit_point = self.durable.commit_point.max(learned);
    }

    /// The primary's commit point: the newest optime a majority has written, in its own term.
    fn advance_commit_point(&mut self, fx: &mut Effects) {
        let mut written: Vec<OpTime> = NodeId::all(self.config.members())
            .map(|id| self.written_of(id))
            .collect();
        written.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = written[self.config.majority() - 1];
        let old = self.durable.commit_point;
        if candidate.term != self.durable.term || candidate <= old {
            return;
        }
        self.durable.commit_point = candidate;
        let optimes = self.durable.oplog.optimes_after(old);
        fx.committed
            .extend(optimes.into_iter().take_while(|t| *t <= candidate));
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) =
            self.waiters.drain(..).partition(|w| w.optime <= candidate);
        self.waiters = waiting;
        fx.replies
            .extend(done.into_iter().map(|w| (w.token, WriteReply::Ok)));
    }

    fn written_of(&self, id: NodeId) -> OpTime {
        if id == self.config.id {
            return self.durable.oplog.last_written();
        }
        let reported = self.positions.get(&id).map_or(OpTime::default(), |p| p.0);
        reported.max(self.peers[id.index()].written)
    }

    /// Appends an entry in this primary's term.
    fn write(&mut self, write_id: Option<u64>, heartbeat: Option<u64>, now_us: u64) -> OpTime {
        let last = self.durable.oplog.last_written();
        let optime = OpTime {
            term: self.durable.term,
            ts_us: now_us.max(last.ts_us + 1),
        };
        self.durable.oplog.append(Entry {
            optime,
            write_id,
            heartbeat,
        });
        let n = self.durable.oplog.unapplied();
        self.durable.oplog.apply(n);
        self.last_write_us = now_us;
        optime
    }

    /// A secondary applies written entries at its rate; returns how many it applied.
    fn apply(&mut self, now_us: u64) -> usize {
        let elapsed_s = now_us.saturating_sub(self.last_tick_us) as f64 / 1e6;
        self.last_tick_us = now_us;
        if self.durable.oplog.unapplied() == 0 {
            self.apply_credit = 0.0;
            return 0;
        }
        self.apply_credit += elapsed_s * self.config.apply_ops_per_s as f64;
        let n = self.apply_credit.floor();
        let applied = self.durable.oplog.apply(n as usize);
        self.apply_credit -= applied as f64;
        applied
    }

    fn sees_majority(&self, now_us: u64) -> bool {
        let heard = self
            .others()
            .filter(|p| self.heard_within(*p, now_us))
            .count();
        heard + 1 >= self.config.majority()
    }

    fn heard_within(&self, peer: NodeId, now_us: u64) -> bool {
        self.peers[peer.index()]
            .last_heard_us
            .is_some_and(|t| now_us < t + self.config.election_timeout_us)
    }

    fn reset_election_timer(&mut self, now_us: u64) {
        let offset = self.offset_us();
        self.election_deadline_us = now_us + self.config.election_timeout_us + offset;
    }

    /// The random offset MongoDB adds to election timers: up to 15% of the timeout.
    fn offset_us(&mut self) -> u64 {
        let limit = self.config.election_timeout_us * 15 / 100;
        self.rng.gen_range(0..=limit)
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        NodeId::all(self.config.members()).filter(move |id| *id != self.config.id)
    }

    /// What holds between any two calls.
    fn check_invariants(&self) {
        let oplog = &self.durable.oplog;
        assert!(oplog.last_applied() <= oplog.last_written());
        assert!(
            self.durable.commit_point <= oplog.last_written(),
            "{}: commit point {} beyond its oplog {}",
            self.config.id,
            self.durable.commit_point,
            oplog.last_written()
        );
        assert!(!self.writable || self.state == MemberState::Primary);
    }
}

#[cfg(test)]
mod tests {
    //! Members driven by hand, with messages delivered at once except across cut links: the
    //! protocol without the simulator.

    use super::*;

    struct Net {
        members: Vec<Member>,
        now_us: u64,
        cut: BTreeSet<(u64, u64)>,
        events: Vec<String>,
        rolled_back: Vec<(NodeId, Entry)>,
    }

    impl Net {
        fn new(n: usize, catch_up_timeout_us: Option<u64>) -> Net {
            Net::with(n, catch_up_timeout_us, false)
        }

        fn with(n: usize, catch_up_timeout_us: Option<u64>, chaining_allowed: bool) -> Net {
            let members = NodeId::all(n)
                .map(|id| {
                    let config = MemberConfig {
                        id,
                        priorities: vec![1.0; n],
                        heartbeat_interval_us: 2_000_000,
                        election_timeout_us: 10_000_000,
                        catch_up_timeout_us,
                        chaining_allowed,
                        apply_ops_per_s: 10_000,
                        rng_seed: id.0,
                    };
                    Member::initiated(config, id == NodeId(1), 0)
                })
                .collect();
            Net {
                members,
                now_us: 0,
                cut: BTreeSet::new(),
                events: vec![],
                rolled_back: vec![],
            }
        }

        fn cut(&mut self, a: &[u64], b: &[u64], cut: bool) {
            for &x in a {
                for &y in b {
                    for pair in [(x, y), (y, x)] {
                        if cut {
                            self.cut.insert(pair);
                        } else {
                            self.cut.remove(&pair);
                        }
                    }
                }
            }
        }

        fn absorb(&mut self, id: NodeId, fx: Effects, queue: &mut Vec<(NodeId, NodeId, Msg)>) {
            self.events
                .extend(fx.events.into_iter().map(|e| format!("{id}: {e}")));
            self.rolled_back
                .extend(fx.rolled_back.into_iter().map(|e| (id, e)));
            queue.extend(fx.send.into_iter().map(|(to, m)| (id, to, m)));
        }

        /// Runs `ms` milliseconds: every member ticks each one, and messages are delivered
        /// until none are left.
        fn run_ms(&mut self, ms: u64) {
            for _ in 0..ms {
                self.now_us += 1000;
                let mut queue = Vec::new();
                for i in 0..self.members.len() {
                    let mut fx = Effects::default();
                    self.members[i].tick(self.now_us, &mut fx);
                    self.absorb(NodeId::from_index(i), fx, &mut queue);
                }
                while !queue.is_empty() {
                    for (from, to, msg) in std::mem::take(&mut queue) {
                        if self.cut.contains(&(from.0, to.0)) {
                            continue;
                        }
                        let mut fx = Effects::default();
                        self.members[to.index()].receive(from, msg, self.now_us, &mut fx);
                        self.absorb(to, fx, &mut queue);
                    }
                }
            }
        }

        /// An insert on n1 at `w`, answered now or later.
        fn insert(
            &mut self,
            id: u64,
            w: WriteConcern,
            wtimeout_us: Option<u64>,
        ) -> Option<WriteReply> {
            let mut fx = Effects::default();
            let now = self.now_us;
            let reply = self.members[0].insert((id, id, None), (w, wtimeout_us), now, &mut fx);
            let mut queue = Vec::new();
            self.absorb(NodeId(1), fx, &mut queue);
            reply
        }

        fn primary(&self) -> Option<&Member> {
            self.members
                .iter()
                .find(|m| m.is_writable_primary() && m.term() > 1)
        }
    }

    /// Five members; n1 and n2 split from n3..n5 after n1 wrote five w:1 entries that only n2
    /// has; the link to n2 heals just before n3..n5 elect one of themselves, which lacks them.
    fn split_then_elect(catch_up_timeout_us: Option<u64>) -> Net {
        let mut net = Net::new(5, catch_up_timeout_us);
        net.run_ms(3000);
        net.cut(&[1, 2], &[3, 4, 5], true);
        for id in 1..=5 {
            assert_eq!(net.insert(id, WriteConcern::W1, None), Some(WriteReply::Ok));
            net.run_ms(10);
        }
        net.run_ms(9000);
        net.cut(&[2], &[3, 4, 5], false);
        net.run_ms(8000);
        net
    }

    #[test]
    fn a_new_primary_catches_up_to_the_member_ahead_of_it_before_taking_writes() {
        let net = split_then_elect(None);
        let primary = net.primary().expect("n3..n5 elected a primary");
        let ids: BTreeSet<u64> = primary.write_ids().collect();
        assert_eq!(ids, (1..=5).collect(), "{:#?}", net.events);
        assert!(
            net.events.iter().any(|e| e.contains("catch-up: fetching")),
            "{:#?}",
            net.events
        );
        assert!(
            net.rolled_back.is_empty(),
            "nothing rolled back: {:?}",
            net.rolled_back
        );
        assert!(net
            .events
            .iter()
            .any(|e| e.starts_with("n1: stepping down: can't see a majority")));
    }

    #[test]
    fn without_catch_up_the_member_ahead_rolls_back_what_the_new_primary_lacks() {
        let net = split_then_elect(Some(0));
        let rolled: Vec<u64> = net
            .rolled_back
            .iter()
            .filter(|(id, _)| *id == NodeId(2))
            .filter_map(|(_, e)| e.write_id)
            .collect();
        assert_eq!(rolled, [1, 2, 3, 4, 5], "{:#?}", net.events);
    }

    #[test]
    fn with_chaining_a_secondary_cut_from_the_primary_syncs_through_another() {
        for chaining in [true, false] {
            let mut net = Net::with(3, None, chaining);
            net.run_ms(3000);
            net.cut(&[3], &[1], true);
            for id in 1..=20 {
                net.insert(id, WriteConcern::W1, None);
                net.run_ms(100);
            }
            net.run_ms(3000);
            let n3: BTreeSet<u64> = net.members[2].write_ids().collect();
            let expected: BTreeSet<u64> = if chaining {
                (1..=20).collect()
            } else {
                BTreeSet::new()
            };
            assert_eq!(n3, expected, "chaining {chaining}: {:#?}", net.events);
        }
    }

    #[test]
    fn a_majority_write_without_a_majority_reports_a_write_concern_error_at_wtimeout() {
        let mut net = Net::new(3, None);
        net.run_ms(3000);
        assert_eq!(
            net.insert(1, WriteConcern::Majority, Some(500_000)),
            None,
            "it waits"
        );
        net.run_ms(50);
        assert!(
            net.members[0].commit_point().ts_us >= 3_000_000,
            "committed with a majority"
        );
        net.cut(&[1], &[2, 3], true);
        assert_eq!(net.insert(2, WriteConcern::Majority, Some(500_000)), None);
        let mut replies = Vec::new();
        for _ in 0..600 {
            net.now_us += 1000;
            let mut fx = Effects::default();
            let now = net.now_us;
            net.members[0].tick(now, &mut fx);
            replies.extend(fx.replies);
        }
        assert_eq!(replies, [(2, WriteReply::WriteConcernTimeout)]);
        assert!(
            net.members[0].write_ids().any(|id| id == 2),
            "written on the primary, not undone"
        );
    }

    #[test]
    fn a_partitioned_secondary_cannot_raise_the_term_thanks_to_the_dry_run() {
        let mut net = Net::new(3, None);
        net.run_ms(3000);
        net.cut(&[3], &[1, 2], true);
        net.run_ms(40_000);
        let terms: Vec<u64> = net.members.iter().map(Member::term).collect();
        assert_eq!(terms, [1, 1, 1], "{:#?}", net.events);
        net.cut(&[3], &[1, 2], false);
        net.run_ms(3000);
        assert!(
            net.members[0].is_writable_primary(),
            "the primary was never disturbed"
        );
    }
}
