//! Driving an engine with client threads: a closed loop for throughput (each thread sends its
//! next operation as soon as the last returns), and an open loop for latency (operations are due
//! at a fixed rate, and each one's latency is measured from when it was due, not from when it
//! was sent, so a stall counts against every operation it delayed: coordinated omission
//! corrected, as wrk2 does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;

use crate::engine::Engine;
use crate::workload::{Op, OpStream};

/// What one phase did: operations by kind, how long it ran, and each operation's latency.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    pub reads: u64,
    pub writes: u64,
    pub scans: u64,
    pub elapsed: Duration,
    /// Latency in µs (the open loop's from when each operation was due).
    pub latency_us: Histogram<u64>,
}

impl PhaseResult {
    fn empty() -> PhaseResult {
        PhaseResult {
            reads: 0,
            writes: 0,
            scans: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        }
    }

    pub fn ops(&self) -> u64 {
        self.reads + self.writes + self.scans
    }

    /// Operations per second over the phase.
    pub fn throughput(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn count(&mut self, op: Op, latency: Duration) {
        match op {
            Op::Get(_) => self.reads += 1,
            Op::Put(_) => self.writes += 1,
            Op::Scan(..) => self.scans += 1,
        }
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
    }

    fn merge(&mut self, other: PhaseResult) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.scans += other.scans;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
    }
}

/// When each worker's next operation is due; `None` in the closed loop (as soon as possible).
#[derive(Clone, Copy)]
enum Pace {
    Closed,
    Open { interval: Duration },
}

/// Each thread sends operations back to back for `duration`: the engine's throughput.
pub fn closed_loop(
    engine: &dyn Engine,
    streams: Vec<OpStream>,
    duration: Duration,
) -> Result<PhaseResult> {
    drive(engine, streams, duration, Pace::Closed)
}

/// Operations due at `rate_per_s` in all (spread evenly over the threads) for `duration`;
/// latency from when each was due.
pub fn open_loop(
    engine: &dyn Engine,
    streams: Vec<OpStream>,
    duration: Duration,
    rate_per_s: f64,
) -> Result<PhaseResult> {
    assert!(rate_per_s > 0.0, "an open loop needs a positive rate");
    let interval = Duration::from_secs_f64(streams.len() as f64 / rate_per_s);
    drive(engine, streams, duration, Pace::Open { interval })
}

fn drive(
    engine: &dyn Engine,
    streams: Vec<OpStream>,
    duration: Duration,
    pace: Pace,
) -> Result<PhaseResult> {
    let failed = AtomicBool::new(false);
    // Every client connects before the clock starts.
    let start_line = Barrier::new(streams.len() + 1);
    let mut total = PhaseResult::empty();
    let started = std::thread::scope(|scope| -> Result<Instant> {
        let workers: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let (failed, start_line) = (&failed, &start_line);
                scope.spawn(move || worker(engine, stream, duration, pace, start_line, failed))
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        let mut first_error = None;
        for handle in workers {
            match handle
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))?
            {
                Ok(part) => total.merge(part),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        first_error.map_or(Ok(started), Err)
    })?;
    total.elapsed = started.elapsed();
    Ok(total)
}

fn worker(
    engine: &dyn Engine,
    mut stream: OpStream,
    duration: Duration,
    pace: Pace,
    start_line: &Barrier,
    failed: &AtomicBool,
) -> Result<PhaseResult> {
    let client = engine.client().and_then(|mut c| c.warm_up().map(|()| c));
    start_line.wait();
    let mut client = client?;
    let mut part = PhaseResult::empty();
    let start = Instant::now();
    let end = start + duration;
    let mut due = start;
    while !failed.load(Ordering::Relaxed) {
        let sent_from = match pace {
            Pace::Closed => Instant::now(),
            Pace::Open { interval } => {
                due += interval;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                due
            }
        };
        if sent_from >= end {
            break;
        }
        let op = stream.next_op();
        if let Err(e) = client.apply(op, stream.value()) {
            failed.store(true, Ordering::Relaxed);
            return Err(e.context(format!("{} {op:?}", engine.name())));
        }
        part.count(op, sent_from.elapsed());
    }
    Ok(part)
}
