//! Every scenario in `fixtures/scenarios/` drives the gateway's device session through the
//! simulators into a real queue, and its expectations hold.

use std::path::{Path, PathBuf};

use simulators::DeviceKind;
use simulators::scenario::{Outcome, Scenario, run};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios")
}

/// The scenarios that have a test below; a file not listed here fails
/// `every_scenario_file_has_a_test`.
const TESTED: &[&str] = &[
    "copd_stable",
    "copd_exacerbation",
    "hypertensive_crisis",
    "hypotension",
    "measurement_faults",
    "clock_faults",
    "week_away",
    "faulty_cuff",
    "hypertensive_crisis_remeasured",
];

async fn run_named(name: &str) -> (Scenario, Outcome) {
    let scenario = Scenario::load(dir().join(format!("{name}.toml"))).expect("scenario loads");
    let tmp = tempfile::tempdir().expect("tempdir");
    let outcome = run(&scenario, &tmp.path().join("queue.db"))
        .await
        .expect("scenario runs");
    let start = OffsetDateTime::parse(&scenario.start, &Rfc3339).expect("start");
    let fails = outcome.check(&scenario, start);
    assert!(fails.is_empty(), "{name}:\n{}", fails.join("\n"));
    (scenario, outcome)
}

#[test]
fn every_scenario_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("fixtures/scenarios")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            Scenario::load(&p).expect("every scenario file loads");
            p.file_stem().expect("stem").to_string_lossy().into_owned()
        })
        .collect();
    files.sort();
    let mut builtin: Vec<String> = Scenario::builtin_names().map(str::to_owned).collect();
    builtin.sort();
    assert_eq!(
        files, builtin,
        "every scenario file is embedded for rpm gateway --simulate"
    );
    let mut tested: Vec<String> = TESTED.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    assert_eq!(files, tested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copd_stable() {
    let (_, o) = run_named("copd_stable").await;
    // The cuff has a System ID, so its readings carry the EUI-64 identity.
    let bp = o
        .readings
        .iter()
        .find(|r| r.reading_type == vitals::ReadingType::BloodPressure)
        .expect("bp");
    assert_eq!(bp.device.id.to_string(), "eui64:0012340000a1b2c3");
    assert_eq!(bp.user_index, Some(1));
    assert_eq!(bp.device.model.as_deref(), Some("SIM-BP2"));
    assert!(o.readings.iter().all(|r| r.flags.is_empty()));
    // The spirometer speaks GHS: one reading per bundle with all four lung-function values,
    // FEV1 and FVC to the centilitre as the sensor sent them, stamped by its clock.
    let spiro: Vec<_> = o
        .readings
        .iter()
        .filter(|r| r.reading_type == vitals::ReadingType::Spirometry)
        .collect();
    assert_eq!(spiro.len(), 7);
    for r in spiro {
        assert_eq!(r.device.model.as_deref(), Some("SIM-SP2"));
        assert!(r.device_time.is_some());
        let kinds: Vec<&str> = r.values.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, ["fev1", "fvc", "fev1_fvc_ratio", "pef"]);
        let fev1 = r.values[0].value.number().expect("fev1 measured");
        assert_eq!(fev1.to_string().split('.').nth(1).map(str::len), Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copd_exacerbation() {
    run_named("copd_exacerbation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypertensive_crisis() {
    run_named("hypertensive_crisis").await;
}

/// The values of `kind` in the readings, with their measurement times.
fn series(o: &Outcome, kind: vitals::Kind) -> Vec<(OffsetDateTime, f64)> {
    o.readings
        .iter()
        .flat_map(|r| r.values.iter().map(move |v| (r.measured_at, v)))
        .filter(|(_, v)| v.kind == kind)
        .filter_map(|(at, v)| Some((at, v.value.number()?.to_f64())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_cuff() {
    let (scenario, o) = run_named("faulty_cuff").await;
    let start = OffsetDateTime::parse(&scenario.start, &Rfc3339).expect("start");
    // The garbled value was counted, not fatal: the session kept going on one connection.
    assert!(o.stats.values().all(|s| s.connects == 1));
    // From day 2 the broken pulse channel reports what no patient has; the hub forwards what
    // the cuff said (ingest's range check is what rejects it), before that it is normal.
    let pulse = series(&o, vitals::Kind::PulseRate);
    let broken = start + time::Duration::days(2);
    assert!(
        pulse
            .iter()
            .filter(|(at, _)| *at >= broken)
            .all(|(_, p)| *p >= 300.0),
        "{pulse:?}"
    );
    assert!(
        pulse
            .iter()
            .filter(|(at, _)| *at < broken)
            .all(|(_, p)| *p < 120.0),
        "{pulse:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypertensive_crisis_remeasured() {
    let (_, o) = run_named("hypertensive_crisis_remeasured").await;
    // Each measurement is repeated ten minutes later, so a severe reading can be confirmed
    // within the hypertension profile's 15-minute window.
    let sys = series(&o, vitals::Kind::Systolic);
    let confirmed = sys.windows(2).any(|w| {
        w[0].1 >= 180.0 && w[1].1 >= 180.0 && w[1].0 - w[0].0 <= time::Duration::minutes(15)
    });
    assert!(confirmed, "two severe readings within 15 minutes: {sys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypotension() {
    run_named("hypotension").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurement_faults() {
    let (_, o) = run_named("measurement_faults").await;
    // The garbled value was counted, not fatal: the session kept going.
    assert!(o.stats.values().all(|s| s.connects == 1));
    // NaN systolic keeps its reason and its unit.
    let nan = o
        .readings
        .iter()
        .flat_map(|r| r.values.iter())
        .find(|v| v.value == vitals::Value::Absent(vitals::AbsentReason::Nan))
        .expect("a NaN value");
    assert!(nan.value.number().is_none());
    // Continuous samples carry no device time; their measured_at is the virtual receive time.
    let cont: Vec<_> = o
        .readings
        .iter()
        .filter(|r| r.reading_type == vitals::ReadingType::OximetryContinuous)
        .collect();
    assert!(cont.iter().all(|r| r.device_time.is_none()));
    assert!(
        cont.iter()
            .all(|r| r.flags.contains(vitals::Flag::LowBattery))
    );
    // Poor spirometry effort travels as the GHS "questionable" status bit.
    let poor: Vec<_> = o
        .readings
        .iter()
        .filter(|r| r.reading_type == vitals::ReadingType::Spirometry)
        .filter(|r| r.flags.contains(vitals::Flag::SignalQuestionable))
        .collect();
    assert_eq!(poor.len(), 1);
    assert!(poor[0].values.iter().any(|v| v.kind == vitals::Kind::Pef
        && v.value == vitals::Value::Absent(vitals::AbsentReason::Nan)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_faults() {
    let (_, o) = run_named("clock_faults").await;
    for (_, a) in &o.addresses {
        assert_eq!(o.world.log(*a).clock_writes, 1, "{a}");
    }
    // Set on first contact, so every reading is placed at its true time (09:30), within the
    // cuff's drift since then.
    for r in &o.readings {
        let t = r.measured_at.time();
        assert_eq!(
            (t.hour(), t.minute()),
            (9, 30),
            "{:?} {}",
            r.reading_type,
            r.measured_at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn week_away() {
    let (_, o) = run_named("week_away").await;
    let (_, cuff) = o
        .addresses
        .iter()
        .find(|(k, _)| *k == DeviceKind::BpCuff)
        .copied()
        .expect("cuff");
    let log = o.world.log(cuff);
    // Every record up to the last transferred one was deleted, and only after it was queued
    // (the simulator checked the queue at each delete: `check` found no audit violation).
    let mut deleted = log.deleted.clone();
    deleted.sort_unstable();
    assert_eq!(deleted, (0..=15).collect::<Vec<u16>>());
    assert!(log.audit_violations.is_empty());
    // The transfer was cut once, so the cuff was connected at least three times.
    assert!(log.connections >= 3, "{log:?}");
    // Records from storage were stamped as such; live ones were not.
    let stored = o
        .readings
        .iter()
        .filter(|r| r.flags.contains(vitals::Flag::FromStorage))
        .count();
    assert_eq!(stored, 14);
    assert!(o.world.stored(cuff).iter().all(|s| *s > 15));
}
