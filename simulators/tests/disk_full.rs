//! "It never silently drops a reading": when the queue cannot take a reading because the disk
//! is full, the device keeps its stored records (nothing is deleted on it), the failure is
//! counted and logged without naming the patient or the device, and once there is room again
//! the records are fetched on the next connection and queued, none lost and none twice.
//!
//! The real session fetches a simulated cuff's records with RACP into a real queue whose
//! SQLite file may not grow (`PRAGMA max_page_count`): its inserts fail with SQLITE_FULL, as
//! on a full disk. The simulator checks at every delete that the queue holds the records.
//!
//! This file holds one test: it installs the process-wide log subscriber it reads.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gateway::codec::Float11073;
use gateway::codec::blood_pressure::{BloodPressureMeasurement, PressureUnit};
use gateway::codec::racp::RacpMessage;
use gateway::device::{Address, BackoffConfig, Phase, Session, SessionConfig, SessionStats};
use gateway::queue::Queue;
use simulators::{DeviceKind, Emission, SimClock, SimDeviceConfig, SimWorld};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceId, Flag, GatewayId, Kind, PatientKey, Reading, ReadingId};

const CUFF: Address = Address([0xc0, 0xff, 0xee, 0x00, 0x0d, 0x1f]);
const PATIENT: &str = "pk-disk-full-patient";
/// A fortnight of morning and evening measurements taken while the hub was away: more than
/// the queue's already allocated pages can hold, so the disk fills part-way through.
const RECORDS: u16 = 28;

/// Everything the gateway and the simulators log, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "gateway=debug,simulators=debug",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stored record `i`: systolic 110 + i, so each record is its own reading.
fn measurement(i: u16) -> BloodPressureMeasurement {
    BloodPressureMeasurement {
        unit: PressureUnit::MmHg,
        systolic: Float11073::new(110 + i32::from(i), 0),
        diastolic: Float11073::new(75, 0),
        mean_arterial_pressure: Float11073::new(90, 0),
        timestamp: None,
        pulse_rate_per_min: Some(Float11073::new(68, 0)),
        user_id: None,
        status: None,
        quirks: vec![],
    }
}

fn taken_at(start: OffsetDateTime, i: u16) -> OffsetDateTime {
    start + time::Duration::hours(12) * i32::from(i)
}

async fn queued(queue: &Queue) -> Vec<Reading> {
    queue.peek(0, 1_000).await.expect("peek")
}

async fn wait_for(
    stats: &mut watch::Receiver<SessionStats>,
    what: &str,
    f: impl FnMut(&SessionStats) -> bool,
) -> SessionStats {
    tokio::time::timeout(Duration::from_secs(60), stats.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
        .expect("the session runs")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stored_record_lost_or_doubled_when_the_disk_is_full() {
    let logs = Logs::install();
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("queue.db"))
        .await
        .expect("queue");
    let start = time::macros::datetime!(2025-05-05 08:00:00 UTC);
    let sim = SimClock::new(start);
    let world = Arc::new(SimWorld::new(sim.clone(), Some(queue.clone())));
    world.add(SimDeviceConfig {
        kind: DeviceKind::BpCuff,
        address: CUFF,
        system_id: None,
        clock_offset: time::Duration::ZERO,
        drift_ppm: 0.0,
        battery: 90,
        payload: 20,
    });
    // No session yet, so no link: the cuff only stores them.
    for i in 0..RECORDS {
        sim.set(taken_at(start, i));
        world
            .emit(CUFF, Emission::BloodPressure(measurement(i)))
            .await
            .expect("emit");
    }
    sim.set(taken_at(start, RECORDS));
    let all: Vec<u16> = (0..RECORDS).collect();
    assert_eq!(world.stored(CUFF), all);

    // The disk is full: the queue file may not grow by a page.
    queue.limit_size_for_tests(Some(1)).await.expect("limit");

    let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
        id: DeviceId::BdAddr(CUFF.0),
        patient: Some(PatientKey::new(PATIENT).expect("key")),
        users: vec![],
    }]
    .into();
    let config = SessionConfig {
        gateway: GatewayId::new("gw-disk-full").expect("id"),
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(30),
        backoff: BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        op_timeout: Duration::from_secs(5),
        zone: UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: 11,
    };
    let handle = Session::new(
        world.clone(),
        CUFF,
        bindings,
        queue.clone(),
        Arc::new(sim.clone()),
        config,
    )
    .spawn(CancellationToken::new());
    let mut stats = handle.stats();

    // (b) Counted: the write failed on several connections in turn (each retry asks for the
    // records again and finds the disk still full), and each failure dropped the link.
    let full = wait_for(&mut stats, "the queue failed three times", |s| {
        s.queue_errors >= 3
    })
    .await;
    assert!(full.disconnects >= 2, "{full:?}");
    assert_eq!(full.deletes, 0, "{full:?}");

    // (a) The cuff still has every record: the hub asked it to delete none.
    assert_eq!(world.stored(CUFF), all, "the cuff keeps its records");
    let log = world.log(CUFF);
    assert!(log.deleted.is_empty(), "{:?}", log.deleted);
    assert!(
        !log.racp_requests
            .iter()
            .any(|r| matches!(r, RacpMessage::DeleteStoredRecords(_))),
        "no delete was requested: {:?}",
        log.racp_requests
    );
    assert!(log.connections >= 3, "{log:?}");
    // The disk filled part-way through the transfer: what fitted is queued, the rest waits on
    // the cuff, and a session counts only what is durable.
    let before: Vec<ReadingId> = queued(&queue).await.iter().map(|r| r.id).collect();
    assert!(
        !before.is_empty() && before.len() < usize::from(RECORDS),
        "{} of {RECORDS} fitted",
        before.len()
    );
    let counted = stats.borrow().readings_queued;
    assert_eq!(counted, before.len() as u64);

    // (b) Logged, saying what happened, naming neither the patient nor the device.
    let text = logs.text();
    assert!(
        text.contains("queue write failed") && text.contains("database or disk is full"),
        "the log says the queue could not take the reading because the disk is full:\n{text}"
    );
    let lower = text.to_lowercase();
    for secret in [
        PATIENT.to_owned(),
        CUFF.to_string(),
        DeviceId::BdAddr(CUFF.0).to_string(),
        "c0ffee000d1f".to_owned(),
        // The cuff's serial number (Device Information).
        "sim0d1f".to_owned(),
    ] {
        assert!(
            !lower.contains(&secret.to_lowercase()),
            "the log names {secret}:\n{text}"
        );
    }

    // (c) Room again: on the next connection the cuff's records arrive, and only once all are
    // durable are they deleted on the cuff.
    queue.limit_size_for_tests(None).await.expect("lift");
    let done = wait_for(&mut stats, "the records were fetched and deleted", |s| {
        s.deletes >= 1 && s.phase == Phase::Streaming
    })
    .await;
    assert!(world.stored(CUFF).is_empty(), "{:?}", world.stored(CUFF));
    let log = world.log(CUFF);
    let mut deleted = log.deleted.clone();
    deleted.sort_unstable();
    assert_eq!(deleted, all);
    assert!(
        log.audit_violations.is_empty(),
        "deleted before queued: {:?}",
        log.audit_violations
    );

    // None lost, none twice: one queued reading per record, each with its own id, the ones
    // queued before the disk filled among them.
    let after = queued(&queue).await;
    assert_eq!(after.len(), usize::from(RECORDS));
    let ids: HashSet<ReadingId> = after.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), after.len(), "a reading id queued twice");
    assert!(before.iter().all(|id| ids.contains(id)));
    for i in 0..RECORDS {
        let at = taken_at(start, i);
        let device_time = Some(PrimitiveDateTime::new(at.date(), at.time()));
        let systolic = f64::from(110 + i);
        let matching: Vec<&Reading> = after
            .iter()
            .filter(|r| {
                r.device_time == device_time
                    && r.values.iter().any(|v| {
                        v.kind == Kind::Systolic
                            && v.value.number().map(|n| n.to_f64()) == Some(systolic)
                    })
            })
            .collect();
        assert_eq!(matching.len(), 1, "record {i}");
        assert!(matching[0].flags.contains(Flag::FromStorage), "record {i}");
        assert_eq!(
            matching[0].patient.as_str(),
            PATIENT,
            "record {i} is the patient's"
        );
    }
    assert_eq!(done.readings_queued, u64::from(RECORDS), "{done:?}");
    let _ = handle.shutdown().await;
}
