//! `rpm rules check` and `rpm rules backtest`, and `rpm bench rules`, run as processes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use time::macros::datetime;
use vitals::*;

fn rpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rpm"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("rpm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn spo2(patient: &str, at: time::OffsetDateTime, value: i64) -> Reading {
    Reading {
        id: ReadingId(Default::default()),
        seq: 0,
        gateway: GatewayId::new("gw-1").expect("valid"),
        patient: PatientKey::new(patient).expect("valid"),
        device: DeviceIdentity::new("eui64:0011223344556677".parse().expect("valid")),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(value)),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

#[test]
fn every_fixture_profile_checks_and_a_bad_one_is_refused_with_the_reason() {
    for entry in std::fs::read_dir(fixture("profiles")).expect("profiles dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = rpm(&["rules", "check", path.to_str().expect("utf8")]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            assert!(text(&out.stdout).contains("valid profile"));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "id = \"x\"\nversion = 1\n[[rule]]\nid = \"a\"\nkind = \"below\"\nmeasure = \"spo2\"\nraise = 90\nclear = 88\n\
         severity = \"high\"\naudience = \"nurse\"\nnurse = \"low\"\n",
    )
    .expect("write");
    let out = rpm(&["rules", "check", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("rule `a`: clear level 88 is on the wrong side of raise level 90"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn backtest_reports_the_alerts_a_profile_would_have_raised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("readings.jsonl");
    let mut out = std::fs::File::create(&file).expect("create");
    let start = datetime!(2026-10-01 08:00 UTC);
    // Two weeks of a stable patient, then two low readings ten minutes apart on 2026-10-20.
    for day in 0..19 {
        for patient in ["pk-stable", "pk-drop"] {
            let r = spo2(patient, start + time::Duration::days(day), 95);
            writeln!(out, "{}", serde_json::to_string(&r).expect("json")).expect("write");
        }
    }
    // The stable patient keeps measuring (a silent hub or a missed day is an alert too).
    let today = spo2("pk-stable", datetime!(2026-10-20 08:30 UTC), 96);
    writeln!(out, "{}", serde_json::to_string(&today).expect("json")).expect("write");
    let low1 = spo2("pk-drop", datetime!(2026-10-20 09:00 UTC), 87);
    let low2 = spo2("pk-drop", datetime!(2026-10-20 09:10 UTC), 87);
    // The second one arrives inside a wire envelope: both forms are accepted.
    let envelope = Envelope {
        v: 1,
        gateway: low2.gateway.clone(),
        seq: 1,
        sent_at: low2.received_at,
        readings: vec![low2.clone()],
    };
    writeln!(out, "{}", serde_json::to_string(&low1).expect("json")).expect("write");
    writeln!(
        out,
        "{}",
        String::from_utf8(envelope.encode()).expect("utf8")
    )
    .expect("write");
    drop(out);

    let profile = fixture("profiles/copd.toml");
    let args = [
        "rules",
        "backtest",
        "--profile",
        profile.to_str().expect("utf8"),
        "--readings",
        file.to_str().expect("utf8"),
    ];
    let run = rpm(&[&args[..], &["--json", "--from", "2026-10-10"]].concat());
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON report");
    assert_eq!(report["profile"], "copd@1");
    assert_eq!(report["readings"], 41);
    assert!(
        report["warm_up"].as_u64().expect("warm_up") > 0,
        "readings before --from only warm up"
    );
    let alerts = report["alerts"].as_array().expect("alerts");
    let low = alerts
        .iter()
        .find(|a| a["rule"] == "spo2-low")
        .expect("the confirmed low SpO2 raised spo2-low");
    assert_eq!(low["patient"], "pk-drop");
    assert_eq!(low["severity"], "high", "87 % is in the 88-and-under band");
    assert!(
        low["readings"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|id| id == &serde_json::json!(low2.id.to_string()))
    );
    assert!(
        alerts.iter().all(|a| a["patient"] != "pk-stable"),
        "the stable patient raises nothing: {alerts:?}"
    );

    let human = rpm(&args);
    assert!(human.status.success());
    assert!(
        text(&human.stdout).contains("spo2-low"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn backtest_refuses_a_bad_readings_file_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("readings.jsonl");
    let good =
        serde_json::to_string(&spo2("pk-1", datetime!(2026-10-01 08:00 UTC), 95)).expect("json");
    std::fs::write(&file, format!("{good}\n{{\"id\": 5}}\n")).expect("write");
    let profile = fixture("profiles/copd.toml");
    let out = rpm(&[
        "rules",
        "backtest",
        "--profile",
        profile.to_str().expect("utf8"),
        "--readings",
        file.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("readings.jsonl: line 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_rules_prints_figures_beside_their_baselines() {
    let out = rpm(&[
        "bench",
        "rules",
        "--patients",
        "2000",
        "--readings",
        "20000",
        "--quick",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("baseline"), "{report}");
    assert!(report.contains("p99"), "{report}");
}
