//! Logs of the long-running processes (`serve`, `agent`, the real driver's `run` and
//! `compare`, `machines`) through `tracing`: `RUST_LOG` picks what is shown (default: quorumlab's
//! own events from info up, other crates' from warn up), `--log-format json` makes one JSON object
//! per line for shipping, the default is for people. Logs go to stderr; stdout stays the
//! command's output. Each line is written above the progress bars, never into one.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line (timestamp, level, fields, span context).
    Json,
}

/// Used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str =
    "warn,quorumlab=info,quorumlab_service=info,quorumlab_cluster=info,quorumlab_loadtest=info";

/// Installs the process's subscriber; `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal, never into a file or a pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(AboveBars);
    let installed = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // A second init (tests calling in twice) keeps the first subscriber.
    drop(installed);
}

/// Writes each log line to stderr above the progress bars: the formatter writes one event into a
/// [`LogLine`], which is written whole, with the bars lifted, when it is dropped.
struct AboveBars;

impl<'a> MakeWriter<'a> for AboveBars {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One formatted event, held until it is complete.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        crate::runtime::bars().suspend(|| {
            // A closed stderr has nowhere to report to.
            let _ = std::io::stderr().lock().write_all(&line);
        });
    }
}
