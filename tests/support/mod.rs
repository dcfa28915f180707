//! What the end-to-end tests share: registering a scenario's patient, writing configs, an
//! independent MQTT observer, a bare HTTP client, and [`Chain`], the whole system as separate
//! processes (simulated devices → `rpm gateway` → Mosquitto → `rpm ingest` on PostgreSQL or
//! SQLite → notifier → a real SMTP server) with the two checks every fault test ends with:
//! [`Chain::check_readings`] (every reading the simulators emitted is in the record exactly
//! once, compared by id) and [`Chain::check_alerts`] (every alert the scenario must raise is in
//! the record once and reached each recipient by email once).

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use ingest::record::{Audit, NewBinding, NewPatient, Record};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use simulators::scenario::Scenario;
use testkit::{Mosquitto, PgDatabase, PgServer, RpmProcess, SmtpSink, unavailable};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use vitals::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_rpm");

pub const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "end-to-end test set-up",
};

/// Registers the scenario's patient (condition COPD), its devices and their bindings on
/// `gateway`.
pub async fn register(record: &Record, scenario: &Scenario, gateway: &GatewayId) {
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
    register_devices(record, scenario, gateway, &key).await;
}

/// Registers `gateway`, the scenario's devices and their bindings to `patient` (enrolled).
pub async fn register_devices(
    record: &Record,
    scenario: &Scenario,
    gateway: &GatewayId,
    patient: &PatientKey,
) {
    record
        .create_gateway(gateway, &AUDIT)
        .await
        .expect("gateway");
    for d in &scenario.device {
        let id = device_id(d);
        record
            .create_device(&DeviceIdentity::new(id), &AUDIT)
            .await
            .expect("device");
        let binding = NewBinding {
            gateway: gateway.clone(),
            device: id,
            patient: patient.clone(),
            user_index: d.user,
            valid_from: OffsetDateTime::UNIX_EPOCH,
        };
        record.bind(&binding, &AUDIT).await.expect("binding");
    }
}

/// The identity a simulated device reports (its EUI-64 System ID, else its address).
pub fn device_id(d: &simulators::scenario::DeviceSpec) -> DeviceId {
    match &d.system_id {
        Some(eui) => format!("eui64:{eui}").parse().expect("eui64"),
        None => format!("bdaddr:{}", d.address).parse().expect("address"),
    }
}

/// Writes `text` to `dir/name`; the path as a string.
pub fn write(dir: &Path, name: &str, text: String) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf8").to_owned()
}

/// An independent subscriber with a persistent session: every reading id it sees.
pub async fn subscriber(port: u16) -> mpsc::UnboundedReceiver<ReadingId> {
    let mut opts = MqttOptions::new("e2e-observer", "127.0.0.1", port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(600));
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (tx, rx) = mpsc::unbounded_channel();
    watch(opts, "rpm/v1/gw/+/readings", move |p| {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if let Ok(e) = Envelope::decode_from(&topic, &p.payload) {
            for r in e.readings {
                let _ = tx.send(r.id);
            }
        }
    })
    .await;
    rx
}

/// Subscribes a client with `opts` to `filter` (QoS 1) and hands every message to `each`, on
/// a task of its own (reconnecting as rumqttc does); returns once the broker has
/// acknowledged the subscription.
pub async fn watch(
    opts: MqttOptions,
    filter: &str,
    mut each: impl FnMut(&rumqttc::v5::mqttbytes::v5::Publish) + Send + 'static,
) {
    let (client, mut events) = AsyncClient::new(opts, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
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
                Ok(Event::Incoming(Packet::Publish(p))) => each(&p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready_rx.await.expect("subscribed");
}

/// Moves what the observer saw so far into `seen` (id → times seen).
pub fn drain(rx: &mut mpsc::UnboundedReceiver<ReadingId>, seen: &mut HashMap<ReadingId, u32>) {
    while let Ok(id) = rx.try_recv() {
        *seen.entry(id).or_default() += 1;
    }
}

/// `readings_acked` from the gateway's last JSON log line that has it.
pub fn acked(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["readings_acked"].as_u64())
        .expect("the gateway reports what the broker acknowledged")
}

/// Waits until the record holds at least `n` readings (at most 30 s); the count then.
pub async fn wait_record(record: &Record, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = record.count_readings().await.expect("count");
        if c >= n || tokio::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where `rpm ingest` says its HTTP API listens.
pub fn http_addr(ingest: &RpmProcess) -> String {
    ingest
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("HTTP API listening addr=")
                .nth(1)
                .map(|a| a.trim().to_owned())
        })
        .expect("ingest says where its HTTP API listens")
}

/// One HTTP/1.0 GET over a TCP connection (the body comes whole, not in chunks): status code
/// and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
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
    (status, body)
}

/// `/metrics` of an ingest node: sample name (with its labels) → value.
pub async fn metrics(addr: &str) -> BTreeMap<String, u64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The `[notifier]` section of an ingest config: `nurse` on duty around the clock for the
/// patient `key`, who is told too (by email at `patient_mail`); quick grouping and retries so
/// a test waits seconds, not minutes; no escalation.
pub fn notifier_section(smtp_port: u16, nurse: &str, key: &str, patient_mail: &str) -> String {
    format!(
        "[notifier.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n\
         from = \"RPM <alerts@clinic.example>\"\ntimeout = \"5s\"\n\
         [notifier.links]\nconsole_url = \"http://127.0.0.1\"\nack_key = \"0123456789abcdef0123456789abcdef-test\"\n\
         [notifier.dispatch]\nlease = \"20s\"\npoll = \"200ms\"\nbatch = 32\nretry_base = \"200ms\"\n\
         retry_cap = \"1s\"\nmax_attempts = 10000\n\
         [notifier.grouping]\ngroup_wait = \"1s\"\ngroup_interval = \"1s\"\nimmediate_from = \"emergency\"\n\
         patient_urgent_from = \"low\"\nnotify_from = \"low\"\n\
         [[notifier.directory.people]]\nid = \"nurse.duty\"\nname = \"Duty Nurse\"\n\
         contacts = [{{ channel = \"email\", address = \"{nurse}\" }}]\n\
         [[notifier.directory.teams]]\nid = \"copd\"\npatients = [\"{key}\"]\n\
         [[notifier.directory.teams.tiers]]\ntime_zone = \"UTC\"\n\
         weekly = [{{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"], start = \"00:00\", end = \"00:00\", person = \"nurse.duty\" }}]\n\
         [[notifier.directory.patients]]\npatient = \"{key}\"\nname = \"Alex\"\ntime_zone = \"UTC\"\n\
         contacts = [{{ channel = \"email\", address = \"{patient_mail}\" }}]\n"
    )
}

/// The nurse on duty in [`Chain`]'s directory.
pub const NURSE: &str = "duty.nurse@clinic.example";
/// The patient's own address in [`Chain`]'s directory.
pub const PATIENT_MAIL: &str = "patient@home.example";

/// The fault suite's home patient: `copd_exacerbation` (from day 4 SpO2, FEV1 and PEF fall:
/// the alerts), with `continuous_secs` of 1 Hz continuous oximetry on day 2 (volume, so the
/// stream is still flowing when a fault strikes) and `extra` appended (more `[[fault]]`s).
pub fn exacerbation_scenario(continuous_secs: u32, extra: &str) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios/copd_exacerbation.toml"),
    )
    .expect("shipped scenario");
    // The file's expectations are for the scenario as shipped.
    let head = base.split("[expect]").next().expect("head");
    let head = head.replace(
        "name = \"copd_exacerbation\"",
        "name = \"copd_exacerbation_faults\"",
    );
    let continuous = if continuous_secs > 0 {
        format!(
            "\n[[fault]]\nday = 2\ntime = \"08:00\"\nkind = \"continuous\"\ncount = {continuous_secs}\n"
        )
    } else {
        String::new()
    };
    format!("{head}{continuous}{extra}")
}

/// Where the record lives: a fresh database on the machine's server, a private server a
/// test may crash and restart, or an SQLite file in the chain's directory (the embedded
/// default).
enum Database {
    Shared(PgDatabase),
    Private(PgServer),
    Sqlite,
}

/// Which [`Database`] a [`Chain`] starts with.
enum Backend {
    SharedPg,
    PrivatePg,
    Sqlite,
}

/// The rows `sql` selects from the record at `url`, PostgreSQL or SQLite.
async fn fetch_rows<T>(url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + Send
        + Unpin,
{
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url)
            .await
            .expect("connect to the record");
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.expect(sql);
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("connect to the record");
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.expect(sql);
        pool.close().await;
        rows
    }
}

/// The whole system as separate processes for one home (one gateway, one patient). Services
/// are started by [`Chain::start`]; `rpm ingest` and `rpm gateway` by the test, which also
/// decides when to break what.
pub struct Chain {
    pub broker: Mosquitto,
    database: Database,
    pub db_url: String,
    pub smtp: SmtpSink,
    pub record: Record,
    pub dir: tempfile::TempDir,
    pub gateway: GatewayId,
    pub scenario: Scenario,
    scenario_path: String,
    /// The dates `rpm gateway --simulate` may have played the scenario to (it ends the
    /// scenario today; a test running over midnight sees two).
    played_on: BTreeSet<time::Date>,
    /// Valid readings a test published or queued itself (not through the simulators):
    /// expected in the record beside what the simulators emitted.
    pub injected: Vec<Reading>,
    /// When [`Chain::kill_ingest`] killed a node (its notifier with it), in nanoseconds since
    /// the Unix epoch: the moments a message can have been sent and not yet recorded.
    kills: Vec<u128>,
}

impl Chain {
    /// Starts the broker, the database (a private PostgreSQL server when `private_pg`) and
    /// the SMTP server, and registers the scenario's home. `None` when a service is missing
    /// and not under CI (where that fails the test).
    pub async fn start(scenario_toml: String, private_pg: bool) -> Option<Chain> {
        let backend = if private_pg {
            Backend::PrivatePg
        } else {
            Backend::SharedPg
        };
        Self::start_on(scenario_toml, backend).await
    }

    /// [`Chain::start`] with the record in an SQLite file (`rpm ingest`'s embedded default).
    pub async fn start_sqlite(scenario_toml: String) -> Option<Chain> {
        Self::start_on(scenario_toml, Backend::Sqlite).await
    }

    async fn start_on(scenario_toml: String, backend: Backend) -> Option<Chain> {
        let broker = unavailable(Mosquitto::start())?;
        let smtp = unavailable(SmtpSink::start())?;
        let dir = tempfile::tempdir().expect("tempdir");
        let (database, db_url) = match backend {
            Backend::SharedPg => {
                let db = unavailable(PgDatabase::create().await)?;
                let url = db.url().to_owned();
                (Database::Shared(db), url)
            }
            Backend::PrivatePg => {
                let pg = unavailable(PgServer::start())?;
                let url = pg.url("postgres");
                (Database::Private(pg), url)
            }
            Backend::Sqlite => {
                let url = format!("sqlite:{}", dir.path().join("record.db").display());
                (Database::Sqlite, url)
            }
        };
        let record = Record::connect(&db_url, 4).await.expect("record");
        let scenario =
            Scenario::from_toml("fault suite scenario", &scenario_toml).expect("valid scenario");
        let scenario_path = write(dir.path(), "scenario.toml", scenario_toml);
        let gateway = GatewayId::new("gw-faults").expect("valid");
        register(&record, &scenario, &gateway).await;
        Some(Chain {
            broker,
            database,
            db_url,
            smtp,
            record,
            dir,
            gateway,
            scenario,
            scenario_path,
            played_on: BTreeSet::new(),
            injected: Vec::new(),
            kills: Vec::new(),
        })
    }

    /// The private PostgreSQL server ([`Chain::start`] with `private_pg`).
    pub fn pg_server(&mut self) -> &mut PgServer {
        match &mut self.database {
            Database::Private(pg) => pg,
            Database::Shared(_) | Database::Sqlite => {
                panic!("started without a private PostgreSQL server")
            }
        }
    }

    /// The patient's key.
    pub fn patient(&self) -> PatientKey {
        PatientKey::new(self.scenario.patient.key.clone()).expect("key")
    }

    /// The home's oximeter.
    pub fn oximeter(&self) -> DeviceId {
        let spec = self
            .scenario
            .device
            .iter()
            .find(|d| d.kind == simulators::DeviceKind::Oximeter)
            .expect("the scenario has an oximeter");
        device_id(spec)
    }

    /// Writes an ingest config for node `client_id` (shared-subscription group `ingest`);
    /// `consumer` replaces the default `[consumer]` body. Time-driven rules run every second
    /// (some alerts are raised by them), so a test waits seconds for them, not a minute.
    pub fn ingest_config(&self, client_id: &str, consumer: &str) -> String {
        write(
            self.dir.path(),
            &format!("{client_id}.toml"),
            format!(
                "[broker]\nurl = \"{broker}\"\nclient_id = \"{client_id}\"\n\
                 [database]\nurl = \"{db}\"\n\
                 [consumer]\n{consumer}\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n\
                 [rules]\ntick_every = \"1s\"\n{notifier}",
                broker = self.broker.url(),
                db = self.db_url,
                notifier = notifier_section(
                    self.smtp.port(),
                    NURSE,
                    &self.scenario.patient.key,
                    PATIENT_MAIL
                ),
            ),
        )
    }

    /// Kills ingest node `node` with SIGKILL (no goodbye, no flush), and remembers when: its
    /// notifier may have had a message accepted by the mail server and not yet recorded as
    /// sent, which the next dispatcher sends again (at least once, DESIGN.md; the copy has the
    /// same Message-ID, so the recipient's mail client shows it once). [`Chain::check_alerts`]
    /// allows exactly that and no other second copy.
    pub fn kill_ingest(&mut self, node: &mut RpmProcess) {
        self.kills.push(now_ns());
        node.kill().expect("SIGKILL ingest");
    }

    /// Starts ingest node `client_id` (small batches, so a stream is many transactions) and
    /// waits until its shared subscription is in place.
    pub fn spawn_ingest(&self, client_id: &str) -> RpmProcess {
        self.spawn_ingest_with(
            client_id,
            "batch_max = 50\nbatch_linger = \"10ms\"\nmax_inflight = 16",
        )
    }

    /// [`Chain::spawn_ingest`] with `consumer` as the `[consumer]` body.
    pub fn spawn_ingest_with(&self, client_id: &str, consumer: &str) -> RpmProcess {
        let config = self.ingest_config(client_id, consumer);
        testkit::spawn_ingest(BIN, &config, &self.broker, &[("RUST_LOG", "info")])
            .expect("ingest connects and subscribes")
    }

    /// `rpm gateway` playing the scenario (forwarding with `forward`, the `[forward]` body)
    /// on its data directory (the same one every time: a restarted hub finds its queue), and
    /// exiting once everything is acknowledged.
    pub fn spawn_gateway(&mut self, forward: &str) -> RpmProcess {
        let config = write(
            self.dir.path(),
            "gateway.toml",
            format!(
                "[gateway]\nid = \"{id}\"\ndata_dir = \"{data}\"\n[broker]\nurl = \"{broker}\"\n\
                 [forward]\n{forward}\n",
                id = self.gateway,
                data = self.gateway_data().display(),
                broker = self.broker.url(),
            ),
        );
        self.played_on.insert(OffsetDateTime::now_utc().date());
        let args = [
            "--log-format",
            "json",
            "gateway",
            "--config",
            &config,
            "--simulate",
            &self.scenario_path,
            "--exit-when-drained",
        ];
        RpmProcess::spawn(BIN, &args, &[("RUST_LOG", "info")]).expect("spawn gateway")
    }

    /// The gateway's data directory (its queue is `queue.db` there).
    pub fn gateway_data(&self) -> std::path::PathBuf {
        self.dir.path().join("gw-data")
    }

    /// Waits for a gateway run to finish by itself (it drains its queue and exits 0).
    pub fn wait_gateway(&mut self, gw: &mut RpmProcess) {
        let status = gw
            .wait_timeout(Duration::from_secs(180))
            .expect("the gateway drains its queue and exits");
        assert!(status.success(), "{}", gw.stderr());
        self.played_on.insert(OffsetDateTime::now_utc().date());
    }

    /// What the simulators emit for this scenario played to `date` (as `rpm gateway
    /// --simulate` plays it: ending that day), run here on a scratch queue.
    pub async fn emitted_on(&self, date: time::Date) -> Vec<Reading> {
        let days = i64::from(self.scenario.days);
        let start = (date - time::Duration::days(days)).midnight().assume_utc();
        let scratch = tempfile::tempdir().expect("tempdir");
        simulators::scenario::run_as(
            &self.scenario,
            &scratch.path().join("queue.db"),
            self.gateway.clone(),
            Some(start),
        )
        .await
        .expect("the scenario plays")
        .readings
    }

    /// The reading ids in the record (the table's key is the reading id).
    pub async fn record_ids(&self) -> Vec<String> {
        fetch_rows::<(String,)>(&self.db_url, "SELECT reading_id FROM readings")
            .await
            .into_iter()
            .map(|(id,)| id)
            .collect()
    }

    /// Every reading the simulators emitted is in the record exactly once, and nothing else
    /// is: compared by id, waiting (at most `within`) for ingest to catch up. Returns what was
    /// emitted.
    pub async fn check_readings(
        &self,
        within: Duration,
        context: &dyn Fn() -> String,
    ) -> Vec<Reading> {
        assert!(!self.played_on.is_empty(), "no gateway was started");
        let mut candidates = Vec::new();
        for date in &self.played_on {
            let readings = self.emitted_on(*date).await;
            let mut ids: BTreeSet<String> = readings.iter().map(|r| r.id.to_string()).collect();
            assert_eq!(
                ids.len(),
                readings.len(),
                "the simulators emit each id once"
            );
            ids.extend(self.injected.iter().map(|r| r.id.to_string()));
            candidates.push((ids, readings));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stored = self.record_ids().await;
            let set: BTreeSet<String> = stored.iter().cloned().collect();
            assert_eq!(set.len(), stored.len(), "a reading id twice in the record");
            if let Some((_, readings)) = candidates.iter().find(|(ids, _)| *ids == set) {
                return readings.clone();
            }
            if tokio::time::Instant::now() > deadline {
                let (ids, readings) = &candidates[0];
                let missing = ids.difference(&set).count();
                let sample: Vec<String> = readings
                    .iter()
                    .filter(|r| !set.contains(&r.id.to_string()))
                    .take(5)
                    .map(|r| format!("{} {}", r.reading_type.as_str(), r.measured_at))
                    .collect();
                eprintln!("missing, for example: {sample:?}");
                let extra = set.difference(ids).count();
                panic!(
                    "the record does not hold exactly the {} readings emitted: {missing} missing, \
                     {extra} not emitted\n{}",
                    ids.len(),
                    context()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Both checks: [`Chain::check_readings`] (waiting at most `within`), then
    /// [`Chain::check_alerts`]. Returns what the simulators emitted.
    pub async fn check(&self, within: Duration, context: &dyn Fn() -> String) -> Vec<Reading> {
        let emitted = self.check_readings(within, context).await;
        self.check_alerts(&emitted, context).await;
        emitted
    }

    /// The rules the engine raises alerts for on `emitted` (a backtest with the COPD profile
    /// over the whole scenario, in measurement order).
    pub fn expected_alerts(&self, emitted: &[Reading]) -> BTreeSet<String> {
        let key = self.patient();
        let mut readings: Vec<Reading> = emitted
            .iter()
            .chain(self.injected.iter().filter(|r| r.patient == key))
            .cloned()
            .collect();
        readings.sort_by_key(|r| r.measured_at);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/profiles/copd.toml");
        let set = rules::Profile::from_toml(&std::fs::read_to_string(path).expect("profile"))
            .expect("valid")
            .build()
            .expect("builds");
        let from = readings.first().expect("readings").measured_at;
        let to = readings.last().expect("readings").measured_at + time::Duration::SECOND;
        let report = rules::backtest(&set, readings, from, to, |_| {});
        report.alerts.into_iter().map(|a| a.rule).collect()
    }

    /// Every alert the scenario must raise is in the record, and every alert in the record
    /// reached each recipient by email once.
    ///
    /// "Must raise": the rules that catch the exacerbation (low SpO2, SpO2 below baseline, PEF
    /// and FEV1 below best, NEWS2), where a backtest of what was emitted (in
    /// measurement order, as scenario_alerts.rs does) raises them. Ingest evaluates readings in
    /// the order they arrive and time-driven rules on the wall clock; a fault reorders arrival
    /// (a replay, a second node, a backlog), so trend and CUSUM rules may differ from the
    /// backtest, and a missing-data rule may fire while history is still arriving: those are
    /// allowed, not required. Nothing else may be raised.
    ///
    /// "Once": no message reached the server twice (its Message-ID is the notification's id,
    /// so a re-sent message repeats it), no alert was announced as raised in two messages to
    /// one recipient, every alert was in some message to the nurse on duty and, if it speaks to
    /// the patient, to the patient, and every notification is sent (none pending or failed).
    pub async fn check_alerts(&self, emitted: &[Reading], context: &dyn Fn() -> String) {
        const MUST: [&str; 5] = [
            "spo2-low",
            "spo2-baseline-drop",
            "pef-best-drop",
            "fev1-best-drop",
            "news2",
        ];
        const MAY: [&str; 4] = ["spo2-trend", "spo2-drift", "pulse-high", "no-oximetry"];
        let backtest = self.expected_alerts(emitted);
        let required: BTreeSet<String> = backtest
            .iter()
            .filter(|r| MUST.contains(&r.as_str()))
            .cloned()
            .collect();
        assert!(
            required.len() >= 3,
            "the scenario raises alerts (else this checks little): {backtest:?}"
        );
        let allowed: BTreeSet<String> = backtest
            .iter()
            .cloned()
            .chain(MAY.iter().map(|r| (*r).to_owned()))
            .collect();
        let key = self.patient();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let alerts = loop {
            let alerts = self.record.alerts_for_patient(&key).await.expect("alerts");
            let rules: BTreeSet<String> = alerts.iter().map(|a| a.rule.clone()).collect();
            assert!(
                rules.is_subset(&allowed),
                "alerts no reading raises: {:?}\n{}",
                rules.difference(&allowed).collect::<Vec<_>>(),
                context()
            );
            if rules.is_superset(&required) {
                break alerts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alerts lost: {:?} are not in the record's {rules:?}\n{}",
                required.difference(&rules).collect::<Vec<_>>(),
                context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let outbox = self.wait_outbox_sent(context).await;
        assert!(outbox > 0, "the alerts were put in the outbox");

        let messages = once_each(self.smtp.accepted(), &self.kills);
        let to = |address: &str| -> Vec<&String> {
            messages
                .iter()
                .filter(|m| testkit::addressed_to(m, address))
                .collect()
        };
        let nurse: Vec<Vec<Item>> = to(NURSE).into_iter().map(|m| items(m)).collect();
        let patient: Vec<String> = to(PATIENT_MAIL).into_iter().map(|m| decode_qp(m)).collect();
        for alert in &alerts {
            let opened = alert.opened_at.unix_timestamp();
            let mentions = |state: Option<&str>| {
                nurse
                    .iter()
                    .filter(|m| {
                        m.iter().any(|i| {
                            i.rule == alert.rule
                                && i.opened == opened
                                && state.is_none_or(|s| i.state == s)
                        })
                    })
                    .count()
            };
            assert!(
                mentions(None) >= 1,
                "alert {} never reached the nurse\n{}",
                alert.rule,
                context()
            );
            assert!(
                mentions(Some("raised")) <= 1,
                "alert {} announced to the nurse as raised {} times",
                alert.rule,
                mentions(Some("raised"))
            );
            if let Some(text) = alert
                .patient_text
                .as_deref()
                .filter(|_| alert.audience != "nurse")
            {
                assert!(
                    patient.iter().any(|m| m.contains(text)),
                    "alert {} never reached the patient ({text:?})\n{patient:?}",
                    alert.rule
                );
            }
        }
    }

    /// Waits until every outbox row is sent (none pending, none failed); how many rows.
    pub async fn wait_outbox_sent(&self, context: &dyn Fn() -> String) -> i64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows: Vec<(String, i64)> = fetch_rows(
                &self.db_url,
                "SELECT status, count(*) FROM notifier_outbox GROUP BY status",
            )
            .await;
            let by: BTreeMap<String, i64> = rows.into_iter().collect();
            let sent = by.get("sent").copied().unwrap_or(0);
            if by.len() == 1 && sent > 0 {
                return sent;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifications not all sent: {by:?}\n{}",
                context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Nanoseconds since the Unix epoch, the clock `smtp_sink.py` stamps messages with.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// How long after a kill the mail server may still stamp a message the killed dispatcher
/// had sent whole: it stamps when it has handled the end of DATA, which can come after the
/// sender is gone (CI once saw 3.7 ms).
pub const KILL_SLACK_NS: u128 = 250_000_000;

/// The messages the mail server accepted (`accepted`, oldest first, each with when), one copy
/// of each Message-ID. Panics when a message reached the server twice, unless it is the one
/// second copy at-least-once delivery allows: a dispatcher killed at one of `kills` after it
/// had sent the message and before the outbox recorded it, and the next dispatcher sending it
/// again. So each duplicate must be exactly two copies: one accepted before such a kill (or
/// within [`KILL_SLACK_NS`] after it, the server's lag) and one after the kill.
pub fn once_each(accepted: Vec<(u128, String)>, kills: &[u128]) -> Vec<String> {
    let mut copies = BTreeMap::<String, Vec<u128>>::new();
    let mut first = Vec::new();
    for (at, m) in accepted {
        let id = header(&m, "Message-ID").unwrap_or_else(|| panic!("no Message-ID: {m}"));
        let times = copies.entry(id).or_default();
        if times.is_empty() {
            first.push(m);
        }
        times.push(at);
    }
    let twice: Vec<(&String, &Vec<u128>)> = copies
        .iter()
        .filter(|(_, at)| {
            at.len() > 1
                && !(at.len() == 2
                    && kills
                        .iter()
                        .any(|k| at[0] < k + KILL_SLACK_NS && *k < at[1]))
        })
        .collect();
    assert!(
        twice.is_empty(),
        "messages delivered twice (accepted at, ns; ingest killed at {kills:?}): {twice:?}"
    );
    first
}

/// One alert in a nurse's message: `* SEVERITY rule (state; opened TIME): …`.
#[derive(Debug)]
pub struct Item {
    pub rule: String,
    pub state: String,
    pub opened: i64,
}

/// The alerts listed in a nurse's message.
pub fn items(message: &str) -> Vec<Item> {
    decode_qp(message)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("* ")?;
            let (_severity, rest) = rest.split_once(' ')?;
            let (rule, rest) = rest.split_once(" (")?;
            let (state, rest) = rest.split_once("; opened ")?;
            let (opened, _) = rest.split_once("):")?;
            let opened =
                OffsetDateTime::parse(opened, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            Some(Item {
                rule: rule.to_owned(),
                state: state.to_owned(),
                opened: opened.unix_timestamp(),
            })
        })
        .collect()
}

/// A header's value (first occurrence, case-insensitive name).
pub fn header(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

/// Undoes quoted-printable escapes (`=C2=B0`) left in [`SmtpSink::messages`].
pub fn decode_qp(message: &str) -> String {
    let bytes = message.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
