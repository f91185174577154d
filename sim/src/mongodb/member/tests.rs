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
    fn insert(&mut self, id: u64, w: WriteConcern, wtimeout_us: Option<u64>) -> Option<WriteReply> {
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
