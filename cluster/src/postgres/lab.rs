//! A real Postgres cluster on namespace hosts: streaming replicas managed by Patroni, with the
//! lab's own etcd cluster as Patroni's DCS.
//!
//! Hosts `n1..n{db_nodes}` each run Patroni (Debian's package, as the `postgres` user), which runs
//! that host's Postgres 15; hosts `n1..n3` also run an etcd member, so a cluster of one primary and
//! one replica still gets a three-member etcd, as it would in production. Patroni is bootstrapped on
//! `n1` first (it initdb's and takes the leader key), then the others clone it with
//! `pg_basebackup` and stream from it. The agent's `patroni` service names the postmaster's pid
//! file, so killing the service kills Postgres too, as a crash of the database host would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quorumlab_experiment::node::NodeId;
use quorumlab_experiment::postgres::ReplicationMode;
use quorumlab_experiment::secret::{redact_url, scrub};
use quorumlab_proto::agent::Action;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::settings::{PatroniSettings, PgCluster, PG_PORT};
use crate::agent::ServiceSpec;
use crate::etcd::lab::{EtcdTiming, CLIENT_PORT};
use crate::hosts::LabNet;
use crate::lab::{Lab, LabError};
use crate::pki::{random_token, write_secret};

/// Patroni's REST API port on every database host.
pub const PATRONI_PORT: u16 = 8008;
/// Where Debian's patroni package puts its entry point.
pub const PATRONI_BINARY: &str = "/usr/bin/patroni";
/// Postgres 15's programs, as Debian installs them.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user Postgres and Patroni run as.
pub const PG_USER: &str = "postgres";
/// Patroni's scope (the cluster name under which it keeps its keys in etcd).
pub const SCOPE: &str = "quorumlab";
/// The etcd key holding the name of the Patroni leader, under a lease of `ttl` seconds.
pub const LEADER_KEY: &str = "/service/quorumlab/leader";
/// etcd members in a Postgres lab (on the first three hosts).
const ETCD_MEMBERS: usize = 3;
/// Largest number of replicas `cluster up postgres` makes.
pub const REPLICAS_MAX: usize = 6;

/// One Postgres node as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgNodeStatus {
    /// Host name (`n1`...).
    pub name: String,
    /// `host:port`.
    pub endpoint: String,
    /// Whether Postgres answered.
    pub up: bool,
    /// `primary` or `replica` (empty when down).
    pub role: String,
    /// Timeline the node is on.
    pub timeline: u64,
    /// Primary: current WAL insert LSN; replica: last received LSN.
    pub received_lsn: String,
    /// Primary: current WAL LSN; replica: last replayed LSN.
    pub replayed_lsn: String,
    /// Bytes of WAL the node has not replayed, against the primary's current LSN.
    pub lag_bytes: Option<i64>,
}

fn pg_err(what: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Postgres(format!("{what}: {}", one_line(&e.to_string())))
}

/// Folds an error message to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Postgres nodes a workload talks to, numbered from 1: a lab's database hosts, or any
/// cluster given by connection URLs.
#[derive(Debug, Clone)]
pub struct PgNodes {
    options: Vec<PgConnectOptions>,
    names: Vec<String>,
}

impl PgNodes {
    /// The database hosts of `lab`.
    pub fn of_lab(lab: &Lab) -> Result<PgNodes, LabError> {
        let pg = cluster(lab)?;
        Ok(PgNodes {
            options: NodeId::all(pg.db_nodes)
                .map(|id| pg.connect_options(lab.addr(id)))
                .collect(),
            names: NodeId::all(pg.db_nodes)
                .map(|id| format!("{id} ({}:{PG_PORT})", lab.addr(id)))
                .collect(),
        })
    }

    /// Nodes given by `postgres://` URLs (credentials in the URL or the usual PG* variables).
    pub fn from_urls(urls: &[String]) -> Result<PgNodes, LabError> {
        let mut options = Vec::new();
        let mut names = Vec::new();
        for url in urls {
            let parsed = url.parse::<PgConnectOptions>().map_err(|e| {
                LabError::Postgres(format!(
                    "'{}' is not a Postgres URL: {}",
                    redact_url(url),
                    scrub(&one_line(&e.to_string()), url)
                ))
            })?;
            names.push(format!(
                "{} ({}:{})",
                NodeId::from_index(names.len()),
                parsed.get_host(),
                parsed.get_port()
            ));
            options.push(
                parsed
                    .application_name("quorumlab")
                    .disable_statement_logging(),
            );
        }
        Ok(PgNodes { options, names })
    }

    /// Each node's name and connection options, for a caller that keeps its own pools.
    pub fn named_options(&self) -> Vec<(String, PgConnectOptions)> {
        self.names
            .iter()
            .cloned()
            .zip(self.options.iter().cloned())
            .collect()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.options.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }

    /// Every node, `n1` first.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        NodeId::all(self.len())
    }

    /// Opens a connection to node `id` within `timeout`.
    pub async fn connect(&self, id: NodeId, timeout: Duration) -> Result<PgConnection, LabError> {
        let name = &self.names[id.index()];
        let options = &self.options[id.index()];
        match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(pg_err(&format!("cannot reach Postgres on {name}"), e)),
            Err(_) => Err(LabError::Postgres(format!(
                "cannot reach Postgres on {name} within {timeout:?}"
            ))),
        }
    }

    /// A [`RoleProbe`] over these nodes, for asking again and again.
    pub fn role_probe(&self) -> RoleProbe<'_> {
        RoleProbe {
            nodes: self,
            conns: (0..self.len()).map(|_| None).collect(),
        }
    }

    /// Waits until some node (`expected`, or any) says it is the primary; returns its number.
    pub async fn wait_for_primary(
        &self,
        expected: Option<NodeId>,
        limit: Duration,
    ) -> Result<NodeId, LabError> {
        let deadline = Instant::now() + limit;
        let mut probe = self.role_probe();
        let found = loop {
            let mut found = None;
            for id in self.ids().filter(|&id| expected.is_none_or(|e| e == id)) {
                if probe.is_primary(id, Duration::from_secs(1)).await {
                    found = Some(id);
                    break;
                }
            }
            if found.is_some() || Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        probe.close().await;
        found.ok_or_else(|| {
            LabError::Timeout(format!(
                "no Postgres primary among {} within {limit:?}",
                self.names.join(", ")
            ))
        })
    }
}

/// Asks nodes whether they are primary over one kept connection each, reconnecting only after a
/// failed answer: polling every few milliseconds costs a query, not a connection.
pub struct RoleProbe<'a> {
    nodes: &'a PgNodes,
    conns: Vec<Option<PgConnection>>,
}

impl RoleProbe<'_> {
    /// Whether node `id` answers within `timeout` that it is not in recovery.
    pub async fn is_primary(&mut self, id: NodeId, timeout: Duration) -> bool {
        let slot = &mut self.conns[id.index()];
        if slot.is_none() {
            *slot = self.nodes.connect(id, timeout).await.ok();
        }
        let Some(conn) = slot.as_mut() else {
            return false;
        };
        let answer = tokio::time::timeout(
            timeout,
            sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()").fetch_one(conn),
        )
        .await;
        match answer {
            Ok(Ok(primary)) => primary,
            _ => {
                *slot = None;
                false
            }
        }
    }

    /// Closes the kept connections politely (Postgres logs an EOF for a dropped one).
    pub async fn close(self) {
        for conn in self.conns.into_iter().flatten() {
            let _ = conn.close().await;
        }
    }
}

/// Opens a connection to `host`'s Postgres within `timeout`.
pub async fn connect(lab: &Lab, host: NodeId, timeout: Duration) -> Result<PgConnection, LabError> {
    PgNodes::of_lab(lab)?.connect(host, timeout).await
}

/// The lab's Postgres cluster, or an error naming the lab as etcd-only.
pub fn cluster(lab: &Lab) -> Result<&PgCluster, LabError> {
    lab.postgres.as_ref().ok_or_else(|| {
        LabError::Postgres(format!(
            "the lab in {} has no Postgres (`quorumlab cluster up postgres` starts one)",
            lab.state_dir.display()
        ))
    })
}

fn patroni_config(
    net: &LabNet,
    host: NodeId,
    dir: &Path,
    settings: &PatroniSettings,
    passwords: &[String; 3],
) -> serde_json::Value {
    let addr = net.addr(host);
    let etcd_hosts: Vec<String> = NodeId::all(ETCD_MEMBERS)
        .map(|member| format!("{}:{CLIENT_PORT}", net.addr(member)))
        .collect();
    let subnet = format!("10.77.{}.0/24", net.id);
    // YAML is a superset of JSON, so Patroni reads this as it is.
    serde_json::json!({
        "scope": SCOPE,
        "namespace": "/service/",
        "name": host.to_string(),
        "log": {"level": "INFO"},
        "restapi": {
            "listen": format!("{addr}:{PATRONI_PORT}"),
            "connect_address": format!("{addr}:{PATRONI_PORT}"),
        },
        "etcd3": {"hosts": etcd_hosts},
        "bootstrap": {
            "dcs": bootstrap_dcs(settings),
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": format!("{addr}:{PG_PORT}"),
            "connect_address": format!("{addr}:{PG_PORT}"),
            "data_dir": dir.join("pgdata"),
            "bin_dir": PG_BIN_DIR,
            "pgpass": dir.join("pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": passwords[0]},
                "replication": {"username": "replicator", "password": passwords[1]},
                "rewind": {"username": "rewinder", "password": passwords[2]},
            },
            "pg_hba": [
                "local all all trust",
                format!("host all all {subnet} scram-sha-256"),
                format!("host replication replicator {subnet} scram-sha-256"),
            ],
            "parameters": {"unix_socket_directories": dir},
        },
    })
}

/// The cluster-wide settings Patroni writes to the DCS at bootstrap: its timing from the
/// scenario, and Postgres's replication parameters.
fn bootstrap_dcs(settings: &PatroniSettings) -> serde_json::Value {
    let synchronous = settings.mode == ReplicationMode::Sync;
    let synchronous_commit = if synchronous {
        settings.synchronous_commit.to_string()
    } else {
        "local".to_string()
    };
    serde_json::json!({
        "ttl": settings.ttl_s,
        "loop_wait": settings.loop_wait_s,
        "retry_timeout": settings.retry_timeout_s,
        "maximum_lag_on_failover": settings.maximum_lag_on_failover_bytes,
        "synchronous_mode": synchronous,
        "postgresql": {
            "use_pg_rewind": true,
            "parameters": {
                "wal_level": "replica",
                "hot_standby": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "256MB",
                "wal_log_hints": "on",
                "synchronous_commit": synchronous_commit,
                "wal_receiver_status_interval": "1s",
            },
        },
    })
}

/// Whether every directory above `dir` lets the `postgres` user pass (mode `o+x`).
pub(crate) fn traversable(dir: &Path) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = dir.to_path_buf();
    while let Some(parent) = at.parent() {
        if let Ok(meta) = std::fs::metadata(parent) {
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(LabError::State {
                    path: dir.display().to_string(),
                    reason: format!(
                        "Postgres runs as the '{PG_USER}' user and cannot pass through {} (mode {:o}); choose a --state-dir under /tmp or chmod o+x it",
                        parent.display(),
                        meta.permissions().mode() & 0o7777
                    ),
                });
            }
        }
        at = parent.to_path_buf();
    }
    Ok(())
}

pub(crate) fn chown_to_postgres(path: &Path) -> Result<(), LabError> {
    let name = std::ffi::CString::new(PG_USER).expect("no NUL");
    // SAFETY: getpwnam with a valid C string; fields are copied before any other libc call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(LabError::NoPostgres(format!("no '{PG_USER}' user")));
    }
    // SAFETY: non-null result of getpwnam.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| LabError::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Brings up a Postgres primary and `replicas` streaming replicas under Patroni, on a fresh lab.
pub async fn up(
    state_dir: &Path,
    replicas: usize,
    settings: &PatroniSettings,
    agent_binary: &Path,
) -> Result<Lab, LabError> {
    check_can_start(replicas, settings)?;
    traversable(state_dir)?;
    let db_nodes = replicas + 1;
    let passwords = [random_token()?, random_token()?, random_token()?];
    let services = |net: &LabNet, host: NodeId, dir: &Path| {
        if host.index() >= db_nodes {
            return Ok(BTreeMap::new());
        }
        patroni_service(net, host, dir, settings, &passwords)
    };
    let hosts = db_nodes.max(ETCD_MEMBERS);
    let timing = EtcdTiming {
        heartbeat_ms: 100,
        election_timeout_ms: 1000,
    };
    let mut lab = Lab::up_with(
        state_dir,
        hosts,
        ETCD_MEMBERS,
        timing,
        agent_binary,
        &services,
    )
    .await?;
    lab.postgres = Some(PgCluster {
        db_nodes,
        superuser_password: passwords[0].clone(),
        patroni: settings.clone(),
    });
    if let Err(e) = start_patroni(&lab, db_nodes).await {
        let _ = Lab::down(state_dir);
        return Err(e);
    }
    Ok(lab)
}

/// Refuses, before anything starts, a size or settings Patroni cannot run, or missing programs.
fn check_can_start(replicas: usize, settings: &PatroniSettings) -> Result<(), LabError> {
    if replicas == 0 || replicas > REPLICAS_MAX {
        return Err(LabError::Settings(format!(
            "a Postgres lab needs 1 to {REPLICAS_MAX} replicas, not {replicas}"
        )));
    }
    settings.validate().map_err(LabError::Settings)?;
    for program in [PATRONI_BINARY, &format!("{PG_BIN_DIR}/postgres")] {
        if !Path::new(program).exists() {
            return Err(LabError::NoPostgres(format!(
                "{program} is missing: apt-get install patroni postgresql-15 (cargo xtask test does it)"
            )));
        }
    }
    Ok(())
}

/// Database host `i`'s Patroni service: its configuration (owner-only, it holds passwords) and
/// log, owned by the postgres user it runs as; killing it kills its postmaster too.
fn patroni_service(
    net: &LabNet,
    host: NodeId,
    dir: &Path,
    settings: &PatroniSettings,
    passwords: &[String; 3],
) -> Result<BTreeMap<String, ServiceSpec>, LabError> {
    chown_to_postgres(dir)?;
    let config_file = dir.join("patroni.yml");
    let config = patroni_config(net, host, dir, settings, passwords);
    let text = serde_json::to_string_pretty(&config).expect("config serialises");
    write_secret(&config_file, text.as_bytes())?;
    chown_to_postgres(&config_file)?;
    let log = dir.join("patroni.log");
    write_secret(&log, b"")?;
    chown_to_postgres(&log)?;
    let patroni = ServiceSpec {
        program: PATRONI_BINARY.into(),
        args: vec![config_file.display().to_string()],
        log,
        user: Some(PG_USER.to_string()),
        pid_files: vec![dir.join("pgdata").join("postmaster.pid")],
    };
    Ok(BTreeMap::from([("patroni".to_string(), patroni)]))
}

/// Bootstraps on `n1` (initdb, leader key), then starts the replicas and waits until they stream.
async fn start_patroni(lab: &Lab, db_nodes: usize) -> Result<(), LabError> {
    lab.save()?;
    signal_patroni(lab, NodeId(1), Action::Start).await?;
    wait_for_primary(lab, Some(NodeId(1)), Duration::from_secs(90)).await?;
    for replica in NodeId::all(db_nodes).skip(1) {
        signal_patroni(lab, replica, Action::Start).await?;
    }
    wait_for_streaming(lab, NodeId(1), db_nodes - 1, Duration::from_secs(120)).await
}

/// Asks `host`'s agent to start, stop, kill, pause or resume Patroni (and with a kill, its
/// Postgres).
pub async fn signal_patroni(lab: &Lab, host: NodeId, action: Action) -> Result<(), LabError> {
    lab.signal(host, "patroni", action).await
}

/// Waits until a primary is found (`expected`, or any node); returns its host number.
pub async fn wait_for_primary(
    lab: &Lab,
    expected: Option<NodeId>,
    limit: Duration,
) -> Result<NodeId, LabError> {
    PgNodes::of_lab(lab)?
        .wait_for_primary(expected, limit)
        .await
        .map_err(|e| match e {
            LabError::Timeout(why) => LabError::Timeout(format!(
                "{why}; see {}/n*/patroni.log",
                lab.state_dir.display()
            )),
            other => other,
        })
}

/// Waits until `replicas` of the lab's members stream from host `primary` as standbys (one of
/// them synchronous in synchronous mode).
pub async fn wait_for_streaming(
    lab: &Lab,
    primary: NodeId,
    replicas: usize,
    limit: Duration,
) -> Result<(), LabError> {
    let pg = cluster(lab)?;
    let sync = pg.patroni.mode == ReplicationMode::Sync;
    // Patroni names each standby's connection after its member; pg_basebackup's own WAL stream
    // while a replica is still being cloned also shows as 'streaming', and must not count.
    let members: Vec<String> = NodeId::all(pg.db_nodes)
        .filter(|&id| id != primary)
        .map(|id| lab.hosts[id.index()].name.clone())
        .collect();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut conn) = connect(lab, primary, Duration::from_secs(1)).await {
            let rows = sqlx::query(
                "SELECT count(*) FILTER (WHERE state = 'streaming'), \
                        count(*) FILTER (WHERE sync_state = 'sync') \
                 FROM pg_stat_replication WHERE application_name = ANY($1)",
            )
            .bind(&members)
            .fetch_one(&mut conn)
            .await;
            let _ = conn.close().await;
            if let Ok(row) = rows {
                let streaming: i64 = row.get(0);
                let synchronous: i64 = row.get(1);
                if streaming as usize >= replicas && (!sync || synchronous >= 1) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(format!(
                "{replicas} replicas did not all stream from {primary} within {limit:?}; see {}/n*/patroni.log",
                lab.state_dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn node_status(lab: &Lab, id: NodeId, timeout: Duration) -> PgNodeStatus {
    let mut status = PgNodeStatus {
        name: id.to_string(),
        endpoint: format!("{}:{PG_PORT}", lab.addr(id)),
        up: false,
        role: String::new(),
        timeline: 0,
        received_lsn: String::new(),
        replayed_lsn: String::new(),
        lag_bytes: None,
    };
    let Ok(mut conn) = connect(lab, id, timeout).await else {
        return status;
    };
    let row = tokio::time::timeout(
        timeout,
        sqlx::query(
            "SELECT pg_is_in_recovery(), \
               (SELECT timeline_id FROM pg_control_checkpoint())::bigint, \
               COALESCE(received_tli, 0)::bigint, \
               COALESCE(pg_last_wal_receive_lsn(), pg_current_wal_insert_lsn())::text, \
               COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text \
             FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver ON true",
        )
        .fetch_one(&mut conn),
    )
    .await;
    let _ = conn.close().await;
    let Ok(Ok(row)) = row else {
        return status;
    };
    let in_recovery: bool = row.get(0);
    let checkpoint_tli: i64 = row.get(1);
    let received_tli: i64 = row.get(2);
    status.up = true;
    status.role = if in_recovery { "replica" } else { "primary" }.to_string();
    status.timeline = checkpoint_tli.max(received_tli) as u64;
    status.received_lsn = row.get(3);
    status.replayed_lsn = row.get(4);
    status
}

/// Every database node's role, timeline, LSNs and lag behind the primary.
pub async fn status(lab: &Lab, timeout: Duration) -> Result<Vec<PgNodeStatus>, LabError> {
    let db_nodes = cluster(lab)?.db_nodes;
    let mut nodes = Vec::with_capacity(db_nodes);
    for id in NodeId::all(db_nodes) {
        nodes.push(node_status(lab, id, timeout).await);
    }
    let primary = nodes.iter().position(|n| n.role == "primary");
    if let Some(p) = primary {
        if let Ok(mut conn) = connect(lab, NodeId::from_index(p), timeout).await {
            for n in &mut nodes {
                if !n.up {
                    continue;
                }
                let lag = sqlx::query_scalar::<_, Option<f64>>(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8",
                )
                .bind(&n.replayed_lsn)
                .fetch_one(&mut conn)
                .await;
                n.lag_bytes = lag.ok().flatten().map(|b| b as i64);
            }
            let _ = conn.close().await;
        }
    }
    Ok(nodes)
}

/// The directory of `host` in `lab`.
pub fn host_dir(lab: &Lab, host: NodeId) -> PathBuf {
    lab.state_dir.join(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        let err = PgNodes::from_urls(&["postgres://app:s3cret@db:notaport/x".into()])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
