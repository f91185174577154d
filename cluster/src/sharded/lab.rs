//! A real sharded cluster on namespace hosts: plain Postgres 15 servers as shards, the lab's etcd
//! as the config store holding the chunk map.
//!
//! Hosts `n1..n{shards}` each run one shard's Postgres (the agent's `postgres` service, as the
//! `postgres` user, `wal_level = logical` so chunks can move by logical replication); hosts
//! `n1..n3` also run an etcd member. Every shard has the same small schema: `ql_owned` lists the
//! chunks it owns (with their versions) and each chunk it holds is a table `ql_chunk_<c>` whose
//! insert trigger refuses a write to a chunk not owned, with SQLSTATE [`STALE_SQLSTATE`]: the
//! shard's "stale config" answer, on which a router refreshes its map and retries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::routing::{Entry, Table};
use quorumlab_proto::agent::Action;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

use super::map::ChunkMap;
pub use super::settings::ShardCluster;
use crate::agent::ServiceSpec;
use crate::etcd::lab::EtcdTiming;
use crate::hosts::LabNet;
use crate::lab::{Lab, LabError};
use crate::pki::{random_token, write_secret};
use crate::postgres::lab::{chown_to_postgres, one_line, traversable, PG_BIN_DIR, PG_USER};
use crate::postgres::settings::PG_PORT;

/// The SQLSTATE a shard answers a write to a chunk it does not own with.
pub const STALE_SQLSTATE: &str = "QL001";
/// Largest number of shards `cluster up sharded` makes.
pub const SHARDS_MAX: usize = 8;
/// Largest number of router hosts a sharded lab makes.
pub const ROUTERS_MAX: usize = 4;
/// etcd members in a sharded lab (on the first three hosts, or fewer hosts when fewer shards).
const ETCD_MEMBERS: usize = 3;

/// The lab's shard cluster, or an error naming the lab as having none.
pub fn cluster(lab: &Lab) -> Result<&ShardCluster, LabError> {
    lab.sharded.as_ref().ok_or_else(|| {
        LabError::Postgres(format!(
            "the lab in {} has no shards (`quorumlab cluster up sharded` starts them)",
            lab.state_dir.display()
        ))
    })
}

/// Shard `shard` (0 is `s1`)'s host.
pub fn shard_host(shard: usize) -> NodeId {
    NodeId::from_index(shard)
}

/// Opens a connection to shard `shard` within `timeout`.
pub async fn connect(lab: &Lab, shard: usize, timeout: Duration) -> Result<PgConnection, LabError> {
    let options = cluster(lab)?.connect_options(lab.addr(shard_host(shard)));
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(LabError::Postgres(format!(
            "cannot reach shard s{}: {}",
            shard + 1,
            one_line(&e.to_string())
        ))),
        Err(_) => Err(LabError::Postgres(format!(
            "cannot reach shard s{} within {timeout:?}",
            shard + 1
        ))),
    }
}

/// What a sharded lab is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Postgres shards, one per host from `n1`.
    pub shards: usize,
    /// How many of them (the last) start with no chunks, as a shard just added does.
    pub empty: usize,
    /// Chunks of even width, dealt round-robin over the shards that are not empty.
    pub chunks: usize,
    /// Hosts that run nothing but a router of the driver's (each on its own namespace host,
    /// after the shards' and etcd's hosts), so that a router can be cut off for real.
    pub routers: usize,
}

/// Brings up a fresh lab as `layout` says: its shards, etcd on the first three hosts with the
/// chunk map in it, and its router hosts.
pub async fn up(state_dir: &Path, layout: Layout, agent_binary: &Path) -> Result<Lab, LabError> {
    let Layout {
        shards,
        empty,
        chunks,
        routers,
    } = layout;
    check_can_start(shards, empty, chunks)?;
    if routers > ROUTERS_MAX {
        return Err(LabError::Settings(format!(
            "a sharded lab has at most {ROUTERS_MAX} routers, not {routers}"
        )));
    }
    traversable(state_dir)?;
    let password = random_token()?;
    let services = |net: &LabNet, host: NodeId, dir: &Path| {
        if host.index() >= shards {
            return Ok(BTreeMap::new());
        }
        shard_service(net, dir, &password)
    };
    let members = ETCD_MEMBERS.min(shards.max(1));
    let timing = EtcdTiming {
        heartbeat_ms: 100,
        election_timeout_ms: 1000,
    };
    let data_hosts = shards.max(members);
    let hosts = data_hosts + routers;
    let mut lab = Lab::up_with(state_dir, hosts, members, timing, agent_binary, &services).await?;
    lab.sharded = Some(ShardCluster {
        shards,
        chunks,
        superuser_password: password.clone(),
        router_hosts: (data_hosts..hosts).map(NodeId::from_index).collect(),
        port: PG_PORT,
    });
    let table = initial_table(shards, empty, chunks);
    if let Err(e) = start_shards(&lab, &table).await {
        let _ = Lab::down(state_dir);
        return Err(e);
    }
    Ok(lab)
}

fn check_can_start(shards: usize, empty: usize, chunks: usize) -> Result<(), LabError> {
    if !(1..=SHARDS_MAX).contains(&shards) || empty >= shards {
        return Err(LabError::Settings(format!(
            "a sharded lab needs 1 to {SHARDS_MAX} shards with at least one holding chunks, not {shards} ({empty} empty)"
        )));
    }
    if chunks < shards - empty || chunks > 1024 {
        return Err(LabError::Settings(format!(
            "a sharded lab needs at least a chunk per non-empty shard and at most 1024 chunks, not {chunks}"
        )));
    }
    let postgres = format!("{PG_BIN_DIR}/postgres");
    if !Path::new(&postgres).exists() {
        return Err(LabError::NoPostgres(format!(
            "{postgres} is missing: apt-get install postgresql-15 (cargo xtask test does it)"
        )));
    }
    Ok(())
}

/// Shard host's `postgres` service: a data directory made by initdb (superuser password set,
/// password logins from the lab's subnet), logical WAL, its socket in the host directory.
fn shard_service(
    net: &LabNet,
    dir: &Path,
    password: &str,
) -> Result<BTreeMap<String, ServiceSpec>, LabError> {
    chown_to_postgres(dir)?;
    let pgdata = dir.join("pgdata");
    let pwfile = dir.join("superuser.password");
    write_secret(&pwfile, password.as_bytes())?;
    chown_to_postgres(&pwfile)?;
    initdb(&pgdata, &pwfile)?;
    let _ = std::fs::remove_file(&pwfile);
    let subnet = format!("10.77.{}.0/24", net.id);
    let hba = format!("local all all trust\nhost all all {subnet} scram-sha-256\n");
    std::fs::write(pgdata.join("pg_hba.conf"), hba).map_err(|e| state(&pgdata, e))?;
    let log = dir.join("postgres.log");
    write_secret(&log, b"")?;
    chown_to_postgres(&log)?;
    let mut args = vec!["-D".to_string(), pgdata.display().to_string()];
    for (name, value) in [
        // Every address of the host's namespace: it has only the host's own.
        ("listen_addresses", "*".into()),
        ("port", PG_PORT.to_string()),
        ("unix_socket_directories", dir.display().to_string()),
        ("wal_level", "logical".into()),
        ("max_wal_senders", "20".into()),
        ("max_replication_slots", "20".into()),
        ("max_logical_replication_workers", "8".into()),
        ("wal_receiver_status_interval", "1s".into()),
        // The logical replication launcher and apply workers wait this long before starting a
        // worker (default 5 s): a move's initial copy would idle that long before it began.
        ("wal_retrieve_retry_interval", "100ms".into()),
    ] {
        args.push("-c".into());
        args.push(format!("{name}={value}"));
    }
    let postgres = ServiceSpec {
        program: PathBuf::from(format!("{PG_BIN_DIR}/postgres")),
        args,
        log,
        user: Some(PG_USER.to_string()),
        pid_files: vec![pgdata.join("postmaster.pid")],
    };
    Ok(BTreeMap::from([("postgres".to_string(), postgres)]))
}

fn initdb(pgdata: &Path, pwfile: &Path) -> Result<(), LabError> {
    let out = Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(format!("{PG_BIN_DIR}/initdb"))
        .arg("-D")
        .arg(pgdata)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--encoding=UTF8", "--data-checksums"])
        .output()
        .map_err(|e| LabError::NoPostgres(format!("cannot run initdb: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Postgres(format!(
            "initdb {} failed: {}",
            pgdata.display(),
            one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    Ok(())
}

fn state(path: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Starts every shard, makes its schema and the tables of the chunks it owns, and writes `table`
/// to etcd as the chunk map.
async fn start_shards(lab: &Lab, table: &Table) -> Result<(), LabError> {
    lab.save()?;
    let shards = cluster(lab)?.shards;
    for shard in 0..shards {
        lab.signal(shard_host(shard), "postgres", Action::Start)
            .await?;
    }
    make_fresh(lab, table).await
}

/// The initial chunk map: `chunks` chunks dealt round-robin over the first `shards - empty`.
pub fn initial_table(shards: usize, empty: usize, chunks: usize) -> Table {
    (0..chunks)
        .map(|c| Entry {
            version: 1,
            shard: c % (shards - empty),
        })
        .collect()
}

/// On running, empty shards: the schema, the tables of the chunks each owns, and `table` as the
/// chunk map in etcd (replacing any map there).
pub(crate) async fn make_fresh(lab: &Lab, table: &Table) -> Result<(), LabError> {
    for shard in 0..cluster(lab)?.shards {
        let mut conn = wait_for_shard(lab, shard, Duration::from_secs(60)).await?;
        install_schema(&mut conn).await?;
        for (c, entry) in table.iter().enumerate() {
            if entry.shard == shard {
                create_chunk_table(&mut conn, c as u32).await?;
                own(&mut conn, c as u32, entry.version).await?;
            }
        }
    }
    let mut map = ChunkMap::connect(lab).await?;
    map.clear().await?;
    map.write_initial(table).await
}

/// Empties every shard of what a run leaves: the moves' subscriptions first (on every shard, so
/// no walsender still holds a slot), then their slots and publications, then the lab's tables.
/// A shard the lab made is empty already; one that outlives runs (an inventory's) is not.
pub(crate) async fn reset_shards(lab: &Lab) -> Result<(), LabError> {
    let shards = cluster(lab)?.shards;
    let mut conns = Vec::new();
    for shard in 0..shards {
        conns.push(wait_for_shard(lab, shard, Duration::from_secs(60)).await?);
    }
    for conn in &mut conns {
        for name in names(
            conn,
            "SELECT subname::text FROM pg_subscription WHERE subname LIKE 'ql\\_%'",
        )
        .await?
        {
            // Detached from its slot first: the donor's slot may be gone, or the donor down.
            exec(conn, &format!("ALTER SUBSCRIPTION {name} DISABLE")).await?;
            exec(
                conn,
                &format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"),
            )
            .await?;
            exec(conn, &format!("DROP SUBSCRIPTION {name}")).await?;
        }
    }
    for conn in &mut conns {
        let slots =
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'ql\\_%'";
        for name in names(conn, slots).await? {
            drop_slot(conn, &name).await?;
        }
        let publications = "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'ql\\_%'";
        for name in names(conn, publications).await? {
            exec(conn, &format!("DROP PUBLICATION {name}")).await?;
        }
        let tables = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'ql\\_%'";
        for name in names(conn, tables).await? {
            exec(conn, &format!("DROP TABLE {name}")).await?;
        }
    }
    Ok(())
}

/// Drops replication slot `name`, waiting (up to 10 s) for its walsender to let go of it.
async fn drop_slot(conn: &mut PgConnection, name: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sql = format!("SELECT pg_drop_replication_slot('{name}')");
        match exec(conn, &sql).await {
            Err(e) if Instant::now() < deadline && e.to_string().contains("is active") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            done => return done,
        }
    }
}

/// The one text column of `sql`'s rows.
async fn names(conn: &mut PgConnection, sql: &str) -> Result<Vec<String>, LabError> {
    sqlx::query_scalar(sql)
        .fetch_all(conn)
        .await
        .map_err(|e| LabError::Postgres(one_line(&e.to_string())))
}

/// Waits until shard `shard` takes connections.
pub async fn wait_for_shard(
    lab: &Lab,
    shard: usize,
    limit: Duration,
) -> Result<PgConnection, LabError> {
    let started = Instant::now();
    loop {
        match connect(lab, shard, Duration::from_secs(2)).await {
            Ok(conn) => return Ok(conn),
            Err(e) if started.elapsed() > limit => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `ql_owned`, the ownership check every chunk table's trigger calls, and `ql_read`. The check takes a share
/// lock on the ownership row, so a move's fence (deleting that row) waits for every write that
/// passed the check to commit, and every write after it fails.
async fn install_schema(conn: &mut PgConnection) -> Result<(), LabError> {
    let statements = [
        "CREATE TABLE IF NOT EXISTS ql_owned (chunk integer PRIMARY KEY, version bigint NOT NULL)",
        "CREATE TABLE IF NOT EXISTS ql_move_marker (chunk integer NOT NULL, move_id bigint NOT NULL, PRIMARY KEY (chunk, move_id))",
        &format!(
            "CREATE OR REPLACE FUNCTION ql_check_owned() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               PERFORM 1 FROM ql_owned WHERE chunk = TG_ARGV[0]::integer FOR SHARE;
               IF NOT FOUND THEN
                 RAISE EXCEPTION 'chunk % is not owned by this shard', TG_ARGV[0]
                   USING ERRCODE = '{STALE_SQLSTATE}';
               END IF;
               RETURN NEW;
             END $$"
        ),
        // A router's read of one key in one chunk, with the chunk's version and whether the
        // router takes this shard for the owner: the shard's own ownership decides. A shard
        // that owns the chunk at a newer version, or that the router wrongly takes for the
        // owner, answers "stale config"; any other shard that does not own it answers nothing
        // (its copy, if any, is an orphan). The share lock holds a move's fence until the
        // read is done. Preloaded documents (ids below 1) are not the workload's.
        &format!(
            "CREATE OR REPLACE FUNCTION ql_read(c integer, k bigint, v bigint, expect_owner boolean)
             RETURNS SETOF bigint LANGUAGE plpgsql AS $$
             DECLARE owned bigint;
             BEGIN
               SELECT version INTO owned FROM ql_owned WHERE chunk = c FOR SHARE;
               IF NOT FOUND THEN
                 IF expect_owner THEN
                   RAISE EXCEPTION 'chunk % is not owned by this shard', c
                     USING ERRCODE = '{STALE_SQLSTATE}';
                 END IF;
                 RETURN;
               END IF;
               IF owned > v THEN
                 RAISE EXCEPTION 'chunk % is at version % here, not %', c, owned, v
                   USING ERRCODE = '{STALE_SQLSTATE}';
               END IF;
               RETURN QUERY EXECUTE format('SELECT id FROM ql_chunk_%s WHERE key = $1 AND id > 0', c)
                 USING k;
             END $$"
        ),
    ];
    for sql in statements {
        exec(conn, sql).await?;
    }
    Ok(())
}

/// Creates chunk `chunk`'s table (empty) and its ownership trigger, if missing.
pub async fn create_chunk_table(conn: &mut PgConnection, chunk: u32) -> Result<(), LabError> {
    let t = chunk_table(chunk);
    exec(
        conn,
        &format!(
            "CREATE TABLE IF NOT EXISTS {t} (id bigint PRIMARY KEY, key bigint NOT NULL, doc text)"
        ),
    )
    .await?;
    exec(
        conn,
        &format!(
            "CREATE OR REPLACE TRIGGER {t}_owned BEFORE INSERT OR UPDATE ON {t}
             FOR EACH ROW EXECUTE FUNCTION ql_check_owned('{chunk}')"
        ),
    )
    .await
}

/// Records that this shard owns `chunk` at `version`.
pub async fn own(conn: &mut PgConnection, chunk: u32, version: u64) -> Result<(), LabError> {
    exec(
        conn,
        &format!(
            "INSERT INTO ql_owned VALUES ({chunk}, {version})
             ON CONFLICT (chunk) DO UPDATE SET version = EXCLUDED.version"
        ),
    )
    .await
}

/// The table holding chunk `chunk` on a shard.
pub fn chunk_table(chunk: u32) -> String {
    format!("ql_chunk_{chunk}")
}

/// Runs one statement.
pub async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), LabError> {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| LabError::Postgres(one_line(&e.to_string())))
}
