//! `GET /users/{id}/activity/summary?from=YYYY-MM-DD&to=YYYY-MM-DD`: the HTTP edge of the activity
//! store. It reads the MongoDB part of the consistency token and asks [`crate::activity::ActivityStore::summary`]
//! for the days in between, so a client sees its own events.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use mongodb::bson::{DateTime, Timestamp};

use crate::error::ApiError;
use crate::routing::{Db, Token};

/// Query of `GET /users/{id}/activity/summary`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// First day, `YYYY-MM-DD` (UTC), included.
    pub from: String,
    /// Last day, `YYYY-MM-DD` (UTC), excluded.
    pub to: String,
}

fn day_start(day: &str, field: &str) -> Result<DateTime, ApiError> {
    let well_formed = day.len() == 10 && day.as_bytes()[4] == b'-' && day.as_bytes()[7] == b'-';
    well_formed
        .then(|| DateTime::parse_rfc3339_str(format!("{day}T00:00:00Z")).ok())
        .flatten()
        .ok_or_else(|| ApiError::invalid(format!("{field} must be a date YYYY-MM-DD, not '{day}'")))
}

/// `GET /users/{id}/activity/summary?from=YYYY-MM-DD&to=YYYY-MM-DD`: counts and sums per event
/// kind per day, from a secondary that has the events the presented token covers.
pub async fn summary_handler(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<SummaryQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(user) = path?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        status: axum::http::StatusCode::BAD_REQUEST,
        message: e.body_text(),
    })?;
    let (from, to) = (day_start(&query.from, "from")?, day_start(&query.to, "to")?);
    let days = (to.timestamp_millis() - from.timestamp_millis()) / 86_400_000;
    if !(1..=366).contains(&days) {
        return Err(ApiError::invalid("to must be 1 to 366 days after from"));
    }
    let store = db.activity.as_ref().ok_or_else(|| {
        ApiError::Unavailable("activity events need MongoDB (set QUORUMLAB_MONGODB_URI)".into())
    })?;
    let after = Token::from_headers(&headers)?
        .and_then(|t| t.mongo)
        .map(|(time, increment)| Timestamp { time, increment });
    let rows = store.summary(user, from, to, after).await.map_err(|e| {
        tracing::error!(error = %e, "activity summary failed");
        ApiError::Unavailable("the activity store did not answer".into())
    })?;
    Ok(Json(serde_json::json!({ "user_id": user, "days": rows })))
}
