//! The whole path as separate processes: simulated devices → `rpm gateway` → Mosquitto →
//! `rpm ingest` → PostgreSQL. Readings emitted = readings in the record, none twice. The
//! same path under faults (killed processes, restarts, outages, bad input) is `tests/faults.rs`.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ingest::record::Record;
use simulators::scenario::Scenario;
use support::{BIN, acked, drain, http_addr, http_get, register, subscriber, wait_record, write};
use testkit::{Mosquitto, PgDatabase, RpmProcess, unavailable};
use tokio::sync::mpsc;
use vitals::*;

fn gateway_config(dir: &std::path::Path, port: u16) -> String {
    write(
        dir,
        "gateway.toml",
        format!(
            "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             [forward]\nbatch_max = 20\nlinger = \"20ms\"\nmax_inflight = 4\n",
            dir.join("gw-data").display()
        ),
    )
}

fn ingest_config(dir: &std::path::Path, port: u16, database: &str) -> String {
    write(
        dir,
        "ingest.toml",
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"ingest-e2e\"\n[database]\nurl = \"{database}\"\n\
             [consumer]\nbatch_linger = \"10ms\"\n"
        ),
    )
}

async fn start_ingest(dir: &std::path::Path, broker: &Mosquitto, db: &str) -> RpmProcess {
    let cfg = ingest_config(dir, broker.port(), db);
    testkit::spawn_ingest(BIN, &cfg, broker, &[("RUST_LOG", "info")])
        .expect("ingest connects and subscribes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_flow_from_simulated_devices_into_the_record_once_each() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("record");
    let scenario = Scenario::builtin("copd_exacerbation")
        .expect("shipped")
        .expect("valid");
    register(
        &record,
        &scenario,
        &GatewayId::new("gw-e2e").expect("valid"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ingest = start_ingest(dir.path(), &broker, db.url()).await;
    let mut observed = subscriber(broker.port()).await;

    let cfg = gateway_config(dir.path(), broker.port());
    let args = [
        "--log-format",
        "json",
        "gateway",
        "--config",
        &cfg,
        "--simulate",
        "copd_exacerbation",
        "--exit-when-drained",
    ];
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    let status = gw
        .wait_timeout(Duration::from_secs(60))
        .expect("gateway exits");
    assert!(status.success(), "{}", gw.stderr());
    let emitted = acked(&gw.stderr());
    assert!(
        emitted >= 40,
        "a twelve-day scenario emits dozens of readings: {emitted}"
    );

    assert_eq!(
        wait_record(&record, emitted).await,
        emitted,
        "every reading the broker took is in the record\n{}",
        ingest.stderr()
    );
    assert!(
        record
            .dead_letter_counts()
            .await
            .expect("counts")
            .is_empty(),
        "no rejections: {:?}",
        record.dead_letters(10).await
    );
    let mut seen = HashMap::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(&mut observed, &mut seen);
    assert_eq!(
        seen.len() as u64,
        emitted,
        "the independent subscriber saw each reading"
    );
    assert!(seen.values().all(|c| *c == 1), "none was published twice");

    // The same readings through ingest's FHIR view.
    let addr = http_addr(&ingest);
    let (status, _) = http_get(&addr, "/healthz").await;
    assert_eq!(status, 200);
    let key = scenario.patient.key.replace('.', "..").replace('_', ".-");
    let (status, body) = http_get(
        &addr,
        &format!("/fhir/Observation?patient={key}&code=http://loinc.org%7C59408-5&_count=500"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bundle: serde_json::Value = serde_json::from_str(&body).expect("a FHIR Bundle");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert!(
        bundle["entry"].as_array().is_some_and(|e| !e.is_empty()),
        "SpO2 observations for the patient: {body}"
    );
    ingest.kill().expect("stop ingest");
}

/// Two months of a stable COPD patient: enough readings that the gateway is still forwarding
/// when something goes wrong.
fn long_scenario(dir: &std::path::Path) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios/copd_stable.toml"),
    )
    .expect("shipped scenario");
    let text = base
        .replace("name = \"copd_stable\"", "name = \"copd_stable_60_days\"")
        .replace("days = 7", "days = 60");
    // Keep the file's expectations out: they are for seven days.
    let text = text.split("[expect]").next().expect("head").to_owned();
    let path = dir.join("long.toml");
    std::fs::write(&path, text).expect("write scenario");
    path.to_str().expect("utf8").to_owned()
}

/// A gateway forwarding the long scenario slowly (one message of five readings in flight),
/// watched by an independent subscriber.
struct SlowForward {
    dir: tempfile::TempDir,
    args: Vec<String>,
    observed: mpsc::UnboundedReceiver<ReadingId>,
    seen: HashMap<ReadingId, u32>,
}

impl SlowForward {
    async fn start(broker: &Mosquitto) -> (SlowForward, RpmProcess) {
        let observed = subscriber(broker.port()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let scenario = long_scenario(dir.path());
        let cfg = write(
            dir.path(),
            "gateway.toml",
            format!(
                "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{}\"\n\
                 [forward]\nbatch_max = 5\nlinger = \"50ms\"\nmax_inflight = 1\n",
                dir.path().join("gw-data").display(),
                broker.port()
            ),
        );
        let args: Vec<String> = [
            "--log-format",
            "json",
            "gateway",
            "--config",
            &cfg,
            "--simulate",
            &scenario,
            "--exit-when-drained",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let mut slow = SlowForward {
            dir,
            args,
            observed,
            seen: HashMap::new(),
        };
        let gw = slow.spawn();
        // Wait for the first reading to reach the broker.
        let first = tokio::time::timeout(Duration::from_secs(60), slow.observed.recv())
            .await
            .expect("forwarding starts")
            .expect("observer");
        *slow.seen.entry(first).or_default() += 1;
        (slow, gw)
    }

    fn spawn(&self) -> RpmProcess {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway")
    }

    fn drain(&mut self) -> usize {
        drain(&mut self.observed, &mut self.seen);
        self.seen.len()
    }

    /// After the gateway drained: every reading the scenario makes reached the broker, and only
    /// the message in flight at the fault (five readings) may have come twice.
    async fn check_complete(&mut self, before_fault: usize) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.drain();
        let scratch = tempfile::tempdir().expect("tempdir");
        let scenario = Scenario::load(self.dir.path().join("long.toml")).expect("scenario");
        let played = simulators::scenario::run(&scenario, &scratch.path().join("q.db"))
            .await
            .expect("plays")
            .readings
            .len();
        assert!(
            before_fault < played,
            "the fault came mid-forward ({before_fault} of {played})"
        );
        assert_eq!(self.seen.len(), played, "every reading reached the broker");
        let doubled = self.seen.values().filter(|c| **c > 1).count();
        assert!(
            doubled <= 5,
            "only the message in flight at the fault may arrive twice: {doubled}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_when_the_gateway_is_killed_mid_forward() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let (mut slow, mut gw) = SlowForward::start(&broker).await;
    gw.kill().expect("SIGKILL mid-forward");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = slow.drain();
    // Restarted on the same data directory: the devices send everything again (stored records
    // carry their device time, so the hub knows what it already forwarded).
    let mut gw = slow.spawn();
    let status = gw
        .wait_timeout(Duration::from_secs(120))
        .expect("gateway exits");
    assert!(status.success(), "{}", gw.stderr());
    slow.check_complete(before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_when_the_broker_restarts_while_the_gateway_forwards() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let (mut slow, mut gw) = SlowForward::start(&broker).await;
    let before = slow.drain();
    // The broker goes away mid-forward for a while (a clean stop: it saves its sessions), and
    // comes back on the same port.
    broker.terminate();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.start_again().expect("broker back");
    let status = gw
        .wait_timeout(Duration::from_secs(120))
        .expect("gateway exits");
    assert!(status.success(), "{}", gw.stderr());
    slow.check_complete(before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exacerbation_at_home_reaches_the_nurse_on_duty_by_email() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let Some(smtp) = unavailable(testkit::SmtpSink::start()) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("record");
    let scenario = Scenario::builtin("copd_exacerbation")
        .expect("shipped")
        .expect("valid");
    register(
        &record,
        &scenario,
        &GatewayId::new("gw-e2e").expect("valid"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nurse = "duty.nurse@clinic.example";
    let ingest_cfg = write(
        dir.path(),
        "ingest.toml",
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"ingest-mail\"\n[database]\nurl = \"{db}\"\n\
             [consumer]\nbatch_linger = \"10ms\"\n{notifier}",
            port = broker.port(),
            db = db.url(),
            notifier = support::notifier_section(
                smtp.port(),
                nurse,
                &scenario.patient.key,
                "patient@home.example"
            ),
        ),
    );
    let check = std::process::Command::new(BIN)
        .args(["config", "check", "ingest", &ingest_cfg])
        .output()
        .expect("rpm runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut ingest = testkit::spawn_ingest(BIN, &ingest_cfg, &broker, &[("RUST_LOG", "info")])
        .expect("ingest connects and subscribes");

    let cfg = gateway_config(dir.path(), broker.port());
    let args = [
        "gateway",
        "--config",
        &cfg,
        "--simulate",
        "copd_exacerbation",
        "--exit-when-drained",
    ];
    let mut gw = RpmProcess::spawn(BIN, &args, &[]).expect("spawn gateway");
    assert!(
        gw.wait_timeout(Duration::from_secs(60))
            .expect("gateway exits")
            .success(),
        "{}",
        gw.stderr()
    );

    let mail = smtp
        .wait_for_mail_to(nurse, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no email reached the nurse on duty\n{}", ingest.stderr()));
    assert!(
        mail.contains(&scenario.patient.key),
        "the message names the patient by key: {mail}"
    );
    assert!(
        mail.contains("/ack?token="),
        "with a signed acknowledgement link"
    );
    assert!(
        !mail.contains("Duty Nurse") || mail.contains(nurse),
        "no stray names"
    );
    // Both links in the message lead somewhere on this server: the patient's page in the
    // console (behind its sign-in) and the acknowledgement's confirmation page.
    let addr = http_addr(&ingest);
    let link_path = |marker: &str| {
        mail.split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|p| format!("{marker}{}", p.trim_end_matches(['>', ')', '.'])))
            .unwrap_or_else(|| panic!("a `{marker}` link in the message: {mail}"))
    };
    let patient_page = link_path("/console/patients/");
    let (status, body) = http_get(&addr, &patient_page).await;
    assert_eq!(
        status, 303,
        "the sign-in stands before the patient's page: {body}"
    );
    let (status, body) = http_get(&addr, &link_path("/ack?token=")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Acknowledge alert"), "{body}");
    // The alert and its notification are in the record.
    let key = PatientKey::new(scenario.patient.key.clone()).expect("key");
    assert!(
        !record
            .alerts_for_patient(&key)
            .await
            .expect("alerts")
            .is_empty()
    );
    ingest.kill().expect("stop ingest");
}
