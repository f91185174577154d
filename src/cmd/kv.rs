//! `quorumlab kv`: the durability lab's store on this machine's disk. `put` and `get` by hand,
//! and `crash-test`: a child process writes at full speed and is killed with SIGKILL at random
//! moments, over and over; after each kill the store is recovered and checked against every
//! write the child had acknowledged.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use quorumlab_kv::crashsim::{crash_run, crash_run_traced, CrashRun};
use quorumlab_kv::record::Stop;
use quorumlab_kv::{Broken, Fsync, Shared, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::SafetyViolation;

mod powercut;
use crate::runtime::progress;

/// `kv`'s arguments.
#[derive(Args)]
pub struct KvArgs {
    #[command(subcommand)]
    action: KvAction,
}

#[derive(Subcommand)]
enum KvAction {
    /// Set KEY to VALUE in the store in DIR (made if DIR is missing or empty); returns once the
    /// write is durable under --fsync.
    Put {
        /// The store's directory.
        #[arg(long)]
        dir: PathBuf,
        /// When a write is durable: always (fdatasync each), batch (group commit), never.
        #[arg(long, default_value = "always")]
        fsync: String,
        key: String,
        value: String,
    },
    /// Remove KEY from the store in DIR; returns once the removal is durable under --fsync.
    Delete {
        /// The store's directory.
        #[arg(long)]
        dir: PathBuf,
        /// When a removal is durable: always, batch, never.
        #[arg(long, default_value = "always")]
        fsync: String,
        key: String,
    },
    /// Write the store's table to a snapshot and empty its log (temporary file, fsync, rename,
    /// directory fsync, then the log truncated).
    Checkpoint {
        /// The store's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print KEY's value from the store in DIR, after recovering it from its log.
    Get {
        /// The store's directory.
        #[arg(long)]
        dir: PathBuf,
        key: String,
        /// Print as JSON, with what recovery found.
        #[arg(long)]
        json: bool,
    },
    /// Kill a writing child with SIGKILL at random moments, recover the store after each kill
    /// and check every acknowledged write. Exit 1 if one is missing.
    CrashTest {
        /// Where the store goes (a fresh directory under the temp dir if not given; it must not
        /// exist or be empty).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Kills.
        #[arg(long, default_value_t = 1000)]
        kills: u64,
        #[command(flatten)]
        child: ChildArgs,
    },
    /// Cut the power under a writing child (root): the store on an ext4 filesystem in an image
    /// file on a loop device, the child killed, the disk kept as the block device held it (the
    /// page cache lost), remounted and the store recovered and checked. Exit 1 if an
    /// acknowledged write is missing: what --fsync never loses.
    PowerCut {
        /// Where the image and its mount go (a fresh directory under the temp dir if not given;
        /// it must not exist or be empty).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Power cuts.
        #[arg(long, default_value_t = 20)]
        cuts: u64,
        #[command(flatten)]
        child: ChildArgs,
    },
    /// Crash the store on the simulated disk, once per seed: a seeded workload, the power cut at
    /// a seeded moment, unsynced writes kept, reordered or torn by sector, then recovery and the
    /// check (every acknowledged write there, nothing half-written). Exit 1 if a seed breaks it.
    Sim {
        /// Seeds, FIRST..=LAST.
        #[arg(long, default_value = "1..=10000", value_parser = super::sweep::parse_seeds)]
        seeds: std::ops::RangeInclusive<u64>,
        /// A deliberately broken build the sweep must catch: skip-fsync, skip-dir-fsync,
        /// no-crc, ack-before-fsync.
        #[arg(long)]
        broken: Option<String>,
        /// The store's policy: always, batch (one writer: as always) or never (which a power
        /// cut punishes: the baseline's loss).
        #[arg(long, default_value = "always")]
        fsync: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Walk through one seed's run instead (Enter: next step, q: quit): each disk call, the
        /// power cut, what the page cache held, what the reboot kept, what recovery found.
        #[arg(long)]
        step: Option<u64>,
    },
    /// Measure this disk: its fsyncs per second (the limit for --fsync always), writes per
    /// second for each policy with 1, 8 and 64 writers, and recovery time of a large log (as
    /// root it also drops the machine's clean page cache once, to time recovery from the disk).
    Bench {
        /// Where the stores go (a fresh directory under the temp dir if not given).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Size of the log recovered, MiB.
        #[arg(long, default_value_t = 1024)]
        recovery_mib: u64,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The crash test's child: writes k<seq> = v<seq> until killed, printing each sequence
    /// number once it is acknowledged.
    #[command(hide = true)]
    WriteUntilKilled {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        fsync: String,
        #[arg(long)]
        writers: u32,
        #[arg(long)]
        max_writes: u64,
    },
}

/// The writing child of `crash-test` and `power-cut`, and how the result is printed.
#[derive(Args)]
struct ChildArgs {
    /// always, batch or never.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Writer threads in the child.
    #[arg(long, default_value_t = 1)]
    writers: u32,
    /// Seed of the kill (or power cut) times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one `kv` action.
pub fn command(args: KvArgs) -> Result<()> {
    match args.action {
        KvAction::Put {
            dir,
            fsync,
            key,
            value,
        } => {
            let mut store = open_or_create(&dir, fsync.parse().map_err(anyhow::Error::msg)?)?;
            let seq = store.put(key.as_bytes(), value.as_bytes())?;
            println!("{key} = {value} (record {seq}, durable: {fsync})");
            Ok(())
        }
        KvAction::Get { dir, key, json } => get(&dir, &key, json),
        KvAction::Delete { dir, fsync, key } => {
            let mut store = Store::open(&dir, fsync.parse().map_err(anyhow::Error::msg)?)?;
            let seq = store.delete(key.as_bytes())?;
            println!("{key} removed (record {seq}, durable: {fsync})");
            Ok(())
        }
        KvAction::Checkpoint { dir } => {
            let mut store = Store::open(&dir, Fsync::Always)?;
            let covers = store.checkpoint()?;
            println!(
                "snapshot of {} keys covers records 1..={covers}; the log is empty",
                store.len()
            );
            Ok(())
        }
        KvAction::CrashTest { dir, kills, child } => {
            let json = child.json;
            crash_test(dir, &crash_plan(kills, child)?, json)
        }
        KvAction::PowerCut { dir, cuts, child } => {
            let json = child.json;
            powercut::power_cut(dir, &crash_plan(cuts, child)?, json)
        }
        KvAction::Sim {
            seeds,
            broken,
            json,
            step,
            fsync,
        } => {
            let fsync: Fsync = fsync.parse().map_err(anyhow::Error::msg)?;
            let broken = broken
                .map(|b| b.parse::<Broken>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            match step {
                Some(seed) => step_through(seed, fsync, broken),
                None => crash_sweep(seeds, (fsync, broken), json),
            }
        }
        KvAction::Bench {
            dir,
            seconds,
            recovery_mib,
            json,
        } => {
            if !(0.1..=600.0).contains(&seconds) || recovery_mib == 0 || recovery_mib > 16384 {
                bail!("--seconds: 0.1 to 600; --recovery-mib: 1 to 16384");
            }
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("quorumlab-kv-bench-{}", std::process::id()))
            });
            if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
                bail!(
                    "{} is not empty: the benchmark needs a fresh directory",
                    dir.display()
                );
            }
            let result = bench(&dir, Duration::from_secs_f64(seconds), recovery_mib, json);
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
        KvAction::WriteUntilKilled {
            dir,
            fsync,
            writers,
            max_writes,
        } => write_until_killed(
            &dir,
            fsync.parse().map_err(anyhow::Error::msg)?,
            writers,
            max_writes,
        ),
    }
}

/// The store in `dir`, made first if `dir` is missing or empty.
fn open_or_create(dir: &Path, fsync: Fsync) -> Result<Store> {
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    Ok(match empty {
        true => Store::create(dir, fsync)?,
        false => Store::open(dir, fsync)?,
    })
}

fn get(dir: &Path, key: &str, json: bool) -> Result<()> {
    let store = Store::open(dir, Fsync::Never)?;
    let value = store.get(key.as_bytes()).map(String::from_utf8_lossy);
    let r = store.recovery();
    if json {
        let value = serde_json::json!({
            "key": key,
            "value": value,
            "recovery": {"records": r.records, "cut_bytes": r.cut_bytes, "stop": format!("{:?}", r.stop)},
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match value {
        Some(value) => println!("{value}"),
        None => println!("({key} has no value)"),
    }
    Ok(())
}

/// The plan of a crash or power-cut test, its arguments checked.
fn crash_plan(kills: u64, child: ChildArgs) -> Result<CrashPlan> {
    let policy: Fsync = child.fsync.parse().map_err(anyhow::Error::msg)?;
    if child.writers == 0 || child.writers > 256 {
        bail!("--writers: 1 to 256, not {}", child.writers);
    }
    Ok(CrashPlan {
        kills,
        fsync: (policy, child.fsync),
        writers: child.writers,
        seed: child.seed,
    })
}

/// What a crash test does.
struct CrashPlan {
    kills: u64,
    fsync: (Fsync, String),
    writers: u32,
    seed: u64,
}

/// A fresh store every this many kills keeps each recovery's log short (there are no
/// checkpoints yet); within a generation every kill recovers everything written before it.
const KILLS_PER_GENERATION: u64 = 50;
/// Writes a child makes at most before it waits to be killed (bounds the log).
const WRITES_PER_LIFE: u64 = 2000;

fn crash_test(dir: Option<PathBuf>, plan: &CrashPlan, json: bool) -> Result<()> {
    let base = match dir {
        Some(dir) => {
            if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
                bail!(
                    "{} is not empty: the crash test needs a fresh directory",
                    dir.display()
                );
            }
            dir
        }
        None => std::env::temp_dir().join(format!("quorumlab-kv-crash-{}", std::process::id())),
    };
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let bar = progress(plan.kills, "kills");
    let mut tally = Tally::default();
    let mut acked = BTreeSet::new();
    let mut store_dir = base.clone();
    for kill in 0..plan.kills {
        if kill % KILLS_PER_GENERATION == 0 {
            let _ = std::fs::remove_dir_all(&base);
            store_dir = base.join(format!("generation-{}", kill / KILLS_PER_GENERATION));
            Store::create(&store_dir, plan.fsync.0)?;
            acked.clear();
        }
        let new = one_life(
            &store_dir,
            plan,
            Duration::from_micros(rng.gen_range(1_000..40_000)),
        )?;
        tally.acked += new.len() as u64;
        acked.extend(new.iter().copied());
        tally.check(&store_dir, &acked, &new)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&base);
    tally.report(plan, json)
}

/// One child's life: started, killed after `life`, and the sequence numbers it acknowledged.
fn one_life(dir: &Path, plan: &CrashPlan, life: Duration) -> Result<Vec<u64>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["kv", "write-until-killed", "--dir"])
        .arg(dir)
        .args([
            "--fsync",
            &plan.fsync.1,
            "--writers",
            &plan.writers.to_string(),
        ])
        .args(["--max-writes", &WRITES_PER_LIFE.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the writer")?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|line| line.ok()?.parse::<u64>().ok())
            .collect::<Vec<u64>>()
    });
    std::thread::sleep(life);
    // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait()?;
    Ok(reader.join().expect("reader"))
}

/// What the kills found.
#[derive(Default)]
struct Tally {
    kills: u64,
    acked: u64,
    lost: Vec<u64>,
    torn_tails: u64,
    corrupt_tails: u64,
    cut_bytes: u64,
    recovery_ms_max: f64,
}

impl Tally {
    /// Recovers the store and checks this life's acknowledged writes (and that nothing of the
    /// earlier ones went missing: the table holds at least as many keys).
    fn check(&mut self, dir: &Path, acked: &BTreeSet<u64>, new: &[u64]) -> Result<()> {
        self.kills += 1;
        let started = Instant::now();
        let store = Store::open(dir, Fsync::Never)?;
        self.recovery_ms_max = self
            .recovery_ms_max
            .max(started.elapsed().as_secs_f64() * 1e3);
        let r = store.recovery();
        self.cut_bytes += r.cut_bytes;
        match r.stop {
            Stop::Torn => self.torn_tails += 1,
            Stop::Corrupt | Stop::OutOfSequence => self.corrupt_tails += 1,
            Stop::End => {}
        }
        for &seq in new {
            let value = format!("v{seq}");
            if store.get(format!("k{seq}").as_bytes()) != Some(value.as_bytes()) {
                self.lost.push(seq);
            }
        }
        if store.len() < acked.len() {
            let missing = acked
                .iter()
                .filter(|seq| store.get(format!("k{seq}").as_bytes()).is_none());
            self.lost.extend(missing);
        }
        Ok(())
    }

    fn report(&self, plan: &CrashPlan, json: bool) -> Result<()> {
        if json {
            let value = serde_json::json!({
                "fsync": plan.fsync.1, "writers": plan.writers, "kills": self.kills,
                "acknowledged": self.acked, "lost": self.lost.len(), "lost_examples": self.lost.iter().take(5).collect::<Vec<_>>(),
                "torn_tails_cut": self.torn_tails, "corrupt_tails_cut": self.corrupt_tails,
                "bytes_cut": self.cut_bytes, "recovery_ms_max": self.recovery_ms_max,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!(
                "{} kills with --fsync {}, {} writer(s): {} writes acknowledged, {} lost; {} torn tails cut ({} bytes, {} corrupt); recovery took at most {:.1} ms",
                self.kills, plan.fsync.1, plan.writers, self.acked, self.lost.len(),
                self.torn_tails, self.cut_bytes, self.corrupt_tails, self.recovery_ms_max
            );
            if plan.fsync.0 == Fsync::Never && self.lost.is_empty() {
                println!("(--fsync never lost nothing here because SIGKILL kills the process, not the machine: what it wrote is in the kernel's page cache. A power cut would lose it: see kv power-cut.)");
            }
        }
        if !self.lost.is_empty() {
            bail!(SafetyViolation(format!(
                "{} acknowledged writes missing after recovery, e.g. k{}",
                self.lost.len(),
                self.lost[0]
            )));
        }
        Ok(())
    }
}

/// The child: `writers` threads put k<seq> = v<seq> (seq from a shared counter past what the
/// store holds) and print each acknowledged seq; after `max_writes` they wait to be killed.
fn write_until_killed(dir: &Path, fsync: Fsync, writers: u32, max_writes: u64) -> Result<()> {
    let store = Store::open(dir, fsync)?;
    let first = store.recovery().records + 1;
    let shared = Arc::new(Shared::new(store)?);
    let next = Arc::new(Mutex::new(first));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (shared, next, out) = (shared.clone(), next.clone(), out.clone());
            std::thread::spawn(move || loop {
                let seq = {
                    let mut next = next.lock().expect("not poisoned");
                    *next += 1;
                    *next - 1
                };
                if seq >= first + max_writes {
                    return;
                }
                if shared
                    .put(format!("k{seq}").as_bytes(), format!("v{seq}").as_bytes())
                    .is_err()
                {
                    return;
                }
                let mut out = out.lock().expect("not poisoned");
                let _ = writeln!(out, "{seq}");
                let _ = out.flush();
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // Done early: wait to be killed, as a writer that is still busy would be.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `kv bench`: the disk's fsync rate, each policy's write rate by writers, recovery time.
fn bench(dir: &Path, span: Duration, recovery_mib: u64, json: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let fsyncs_per_s = disk_fsyncs_per_s(&dir.join("fsync-probe"), span)?;
    let mut rows = Vec::new();
    for policy in ["always", "batch", "never"] {
        for writers in [1u32, 8, 64] {
            let store_dir = dir.join(format!("{policy}-{writers}"));
            let (writes, syncs) = write_rate(
                &store_dir,
                policy.parse().map_err(anyhow::Error::msg)?,
                writers,
                span,
            )?;
            std::fs::remove_dir_all(&store_dir)?;
            let secs = span.as_secs_f64();
            rows.push(serde_json::json!({
                "fsync": policy, "writers": writers,
                "writes_per_s": (writes as f64 / secs).round(),
                "fsyncs_per_s": (syncs as f64 / secs).round(),
                "writes_per_fsync": if syncs > 0 { Some(writes as f64 / syncs as f64) } else { None },
            }));
        }
    }
    let recovery = recovery_time(&dir.join("recovery"), recovery_mib)?;
    let value = serde_json::json!({
        "dir": dir, "seconds_each": span.as_secs_f64(),
        "disk_fsyncs_per_s": fsyncs_per_s.round(),
        "writes": rows,
        "recovery": recovery,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("this disk: {fsyncs_per_s:.0} fsyncs/s (write 64 bytes, fdatasync, repeat: the ceiling for --fsync always)");
    println!(
        "{:<8} {:>7} {:>12} {:>10} {:>16}",
        "fsync", "writers", "writes/s", "fsyncs/s", "writes per fsync"
    );
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    for r in &rows {
        println!(
            "{:<8} {:>7} {:>12.0} {:>10.0} {:>16}",
            r["fsync"].as_str().unwrap_or(""),
            number(&r["writers"]),
            number(&r["writes_per_s"]),
            number(&r["fsyncs_per_s"]),
            r["writes_per_fsync"]
                .as_f64()
                .map_or("-".into(), |w| format!("{w:.1}"))
        );
    }
    let cold = recovery["cold_cache_s"].as_f64().map_or(
        "not measured without it (dropping the cache needs root)".into(),
        |s| format!("{s:.2} s read from the disk"),
    );
    println!(
        "recovery of a {:.0} MiB log ({:.0} records): {:.2} s with the log in the page cache, {cold}",
        number(&recovery["log_bytes"]) / (1 << 20) as f64,
        number(&recovery["records"]),
        number(&recovery["warm_cache_s"]),
    );
    Ok(())
}

/// Appends 64 bytes and syncs, over and over for `span`: syncs per second.
fn disk_fsyncs_per_s(path: &Path, span: Duration) -> Result<f64> {
    let mut file = std::fs::File::create(path)?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < span {
        file.write_all(&[0u8; 64])?;
        file.sync_data()?;
        syncs += 1;
    }
    Ok(syncs as f64 / started.elapsed().as_secs_f64())
}

/// `writers` threads put 100-byte values into a fresh store for `span`: (writes, syncs).
fn write_rate(dir: &Path, fsync: Fsync, writers: u32, span: Duration) -> Result<(u64, u64)> {
    let shared = Arc::new(Shared::new(Store::create(dir, fsync)?)?);
    let deadline = Instant::now() + span;
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    shared.put(format!("w{w}-{n}").as_bytes(), &[b'v'; 100])?;
                    n += 1;
                }
                Ok::<u64, quorumlab_kv::StoreError>(n)
            })
        })
        .collect();
    let mut writes = 0;
    for t in threads {
        writes += t.join().expect("writer")?;
    }
    Ok((writes, shared.syncs()))
}

/// Writes a log of about `mib` MiB (1 KiB values, no syncs, then one), and times reopening it
/// with the log in the page cache and, when this process may drop the cache, without.
fn recovery_time(dir: &Path, mib: u64) -> Result<serde_json::Value> {
    let mut store = Store::create(dir, Fsync::Never)?;
    let value = vec![b'x'; 1024];
    let records = mib * 1024 * 1024 / (1024 + 16 + 16);
    for n in 0..records {
        store.put(format!("k{n}").as_bytes(), &value)?;
    }
    drop(store);
    std::fs::File::open(dir.join("wal.log"))?.sync_all()?;
    let log_bytes = std::fs::metadata(dir.join("wal.log"))?.len();
    let timed = || -> Result<f64> {
        let started = Instant::now();
        let store = Store::open(dir, Fsync::Never)?;
        assert_eq!(store.len() as u64, records);
        Ok(started.elapsed().as_secs_f64())
    };
    let warm_s = timed()?;
    let cold_s = match std::fs::write("/proc/sys/vm/drop_caches", "1") {
        Ok(()) => Some(timed()?),
        Err(_) => None,
    };
    std::fs::remove_dir_all(dir)?;
    Ok(serde_json::json!({
        "log_bytes": log_bytes, "records": records,
        "warm_cache_s": warm_s, "cold_cache_s": cold_s,
    }))
}

/// `kv sim`: a crash run per seed, in parallel; the first seeds that broke the rules.
fn crash_sweep(
    seeds: std::ops::RangeInclusive<u64>,
    (fsync, broken): (Fsync, Option<Broken>),
    json: bool,
) -> Result<()> {
    let started = Instant::now();
    let bar = progress(seeds.end() - seeds.start() + 1, "seeds");
    let runs: Vec<CrashRun> = seeds
        .clone()
        .into_par_iter()
        .map(|seed| {
            let run = crash_run(seed, fsync, broken);
            bar.inc(1);
            run
        })
        .collect();
    bar.finish_and_clear();
    let bad: Vec<&CrashRun> = runs.iter().filter(|r| r.violation.is_some()).collect();
    let acked: u64 = runs.iter().map(|r| r.acked).sum();
    let torn = runs.iter().filter(|r| r.tail_cut).count();
    let unsynced = runs.iter().filter(|r| r.unsynced_bytes > 0).count();
    let build = match broken {
        Some(b) => format!("the broken build {b:?}"),
        None => format!(
            "the store (--fsync {})",
            format!("{fsync:?}").to_lowercase()
        ),
    };
    if json {
        let value = serde_json::json!({
            "seeds": [seeds.start(), seeds.end()], "broken": broken.map(|b| format!("{b:?}")),
            "wall_s": started.elapsed().as_secs_f64(), "acknowledged": acked,
            "crashes_with_unsynced_bytes": unsynced, "torn_tails_cut": torn,
            "violations": bad.len(),
            "examples": bad.iter().take(5).map(|r| serde_json::json!({"seed": r.seed, "violation": r.violation})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{} crashes of {build} on the simulated disk in {:.1} s: {acked} writes acknowledged; {unsynced} crashes found unsynced bytes, {torn} left a torn or corrupt tail that recovery cut off",
            runs.len(),
            started.elapsed().as_secs_f64()
        );
        for r in bad.iter().take(5) {
            println!(
                "  seed {}: {}",
                r.seed,
                r.violation.as_deref().unwrap_or("")
            );
        }
    }
    match bad.first() {
        None => Ok(()),
        Some(first) => bail!(SafetyViolation(format!(
            "{} of {} seeds lost or garbled an acknowledged write, e.g. seed {}",
            bad.len(),
            runs.len(),
            first.seed
        ))),
    }
}

/// `kv sim --step SEED`: one seed's run, a step at a time when a person is at the terminal.
fn step_through(seed: u64, fsync: Fsync, broken: Option<Broken>) -> Result<()> {
    use std::io::IsTerminal;
    let (run, lines) = crash_run_traced(seed, fsync, broken, true);
    let interactive = std::io::stdin().is_terminal();
    let mut input = std::io::stdin().lock();
    for line in &lines {
        println!("{line}");
        if interactive && !line.starts_with("    ") && !crate::system::next_step(&mut input)? {
            break;
        }
    }
    match run.violation {
        None => Ok(()),
        Some(v) => bail!(SafetyViolation(format!("seed {seed}: {v}"))),
    }
}
