//! Real Postgres 15 streaming replicas under real Patroni on a real etcd, on network-namespace
//! hosts: lag measured three ways, a primary cut off from its cluster, and five kill -9 failovers
//! in synchronous mode.
//!
//! These need root (namespaces), etcd, Postgres 15 and Patroni; `cargo xtask test` installs what
//! is missing and CI runs as root. Elsewhere each test prints why it is skipped and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quorumlab_cluster::lab::Lab;
use quorumlab_cluster::postgres::{lab as postgres, PatroniSettings};
use quorumlab_cluster::postgres::{run_on_lab, run_on_urls};
use quorumlab_experiment::postgres::{PostgresSettings, ReplicationMode};
use quorumlab_experiment::replication::{write_id, LagMethod};
use quorumlab_experiment::scenario::Scenario;
use quorumlab_experiment::{NodeId, System};
use quorumlab_proto::agent::Action;

mod common;

use common::LabDir;

/// What these tests run.
const NEEDS: &[common::Requirement] = &[common::ETCD, common::PATRONI, common::POSTGRES];

/// The `[postgres]` settings of a Postgres scenario, to adjust in a test.
fn pg_settings(scenario: &mut Scenario) -> &mut PostgresSettings {
    match &mut scenario.system {
        System::Postgres(pg) => pg,
        _ => panic!("{} is not a Postgres scenario", scenario.name),
    }
}

fn up(
    dir: &LabDir,
    scenario: &Scenario,
    mode: ReplicationMode,
    rt: &tokio::runtime::Runtime,
) -> Lab {
    let settings = PatroniSettings::from_scenario(pg_settings(&mut scenario.clone()), mode);
    let binary = Path::new(env!("CARGO_BIN_EXE_quorumlab"));
    rt.block_on(postgres::up(&dir.0, 2, &settings, binary))
        .unwrap()
}

/// Each replica's lag is measured, never negative, in every phase and three ways; and while the
/// primary is idle, `pg_stat_replication`'s lag columns go NULL.
fn assert_lag_measured_on_every_replica(lag: &[quorumlab_experiment::replication::PhaseLag]) {
    for replica in ["n2", "n3"] {
        for method in [LagMethod::Heartbeat, LagMethod::ReplayLag, LagMethod::Bytes] {
            for phase in ["steady", "burst"] {
                let measured = lag
                    .iter()
                    .find(|l| l.replica == replica && l.method == method && l.phase == phase)
                    .unwrap_or_else(|| panic!("no {method:?} for {replica} in {phase}: {lag:?}"));
                if method != LagMethod::ReplayLag {
                    let d = measured.value.expect("values");
                    assert!(d.min >= 0.0, "{method:?} {replica} {phase}: {d:?}");
                }
            }
            let values: Vec<f64> = lag
                .iter()
                .filter(|l| l.replica == replica && l.method == method)
                .filter_map(|l| l.value.map(|d| d.min))
                .collect();
            assert!(!values.is_empty(), "{method:?} never measured on {replica}");
            assert!(values.iter().all(|&v| v >= 0.0), "{method:?}: {values:?}");
        }
        let idle = lag
            .iter()
            .find(|l| l.replica == replica && l.method == LagMethod::ReplayLag && l.phase == "idle")
            .unwrap_or_else(|| panic!("no replay_lag sample for {replica} while idle: {lag:?}"));
        assert!(idle.nulls > 0, "{idle:?}");
    }
}

#[test]
fn lag_is_measured_three_ways_and_never_negative() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("lag");
    let mut scenario = Scenario::load("pg-lag").unwrap();
    let pg = pg_settings(&mut scenario);
    for (phase, ms) in pg.phases.iter_mut().zip([3000, 3000, 3000]) {
        phase.ms = ms;
    }
    scenario.duration_ms = 9000;
    scenario.validate().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &scenario, ReplicationMode::Async, &rt);
    let run = rt.block_on(run_on_lab(&scenario, 1, &lab)).unwrap();
    assert_lag_measured_on_every_replica(&run.summary.lag);

    // The same measurement of a cluster known only by its URLs, as an operator would run it.
    let password = lab.postgres.as_ref().unwrap().superuser_password.clone();
    let urls: Vec<String> = NodeId::all(3)
        .rev()
        .map(|i| {
            format!(
                "postgres://postgres:{password}@{}:5432/postgres",
                lab.addr(i)
            )
        })
        .collect();
    let by_url = rt.block_on(run_on_urls(&scenario, &urls)).unwrap();
    let heartbeats: Vec<_> = by_url
        .summary
        .lag
        .iter()
        .filter(|l| l.method == LagMethod::Heartbeat && l.value.is_some())
        .collect();
    // URLs were given in reverse order: the primary is the third node, its replicas the others.
    assert!(
        heartbeats.iter().any(|l| l.replica == "n1"),
        "{heartbeats:?}"
    );
    assert!(
        heartbeats.iter().all(|l| l.replica != "n3"),
        "{heartbeats:?}"
    );
}

#[test]
fn an_isolated_primary_is_demoted_and_its_lost_writes_are_exactly_the_missing_rows() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("isolate");
    let mut scenario = Scenario::load("pg-isolate-primary").unwrap();
    scenario.faults[0].at_ms = 3000;
    // Room for the slow case: when the isolated host also held etcd's leadership, the majority
    // first elects a new etcd leader, which extends every lease by its full TTL, so the leader
    // key outlives the cut by ttl plus that election (13.6 s seen), and the new primary's first
    // write must still fall inside the run.
    scenario.duration_ms = 24_000;
    scenario.validate().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &scenario, ReplicationMode::Async, &rt);
    let run = rt.block_on(run_on_lab(&scenario, 1, &lab)).unwrap();
    let s = &run.summary;
    assert!(s.failover_ms.is_some(), "{s:?}");
    assert_ne!(s.new_primary, s.old_primary);
    assert!(!s.split_brain(), "two primaries took writes: {s:?}");
    let old_for = s
        .old_primary_acked_for_ms
        .expect("the client still reached the old primary");
    // Patroni's rule loop_wait + 2*retry_timeout <= ttl places the demotion before the key can
    // expire on a quiet host, and the order is what must always hold: no split brain, above.
    // The wall-clock bound is looser: on a loaded two-core runner Patroni's timers and Postgres'
    // fast stop add seconds (9.25 s and 13.2 s seen against ttl = 10 s). It still tells a
    // primary that demoted itself from one that never did (it would ack until the run's end,
    // 21 s after the cut).
    let System::Postgres(pg) = &scenario.system else {
        unreachable!("pg-isolate-primary is a postgres scenario")
    };
    let bound_ms = (pg.ttl_s + pg.loop_wait_s + pg.retry_timeout_s) * 1000;
    assert!(
        old_for < bound_ms,
        "demoted within ttl + loop_wait + retry_timeout ({bound_ms} ms): {old_for}"
    );
    eprintln!(
        "the old primary acknowledged writes for {old_for} ms after the cut (Patroni's rule: {} ms)",
        (pg.loop_wait_s + 2 * pg.retry_timeout_s) * 1000
    );

    // Compare the client's log with the new primary's table directly.
    let new_primary: NodeId = s.new_primary.as_ref().unwrap().parse().unwrap();
    let in_table: BTreeSet<u64> = rt.block_on(async {
        let mut conn = postgres::connect(&lab, new_primary, Duration::from_secs(5))
            .await
            .unwrap();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM ql_writes")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        ids.into_iter().map(|id| id as u64).collect()
    });
    let missing: Vec<u64> = run
        .history
        .ops
        .iter()
        .filter(|op| op.is_ok_write())
        .filter_map(|op| write_id(&op.kind))
        .filter(|id| !in_table.contains(id))
        .collect();
    assert_eq!(s.lost_writes as usize, missing.len());
    assert!(s.lost_ids.iter().all(|id| missing.contains(id)));
    assert!(
        s.lost_writes > 0,
        "writes the isolated primary acknowledged never reached the others"
    );
}

#[test]
fn synchronous_mode_loses_no_acknowledged_write_across_five_failovers() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("sync");
    let mut scenario = Scenario::load("pg-failover").unwrap();
    scenario.faults[0].at_ms = 2000;
    // After the kill, the leader key lives up to ttl (10 s); then the promotion, the surviving
    // replica's switch to the new primary (one loop_wait, plus a walreceiver restart) and the
    // leader's next loop naming it synchronous all pass before a write can commit again: about
    // 15 s at worst. 20 s after the fault leaves room on a loaded machine.
    scenario.duration_ms = 22_000;
    scenario.validate().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &scenario, ReplicationMode::Sync, &rt);
    let mut acked = 0;
    for round in 1..=5 {
        let run = rt.block_on(run_on_lab(&scenario, round, &lab)).unwrap();
        let s = run.summary;
        assert!(s.failover_ms.is_some(), "round {round}: no failover: {s:?}");
        eprintln!(
            "round {round}: detected after {:?} ms, writes back after {:?} ms",
            s.detection_ms, s.failover_ms
        );
        assert_eq!(s.lost_writes, 0, "round {round} lost {:?}", s.lost_ids);
        // The writers really wrote, before and after the failover (not a speed check).
        assert!(
            s.acked_writes > 100,
            "round {round}: only {} writes acknowledged",
            s.acked_writes
        );
        acked += s.acked_writes;
        // The killed node comes back: Patroni rewinds it and it follows the new primary.
        let old: NodeId = s.old_primary.as_ref().unwrap().parse().unwrap();
        let new: NodeId = s.new_primary.as_ref().unwrap().parse().unwrap();
        rt.block_on(async {
            postgres::signal_patroni(&lab, old, Action::Start)
                .await
                .unwrap();
            postgres::wait_for_streaming(&lab, new, 2, Duration::from_secs(120))
                .await
                .unwrap();
        });
    }
    eprintln!("{acked} writes acknowledged over 5 failovers, none lost");
}

/// `quorumlab serve --lab`, stopped by PID when dropped.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Posts a deposit of 1 under `key`; the status and consistency token, or `None` if the service
/// did not answer.
async fn deposit(
    client: &reqwest::Client,
    base: &str,
    user: i64,
    key: &str,
) -> Option<(u16, String)> {
    let response = client
        .post(format!("{base}/users/{user}/deposit"))
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "amount_minor": 1 }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let token = response
        .headers()
        .get("x-consistency-token")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((response.status().as_u16(), token))
}

#[test]
fn the_service_follows_a_patroni_failover() {
    if common::skipped(NEEDS) {
        return;
    }
    let _one = common::one_lab();
    let dir = LabDir::new("serve");
    let scenario = Scenario::load("pg-failover").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lab = up(&dir, &scenario, ReplicationMode::Async, &rt);
    let old = rt
        .block_on(postgres::wait_for_primary(
            &lab,
            None,
            Duration::from_secs(60),
        ))
        .unwrap();
    let (_service, base, log) = serve_lab(&dir);
    rt.block_on(async {
        let client = reqwest::Client::new();
        let user = create_user_once_up(&client, &base).await;
        let (status, token) = deposit(&client, &base, user, "before").await.unwrap();
        assert_eq!(status, 200);
        // Both replicas have replayed it, so whichever is promoted has it: the balance below
        // then counts the retried write exactly.
        let lsn = token.strip_prefix("pg:").unwrap().to_string();
        let nodes = postgres::PgNodes::of_lab(&lab).unwrap();
        for i in NodeId::all(3).filter(|&i| i != old) {
            wait_for_replay(&nodes, i, &lsn).await;
        }
        postgres::signal_patroni(&lab, old, Action::Kill)
            .await
            .unwrap();
        let token = deposit_until_promoted(&client, &base, user).await;
        let new = postgres::wait_for_primary(&lab, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_ne!(new, old);
        let profile: serde_json::Value = client
            .get(format!("{base}/users/{user}"))
            .header("x-consistency-token", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // One before the kill, one after however often it was retried.
        assert_eq!(profile["balance_minor"], 2, "{profile}");
    });
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("primary changed node=n"), "{said}");
}

/// `quorumlab serve --lab` on a free loopback port, logging to the lab directory; stopped on drop.
fn serve_lab(dir: &LabDir) -> (Service, String, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.0.join("serve.log");
    let service = Service(
        std::process::Command::new(env!("CARGO_BIN_EXE_quorumlab"))
            .args(["serve", "--lab", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&dir.0)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    (service, format!("http://127.0.0.1:{port}"), log)
}

/// Creates a user as soon as the service answers (within 30 s); returns its id.
async fn create_user_once_up(client: &reqwest::Client, base: &str) -> i64 {
    for _ in 0..300 {
        let answer = client
            .post(format!("{base}/users"))
            .json(&serde_json::json!({ "name": "Fo", "email": "fo@example.test" }))
            .send()
            .await;
        if let Ok(response) = answer {
            assert_eq!(response.status().as_u16(), 201);
            let body: serde_json::Value = response.json().await.unwrap();
            return body["id"].as_i64().expect("a created user has an id");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service did not answer within 30 s");
}

/// Waits (up to 30 s) until node `i` has replayed past `lsn`.
async fn wait_for_replay(nodes: &postgres::PgNodes, i: NodeId, lsn: &str) {
    let mut conn = nodes.connect(i, Duration::from_secs(5)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
        .bind(lsn)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{i} never replayed {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same deposit, retried under one idempotency key until the promoted node takes it (within
/// 90 s); it must have been refused at least once. Returns the write's consistency token.
async fn deposit_until_promoted(client: &reqwest::Client, base: &str, user: i64) -> String {
    let started = std::time::Instant::now();
    let mut refusals = 0;
    let token = loop {
        match deposit(client, base, user, "after").await {
            Some((200, token)) => break token,
            Some((503, _)) => refusals += 1,
            other => panic!("deposit during failover answered {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "writes never reached a promoted node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refusals > 0, "the kill did not interrupt writes");
    token
}
