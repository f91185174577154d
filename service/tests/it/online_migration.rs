//! The zero-downtime column migration, run step by step while clients create, read, rename and
//! pay: not one request may fail, and no name may be lost or go stale.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use quorumlab_service::online;
use quorumlab_service::routing::{Db, NameColumn};
use serde_json::json;

use crate::common::TempPostgres;
use crate::http::call;

const EXISTING_USERS: i64 = 20_000;
const CLIENTS: u64 = 8;

/// One client: create a user, rename it, deposit, read it back (the name must be the latest),
/// read an old user; until told to stop. Returns (requests, failures described).
async fn client(app: Router, n: u64, stop: Arc<AtomicBool>, served: Arc<AtomicU64>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut round = 0;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let email = format!("c{n}-{round}@example.org");
        let (status, user) = call(
            &app,
            "POST",
            "/users",
            Some(&json!({ "name": "before", "email": email }).to_string()),
        )
        .await;
        if status != StatusCode::CREATED {
            failures.push(format!("create: {status} {user}"));
            continue;
        }
        let id = user["id"].as_i64().unwrap();
        let renamed = format!("renamed {n}/{round}");
        let steps = [
            (
                "PATCH",
                format!("/users/{id}"),
                Some(json!({ "name": renamed }).to_string()),
            ),
            (
                "POST",
                format!("/users/{id}/deposit"),
                Some(json!({ "amount_minor": 5 }).to_string()),
            ),
            ("GET", format!("/users/{id}"), None),
            (
                "GET",
                format!("/users/{}", 1 + (round * 7919 + n as i64) % EXISTING_USERS),
                None,
            ),
        ];
        for (method, uri, body) in steps {
            let (status, value) = call(&app, method, &uri, body.as_deref()).await;
            served.fetch_add(1, Ordering::Relaxed);
            if !status.is_success() {
                failures.push(format!("{method} {uri}: {status} {value}"));
            } else if method == "GET"
                && uri == format!("/users/{id}")
                && value["name"] != renamed.as_str()
            {
                failures.push(format!("{uri}: stale name {}", value["name"]));
            } else if method == "GET" && value["name"].as_str().is_none_or(str::is_empty) {
                failures.push(format!("{uri}: no name in {value}"));
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn name_becomes_display_name_under_load_with_zero_failed_requests() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("online") else {
        return;
    };
    let pool = quorumlab_service::connect(&pg.url(), 30).await.unwrap();
    for statement in [
        format!("INSERT INTO users (name, email) SELECT 'old ' || i, 'old' || i || '@example.org' FROM generate_series(1, {EXISTING_USERS}) i"),
        "INSERT INTO accounts (user_id) SELECT id FROM users".to_string(),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    let db = Db::primary_only(pool.clone());
    let app = quorumlab_service::router(db.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(app.clone(), n, stop.clone(), served.clone())))
        .collect();
    let settle = Duration::from_millis(300);

    tokio::time::sleep(settle).await;
    online::expand(&pool).await.unwrap();
    tokio::time::sleep(settle).await;
    let copied = online::backfill(&pool, 1000, Duration::from_millis(5))
        .await
        .unwrap();
    assert!(copied >= EXISTING_USERS as u64, "backfilled {copied}");
    tokio::time::sleep(settle).await;
    db.use_name_column(NameColumn::DisplayName);
    tokio::time::sleep(settle).await;
    online::contract(&pool).await.unwrap();
    tokio::time::sleep(settle).await;

    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let requests = served.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {requests} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        requests > 200,
        "only {requests} requests ran during the migration"
    );

    assert_eq!(
        online::current_name_column(&pool).await.unwrap(),
        NameColumn::DisplayName
    );
    let (missing, old_kept): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE display_name IS NULL), \
                count(*) FILTER (WHERE display_name = 'old ' || id) FROM users",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(missing, 0);
    assert_eq!(old_kept, EXISTING_USERS, "every existing name survived");
}
