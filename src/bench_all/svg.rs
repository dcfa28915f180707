//! A line chart on log–log axes as a standalone SVG document, for the benchmark report's
//! latency-against-load plot.
//!
//! Written here rather than with a plotting crate: one chart of a few lines needs axes,
//! ticks, polylines and a legend (about a hundred lines), where `plotters` would add a
//! dependency tree and build time on every machine that builds `rpm` for a file written once
//! per benchmark run.

use std::fmt::Write as _;

/// One line of the chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour (any SVG colour).
    pub color: &'static str,
    /// Dashed (baselines) or solid.
    pub dashed: bool,
    /// (x, y) points, both positive (log axes); others are left out.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for an SVG text node or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The decades `[10^lo, 10^hi]` covering every value, widened to at least one decade.
fn decades(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v.log10());
        hi = hi.max(v.log10());
    }
    if !lo.is_finite() {
        return (0, 1);
    }
    let (lo, hi) = (lo.floor() as i32, hi.ceil() as i32);
    (lo, hi.max(lo + 1))
}

/// A number as a short tick label (`0.1`, `5`, `20k`).
fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_owned()
    }
}

/// The chart: `title` on top, `x_label` and `y_label` on the axes.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x0, x1) = decades(points().map(|p| p.0));
    let (y0, y1) = decades(points().map(|p| p.1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v.log10() - f64::from(x0)) / f64::from(x1 - x0) * plot_w;
    let y = |v: f64| TOP + plot_h - (v.log10() - f64::from(y0)) / f64::from(y1 - y0) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"##,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and ticks at 1, 2 and 5 of each decade.
    for (lo, hi, vertical) in [(x0, x1, true), (y0, y1, false)] {
        for d in lo..=hi {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(d);
                if d == hi && m > 1.0 {
                    break;
                }
                let major = m == 1.0;
                let stroke = if major { "#bbb" } else { "#e4e4e4" };
                if vertical {
                    let px = x(v);
                    let _ = writeln!(
                        out,
                        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="{stroke}"/>"##,
                        TOP + plot_h
                    );
                    let _ = writeln!(
                        out,
                        r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                        TOP + plot_h + 16.0,
                        label(v)
                    );
                } else {
                    let py = y(v);
                    let _ = writeln!(
                        out,
                        r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{stroke}"/>"##,
                        LEFT + plot_w
                    );
                    let _ = writeln!(
                        out,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                        LEFT - 6.0,
                        py + 4.0,
                        label(v)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0,
        escape(x_label)
    );
    let _ = writeln!(
        out,
        r##"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let dash = if s.dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(a, b)| *a > 0.0 && *b > 0.0 && a.is_finite() && b.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"##,
            s.color,
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                out,
                r##"<circle cx="{px}" cy="{py}" r="3" fill="{}"/>"##,
                s.color
            );
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            out,
            r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"##,
            lx + 24.0,
            s.color
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}">{}</text>"##,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_the_data_in_whole_decades_and_text_is_escaped() {
        assert_eq!(decades([3.0, 450.0].into_iter()), (0, 3));
        assert_eq!(decades([0.2].into_iter()), (-1, 0));
        assert_eq!(decades(std::iter::empty()), (0, 1));
        assert_eq!(label(0.5), "0.5");
        assert_eq!(label(20_000.0), "20k");
        let svg = line_chart(
            "a < b & c",
            "load",
            "ms",
            &[Series {
                name: "p50".into(),
                color: "blue",
                dashed: false,
                points: vec![(100.0, 5.0), (1000.0, 50.0), (0.0, 1.0)],
            }],
        );
        assert!(svg.contains("a &lt; b &amp; c"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
