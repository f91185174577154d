//! Grouped bar charts as SVG: one group per workload, one bar per engine, each bar labelled with
//! its value, so a chart reads without the table beside it.

use std::fmt::Write as _;

const COLOURS: [&str; 2] = ["#336791", "#e07b00"]; // Postgres blue, RocksDB orange
const LEFT: f64 = 70.0;
const TOP: f64 = 56.0;
const PLOT_H: f64 = 240.0;
const GROUP_W: f64 = 110.0;
const BAR_W: f64 = 34.0;

/// One group of bars: its label (two lines, e.g. workload and key distribution) and a value per
/// series.
pub struct Group {
    pub label: [String; 2],
    pub values: [f64; 2],
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A value short enough for a bar's label: 12.3k, 4.56, 987.
pub fn short(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v if v >= 10.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// The chart: `title` (which names the unit), `series` names for the two bars of each group.
pub fn grouped_bars(title: &str, series: [&str; 2], groups: &[Group]) -> String {
    let width = LEFT + GROUP_W * groups.len().max(1) as f64 + 20.0;
    let height = TOP + PLOT_H + 56.0;
    let top_value = groups
        .iter()
        .flat_map(|g| g.values)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>",
        escape(title)
    );
    for (i, name) in series.iter().enumerate() {
        let x = LEFT + i as f64 * 110.0;
        let _ = write!(
            svg,
            "<rect x=\"{x:.0}\" y=\"30\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{:.0}\" y=\"40\">{}</text>",
            COLOURS[i],
            x + 16.0,
            escape(name)
        );
    }
    let base = TOP + PLOT_H;
    // The unit is in the title; a rotated axis label would not fit beside long units.
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{:.0}\" y2=\"{base}\" stroke=\"#444\"/>",
        width - 20.0
    );
    for (g, group) in groups.iter().enumerate() {
        let x0 = LEFT + g as f64 * GROUP_W + 16.0;
        for (i, value) in group.values.iter().enumerate() {
            let h = if value.is_finite() {
                value / top_value * PLOT_H
            } else {
                0.0
            };
            let x = x0 + i as f64 * (BAR_W + 4.0);
            let _ =
                write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{BAR_W}\" height=\"{h:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                base - h,
                COLOURS[i],
                x + BAR_W / 2.0,
                base - h - 4.0,
                if value.is_finite() { short(*value) } else { "n/a".into() }
            );
        }
        for (line, text) in group.label.iter().enumerate() {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
                x0 + BAR_W + 2.0,
                base + 16.0 + line as f64 * 14.0,
                escape(text)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_as_tall_as_their_values_and_labelled() {
        let svg = grouped_bars(
            "t",
            ["postgres", "rocksdb"],
            &[Group {
                label: ["mixed".into(), "uniform".into()],
                values: [1000.0, 2000.0],
            }],
        );
        assert!(svg.contains(">1.0k<") && svg.contains(">2.0k<"), "{svg}");
        let heights: Vec<f64> = svg
            .match_indices("height=\"")
            .skip(3) // the document, the background, the legend swatches
            .filter_map(|(i, _)| svg[i + 8..].split('"').next()?.parse().ok())
            .collect();
        let bars: Vec<f64> = heights.into_iter().filter(|h| *h > 12.0).collect();
        assert_eq!(bars.len(), 2, "{svg}");
        assert!((bars[1] / bars[0] - 2.0).abs() < 0.01, "{bars:?}");
    }
}
