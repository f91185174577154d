//! How long work runs: the one place that builds a tokio runtime, and the progress bars that show
//! long work on stderr.

use std::sync::LazyLock;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar};

/// Every progress bar of the process, drawn as one group so that log lines can be written above
/// them ([`crate::logging`] suspends the group for each line); a line written while a bar is
/// being drawn would otherwise land inside it.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// The process's progress bars, for writing a line above them.
pub fn bars() -> &'static MultiProgress {
    &BARS
}

/// `bar`, drawn with the process's other bars (every bar the command line shows goes through
/// here).
pub fn shown(bar: ProgressBar) -> ProgressBar {
    BARS.add(bar)
}

/// A multi-threaded tokio runtime for one command. Every async call of the command line goes
/// through here, so there is one place that decides how async work is run.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// A progress bar of `len` steps named `what` (e.g. `real runs`), with elapsed time.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} {what}  {{elapsed_precise}}"
    )) {
        bar.set_style(style);
    }
    shown(bar)
}

/// A spinner counting work of unknown length, e.g. `12 runs tried`.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template(&format!("{{spinner}} {{pos}} {what}  {{elapsed}}"))
    {
        bar.set_style(style);
    }
    shown(bar)
}

/// A progress bar over seeds, with an estimate of the time left (sweeps are long and even).
pub fn seed_progress(seeds: u64) -> Result<ProgressBar> {
    let bar = ProgressBar::new(seeds);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds  {elapsed_precise} (eta {eta})",
        )
        .context("progress bar template")?,
    );
    Ok(shown(bar))
}
