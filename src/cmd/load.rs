//! `quorumlab load`: the reference service under an open-model load, one rate or the highest rate
//! that keeps read p99 under a limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use quorumlab_loadtest::{find_max_rate, run, seed_users, LoadReport, Plan, Population, RateStep};

/// `load`'s arguments.
#[derive(clap::Args)]
pub struct LoadArgs {
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
}

impl LoadArgs {
    /// The load test the arguments describe.
    fn plan(&self) -> Plan {
        Plan {
            target: self.target.trim_end_matches('/').to_string(),
            mix: quorumlab_loadtest::Mix::named(&self.mix).expect("clap checked the name"),
            rate: self.rate,
            duration: Duration::from_secs(self.duration),
            html_report: self.report.clone(),
            seed: self.seed,
        }
    }
}

fn step_bar(duration: Duration, what: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} s  {msg}  {elapsed_precise}")
    {
        bar.set_style(style);
    }
    bar.set_message(what);
    crate::runtime::shown(bar)
}

/// Runs `run_one` while a bar counts the seconds of a step.
async fn with_bar<T>(
    duration: Duration,
    what: String,
    run_one: impl std::future::Future<Output = T>,
) -> T {
    let bar = step_bar(duration, what);
    let started = Instant::now();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(started.elapsed().as_secs().min(bar.length().unwrap_or(0)));
            }
        })
    };
    let out = run_one.await;
    ticker.abort();
    bar.finish_and_clear();
    out
}

/// `quorumlab load`: one rate, or the `--find-max` search.
pub fn command(args: LoadArgs) -> Result<()> {
    let plan = args.plan();
    crate::runtime::runtime()?.block_on(async {
        let seeding = crate::runtime::progress(args.accounts, "accounts created");
        let population =
            seed_users(&plan.target, args.accounts as usize, 32, || seeding.inc(1)).await;
        seeding.finish_and_clear();
        let population = population?;
        if args.find_max {
            return find_max(&args, &plan, &population).await;
        }
        let what = format!("{} at {}/s", mix_name(plan.mix), plan.rate);
        let report = with_bar(plan.duration, what, run(&plan, &population)).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report, plan.html_report.as_deref());
        }
        Ok(())
    })
}

/// Doubles the rate until a step fails, then narrows down; prints each step and the best rate.
async fn find_max(args: &LoadArgs, plan: &Plan, population: &Population) -> Result<()> {
    let html = plan.html_report.clone();
    let html_for = |rate: u32| html.as_deref().map(|p| per_rate(p, rate));
    let spinner = crate::runtime::shown(indicatif::ProgressBar::new_spinner());
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner.set_message(format!(
        "{}: one {} s step per rate, from {}/s",
        mix_name(plan.mix),
        plan.duration.as_secs(),
        plan.rate
    ));
    let steps = find_max_rate(
        plan,
        population,
        args.p99_limit_ms,
        args.ceiling,
        |step| {
            if !args.json {
                spinner.suspend(|| println!("{}", step_line(step)));
            }
            spinner.set_message(format!("last step {}/s", step.report.offered_per_s));
        },
        html_for,
    )
    .await;
    spinner.finish_and_clear();
    let steps = steps?;
    let best = steps
        .iter()
        .filter(|s| s.passed)
        .map(|s| s.report.offered_per_s)
        .max();
    if args.json {
        let out = serde_json::json!({
            "p99_limit_ms": args.p99_limit_ms,
            "highest_passing_rate": best,
            "steps": steps,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match best {
        Some(rate) => println!(
            "\nhighest {} rate with every read endpoint's p99 < {} ms, no failures and \
             >= 95% of the offered rate answered: {rate} req/s",
            mix_name(plan.mix),
            args.p99_limit_ms
        ),
        None => println!(
            "\nno rate tried met the bar (read p99 < {} ms, no failures, >= 95% answered); \
             try a lower --rate",
            args.p99_limit_ms
        ),
    }
    if let Some(path) = &plan.html_report {
        println!(
            "HTML report per rate: {}",
            per_rate(path, 0)
                .display()
                .to_string()
                .replace("-0.", "-<rate>.")
        );
    }
    Ok(())
}

fn mix_name(mix: quorumlab_loadtest::Mix) -> &'static str {
    quorumlab_loadtest::Mix::ALL
        .iter()
        .find(|(_, m)| *m == mix)
        .map_or("?", |(n, _)| n)
}

/// `report.html` for rate 2000 is `report-2000.html`.
fn per_rate(path: &Path, rate: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or("report".into(), |s| s.to_string_lossy());
    let ext = path
        .extension()
        .map_or("html".into(), |e| e.to_string_lossy());
    path.with_file_name(format!("{stem}-{rate}.{ext}"))
}

fn step_line(step: &RateStep) -> String {
    let r = &step.report;
    format!(
        "{:>7}/s offered  {:>8.1}/s answered  read p99 {:>7.2} ms  {:>5} failed  {}",
        r.offered_per_s,
        r.achieved_per_s,
        r.read_p99_ms,
        r.failures,
        if step.passed { "pass" } else { "FAIL" }
    )
}

fn print_report(report: &LoadReport, html: Option<&Path>) {
    println!(
        "{} mix, {}/s offered for {:.0} s by {} users: {:.1}/s answered, {} failed",
        mix_name(report.mix),
        report.offered_per_s,
        report.duration_s,
        report.users,
        report.achieved_per_s,
        report.failures
    );
    println!(
        "\n{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "endpoint", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "failed", "backfilled"
    );
    for e in &report.endpoints {
        println!(
            "{:<28} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>7} {:>10}",
            e.endpoint, e.per_s, e.p50_ms, e.p95_ms, e.p99_ms, e.max_ms, e.failures, e.backfilled
        );
    }
    let reads: u64 = report.served_by.values().sum();
    if reads > 0 {
        let shares: Vec<String> = report
            .served_by
            .iter()
            .map(|(node, n)| format!("{node} {:.0}%", *n as f64 * 100.0 / reads as f64))
            .collect();
        println!("\nreads served by: {}", shares.join(", "));
        match &report.service_reads_by_node {
            Some(counted) => {
                let counted: Vec<String> = counted
                    .iter()
                    .map(|(node, n)| format!("{node} {n}"))
                    .collect();
                println!(
                    "the service's own count (reads_total, all clients): {}",
                    counted.join(", ")
                );
            }
            None => println!("(the service has no /metrics: its own count is not shown)"),
        }
    }
    println!("percentiles are coordinated-omission corrected (Goose, average cadence)");
    if let Some(path) = html {
        println!("HTML report: {}", path.display());
    }
}
