//! `quorumlab serve`: the reference HTTP API over a Postgres cluster (the lab's, or URLs from the
//! environment), following its primary through failovers, until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use quorumlab_cluster::postgres::PgNodes;
use quorumlab_service::routing::NameColumn;

use crate::lab_setup::STATE_DIR_DEFAULT;
use crate::runtime::runtime;

/// `serve`'s arguments.
#[derive(Args)]
pub struct ServeArgs {
    /// Serve the Postgres cluster of the lab in --state-dir (`cluster up postgres`).
    #[arg(long)]
    lab: bool,
    /// Where the lab keeps its state (with --lab).
    #[arg(long, default_value = STATE_DIR_DEFAULT, requires = "lab")]
    state_dir: PathBuf,
    /// Address to listen on (loopback unless you say otherwise).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Database connections in the pool (per server).
    #[arg(long, default_value_t = 20)]
    connections: u32,
    /// How long a read with a consistency token waits for a replica before the primary answers.
    #[arg(long, default_value_t = 100)]
    token_wait_ms: u64,
    /// Column holding users' names (default: `display-name` once `name` is gone, else `name`);
    /// the online migration's switch step restarts instances with `display-name`.
    #[arg(long, value_parser = ["name", "display-name"])]
    name_column: Option<String>,
}

/// The primary's URL, from the environment only (a command line would show it in `ps`).
pub fn database_url() -> Result<String> {
    std::env::var("QUORUMLAB_DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("set QUORUMLAB_DATABASE_URL to a postgres:// URL (credentials come from the environment, never from the command line)")
    })
}

/// The nodes to serve: the lab's, or the primary and replica URLs from the environment.
fn nodes(args: &ServeArgs) -> Result<PgNodes> {
    if args.lab {
        return Ok(PgNodes::of_lab(&quorumlab_cluster::lab::Lab::load(
            &args.state_dir,
        )?)?);
    }
    let mut urls = vec![database_url()?];
    let replicas = std::env::var("QUORUMLAB_REPLICA_URLS").unwrap_or_default();
    urls.extend(
        replicas
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from),
    );
    Ok(PgNodes::from_urls(&urls)?)
}

/// Serves until Ctrl-C.
pub fn command(args: ServeArgs) -> Result<()> {
    let nodes = nodes(&args)?;
    let (listen, token_wait) = (args.listen, Duration::from_millis(args.token_wait_ms));
    runtime()?.block_on(async {
        let mut db =
            quorumlab_service::connect_cluster(nodes.named_options(), args.connections, token_wait)
                .await?;
        tracing::info!(
            listen = %format!("http://{listen}"),
            primary = %db.primary_name(),
            nodes = nodes.len(),
            "serving (Ctrl-C stops)"
        );
        let column = match args.name_column.as_deref() {
            Some("display-name") => NameColumn::DisplayName,
            Some(_) => NameColumn::Name,
            None => quorumlab_service::online::current_name_column(&db.primary())
                .await
                .map_err(|e| quorumlab_service::ServeError::Database(e.to_string()))?,
        };
        db.use_name_column(column);
        if let Ok(uri) = std::env::var("QUORUMLAB_MONGODB_URI") {
            let store = quorumlab_service::activity::ActivityStore::connect(&uri, "quorumlab")
                .await
                .map_err(|e| quorumlab_service::ServeError::Activity(e.to_string()))?;
            db = db.with_activity(store);
        }
        quorumlab_service::serve(listen, db).await
    })?;
    Ok(())
}
