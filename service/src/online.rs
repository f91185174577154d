//! A zero-downtime column migration, run while the service serves: `users.name` becomes
//! `users.display_name`.
//!
//! 1. **Expand**: add the nullable column and a trigger that keeps the two columns equal whichever
//!    one a writer sets, so old and new code can run side by side.
//! 2. **Backfill** in small batches, each its own short transaction, with a pause between, so
//!    no lock is held for long and replicas keep up.
//! 3. **Switch**: the service reads and writes `display_name` ([`crate::routing::Db::use_name_column`],
//!    or a rolling restart, which finds the column at start).
//! 4. **Contract**: prove the column complete (`CHECK ... NOT VALID`, then `VALIDATE`, which
//!    blocks no reads or writes), then drop the trigger and the old column in one transaction.
//!
//! Every DDL statement runs with a short `lock_timeout` and is retried, so a DDL lock never
//! queues the whole workload behind a long-running transaction.

use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::routing::NameColumn;

/// How long a DDL statement may wait for its lock before giving up and trying again.
const LOCK_TIMEOUT: &str = "500ms";
/// How many times a DDL statement is tried.
const DDL_ATTEMPTS: u32 = 40;

/// The steps, in order.
pub const STEPS: [&str; 4] = ["expand", "backfill", "switch", "contract"];

/// Runs `statements` in one transaction under a short lock timeout, retrying when a lock is busy.
async fn ddl(pool: &PgPool, statements: &[&str]) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                .execute(&mut *tx)
                .await?;
            for statement in statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && attempt < DDL_ATTEMPTS =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Which name column the schema has now: `display_name` once the old column is gone.
pub async fn current_name_column(pool: &PgPool) -> Result<NameColumn, sqlx::Error> {
    let has_name: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'users' AND column_name = 'name')",
    )
    .fetch_one(pool)
    .await?;
    Ok(if has_name {
        NameColumn::Name
    } else {
        NameColumn::DisplayName
    })
}

/// Step 1: the new column and the trigger that keeps both columns equal.
pub async fn expand(pool: &PgPool) -> Result<(), sqlx::Error> {
    ddl(
        pool,
        &[
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS display_name text \
             CHECK (length(display_name) BETWEEN 1 AND 200)",
            "CREATE OR REPLACE FUNCTION users_name_sync() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF TG_OP = 'INSERT' THEN
                     NEW.display_name := COALESCE(NEW.display_name, NEW.name);
                     NEW.name := COALESCE(NEW.name, NEW.display_name);
                 ELSIF NEW.name IS DISTINCT FROM OLD.name THEN
                     NEW.display_name := NEW.name;
                 ELSIF NEW.display_name IS DISTINCT FROM OLD.display_name THEN
                     NEW.name := NEW.display_name;
                 END IF;
                 RETURN NEW;
             END $$",
            "DROP TRIGGER IF EXISTS users_name_sync ON users",
            "CREATE TRIGGER users_name_sync BEFORE INSERT OR UPDATE ON users \
             FOR EACH ROW EXECUTE FUNCTION users_name_sync()",
        ],
    )
    .await
}

/// Step 2: copies `name` into `display_name`, `batch` rows per transaction, pausing between
/// batches; returns the rows copied.
pub async fn backfill(pool: &PgPool, batch: i64, pause: Duration) -> Result<u64, sqlx::Error> {
    let mut copied = 0;
    loop {
        let done = sqlx::query(
            "UPDATE users SET display_name = name WHERE id IN \
             (SELECT id FROM users WHERE display_name IS NULL ORDER BY id LIMIT $1)",
        )
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        copied += done;
        if done == 0 {
            return Ok(copied);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Step 4: proves `display_name` complete, then drops the trigger and `name` together.
pub async fn contract(pool: &PgPool) -> Result<(), sqlx::Error> {
    ddl(
        pool,
        &[
            "ALTER TABLE users DROP CONSTRAINT IF EXISTS users_display_name_present",
            "ALTER TABLE users ADD CONSTRAINT users_display_name_present \
             CHECK (display_name IS NOT NULL) NOT VALID",
        ],
    )
    .await?;
    // VALIDATE takes SHARE UPDATE EXCLUSIVE: reads and writes go on while it scans.
    ddl(
        pool,
        &["ALTER TABLE users VALIDATE CONSTRAINT users_display_name_present"],
    )
    .await?;
    ddl(
        pool,
        &[
            "DROP TRIGGER IF EXISTS users_name_sync ON users",
            "DROP FUNCTION IF EXISTS users_name_sync()",
            "ALTER TABLE users DROP COLUMN IF EXISTS name",
        ],
    )
    .await
}
