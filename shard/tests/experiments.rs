//! The behaviours every shard-key lesson rests on, checked on the shipped workloads and on small
//! hand-made ones.

use std::path::Path;

use quorumlab_shard::workload::Workload;
use quorumlab_shard::{run, KeyResult, ShardConfig, ShardReport};

fn shipped(name: &str) -> Workload {
    Workload::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../workloads")
            .join(name),
    )
    .unwrap()
}

fn config(keys: &[&str]) -> ShardConfig {
    ShardConfig {
        shards: None,
        growth: Some(vec![1, 10, 100]),
        seed: 1,
        keys: Some(keys.iter().map(|k| k.to_string()).collect()),
    }
}

fn key<'a>(report: &'a ShardReport, name: &str) -> &'a KeyResult {
    report.keys.iter().find(|k| k.key == name).unwrap()
}

/// A small copy of a shipped workload: fewer writes per step, so tests stay quick.
fn smaller(mut w: Workload, writes_per_step: u64) -> Workload {
    w.datasets
        .iter_mut()
        .for_each(|d| d.writes_per_step = writes_per_step);
    w.cluster.chunk_bytes_max = 4 * 1024 * 1024;
    w
}

#[test]
fn monotonic_key_sends_nearly_all_new_writes_to_one_shard() {
    let w = smaller(shipped("activity-events.toml"), 20_000);
    let report = run(&w, &config(&["ts"])).unwrap();
    let ts = key(&report, "ts");
    for step in &ts.steps {
        assert!(step.hottest_shard_share > 0.95, "{step:?}");
    }
    assert_eq!(ts.grade, "bad");
    assert!(ts.verdict.contains("monotonic"), "{}", ts.verdict);
}

#[test]
fn hashed_high_cardinality_key_keeps_max_over_mean_under_1_2() {
    let w = smaller(shipped("accounts.toml"), 20_000);
    let report = run(&w, &config(&["account_id-hashed"])).unwrap();
    let hashed = key(&report, "account_id-hashed");
    for step in &hashed.steps {
        assert!(step.max_over_mean < 1.2, "{step:?}");
        assert_eq!(step.jumbo_chunks, 0);
    }
    assert_eq!(hashed.grade, "good");
}

#[test]
fn low_cardinality_key_produces_jumbo_chunks() {
    let w = smaller(shipped("accounts.toml"), 20_000);
    let report = run(&w, &config(&["currency"])).unwrap();
    let currency = key(&report, "currency");
    let last = currency.steps.last().unwrap();
    assert!(
        last.jumbo_chunks >= 1 && last.jumbo_chunks <= 3,
        "3 currencies, at most 3 jumbo chunks: {last:?}"
    );
    assert!(
        last.chunks <= 3,
        "a 3-value key cannot make more than 3 chunks: {last:?}"
    );
    assert!(currency.verdict.contains("jumbo"));
}

#[test]
fn same_seed_same_report_other_seed_differs() {
    let w = smaller(shipped("activity-events.toml"), 5_000);
    let a = run(&w, &config(&["user_id", "ts"])).unwrap();
    let b = run(&w, &config(&["user_id", "ts"])).unwrap();
    let c = run(
        &w,
        &ShardConfig {
            seed: 2,
            ..config(&["user_id", "ts"])
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn keys_are_compared_on_the_same_write_stream() {
    // Running a key alone or beside others must not change its result.
    let w = smaller(shipped("activity-events.toml"), 5_000);
    let alone = run(&w, &config(&["user_id-hashed"])).unwrap();
    let together = run(&w, &config(&["ts", "user_id-hashed", "type"])).unwrap();
    assert_eq!(
        key(&alone, "user_id-hashed"),
        key(&together, "user_id-hashed")
    );
}

const TWO_SHARDS: &str = r#"
name = "hand-checked"
[cluster]
shards = 2
chunk_bytes_max = 1000
imbalance_chunks = 1
balancer_rounds_per_step = 4
[[datasets]]
name = "e"
writes_per_step = 400
step_days = 10
doc_bytes = 100
fields = [{ name = "user", dist = "uniform", cardinality = 64 }, { name = "ts", dist = "monotonic" }]
queries = [
  { name = "by user", weight = 1, eq = ["user"] },
  { name = "by time", weight = 1, range = "ts", range_days = 1 },
]
[[keys]]
name = "user"
dataset = "e"
fields = ["user"]
[[keys]]
name = "user-hashed"
dataset = "e"
fields = ["user"]
hashed = true
"#;

#[test]
fn query_routing_matches_hand_counts() {
    let w = Workload::parse(TWO_SHARDS, "hand-checked.toml").unwrap();
    let report = run(
        &w,
        &ShardConfig {
            shards: None,
            growth: Some(vec![1]),
            seed: 3,
            keys: None,
        },
    )
    .unwrap();
    // Ranged on user: "by user" goes to exactly one shard, "by time" (no user) to both.
    // Half the queries of each kind: 1 shard and 2 shards -> 1.5 shards per query, 50% scatter.
    let ranged = &key(&report, "user").steps[0];
    assert_eq!(
        ranged
            .scatter_gather_share
            .map(|s| (s * 20.0).round() / 20.0),
        Some(0.5),
        "{ranged:?}"
    );
    assert!(
        (ranged.shards_per_query.unwrap() - 1.5).abs() < 0.05,
        "{ranged:?}"
    );
    // Hashed on user: same routing — equality targets one chunk, a range is broadcast.
    let hashed = &key(&report, "user-hashed").steps[0];
    assert!(
        (hashed.shards_per_query.unwrap() - 1.5).abs() < 0.05,
        "{hashed:?}"
    );
    assert_eq!(ranged.writes, 400);
}

#[test]
fn bad_input_names_the_problem() {
    let w = Workload::parse(TWO_SHARDS, "x.toml").unwrap();
    let err = run(
        &w,
        &ShardConfig {
            shards: Some(0),
            growth: Some(vec![1]),
            seed: 1,
            keys: None,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("0 shards"), "{err}");
    let err = run(
        &w,
        &ShardConfig {
            shards: None,
            growth: Some(vec![1]),
            seed: 1,
            keys: Some(vec!["nope".into()]),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no candidate key 'nope'"), "{err}");
}
