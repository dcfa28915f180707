//! The notifier wired into ingest, against a real Mosquitto, a real record (SQLite and
//! PostgreSQL) and a real SMTP server (aiosmtpd): an alert and its notifications commit
//! together, the on-duty nurse gets the email, a crash between commit and send still sends
//! exactly once, and the signed link acknowledges (audit log) and stops escalation.
//! Missing services skip locally and fail under CI=true (testkit::unavailable).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ingest::config::RulesConfig;
use ingest::consume::{Consumer, ConsumerSettings, IngestStats, Rules, client_options};
use ingest::http::{HttpState, ack::AckLinks, router};
use ingest::notify::{self, Notifications};
use ingest::record::{
    AlertState, AlertWrite, Audit, NewBinding, NewPatient, OpenAlert, Record, StoredAlert,
};
use notifier::{AlertId, NotificationStatus, NotifierConfig, OutboxStore, Timestamp};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use testkit::{Mosquitto, PgDatabase, SmtpSink, unavailable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use vitals::*;

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "notifier wiring test set-up",
};
const TOPIC: &str = "rpm/v1/gw/gw-1/readings";
const ACK_KEY: &str = "ingest-notify-test-key-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// A real SMTP server: testkit::SmtpSink (aiosmtpd, one .eml file per message).

/// The first message to `address`, waiting up to [`WAIT`].
async fn mail_to(smtp: &SmtpSink, address: &str) -> String {
    smtp.wait_for_mail_to(address, WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no mail to {address} within {WAIT:?}; got {:?}",
                smtp.messages()
            )
        })
}

// ---------------------------------------------------------------------------------------
// The care team: Dee on duty (tier 0), Cal the charge nurse (tier 1), and the patient.

const NURSE: &str = "dee@ward.test";
const CHARGE: &str = "cal@ward.test";
const PATIENT: &str = "ada@home.test";

/// The `[notifier]` table (JSON has the same shape as the TOML table).
fn notifier_config(smtp_port: u16, escalate: bool) -> NotifierConfig {
    let every_day = r#"["mon", "tue", "wed", "thu", "fri", "sat", "sun"]"#;
    let escalation = if escalate {
        r#"{ "medium": { "ack_within": "3s" } }"#
    } else {
        "{}"
    };
    let text = format!(
        r#"{{
        "smtp": {{ "host": "127.0.0.1", "port": {smtp_port}, "security": "none",
                   "from": "RPM alerts <alerts@rpm.test>", "timeout": "2s" }},
        "links": {{ "console_url": "https://console.rpm.test", "ack_key": "{ACK_KEY}",
                    "ack_ttl": "1h" }},
        "dispatch": {{ "lease": "3s", "poll": "100ms", "batch": 16, "retry_base": "100ms",
                       "retry_cap": "400ms", "max_attempts": 100 }},
        "grouping": {{ "group_wait": "200ms", "group_interval": "1s",
                       "immediate_from": "emergency", "patient_urgent_from": "emergency",
                       "notify_from": "low" }},
        "escalation": {escalation},
        "directory": {{
            "people": [
                {{ "id": "nurse.dee", "name": "Dee", "contacts": [{{ "channel": "email", "address": "{NURSE}" }}] }},
                {{ "id": "charge.cal", "name": "Cal", "contacts": [{{ "channel": "email", "address": "{CHARGE}" }}] }}
            ],
            "teams": [{{ "id": "copd", "patients": ["pk-1"], "tiers": [
                {{ "time_zone": "UTC", "weekly": [{{ "days": {every_day}, "start": "00:00", "end": "00:00", "person": "nurse.dee" }}] }},
                {{ "time_zone": "UTC", "weekly": [{{ "days": {every_day}, "start": "00:00", "end": "00:00", "person": "charge.cal" }}] }}
            ] }}],
            "patients": [{{ "patient": "pk-1", "name": "Ada", "time_zone": "UTC",
                            "contacts": [{{ "channel": "email", "address": "{PATIENT}" }}] }}]
        }}
    }}"#
    );
    serde_json::from_str(&text).expect("test notifier config parses")
}

// ---------------------------------------------------------------------------------------
// The record, its patient, readings through Mosquitto.

/// A database that outlives the records opened on it (a restart opens a new one).
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl Db {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Db {
            url: format!("sqlite:{}", dir.path().join("record.db").display()),
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let pg = unavailable(PgDatabase::create().await)?;
        Some(Db {
            url: pg.url().to_owned(),
            _dir: None,
            _pg: Some(pg),
        })
    }

    /// A record that enqueues notifications with its alerts.
    async fn open(&self, runtime: &notifier::Runtime) -> Record {
        Record::connect(&self.url, 4)
            .await
            .expect("record")
            .with_notifications(Arc::new(Notifications::from_runtime(runtime)))
    }
}

fn key() -> PatientKey {
    PatientKey::new("pk-1").expect("valid")
}

fn gw() -> GatewayId {
    GatewayId::new("gw-1").expect("valid")
}

fn device() -> DeviceId {
    "eui64:0011223344556677".parse().expect("valid")
}

async fn registry(record: &Record) {
    record
        .create_patient(
            &NewPatient {
                key: key(),
                display_name: Some("Ada Example".into()),
                condition: "copd".into(),
                profile_id: None,
                care_team: None,
            },
            &AUDIT,
        )
        .await
        .expect("patient");
    record.create_gateway(&gw(), &AUDIT).await.expect("gateway");
    record
        .create_device(&DeviceIdentity::new(device()), &AUDIT)
        .await
        .expect("device");
    record
        .bind(
            &NewBinding {
                gateway: gw(),
                device: device(),
                patient: key(),
                user_index: None,
                valid_from: OffsetDateTime::UNIX_EPOCH,
            },
            &AUDIT,
        )
        .await
        .expect("binding");
}

/// An SpO2 reading `minute` minutes into the last hour.
fn spo2(minute: i64, value: &str) -> Reading {
    let at = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid")
        - time::Duration::minutes(60)
        + time::Duration::minutes(minute);
    Reading {
        id: ReadingId(Default::default()),
        seq: minute as u64,
        gateway: gw(),
        patient: key(),
        device: DeviceIdentity::new(device()),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(value.parse().expect("decimal")),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

fn envelope(seq: u64, readings: Vec<Reading>) -> Vec<u8> {
    Envelope {
        v: 1,
        gateway: gw(),
        seq,
        sent_at: OffsetDateTime::now_utc(),
        readings,
    }
    .encode()
}

struct Node {
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ingest::consume::ConsumeError>>,
}

impl Node {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("joined").expect("clean stop");
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_consumer(broker: &Mosquitto, record: Record) -> Node {
    let config = BrokerConfig::new(broker.url().parse().expect("url"));
    let options = client_options(&config, "ingest-notify", 32).expect("options");
    let cap = options.request_channel_capacity();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
    let rules = Rules::load(&RulesConfig {
        profiles_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/profiles").into(),
        ..RulesConfig::default()
    })
    .expect("the shipped profiles load");
    let consumer = Consumer {
        settings: ConsumerSettings {
            group: "ingest".into(),
            batch_max: 500,
            batch_linger: Duration::from_millis(10),
            max_inflight: 32,
            max_future: Duration::from_secs(300),
            max_backoff: Duration::from_millis(200),
        },
        record,
        mqtt: AsyncClient::new(options, cap),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let node = Node {
        stats,
        shutdown,
        task: tokio::spawn(consumer.run_with(rules)),
    };
    let subscription = "$share/ingest/rpm/v1/gw/+/readings";
    wait_until("the consumer's subscription", || {
        broker.log().matches(subscription).count() >= 1
    })
    .await;
    node
}

async fn publisher(broker: &Mosquitto) -> AsyncClient {
    let opts = MqttOptions::new("test-publisher", "127.0.0.1", broker.port());
    let (client, events) = AsyncClient::new(opts, 100);
    testkit::drive_mqtt(events);
    client
}

/// Publishes one message and waits until the node has committed it.
async fn send(client: &AsyncClient, node: &Node, payload: Vec<u8>) {
    let before = node.stats.messages.load(Ordering::Relaxed);
    client
        .publish(TOPIC, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
    let stats = node.stats.clone();
    wait_until("the message committed", || {
        stats.messages.load(Ordering::Relaxed) > before
    })
    .await;
}

/// Two low SpO2 readings (the profile wants 2 of 2 within 15 minutes): one alert.
async fn raise_spo2_low(client: &AsyncClient, node: &Node) {
    send(client, node, envelope(1, vec![spo2(0, "89")])).await;
    send(client, node, envelope(2, vec![spo2(5, "89")])).await;
}

async fn the_alert(record: &Record) -> StoredAlert {
    let alerts: Vec<StoredAlert> = record
        .alerts_for_patient(&key())
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.rule == "spo2-low")
        .collect();
    assert_eq!(alerts.len(), 1, "two low readings raise one alert");
    alerts.into_iter().next().expect("one alert")
}

fn addresses(rows: &[notifier::Notification]) -> Vec<&str> {
    let mut a: Vec<&str> = rows.iter().map(|n| n.row.address.as_str()).collect();
    a.sort_unstable();
    a
}

/// Whether any of `mails` is about `rule`.
fn about(mails: &[String], rule: &str) -> bool {
    mails.iter().any(|m| m.contains(&format!(" {rule} (")))
}

/// The acknowledgement link of the spo2-low item (the message may list other alerts).
fn ack_token(mail: &str) -> String {
    let item = mail
        .split_once("MEDIUM spo2-low")
        .map(|(_, rest)| rest)
        .expect("the spo2-low item in the nurse's email");
    item.split("ack?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|t| t.trim_end_matches(['>', ')', '.']).to_owned())
        .expect("an acknowledgement link in the nurse's email")
}

async fn hit(app: &axum::Router, method: &str, uri: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A form POST, as the confirmation page's button sends it.
async fn hit_form(app: &axum::Router, uri: &str, form: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri(uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(form.to_owned()))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------
// The tests.

async fn an_alert_commits_with_its_notifications_and_the_on_duty_nurse_is_emailed(db: Db) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(smtp) = unavailable(SmtpSink::start()) else {
        return;
    };
    let runtime = notifier_config(smtp.port(), true)
        .build()
        .expect("config builds");
    let record = db.open(&runtime).await;
    registry(&record).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    assert_eq!(running.retracked, 0);
    let node = start_consumer(&broker, record.clone()).await;
    let client = publisher(&broker).await;

    send(&client, &node, envelope(1, vec![spo2(0, "89")])).await;
    assert!(
        !record
            .alerts_for_patient(&key())
            .await
            .expect("alerts")
            .iter()
            .any(|a| a.rule == "spo2-low"),
        "one low reading does not raise spo2-low"
    );
    send(&client, &node, envelope(2, vec![spo2(5, "89")])).await;
    // Committed together: once the batch is acknowledged, the alert row and its
    // notification rows are both there.
    let alert = the_alert(&record).await;
    assert_eq!(alert.state, AlertState::Open);
    assert_eq!(alert.severity, "medium");
    let outbox = record.outbox().await.expect("outbox");
    let rows = outbox.for_alert(&alert.uid).await.expect("outbox rows");
    assert_eq!(
        addresses(&rows),
        [PATIENT, NURSE],
        "the nurse on duty and the patient"
    );
    for n in &rows {
        assert_eq!(n.row.notice.alert.as_str(), alert.uid);
        assert_eq!(n.row.notice.rule, "spo2-low");
        assert_eq!(n.row.notice.kind, notifier::NoticeKind::Raised);
        assert_eq!(n.row.notice.severity, notifier::Severity::Medium);
        assert_eq!(n.row.notice.nurse_text, alert.nurse);
        assert_eq!(n.row.notice.evidence.len(), 2, "both readings as evidence");
    }

    let mail = mail_to(&smtp, NURSE).await;
    // Other rules of the profile (NEWS2) may be in the same message: one per nurse and
    // patient.
    assert!(mail.contains("Subject: [RPM] MEDIUM: "), "{mail}");
    assert!(mail.contains("open alert(s) for patient pk-1"), "{mail}");
    assert!(mail.contains("MEDIUM spo2-low"), "{mail}");
    assert!(mail.contains("SpO2 89"), "{mail}");
    assert!(
        mail.contains("https://console.rpm.test/ack?token="),
        "{mail}"
    );
    assert!(
        !mail.contains("Ada Example"),
        "no registry name in the email"
    );
    let patient = mail_to(&smtp, PATIENT).await;
    assert!(
        patient.contains("Your oxygen level is lower than usual."),
        "{patient}"
    );
    assert!(!patient.contains("ack?token"), "{patient}");
    // Nobody acknowledges within 3 s: the charge nurse (tier 1) is told.
    let escalated = mail_to(&smtp, CHARGE).await;
    assert!(escalated.contains("ESCALATED (tier 1)"), "{escalated}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !about(&smtp.to(CHARGE), "spo2-low") {
        assert!(tokio::time::Instant::now() < deadline, "spo2-low escalated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        smtp.to(NURSE)
            .iter()
            .filter(|m| m.contains("MEDIUM spo2-low"))
            .count(),
        1,
        "the nurse is told about spo2-low once"
    );

    let rows = outbox.for_alert(&alert.uid).await.expect("outbox rows");
    let nurse_row = rows
        .iter()
        .find(|n| n.row.address == NURSE)
        .expect("nurse row");
    assert_eq!(nurse_row.status, NotificationStatus::Sent);
    node.stop().await;
    shutdown.cancel();
    running.join().await;
}

async fn a_crash_between_commit_and_send_sends_exactly_once_after_restart(db: Db) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(smtp) = unavailable(SmtpSink::start()) else {
        return;
    };
    let runtime = notifier_config(smtp.port(), false)
        .build()
        .expect("config builds");
    // First life: alerts are committed with their notifications, but the process dies
    // before any dispatcher runs.
    let record = db.open(&runtime).await;
    registry(&record).await;
    let node = start_consumer(&broker, record.clone()).await;
    let client = publisher(&broker).await;
    raise_spo2_low(&client, &node).await;
    let alert = the_alert(&record).await;
    let outbox = record.outbox().await.expect("outbox");
    let rows = outbox.for_alert(&alert.uid).await.expect("rows");
    assert_eq!(addresses(&rows), [PATIENT, NURSE]);
    assert!(
        rows.iter()
            .all(|n| n.status == NotificationStatus::Pending && n.attempts == 0)
    );
    let open = record
        .open_unacknowledged_alerts()
        .await
        .expect("open alerts")
        .len();
    node.stop().await;
    record.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        smtp.messages().is_empty(),
        "nothing was sent before the crash"
    );

    // Second life: a new record on the same database, the notifier started as `rpm ingest`
    // starts it.
    let record = db.open(&runtime).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    assert_eq!(
        running.retracked, open,
        "the open alerts are followed again"
    );
    let mail = mail_to(&smtp, NURSE).await;
    assert!(mail.contains("spo2-low"), "{mail}");
    mail_to(&smtp, PATIENT).await;
    // Anything doubled would arrive within a few polls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let nurse: Vec<String> = smtp.to(NURSE);
    assert_eq!(
        nurse
            .iter()
            .filter(|m| m.contains("MEDIUM spo2-low"))
            .count(),
        1,
        "sent exactly once to the nurse: {nurse:?}"
    );
    assert_eq!(
        smtp.to(PATIENT).len(),
        1,
        "sent exactly once to the patient"
    );
    let outbox = record.outbox().await.expect("outbox");
    for n in outbox.for_alert(&alert.uid).await.expect("rows") {
        assert_eq!(n.status, NotificationStatus::Sent);
        let attempts = outbox.attempts(n.row.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1, "one attempt, recorded");
        assert_eq!(attempts[0].outcome, notifier::AttemptOutcome::Sent);
    }
    shutdown.cancel();
    running.join().await;
}

async fn the_signed_link_acknowledges_is_audited_and_stops_escalation(db: Db) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(smtp) = unavailable(SmtpSink::start()) else {
        return;
    };
    let runtime = notifier_config(smtp.port(), true)
        .build()
        .expect("config builds");
    let record = db.open(&runtime).await;
    registry(&record).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    let node = start_consumer(&broker, record.clone()).await;
    // The consumer's own counters, as `rpm ingest` serves them.
    let mut state = HttpState::new(record.clone(), node.stats.clone());
    state.ack = Some(AckLinks {
        signer: runtime.signer.clone(),
        escalator: running.escalator.clone(),
    });
    state.notifier = Some(running.stats.clone());
    let app = router(state);
    let client = publisher(&broker).await;
    raise_spo2_low(&client, &node).await;
    let alert = the_alert(&record).await;
    let mail = mail_to(&smtp, NURSE).await;
    let token = ack_token(&mail);

    // Refusals first: they must not acknowledge anything.
    let (status, body) = hit(&app, "GET", "/ack").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = hit(&app, "GET", "/ack?token=not-a-token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let tampered = format!("{}x", &token[..token.len() - 1]);
    let (status, _) = hit(&app, "GET", &format!("/ack?token={tampered}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let expired = runtime.signer.sign(
        &AlertId::new(alert.uid.clone()).expect("id"),
        "staff:nurse.dee",
        Timestamp::now()
            .checked_sub(Duration::from_secs(60))
            .expect("a minute ago"),
    );
    let (status, body) = hit(&app, "GET", &format!("/ack?token={expired}")).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body.contains("expired"), "{body}");
    let unacknowledged = |alerts: Vec<StoredAlert>| alerts.iter().any(|a| a.uid == alert.uid);
    assert!(unacknowledged(
        record.open_unacknowledged_alerts().await.expect("open")
    ));

    // The link from the email: a GET (a mail scanner, a link preview, or the nurse's click)
    // only asks for confirmation.
    let (status, body) = hit(&app, "GET", &format!("/ack?token={token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("<form method=\"post\" action=\"/ack\">"),
        "{body}"
    );
    assert!(body.contains(&format!("value=\"{token}\"")), "{body}");
    assert!(
        unacknowledged(record.open_unacknowledged_alerts().await.expect("open")),
        "a GET acknowledges nothing"
    );
    assert!(
        record
            .audit_log(Some(&format!("alert:{}", alert.uid)), 10)
            .await
            .expect("audit log")
            .is_empty()
    );
    // A forged form is refused like a forged link.
    let (status, _) = hit_form(&app, "/ack", &format!("token={tampered}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The confirmation page's button posts the token back.
    let (status, body) = hit_form(&app, "/ack", &format!("token={token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("acknowledged"), "{body}");
    let audit = record
        .audit_log(Some(&format!("alert:{}", alert.uid)), 10)
        .await
        .expect("audit log");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].action, "alert.acknowledge");
    assert_eq!(
        audit[0].actor, "staff:nurse.dee",
        "the recipient id, never a name"
    );
    assert!(
        !unacknowledged(record.open_unacknowledged_alerts().await.expect("open")),
        "a restart would not escalate it again"
    );
    // A script may POST with the token in the query (a second acknowledgement is recorded).
    let (status, _) = hit(&app, "POST", &format!("/ack?token={token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        record
            .audit_log(Some(&format!("alert:{}", alert.uid)), 10)
            .await
            .expect("audit log")
            .len(),
        2
    );

    // Past the 3 s acknowledgement time: the charge nurse is not paged.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !about(&smtp.to(CHARGE), "spo2-low"),
        "escalation of the acknowledged alert stopped"
    );
    // The dispatcher's counters are on /metrics.
    let (status, metrics) = hit(&app, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("# TYPE rpm_notifier_sent_total counter"),
        "{metrics}"
    );
    assert!(!metrics.contains("rpm_notifier_sent_total 0"), "{metrics}");
    // The rules engine's latency: one observation per reading it evaluated.
    let evaluated = sample(&metrics, "rpm_rules_evaluation_seconds_count");
    assert!(evaluated >= 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "rpm_rules_evaluation_seconds_bucket{le=\"+Inf\"}"),
        evaluated
    );
    assert!(
        metrics.contains("# TYPE rpm_rules_evaluation_seconds histogram\n"),
        "{metrics}"
    );
    // Queue depths: the consumer's, the outbox's and the gateways' (from their statuses).
    assert!(
        sample(&metrics, "rpm_ingest_acked_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "rpm_ingest_pending_messages")
            <= sample(&metrics, "rpm_ingest_received_total"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rpm_notifier_outbox{status=\"failed\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "rpm_gateways_reporting_queue"), 0.0);
    let status = GatewayStatus {
        v: 1,
        gateway: gw(),
        state: GatewayState::Online,
        at: OffsetDateTime::now_utc(),
        queue: Some(QueueStatus {
            depth: 1234,
            oldest: None,
            disk_free_bytes: 1 << 30,
            disk_low: false,
        }),
        devices: Vec::new(),
        config_version: None,
        config_rejected: None,
        software: None,
    };
    assert!(record.record_gateway_status(&status).await.expect("status"));
    let (_, metrics) = hit(&app, "GET", "/metrics").await;
    assert_eq!(sample(&metrics, "rpm_gateways_reporting_queue"), 1.0);
    assert_eq!(sample(&metrics, "rpm_gateway_queued_readings"), 1234.0);
    assert_eq!(sample(&metrics, "rpm_gateway_queued_readings_max"), 1234.0);
    node.stop().await;
    shutdown.cancel();
    running.join().await;
}

/// The value of one series in a Prometheus text page.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
        .parse()
        .expect("a number")
}

/// A raise written directly (as time-driven rules write them).
fn raise(at: OffsetDateTime) -> AlertWrite {
    AlertWrite::Open {
        patient: key(),
        raised: true,
        alert: OpenAlert {
            rule: "spo2-low".into(),
            profile: "copd@1".into(),
            severity: rules::Severity::High,
            audience: rules::Audience::Nurse,
            opened_at: at,
            at,
            explanation: serde_json::json!({
                "severity": "high",
                "evidence": [{"reading": "r-1", "at": 1_700_000_000_000i64, "kind": "spo2",
                              "value": 87.0}],
                "context": {"type": "threshold", "limit": 90, "clear": 92},
                "text": "SpO2 87 under 90",
            }),
            nurse: "SpO2 87 % (at or under 90 %)".into(),
            patient_text: None,
        },
    }
}

/// Breaks the outbox behind the record's back (a full disk, a missing migration): the alert
/// must not commit without its notifications.
async fn break_outbox(url: &str) {
    let sql = "ALTER TABLE notifier_outbox RENAME TO notifier_outbox_gone";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        sqlx::query(sql).execute(&pool).await.expect("rename");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query(sql).execute(&pool).await.expect("rename");
        pool.close().await;
    }
}

async fn an_alert_never_commits_without_its_notifications(db: Db) {
    // No SMTP needed: nothing is sent, only planned.
    let runtime = notifier_config(1, false).build().expect("config builds");
    let record = db.open(&runtime).await;
    registry(&record).await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("t");
    let written = record.write_alerts(&[raise(now)]).await.expect("written");
    let notice = written[0].notice.clone().expect("a notice for the raise");
    assert_eq!(notice.severity, notifier::Severity::High);
    assert_eq!(notice.evidence.len(), 1);
    assert_eq!(notice.explanation, "SpO2 87 under 90");
    let uid = written[0].alert_uid.clone().expect("uid");
    let outbox = record.outbox().await.expect("outbox");
    let rows = outbox.for_alert(&uid).await.expect("rows");
    assert_eq!(
        addresses(&rows),
        [NURSE],
        "audience nurse: the patient is not told"
    );
    // Resolving it enqueues the resolution for the nurse, in its own transaction.
    let resolved = record
        .write_alerts(&[AlertWrite::Resolve {
            patient: key(),
            rule: "spo2-low".into(),
            at: now + time::Duration::minutes(5),
            payload: serde_json::json!({"severity": "high", "evidence": [], "text": "cleared"}),
        }])
        .await
        .expect("resolved");
    assert_eq!(
        resolved[0].notice.as_ref().map(|n| n.kind),
        Some(notifier::NoticeKind::Resolved)
    );
    assert_eq!(outbox.for_alert(&uid).await.expect("rows").len(), 2);

    break_outbox(&db.url).await;
    let later = now + time::Duration::minutes(10);
    record
        .write_alerts(&[raise(later)])
        .await
        .expect_err("the outbox insert fails, so the transaction fails");
    let open: Vec<StoredAlert> = record
        .alerts_for_patient(&key())
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.state == AlertState::Open)
        .collect();
    assert!(
        open.is_empty(),
        "no alert committed without its notifications"
    );
}

/// A GET with an API token, as a ward system or a signed-in nurse's browser would read.
async fn read_as(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn a_notification_given_up_on_is_kept_and_shown_in_the_console(db: Db) {
    // No `[smtp]`: every email fails permanently ("email channel not configured").
    let mut config = notifier_config(1, false);
    config.smtp = None;
    let runtime = config.build().expect("config builds");
    let record = db.open(&runtime).await;
    registry(&record).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("t");
    let mut both = raise(now);
    if let AlertWrite::Open { alert, .. } = &mut both {
        alert.audience = rules::Audience::Both;
        alert.patient_text = Some("Your oxygen level is lower than usual.".into());
    }
    let written = record.write_alerts(&[both]).await.expect("written");
    let uid = written[0].alert_uid.clone().expect("uid");

    let deadline = tokio::time::Instant::now() + WAIT;
    let failed = loop {
        let failed = record.failed_notifications(20).await.expect("failed");
        if failed.len() >= 2 {
            break failed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both notifications given up on: {failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|n| n.alert == uid && n.status == "failed")
    );
    assert!(
        failed
            .iter()
            .all(|n| n.last_error.as_deref() == Some("email channel not configured")),
        "{failed:?}"
    );
    // Kept in the outbox with the attempt that failed, never dropped.
    let outbox = record.outbox().await.expect("outbox");
    for n in outbox.for_alert(&uid).await.expect("rows") {
        assert_eq!(n.status, NotificationStatus::Failed);
        let attempts = outbox.attempts(n.row.id).await.expect("attempts");
        assert_eq!(
            attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
            [notifier::AttemptOutcome::Permanent]
        );
    }

    // The console shows them to the nurse: in the API, on the alert, and on the inbox page.
    record
        .create_user(
            "nurse.dee",
            ingest::record::Role::Nurse,
            "correct horse battery",
            &AUDIT,
        )
        .await
        .expect("user");
    let (token, _) = record
        .create_token("nurse.dee", "ward-board", None, &AUDIT)
        .await
        .expect("token");
    let app = router(HttpState::new(
        record.clone(),
        Arc::new(IngestStats::default()),
    ));
    let (status, body) = read_as(&app, &token, "/api/v1/notifications/failed").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{body}");
    assert!(
        !body.contains(NURSE) && !body.contains(PATIENT),
        "no addresses: {body}"
    );
    let (status, body) = read_as(&app, &token, &format!("/api/v1/alerts/{uid}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alert: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(alert["escalation"], "failed", "{body}");
    let (status, page) = read_as(&app, &token, "/console/alerts").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Notifications that could not be delivered"),
        "{page}"
    );
    assert!(
        page.contains("To <strong>nurse.dee (tier 1)</strong> by email"),
        "{page}"
    );
    assert!(
        page.contains("To <strong>the patient</strong> by email"),
        "{page}"
    );
    assert!(page.contains("email channel not configured"), "{page}");
    shutdown.cancel();
    running.join().await;
}

/// No email configured (attempts fail for good, which is all these tests need to see that a
/// row was dispatched) and escalation of `high` alerts after `ack_within`, `repeats` times.
fn escalating_runtime(ack_within: &str, repeats: u32, group_wait: Duration) -> notifier::Runtime {
    let mut config = notifier_config(1, false);
    config.smtp = None;
    config.escalation = serde_json::from_str(&format!(
        r#"{{ "high": {{ "ack_within": "{ack_within}", "repeats": {repeats} }} }}"#
    ))
    .expect("escalation policy");
    config.grouping.group_wait = group_wait;
    config.build().expect("config builds")
}

/// Waits until the alert's outbox rows satisfy `done`, and returns them.
async fn rows_when(
    record: &Record,
    uid: &str,
    what: &str,
    done: impl Fn(&[notifier::Notification]) -> bool,
) -> Vec<notifier::Notification> {
    let outbox = record.outbox().await.expect("outbox");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = outbox.for_alert(uid).await.expect("rows");
        if done(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_step(rows: &[notifier::Notification], tier: usize, round: u32) -> bool {
    rows.iter()
        .any(|n| n.row.step == notifier::Step { tier, round })
}

async fn escalation_resumes_after_a_restart_without_repeating_a_step(db: Db) {
    // Tier 1 three seconds after the raise, once more three seconds later, then stop.
    let ack_within = Duration::from_secs(3);
    let runtime = escalating_runtime("3s", 1, Duration::from_millis(200));
    let record = db.open(&runtime).await;
    registry(&record).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("t");
    let written = record.write_alerts(&[raise(now)]).await.expect("written");
    let uid = written[0].alert_uid.clone().expect("uid");
    rows_when(&record, &uid, "tier 1 told", |rows| has_step(rows, 1, 0)).await;
    // The process stops once tier 1 has been told, and is down for a second.
    shutdown.cancel();
    running.join().await;
    record.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let record = db.open(&runtime).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    assert_eq!(running.retracked, 1);
    rows_when(&record, &uid, "the repeat", |rows| has_step(rows, 1, 1)).await;
    // Anything doubled, or a repeat counted afresh, would come within another ack_within.
    tokio::time::sleep(ack_within + Duration::from_secs(1)).await;
    let rows = record
        .outbox()
        .await
        .expect("outbox")
        .for_alert(&uid)
        .await
        .expect("rows");
    let steps: Vec<(notifier::Step, &str)> = rows
        .iter()
        .map(|n| (n.row.step, n.row.address.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (notifier::Step::FIRST, NURSE),
            (notifier::Step { tier: 1, round: 0 }, CHARGE),
            (notifier::Step { tier: 1, round: 1 }, CHARGE),
        ],
        "each step enqueued once across the restart"
    );
    // The repeat came ack_within after tier 1 was told, as without the restart (the second
    // of downtime would put it at least a second later if timed from the restart).
    let gap = rows[2]
        .row
        .planned_at
        .duration_since(rows[1].row.planned_at);
    let gap = Duration::try_from(gap).expect("the repeat is later");
    assert!(
        gap >= ack_within && gap < ack_within + Duration::from_millis(600),
        "repeat {gap:?} after tier 1"
    );
    shutdown.cancel();
    running.join().await;
}

/// An alert raised with the notifier running, once its tier-1 escalation (the charge nurse) is
/// planned and still waiting: tier 1 a second after the raise, and every nurse message waits
/// 3 s for more alerts.
struct Waiting {
    record: Record,
    shutdown: CancellationToken,
    running: notify::Running,
    now: OffsetDateTime,
    uid: String,
    rows: Vec<notifier::Notification>,
}

async fn tier_one_waiting(db: &Db) -> Waiting {
    // Tier 1 a second after the raise; every nurse message waits 3 s for more alerts.
    let runtime = escalating_runtime("1s", 0, Duration::from_secs(3));
    let record = db.open(&runtime).await;
    registry(&record).await;
    let shutdown = CancellationToken::new();
    let running = notify::start(&record, &runtime, shutdown.clone())
        .await
        .expect("notifier starts");
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).expect("t");
    let written = record.write_alerts(&[raise(now)]).await.expect("written");
    let uid = written[0].alert_uid.clone().expect("uid");
    let rows = rows_when(&record, &uid, "tier 1 planned", |rows| has_step(rows, 1, 0)).await;
    Waiting {
        record,
        shutdown,
        running,
        now,
        uid,
        rows,
    }
}

async fn an_acknowledged_alerts_escalation_still_waiting_is_cancelled_not_sent(db: Db) {
    let Waiting {
        record,
        shutdown,
        running,
        uid,
        rows,
        ..
    } = tier_one_waiting(&db).await;
    assert!(
        rows.iter()
            .all(|n| n.status == NotificationStatus::Pending && n.attempts == 0),
        "both still waiting out group_wait: {rows:?}"
    );
    // The charge nurse's row waits; the day nurse acknowledges in the console.
    let stopped = running
        .escalator
        .acknowledge(notifier::Acknowledgement {
            alert: AlertId::new(uid.clone()).expect("id"),
            by: notifier::AckSource::Console {
                user: "nurse.dee".into(),
            },
            at: Timestamp::now(),
        })
        .await
        .expect("acknowledged");
    assert!(stopped);

    // Past every group_wait: the raise went out (here: was attempted), the escalation not.
    let rows = rows_when(&record, &uid, "the raise attempted", |rows| {
        rows.iter()
            .any(|n| n.row.step == notifier::Step::FIRST && n.attempts > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outbox = record.outbox().await.expect("outbox");
    let charge = rows
        .iter()
        .find(|n| n.row.address == CHARGE)
        .expect("the charge nurse's row");
    let charge = outbox
        .get(charge.row.id)
        .await
        .expect("get")
        .expect("kept, not deleted");
    assert_eq!(charge.status, NotificationStatus::Cancelled, "{charge:?}");
    assert_eq!(
        charge.last_error.as_deref(),
        Some("cancelled: alert acknowledged")
    );
    assert!(
        outbox
            .attempts(charge.row.id)
            .await
            .expect("attempts")
            .is_empty(),
        "never dispatched"
    );
    // The console shows what happened to it.
    let alert = record
        .inbox_alert(&uid)
        .await
        .expect("inbox")
        .expect("the alert");
    let shown = alert
        .notifications
        .iter()
        .find(|n| n.id == charge.row.id.to_string())
        .expect("listed on the alert");
    assert_eq!(shown.status, "cancelled");
    assert_eq!(
        shown.last_error.as_deref(),
        Some("cancelled: alert acknowledged")
    );
    shutdown.cancel();
    running.join().await;
}

/// The escalation of an alert that resolves is cancelled in the resolve's transaction: with
/// the escalator stopped (as if the process died between the commit and telling it), the
/// charge nurse's row still waiting is cancelled, never sent.
async fn a_resolved_alerts_waiting_escalation_is_cancelled_with_the_resolve(db: Db) {
    let Stopped {
        record,
        outbox,
        now,
        charge,
        first,
        ..
    } = stopped_with_tier_one_waiting(&db).await;
    let resolved = record
        .write_alerts(&[AlertWrite::Resolve {
            patient: key(),
            rule: "spo2-low".into(),
            at: now + time::Duration::minutes(1),
            payload: serde_json::json!({}),
        }])
        .await
        .expect("resolved");
    assert_eq!(resolved.len(), 1);
    let row = outbox.get(charge).await.expect("get").expect("kept");
    assert_eq!(row.status, NotificationStatus::Cancelled, "{row:?}");
    assert_eq!(row.last_error.as_deref(), Some("cancelled: alert resolved"));
    assert_first_kept(&outbox, first).await;
}

/// [`tier_one_waiting`], then the escalator and dispatcher stopped: nothing but the record's
/// own transactions can cancel the charge nurse's row, still pending.
struct Stopped {
    record: Record,
    outbox: ingest::notify::RecordOutbox,
    now: OffsetDateTime,
    uid: String,
    /// The charge nurse's (tier 1) row.
    charge: notifier::NotificationId,
    /// The alert's first notification.
    first: notifier::NotificationId,
}

async fn stopped_with_tier_one_waiting(db: &Db) -> Stopped {
    let w = tier_one_waiting(db).await;
    let row = |f: &dyn Fn(&notifier::Notification) -> bool, what: &str| {
        w.rows.iter().find(|n| f(n)).expect(what).row.id
    };
    let charge = row(&|n| n.row.address == CHARGE, "the charge nurse's row");
    let first = row(
        &|n| n.row.step == notifier::Step::FIRST,
        "the first notification",
    );
    w.shutdown.cancel();
    w.running.join().await;
    let outbox = w.record.outbox().await.expect("outbox");
    assert_eq!(
        outbox.get(charge).await.expect("get").expect("row").status,
        NotificationStatus::Pending
    );
    Stopped {
        record: w.record,
        outbox,
        now: w.now,
        uid: w.uid,
        charge,
        first,
    }
}

/// The first notification is not an escalation: cancelling leaves it alone.
async fn assert_first_kept(outbox: &ingest::notify::RecordOutbox, first: notifier::NotificationId) {
    assert_ne!(
        outbox.get(first).await.expect("get").expect("row").status,
        NotificationStatus::Cancelled
    );
}

/// An acknowledgement is recorded with the cancelling of its waiting escalation, in one
/// transaction: with the escalator stopped (as if the process died right after the
/// acknowledgement was written), the charge nurse's row still waiting is cancelled, never
/// sent, and a restarted notifier does not resume the alert.
async fn an_acknowledgement_cancels_the_waiting_escalation_with_its_audit_entry(db: Db) {
    let Stopped {
        record,
        outbox,
        uid,
        charge,
        first,
        ..
    } = stopped_with_tier_one_waiting(&db).await;
    let target = format!("alert:{uid}");
    let cancelled = record
        .record_acknowledgement(&AUDIT, "alert.acknowledge", &target, &uid)
        .await
        .expect("recorded");
    assert_eq!(cancelled, 1, "the charge nurse's row");
    let row = outbox.get(charge).await.expect("get").expect("kept");
    assert_eq!(row.status, NotificationStatus::Cancelled, "{row:?}");
    assert_eq!(
        row.last_error.as_deref(),
        Some("cancelled: alert acknowledged")
    );
    let audit = record.audit_log(Some(&target), 10).await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "alert.acknowledge");
    assert!(
        record
            .open_unacknowledged_alerts()
            .await
            .expect("open")
            .iter()
            .all(|a| a.uid != uid),
        "not resumed after a restart"
    );
    assert_first_kept(&outbox, first).await;
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Db::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::Db::postgres().await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

both!(
    an_alert_never_commits_without_its_notifications,
    an_alert_commits_with_its_notifications_and_the_on_duty_nurse_is_emailed,
    a_crash_between_commit_and_send_sends_exactly_once_after_restart,
    the_signed_link_acknowledges_is_audited_and_stops_escalation,
    a_notification_given_up_on_is_kept_and_shown_in_the_console,
    escalation_resumes_after_a_restart_without_repeating_a_step,
    an_acknowledged_alerts_escalation_still_waiting_is_cancelled_not_sent,
    a_resolved_alerts_waiting_escalation_is_cancelled_with_the_resolve,
    an_acknowledgement_cancels_the_waiting_escalation_with_its_audit_entry,
);
