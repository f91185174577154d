//! Elections and the changes of state around them: votes, standing (dry run, then the real
//! vote), winning and the new primary's catch-up, stepping down (and `replSetStepDown`'s wait and
//! handoff), and priority takeover.

use std::collections::BTreeSet;

use quorumlab_experiment::node::NodeId;

use super::{
    Candidacy, CatchUp, Effects, Member, MemberState, Msg, OpTime, WriteReply,
    TAKEOVER_FRESHNESS_US,
};

impl Member {
    /// Whether to grant a vote (and, for a real one, record it durably).
    pub(super) fn vote(
        &mut self,
        candidate: NodeId,
        term: u64,
        dry_run: bool,
        theirs: OpTime,
    ) -> bool {
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

    pub(super) fn on_vote(
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

    pub(super) fn electable(&self, now_us: u64, need_majority: bool) -> bool {
        self.config.priority_of(self.config.id) > 0.0
            && now_us >= self.step_down_until_us
            && (!need_majority || self.sees_majority(now_us))
    }

    /// Stands for election: a dry run first, unless told otherwise.
    pub(super) fn stand(
        &mut self,
        now_us: u64,
        why: &'static str,
        dry_run: bool,
        fx: &mut Effects,
    ) {
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

    pub(super) fn start_real_election(&mut self, now_us: u64, why: &'static str, fx: &mut Effects) {
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

    pub(super) fn request_votes(&mut self, dry_run: bool, fx: &mut Effects) {
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
    pub(super) fn become_primary(&mut self, now_us: u64, why: &'static str, fx: &mut Effects) {
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
    pub(super) fn catch_up_heard(&mut self, from: NodeId, written: OpTime) {
        if let Some(c) = &mut self.catch_up {
            c.awaiting.remove(&from);
            if written > c.target.map_or(OpTime::default(), |t| t.0) {
                c.target = Some((written, from));
            }
        }
    }

    pub(super) fn tick_catch_up(&mut self, now_us: u64, fx: &mut Effects) {
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
    pub(super) fn finish_transition(&mut self, now_us: u64, caught: usize, fx: &mut Effects) {
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

    pub(super) fn step_down(&mut self, now_us: u64, why: &str, fx: &mut Effects) {
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
    pub(super) fn try_finish_step_down(&mut self, now_us: u64, fx: &mut Effects) {
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

    pub(super) fn maybe_schedule_takeover(&mut self, primary: NodeId, now_us: u64) {
        let mine = self.config.priority_of(self.config.id);
        if self.takeover_at_us.is_some() || mine <= self.config.priority_of(primary) {
            return;
        }
        let rank = self.config.priorities.iter().filter(|p| **p > mine).count() as u64;
        let offset = self.offset_us();
        self.takeover_at_us = Some(now_us + (rank + 1) * self.config.election_timeout_us + offset);
    }

    pub(super) fn fresh_for_takeover(&self, now_us: u64) -> bool {
        let mine = self.config.priority_of(self.config.id);
        self.others()
            .filter(|p| self.peers[p.index()].primary && self.heard_within(*p, now_us))
            .any(|p| {
                let theirs = self.peers[p.index()].applied.ts_us;
                self.config.priority_of(p) < mine
                    && theirs.saturating_sub(self.last_applied().ts_us) <= TAKEOVER_FRESHNESS_US
            })
    }
}
