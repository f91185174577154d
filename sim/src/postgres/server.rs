//! One Postgres server as a pure state machine: the WAL, the WAL sender's view of each standby
//! (with `pg_stat_replication`'s lag tracker), and a standby's write, flush and replay stages.
//!
//! Driven by [`PgServer::commit`] (a client's insert), [`PgServer::receive`] (a standby receiving
//! WAL), [`PgServer::standby_reply`] (a primary hearing a standby's positions) and
//! [`PgServer::tick`] (time passing: local flushes, sending within the link's bandwidth, replaying
//! within the replay speed). It returns what to send and which commits to acknowledge; it never
//! touches a socket or a clock.
//!
//! What survives what follows Postgres: a primary's WAL is durable once flushed; a standby's
//! received WAL is in its OS (it survives the primary's crash, not its own), and promotion replays
//! all of it. `synchronous_commit` decides when a commit is acknowledged: `off` at once, `local`
//! after the primary's flush, and with a synchronous standby `remote_write`, `on` and
//! `remote_apply` after that standby has written, flushed or replayed the commit's WAL.

use std::collections::{BTreeMap, VecDeque};

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::SyncCommit;
use serde::{Deserialize, Serialize};

/// A WAL position: bytes since the start of WAL. Printed and serialised as that number.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The start of WAL.
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes of WAL from `earlier` up to this position (0 when `earlier` is ahead).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, bytes: u64) -> Lsn {
        Lsn(self.0 + bytes)
    }
}

impl std::ops::Sub<u64> for Lsn {
    type Output = Lsn;
    fn sub(self, bytes: u64) -> Lsn {
        assert!(
            bytes <= self.0,
            "WAL position {} minus {bytes} bytes",
            self.0
        );
        Lsn(self.0 - bytes)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Bytes of WAL an insert costs besides its payload (tuple and commit record headers).
pub const RECORD_OVERHEAD_BYTES: u64 = 120;
/// How long the primary's WAL flush (fsync) takes.
pub const FSYNC_US: u64 = 500;

/// One committed transaction's WAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalRecord {
    /// LSN just past the record.
    pub end: Lsn,
    /// Size in bytes.
    pub bytes: u64,
    /// The inserted write's id.
    pub write_id: u64,
    /// Heartbeat sequence number, when the row is a heartbeat.
    pub heartbeat: Option<u64>,
    /// When the primary committed it (for replay timestamps and heartbeat lag).
    pub committed_us: u64,
}

/// A server's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgRole {
    /// Accepts writes.
    Primary,
    /// Read-only; streams from `upstream` when it has one.
    Standby,
}

/// What a primary knows of one standby (a row of `pg_stat_replication`).
#[derive(Debug, Clone, Default)]
pub struct StandbyProgress {
    /// WAL sent so far.
    pub sent: Lsn,
    /// Reported written.
    pub write: Lsn,
    /// Reported flushed.
    pub flush: Lsn,
    /// Reported replayed.
    pub replay: Lsn,
    /// Lag tracker: (lsn, when flushed locally), oldest first, one cursor per stage.
    samples: VecDeque<(Lsn, u64)>,
    cursors: [usize; 3],
    /// `write_lag`, `flush_lag`, `replay_lag` in microseconds (`None` is NULL).
    pub lag_us: [Option<u64>; 3],
    fully_applied_last_time: bool,
    /// Bytes the link may still carry now.
    credit: f64,
}

/// A commit waiting to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    /// The commit's end LSN.
    pub lsn: Lsn,
    /// Earliest acknowledgement time (after the local flush).
    pub flushed_at_us: u64,
    /// Opaque token of the client request.
    pub token: u64,
}

/// One Postgres server.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// Role.
    pub role: PgRole,
    /// Timeline (bumped by each promotion).
    pub timeline: u64,
    /// LSN at which this timeline began.
    pub timeline_start: Lsn,
    /// The WAL this server holds: flushed (primary) or received (standby).
    pub wal: Vec<WalRecord>,
    /// Standby: the server it streams from.
    pub upstream: Option<NodeId>,
    /// Standby: flushed up to here.
    pub flushed: Lsn,
    /// Standby: replayed up to here (what reads see).
    pub replayed: Lsn,
    /// Primary: its standbys' progress, by host number.
    pub standbys: BTreeMap<NodeId, StandbyProgress>,
    /// Primary: the synchronous standby, in synchronous mode.
    pub sync_standby: Option<NodeId>,
    /// What commits wait for.
    pub synchronous_commit: SyncCommit,
    pending: Vec<PendingAck>,
    replay_budget: f64,
}

/// Something the server wants sent.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput {
    /// Acknowledge the commit with this token.
    Ack(u64),
    /// Send WAL to a standby.
    Wal {
        /// Host number of the standby.
        to: NodeId,
        /// Sender's timeline.
        timeline: u64,
        /// Records, in order.
        records: Vec<WalRecord>,
    },
    /// Report positions to the upstream primary.
    Reply {
        /// Host number of the primary.
        to: NodeId,
        /// Written.
        write: Lsn,
        /// Flushed.
        flush: Lsn,
        /// Replayed.
        replay: Lsn,
    },
}

impl PgServer {
    /// A fresh primary on timeline 1 with an empty WAL.
    pub fn primary(synchronous_commit: SyncCommit) -> PgServer {
        PgServer {
            role: PgRole::Primary,
            timeline: 1,
            timeline_start: Lsn::ZERO,
            wal: Vec::new(),
            upstream: None,
            flushed: Lsn::ZERO,
            replayed: Lsn::ZERO,
            standbys: BTreeMap::new(),
            sync_standby: None,
            synchronous_commit,
            pending: Vec::new(),
            replay_budget: 0.0,
        }
    }

    /// A standby of `upstream`, starting empty.
    pub fn standby(upstream: NodeId, synchronous_commit: SyncCommit) -> PgServer {
        PgServer {
            role: PgRole::Standby,
            upstream: Some(upstream),
            ..PgServer::primary(synchronous_commit)
        }
    }

    /// End of this server's WAL (received, for a standby).
    pub fn end_lsn(&self) -> Lsn {
        self.wal.last().map_or(Lsn::ZERO, |r| r.end)
    }

    /// Appends a committed insert; its acknowledgement comes from [`PgServer::tick`].
    /// Returns `None` (refused) unless this server is the primary.
    pub fn commit(
        &mut self,
        now_us: u64,
        write_id: u64,
        payload: u64,
        heartbeat: Option<u64>,
        token: u64,
    ) -> Option<Lsn> {
        if self.role != PgRole::Primary {
            return None;
        }
        let bytes = payload + RECORD_OVERHEAD_BYTES;
        let end = self.end_lsn() + bytes;
        self.append(WalRecord {
            end,
            bytes,
            write_id,
            heartbeat,
            committed_us: now_us,
        });
        let flushed_at_us = if self.synchronous_commit == SyncCommit::Off {
            now_us
        } else {
            now_us + FSYNC_US
        };
        self.pending.push(PendingAck {
            lsn: end,
            flushed_at_us,
            token,
        });
        for standby in self.standbys.values_mut() {
            standby.samples.push_back((end, now_us + FSYNC_US));
        }
        self.assert_invariants();
        Some(end)
    }

    /// Whether a commit at `lsn`, flushed locally, may be acknowledged now.
    fn commit_is_durable_enough(&self, lsn: Lsn) -> bool {
        let Some(sync) = self.sync_standby else {
            return true;
        };
        let Some(progress) = self.standbys.get(&sync) else {
            return false;
        };
        match self.synchronous_commit {
            SyncCommit::Off | SyncCommit::Local => true,
            SyncCommit::RemoteWrite => progress.write >= lsn,
            SyncCommit::On => progress.flush >= lsn,
            SyncCommit::RemoteApply => progress.replay >= lsn,
        }
    }

    /// A standby connects (or reconnects) and asks for WAL from `from` on `timeline`. A standby
    /// on an older timeline that went past this timeline's start is rewound to it (pg_rewind).
    /// Returns the LSN streaming resumes from.
    pub fn standby_connect(&mut self, standby: NodeId, from: Lsn, timeline: u64) -> Lsn {
        let from = if timeline < self.timeline {
            from.min(self.timeline_start)
        } else {
            from
        }
        .min(self.end_lsn());
        let start = self.wal.partition_point(|r| r.end <= from);
        let samples = self.wal[start..]
            .iter()
            .map(|r| (r.end, r.committed_us + FSYNC_US))
            .collect();
        self.standbys.insert(
            standby,
            StandbyProgress {
                sent: from,
                write: from,
                flush: from,
                replay: from,
                samples,
                ..StandbyProgress::default()
            },
        );
        from
    }

    /// The primary hears a standby's positions; updates the lag tracker as Postgres does.
    pub fn standby_reply(&mut self, now_us: u64, standby: NodeId, positions: [Lsn; 3]) {
        let Some(p) = self.standbys.get_mut(&standby) else {
            return;
        };
        p.write = p.write.max(positions[0]);
        p.flush = p.flush.max(positions[1]);
        p.replay = p.replay.max(positions[2]);
        let reached = [p.write, p.flush, p.replay];
        let mut fresh = [false; 3];
        for stage in 0..3 {
            while let Some(&(lsn, at)) = p.samples.get(p.cursors[stage]) {
                if lsn > reached[stage] {
                    break;
                }
                p.lag_us[stage] = Some(now_us.saturating_sub(at));
                fresh[stage] = true;
                p.cursors[stage] += 1;
            }
        }
        // Like walsender.c: once a standby has replayed everything sent, twice in a row, the lag
        // columns go NULL rather than keep a stale value.
        if p.replay == p.sent {
            if p.fully_applied_last_time {
                for (lag, fresh) in p.lag_us.iter_mut().zip(fresh) {
                    if !fresh {
                        *lag = None;
                    }
                }
            }
            p.fully_applied_last_time = true;
        } else {
            p.fully_applied_last_time = false;
        }
        let consumed = p.cursors.iter().min().copied().unwrap_or(0);
        p.samples.drain(..consumed);
        for c in &mut p.cursors {
            *c -= consumed;
        }
        self.assert_invariants();
    }

    /// A standby receives WAL from its upstream on `timeline`. Returns `false` when the records
    /// do not follow on from what it has (a datagram overtook another): the standby must then
    /// reconnect from its end of WAL.
    pub fn receive(&mut self, timeline: u64, records: Vec<WalRecord>) -> bool {
        if self.role != PgRole::Standby {
            return true;
        }
        for record in records {
            let start = record.end - record.bytes;
            if start < self.end_lsn() {
                let i = self.wal.partition_point(|r| r.end <= start);
                if self.wal.get(i) == Some(&record) {
                    continue; // Sent twice; already here.
                }
                // Rewind: drop what diverged from the upstream's history.
                self.wal.truncate(i);
                self.flushed = self.flushed.min(start);
                self.replayed = self.replayed.min(start);
            }
            if start > self.end_lsn() {
                return false;
            }
            self.append(record);
        }
        self.timeline = self.timeline.max(timeline);
        self.assert_invariants();
        true
    }

    /// Time passes by `dt_us`: the primary acknowledges durable commits and sends WAL within
    /// `bandwidth` bytes/s per standby; a standby flushes what it received and replays within
    /// `replay_rate` bytes/s, then reports to its upstream.
    pub fn tick(
        &mut self,
        now_us: u64,
        dt_us: u64,
        bandwidth: f64,
        replay_rate: f64,
    ) -> Vec<PgOutput> {
        let mut out = Vec::new();
        match self.role {
            PgRole::Primary => {
                let pending = std::mem::take(&mut self.pending);
                for ack in pending {
                    if ack.flushed_at_us <= now_us && self.commit_is_durable_enough(ack.lsn) {
                        out.push(PgOutput::Ack(ack.token));
                    } else {
                        self.pending.push(ack);
                    }
                }
                for (&id, standby) in &mut self.standbys {
                    // The link carries `bandwidth` bytes a second; unused capacity is not saved
                    // beyond one second's worth.
                    standby.credit =
                        (standby.credit + bandwidth * dt_us as f64 / 1e6).min(bandwidth);
                    let start = self.wal.partition_point(|r| r.end <= standby.sent);
                    let mut records = Vec::new();
                    for r in &self.wal[start..] {
                        if r.committed_us + FSYNC_US > now_us || r.bytes as f64 > standby.credit {
                            break;
                        }
                        standby.credit -= r.bytes as f64;
                        records.push(r.clone());
                    }
                    if start + records.len() == self.wal.len() {
                        standby.credit = 0.0;
                    }
                    if let Some(last) = records.last() {
                        standby.sent = last.end;
                        out.push(PgOutput::Wal {
                            to: id,
                            timeline: self.timeline,
                            records,
                        });
                    }
                }
            }
            PgRole::Standby => {
                let before = (self.flushed, self.replayed);
                self.flushed = self.end_lsn();
                self.replay_budget =
                    (self.replay_budget + replay_rate * dt_us as f64 / 1e6).min(replay_rate);
                let start = self.wal.partition_point(|r| r.end <= self.replayed);
                for r in &self.wal[start..] {
                    if r.end > self.flushed || (r.bytes as f64) > self.replay_budget {
                        break;
                    }
                    self.replay_budget -= r.bytes as f64;
                    self.replayed = r.end;
                }
                if self.replayed == self.flushed {
                    self.replay_budget = 0.0;
                }
                if let (Some(to), true) = (self.upstream, before != (self.flushed, self.replayed)) {
                    out.push(self.reply_to(to));
                }
            }
        }
        self.assert_invariants();
        out
    }

    /// This standby's positions, as a reply to `to`.
    pub fn reply_to(&self, to: NodeId) -> PgOutput {
        PgOutput::Reply {
            to,
            write: self.end_lsn(),
            flush: self.flushed,
            replay: self.replayed,
        }
    }

    /// Promotes a standby: replay everything received, start a new timeline, accept writes.
    pub fn promote(&mut self) {
        assert_eq!(self.role, PgRole::Standby, "only a standby is promoted");
        let timeline = self.timeline;
        self.role = PgRole::Primary;
        self.flushed = self.end_lsn();
        self.replayed = self.end_lsn();
        self.timeline += 1;
        self.timeline_start = self.end_lsn();
        self.upstream = None;
        self.standbys.clear();
        self.pending.clear();
        assert_eq!(
            self.timeline,
            timeline + 1,
            "a promotion starts the next timeline"
        );
        self.assert_invariants();
    }

    /// Demotes a primary to a standby of `upstream` (none while no leader is known). Commits
    /// still waiting are never acknowledged.
    pub fn demote(&mut self, upstream: Option<NodeId>) {
        assert_eq!(self.role, PgRole::Primary, "only a primary is demoted");
        self.role = PgRole::Standby;
        self.flushed = self.end_lsn();
        self.replayed = self.end_lsn();
        self.upstream = upstream;
        self.standbys.clear();
        self.pending.clear();
        self.sync_standby = None;
        self.assert_invariants();
    }

    /// What holds between any two calls: WAL positions in order (replayed <= flushed <= written,
    /// the end of WAL) and, for every standby the primary tracks, replay <= flush <= write.
    /// Checked in every build: a model that breaks them would teach something false.
    fn assert_invariants(&self) {
        let written = self.end_lsn();
        assert!(
            self.flushed <= written,
            "flushed {} past the end of WAL {written}",
            self.flushed
        );
        assert!(
            self.replayed <= self.flushed,
            "replayed {} past flushed {}",
            self.replayed,
            self.flushed
        );
        assert!(self.timeline >= 1 && self.timeline_start <= written);
        for (id, p) in &self.standbys {
            assert!(
                p.replay <= p.flush && p.flush <= p.write,
                "standby n{id} reports replay {} flush {} write {}",
                p.replay,
                p.flush,
                p.write
            );
        }
    }

    /// Appends `record` to the WAL, which must follow on from the current end.
    fn append(&mut self, record: WalRecord) {
        assert_eq!(
            record.end - record.bytes,
            self.end_lsn(),
            "WAL records follow on from each other"
        );
        self.wal.push(record);
    }

    /// Commit time of the last replayed record (`pg_last_xact_replay_timestamp()`).
    pub fn last_replay_us(&self) -> Option<u64> {
        let i = self.wal.partition_point(|r| r.end <= self.replayed);
        i.checked_sub(1).map(|i| self.wal[i].committed_us)
    }

    /// The newest heartbeat a read here sees: (sequence, committed at).
    pub fn visible_heartbeat(&self) -> Option<(u64, u64)> {
        let visible = if self.role == PgRole::Primary {
            self.end_lsn()
        } else {
            self.replayed
        };
        let i = self.wal.partition_point(|r| r.end <= visible);
        self.wal[..i]
            .iter()
            .rev()
            .find_map(|r| r.heartbeat.map(|h| (h, r.committed_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(primary: &mut PgServer, standby: &mut PgServer, now: u64, dt: u64) -> Vec<u64> {
        let mut acks = Vec::new();
        for out in primary.tick(now, dt, 1e9, 1e9) {
            match out {
                PgOutput::Ack(t) => acks.push(t),
                PgOutput::Wal {
                    timeline, records, ..
                } => assert!(standby.receive(timeline, records)),
                PgOutput::Reply { .. } => unreachable!(),
            }
        }
        for out in standby.tick(now, dt, 1e9, 1e9) {
            if let PgOutput::Reply {
                write,
                flush,
                replay,
                ..
            } = out
            {
                primary.standby_reply(now, NodeId(2), [write, flush, replay]);
            }
        }
        acks
    }

    #[test]
    fn remote_apply_waits_for_the_sync_standby_and_local_does_not() {
        for (level, acked_before_standby) in
            [(SyncCommit::Local, true), (SyncCommit::RemoteApply, false)]
        {
            let mut p = PgServer::primary(level);
            let mut s = PgServer::standby(NodeId(1), level);
            p.standby_connect(NodeId(2), Lsn::ZERO, 1);
            p.sync_standby = Some(NodeId(2));
            p.commit(0, 7, 100, None, 70).unwrap();
            // Before the standby has heard anything, only `local` acknowledges.
            let acks: Vec<u64> = p
                .tick(FSYNC_US, FSYNC_US, 0.0, 0.0)
                .into_iter()
                .filter_map(|o| match o {
                    PgOutput::Ack(t) => Some(t),
                    _ => None,
                })
                .collect();
            assert_eq!(acks == [70], acked_before_standby, "{level}");
            let mut later = Vec::new();
            for step in 1..5 {
                later.extend(stream(&mut p, &mut s, FSYNC_US + step * 1000, 1000));
            }
            assert_eq!(s.replayed, p.end_lsn());
            assert_eq!(later == [70], !acked_before_standby, "{level}");
        }
    }

    #[test]
    fn lag_columns_go_null_once_an_idle_standby_has_replayed_everything() {
        let mut p = PgServer::primary(SyncCommit::Local);
        let mut s = PgServer::standby(NodeId(1), SyncCommit::Local);
        p.standby_connect(NodeId(2), Lsn::ZERO, 1);
        p.commit(0, 1, 100, None, 1);
        for step in 1..4 {
            stream(&mut p, &mut s, step * 1000, 1000);
        }
        assert!(p.standbys[&NodeId(2)].lag_us[2].is_some());
        for _ in 0..2 {
            let reply = s.reply_to(NodeId(1));
            if let PgOutput::Reply {
                write,
                flush,
                replay,
                ..
            } = reply
            {
                p.standby_reply(10_000, NodeId(2), [write, flush, replay]);
            }
        }
        assert_eq!(p.standbys[&NodeId(2)].lag_us, [None, None, None]);
    }

    #[test]
    fn a_standby_on_an_old_timeline_is_rewound_to_the_new_primarys_history() {
        let mut old = PgServer::primary(SyncCommit::Local);
        old.commit(0, 1, 100, None, 1);
        let mut new = PgServer::standby(NodeId(1), SyncCommit::Local);
        assert!(new.receive(1, old.wal.clone()));
        old.commit(1, 2, 100, None, 2);
        let mut other = PgServer::standby(NodeId(1), SyncCommit::Local);
        assert!(other.receive(1, old.wal.clone()));
        new.promote();
        new.commit(5, 3, 50, None, 3);
        let from = new.standby_connect(NodeId(3), other.end_lsn(), other.timeline);
        assert_eq!(from, new.timeline_start);
        let records: Vec<WalRecord> = new.wal.iter().filter(|r| r.end > from).cloned().collect();
        assert!(other.receive(new.timeline, records));
        let ids: Vec<u64> = other.wal.iter().map(|r| r.write_id).collect();
        assert_eq!(ids, [1, 3]);
    }
}
