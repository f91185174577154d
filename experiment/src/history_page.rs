//! A history drawn for a reader: one row per client (Jepsen's "process"), each operation a bar
//! from invocation to completion, coloured by outcome, with the operations a verdict names marked.
//!
//! Two views on one self-contained page (inline SVG, no scripts): the whole history, so the reader
//! sees where the trouble sits, and a close-up of the stretch the named operations span, with
//! every operation in it labelled.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::checker::Verdict;
use crate::history::{History, Op, Outcome};
use crate::report::escape;

/// What the page shows besides the history itself.
pub struct HistoryPage<'a> {
    /// Page title (e.g. the file checked).
    pub title: &'a str,
    /// The unit of the operations' times, e.g. `µs` or `event #`.
    pub time_unit: &'a str,
    /// The checker's verdict; its named operations are marked.
    pub verdict: &'a Verdict,
}

const ROW_PX: u64 = 18;
const LEFT_PX: u64 = 90;
const WIDTH_PX: u64 = 1100;

/// Renders `history` as one HTML page.
pub fn render_history_html(history: &History, page: &HistoryPage) -> String {
    // Marked by the whole operation, not its id: a history from elsewhere may reuse ids.
    let marked = Marked(match page.verdict {
        Verdict::NotLinearizable { ops, .. } => ops.as_slice(),
        _ => &[],
    });
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         .legend span{{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:3px}}\
         li{{font-family:ui-monospace,monospace}}</style></head><body><h1>{t}</h1>\
         <p><b>{v}</b> &middot; {n} operations</p>",
        t = escape(page.title),
        v = escape(&page.verdict.headline()),
        n = history.ops.len()
    );
    html.push_str("<p class=\"legend\">");
    for (name, colour) in [
        ("ok", "#90caf9"),
        ("fail", "#e0e0e0"),
        ("unknown", "#ffe082"),
        ("named by the verdict", "#d32f2f"),
    ] {
        let _ = write!(html, "<span style=\"background:{colour}\">{name}</span>");
    }
    html.push_str("</p>");
    if !marked.0.is_empty() {
        html.push_str("<h2>The operations that cannot be linearized together</h2><ol>");
        let mut named: Vec<&Op> = history.ops.iter().filter(|o| marked.contains(o)).collect();
        named.sort_by_key(|o| (o.invoke_us, o.id));
        for op in &named {
            let _ = write!(html, "<li>{}</li>", escape(&describe(op, page.time_unit)));
        }
        let key = named.first().map(|o| o.kind.key());
        let _ = write!(
            html,
            "</ol><h2>Close-up: every operation on k{} while these ran</h2>",
            key.unwrap_or(0)
        );
        let from = named.iter().map(|o| o.invoke_us).min().unwrap_or(0);
        let to = named
            .iter()
            .map(|o| end_of(o, history))
            .max()
            .unwrap_or(from + 1);
        let near: Vec<&Op> = history
            .ops
            .iter()
            .filter(|o| Some(o.kind.key()) == key)
            .filter(|o| o.invoke_us <= to && end_of(o, history) >= from)
            .collect();
        html.push_str(&lanes_svg(&near, &marked, (from, to.max(from + 1)), true));
    }
    html.push_str("<h2>The whole history</h2>");
    let all: Vec<&Op> = history.ops.iter().collect();
    let end = history
        .ops
        .iter()
        .map(|o| end_of(o, history))
        .max()
        .unwrap_or(1);
    html.push_str(&lanes_svg(&all, &marked, (0, end.max(1)), false));
    html.push_str("</body></html>\n");
    html
}

/// The operations a verdict names (a handful), looked up by equality.
struct Marked<'a>(&'a [Op]);

impl Marked<'_> {
    fn contains(&self, op: &Op) -> bool {
        self.0.iter().any(|named| named == op)
    }
}

/// Where an operation's bar ends: its completion, or the history's last time if it never did.
fn end_of(op: &Op, history: &History) -> u64 {
    if op.complete_us == u64::MAX {
        history
            .ops
            .iter()
            .map(|o| o.invoke_us)
            .max()
            .unwrap_or(op.invoke_us)
            + 1
    } else {
        op.complete_us
    }
}

fn describe(op: &Op, unit: &str) -> String {
    format!(
        "#{} client {}: {} [{} .. {} {unit}]",
        op.id,
        op.client,
        op.describe_brief(),
        op.invoke_us,
        op.complete_us
    )
}

/// One lane per client; bars scaled to `window`; `labels` writes each bar's operation on it.
fn lanes_svg(ops: &[&Op], marked: &Marked, window: (u64, u64), labels: bool) -> String {
    let clients: BTreeSet<u32> = ops.iter().map(|o| o.client).collect();
    let row: Vec<u32> = clients.into_iter().collect();
    let height = ROW_PX * row.len() as u64 + 30;
    let span = (window.1 - window.0) as f64;
    let x = |t: u64| {
        LEFT_PX as f64
            + (t.clamp(window.0, window.1) - window.0) as f64 / span
                * (WIDTH_PX - LEFT_PX - 10) as f64
    };
    let mut svg = format!("<svg width=\"{WIDTH_PX}\" height=\"{height}\" font-size=\"11\">");
    for (i, client) in row.iter().enumerate() {
        let y = i as u64 * ROW_PX;
        let _ = write!(svg, "<text x=\"4\" y=\"{}\">client {client}</text>", y + 13);
    }
    for op in ops {
        let i = row.binary_search(&op.client).unwrap_or(0) as u64;
        let (x0, x1) = (
            x(op.invoke_us),
            x(op.complete_us).max(x(op.invoke_us) + 1.5),
        );
        let colour = if marked.contains(op) {
            "#d32f2f"
        } else {
            match op.outcome {
                Outcome::Ok { .. } => "#90caf9",
                Outcome::Fail => "#e0e0e0",
                Outcome::Info => "#ffe082",
            }
        };
        let y = i * ROW_PX + 3;
        let _ = write!(svg, "<rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"12\" fill=\"{colour}\"><title>{}</title></rect>", x1 - x0, escape(&format!("#{} {}", op.id, op.describe_brief())));
        let label = format!("#{} {}", op.id, op.describe_brief());
        // Named operations always get their label; others only where it fits in the bar.
        let fits = (x1 - x0) >= 6.0 * label.len() as f64;
        if labels && (marked.contains(op) || fits) {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\">{}</text>",
                x0 + 2.0,
                y + 10,
                escape(&label)
            );
        }
    }
    let _ = write!(svg, "<text x=\"{LEFT_PX}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>", height - 6, window.0, WIDTH_PX - 10, height - 6, window.1);
    svg
}
