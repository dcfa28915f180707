//! The clinical scenarios produce the alerts a clinician would expect, and no others: each
//! scenario plays on simulated devices through the real gateway device layer and queue, and
//! its readings are replayed through the rules engine (`rules::backtest`) with the profile of
//! the patient's condition. Every shipped scenario has its test here
//! (`every_shipped_scenario_is_checked_here`).

use std::collections::BTreeSet;
use std::path::Path;

use rules::{BacktestReport, Profile, Severity};
use simulators::scenario::{Scenario, run};

async fn alerts(scenario: &str, profile: &str) -> BacktestReport {
    let s = Scenario::builtin(scenario)
        .expect("shipped")
        .expect("valid");
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run(&s, &dir.path().join("queue.db"))
        .await
        .expect("scenario runs");
    let mut readings = outcome.readings;
    // What ingest rejects (a broken channel's impossible value: `out_of_range`) never
    // reaches the engine.
    readings.retain(|r| r.normalized().is_ok());
    readings.sort_by_key(|r| r.measured_at);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/profiles/{profile}.toml"));
    let set = Profile::from_toml(&std::fs::read_to_string(path).expect("profile"))
        .expect("valid")
        .build()
        .expect("builds");
    let from = readings.first().expect("readings").measured_at;
    let to = readings.last().expect("readings").measured_at + time::Duration::SECOND;
    rules::backtest(&set, readings, from, to, |_| {})
}

fn rules_raised(r: &BacktestReport) -> BTreeSet<&str> {
    r.alerts.iter().map(|a| a.rule.as_str()).collect()
}

fn worst(r: &BacktestReport, rule: &str) -> Option<Severity> {
    r.alerts
        .iter()
        .filter(|a| a.rule == rule)
        .map(|a| a.max_severity)
        .max()
}

#[tokio::test]
async fn a_stable_copd_patient_raises_nothing() {
    let r = alerts("copd_stable", "copd").await;
    assert!(r.alerts.is_empty(), "{:?}", rules_raised(&r));
    assert_eq!(r.repeat_requests, 0);
}

#[tokio::test]
async fn a_copd_exacerbation_is_caught_by_oxygen_lung_function_and_news2() {
    let r = alerts("copd_exacerbation", "copd").await;
    let raised = rules_raised(&r);
    for expected in [
        "spo2-low",
        "spo2-baseline-drop",
        "pef-best-drop",
        "fev1-best-drop",
        "news2",
    ] {
        assert!(
            raised.contains(expected),
            "{expected} missing from {raised:?}"
        );
    }
    let allowed: BTreeSet<&str> = [
        "spo2-low",
        "spo2-baseline-drop",
        "spo2-drift",
        "spo2-trend",
        "pef-best-drop",
        "fev1-best-drop",
        "news2",
        "pulse-high",
    ]
    .into_iter()
    .collect();
    assert!(
        raised.is_subset(&allowed),
        "unexpected: {:?}",
        raised.difference(&allowed).collect::<Vec<_>>()
    );
    assert!(
        worst(&r, "spo2-low") >= Some(Severity::High),
        "SpO2 under 88 % is high severity"
    );
}

#[tokio::test]
async fn a_hypertensive_crisis_is_an_emergency_even_when_the_patient_does_not_re_measure() {
    let r = alerts("hypertensive_crisis", "hypertension").await;
    let raised = rules_raised(&r);
    assert_eq!(
        worst(&r, "bp-severe"),
        Some(Severity::Emergency),
        "{raised:?}"
    );
    assert!(
        raised.is_subset(
            &["bp-severe", "bp-stage2", "systolic-trend"]
                .into_iter()
                .collect()
        ),
        "{raised:?}"
    );
}

#[tokio::test]
async fn hypotension_on_antihypertensives_is_raised() {
    let r = alerts("hypotension", "hypertension").await;
    let raised = rules_raised(&r);
    assert!(raised.contains("bp-low"), "{raised:?}");
    assert!(
        raised.is_subset(
            &["bp-low", "pulse-low", "systolic-trend"]
                .into_iter()
                .collect()
        ),
        "{raised:?}"
    );
}

#[tokio::test]
async fn doubtful_measurements_ask_for_a_repeat_and_never_alert() {
    for profile in ["copd", "hypertension"] {
        let r = alerts("measurement_faults", profile).await;
        assert!(r.alerts.is_empty(), "{profile}: {:?}", rules_raised(&r));
        assert!(
            r.repeat_requests > 0,
            "{profile}: the patient is asked to measure again"
        );
    }
}

#[tokio::test]
async fn wrong_device_clocks_raise_nothing() {
    let r = alerts("clock_faults", "copd").await;
    assert!(r.alerts.is_empty(), "{:?}", rules_raised(&r));
}

#[tokio::test]
async fn a_week_away_without_the_oximeter_is_an_adherence_alert_only() {
    let r = alerts("week_away", "copd").await;
    assert_eq!(
        rules_raised(&r),
        ["no-oximetry"].into_iter().collect(),
        "{:?}",
        r.alerts
    );
    assert_eq!(worst(&r, "no-oximetry"), Some(Severity::Low));
}

#[tokio::test]
async fn a_hypertensive_crisis_confirmed_by_a_re_measurement_is_an_emergency_at_once() {
    let r = alerts("hypertensive_crisis_remeasured", "hypertension").await;
    let raised = rules_raised(&r);
    assert_eq!(
        worst(&r, "bp-severe"),
        Some(Severity::Emergency),
        "{raised:?}"
    );
    assert!(
        raised.is_subset(
            &["bp-severe", "bp-stage2", "systolic-trend"]
                .into_iter()
                .collect()
        ),
        "{raised:?}"
    );
    // Raised by the second reading of a pair ten minutes apart, not escalated unconfirmed
    // after the repeat window ran out.
    let severe = r
        .alerts
        .iter()
        .find(|a| a.rule == "bp-severe")
        .expect("bp-severe");
    let evidence: Vec<_> = severe.raised.evidence.iter().collect();
    assert!(evidence.len() >= 2, "{evidence:?}");
    let last = evidence[evidence.len() - 1];
    let before = evidence[evidence.len() - 2];
    assert_eq!(severe.raised.at, last.at, "raised by a reading");
    assert_eq!(last.at.since(before.at), 10 * 60_000, "{evidence:?}");
    assert!(
        evidence
            .iter()
            .all(|e| e.kind != vitals::Kind::Systolic || e.value >= 180.0),
        "{evidence:?}"
    );
    assert_eq!(
        r.alerts.iter().filter(|a| a.rule == "bp-severe").count(),
        1,
        "one crisis, one alert"
    );
}

#[tokio::test]
async fn a_failing_cuff_asks_for_a_repeat_and_raises_nothing() {
    // The patient's pressure is normal; what is wrong is the cuff: a value the hub cannot
    // decode, a NaN systolic while the cuff sits loose, then a pulse channel reporting
    // ~330/min, which ingest rejects.
    let s = Scenario::builtin("faulty_cuff")
        .expect("shipped")
        .expect("valid");
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run(&s, &dir.path().join("queue.db"))
        .await
        .expect("scenario runs");
    assert!(
        outcome.readings.iter().any(|r| r.normalized().is_err()),
        "the broken pulse channel's readings are rejected before the rules"
    );
    for profile in ["hypertension", "default"] {
        let r = alerts("faulty_cuff", profile).await;
        assert!(r.alerts.is_empty(), "{profile}: {:?}", rules_raised(&r));
        assert!(
            r.repeat_requests > 0,
            "{profile}: the loose cuff's reading asks the patient to measure again"
        );
    }
}

/// The scenarios this file checks, one test each.
const CHECKED: [&str; 9] = [
    "copd_stable",
    "copd_exacerbation",
    "hypertensive_crisis",
    "hypertensive_crisis_remeasured",
    "hypotension",
    "measurement_faults",
    "clock_faults",
    "week_away",
    "faulty_cuff",
];

#[test]
fn every_shipped_scenario_is_checked_here() {
    let checked: BTreeSet<&str> = CHECKED.into_iter().collect();
    let builtin: BTreeSet<&str> = Scenario::builtin_names().collect();
    assert_eq!(builtin, checked, "a shipped scenario without its test here");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("scenarios dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.iter().map(String::as_str).collect::<BTreeSet<&str>>(),
        checked,
        "a scenario file in {} without its test here",
        dir.display()
    );
}
