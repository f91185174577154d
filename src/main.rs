//! `quorumlab`: the command line of the lab.
//!
//! Each subcommand is a thin shell over the library crates: `sim` runs one seed of a scenario in
//! the simulator (`quorumlab-sim`), `sim sweep` many seeds, `sim bench` measures the simulator and
//! the checker, `demo` is the guided first run. Every user-facing error is one line on stderr and
//! exit code 2.

mod bench;
mod load;
mod pg;
mod real;
mod shard;
mod show;

use std::io::IsTerminal;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use quorumlab_experiment::Scenario;
use quorumlab_sim::sweep::sweep;
use quorumlab_sim::RunConfig;

/// A lab for distributed databases: simulate partitions and elections deterministically, then
/// (soon) measure the same scenarios on real clusters.
#[derive(Parser)]
#[command(name = "quorumlab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario in the deterministic simulator (or sweep seeds, or benchmark).
    Sim(SimArgs),
    /// Shard-key experiments: how candidate keys behave as writes grow (or `shard bench`).
    Shard(ShardArgs),
    /// A short, self-explaining simulated partition and election. Needs nothing installed.
    Demo,
    /// List the built-in scenarios.
    Scenarios,
    /// Bring a real local cluster up or down, or show its state (hosts are network namespaces; root).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        /// Where the lab keeps its state, data and logs.
        #[arg(long, global = true, default_value = real::STATE_DIR_DEFAULT)]
        state_dir: PathBuf,
    },
    /// Run a scenario against a real cluster (a fresh one per run) and measure it.
    Run {
        /// Built-in scenario name or path to a scenario .toml file.
        scenario: String,
        /// How many runs.
        #[arg(long, default_value_t = 1)]
        runs: u64,
        /// Postgres scenarios without faults (pg-lag): measure your own cluster instead of a lab.
        /// Give every node's URL (postgres://user:password@host:port/db), primary and replicas in
        /// any order; it creates the tables ql_writes and ql_heartbeat there.
        #[arg(long = "target", value_name = "URL", conflicts_with = "runs")]
        targets: Vec<String>,
        /// Override the scenario's node count.
        #[arg(long)]
        nodes: Option<usize>,
        /// Print every run as JSON.
        #[arg(long)]
        json: bool,
        /// Where the lab keeps its state, data and logs.
        #[arg(long, default_value = real::STATE_DIR_DEFAULT)]
        state_dir: PathBuf,
    },
    /// Simulator beside reality: N seeds and N real runs of the same scenario, metric by metric.
    Compare {
        /// Built-in scenario name or path to a scenario .toml file.
        scenario: String,
        /// Seeds in the simulator and runs on the real cluster.
        #[arg(long, default_value_t = 5)]
        runs: u64,
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
        /// Where the lab keeps its state, data and logs.
        #[arg(long, default_value = real::STATE_DIR_DEFAULT)]
        state_dir: PathBuf,
    },
    /// Serve the reference HTTP API (profiles and balances in Postgres) until Ctrl-C. The nodes are
    /// the lab's Postgres cluster (`--lab`), or QUORUMLAB_DATABASE_URL plus the comma-separated
    /// QUORUMLAB_REPLICA_URLS; MongoDB (activity events) is QUORUMLAB_MONGODB_URI. URLs never come
    /// from the command line (it would show in `ps`). The service asks the nodes which one is
    /// primary and follows it through failovers; the others serve reads.
    Serve {
        /// Serve the Postgres cluster of the lab in --state-dir (`cluster up postgres`).
        #[arg(long)]
        lab: bool,
        /// Where the lab keeps its state (with --lab).
        #[arg(long, default_value = real::STATE_DIR_DEFAULT, requires = "lab")]
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
    },
    /// Load-test the reference service (`serve`): an open model at a fixed rate with
    /// coordinated-omission corrected p50/p95/p99 per endpoint, or `--find-max` for the highest rate
    /// whose reads keep p99 under a limit. Creates its own accounts first.
    Load {
        /// The service's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// read (lookups only), read-heavy (90% reads) or write (70% writes, reads of own writes).
        #[arg(long, default_value = "read-heavy", value_parser = ["read", "read-heavy", "write"])]
        mix: String,
        /// Requests per second offered (with --find-max, the first rate tried).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        /// Seconds measured (per rate, with --find-max).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        duration: u64,
        /// Accounts created before the test, which it reads and moves money between.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
        accounts: u64,
        /// Double the rate until a step fails, then narrow down to within 10%.
        #[arg(long)]
        find_max: bool,
        /// With --find-max: the bar for every read endpoint's p99, milliseconds.
        #[arg(long, default_value_t = 50.0)]
        p99_limit_ms: f64,
        /// With --find-max: the highest rate tried.
        #[arg(long, default_value_t = 50_000)]
        ceiling: u32,
        /// Goose's HTML report (with --find-max, one per rate: NAME-RATE.html).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Seeds the request mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run the reference service's zero-downtime column migration (users.name -> display_name)
    /// against QUORUMLAB_DATABASE_URL while the service keeps serving. Order: expand, backfill,
    /// restart instances with `serve --name-column display-name`, contract.
    MigrateOnline {
        /// Which step.
        #[arg(value_parser = ["expand", "backfill", "contract"])]
        step: String,
        /// Rows per backfill transaction.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
        /// Pause between backfill batches, milliseconds.
        #[arg(long, default_value_t = 10)]
        pause_ms: u64,
    },
    /// Run the node agent on this host: the gRPC service the real-cluster driver uses for faults.
    Agent {
        /// Agent configuration file (listen address, token file, services, peers).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SimArgs {
    #[command(subcommand)]
    action: Option<SimAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Built-in scenario name (see `quorumlab scenarios`) or path to a scenario .toml file.
    #[arg(required = true)]
    scenario: Option<String>,
    /// Seed: the same seed gives the same run, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Walk through the run event by event (Enter: next event, q: quit).
    #[arg(long, conflicts_with = "json")]
    step: bool,
    /// Print the full trace, history and summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write a self-contained HTML report (timeline and message diagram) into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// List every client operation in the timeline instead of summarising them.
    #[arg(long)]
    ops: bool,
    /// Deliberately broken build: serve reads from any node's local state (the checker should object).
    #[arg(long)]
    stale_reads: bool,
    /// Simulated milliseconds per world step; larger is faster but rounds latencies coarser.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=20))]
    step_ms: u64,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start a cluster: `cluster up etcd --nodes 3` or `cluster up postgres --replicas 2`.
    Up {
        /// The system to run: etcd, or postgres (Patroni-managed, on its own etcd).
        system: String,
        /// etcd members.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Postgres streaming replicas besides the primary.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Postgres: the scenario whose [postgres] section gives Patroni's settings.
        #[arg(long, default_value = "pg-failover")]
        scenario: String,
        /// Postgres: replication mode (default: the scenario's first).
        #[arg(long, value_parser = ["async", "sync"])]
        mode: Option<String>,
    },
    /// Show members, leader, term and health.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the lab started and remove its hosts (safe to repeat).
    Down,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ShardArgs {
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

#[derive(Subcommand)]
enum SimAction {
    /// Run many seeds in parallel and report distributions and any seed that broke an invariant.
    Sweep {
        /// Built-in scenario name or path to a scenario .toml file.
        scenario: String,
        /// Seeds to run, as FIRST..LAST (inclusive).
        #[arg(long, default_value = "1..100", value_parser = parse_seeds)]
        seeds: RangeInclusive<u64>,
        /// Override the scenario's node count.
        #[arg(long)]
        nodes: Option<usize>,
        /// Print the report (and per-seed summaries) as JSON.
        #[arg(long)]
        json: bool,
        /// Deliberately broken build: serve reads from any node's local state.
        #[arg(long)]
        stale_reads: bool,
        /// Simulated milliseconds per world step; larger is faster but rounds latencies coarser.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=20))]
        step_ms: u64,
    },
    /// Measure simulator speed and checker speed; prints JSON.
    Bench {
        /// Seeds in the sweep benchmark.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Simulated milliseconds per world step.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=20))]
        step_ms: u64,
    },
}

fn parse_seeds(s: &str) -> std::result::Result<RangeInclusive<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a range like 1..1000"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a seed number"))?;
    let b: u64 = b
        .trim_start_matches('=')
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a seed number"))?;
    if a > b {
        return Err(format!("empty seed range {s}"));
    }
    Ok(a..=b)
}

/// The lab ran to completion and found seeds that broke a safety property.
#[derive(Debug)]
struct SafetyViolation(String);

impl std::fmt::Display for SafetyViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SafetyViolation {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            // Exit 1: the lab ran and found a safety violation. Exit 2: the input was wrong.
            ExitCode::from(if e.is::<SafetyViolation>() { 1 } else { 2 })
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Sim(SimArgs { action: None, run }) => sim(run),
        Command::Sim(SimArgs {
            action:
                Some(SimAction::Sweep {
                    scenario,
                    seeds,
                    nodes,
                    json,
                    stale_reads,
                    step_ms,
                }),
            ..
        }) => {
            let scenario = load(&scenario, nodes)?;
            let template = RunConfig {
                stale_reads,
                step: Duration::from_millis(step_ms),
                ..RunConfig::seeded(0)
            };
            sweep_command(&scenario, seeds, json, &template)
        }
        Command::Sim(SimArgs {
            action: Some(SimAction::Bench { seeds, step_ms }),
            ..
        }) => bench::run(seeds, Duration::from_millis(step_ms)),
        Command::Shard(ShardArgs {
            action: Some(ShardAction::Bench { workload }),
            ..
        }) => shard::bench(&workload),
        Command::Shard(args) => {
            let config = quorumlab_shard::ShardConfig {
                shards: args.shards,
                growth: args.growth,
                seed: args.seed,
                keys: args.keys,
            };
            shard::command(
                &args.workload.unwrap_or_default(),
                &config,
                args.json,
                args.chart,
            )
        }
        Command::Demo => demo(),
        Command::Agent { config } => agent(&config),
        Command::Serve {
            lab,
            state_dir,
            listen,
            connections,
            token_wait_ms,
            name_column,
        } => serve(
            lab.then_some(state_dir.as_path()),
            listen,
            connections,
            Duration::from_millis(token_wait_ms),
            name_column.as_deref(),
        ),
        Command::Load {
            target,
            mix,
            rate,
            duration,
            accounts,
            find_max,
            p99_limit_ms,
            ceiling,
            report,
            seed,
            json,
        } => load::command(load::LoadArgs {
            plan: quorumlab_loadtest::Plan {
                target: target.trim_end_matches('/').to_string(),
                mix: quorumlab_loadtest::Mix::named(&mix).expect("clap checked the name"),
                rate,
                duration: Duration::from_secs(duration),
                html_report: report,
                seed,
            },
            accounts: accounts as usize,
            find_max,
            p99_limit_ms,
            ceiling,
            json,
        }),
        Command::MigrateOnline {
            step,
            batch,
            pause_ms,
        } => migrate_online(&step, batch, Duration::from_millis(pause_ms)),
        Command::Cluster { action, state_dir } => match action {
            ClusterAction::Up {
                system,
                nodes,
                replicas,
                scenario,
                mode,
            } => match system.as_str() {
                "postgres" => real::up_postgres(
                    &load(&scenario, None)?,
                    replicas,
                    mode.as_deref(),
                    &state_dir,
                ),
                _ => real::up(&system, nodes, &state_dir),
            },
            ClusterAction::Status { json } => real::status(&state_dir, json),
            ClusterAction::Down => real::down(&state_dir),
        },
        Command::Run {
            scenario,
            targets,
            nodes,
            json,
            ..
        } if !targets.is_empty() => pg::run_targets(&load(&scenario, nodes)?, &targets, json),
        Command::Run {
            scenario,
            runs,
            nodes,
            json,
            state_dir,
            ..
        } => real::run(&load(&scenario, nodes)?, runs, json, &state_dir),
        Command::Compare {
            scenario,
            runs,
            json,
            state_dir,
        } => real::compare(&load(&scenario, None)?, runs, json, &state_dir),
        Command::Scenarios => {
            for name in Scenario::builtin_names() {
                let s = Scenario::load(name)?;
                let first = s.description.split(". ").next().unwrap_or_default();
                println!(
                    "{name:<26} {} nodes, {:>3} s  {first}.",
                    s.topology.nodes,
                    s.duration_ms / 1000
                );
            }
            Ok(())
        }
    }
}

fn load(name: &str, nodes: Option<usize>) -> Result<Scenario> {
    let scenario = Scenario::load(name)?;
    Ok(match nodes {
        Some(n) => scenario.with_nodes(n)?,
        None => scenario,
    })
}

fn sim(args: RunArgs) -> Result<()> {
    let scenario = load(args.scenario.as_deref().unwrap_or_default(), args.nodes)?;
    if let quorumlab_experiment::System::Postgres(_) = scenario.system {
        return pg::sim(&scenario, args.seed, args.json);
    }
    let config = RunConfig {
        stale_reads: args.stale_reads,
        record_messages: args.report.is_some(),
        record_views: args.step,
        step: Duration::from_millis(args.step_ms),
        ..RunConfig::seeded(args.seed)
    };
    let out = quorumlab_sim::run(&scenario, &config)?;
    if let Some(dir) = &args.report {
        let path = show::write_report(&out, dir)?;
        if !args.json {
            eprintln!("report written to {}", path.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if args.step {
        if !std::io::stdin().is_terminal() {
            eprintln!("(stdin is not a terminal: stepping reads one line per event)");
        }
        show::step_through(&out)?;
    } else {
        show::print_run(&out, args.ops);
    }
    Ok(())
}

fn sweep_command(
    scenario: &Scenario,
    seeds: RangeInclusive<u64>,
    json: bool,
    template: &RunConfig,
) -> Result<()> {
    let count = seeds.end() - seeds.start() + 1;
    let bar = indicatif::ProgressBar::new(count);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds  {elapsed_precise} (eta {eta})",
        )
        .context("progress bar template")?,
    );
    let started = std::time::Instant::now();
    let (report, summaries) = sweep(scenario, seeds, template, &|done| bar.set_position(done))?;
    bar.finish_and_clear();
    if json {
        let value = serde_json::json!({ "report": report, "runs": summaries });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        show::print_sweep(&report, started.elapsed());
    }
    if !report.unsafe_seeds.is_empty() {
        return Err(SafetyViolation(format!(
            "{} seed(s) broke a safety property; replay one with `quorumlab sim {} --seed {} --step-ms {}{}`",
            report.unsafe_seeds.len(),
            scenario.name,
            report.unsafe_seeds[0].0,
            template.step.as_millis(),
            if template.stale_reads { " --stale-reads" } else { "" }
        ))
        .into());
    }
    Ok(())
}

fn database_url() -> Result<String> {
    std::env::var("QUORUMLAB_DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("set QUORUMLAB_DATABASE_URL to a postgres:// URL (credentials come from the environment, never from the command line)")
    })
}

fn migrate_online(step: &str, batch: i64, pause: Duration) -> Result<()> {
    use quorumlab_service::online;
    let database_url = database_url()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let pool = quorumlab_service::connect(&database_url, 2).await?;
        match step {
            "expand" => online::expand(&pool).await?,
            "backfill" => {
                let copied = online::backfill(&pool, batch, pause).await?;
                println!("backfilled {copied} rows");
            }
            _ => online::contract(&pool).await?,
        }
        println!("{step}: done");
        anyhow::Ok(())
    })
}

fn serve(
    lab: Option<&std::path::Path>,
    listen: std::net::SocketAddr,
    connections: u32,
    token_wait: Duration,
    name_column: Option<&str>,
) -> Result<()> {
    use quorumlab_cluster::postgres::PgNodes;
    use quorumlab_service::routing::NameColumn;
    let nodes = match lab {
        Some(state_dir) => PgNodes::of_lab(&quorumlab_cluster::etcd::Lab::load(state_dir)?)?,
        None => {
            let mut urls = vec![database_url()?];
            let replicas = std::env::var("QUORUMLAB_REPLICA_URLS").unwrap_or_default();
            urls.extend(
                replicas
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from),
            );
            PgNodes::from_urls(&urls)?
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut db =
            quorumlab_service::connect_cluster(nodes.named_options(), connections, token_wait)
                .await?;
        eprintln!(
            "quorumlab serve: listening on http://{listen}; primary {} of {} node(s) (Ctrl-C stops)",
            db.primary_name(),
            nodes.len()
        );
        let column = match name_column {
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

fn agent(config: &std::path::Path) -> Result<()> {
    use quorumlab_cluster::agent::{serve, AgentConfig, NodeAgent};
    let config = AgentConfig::load(config)?;
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
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
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

fn demo() -> Result<()> {
    let scenario = Scenario::load("etcd-leader-isolate")?;
    println!("quorumlab demo: a simulated 3-node etcd cluster loses touch with its leader.\n");
    println!("Everything below is simulated: real Raft code (raft-rs, a port of etcd's library),");
    println!("a simulated network and clock (turmoil), and clients writing and reading keys.");
    println!(
        "The run is deterministic: `quorumlab sim etcd-leader-isolate --seed 1` prints it again.\n"
    );
    let out = quorumlab_sim::run(&scenario, &RunConfig::seeded(1))?;
    show::print_run(&out, false);
    println!(
        "\nWhat happened: cut off from the majority, the leader could commit nothing more. The other"
    );
    println!(
        "two nodes stopped hearing heartbeats; when an election timer ran out, that node first"
    );
    println!("asked for pre-votes (which do not bump the term), then campaigned and won. The old");
    println!(
        "leader stepped down on its own (check-quorum: no majority heard for an election timeout)."
    );
    println!(
        "Writes sent to the isolated leader never committed, so clients saw them fail or time"
    );
    println!("out — and the checker confirms no client saw an acknowledged write vanish or a stale read.\n");
    println!(
        "Next: `quorumlab sim etcd-leader-isolate --step` to walk through it, `--report out/` for"
    );
    println!(
        "pictures, `quorumlab sim sweep etcd-leader-isolate --seeds 1..200` for distributions."
    );
    Ok(())
}
