//! The report: one self-contained HTML page per run, with pictures rather than walls of text.
//!
//! A [`Timeline`] is what a run looked like, independent of whether it was simulated or real:
//! every node's role and term over time, the faults as shaded bands, the messages around the
//! fault, and summary lines. [`render_html`] draws it as inline SVG — a role/term swimlane chart
//! and a message-sequence (Lamport) diagram — with no scripts or external files, so the page opens
//! anywhere.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A stretch of time during which one node held one role in one term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSpan {
    /// Index into [`Timeline::nodes`].
    pub node: usize,
    /// Start, in microseconds.
    pub from_us: u64,
    /// End, in microseconds.
    pub to_us: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate` or `down`.
    pub role: String,
    /// The node's term.
    pub term: u64,
}

/// A fault, from injection to heal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpan {
    /// Start, in microseconds.
    pub from_us: u64,
    /// End, in microseconds.
    pub to_us: u64,
    /// What it was.
    pub label: String,
}

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageArrow {
    /// Sender index into [`Timeline::nodes`].
    pub from: usize,
    /// Receiver index.
    pub to: usize,
    /// Send time, in microseconds.
    pub send_us: u64,
    /// Delivery time; `None` if it was lost.
    pub recv_us: Option<u64>,
    /// Short label, e.g. `Vote t4`.
    pub label: String,
}

/// Everything the report draws.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Page title.
    pub title: String,
    /// Explanatory paragraph (the scenario description).
    pub description: String,
    /// Node names, top to bottom.
    pub nodes: Vec<String>,
    /// Length of the run, in microseconds.
    pub duration_us: u64,
    /// Role spans.
    pub roles: Vec<RoleSpan>,
    /// Fault spans.
    pub faults: Vec<FaultSpan>,
    /// Messages for the sequence diagram.
    pub messages: Vec<MessageArrow>,
    /// Summary as (metric, value) rows.
    pub summary: Vec<(String, String)>,
}

fn role_colour(role: &str) -> &'static str {
    match role {
        "leader" | "primary" => "#2e7d32",
        "candidate" | "primary, not yet writable" => "#f9a825",
        "pre-candidate" => "#fff176",
        "down" => "#9e9e9e",
        _ => "#90caf9",
    }
}

/// The roles the legend lists: a Raft cluster's, or a replica set's when its members are
/// primaries and secondaries.
fn legend(t: &Timeline) -> &'static [&'static str] {
    if t.roles
        .iter()
        .any(|r| r.role == "primary" || r.role == "secondary")
    {
        &["primary", "primary, not yet writable", "secondary", "down"]
    } else {
        &["leader", "candidate", "pre-candidate", "follower", "down"]
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the timeline as one HTML page.
pub fn render_html(t: &Timeline) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}\
         table{{border-collapse:collapse}}td{{padding:2px 12px;border-bottom:1px solid #ddd}}\
         .legend span{{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:3px}}\
         </style></head><body><h1>{title}</h1><p>{desc}</p>",
        title = escape(&t.title),
        desc = escape(&t.description)
    );
    html.push_str("<h2>Summary</h2><table>");
    for (k, v) in &t.summary {
        let _ = write!(
            html,
            "<tr><td>{}</td><td><b>{}</b></td></tr>",
            escape(k),
            escape(v)
        );
    }
    html.push_str("</table><h2>Roles and terms</h2><p class=\"legend\">");
    for role in legend(t) {
        let _ = write!(
            html,
            "<span style=\"background:{}\">{role}</span>",
            role_colour(role)
        );
    }
    html.push_str("<span style=\"background:#ef9a9a\">fault</span></p>");
    html.push_str(&roles_svg(t));
    if !t.messages.is_empty() {
        html.push_str(
            "<h2>Messages around the fault</h2><p>Time runs downward in event order (each row is one \
             instant; the left margin gives the time). Each arrow is one Raft message from send to \
             delivery; votes are blue; a red line ending in &times; was never delivered.</p>",
        );
        html.push_str(&sequence_svg(t));
    }
    html.push_str("</body></html>\n");
    html
}

const LANE_H: f64 = 34.0;
const LEFT: f64 = 60.0;
const WIDTH: f64 = 1100.0;

fn roles_svg(t: &Timeline) -> String {
    let plot_w = WIDTH - LEFT - 20.0;
    let x = |us: u64| LEFT + plot_w * us as f64 / t.duration_us.max(1) as f64;
    let height = 40.0 + LANE_H * t.nodes.len() as f64;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-size=\"11\">");
    for f in &t.faults {
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#ef9a9a\" opacity=\"0.45\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#b71c1c\">{}</text>",
            x(f.from_us),
            (x(f.to_us) - x(f.from_us)).max(2.0),
            height - 20.0,
            escape(&f.label),
            x(f.from_us) + 2.0,
            height - 24.0,
            escape(&f.label)
        );
    }
    for (i, name) in t.nodes.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\">{}</text>",
            6.0 + LANE_H * i as f64 + LANE_H / 2.0,
            escape(name)
        );
    }
    for r in &t.roles {
        let (x0, x1) = (x(r.from_us), x(r.to_us));
        let y = 4.0 + LANE_H * r.node as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#fff\"><title>{} term {} ({:.3}s-{:.3}s)</title></rect>",
            (x1 - x0).max(0.5),
            LANE_H - 8.0,
            role_colour(&r.role),
            r.role,
            r.term,
            r.from_us as f64 / 1e6,
            r.to_us as f64 / 1e6
        );
        if x1 - x0 > 24.0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">t{}</text>",
                x0 + 3.0,
                y + LANE_H / 2.0,
                r.term
            );
        }
    }
    let seconds = t.duration_us / 1_000_000;
    let every = (seconds / 20).max(1);
    for s in (0..=seconds).step_by(every as usize) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{s}s</text>",
            x(s * 1_000_000),
            height - 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Vertical space per distinct instant in the sequence diagram.
const ROW_H: f64 = 16.0;

/// The message-sequence diagram. Time runs downward in *event order*, Lamport-style: every
/// distinct send or delivery instant gets its own row, so a burst of messages within a few
/// milliseconds is as readable as a quiet second. The left margin shows the simulated time.
fn sequence_svg(t: &Timeline) -> String {
    let mut instants: Vec<u64> = t
        .messages
        .iter()
        .flat_map(|m| [Some(m.send_us), m.recv_us])
        .flatten()
        .collect();
    instants.extend(t.faults.iter().map(|f| f.from_us));
    instants.sort_unstable();
    instants.dedup();
    let first = instants.first().copied().unwrap_or(0);
    let last = instants.last().copied().unwrap_or(0);
    instants.retain(|&i| i >= first && i <= last);
    let row = |us: u64| instants.partition_point(|&i| i < us);
    let y = |us: u64| 40.0 + ROW_H * row(us) as f64;
    let col_w = (WIDTH - 160.0) / t.nodes.len().max(1) as f64;
    let col = |i: usize| 120.0 + col_w * (i as f64 + 0.5);
    let height = 60.0 + ROW_H * instants.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" font-size=\"10\">\
         <defs><marker id=\"arrow\" markerWidth=\"8\" markerHeight=\"8\" refX=\"7\" refY=\"3\" orient=\"auto\">\
         <path d=\"M0,0 L7,3 L0,6 z\" fill=\"#555\"/></marker></defs>"
    );
    for (i, name) in t.nodes.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">{}</text>\
             <line x1=\"{:.1}\" y1=\"28\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#bbb\"/>",
            col(i),
            escape(name),
            col(i),
            col(i),
            height
        );
    }
    let mut last_label: Option<u64> = None;
    for &us in &instants {
        if last_label.is_none_or(|l| us >= l + 20_000) {
            let _ = write!(
                svg,
                "<text x=\"4\" y=\"{:.1}\" fill=\"#777\">{:.3}s</text>",
                y(us) + 3.0,
                us as f64 / 1e6
            );
            last_label = Some(us);
        }
    }
    for f in t
        .faults
        .iter()
        .filter(|f| f.from_us >= first && f.from_us <= last)
    {
        let _ = write!(
            svg,
            "<line x1=\"60\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c62828\" stroke-dasharray=\"4\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" fill=\"#c62828\" text-anchor=\"end\">{}</text>",
            WIDTH - 10.0,
            y(f.from_us),
            y(f.from_us),
            WIDTH - 10.0,
            y(f.from_us) - 3.0,
            escape(&f.label)
        );
    }
    for m in &t.messages {
        draw_message(&mut svg, m, &col, &y);
    }
    svg.push_str("</svg>");
    svg
}

/// One message of the sequence diagram: an arrow to its receiver, or a cross where it was lost;
/// votes and lost messages are labelled.
fn draw_message(
    svg: &mut String,
    m: &MessageArrow,
    col: &dyn Fn(usize) -> f64,
    y: &dyn Fn(u64) -> f64,
) {
    let (x0, y0) = (col(m.from), y(m.send_us));
    let is_vote = m.label.contains("Vote");
    let colour = if is_vote { "#1565c0" } else { "#777" };
    match m.recv_us {
        Some(r) => {
            let _ = write!(
                svg,
                "<line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" marker-end=\"url(#arrow)\"><title>{}</title></line>",
                col(m.to),
                y(r),
                escape(&m.label)
            );
        }
        None => {
            let (x1, y1) = ((x0 + col(m.to)) / 2.0, y0 + ROW_H / 2.0);
            let _ = write!(
                svg,
                "<line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x1:.1}\" y2=\"{y1:.1}\" stroke=\"#c62828\"><title>{} (lost)</title></line>\
                 <text x=\"{x1:.1}\" y=\"{:.1}\" fill=\"#c62828\" text-anchor=\"middle\">&#215;</text>",
                escape(&m.label),
                y1 + 4.0
            );
        }
    }
    if is_vote || m.recv_us.is_none() {
        let anchor = if col(m.to) > x0 { "start" } else { "end" };
        let dx = if col(m.to) > x0 { 6.0 } else { -6.0 };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" text-anchor=\"{anchor}\">{}</text>",
            x0 + dx,
            y0 - 2.0,
            escape(&m.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_self_contained_and_escaped() {
        let t = Timeline {
            title: "a <b> run".into(),
            nodes: vec!["n1".into(), "n2".into()],
            duration_us: 2_000_000,
            roles: vec![RoleSpan {
                node: 0,
                from_us: 0,
                to_us: 2_000_000,
                role: "leader".into(),
                term: 2,
            }],
            faults: vec![FaultSpan {
                from_us: 500_000,
                to_us: 900_000,
                label: "isolate n1".into(),
            }],
            messages: vec![MessageArrow {
                from: 0,
                to: 1,
                send_us: 500_000,
                recv_us: None,
                label: "Append t2".into(),
            }],
            ..Timeline::default()
        };
        let html = render_html(&t);
        assert!(html.contains("a &lt;b&gt; run"));
        assert!(html.contains("<svg"));
        assert!(html.contains("isolate n1"));
        assert!(!html.contains("<script"));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "the page must not load anything"
        );
    }
}
