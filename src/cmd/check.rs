//! `quorumlab check FILE`: judge a history the lab did not necessarily produce.
//!
//! Reads the lab's own JSON (a `sim --json` document, a `run --json` list of runs, or a bare
//! `{"ops": [...]}`) or a Jepsen EDN history for the register or cas-register model, checks it
//! for linearizability and names the smallest set of operations that cannot be linearized.
//! Also reads a Jepsen `jepsen.log` (its client lines, one register with read, write and cas).
//! Exit 0: linearizable; 1: not; 3: unknown (the step budget ran out); 2: the file is bad.
//! `--bench DIR` times the checker on every history in a directory instead ([`bench`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use quorumlab_experiment::checker::{check_history, CheckLimits, Verdict};
use quorumlab_experiment::history_page::{render_history_html, HistoryPage};
use quorumlab_experiment::{jepsen, jepsen_log, History};
use serde_json::Value as Json;

use super::{Inconclusive, SafetyViolation};

mod bench;

/// `check`'s arguments.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The history: the lab's JSON (`sim --json`, `run --json`, or {"ops": [...]}), a Jepsen
    /// EDN history (`.edn`; register or cas-register, plain or with [key value] tuples) or a
    /// Jepsen `jepsen.log` (`.log`; one register). With --bench: a directory of them.
    file: PathBuf,
    /// Time the checker on every history in the directory FILE (each checked --repeats times,
    /// the search alone, without shrinking a failure) and print each verdict and time.
    #[arg(long)]
    bench: bool,
    /// With --bench: times each history is checked; its time is the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeats: u32,
    /// With --bench: another checker's verdicts and times on the same files (JSON list of
    /// {history, linearizable, median_ms, expected?}), printed beside ours; exit 1 if a verdict
    /// differs.
    #[arg(long, value_name = "FILE", requires = "bench")]
    baseline: Option<PathBuf>,
    /// Write a page with every operation per client and the culprits marked into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Search steps the checker may spend before answering unknown (exit 3).
    #[arg(long, default_value_t = CheckLimits::default().steps_max)]
    steps: u64,
    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,
}

/// One history found in the file, with how to talk about its times.
struct Found {
    label: String,
    history: History,
    model: &'static str,
    time_unit: &'static str,
}

/// Runs `check`.
pub fn command(args: CheckArgs) -> Result<()> {
    if args.bench {
        return bench::bench(
            &args.file,
            args.repeats,
            args.steps,
            args.baseline.as_deref(),
            args.json,
        );
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let found = read_histories(&args.file, &text)?;
    let limits = CheckLimits {
        steps_max: args.steps,
    };
    let verdicts: Vec<Verdict> = found
        .iter()
        .map(|f| check_history(&f.history, limits))
        .collect();
    if let Some(dir) = &args.report {
        write_reports(dir, &found, &verdicts)?;
    }
    if args.json {
        let doc: Vec<Json> = found
            .iter()
            .zip(&verdicts)
            .map(|(f, v)| {
                serde_json::json!({
                    "history": f.label, "model": f.model, "ops": f.history.ops.len(), "verdict": v,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (f, v) in found.iter().zip(&verdicts) {
            print_verdict(f, v);
        }
    }
    let violations = verdicts.iter().filter(|v| v.is_violation()).count();
    let unknown = verdicts.iter().filter(|v| v.is_unknown()).count();
    if violations > 0 {
        return Err(SafetyViolation(format!(
            "{violations} of {} histories are not linearizable",
            verdicts.len()
        ))
        .into());
    }
    if unknown > 0 {
        return Err(Inconclusive(format!("{unknown} of {} histories unknown: the search budget of {} steps ran out (raise --steps)", verdicts.len(), args.steps)).into());
    }
    Ok(())
}

fn print_verdict(f: &Found, v: &Verdict) {
    let counts = f.history.counts();
    let clients = f
        .history
        .ops
        .iter()
        .map(|o| o.client)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!(
        "{}: {} model, {} operations from {clients} clients (ok {}, fail {}, unknown {})",
        f.label,
        f.model,
        f.history.ops.len(),
        counts.ok,
        counts.fail,
        counts.info
    );
    println!("  {}", v.headline());
    if let Verdict::NotLinearizable { ops, minimal, .. } = v {
        let how = if *minimal {
            "no read or check in it can be dropped, and every write that could matter is kept"
        } else {
            "smallest found before the budget ran out"
        };
        let what = match ops.len() {
            1 => "this operation cannot be linearized: it read a value no operation wrote"
                .to_string(),
            n => format!("these {n} operations cannot be linearized together ({how})"),
        };
        println!("  {what}; times in {}:", f.time_unit);
        for op in ops {
            println!(
                "    #{} client {} {} [{} .. {}]",
                op.id,
                op.client,
                op.describe_brief(),
                op.invoke_us,
                op.complete_us
            );
        }
    }
}

/// The histories in `text`: EDN by extension or by its first form, else the lab's JSON.
fn read_histories(path: &Path, text: &str) -> Result<Vec<Found>> {
    let name = path.display().to_string();
    if is_log(path, text) {
        let imported = jepsen_log::read_log(text).map_err(|e| anyhow::anyhow!("{name}:{e}"))?;
        return Ok(vec![Found {
            label: name,
            history: imported.history,
            model: imported.model,
            time_unit: "log line positions",
        }]);
    }
    if is_edn(path, text) {
        let imported = jepsen::read(text).map_err(|e| anyhow::anyhow!("{name}:{e}"))?;
        return Ok(vec![Found {
            label: name,
            history: imported.history,
            model: imported.model,
            time_unit: "event positions",
        }]);
    }
    let json: Json = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{name}:{}:{}: not JSON or EDN: {e}", e.line(), e.column()))?;
    let histories =
        lab_histories(&json).with_context(|| format!("{name}: not a history the lab wrote"))?;
    Ok(histories
        .into_iter()
        .map(|(label, history)| {
            // Ids name operations in the verdict and the page; ids that do not tell operations
            // apart (another tool's, or an old run's) are replaced by invocation order.
            let history = if unique_ids(&history) {
                history
            } else {
                History::from_completed(history.ops)
            };
            let model = if history
                .ops
                .iter()
                .any(|o| matches!(o.kind, quorumlab_experiment::OpKind::Cas { .. }))
            {
                "cas-register"
            } else {
                "register"
            };
            Found {
                label: if label.is_empty() {
                    name.clone()
                } else {
                    format!("{name} {label}")
                },
                history,
                model,
                time_unit: "µs",
            }
        })
        .collect())
}

fn unique_ids(history: &History) -> bool {
    let ids: std::collections::HashSet<u64> = history.ops.iter().map(|o| o.id).collect();
    ids.len() == history.ops.len()
}

fn is_log(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("log") => true,
        Some("edn" | "json") => false,
        _ => jepsen_log::looks_like_log(text),
    }
}

fn is_edn(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("edn") => true,
        Some("json") => false,
        _ => {
            let rest = text
                .trim_start()
                .trim_start_matches(['[', '('])
                .trim_start();
            rest.starts_with('{') && rest[1..].trim_start().starts_with(':')
                || rest.starts_with('#')
        }
    }
}

/// Histories in a JSON document the lab wrote, each with a label (empty for a lone one).
fn lab_histories(json: &Json) -> Result<Vec<(String, History)>> {
    let one = |v: &Json| -> Result<History> { Ok(serde_json::from_value(v.clone())?) };
    if let Some(h) = json.get("history") {
        return Ok(vec![(String::new(), one(h)?)]);
    }
    if json.get("ops").is_some() {
        return Ok(vec![(String::new(), one(json)?)]);
    }
    let runs = json.get("runs").unwrap_or(json);
    match runs.as_array() {
        Some(items) if !items.is_empty() && items.iter().all(|r| r.get("history").is_some()) => items
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((format!("run {}", i + 1), one(&r["history"])?)))
            .collect(),
        Some(items) if items.iter().all(|o| o.get("f").is_some()) => {
            Ok(vec![(String::new(), one(&serde_json::json!({ "ops": items }))?)])
        }
        _ => bail!("expected an object with \"history\" or \"ops\", a list of runs with \"history\", or a list of operations"),
    }
}

fn write_reports(dir: &Path, found: &[Found], verdicts: &[Verdict]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (i, (f, v)) in found.iter().zip(verdicts).enumerate() {
        let page = HistoryPage {
            title: &f.label,
            time_unit: f.time_unit,
            verdict: v,
        };
        let name = if found.len() == 1 {
            "history.html".to_string()
        } else {
            format!("history-{}.html", i + 1)
        };
        let path = dir.join(name);
        std::fs::write(&path, render_history_html(&f.history, &page))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(())
}
