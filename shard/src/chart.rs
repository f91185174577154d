//! The experiment as a picture: for each candidate key, the share of writes each shard took in
//! each balancer round, stacked to 100%, across the growth steps. A good key is even bands; a
//! monotonic key is one colour at a time; a jumbo-prone key freezes into whatever it first was.

use std::fmt::Write as _;

use crate::{KeyResult, ShardReport};

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const PANEL_W: f64 = 760.0;
const PANEL_H: f64 = 90.0;
const LEFT: f64 = 210.0;

/// Renders the report as one SVG document.
pub fn render_svg(report: &ShardReport) -> String {
    let gap = 34.0;
    let height = 60.0 + report.keys.len() as f64 * (PANEL_H + gap);
    let width = LEFT + PANEL_W + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"10\" y=\"22\" font-size=\"15\">{}: share of writes per shard, per balancer round, as writes grow {}</text>",
        escape(&report.workload),
        report.growth.iter().map(|g| format!("{g}x")).collect::<Vec<_>>().join(" → ")
    );
    for s in 0..report.shards {
        let _ = write!(
            svg,
            "<rect x=\"{:.0}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.0}\" y=\"42\">shard {s}</text>",
            LEFT + s as f64 * 70.0,
            PALETTE[s % PALETTE.len()],
            LEFT + s as f64 * 70.0 + 16.0
        );
    }
    for (k, key) in report.keys.iter().enumerate() {
        let top = 60.0 + k as f64 * (PANEL_H + gap);
        draw_key(&mut svg, report, key, top);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One candidate key's panel: its name, kind and grade, then each balancer round's share of
/// writes per shard as a stacked bar, with the growth steps marked.
fn draw_key(svg: &mut String, report: &ShardReport, key: &KeyResult, top: f64) {
    let _ = write!(
        svg,
        "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text><text x=\"10\" y=\"{:.0}\">{} {}</text><text x=\"10\" y=\"{:.0}\" fill=\"{}\">{}</text>",
        top + 14.0,
        escape(&key.key),
        top + 30.0,
        if key.hashed { "hashed" } else { "ranged" },
        escape(&key.fields.join(", ")),
        top + 46.0,
        match key.grade.as_str() {
            "good" => "#2e7d32",
            "weak" => "#ef6c00",
            _ => "#c62828",
        },
        key.grade.to_uppercase()
    );
    let bar_w = PANEL_W / key.load.len().max(1) as f64;
    for (i, round) in key.load.iter().enumerate() {
        let total: u64 = round.iter().sum();
        let mut y = top;
        for (s, &w) in round.iter().enumerate() {
            let h = if total == 0 {
                0.0
            } else {
                PANEL_H * w as f64 / total as f64
            };
            if h > 0.0 {
                let _ = write!(
                    svg,
                    "<rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"{}\"/>",
                    LEFT + i as f64 * bar_w,
                    bar_w + 0.3,
                    PALETTE[s % PALETTE.len()]
                );
            }
            y += h;
        }
    }
    let per_step = report.rounds_per_step as f64 * bar_w;
    for (i, g) in report.growth.iter().enumerate() {
        let x = LEFT + i as f64 * per_step;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.0}\" y2=\"{:.0}\" stroke=\"black\"/><text x=\"{:.1}\" y=\"{:.0}\">{g}x</text>",
            top - 2.0,
            top + PANEL_H + 4.0,
            x + 3.0,
            top + PANEL_H + 16.0
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
