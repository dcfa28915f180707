//! The gateway's device session against the simulated GHS spirometer, end to end to the
//! durable queue: live observations, stored observations after an offline period, and the
//! ways a transfer can be cut (dropped link, hub killed, device re-sending) without a
//! reading lost, deleted early or queued twice. The simulator checks the queue at every
//! delete and logs a violation for any record deleted before it was queued.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::codec::Float11073;
use gateway::codec::ghs::{
    GhsControlPoint, GhsRacp, GhsRecordFilter, HealthSensorFeatures, MeasurementStatus,
    Observation, StoredObservation, mdc,
};
use gateway::codec::racp::ResponseCode;
use gateway::codec::segment::Reassembler;
use gateway::codec::uuid as cu;
use gateway::device::spirometry::{SimSpirometerV1, SpirometryResult};
use gateway::device::{
    Address, BackoffConfig, CharacteristicId, DeviceLink, DeviceSource, LinkEvent, Phase, Session,
    SessionConfig, SessionHandle, SessionStats,
};
use gateway::queue::Queue;
use simulators::{DeviceKind, Emission, SimClock, SimDeviceConfig, SimWorld};
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceId, Flag, GatewayId, Kind, PatientKey, Reading, Unit, Value};

const SPIRO: Address = Address([0xc0, 0xff, 0xee, 0x00, 0x09, 0x01]);
const START: OffsetDateTime = time::macros::datetime!(2025-05-05 08:00:00 UTC);

fn ghs(uuid: u16) -> CharacteristicId {
    CharacteristicId::sig(0x1840, uuid)
}

struct Rig {
    clock: SimClock,
    world: Arc<SimWorld>,
    queue: Queue,
    bindings: Arc<[DeviceBinding]>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(kind: DeviceKind) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(dir.path().join("queue.db"))
            .await
            .expect("queue");
        let clock = SimClock::new(START);
        let world = Arc::new(SimWorld::new(clock.clone(), Some(queue.clone())));
        world.add(SimDeviceConfig {
            kind,
            address: SPIRO,
            system_id: None,
            clock_offset: time::Duration::ZERO,
            drift_ppm: 0.0,
            battery: 90,
            payload: 20,
        });
        let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
            id: DeviceId::BdAddr(SPIRO.0),
            patient: Some(PatientKey::new("pk-ghs-test").expect("key")),
            users: vec![],
        }]
        .into();
        Rig {
            clock,
            world,
            queue,
            bindings,
            _dir: dir,
        }
    }

    fn queue_path(&self) -> &Path {
        self.queue.path()
    }

    /// A session as the hub starts one (fresh memory: no record number known yet).
    fn session(&self, queue: Queue) -> Session<SimWorld> {
        let config = SessionConfig {
            gateway: GatewayId::new("gw-ghs").expect("id"),
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
        Session::new(
            self.world.clone(),
            SPIRO,
            self.bindings.clone(),
            queue,
            Arc::new(self.clock.clone()),
            config,
        )
    }

    fn spawn(&self) -> SessionHandle {
        self.session(self.queue.clone())
            .spawn(CancellationToken::new())
    }

    async fn readings(&self) -> Vec<Reading> {
        self.queue.peek(0, 10_000).await.expect("peek")
    }

    /// Waits until the session has handled everything the device sent and streams live.
    async fn settled(&self, handle: &SessionHandle) -> SessionStats {
        self.settled_since(handle, (0, 0)).await
    }

    /// [`Rig::settled`] for a session started when the device had already accepted
    /// `base.0` connections and sent `base.1` values.
    async fn settled_since(&self, handle: &SessionHandle, base: (u64, u64)) -> SessionStats {
        until("the session settles", || {
            let s = handle.stats().borrow().clone();
            let log = self.world.log(SPIRO);
            (self.world.connected(SPIRO)
                && s.phase == Phase::Streaming
                && s.connects + base.0 == log.connections
                && s.values_received + base.1 >= log.values_sent)
                .then_some(s)
        })
        .await
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn result(fev1: (i32, i8), fvc: (i32, i8), pef: i32) -> SpirometryResult {
    SpirometryResult {
        fev1_l: Float11073::new(fev1.0, fev1.1),
        fvc_l: Some(Float11073::new(fvc.0, fvc.1)),
        pef_l_min: Some(Float11073::new(pef, 0)),
        timestamp: None,
        from_storage: false,
        clock_not_set: false,
        poor_effort: false,
    }
}

fn value(r: &Reading, kind: Kind) -> (String, Unit) {
    let v = r
        .values
        .iter()
        .find(|v| v.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {r:?}"));
    match &v.value {
        Value::Number(d) => (d.to_string(), v.unit),
        other => panic!("{kind:?} absent: {other:?}"),
    }
}

/// The spirometer measures `n` times, an hour apart, while out of the hub's range.
async fn measure_while_away(rig: &Rig, n: usize) -> Vec<OffsetDateTime> {
    rig.world.set_present(SPIRO, false);
    let mut times = vec![];
    for i in 0..n {
        let at = rig.clock.get() + time::Duration::hours(1);
        rig.clock.set(at);
        rig.world
            .emit(
                SPIRO,
                Emission::Spirometry(result((200 + i as i32, -2), (300, -2), 400)),
            )
            .await
            .expect("emit");
        times.push(at);
    }
    assert_eq!(rig.world.ghs_stored(SPIRO).len(), n);
    times
}

fn assert_unique_ids(readings: &[Reading]) {
    let ids: HashSet<_> = readings.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), readings.len(), "a reading id queued twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ghs_observations_become_spirometry_readings_with_their_precision() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    let handle = rig.spawn();
    rig.settled(&handle).await;
    // The hub started live observations on the GHS Control Point after the (empty) RACP
    // fetch, and the sensor confirmed.
    let log = rig.world.log(SPIRO);
    assert_eq!(log.control_point_writes, [0x01]);
    assert_eq!(
        log.ghs_racp_requests,
        [GhsRacp::ReportStoredRecords(GhsRecordFilter::AllRecords)]
    );

    let at = START + time::Duration::minutes(5);
    rig.clock.set(at);
    rig.world
        .emit(
            SPIRO,
            Emission::Spirometry(result((152, -2), (280, -2), 310)),
        )
        .await
        .expect("emit");
    rig.settled(&handle).await;
    // The value counts as received before its reading is pushed; wait for the push.
    let stats = until("the reading is queued", || {
        let s = handle.stats().borrow().clone();
        (s.readings_queued == 1).then_some(s)
    })
    .await;
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(stats.unmapped, 0);
    // Live, so nothing was stored on the sensor.
    assert!(rig.world.ghs_stored(SPIRO).is_empty());

    let readings = rig.readings().await;
    let [r] = readings.as_slice() else {
        panic!("one reading expected: {readings:?}");
    };
    assert_eq!(r.reading_type, vitals::ReadingType::Spirometry);
    assert_eq!(r.device.model.as_deref(), Some("SIM-SP2"));
    assert_eq!(value(r, Kind::Fev1), ("1.52".into(), Unit::Litre));
    // 2.80, not 2.8: the sensor's precision is kept.
    assert_eq!(value(r, Kind::Fvc), ("2.80".into(), Unit::Litre));
    assert_eq!(value(r, Kind::Fev1FvcRatio), ("54".into(), Unit::Percent));
    assert_eq!(value(r, Kind::Pef), ("310".into(), Unit::LitrePerMin));
    assert_eq!(
        r.device_time,
        Some(time::PrimitiveDateTime::new(at.date(), at.time()))
    );
    assert_eq!(r.measured_at, at);
    assert!(r.flags.is_empty(), "{:?}", r.flags);

    // A poor manoeuvre arrives flagged; test data never becomes a reading.
    let mut poor = result((120, -2), (250, -2), 280);
    poor.poor_effort = true;
    rig.clock.set(at + time::Duration::minutes(1));
    rig.world
        .emit(SPIRO, Emission::Spirometry(poor))
        .await
        .expect("emit");
    let mut test_data = gateway_observation(&result((100, -2), (200, -2), 200));
    test_data.measurement_status = Some(MeasurementStatus::TEST_DATA);
    rig.world
        .emit(SPIRO, Emission::Observation(test_data))
        .await
        .expect("emit");
    rig.settled(&handle).await;
    let stats = until("both handled", || {
        let s = handle.stats().borrow().clone();
        (s.readings_queued + s.unmapped >= 3).then_some(s)
    })
    .await;
    assert_eq!(stats.readings_queued, 2);
    assert_eq!(stats.unmapped, 1);
    let readings = rig.readings().await;
    assert!(readings[1].flags.contains(Flag::SignalQuestionable));
    handle.shutdown().await.expect("clean end");
}

fn gateway_observation(r: &SpirometryResult) -> Observation {
    simulators::ghs::spirometry_observation(r, Some(time::macros::datetime!(2025-05-05 09:00)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_observations_are_fetched_after_an_offline_period_and_deleted_once_queued() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    let handle = rig.spawn();
    rig.settled(&handle).await;
    let times = measure_while_away(&rig, 4).await;
    rig.world.set_present(SPIRO, true);
    let stats = rig.settled(&handle).await;

    let readings = rig.readings().await;
    assert_eq!(readings.len(), 4);
    assert_unique_ids(&readings);
    for (r, at) in readings.iter().zip(&times) {
        assert!(r.flags.contains(Flag::FromStorage), "{:?}", r.flags);
        assert_eq!(r.measured_at, *at);
    }
    assert_eq!(value(&readings[3], Kind::Fev1).0, "2.03");
    let log = rig.world.log(SPIRO);
    assert_eq!(log.ghs_deleted, [0, 1, 2, 3]);
    assert!(
        log.audit_violations.is_empty(),
        "{:?}",
        log.audit_violations
    );
    assert!(rig.world.ghs_stored(SPIRO).is_empty());
    assert_eq!(
        log.ghs_racp_requests.last(),
        Some(&GhsRacp::DeleteStoredRecords(
            GhsRecordFilter::LessThanOrEqual(3)
        ))
    );
    assert_eq!(stats.deletes, 1);
    // Live observations were started again on the new link.
    assert_eq!(log.control_point_writes, [0x01, 0x01]);
    handle.shutdown().await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dropped_mid_transfer_loses_nothing_and_resumes_from_the_next_record() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    let handle = rig.spawn();
    rig.settled(&handle).await;
    measure_while_away(&rig, 6).await;
    rig.world.disconnect_mid_transfer(SPIRO, 3);
    rig.world.set_present(SPIRO, true);
    let stats = rig.settled(&handle).await;

    let log = rig.world.log(SPIRO);
    let reports: Vec<_> = log
        .ghs_racp_requests
        .iter()
        .filter(|r| matches!(r, GhsRacp::ReportStoredRecords(_)))
        .skip(1) // the empty fetch of the first connection
        .copied()
        .collect();
    assert_eq!(
        reports,
        [
            GhsRacp::ReportStoredRecords(GhsRecordFilter::AllRecords),
            GhsRacp::ReportStoredRecords(GhsRecordFilter::GreaterThanOrEqual(3)),
        ]
    );
    // Nothing was deleted on the cut link; everything once all six were durable.
    assert_eq!(log.ghs_deleted, [0, 1, 2, 3, 4, 5]);
    assert!(
        log.audit_violations.is_empty(),
        "{:?}",
        log.audit_violations
    );
    let readings = rig.readings().await;
    assert_eq!(readings.len(), 6);
    assert_unique_ids(&readings);
    assert_eq!(stats.duplicates, 0);
    handle.shutdown().await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_transfer_rereads_after_restart_without_loss_or_duplicates() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    let handle = rig.spawn();
    rig.settled(&handle).await;
    measure_while_away(&rig, 5).await;
    // The sensor sends two observations and then nothing: the hub is killed at that point.
    rig.world.stall_mid_transfer(SPIRO, 2);
    rig.world.set_present(SPIRO, true);
    until("two observations queued", || {
        (handle.stats().borrow().readings_queued == 2).then_some(())
    })
    .await;
    handle.shutdown().await.expect("ends");
    let log = rig.world.log(SPIRO);
    assert!(
        log.ghs_deleted.is_empty(),
        "deleted before the transfer ended"
    );
    assert_eq!(rig.world.ghs_stored(SPIRO), [0, 1, 2, 3, 4]);

    // Restart: a new session with no memory of record numbers, the queue reopened from disk.
    let base = (log.connections, log.values_sent);
    let reopened = Queue::open(rig.queue_path()).await.expect("reopen");
    let handle = rig.session(reopened).spawn(CancellationToken::new());
    let stats = rig.settled_since(&handle, base).await;
    let readings = rig.readings().await;
    assert_eq!(readings.len(), 5);
    assert_unique_ids(&readings);
    assert_eq!(stats.duplicates, 2, "the two fetched before the kill");
    assert_eq!(stats.readings_queued, 3);
    let log = rig.world.log(SPIRO);
    assert_eq!(log.ghs_deleted, [0, 1, 2, 3, 4]);
    assert!(
        log.audit_violations.is_empty(),
        "{:?}",
        log.audit_violations
    );
    handle.shutdown().await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_that_resends_every_record_on_reconnection_queues_no_duplicate_id() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    let handle = rig.spawn();
    rig.settled(&handle).await;
    measure_while_away(&rig, 5).await;
    rig.world.disconnect_mid_transfer(SPIRO, 3);
    // Firmware bug: "greater than or equal" is ignored, every record comes again.
    rig.world.set_ignore_filter(SPIRO, true);
    rig.world.set_present(SPIRO, true);
    let stats = rig.settled(&handle).await;
    let readings = rig.readings().await;
    assert_eq!(readings.len(), 5);
    assert_unique_ids(&readings);
    assert_eq!(stats.duplicates, 3);
    let log = rig.world.log(SPIRO);
    assert_eq!(log.ghs_deleted, [0, 1, 2, 3, 4]);
    assert!(
        log.audit_violations.is_empty(),
        "{:?}",
        log.audit_violations
    );
    handle.shutdown().await.expect("clean end");
}

/// A raw link to the spirometer, subscribed to the GHS characteristics, with the values it
/// sends.
async fn raw_link(world: &SimWorld) -> (simulators::SimLink, mpsc::Receiver<LinkEvent>) {
    let mut link = world.connect(SPIRO).await.expect("connect");
    let events = link.take_events().expect("events");
    for c in [
        cu::STORED_HEALTH_OBSERVATIONS,
        cu::RECORD_ACCESS_CONTROL_POINT,
        cu::GHS_CONTROL_POINT,
    ] {
        link.subscribe(ghs(c)).await.expect("subscribe");
    }
    (link, events)
}

async fn next_on(events: &mut mpsc::Receiver<LinkEvent>, uuid: u16) -> Vec<u8> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("link open");
        if let LinkEvent::Value {
            characteristic,
            bytes,
        } = e
            && characteristic == ghs(uuid)
        {
            return bytes;
        }
    }
}

async fn racp(
    link: &mut simulators::SimLink,
    events: &mut mpsc::Receiver<LinkEvent>,
    request: GhsRacp,
) -> GhsRacp {
    link.write(ghs(cu::RECORD_ACCESS_CONTROL_POINT), &request.encode())
        .await
        .expect("write");
    GhsRacp::decode(&next_on(events, cu::RECORD_ACCESS_CONTROL_POINT).await).expect("decodes")
}

fn response(op: u8, code: ResponseCode) -> GhsRacp {
    GhsRacp::Response {
        request_op_code: op,
        response_code: code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sensor_answers_features_count_abort_and_refuses_what_it_must() {
    let rig = Rig::new(DeviceKind::Spirometer).await;
    measure_while_away(&rig, 5).await;
    rig.world.set_present(SPIRO, true);
    let (mut link, mut events) = raw_link(&rig.world).await;

    let features = HealthSensorFeatures::decode(
        &link
            .read(ghs(cu::HEALTH_SENSOR_FEATURES))
            .await
            .expect("read"),
    )
    .expect("decodes");
    let types: Vec<u32> = features.observation_types.iter().map(|c| c.0).collect();
    assert_eq!(types, [mdc::FEV1, mdc::FVC, mdc::FEV1_FVC, mdc::PEF]);

    assert_eq!(
        racp(
            &mut link,
            &mut events,
            GhsRacp::ReportNumberOfStoredRecords(GhsRecordFilter::GreaterThanOrEqual(3))
        )
        .await,
        GhsRacp::NumberOfStoredRecords(2)
    );
    assert_eq!(
        racp(
            &mut link,
            &mut events,
            GhsRacp::ReportStoredRecords(GhsRecordFilter::WithinRange { min: 4, max: 1 })
        )
        .await,
        response(1, ResponseCode::InvalidOperand)
    );

    // A report, aborted after two records: the rest stay on the sensor.
    rig.world.stall_mid_transfer(SPIRO, 2);
    link.write(
        ghs(cu::RECORD_ACCESS_CONTROL_POINT),
        &GhsRacp::ReportStoredRecords(GhsRecordFilter::AllRecords).encode(),
    )
    .await
    .expect("write");
    let mut joined = Reassembler::new(gateway::codec::ghs::MAX_OBSERVATION);
    let mut got = vec![];
    while got.len() < 2 {
        let seg = next_on(&mut events, cu::STORED_HEALTH_OBSERVATIONS).await;
        if let Some(body) = joined.push(&seg).expect("in order") {
            got.push(
                StoredObservation::decode(&body)
                    .expect("decodes")
                    .record_number,
            );
        }
    }
    assert_eq!(got, [0, 1]);
    assert_eq!(
        racp(&mut link, &mut events, GhsRacp::AbortOperation).await,
        response(3, ResponseCode::Success)
    );
    assert_eq!(rig.world.ghs_stored(SPIRO), [0, 1, 2, 3, 4]);

    // Deleting what the hub never queued is what the audit exists to catch.
    assert_eq!(
        racp(
            &mut link,
            &mut events,
            GhsRacp::DeleteStoredRecords(GhsRecordFilter::FirstRecord)
        )
        .await,
        response(2, ResponseCode::Success)
    );
    let log = rig.world.log(SPIRO);
    assert_eq!(log.ghs_deleted, [0]);
    assert_eq!(
        log.audit_violations,
        ["observation 0 deleted before it was queued"]
    );
    assert_eq!(
        racp(
            &mut link,
            &mut events,
            GhsRacp::DeleteStoredRecords(GhsRecordFilter::LessThanOrEqual(0))
        )
        .await,
        response(2, ResponseCode::NoRecordsFound)
    );

    // Control point: start confirmed with 0x80; a server op code written by a client is
    // refused.
    link.write(
        ghs(cu::GHS_CONTROL_POINT),
        &GhsControlPoint::StartSendingLiveObservations
            .encode()
            .expect("encodes"),
    )
    .await
    .expect("start");
    assert_eq!(next_on(&mut events, cu::GHS_CONTROL_POINT).await, [0x80]);
    assert!(
        link.write(ghs(cu::GHS_CONTROL_POINT), &[0x80])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendor_format_spirometer_still_drives_the_driver_seam() {
    let rig = Rig::new(DeviceKind::VendorSpirometer).await;
    let handle = rig
        .session(rig.queue.clone())
        .with_driver(Arc::new(SimSpirometerV1))
        .spawn(CancellationToken::new());
    rig.settled(&handle).await;
    rig.world
        .emit(
            SPIRO,
            Emission::Spirometry(result((152, -2), (280, -2), 310)),
        )
        .await
        .expect("emit");
    rig.settled(&handle).await;
    until("the reading is queued", || {
        (handle.stats().borrow().readings_queued == 1).then_some(())
    })
    .await;
    let readings = rig.readings().await;
    let [r] = readings.as_slice() else {
        panic!("one reading expected: {readings:?}");
    };
    assert_eq!(value(r, Kind::Fvc), ("2.80".into(), Unit::Litre));
    assert_eq!(r.device.model.as_deref(), Some("SIM-SP1"));
    handle.shutdown().await.expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replying_driver_acknowledges_only_what_is_queued_and_naks_a_garbled_frame() {
    use gateway::codec::date_time::DateTime;
    use gateway::codec::vitalograph::{ACK, LungMonitorResult, NAK};
    use gateway::device::spirometry::VitalographLungMonitor;

    // The Vitalograph packets through the simulated serial-over-BLE characteristic.
    let rig = Rig::new(DeviceKind::VendorSpirometer).await;
    let driver = VitalographLungMonitor::new(SimSpirometerV1::SERVICE, SimSpirometerV1::RESULT)
        .replying_on(SimSpirometerV1::RESULT);
    let handle = rig
        .session(rig.queue.clone())
        .with_driver(Arc::new(driver))
        .spawn(CancellationToken::new());
    rig.settled(&handle).await;
    let frame = LungMonitorResult {
        device_id: "LM00000042".into(),
        fev1_l: Float11073::new(187, -2),
        fev6_l: Float11073::new(255, -2),
        fev1_fev6_ratio: Float11073::new(73, -2),
        fef25_75_l_s: Float11073::new(120, -2),
        fev1_personal_best_l: Float11073::new(230, -2),
        fev1_percent_of_best: 81,
        zones: [80, 50, 30],
        timestamp: DateTime::new(2025, 5, 5, 8, 0, 5),
        good_test: true,
        software_version: 3,
    }
    .encode()
    .expect("encodes");
    let serial = CharacteristicId {
        service: SimSpirometerV1::SERVICE,
        uuid: SimSpirometerV1::RESULT,
    };
    let mut noisy = frame.clone();
    let last = noisy.len() - 1;
    noisy[last] ^= 0x55;
    // A garbled frame, then the good one in two chunks (as a bridge with a small MTU sends).
    for chunk in [&noisy[..], &frame[..20], &frame[20..]] {
        rig.world
            .emit(SPIRO, Emission::Raw(serial, chunk.to_vec()))
            .await
            .expect("emit");
    }
    until("both frames answered", || {
        (rig.world.log(SPIRO).vendor_writes.len() == 2).then_some(())
    })
    .await;
    assert_eq!(rig.world.log(SPIRO).vendor_writes, [vec![NAK], vec![ACK]]);
    // The good frame is a reading; the garbled one a counted decode error.
    let readings = rig.readings().await;
    assert_eq!(readings.len(), 1);
    assert_eq!(
        value(&readings[0], Kind::Fev1),
        ("1.87".into(), Unit::Litre)
    );
    let stats = handle.stats().borrow().clone();
    assert_eq!(stats.decode_errors, 1);
    handle.shutdown().await.expect("clean end");
}
