//! What `cluster status` shows of a sharded lab: each shard, the chunks the map gives it, the rows
//! it owns, and the orphans (rows of chunks it holds a table for but no longer owns, until range
//! deletion drops them).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;

use super::lab::{chunk_table, cluster, connect, shard_host};
use super::map::ChunkMap;
use crate::lab::{Lab, LabError};
use crate::postgres::lab::one_line;

/// One shard as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Shard name (`s1`...).
    pub name: String,
    /// `host:port` of its Postgres.
    pub endpoint: String,
    /// Whether its Postgres answered.
    pub up: bool,
    /// Chunks the map names it the owner of.
    pub chunks: Vec<u32>,
    /// Rows in the chunks it owns.
    pub owned_rows: Option<i64>,
    /// Rows in chunk tables it holds but does not own.
    pub orphan_rows: Option<i64>,
}

/// Every shard's status and the map's collection version, each shard asked within `timeout`.
pub async fn status(lab: &Lab, timeout: Duration) -> Result<(u64, Vec<ShardStatus>), LabError> {
    let shards = cluster(lab)?.shards;
    let chunks = cluster(lab)?.chunks;
    let view = ChunkMap::connect(lab).await?.read(chunks).await?;
    let mut out = Vec::with_capacity(shards);
    for shard in 0..shards {
        let owned: Vec<u32> = (0..chunks as u32)
            .filter(|&c| view.table[c as usize].shard == shard)
            .collect();
        let rows = match connect(lab, shard, timeout).await {
            Ok(mut conn) => Some(count_rows(&mut conn, &owned).await?),
            Err(_) => None,
        };
        out.push(ShardStatus {
            name: format!("s{}", shard + 1),
            endpoint: format!("{}:{}", lab.addr(shard_host(shard)), cluster(lab)?.port),
            up: rows.is_some(),
            chunks: owned,
            owned_rows: rows.map(|(owned, _)| owned),
            orphan_rows: rows.map(|(_, orphans)| orphans),
        });
    }
    Ok((view.version, out))
}

/// (rows in `owned` chunks, rows in every other chunk table) on one shard.
async fn count_rows(conn: &mut PgConnection, owned: &[u32]) -> Result<(i64, i64), LabError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'
         AND tablename LIKE 'ql\\_chunk\\_%' ORDER BY tablename",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(pg)?;
    let (mut owned_rows, mut orphan_rows) = (0, 0);
    for table in tables {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await
            .map_err(pg)?;
        if owned.iter().any(|&c| chunk_table(c) == table) {
            owned_rows += rows;
        } else {
            orphan_rows += rows;
        }
    }
    Ok((owned_rows, orphan_rows))
}

/// A failed read of a shard's rows, in one line.
pub(super) fn pg(e: sqlx::Error) -> LabError {
    LabError::Postgres(format!(
        "reading a shard's rows: {}",
        one_line(&e.to_string())
    ))
}
