//! Every failure the API reports: a status and a JSON body naming the problem, never a partial
//! write (each request is one transaction that commits whole or not at all).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something invalid.
    #[error("{message}")]
    BadRequest {
        /// 400, 413, 415 or 422.
        status: StatusCode,
        /// What is wrong, for the client.
        message: String,
    },
    /// A user does not exist.
    #[error("user {0} not found")]
    UnknownUser(i64),
    /// Nothing matches a lookup.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state (duplicate email, reused idempotency key).
    #[error("{0}")]
    Conflict(String),
    /// Not enough money.
    #[error("insufficient funds: user {user} has {balance_minor}, needs {amount_minor}")]
    InsufficientFunds {
        /// Whose account.
        user: i64,
        /// Its balance.
        balance_minor: i64,
        /// What was asked.
        amount_minor: i64,
    },
    /// A part the request needs is not configured or not reachable.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed; the message is logged, not shown.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl ApiError {
    /// A 422 with `message`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { status, .. } => *status,
            ApiError::UnknownUser(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InsufficientFunds { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Database(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::BadRequest {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: rejection.body_text(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            // The cause goes to the operator's log; the client only learns it was not applied.
            log_database_error(&e.to_string());
        }
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string(), "status": status.as_u16() });
        (status, Json(body)).into_response()
    }
}

/// Seconds since the epoch of the last database error logged, and how many were not logged since.
static LAST_LOGGED_S: AtomicU64 = AtomicU64::new(0);
static UNLOGGED: AtomicU64 = AtomicU64::new(0);

/// Logs a database error, at most one a second: a failover fails every request for a while and
/// one line says as much as thousands.
fn log_database_error(e: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOGGED_S.load(Ordering::Relaxed);
    if now > last
        && LAST_LOGGED_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let more_in_last_second = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::error!(error = %e, more_in_last_second, "database error");
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}
