//! `quorumlab shard`: shard-key experiments on a workload file — a table, verdicts, a chart.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use quorumlab_shard::chart::render_svg;
use quorumlab_shard::workload::Workload;
use quorumlab_shard::{run, ShardConfig, ShardReport};

/// `shard`'s arguments.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShardArgs {
    #[command(subcommand)]
    action: Option<ShardAction>,
    /// Workload file (see workloads/).
    #[arg(required = true)]
    workload: Option<PathBuf>,
    /// Only these candidate keys, comma-separated (default: all in the file).
    #[arg(long, value_delimiter = ',')]
    keys: Option<Vec<String>>,
    /// Number of shards (default: the workload's).
    #[arg(long)]
    shards: Option<usize>,
    /// Growth factors, comma-separated, run one after another on the same cluster
    /// (default: the workload's `growth`, else 1,10,100).
    #[arg(long, value_delimiter = ',')]
    growth: Option<Vec<u64>>,
    /// Seed for the write stream and the query samples.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Where to write the SVG chart (default: WORKLOAD-shard-keys.svg here).
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ShardAction {
    /// Time 5 candidate keys over about 10 million writes each; prints JSON.
    Bench {
        /// Workload to time.
        #[arg(long, default_value = "workloads/activity-events.toml")]
        workload: PathBuf,
    },
}

fn bytes(b: u64) -> String {
    match b {
        0 => "0".into(),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("-".into(), f)
}

/// Prints the per-key, per-step table and the verdicts.
pub fn print(report: &ShardReport, wall_s: f64, chart: &Path) {
    let growth: Vec<String> = report.growth.iter().map(|g| format!("{g}x")).collect();
    println!(
        "{} — {} shards, growth {}, seed {}: {:.1}M writes simulated in {wall_s:.1} s",
        report.workload,
        report.shards,
        growth.join(" -> "),
        report.seed,
        report.writes_simulated as f64 / 1e6
    );
    println!(
        "\n{:<18} {:>5} {:>10} {:>8} {:>9} {:>9} {:>6} {:>7} {:>10} {:>8} {:>9}",
        "key",
        "step",
        "writes",
        "max/mean",
        "hot shard",
        "hot chunk",
        "jumbo",
        "chunks",
        "migrated",
        "scatter",
        "shards/q"
    );
    for key in &report.keys {
        for (i, s) in key.steps.iter().enumerate() {
            println!(
                "{:<18} {:>5} {:>10} {:>8.2} {:>8.0}% {:>8.0}% {:>6} {:>7} {:>10} {:>8} {:>9}",
                if i == 0 { key.key.as_str() } else { "" },
                format!("{}x", s.growth),
                s.writes,
                s.max_over_mean,
                s.hottest_shard_share * 100.0,
                s.hottest_chunk_share * 100.0,
                s.jumbo_chunks,
                s.chunks,
                bytes(s.bytes_migrated),
                opt(s.scatter_gather_share, |x| format!("{:.0}%", x * 100.0)),
                opt(s.shards_per_query, |x| format!("{x:.2}")),
            );
        }
    }
    println!(
        "\nverdicts (at {}x)",
        report.growth.last().copied().unwrap_or(1)
    );
    for key in &report.keys {
        println!(
            "  {:<18} {:<5} {}",
            key.key,
            key.grade.to_uppercase(),
            key.verdict
        );
    }
    println!("\nchart: {}", chart.display());
}

/// Runs `shard` or `shard bench`.
pub fn command(args: ShardArgs) -> Result<()> {
    if let Some(ShardAction::Bench { workload }) = &args.action {
        return bench(workload);
    }
    let config = ShardConfig {
        shards: args.shards,
        growth: args.growth,
        seed: args.seed,
        keys: args.keys,
    };
    experiment(
        &args.workload.unwrap_or_default(),
        &config,
        args.json,
        args.chart,
    )
}

/// Runs the experiment and prints or emits JSON; writes the chart either way.
fn experiment(
    workload: &Path,
    config: &ShardConfig,
    json: bool,
    chart: Option<PathBuf>,
) -> Result<()> {
    let workload = Workload::load(workload)?;
    let started = Instant::now();
    let report = run(&workload, config)?;
    let wall_s = started.elapsed().as_secs_f64();
    let chart =
        chart.unwrap_or_else(|| PathBuf::from(format!("{}-shard-keys.svg", report.workload)));
    let tmp = chart.with_extension("svg.tmp");
    std::fs::write(&tmp, render_svg(&report))
        .with_context(|| format!("cannot write chart {}", tmp.display()))?;
    std::fs::rename(&tmp, &chart)
        .with_context(|| format!("cannot write chart {}", chart.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "report": report, "wall_s": wall_s, "chart": chart })
            )?
        );
    } else {
        print(&report, wall_s, &chart);
    }
    Ok(())
}

/// `quorumlab shard bench`: the shipped activity-events workload (about 10 million writes) under
/// its 5 candidate keys, timed; prints JSON.
fn bench(workload: &Path) -> Result<()> {
    let workload = Workload::load(workload)?;
    let config = ShardConfig {
        shards: None,
        growth: None,
        seed: 1,
        keys: None,
    };
    let started = Instant::now();
    let report = run(&workload, &config)?;
    let wall_s = started.elapsed().as_secs_f64();
    let per_key = report
        .keys
        .first()
        .map_or(0, |k| k.steps.iter().map(|s| s.writes).sum::<u64>());
    let doc = serde_json::json!({
        "workload": report.workload,
        "keys": report.keys.len(),
        "writes_per_key": per_key,
        "writes_simulated_all_keys": report.writes_simulated,
        "wall_s": (wall_s * 1000.0).round() / 1000.0,
        "target_wall_s": 10,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
