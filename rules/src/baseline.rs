//! The reference a baseline or personal-best rule compares each reading with, as a series:
//! what the console draws on a patient's chart. It runs the engine's own day summaries (the
//! same code, not a copy), so a chart shows exactly the baseline the rule saw: the median of
//! daily medians over the completed days of the window, or the best value over the window
//! and today so far; nothing until the rule has `min_days` of data.

use vitals::Kind;

use crate::engine::{DayStats, Summary};
use crate::event::Timestamp;
use crate::profile::{Check, MAX_DAYS};

/// What a baseline or personal-best rule compared one reading with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferencePoint {
    /// The reading's measurement time.
    pub at: Timestamp,
    /// The baseline (median of daily medians) or the personal best.
    pub reference: f64,
    /// The value at or beyond which the rule raises: the baseline minus the drop, or the best
    /// less the drop percent.
    pub raise_at: f64,
    /// Completed days in the window the reference was made from.
    pub days: u16,
}

/// The reference series of `check` over `values` (its measure's readings, in measurement
/// order), or `None` when `check` is not a baseline or personal-best rule. Readings before
/// the rule has `min_days` of data get no point; a reading earlier than the day of one
/// before it is compared but, as in the engine, not added to a closed day.
pub fn reference_series(check: &Check, values: &[(Timestamp, f64)]) -> Option<ReferenceSeries> {
    let (measure, how, drop, days, min_days) = match *check {
        Check::BaselineDrop {
            measure,
            drop,
            days,
            min_days,
            ..
        } => (measure, Summary::MedianOfMedians, drop, days, min_days),
        Check::BestDrop {
            measure,
            drop_percent,
            days,
            min_days,
            ..
        } => (measure, Summary::Max, drop_percent, days, min_days),
        _ => return None,
    };
    let mut stats = DayStats::new();
    let mut ring = [None; MAX_DAYS as usize];
    let ring = &mut ring[..usize::from(days.clamp(1, MAX_DAYS))];
    let mut points = Vec::new();
    for &(at, x) in values {
        stats.roll(ring, at, how);
        let reference = match how {
            Summary::MedianOfMedians => stats.cached,
            Summary::Max => match (stats.cached, stats.today_max) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        };
        if let Some(reference) = reference
            && stats.cached_days >= min_days
            && (how == Summary::MedianOfMedians || reference > 0.0)
        {
            let raise_at = match how {
                Summary::MedianOfMedians => reference - drop,
                Summary::Max => reference * (1.0 - drop / 100.0),
            };
            points.push(ReferencePoint {
                at,
                reference,
                raise_at,
                days: stats.cached_days,
            });
        }
        stats.add(at, x, how);
    }
    Some(ReferenceSeries {
        measure,
        personal_best: how == Summary::Max,
        points,
    })
}

/// A baseline or personal-best rule's reference over a run of readings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceSeries {
    /// The measure the rule watches.
    pub measure: Kind,
    /// `true` for a personal best (`best_drop`), `false` for a baseline (`baseline_drop`).
    pub personal_best: bool,
    /// One point per reading the rule could judge.
    pub points: Vec<ReferencePoint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Engine, Event, Measurement, Profile, Sample};
    use vitals::{Flags, PatientKey, ReadingId};

    const DAY: i64 = 86_400_000;

    fn profile(kind: &str, extra: &str) -> crate::Ruleset {
        let toml = format!(
            r#"
id = "t"
version = 1
[[rule]]
id = "ref"
kind = "{kind}"
measure = "spo2"
{extra}
severity = "medium"
nurse = "x"
"#
        );
        Profile::from_toml(&toml)
            .expect("profile")
            .build()
            .expect("builds")
    }

    /// Values over eight days, several a day, with a fall on the last two.
    fn values() -> Vec<(Timestamp, f64)> {
        let mut v = Vec::new();
        let daily = [96.0, 95.0, 97.0, 96.0, 94.0, 96.0, 92.0, 89.0];
        for (d, base) in daily.iter().enumerate() {
            for k in 0..3 {
                let at = Timestamp(d as i64 * DAY + 8 * 3_600_000 + k * 3_600_000);
                v.push((at, base + (k as f64 - 1.0) * 0.5));
            }
        }
        v
    }

    #[test]
    fn the_baseline_is_the_median_of_completed_daily_medians_after_min_days() {
        let set = profile("baseline_drop", "drop = 4.0\ndays = 5\nmin_days = 3");
        let s = reference_series(&set.rules[0].check, &values()).expect("a baseline rule");
        assert_eq!(s.measure, Kind::Spo2);
        assert!(!s.personal_best);
        // Days 0–2 have fewer than 3 completed days behind them.
        assert!(s.points.iter().all(|p| p.at.day() >= 3), "{:?}", s.points);
        let on = |day: i64| {
            s.points
                .iter()
                .find(|p| p.at.day() == day)
                .expect("a point")
        };
        // Day 3: medians of days 0, 1, 2 are 96, 95, 97 → 96.
        assert_eq!(on(3).reference, 96.0);
        assert_eq!(on(3).raise_at, 92.0);
        assert_eq!(on(3).days, 3);
        // Day 7: days 2..=6 (window 5): 97, 96, 94, 96, 92 → 96.
        assert_eq!(on(7).reference, 96.0);
        assert_eq!(on(7).days, 5);
    }

    #[test]
    fn the_personal_best_includes_today_so_far() {
        let set = profile("best_drop", "drop = 10.0\ndays = 5\nmin_days = 3");
        let s = reference_series(&set.rules[0].check, &values()).expect("a best rule");
        assert!(s.personal_best);
        let day3: Vec<_> = s.points.iter().filter(|p| p.at.day() == 3).collect();
        // Days 0–2's best is 97.5 (day 2's last reading); today's 96.5 does not beat it.
        assert_eq!(day3[0].reference, 97.5);
        assert!((day3[0].raise_at - 87.75).abs() < 1e-9);
    }

    #[test]
    fn other_rules_have_no_reference() {
        let set = profile("below", "raise = 90.0\nclear = 92.0");
        assert!(reference_series(&set.rules[0].check, &values()).is_none());
    }

    /// The series says what the engine itself compared: the baseline in the alert the engine
    /// raises on the fall equals the series' point for that reading.
    #[test]
    fn the_engine_raises_against_the_same_baseline() {
        let set = profile("baseline_drop", "drop = 4.0\ndays = 5\nmin_days = 3");
        let series = reference_series(&set.rules[0].check, &values()).expect("baseline");
        let mut engine = Engine::new();
        let p = engine.add_profile(set);
        let pt = engine
            .add_patient(PatientKey::new("pk").expect("key"), p, Timestamp(0))
            .expect("enrolled");
        let mut events = Vec::new();
        let mut checked = 0;
        for (at, x) in values() {
            events.clear();
            let sample = Sample {
                reading: ReadingId(Default::default()),
                at,
                flags: Flags::EMPTY,
                values: &[Measurement {
                    kind: Kind::Spo2,
                    value: x,
                }],
            };
            engine
                .evaluate(pt, &sample, &mut events)
                .expect("evaluated");
            for e in &events {
                if let Event::Raised(a) | Event::Updated(a) = e
                    && let Context::Baseline { baseline, days, .. } = a.context
                {
                    let point = series
                        .points
                        .iter()
                        .find(|q| q.at == at)
                        .expect("a point for the reading that raised");
                    assert_eq!(point.reference, baseline);
                    assert_eq!(point.days, days);
                    checked += 1;
                }
            }
        }
        assert!(checked > 0, "the fall raised the baseline rule");
    }
}
