//! `quorumlab engines`: Postgres (B-tree) and RocksDB (LSM) on identical key/value streams, and
//! a report of when each wins and why. Everything is checked before anything is made: a bad
//! scale, mix or key distribution, a data directory with something in it, or an unreachable
//! Postgres is one line and exit 2, with nothing written.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use quorumlab_engines::engine::{Durability, Shared};
use quorumlab_engines::postgres::Postgres;
use quorumlab_engines::report;
use quorumlab_engines::server::OwnPostgres;
use quorumlab_engines::workload::{KeyDist, Mix, Scale};
use quorumlab_engines::{Config, Measured, Outcome, PostgresSource, Progress};

use crate::runtime::progress;

/// The environment variable naming a Postgres database to use instead of a server of the run's
/// own (a URL on the command line would show in `ps`).
pub const POSTGRES_URL_ENV: &str = "QUORUMLAB_ENGINES_POSTGRES_URL";

/// `engines`'s arguments.
#[derive(Args)]
pub struct EnginesArgs {
    /// Key counts, comma-separated: e.g. 1m (the default), or 1m,10m,100m. The largest should
    /// outgrow --cache-mib.
    #[arg(long, default_value = "1m")]
    scale: String,
    /// Workloads, comma-separated: write-heavy (90% writes), read-heavy (90% reads), mixed
    /// (50/50), range-scan (95% scans of 1-100 keys, 5% writes), or READS/WRITES/SCANS
    /// percentages such as 70/20/10.
    #[arg(long, default_value = "write-heavy,read-heavy,mixed,range-scan")]
    workload: String,
    /// Key distributions, comma-separated: uniform, zipfian (YCSB's, theta 0.99).
    #[arg(long, default_value = "uniform,zipfian")]
    keys: String,
    /// synced (each commit waits for its WAL to be synced) or relaxed (written, not synced).
    #[arg(long, default_value = "synced")]
    durability: String,
    /// Cache memory for each engine: Postgres shared_buffers and RocksDB's block cache, in MiB.
    /// With QUORUMLAB_ENGINES_POSTGRES_URL, the server's own shared_buffers instead (RocksDB
    /// gets the same).
    #[arg(long, default_value_t = 128)]
    cache_mib: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Client threads, the same for both engines (Postgres: a connection each).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Length of each measured phase (closed loop, then open loop), in ms.
    #[arg(long, default_value_t = 5_000)]
    phase_ms: u64,
    /// The open loop's rate in operations per second; by default 70% of the slower engine's
    /// closed-loop throughput on that workload.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the key and value streams (the same streams for both engines).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the engines keep their data: a new or empty directory (default: a new one under
    /// /var/tmp, on disk rather than tmpfs). What the run made there is removed at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the report goes: report.md, report.json and one SVG per scale and metric.
    #[arg(long, default_value = "engines-report")]
    out: PathBuf,
    /// Print the outcome as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Measure nothing: write the report again (into --out) from a report.json an earlier run
    /// wrote, with that run's date, machine and command.
    #[arg(long, value_name = "REPORT_JSON")]
    report_from: Option<PathBuf>,
}

fn list<T, E: std::fmt::Display>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>> {
    let items: Vec<T> = text
        .split(',')
        .map(|item| parse(item).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<Result<_>>()?;
    Ok(items)
}

fn shared(args: &EnginesArgs) -> Result<Shared> {
    let durability = match args.durability.as_str() {
        "synced" => Durability::Synced,
        "relaxed" => Durability::Relaxed,
        other => bail!("durability {other:?} does not parse: give synced or relaxed"),
    };
    if args.threads == 0 || args.threads > 256 {
        bail!("--threads {} is out of range: give 1 to 256", args.threads);
    }
    if !(1..=1 << 20).contains(&args.value_bytes) {
        bail!(
            "--value-bytes {} is out of range: give 1 to 1048576",
            args.value_bytes
        );
    }
    if args.cache_mib < 16 {
        bail!(
            "--cache-mib {} is too small: give at least 16",
            args.cache_mib
        );
    }
    if args.phase_ms < 100 {
        bail!(
            "--phase-ms {} is too short: give at least 100",
            args.phase_ms
        );
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of operations per second");
    }
    Ok(Shared {
        durability,
        cache_mib: args.cache_mib,
        value_bytes: args.value_bytes,
        threads: args.threads,
    })
}

/// The data directory, checked: new, or existing and empty. Returns whether this run makes it.
fn check_data_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "data directory {} is not empty; give a new or empty one (quorumlab never \
                     deletes data it did not make)",
                    dir.display()
                );
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("data directory {}", dir.display())),
    }
}

/// The command.
pub fn command(args: EnginesArgs) -> Result<()> {
    if let Some(path) = &args.report_from {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let outcome: Outcome = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an engines report.json", path.display()))?;
        return finish(&args, &outcome);
    }
    let mut scales = list(&args.scale, Scale::parse)?;
    scales.dedup();
    let mixes = list(&args.workload, Mix::parse)?;
    let dists = list(&args.keys, KeyDist::parse)?;
    let mut shared = shared(&args)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/var/tmp/quorumlab-engines-{}", std::process::id()))
    });
    let make_dir = check_data_dir(&data_dir)?;
    let postgres = match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) => {
            // The server's shared_buffers is what Postgres has; RocksDB gets the same.
            shared.cache_mib = Postgres::probe(&url)?;
            PostgresSource::Url(url)
        }
        Err(_) if OwnPostgres::installed() => PostgresSource::Own,
        Err(_) => bail!(
            "Postgres 15 is not installed (apt-get install postgresql-15), and {POSTGRES_URL_ENV} \
             names no server"
        ),
    };
    stop_on_ctrl_c();
    if make_dir {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot make data directory {}", data_dir.display()))?;
    }
    let config = Config {
        scales,
        mixes,
        dists,
        shared,
        phase: Duration::from_millis(args.phase_ms),
        rate_per_s: args.rate,
        seed: args.seed,
        data_dir: data_dir.clone(),
        postgres,
        stop: &STOP,
    };
    let result = quorumlab_engines::run(&config, &Bars::default());
    clean_up(&data_dir, make_dir);
    // Ctrl-C reaches the own Postgres too (same process group), so the error the run ended on
    // may be a closed connection: the cause to report is the interruption.
    let mut outcome = match result {
        Err(_) if STOP.load(Ordering::Relaxed) => return Err(quorumlab_engines::Interrupted.into()),
        other => other?,
    };
    outcome.measured = Measured {
        date: crate::machine::today(),
        machine: crate::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    finish(&args, &outcome)
}

/// Writes the report and prints the outcome.
fn finish(args: &EnginesArgs, outcome: &Outcome) -> Result<()> {
    write_report(args, outcome)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_summary(outcome, &args.out);
    }
    Ok(())
}

/// Set by Ctrl-C (SIGINT) or SIGTERM: the run stops at its next batch or phase and removes
/// what it made, rather than dying with its own Postgres still running.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_ctrl_c() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Removes what the run made under the data directory, and the directory if the run made it.
fn clean_up(data_dir: &Path, made_dir: bool) {
    let own = data_dir.join("postgres");
    if own.exists() {
        if let Err(e) = std::fs::remove_dir_all(&own) {
            tracing::warn!(dir = %own.display(), error = %e, "cannot remove the own Postgres's data");
        }
    }
    if made_dir {
        let _ = std::fs::remove_dir(data_dir);
    }
}

/// Writes each file beside its final name, then renames it: a report is whole or absent.
fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let temp = dir.join(format!(".{name}.partial"));
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, dir.join(name))?;
    Ok(())
}

fn write_report(args: &EnginesArgs, outcome: &Outcome) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make report directory {}", args.out.display()))?;
    for chart in report::charts(outcome) {
        write_file(&args.out, &chart.file, &chart.svg)?;
    }
    write_file(
        &args.out,
        "report.json",
        &serde_json::to_string_pretty(outcome)?,
    )?;
    write_file(&args.out, "report.md", &report::markdown(outcome))
}

fn print_summary(outcome: &Outcome, out: &Path) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{:<6} {:<12} {:<8} {:>10} {:>10} {:>9} {:>9}  faster",
        "keys", "workload", "dist", "pg ops/s", "rdb ops/s", "pg p99", "rdb p99"
    );
    for (pg, rocks) in report::pairs(outcome) {
        let (winner, _) = report::verdict(outcome, pg, rocks);
        let _ = writeln!(
            stdout,
            "{:<6} {:<12} {:<8} {:>10.0} {:>10.0} {:>7}µs {:>7}µs  {winner}",
            pg.scale.to_string(),
            pg.mix.name,
            pg.dist.to_string(),
            pg.throughput_ops_s,
            rocks.throughput_ops_s,
            pg.p99_us,
            rocks.p99_us
        );
    }
    let _ = writeln!(stdout, "report: {}", out.join("report.md").display());
}

/// The command's progress bars: one at a time, each above the log.
#[derive(Default)]
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, what: &str, len: u64) {
        *self.bar.lock().expect("bar lock") = Some(progress(len, what));
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &*self.bar.lock().expect("bar lock") {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }
}
