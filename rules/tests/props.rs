//! Random reading streams: nothing panics, at most one open alert per (patient, rule), and
//! state rebuilt by replay equals state built incrementally.

mod common;

use std::collections::HashSet;

use proptest::prelude::*;
use rules::{Engine, Event, Measurement, PatientIdx, Profile, RuleIdx, Sample, Timestamp};
use vitals::{Flag, Flags, Kind, PatientKey, Reading, ReadingId};

/// Every rule kind, with small windows so random streams reach them.
const EVERYTHING: &str = r#"
id = "everything"
version = 1

[[rule]]
id = "spo2-low"
kind = "below"
measure = "spo2"
raise = 90
clear = 93
bands = [{ at = 86, severity = "high" }, { at = 82, severity = "emergency" }]
confirm = { n = 2, m = 3, within = "30m" }
ask_repeat = true
severity = "medium"
nurse = "x"

[[rule]]
id = "bp"
kind = "above"
measure = "systolic"
raise = 170
clear = 150
also = { measure = "diastolic", raise = 110, clear = 95 }
min_duration = "20m"
severity = "high"
nurse = "x"

[[rule]]
id = "pulse"
kind = "above"
measure = "pulse_rate"
raise = 110
clear = 100
severity = "low"
nurse = "x"

[[rule]]
id = "spo2-baseline"
kind = "baseline_drop"
measure = "spo2"
drop = 3
days = 3
min_days = 1
severity = "medium"
nurse = "x"

[[rule]]
id = "pef-best"
kind = "best_drop"
measure = "pef"
drop = 15
days = 4
min_days = 1
confirm = { n = 1, m = 2, within = "2h" }
severity = "medium"
nurse = "x"

[[rule]]
id = "spo2-trend"
kind = "trend"
measure = "spo2"
direction = "below"
k = 2.0
min_sd = 0.5
min_readings = 3
severity = "low"
nurse = "x"

[[rule]]
id = "sys-drift"
kind = "cusum"
measure = "systolic"
direction = "above"
limit = 3.0
min_sd = 2.0
min_readings = 3
severity = "low"
nurse = "x"

[[rule]]
id = "news2"
kind = "news2"
scale = 2
min_response = "low"
severity = "low"
nurse = "x"

[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "6h"
severity = "low"
nurse = "x"

[[rule]]
id = "gw"
kind = "silent_gateway"
within = "4h"
severity = "low"
nurse = "x"
"#;

fn engine(patients: usize) -> Engine {
    let set = Profile::from_toml(EVERYTHING)
        .expect("parses")
        .build()
        .expect("valid");
    let mut e = Engine::new();
    let p = e.add_profile(set);
    for i in 0..patients {
        let idx = e
            .add_patient(
                PatientKey::new(format!("pt-{i}")).expect("key"),
                p,
                Timestamp(0),
            )
            .expect("enrol");
        if i % 2 == 1 {
            e.set_on_oxygen(idx, true).expect("enrolled");
        }
    }
    e
}

#[derive(Clone, Debug)]
enum Step {
    Read {
        patient: usize,
        gap_min: i64,
        values: Vec<(Kind, Option<f64>)>,
        doubtful: bool,
    },
    Tick {
        gap_min: i64,
    },
    Heard {
        patient: usize,
    },
}

fn value(kind: Kind) -> impl Strategy<Value = (Kind, Option<f64>)> {
    let i = kind.info();
    prop_oneof![
        9 => (i.min..=i.max).prop_map(move |v| (kind, Some(v))),
        1 => Just((kind, None)),
    ]
}

fn values() -> impl Strategy<Value = Vec<(Kind, Option<f64>)>> {
    prop_oneof![
        (value(Kind::Spo2), value(Kind::PulseRate)).prop_map(|(a, b)| vec![a, b]),
        (
            value(Kind::Systolic),
            value(Kind::Diastolic),
            value(Kind::PulseRate)
        )
            .prop_map(|(a, b, c)| vec![a, b, c]),
        (value(Kind::Fev1), value(Kind::Pef)).prop_map(|(a, b)| vec![a, b]),
        value(Kind::BodyTemperature).prop_map(|a| vec![a]),
        // Near the interesting levels, so rules actually fire.
        (85.0..97.0f64).prop_map(|v| vec![(Kind::Spo2, Some(v.round()))]),
    ]
}

fn step(patients: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..patients, 0..600i64, values(), proptest::bool::weighted(0.1)).prop_map(
            |(patient, gap_min, values, doubtful)| Step::Read { patient, gap_min, values, doubtful }
        ),
        1 => (0..900i64).prop_map(|gap_min| Step::Tick { gap_min }),
        1 => (0..patients).prop_map(|patient| Step::Heard { patient }),
    ]
}

/// Checks the event stream against a model of open alerts.
fn apply(open: &mut HashSet<(PatientIdx, RuleIdx)>, events: &[Event]) -> Result<(), TestCaseError> {
    let mut repeats = HashSet::new();
    for e in events {
        match e {
            Event::Raised(a) => {
                prop_assert!(open.insert((a.patient, a.rule)), "second open alert: {a:?}");
            }
            Event::Updated(a) => prop_assert!(
                open.contains(&(a.patient, a.rule)),
                "update of closed {a:?}"
            ),
            Event::Resolved(a) => {
                prop_assert!(open.remove(&(a.patient, a.rule)), "resolve of closed {a:?}")
            }
            Event::RepeatRequested(r) => {
                prop_assert!(
                    repeats.insert(r.reading),
                    "two repeat requests for one reading"
                )
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_streams_never_panic_or_open_two_alerts_per_rule(
        steps in proptest::collection::vec(step(3), 1..300)
    ) {
        let mut e = engine(3);
        let mut open = HashSet::new();
        let mut now = 0i64;
        let mut out = Vec::new();
        for s in steps {
            out.clear();
            match s {
                Step::Read { patient, gap_min, values, doubtful } => {
                    now += gap_min;
                    let flags = if doubtful { Flags::EMPTY.with(Flag::CuffLoose) } else { Flags::EMPTY };
                    let r = common::reading(&format!("pt-{patient}"), now, &values, flags);
                    e.evaluate_reading(PatientIdx(patient as u32), &r, &mut out).expect("enrolled");
                    if doubtful {
                        prop_assert!(out.iter().all(|e| !matches!(e, Event::Raised(_) | Event::Updated(_))));
                    }
                }
                Step::Tick { gap_min } => {
                    now += gap_min;
                    e.tick(Timestamp::from_datetime(common::at_minutes(now)), &mut out);
                }
                Step::Heard { patient } => {
                    e.gateway_heard(PatientIdx(patient as u32), Timestamp::from_datetime(common::at_minutes(now)), &mut out)
                        .expect("enrolled");
                }
            }
            apply(&mut open, &out)?;
        }
        for p in 0..3u32 {
            let engine_open: HashSet<_> = e.open_alerts(PatientIdx(p)).map(|a| (a.patient, a.rule)).collect();
            let model: HashSet<_> = open.iter().filter(|k| k.0 == PatientIdx(p)).copied().collect();
            prop_assert_eq!(engine_open, model);
        }
    }

    #[test]
    fn replay_rebuilds_exactly_the_incremental_state(
        steps in proptest::collection::vec((0..600i64, values(), proptest::bool::weighted(0.1)), 1..200)
    ) {
        let mut live = engine(1);
        let mut recorded: Vec<Reading> = Vec::new();
        let mut now = 0;
        let mut out = Vec::new();
        for (gap, values, doubtful) in steps {
            now += gap;
            let flags = if doubtful { Flags::EMPTY.with(Flag::SignalQuestionable) } else { Flags::EMPTY };
            let r = common::reading("pt-0", now, &values, flags);
            live.evaluate_reading(PatientIdx(0), &r, &mut out).expect("enrolled");
            recorded.push(r);
        }
        // A restarted node: some unrelated state first, then the rebuild.
        let mut restarted = engine(1);
        let junk = common::reading("pt-0", 5, &[(Kind::Spo2, Some(80.0))], Flags::EMPTY);
        restarted.evaluate_reading(PatientIdx(0), &junk, &mut out).expect("enrolled");
        let n = restarted.rebuild(PatientIdx(0), &recorded).expect("enrolled");
        prop_assert_eq!(n, recorded.len() as u64);
        prop_assert_eq!(live.patient_state(PatientIdx(0)), restarted.patient_state(PatientIdx(0)));
    }
}

/// One reading of a generated stream: patient, time, flags, id and values.
type Recorded = (PatientIdx, Timestamp, Flags, ReadingId, Vec<Measurement>);

fn sample(r: &Recorded) -> Sample<'_> {
    Sample {
        reading: r.3,
        at: r.1,
        flags: r.2,
        values: &r.4,
    }
}

/// `stream` in consecutive batches of the sizes in `cuts`, taken in turn (cycling), until all
/// of it is cut.
fn cut<'a, T>(stream: &'a [T], cuts: &[usize]) -> Vec<&'a [T]> {
    let mut batches = Vec::new();
    let mut rest = stream;
    for &size in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.clamp(1, rest.len()));
        batches.push(now);
        rest = later;
    }
    batches
}

/// Patients on every rule kind (two of them on oxygen) and one on the COPD fixture profile.
fn mixed_engine() -> Engine {
    let mut e = engine(3);
    let copd = Profile::from_toml(include_str!("../../fixtures/profiles/copd.toml"))
        .expect("parses")
        .build()
        .expect("valid");
    let copd = e.add_profile(copd);
    e.add_patient(PatientKey::new("pt-copd").expect("key"), copd, Timestamp(0))
        .expect("enrol");
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `evaluate_batch` is `evaluate` on each reading in turn: the same events in the same
    /// order, and the same state afterwards, however the stream is cut into batches.
    #[test]
    fn batches_evaluate_exactly_like_single_readings(
        steps in proptest::collection::vec(
            (0..4usize, 0..300i64, values(), proptest::bool::weighted(0.1)),
            1..300,
        ),
        cuts in proptest::collection::vec(1..40usize, 1..8),
    ) {
        let mut now = 0i64;
        let mut stream: Vec<Recorded> = Vec::new();
        for (i, (patient, gap_min, values, doubtful)) in steps.into_iter().enumerate() {
            now += gap_min;
            let values: Vec<Measurement> = values
                .into_iter()
                .map(|(kind, v)| Measurement { kind, value: v.unwrap_or(f64::NAN) })
                .collect();
            let flags = if doubtful { Flags::EMPTY.with(Flag::BodyMovement) } else { Flags::EMPTY };
            let id: ReadingId = format!("00000000-0000-0000-0000-{i:012x}").parse().expect("uuid");
            stream.push((PatientIdx(patient as u32), Timestamp(now * 60_000), flags, id, values));
        }

        let mut single = mixed_engine();
        let mut expected = Vec::new();
        for r in &stream {
            single.evaluate(r.0, &sample(r), &mut expected).expect("enrolled");
        }

        let mut batched = mixed_engine();
        let mut got = Vec::new();
        for now in cut(&stream, &cuts) {
            let batch: Vec<(PatientIdx, Sample<'_>)> = now.iter().map(|r| (r.0, sample(r))).collect();
            batched.evaluate_batch(&batch, &mut got).expect("enrolled");
        }

        prop_assert_eq!(&got, &expected);
        for p in 0..4 {
            prop_assert_eq!(batched.patient_state(PatientIdx(p)), single.patient_state(PatientIdx(p)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `evaluate_readings` (ingest's path: a committed batch at once) is `evaluate_reading` on
    /// each reading in turn, with the same unit conversion and absent values: the same events
    /// in the same order and the same state, however the stream is cut.
    #[test]
    fn readings_evaluate_in_batches_exactly_like_one_at_a_time(
        steps in proptest::collection::vec(
            (0..4usize, 0..300i64, values(), proptest::bool::weighted(0.1)),
            1..200,
        ),
        cuts in proptest::collection::vec(1..40usize, 1..8),
    ) {
        let mut now = 0i64;
        let mut stream: Vec<(PatientIdx, Reading)> = Vec::new();
        for (i, (patient, gap_min, values, doubtful)) in steps.into_iter().enumerate() {
            now += gap_min;
            let flags = if doubtful { Flags::EMPTY.with(Flag::LowPerfusion) } else { Flags::EMPTY };
            let mut r = common::reading(&format!("pt-{patient}"), now, &values, flags);
            // Each its own id, so that events naming the wrong reading differ.
            r.id = format!("00000000-0000-0000-0000-{i:012x}").parse().expect("uuid");
            stream.push((PatientIdx(patient as u32), r));
        }

        let mut single = mixed_engine();
        let mut expected = Vec::new();
        for (p, r) in &stream {
            single.evaluate_reading(*p, r, &mut expected).expect("enrolled");
        }

        let mut batched = mixed_engine();
        let mut got = Vec::new();
        for now in cut(&stream, &cuts) {
            let batch: Vec<(PatientIdx, &Reading)> = now.iter().map(|(p, r)| (*p, r)).collect();
            batched.evaluate_readings(&batch, &mut got).expect("enrolled");
        }

        prop_assert_eq!(&got, &expected);
        for p in 0..4 {
            prop_assert_eq!(batched.patient_state(PatientIdx(p)), single.patient_state(PatientIdx(p)));
        }
    }
}

#[test]
fn a_batch_naming_an_unknown_patient_is_refused_before_anything_is_evaluated() {
    let mut e = mixed_engine();
    let before = e.patient_state(PatientIdx(0)).cloned();
    let low = [Measurement {
        kind: Kind::Spo2,
        value: 80.0,
    }];
    let s = Sample {
        reading: "00000000-0000-0000-0000-000000000001"
            .parse()
            .expect("uuid"),
        at: Timestamp(60_000),
        flags: Flags::EMPTY,
        values: &low,
    };
    let mut out = Vec::new();
    let err = e
        .evaluate_batch(&[(PatientIdx(0), s), (PatientIdx(9), s)], &mut out)
        .expect_err("patient 9 is not enrolled");
    assert_eq!(err, rules::EngineError::UnknownPatient(9));
    assert!(out.is_empty(), "nothing evaluated: {out:?}");
    assert_eq!(e.patient_state(PatientIdx(0)).cloned(), before);
}
