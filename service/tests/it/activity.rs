//! Activity events against a real MongoDB replica set, when `QUORUMLAB_MONGODB_URI` names one
//! (e.g. `mongodb://h1,h2,h3/?replicaSet=rs0`). No MongoDB server can be installed on the
//! project's own machine, so there each test says it is skipped and passes without running; it
//! never talks to anything pretending to be MongoDB.

use mongodb::bson::DateTime;
use quorumlab_service::activity::{ActivityStore, DayKind};

fn mongodb_uri() -> Option<String> {
    match std::env::var("QUORUMLAB_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            quorumlab_testkit::skip_without_mongodb();
            None
        }
    }
}

#[tokio::test]
async fn the_daily_summary_counts_and_sums_each_kind_and_reads_its_own_writes() {
    let Some(uri) = mongodb_uri() else { return };
    let database = format!("quorumlab_test_{}", std::process::id());
    let store = ActivityStore::connect(&uri, &database).await.unwrap();
    let user = 42;
    let mut last = None;
    for (kind, amount) in [
        ("deposit", 500),
        ("deposit", 250),
        ("transfer", 100),
        ("profile-change", 0),
    ] {
        last = store.record(user, kind, amount).await.unwrap().or(last);
    }
    assert!(
        last.is_some(),
        "a causally consistent session reports its operation time"
    );
    store.record(user + 1, "deposit", 9).await.unwrap();
    let now = DateTime::now().timestamp_millis();
    let from = DateTime::from_millis(now - 86_400_000);
    let to = DateTime::from_millis(now + 86_400_000);
    // Presenting the last write's operation time: the secondary must already have every event.
    let rows = store.summary(user, from, to, last).await.unwrap();
    let of = |kind: &str| -> Vec<&DayKind> { rows.iter().filter(|r| r.kind == kind).collect() };
    assert_eq!(
        of("deposit").iter().map(|r| r.count).sum::<i64>(),
        2,
        "{rows:?}"
    );
    assert_eq!(
        of("deposit").iter().map(|r| r.amount_minor).sum::<i64>(),
        750
    );
    assert_eq!(
        of("transfer").iter().map(|r| r.amount_minor).sum::<i64>(),
        100
    );
    assert_eq!(of("profile-change").len(), 1);
    assert!(rows.iter().all(|r| r.day.len() == 10));
    mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .database(&database)
        .drop()
        .await
        .unwrap();
}
