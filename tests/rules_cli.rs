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

fn oximeter(patient: &str) -> &'static str {
    match patient {
        "pk-drop" => "eui64:0011223344556688",
        _ => "eui64:0011223344556677",
    }
}

fn spo2(patient: &str, at: time::OffsetDateTime, value: i64) -> Reading {
    Reading {
        id: ReadingId(Default::default()),
        seq: 0,
        gateway: GatewayId::new("gw-1").expect("valid"),
        patient: PatientKey::new(patient).expect("valid"),
        // One oximeter per patient: a reading's id is derived from its device, not its patient.
        device: DeviceIdentity::new(oximeter(patient).parse().expect("valid")),
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

/// Two patients on SpO2 spot checks: two weeks and more of a stable 95 %, then on 2026-10-20
/// one keeps measuring normally and the other has two lows (87 %) ten minutes apart, the
/// last reading of all.
fn history() -> Vec<Reading> {
    let start = datetime!(2026-10-01 08:00 UTC);
    let mut out = Vec::new();
    for day in 0..19 {
        for patient in ["pk-stable", "pk-drop"] {
            out.push(spo2(patient, start + time::Duration::days(day), 95));
        }
    }
    // The stable patient keeps measuring (a silent hub or a missed day is an alert too).
    out.push(spo2("pk-stable", datetime!(2026-10-20 08:30 UTC), 96));
    out.push(spo2("pk-drop", datetime!(2026-10-20 09:00 UTC), 87));
    out.push(spo2("pk-drop", datetime!(2026-10-20 09:10 UTC), 87));
    out
}

/// Checks `rpm rules backtest … --json --from 2026-10-10` over [`history`]: the confirmed
/// low raised spo2-low for the patient it happened to, with the last low as evidence, and
/// nothing for the stable patient.
fn check_backtest_of_history(source: &[&str]) {
    let low2 = history().pop().expect("readings");
    let profile = fixture("profiles/copd.toml");
    let args = [
        "rules",
        "backtest",
        "--profile",
        profile.to_str().expect("utf8"),
    ];
    let run = rpm(&[&args[..], source, &["--json", "--from", "2026-10-10"]].concat());
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

    let human = rpm(&[&args[..], source].concat());
    assert!(human.status.success());
    assert!(
        text(&human.stdout).contains("spo2-low"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn backtest_reports_the_alerts_a_profile_would_have_raised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("readings.jsonl");
    let mut out = std::fs::File::create(&file).expect("create");
    let mut readings = history();
    // The last one arrives inside a wire envelope: both forms are accepted.
    let low2 = readings.pop().expect("readings");
    for r in &readings {
        writeln!(out, "{}", serde_json::to_string(r).expect("json")).expect("write");
    }
    let envelope = Envelope {
        v: 1,
        gateway: low2.gateway.clone(),
        seq: 1,
        sent_at: low2.received_at,
        readings: vec![low2],
    };
    writeln!(
        out,
        "{}",
        String::from_utf8(envelope.encode()).expect("utf8")
    )
    .expect("write");
    drop(out);
    check_backtest_of_history(&["--readings", file.to_str().expect("utf8")]);
}

/// Stores [`history`] in the record at `url` (its patients and gateway registered) and
/// backtests it from there.
async fn backtest_of_the_record(url: &str) {
    use ingest::record::{Audit, NewPatient, Record};
    let audit = Audit {
        who: "test",
        why: "backtest set-up",
    };
    let record = Record::connect(url, 2).await.expect("record");
    for key in ["pk-stable", "pk-drop"] {
        let patient = NewPatient {
            key: PatientKey::new(key).expect("valid"),
            display_name: None,
            condition: "copd".into(),
            profile_id: None,
            care_team: None,
        };
        record
            .create_patient(&patient, &audit)
            .await
            .expect("patient");
    }
    record
        .create_gateway(&GatewayId::new("gw-1").expect("valid"), &audit)
        .await
        .expect("gateway");
    let batch: Vec<(Reading, Vec<Observed>)> = history()
        .into_iter()
        .map(|r| {
            let values = r.normalized().expect("valid");
            (r, values)
        })
        .collect();
    let stored = record.insert_batch(&batch).await.expect("insert");
    assert_eq!(stored.new_count(), 41);
    record.close().await;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || check_backtest_of_history(&["--database", &url]))
        .await
        .expect("backtest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_reads_the_patient_record_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    backtest_of_the_record(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_reads_the_patient_record_on_postgresql() {
    let Some(db) = testkit::unavailable(testkit::PgDatabase::create().await) else {
        return;
    };
    backtest_of_the_record(db.url()).await;
}

/// A readings file the backtest refuses, each with the reason it gives: a bad line is named,
/// and a file with nothing in it says so.
#[test]
fn backtest_refuses_a_bad_or_empty_readings_file_with_the_reason() {
    let good =
        serde_json::to_string(&spo2("pk-1", datetime!(2026-10-01 08:00 UTC), 95)).expect("json");
    let cases = [
        (
            "readings.jsonl",
            format!("{good}\n{{\"id\": 5}}\n"),
            "readings.jsonl: line 2",
        ),
        ("empty.jsonl", String::new(), "no readings to replay"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = fixture("profiles/copd.toml");
    for (name, content, reason) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, content).expect("write");
        let out = rpm(&[
            "rules",
            "backtest",
            "--profile",
            profile.to_str().expect("utf8"),
            "--readings",
            file.to_str().expect("utf8"),
        ]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            text(&out.stderr).contains(reason),
            "{name}: {}",
            text(&out.stderr)
        );
    }
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

/// What `rpm bench rules` says of its memory, run with `env`: the MiB on huge pages (no more
/// than the resident MiB, which must be some), and the line itself. The kernel's THP mode, read here independently (`None`: not Linux,
/// or no THP), must be the one the line names.
struct BenchMemory {
    line: String,
    huge_mib: u64,
    thp_mode: Option<String>,
}

fn bench_memory(env: &[(&str, &str)]) -> BenchMemory {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpm"));
    cmd.args([
        "bench",
        "rules",
        "--patients",
        "20000",
        "--readings",
        "20000",
        "--quick",
    ])
    .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rpm runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.starts_with("Memory after the run: "))
        .unwrap_or_else(|| panic!("no memory line in {report}"))
        .to_owned();
    let mib = |after: &str| -> u64 {
        let (_, rest) = line.split_once(after).unwrap_or_else(|| panic!("{line}"));
        let (n, _) = rest.split_once(" MiB").unwrap_or_else(|| panic!("{line}"));
        n.parse().unwrap_or_else(|_| panic!("{line}"))
    };
    let (resident_mib, huge_mib) = (mib("run: "), mib("resident, "));
    assert!(resident_mib > 0 && huge_mib <= resident_mib, "{line}");
    let thp_mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| Some(s.split_once('[')?.1.split_once(']')?.0.to_owned()));
    let named = format!("mode: {};", thp_mode.as_deref().unwrap_or("n/a"));
    assert!(line.contains(&named), "{line}");
    BenchMemory {
        line,
        huge_mib,
        thp_mode,
    }
}

/// `rpm` allocates with mimalloc, which puts its arenas on transparent huge pages where the
/// kernel allows them (THP mode `always` or `madvise`). glibc's malloc asks for none, so under
/// `madvise`, the mode of Debian's kernels and of this project's CI, the engine's state would
/// sit on 4 KiB pages: the bench's memory line says which it was.
#[test]
fn bench_rules_state_sits_on_huge_pages_where_the_kernel_allows() {
    let m = bench_memory(&[]);
    if matches!(m.thp_mode.as_deref(), Some("always" | "madvise")) {
        assert!(
            m.huge_mib > 0,
            "the engine's state is on 4 KiB pages: {}",
            m.line
        );
    }
}

/// The hub's systemd unit turns mimalloc's transparent huge pages off (a Raspberry Pi's
/// memory; the hub's state is small); the server's does not (its rules engine is faster on
/// them). Run with the hub unit's environment, the bench's memory line shows none.
#[test]
fn the_gateway_unit_keeps_the_hub_off_huge_pages_and_the_ingest_unit_does_not() {
    let environment = |unit: &str| -> Vec<(String, String)> {
        std::fs::read_to_string(fixture(&format!("config/systemd/{unit}")))
            .expect("unit file")
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert!(
        !environment("rpm-ingest.service")
            .iter()
            .any(|(k, _)| k.starts_with("MIMALLOC_")),
        "the server keeps its huge pages"
    );
    let gateway = environment("rpm-gateway.service");
    let env: Vec<(&str, &str)> = gateway
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let m = bench_memory(&env);
    assert_eq!(m.huge_mib, 0, "{gateway:?}: {}", m.line);
}
