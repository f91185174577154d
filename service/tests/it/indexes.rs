//! Every hot-path query uses an index on tables of a million rows: `EXPLAIN (ANALYZE, BUFFERS)`
//! of each query the API runs per request, against a real Postgres 15.

use quorumlab_service::accounts::{LOCK_SQL, STATEMENT_SQL};
use quorumlab_service::routing::NameColumn;
use quorumlab_service::users::{profile_sql, BY_EMAIL_SQL};
use serde_json::Value;

use crate::common::TempPostgres;

const USERS: i64 = 1_000_000;

/// Every plan node, depth first.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// A million users with accounts and about as many movements between them, analysed.
async fn fill_a_million_rows(pool: &sqlx::PgPool) {
    for statement in [
        format!(
            "INSERT INTO users (name, email) SELECT 'user ' || i, 'user' || i || '@example.org' \
             FROM generate_series(1, {USERS}) i"
        ),
        "INSERT INTO accounts (user_id, balance_minor) SELECT id, 1000 FROM users".to_string(),
        format!(
            "INSERT INTO movements (kind, from_user, to_user, amount_minor, created_at) \
             SELECT 'transfer', 1 + (i * 7919) % {USERS}, 1 + (i * 104729) % {USERS}, 1 + i % 500, \
                    now() - (i || ' seconds')::interval \
             FROM generate_series(1::bigint, {USERS}) i WHERE (i * 7919) % {USERS} <> (i * 104729) % {USERS}"
        ),
        "ANALYZE".to_string(),
    ] {
        sqlx::query(&statement).execute(pool).await.unwrap();
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM movements")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(count > 900_000, "{count} movements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hot_query_uses_its_index_on_a_million_rows() {
    let _one = crate::one_at_a_time().await;
    let Some(pg) = TempPostgres::start("indexes") else {
        return;
    };
    let pool = quorumlab_service::connect(&pg.url(), 4).await.unwrap();
    fill_a_million_rows(&pool).await;

    let user = 424_242_i64;
    let profile = profile_sql(NameColumn::Name);
    let cases: [(&str, &str, &[&str]); 4] = [
        ("profile", &profile, &["users_pkey", "accounts_pkey"]),
        ("log-in by email", BY_EMAIL_SQL, &["users_email_lower_key"]),
        ("balance lock", LOCK_SQL, &["accounts_pkey"]),
        (
            "statement",
            STATEMENT_SQL,
            &[
                "movements_from_user_created_at",
                "movements_to_user_created_at",
            ],
        ),
    ];
    let mut tx = pool.begin().await.unwrap();
    for (name, sql, indexes) in cases {
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
        let mut query = sqlx::query_scalar::<_, Value>(&explain);
        query = match name {
            "log-in by email" => query.bind(format!("USER{user}@EXAMPLE.ORG")),
            _ => query.bind(user),
        };
        if name == "statement" {
            query = query.bind(20_i64);
        }
        let plan = query.fetch_one(&mut *tx).await.unwrap();
        let root = &plan[0]["Plan"];
        let mut all = Vec::new();
        nodes(root, &mut all);
        let kinds: Vec<&str> = all.iter().filter_map(|n| n["Node Type"].as_str()).collect();
        assert!(
            !kinds.contains(&"Seq Scan"),
            "{name}: sequential scan in {kinds:?}"
        );
        for index in indexes {
            assert!(
                all.iter().any(|n| n["Index Name"] == *index),
                "{name}: {index} not used; plan: {root}"
            );
        }
        let read_blocks = all
            .iter()
            .map(|n| {
                n["Shared Read Blocks"].as_i64().unwrap_or(0)
                    + n["Shared Hit Blocks"].as_i64().unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        assert!(
            read_blocks < 100,
            "{name}: touched {read_blocks} blocks; {root}"
        );
    }
    tx.rollback().await.unwrap();
}
