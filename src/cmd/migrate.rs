//! `quorumlab migrate-online expand|backfill|contract`: the reference service's zero-downtime
//! column migration, one step at a time, against QUORUMLAB_DATABASE_URL.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use quorumlab_service::online;

use super::serve::database_url;
use crate::runtime::runtime;

/// `migrate-online`'s arguments.
#[derive(Args)]
pub struct MigrateArgs {
    /// Which step.
    #[arg(value_parser = ["expand", "backfill", "contract"])]
    step: String,
    /// Rows per backfill transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch: i64,
    /// Pause between backfill batches, milliseconds.
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
}

/// Runs one step.
pub fn command(args: MigrateArgs) -> Result<()> {
    let database_url = database_url()?;
    runtime()?.block_on(async {
        let pool = quorumlab_service::connect(&database_url, 2).await?;
        match args.step.as_str() {
            "expand" => online::expand(&pool).await?,
            "backfill" => {
                let pause = Duration::from_millis(args.pause_ms);
                let copied = online::backfill(&pool, args.batch, pause).await?;
                println!("backfilled {copied} rows");
            }
            _ => online::contract(&pool).await?,
        }
        println!("{}: done", args.step);
        anyhow::Ok(())
    })
}
