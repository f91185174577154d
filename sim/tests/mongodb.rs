//! The MongoDB model against what MongoDB documents and promises: elections within the documented
//! time, w:1 writes rolled back after an isolated primary rejoins and w:"majority" writes never,
//! majority reads never dirty, planned failover in milliseconds, and the lag methods telling
//! apart idle from behind.

use quorumlab_experiment::mongodb::{ReadConcern, WriteConcern};
use quorumlab_experiment::replication::LagMethod;
use quorumlab_experiment::{Scenario, System};
use quorumlab_sim::mongodb::run_mongo;
use quorumlab_sim::sweep::sweep_mongo;

fn scenario(name: &str) -> Scenario {
    Scenario::load(name).unwrap()
}

#[test]
fn a_killed_primary_is_replaced_within_mongodbs_documented_median() {
    let runs = sweep_mongo(
        &scenario("mongo-primary-kill"),
        WriteConcern::W1,
        1..=20,
        &|_| {},
    )
    .unwrap();
    let mut elected: Vec<u64> = runs
        .iter()
        .map(|r| r.election_ms.expect("a new primary"))
        .collect();
    elected.sort_unstable();
    let median = elected[elected.len() / 2];
    // electionTimeoutMillis (10 s) plus an offset of up to 15%, less the time since the
    // secondaries last heard the primary: MongoDB says the median should not exceed 12 s.
    assert!(
        (9_000..=12_000).contains(&median),
        "median {median} ms of {elected:?}"
    );
    assert!(elected.iter().all(|&ms| ms <= 11_600), "{elected:?}");
    assert!(runs.iter().all(|r| r.invariant_violations.is_empty()));
}

#[test]
fn an_isolated_primary_rolls_back_w1_writes_and_no_majority_write() {
    let s = scenario("mongo-isolate-primary");
    for seed in 1..=3 {
        let w1 = run_mongo(&s, WriteConcern::W1, seed).unwrap().summary;
        // The old primary acknowledged w:1 writes until it stepped down, ~10 s after the cut.
        assert!(w1.lost_writes > 1000, "seed {seed}: {w1:?}");
        assert_eq!(
            w1.rolled_back_entries,
            Some(w1.lost_writes),
            "the model counts what the history shows lost (seed {seed})"
        );
        let old_acked = w1.old_primary_acked_for_ms.unwrap();
        assert!(
            (9_000..=10_500).contains(&old_acked),
            "seed {seed}: {old_acked}"
        );
        let majority = run_mongo(&s, WriteConcern::Majority, seed).unwrap().summary;
        assert_eq!(
            (majority.lost_writes, majority.majority_acked_lost),
            (0, 0),
            "seed {seed}"
        );
        assert!(
            majority.rolled_back_entries.unwrap() > 0,
            "unacknowledged writes are rolled back too"
        );
        assert!(majority.why_unsafe(false).is_none() && w1.why_unsafe(false).is_none());
    }
}

#[test]
fn majority_reads_never_see_a_write_that_is_rolled_back() {
    let mut s = scenario("mongo-isolate-primary");
    let local = run_mongo(&s, WriteConcern::W1, 1).unwrap().summary;
    assert!(
        local.reads_of_lost_writes > 0,
        "local reads on the old primary see doomed writes"
    );
    let System::Mongodb(mongo) = &mut s.system else {
        unreachable!()
    };
    mongo.read_concern = ReadConcern::Majority;
    let majority = run_mongo(&s, WriteConcern::W1, 1).unwrap().summary;
    assert!(majority.reads > 0);
    assert_eq!(majority.reads_of_lost_writes, 0, "{majority:?}");
}

#[test]
fn a_planned_stepdown_hands_over_in_milliseconds_without_losing_writes() {
    let runs = sweep_mongo(
        &scenario("mongo-stepdown"),
        WriteConcern::Majority,
        1..=5,
        &|_| {},
    )
    .unwrap();
    for r in &runs {
        let failover = r.failover_ms.expect("a new primary took writes");
        assert!(failover < 500, "seed {}: {failover} ms", r.seed);
        assert_eq!(r.lost_writes, 0);
    }
}

#[test]
fn a_priority_takeover_returns_the_primary_to_the_preferred_member() {
    let run = run_mongo(&scenario("mongo-primary-kill"), WriteConcern::W1, 1).unwrap();
    assert!(
        run.trace
            .iter()
            .any(|e| e.node == "n1" && e.what.contains("priority takeover: won")),
        "{:#?}",
        run.trace
    );
    assert_eq!(run.summary.new_primary.as_deref(), Some("n1"));
    assert_eq!(
        run.summary.lost_writes, 0,
        "it catches up before it takes over"
    );
}

#[test]
fn optime_date_age_misleads_when_idle_and_the_heartbeat_does_not() {
    let run = run_mongo(&scenario("mongo-lag"), WriteConcern::W1, 1)
        .unwrap()
        .summary;
    let lag = |phase: &str, method: LagMethod| {
        run.lag
            .iter()
            .find(|l| l.phase == phase && l.replica == "n2" && l.method == method)
            .and_then(|l| l.value)
            .unwrap_or_else(|| panic!("{phase} {method:?}: {:#?}", run.lag))
    };
    // Idle and caught up, yet its optimeDate ages towards the 10 s periodic no-op.
    assert!(lag("idle", LagMethod::OptimeAge).max > 8_000.0);
    assert_eq!(lag("idle", LagMethod::OptimeLag).max, 0.0);
    // Steady: the heartbeat says milliseconds.
    assert!(lag("steady", LagMethod::Heartbeat).p50 < 50.0);
    // Burst beyond the apply rate: truly behind by seconds, and every method shows it.
    assert!(lag("burst", LagMethod::Heartbeat).max > 1_000.0);
    assert!(lag("burst", LagMethod::OptimeLag).max >= 1_000.0);
}

#[test]
fn same_seed_same_run() {
    let s = scenario("mongo-isolate-primary");
    let a = serde_json::to_string(&run_mongo(&s, WriteConcern::W1, 7).unwrap()).unwrap();
    let b = serde_json::to_string(&run_mongo(&s, WriteConcern::W1, 7).unwrap()).unwrap();
    assert_eq!(a, b);
}
