//! Writes find the primary again after a failover: a real primary and a real streaming replica;
//! the primary's postmaster is killed with SIGKILL, the replica is promoted, and the service,
//! which was only told the two nodes, sends writes to the promoted node on its own.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use quorumlab_service::routing::{SERVED_BY_HEADER, TOKEN_HEADER};
use serde_json::json;

use crate::common::TempPostgres;
use crate::http::{request, send, Reply};

/// A deposit of `amount` under idempotency key `key`.
fn deposit(user: i64, amount: i64, key: &str) -> Request<Body> {
    let body = json!({ "amount_minor": amount }).to_string();
    request(
        "POST",
        &format!("/users/{user}/deposit"),
        Some(&body),
        &[("idempotency-key", key)],
    )
}

/// Retries one deposit under one idempotency key until the service has found the new primary
/// (within 30 s); every refusal meanwhile is a JSON 503.
async fn deposit_until_the_new_primary_takes_it(app: &axum::Router, user: i64) {
    let started = Instant::now();
    let mut refused = Vec::new();
    loop {
        let Reply { status, body, .. } = send(app, deposit(user, 25, "after")).await;
        if status == StatusCode::OK {
            return;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"].is_string(), "a JSON error: {body}");
        refused.push(body);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes never reached the promoted replica: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_promoted_replica() {
    let _one = crate::one_at_a_time().await;
    let Some(mut old_primary) = TempPostgres::start("failover-a") else {
        return;
    };
    let replica = TempPostgres::start_replica_of(&old_primary, "failover-b", 0);
    let nodes = vec![
        ("a".to_string(), old_primary.url().parse().unwrap()),
        ("b".to_string(), replica.url().parse().unwrap()),
    ];
    let db = quorumlab_service::connect_cluster(nodes, 4, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(db.primary_name(), "a");
    let app = quorumlab_service::router(db.clone());

    let create = json!({ "name": "Failover", "email": "failover@example.test" }).to_string();
    let Reply { status, body, .. } =
        send(&app, request("POST", "/users", Some(&create), &[])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let user = body["id"].as_i64().unwrap();
    let written = send(&app, deposit(user, 100, "before")).await;
    assert_eq!(written.status, StatusCode::OK);
    // The replica has the deposit before the crash (read through it with the write's token).
    let token = written.headers[TOKEN_HEADER].to_str().unwrap();
    let read = request(
        "GET",
        &format!("/users/{user}"),
        None,
        &[(TOKEN_HEADER, token)],
    );
    let read = send(&app, read).await;
    assert_eq!(read.headers[SERVED_BY_HEADER], "b");
    assert_eq!(read.body["balance_minor"], 100);

    old_primary.crash();
    replica.promote();

    deposit_until_the_new_primary_takes_it(&app, user).await;
    assert_eq!(db.primary_name(), "b");

    // The write is on the promoted node, once, and the earlier one survived the crash.
    let pool = sqlx::PgPool::connect(&replica.url()).await.unwrap();
    let balance: i64 = sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(balance, 125);
    let retried = send(&app, deposit(user, 25, "after")).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let balance: i64 = sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(balance, 125, "the retried key applied twice");
    pool.close().await;
}
