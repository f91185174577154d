//! The sharded-cluster model over seeds: balancing onto a new shard, a donor or recipient dying
//! at a migration's step, the config servers unreachable from the donor, a router cut off, a
//! broken build the read checks must catch, a growth step replayed, and bad input refused.

use quorumlab_experiment::rebalance::{MigrationOutcome, ShardedRunSummary};
use quorumlab_experiment::sharded::{MigrationStep, StepFault, StepFaultKind};
use quorumlab_experiment::{Scenario, System};
use quorumlab_sim::sharded::{run_sharded, ShardedBuild, ShardedSimRun};

fn scenario(name: &str) -> Scenario {
    Scenario::load(name).expect("built-in scenario")
}

fn run(s: &Scenario, seed: u64) -> ShardedSimRun {
    run_sharded(s, seed, ShardedBuild::default()).expect("runs")
}

/// Every promise of the cluster held: nothing lost, no bad read, no invariant broken.
fn assert_kept_promises(s: &ShardedRunSummary) {
    assert_eq!(s.why_unsafe(), None, "seed {}: {s:?}", s.seed);
    assert!(s.acked_writes > 1000, "the workload ran: {s:?}");
    assert!(s.reads > 100, "reads ran: {s:?}");
}

/// `name` with one step fault instead of its own.
fn with_step_fault(name: &str, at: MigrationStep, kind: StepFaultKind, for_ms: u64) -> Scenario {
    let mut s = scenario(name);
    let System::Sharded(settings) = &mut s.system else {
        panic!("sharded")
    };
    settings.step_faults = vec![StepFault {
        at,
        migration: 1,
        kind,
        for_ms,
    }];
    s
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let s = scenario("shard-stale-router");
    let a = serde_json::to_string(&run(&s, 4)).unwrap();
    let b = serde_json::to_string(&run(&s, 4)).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&run(&s, 5)).unwrap();
    assert_ne!(a, c, "another seed, another run");
}

#[test]
fn a_new_shard_is_filled_a_chunk_at_a_time_and_orphans_are_deleted() {
    let s = scenario("shard-add-shard");
    for seed in 1..=3 {
        let r = run(&s, seed);
        let sum = &r.summary;
        assert_kept_promises(sum);
        assert_eq!(
            (sum.migrations_committed, sum.migrations_aborted),
            (3, 0),
            "{sum:?}"
        );
        assert!(
            r.migrations.iter().all(|m| m.to == 3),
            "every chunk goes to the new s4"
        );
        assert!(
            sum.stale_config_retries > 0,
            "routers learn each new owner by a stale answer"
        );
        assert!(sum.orphans_max > 0 && sum.orphans_left == 0, "{sum:?}");
        // Deleted after the range deleter's delay (5 s), not before.
        assert!(
            sum.orphan_ms_max
                .is_some_and(|ms| (5000..6000).contains(&ms)),
            "{sum:?}"
        );
        assert!(
            sum.bytes_moved >= 3 * (4 << 20),
            "three 4 MiB chunks and their writes"
        );
        // The pause users feel: a write held in a critical section waits for it.
        let inside = sum
            .write_ms_inside
            .expect("some write met a critical section");
        let outside = sum.write_ms_outside.expect("writes");
        assert!(inside.max > outside.p99, "{inside:?} vs {outside:?}");
    }
}

#[test]
fn a_donor_that_dies_in_its_critical_section_loses_nothing_and_the_balancer_goes_on() {
    let s = scenario("shard-donor-crash");
    for seed in 1..=3 {
        let r = run(&s, seed);
        let sum = &r.summary;
        assert_kept_promises(sum);
        let first = &r.migrations[0];
        assert_eq!(first.outcome, MigrationOutcome::Aborted, "{first:?}");
        assert_eq!(first.why.as_deref(), Some("the donor crashed"));
        // Writes to the chunk wait from the critical section until the restarted donor learns
        // that its migration did not commit (down for 3 s).
        assert!(
            sum.critical_section_ms_max.is_some_and(|ms| ms >= 3000),
            "{sum:?}"
        );
        assert!(
            sum.unknown_writes > 0,
            "writes sent to the dead donor timed out"
        );
        assert_eq!(
            sum.migrations_committed, 3,
            "the balancer finished afterwards: {sum:?}"
        );
    }
}

#[test]
fn a_donor_that_dies_while_committing_learns_the_outcome_from_the_config_servers() {
    let s = with_step_fault(
        "shard-add-shard",
        MigrationStep::Commit,
        StepFaultKind::CrashDonor,
        2000,
    );
    for seed in 1..=3 {
        let r = run(&s, seed);
        assert_kept_promises(&r.summary);
        let first = &r.migrations[0];
        assert_ne!(first.outcome, MigrationOutcome::Running, "{first:?}");
        let recovered = r
            .trace
            .iter()
            .any(|e| e.what.starts_with("recovered migration 1"));
        assert!(recovered, "the restarted donor settled migration 1");
    }
}

#[test]
fn a_recipient_that_dies_mid_clone_aborts_the_migration_and_its_copy_is_deleted() {
    let s = with_step_fault(
        "shard-add-shard",
        MigrationStep::CatchUp,
        StepFaultKind::CrashRecipient,
        2000,
    );
    for seed in 1..=3 {
        let r = run(&s, seed);
        let sum = &r.summary;
        assert_kept_promises(sum);
        let first = &r.migrations[0];
        assert_eq!(first.outcome, MigrationOutcome::Aborted, "{first:?}");
        assert!(
            first.why.as_deref().is_some_and(|w| w.contains("silent")),
            "{first:?}"
        );
        assert_eq!(
            sum.orphans_left, 0,
            "the restarted recipient deleted its partial copy"
        );
        assert_eq!(sum.migrations_committed, 3, "{sum:?}");
    }
}

#[test]
fn config_servers_unreachable_from_the_donor_stretch_its_critical_section() {
    let s = with_step_fault(
        "shard-add-shard",
        MigrationStep::Commit,
        StepFaultKind::IsolateDonorFromConfig,
        2000,
    );
    for seed in 1..=3 {
        let r = run(&s, seed);
        let sum = &r.summary;
        assert_kept_promises(sum);
        let first = &r.migrations[0];
        assert_eq!(
            first.outcome,
            MigrationOutcome::Committed,
            "the commit waits, then lands"
        );
        let held_ms = (first.critical_to_us.unwrap() - first.critical_from_us.unwrap()) / 1000;
        assert!(
            held_ms >= 2000,
            "held until the donor reached the config servers: {held_ms} ms"
        );
    }
}

#[test]
fn a_router_cut_off_during_migrations_comes_back_stale_and_retries() {
    let s = scenario("shard-stale-router");
    for seed in 1..=3 {
        let r = run(&s, seed);
        let sum = &r.summary;
        assert_kept_promises(sum);
        assert!(
            sum.unknown_writes > 0,
            "r1's clients timed out while it was cut off"
        );
        let at = |what: &str| {
            let e = r
                .trace
                .iter()
                .find(|e| e.what.starts_with(what))
                .expect(what);
            e.at_us
        };
        let (cut_us, healed_us) = (
            at("cut the first router off"),
            at("heal the step fault's cut"),
        );
        let moved_meanwhile = r
            .migrations
            .iter()
            .filter(|m| m.ended_us.is_some_and(|t| t > cut_us && t < healed_us))
            .count();
        assert!(
            moved_meanwhile >= 3,
            "migrations went on while r1 was away: {moved_meanwhile}"
        );
        let r1_retries_after = r
            .stale_retries
            .iter()
            .filter(|&&(t, router)| router == 0 && t >= healed_us && t < healed_us + 1_000_000)
            .count();
        assert!(
            r1_retries_after > 0,
            "back, r1 was told its table is stale and refreshed"
        );
    }
}

#[test]
fn the_read_checks_catch_a_build_that_returns_orphans() {
    let s = scenario("shard-add-shard");
    let build = ShardedBuild {
        orphan_reads: true,
        ..ShardedBuild::default()
    };
    let r = run_sharded(&s, 1, build).unwrap();
    assert!(r.summary.bad_reads > 0, "{:?}", r.summary);
    let why = r.summary.why_unsafe().expect("unsafe");
    assert!(why.contains("twice"), "{why}");
}

#[test]
fn a_growth_replay_moves_what_the_shard_key_experiment_moved() {
    let s = scenario("shard-grow-10x");
    let workload = quorumlab_shard::replay::load_workload("activity-events").unwrap();
    let report = quorumlab_shard::run(
        &workload,
        &quorumlab_shard::ShardConfig {
            shards: None,
            growth: None,
            seed: 1,
            keys: Some(vec!["ts".into()]),
        },
    )
    .unwrap();
    let moved_by_experiment = report.keys[0].steps[1].bytes_migrated;
    let r = run(&s, 1);
    assert_kept_promises(&r.summary);
    assert_eq!(r.summary.migrations_aborted, 0);
    let moved = r.summary.bytes_moved as f64;
    let expected = moved_by_experiment as f64;
    assert!(
        (moved - expected).abs() / expected < 0.02,
        "simulated {moved} bytes vs the experiment's {expected}"
    );
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/shard-donor-crash.toml"
    ))
    .unwrap();
    let bad_step = text.replace("\"critical-section\"", "\"handshake\"");
    let err = Scenario::parse(&bad_step, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("'handshake' is not a migration step"), "{err}");
    let too_few_hosts = text.replace("nodes = 9", "nodes = 6");
    let err = Scenario::parse(&too_few_hosts, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 9 hosts"), "{err}");
    let mut s = scenario("shard-grow-10x");
    let System::Sharded(settings) = &mut s.system else {
        panic!("sharded")
    };
    settings.growth_replay.as_mut().unwrap().key = "no-such-key".into();
    let err = run_sharded(&s, 1, ShardedBuild::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no candidate key 'no-such-key'"), "{err}");
}
