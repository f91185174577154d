//! `quorumlab check --bench DIR`: the checker's time on every history in a directory, for
//! setting it beside another checker's on the same files (e.g. Porcupine's Jepsen etcd logs).
//! Each history is read once and decided `repeats` times; its time is the median, of the search
//! alone (the yes/no answer another checker gives; shrinking a failure is not timed).
//! `--baseline FILE` reads the other checker's verdicts and times (JSON: a list of `{history,
//! linearizable, median_ms, expected?}`) and prints both side by side; a verdict that differs
//! from the baseline's, or from its `expected`, fails the run (exit 1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use quorumlab_experiment::checker::{decide_history, CheckLimits, Decision};
use quorumlab_experiment::History;
use serde::Deserialize;

use super::read_histories;
use crate::cmd::Mismatch;
use crate::runtime::progress;

/// Another checker's result for one history.
#[derive(Deserialize)]
struct Baseline {
    history: String,
    linearizable: bool,
    /// What that checker's own tests expect, when they say.
    #[serde(default)]
    expected: Option<bool>,
    median_ms: f64,
}

/// One history's result.
struct Timed {
    file: String,
    ops: usize,
    decision: Decision,
    median_ms: f64,
    min_ms: f64,
}

impl Timed {
    fn linearizable(&self) -> Option<bool> {
        match self.decision {
            Decision::Unknown => None,
            d => Some(d == Decision::Linearizable),
        }
    }
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

/// Every history in `files`, by file name; a bad one stops the run before anything is timed.
fn read_all(files: &[PathBuf]) -> Result<Vec<(String, History)>> {
    let mut histories = Vec::with_capacity(files.len());
    for path in files {
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
    Ok(histories)
}

fn read_baseline(path: &Path) -> Result<HashMap<String, Baseline>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the baseline {}", path.display()))?;
    let rows: Vec<Baseline> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a list of {{history, linearizable, median_ms}}",
            path.display()
        )
    })?;
    Ok(rows.into_iter().map(|b| (b.history.clone(), b)).collect())
}

/// Decides `history` `repeats` times: (decision, median ms, min ms).
fn time_one(history: &History, repeats: u32, limits: CheckLimits) -> (Decision, f64, f64) {
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
pub(super) fn bench(
    dir: &Path,
    repeats: u32,
    steps: u64,
    baseline: Option<&Path>,
    json: bool,
) -> Result<()> {
    let histories = read_all(&files(dir)?)?;
    let baseline = baseline.map(read_baseline).transpose()?.unwrap_or_default();
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
    match json {
        true => print_json(&results, &baseline, repeats)?,
        false => print_table(&results, &baseline, repeats),
    }
    verdicts_agree(&results, &baseline)
}

fn verdict(d: &Decision) -> &'static str {
    match d {
        Decision::Linearizable => "linearizable",
        Decision::NotLinearizable { .. } => "not linearizable",
        Decision::Unknown => "unknown",
    }
}

fn print_json(results: &[Timed], baseline: &HashMap<String, Baseline>, repeats: u32) -> Result<()> {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let b = baseline.get(&r.file);
            serde_json::json!({
                "history": r.file, "ops": r.ops, "verdict": verdict(&r.decision),
                "linearizable": r.linearizable(), "median_ms": r.median_ms, "min_ms": r.min_ms,
                "baseline_linearizable": b.map(|b| b.linearizable),
                "baseline_expected": b.and_then(|b| b.expected),
                "baseline_median_ms": b.map(|b| b.median_ms),
            })
        })
        .collect();
    let total_ms: f64 = results.iter().map(|r| r.median_ms).sum();
    let (base_ms, _) = baseline_totals(results, baseline);
    let doc = serde_json::json!({
        "repeats": repeats, "histories": rows.len(), "total_median_ms": total_ms,
        "baseline_total_median_ms": (!baseline.is_empty()).then_some(base_ms),
        "results": rows,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The baseline's total over the histories it has, and how many of ours were slower than it.
fn baseline_totals(results: &[Timed], baseline: &HashMap<String, Baseline>) -> (f64, usize) {
    let pairs = results
        .iter()
        .filter_map(|r| baseline.get(&r.file).map(|b| (r, b)));
    pairs.fold((0.0, 0), |(sum, slower), (r, b)| {
        (
            sum + b.median_ms,
            slower + usize::from(r.median_ms > b.median_ms),
        )
    })
}

fn print_table(results: &[Timed], baseline: &HashMap<String, Baseline>, repeats: u32) {
    let with_base = !baseline.is_empty();
    print!(
        "{:<24} {:>5}  {:<17} {:>10}",
        "history", "ops", "verdict", "ms"
    );
    if with_base {
        print!(" {:>12} {:>8}", "baseline ms", "speedup");
    }
    println!();
    for r in results {
        print!(
            "{:<24} {:>5}  {:<17} {:>10.3}",
            r.file,
            r.ops,
            verdict(&r.decision),
            r.median_ms
        );
        if let Some(b) = baseline.get(&r.file) {
            print!(" {:>12.3} {:>7.1}x", b.median_ms, b.median_ms / r.median_ms);
        }
        println!();
    }
    let total_ms: f64 = results.iter().map(|r| r.median_ms).sum();
    let slowest = results
        .iter()
        .max_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    println!(
        "{} histories in {total_ms:.1} ms (sum of medians of {repeats}); slowest {} at {:.1} ms",
        results.len(),
        slowest.map_or("-", |r| r.file.as_str()),
        slowest.map_or(0.0, |r| r.median_ms)
    );
    if with_base {
        let (base_ms, slower) = baseline_totals(results, baseline);
        println!(
            "baseline: {base_ms:.1} ms in total, {:.1}x ours; {slower} histories slower here than there",
            base_ms / total_ms
        );
    }
}

/// Fails when a verdict differs from the baseline's or from what the baseline's tests expect.
fn verdicts_agree(results: &[Timed], baseline: &HashMap<String, Baseline>) -> Result<()> {
    let disagree: Vec<&str> = results
        .iter()
        .filter(|r| {
            baseline.get(&r.file).is_some_and(|b| {
                r.linearizable() != Some(b.linearizable)
                    || b.expected.is_some_and(|e| Some(e) != r.linearizable())
            })
        })
        .map(|r| r.file.as_str())
        .collect();
    if !disagree.is_empty() {
        bail!(Mismatch(format!(
            "{} verdicts differ from the baseline's or its expectations: {}",
            disagree.len(),
            disagree.join(", ")
        )));
    }
    Ok(())
}
