//! One experiment: for each scale, both engines loaded with the same keys, then each key
//! distribution x mix measured on both, first closed-loop (throughput), then open-loop at one
//! rate for both (latency), then settled and counted (bytes written, footprint, debt).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Footprint, Shared, Written};
use crate::measure::{closed_loop, open_loop, PhaseResult};
use crate::postgres::Postgres;
use crate::rocks::Rocks;
use crate::server::OwnPostgres;
use crate::workload::{load_value, KeyDist, Mix, OpStream, Scale, Zipf};

/// Where Postgres comes from.
#[derive(Clone, Debug)]
pub enum PostgresSource {
    /// A server of the run's own, in the data directory.
    Own,
    /// A database the user names (its URL never printed with the password).
    Url(String),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Config {
    pub scales: Vec<Scale>,
    pub mixes: Vec<Mix>,
    pub dists: Vec<KeyDist>,
    pub shared: Shared,
    /// Length of each measured phase.
    pub phase: Duration,
    /// The open loop's rate; by default 70% of the slower engine's closed-loop throughput.
    pub rate_per_s: Option<f64>,
    pub seed: u64,
    /// An empty directory the caller made; RocksDB (and the own Postgres) live under it.
    pub data_dir: PathBuf,
    pub postgres: PostgresSource,
    /// Set (e.g. by Ctrl-C) to stop the run at the next batch or phase; what it made is removed.
    pub stop: &'static AtomicBool,
}

/// The run was stopped through [`Config::stop`].
#[derive(Debug, thiserror::Error)]
#[error("interrupted; what the run made has been removed")]
pub struct Interrupted;

fn check_stop(config: &Config) -> Result<()> {
    if config.stop.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Progress of long work, shown by the caller (a bar per load, one over the phases).
pub trait Progress: Sync {
    fn begin(&self, what: &str, len: u64);
    fn inc(&self, n: u64);
    fn end(&self);
}

/// Share of the slower engine's throughput the open loop runs at: high enough to be a real
/// load, low enough that neither engine is simply saturated (latency would then be queueing).
pub const OPEN_LOOP_SHARE: f64 = 0.7;
const LOAD_BATCH: u64 = 10_000;

/// One engine's load of one scale.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Load {
    pub scale: Scale,
    pub engine: String,
    pub seconds: f64,
    pub written: Written,
    pub footprint: Footprint,
    pub compaction_debt_bytes: Option<u64>,
}

/// One engine on one scale x distribution x mix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub scale: Scale,
    pub dist: KeyDist,
    pub mix: Mix,
    pub engine: String,
    /// Closed loop: operations per second.
    pub throughput_ops_s: f64,
    /// The open loop's rate (the same for both engines).
    pub open_rate_ops_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Writes over both phases, and the logical bytes they carried (key + value).
    pub writes: u64,
    pub logical_written_bytes: u64,
    /// The engine's own count of bytes written over both phases, after settling.
    pub written: Written,
    pub footprint: Footprint,
    pub compaction_debt_bytes: Option<u64>,
}

/// Where and how a run was made: written at the top of its report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub date: String,
    pub machine: String,
    pub command: String,
}

/// Everything measured, with the settings it was measured under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// Filled in by the caller (the library does not know the command line).
    #[serde(default)]
    pub measured: Measured,
    pub shared: Shared,
    pub phase_ms: u64,
    pub seed: u64,
    pub postgres_source: String,
    pub settings: Vec<(String, Vec<(String, String)>)>,
    /// Postgres's per-statement floor: the median round trip of `SELECT 1` on one connection.
    pub postgres_round_trip_us: u64,
    pub loads: Vec<Load>,
    pub cells: Vec<Cell>,
}

impl Outcome {
    /// Logical bytes of the live data at `scale`: key (8 bytes) + value per key.
    pub fn logical_bytes(&self, scale: Scale) -> u64 {
        scale.keys * (8 + self.shared.value_bytes as u64)
    }
}

/// Runs the experiment.
pub fn run(config: &Config, progress: &dyn Progress) -> Result<Outcome> {
    let own = match &config.postgres {
        PostgresSource::Own => {
            let dir = config.data_dir.join("postgres");
            std::fs::create_dir(&dir)?;
            Some(OwnPostgres::start(&dir, config.shared.cache_mib)?)
        }
        PostgresSource::Url(_) => None,
    };
    let (url, source) = match (&config.postgres, &own) {
        (PostgresSource::Url(url), _) => {
            (url.clone(), quorumlab_experiment::secret::redact_url(url))
        }
        (PostgresSource::Own, Some(pg)) => (
            pg.url(),
            "its own Postgres 15 (initdb in the data directory)".into(),
        ),
        (PostgresSource::Own, None) => unreachable!("an own server was started above"),
    };
    let mut outcome = Outcome {
        measured: Measured::default(),
        shared: config.shared.clone(),
        phase_ms: config.phase.as_millis() as u64,
        seed: config.seed,
        postgres_source: source,
        settings: Vec::new(),
        postgres_round_trip_us: 0,
        loads: Vec::new(),
        cells: Vec::new(),
    };
    for (i, &scale) in config.scales.iter().enumerate() {
        let postgres = Postgres::create(&url, &config.shared)?;
        let rocks_dir = config.data_dir.join(format!("rocksdb-{scale}"));
        let result = (|| {
            let rocks = Rocks::create(&rocks_dir, &config.shared)?;
            if i == 0 {
                outcome.settings = vec![
                    ("postgres".into(), postgres.settings()?),
                    ("rocksdb".into(), rocks.settings()?),
                ];
                outcome.postgres_round_trip_us = postgres.round_trip_us()?;
            }
            measure_scale(config, scale, &[&postgres, &rocks], progress, &mut outcome)
        })();
        // This run made both; neither outlives its scale (the next one starts empty).
        let dropped = postgres.drop_table();
        let removed = std::fs::remove_dir_all(&rocks_dir)
            .with_context(|| format!("cannot remove {}", rocks_dir.display()));
        result.and(dropped).and(removed)?;
    }
    drop(own);
    Ok(outcome)
}

fn measure_scale(
    config: &Config,
    scale: Scale,
    engines: &[&dyn Engine],
    progress: &dyn Progress,
    outcome: &mut Outcome,
) -> Result<()> {
    for engine in engines {
        outcome.loads.push(load(config, scale, *engine, progress)?);
    }
    verify_load(config, scale, engines)?;
    let zipf = config
        .dists
        .contains(&KeyDist::Zipfian)
        .then(|| Arc::new(Zipf::new(scale.keys, Zipf::THETA)));
    let cells = config.dists.len() * config.mixes.len();
    progress.begin(
        &format!("{scale} keys: workloads measured on both engines"),
        cells as u64,
    );
    for (d, &dist) in config.dists.iter().enumerate() {
        for (m, mix) in config.mixes.iter().enumerate() {
            let zipf = (dist == KeyDist::Zipfian).then(|| zipf.clone()).flatten();
            let seed = config.seed ^ (scale.keys << 8) ^ ((d as u64) << 4) ^ m as u64;
            let streams = |phase: u64| -> Vec<OpStream> {
                (0..config.shared.threads as u64)
                    .map(|w| {
                        let s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (phase << 32) ^ w;
                        OpStream::new(s, mix, scale.keys, zipf.clone(), config.shared.value_bytes)
                    })
                    .collect()
            };
            check_stop(config)?;
            let cells = measure_cell(config, engines, &streams)?;
            for (engine, (closed, open, rate, written, footprint, debt)) in
                engines.iter().zip(cells)
            {
                outcome.cells.push(cell(
                    scale, dist, mix, *engine, &closed, &open, rate, written, footprint, debt,
                    config,
                ));
            }
            progress.inc(1);
        }
    }
    progress.end();
    Ok(())
}

type EngineCell = (
    PhaseResult,
    PhaseResult,
    f64,
    Written,
    Footprint,
    Option<u64>,
);

/// Both engines on one workload: closed loops, then open loops at one rate, then the counts.
fn measure_cell(
    config: &Config,
    engines: &[&dyn Engine],
    streams: &dyn Fn(u64) -> Vec<OpStream>,
) -> Result<Vec<EngineCell>> {
    let mut before = Vec::new();
    let mut closed = Vec::new();
    for engine in engines {
        check_stop(config)?;
        quiesce(engines)?;
        before.push(engine.written()?);
        closed.push(closed_loop(*engine, streams(0), config.phase)?);
    }
    let slowest = closed
        .iter()
        .map(PhaseResult::throughput)
        .fold(f64::MAX, f64::min);
    let rate = config
        .rate_per_s
        .unwrap_or(OPEN_LOOP_SHARE * slowest)
        .max(1.0);
    let mut out = Vec::new();
    for ((engine, closed), before) in engines.iter().zip(closed).zip(before) {
        check_stop(config)?;
        quiesce(engines)?;
        let open = open_loop(*engine, streams(1), config.phase, rate)?;
        engine.settle()?;
        let written = engine.written()?.since(&before);
        out.push((
            closed,
            open,
            rate,
            written,
            engine.footprint()?,
            engine.compaction_debt()?,
        ));
    }
    Ok(out)
}

/// Lets every engine's background work finish before a phase, so a phase has the cores to
/// itself; work still running after the limit is logged and the phase goes ahead.
fn quiesce(engines: &[&dyn Engine]) -> Result<()> {
    for engine in engines {
        if !engine.quiesce(QUIESCE_LIMIT)? {
            tracing::warn!(
                engine = engine.name(),
                "background work still running after 30 s; measuring anyway"
            );
        }
    }
    Ok(())
}

const QUIESCE_LIMIT: Duration = Duration::from_secs(30);

/// Checks that both engines hold what the load wrote, at keys spread over the key space: the
/// engines' streams are identical only if their data is.
fn verify_load(config: &Config, scale: Scale, engines: &[&dyn Engine]) -> Result<()> {
    let mut expected = vec![0; config.shared.value_bytes];
    let step = (scale.keys / 1_000).max(1);
    for key in (0..scale.keys)
        .step_by(step as usize)
        .chain([scale.keys - 1])
    {
        load_value(config.seed, key, &mut expected);
        for engine in engines {
            let found = engine.fetch(key)?;
            anyhow::ensure!(
                found.as_deref() == Some(&expected[..]),
                "{} does not hold the loaded value of key {key}",
                engine.name()
            );
        }
    }
    anyhow::ensure!(
        engines
            .iter()
            .all(|e| e.fetch(scale.keys).is_ok_and(|v| v.is_none())),
        "an engine holds a key beyond the loaded range"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cell(
    scale: Scale,
    dist: KeyDist,
    mix: &Mix,
    engine: &dyn Engine,
    closed: &PhaseResult,
    open: &PhaseResult,
    rate: f64,
    written: Written,
    footprint: Footprint,
    debt: Option<u64>,
    config: &Config,
) -> Cell {
    let writes = closed.writes + open.writes;
    Cell {
        scale,
        dist,
        mix: mix.clone(),
        engine: engine.name().to_string(),
        throughput_ops_s: closed.throughput(),
        open_rate_ops_s: rate,
        p50_us: open.latency_us.value_at_quantile(0.50),
        p99_us: open.latency_us.value_at_quantile(0.99),
        max_us: open.latency_us.max(),
        writes,
        logical_written_bytes: writes * (8 + config.shared.value_bytes as u64),
        written,
        footprint,
        compaction_debt_bytes: debt,
    }
}

/// Loads keys 0..scale into `engine` in batches, then settles it and counts what it cost.
fn load(
    config: &Config,
    scale: Scale,
    engine: &dyn Engine,
    progress: &dyn Progress,
) -> Result<Load> {
    progress.begin(
        &format!("{scale} keys loaded into {}", engine.name()),
        scale.keys,
    );
    let before = engine.written()?;
    let started = Instant::now();
    let seed = config.seed;
    let value = move |key: u64, out: &mut [u8]| load_value(seed, key, out);
    let mut from = 0;
    while from < scale.keys {
        check_stop(config)?;
        let to = (from + LOAD_BATCH).min(scale.keys);
        engine
            .load_batch(from, to, &value)
            .with_context(|| format!("loading {} keys {from}..{to}", engine.name()))?;
        progress.inc(to - from);
        from = to;
    }
    engine.after_load()?;
    engine.settle()?;
    let seconds = started.elapsed().as_secs_f64();
    progress.end();
    tracing::info!(engine = engine.name(), keys = scale.keys, seconds, "loaded");
    Ok(Load {
        scale,
        engine: engine.name().to_string(),
        seconds,
        written: engine.written()?.since(&before),
        footprint: engine.footprint()?,
        compaction_debt_bytes: engine.compaction_debt()?,
    })
}
