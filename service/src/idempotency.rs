//! Writes that apply once: each write is one transaction, and with an `Idempotency-Key` header its
//! successful response is stored in that same transaction. A retry with the key gets the stored
//! response and changes nothing; the same key with a different request is a conflict. Two copies
//! of one request racing each other: the second's insert of the key waits for the first to
//! commit, fails on the key's uniqueness, rolls its whole write back, and answers what the first
//! stored.

use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::error::ApiError;
use crate::routing::{Db, TOKEN_HEADER};

/// A write's answer: status, headers (the consistency token) and body.
pub type Written = (StatusCode, HeaderMap, Json<Value>);

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// A write the API performs inside one transaction.
pub trait Write: Serialize {
    /// Applies the write; answers with the status and body to send (and to store under a key).
    fn apply(
        &self,
        tx: &mut PgConnection,
    ) -> impl std::future::Future<Output = Result<(StatusCode, Value), ApiError>> + Send;

    /// The activity event the write makes once committed: (user, kind, amount in minor units).
    fn event(&self) -> Option<(i64, &'static str, i64)> {
        None
    }
}

/// The key from the request headers, validated.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?;
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 200 characters",
        ));
    }
    Ok(Some(key.to_string()))
}

/// Runs `write` once per key: in one transaction, or not at all; the answer carries a
/// consistency token that covers it.
pub async fn execute<W: Write + Sync>(
    db: &Db,
    key: Option<String>,
    write: &W,
) -> Result<Written, ApiError> {
    let (status, body, applied) = execute_once(&db.primary(), key, write).await?;
    // A replayed answer made its event the first time.
    let mongo = match write.event().filter(|_| applied) {
        Some((user, kind, amount)) => db.record_event(user, kind, amount).await,
        None => None,
    };
    Ok((status, token_headers(db, mongo).await?, body))
}

/// Headers holding a token that covers every write committed so far (and `mongo`'s event).
pub async fn token_headers(db: &Db, mongo: Option<(u32, u32)>) -> Result<HeaderMap, ApiError> {
    let mut token = db.token().await?;
    token.mongo = mongo;
    let mut headers = HeaderMap::new();
    headers.insert(TOKEN_HEADER, token.header_value());
    Ok(headers)
}

/// Returns the answer and whether this call applied the write (not a replay).
async fn execute_once<W: Write + Sync>(
    pool: &sqlx::PgPool,
    key: Option<String>,
    write: &W,
) -> Result<(StatusCode, Json<Value>, bool), ApiError> {
    let request = serde_json::to_string(write).expect("writes serialise");
    // The second attempt happens only after losing a race for the key, and then replays.
    for _ in 0..2 {
        let mut tx = pool.begin().await?;
        if let Some(key) = &key {
            if let Some((status, body)) = replay(&mut tx, key, &request).await? {
                return Ok((status, body, false));
            }
        }
        let (status, body) = write.apply(&mut tx).await?;
        if let Some(key) = &key {
            let recorded = sqlx::query(
                "INSERT INTO idempotency_keys (key, request, status, response) VALUES ($1, $2, $3, $4)",
            )
            .bind(key)
            .bind(&request)
            .bind(status.as_u16() as i16)
            .bind(&body)
            .execute(&mut *tx)
            .await;
            match recorded {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        return Ok((status, Json(body), true));
    }
    Err(ApiError::Conflict(
        "a request with this Idempotency-Key is still being applied; retry".into(),
    ))
}

async fn replay(
    tx: &mut PgConnection,
    key: &str,
    request: &str,
) -> Result<Option<(StatusCode, Json<Value>)>, ApiError> {
    let row = sqlx::query("SELECT request, status, response FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: String = row.get(0);
    if stored != request {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used for a different request".into(),
        ));
    }
    let status: i16 = row.get(1);
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    Ok(Some((status, Json(row.get(2)))))
}
