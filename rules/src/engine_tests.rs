//! Every rule kind with hand-computed expectations.

use vitals::{Flag, Flags, Kind, PatientKey, ReadingId};

use super::*;
use crate::event::{Context, Event, PatientIdx, RepeatReason, Timestamp};
use crate::profile::{Profile, Severity};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

struct Rig {
    engine: Engine,
    pt: PatientIdx,
    n: u32,
}

fn rig(rules: &str) -> Rig {
    let text = format!("id = \"t\"\nversion = 7\n{rules}");
    let set = Profile::from_toml(&text)
        .expect("test profile parses")
        .build()
        .expect("test profile is valid");
    let mut engine = Engine::new();
    let p = engine.add_profile(set);
    let pt = engine
        .add_patient(PatientKey::new("pt-1").expect("key"), p, Timestamp(0))
        .expect("enrol");
    Rig { engine, pt, n: 0 }
}

fn rid(n: u32) -> ReadingId {
    format!("00000000-0000-4000-8000-{n:012}")
        .parse()
        .expect("valid uuid")
}

impl Rig {
    fn at(&mut self, ms: i64, values: &[(Kind, f64)]) -> Vec<Event> {
        self.flagged(ms, values, Flags::EMPTY)
    }

    fn flagged(&mut self, ms: i64, values: &[(Kind, f64)], flags: Flags) -> Vec<Event> {
        self.n += 1;
        let values: Vec<Measurement> = values
            .iter()
            .map(|&(kind, value)| Measurement { kind, value })
            .collect();
        let mut out = Vec::new();
        self.engine
            .evaluate(
                self.pt,
                &Sample {
                    reading: rid(self.n),
                    at: Timestamp(ms),
                    flags,
                    values: &values,
                },
                &mut out,
            )
            .expect("enrolled");
        out
    }

    fn tick(&mut self, ms: i64) -> Vec<Event> {
        let mut out = Vec::new();
        self.engine.tick(Timestamp(ms), &mut out);
        out
    }

    fn open(&self) -> usize {
        self.engine.open_alerts(self.pt).count()
    }
}

fn spo2(v: f64) -> [(Kind, f64); 1] {
    [(Kind::Spo2, v)]
}

fn raised(e: &[Event]) -> &Alert {
    match e {
        [Event::Raised(a)] => a,
        other => panic!("expected one Raised, got {other:?}"),
    }
}

fn updated(e: &[Event]) -> &Alert {
    match e {
        [Event::Updated(a)] => a,
        other => panic!("expected one Updated, got {other:?}"),
    }
}

fn resolved(e: &[Event]) -> &Alert {
    match e {
        [Event::Resolved(a)] => a,
        other => panic!("expected one Resolved, got {other:?}"),
    }
}

fn values(a: &Alert) -> Vec<f64> {
    a.evidence.iter().map(|e| e.value).collect()
}

const BELOW: &str = r#"
[[rule]]
id = "spo2-low"
kind = "below"
measure = "spo2"
raise = 92
clear = 94
severity = "medium"
nurse = "SpO2 {value} % (limit {limit})"
"#;

#[test]
fn threshold_hysteresis_raises_at_one_level_and_clears_at_another() {
    let mut r = rig(BELOW);
    assert!(
        r.at(0, &spo2(93.0)).is_empty(),
        "93 is above the raise level"
    );
    let a = *raised(&r.at(MIN, &spo2(92.0)));
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(
        a.context,
        Context::Threshold {
            limit: 92.0,
            clear: 94.0
        }
    );
    assert_eq!(values(&a), [92.0]);
    assert_eq!(a.evidence.last().map(|e| e.reading), Some(rid(2)));
    assert!(
        r.at(2 * MIN, &spo2(90.0)).is_empty(),
        "already open: no second alert"
    );
    assert!(
        r.at(3 * MIN, &spo2(93.0)).is_empty(),
        "93 is between raise and clear"
    );
    assert_eq!(r.open(), 1);
    let res = *resolved(&r.at(4 * MIN, &spo2(94.0)));
    assert_eq!(
        (res.opened_at, res.at),
        (Timestamp(MIN), Timestamp(4 * MIN))
    );
    assert_eq!(r.open(), 0);
    raised(&r.at(5 * MIN, &spo2(92.0)));
    let text = r.engine.describe(&a).expect("known rule");
    assert_eq!(text.nurse, "SpO2 92 % (limit 92)");
    assert_eq!(
        (text.rule.as_str(), text.profile.as_str()),
        ("spo2-low", "t@7")
    );
    assert!(
        text.explanation
            .contains("rule spo2-low (below) of t@7: medium"),
        "{}",
        text.explanation
    );
}

/// Low SpO2 with two escalation bands below the raise level.
const BANDED: &str = r#"
[[rule]]
id = "spo2-low"
kind = "below"
measure = "spo2"
raise = 90
clear = 92
bands = [{ at = 88, severity = "high" }, { at = 85, severity = "emergency" }]
severity = "medium"
nurse = "x"
"#;

#[test]
fn escalation_bands_update_the_open_alert() {
    let mut r = rig(BANDED);
    assert_eq!(raised(&r.at(0, &spo2(90.0))).severity, Severity::Medium);
    let u = *updated(&r.at(MIN, &spo2(87.0)));
    assert_eq!((u.severity, u.opened_at), (Severity::High, Timestamp(0)));
    assert_eq!(values(&u), [90.0, 87.0]);
    assert!(r.at(2 * MIN, &spo2(86.0)).is_empty(), "same band");
    assert_eq!(
        updated(&r.at(3 * MIN, &spo2(85.0))).severity,
        Severity::Emergency
    );
    assert_eq!(
        updated(&r.at(4 * MIN, &spo2(89.0))).severity,
        Severity::Medium
    );
    assert!(r.at(5 * MIN, &spo2(91.0)).is_empty());
    resolved(&r.at(6 * MIN, &spo2(92.0)));
}

const BP: &str = r#"
[[rule]]
id = "bp-severe"
kind = "above"
measure = "systolic"
raise = 180
clear = 160
also = { measure = "diastolic", raise = 120, clear = 100 }
confirm = { n = 2, m = 3, within = "15m" }
ask_repeat = true
severity = "high"
audience = "both"
nurse = "BP {value}"
patient = "Please call us"
"#;

fn bp(s: f64, d: f64) -> [(Kind, f64); 2] {
    [(Kind::Systolic, s), (Kind::Diastolic, d)]
}

#[test]
fn confirm_n_of_m_asks_to_repeat_then_raises_on_the_second_high_reading() {
    let mut r = rig(BP);
    let e = r.at(0, &bp(185.0, 95.0));
    assert!(
        matches!(e[..], [Event::RepeatRequested(q)] if q.reason == RepeatReason::Confirm(RuleIdx(0)) && q.reading == rid(1)),
        "{e:?}"
    );
    assert!(
        r.at(5 * MIN, &bp(150.0, 90.0)).is_empty(),
        "normal in between"
    );
    let a = *raised(&r.at(10 * MIN, &bp(190.0, 95.0)));
    assert_eq!(
        values(&a),
        [185.0, 190.0],
        "both high readings are the evidence"
    );
    assert_eq!(
        a.evidence.iter().map(|e| e.reading).collect::<Vec<_>>(),
        [rid(1), rid(3)]
    );
    let text = r.engine.describe(&a).expect("known");
    assert_eq!(text.patient.as_deref(), Some("Please call us"));
    // Diastolic alone keeps it open (between for systolic, beyond for diastolic).
    assert!(r.at(20 * MIN, &bp(150.0, 125.0)).is_empty());
    assert!(
        r.at(21 * MIN, &bp(150.0, 110.0)).is_empty(),
        "diastolic not yet clear"
    );
    resolved(&r.at(22 * MIN, &bp(150.0, 100.0)));
}

#[test]
fn a_repeat_window_that_lapsed_raises_before_the_next_reading_and_diastolic_alone_can_raise() {
    let mut r = rig(BP);
    assert_eq!(r.at(0, &bp(185.0, 95.0)).len(), 1, "repeat request");
    // 20 minutes later, with no tick in between (a backlog arriving at once): the first
    // reading's window ran out at 15 minutes, so it is raised unconfirmed before the new
    // reading is judged, exactly as a tick at any time in between would have raised it.
    let e = r.at(20 * MIN, &bp(150.0, 125.0));
    let a = *raised(&e);
    assert!(a.evidence.iter().all(|e| e.reading == rid(1)), "{e:?}");
    assert_eq!(a.at, Timestamp(20 * MIN));
    let mut ticked = rig(BP);
    ticked.at(0, &bp(185.0, 95.0));
    let t = *raised(&ticked.tick(16 * MIN));
    assert_eq!(
        (t.evidence, t.severity, t.context),
        (a.evidence, a.severity, a.context),
        "the same alert as a tick raises"
    );

    // Diastolic alone: 125 then 121 within the window confirm on the diastolic limit.
    let mut r = rig(BP);
    assert!(matches!(
        r.at(0, &bp(150.0, 125.0))[..],
        [Event::RepeatRequested(_)]
    ));
    let a = *raised(&r.at(5 * MIN, &bp(150.0, 121.0)));
    assert_eq!(values(&a), [125.0, 121.0]);
    assert!(a.evidence.iter().all(|e| e.kind == Kind::Diastolic));
    assert_eq!(
        a.context,
        Context::Threshold {
            limit: 120.0,
            clear: 100.0
        }
    );
}

#[test]
fn a_high_reading_nobody_re_measured_is_escalated_unconfirmed_after_the_window() {
    let mut r = rig(BP);
    assert_eq!(r.at(0, &bp(220.0, 125.0)).len(), 1, "repeat request");
    assert!(
        r.tick(10 * MIN).is_empty(),
        "still inside the 15-minute window"
    );
    let e = r.tick(16 * MIN);
    let a = *raised(&e);
    assert!(
        a.evidence.iter().all(|e| e.reading == rid(1)),
        "the one reading is the evidence"
    );
    assert_eq!(
        values(&a),
        [220.0, 125.0],
        "systolic and diastolic both beyond their limits"
    );
    assert_eq!(a.at, Timestamp(16 * MIN), "raised when the window ran out");
    assert!(r.tick(30 * MIN).is_empty(), "raised once");
    assert_eq!(r.open(), 1);
    resolved(&r.at(40 * MIN, &bp(140.0, 85.0)));

    // A repeat that comes back normal (or merely raised) cancels the escalation.
    let mut r = rig(BP);
    r.at(0, &bp(220.0, 125.0));
    assert!(r.at(5 * MIN, &bp(150.0, 90.0)).is_empty());
    assert!(r.tick(20 * MIN).is_empty(), "the repeat was normal");
    let mut r = rig(BP);
    r.at(0, &bp(190.0, 95.0));
    assert!(
        r.at(5 * MIN, &bp(170.0, 95.0)).is_empty(),
        "between clear and raise"
    );
    assert!(r.tick(20 * MIN).is_empty(), "the repeat did not confirm");
}

#[test]
fn minimum_duration_needs_a_continuous_run() {
    let mut r = rig(r#"
[[rule]]
id = "pulse-high"
kind = "above"
measure = "pulse_rate"
raise = 120
clear = 110
min_duration = "10m"
severity = "medium"
nurse = "x"
"#);
    let pulse = |v| [(Kind::PulseRate, v)];
    assert!(r.at(0, &pulse(125.0)).is_empty());
    assert!(r.at(5 * MIN, &pulse(125.0)).is_empty());
    assert!(
        r.at(8 * MIN, &pulse(115.0)).is_empty(),
        "between: breaks the run"
    );
    assert!(r.at(9 * MIN, &pulse(130.0)).is_empty(), "run starts again");
    assert!(r.at(18 * MIN, &pulse(130.0)).is_empty(), "9 minutes");
    let a = *raised(&r.at(19 * MIN, &pulse(128.0)));
    assert_eq!(values(&a), [130.0, 128.0], "first and latest of the run");
    assert_eq!(a.opened_at, Timestamp(19 * MIN));
}

#[test]
fn baseline_drop_uses_the_median_of_daily_medians() {
    let mut r = rig(r#"
[[rule]]
id = "spo2-drop"
kind = "baseline_drop"
measure = "spo2"
drop = 4
clear_drop = 2
days = 3
min_days = 3
severity = "medium"
nurse = "SpO2 {value} % vs usual {baseline} %"
"#);
    // Day 0: 95, 97 → median 96. Day 1: 96. Day 2: 90 (no baseline yet: only 2 days),
    // 94, 95, 99 → median of [90, 94, 95, 99] = 94.5.
    for (t, v) in [
        (8 * HOUR, 95.0),
        (20 * HOUR, 97.0),
        (DAY + 8 * HOUR, 96.0),
        (2 * DAY + 8 * HOUR, 90.0),
        (2 * DAY + 9 * HOUR, 94.0),
        (2 * DAY + 10 * HOUR, 95.0),
        (2 * DAY + 11 * HOUR, 99.0),
    ] {
        assert!(r.at(t, &spo2(v)).is_empty(), "{v} at {t}");
    }
    // Day 3: baseline = median(96, 96, 94.5) = 96. 93 is down 3: between.
    assert!(r.at(3 * DAY + 8 * HOUR, &spo2(93.0)).is_empty());
    let a = *raised(&r.at(3 * DAY + 9 * HOUR, &spo2(92.0)));
    assert_eq!(
        a.context,
        Context::Baseline {
            baseline: 96.0,
            drop: 4.0,
            days: 3
        }
    );
    assert_eq!(
        r.engine.describe(&a).expect("known").nurse,
        "SpO2 92 % vs usual 96 %"
    );
    assert!(
        r.at(3 * DAY + 10 * HOUR, &spo2(93.0)).is_empty(),
        "down 3: stays open"
    );
    resolved(&r.at(3 * DAY + 11 * HOUR, &spo2(94.0)));
    // Ten days later every day in the window has expired: no baseline, no alert.
    assert!(r.at(13 * DAY, &spo2(80.0)).is_empty());
}

#[test]
fn personal_best_drop_is_a_percentage_of_the_rolling_best() {
    let mut r = rig(r#"
[[rule]]
id = "pef-drop"
kind = "best_drop"
measure = "pef"
drop = 20
clear_drop = 10
days = 7
min_days = 2
severity = "medium"
nurse = "PEF {value} vs best {baseline}"
"#);
    let pef = |v| [(Kind::Pef, v)];
    assert!(r.at(0, &pef(400.0)).is_empty());
    assert!(r.at(DAY, &pef(380.0)).is_empty());
    // Best 400; 330 is 17.5 % down (between, nothing); 310 is 22.5 % down.
    assert!(r.at(2 * DAY, &pef(330.0)).is_empty());
    let a = *raised(&r.at(2 * DAY + HOUR, &pef(310.0)));
    assert_eq!(
        a.context,
        Context::PersonalBest {
            best: 400.0,
            drop_percent: 22.5
        }
    );
    assert!(
        r.at(2 * DAY + 2 * HOUR, &pef(350.0)).is_empty(),
        "12.5 %: open"
    );
    resolved(&r.at(2 * DAY + 3 * HOUR, &pef(365.0)));
    // After the window, the old best has expired: best is now the last 7 days' max.
    assert!(
        r.at(9 * DAY + HOUR, &pef(300.0)).is_empty(),
        "best 365: 17.8 %"
    );
}

#[test]
fn trend_flags_a_value_beyond_mean_minus_k_sd() {
    let mut r = rig(r#"
[[rule]]
id = "spo2-trend"
kind = "trend"
measure = "spo2"
direction = "below"
k = 3.0
clear_k = 1.0
alpha = 0.1
min_sd = 1.0
min_readings = 5
severity = "low"
nurse = "x"
"#);
    for i in 0..5 {
        assert!(r.at(i * HOUR, &spo2(95.0)).is_empty());
    }
    // Mean 95, sd floored to 1: limit 92. 91 is below.
    let a = *raised(&r.at(5 * HOUR, &spo2(91.0)));
    assert_eq!(
        a.context,
        Context::Trend {
            mean: 95.0,
            sd: 1.0,
            limit: 92.0
        }
    );
    // Update: mean 95 + 0.1·(−4) = 94.6; var 0.9·(0 + (−4)(−0.4)) = 1.44, sd 1.2.
    // Clear level 94.6 − 1.2 = 93.4: 94 clears.
    let res = *resolved(&r.at(6 * HOUR, &spo2(94.0)));
    let Context::Trend { mean, sd, limit } = res.context else {
        panic!("trend context")
    };
    assert!(
        (mean - 94.6).abs() < 1e-9 && (sd - 1.2).abs() < 1e-9,
        "{mean} {sd}"
    );
    assert!((limit - 91.0).abs() < 1e-9);
}

#[test]
fn cusum_catches_a_slow_drift_a_trend_rule_would_miss() {
    let mut r = rig(r#"
[[rule]]
id = "spo2-drift"
kind = "cusum"
measure = "spo2"
direction = "below"
slack = 0.5
limit = 4.0
clear_limit = 0.0
alpha = 0.1
min_sd = 1.0
min_readings = 5
severity = "low"
nurse = "x"
"#);
    for i in 0..5 {
        assert!(r.at(i * HOUR, &spo2(95.0)).is_empty());
    }
    // Each 93 adds (95 − 93)/1 − 0.5 = 1.5; the reference is frozen while the sum is > 0.
    assert!(r.at(5 * HOUR, &spo2(93.0)).is_empty(), "1.5");
    assert!(r.at(6 * HOUR, &spo2(93.0)).is_empty(), "3.0");
    let a = *raised(&r.at(7 * HOUR, &spo2(93.0)));
    assert_eq!(
        a.context,
        Context::Cusum {
            sum: 4.5,
            limit: 4.0,
            mean: 95.0,
            sd: 1.0
        }
    );
    assert!(
        r.at(8 * HOUR, &spo2(95.0)).is_empty(),
        "4.0: still at the limit"
    );
    assert!(r.at(9 * HOUR, &spo2(96.0)).is_empty(), "2.5");
    resolved(&r.at(10 * HOUR, &spo2(97.0)));
}

#[test]
fn missing_data_is_raised_by_tick_and_resolved_by_a_reading() {
    let mut r = rig(r#"
[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "48h"
severity = "low"
nurse = "x"
"#);
    assert!(r.tick(47 * HOUR).is_empty());
    assert!(r.tick(48 * HOUR).is_empty(), "exactly 48 h is still within");
    let a = *raised(&r.tick(48 * HOUR + 1));
    assert_eq!(
        a.context,
        Context::Missing {
            kind: Kind::Spo2,
            last_seen: Timestamp(0),
            within: 48 * HOUR
        }
    );
    assert!(a.evidence.is_empty());
    assert!(r.tick(60 * HOUR).is_empty(), "one open alert");
    assert!(
        r.at(49 * HOUR, &[(Kind::PulseRate, 70.0)]).is_empty(),
        "other kinds do not answer"
    );
    resolved(&r.at(50 * HOUR, &spo2(95.0)));
    assert!(r.tick(98 * HOUR).is_empty());
    raised(&r.tick(98 * HOUR + 1));
    // An absent value (the device measured but sent no number) still shows adherence.
    resolved(&r.at(99 * HOUR, &spo2(f64::NAN)));
}

#[test]
fn silent_gateway_is_raised_by_tick_and_resolved_when_heard() {
    let mut r = rig(r#"
[[rule]]
id = "gw"
kind = "silent_gateway"
within = "24h"
severity = "low"
nurse = "x"
"#);
    assert!(r.tick(24 * HOUR).is_empty());
    raised(&r.tick(25 * HOUR));
    let mut out = Vec::new();
    r.engine
        .gateway_heard(r.pt, Timestamp(26 * HOUR), &mut out)
        .expect("enrolled");
    let a = resolved(&out);
    assert_eq!(
        a.context,
        Context::SilentGateway {
            last_heard: Timestamp(26 * HOUR),
            within: 24 * HOUR
        }
    );
    assert!(r.tick(50 * HOUR).is_empty(), "26 + 24 = 50");
    raised(&r.tick(51 * HOUR));
    resolved(&r.at(52 * HOUR, &spo2(95.0)));
}

const SILENT_GW: &str = r#"
[[rule]]
id = "gw"
kind = "silent_gateway"
within = "24h"
severity = "low"
nurse = "x"
"#;

const NO_SPO2: &str = r#"
[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "48h"
severity = "low"
nurse = "x"
"#;

impl Rig {
    /// A restart: the state rebuilt from `readings` (replay raises nothing), the patient's
    /// readings so far (numbered from the first, as [`Rig::at`] numbered them).
    fn rebuild(&mut self, readings: &[(i64, &[(Kind, f64)])]) {
        self.n = 0;
        let values: Vec<Vec<Measurement>> = readings
            .iter()
            .map(|(_, v)| {
                v.iter()
                    .map(|&(kind, value)| Measurement { kind, value })
                    .collect()
            })
            .collect();
        let samples = readings.iter().zip(&values).map(|(&(ms, _), v)| {
            self.n += 1;
            Sample {
                reading: rid(self.n),
                at: Timestamp(ms),
                flags: Flags::EMPTY,
                values: v,
            }
        });
        let samples: Vec<Sample<'_>> = samples.collect();
        self.engine
            .rebuild_samples(self.pt, samples)
            .expect("enrolled");
    }

    fn heard(&mut self, ms: i64) -> Vec<Event> {
        let mut out = Vec::new();
        self.engine
            .gateway_heard(self.pt, Timestamp(ms), &mut out)
            .expect("enrolled");
        out
    }

    fn settle(&mut self, ms: i64, recorded: &[(&str, i64)]) -> Vec<Event> {
        let recorded: Vec<(RuleIdx, Timestamp)> = recorded
            .iter()
            .map(|&(id, at)| {
                let rule = self
                    .engine
                    .rule_index(self.pt, id)
                    .expect("a rule of the set");
                (rule, Timestamp(at))
            })
            .collect();
        let mut out = Vec::new();
        self.engine
            .settle(self.pt, Timestamp(ms), &recorded, &mut out)
            .expect("enrolled");
        out
    }
}

#[test]
fn rules_are_found_by_id_in_the_patients_ruleset() {
    let r = rig(&format!("{BELOW}{SILENT_GW}"));
    assert_eq!(r.engine.rule_index(r.pt, "spo2-low"), Some(RuleIdx(0)));
    assert_eq!(r.engine.rule_index(r.pt, "gw"), Some(RuleIdx(1)));
    assert_eq!(r.engine.rule_index(r.pt, "no-such-rule"), None);
    assert_eq!(r.engine.rule_index(PatientIdx(9), "gw"), None);
}

#[test]
fn a_rebuilt_engine_forgets_a_silent_gateway_alert_unless_settled() {
    // Without settling, what the record holds open is unknown after a replay: the next tick
    // raises it again, and hearing the hub resolves nothing.
    let mut r = rig(SILENT_GW);
    raised(&r.tick(25 * HOUR));
    r.rebuild(&[]);
    assert_eq!(r.open(), 0, "replay raises nothing");
    assert!(r.heard(0).is_empty(), "the record's last-seen time: never");
    raised(&r.tick(26 * HOUR));

    // Settled with the record's open alert: the same alert, open since it was raised.
    let mut r = rig(SILENT_GW);
    let first = *raised(&r.tick(25 * HOUR));
    r.rebuild(&[]);
    assert!(
        r.settle(26 * HOUR, &[("gw", 25 * HOUR)]).is_empty(),
        "still silent"
    );
    assert_eq!(r.open(), 1);
    let open = *r.engine.open_alerts(r.pt).next().expect("open");
    assert_eq!(
        open.opened_at, first.opened_at,
        "opened when the record says"
    );
    assert_eq!(open.context, first.context);
    assert!(r.tick(27 * HOUR).is_empty(), "not raised twice");
    let a = *resolved(&r.heard(28 * HOUR));
    assert_eq!(
        (a.opened_at, a.at),
        (Timestamp(25 * HOUR), Timestamp(28 * HOUR))
    );
    assert!(r.tick(52 * HOUR).is_empty(), "28 + 24 = 52");
    raised(&r.tick(53 * HOUR));

    // A reading hears the hub too.
    let mut r = rig(&format!("{BELOW}{SILENT_GW}"));
    raised(&r.tick(25 * HOUR));
    r.rebuild(&[]);
    assert!(r.settle(26 * HOUR, &[("gw", 25 * HOUR)]).is_empty());
    let a = *resolved(&r.at(27 * HOUR, &spo2(95.0)));
    assert_eq!(r.engine.describe(&a).expect("known").rule, "gw");
}

#[test]
fn settling_resolves_a_recorded_alert_whose_condition_cleared() {
    // The hub was heard at 30 h (the record's last-seen time), after the alert opened at 25 h.
    let mut r = rig(SILENT_GW);
    r.rebuild(&[]);
    assert!(r.heard(30 * HOUR).is_empty());
    let a = *resolved(&r.settle(31 * HOUR, &[("gw", 25 * HOUR)]));
    assert_eq!(a.rule, RuleIdx(0));
    assert_eq!(
        (a.opened_at, a.at),
        (Timestamp(25 * HOUR), Timestamp(30 * HOUR)),
        "resolved when the hub was heard"
    );
    assert_eq!(
        a.context,
        Context::SilentGateway {
            last_heard: Timestamp(30 * HOUR),
            within: 24 * HOUR
        }
    );
    assert_eq!(a.severity, Severity::Low);
    assert_eq!(r.open(), 0);
    assert!(r.tick(54 * HOUR).is_empty(), "30 + 24 = 54");
    raised(&r.tick(55 * HOUR));

    // Missing data: replay finds the kind measured after the alert opened.
    let mut r = rig(NO_SPO2);
    r.rebuild(&[(50 * HOUR, &spo2(95.0))]);
    let a = *resolved(&r.settle(51 * HOUR, &[("no-spo2", 49 * HOUR)]));
    assert_eq!(a.at, Timestamp(50 * HOUR));
    assert_eq!(
        a.context,
        Context::Missing {
            kind: Kind::Spo2,
            last_seen: Timestamp(50 * HOUR),
            within: 48 * HOUR
        }
    );
    assert!(r.tick(98 * HOUR).is_empty());
    raised(&r.tick(98 * HOUR + 1));

    // Not due although nothing answered it since it opened (its window was lengthened):
    // resolved now, never before it opened.
    let mut r = rig(NO_SPO2);
    r.rebuild(&[(10 * HOUR, &spo2(95.0))]);
    let a = *resolved(&r.settle(40 * HOUR, &[("no-spo2", 30 * HOUR)]));
    assert_eq!(a.at, Timestamp(40 * HOUR));
}

#[test]
fn settling_raises_nothing_new_and_leaves_other_rules_to_replay() {
    let mut r = rig(&format!("{BELOW}{SILENT_GW}{NO_SPO2}"));
    r.rebuild(&[]);
    assert!(
        r.settle(60 * HOUR, &[]).is_empty(),
        "due, but not in the record: for the next tick"
    );
    assert_eq!(r.open(), 0);
    assert_eq!(r.tick(60 * HOUR).len(), 2, "the tick raises both");

    // A threshold rule the record holds open that replay did not open is left alone, and one
    // replay opened stays as replay made it.
    let mut r = rig(&format!("{BELOW}{SILENT_GW}"));
    r.rebuild(&[]);
    assert!(r.settle(HOUR, &[("spo2-low", 0)]).is_empty());
    assert_eq!(r.open(), 0);
    r.rebuild(&[(HOUR, &spo2(90.0))]);
    let replayed = *r.engine.open_alerts(r.pt).next().expect("replay opened it");
    assert!(r.settle(2 * HOUR, &[("spo2-low", 0)]).is_empty());
    assert_eq!(
        r.engine.open_alerts(r.pt).copied().collect::<Vec<_>>(),
        [replayed]
    );
}

#[test]
fn settling_adopts_a_lapsed_confirmation_the_record_holds_open() {
    let mut r = rig(BP);
    assert_eq!(r.at(0, &bp(220.0, 125.0)).len(), 1, "repeat request");
    let first = *raised(&r.tick(16 * MIN));
    r.rebuild(&[(0, &bp(220.0, 125.0))]);
    assert_eq!(r.open(), 0, "pending again after the replay");
    assert!(r.settle(20 * MIN, &[("bp-severe", 16 * MIN)]).is_empty());
    assert_eq!(r.open(), 1);
    let open = *r.engine.open_alerts(r.pt).next().expect("open");
    assert_eq!(
        (open.opened_at, open.evidence, open.context),
        (first.opened_at, first.evidence, first.context)
    );
    assert!(r.tick(30 * MIN).is_empty(), "not raised twice");
    resolved(&r.at(40 * MIN, &bp(140.0, 85.0)));

    // One the record does not hold is the tick's to raise.
    let mut r = rig(BP);
    r.rebuild(&[(0, &bp(220.0, 125.0))]);
    assert!(r.settle(20 * MIN, &[]).is_empty());
    raised(&r.tick(20 * MIN));
}

#[test]
fn a_doubtful_reading_asks_for_a_repeat_and_never_raises() {
    let mut r = rig(&format!(
        "{BELOW}{}",
        r#"
[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "48h"
severity = "low"
nurse = "x"
"#
    ));
    let flags = Flags::EMPTY.with(Flag::LowPerfusion);
    let e = r.flagged(0, &spo2(80.0), flags);
    assert!(
        matches!(e[..], [Event::RepeatRequested(q)] if q.reason == RepeatReason::DeviceQuality(flags)),
        "{e:?}"
    );
    assert_eq!(r.open(), 0);
    // Nor does it count towards anything: a clean normal value finds nothing to resolve.
    assert!(r.at(MIN, &spo2(95.0)).is_empty());
    // It does count as having measured (adherence).
    let _ = r.flagged(40 * HOUR, &spo2(80.0), flags);
    assert!(r.tick(87 * HOUR).is_empty(), "last seen at 40 h");
    // Informational flags do not gate.
    let info = Flags::EMPTY.with(Flag::FromStorage);
    raised(&r.flagged(41 * HOUR, &spo2(90.0), info));
}

#[test]
fn at_most_one_repeat_request_per_reading() {
    let mut r = rig(&format!(
        "{BP}{}",
        r#"
[[rule]]
id = "sys-high"
kind = "above"
measure = "systolic"
raise = 170
clear = 150
confirm = { n = 2, m = 2, within = "15m" }
ask_repeat = true
severity = "medium"
nurse = "x"
"#
    ));
    let e = r.at(0, &bp(190.0, 90.0));
    assert_eq!(e.len(), 1, "{e:?}");
    let e = r.at(5 * MIN, &bp(190.0, 90.0));
    assert_eq!(
        e.iter().filter(|e| matches!(e, Event::Raised(_))).count(),
        2
    );
    assert_eq!(r.open(), 2, "one per rule");
}

const NEWS2: &str = r#"
[[rule]]
id = "news2"
kind = "news2"
scale = 2
fresh = "1h"
min_response = "low_medium"
severity = "medium"
nurse = "NEWS2 {score} ({response})"
"#;

#[test]
fn news2_scale_2_on_oxygen_scores_over_oxygenation() {
    let mut r = rig(NEWS2);
    r.engine.set_on_oxygen(r.pt, true).expect("enrolled");
    // Scale 2 on oxygen: 97 % scores 3, oxygen 2 → 5, medium → high severity.
    let a = *raised(&r.at(0, &spo2(97.0)));
    let Context::News2(s) = a.context else {
        panic!("news2 context")
    };
    assert_eq!((s.total, s.spo2, s.oxygen), (5, Some(3), 2));
    assert_eq!(a.severity, Severity::High);
    assert_eq!(
        r.engine.describe(&a).expect("known").nurse,
        "NEWS2 5 (medium)"
    );
    // Pulse 131 adds 3 within the hour: 8, high → emergency.
    let u = *updated(&r.at(10 * MIN, &[(Kind::PulseRate, 131.0)]));
    assert_eq!(u.severity, Severity::Emergency);
    assert_eq!(values(&u), [97.0, 131.0]);
    // Two hours on, only the new SpO2 is fresh: 90 % on oxygen → 0 + 2 = low: resolves.
    let res = *resolved(&r.at(130 * MIN, &spo2(90.0)));
    let Context::News2(s) = res.context else {
        panic!("news2 context")
    };
    assert_eq!((s.total, s.pulse), (2, None));
}

#[test]
fn news2_on_oxygen_from_the_profile_scores_like_the_engine_flag() {
    // The patient's prescription written in their (override) profile, no engine call: the
    // same scores as `set_on_oxygen`.
    let mut r = rig(&NEWS2.replace("scale = 2", "scale = 2\non_oxygen = true"));
    let a = *raised(&r.at(0, &spo2(97.0)));
    let Context::News2(s) = a.context else {
        panic!("news2 context")
    };
    assert_eq!(
        (s.total, s.spo2, s.oxygen, s.on_oxygen),
        (5, Some(3), 2, true)
    );
    assert_eq!(a.severity, Severity::High);
    // Off oxygen (the same profile with the flag off): 97 % on scale 2 scores nothing.
    let mut air = rig(&NEWS2.replace("scale = 2", "scale = 2\non_oxygen = false"));
    assert!(air.at(0, &spo2(97.0)).is_empty());
    // The field belongs to NEWS2 rules only.
    let err = Profile::from_toml(
        "id = \"t\"\nversion = 1\n[[rule]]\nid = \"low\"\nkind = \"below\"\n\
         measure = \"spo2\"\nraise = 90\nclear = 92\nseverity = \"high\"\n\
         nurse = \"x\"\non_oxygen = true\n",
    )
    .expect("parses")
    .build()
    .expect_err("on_oxygen on a threshold rule");
    assert!(err.to_string().contains("on_oxygen"), "{err}");
}

#[test]
fn news2_scale_2_on_air_at_target_is_quiet_and_single_three_is_low_medium() {
    let mut r = rig(NEWS2);
    assert!(
        r.at(0, &spo2(97.0)).is_empty(),
        "on air, 97 scores 0 on scale 2"
    );
    let a = *raised(&r.at(MIN, &spo2(83.0)));
    let Context::News2(s) = a.context else {
        panic!("news2 context")
    };
    assert_eq!(
        (s.total, s.response),
        (3, crate::news2::Response::LowMedium)
    );
    assert_eq!(a.severity, Severity::Medium);
}

#[test]
fn state_per_patient_is_separate() {
    let mut r = rig(BELOW);
    let p = r.engine.profile(ProfileIdx(0)).cloned().expect("profile");
    let other = r.engine.add_profile(p);
    let pt2 = r
        .engine
        .add_patient(PatientKey::new("pt-2").expect("key"), other, Timestamp(0))
        .expect("enrol");
    assert_eq!(
        r.engine
            .add_patient(PatientKey::new("pt-2").expect("key"), other, Timestamp(0)),
        Err(EngineError::AlreadyEnrolled(1))
    );
    raised(&r.at(0, &spo2(90.0)));
    assert_eq!(r.engine.open_alerts(pt2).count(), 0);
    let mut out = Vec::new();
    assert_eq!(
        r.engine.evaluate(
            PatientIdx(9),
            &Sample {
                reading: rid(1),
                at: Timestamp(0),
                flags: Flags::EMPTY,
                values: &[]
            },
            &mut out
        ),
        Err(EngineError::UnknownPatient(9))
    );
}

// The layout of the per-patient state (hot lines packed per ruleset).

/// A small deterministic generator for the layout tests.
struct Xs(u64);

impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn pack_places_units_inside_one_line_apart_and_by_group() {
    let mut x = Xs(0x2545_F491_4F6C_DD1D);
    for _ in 0..500 {
        let n = (x.next() % 40) as usize;
        let units: Vec<(usize, u8)> = (0..n)
            .map(|_| ([1, 4, 8][(x.next() % 3) as usize], (x.next() % 5) as u8))
            .collect();
        let (at, lines) = pack(&units);
        assert_eq!(at.len(), units.len());
        let mut owner: Vec<Option<usize>> = vec![None; lines * LINE_WORDS];
        let mut group_of: Vec<Option<u8>> = vec![None; lines];
        for (i, (&(size, group), w)) in units.iter().zip(&at).enumerate() {
            assert!(w.line() < lines, "{units:?}: unit {i} past the last line");
            assert_eq!(w.offset() % size, 0, "{units:?}: unit {i} misaligned");
            assert!(
                w.offset() + size <= LINE_WORDS,
                "{units:?}: unit {i} crosses a line"
            );
            for (word, o) in owner
                .iter_mut()
                .enumerate()
                .skip(usize::from(w.0))
                .take(size)
            {
                assert_eq!(*o, None, "{units:?}: units overlap at word {word}");
                *o = Some(i);
            }
            let g = group_of[w.line()].get_or_insert(group);
            assert_eq!(*g, group, "{units:?}: groups share line {}", w.line());
        }
        // No more lines than the groups need (each group's words, rounded up per size class).
        let need: usize = (0..5u8)
            .map(|g| {
                let words: usize = units.iter().filter(|u| u.1 == g).map(|u| u.0).sum();
                words.div_ceil(LINE_WORDS)
            })
            .sum();
        assert_eq!(lines, need, "{units:?}: lines wasted");
    }
}

fn compiled(toml: &str) -> Compiled {
    Compiled::new(
        Profile::from_toml(toml)
            .expect("parses")
            .build()
            .expect("valid"),
    )
}

fn lines_of(c: &Compiled, kinds: &[Kind]) -> u32 {
    kinds
        .iter()
        .fold(0, |a, k| a | c.reach[k.index()] | c.reach_seen[k.index()])
        .count_ones()
}

#[test]
fn a_reading_touches_only_the_lines_of_its_device() {
    let copd = compiled(include_str!("../../fixtures/profiles/copd.toml"));
    assert_eq!(copd.hot_init.len(), 5);
    // Oximetry: today's SpO2 values, the two EWMAs, the SpO2 baseline, NEWS2's latest and
    // its reading ids.
    assert_eq!(lines_of(&copd, &[Kind::Spo2, Kind::PulseRate]), 5);
    // Blood pressure: NEWS2's latest and ids only.
    assert_eq!(
        lines_of(&copd, &[Kind::Systolic, Kind::Diastolic, Kind::PulseRate]),
        2
    );
    // Spirometry: both personal bests in one line.
    assert_eq!(lines_of(&copd, &[Kind::Fev1, Kind::Fvc, Kind::Pef]), 1);
    let ht = compiled(include_str!("../../fixtures/profiles/hypertension.toml"));
    assert_eq!(ht.hot_init.len(), 1);
    assert_eq!(
        lines_of(&ht, &[Kind::Systolic, Kind::Diastolic, Kind::PulseRate]),
        1
    );
    assert_eq!(lines_of(&ht, &[Kind::Spo2, Kind::PulseRate]), 0);
}

#[test]
fn every_rule_reaches_the_lines_of_its_state() {
    for toml in [
        include_str!("../../fixtures/profiles/copd.toml"),
        include_str!("../../fixtures/profiles/copd_hypercapnic.toml"),
        include_str!("../../fixtures/profiles/hypertension.toml"),
        MANY.as_str(),
    ] {
        let c = compiled(toml);
        for (rule, lay) in c.set.rules.iter().zip(&c.layout) {
            let (words, ids): (Vec<Word>, bool) = match lay.det {
                DetSlot::None => (vec![], false),
                DetSlot::Days { at, values, .. } => {
                    (std::iter::once(at).chain(values).collect(), false)
                }
                DetSlot::Ewma(at) => (vec![at], false),
                DetSlot::News2 { at, ids } => (vec![at], ids == 0),
            };
            for k in rule.measures() {
                let r = c.reach[k.index()];
                for w in &words {
                    assert!(
                        w.line() >= HOT_INLINE || r & line_bit(*w) != 0,
                        "{}: {k:?}",
                        rule.id
                    );
                }
                assert!(r & REACH_IDS != 0 || !ids, "{}: {k:?} ids", rule.id);
            }
            if let Check::Missing { measure, .. } = rule.check {
                match c.seen_at[measure.index()] {
                    Some(Seen::Header(i)) => assert!(usize::from(i) < SEEN_INLINE),
                    Some(Seen::Hot(w)) => {
                        assert!(
                            w.line() >= HOT_INLINE
                                || c.reach_seen[measure.index()] & line_bit(w) != 0
                        )
                    }
                    None => panic!("{}: last-seen time not kept", rule.id),
                }
            }
        }
    }
}

#[test]
fn detector_words_round_trip() {
    let mut x = Xs(7);
    for i in 0..200u32 {
        let mut d = DayStats::new();
        if i > 0 {
            d.today = x.next() as i64;
            d.today_max = (i % 2 == 0).then(|| f64::from_bits(x.next() >> 2));
            d.cached = (i % 3 == 0).then(|| -(x.next() as f64));
            d.count = x.next() as u8;
            d.cached_days = (x.next() % 93) as u16;
            d.values = std::array::from_fn(|_| x.next() as f64 / 3.0);
        }
        let (mut h, mut v) = ([0; DAY_WORDS], [0; TODAY_VALUES]);
        d.store(&mut h, Some(&mut v));
        assert_eq!(DayStats::load(&h, Some(&v)), d);
        let e = Ewma {
            n: x.next() as u32,
            mean: x.next() as f64,
            var: f64::from_bits(x.next() >> 3),
            sum: -(i as f64),
        };
        let mut w = [0; EWMA_WORDS];
        e.store(&mut w);
        assert_eq!(Ewma::load(&w), e);
    }
}

/// A ruleset larger than a patient entry holds: more hot lines than [`HOT_INLINE`], more
/// watched kinds than [`SEEN_INLINE`], two NEWS2 rules.
static MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut t = String::from("id = \"many\"\nversion = 1\n");
    let mut rule = |body: String| {
        t.push_str(&format!(
            "[[rule]]\n{body}\nseverity = \"medium\"\nnurse = \"x\"\n"
        ));
    };
    for m in ["spo2", "systolic", "body_temperature"] {
        rule(format!(
            "id = \"base-{m}\"\nkind = \"baseline_drop\"\nmeasure = \"{m}\"\ndrop = 3\nclear_drop = 1\ndays = 7\nmin_days = 2"
        ));
    }
    for m in ["pef", "fev1", "fvc"] {
        rule(format!(
            "id = \"best-{m}\"\nkind = \"best_drop\"\nmeasure = \"{m}\"\ndrop = 15\nclear_drop = 5\ndays = 10\nmin_days = 2"
        ));
    }
    for m in ["spo2", "systolic", "pulse_rate", "body_temperature", "pef"] {
        rule(format!(
            "id = \"trend-{m}\"\nkind = \"trend\"\nmeasure = \"{m}\"\ndirection = \"below\"\nk = 2.0\nclear_k = 1.0\nalpha = 0.2\nmin_sd = 0.5\nmin_readings = 5"
        ));
        rule(format!(
            "id = \"drift-{m}\"\nkind = \"cusum\"\nmeasure = \"{m}\"\ndirection = \"below\"\nslack = 0.5\nlimit = 3.0\nclear_limit = 0.0\nalpha = 0.1\nmin_sd = 0.5\nmin_readings = 5"
        ));
    }
    for (i, scale) in [1, 2].into_iter().enumerate() {
        rule(format!(
            "id = \"news2-{i}\"\nkind = \"news2\"\nscale = {scale}\nfresh = \"2h\"\nmin_response = \"low\""
        ));
    }
    for m in ["spo2", "systolic", "pef", "fev1", "body_temperature"] {
        rule(format!(
            "id = \"missing-{m}\"\nkind = \"missing\"\nmeasure = \"{m}\"\nwithin = \"20h\""
        ));
    }
    t
});

/// The readings of a patient over `days` days: a few a day of each device, drifting down
/// in the second half so baselines, bests, trends, drifts and NEWS2 all raise and clear; a
/// missed day now and then.
fn drifting_stream(days: i64) -> Vec<(Timestamp, Vec<Measurement>)> {
    let mut x = Xs(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    for day in 0..days {
        if x.next().is_multiple_of(9) {
            continue;
        }
        let sag = if day > days / 2 {
            (day - days / 2) as f64
        } else {
            0.0
        };
        for slot in 0..4 {
            let at = Timestamp(day * DAY + slot * 5 * HOUR + (x.next() % 60) as i64 * MIN);
            let j = (x.next() % 100) as f64 / 100.0;
            let m = |kind, value| Measurement { kind, value };
            let values = match (slot + day) % 4 {
                0 => vec![
                    m(Kind::Spo2, 96.0 - sag * 0.8 + j),
                    m(Kind::PulseRate, 70.0 + sag * 4.0 + j),
                ],
                1 => vec![
                    m(Kind::Systolic, 150.0 - sag * 6.0 + j * 4.0),
                    m(Kind::Diastolic, 85.0 + j),
                    m(Kind::PulseRate, 72.0 + j),
                ],
                2 => vec![
                    m(Kind::Fev1, 2.0 - sag * 0.1 + j / 10.0),
                    m(Kind::Fvc, 3.0 - sag * 0.1),
                    m(Kind::Pef, 350.0 - sag * 15.0 + j * 5.0),
                ],
                _ => vec![m(Kind::BodyTemperature, 36.8 + sag * 0.3 + j / 5.0)],
            };
            out.push((at, values));
        }
    }
    out
}

/// Runs `stream` through an engine on `toml` (one patient, on oxygen), a tick every hour.
fn run(toml: &str, stream: &[(Timestamp, Vec<Measurement>)], batch: bool) -> (Engine, Vec<Event>) {
    let mut e = Engine::new();
    let p = e.add_profile(
        Profile::from_toml(toml)
            .expect("parses")
            .build()
            .expect("valid"),
    );
    let pt = e
        .add_patient(PatientKey::new("pt-1").expect("key"), p, Timestamp(0))
        .expect("enrol");
    e.set_on_oxygen(pt, true).expect("enrolled");
    let mut out = Vec::new();
    let mut next_tick = HOUR;
    for (i, (at, values)) in stream.iter().enumerate() {
        while next_tick <= at.0 {
            e.tick(Timestamp(next_tick), &mut out);
            next_tick += HOUR;
        }
        let s = Sample {
            reading: rid(i as u32),
            at: *at,
            flags: Flags::EMPTY,
            values,
        };
        if batch {
            e.evaluate_batch(&[(pt, s)], &mut out).expect("enrolled");
        } else {
            e.evaluate(pt, &s, &mut out).expect("enrolled");
        }
    }
    (e, out)
}

/// Each rule of a ruleset too large for a patient entry (hot lines and NEWS2 ids spilled to
/// the cold part, last-seen times in the hot lines) decides exactly what it decides as the
/// only rule of its ruleset, where everything fits in the entry.
#[test]
fn rules_spilling_past_the_entry_decide_as_rules_alone() {
    let many = compiled(&MANY);
    assert!(
        many.hot_init.len() > HOT_INLINE,
        "{} lines",
        many.hot_init.len()
    );
    assert!(many.sizes.news2 == 2);
    assert!(many.seen_at.iter().any(|s| matches!(s, Some(Seen::Hot(_)))));
    let stream = drifting_stream(40);
    let (_, all) = run(&MANY, &stream, false);
    let (_, batched) = run(&MANY, &stream, true);
    assert_eq!(all, batched);
    let header = "id = \"many\"\nversion = 1\n";
    let rules: Vec<&str> = MANY.split("[[rule]]\n").skip(1).collect();
    let mut raised = 0;
    for (r, text) in rules.iter().enumerate() {
        let alone = format!("{header}[[rule]]\n{text}");
        assert!(compiled(&alone).hot_init.len() <= HOT_INLINE);
        let (_, expected) = run(&alone, &stream, false);
        let got: Vec<Event> = all
            .iter()
            .filter(|e| e.alert().is_some_and(|a| a.rule == RuleIdx(r as u16)))
            .map(|e| {
                let mut e = *e;
                if let Event::Raised(a) | Event::Updated(a) | Event::Resolved(a) = &mut e {
                    a.rule = RuleIdx(0);
                }
                e
            })
            .collect();
        assert_eq!(got, expected, "rule {r}: {text}");
        raised += expected
            .iter()
            .filter(|e| matches!(e, Event::Raised(_)))
            .count();
    }
    // The stream makes most rules raise (a test of nothing otherwise).
    assert!(raised >= rules.len(), "{raised} alerts raised");
}

/// Every word a ruleset lays out, and every NEWS2 id line, is storage of its own, in the
/// entry or past it: writing each a different value and reading them all back finds each
/// value where it was written.
#[test]
fn every_unit_has_its_own_storage() {
    for toml in [
        include_str!("../../fixtures/profiles/copd.toml"),
        include_str!("../../fixtures/profiles/hypertension.toml"),
        MANY.as_str(),
    ] {
        let c = compiled(toml);
        let mut p = PatientState::new(ProfileIdx(0), &c, Timestamp(0), false);
        let mut words: Vec<Word> = Vec::new();
        for lay in &c.layout {
            let (at, n) = match lay.det {
                DetSlot::None => continue,
                DetSlot::Days { at, values, .. } => {
                    if let Some(v) = values {
                        words.extend((0..TODAY_VALUES as u16).map(|i| Word(v.0 + i)));
                    }
                    (at, DAY_WORDS)
                }
                DetSlot::Ewma(at) => (at, EWMA_WORDS),
                DetSlot::News2 { at, .. } => (at, LATEST_WORDS),
            };
            words.extend((0..n as u16).map(|i| Word(at.0 + i)));
        }
        for s in c.seen_at.iter().flatten() {
            if let Seen::Hot(w) = s {
                words.push(*w);
            }
        }
        for (i, w) in words.iter().enumerate() {
            *p.unit::<1>(*w).map(|[x]| x).expect("laid out") = 1000 + i as u64;
        }
        for j in 0..c.sizes.news2 as u16 {
            p.id_line_mut(j).expect("laid out").0[0] = rid(u32::from(j) + 1);
        }
        for (i, w) in words.iter().enumerate() {
            assert_eq!(
                p.unit::<1>(*w).map(|x| x[0]),
                Some(1000 + i as u64),
                "{w:?}"
            );
        }
        for j in 0..c.sizes.news2 as u16 {
            assert_eq!(
                p.id_line_mut(j).map(|l| l.0[0]),
                Some(rid(u32::from(j) + 1))
            );
        }
    }
}

#[test]
fn a_backlog_reading_resolves_a_time_driven_alert_no_earlier_than_it_opened() {
    const HOUR: i64 = 3_600_000;
    // A hub measured at 1 h, then went quiet: both time-driven rules raise on the tick.
    let mut r = rig(&format!("{SILENT_GW}{NO_SPO2}"));
    assert!(r.at(HOUR, &spo2(95.0)).is_empty());
    let raised_events = r.tick(60 * HOUR);
    assert_eq!(raised_events.len(), 2, "{raised_events:?}");
    // Back from offline, the hub delivers what it measured at 30 h, before either opened.
    let events = r.at(30 * HOUR, &spo2(95.0));
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        let Event::Resolved(a) = e else {
            panic!("only resolves: {events:?}")
        };
        assert_eq!(a.opened_at, Timestamp(60 * HOUR));
        assert_eq!(
            a.at,
            Timestamp(60 * HOUR),
            "resolved when it opened, not before (the reading's own time is in the context)"
        );
        match a.context {
            Context::Missing { last_seen, .. } => assert_eq!(last_seen, Timestamp(30 * HOUR)),
            Context::SilentGateway { last_heard, .. } => {
                assert_eq!(last_heard, Timestamp(30 * HOUR));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(r.open(), 0);
}

#[test]
fn a_late_normal_reading_resolves_no_earlier_than_the_alert_opened() {
    let mut r = rig(BELOW);
    let opened = raised(&r.at(10_000, &spo2(90.0))).opened_at;
    // Measured before the low one, delivered after it.
    let a = *resolved(&r.at(5_000, &spo2(96.0)));
    assert_eq!((a.opened_at, a.at), (opened, opened));
}

#[test]
fn a_late_reading_in_another_band_updates_no_earlier_than_the_alert_opened() {
    let mut r = rig(BANDED);
    let opened = raised(&r.at(10_000, &spo2(89.0))).opened_at;
    // Measured before the raise, delivered after it, in the next band down.
    let u = *updated(&r.at(5_000, &spo2(87.0)));
    assert_eq!(u.severity, Severity::High);
    assert_eq!((u.opened_at, u.at), (opened, opened));
    assert_eq!(
        u.evidence.last().map(|e| e.at),
        Some(Timestamp(5_000)),
        "the reading keeps its own time"
    );
}
