//! `rpm demo` as a user runs it: the real binary, the whole system in one process, checked
//! from the outside (its summary, the SQLite record it wrote, the mail it caught).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn demo(data_dir: &Path, secs: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpm"));
    cmd.args(["demo", "--duration", &secs.to_string(), "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG");
    cmd
}

fn patient<'a>(summary: &'a Value, role: &str) -> &'a Value {
    summary["patients"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == role))
        .unwrap_or_else(|| panic!("no `{role}` patient in the summary: {summary:#}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Counts straight from the record, not from the demo's own bookkeeping.
struct Record {
    readings_by_patient: Vec<(String, i64)>,
    dead_letters_by_gateway: Vec<(String, i64)>,
    alerts_by_patient: Vec<(String, i64)>,
    duplicate_ids: i64,
}

async fn read_record(path: &Path) -> Record {
    use sqlx::Row as _;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .read_only(true),
        )
        .await
        .expect("open the demo record");
    let pairs = |rows: Vec<sqlx::sqlite::SqliteRow>| -> Vec<(String, i64)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let readings_by_patient = pairs(
        sqlx::query("SELECT patient_key, count(*) FROM readings GROUP BY patient_key")
            .fetch_all(&pool)
            .await
            .expect("readings"),
    );
    let dead_letters_by_gateway = pairs(
        sqlx::query("SELECT gateway_id, sum(count) FROM dead_letters GROUP BY gateway_id")
            .fetch_all(&pool)
            .await
            .expect("dead letters"),
    );
    let alerts_by_patient = pairs(
        sqlx::query("SELECT patient_key, count(*) FROM alerts GROUP BY patient_key")
            .fetch_all(&pool)
            .await
            .expect("alerts"),
    );
    let duplicate_ids: i64 =
        sqlx::query_scalar("SELECT count(*) - count(DISTINCT reading_id) FROM readings")
            .fetch_one(&pool)
            .await
            .expect("ids");
    pool.close().await;
    Record {
        readings_by_patient,
        dead_letters_by_gateway,
        alerts_by_patient,
        duplicate_ids,
    }
}

fn count(pairs: &[(String, i64)], key: &str) -> u64 {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0, |(_, n)| u64::try_from(*n).expect("count"))
}

#[tokio::test]
async fn demo_runs_its_duration_and_no_reading_is_lost_even_from_the_hub_that_went_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    let out = demo(&data, 36).output().expect("rpm demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("rpm demo summary"), "{stdout}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(data.join("summary.json")).expect("summary.json"))
            .expect("summary is JSON");
    let context = format!("{summary:#}\n{stderr}");
    assert_eq!(summary["interrupted"], false, "{context}");

    // Readings flowed, and the human summary says the same as the JSON one.
    let ingested = n(&summary["readings"]["ingested"]);
    assert!(ingested > 0, "{context}");
    assert!(
        stdout.contains(&format!("readings ingested: {ingested} ")),
        "{stdout}"
    );

    let record = read_record(&data.join("record.db")).await;
    assert_eq!(record.duplicate_ids, 0);

    // Every reading each hub's devices produced is in the record or counted as rejected,
    // and nothing is left in a hub's queue; in particular for the hub that went offline.
    for p in summary["patients"].as_array().expect("patients") {
        let key = p["patient"].as_str().expect("key");
        let gw = p["gateway"].as_str().expect("gateway");
        let queued = n(&p["queued_at_hub"]);
        assert!(queued > 0, "{key}: {context}");
        assert_eq!(n(&p["left_in_hub_queue"]), 0, "{key}: {context}");
        let stored = count(&record.readings_by_patient, key);
        let rejected = count(&record.dead_letters_by_gateway, gw);
        assert_eq!(
            stored + rejected,
            queued,
            "{key}: {stored} stored + {rejected} rejected != {queued} queued at the hub\n{context}"
        );
    }
    let offline = patient(&summary, "hub offline");
    assert!(
        n(&offline["hub_connects"]) >= 2,
        "the offline hub never lost and regained its connection: {context}"
    );
    assert_eq!(
        count(
            &record.readings_by_patient,
            offline["patient"].as_str().expect("key")
        ),
        n(&offline["queued_at_hub"]),
        "{context}"
    );

    // The exacerbation and the crisis raised alerts (in the record, not just the summary).
    for role in ["COPD exacerbation", "hypertensive crisis"] {
        let p = patient(&summary, role);
        let alerts = count(
            &record.alerts_by_patient,
            p["patient"].as_str().expect("key"),
        );
        assert!(alerts >= 1, "{role}: no alert\n{context}");
        assert_eq!(n(&p["alerts"]), alerts, "{context}");
    }
    assert!(
        !summary["alerts_by_rule"]
            .as_object()
            .expect("by rule")
            .is_empty()
    );

    // The faulty cuff's bad values were rejected and counted, at the hub and at ingest.
    let faulty = patient(&summary, "faulty device");
    assert!(n(&faulty["rejected_by_ingest"]) >= 1, "{context}");
    assert!(n(&faulty["decode_errors_at_hub"]) >= 1, "{context}");
    assert!(
        n(&summary["rejected_by_ingest"]["out_of_range"]) >= 1,
        "{context}"
    );
    assert!(stdout.contains("out_of_range"), "{stdout}");

    // Notifications were sent to the local mailbox, one file each.
    let mails: Vec<_> = std::fs::read_dir(data.join("mailbox"))
        .expect("mailbox")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert!(!mails.is_empty(), "no mail caught\n{context}");
    assert_eq!(mails.len() as u64, n(&summary["notifications"]["mailbox"]));
    assert!(n(&summary["notifications"]["sent"]) >= 1, "{context}");
    let first = std::fs::read_to_string(mails[0].path()).expect("mail");
    assert!(first.contains("Subject: "), "{first}");

    // Latency percentiles were measured.
    let lat = &summary["latency"]["reading_committed"];
    assert!(n(&lat["count"]) > 0, "{context}");
    assert!(lat["p50_ms"].as_f64().is_some(), "{context}");
}

#[test]
fn sigint_during_a_run_exits_0_promptly_with_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("demo");
    let mut child = demo(&data, 300)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rpm demo starts");
    // Wait until the patients are playing (the banner is printed once they are).
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the demo did not start playing: {seen:#?}"));
        let started = line.starts_with("  patients");
        seen.push(line);
        if started {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("rpm demo did not stop within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("stdout");
    assert!(stdout.contains("interrupted"), "{stdout}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(data.join("summary.json")).expect("summary.json"))
            .expect("JSON");
    assert_eq!(summary["interrupted"], true);
}
