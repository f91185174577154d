//! The API against a real Postgres 15: a throwaway server (initdb in a temp dir, a free port),
//! stopped by PID when the test ends, whatever happened.
//!
//! Requests go through the router in process (`tower::ServiceExt::oneshot`), so a thousand
//! concurrent transfers need no HTTP client, only the database.

use axum::http::StatusCode;
use axum::Router;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::TempPostgres;
use crate::http::{call, request, send};

/// The idempotency key every copy of the raced transfer carries.
const KEY: (&str, &str) = ("idempotency-key", "pay-42");

async fn app(pg: &TempPostgres) -> Router {
    let pool = quorumlab_service::connect(&pg.url(), 50).await.unwrap();
    quorumlab_service::router(quorumlab_service::routing::Db::primary_only(pool))
}

async fn new_user(app: &Router, n: usize, balance: i64) -> i64 {
    let body = json!({ "name": format!("user {n}"), "email": format!("u{n}@example.org") });
    let (status, user) = call(app, "POST", "/users", Some(&body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let id = user["id"].as_i64().unwrap();
    if balance > 0 {
        let body = json!({ "amount_minor": balance }).to_string();
        let (status, _) = call(app, "POST", &format!("/users/{id}/deposit"), Some(&body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    id
}

async fn total(app: &Router, ids: &[i64]) -> i64 {
    let mut sum = 0;
    for id in ids {
        let (_, user) = call(app, "GET", &format!("/users/{id}"), None).await;
        sum += user["balance_minor"].as_i64().unwrap();
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_random_transfers_never_change_the_total_or_overdraw() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("transfers") else {
        return;
    };
    let app = app(&pg).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(new_user(&app, n, 10_000).await);
    }
    let before = total(&app, &ids).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let from = ids[rng.gen_range(0..ids.len())];
            let mut to = ids[rng.gen_range(0..ids.len())];
            if to == from {
                to = ids[(ids.iter().position(|&i| i == from).unwrap() + 1) % ids.len()];
            }
            let amount = rng.gen_range(1..=4_000);
            let app = app.clone();
            tokio::spawn(async move {
                let body = json!({ "from_user": from, "to_user": to, "amount_minor": amount });
                call(&app, "POST", "/transfers", Some(&body.to_string())).await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap()
                        .contains("insufficient funds"),
                    "{body}"
                )
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(created > 500, "only {created} transfers went through");
    assert_eq!(
        total(&app, &ids).await,
        before,
        "money appeared or vanished"
    );
    for id in &ids {
        let (_, user) = call(&app, "GET", &format!("/users/{id}"), None).await;
        assert!(user["balance_minor"].as_i64().unwrap() >= 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_with_the_same_key_applies_once_even_when_the_copies_race() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("idempotency") else {
        return;
    };
    let app = app(&pg).await;
    let a = new_user(&app, 1, 1_000).await;
    let b = new_user(&app, 2, 0).await;
    let body = json!({ "from_user": a, "to_user": b, "amount_minor": 100 }).to_string();
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move {
                let retry = request("POST", "/transfers", Some(&body), &[KEY]);
                let reply = send(&app, retry).await;
                (reply.status, reply.body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for copy in copies {
        answers.push(copy.await.unwrap());
    }
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{answers:?}"
    );
    let first = &answers[0].1;
    assert!(
        answers.iter().all(|(_, body)| body == first),
        "every copy answers the same transfer"
    );
    let (_, payer) = call(&app, "GET", &format!("/users/{a}"), None).await;
    assert_eq!(payer["balance_minor"], 900, "applied exactly once");
    // The same key for a different request is refused, and nothing moves.
    let other = json!({ "from_user": a, "to_user": b, "amount_minor": 5 }).to_string();
    let reuse = send(&app, request("POST", "/transfers", Some(&other), &[KEY])).await;
    let (status, err) = (reuse.status, reuse.body);
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(total(&app, &[a]).await, 900);
}

/// A request that must be refused: method, path, body, status, and a phrase the error names.
type BadInput = (&'static str, String, String, StatusCode, &'static str);

/// Bad requests against users `a` (500 in the account) and `b`.
fn bad_inputs(a: i64, b: i64) -> Vec<BadInput> {
    let mut cases = bad_transfers(a, b);
    cases.extend(bad_users_and_summaries());
    cases
}

/// A POST that must be refused.
fn post(path: &str, body: String, status: StatusCode, needle: &'static str) -> BadInput {
    ("POST", path.to_string(), body, status, needle)
}

/// Transfers that must be refused, from `a` (500 in the account) to `b`.
fn bad_transfers(a: i64, b: i64) -> Vec<BadInput> {
    use StatusCode as S;
    let amount =
        |amount: &str| format!(r#"{{"from_user": {a}, "to_user": {b}, "amount_minor": {amount}}}"#);
    let to = |to: &str| format!(r#"{{"from_user": {a}, "to_user": {to}, "amount_minor": 1}}"#);
    let bad = |body: String, needle| post("/transfers", body, S::UNPROCESSABLE_ENTITY, needle);
    vec![
        post("/transfers", "{not json".into(), S::BAD_REQUEST, "JSON"),
        bad(amount("-5"), "amount_minor must be an integer from 1"),
        bad(amount("0"), "amount_minor must be"),
        bad(amount("1.5"), "amount_minor"),
        bad(amount("\"100\""), "amount_minor"),
        bad(amount("99999999999999999999999"), "amount_minor"),
        bad(amount("1000000000001"), "from 1 to 1000000000000"),
        bad(amount("501"), "insufficient funds"),
        post(
            "/transfers",
            to("999999"),
            S::NOT_FOUND,
            "user 999999 not found",
        ),
        bad(to(&a.to_string()), "must differ"),
        bad(
            format!(r#"{{"from_user": {a}, "to_user": {b}, "amount_minor": 1, "memo": 1}}"#),
            "unknown field `memo`",
        ),
    ]
}

/// Users, deposits, lookups and activity summaries that must be refused.
fn bad_users_and_summaries() -> Vec<BadInput> {
    use StatusCode as S;
    let user = |name: &str, email: &str| format!(r#"{{"name": "{name}", "email": "{email}"}}"#);
    let get = |path: &str, status, needle| ("GET", path.to_string(), String::new(), status, needle);
    let summary = "/users/1/activity/summary";
    vec![
        post(
            "/users/abc/deposit",
            r#"{"amount_minor": 1}"#.into(),
            S::BAD_REQUEST,
            "Invalid URL",
        ),
        post(
            "/users",
            user("x", "not-an-email"),
            S::UNPROCESSABLE_ENTITY,
            "email must look like",
        ),
        post(
            "/users",
            user("", "a@b.org"),
            S::UNPROCESSABLE_ENTITY,
            "name must be",
        ),
        post(
            "/users",
            user("Dup", "U1@EXAMPLE.ORG"),
            S::CONFLICT,
            "already exists",
        ),
        post(
            "/users",
            user(&"x".repeat(20_000), "big@example.org"),
            S::PAYLOAD_TOO_LARGE,
            "",
        ),
        get(
            &format!("{summary}?from=2026-11-01&to=2026-11-30"),
            S::SERVICE_UNAVAILABLE,
            "activity events need MongoDB",
        ),
        get(
            &format!("{summary}?from=yesterday&to=2026-11-30"),
            S::UNPROCESSABLE_ENTITY,
            "from must be a date YYYY-MM-DD",
        ),
        get(
            &format!("{summary}?from=2026-11-30&to=2026-11-01"),
            S::UNPROCESSABLE_ENTITY,
            "1 to 366 days",
        ),
        get("/users/424242", S::NOT_FOUND, "user 424242 not found"),
    ]
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_problem_and_writes_nothing() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("bad-input") else {
        return;
    };
    let app = app(&pg).await;
    let a = new_user(&app, 1, 500).await;
    let b = new_user(&app, 2, 0).await;
    let cases = bad_inputs(a, b);
    for (method, uri, body, expected, needle) in cases {
        let (status, value) = call(&app, method, &uri, Some(&body)).await;
        assert_eq!(
            status,
            expected,
            "{method} {uri} {}: {value}",
            &body[..body.len().min(80)]
        );
        if status != StatusCode::PAYLOAD_TOO_LARGE {
            let message = value["error"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{uri}: '{needle}' not in {value}");
            assert_eq!(value["status"], expected.as_u16());
        }
    }
    assert_eq!(total(&app, &[a, b]).await, 500, "nothing moved");
    // SQL in a field is data, stored as given.
    let sneaky = r#"{"name": "Robert'); DROP TABLE users; --", "email": "bobby@example.org"}"#;
    let (status, user) = call(&app, "POST", "/users", Some(sneaky)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(user["name"], "Robert'); DROP TABLE users; --");
    let (status, _) = call(&app, "GET", &format!("/users/{a}"), None).await;
    assert_eq!(status, StatusCode::OK, "the users table is still there");
}
