//! Postgres (a B-tree primary key over a heap table) through `sqlx`: prepared statements, a
//! connection per worker, `synchronous_commit` per the durability setting.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quorumlab_experiment::secret::{redact_url, scrub};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::runtime::Runtime;

use crate::engine::{Client, Durability, Engine, Footprint, Shared, Written};
use crate::workload::Op;

/// The experiment's table; made by the run, dropped by it, never one that was there before.
pub const TABLE: &str = "quorumlab_engines_kv";
const WORKER_APP: &str = "quorumlab-engines-worker";

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")
}

/// The experiment's table in a Postgres database.
pub struct Postgres {
    options: PgConnectOptions,
    control: Mutex<(Runtime, PgConnection)>,
    synchronous_commit: &'static str,
    value_bytes: usize,
}

async fn connect(options: &PgConnectOptions, sync: &str) -> Result<PgConnection, sqlx::Error> {
    let mut conn = options.connect().await?;
    sqlx::query(&format!("SET synchronous_commit = {sync}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

impl Postgres {
    /// Connects to `url` and checks the table is not there yet, without changing anything:
    /// what the command line asks before it makes any directory. Returns the server's
    /// `shared_buffers` in MiB, the cache RocksDB is then given.
    pub fn probe(url: &str) -> Result<u64> {
        let (rt, mut conn, _) = open_control(url, "on")?;
        let bytes: i64 = rt.block_on(
            sqlx::query_scalar(
                "SELECT setting::int8 * current_setting('block_size')::int8 \
                 FROM pg_settings WHERE name = 'shared_buffers'",
            )
            .fetch_one(&mut conn),
        )?;
        // The run counts WAL on disk and checkpoints after each workload: say now, not after
        // the load, if the role may not.
        let allowed: bool = rt.block_on(
            sqlx::query_scalar(
                "SELECT rolsuper OR (pg_has_role(current_user, 'pg_checkpoint', 'MEMBER') \
                 AND pg_has_role(current_user, 'pg_monitor', 'MEMBER')) \
                 FROM pg_roles WHERE rolname = current_user",
            )
            .fetch_one(&mut conn),
        )?;
        rt.block_on(conn.close())?;
        if !allowed {
            bail!(
                "the role in {} may not run CHECKPOINT or read pg_ls_waldir(); grant it \
                 pg_checkpoint and pg_monitor, or use a superuser",
                redact_url(url)
            );
        }
        Ok((bytes as u64 / (1024 * 1024)).max(1))
    }

    /// Connects to `url` and makes the table; refuses if the table is already there. Errors
    /// never carry the password.
    pub fn create(url: &str, shared: &Shared) -> Result<Postgres> {
        let synchronous_commit = match shared.durability {
            Durability::Synced => "on",
            Durability::Relaxed => "off",
        };
        let (rt, mut conn, options) = open_control(url, synchronous_commit)?;
        rt.block_on(
            sqlx::query(&format!(
                "CREATE TABLE {TABLE} (k bigint PRIMARY KEY, v bytea NOT NULL)"
            ))
            .execute(&mut conn),
        )?;
        Ok(Postgres {
            options: options.application_name(WORKER_APP),
            control: Mutex::new((rt, conn)),
            synchronous_commit,
            value_bytes: shared.value_bytes,
        })
    }

    fn on_control<T>(
        &self,
        work: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + 'c>,
        >,
    ) -> Result<T> {
        let mut guard = self.control.lock().expect("control connection lock");
        let (rt, conn) = &mut *guard;
        rt.block_on(work(conn))
    }

    fn scalar(&self, sql: &str) -> Result<i64> {
        let owned = sql.to_string();
        self.on_control(move |c| {
            Box::pin(async move { Ok(sqlx::query_scalar::<_, i64>(&owned).fetch_one(c).await?) })
        })
        .with_context(|| format!("Postgres: {}", sql_head(sql)))
    }

    fn execute(&self, sql: &str) -> Result<()> {
        let owned = sql.to_string();
        self.on_control(move |c| {
            Box::pin(async move {
                sqlx::query(&owned).execute(c).await?;
                Ok(())
            })
        })
        .with_context(|| format!("Postgres: {}", sql_head(sql)))
    }

    /// Waits until no worker connection is left, so their statistics have been reported.
    fn wait_for_workers(&self) -> Result<()> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{WORKER_APP}' \
             AND datname = current_database()"
        );
        for _ in 0..400 {
            if self.scalar(&sql)? == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("worker connections did not close within 10 s")
    }

    /// The median round trip of `SELECT 1` on a fresh connection, in µs: what every statement
    /// pays before the engine does any work (protocol, parse of a prepared statement, executor).
    pub fn round_trip_us(&self) -> Result<u64> {
        let rt = runtime()?;
        let mut conn = rt.block_on(connect(&self.options, self.synchronous_commit))?;
        let mut samples: Vec<u64> = rt.block_on(async {
            let mut out = Vec::with_capacity(2_000);
            for _ in 0..2_000 {
                let started = std::time::Instant::now();
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                out.push(started.elapsed().as_micros() as u64);
            }
            Ok::<_, sqlx::Error>(out)
        })?;
        rt.block_on(conn.close())?;
        samples.sort_unstable();
        Ok(samples[samples.len() / 2])
    }

    /// Drops the table this run made.
    pub fn drop_table(&self) -> Result<()> {
        self.execute(&format!("DROP TABLE {TABLE}"))
    }
}

/// The control connection to `url`, once the experiment's table is known not to exist.
fn open_control(
    url: &str,
    synchronous_commit: &str,
) -> Result<(Runtime, PgConnection, PgConnectOptions)> {
    let shown = redact_url(url);
    let options = PgConnectOptions::from_str(url)
        .map_err(|_| anyhow::anyhow!("Postgres URL {shown} does not parse"))?
        .application_name("quorumlab-engines")
        // A bulk load's VACUUM or CHECKPOINT is slow by nature; the run times what matters.
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(1));
    let rt = runtime()?;
    let mut conn = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                connect(&options, synchronous_commit),
            )
            .await
            .map_err(|_| "no answer in 10 s".to_string())?
            .map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow::anyhow!("Postgres at {shown} is unreachable: {}", scrub(&e, url)))?;
    let exists: bool = rt.block_on(
        sqlx::query_scalar(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"))
            .fetch_one(&mut conn),
    )?;
    if exists {
        bail!(
            "table {TABLE} already exists in {shown}; quorumlab drops only tables it made, \
             so drop it yourself or name another database"
        );
    }
    Ok((rt, conn, options))
}

fn sql_head(sql: &str) -> &str {
    sql.split_whitespace().next().unwrap_or(sql)
}

impl Engine for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn load_batch(&self, from: u64, to: u64, value: &dyn Fn(u64, &mut [u8])) -> Result<()> {
        let keys: Vec<i64> = (from..to).map(|k| k as i64).collect();
        let values: Vec<Vec<u8>> = (from..to)
            .map(|k| {
                let mut v = vec![0; self.value_bytes];
                value(k, &mut v);
                v
            })
            .collect();
        let sql =
            format!("INSERT INTO {TABLE} (k, v) SELECT * FROM UNNEST($1::int8[], $2::bytea[])");
        self.on_control(move |c| {
            Box::pin(async move {
                sqlx::query(&sql).bind(keys).bind(values).execute(c).await?;
                Ok(())
            })
        })
    }

    fn after_load(&self) -> Result<()> {
        self.execute(&format!("VACUUM (ANALYZE) {TABLE}"))
    }

    fn client(&self) -> Result<Box<dyn Client + '_>> {
        let rt = runtime()?;
        let conn = rt.block_on(connect(&self.options, self.synchronous_commit))?;
        Ok(Box::new(PgClient { rt, conn }))
    }

    fn settle(&self) -> Result<()> {
        self.wait_for_workers()?;
        self.execute("CHECKPOINT")
    }

    fn written(&self) -> Result<Written> {
        self.wait_for_workers()?;
        let wal = self.scalar("SELECT wal_bytes::int8 FROM pg_stat_wal")?;
        let pages = self.scalar(
            "SELECT (buffers_checkpoint + buffers_clean + buffers_backend) \
             * current_setting('block_size')::int8 FROM pg_stat_bgwriter",
        )?;
        Ok(Written {
            wal_bytes: wal as u64,
            data_bytes: pages as u64,
        })
    }

    fn footprint(&self) -> Result<Footprint> {
        let data = self.scalar(&format!("SELECT pg_total_relation_size('{TABLE}')"))?;
        let wal = self.scalar("SELECT coalesce(sum(size), 0)::int8 FROM pg_ls_waldir()")?;
        Ok(Footprint {
            data_bytes: data as u64,
            wal_bytes: wal as u64,
        })
    }

    fn quiesce(&self, limit: Duration) -> Result<bool> {
        // Autovacuum is Postgres's background work on the table; wait out a run of it.
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'";
        let until = std::time::Instant::now() + limit;
        while self.scalar(sql)? > 0 {
            if std::time::Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    fn fetch(&self, key: u64) -> Result<Option<Vec<u8>>> {
        self.on_control(move |c| {
            Box::pin(async move {
                Ok(sqlx::query_scalar::<_, Vec<u8>>(GET)
                    .bind(key as i64)
                    .fetch_optional(c)
                    .await?)
            })
        })
    }

    fn compaction_debt(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn settings(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in [
            "server_version",
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "full_page_writes",
            "wal_level",
            "max_wal_size",
            "checkpoint_timeout",
            "autovacuum",
        ] {
            let sql = format!("SELECT current_setting('{name}')");
            let value = self.on_control(move |c| {
                Box::pin(
                    async move { Ok(sqlx::query_scalar::<_, String>(&sql).fetch_one(c).await?) },
                )
            })?;
            out.push((name.to_string(), value));
        }
        // The control connection's own setting is the workers' (they SET it the same way).
        Ok(out)
    }
}

/// One worker's connection, driven from its thread by its own single-threaded runtime.
struct PgClient {
    rt: Runtime,
    conn: PgConnection,
}

// The table is TABLE; spelled out so the statements are constants (sqlx prepares each once per
// connection and reuses it). A test checks they name TABLE.
const GET: &str = "SELECT v FROM quorumlab_engines_kv WHERE k = $1";
const PUT: &str = "INSERT INTO quorumlab_engines_kv (k, v) VALUES ($1, $2) \
                   ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v";
const SCAN: &str = "SELECT k, v FROM quorumlab_engines_kv WHERE k >= $1 ORDER BY k LIMIT $2";

impl Client for PgClient {
    fn apply(&mut self, op: Op, value: &[u8]) -> Result<()> {
        let conn = &mut self.conn;
        self.rt.block_on(async {
            match op {
                Op::Get(key) => {
                    sqlx::query(GET)
                        .bind(key as i64)
                        .fetch_optional(conn)
                        .await?;
                }
                Op::Put(key) => {
                    sqlx::query(PUT)
                        .bind(key as i64)
                        .bind(value)
                        .execute(conn)
                        .await?;
                }
                Op::Scan(key, len) => {
                    let rows = sqlx::query(SCAN)
                        .bind(key as i64)
                        .bind(i64::from(len))
                        .fetch_all(conn)
                        .await?;
                    std::hint::black_box(rows.first().map(|r| r.len()));
                }
            }
            Ok(())
        })
    }

    fn warm_up(&mut self) -> Result<()> {
        use sqlx::Executor;
        let conn = &mut self.conn;
        self.rt.block_on(async {
            for sql in [GET, PUT, SCAN] {
                conn.prepare(sql).await?;
            }
            sqlx::query(GET)
                .bind(0i64)
                .fetch_optional(&mut *conn)
                .await?;
            sqlx::query(SCAN)
                .bind(0i64)
                .bind(1i64)
                .fetch_all(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_table() {
        for sql in [GET, PUT, SCAN] {
            assert!(sql.contains(TABLE), "{sql}");
        }
    }
}
