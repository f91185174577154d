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

mod election;
mod sync;
#[cfg(test)]
mod tests;

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
