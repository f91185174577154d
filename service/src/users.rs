//! Profiles: create (with an empty account), get (with the balance), update.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::error::ApiError;
use crate::idempotency::{self, Write, Written};
use crate::routing::{served_by, Db, NameColumn, Token};

/// Body of `POST /users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Email, unique regardless of case.
    pub email: String,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// Where the name is stored (set by the handler, not the client).
    #[serde(skip)]
    pub name_column: NameColumn,
}

/// Body of `PATCH /users/{id}`: only the fields given change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// New name.
    pub name: Option<String>,
    /// New email.
    pub email: Option<String>,
    /// New metadata (replaces the old).
    pub metadata: Option<serde_json::Map<String, Value>>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if chars == 0 || chars > 200 || name.trim().is_empty() {
        return Err(ApiError::invalid(
            "name must be 1 to 200 characters, not blank",
        ));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), ApiError> {
    let well_formed = email.len() <= 320
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if !well_formed {
        return Err(ApiError::invalid(
            "email must look like name@example.org (at most 320 characters)",
        ));
    }
    Ok(())
}

/// A unique violation on the email index means the address is taken.
fn email_taken(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ApiError::Conflict("a user with this email already exists".into())
        }
        _ => e.into(),
    }
}

/// The profile query: one user by primary key, with the balance (accounts' primary key).
pub fn profile_sql(name: NameColumn) -> String {
    format!(
        "SELECT u.id, u.{} AS name, u.email, u.metadata, a.balance_minor, a.version \
         FROM users u JOIN accounts a ON a.user_id = u.id WHERE u.id = $1",
        name.sql()
    )
}

/// The log-in query: one user by email, case-insensitively (`users_email_lower_key`).
pub const BY_EMAIL_SQL: &str = "SELECT id FROM users WHERE lower(email) = lower($1)";

async fn load(tx: &mut PgConnection, id: i64, name: NameColumn) -> Result<Value, ApiError> {
    let row = sqlx::query(&profile_sql(name))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::UnknownUser(id))?;
    Ok(json!({
        "id": row.get::<i64, _>(0),
        "name": row.get::<String, _>(1),
        "email": row.get::<String, _>(2),
        "metadata": row.get::<Value, _>(3),
        "balance_minor": row.get::<i64, _>(4),
        "version": row.get::<i64, _>(5),
    }))
}

impl Write for NewUser {
    async fn apply(&self, tx: &mut PgConnection) -> Result<(StatusCode, Value), ApiError> {
        check_name(&self.name)?;
        check_email(&self.email)?;
        let metadata = Value::Object(self.metadata.clone().unwrap_or_default());
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO users ({}, email, metadata) VALUES ($1, $2, $3) RETURNING id",
            self.name_column.sql()
        ))
        .bind(&self.name)
        .bind(&self.email)
        .bind(&metadata)
        .fetch_one(&mut *tx)
        .await
        .map_err(email_taken)?;
        sqlx::query("INSERT INTO accounts (user_id) VALUES ($1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok((StatusCode::CREATED, load(tx, id, self.name_column).await?))
    }
}

/// `POST /users`.
pub async fn create(
    State(db): State<Db>,
    headers: HeaderMap,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<Written, ApiError> {
    let Json(mut user) = body?;
    user.name_column = db.name_column();
    idempotency::execute(&db, idempotency::key(&headers)?, &user).await
}

/// `GET /users/{id}`: profile and balance.
pub async fn get(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let Path(id) = path?;
    let (mut conn, node) = db.reader(Token::from_headers(&headers)?).await?;
    Ok((
        served_by(&node),
        Json(load(&mut conn, id, db.name_column()).await?),
    ))
}

/// `PATCH /users/{id}`.
pub async fn update(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<UserUpdate>, JsonRejection>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let Path(id) = path?;
    let Json(change) = body?;
    if let Some(name) = &change.name {
        check_name(name)?;
    }
    if let Some(email) = &change.email {
        check_email(email)?;
    }
    let name_column = db.name_column();
    let mut tx = db.primary().begin().await?;
    let updated = sqlx::query(&format!(
        "UPDATE users SET {name} = COALESCE($2, {name}), email = COALESCE($3, email), \
         metadata = COALESCE($4, metadata), updated_at = now() WHERE id = $1",
        name = name_column.sql()
    ))
    .bind(id)
    .bind(&change.name)
    .bind(&change.email)
    .bind(change.metadata.map(Value::Object))
    .execute(&mut *tx)
    .await
    .map_err(email_taken)?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::UnknownUser(id));
    }
    let user = load(&mut tx, id, name_column).await?;
    tx.commit().await?;
    let mongo = db.record_event(id, "profile-change", 0).await;
    Ok((idempotency::token_headers(&db, mongo).await?, Json(user)))
}

/// Query of `GET /users?email=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailQuery {
    /// The address, any case.
    pub email: String,
}

/// `GET /users?email=a@b.org`: the log-in lookup.
pub async fn find_by_email(
    State(db): State<Db>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<EmailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        message: e.body_text(),
    })?;
    let (mut conn, node) = db.reader(Token::from_headers(&headers)?).await?;
    let id: Option<i64> = sqlx::query_scalar(BY_EMAIL_SQL)
        .bind(&query.email)
        .fetch_optional(&mut *conn)
        .await?;
    match id {
        Some(id) => Ok((
            served_by(&node),
            Json(load(&mut conn, id, db.name_column()).await?),
        )),
        None => Err(ApiError::NotFound(format!(
            "no user with email {}",
            query.email
        ))),
    }
}
