//! Simulated peripherals behind [`gateway::device::DeviceSource`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway::codec::blood_pressure::BloodPressureMeasurement;
use gateway::codec::blood_pressure_record::{RecordBody, RecordedValue};
use gateway::codec::date_time::{CurrentTime, DateTime, DayOfWeek};
use gateway::codec::device_information::{DisString, SystemId};
use gateway::codec::ghs::{
    GhsControlPoint, GhsRacp, GhsRecordFilter, Observation, StoredObservation,
};
use gateway::codec::pulse_oximeter::{PlxFeatures, PlxSupportedFeatures};
use gateway::codec::racp::{
    FilterValue, RacpMessage, RecordAccessControlPoint, RecordFilter, ResponseCode,
};
use gateway::codec::segment;
use gateway::codec::uuid::BLOOD_PRESSURE_RECORD;
use gateway::codec::{battery::BatteryLevel, uuid as cu};
use gateway::device::mapping::ghs_kind;
use gateway::device::spirometry::SimSpirometerV1;
use gateway::device::{
    Address, Advertisement, Characteristic, CharacteristicId, DeviceError, DeviceLink,
    DeviceSource, DisconnectReason, LINK_EVENT_CAPACITY, LinkEvent, Properties, ScanFilter,
    services,
};
use gateway::queue::Queue;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vitals::ReadingType;

use crate::clock::SimClock;
use crate::ghs::{self, GhsStore};

/// Which device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Blood pressure cuff (BLS 1.1 with stored records).
    BpCuff,
    /// Pulse oximeter (PLXS, spot-check and continuous).
    Oximeter,
    /// Spirometer speaking the Generic Health Sensor service (0x1840): live observations
    /// once started on the GHS Control Point, stored observations through GHS RACP.
    Spirometer,
    /// Spirometer speaking the simulated vendor format
    /// ([`gateway::device::spirometry::SimSpirometerV1`]), to exercise the driver seam.
    VendorSpirometer,
}

/// How a simulated device is built.
#[derive(Clone, Debug, PartialEq)]
pub struct SimDeviceConfig {
    /// Which device.
    pub kind: DeviceKind,
    /// Its address.
    pub address: Address,
    /// System ID (EUI-64) when it has one.
    pub system_id: Option<u64>,
    /// Device clock minus true time at the start.
    pub clock_offset: time::Duration,
    /// Clock drift, parts per million (positive: runs fast).
    pub drift_ppm: f64,
    /// Battery percent.
    pub battery: u8,
    /// ATT payload size (MTU − 3) for segmenting records.
    pub payload: usize,
}

/// What a device was asked and did, for tests to assert on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceLog {
    /// Every RACP request received.
    pub racp_requests: Vec<RacpMessage>,
    /// Sequence numbers deleted.
    pub deleted: Vec<u16>,
    /// Every GHS RACP request received (spirometer).
    pub ghs_racp_requests: Vec<GhsRacp>,
    /// GHS record numbers deleted.
    pub ghs_deleted: Vec<u32>,
    /// GHS Control Point values written (0x01 start, 0x02 stop live observations).
    pub control_point_writes: Vec<u8>,
    /// Values written to the vendor spirometer's serial characteristic (driver replies).
    pub vendor_writes: Vec<Vec<u8>>,
    /// Deletes of records the queue did not hold at the time (must stay empty).
    pub audit_violations: Vec<String>,
    /// Values sent (notifications/indications the gateway's channel accepted).
    pub values_sent: u64,
    /// Times the gateway wrote the clock.
    pub clock_writes: u64,
    /// Connections accepted.
    pub connections: u64,
}

/// Something the device measured or does, in the scenario's words.
#[derive(Clone, Debug)]
pub enum Emission {
    /// A cuff measurement (stored, and indicated when connected). The time stamp is filled
    /// from the device clock.
    BloodPressure(BloodPressureMeasurement),
    /// A spot-check (indicated when connected; lost when not: no storage simulated).
    SpotCheck(gateway::codec::pulse_oximeter::PlxSpotCheckMeasurement),
    /// A continuous sample (notified when connected).
    Continuous(gateway::codec::pulse_oximeter::PlxContinuousMeasurement),
    /// A spirometry result. The GHS spirometer sends it as a Live Health Observation when
    /// live observations are started, else stores it for RACP; the vendor-format one
    /// indicates it when connected, else holds it and pushes it on the next subscription.
    Spirometry(gateway::device::spirometry::SpirometryResult),
    /// A GHS observation exactly as given (GHS spirometer only): live or stored as above.
    Observation(Observation),
    /// Raw bytes on a characteristic (a garbled value).
    Raw(CharacteristicId, Vec<u8>),
}

struct StoredRecord {
    seq: u16,
    bpm: BloodPressureMeasurement,
}

struct LiveLink {
    generation: u64,
    tx: mpsc::Sender<LinkEvent>,
    subscribed: HashSet<CharacteristicId>,
    /// GHS: the gateway wrote "start sending live observations" on this link.
    live_observations: bool,
}

struct DeviceState {
    config: SimDeviceConfig,
    battery: u8,
    /// Device clock minus true time, at `offset_at`.
    offset: time::Duration,
    offset_at: OffsetDateTime,
    present: bool,
    storage: Vec<StoredRecord>,
    pending_spirometry: Vec<gateway::device::spirometry::SpirometryResult>,
    ghs: GhsStore,
    next_seq: u16,
    generation: u64,
    link: Option<LiveLink>,
    duplicate_indications: bool,
    disconnect_after_records: Option<usize>,
    stall_after_records: Option<usize>,
    ignore_filter: bool,
    log: DeviceLog,
    segment_counter: u8,
}

impl DeviceState {
    fn clock_now(&self, now: OffsetDateTime) -> OffsetDateTime {
        let elapsed = (now - self.offset_at).as_seconds_f64();
        let drift = time::Duration::seconds_f64(elapsed * self.config.drift_ppm * 1e-6);
        now + self.offset + drift
    }

    fn live(&self, generation: u64) -> Result<&LiveLink, DeviceError> {
        self.link
            .as_ref()
            .filter(|l| l.generation == generation)
            .ok_or(DeviceError::Disconnected)
    }
}

fn date_time(t: OffsetDateTime) -> DateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    DateTime::new(
        u16::try_from(t.year()).unwrap_or(0),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
}

type Shared = Arc<Mutex<DeviceState>>;

fn lock(d: &Shared) -> MutexGuard<'_, DeviceState> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every simulated device in range of one hub, on one virtual clock.
pub struct SimWorld {
    clock: SimClock,
    devices: Mutex<HashMap<Address, Shared>>,
    audit: Option<Queue>,
}

impl SimWorld {
    /// An empty world on `clock`. With `audit`, a device checks before each delete that the
    /// queue holds every record it is asked to delete (and logs a violation if not).
    pub fn new(clock: SimClock, audit: Option<Queue>) -> Self {
        SimWorld {
            clock,
            devices: Mutex::new(HashMap::new()),
            audit,
        }
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<Address, Shared>> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn device(&self, address: Address) -> Option<Shared> {
        self.devices().get(&address).cloned()
    }

    /// Adds a device, in range.
    pub fn add(&self, config: SimDeviceConfig) {
        let now = self.clock.get();
        let state = DeviceState {
            battery: config.battery,
            offset: config.clock_offset,
            offset_at: now,
            present: true,
            storage: Vec::new(),
            pending_spirometry: Vec::new(),
            ghs: GhsStore::default(),
            next_seq: 0,
            generation: 0,
            link: None,
            duplicate_indications: false,
            disconnect_after_records: None,
            stall_after_records: None,
            ignore_filter: false,
            log: DeviceLog::default(),
            segment_counter: 0,
            config,
        };
        self.devices()
            .insert(state.config.address, Arc::new(Mutex::new(state)));
    }

    fn with<T>(&self, address: Address, f: impl FnOnce(&mut DeviceState) -> T) -> Option<T> {
        self.device(address).map(|d| f(&mut lock(&d)))
    }

    /// Takes the device out of range (the link drops) or brings it back.
    pub fn set_present(&self, address: Address, present: bool) {
        let tx = self.with(address, |d| {
            d.present = present;
            if present { None } else { d.link.take() }
        });
        if let Some(Some(link)) = tx {
            let _ = link.tx.try_send(LinkEvent::Disconnected {
                reason: DisconnectReason::Timeout,
            });
        }
    }

    /// Sets the battery level (notified when the gateway subscribed to it).
    pub async fn set_battery(&self, address: Address, percent: u8) {
        let id = CharacteristicId::sig(0x180F, cu::BATTERY_LEVEL);
        let tx = self.with(address, |d| {
            d.battery = percent;
            d.link
                .as_ref()
                .filter(|l| l.subscribed.contains(&id))
                .map(|l| l.tx.clone())
        });
        if let Some(Some(tx)) = tx
            && tx
                .send(LinkEvent::Value {
                    characteristic: id,
                    bytes: vec![percent.min(100)],
                })
                .await
                .is_ok()
        {
            self.with(address, |d| d.log.values_sent += 1);
        }
    }

    /// Sends every following indication twice.
    pub fn set_duplicate_indications(&self, address: Address, on: bool) {
        self.with(address, |d| d.duplicate_indications = on);
    }

    /// Drops the link after `records` records of the next transfer.
    pub fn disconnect_mid_transfer(&self, address: Address, records: usize) {
        self.with(address, |d| d.disconnect_after_records = Some(records));
    }

    /// Stops answering after `records` records of the next transfer: no more records, no
    /// RACP response, the link stays up (a hung sensor, or a hub killed mid-transfer).
    pub fn stall_mid_transfer(&self, address: Address, records: usize) {
        self.with(address, |d| d.stall_after_records = Some(records));
    }

    /// Ignores RACP filters and sends every stored record (a firmware bug seen in the field).
    pub fn set_ignore_filter(&self, address: Address, on: bool) {
        self.with(address, |d| d.ignore_filter = on);
    }

    /// The device's log.
    pub fn log(&self, address: Address) -> DeviceLog {
        self.with(address, |d| d.log.clone()).unwrap_or_default()
    }

    /// Sequence numbers still in the device's memory.
    pub fn stored(&self, address: Address) -> Vec<u16> {
        self.with(address, |d| d.storage.iter().map(|r| r.seq).collect())
            .unwrap_or_default()
    }

    /// GHS record numbers still in the spirometer's memory.
    pub fn ghs_stored(&self, address: Address) -> Vec<u32> {
        self.with(address, |d| d.ghs.numbers()).unwrap_or_default()
    }

    /// Whether a link is up.
    pub fn connected(&self, address: Address) -> bool {
        self.with(address, |d| d.link.is_some()).unwrap_or(false)
    }

    /// Whether the device is in range.
    pub fn present(&self, address: Address) -> bool {
        self.with(address, |d| d.present).unwrap_or(false)
    }

    /// The device clock now.
    pub fn device_clock(&self, address: Address) -> Option<OffsetDateTime> {
        let now = self.clock.get();
        self.with(address, |d| d.clock_now(now))
    }

    /// The device measures or misbehaves. Values go out on the live link if there is one.
    pub async fn emit(&self, address: Address, emission: Emission) -> Result<(), DeviceError> {
        let now = self.clock.get();
        let Some(dev) = self.device(address) else {
            return Err(DeviceError::NotFound);
        };
        // Values in groups: a group is one value's segments, sent (and duplicated) whole.
        let mut out: Vec<Vec<(CharacteristicId, Vec<u8>)>> = Vec::new();
        let tx = {
            let mut d = lock(&dev);
            let device_now = d.clock_now(now);
            let stamp = Some(date_time(device_now));
            let subscribed = |d: &DeviceState, id: &CharacteristicId| {
                d.link.as_ref().is_some_and(|l| l.subscribed.contains(id))
            };
            match emission {
                Emission::BloodPressure(mut m) => {
                    m.timestamp = stamp;
                    let seq = d.next_seq;
                    d.next_seq = d.next_seq.wrapping_add(1);
                    d.storage.push(StoredRecord {
                        seq,
                        bpm: m.clone(),
                    });
                    let id = CharacteristicId::sig(0x1810, cu::BLOOD_PRESSURE_MEASUREMENT);
                    if subscribed(&d, &id) {
                        out.push(vec![(id, encode(m.encode())?)]);
                    }
                }
                Emission::SpotCheck(mut m) => {
                    m.timestamp = stamp;
                    let id = CharacteristicId::sig(0x1822, cu::PLX_SPOT_CHECK_MEASUREMENT);
                    if subscribed(&d, &id) {
                        out.push(vec![(id, encode(m.encode())?)]);
                    }
                }
                Emission::Continuous(m) => {
                    let id = CharacteristicId::sig(0x1822, cu::PLX_CONTINUOUS_MEASUREMENT);
                    if subscribed(&d, &id) {
                        out.push(vec![(id, encode(m.encode())?)]);
                    }
                }
                Emission::Spirometry(mut r) if d.config.kind == DeviceKind::VendorSpirometer => {
                    r.timestamp = stamp;
                    let id = CharacteristicId {
                        service: SimSpirometerV1::SERVICE,
                        uuid: SimSpirometerV1::RESULT,
                    };
                    if subscribed(&d, &id) {
                        out.push(vec![(id, encode(SimSpirometerV1::encode(&r))?)]);
                    } else {
                        r.from_storage = true;
                        d.pending_spirometry.push(r);
                    }
                }
                Emission::Spirometry(r) => {
                    let at = device_now.to_offset(time::UtcOffset::UTC);
                    let at = PrimitiveDateTime::new(at.date(), at.time());
                    let o = ghs::spirometry_observation(&r, Some(at));
                    if let Some(group) = d.ghs_live_or_store(o)? {
                        out.push(group);
                    }
                }
                Emission::Observation(o) => {
                    if let Some(group) = d.ghs_live_or_store(o)? {
                        out.push(group);
                    }
                }
                Emission::Raw(id, bytes) => {
                    if subscribed(&d, &id) {
                        out.push(vec![(id, bytes)]);
                    }
                }
            }
            if d.duplicate_indications {
                out = out.into_iter().flat_map(|v| [v.clone(), v]).collect();
            }
            d.link.as_ref().map(|l| l.tx.clone())
        };
        if let Some(tx) = tx {
            for (characteristic, bytes) in out.into_iter().flatten() {
                if tx
                    .send(LinkEvent::Value {
                        characteristic,
                        bytes,
                    })
                    .await
                    .is_ok()
                {
                    lock(&dev).log.values_sent += 1;
                }
            }
        }
        Ok(())
    }
}

impl DeviceState {
    /// A GHS observation: the segments of a Live Health Observation when the gateway
    /// subscribed and started live observations on this link, else stored for RACP.
    #[allow(clippy::type_complexity)]
    fn ghs_live_or_store(
        &mut self,
        o: Observation,
    ) -> Result<Option<Vec<(CharacteristicId, Vec<u8>)>>, DeviceError> {
        if self.config.kind != DeviceKind::Spirometer {
            return Err(DeviceError::Other {
                message: "only the GHS spirometer sends GHS observations".into(),
                retryable: false,
            });
        }
        let id = CharacteristicId::sig(0x1840, cu::LIVE_HEALTH_OBSERVATIONS);
        let live = self
            .link
            .as_ref()
            .is_some_and(|l| l.live_observations && l.subscribed.contains(&id));
        if !live {
            self.ghs.push(o);
            return Ok(None);
        }
        let segs = segment::split(
            &encode(o.encode())?,
            self.config.payload,
            self.segment_counter,
        );
        self.segment_counter = self.segment_counter.wrapping_add(segs.len() as u8) & 0x3F;
        Ok(Some(segs.into_iter().map(|b| (id, b)).collect()))
    }
}

fn encode(r: Result<Vec<u8>, gateway::codec::EncodeError>) -> Result<Vec<u8>, DeviceError> {
    r.map_err(|e| DeviceError::Other {
        message: format!("simulator could not encode: {e}"),
        retryable: false,
    })
}

fn props(read: bool, write: bool, notify: bool, indicate: bool) -> Properties {
    Properties {
        read,
        write,
        notify,
        indicate,
    }
}

fn gatt(config: &SimDeviceConfig) -> Vec<Characteristic> {
    let mut c = vec![];
    let mut add = |service: u16, uuid: u16, p: Properties| {
        c.push(Characteristic {
            id: CharacteristicId::sig(service, uuid),
            properties: p,
        });
    };
    let r = props(true, false, false, false);
    for u in [
        cu::MANUFACTURER_NAME,
        cu::MODEL_NUMBER,
        cu::SERIAL_NUMBER,
        cu::FIRMWARE_REVISION,
    ] {
        add(0x180A, u, r);
    }
    if config.system_id.is_some() {
        add(0x180A, cu::SYSTEM_ID, r);
    }
    add(0x180F, cu::BATTERY_LEVEL, props(true, false, true, false));
    add(0x1805, cu::CURRENT_TIME, props(true, true, true, false));
    let ind = props(false, false, false, true);
    match config.kind {
        DeviceKind::BpCuff => {
            add(0x1810, cu::BLOOD_PRESSURE_MEASUREMENT, ind);
            add(0x1810, cu::BLOOD_PRESSURE_FEATURE, r);
            add(0x1810, BLOOD_PRESSURE_RECORD, ind);
            add(
                0x1810,
                cu::RECORD_ACCESS_CONTROL_POINT,
                props(false, true, false, true),
            );
        }
        DeviceKind::Oximeter => {
            add(0x1822, cu::PLX_SPOT_CHECK_MEASUREMENT, ind);
            add(
                0x1822,
                cu::PLX_CONTINUOUS_MEASUREMENT,
                props(false, false, true, false),
            );
            add(0x1822, cu::PLX_FEATURES, r);
        }
        DeviceKind::Spirometer => {
            let both = props(false, false, true, true);
            add(0x1840, cu::HEALTH_SENSOR_FEATURES, r);
            add(0x1840, cu::LIVE_HEALTH_OBSERVATIONS, both);
            add(0x1840, cu::STORED_HEALTH_OBSERVATIONS, both);
            add(
                0x1840,
                cu::RECORD_ACCESS_CONTROL_POINT,
                props(false, true, false, true),
            );
            add(
                0x1840,
                cu::GHS_CONTROL_POINT,
                props(false, true, false, true),
            );
        }
        DeviceKind::VendorSpirometer => c.push(Characteristic {
            id: CharacteristicId {
                service: SimSpirometerV1::SERVICE,
                uuid: SimSpirometerV1::RESULT,
            },
            // Indicates results; takes writes like a serial bridge (driver replies).
            properties: props(false, true, false, true),
        }),
    }
    c
}

impl DeviceSource for SimWorld {
    type Link = SimLink;

    async fn scan(&self, filter: &ScanFilter) -> Result<Vec<Advertisement>, DeviceError> {
        let devices: Vec<Shared> = self.devices().values().cloned().collect();
        let mut out = vec![];
        for d in devices {
            let d = lock(&d);
            if !d.present {
                continue;
            }
            let service = match d.config.kind {
                DeviceKind::BpCuff => services::BLOOD_PRESSURE,
                DeviceKind::Oximeter => services::PULSE_OXIMETER,
                DeviceKind::Spirometer => services::GENERIC_HEALTH_SENSOR,
                DeviceKind::VendorSpirometer => SimSpirometerV1::SERVICE,
            };
            if filter.services.is_empty() || filter.services.contains(&service) {
                out.push(Advertisement {
                    address: d.config.address,
                    local_name: None,
                    services: vec![service],
                    rssi: Some(-60),
                });
            }
        }
        Ok(out)
    }

    async fn connect(&self, address: Address) -> Result<SimLink, DeviceError> {
        let dev = self.device(address).ok_or(DeviceError::NotFound)?;
        let (tx, rx) = mpsc::channel(LINK_EVENT_CAPACITY);
        let generation = {
            let mut d = lock(&dev);
            if !d.present {
                return Err(DeviceError::NotFound);
            }
            d.generation += 1;
            d.log.connections += 1;
            d.link = Some(LiveLink {
                generation: d.generation,
                tx,
                subscribed: HashSet::new(),
                live_observations: false,
            });
            d.generation
        };
        Ok(SimLink {
            device: dev,
            generation,
            events: Some(rx),
            clock: self.clock.clone(),
            audit: self.audit.clone(),
            transfer: None,
        })
    }
}

/// A link to a simulated device.
pub struct SimLink {
    device: Shared,
    generation: u64,
    events: Option<mpsc::Receiver<LinkEvent>>,
    clock: SimClock,
    audit: Option<Queue>,
    transfer: Option<JoinHandle<()>>,
}

impl Drop for SimLink {
    fn drop(&mut self) {
        if let Some(t) = self.transfer.take() {
            t.abort();
        }
        let mut d = lock(&self.device);
        if d.link
            .as_ref()
            .is_some_and(|l| l.generation == self.generation)
        {
            d.link = None;
        }
    }
}

impl SimLink {
    fn tx(&self) -> Result<mpsc::Sender<LinkEvent>, DeviceError> {
        let d = lock(&self.device);
        Ok(d.live(self.generation)?.tx.clone())
    }

    fn respond(&self, request: u8, code: ResponseCode) -> Result<(), DeviceError> {
        let bytes = encode(
            RecordAccessControlPoint::new(RacpMessage::Response {
                request_op_code: request,
                response_code: code,
            })
            .encode(),
        )?;
        let tx = self.tx()?;
        let ok = tx
            .try_send(LinkEvent::Value {
                characteristic: CharacteristicId::sig(0x1810, cu::RECORD_ACCESS_CONTROL_POINT),
                bytes,
            })
            .is_ok();
        if ok {
            lock(&self.device).log.values_sent += 1;
        }
        Ok(())
    }

    async fn racp(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let request = match RecordAccessControlPoint::decode(bytes) {
            Ok(r) => r.message,
            Err(e) => {
                let code = gateway::codec::racp::response_code_for(&e);
                return self.respond(bytes.first().copied().unwrap_or(0), code);
            }
        };
        lock(&self.device).log.racp_requests.push(request);
        match request {
            RacpMessage::ReportStoredRecords(filter) => {
                let (segments, cut, tx) = {
                    let mut d = lock(&self.device);
                    let tx = d.live(self.generation)?.tx.clone();
                    let from = match filter {
                        RecordFilter::GreaterThanOrEqual(FilterValue::SequenceNumber(n)) => n,
                        RecordFilter::AllRecords => 0,
                        _ => {
                            drop(d);
                            return self.respond(1, ResponseCode::OperatorNotSupported);
                        }
                    };
                    let from = if d.ignore_filter { 0 } else { from };
                    let payload = d.config.payload;
                    let mut counter = d.segment_counter;
                    let mut records = vec![];
                    for r in d.storage.iter().filter(|r| r.seq >= from) {
                        let rec = RecordBody {
                            sequence_number: r.seq,
                            recorded: RecordedValue::BloodPressureMeasurement(r.bpm.clone()),
                        };
                        let segs = segment::split(&encode(rec.encode())?, payload, counter);
                        counter = counter.wrapping_add(segs.len() as u8) & 0x3F;
                        records.push(segs);
                    }
                    d.segment_counter = counter;
                    (records, d.take_cut(), tx)
                };
                let done = |code| {
                    encode(
                        RecordAccessControlPoint::new(RacpMessage::Response {
                            request_op_code: 1,
                            response_code: code,
                        })
                        .encode(),
                    )
                };
                let transfer = Transfer {
                    device: self.device.clone(),
                    generation: self.generation,
                    tx,
                    data: CharacteristicId::sig(0x1810, BLOOD_PRESSURE_RECORD),
                    racp: CharacteristicId::sig(0x1810, cu::RECORD_ACCESS_CONTROL_POINT),
                    success: done(ResponseCode::Success)?,
                    none_found: done(ResponseCode::NoRecordsFound)?,
                };
                self.transfer = Some(tokio::spawn(transfer.run(segments, cut)));
                Ok(())
            }
            RacpMessage::DeleteStoredRecords(filter) => {
                let upto = match filter {
                    RecordFilter::LessThanOrEqual(FilterValue::SequenceNumber(n)) => n,
                    RecordFilter::AllRecords => u16::MAX,
                    _ => return self.respond(2, ResponseCode::OperatorNotSupported),
                };
                let doomed: Vec<(u16, Option<PrimitiveDateTime>)> = lock(&self.device)
                    .storage
                    .iter()
                    .filter(|r| r.seq <= upto)
                    .map(|r| (r.seq, r.bpm.timestamp.and_then(|t| t.to_primitive())))
                    .collect();
                let check: Vec<_> = doomed
                    .iter()
                    .map(|(seq, t)| (format!("record {seq}"), ReadingType::BloodPressure, *t))
                    .collect();
                let violations = self.audit(&check).await;
                {
                    let mut d = lock(&self.device);
                    d.log.audit_violations.extend(violations);
                    d.storage.retain(|r| r.seq > upto);
                    d.log.deleted.extend(doomed.iter().map(|(s, _)| *s));
                }
                self.respond(2, ResponseCode::Success)
            }
            RacpMessage::AbortOperation => {
                if let Some(t) = self.transfer.take() {
                    t.abort();
                }
                self.respond(3, ResponseCode::Success)
            }
            _ => self.respond(
                bytes.first().copied().unwrap_or(0),
                ResponseCode::OpCodeNotSupported,
            ),
        }
    }

    /// Which of the records about to be deleted (label, reading type, device time) the
    /// queue does not hold.
    async fn audit(
        &self,
        doomed: &[(String, ReadingType, Option<PrimitiveDateTime>)],
    ) -> Vec<String> {
        let Some(queue) = &self.audit else {
            return vec![];
        };
        let queued = match queue.peek(0, 1_000_000).await {
            Ok(q) => q,
            Err(e) => return vec![format!("audit could not read the queue: {e}")],
        };
        doomed
            .iter()
            .filter(|(_, rt, t)| {
                !queued
                    .iter()
                    .any(|r| r.reading_type == *rt && r.device_time == *t)
            })
            .map(|(label, _, _)| format!("{label} deleted before it was queued"))
            .collect()
    }

    fn ghs_respond(&self, message: GhsRacp) -> Result<(), DeviceError> {
        let tx = self.tx()?;
        let ok = tx
            .try_send(LinkEvent::Value {
                characteristic: CharacteristicId::sig(0x1840, cu::RECORD_ACCESS_CONTROL_POINT),
                bytes: message.encode(),
            })
            .is_ok();
        if ok {
            lock(&self.device).log.values_sent += 1;
        }
        Ok(())
    }

    fn ghs_response(&self, request_op_code: u8, code: ResponseCode) -> Result<(), DeviceError> {
        self.ghs_respond(GhsRacp::Response {
            request_op_code,
            response_code: code,
        })
    }

    /// The GHS Record Access Control Point: record numbers are `u32`, stored observations
    /// go out on Stored Health Observations (0x2BDD), segmented.
    async fn ghs_racp(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let request = match GhsRacp::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                let code = gateway::codec::racp::response_code_for(&e);
                return self.ghs_response(bytes.first().copied().unwrap_or(0), code);
            }
        };
        lock(&self.device).log.ghs_racp_requests.push(request);
        match request {
            GhsRacp::ReportStoredRecords(filter) => {
                if ghs::invalid_filter(filter) {
                    return self.ghs_response(1, ResponseCode::InvalidOperand);
                }
                let (segments, cut, tx) = {
                    let mut d = lock(&self.device);
                    let tx = d.live(self.generation)?.tx.clone();
                    let filter = if d.ignore_filter {
                        GhsRecordFilter::AllRecords
                    } else {
                        filter
                    };
                    let payload = d.config.payload;
                    let mut counter = d.segment_counter;
                    let mut records = vec![];
                    for r in d.ghs.select(filter) {
                        let stored = StoredObservation {
                            record_number: r.number,
                            observation: r.observation.clone(),
                        };
                        let segs = segment::split(&encode(stored.encode())?, payload, counter);
                        counter = counter.wrapping_add(segs.len() as u8) & 0x3F;
                        records.push(segs);
                    }
                    d.segment_counter = counter;
                    (records, d.take_cut(), tx)
                };
                let done = |code| {
                    GhsRacp::Response {
                        request_op_code: 1,
                        response_code: code,
                    }
                    .encode()
                };
                let transfer = Transfer {
                    device: self.device.clone(),
                    generation: self.generation,
                    tx,
                    data: CharacteristicId::sig(0x1840, cu::STORED_HEALTH_OBSERVATIONS),
                    racp: CharacteristicId::sig(0x1840, cu::RECORD_ACCESS_CONTROL_POINT),
                    success: done(ResponseCode::Success),
                    none_found: done(ResponseCode::NoRecordsFound),
                };
                self.transfer = Some(tokio::spawn(transfer.run(segments, cut)));
                Ok(())
            }
            GhsRacp::DeleteStoredRecords(filter) => {
                if ghs::invalid_filter(filter) {
                    return self.ghs_response(2, ResponseCode::InvalidOperand);
                }
                let doomed: Vec<(String, ReadingType, Option<PrimitiveDateTime>)> =
                    lock(&self.device)
                        .ghs
                        .select(filter)
                        .iter()
                        .map(|r| {
                            let first = r.observation.numerics().into_iter().next();
                            let rt = first
                                .and_then(|i| ghs_kind(i.observation_type, i.unit))
                                .map_or(ReadingType::Spirometry, |(_, _, rt)| rt);
                            let t = first
                                .and_then(|i| i.time_stamp)
                                .and_then(|t| t.wall_clock());
                            (format!("observation {}", r.number), rt, t)
                        })
                        .collect();
                if doomed.is_empty() {
                    return self.ghs_response(2, ResponseCode::NoRecordsFound);
                }
                let violations = self.audit(&doomed).await;
                {
                    let mut d = lock(&self.device);
                    d.log.audit_violations.extend(violations);
                    let gone = d.ghs.delete(filter);
                    d.log.ghs_deleted.extend(gone.iter().map(|r| r.number));
                }
                self.ghs_response(2, ResponseCode::Success)
            }
            GhsRacp::AbortOperation => {
                if let Some(t) = self.transfer.take() {
                    t.abort();
                }
                self.ghs_response(3, ResponseCode::Success)
            }
            GhsRacp::ReportNumberOfStoredRecords(filter) => {
                if ghs::invalid_filter(filter) {
                    return self.ghs_response(4, ResponseCode::InvalidOperand);
                }
                let n = lock(&self.device).ghs.select(filter).len();
                self.ghs_respond(GhsRacp::NumberOfStoredRecords(
                    u32::try_from(n).unwrap_or(u32::MAX),
                ))
            }
            GhsRacp::NumberOfStoredRecords(_) | GhsRacp::Response { .. } => self.ghs_response(
                bytes.first().copied().unwrap_or(0),
                ResponseCode::OpCodeNotSupported,
            ),
        }
    }

    /// The GHS Control Point: start or stop live observations on this link, confirmed
    /// with 0x80 (success) by indication. A value that is not a client op code is refused
    /// with an ATT application error, as the clock write is.
    fn control_point(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let op = GhsControlPoint::decode(bytes).map_err(|_| DeviceError::Att(0x80))?;
        let start = match op {
            GhsControlPoint::StartSendingLiveObservations => true,
            GhsControlPoint::StopSendingLiveObservations => false,
            GhsControlPoint::Success => return Err(DeviceError::Att(0x80)),
        };
        let id = CharacteristicId::sig(0x1840, cu::GHS_CONTROL_POINT);
        let tx = {
            let mut d = lock(&self.device);
            if d.config.kind != DeviceKind::Spirometer {
                return Err(DeviceError::NotPermitted(id.uuid, "write"));
            }
            d.log.control_point_writes.extend_from_slice(bytes);
            let generation = self.generation;
            let link = d
                .link
                .as_mut()
                .filter(|l| l.generation == generation)
                .ok_or(DeviceError::Disconnected)?;
            link.live_observations = start;
            link.subscribed.contains(&id).then(|| link.tx.clone())
        };
        if let Some(tx) = tx
            && tx
                .try_send(LinkEvent::Value {
                    characteristic: id,
                    bytes: vec![0x80],
                })
                .is_ok()
        {
            lock(&self.device).log.values_sent += 1;
        }
        Ok(())
    }
}

impl DeviceState {
    /// How the next transfer is cut short, if a fault is armed.
    fn take_cut(&mut self) -> Cut {
        if let Some(n) = self.disconnect_after_records.take() {
            Cut::Disconnect(n)
        } else if let Some(n) = self.stall_after_records.take() {
            Cut::Stall(n)
        } else {
            Cut::None
        }
    }
}

/// How a record transfer ends early.
#[derive(Clone, Copy, Debug)]
enum Cut {
    None,
    /// The link drops before record `n`.
    Disconnect(usize),
    /// The device goes quiet before record `n`.
    Stall(usize),
}

/// A running RACP report: records (each one's segments) on `data`, then the response on
/// `racp`. Shared by the cuff (BLS) and the spirometer (GHS).
struct Transfer {
    device: Shared,
    generation: u64,
    tx: mpsc::Sender<LinkEvent>,
    data: CharacteristicId,
    racp: CharacteristicId,
    success: Vec<u8>,
    none_found: Vec<u8>,
}

impl Transfer {
    async fn send(&self, characteristic: CharacteristicId, bytes: Vec<u8>) -> bool {
        let ok = self
            .tx
            .send(LinkEvent::Value {
                characteristic,
                bytes,
            })
            .await
            .is_ok();
        if ok {
            lock(&self.device).log.values_sent += 1;
        }
        ok
    }

    async fn run(self, records: Vec<Vec<Vec<u8>>>, cut: Cut) {
        let empty = records.is_empty();
        for (i, segs) in records.into_iter().enumerate() {
            match cut {
                Cut::Disconnect(n) if n == i => {
                    {
                        let mut d = lock(&self.device);
                        if d.link
                            .as_ref()
                            .is_some_and(|l| l.generation == self.generation)
                        {
                            d.link = None;
                        }
                    }
                    let _ = self
                        .tx
                        .send(LinkEvent::Disconnected {
                            reason: DisconnectReason::Timeout,
                        })
                        .await;
                    return;
                }
                Cut::Stall(n) if n == i => return,
                _ => {}
            }
            for bytes in segs {
                if !self.send(self.data, bytes).await {
                    return;
                }
            }
        }
        let response = if empty {
            self.none_found.clone()
        } else {
            self.success.clone()
        };
        self.send(self.racp, response).await;
    }
}

impl DeviceLink for SimLink {
    fn address(&self) -> Address {
        lock(&self.device).config.address
    }

    fn take_events(&mut self) -> Option<mpsc::Receiver<LinkEvent>> {
        self.events.take()
    }

    async fn discover(&mut self) -> Result<Vec<Characteristic>, DeviceError> {
        let d = lock(&self.device);
        d.live(self.generation)?;
        Ok(gatt(&d.config))
    }

    async fn read(&mut self, characteristic: CharacteristicId) -> Result<Vec<u8>, DeviceError> {
        let now = self.clock.get();
        let d = lock(&self.device);
        d.live(self.generation)?;
        let u = characteristic.uuid.as_u16().unwrap_or(0);
        let text = |s: &str| encode(DisString::new(s).encode());
        match u {
            cu::MANUFACTURER_NAME => text("RPM Simulators"),
            cu::MODEL_NUMBER => text(match d.config.kind {
                DeviceKind::BpCuff => "SIM-BP2",
                DeviceKind::Oximeter => "SIM-OX1",
                DeviceKind::Spirometer => "SIM-SP2",
                DeviceKind::VendorSpirometer => "SIM-SP1",
            }),
            cu::SERIAL_NUMBER => text(&format!(
                "SIM{:02x}{:02x}",
                d.config.address.0[4], d.config.address.0[5]
            )),
            cu::FIRMWARE_REVISION => text("1.0.0"),
            cu::SYSTEM_ID => {
                let eui = d
                    .config
                    .system_id
                    .ok_or(DeviceError::NoSuchCharacteristic(characteristic.uuid))?;
                encode(
                    SystemId {
                        manufacturer_identifier: eui & 0xFF_FFFF_FFFF,
                        organizationally_unique_identifier: (eui >> 40) as u32,
                        quirks: vec![],
                    }
                    .encode(),
                )
            }
            cu::BATTERY_LEVEL => encode(
                BatteryLevel {
                    percent: d.battery,
                    quirks: vec![],
                }
                .encode(),
            ),
            cu::CURRENT_TIME => encode(
                CurrentTime {
                    date_time: date_time(d.clock_now(now)),
                    day_of_week: DayOfWeek::Unknown,
                    fractions256: 0,
                    adjust_reason: Default::default(),
                    quirks: vec![],
                }
                .encode(),
            ),
            cu::PLX_FEATURES => encode(
                PlxFeatures {
                    supported: PlxSupportedFeatures::SPOT_CHECK_TIMESTAMP
                        | PlxSupportedFeatures::PULSE_AMPLITUDE_INDEX,
                    measurement_status_support: None,
                    device_and_sensor_status_support: None,
                    quirks: vec![],
                }
                .encode(),
            ),
            cu::BLOOD_PRESSURE_FEATURE => Ok(vec![0x1F, 0x00]),
            cu::HEALTH_SENSOR_FEATURES if d.config.kind == DeviceKind::Spirometer => {
                encode(ghs::features().encode())
            }
            _ => Err(DeviceError::NotPermitted(characteristic.uuid, "read")),
        }
    }

    async fn write(
        &mut self,
        characteristic: CharacteristicId,
        bytes: &[u8],
    ) -> Result<(), DeviceError> {
        {
            let mut d = lock(&self.device);
            d.live(self.generation)?;
            if d.config.kind == DeviceKind::VendorSpirometer
                && characteristic.uuid == SimSpirometerV1::RESULT
            {
                d.log.vendor_writes.push(bytes.to_vec());
                return Ok(());
            }
        }
        match characteristic.uuid.as_u16() {
            Some(cu::CURRENT_TIME) => {
                let t = CurrentTime::decode(bytes).map_err(|_| DeviceError::Att(0x80))?;
                let set = t
                    .date_time
                    .to_primitive()
                    .ok_or(DeviceError::Att(0x80))?
                    .assume_utc();
                let now = self.clock.get();
                let mut d = lock(&self.device);
                d.offset = set - now;
                d.offset_at = now;
                d.log.clock_writes += 1;
                Ok(())
            }
            Some(cu::RECORD_ACCESS_CONTROL_POINT)
                if characteristic.service == services::GENERIC_HEALTH_SENSOR =>
            {
                self.ghs_racp(bytes).await
            }
            Some(cu::RECORD_ACCESS_CONTROL_POINT) => self.racp(bytes).await,
            Some(cu::GHS_CONTROL_POINT)
                if characteristic.service == services::GENERIC_HEALTH_SENSOR =>
            {
                self.control_point(bytes)
            }
            _ => Err(DeviceError::NotPermitted(characteristic.uuid, "write")),
        }
    }

    async fn subscribe(&mut self, characteristic: CharacteristicId) -> Result<(), DeviceError> {
        let (pending, tx) = {
            let mut d = lock(&self.device);
            let generation = self.generation;
            let link = d
                .link
                .as_mut()
                .filter(|l| l.generation == generation)
                .ok_or(DeviceError::Disconnected)?;
            link.subscribed.insert(characteristic);
            let tx = link.tx.clone();
            let pending = if characteristic.uuid == SimSpirometerV1::RESULT {
                std::mem::take(&mut d.pending_spirometry)
            } else {
                vec![]
            };
            (pending, tx)
        };
        // The spirometer pushes results it held while the hub was away.
        for r in pending {
            let bytes = encode(SimSpirometerV1::encode(&r))?;
            if tx
                .try_send(LinkEvent::Value {
                    characteristic,
                    bytes,
                })
                .is_ok()
            {
                lock(&self.device).log.values_sent += 1;
            }
        }
        Ok(())
    }

    async fn disconnect(&mut self) -> Result<(), DeviceError> {
        let mut d = lock(&self.device);
        if d.link
            .as_ref()
            .is_some_and(|l| l.generation == self.generation)
        {
            d.link = None;
        }
        Ok(())
    }
}
