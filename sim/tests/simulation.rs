//! Deterministic simulation tests: determinism, safety under every shipped scenario across seeds,
//! the behaviour each scenario exists to show, and the checker catching a deliberately broken build.

use quorumlab_experiment::{Fault, FaultStep, OpKind, Outcome, Scenario, Verdict};
use quorumlab_sim::sweep::sweep;
use quorumlab_sim::trace::EventKind;
use quorumlab_sim::{run, RunConfig, RunOutput};

fn scenario(name: &str) -> Scenario {
    Scenario::load(name).unwrap()
}

fn trace_bytes(out: &RunOutput) -> Vec<u8> {
    serde_json::to_vec(&(&out.trace, &out.history, &out.summary, &out.schedule)).unwrap()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn same_seed_gives_byte_identical_trace_and_other_seed_differs() {
    for name in ["etcd-leader-isolate", "etcd-chaos"] {
        let s = scenario(name);
        let a = fnv(&trace_bytes(&run(&s, &RunConfig::seeded(42)).unwrap()));
        let b = fnv(&trace_bytes(&run(&s, &RunConfig::seeded(42)).unwrap()));
        let c = fnv(&trace_bytes(&run(&s, &RunConfig::seeded(43)).unwrap()));
        assert_eq!(a, b, "{name}: seed 42 gave two different traces");
        assert_ne!(a, c, "{name}: seeds 42 and 43 gave the same trace");
    }
}

#[test]
fn every_operation_has_its_own_id_in_invocation_order() {
    let out = run(&scenario("etcd-leader-kill"), &RunConfig::seeded(2)).unwrap();
    let ops = &out.history.ops;
    assert!(ops.len() > 100);
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.id, i as u64, "ids number the history in order");
    }
    assert!(ops.windows(2).all(|w| w[0].invoke_us <= w[1].invoke_us));
    let mut pointed = 0;
    for e in &out.trace {
        if let quorumlab_sim::trace::EventKind::Op { op, .. } = &e.what {
            let op = &ops[*op];
            assert_eq!(
                e.node,
                format!("client{}", op.client),
                "the trace points at its own op"
            );
            assert_eq!(e.at_us, op.complete_us);
            pointed += 1;
        }
    }
    assert_eq!(pointed, ops.len());
}

#[test]
fn determinism_holds_across_threads() {
    // A sweep runs seeds on rayon's worker threads; the result must match a run on this thread.
    let s = scenario("etcd-leader-kill");
    let (_, summaries) = sweep(&s, 5..=8, &RunConfig::seeded(0), &|_| {}).unwrap();
    for summary in summaries {
        let here = run(&s, &RunConfig::seeded(summary.seed)).unwrap().summary;
        assert_eq!(here, summary);
    }
}

#[test]
fn every_scenario_keeps_every_invariant_across_seeds() {
    for name in Scenario::builtin_names() {
        let s = scenario(name);
        if matches!(s.system, quorumlab_experiment::System::Mongodb(_)) {
            continue; // its step-down is no etcd fault; the MongoDB model has its own tests
        }
        let (report, summaries) = sweep(&s, 1..=24, &RunConfig::seeded(0), &|_| {}).unwrap();
        assert!(
            report.unsafe_seeds.is_empty(),
            "{name}: unsafe seeds {:?}",
            report.unsafe_seeds
        );
        for summary in &summaries {
            assert_eq!(
                summary.verdict,
                Verdict::Linearizable,
                "{name} seed {}",
                summary.seed
            );
            assert!(
                summary.ops.ok > 0,
                "{name} seed {}: no operation succeeded",
                summary.seed
            );
        }
    }
}

#[test]
fn five_node_cluster_keeps_invariants_too() {
    let s = scenario("etcd-leader-isolate").with_nodes(5).unwrap();
    let (report, _) = sweep(&s, 1..=12, &RunConfig::seeded(0), &|_| {}).unwrap();
    assert!(report.unsafe_seeds.is_empty(), "{:?}", report.unsafe_seeds);
    assert_eq!(report.seeds_without_new_leader, 0);
}

#[test]
fn losing_the_leader_elects_a_new_one_within_etcd_timing() {
    for name in [
        "etcd-leader-kill",
        "etcd-leader-isolate",
        "etcd-minority-partition",
    ] {
        let s = scenario(name);
        let (report, _) = sweep(&s, 1..=16, &RunConfig::seeded(0), &|_| {}).unwrap();
        assert_eq!(
            report.seeds_without_new_leader, 0,
            "{name}: some seed never elected a new leader"
        );
        let election = report.election_ms.unwrap();
        // A follower waits one randomized election timeout, 1000-2000 ms, after its last heartbeat;
        // a split vote costs another. Nothing can be faster than one timeout minus a heartbeat.
        assert!(
            election.min >= 900.0,
            "{name}: election faster than the timeout allows: {election:?}"
        );
        assert!(
            election.p50 <= 2500.0,
            "{name}: median election too slow: {election:?}"
        );
    }
}

#[test]
fn bridge_node_that_leads_keeps_its_leadership() {
    // Each half plus the bridge is a majority, and pre-vote stops cut-off followers from
    // campaigning while they still hear the leader: no election should happen at all.
    let s = scenario("etcd-bridge-partition");
    let (_, summaries) = sweep(&s, 1..=12, &RunConfig::seeded(0), &|_| {}).unwrap();
    for summary in summaries {
        assert_eq!(
            summary.leaders_elected, 1,
            "seed {}: leadership changed",
            summary.seed
        );
        assert!(
            summary.write_unavailable_ms < 1000,
            "seed {}: writes stalled",
            summary.seed
        );
    }
}

#[test]
fn isolated_leader_never_acknowledges_a_write_after_it_is_cut_off() {
    let s = scenario("etcd-leader-isolate");
    for seed in 1..=8 {
        let out = run(&s, &RunConfig::seeded(seed)).unwrap();
        let fault_us = out.summary.fault_at_ms.unwrap() * 1000;
        let old_leader = out
            .trace
            .iter()
            .find_map(|e| match &e.what {
                EventKind::Fault { label } if e.at_us == fault_us => {
                    label.split(['(', ')']).nth(1).map(str::to_string)
                }
                _ => None,
            })
            .unwrap();
        let late_acks: Vec<_> = out
            .history
            .ops
            .iter()
            .filter(|op| {
                op.is_ok_write() && op.invoke_us >= fault_us && op.complete_us < 15_000_000
            })
            .filter(|op| op.node.as_deref() == Some(old_leader.as_str()))
            .collect();
        assert!(
            late_acks.is_empty(),
            "seed {seed}: {old_leader} acknowledged {late_acks:?}"
        );
    }
}

#[test]
fn crashed_leader_restarts_from_its_log_and_catches_up() {
    let s = scenario("etcd-leader-kill");
    let out = run(
        &s,
        &RunConfig {
            record_views: true,
            ..RunConfig::seeded(3)
        },
    )
    .unwrap();
    let killed = out
        .trace
        .iter()
        .find(|e| e.what == EventKind::Process { up: false })
        .unwrap()
        .node
        .clone();
    let restarted = out
        .trace
        .iter()
        .filter(|e| e.node == killed && e.what == EventKind::Process { up: true })
        .nth(1)
        .expect("the killed node was started again");
    assert!(restarted.at_us >= 12_000_000);
    let last = out.views.last().unwrap();
    let i: usize = killed[1..].parse::<usize>().unwrap() - 1;
    let best = last.iter().map(|v| v.commit).max().unwrap();
    assert!(
        last[i].commit + 5 >= best,
        "{killed} did not catch up: {last:?}"
    );
    assert!(out.summary.invariant_violations.is_empty());
}

#[test]
fn checker_catches_the_stale_read_build_and_names_the_operations() {
    let s = scenario("etcd-leader-isolate");
    let mut caught = 0;
    for seed in 1..=6 {
        let broken = run(
            &s,
            &RunConfig {
                stale_reads: true,
                ..RunConfig::seeded(seed)
            },
        )
        .unwrap();
        if let Verdict::NotLinearizable { kind, ops, .. } = &broken.summary.verdict {
            // A stale read shows as such, or through the compare-and-swap that trusted it.
            assert!(
                ["stale read", "impossible compare-and-swap"].contains(&kind.as_str()),
                "{kind}"
            );
            assert!(
                (2..=20).contains(&ops.len()),
                "the report names the read and the writes that could explain it, not thousands: {ops:?}"
            );
            assert!(ops.iter().any(|o| o.describe().contains("get")), "{ops:?}");
            caught += 1;
        }
        let correct = run(&s, &RunConfig::seeded(seed)).unwrap();
        assert_eq!(
            correct.summary.verdict,
            Verdict::Linearizable,
            "seed {seed}"
        );
    }
    assert!(
        caught >= 3,
        "the checker caught the stale-read build in only {caught} of 6 seeds"
    );
}

#[test]
fn chaos_schedule_is_drawn_from_the_seed_and_printed() {
    let s = scenario("etcd-chaos");
    let a = run(&s, &RunConfig::seeded(11)).unwrap().schedule;
    let b = run(&s, &RunConfig::seeded(12)).unwrap().schedule;
    assert!(a.len() >= 8, "4 faults and their heals: {a:?}");
    assert_ne!(a, b);
}

#[test]
fn duplicated_client_requests_can_apply_a_write_twice_and_the_checker_catches_it() {
    let mut s = scenario("etcd-leader-isolate");
    s.workload.keys = 1;
    s.duration_ms = 12_000;
    // Copies of one request delayed by different amounts: the second can arrive after the
    // write was acknowledged and after another client overwrote the key.
    s.faults = vec![
        FaultStep {
            at_ms: 2_000,
            fault: Fault::DuplicateRequests { rate: 0.5 },
        },
        FaultStep {
            at_ms: 2_000,
            fault: Fault::Delay { ms_max: 300 },
        },
    ];
    let mut caught = 0;
    for seed in 1..=10 {
        let out = run(&s, &RunConfig::seeded(seed)).unwrap();
        if let Verdict::NotLinearizable { ops, .. } = &out.summary.verdict {
            // What was read came from a real write, applied once more than the history allows
            // (a copy landing after its write was acknowledged, or after it was refused).
            let written: Vec<u64> = out
                .history
                .ops
                .iter()
                .filter_map(|o| match o.kind {
                    OpKind::Put { value, .. } => Some(value),
                    OpKind::Cas { new, .. } => Some(new),
                    OpKind::Get { .. } => None,
                })
                .collect();
            let read = ops.iter().find_map(|o| match o.outcome {
                Outcome::Ok {
                    read: Some(Some(v)),
                    ..
                } => Some(v),
                _ => None,
            });
            assert!(read.is_some_and(|v| written.contains(&v)), "{ops:?}");
            caught += 1;
        }
        assert!(
            out.summary.invariant_violations.is_empty(),
            "Raft itself stays safe"
        );
    }
    assert!(
        caught >= 1,
        "a write applied twice went unnoticed in all 10 seeds"
    );
}

#[test]
fn retrying_timed_out_writes_turns_some_unknown_writes_into_acknowledged_ones() {
    let plain = scenario("etcd-leader-isolate");
    let mut retrying = plain.clone();
    retrying.workload.retry_timed_out_writes = true;
    let unknown = |s: &Scenario| -> u64 {
        (1..=5)
            .map(|seed| run(s, &RunConfig::seeded(seed)).unwrap().summary.ops.info)
            .sum()
    };
    let (before, after) = (unknown(&plain), unknown(&retrying));
    assert!(
        after < before,
        "unknown writes: {before} without resends, {after} with"
    );
}
