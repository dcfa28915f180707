//! A value is time-stamped before the session counts it as received. Scenario runs (and the
//! fault suite, which plays a scenario twice and compares reading ids) wait for the count to
//! move the virtual clock on: a stamp taken after the count could land on the next step and
//! give the reading another id.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use gateway::codec::Float11073;
use gateway::codec::pulse_oximeter::{PlxContinuousMeasurement, SpO2Pr};
use gateway::device::{Address, BackoffConfig, Clock, Phase, Session, SessionConfig, SessionStats};
use gateway::queue::Queue;
use simulators::{DeviceKind, Emission, SimClock, SimDeviceConfig, SimWorld};
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceId, GatewayId, PatientKey};

const OXIMETER: Address = Address([0xc0, 0xff, 0xee, 0x00, 0x0a, 0x01]);

/// The virtual clock, noting how many values the session had counted at each reading of it.
struct WatchingClock {
    inner: SimClock,
    stats: OnceLock<watch::Receiver<SessionStats>>,
    seen: Mutex<Vec<u64>>,
}

impl Clock for WatchingClock {
    fn now(&self) -> OffsetDateTime {
        if let Some(stats) = self.stats.get() {
            let counted = stats.borrow().values_received;
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(counted);
        }
        self.inner.get()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_is_stamped_before_it_counts_as_received() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("queue.db"))
        .await
        .expect("queue");
    let start = time::macros::datetime!(2025-05-05 08:00:00 UTC);
    let sim = SimClock::new(start);
    let world = Arc::new(SimWorld::new(sim.clone(), Some(queue.clone())));
    world.add(SimDeviceConfig {
        kind: DeviceKind::Oximeter,
        address: OXIMETER,
        system_id: None,
        clock_offset: time::Duration::ZERO,
        drift_ppm: 0.0,
        battery: 90,
        payload: 20,
    });
    let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
        id: DeviceId::BdAddr(OXIMETER.0),
        patient: Some(PatientKey::new("pk-clock-test").expect("key")),
        users: vec![],
    }]
    .into();
    let clock = Arc::new(WatchingClock {
        inner: sim.clone(),
        stats: OnceLock::new(),
        seen: Mutex::new(Vec::new()),
    });
    let config = SessionConfig {
        gateway: GatewayId::new("gw-clock").expect("id"),
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(30),
        backoff: BackoffConfig {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(10),
        },
        op_timeout: Duration::from_secs(5),
        zone: UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: 7,
    };
    let handle = Session::new(
        world.clone(),
        OXIMETER,
        bindings,
        queue.clone(),
        clock.clone(),
        config,
    )
    .spawn(CancellationToken::new());
    let mut stats = handle.stats();
    tokio::time::timeout(
        Duration::from_secs(20),
        stats.wait_for(|s| s.phase == Phase::Streaming),
    )
    .await
    .expect("the session streams")
    .expect("the session runs");
    let before = stats.borrow().values_received;
    clock
        .stats
        .set(handle.stats())
        .expect("the clock watches once");

    sim.set(start + time::Duration::minutes(1));
    let sample = PlxContinuousMeasurement {
        normal: SpO2Pr {
            spo2_percent: Float11073::new(95, 0),
            pulse_rate_per_min: Float11073::new(70, 0),
        },
        fast: None,
        slow: None,
        measurement_status: None,
        device_and_sensor_status: None,
        pulse_amplitude_index_percent: None,
        quirks: vec![],
    };
    world
        .emit(OXIMETER, Emission::Continuous(sample))
        .await
        .expect("emit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while queue.peek(0, 10).await.expect("peek").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the value is queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = clock
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        seen.first(),
        Some(&before),
        "the value was stamped after it was counted (clock reads saw {seen:?}, {before} before)"
    );
    let _ = handle.shutdown().await;
}
