//! Where requests go: writes to the primary, reads to a replica, and read-your-writes through
//! consistency tokens.
//!
//! Every write response carries `X-Consistency-Token: pg:<lsn>`, an LSN at or past the write's
//! commit record (`pg_current_wal_insert_lsn()` read after the commit). A read that sends the
//! token back is served by a replica only once `pg_last_wal_replay_lsn()` there has reached it;
//! the replica is polled for up to `token_wait`, and then the primary answers instead. A read
//! without a token goes to the next replica in turn. `X-Served-By` names who answered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, Postgres};

use crate::error::ApiError;
use crate::metrics::{Metrics, TokenWait};

/// The request and response header carrying a consistency token.
pub const TOKEN_HEADER: &str = "x-consistency-token";
/// The response header naming the node that served a read.
pub const SERVED_BY_HEADER: &str = "x-served-by";
/// How often a replica is asked whether it has caught up with a token.
const CATCH_UP_POLL: Duration = Duration::from_millis(2);

/// What a read must not be older than: a position in the primary's WAL and, when the write also
/// recorded an activity event, MongoDB's operation time (seconds, increment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token {
    /// The LSN, as a byte position.
    pub lsn: u64,
    /// MongoDB's `operationTime` of the write's event.
    pub mongo: Option<(u32, u32)>,
}

/// Parses Postgres's `X/Y` LSN text.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

impl Token {
    /// The header value, `pg:X/Y` or `pg:X/Y;mongo:T.I`.
    pub fn header_value(self) -> HeaderValue {
        let mut text = format!("pg:{:X}/{:X}", self.lsn >> 32, self.lsn & 0xffff_ffff);
        if let Some((time, increment)) = self.mongo {
            text.push_str(&format!(";mongo:{time}.{increment}"));
        }
        HeaderValue::from_str(&text).expect("ASCII")
    }

    fn parse(text: &str) -> Option<Token> {
        let mut parts = text.split(';');
        let lsn = parse_lsn(parts.next()?.strip_prefix("pg:")?)?;
        let mongo = match parts.next() {
            None => None,
            Some(m) => {
                let (time, increment) = m.strip_prefix("mongo:")?.split_once('.')?;
                Some((time.parse().ok()?, increment.parse().ok()?))
            }
        };
        parts.next().is_none().then_some(Token { lsn, mongo })
    }

    /// The token a request carries, if any.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Token>, ApiError> {
        let Some(value) = headers.get(TOKEN_HEADER) else {
            return Ok(None);
        };
        value
            .to_str()
            .ok()
            .and_then(Token::parse)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid("X-Consistency-Token must be pg:<lsn> as a write returned it")
            })
    }
}

/// Which column holds a user's name: `name`, until the online migration
/// ([`crate::online`]) moves it to `display_name`. The API field stays `name` throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameColumn {
    /// The original column.
    #[default]
    Name,
    /// The column that replaces it.
    DisplayName,
}

impl NameColumn {
    /// The column's SQL name.
    pub fn sql(self) -> &'static str {
        match self {
            NameColumn::Name => "name",
            NameColumn::DisplayName => "display_name",
        }
    }
}

/// One Postgres server the service talks to.
struct Node {
    name: String,
    pool: PgPool,
}

/// Which node takes writes and which serve reads, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Roles {
    primary: usize,
    replicas: Vec<usize>,
}

/// How often the nodes are asked for their role (`pg_is_in_recovery()`) when the service finds
/// its primary itself.
pub const ROLE_POLL: Duration = Duration::from_millis(200);
/// How long one node may take to say its role before it counts as unreachable.
const ROLE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The Postgres nodes behind the service, and who is primary among them.
#[derive(Clone)]
pub struct Db {
    nodes: Arc<Vec<Node>>,
    roles: Arc<RwLock<Roles>>,
    next: Arc<AtomicUsize>,
    token_wait: Duration,
    ignore_tokens: bool,
    display_name: Arc<AtomicBool>,
    /// Where activity events go, when MongoDB is configured.
    pub activity: Option<crate::activity::ActivityStore>,
    metrics: Arc<Metrics>,
}

/// Why [`Db::discover`] found no primary.
#[derive(Debug, thiserror::Error)]
#[error("no primary among {nodes}: every reachable node is in recovery, or none answered")]
pub struct NoPrimary {
    /// The nodes asked, by name.
    pub nodes: String,
}

impl Db {
    fn new(nodes: Vec<(String, PgPool)>, roles: Roles, token_wait: Duration) -> Db {
        Db {
            nodes: Arc::new(
                nodes
                    .into_iter()
                    .map(|(name, pool)| Node { name, pool })
                    .collect(),
            ),
            roles: Arc::new(RwLock::new(roles)),
            next: Arc::new(AtomicUsize::new(0)),
            token_wait,
            ignore_tokens: false,
            display_name: Arc::new(AtomicBool::new(false)),
            activity: None,
            metrics: Metrics::new(),
        }
    }

    /// What this service has counted (reads per node, token waits, primary changes).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Everything on one server.
    pub fn primary_only(primary: PgPool) -> Db {
        Db::with_replicas(primary, Vec::new(), Duration::ZERO)
    }

    /// A fixed primary and named replicas; a read with a token waits at most `token_wait` for a
    /// replica. Roles never change: see [`Db::discover`] for a cluster that fails over.
    pub fn with_replicas(
        primary: PgPool,
        replicas: Vec<(String, PgPool)>,
        token_wait: Duration,
    ) -> Db {
        let roles = Roles {
            primary: 0,
            replicas: (1..=replicas.len()).collect(),
        };
        let mut nodes = vec![("primary".to_string(), primary)];
        nodes.extend(replicas);
        Db::new(nodes, roles, token_wait)
    }

    /// Named nodes whose roles the service finds itself: the one node not in recovery takes
    /// writes, the others serve reads. A background task asks every [`ROLE_POLL`], so after a
    /// failover writes go to the promoted node and a node that stops answering stops serving
    /// reads. Must be called inside a Tokio runtime; the task lives as long as the runtime.
    pub async fn discover(
        nodes: Vec<(String, PgPool)>,
        token_wait: Duration,
    ) -> Result<Db, NoPrimary> {
        let answers = probe_roles(nodes.iter().map(|(_, pool)| pool)).await;
        let roles = assign_roles(None, &answers).ok_or_else(|| NoPrimary {
            nodes: nodes
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let db = Db::new(nodes, roles, token_wait);
        tokio::spawn(watch_roles(
            Arc::downgrade(&db.nodes),
            Arc::downgrade(&db.roles),
            db.metrics(),
        ));
        Ok(db)
    }

    /// The pool of the node that takes writes now.
    pub fn primary(&self) -> PgPool {
        let roles = self.roles.read().expect("roles lock");
        self.nodes[roles.primary].pool.clone()
    }

    /// The name of the node that takes writes now.
    pub fn primary_name(&self) -> String {
        let roles = self.roles.read().expect("roles lock");
        self.nodes[roles.primary].name.clone()
    }

    /// Records activity events in `store`.
    pub fn with_activity(mut self, store: crate::activity::ActivityStore) -> Db {
        self.activity = Some(store);
        self
    }

    /// Records an event after a committed write, if MongoDB is configured; returns its operation
    /// time. A failure loses the event, never the write (it is logged).
    pub async fn record_event(
        &self,
        user: i64,
        kind: &str,
        amount_minor: i64,
    ) -> Option<(u32, u32)> {
        let store = self.activity.as_ref()?;
        match store.record(user, kind, amount_minor).await {
            Ok(time) => time.map(|t| (t.time, t.increment)),
            Err(e) => {
                tracing::warn!(error = %e, "activity event not recorded");
                None
            }
        }
    }

    /// The column names are read from and written to now.
    pub fn name_column(&self) -> NameColumn {
        if self.display_name.load(Ordering::SeqCst) {
            NameColumn::DisplayName
        } else {
            NameColumn::Name
        }
    }

    /// Switches every handler sharing this `Db` to `column` (the online migration's switch step,
    /// which a fleet does with a rolling restart).
    pub fn use_name_column(&self, column: NameColumn) {
        self.display_name
            .store(column == NameColumn::DisplayName, Ordering::SeqCst);
    }

    /// The deliberately broken build: reads ignore consistency tokens, so a replica that has not
    /// caught up answers anyway. The read-your-writes checker should object.
    pub fn ignoring_tokens(mut self) -> Db {
        self.ignore_tokens = true;
        self
    }

    /// A token covering every write committed so far.
    pub async fn token(&self) -> Result<Token, ApiError> {
        let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&self.primary())
            .await?;
        Ok(Token {
            lsn: parse_lsn(&text).expect("Postgres prints LSNs as X/Y"),
            mongo: None,
        })
    }

    /// Waits up to `limit` for every replica to replay past `token`; returns the names of those
    /// that did not (down, or far behind). Used after migrations, so that no replica serves a
    /// read before it has the schema.
    pub async fn wait_for_replicas(&self, token: Token, limit: Duration) -> Vec<String> {
        let replicas = self.roles.read().expect("roles lock").replicas.clone();
        let deadline = Instant::now() + limit;
        let mut behind = Vec::new();
        for i in replicas {
            let node = &self.nodes[i];
            loop {
                if has_replayed(&node.pool, token).await.unwrap_or(false) {
                    break;
                }
                if Instant::now() >= deadline {
                    behind.push(node.name.clone());
                    break;
                }
                tokio::time::sleep(CATCH_UP_POLL * 10).await;
            }
        }
        behind
    }

    /// A connection to read from, and who it is: the next replica, once it has replayed past
    /// `token`; otherwise the primary.
    pub async fn reader(
        &self,
        token: Option<Token>,
    ) -> Result<(PoolConnection<Postgres>, String), ApiError> {
        let token = token.filter(|_| !self.ignore_tokens);
        let (primary, replica) = {
            let roles = self.roles.read().expect("roles lock");
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            let replica = (!roles.replicas.is_empty())
                .then(|| &self.nodes[roles.replicas[turn % roles.replicas.len()]]);
            (&self.nodes[roles.primary], replica)
        };
        let mut waited_out = false;
        if let Some(replica) = replica {
            if let Ok(mut conn) = replica.pool.acquire().await {
                match caught_up_within(&mut conn, token, self.token_wait).await {
                    Some(true) => {
                        self.count_read(&replica.name, token, TokenWait::ReplicaCaughtUp);
                        return Ok((conn, replica.name.clone()));
                    }
                    Some(false) => waited_out = true,
                    None => {}
                }
            }
        }
        let outcome = match waited_out {
            true => TokenWait::PrimaryAfterTimeout,
            false => TokenWait::PrimaryNoReplica,
        };
        let conn = primary.pool.acquire().await?;
        self.count_read(&primary.name, token, outcome);
        Ok((conn, primary.name.clone()))
    }

    fn count_read(&self, node: &str, token: Option<Token>, outcome: TokenWait) {
        self.metrics.read_served(node);
        if token.is_some() {
            self.metrics.token_wait(outcome);
        }
    }
}

/// Whether the replica behind `conn` replays past `token` within `wait` (polling): `Some(true)`
/// once it has (at once without a token), `Some(false)` if the wait ran out, `None` if it
/// could not answer (and so cannot serve the read either).
async fn caught_up_within(
    conn: &mut PoolConnection<Postgres>,
    token: Option<Token>,
    wait: Duration,
) -> Option<bool> {
    let Some(token) = token else {
        return Some(true);
    };
    let deadline = Instant::now() + wait;
    loop {
        if has_replayed(&mut **conn, token).await.ok()? {
            return Some(true);
        }
        if Instant::now() >= deadline {
            return Some(false);
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Whether the replica behind `executor` has replayed the WAL up to `token`
/// (`pg_last_wal_replay_lsn()`; `false` on a node that is not replaying at all).
async fn has_replayed<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    token: Token,
) -> Result<bool, sqlx::Error> {
    let replayed: Option<String> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(executor)
        .await?;
    Ok(replayed
        .as_deref()
        .and_then(parse_lsn)
        .is_some_and(|r| r >= token.lsn))
}

/// Each node's answer to `pg_is_in_recovery()`, or `None` if it did not answer in time.
async fn probe_roles<'a>(pools: impl Iterator<Item = &'a PgPool>) -> Vec<Option<bool>> {
    let asks = pools.map(|pool| async move {
        let ask = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(pool);
        match tokio::time::timeout(ROLE_PROBE_TIMEOUT, ask).await {
            Ok(Ok(in_recovery)) => Some(in_recovery),
            _ => None,
        }
    });
    futures_util::future::join_all(asks).await
}

/// Roles from the nodes' answers. The primary is a node not in recovery: the current one while
/// it still says so (a deposed primary that has not yet noticed is not preferred over it, nor
/// the other way round: Patroni demotes whichever lost the leader key), else the first. With no
/// node out of recovery the current primary is kept, so writes fail (503) until one is promoted;
/// `None` if there never was one. Replicas are the nodes that answered in recovery.
fn assign_roles(current: Option<usize>, answers: &[Option<bool>]) -> Option<Roles> {
    let writable: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i] == Some(false))
        .collect();
    let primary = match current {
        Some(c) if writable.contains(&c) || writable.is_empty() => c,
        _ => *writable.first()?,
    };
    Some(Roles {
        primary,
        replicas: (0..answers.len())
            .filter(|&i| answers[i] == Some(true))
            .collect(),
    })
}

/// Re-reads the roles every [`ROLE_POLL`] until the [`Db`] is gone.
async fn watch_roles(nodes: Weak<Vec<Node>>, roles: Weak<RwLock<Roles>>, metrics: Arc<Metrics>) {
    loop {
        tokio::time::sleep(ROLE_POLL).await;
        let (Some(nodes), Some(roles)) = (nodes.upgrade(), roles.upgrade()) else {
            return;
        };
        let answers = probe_roles(nodes.iter().map(|n| &n.pool)).await;
        let current = roles.read().expect("roles lock").primary;
        let next = assign_roles(Some(current), &answers).expect("a current primary is kept");
        let mut roles = roles.write().expect("roles lock");
        if *roles != next {
            if next.primary != roles.primary {
                metrics.primary_changed();
                tracing::info!(
                    node = %nodes[next.primary].name,
                    role = "primary",
                    was = %nodes[roles.primary].name,
                    "primary changed"
                );
            }
            *roles = next;
        }
    }
}

/// Response headers for a read served by `node`.
pub fn served_by(node: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(node) {
        headers.insert(SERVED_BY_HEADER, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_is_the_node_out_of_recovery_and_survives_a_gap() {
        let roles = |primary, replicas: &[usize]| {
            Some(Roles {
                primary,
                replicas: replicas.to_vec(),
            })
        };
        assert_eq!(
            assign_roles(None, &[Some(true), Some(false), None]),
            roles(1, &[0])
        );
        assert_eq!(assign_roles(None, &[Some(true), None]), None);
        // Mid-failover: nobody writable, the old primary is kept (its writes fail meanwhile).
        assert_eq!(
            assign_roles(Some(1), &[Some(true), None, Some(true)]),
            roles(1, &[0, 2])
        );
        // Promoted.
        assert_eq!(
            assign_roles(Some(1), &[Some(false), None, Some(true)]),
            roles(0, &[2])
        );
        // Two say they are writable: keep the current one.
        assert_eq!(
            assign_roles(Some(2), &[Some(false), None, Some(false)]),
            roles(2, &[])
        );
    }

    #[test]
    fn tokens_round_trip_through_their_header() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B_3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        let mut headers = HeaderMap::new();
        for mongo in [None, Some((1_764_000_000, 7))] {
            let token = Token {
                lsn: (3 << 32) | 0xABCDEF,
                mongo,
            };
            headers.insert(TOKEN_HEADER, token.header_value());
            assert_eq!(Token::from_headers(&headers).unwrap(), Some(token));
        }
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("pg:0/1;mongo:x"));
        assert!(Token::from_headers(&headers).is_err());
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("nonsense"));
        assert!(Token::from_headers(&headers).is_err());
    }
}
