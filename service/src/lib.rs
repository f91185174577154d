//! The reference service: an HTTP API over profiles and balances in Postgres, written as a
//! replicated database wants to be used.
//!
//! - Money is `i64` minor units, validated at the edge ([`accounts::Amount`]).
//! - Every write is one transaction. A transfer locks its two accounts with `SELECT ... FOR UPDATE`
//!   in ascending user id, so two opposite transfers queue instead of deadlocking, and refuses an
//!   overdraft before changing anything.
//! - A write with an `Idempotency-Key` header stores its response in the same transaction; a retry
//!   gets that response back and applies nothing ([`idempotency`]).
//! - Reads go to replicas; a read carrying a write's consistency token waits (boundedly) for a
//!   replica that has replayed past it, else the primary answers ([`routing`]).
//! - Errors are JSON with a status that names the problem ([`error::ApiError`]); the database's
//!   own messages and credentials never reach a client or a log line.

pub mod accounts;
pub mod activity;
pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod online;
pub mod routing;
pub mod summary;
pub mod users;

use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database URL is missing or malformed, or the database cannot be reached.
    #[error("database: {0}")]
    Database(String),
    /// MongoDB (activity events) cannot be reached.
    #[error("activity store (MongoDB): {0}")]
    Activity(String),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(String),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
}

/// The API's routes over `db`, with `/metrics`; every request is counted and logged.
pub fn router(db: routing::Db) -> Router {
    let metrics = db.metrics();
    let scrape = metrics.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || metrics::metrics_handler(scrape.clone())),
        )
        .route("/users", post(users::create).get(users::find_by_email))
        .route("/users/{id}", get(users::get).patch(users::update))
        .route("/users/{id}/deposit", post(accounts::deposit))
        .route("/users/{id}/withdraw", post(accounts::withdraw))
        .route("/users/{id}/movements", get(accounts::movements))
        .route(
            "/users/{id}/activity/summary",
            get(summary::summary_handler),
        )
        .route("/transfers", post(accounts::transfer))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::observe,
        ))
        .with_state(db)
}

/// Connects to a replica at `database_url` (no migrations: replicas are read-only).
pub async fn connect_replica(database_url: &str, connections: u32) -> Result<PgPool, ServeError> {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(database_url)
        .await
        .map_err(|e| ServeError::Database(redacted(&e.to_string(), database_url)))
}

/// Connects to `database_url` and applies the schema migrations.
pub async fn connect(database_url: &str, connections: u32) -> Result<PgPool, ServeError> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(database_url)
        .await
        .map_err(|e| ServeError::Database(redacted(&e.to_string(), database_url)))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| ServeError::Migrate(e.to_string()))?;
    Ok(pool)
}

/// Connects to every node of a replicated cluster, finds the primary among them
/// ([`routing::Db::discover`]), applies the schema migrations there, waits (boundedly) for the
/// replicas to replay them, and returns the [`routing::Db`] that keeps following the primary
/// through failovers. Nodes that are down now are tried again on every role poll.
pub async fn connect_cluster(
    nodes: Vec<(String, PgConnectOptions)>,
    connections: u32,
    token_wait: std::time::Duration,
) -> Result<routing::Db, ServeError> {
    let pools = nodes
        .into_iter()
        .map(|(name, options)| {
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(std::time::Duration::from_secs(2))
                .connect_lazy_with(options);
            (name, pool)
        })
        .collect();
    let db = routing::Db::discover(pools, token_wait)
        .await
        .map_err(|e| ServeError::Database(e.to_string()))?;
    sqlx::migrate!("./migrations")
        .run(&db.primary())
        .await
        .map_err(|e| ServeError::Migrate(e.to_string()))?;
    let schema = db
        .token()
        .await
        .map_err(|e| ServeError::Database(e.to_string()))?;
    for name in db.wait_for_replicas(schema, SCHEMA_WAIT).await {
        tracing::warn!(
            replica = %name,
            wait_ms = SCHEMA_WAIT.as_millis() as u64,
            "replica has not replayed the migrations; its reads may fail until it does"
        );
    }
    Ok(db)
}

/// How long [`connect_cluster`] waits for the replicas to replay the migrations.
const SCHEMA_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `message` on one line, with the URL's password masked wherever it appears.
fn redacted(message: &str, database_url: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    quorumlab_experiment::secret::scrub(&one_line, database_url)
}

/// Serves the API on `listen` until Ctrl-C.
pub async fn serve(listen: SocketAddr, db: routing::Db) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Listen {
            addr: listen,
            reason: e.to_string(),
        })?;
    axum::serve(listener, router(db))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| ServeError::Listen {
            addr: listen,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_cut_from_messages() {
        assert_eq!(
            super::redacted(
                "password authentication failed (pw hunter2)",
                "postgres://app:hunter2@db/x"
            ),
            "password authentication failed (pw ***)"
        );
    }
}
