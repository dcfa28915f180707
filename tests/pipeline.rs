//! The whole path as separate processes: simulated devices → `rpm gateway` → Mosquitto →
//! `rpm ingest` → PostgreSQL. Readings emitted = readings in the record, none twice.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ingest::record::{Audit, NewBinding, NewPatient, Record};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use simulators::scenario::Scenario;
use testkit::{Mosquitto, PgDatabase, RpmProcess, unavailable};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use vitals::*;

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "pipeline test",
};
const BIN: &str = env!("CARGO_BIN_EXE_rpm");

/// Registers the scenario's patient, its devices and their bindings on `gateway`.
async fn register(record: &Record, scenario: &Scenario, gateway: &GatewayId) {
    let key = PatientKey::new(scenario.patient.key.clone()).expect("valid key");
    let patient = NewPatient {
        key: key.clone(),
        display_name: None,
        condition: "copd".into(),
        profile_id: None,
        care_team: None,
    };
    record
        .create_patient(&patient, &AUDIT)
        .await
        .expect("patient");
    record
        .create_gateway(gateway, &AUDIT)
        .await
        .expect("gateway");
    for d in &scenario.device {
        let id: DeviceId = match &d.system_id {
            Some(eui) => format!("eui64:{eui}").parse().expect("eui64"),
            None => format!("bdaddr:{}", d.address).parse().expect("address"),
        };
        record
            .create_device(&DeviceIdentity::new(id), &AUDIT)
            .await
            .expect("device");
        let binding = NewBinding {
            gateway: gateway.clone(),
            device: id,
            patient: key.clone(),
            user_index: d.user,
            valid_from: OffsetDateTime::UNIX_EPOCH,
        };
        record.bind(&binding, &AUDIT).await.expect("binding");
    }
}

fn write(dir: &std::path::Path, name: &str, text: String) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf8").to_owned()
}

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

/// An independent subscriber with a persistent session: counts every reading id it sees.
async fn subscriber(port: u16) -> mpsc::UnboundedReceiver<ReadingId> {
    let mut opts = MqttOptions::new("e2e-observer", "127.0.0.1", port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(600));
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (client, mut events) = AsyncClient::new(opts, 100);
    client
        .subscribe("rpm/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if let Ok(e) = Envelope::decode_from(&topic, &p.payload) {
                        for r in e.readings {
                            let _ = tx.send(r.id);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready_rx.await.expect("subscribed");
    rx
}

fn drain(rx: &mut mpsc::UnboundedReceiver<ReadingId>, seen: &mut HashMap<ReadingId, u32>) {
    while let Ok(id) = rx.try_recv() {
        *seen.entry(id).or_default() += 1;
    }
}

/// `readings_acked` from the gateway's last JSON log line.
fn acked(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["readings_acked"].as_u64())
        .expect("the gateway reports what the broker acknowledged")
}

async fn wait_record(record: &Record, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = record.count_readings().await.expect("count");
        if c >= n || tokio::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let addr = ingest
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("HTTP API listening addr=")
                .nth(1)
                .map(|a| a.trim().to_owned())
        })
        .expect("ingest says where its HTTP API listens");
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

/// A plain HTTP/1.1 GET over a TCP connection: status code and body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: keep only the JSON between the first '{' and the last '}'.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => body[a..=b].to_owned(),
        _ => body,
    };
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_when_the_gateway_is_killed_while_the_broker_is_away() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("record");
    let scenario = Scenario::builtin("week_away")
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

    // The internet is down: the hub queues what its devices send, then loses power.
    broker.terminate();
    let cfg = gateway_config(dir.path(), broker.port());
    let args = [
        "--log-format",
        "json",
        "gateway",
        "--config",
        &cfg,
        "--simulate",
        "week_away",
        "--exit-when-drained",
    ];
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    gw.wait_for_output("scenario played", Duration::from_secs(60))
        .expect("the scenario plays offline");
    gw.kill().expect("SIGKILL the gateway");

    // Power and network come back.
    broker.start_again().expect("broker back");
    // Mosquitto 2.0 does not restore shared subscriptions from its persistence file: until
    // ingest subscribes again, a reading published now reaches no ingest session (the
    // gateway keeps it queued when the broker says "no matching subscribers", but this test's
    // observer matches). Start the hub once ingest is back, as the README says to expect.
    broker
        .wait_for_log(
            "ingest-e2e 1 $share/ingest/rpm/v1/gw/+/readings",
            2,
            Duration::from_secs(60),
        )
        .expect("ingest subscribes again");
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("respawn gateway");
    let status = gw
        .wait_timeout(Duration::from_secs(60))
        .expect("gateway exits");
    assert!(status.success(), "{}", gw.stderr());
    let emitted = acked(&gw.stderr());
    assert!(emitted > 0);
    assert_eq!(
        wait_record(&record, emitted).await,
        emitted,
        "{}",
        ingest.stderr()
    );
    let mut seen = HashMap::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain(&mut observed, &mut seen);
    assert_eq!(seen.len() as u64, emitted);
    assert!(
        seen.values().all(|c| *c == 1),
        "replaying the devices after the crash forwarded nothing twice"
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
             [consumer]\nbatch_linger = \"10ms\"\n\
             [notifier.smtp]\nhost = \"127.0.0.1\"\nport = {smtp}\nsecurity = \"none\"\nfrom = \"RPM <alerts@clinic.example>\"\n\
             [notifier.links]\nconsole_url = \"http://127.0.0.1\"\nack_key = \"0123456789abcdef0123456789abcdef-test\"\n\
             [notifier.grouping]\ngroup_wait = \"1s\"\ngroup_interval = \"5m\"\nimmediate_from = \"emergency\"\n\
             patient_urgent_from = \"emergency\"\nnotify_from = \"low\"\n\
             [[notifier.directory.people]]\nid = \"nurse.duty\"\nname = \"Duty Nurse\"\ncontacts = [{{ channel = \"email\", address = \"{nurse}\" }}]\n\
             [[notifier.directory.teams]]\nid = \"copd\"\npatients = [\"{key}\"]\n\
             [[notifier.directory.teams.tiers]]\ntime_zone = \"UTC\"\n\
             weekly = [{{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"], start = \"00:00\", end = \"00:00\", person = \"nurse.duty\" }}]\n",
            port = broker.port(),
            db = db.url(),
            smtp = smtp.port(),
            key = scenario.patient.key,
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
    let addr = ingest
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("HTTP API listening addr=")
                .nth(1)
                .map(|a| a.trim().to_owned())
        })
        .expect("ingest says where its HTTP API listens");
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
