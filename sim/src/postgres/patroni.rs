//! Patroni's HA decisions, as pure functions of what one member knows at the top of its loop.
//!
//! The leader key lives in the simulated etcd (the Raft model of [`crate::node`]), written with
//! compare-and-swap: its value packs the holder and the lease's expiry, so "renew", "acquire" and
//! "someone else holds it" are one linearizable operation each, as with etcd leases. Patroni's own
//! loop then decides: the holder renews (and demotes if it cannot within `retry_timeout`); a
//! replica follows a live holder; when the key has expired, a replica that is healthy enough
//! (no member it can reach is further ahead, within `maximum_lag_on_failover` of the last known
//! leader position, and in synchronous mode the synchronous standby) races to take it.

use quorumlab_experiment::history::{Key, Value};

use quorumlab_experiment::node::NodeId;

use super::server::Lsn;

/// The etcd key holding the leader lock.
pub const LEADER_KEY: Key = 0;
/// The etcd key holding the leader's last WAL position (Patroni's `/optime/leader`).
pub const OPTIME_KEY: Key = 1;
/// The etcd key naming the synchronous standby (Patroni's `/sync`), 0 when none.
pub const SYNC_KEY: Key = 2;

/// The leader lock: who holds it and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderLock {
    /// Host number of the holder.
    pub holder: NodeId,
    /// When the lease runs out, in simulated milliseconds.
    pub expires_ms: u64,
}

impl LeaderLock {
    /// Packs the lock into one etcd value (holder in the top 16 bits).
    pub fn encode(self) -> Value {
        assert!(self.expires_ms < 1 << 48 && self.holder.0 < 1 << 16);
        self.holder.0 << 48 | self.expires_ms
    }

    /// Unpacks an etcd value.
    pub fn decode(value: Value) -> LeaderLock {
        LeaderLock {
            holder: NodeId(value >> 48),
            expires_ms: value & ((1 << 48) - 1),
        }
    }

    /// Whether the lease still runs at `now_ms`.
    pub fn is_live(self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// What a member's HA loop does this time round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaAction {
    /// Holder: renew the lease.
    Renew,
    /// Lease gone and this member is fit: take the lock, then promote.
    Acquire,
    /// Someone else leads: be (or stay) its standby.
    Follow(NodeId),
    /// Lease gone but this member may not take it: wait for the next loop.
    Wait,
}

/// What a member knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct HaView {
    /// This member's host number.
    pub me: NodeId,
    /// The lock as read from etcd (`None` when never written).
    pub lock: Option<LeaderLock>,
    /// Now, in simulated milliseconds.
    pub now_ms: u64,
    /// This member's received WAL position.
    pub my_lsn: Lsn,
    /// The highest received position among the other members that answered.
    pub best_peer_lsn: Option<Lsn>,
    /// The leader's last published position (`Lsn(u64::MAX)` when it could not be read).
    pub leader_optime: Lsn,
    /// `maximum_lag_on_failover`, bytes.
    pub maximum_lag_on_failover: u64,
    /// Synchronous mode: the standby named in `/sync` (0 when none). `None` in async mode.
    pub sync_standby: Option<u64>,
}

/// Patroni's decision for one loop.
pub fn decide(view: &HaView) -> HaAction {
    match view.lock {
        Some(lock) if lock.holder == view.me && lock.is_live(view.now_ms) => HaAction::Renew,
        Some(lock) if lock.is_live(view.now_ms) => HaAction::Follow(lock.holder),
        _ => {
            let behind_a_peer = view.best_peer_lsn.is_some_and(|p| p > view.my_lsn);
            let too_far_behind =
                view.leader_optime.bytes_since(view.my_lsn) > view.maximum_lag_on_failover;
            let not_the_sync_standby = view.sync_standby.is_some_and(|s| s != 0 && s != view.me.0);
            if behind_a_peer || too_far_behind || not_the_sync_standby {
                HaAction::Wait
            } else {
                HaAction::Acquire
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(lock: Option<LeaderLock>) -> HaView {
        HaView {
            me: NodeId(2),
            lock,
            now_ms: 1000,
            my_lsn: Lsn(500),
            best_peer_lsn: Some(Lsn(400)),
            leader_optime: Lsn(600),
            maximum_lag_on_failover: 1 << 20,
            sync_standby: None,
        }
    }

    #[test]
    fn the_lock_round_trips_through_one_etcd_value() {
        let lock = LeaderLock {
            holder: NodeId(3),
            expires_ms: 123_456,
        };
        assert_eq!(LeaderLock::decode(lock.encode()), lock);
    }

    #[test]
    fn holders_renew_others_follow_and_an_expired_lock_goes_to_the_fittest() {
        let live = |holder| {
            Some(LeaderLock {
                holder: NodeId(holder),
                expires_ms: 2000,
            })
        };
        let dead = Some(LeaderLock {
            holder: NodeId(1),
            expires_ms: 900,
        });
        assert_eq!(decide(&view(live(2))), HaAction::Renew);
        assert_eq!(decide(&view(live(1))), HaAction::Follow(NodeId(1)));
        assert_eq!(decide(&view(dead)), HaAction::Acquire);
        let behind = HaView {
            best_peer_lsn: Some(Lsn(501)),
            ..view(dead)
        };
        assert_eq!(decide(&behind), HaAction::Wait);
        let lagging = HaView {
            maximum_lag_on_failover: 50,
            ..view(dead)
        };
        assert_eq!(decide(&lagging), HaAction::Wait);
        let not_sync = HaView {
            sync_standby: Some(3),
            ..view(dead)
        };
        assert_eq!(decide(&not_sync), HaAction::Wait);
        // An expired lock of our own (we were cut off) is not renewed but raced for again.
        let own_dead = Some(LeaderLock {
            holder: NodeId(2),
            expires_ms: 900,
        });
        assert_eq!(decide(&view(own_dead)), HaAction::Acquire);
    }
}
