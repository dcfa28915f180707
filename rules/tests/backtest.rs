//! Backtesting a fixture profile on a synthetic month.

mod common;

use rules::{Profile, Severity, backtest};
use vitals::{Flags, Kind, Reading};

fn hypertension() -> rules::Ruleset {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/profiles/hypertension.toml"
    ))
    .expect("fixture");
    Profile::from_toml(&text)
        .expect("parses")
        .build()
        .expect("valid")
}

const DAY: i64 = 24 * 60;

/// Two patients, one BP reading a day (08:00) for 30 days; patient b has a severe reading
/// confirmed 10 minutes later on day 20, and a lone severe reading (never repeated) on day 25.
fn month() -> Vec<Reading> {
    let mut v = Vec::new();
    for day in 0..30 {
        let t = day * DAY + 8 * 60;
        v.push(common::reading(
            "a",
            t,
            &[(Kind::Systolic, Some(130.0)), (Kind::Diastolic, Some(80.0))],
            Flags::EMPTY,
        ));
        let sys = if day == 20 || day == 25 { 190.0 } else { 135.0 };
        v.push(common::reading(
            "b",
            t + 1,
            &[(Kind::Systolic, Some(sys)), (Kind::Diastolic, Some(85.0))],
            Flags::EMPTY,
        ));
        if day == 20 {
            v.push(common::reading(
                "b",
                t + 11,
                &[(Kind::Systolic, Some(186.0)), (Kind::Diastolic, Some(88.0))],
                Flags::EMPTY,
            ));
        }
    }
    v
}

#[test]
fn backtest_reports_every_alert_and_the_load_per_patient_day() {
    let set = hypertension();
    let mut calls = 0;
    let from = common::at_minutes(10 * DAY);
    let to = common::at_minutes(30 * DAY);
    let report = backtest(&set, month(), from, to, |p| {
        calls += 1;
        if p.done {
            assert_eq!(p.readings, 61);
        }
    });
    assert_eq!(calls, 1, "one final progress call for a small replay");
    assert_eq!(report.readings, 61);
    assert_eq!(report.warm_up, 20);
    assert_eq!(report.readings_in_window, 41);
    assert_eq!(report.profile, "hypertension@1");
    // Severe BP on day 20, confirmed by the repeat ten minutes later. The day-25 reading asked
    // for a repeat that never came: it is escalated unconfirmed (one reading of evidence) once
    // the 15-minute window has passed (the backtest ticks hourly). The systolic trend rule
    // also fires on day 20 (190 is far above b's steady 135).
    let severe: Vec<_> = report
        .alerts
        .iter()
        .filter(|a| a.rule == "bp-severe")
        .collect();
    assert_eq!(severe.len(), 2, "{:?}", report.alerts);
    assert_eq!(severe[0].patient.as_str(), "b");
    assert_eq!(severe[0].max_severity, Severity::High);
    assert_eq!(severe[0].raised.evidence.len(), 2);
    assert_eq!(
        severe[1].raised.evidence.len(),
        1,
        "unconfirmed: the lone reading"
    );
    assert!(
        severe[1].raised.at.0
            - severe[1]
                .raised
                .evidence
                .iter()
                .next()
                .expect("evidence")
                .at
                .0
            > 15 * 60_000,
        "raised after the repeat window ran out"
    );
    assert!(severe[0].resolved_at.is_some(), "day 21's 135 clears it");
    assert_eq!(
        report.repeat_requests, 2,
        "day 20's first reading and day 25's"
    );
    let per_rule: u32 = report.by_rule.iter().map(|(_, n)| n).sum();
    assert_eq!(per_rule as usize, report.alerts.len());
    // 20 days each for two patients.
    assert!(
        (report.patient_days - 40.0).abs() < 1e-9,
        "{}",
        report.patient_days
    );
    assert!((report.alerts_per_patient_day - report.alerts.len() as f64 / 40.0).abs() < 1e-12);
    assert!(
        report.alerts.iter().all(|a| a.patient.as_str() == "b"),
        "a is steady"
    );
    // Nobody missed three days of BP and the hub was heard daily.
    assert!(
        report
            .alerts
            .iter()
            .all(|a| a.rule != "no-bp" && a.rule != "gateway-silent")
    );
}

#[test]
fn a_stricter_profile_previews_more_alerts() {
    let set = hypertension();
    let mut stricter = Profile::from_toml(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/profiles/hypertension.toml"
        ))
        .expect("fixture"),
    )
    .expect("parses");
    for r in &mut stricter.rules {
        if r.id == "bp-stage2" {
            r.raise = Some(130.0);
            r.clear = Some(120.0);
        }
    }
    let stricter = stricter.build().expect("valid");
    let from = common::at_minutes(0);
    let to = common::at_minutes(30 * DAY);
    let before = backtest(&set, month(), from, to, |_| {});
    let after = backtest(&stricter, month(), from, to, |_| {});
    assert!(
        after.alerts.len() > before.alerts.len(),
        "{} vs {}",
        after.alerts.len(),
        before.alerts.len()
    );
}
