//! `rpm bench all --quick` through the binary: it runs every benchmark on embedded defaults
//! (nothing to install) and writes a Markdown report, an SVG plot and the figures as JSON.
//! Checked for shape, never for speed: every part is there, every table row carries numbers
//! that are finite and ordered (p50 ≤ p99 ≤ p99.9 ≤ max), every baseline has a ratio, and the
//! plot is well-formed SVG with a line of numeric points for each percentile. And
//! `rpm bench gateway --json` against a private Mosquitto: its memory and CPU figures are
//! those of the forwarding, present and consistent.

use std::path::Path;
use std::process::Command;

use testkit::{Mosquitto, unavailable};

fn cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// The body rows of the first table after `heading`.
fn table<'a>(report: &'a str, heading: &str) -> Vec<Vec<&'a str>> {
    let at = report
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in the report:\n{report}"));
    let rows: Vec<&str> = report[at..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() >= 3, "`{heading}` has no table rows:\n{report}");
    assert!(rows[1].contains("---"), "not a Markdown table: {}", rows[1]);
    rows[2..].iter().map(|l| cells(l)).collect()
}

/// A cell's leading number ("12.5", "12.5 (11.0 / 12.5 / 13.1)", "4.55 / 42.6 / 55.7"),
/// finite.
fn number(cell: &str) -> f64 {
    let first = cell.split([' ', '/', '(']).next().unwrap_or("");
    let v = first
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("`{cell}` does not start with a number"));
    assert!(v.is_finite(), "`{cell}` is not a finite number");
    v
}

#[test]
fn quick_bench_report_is_complete_and_carries_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report").join("REPORT.md");
    let run = Command::new(env!("CARGO_BIN_EXE_rpm"))
        .args(["bench", "all", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("run rpm");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "rpm bench all failed:\n{stderr}");
    let report = std::fs::read_to_string(&out).expect("the report is written at --out");

    // The header states the load average and the command.
    let load = report
        .lines()
        .find(|l| l.starts_with("- load average"))
        .expect("load average line");
    assert!(
        load.split([' ', ';']).any(|w| w.parse::<f64>().is_ok()),
        "{load}"
    );
    assert!(report.contains("`rpm bench all --quick --out"), "{report}");

    // End-to-end latency: one row per offered load, percentiles ordered, a ratio to the
    // bare broker.
    let sweep = table(&report, "## End-to-end latency against load");
    assert_eq!(sweep.len(), 2, "two loads in --quick");
    for row in &sweep {
        let (readings, p50, p99, p999, max) = (
            number(row[2]),
            number(row[3]),
            number(row[4]),
            number(row[5]),
            number(row[6]),
        );
        assert!(readings > 0.0, "{row:?}");
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{row:?}"
        );
        let broker: Vec<f64> = row[12].split(" / ").map(number).collect();
        assert_eq!(broker.len(), 3, "{row:?}");
        assert!(number(row[13]) > 0.0, "ratio to the broker: {row:?}");
    }
    // Some readings raised alerts whose notifications were enqueued.
    assert!(
        sweep.iter().map(|r| number(r[7])).sum::<f64>() > 0.0,
        "no reading raised an alert:\n{report}"
    );

    // Ingest beside its two baselines, with both ratios.
    for row in table(&report, "## Ingest rate") {
        for c in &row[2..] {
            assert!(number(c) > 0.0, "{row:?}");
        }
    }
    for row in table(&report, "## Rules engine") {
        for c in &row[1..] {
            assert!(number(c) > 0.0, "{row:?}");
        }
    }
    let gateway = table(&report, "## Gateway memory and CPU");
    assert!(gateway.len() >= 5);
    for row in &gateway {
        assert!(number(row[1]) > 0.0, "{row:?}");
    }
    let growth = table(&report, "## Growth from");
    assert_eq!(
        growth.iter().map(|r| number(r[0])).collect::<Vec<_>>(),
        [100.0, 1000.0]
    );
    for row in &growth {
        for (i, c) in row.iter().enumerate() {
            assert!(number(c) > 0.0, "column {i} of {row:?}");
        }
    }

    check_svg(&out.with_file_name("latency-vs-load.svg"));
    let figures: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.with_file_name("figures.json")).expect("figures.json"),
    )
    .expect("figures.json is JSON");
    assert_eq!(
        figures["latency_sweep"]["steps"].as_array().map(Vec::len),
        Some(2)
    );
    let gateway_runs = figures["gateway"].as_array().expect("gateway runs");
    assert!(!gateway_runs.is_empty());
    for run in gateway_runs {
        check_gateway_figures(run);
    }
}

/// The gateway bench's figures are the forwarding's: every reading acknowledged and received,
/// CPU spent, and a peak resident size taken while forwarding (never below where it started).
fn check_gateway_figures(f: &serde_json::Value) {
    let num = |k: &str| {
        f[k].as_f64()
            .unwrap_or_else(|| panic!("`{k}` is not a number in {f}"))
    };
    let readings = num("readings");
    assert!(readings > 0.0, "{f}");
    assert_eq!(num("acked"), readings, "{f}");
    assert_eq!(num("delivered"), readings, "{f}");
    for k in [
        "bare_publisher",
        "forwarded",
        "queue_fill",
        "cpu_ms_per_1000",
    ] {
        assert!(num(k) > 0.0 && num(k).is_finite(), "`{k}` in {f}");
    }
    let subscriber = num("subscriber_cpu_ms_per_1000");
    assert!(
        subscriber > 0.0 && subscriber.is_finite(),
        "the subscriber's CPU share in {f}"
    );
    let (start, end, peak) = (
        num("forwarding_rss_start_mb"),
        num("forwarding_rss_end_mb"),
        num("forwarding_rss_peak_mb"),
    );
    assert!(start > 0.0, "{f}");
    assert!(peak >= start && peak >= end, "{f}");
    for old in ["rss_before_mb", "rss_after_mb", "rss_peak_mb"] {
        assert!(f.get(old).is_none(), "`{old}` is gone: {f}");
    }
}

#[test]
fn gateway_bench_reports_the_forwarding_footprint() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let run = Command::new(env!("CARGO_BIN_EXE_rpm"))
        .args(["bench", "gateway", "--json", "--broker", &broker.url()])
        .args(["--readings", "3000", "--patients", "10"])
        .output()
        .expect("run rpm");
    assert!(
        run.status.success(),
        "rpm bench gateway failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let figures: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("--json prints JSON");
    eprintln!("{figures}");
    assert_eq!(figures["readings"].as_f64(), Some(3000.0), "{figures}");
    check_gateway_figures(&figures);
}

fn check_svg(path: &Path) {
    let text = std::fs::read_to_string(path).expect("the plot is written beside the report");
    let doc = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let lines: Vec<_> = root
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .collect();
    assert!(lines.len() >= 3, "p50, p99 and p99.9 lines");
    for line in &lines {
        let points: Vec<(f64, f64)> = line
            .attribute("points")
            .expect("points")
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect();
        assert_eq!(points.len(), 2, "one point per load: {points:?}");
        assert!(points.iter().all(|(x, y)| x.is_finite() && y.is_finite()));
    }
    let labels: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for series in ["p50", "p99", "p99.9"] {
        assert!(labels.contains(&series), "legend `{series}` in {labels:?}");
    }
}
