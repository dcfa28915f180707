//! The `rpm` command line as operators and scripts use it: run as a real process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use time::macros::datetime;
use vitals::*;

fn rpm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpm"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("rpm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

#[test]
fn help_lists_only_what_this_build_can_do() {
    let out = rpm(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   ")) // wrapped descriptions
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "demo", "decode", "config", "envelope", "gateway", "ingest", "rules", "patients",
            "gateways", "devices", "users", "bench", "help"
        ],
        "{help}"
    );
}

#[test]
fn the_documented_samples_are_valid_and_are_what_config_sample_prints() {
    for component in ["gateway", "ingest"] {
        let file = fixture(&format!("config/{component}.toml"));
        let out = rpm(
            &[
                "config",
                "check",
                component,
                file.to_str().expect("utf8 path"),
            ],
            &[],
        );
        assert!(out.status.success(), "{component}: {}", text(&out.stderr));
        let effective = text(&out.stdout);
        assert!(effective.contains("[broker]"), "{effective}");
        let sample = rpm(&["config", "sample", component], &[]);
        assert_eq!(
            text(&sample.stdout),
            std::fs::read_to_string(&file).expect("fixture")
        );
    }
}

fn check_gateway(toml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, toml).expect("write config");
    let out = rpm(
        &[
            "config",
            "check",
            "gateway",
            file.to_str().expect("utf8 path"),
        ],
        env,
    );
    let stderr = text(&out.stderr).replace(&file.display().to_string(), "FILE");
    (out.status.success(), text(&out.stdout), stderr)
}

const MINIMAL: &str =
    "[gateway]\nid = \"gw-1\"\ndata_dir = \"/tmp/gw\"\n[broker]\nurl = \"mqtt://127.0.0.1:1883\"\n";

#[test]
fn a_bad_config_is_refused_naming_file_key_and_expectation() {
    let (ok, out, _) = check_gateway(MINIMAL, &[]);
    assert!(ok, "the minimal config is valid");
    assert!(
        out.contains("batch_max = 200"),
        "defaults are filled in: {out}"
    );

    let cases: &[(&str, &str)] = &[
        (
            &MINIMAL.replace("mqtt://127.0.0.1:1883", "tcp://x"),
            "error: FILE: key `broker.url`: `tcp://x` must start with mqtt:// or mqtts://",
        ),
        (
            &format!("{MINIMAL}keep_alive = \"soon\"\n"),
            "error: FILE: key `broker.keep_alive`: expected a duration, found string \"soon\"",
        ),
        (
            &format!("{MINIMAL}kep_alive = \"30s\"\n"),
            "error: FILE: key `broker.kep_alive`: unknown key; expected one of: url, client_id,",
        ),
        (
            &MINIMAL.replace("id = \"gw-1\"\n", ""),
            "error: FILE: key `gateway.id`: missing; this key is required",
        ),
        (
            &MINIMAL.replace("gw-1", "Gateway 1"),
            "error: FILE: key `gateway.id`: invalid gateway id: contains a character outside the allowed set",
        ),
        (
            &format!("{MINIMAL}[forward]\nbatch_max = \"many\"\n"),
            "error: FILE: key `forward.batch_max`: expected usize, found string \"many\"",
        ),
        (
            &format!("{MINIMAL}[forward]\nbatch_max = 501\n"),
            "error: FILE: key `forward.batch_max`: must be within 1..=500",
        ),
        (
            &format!("{MINIMAL}username = \"gw-2\"\n"),
            "error: FILE: key `broker.username`: must be the gateway id `gw-1`",
        ),
        (
            &format!("{MINIMAL}[[devices]]\nid = \"eui64:0011223344556677\"\n"),
            "error: FILE: key `devices`: device eui64:0011223344556677 is bound to no patient",
        ),
        (
            &format!("{MINIMAL}[[devices]]\nid = \"mac:1\"\npatient = \"pk-1\"\n"),
            "error: FILE: key `devices.0.id`: invalid device id",
        ),
        (
            "[gateway\nid = 1",
            "error: FILE: TOML parse error at line 1, column 9",
        ),
    ];
    for (toml, expected) in cases {
        let (ok, _, stderr) = check_gateway(toml, &[]);
        assert!(!ok, "should be refused:\n{toml}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?}\ngot {stderr:?}\nfor\n{toml}"
        );
    }
}

#[test]
fn a_bad_ingest_config_is_refused_naming_file_key_and_expectation() {
    const MINIMAL: &str =
        "[broker]\nurl = \"mqtt://127.0.0.1:1883\"\n[database]\nurl = \"sqlite:rpm.db\"\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ingest.toml");
    let check = |toml: &str| {
        std::fs::write(&file, toml).expect("write config");
        let out = rpm(
            &[
                "config",
                "check",
                "ingest",
                file.to_str().expect("utf8 path"),
            ],
            &[],
        );
        let stderr = text(&out.stderr).replace(&file.display().to_string(), "FILE");
        (out.status.success(), stderr)
    };
    assert!(check(MINIMAL).0, "the minimal config is valid");
    assert!(check(&format!("{MINIMAL}[http]\nlisten = \"[::1]:8080\"\n")).0);
    let cases: &[(&str, &str)] = &[
        (
            "[http]\nlisten = \"localhost:8080\"\n",
            "error: FILE: key `http.listen`: expected IP:PORT, like 127.0.0.1:8080 or [::1]:8080 \
             (a host name is not resolved), found string \"localhost:8080\"",
        ),
        (
            "[http]\nlisten = 8080\n",
            "error: FILE: key `http.listen`: expected IP:PORT, like 127.0.0.1:8080",
        ),
        (
            "[consumer]\nbatch_linger = 20\n",
            "error: FILE: key `consumer.batch_linger`: expected a duration",
        ),
        (
            "[notifier]\nbogus = 1\n",
            "error: FILE: key `notifier.bogus`: unknown key; expected one of: smtp,",
        ),
        (
            "[clocks]\nmax_future = \"5m\"\n",
            "error: FILE: key `clocks`: unknown key; expected one of: broker, database,",
        ),
    ];
    for (extra, expected) in cases {
        let toml = format!("{MINIMAL}{extra}");
        let (ok, stderr) = check(&toml);
        assert!(!ok, "should be refused:\n{toml}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?}\ngot {stderr:?}\nfor\n{toml}"
        );
    }
    let (ok, stderr) = check(&MINIMAL.replace("sqlite:rpm.db", "mysql://db/rpm"));
    assert!(!ok);
    assert!(
        stderr.contains("error: FILE: key `database.url`: expected sqlite:PATH or postgres://"),
        "{stderr}"
    );
}

#[test]
fn environment_variables_override_the_file_and_are_named_when_wrong() {
    let (ok, out, _) = check_gateway(
        MINIMAL,
        &[("RPM_GATEWAY__BROKER__URL", "mqtts://broker.example.org")],
    );
    assert!(ok);
    assert!(
        out.contains("url = \"mqtts://broker.example.org:8883\""),
        "{out}"
    );
    let (ok, out, _) = check_gateway(MINIMAL, &[("RPM_GATEWAY__FORWARD__BATCH_MAX", "50")]);
    assert!(ok);
    assert!(out.contains("batch_max = 50"), "{out}");
    let (ok, _, stderr) = check_gateway(MINIMAL, &[("RPM_GATEWAY__BROKER__KEEP_ALIVE", "never")]);
    assert!(!ok);
    assert!(
        stderr.contains("error: environment variable RPM_GATEWAY__BROKER__KEEP_ALIVE: key `broker.keep_alive`: expected a duration"),
        "{stderr}"
    );
    // Another component's variables do not leak in.
    let (ok, _, _) = check_gateway(MINIMAL, &[("RPM_INGEST__BROKER__URL", "nonsense")]);
    assert!(ok);
}

#[test]
fn a_missing_config_file_is_its_own_error() {
    let out = rpm(
        &["config", "check", "ingest", "/nonexistent/ingest.toml"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/ingest.toml: cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_logs_are_one_object_per_line_on_stderr() {
    let file = fixture("config/ingest.toml");
    let out = rpm(
        &[
            "--log-format",
            "json",
            "config",
            "check",
            "ingest",
            file.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(out.status.success());
    let line = text(&out.stderr);
    let first = line.lines().next().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(first).expect("JSON log line");
    assert_eq!(v["message"], "configuration is valid");
    assert_eq!(v["level"], "INFO");
    let human = rpm(
        &["config", "check", "ingest", file.to_str().expect("utf8")],
        &[],
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(text(&human.stderr).trim()).is_err(),
        "human by default"
    );
    let quiet = rpm(
        &["config", "check", "ingest", file.to_str().expect("utf8")],
        &[("RUST_LOG", "warn")],
    );
    assert_eq!(text(&quiet.stderr), "", "RUST_LOG filters");
}

fn sample_envelope() -> Envelope {
    let reading = Reading {
        id: ReadingId(Default::default()),
        seq: 1,
        gateway: GatewayId::new("gw-1").expect("valid"),
        patient: PatientKey::new("pk-1").expect("valid"),
        device: DeviceIdentity::new("eui64:0011223344556677".parse().expect("valid")),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time: None,
        measured_at: datetime!(2026-11-26 07:00:00 UTC),
        received_at: datetime!(2026-11-26 07:00:00 UTC),
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(94)),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id();
    Envelope {
        v: 1,
        gateway: reading.gateway.clone(),
        seq: 1,
        sent_at: reading.received_at,
        readings: vec![reading],
    }
}

#[test]
fn envelope_check_accepts_a_good_payload_and_names_what_is_wrong_with_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.json");
    let envelope = sample_envelope();
    std::fs::write(&good, envelope.encode()).expect("write");
    let out = rpm(
        &[
            "envelope",
            "check",
            good.to_str().expect("utf8"),
            "--topic",
            "rpm/v1/gw/gw-1/readings",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(v["valid"], true);
    assert_eq!(v["ids"][0], envelope.readings[0].id.to_string());

    let out = rpm(
        &[
            "envelope",
            "check",
            good.to_str().expect("utf8"),
            "--topic",
            "rpm/v1/gw/gw-2/readings",
        ],
        &[],
    );
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rejection");
    assert_eq!(v["reason"], "gateway_mismatch");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, &envelope.encode()[..40]).expect("write");
    let out = rpm(&["envelope", "check", bad.to_str().expect("utf8")], &[]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rejection");
    assert_eq!(v["reason"], "malformed_json");
    assert!(v["error"].as_str().expect("message").contains("ends early"));
}

#[test]
fn decode_prints_a_gatt_value_as_json() {
    // Nordic's Android-BLE-Common-Library BloodPressureMeasurementDataCallbackTest, "full".
    let out = rpm(
        &[
            "decode",
            "2a35",
            "1e 8a00 5800 7800 0000 04 11 14 29 3b 3c00 01 2700",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let m = &v["blood_pressure_measurement"];
    assert_eq!(m["systolic"]["text"], "138");
    assert_eq!(m["diastolic"]["text"], "88");
    assert_eq!(m["user_id"], 1);
    // The same bytes as separate arguments, with 0x and upper case.
    let again = rpm(
        &[
            "decode", "0x2A35", "1e", "8a00", "5800", "7800", "0000", "04", "11", "14", "29", "3b",
            "3c00", "01", "2700",
        ],
        &[],
    );
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn decode_exits_non_zero_with_the_reason() {
    let out = rpm(&["decode", "2a35", "01 02 03 04 05 06"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: malformed blood_pressure_measurement value: truncated: mean_arterial_pressure needs 2 byte(s) at offset 5, only 1 left"
    );
    assert!(out.stdout.is_empty());

    let out = rpm(&["decode", "2a35", "1e 8"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("odd number of digits"),
        "{}",
        text(&out.stderr)
    );

    let out = rpm(&["decode", "2a35", "zz"], &[]);
    assert!(
        text(&out.stderr).contains("`zz` is not a hex byte"),
        "{}",
        text(&out.stderr)
    );

    let out = rpm(&["decode", "ffff", "00"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "no decoder for characteristic 0xffff; known: 2a35 (blood_pressure_measurement)"
        ),
        "{}",
        text(&out.stderr)
    );

    let out = rpm(&["decode", "12345", "00"], &[]);
    assert!(
        text(&out.stderr).contains("is not a 16-bit characteristic UUID"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_systemd_units_start_commands_this_build_accepts() {
    for unit in ["rpm-gateway.service", "rpm-ingest.service"] {
        let text =
            std::fs::read_to_string(fixture(&format!("config/systemd/{unit}"))).expect("unit file");
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/rpm"), "{unit}");
        let mut args: Vec<&str> = words.collect();
        // Every flag must be known to the subcommand: clap refuses unknown ones even with --help.
        args.push("--help");
        let out = rpm(&args, &[]);
        assert!(out.status.success(), "{unit}: {}", text_of(&out.stderr));
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_commented_notifier_example_in_the_ingest_sample_is_a_valid_configuration() {
    let sample = std::fs::read_to_string(fixture("config/ingest.toml")).expect("sample");
    let (base, example) = sample
        .split_once("# [notifier.smtp]")
        .expect("the sample documents [notifier]");
    let uncommented: String = format!("# [notifier.smtp]{example}")
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .or_else(|| l.strip_prefix('#'))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ingest.toml");
    std::fs::write(&file, format!("{base}\n{uncommented}\n")).expect("write");
    let out = rpm(
        &["config", "check", "ingest", file.to_str().expect("utf8")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective = text(&out.stdout);
    assert!(effective.contains("nurse.night"), "{effective}");
    assert!(
        !effective.contains("change-me-to-at-least-32-random-bytes"),
        "secrets are redacted when printed"
    );
}
