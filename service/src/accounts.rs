//! Balances: deposit, withdraw and transfer, each one transaction.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::PgConnection;

use crate::error::ApiError;
use crate::idempotency::{self, Write, Written};
use crate::routing::{served_by, Db, Token};

/// Largest amount one request may move: ten billion in major units.
pub const AMOUNT_MAX_MINOR: i64 = 1_000_000_000_000;

/// An amount of money in minor units, 1 to [`AMOUNT_MAX_MINOR`]; JSON integers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl TryFrom<i64> for Amount {
    type Error = String;

    fn try_from(minor: i64) -> Result<Amount, String> {
        if (1..=AMOUNT_MAX_MINOR).contains(&minor) {
            Ok(Amount(minor))
        } else {
            Err(format!(
                "amount_minor must be an integer from 1 to {AMOUNT_MAX_MINOR}, not {minor}"
            ))
        }
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

/// Body of a deposit or withdrawal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// How much, in minor units.
    pub amount_minor: Amount,
}

/// Body of a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// Payer.
    pub from_user: i64,
    /// Payee.
    pub to_user: i64,
    /// How much, in minor units.
    pub amount_minor: Amount,
}

/// A deposit or a withdrawal (`op`) on one account.
#[derive(Debug, Serialize)]
struct Change {
    op: &'static str,
    user: i64,
    amount_minor: Amount,
}

/// The balance-change query: one account row by primary key, locked for the transaction.
pub const LOCK_SQL: &str = "SELECT balance_minor FROM accounts WHERE user_id = $1 FOR UPDATE";

/// Locks `user`'s account row for this transaction and returns its balance.
async fn lock_balance(tx: &mut PgConnection, user: i64) -> Result<i64, ApiError> {
    sqlx::query_scalar(LOCK_SQL)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::UnknownUser(user))
}

/// Sets the balance and bumps the account's version; returns the new version.
async fn set_balance(tx: &mut PgConnection, user: i64, balance: i64) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "UPDATE accounts SET balance_minor = $2, version = version + 1 WHERE user_id = $1 RETURNING version",
    )
    .bind(user)
    .bind(balance)
    .fetch_one(&mut *tx)
    .await?)
}

async fn record_movement(
    tx: &mut PgConnection,
    kind: &str,
    from: Option<i64>,
    to: Option<i64>,
    amount: Amount,
) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO movements (kind, from_user, to_user, amount_minor) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(amount.0)
    .fetch_one(&mut *tx)
    .await?)
}

/// Balances above this are refused (the column's check constraint says the same).
const BALANCE_MAX_MINOR: i64 = 1_000_000_000_000_000;

impl Write for Change {
    fn event(&self) -> Option<(i64, &'static str, i64)> {
        let kind = if self.op == "deposit" {
            "deposit"
        } else {
            "withdrawal"
        };
        Some((self.user, kind, self.amount_minor.0))
    }

    async fn apply(&self, tx: &mut PgConnection) -> Result<(StatusCode, Value), ApiError> {
        let balance = lock_balance(tx, self.user).await?;
        let amount = self.amount_minor.0;
        let (new_balance, kind, from, to) = if self.op == "deposit" {
            if balance + amount > BALANCE_MAX_MINOR {
                return Err(ApiError::invalid(format!(
                    "a balance may not exceed {BALANCE_MAX_MINOR} minor units"
                )));
            }
            (balance + amount, "deposit", None, Some(self.user))
        } else {
            if balance < amount {
                return Err(ApiError::InsufficientFunds {
                    user: self.user,
                    balance_minor: balance,
                    amount_minor: amount,
                });
            }
            (balance - amount, "withdrawal", Some(self.user), None)
        };
        let version = set_balance(tx, self.user, new_balance).await?;
        let movement = record_movement(tx, kind, from, to, self.amount_minor).await?;
        Ok((
            StatusCode::OK,
            json!({ "user_id": self.user, "balance_minor": new_balance, "version": version, "movement_id": movement }),
        ))
    }
}

impl Write for TransferBody {
    fn event(&self) -> Option<(i64, &'static str, i64)> {
        Some((self.from_user, "transfer", self.amount_minor.0))
    }

    async fn apply(&self, tx: &mut PgConnection) -> Result<(StatusCode, Value), ApiError> {
        if self.from_user == self.to_user {
            return Err(ApiError::invalid("from_user and to_user must differ"));
        }
        // Lock the two accounts in ascending id, whatever the direction: two opposite transfers
        // then queue on the same first lock instead of each holding one and waiting for the other.
        let (low, high) = (
            self.from_user.min(self.to_user),
            self.from_user.max(self.to_user),
        );
        let low_balance = lock_balance(tx, low).await?;
        let high_balance = lock_balance(tx, high).await?;
        let (from_balance, to_balance) = if self.from_user == low {
            (low_balance, high_balance)
        } else {
            (high_balance, low_balance)
        };
        let amount = self.amount_minor.0;
        if from_balance < amount {
            return Err(ApiError::InsufficientFunds {
                user: self.from_user,
                balance_minor: from_balance,
                amount_minor: amount,
            });
        }
        if to_balance + amount > BALANCE_MAX_MINOR {
            return Err(ApiError::invalid(format!(
                "a balance may not exceed {BALANCE_MAX_MINOR} minor units"
            )));
        }
        let from_version = set_balance(tx, self.from_user, from_balance - amount).await?;
        let to_version = set_balance(tx, self.to_user, to_balance + amount).await?;
        let id = record_movement(
            tx,
            "transfer",
            Some(self.from_user),
            Some(self.to_user),
            self.amount_minor,
        )
        .await?;
        Ok((
            StatusCode::CREATED,
            json!({
                "transfer_id": id,
                "from": { "user_id": self.from_user, "balance_minor": from_balance - amount, "version": from_version },
                "to": { "user_id": self.to_user, "balance_minor": to_balance + amount, "version": to_version },
                "amount_minor": amount,
            }),
        ))
    }
}

async fn change(
    db: &Db,
    op: &'static str,
    path: Result<Path<i64>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Written, ApiError> {
    let Path(user) = path?;
    let Json(body) = body?;
    let write = Change {
        op,
        user,
        amount_minor: body.amount_minor,
    };
    idempotency::execute(db, idempotency::key(headers)?, &write).await
}

/// `POST /users/{id}/deposit {"amount_minor": N}`.
pub async fn deposit(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Written, ApiError> {
    change(&db, "deposit", path, &headers, body).await
}

/// `POST /users/{id}/withdraw {"amount_minor": N}`; never below zero.
pub async fn withdraw(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Written, ApiError> {
    change(&db, "withdraw", path, &headers, body).await
}

/// `POST /transfers {"from_user", "to_user", "amount_minor"}`.
pub async fn transfer(
    State(db): State<Db>,
    headers: HeaderMap,
    body: Result<Json<TransferBody>, JsonRejection>,
) -> Result<Written, ApiError> {
    let Json(body) = body?;
    idempotency::execute(&db, idempotency::key(&headers)?, &body).await
}

/// Query of `GET /users/{id}/movements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementsQuery {
    /// How many, newest first (1 to 100, default 20).
    pub limit: Option<i64>,
}

/// The statement query: a user's movements on either side, newest first. Each half is served by
/// its own index (`movements_from_user_created_at`, `movements_to_user_created_at`), and only
/// `limit` rows are read from each.
pub const STATEMENT_SQL: &str = "\
    (SELECT id, kind, from_user, to_user, amount_minor, created_at FROM movements \
      WHERE from_user = $1 ORDER BY created_at DESC LIMIT $2) \
    UNION ALL \
    (SELECT id, kind, from_user, to_user, amount_minor, created_at FROM movements \
      WHERE to_user = $1 ORDER BY created_at DESC LIMIT $2) \
    ORDER BY created_at DESC, id DESC LIMIT $2";

/// `GET /users/{id}/movements?limit=N`: the user's statement.
pub async fn movements(
    State(db): State<Db>,
    path: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<MovementsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let Path(user) = path?;
    let axum::extract::Query(query) = query.map_err(|e| ApiError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        message: e.body_text(),
    })?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 100"));
    }
    let (mut conn, node) = db.reader(Token::from_headers(&headers)?).await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT user_id FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(ApiError::UnknownUser(user));
    }
    let rows = sqlx::query(STATEMENT_SQL)
        .bind(user)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    use sqlx::Row;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<i64, _>(0),
                "kind": r.get::<String, _>(1),
                "from_user": r.get::<Option<i64>, _>(2),
                "to_user": r.get::<Option<i64>, _>(3),
                "amount_minor": r.get::<i64, _>(4),
            })
        })
        .collect();
    Ok((
        served_by(&node),
        Json(json!({ "user_id": user, "movements": items })),
    ))
}
