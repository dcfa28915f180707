//! The whole path as separate processes: simulated devices → `rpm gateway` → Mosquitto →
//! `rpm ingest` → PostgreSQL. Readings emitted = readings in the record, none twice. The
//! same path under faults (killed processes, restarts, outages, bad input) is `tests/faults.rs`.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ingest::record::Record;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
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

/// `rpm gateway` playing `scenario` on simulated devices until every reading is acknowledged,
/// logging JSON lines (the tests read `readings_acked` from them).
fn simulate_args<'a>(cfg: &'a str, scenario: &'a str) -> [&'a str; 8] {
    [
        "--log-format",
        "json",
        "gateway",
        "--config",
        cfg,
        "--simulate",
        scenario,
        "--exit-when-drained",
    ]
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
    let args = simulate_args(&cfg, "copd_exacerbation");
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

/// Every status `gw-e2e` publishes, as the server sees it.
async fn status_watcher(port: u16) -> mpsc::UnboundedReceiver<GatewayStatus> {
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = MqttOptions::new("e2e-status", "127.0.0.1", port);
    support::watch(opts, "rpm/v1/gw/gw-e2e/status", move |p| {
        let _ = tx.send(serde_json::from_slice(&p.payload).expect("a valid status"));
    })
    .await;
    rx
}

/// The next status that `wanted` accepts (at most 30 s away).
async fn status_where(
    statuses: &mut mpsc::UnboundedReceiver<GatewayStatus>,
    what: &str,
    gw: &RpmProcess,
    wanted: impl Fn(&GatewayStatus) -> bool,
) -> GatewayStatus {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = statuses.recv().await.expect("watcher alive");
            if wanted(&s) {
                return s;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no status: {what}\n{}", gw.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_update_is_refused_and_reported_and_the_last_good_one_kept_across_a_restart() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = gateway_config(dir.path(), broker.port());
    let topic = Topic::new(GatewayId::new("gw-e2e").expect("valid"), Channel::Config).to_string();
    let (server, mut server_events) = AsyncClient::new(
        MqttOptions::new("e2e-server", "127.0.0.1", broker.port()),
        10,
    );
    tokio::spawn(async move { while server_events.poll().await.is_ok() {} });
    let config = |version: u64, users: &str| {
        format!(
            r#"{{"v":1,"gateway":"gw-e2e","version":{version},"devices":[{{"id":"bdaddr:c0:ff:ee:00:02:01","users":[{users}]}}]}}"#
        )
        .into_bytes()
    };
    let mut statuses = status_watcher(broker.port()).await;
    server
        .publish(
            &topic,
            QoS::AtLeastOnce,
            true,
            config(7, r#"{"user":1,"patient":"pk-a"}"#),
        )
        .await
        .expect("publish");
    let args = ["gateway", "--config", &cfg, "--simulate", "copd_stable"];
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    status_where(&mut statuses, "config 7 in force", &gw, |s| {
        s.state == GatewayState::Online
            && s.config_version == Some(7)
            && s.config_rejected.is_none()
    })
    .await;

    // Cut-off JSON, then a config that gives a cuff's user slot to two patients.
    let bad = [
        (br#"{"v":1,"gateway":"gw-e2e""#.to_vec(), "malformed"),
        (
            config(
                8,
                r#"{"user":1,"patient":"pk-a"},{"user":1,"patient":"pk-b"}"#,
            ),
            "invalid_binding",
        ),
    ];
    for (payload, why) in bad {
        server
            .publish(&topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
        let s = status_where(&mut statuses, why, &gw, |s| {
            s.config_rejected.as_deref() == Some(why)
        })
        .await;
        assert_eq!(
            s.config_version,
            Some(7),
            "{why}: the last good config stays"
        );
    }
    assert!(
        gw.stderr()
            .contains("rejected a configuration from the server"),
        "each refusal is logged: {}",
        gw.stderr()
    );

    // The hub loses power and comes back with the invalid config still retained on the
    // broker: it starts from the last good one it kept.
    gw.kill().expect("SIGKILL");
    status_where(&mut statuses, "the last will", &gw, |s| {
        s.state == GatewayState::Offline
    })
    .await;
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    let s = status_where(&mut statuses, "the retained bad config refused", &gw, |s| {
        s.state == GatewayState::Online && s.config_rejected.is_some()
    })
    .await;
    assert_eq!(
        s.config_version,
        Some(7),
        "after a restart the last good config is in force"
    );

    // A newer valid config is taken, and kept.
    server
        .publish(
            &topic,
            QoS::AtLeastOnce,
            true,
            config(9, r#"{"user":2,"patient":"pk-b"}"#),
        )
        .await
        .expect("publish");
    status_where(&mut statuses, "config 9 in force", &gw, |s| {
        s.config_version == Some(9) && s.config_rejected.is_none()
    })
    .await;
    let kept = dir.path().join("gw-data/server-config.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let version = std::fs::read(&kept)
            .ok()
            .and_then(|b| serde_json::from_slice::<GatewayConfig>(&b).ok())
            .map(|c| c.version);
        if version == Some(9) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub keeps the config it took: {version:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.kill().expect("stop the gateway");
}

/// A device that sends its stored records again on every connection (here every device of
/// the scenario, when the hub starts again on the same data directory and the devices replay
/// their week): what the hub already forwarded is not forwarded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_device_sends_again_on_every_connection_are_forwarded_once() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let mut observed = subscriber(broker.port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = gateway_config(dir.path(), broker.port());
    let args = simulate_args(&cfg, "week_away");
    let mut forwarded = Vec::new();
    for _ in 0..3 {
        let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn");
        let status = gw
            .wait_timeout(Duration::from_secs(60))
            .expect("gateway exits");
        assert!(status.success(), "{}", gw.stderr());
        forwarded.push(acked(&gw.stderr()));
    }
    assert!(
        forwarded[0] >= 20,
        "the first run forwards the week's readings: {forwarded:?}"
    );
    assert_eq!(
        &forwarded[1..],
        [0, 0],
        "the records sent again are not forwarded again"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = HashMap::new();
    drain(&mut observed, &mut seen);
    assert_eq!(seen.len() as u64, forwarded[0]);
    assert!(
        seen.values().all(|c| *c == 1),
        "a reading reached the broker twice"
    );
}

/// A hub cut off from the broker while its disk fills says so in its log (its status cannot
/// reach anyone), and keeps what its devices send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_offline_with_its_disk_nearly_full_says_so_in_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens there: the link is down for the whole test.
    let port = testkit::free_port().expect("a free port");
    let cfg = write(
        dir.path(),
        "gateway.toml",
        format!(
            "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             [queue]\ndisk_low_bytes = {}\n",
            dir.path().join("gw-data").display(),
            i64::MAX
        ),
    );
    let args = ["gateway", "--config", &cfg, "--simulate", "copd_stable"];
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    gw.wait_for_output("scenario played", Duration::from_secs(60))
        .expect("the scenario plays offline");
    let warned = gw.wait_for_output("disk space is low", Duration::from_secs(30));
    let log = gw.stderr();
    gw.kill().expect("stop the gateway");
    assert!(warned.is_ok(), "no warning about the disk:\n{log}");
    let queue = gateway::queue::Queue::open(dir.path().join("gw-data/queue.db"))
        .await
        .expect("queue");
    assert!(
        queue.depth().await.expect("depth").readings > 0,
        "the readings are kept"
    );
    queue.close().await;
}

/// A TCP link to the broker on `to` that is down until the returned flag is set: a port of
/// its own whose connections are closed at once while down, and relayed to the broker once
/// up. The task ends with the test's runtime.
async fn cuttable_link(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the link");
    let port = listener.local_addr().expect("address").port();
    let up = std::sync::Arc::new(AtomicBool::new(false));
    let state = up.clone();
    tokio::spawn(async move {
        while let Ok((mut hub, _)) = listener.accept().await {
            if !state.load(Ordering::SeqCst) {
                continue; // dropped: the connection is closed, as by a dead link
            }
            tokio::spawn(async move {
                if let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut hub, &mut broker).await;
                }
            });
        }
    });
    (port, up)
}

/// A hub that comes up with no network while a cuff hands over a week of stored records:
/// every record is queued offline (RACP transfer, a disconnect mid-transfer, the cuff's
/// re-sends), and once the broker is reachable each reaches it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_offline_with_a_week_of_device_records_forwards_each_once_when_the_link_returns()
 {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    // The hub reaches the broker through a link this test cuts: a port held for the whole
    // test (a killed broker's port could be handed to another test's broker meanwhile).
    let (link, up) = cuttable_link(broker.port()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = gateway_config(dir.path(), link);
    let args = simulate_args(&cfg, "week_away");
    let mut gw = RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway");
    gw.wait_for_output("scenario played", Duration::from_secs(60))
        .expect("the week's records are taken offline");
    // Everything the cuff handed over is in the hub's queue (the session's own count can
    // miss a reading whose push committed as the cuff dropped the link mid-transfer: the
    // queue is the truth).
    let queue = gateway::queue::Queue::open(dir.path().join("gw-data/queue.db"))
        .await
        .expect("queue");
    let queued = queue.depth().await.expect("depth").readings;
    queue.close().await;
    assert!(
        queued >= 14,
        "a week of cuff records, queued offline: {queued}"
    );

    // An independent subscriber watches; then the link returns.
    let mut observed = subscriber(broker.port()).await;
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let status = gw
        .wait_timeout(Duration::from_secs(90))
        .expect("the gateway drains and exits");
    assert!(status.success(), "{}", gw.stderr());
    assert_eq!(
        acked(&gw.stderr()),
        queued,
        "every queued reading acknowledged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = HashMap::new();
    drain(&mut observed, &mut seen);
    assert_eq!(seen.len() as u64, queued, "each reading reached the broker");
    assert!(
        seen.values().all(|c| *c == 1),
        "a reading reached the broker twice"
    );
}
