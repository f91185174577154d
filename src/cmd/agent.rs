//! `quorumlab agent --config FILE`: the node agent, the gRPC service through which the real-cluster
//! driver starts, signals and cuts off processes on one host.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use quorumlab_cluster::agent::{serve, AgentConfig, NodeAgent};

use crate::runtime::runtime;

/// `agent`'s arguments.
#[derive(Args)]
pub struct AgentArgs {
    /// Agent configuration file (listen address, token file, services, peers).
    #[arg(long)]
    config: PathBuf,
}

/// Serves the agent until SIGTERM or Ctrl-C.
pub fn command(args: AgentArgs) -> Result<()> {
    let config = AgentConfig::load(&args.config)?;
    let token = std::fs::read_to_string(&config.token_file)
        .with_context(|| {
            format!(
                "cannot read agent token file {}",
                config.token_file.display()
            )
        })?
        .trim()
        .to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "agent token file {} is empty",
        config.token_file.display()
    );
    runtime()?.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        serve(NodeAgent::new(config, token), shutdown).await
    })?;
    Ok(())
}
