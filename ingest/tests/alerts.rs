//! Rules inside ingest, against a real Mosquitto and a real record (SQLite and PostgreSQL):
//! an alert is committed with the readings that raised it, updated and resolved in place,
//! never raised twice (duplicates, restarts, another node), and never by a doubtful reading.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::config::RulesConfig;
use ingest::consume::{Consumer, ConsumerSettings, IngestStats, Rules, client_options};
use ingest::record::{
    AlertEventKind, AlertState, AlertWrite, Audit, NewBinding, NewPatient, OpenAlert, Record,
    StoredAlert,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use testkit::{Mosquitto, PgDatabase, unavailable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vitals::*;

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "alert test set-up",
};
const TOPIC: &str = "rpm/v1/gw/gw-1/readings";
const STATUS_FILTER: &str = "rpm/v1/gw/+/status";
const SILENT: &str = "gateway-silent";

fn key() -> PatientKey {
    PatientKey::new("pk-1").expect("valid")
}

fn gw() -> GatewayId {
    GatewayId::new("gw-1").expect("valid")
}

fn device() -> DeviceId {
    "eui64:0011223344556677".parse().expect("valid")
}

fn rules_config() -> RulesConfig {
    RulesConfig {
        profiles_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/profiles").into(),
        ..RulesConfig::default()
    }
}

/// A COPD patient (no profile id: the condition picks the `copd` profile) with an oximeter.
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
fn spo2(minute: i64, value: &str, flags: Flags) -> Reading {
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
        flags,
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

async fn start(broker: &Mosquitto, record: Record) -> Node {
    start_ticking(broker, record, RulesConfig::default().tick_every).await
}

/// [`start`] with time-driven rules run every `tick_every`.
async fn start_ticking(broker: &Mosquitto, record: Record, tick_every: Duration) -> Node {
    let rules = Rules::load(&RulesConfig {
        tick_every,
        ..rules_config()
    })
    .expect("the shipped profiles load");
    start_node(broker, record, Some(rules)).await
}

/// A node that stores readings and records statuses without evaluating rules.
async fn start_without_rules(broker: &Mosquitto, record: Record) -> Node {
    start_node(broker, record, None).await
}

async fn start_node(broker: &Mosquitto, record: Record, rules: Option<Rules>) -> Node {
    let config = BrokerConfig::new(broker.url().parse().expect("url"));
    let options = client_options(&config, "ingest-alerts", 32).expect("options");
    let cap = options.request_channel_capacity();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
    // Statuses are subscribed to after readings; a status published before that would
    // arrive as a retained copy, which hears nothing.
    let status_subscriptions = broker.log().matches(STATUS_FILTER).count();
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
    let task = match rules {
        Some(rules) => tokio::spawn(consumer.run_with(rules)),
        None => tokio::spawn(consumer.run()),
    };
    let node = Node {
        stats,
        shutdown,
        task,
    };
    wait_for("the consumer's subscription", || {
        broker
            .log()
            .matches("$share/ingest/rpm/v1/gw/+/readings")
            .count()
            >= 1
            && broker.log().matches(STATUS_FILTER).count() > status_subscriptions
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

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one message and waits until the node has committed it.
async fn send(client: &AsyncClient, node: &Node, payload: Vec<u8>) {
    let before = node.stats.messages.load(Ordering::Relaxed);
    client
        .publish(TOPIC, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
    let stats = node.stats.clone();
    wait_for("the message committed", || {
        stats.messages.load(Ordering::Relaxed) > before
    })
    .await;
}

async fn spo2_low(record: &Record) -> Vec<StoredAlert> {
    record
        .alerts_for_patient(&key())
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.rule == "spo2-low")
        .collect()
}

async fn event_kinds(record: &Record, alert: i64) -> Vec<AlertEventKind> {
    record
        .alert_events_for_patient(&key())
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.alert_id == Some(alert))
        .map(|e| e.kind)
        .collect()
}

fn evidence_readings(a: &StoredAlert) -> Vec<String> {
    a.explanation["evidence"]
        .as_array()
        .expect("evidence array")
        .iter()
        .map(|e| e["reading"].as_str().expect("reading id").to_owned())
        .collect()
}

async fn spo2_low_is_raised_updated_and_resolved_once(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let node = start(&broker, record.clone()).await;
    let client = publisher(&broker).await;

    // One low reading only asks for a repeat (the profile wants 2 of 2 within 15 minutes).
    let first = spo2(0, "89", Flags::EMPTY);
    let second = spo2(5, "89", Flags::EMPTY);
    send(&client, &node, envelope(1, vec![first.clone()])).await;
    assert!(
        spo2_low(&record).await.is_empty(),
        "one low reading raises nothing"
    );
    send(&client, &node, envelope(2, vec![second.clone()])).await;
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1, "two low readings raise one alert");
    let alert = &alerts[0];
    assert_eq!(alert.state, AlertState::Open);
    assert_eq!(alert.severity, "medium");
    assert_eq!(alert.profile, "copd@1");
    assert_eq!(alert.audience, "both");
    assert!(alert.nurse.contains("SpO2 89"), "{}", alert.nurse);
    assert!(alert.patient_text.is_some());
    let evidence = evidence_readings(alert);
    for r in [&first, &second] {
        assert!(
            evidence.contains(&r.id.to_string()),
            "evidence {evidence:?} names {}",
            r.id
        );
    }
    assert_eq!(alert.explanation["context"]["type"], "threshold");
    assert_eq!(
        event_kinds(&record, alert.id).await,
        [AlertEventKind::Raised]
    );

    // A lower third reading escalates the same alert.
    let third = spo2(8, "87", Flags::EMPTY);
    send(&client, &node, envelope(3, vec![third.clone()])).await;
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1, "updated, not duplicated");
    assert_eq!(alerts[0].id, alert.id);
    assert_eq!(alerts[0].severity, "high");
    assert!(evidence_readings(&alerts[0]).contains(&third.id.to_string()));

    // Back to 93 (over the clear level of 92) resolves it.
    let fourth = spo2(12, "93", Flags::EMPTY);
    send(&client, &node, envelope(4, vec![fourth.clone()])).await;
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].state, AlertState::Resolved);
    assert!(alerts[0].resolved_at.is_some());
    assert_eq!(
        event_kinds(&record, alert.id).await,
        [
            AlertEventKind::Raised,
            AlertEventKind::Updated,
            AlertEventKind::Resolved
        ]
    );

    // The same readings again (re-sent after a gateway crash): stored once, nothing new.
    let events = record
        .alert_events_for_patient(&key())
        .await
        .expect("events");
    let duplicates = node.stats.readings_duplicate.load(Ordering::Relaxed);
    send(
        &client,
        &node,
        // The very same readings: `spo2` stamps from the clock, so building them again could
        // cross a second and make new readings.
        envelope(5, vec![first, second, third, fourth]),
    )
    .await;
    assert_eq!(
        node.stats.readings_duplicate.load(Ordering::Relaxed),
        duplicates + 4
    );
    assert_eq!(
        record
            .alert_events_for_patient(&key())
            .await
            .expect("events"),
        events,
        "duplicates raise nothing"
    );
    assert_eq!(spo2_low(&record).await.len(), 1);
    node.stop().await;
}

async fn a_restarted_consumer_rebuilds_state_and_does_not_raise_twice(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let client = publisher(&broker).await;
    let node = start(&broker, record.clone()).await;
    send(
        &client,
        &node,
        envelope(
            1,
            vec![spo2(0, "89", Flags::EMPTY), spo2(5, "89", Flags::EMPTY)],
        ),
    )
    .await;
    assert_eq!(
        spo2_low(&record).await.len(),
        1,
        "raised before the restart"
    );
    node.stop().await;

    // A new consumer on the same record: it must know the alert is open and where the
    // readings stand, from the record alone.
    let node = start(&broker, record.clone()).await;
    let stats = node.stats.clone();
    wait_for("the patient enrolled from the record", || {
        stats.rules_rebuilds.load(Ordering::Relaxed) >= 1
    })
    .await;
    send(
        &client,
        &node,
        envelope(2, vec![spo2(8, "89", Flags::EMPTY)]),
    )
    .await;
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1, "no second alert after the restart");
    assert_eq!(alerts[0].state, AlertState::Open);
    // Only a node that rebuilt knows there is an alert to resolve.
    send(
        &client,
        &node,
        envelope(3, vec![spo2(12, "93", Flags::EMPTY)]),
    )
    .await;
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].state,
        AlertState::Resolved,
        "the restarted consumer resolved the alert it rebuilt"
    );
    assert_eq!(
        event_kinds(&record, alerts[0].id).await,
        [AlertEventKind::Raised, AlertEventKind::Resolved]
    );
    node.stop().await;
}

async fn a_flagged_reading_raises_no_alert(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let node = start(&broker, record.clone()).await;
    let client = publisher(&broker).await;
    let mut flags = Flags::EMPTY;
    flags.insert(Flag::LowPerfusion);
    send(
        &client,
        &node,
        envelope(1, vec![spo2(0, "84", flags), spo2(3, "84", flags)]),
    )
    .await;
    assert_eq!(node.stats.readings_stored.load(Ordering::Relaxed), 2);
    assert!(
        record
            .alerts_for_patient(&key())
            .await
            .expect("alerts")
            .is_empty(),
        "doubtful readings raise no alert"
    );
    let events = record
        .alert_events_for_patient(&key())
        .await
        .expect("events");
    assert_eq!(events.len(), 2, "one repeat prompt per doubtful reading");
    for e in &events {
        assert_eq!(e.kind, AlertEventKind::RepeatRequested);
        assert_eq!(e.alert_id, None);
        assert_eq!(e.payload["reason"], "device_quality");
        assert_eq!(e.payload["flags"][0], "low_perfusion");
    }
    node.stop().await;
}

/// Two nodes raising the same alert: the partial unique index keeps one open row, and the
/// second raise is stored as an update.
async fn the_database_keeps_one_open_alert_per_patient_and_rule(record: Record) {
    registry(&record).await;
    let now = OffsetDateTime::now_utc();
    let raise = |opened_at: OffsetDateTime, severity| AlertWrite::Open {
        patient: key(),
        raised: true,
        alert: OpenAlert {
            rule: "spo2-low".into(),
            profile: "copd@1".into(),
            severity,
            audience: rules::Audience::Nurse,
            opened_at,
            at: opened_at,
            explanation: serde_json::json!({"evidence": []}),
            nurse: "SpO2 low".into(),
            patient_text: None,
        },
    };
    let a = record
        .write_alerts(&[raise(now, rules::Severity::Medium)])
        .await
        .expect("first node");
    let b = record
        .write_alerts(&[raise(
            now + time::Duration::seconds(1),
            rules::Severity::High,
        )])
        .await
        .expect("second node: not an error");
    assert_eq!(a[0].kind, AlertEventKind::Raised);
    assert_eq!(b[0].kind, AlertEventKind::Updated);
    assert!(b[0].raised_elsewhere);
    assert_eq!(a[0].alert_id, b[0].alert_id);
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].severity, "high");
    // Once resolved, the rule may open a new alert.
    let resolved = record
        .write_alerts(&[AlertWrite::Resolve {
            patient: key(),
            rule: "spo2-low".into(),
            at: now + time::Duration::minutes(5),
            payload: serde_json::json!({}),
        }])
        .await
        .expect("resolve");
    assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
    record
        .write_alerts(&[raise(
            now + time::Duration::minutes(9),
            rules::Severity::Medium,
        )])
        .await
        .expect("a new episode");
    let alerts = spo2_low(&record).await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[1].state, AlertState::Open);
}

#[test]
fn a_bad_profile_refuses_to_start_with_the_precise_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("default.toml"),
        "id = \"default\"\nversion = 1\n[[rule]]\nid = \"spo2-low\"\nkind = \"below\"\n\
         measure = \"spo2\"\nraise = 92\nclear = 90\nseverity = \"high\"\nnurse = \"x\"\n",
    )
    .expect("write");
    let err = Rules::load(&RulesConfig {
        profiles_dir: dir.path().into(),
        ..RulesConfig::default()
    })
    .expect_err("clear on the wrong side of raise");
    let text = err.to_string();
    assert!(text.contains("default.toml"), "{text}");
    assert!(text.contains("spo2-low"), "{text}");
    let missing = Rules::load(&RulesConfig {
        profiles_dir: dir.path().join("nowhere"),
        ..RulesConfig::default()
    })
    .expect_err("no directory");
    assert!(missing.to_string().contains("nowhere"), "{missing}");
}

#[test]
fn the_shipped_profiles_and_override_load() {
    Rules::load(&rules_config()).expect("fixtures/profiles load");
}

/// A second patient, `pk-2`, with an oximeter on their own hub, `gw-2`.
async fn second_hub(record: &Record) -> (PatientKey, GatewayId) {
    let (key, gateway) = (
        PatientKey::new("pk-2").expect("valid"),
        GatewayId::new("gw-2").expect("valid"),
    );
    let device: DeviceId = "eui64:0011223344556688".parse().expect("valid");
    record
        .create_patient(
            &NewPatient {
                key: key.clone(),
                display_name: None,
                condition: "copd".into(),
                profile_id: None,
                care_team: None,
            },
            &AUDIT,
        )
        .await
        .expect("patient");
    record
        .create_gateway(&gateway, &AUDIT)
        .await
        .expect("gateway");
    record
        .create_device(&DeviceIdentity::new(device), &AUDIT)
        .await
        .expect("device");
    record
        .bind(
            &NewBinding {
                gateway: gateway.clone(),
                device,
                patient: key.clone(),
                user_index: None,
                valid_from: OffsetDateTime::UNIX_EPOCH,
            },
            &AUDIT,
        )
        .await
        .expect("binding");
    (key, gateway)
}

/// Moves every patient's enrolment `hours` into the past, behind the record's back: the
/// silent-gateway clock starts at enrolment, and the consumer's clock cannot be moved.
async fn enrolled_hours_ago(url: &str, hours: i64) {
    let sql = format!(
        "UPDATE patients SET created_at = created_at - {}",
        hours * 3_600_000_000
    );
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        sqlx::query(&sql).execute(&pool).await.expect("backdate");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query(&sql).execute(&pool).await.expect("backdate");
        pool.close().await;
    }
}

/// The hub publishes its retained `online` status, as it does every minute while
/// connected; returns once the node has recorded it.
async fn hub_online(client: &AsyncClient, node: &Node, gateway: &GatewayId) {
    let before = node.stats.statuses.load(Ordering::Relaxed);
    let status = GatewayStatus {
        v: 1,
        gateway: gateway.clone(),
        state: GatewayState::Online,
        at: OffsetDateTime::now_utc(),
        queue: None,
        devices: Vec::new(),
        config_version: None,
        config_rejected: None,
        software: None,
    };
    client
        .publish(
            Topic::new(gateway.clone(), Channel::Status).to_string(),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&status).expect("json"),
        )
        .await
        .expect("publish");
    let stats = node.stats.clone();
    wait_for("the status recorded", || {
        stats.statuses.load(Ordering::Relaxed) > before
    })
    .await;
}

async fn silent_alerts(record: &Record, key: &PatientKey) -> Vec<StoredAlert> {
    record
        .alerts_for_patient(key)
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.rule == SILENT)
        .collect()
}

/// Waits until `key` has `n` silent-gateway alerts, the last in `state`.
async fn wait_for_silent(record: &Record, key: &PatientKey, n: usize, state: AlertState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = silent_alerts(record, key).await;
        if alerts.len() == n && alerts.last().is_some_and(|a| a.state == state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} silent-gateway alerts for {key}, the last {state:?}: \
             {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TICK: Duration = Duration::from_millis(100);

/// Real time for several ticks: what a tick would raise has been raised by then.
async fn several_ticks() {
    tokio::time::sleep(TICK * 10).await;
}

async fn a_hub_sending_statuses_is_not_silent_while_its_patient_does_not_measure(
    record: Record,
    url: String,
) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let (quiet, quiet_gw) = second_hub(&record).await;
    // Enrolled 25 hours ago; neither has measured since.
    enrolled_hours_ago(&url, 25).await;
    let client = publisher(&broker).await;
    // pk-1's hub is online and says so; pk-2's has not been heard from at all.
    let node = start_ticking(&broker, record.clone(), Duration::from_secs(3600)).await;
    hub_online(&client, &node, &gw()).await;
    node.stop().await;
    assert!(
        record
            .gateway(&gw())
            .await
            .expect("gateway")
            .expect("registered")
            .last_seen_at
            .is_some(),
        "a live status is when the hub was last seen"
    );
    assert_eq!(
        record
            .gateway(&quiet_gw)
            .await
            .expect("gateway")
            .expect("registered")
            .last_seen_at,
        None
    );
    // A restarted node (rebuilt from the record) ticks: one tick covers every patient, so once
    // pk-2's alert is there, pk-1 was judged too.
    let node = start_ticking(&broker, record.clone(), TICK).await;
    wait_for_silent(&record, &quiet, 1, AlertState::Open).await;
    assert!(
        silent_alerts(&record, &key()).await.is_empty(),
        "no 'hub silent' for a patient whose hub sent a status just now"
    );
    node.stop().await;
}

async fn a_status_resolves_an_open_silent_gateway_alert(record: Record, url: String) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let (quiet, _) = second_hub(&record).await;
    enrolled_hours_ago(&url, 25).await;
    let client = publisher(&broker).await;
    let node = start_ticking(&broker, record.clone(), TICK).await;
    wait_for_silent(&record, &key(), 1, AlertState::Open).await;
    wait_for_silent(&record, &quiet, 1, AlertState::Open).await;
    hub_online(&client, &node, &gw()).await;
    wait_for_silent(&record, &key(), 1, AlertState::Resolved).await;
    several_ticks().await;
    let alerts = silent_alerts(&record, &key()).await;
    assert_eq!(
        alerts.len(),
        1,
        "not raised again: the hub was heard just now"
    );
    assert_eq!(
        event_kinds(&record, alerts[0].id).await,
        [AlertEventKind::Raised, AlertEventKind::Resolved]
    );
    let quiet_alerts = silent_alerts(&record, &quiet).await;
    assert_eq!(quiet_alerts.len(), 1);
    assert_eq!(
        quiet_alerts[0].state,
        AlertState::Open,
        "pk-2's hub is still silent"
    );
    node.stop().await;
}

async fn a_backlog_upload_hears_the_hub_now(record: Record, url: String) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    enrolled_hours_ago(&url, 48).await;
    let client = publisher(&broker).await;
    let node = start_ticking(&broker, record.clone(), TICK).await;
    wait_for_silent(&record, &key(), 1, AlertState::Open).await;
    // The hub comes back with a reading it queued 30 hours ago.
    let mut old = spo2(0, "95", Flags::EMPTY);
    old.measured_at -= time::Duration::hours(29);
    old.received_at = old.measured_at;
    send(&client, &node, envelope(1, vec![old.with_computed_id()])).await;
    wait_for_silent(&record, &key(), 1, AlertState::Resolved).await;
    several_ticks().await;
    assert_eq!(
        silent_alerts(&record, &key()).await.len(),
        1,
        "not raised again: the upload arrived just now, however old its readings"
    );
    node.stop().await;
}

async fn a_retained_status_replayed_on_subscription_hears_nothing(record: Record, _url: String) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let client = publisher(&broker).await;
    // The hub's last status, retained by the broker, perhaps from days ago: a node that
    // subscribes now is handed a copy, which says nothing about the hub now.
    let node = start_ticking(&broker, record.clone(), Duration::from_secs(3600)).await;
    hub_online(&client, &node, &gw()).await;
    node.stop().await;
    let before = record
        .gateway(&gw())
        .await
        .expect("gateway")
        .expect("registered");
    let node = start_ticking(&broker, record.clone(), TICK).await;
    let stats = node.stats.clone();
    wait_for("the retained status replayed", || {
        stats.statuses.load(Ordering::Relaxed) >= 1
    })
    .await;
    let after = record
        .gateway(&gw())
        .await
        .expect("gateway")
        .expect("registered");
    assert_eq!(
        after.last_seen_at, before.last_seen_at,
        "a replayed status is not a sighting"
    );
    node.stop().await;
}

/// How the hub shows it is back.
#[derive(Clone, Copy, Debug)]
enum Heard {
    /// A live `online` status.
    Status,
    /// An upload of readings.
    Reading,
}

/// pk-1's hub has not been heard since enrolment, 25 hours ago: a node ticking every [`TICK`]
/// raises "hub silent" for pk-1, and is stopped cleanly.
async fn silent_before_a_restart(broker: &Mosquitto, record: &Record, url: &str) -> StoredAlert {
    registry(record).await;
    enrolled_hours_ago(url, 25).await;
    let node = start_ticking(broker, record.clone(), TICK).await;
    wait_for_silent(record, &key(), 1, AlertState::Open).await;
    node.stop().await;
    let alerts = silent_alerts(record, &key()).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        event_kinds(record, alerts[0].id).await,
        [AlertEventKind::Raised]
    );
    alerts[0].clone()
}

/// The hub is heard by a restarted node before any tick: the alert the record holds open is
/// resolved, once. Before the fix the rebuilt engine did not know it was open, so nothing
/// resolved it and the nurse kept seeing a silent hub that was back.
async fn a_hub_heard_after_a_restart_resolves_its_silent_alert(
    record: Record,
    url: String,
    heard: Heard,
) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let client = publisher(&broker).await;
    let raised = silent_before_a_restart(&broker, &record, &url).await;
    // Ticks an hour apart: none runs during the test.
    let node = start_ticking(&broker, record.clone(), Duration::from_secs(3600)).await;
    match heard {
        Heard::Status => hub_online(&client, &node, &gw()).await,
        Heard::Reading => {
            send(
                &client,
                &node,
                envelope(1, vec![spo2(55, "95", Flags::EMPTY)]),
            )
            .await
        }
    }
    wait_for_silent(&record, &key(), 1, AlertState::Resolved).await;
    let alerts = silent_alerts(&record, &key()).await;
    assert_eq!(
        alerts[0].id, raised.id,
        "the alert raised before the restart"
    );
    assert_eq!(
        event_kinds(&record, raised.id).await,
        [AlertEventKind::Raised, AlertEventKind::Resolved],
        "resolved once, not raised again ({heard:?})"
    );
    assert_eq!(node.stats.ticks.load(Ordering::Relaxed), 0, "no tick ran");
    node.stop().await;
}

async fn a_status_after_a_restart_resolves_the_silent_alert(record: Record, url: String) {
    a_hub_heard_after_a_restart_resolves_its_silent_alert(record, url, Heard::Status).await;
}

async fn a_reading_after_a_restart_resolves_the_silent_alert(record: Record, url: String) {
    a_hub_heard_after_a_restart_resolves_its_silent_alert(record, url, Heard::Reading).await;
}

/// Still silent after a restart: the restarted node's ticks neither raise the alert again nor
/// store anything for it (no second raise, no "raised elsewhere" update, no notification:
/// notifications are enqueued only with what is stored).
async fn a_hub_still_silent_after_a_restart_is_not_raised_again(record: Record, url: String) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let raised = silent_before_a_restart(&broker, &record, &url).await;
    let node = start_ticking(&broker, record.clone(), TICK).await;
    let stats = node.stats.clone();
    wait_for("three ticks of the restarted node", || {
        stats.ticks.load(Ordering::Relaxed) >= 3
    })
    .await;
    let alerts = silent_alerts(&record, &key()).await;
    assert_eq!(alerts.len(), 1, "one alert");
    assert_eq!(alerts[0].state, AlertState::Open, "the hub is still silent");
    assert_eq!(
        event_kinds(&record, raised.id).await,
        [AlertEventKind::Raised],
        "not raised again after the restart"
    );
    assert_eq!(
        node.stats.alert_events.load(Ordering::Relaxed),
        0,
        "the restarted node stored nothing"
    );
    node.stop().await;
}

/// The hub is heard while no node evaluates rules (here a node that only stores; in
/// production another node that had not built the alert): a node rebuilding from the record
/// resolves the alert at once, at the time the hub was heard, and a second rebuild finds
/// nothing more to do.
async fn a_silent_alert_whose_hub_was_heard_meanwhile_is_resolved_on_rebuild(
    record: Record,
    url: String,
) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let client = publisher(&broker).await;
    let raised = silent_before_a_restart(&broker, &record, &url).await;
    let plain = start_without_rules(&broker, record.clone()).await;
    hub_online(&client, &plain, &gw()).await;
    plain.stop().await;
    let heard = record
        .gateway(&gw())
        .await
        .expect("gateway")
        .expect("registered")
        .last_seen_at
        .expect("the live status was recorded");
    assert_eq!(
        silent_alerts(&record, &key()).await[0].state,
        AlertState::Open
    );
    for _ in 0..2 {
        let node = start_ticking(&broker, record.clone(), Duration::from_secs(3600)).await;
        let stats = node.stats.clone();
        wait_for("the patient rebuilt", || {
            stats.rules_rebuilds.load(Ordering::Relaxed) >= 1
        })
        .await;
        node.stop().await;
        let alerts = silent_alerts(&record, &key()).await;
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].state, AlertState::Resolved);
        let resolved_at = alerts[0].resolved_at.expect("resolved");
        assert!(
            (resolved_at - heard).abs() < time::Duration::milliseconds(1),
            "resolved when the hub was heard: {resolved_at} vs {heard}"
        );
        assert_eq!(
            event_kinds(&record, raised.id).await,
            [AlertEventKind::Raised, AlertEventKind::Resolved],
            "resolved once"
        );
    }
}

macro_rules! both_with_url {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite:{}", dir.path().join("record.db").display());
                let record = super::Record::connect(&url, 4).await.expect("record");
                super::$name(record, url).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::unavailable(super::PgDatabase::create().await) else {
                    return;
                };
                let record = super::Record::connect(db.url(), 4).await.expect("record");
                super::$name(record, db.url().to_owned()).await;
            }
        }
    )*};
}

both_with_url!(
    a_hub_sending_statuses_is_not_silent_while_its_patient_does_not_measure,
    a_status_resolves_an_open_silent_gateway_alert,
    a_backlog_upload_hears_the_hub_now,
    a_retained_status_replayed_on_subscription_hears_nothing,
    a_status_after_a_restart_resolves_the_silent_alert,
    a_reading_after_a_restart_resolves_the_silent_alert,
    a_hub_still_silent_after_a_restart_is_not_raised_again,
    a_silent_alert_whose_hub_was_heard_meanwhile_is_resolved_on_rebuild,
);

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite:{}", dir.path().join("record.db").display());
                super::$name(super::Record::connect(&url, 4).await.expect("record")).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::unavailable(super::PgDatabase::create().await) else {
                    return;
                };
                super::$name(super::Record::connect(db.url(), 4).await.expect("record")).await;
            }
        }
    )*};
}

both!(
    spo2_low_is_raised_updated_and_resolved_once,
    a_restarted_consumer_rebuilds_state_and_does_not_raise_twice,
    a_flagged_reading_raises_no_alert,
    the_database_keeps_one_open_alert_per_patient_and_rule,
);
