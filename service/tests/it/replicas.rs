//! Reads from a lagging replica with read-your-writes tokens: a real primary and a real streaming
//! replica that applies every commit 200 ms late. With tokens honoured the checker finds no stale
//! read; with the deliberately broken build that ignores them it finds some.
//! And at startup, a replica serves reads only once it has replayed the migrations.

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use quorumlab_experiment::consistency::{check_read_your_writes, SessionOp};
use quorumlab_service::routing::{Db, SERVED_BY_HEADER, TOKEN_HEADER};
use serde_json::json;

use crate::common::TempPostgres;
use crate::http::{request, send};

const CLIENTS: u32 = 6;
const ROUNDS: usize = 8;

/// Each client deposits into its own account and reads it straight back with its token.
async fn sessions(app: Router, users: Vec<i64>) -> Vec<SessionOp> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let app = app.clone();
            let user = users[client as usize];
            tokio::spawn(async move {
                let mut trace = Vec::new();
                for _ in 0..ROUNDS {
                    let deposit = json!({ "amount_minor": 1 }).to_string();
                    let uri = format!("/users/{user}/deposit");
                    let written = send(&app, request("POST", &uri, Some(&deposit), &[])).await;
                    assert_eq!(written.status, StatusCode::OK);
                    trace.push(SessionOp {
                        client,
                        object: user as u64,
                        version: written.body["version"].as_u64().unwrap(),
                        write: true,
                        with_token: false,
                        served_by: "primary".into(),
                    });
                    let token = written.headers[TOKEN_HEADER].to_str().unwrap();
                    let uri = format!("/users/{user}");
                    let read =
                        send(&app, request("GET", &uri, None, &[(TOKEN_HEADER, token)])).await;
                    assert_eq!(read.status, StatusCode::OK);
                    trace.push(SessionOp {
                        client,
                        object: user as u64,
                        version: read.body["version"].as_u64().unwrap(),
                        write: false,
                        with_token: true,
                        served_by: read.headers[SERVED_BY_HEADER].to_str().unwrap().to_string(),
                    });
                }
                trace
            })
        })
        .collect();
    let mut trace = Vec::new();
    for task in tasks {
        trace.extend(task.await.unwrap());
    }
    trace
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_keep_reads_from_a_lagging_replica_from_going_back_in_time() {
    let _one = crate::one_at_a_time().await;
    let Some(primary) = TempPostgres::start("ryw-primary") else {
        return;
    };
    let replica = TempPostgres::start_replica_of(&primary, "ryw-replica", 200);
    let primary_pool = quorumlab_service::connect(&primary.url(), 20)
        .await
        .unwrap();
    let replica_pool = quorumlab_service::connect_replica(&replica.url(), 20)
        .await
        .unwrap();
    let db = Db::with_replicas(
        primary_pool,
        vec![("replica1".into(), replica_pool)],
        Duration::from_millis(1000),
    );

    // Users exist on both before the sessions start.
    let app = quorumlab_service::router(db.clone());
    let mut users = Vec::new();
    for n in 0..CLIENTS {
        let user = json!({ "name": format!("c{n}"), "email": format!("c{n}@example.org") });
        let created = send(
            &app,
            request("POST", "/users", Some(&user.to_string()), &[]),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
        users.push(created.body["id"].as_i64().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;

    let honoured = sessions(app, users.clone()).await;
    let stale = check_read_your_writes(&honoured);
    assert!(
        stale.is_empty(),
        "stale reads with tokens honoured: {stale:?}"
    );
    let by_replica = honoured
        .iter()
        .filter(|op| !op.write && op.served_by == "replica1")
        .count();
    assert!(by_replica > 0, "the replica served no read: {honoured:?}");

    let broken = quorumlab_service::router(db.ignoring_tokens());
    let ignored = sessions(broken, users).await;
    let stale = check_read_your_writes(&ignored);
    assert!(
        !stale.is_empty(),
        "with tokens ignored, a replica 200 ms behind should serve stale reads"
    );
    assert!(stale.iter().all(|s| s.served_by == "replica1"), "{stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_reads_only_once_it_has_replayed_the_migrations() {
    let _one = crate::one_at_a_time().await;
    let Some(primary) = TempPostgres::start("schema-primary") else {
        return;
    };
    // The replica applies each commit a second late, so the migrations reach it after startup
    // would otherwise already be routing reads to it.
    let replica = TempPostgres::start_replica_of(&primary, "schema-replica", 1000);
    let nodes = vec![
        ("primary".to_string(), primary.url().parse().unwrap()),
        ("replica".to_string(), replica.url().parse().unwrap()),
    ];
    let db = quorumlab_service::connect_cluster(nodes, 4, Duration::from_millis(200))
        .await
        .unwrap();
    let app = quorumlab_service::router(db);
    // A read with no token goes to the replica. One that has the tables says an unknown user is
    // a 404; one without them fails the query ("relation does not exist"), a 503.
    let read = send(&app, request("GET", "/users/0", None, &[])).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.body);
}
