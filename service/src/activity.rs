//! Activity events in MongoDB: one document per deposit, withdrawal, transfer or profile change, and a per-day summary answered by an aggregation pipeline.
//!
//! Events are written in a causally consistent session, and the session's `operationTime` goes
//! into the consistency token beside the Postgres LSN. A summary read that presents it runs in a
//! session advanced to that time, so a secondary answers only once it has the client's events
//! (`afterClusterTime`); without one it reads whatever the nearest secondary has. The compound
//! index `(user_id, at)` serves the pipeline's `$match` on one user and a time range.

use futures_util::StreamExt;
use mongodb::bson::{doc, DateTime, Document, Timestamp};
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::{Client, Collection, IndexModel};

/// The kinds of event the service records.
pub const KINDS: [&str; 4] = ["deposit", "withdrawal", "transfer", "profile-change"];

/// The events collection and the client it came from.
#[derive(Clone)]
pub struct ActivityStore {
    client: Client,
    events: Collection<Document>,
}

/// One row of a summary: a day, a kind, how many events and the money they moved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DayKind {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Event kind.
    pub kind: String,
    /// Number of events.
    pub count: i64,
    /// Sum of their amounts, minor units.
    pub amount_minor: i64,
}

impl ActivityStore {
    /// Connects to `uri`, uses `database`, and makes sure the summary's index exists.
    pub async fn connect(
        uri: &str,
        database: &str,
    ) -> Result<ActivityStore, mongodb::error::Error> {
        let client = Client::with_uri_str(uri).await?;
        let events = client
            .database(database)
            .collection::<Document>("activity_events");
        events
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "user_id": 1, "at": 1 })
                    .build(),
            )
            .await?;
        Ok(ActivityStore { client, events })
    }

    /// Records one event; returns the operation time for the consistency token.
    pub async fn record(
        &self,
        user: i64,
        kind: &str,
        amount_minor: i64,
    ) -> Result<Option<Timestamp>, mongodb::error::Error> {
        debug_assert!(KINDS.contains(&kind));
        let mut session = self.client.start_session().causal_consistency(true).await?;
        self.events
            .insert_one(doc! {
                "user_id": user,
                "kind": kind,
                "amount_minor": amount_minor,
                "at": DateTime::now(),
            })
            .session(&mut session)
            .await?;
        Ok(session.operation_time())
    }

    /// Counts and sums per kind per day for `user` in `[from, to)`, read from a secondary when
    /// one has caught up with `after`.
    pub async fn summary(
        &self,
        user: i64,
        from: DateTime,
        to: DateTime,
        after: Option<Timestamp>,
    ) -> Result<Vec<DayKind>, mongodb::error::Error> {
        let mut session = self.client.start_session().causal_consistency(true).await?;
        if let Some(t) = after {
            session.advance_operation_time(t);
        }
        let pipeline = vec![
            doc! { "$match": { "user_id": user, "at": { "$gte": from, "$lt": to } } },
            doc! { "$group": {
                "_id": {
                    "day": { "$dateToString": { "format": "%Y-%m-%d", "date": "$at" } },
                    "kind": "$kind",
                },
                "count": { "$sum": 1 },
                "amount_minor": { "$sum": "$amount_minor" },
            } },
            doc! { "$sort": { "_id.day": 1, "_id.kind": 1 } },
        ];
        let mut cursor = self
            .events
            .aggregate(pipeline)
            .selection_criteria(SelectionCriteria::ReadPreference(
                ReadPreference::secondary_preferred(None),
            ))
            .session(&mut session)
            .await?;
        let mut rows = Vec::new();
        let mut stream = cursor.stream(&mut session);
        while let Some(row) = stream.next().await {
            let row = row?;
            let id = row.get_document("_id").ok();
            let text = |key: &str| {
                id.and_then(|d| d.get_str(key).ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let number = |key: &str| match row.get(key) {
                Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
                Some(mongodb::bson::Bson::Int64(n)) => *n,
                _ => 0,
            };
            rows.push(DayKind {
                day: text("day"),
                kind: text("kind"),
                count: number("count"),
                amount_minor: number("amount_minor"),
            });
        }
        Ok(rows)
    }
}
