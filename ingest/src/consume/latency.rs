//! A lock-free latency histogram with fixed buckets, for `/metrics`: recording is one
//! relaxed increment per bucket, sum and count, so it can sit on the rules engine's
//! per-reading path. Exposed as a Prometheus histogram (cumulative `le` buckets in seconds,
//! `_sum`, `_count`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds (the last bucket, `+Inf`, is implicit). The
/// rules engine takes a few hundred nanoseconds a reading: the buckets resolve that range
/// and still catch a pause of milliseconds.
pub const BOUNDS_NS: [u64; 12] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Counts of durations by bucket, their sum and their number.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Counts `n` durations of `d` each (a batch's readings at its mean), with one update
    /// of each counter rather than `n`.
    pub fn record_n(&self, d: Duration, n: u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Durations counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the histogram `name` in the Prometheus text format.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in BOUNDS_NS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS_NS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        // `_count` equals the `+Inf` bucket by definition; written from the same sum so a
        // scrape racing a record never shows them apart.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} in\n{text}"))
            .parse()
            .expect("a number")
    }

    #[test]
    fn durations_land_in_cumulative_buckets_at_their_bounds() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_nanos(250)); // on the first bound: le 2.5e-7
        h.record(Duration::from_nanos(251)); // just above: le 5e-7
        h.record(Duration::from_micros(3)); // le 5e-6
        h.record(Duration::from_secs(2)); // beyond every bound: +Inf only
        let mut text = String::new();
        h.render("x_seconds", "test", &mut text);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"0.00000025\"}"), 1.0);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"0.0000005\"}"), 2.0);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"0.0000025\"}"), 2.0);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"0.000005\"}"), 3.0);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"1\"}"), 3.0);
        assert_eq!(sample(&text, "x_seconds_bucket{le=\"+Inf\"}"), 4.0);
        assert_eq!(sample(&text, "x_seconds_count"), 4.0);
        let sum = sample(&text, "x_seconds_sum");
        assert!((sum - 2.000_003_501).abs() < 1e-12, "{sum}");
        assert_eq!(h.count(), 4);
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
    }

    #[test]
    fn a_batch_recorded_at_once_renders_as_its_readings_one_by_one() {
        let (one_by_one, at_once) = (LatencyHistogram::default(), LatencyHistogram::default());
        for (d, n) in [
            (Duration::from_nanos(300), 64),
            (Duration::from_micros(7), 3),
        ] {
            for _ in 0..n {
                one_by_one.record(d);
            }
            at_once.record_n(d, n);
        }
        let render = |h: &LatencyHistogram| {
            let mut text = String::new();
            h.render("x_seconds", "test", &mut text);
            text
        };
        assert_eq!(render(&at_once), render(&one_by_one));
        assert_eq!(at_once.count(), 67);
        assert_eq!(
            sample(&render(&at_once), "x_seconds_bucket{le=\"0.0000005\"}"),
            64.0
        );
    }
}
