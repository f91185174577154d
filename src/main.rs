//! `quorumlab`: the command line of the lab.
//!
//! This file parses and dispatches; each command lives in its own file under [`cmd`], and
//! everything that differs between the systems under test (etcd, Postgres) lives under [`system`],
//! chosen once per scenario by [`system::of`]. Every user-facing error is one line on stderr:
//! exit 2 for bad input, exit 1 when the lab ran and found a safety violation, exit 3 when the
//! checker could not decide.

mod cmd;
mod lab_setup;
mod logging;
mod machine;
mod runtime;
mod system;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A lab for distributed databases: simulate partitions and elections deterministically, then
/// measure the same scenarios on real clusters and put the two side by side.
#[derive(Parser)]
#[command(name = "quorumlab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: human or json (one object per line). The long-running
    /// commands (serve, agent, run, compare, machines) log by default; RUST_LOG filters, e.g.
    /// RUST_LOG=quorumlab_sim::trace=debug shows a simulated run's trace, stamped with sim_us.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario in the deterministic simulator (or sweep seeds, or benchmark).
    Sim(cmd::sim::SimArgs),
    /// Shard-key experiments: how candidate keys behave as writes grow (or `shard bench`).
    Shard(cmd::shard::ShardArgs),
    /// A short, self-explaining simulated partition and election. Needs nothing installed.
    Demo,
    /// Check a history for linearizability: the lab's JSON, a Jepsen EDN history (register,
    /// cas-register, independent keys) or a jepsen.log; `--bench DIR` times the checker. Exit 0
    /// linearizable, 1 not, 3 unknown, 2 bad input.
    Check(cmd::check::CheckArgs),
    /// List the built-in scenarios.
    Scenarios,
    /// Bring a real local cluster up or down, or show its state (hosts are network namespaces; root).
    Cluster(cmd::cluster::ClusterArgs),
    /// Local machines that behave like VMs (systemd-nspawn, own systemd and SSH; root), the
    /// inventory that Ansible and `run --inventory` read, and the lab's TLS material.
    Machines(cmd::machines::MachinesArgs),
    /// Run a scenario against a real cluster (a fresh one per run) and measure it.
    Run(cmd::run::RunArgs),
    /// Simulator beside reality: N seeds and N real runs of the same scenario, metric by metric.
    Compare(cmd::compare::CompareArgs),
    /// Serve the reference HTTP API (profiles and balances in Postgres) until Ctrl-C. The nodes are
    /// the lab's Postgres cluster (`--lab`), or QUORUMLAB_DATABASE_URL plus the comma-separated
    /// QUORUMLAB_REPLICA_URLS; MongoDB (activity events) is QUORUMLAB_MONGODB_URI. URLs never come
    /// from the command line (it would show in `ps`). The service asks the nodes which one is
    /// primary and follows it through failovers; the others serve reads.
    Serve(cmd::serve::ServeArgs),
    /// Load-test the reference service (`serve`): an open model at a fixed rate with
    /// coordinated-omission corrected p50/p95/p99 per endpoint, or `--find-max` for the highest rate
    /// whose reads keep p99 under a limit. Creates its own accounts first.
    Load(cmd::load::LoadArgs),
    /// Run the reference service's zero-downtime column migration (users.name -> display_name)
    /// against QUORUMLAB_DATABASE_URL while the service keeps serving. Order: expand, backfill,
    /// restart instances with `serve --name-column display-name`, contract.
    MigrateOnline(cmd::migrate::MigrateArgs),
    /// The durability lab's key-value store on this disk: put, get, a crash test that kills a
    /// writing process with SIGKILL over and over, real power cuts of an ext4 loop disk, and
    /// crashes on a simulated disk, each checking every acknowledged write.
    Kv(cmd::kv::KvArgs),
    /// Storage engines side by side: Postgres (B-tree) and RocksDB (LSM) on identical key/value
    /// streams at one or more scales; throughput, coordinated-omission corrected p50/p99, bytes
    /// on disk, space and write amplification, RocksDB's compaction debt, and a markdown report
    /// with SVG charts and a verdict table. Postgres is a server of the run's own, or the
    /// database QUORUMLAB_ENGINES_POSTGRES_URL names.
    Engines(cmd::engines::EnginesArgs),
    /// Run the node agent on this host: the gRPC service the real-cluster driver uses for faults.
    Agent(cmd::agent::AgentArgs),
}

/// Whether the command only prints (as opposed to serving, or driving a lab that must clean up).
fn prints_for_a_pipe(command: &Command) -> bool {
    matches!(
        command,
        Command::Sim(_)
            | Command::Shard(_)
            | Command::Demo
            | Command::Scenarios
            | Command::Check(_)
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if prints_for_a_pipe(&cli.command) {
        // `quorumlab sim ... | head` should stop quietly when head has read enough, as other
        // command-line tools do, not panic on a closed stdout. Rust ignores SIGPIPE by default;
        // the servers keep that (a client hanging up must not kill them).
        // SAFETY: resetting a signal's disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Every command logs through the same subscriber; only the long-running ones log at the
    // default level, and the simulator's trace shows with RUST_LOG=quorumlab_sim::trace=debug.
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Sim(args) => cmd::sim::command(args),
        Command::Shard(args) => cmd::shard::command(args),
        Command::Demo => cmd::demo::command(),
        Command::Check(args) => cmd::check::command(args),
        Command::Scenarios => cmd::scenarios::command(),
        Command::Cluster(args) => cmd::cluster::command(args),
        Command::Machines(args) => cmd::machines::command(args),
        Command::Run(args) => cmd::run::command(args),
        Command::Compare(args) => cmd::compare::command(args),
        Command::Serve(args) => cmd::serve::command(args),
        Command::Load(args) => cmd::load::command(args),
        Command::MigrateOnline(args) => cmd::migrate::command(args),
        Command::Agent(args) => cmd::agent::command(args),
        Command::Kv(args) => cmd::kv::command(args),
        Command::Engines(args) => cmd::engines::command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(
                if e.is::<cmd::SafetyViolation>()
                    || e.is::<system::SweepFailed>()
                    || e.is::<cmd::Mismatch>()
                {
                    1
                } else if e.is::<cmd::Inconclusive>() {
                    3
                } else {
                    2
                },
            )
        }
    }
}
