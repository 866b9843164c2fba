//! The run as a picture: latency per second (place → confirmed p50/p95/p99
//! and each flow RPC's p95) above completed flows and errors per second.
//! Plain SVG, written by hand: a browser shows it, and it needs no crate.

use std::fmt::Write;

use crate::run::Report;
use crate::stats::Step;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP_PANEL: (f64, f64) = (40.0, 360.0);
const BOTTOM_PANEL: (f64, f64) = (400.0, 560.0);
const HEIGHT: f64 = 600.0;

struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// A round axis maximum at or above `value`.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&m| m >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn svg(report: &Report, title: &str) -> String {
    let timeline = &report.run.timeline;
    let seconds = timeline.len().max(1) as f64;
    let series_of = |label: &str, color, dashed, pick: &dyn Fn(usize) -> Option<f64>| Series {
        label: label.to_owned(),
        color,
        dashed,
        points: (0..timeline.len())
            .filter_map(|i| pick(i).map(|v| (i as f64 + 0.5, v)))
            .collect(),
    };
    let confirm = Step::PlaceToConfirmed.name();
    let mut latency = vec![
        series_of("confirm p99", "#b2182b", false, &|i| {
            timeline[i].p99_ms.get(confirm).copied()
        }),
        series_of("confirm p95", "#ef8a62", false, &|i| {
            timeline[i].p95_ms.get(confirm).copied()
        }),
        series_of("confirm p50", "#fddbc7", false, &|i| {
            timeline[i].p50_ms.get(confirm).copied()
        }),
    ];
    for (step, color) in Step::FLOW_RPCS
        .iter()
        .zip(["#2166ac", "#67a9cf", "#1b7837", "#762a83"])
    {
        let name = step.name();
        latency.push(series_of(&format!("{name} p95"), color, true, &|i| {
            timeline[i].p95_ms.get(name).copied()
        }));
    }
    let latency_max = nice_max(
        latency
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let flows = series_of("flows/s", "#1b7837", false, &|i| {
        Some(timeline[i].flows_ok as f64)
    });
    let errors = series_of("errors/s", "#b2182b", false, &|i| {
        Some(timeline[i].errors as f64)
    });
    let rate_max = nice_max(
        flows
            .points
            .iter()
            .chain(&errors.points)
            .map(|p| p.1)
            .fold(0.0, f64::max),
    );

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    panel(&mut out, TOP_PANEL, seconds, latency_max, "ms", &latency);
    panel(
        &mut out,
        BOTTOM_PANEL,
        seconds,
        rate_max,
        "per second",
        &[flows, errors],
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the run began</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 8.0
    );
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    (top, bottom): (f64, f64),
    seconds: f64,
    max: f64,
    unit: &str,
    series: &[Series],
) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + s / seconds * plot_width;
    let y = |v: f64| bottom - (v / max).min(1.0) * (bottom - top);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{}" fill="none" stroke="#888"/>"##,
        bottom - top
    );
    for tick in 0..=4 {
        let value = max * tick as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{value}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y(value) + 4.0,
            y = y(value),
        );
    }
    let step = nice_max(seconds / 10.0).max(1.0);
    let mut tick = 0.0;
    while tick <= seconds {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{tick}</text>"#,
            x(tick),
            bottom + 15.0
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{unit}</text>"#,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let points: Vec<String> = s
                .points
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{} points="{}"/>"#,
                s.color,
                if s.dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                },
                points.join(" ")
            );
        }
        let legend_y = top + 14.0 + 18.0 * i as f64;
        let legend_x = LEFT + plot_width + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" x2="{}" y1="{legend_y}" y2="{legend_y}" stroke="{}" stroke-width="2"{}/><text x="{}" y="{}">{}</text>"#,
            legend_x + 22.0,
            s.color,
            if s.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            },
            legend_x + 28.0,
            legend_y + 4.0,
            escape(&s.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(230.0), 250.0);
        assert_eq!(nice_max(1.0), 1.0);
    }
}
