//! The load test against the real service on a real primary and streaming replica: the offered
//! rate is what gets sent, every endpoint of the mix is measured, reads go to the replica, and
//! the rate search stops at its ceiling.

#[path = "../../service/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::TempPostgres;
use quorumlab_loadtest::{find_max_rate, run, seed_users, Endpoint, LoadReport, Mix, Plan};

/// Serves the API over `primary` and `replica` on a free loopback port; returns its base URL.
async fn serve(primary: &TempPostgres, replica: &TempPostgres) -> String {
    let nodes = vec![
        ("primary".to_string(), primary.url().parse().unwrap()),
        ("replica".to_string(), replica.url().parse().unwrap()),
    ];
    let db = quorumlab_service::connect_cluster(nodes, 8, Duration::from_millis(200))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, quorumlab_service::router(db))
            .await
            .unwrap()
    });
    url
}

/// No failures; the offered rate sent within 30%; every endpoint of the mix measured with
/// ordered percentiles; the replica serving reads; the write mix reading its own writes.
fn assert_measured(mix: Mix, report: &LoadReport) {
    assert_eq!(report.failures, 0, "{report:#?}");
    let sent: usize = report.endpoints.iter().map(|e| e.requests).sum();
    let offered = 100.0 * report.duration_s;
    assert!(
        (sent as f64) > 0.7 * offered && (sent as f64) < 1.3 * offered,
        "{sent} sent for {offered} offered: {report:#?}"
    );
    for (endpoint, _) in mix.weights() {
        let stats = report
            .endpoints
            .iter()
            .find(|e| e.endpoint == endpoint.label())
            .unwrap_or_else(|| panic!("{endpoint:?} missing: {report:#?}"));
        assert!(stats.p50_ms > 0.0 && stats.p50_ms <= stats.p99_ms && stats.p99_ms <= stats.max_ms);
    }
    // Plain reads go to the replica; in the write mix, reads carry tokens and may wait for it
    // or fall back to the primary, but the replica serves some.
    assert!(
        report.served_by.get("replica").copied().unwrap_or(0) > 0,
        "{:?}",
        report.served_by
    );
    // The service's own count: every read the load test saw, by the same node; at most one more
    // per user (a read still in flight when the run stopped).
    let counted = report
        .service_reads_by_node
        .as_ref()
        .expect("the service has /metrics");
    for (node, seen) in &report.served_by {
        assert!(
            counted.get(node).copied().unwrap_or(0) >= *seen,
            "{node}: {counted:?} vs {:?}",
            report.served_by
        );
    }
    let (seen, total): (u64, u64) = (report.served_by.values().sum(), counted.values().sum());
    assert!(
        total <= seen + report.users as u64,
        "{counted:?} vs {:?}",
        report.served_by
    );
    if mix == Mix::Write {
        assert!(report
            .endpoints
            .iter()
            .any(|e| e.endpoint == Endpoint::ReadOwnWrite.label()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offered_rate_is_sent_and_every_endpoint_is_measured() {
    let Some(primary) = TempPostgres::start("load-a") else {
        return;
    };
    let replica = TempPostgres::start_replica_of(&primary, "load-b", 0);
    let target = serve(&primary, &replica).await;
    let population = seed_users(&target, 40, 8, || {}).await.unwrap();
    assert_eq!(population.len(), 40);

    for mix in [Mix::ReadHeavy, Mix::Write] {
        let plan = Plan {
            target: target.clone(),
            mix,
            rate: 100,
            duration: Duration::from_secs(3),
            html_report: None,
            seed: 3,
        };
        let report = run(&plan, &population).await.unwrap();
        assert_measured(mix, &report);
    }

    let plan = Plan {
        target: target.clone(),
        mix: Mix::Read,
        rate: 40,
        duration: Duration::from_secs(2),
        html_report: None,
        seed: 4,
    };
    let mut heard = Vec::new();
    let steps = find_max_rate(
        &plan,
        &population,
        1_000.0,
        80,
        |s| heard.push(s.passed),
        |_| None,
    )
    .await
    .unwrap();
    let rates: Vec<u32> = steps.iter().map(|s| s.report.offered_per_s).collect();
    assert_eq!(rates, [40, 80], "doubles up to the ceiling, then stops");
    assert_eq!(heard, [true, true]);
}
