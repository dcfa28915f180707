//! The consumer against a real Mosquitto and a real record (SQLite and PostgreSQL): good
//! readings are stored once, and every kind of bad input gets its dead letter, is counted,
//! and leaves the consumer running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::consume::{Consumer, ConsumerSettings, IngestStats, client_options};
use ingest::record::{Audit, NewBinding, NewPatient, Record};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use testkit::{Mosquitto, PgDatabase, unavailable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vitals::*;

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "test set-up",
};

fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).expect("valid")
}

fn device() -> DeviceId {
    "eui64:0011223344556677".parse().expect("valid")
}

async fn registry(record: &Record) {
    record
        .create_patient(
            &NewPatient {
                key: PatientKey::new("pk-1").expect("valid"),
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
        .create_gateway(&gw("gw-1"), &AUDIT)
        .await
        .expect("gateway");
    record
        .create_gateway(&gw("gw-2"), &AUDIT)
        .await
        .expect("gateway");
    record
        .create_device(&DeviceIdentity::new(device()), &AUDIT)
        .await
        .expect("device");
    record
        .bind(
            &NewBinding {
                gateway: gw("gw-1"),
                device: device(),
                patient: PatientKey::new("pk-1").expect("valid"),
                user_index: None,
                valid_from: OffsetDateTime::UNIX_EPOCH,
            },
            &AUDIT,
        )
        .await
        .expect("binding");
}

fn reading(gateway: &str, n: i64, spo2: &str) -> Reading {
    let at = OffsetDateTime::now_utc() - time::Duration::minutes(60) + time::Duration::seconds(n);
    Reading {
        id: ReadingId(Default::default()),
        seq: n as u64,
        gateway: gw(gateway),
        patient: PatientKey::new("pk-1").expect("valid"),
        device: DeviceIdentity::new(device()),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(spo2.parse().expect("decimal")),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

fn envelope(gateway: &str, seq: u64, readings: Vec<Reading>) -> Vec<u8> {
    Envelope {
        v: 1,
        gateway: gw(gateway),
        seq,
        sent_at: OffsetDateTime::now_utc(),
        readings,
    }
    .encode()
}

struct Harness {
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ingest::consume::ConsumeError>>,
}

fn start(broker: &Mosquitto, record: Record) -> Harness {
    let config = BrokerConfig::new(broker.url().parse().expect("url"));
    let options = client_options(&config, "ingest-test", 32).expect("options");
    let cap = options.request_channel_capacity();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
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
    Harness {
        stats,
        shutdown,
        task: tokio::spawn(consumer.run()),
    }
}

async fn publisher(broker: &Mosquitto) -> AsyncClient {
    let mut opts = MqttOptions::new("test-publisher", "127.0.0.1", broker.port());
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
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

async fn every_bad_input_is_dead_lettered_and_counted(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    registry(&record).await;
    let h = start(&broker, record.clone());
    let client = publisher(&broker).await;
    // Let the consumer subscribe before anything is published.
    wait_for("the consumer's subscription", || {
        broker.log().contains("$share/ingest/rpm/v1/gw/+/readings")
    })
    .await;
    let topic1 = "rpm/v1/gw/gw-1/readings";
    let good = vec![
        reading("gw-1", 1, "97"),
        reading("gw-1", 2, "96"),
        reading("gw-1", 3, "95"),
    ];
    let sends: Vec<(&str, Vec<u8>)> = vec![
        (topic1, envelope("gw-1", 1, good.clone())),
        // The same message again (a re-send after a crash): dedup, flagged as a replay.
        (topic1, envelope("gw-1", 1, good.clone())),
        (topic1, vec![b'x'; MAX_PAYLOAD_BYTES + 1]),
        (topic1, b"{\"v\":1,\xff\xfe}".to_vec()),
        (topic1, envelope("gw-1", 2, good.clone())[..60].to_vec()),
        (topic1, br#"{"v":1,"gateway":"gw-1","seq":"three","sent_at":"2026-11-26T07:00:00Z","readings":[]}"#.to_vec()),
        // An unregistered gateway, on its own topic.
        ("rpm/v1/gw/gw-9/readings", envelope("gw-9", 1, vec![reading("gw-9", 4, "97")])),
        // gw-1's envelope on gw-2's topic: impersonation.
        ("rpm/v1/gw/gw-2/readings", envelope("gw-1", 3, vec![reading("gw-1", 5, "97")])),
        // gw-2 is registered but the device is not bound to it.
        ("rpm/v1/gw/gw-2/readings", envelope("gw-2", 1, vec![reading("gw-2", 6, "97")])),
        // One good and one impossible reading in one envelope: the good one is stored.
        (topic1, envelope("gw-1", 4, vec![reading("gw-1", 7, "94"), reading("gw-1", 8, "140")])),
    ];
    // A reading from the future.
    let mut future = reading("gw-1", 9, "97");
    future.measured_at = OffsetDateTime::now_utc() + time::Duration::hours(2);
    future.received_at = future.measured_at;
    let future = future.with_computed_id();
    let mut sends = sends;
    sends.push((topic1, envelope("gw-1", 5, vec![future])));
    let count = sends.len() as u64;
    for (topic, payload) in sends {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let stats = h.stats.clone();
    wait_for("every message processed", || {
        stats.messages.load(Ordering::Relaxed) >= count
    })
    .await;

    assert_eq!(
        h.stats.readings_stored.load(Ordering::Relaxed),
        4,
        "3 good + 1 good beside a bad one"
    );
    assert_eq!(h.stats.readings_duplicate.load(Ordering::Relaxed), 3);
    assert_eq!(h.stats.replays.load(Ordering::Relaxed), 1);
    assert_eq!(record.count_readings().await.expect("count"), 4);
    let expected = [
        (RejectReason::PayloadTooLarge, 1),
        (RejectReason::NotUtf8, 1),
        (RejectReason::MalformedJson, 1),
        (RejectReason::Schema, 1),
        (RejectReason::UnknownGateway, 1),
        (RejectReason::GatewayMismatch, 1),
        (RejectReason::UnboundDevice, 1),
        (RejectReason::OutOfRange, 1),
        (RejectReason::ClockSanity, 1),
    ];
    let stored = record.dead_letter_counts().await.expect("counts");
    for (reason, n) in expected {
        assert_eq!(h.stats.rejected(reason), n, "counted: {reason:?}");
        assert_eq!(
            stored.get(&reason).copied().unwrap_or(0),
            n,
            "dead-lettered: {reason:?}"
        );
    }
    assert_eq!(h.stats.rejected_total(), expected.len() as u64);
    let letters = record.dead_letters(100).await.expect("dead letters");
    let oversized = letters
        .iter()
        .find(|d| d.reason == RejectReason::PayloadTooLarge)
        .expect("oversized letter");
    assert!(
        oversized.payload.len() <= ingest::record::MAX_DEAD_LETTER_PAYLOAD,
        "payload capped"
    );

    // Still running: a good message after the barrage is stored.
    client
        .publish(
            topic1,
            QoS::AtLeastOnce,
            false,
            envelope("gw-1", 6, vec![reading("gw-1", 10, "93")]),
        )
        .await
        .expect("publish");
    wait_for("the next good reading", || {
        stats.readings_stored.load(Ordering::Relaxed) == 5
    })
    .await;
    h.shutdown.cancel();
    h.task.await.expect("joined").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_stops_the_consumer_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("record.db").display());
    every_bad_input_is_dead_lettered_and_counted(Record::connect(&url, 4).await.expect("record"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_stops_the_consumer_on_postgresql() {
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    every_bad_input_is_dead_lettered_and_counted(
        Record::connect(db.url(), 4).await.expect("record"),
    )
    .await;
}

/// A clean stop acknowledges what it committed: the broker does not send it again to the
/// next session (a redelivery would show as a duplicate reading or a second message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_acknowledges_its_last_batch() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("record.db").display());
    let record = Record::connect(&url, 4).await.expect("record");
    registry(&record).await;
    let client = publisher(&broker).await;
    let topic = "rpm/v1/gw/gw-1/readings";
    for round in 1..=10u64 {
        let h = start(&broker, record.clone());
        wait_for("the consumer's subscription", || {
            broker
                .log()
                .matches("$share/ingest/rpm/v1/gw/+/readings")
                .count() as u64
                >= round
        })
        .await;
        let n = round as i64;
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                envelope("gw-1", round, vec![reading("gw-1", n, "97")]),
            )
            .await
            .expect("publish");
        let stats = h.stats.clone();
        wait_for("the reading committed", || {
            stats.messages.load(Ordering::Relaxed) >= 1
        })
        .await;
        // Stopped the moment the batch is committed, before its acknowledgement is sent.
        h.shutdown.cancel();
        h.task.await.expect("joined").expect("clean stop");
        assert_eq!(
            h.stats.messages.load(Ordering::Relaxed),
            1,
            "round {round}: only the new message, nothing sent again"
        );
        assert_eq!(h.stats.readings_duplicate.load(Ordering::Relaxed), 0);
        assert_eq!(h.stats.readings_stored.load(Ordering::Relaxed), 1);
    }
    assert_eq!(record.count_readings().await.expect("count"), 10);
}
