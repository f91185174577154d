//! `quorumlab check --bench DIR`: the checker's time on every history in a directory, for
//! setting it beside another checker's on the same files (e.g. Porcupine's Jepsen etcd logs).
//! Each history is read once and decided `repeats` times; its time is the median, of the search
//! alone (the yes/no answer another checker gives; shrinking a failure is not timed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use quorumlab_experiment::checker::{decide_history, CheckLimits, Decision};

use super::read_histories;
use crate::runtime::progress;

/// One history's result.
struct Timed {
    file: String,
    ops: usize,
    decision: Decision,
    median_ms: f64,
    min_ms: f64,
}

/// The files of `dir`, sorted by name (hidden ones left out).
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--bench needs a directory of histories: {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no histories in it", dir.display());
    }
    Ok(files)
}

/// Decides `history` `repeats` times: (decision, median ms, min ms).
fn time_one(
    history: &quorumlab_experiment::History,
    repeats: u32,
    limits: CheckLimits,
) -> (Decision, f64, f64) {
    let mut times = Vec::with_capacity(repeats as usize);
    let mut decision = Decision::Unknown;
    for _ in 0..repeats {
        let started = Instant::now();
        decision = decide_history(history, limits);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (decision, times[times.len() / 2], times[0])
}

/// Runs the benchmark over `dir` and prints a table, or JSON.
pub(super) fn bench(dir: &Path, repeats: u32, steps: u64, json: bool) -> Result<()> {
    let files = files(dir)?;
    // Every file is read before any is timed: a bad one stops the run before it starts.
    let mut histories = Vec::with_capacity(files.len());
    for path in &files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut found = read_histories(path, &text)?;
        if found.len() != 1 {
            bail!(
                "{}: holds {} histories; --bench takes one per file",
                path.display(),
                found.len()
            );
        }
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        histories.push((name, found.remove(0).history));
    }
    let limits = CheckLimits { steps_max: steps };
    let bar = progress(histories.len() as u64, "histories");
    let results: Vec<Timed> = histories
        .iter()
        .map(|(file, history)| {
            let (decision, median_ms, min_ms) = time_one(history, repeats, limits);
            bar.inc(1);
            Timed {
                file: file.clone(),
                ops: history.ops.len(),
                decision,
                median_ms,
                min_ms,
            }
        })
        .collect();
    bar.finish_and_clear();
    report(&results, repeats, json)
}

fn report(results: &[Timed], repeats: u32, json: bool) -> Result<()> {
    let total_ms: f64 = results.iter().map(|r| r.median_ms).sum();
    let verdict = |d: &Decision| match d {
        Decision::Linearizable => "linearizable",
        Decision::NotLinearizable { .. } => "not linearizable",
        Decision::Unknown => "unknown",
    };
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| serde_json::json!({
                "history": r.file, "ops": r.ops, "verdict": verdict(&r.decision),
                "linearizable": match r.decision { Decision::Unknown => None, d => Some(d == Decision::Linearizable) },
                "median_ms": r.median_ms, "min_ms": r.min_ms,
            }))
            .collect();
        let doc = serde_json::json!({"repeats": repeats, "histories": rows.len(), "total_median_ms": total_ms, "results": rows});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>6}  {:<17} {:>10} {:>10}",
        "history", "ops", "verdict", "median ms", "min ms"
    );
    for r in results {
        println!(
            "{:<24} {:>6}  {:<17} {:>10.3} {:>10.3}",
            r.file,
            r.ops,
            verdict(&r.decision),
            r.median_ms,
            r.min_ms
        );
    }
    let slowest = results
        .iter()
        .max_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    println!(
        "{} histories in {total_ms:.1} ms (sum of medians of {repeats}); slowest {} at {:.1} ms",
        results.len(),
        slowest.map_or("-", |r| r.file.as_str()),
        slowest.map_or(0.0, |r| r.median_ms)
    );
    Ok(())
}
