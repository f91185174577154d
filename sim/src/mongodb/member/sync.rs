//! The oplog between members: choosing a sync source and fetching from it, serving fetches
//! (held while there is nothing new), positions reported upstream, rollback when a source lacks
//! what this member has, and the majority commit point.

use quorumlab_experiment::node::NodeId;

use super::{
    Effects, Entry, Member, MemberState, Msg, OpTime, Waiter, WriteReply, BATCH_ENTRIES_MAX,
    FETCH_AWAIT_US,
};

impl Member {
    /// A secondary (or a catching-up primary) keeps one fetch outstanding at its sync source.
    pub(super) fn keep_fetching(&mut self, now_us: u64, fx: &mut Effects) {
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
    pub(super) fn should_change_sync_source(&self, source: NodeId, now_us: u64) -> bool {
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
    pub(super) fn choose_sync_source(&self, now_us: u64) -> Option<NodeId> {
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

    pub(super) fn send_fetch(&mut self, source: NodeId, now_us: u64, fx: &mut Effects) {
        let positions = self.positions_report();
        let fetch = Msg::Fetch {
            after: self.durable.oplog.last_written(),
            commit_point: self.durable.commit_point,
            positions,
        };
        self.fetch_sent_us = Some(now_us);
        fx.send.push((source, fetch));
    }

    pub(super) fn on_fetch(
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
    pub(super) fn on_positions(
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
    pub(super) fn positions_report(&self) -> Vec<(NodeId, OpTime, OpTime)> {
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

    pub(super) fn report_position(&self, fx: &mut Effects) {
        if let Some(source) = self.sync_source {
            let positions = self.positions_report();
            fx.send.push((source, Msg::UpdatePosition { positions }));
        }
    }

    pub(super) fn batch(&self, after: OpTime) -> Msg {
        Msg::Batch {
            term: self.durable.term,
            after,
            entries: self.durable.oplog.after(after, BATCH_ENTRIES_MAX),
            commit_point: self.durable.commit_point,
        }
    }

    /// Answers held fetches that have new entries, or whose wait ran out (with an empty batch).
    pub(super) fn release_parked(&mut self, now_us: u64, fx: &mut Effects) {
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

    pub(super) fn on_batch(
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

    pub(super) fn on_diverged(
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
    pub(super) fn learn_commit_point(&mut self, theirs: OpTime) {
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
    pub(super) fn advance_commit_point(&mut self, fx: &mut Effects) {
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

    pub(super) fn written_of(&self, id: NodeId) -> OpTime {
        if id == self.config.id {
            return self.durable.oplog.last_written();
        }
        let reported = self.positions.get(&id).map_or(OpTime::default(), |p| p.0);
        reported.max(self.peers[id.index()].written)
    }
}
