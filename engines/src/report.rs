//! The outcome as a markdown report (tables, SVG charts, a verdict table saying when each
//! engine wins and why, and what the numbers do not measure).

use std::fmt::Write as _;

use crate::chart::{grouped_bars, short, Group};
use crate::engine::Durability;
use crate::experiment::{Cell, Outcome};
use crate::workload::{KeyDist, Mix, Scale};

/// One chart file: its name and its SVG.
pub struct Chart {
    pub file: String,
    pub svg: String,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    numerator as f64 / (denominator.max(1)) as f64
}

/// Write amplification of a cell: engine bytes written per logical byte written.
pub fn write_amp(cell: &Cell) -> f64 {
    ratio(cell.written.total(), cell.logical_written_bytes)
}

/// The pair of cells (Postgres, RocksDB) for each scale x distribution x mix, in run order.
pub fn pairs(outcome: &Outcome) -> Vec<(&Cell, &Cell)> {
    let find = |c: &Cell, engine: &str| {
        outcome.cells.iter().find(|o| {
            o.engine == engine && o.scale == c.scale && o.dist == c.dist && o.mix == c.mix
        })
    };
    outcome
        .cells
        .iter()
        .filter(|c| c.engine == "postgres")
        .filter_map(|pg| Some((pg, find(pg, "rocksdb")?)))
        .collect()
}

/// What a mix mostly does.
fn dominant(mix: &Mix) -> &'static str {
    if mix.scan_pct >= 50 {
        "scans"
    } else if mix.write_pct >= 50 {
        "writes"
    } else {
        "reads"
    }
}

/// The verdict on one pair: who won the closed loop, by how much, and why, from what was
/// measured (not from which engine "should" win).
pub fn verdict(outcome: &Outcome, pg: &Cell, rocks: &Cell) -> (String, String) {
    let r = rocks.throughput_ops_s / pg.throughput_ops_s.max(1e-9);
    let winner = if (0.9..=1.1).contains(&r) {
        "tie (within 10%)".to_string()
    } else if r > 1.0 {
        format!("rocksdb, {r:.1}x")
    } else {
        format!("postgres, {:.1}x", 1.0 / r)
    };
    let rocks_wins = r > 1.1;
    let floor = outcome.postgres_round_trip_us;
    let mut why = if (0.9..=1.1).contains(&r) {
        format!(
            "Neither shape gave an edge here. Median at the same rate: postgres {} µs, rocksdb \
             {} µs.",
            pg.p50_us, rocks.p50_us
        )
    } else {
        reason(pg, rocks, rocks_wins, floor)
    };
    if outcome.shared.durability == Durability::Synced && pg.mix.write_pct >= 50 {
        why.push_str(
            " Both wait for a synced WAL per commit, so group commit sets much of the pace.",
        );
    }
    let cache = outcome.shared.cache_mib * 1024 * 1024;
    if pg.footprint.data_bytes > cache || rocks.footprint.data_bytes > cache {
        let _ = write!(
            why,
            " The data ({} / {}) outgrows the {} cache.",
            mib(pg.footprint.data_bytes),
            mib(rocks.footprint.data_bytes),
            mib(cache)
        );
    }
    (winner, why)
}

/// Why the faster engine won a workload, from what the workload mostly does.
fn reason(pg: &Cell, rocks: &Cell, rocks_wins: bool, floor: u64) -> String {
    match (dominant(&pg.mix), rocks_wins) {
        ("writes", true) => format!(
            "LSM write path: a write is a WAL append and a memtable insert, no page to find or \
             rewrite; Postgres updates heap and index pages and logs full-page images after \
             each checkpoint. Bytes written per logical byte: postgres {:.1}x, rocksdb {:.1}x.",
            write_amp(pg),
            write_amp(rocks)
        ),
        ("writes", false) => format!(
            "Postgres held its own on writes; rocksdb wrote {:.1}x the logical bytes (flushes \
             and compaction) against postgres's {:.1}x.",
            write_amp(rocks),
            write_amp(pg)
        ),
        ("scans", false) => "B-tree range scan: leaf pages in key order, then the heap; an LSM \
             scan merges sorted runs from the memtable and every level."
            .to_string(),
        ("scans", true) => format!(
            "rocksdb's iterator merges its sorted files in this process; each postgres scan pays \
             a {floor} µs round trip (SELECT 1) and sends up to 100 rows through the protocol. \
             Median at the same rate: postgres {} µs, rocksdb {} µs.",
            pg.p50_us, rocks.p50_us
        ),
        (_, false) => "B-tree point read: one index descent and one heap page in shared \
             buffers; an LSM read may look in the memtable and a file per level (bloom filters \
             skip most)."
            .to_string(),
        (_, true) => format!(
            "rocksdb answers in this process from its memtable and block cache. Median at the \
             same rate: postgres {} µs, rocksdb {} µs; {floor} µs of postgres's is the round \
             trip every statement pays (SELECT 1), the rest its executor and the hand-off \
             between client and backend processes.",
            pg.p50_us, rocks.p50_us
        ),
    }
}

fn settings_section(out: &mut String, outcome: &Outcome) {
    let s = &outcome.shared;
    let _ = writeln!(out, "## Settings, the same for both engines\n");
    let _ = writeln!(
        out,
        "- durability: **{}** (Postgres `synchronous_commit`, RocksDB `WriteOptions::sync`)",
        s.durability
    );
    let _ = writeln!(
        out,
        "- cache: **{} MiB** (Postgres `shared_buffers`, RocksDB block cache)",
        s.cache_mib
    );
    let _ = writeln!(
        out,
        "- values: **{} bytes**, random (incompressible); keys 8-byte integers",
        s.value_bytes
    );
    let _ = writeln!(
        out,
        "- client threads: **{}** (Postgres: a connection per thread, prepared statements)",
        s.threads
    );
    let _ = writeln!(out, "- each phase: **{} ms** closed loop (throughput), then {} ms open loop at one rate for both engines ({}% of the slower one's throughput unless `--rate`), latency from each operation's due time (coordinated omission corrected)", outcome.phase_ms, outcome.phase_ms, (crate::experiment::OPEN_LOOP_SHARE * 100.0) as u32);
    let _ = writeln!(
        out,
        "- Postgres: {}; per-statement floor (median `SELECT 1` round trip): **{} µs**",
        outcome.postgres_source, outcome.postgres_round_trip_us
    );
    let _ = writeln!(out, "- seed: {}\n", outcome.seed);
    for (engine, settings) in &outcome.settings {
        let list: Vec<String> = settings.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = writeln!(out, "{engine} as it reports itself: {}\n", list.join(", "));
    }
}

fn loads_section(out: &mut String, outcome: &Outcome) {
    let _ = writeln!(out, "## Loads\n");
    let _ = writeln!(out, "| keys | engine | seconds | keys/s | on disk (data + WAL) | space amp | write amp | compaction debt |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for l in &outcome.loads {
        let logical = outcome.logical_bytes(l.scale);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} + {} | {:.2}x | {:.2}x | {} |",
            l.scale,
            l.engine,
            l.seconds,
            short(l.scale.keys as f64 / l.seconds.max(1e-9)),
            mib(l.footprint.data_bytes),
            mib(l.footprint.wal_bytes),
            ratio(l.footprint.total(), logical),
            ratio(l.written.total(), logical),
            l.compaction_debt_bytes.map_or("-".into(), mib)
        );
    }
    out.push('\n');
}

fn results_section(out: &mut String, outcome: &Outcome, scale: Scale) {
    let _ = writeln!(
        out,
        "## {scale} keys ({} logical)\n",
        mib(outcome.logical_bytes(scale))
    );
    let _ = writeln!(out, "| workload | keys | engine | ops/s | open-loop rate | p50 µs | p99 µs | write amp | on disk | space amp | compaction debt |");
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in outcome.cells.iter().filter(|c| c.scale == scale) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}x | {} | {:.2}x | {} |",
            c.mix.name,
            c.dist,
            c.engine,
            short(c.throughput_ops_s),
            short(c.open_rate_ops_s),
            c.p50_us,
            c.p99_us,
            write_amp(c),
            mib(c.footprint.total()),
            ratio(c.footprint.total(), outcome.logical_bytes(scale)),
            c.compaction_debt_bytes.map_or("-".into(), mib)
        );
    }
    out.push('\n');
    for (metric, _) in METRICS {
        let _ = writeln!(out, "![{metric}]({})", chart_file(scale, metric));
    }
    out.push('\n');
}

const METRICS: [(&str, &str); 4] = [
    ("throughput", "ops/s, closed loop"),
    ("p99", "p99 µs at the same open-loop rate"),
    ("write-amp", "bytes written per logical byte"),
    ("space-amp", "bytes on disk per logical byte"),
];

fn chart_file(scale: Scale, metric: &str) -> String {
    format!("{scale}-{metric}.svg")
}

/// The charts of the report, one per scale and metric.
pub fn charts(outcome: &Outcome) -> Vec<Chart> {
    let mut scales: Vec<Scale> = outcome.cells.iter().map(|c| c.scale).collect();
    scales.dedup();
    let mut out = Vec::new();
    for scale in scales {
        for (metric, unit) in METRICS {
            let groups: Vec<Group> = pairs(outcome)
                .into_iter()
                .filter(|(pg, _)| pg.scale == scale)
                .map(|(pg, rocks)| Group {
                    label: [pg.mix.name.clone(), pg.dist.to_string()],
                    values: [pg, rocks].map(|c| metric_value(outcome, c, metric)),
                })
                .collect();
            out.push(Chart {
                file: chart_file(scale, metric),
                svg: grouped_bars(
                    &format!("{scale} keys: {unit}"),
                    ["postgres", "rocksdb"],
                    &groups,
                ),
            });
        }
    }
    out
}

fn metric_value(outcome: &Outcome, c: &Cell, metric: &str) -> f64 {
    match metric {
        "throughput" => c.throughput_ops_s,
        "p99" => c.p99_us as f64,
        "write-amp" => write_amp(c),
        _ => ratio(c.footprint.total(), outcome.logical_bytes(c.scale)),
    }
}

fn verdicts_section(out: &mut String, outcome: &Outcome) {
    let _ = writeln!(out, "## When each engine wins, and why\n");
    let _ = writeln!(out, "| keys | workload | key distribution | faster (closed loop) | p99 at the same rate (postgres / rocksdb) | why |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (pg, rocks) in pairs(outcome) {
        let (winner, why) = verdict(outcome, pg, rocks);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {winner} | {} / {} µs | {why} |",
            pg.scale, pg.mix.name, pg.dist, pg.p99_us, rocks.p99_us
        );
    }
    out.push('\n');
    scale_trend(out, outcome);
}

/// How rocksdb's throughput over postgres's moves from the smallest scale to the largest.
fn scale_trend(out: &mut String, outcome: &Outcome) {
    let mut scales: Vec<Scale> = outcome.loads.iter().map(|l| l.scale).collect();
    scales.dedup();
    let _ = writeln!(out, "### As the data grows\n");
    if scales.len() < 2 {
        let _ = writeln!(out, "One scale was measured; `--scale 1m,10m,100m` shows how the picture changes once the data outgrows the caches.\n");
        return;
    }
    let _ = writeln!(out, "rocksdb's throughput over postgres's, per scale:\n");
    let _ = writeln!(
        out,
        "| workload | keys | {} |",
        scales
            .iter()
            .map(Scale::to_string)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(scales.len()));
    let mut seen: Vec<(String, KeyDist)> = Vec::new();
    for (pg, _) in pairs(outcome) {
        if seen.contains(&(pg.mix.name.clone(), pg.dist)) {
            continue;
        }
        seen.push((pg.mix.name.clone(), pg.dist));
        let row: Vec<String> = scales
            .iter()
            .map(|s| {
                pairs(outcome)
                    .into_iter()
                    .find(|(p, _)| p.scale == *s && p.mix == pg.mix && p.dist == pg.dist)
                    .map_or("-".into(), |(p, r)| {
                        format!("{:.2}x", r.throughput_ops_s / p.throughput_ops_s.max(1e-9))
                    })
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            pg.mix.name,
            pg.dist,
            row.join(" | ")
        );
    }
    out.push('\n');
}

const CAVEATS: &str = "## What these numbers do not measure\n\n\
- RocksDB runs inside this process; Postgres is a server reached over loopback TCP, so every \
  Postgres operation also pays a round trip (the floor above). That is part of what choosing \
  Postgres costs, but it is not the B-tree.\n\
- The operating system's page cache is not limited: data that outgrows the engines' caches may \
  still be served from memory rather than disk.\n\
- Bytes written are the engines' own counts. Postgres: WAL bytes (`pg_stat_wal`) plus pages \
  written by the checkpointer, background writer and backends (`pg_stat_bgwriter` x block \
  size), after a `CHECKPOINT`. RocksDB: WAL bytes plus flush and compaction bytes (its \
  statistics), after a memtable flush. Compaction RocksDB still owes is shown as debt and is \
  not in its write amplification yet; Postgres's autovacuum work is counted only as far as it \
  ran within the phase.\n\
- Both engines are settled after every workload (Postgres `CHECKPOINT`, RocksDB a memtable \
  flush). For Postgres after a short phase that is the worst case: every page a write touched \
  is written whole (8 KiB for a ~108-byte record), and the next write to it logs a full-page \
  image. Over a normal checkpoint interval (5 minutes) a hot page is written once however often \
  it changes, so longer phases (`--phase-ms`) show lower Postgres write amplification. In the \
  mostly-read workloads the few writes still each cost a heap page, an index page and their \
  full-page images, and reading a row soon after its write can dirty its page too (hint bits); \
  the counters do not separate the two.\n\
- Before each phase the run waits (up to 30 s) until RocksDB has no flush or compaction running \
  and Postgres no autovacuum worker, so one engine's background work does not share the cores \
  with the other's phase.\n\
- The phases are short; background work longer than a phase (compactions, autovacuum, a \
  checkpoint's spread) falls partly outside the window.\n";

/// The whole report as markdown.
pub fn markdown(outcome: &Outcome) -> String {
    let header = &outcome.measured;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Storage engines: Postgres (B-tree) and RocksDB (LSM) on identical workloads\n"
    );
    let _ = writeln!(
        out,
        "Measured {} on {}, by `{}`.\n",
        header.date, header.machine, header.command
    );
    settings_section(&mut out, outcome);
    loads_section(&mut out, outcome);
    let mut scales: Vec<Scale> = outcome.loads.iter().map(|l| l.scale).collect();
    scales.dedup();
    for scale in scales {
        results_section(&mut out, outcome, scale);
    }
    verdicts_section(&mut out, outcome);
    out.push_str(CAVEATS);
    out
}
