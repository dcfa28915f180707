//! `rpm ingest` as a real process against a real Mosquitto and PostgreSQL: killed with
//! SIGKILL in the middle of a stream and started again, it loses and duplicates nothing.

use std::time::Duration;

use ingest::record::{Audit, NewBinding, NewPatient, Record};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use testkit::{Mosquitto, PgDatabase, PgServer, RpmProcess, unavailable};
use time::OffsetDateTime;
use vitals::*;

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "test set-up",
};

fn device() -> DeviceId {
    "eui64:0011223344556677".parse().expect("valid")
}

async fn register(record: &Record) {
    let key = PatientKey::new("pk-1").expect("valid");
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
    let gw = GatewayId::new("gw-1").expect("valid");
    record.create_gateway(&gw, &AUDIT).await.expect("gateway");
    record
        .create_device(&DeviceIdentity::new(device()), &AUDIT)
        .await
        .expect("device");
    let binding = NewBinding {
        gateway: gw,
        device: device(),
        patient: key,
        user_index: None,
        valid_from: OffsetDateTime::UNIX_EPOCH,
    };
    record.bind(&binding, &AUDIT).await.expect("binding");
}

fn reading(n: u32) -> Reading {
    let at =
        OffsetDateTime::now_utc() - time::Duration::days(1) + time::Duration::seconds(i64::from(n));
    Reading {
        id: ReadingId(Default::default()),
        seq: u64::from(n),
        gateway: GatewayId::new("gw-1").expect("valid"),
        patient: PatientKey::new("pk-1").expect("valid"),
        device: DeviceIdentity::new(device()),
        user_index: None,
        reading_type: ReadingType::OximetryContinuous,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(90 + i64::from(n % 10))),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

fn config(dir: &std::path::Path, broker: &Mosquitto, database: &str) -> std::path::PathBuf {
    let path = dir.join("ingest.toml");
    std::fs::write(
        &path,
        format!(
            "[broker]\nurl = \"{}\"\nclient_id = \"ingest-crash-test\"\n[database]\nurl = \"{database}\"\n\
             [consumer]\nbatch_max = 500\nbatch_linger = \"20ms\"\nmax_inflight = 64\n",
            broker.url()
        ),
    )
    .expect("write config");
    path
}

async fn wait_count(record: &Record, n: u64, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = record.count_readings().await.expect("count");
        if c >= n || tokio::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_or_doubled_when_ingest_is_killed_mid_batch() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("record");
    register(&record).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker, db.url());
    let bin = env!("CARGO_BIN_EXE_rpm");
    let cfg = config.to_str().expect("utf8");
    let mut ingest =
        testkit::spawn_ingest(bin, cfg, &broker, &[]).expect("ingest connects and subscribes");

    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("gw-1", "127.0.0.1", broker.port()), 200);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked2 = acked.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                acked2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let total_messages = 80u32;
    let per_message = 50u32;
    for m in 0..total_messages {
        let readings: Vec<Reading> = (m * per_message..(m + 1) * per_message)
            .map(reading)
            .collect();
        let envelope = Envelope {
            v: 1,
            gateway: GatewayId::new("gw-1").expect("valid"),
            seq: u64::from(m) + 1,
            sent_at: OffsetDateTime::now_utc(),
            readings,
        };
        client
            .publish(
                "rpm/v1/gw/gw-1/readings",
                QoS::AtLeastOnce,
                false,
                envelope.encode(),
            )
            .await
            .expect("publish");
        if m == 30 {
            // Mid-stream, with batches in flight: no goodbye, no flush.
            ingest.kill().expect("SIGKILL");
        }
        if m == 50 {
            ingest =
                RpmProcess::spawn(bin, &["ingest", "--config", cfg], &[]).expect("respawn ingest");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = u64::from(total_messages * per_message);
    let stored = wait_count(&record, expected, Duration::from_secs(60)).await;
    assert_eq!(
        stored,
        expected,
        "every reading is in the record exactly once (readings are keyed by id)\n{}",
        ingest.stderr()
    );
    assert!(
        record
            .dead_letter_counts()
            .await
            .expect("counts")
            .is_empty(),
        "nothing was rejected"
    );
    assert!(acked.load(std::sync::atomic::Ordering::Relaxed) >= u64::from(total_messages));
    ingest.kill().expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_when_postgresql_crashes_under_load() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(mut pg) = unavailable(PgServer::start()) else {
        return;
    };
    let url = pg.url("postgres");
    let record = Record::connect(&url, 2).await.expect("record");
    register(&record).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker, &url);
    let cfg = config.to_str().expect("utf8");
    let mut ingest = testkit::spawn_ingest(env!("CARGO_BIN_EXE_rpm"), cfg, &broker, &[])
        .expect("ingest connects and subscribes");
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("gw-1", "127.0.0.1", broker.port()), 200);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let (total_messages, per_message) = (60u32, 50u32);
    for m in 0..total_messages {
        let readings: Vec<Reading> = (m * per_message..(m + 1) * per_message)
            .map(reading)
            .collect();
        let envelope = Envelope {
            v: 1,
            gateway: GatewayId::new("gw-1").expect("valid"),
            seq: u64::from(m) + 1,
            sent_at: OffsetDateTime::now_utc(),
            readings,
        };
        client
            .publish(
                "rpm/v1/gw/gw-1/readings",
                QoS::AtLeastOnce,
                false,
                envelope.encode(),
            )
            .await
            .expect("publish");
        if m == 20 {
            // The database crashes under load and is away for a while.
            pg.stop("immediate").expect("crash PostgreSQL");
        }
        if m == 40 {
            pg.start_again().expect("PostgreSQL recovers");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record = Record::connect(&url, 2)
        .await
        .expect("record after recovery");
    let expected = u64::from(total_messages * per_message);
    let stored = wait_count(&record, expected, Duration::from_secs(90)).await;
    assert_eq!(
        stored,
        expected,
        "every reading is in the record once\n{}",
        ingest.stderr()
    );
    assert!(
        record
            .dead_letter_counts()
            .await
            .expect("counts")
            .is_empty(),
        "an outage is not a rejection"
    );
    // The crash reached ingest's connections (its pool either waited for the server or
    // ingest retried; which one depends on where each batch was when the server died).
    let log = ingest.stderr();
    assert!(
        log.contains("database unavailable; retrying")
            || log.contains("terminating connection due to immediate shutdown"),
        "the outage happened under ingest:\n{log}"
    );
    ingest.kill().expect("stop");
}
