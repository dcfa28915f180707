//! The hub's contact with one patient device, from connection to queued readings.
//!
//! A [`Session`] owns one device address for as long as the hub runs. Each connection:
//!
//! 1. discover the GATT table;
//! 2. on the first contact, read Device Information and check the device against the
//!    allowlist (System ID → `eui64:`, else the address → `bdaddr:`); a device nobody bound
//!    ends the session ([`SessionError::NotAllowlisted`]). Before that, a backend that
//!    requires pairing refuses to connect to a device that is not paired
//!    ([`DeviceError::NotPaired`]): counted in `refused_unpaired`, logged once, and tried
//!    again with backoff, so pairing the device later is all it takes;
//! 3. read the battery, read the device clock (Current Time, else Date Time), measure its
//!    offset from the gateway clock, and set it when it is off by more than the tolerance or
//!    "not known";
//! 4. subscribe to every measurement characteristic (again after every reconnect);
//! 5. fetch stored records with RACP — "greater than or equal to sequence N" through the
//!    Blood Pressure Record where the cuff has one, "all records" on an oximeter with
//!    spot-check storage — push each reading to the [`Queue`], and only when every record
//!    of the transfer is durable ask the device to delete them;
//! 6. stream live values until the link drops, reconnecting with capped exponential backoff
//!    and full jitter. When the stream is quiet for the watchdog period, a read probes the
//!    link; a link that does not answer is dropped and re-established.
//!
//! Every received value is decoded and mapped by [`super::mapping`]; a value that does not
//! decode or map is counted in [`SessionStats`] and logged by characteristic and reason
//! only (no identifiers, no values), and the session goes on.
//!
//! Time is injected ([`Clock`]); timers (backoff, watchdog, operation timeouts) are tokio's.

use std::sync::Arc;
use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vitals::{DeviceBinding, DeviceId, DeviceIdentity, GatewayId, Reading};

use crate::codec::blood_pressure::BloodPressureMeasurement;
use crate::codec::blood_pressure_record::{MAX_RECORD, RecordBody, RecordedValue};
use crate::codec::date_time::{CurrentTime, DateTime, DateTimeCharacteristic, DayOfWeek};
use crate::codec::device_information::{DisString, SystemId};
use crate::codec::ghs::{self, GhsRacp, GhsRecordFilter, StoredObservation};
use crate::codec::pulse_oximeter::{
    PlxContinuousMeasurement, PlxFeatures, PlxSpotCheckMeasurement, PlxSupportedFeatures,
};
use crate::codec::racp::{
    FilterValue, RacpMessage, RecordAccessControlPoint, RecordFilter, ResponseCode,
};
use crate::codec::segment::Reassembler;
use crate::codec::uuid::BLOOD_PRESSURE_RECORD;
use crate::codec::{DecodeError, battery::BatteryLevel, uuid as cu};
use crate::queue::{Queue, QueueError};

use super::mapping::{self, ClockCorrection, MapContext, MapError};
use super::spirometry::SpirometerDriver;
use super::{
    Address, Backoff, BackoffConfig, Characteristic, CharacteristicId, DeviceError, DeviceLink,
    DeviceSource, LinkEvent, Uuid,
};

/// The gateway's wall clock. Logic takes one instead of calling `now()`, so tests and the
/// simulators run on virtual time.
pub trait Clock: Send + Sync + 'static {
    /// Now, on the gateway's clock.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// How a session behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// This gateway (stamped on every reading).
    pub gateway: GatewayId,
    /// Set the device clock when it is off by more than this.
    pub clock_tolerance: Duration,
    /// Probe the link when no event came for this long.
    pub watchdog: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Longest wait for one GATT operation, a connection, or the next RACP event.
    pub op_timeout: Duration,
    /// The zone device clocks are set in and read in.
    pub zone: UtcOffset,
    /// A battery at or below this percentage flags readings [`vitals::Flag::LowBattery`].
    pub low_battery_percent: u8,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
}

impl SessionConfig {
    /// Defaults with the `[ble]` settings of the gateway configuration.
    pub fn from_ble(gateway: GatewayId, ble: &crate::config::BleConfig) -> Self {
        SessionConfig {
            gateway,
            clock_tolerance: ble.clock_tolerance,
            watchdog: ble.watchdog,
            backoff: BackoffConfig::default(),
            op_timeout: Duration::from_secs(10),
            zone: UtcOffset::UTC,
            low_battery_percent: 15,
            jitter_seed: 0x5eed,
        }
    }
}

/// Where a session is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    #[default]
    Idle,
    /// Connecting.
    Connecting,
    /// Connected: reading information, clock, subscribing.
    Setup,
    /// Fetching stored records.
    Transferring,
    /// Connected and receiving live values.
    Streaming,
    /// Waiting before the next connection attempt.
    Backoff,
    /// Ended.
    Stopped,
}

/// Counters and last-known device state, published on a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Where the session is.
    pub phase: Phase,
    /// Successful connections.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Connection attempts the backend refused because the device is not paired with the
    /// hub ([`DeviceError::NotPaired`]); the session keeps trying, with backoff.
    pub refused_unpaired: u64,
    /// Links lost (including those the watchdog dropped).
    pub disconnects: u64,
    /// Values received from the device (every notification/indication).
    pub values_received: u64,
    /// Readings newly queued.
    pub readings_queued: u64,
    /// Readings the queue already had (re-sent indications and records).
    pub duplicates: u64,
    /// Values that did not decode.
    pub decode_errors: u64,
    /// Decoded values that did not become readings.
    pub unmapped: u64,
    /// RACP transfers completed.
    pub transfers: u64,
    /// RACP delete requests the device confirmed.
    pub deletes: u64,
    /// Times the device clock was set.
    pub clock_sets: u64,
    /// Times the watchdog fired.
    pub watchdog_probes: u64,
    /// Queue writes that failed (the link is dropped; the device keeps its records).
    pub queue_errors: u64,
    /// Device clock minus gateway clock at the last contact.
    pub clock_offset: Option<time::Duration>,
    /// Battery percentage at the last contact.
    pub battery: Option<u8>,
    /// The next RACP sequence number to ask for.
    pub next_sequence: Option<u16>,
    /// The device, once identified.
    pub device: Option<DeviceId>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No binding names this device.
    #[error("device is not on the allowlist")]
    NotAllowlisted,
    /// The device refused something retrying cannot fix (pairing, a missing service).
    #[error("permanent device error: {0}")]
    Permanent(DeviceError),
}

/// A RACP request in the service's dialect.
enum Request {
    /// BLS / PLXS (u16 sequence numbers).
    Sig(RacpMessage),
    /// GHS (u32 record numbers).
    Ghs(GhsRacp),
}

/// How one connection ended.
enum End {
    Cancelled,
    LinkLost,
}

/// A failure inside one connection.
enum LinkFault {
    Cancelled,
    Lost,
    Fatal(SessionError),
}

impl From<DeviceError> for LinkFault {
    fn from(e: DeviceError) -> Self {
        if e.is_retryable() {
            LinkFault::Lost
        } else {
            LinkFault::Fatal(SessionError::Permanent(e))
        }
    }
}

impl From<QueueError> for LinkFault {
    fn from(e: QueueError) -> Self {
        warn!(error = %e, "queue write failed; dropping the link so the device keeps its records");
        LinkFault::Lost
    }
}

/// What the connection learned that mapping needs.
#[derive(Clone, Copy)]
struct LinkState {
    /// Offset for live values (after any clock set).
    live: ClockCorrection,
    /// Offset for stored records (measured before any clock set).
    stored: ClockCorrection,
    low_battery: bool,
    in_transfer: bool,
    /// Records of the running transfer that did not decode or map.
    transfer_failures: u32,
    racp: Option<CharacteristicId>,
    probe: Option<CharacteristicId>,
}

/// A device session. Build with [`Session::new`], run with [`Session::spawn`].
pub struct Session<S: DeviceSource> {
    source: Arc<S>,
    address: Address,
    bindings: Arc<[DeviceBinding]>,
    queue: Queue,
    clock: Arc<dyn Clock>,
    config: SessionConfig,
    drivers: Vec<Arc<dyn SpirometerDriver>>,
    stats: watch::Sender<SessionStats>,
    identity: Option<(DeviceIdentity, DeviceBinding)>,
    next_sequence: Option<u16>,
    reassembler: Reassembler,
    ghs_live: Reassembler,
    ghs_stored: Reassembler,
    next_record_number: Option<u32>,
    /// Driver answers (ACK/NAK) for results already durable, written after each value.
    pending_replies: Vec<(CharacteristicId, Vec<u8>)>,
    backoff: Backoff,
    /// The "not paired" warning was logged since the last connection.
    warned_unpaired: bool,
}

/// A running session: its stats, and the handle that ends it (dropping it cancels too).
pub struct SessionHandle {
    stats: watch::Receiver<SessionStats>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), SessionError>>>,
}

impl SessionHandle {
    /// The live stats.
    pub fn stats(&self) -> watch::Receiver<SessionStats> {
        self.stats.clone()
    }

    /// Whether the session task has ended (refused device, permanent error).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Cancels and waits for the session to end; its result.
    pub async fn shutdown(mut self) -> Result<(), SessionError> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn find(chars: &[Characteristic], service: u16, uuid: u16) -> Option<Characteristic> {
    let id = CharacteristicId::sig(service, uuid);
    chars.iter().copied().find(|c| c.id == id)
}

fn find_any(chars: &[Characteristic], uuid: u16) -> Option<Characteristic> {
    let u = Uuid::from_u16(uuid);
    chars.iter().copied().find(|c| c.id.uuid == u)
}

impl<S: DeviceSource> Session<S> {
    /// A session for the device at `address`, allowed if one of `bindings` names it.
    pub fn new(
        source: Arc<S>,
        address: Address,
        bindings: Arc<[DeviceBinding]>,
        queue: Queue,
        clock: Arc<dyn Clock>,
        config: SessionConfig,
    ) -> Self {
        let seed = config.jitter_seed
            ^ u64::from_le_bytes({
                let mut b = [0u8; 8];
                b[..6].copy_from_slice(&address.0);
                b
            });
        Session {
            source,
            address,
            bindings,
            queue,
            clock,
            backoff: Backoff::new(config.backoff, seed),
            config,
            drivers: Vec::new(),
            stats: watch::Sender::new(SessionStats::default()),
            identity: None,
            next_sequence: None,
            reassembler: Reassembler::new(MAX_RECORD),
            ghs_live: Reassembler::new(ghs::MAX_OBSERVATION),
            ghs_stored: Reassembler::new(ghs::MAX_OBSERVATION),
            next_record_number: None,
            pending_replies: Vec::new(),
            warned_unpaired: false,
        }
    }

    /// Adds a spirometer driver (its characteristic is subscribed when present).
    #[must_use]
    pub fn with_driver(mut self, driver: Arc<dyn SpirometerDriver>) -> Self {
        self.drivers.push(driver);
        self
    }

    /// Runs on a task owned by the returned handle.
    pub fn spawn(self, cancel: CancellationToken) -> SessionHandle {
        let stats = self.stats.subscribe();
        let task = tokio::spawn(self.run(cancel.clone()));
        SessionHandle {
            stats,
            cancel,
            task: Some(task),
        }
    }

    fn update(&self, f: impl FnOnce(&mut SessionStats)) {
        self.stats.send_modify(f);
    }

    /// Connects, serves and reconnects until cancelled or refused.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), SessionError> {
        let result = self.run_inner(&cancel).await;
        self.update(|s| s.phase = Phase::Stopped);
        result
    }

    async fn run_inner(&mut self, cancel: &CancellationToken) -> Result<(), SessionError> {
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            self.update(|s| s.phase = Phase::Connecting);
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = tokio::time::timeout(self.config.op_timeout, self.source.connect(self.address)) => r,
            };
            match attempt {
                Ok(Ok(link)) => {
                    self.warned_unpaired = false;
                    self.update(|s| s.connects += 1);
                    match self.serve(link, cancel).await {
                        Ok(End::Cancelled) => return Ok(()),
                        Ok(End::LinkLost) => {
                            self.update(|s| s.disconnects += 1);
                            debug!("link lost; reconnecting");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(Err(DeviceError::NotPaired)) => {
                    self.update(|s| s.refused_unpaired += 1);
                    // Once, with the address only: whoever pairs the device needs it.
                    if !std::mem::replace(&mut self.warned_unpaired, true) {
                        warn!(
                            address = %self.address,
                            "device not paired with this hub; refused until it is (bluetoothctl pair)"
                        );
                    }
                }
                Ok(Err(e)) if !e.is_retryable() => {
                    warn!(error = %e, "connection refused permanently");
                    return Err(SessionError::Permanent(e));
                }
                Ok(Err(_)) | Err(_) => self.update(|s| s.connect_failures += 1),
            }
            self.update(|s| s.phase = Phase::Backoff);
            let delay = self.backoff.next_delay();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn op<T>(
        &self,
        f: impl Future<Output = Result<T, DeviceError>>,
    ) -> Result<T, DeviceError> {
        tokio::time::timeout(self.config.op_timeout, f)
            .await
            .unwrap_or(Err(DeviceError::Timeout))
    }

    async fn serve(
        &mut self,
        mut link: S::Link,
        cancel: &CancellationToken,
    ) -> Result<End, SessionError> {
        let Some(mut events) = link.take_events() else {
            return Ok(End::LinkLost);
        };
        self.reassembler.reset();
        self.ghs_live.reset();
        self.ghs_stored.reset();
        self.pending_replies.clear();
        let outcome = self.serve_link(&mut link, &mut events, cancel).await;
        let _ = self.op(link.disconnect()).await;
        match outcome {
            Ok(()) | Err(LinkFault::Lost) => Ok(End::LinkLost),
            Err(LinkFault::Cancelled) => Ok(End::Cancelled),
            Err(LinkFault::Fatal(e)) => Err(e),
        }
    }

    async fn serve_link(
        &mut self,
        link: &mut S::Link,
        events: &mut mpsc::Receiver<LinkEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), LinkFault> {
        self.update(|s| s.phase = Phase::Setup);
        let chars = self.op(link.discover()).await?;
        if self.identity.is_none() {
            self.identify(link, &chars).await?;
        }

        let battery_char = find(&chars, 0x180F, cu::BATTERY_LEVEL);
        let mut low_battery = false;
        if let Some(c) = battery_char {
            match BatteryLevel::decode(&self.op(link.read(c.id)).await?) {
                Ok(b) => {
                    low_battery = b.percent <= self.config.low_battery_percent;
                    self.update(|s| s.battery = Some(b.percent));
                }
                Err(e) => self.decode_error(cu::BATTERY_LEVEL, &e),
            }
        }

        let (stored, live) = self.check_clock(link, &chars).await?;

        let mut subscribed = Vec::new();
        let mut wanted: Vec<CharacteristicId> = [
            (0x1810, cu::BLOOD_PRESSURE_MEASUREMENT),
            (0x1810, BLOOD_PRESSURE_RECORD),
            (0x1810, cu::RECORD_ACCESS_CONTROL_POINT),
            (0x1822, cu::PLX_SPOT_CHECK_MEASUREMENT),
            (0x1822, cu::PLX_CONTINUOUS_MEASUREMENT),
            (0x1822, cu::RECORD_ACCESS_CONTROL_POINT),
            (0x1840, cu::LIVE_HEALTH_OBSERVATIONS),
            (0x1840, cu::STORED_HEALTH_OBSERVATIONS),
            (0x1840, cu::RECORD_ACCESS_CONTROL_POINT),
            (0x1840, cu::GHS_CONTROL_POINT),
            (0x180F, cu::BATTERY_LEVEL),
        ]
        .into_iter()
        .map(|(s, c)| CharacteristicId::sig(s, c))
        .collect();
        wanted.extend(self.drivers.iter().map(|d| d.result_characteristic()));
        for id in wanted {
            if let Some(c) = chars.iter().find(|c| c.id == id)
                && (c.properties.indicate || c.properties.notify)
            {
                self.op(link.subscribe(id)).await?;
                subscribed.push(id);
            }
        }

        let bp_racp = CharacteristicId::sig(0x1810, cu::RECORD_ACCESS_CONTROL_POINT);
        let plx_racp = CharacteristicId::sig(0x1822, cu::RECORD_ACCESS_CONTROL_POINT);
        let ghs_racp = CharacteristicId::sig(0x1840, cu::RECORD_ACCESS_CONTROL_POINT);
        let mut state = LinkState {
            live,
            stored,
            low_battery,
            in_transfer: false,
            transfer_failures: 0,
            racp: None,
            probe: battery_char
                .or_else(|| chars.iter().copied().find(|c| c.properties.read))
                .map(|c| c.id),
        };

        if subscribed.contains(&bp_racp)
            && subscribed.contains(&CharacteristicId::sig(0x1810, BLOOD_PRESSURE_RECORD))
        {
            state.racp = Some(bp_racp);
            self.transfer_by_sequence(link, events, cancel, &mut state)
                .await?;
        } else if subscribed.contains(&plx_racp) && self.plx_has_storage(link, &chars).await? {
            state.racp = Some(plx_racp);
            self.transfer_all(link, events, cancel, &mut state).await?;
        }
        if subscribed.contains(&ghs_racp)
            && subscribed.contains(&CharacteristicId::sig(
                0x1840,
                cu::STORED_HEALTH_OBSERVATIONS,
            ))
        {
            state.racp = Some(ghs_racp);
            self.transfer_ghs(link, events, cancel, &mut state).await?;
        }
        // A GHS sensor sends live observations once asked to (GHS Control Point 0x01).
        let ghs_cp = CharacteristicId::sig(0x1840, cu::GHS_CONTROL_POINT);
        if subscribed.contains(&ghs_cp)
            && chars.iter().any(|c| c.id == ghs_cp && c.properties.write)
        {
            self.op(link.write(ghs_cp, &[0x01])).await?;
        }
        self.backoff.reset();

        self.update(|s| s.phase = Phase::Streaming);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return Err(LinkFault::Cancelled),
                r = tokio::time::timeout(self.config.watchdog, events.recv()) => r,
            };
            match next {
                Ok(Some(LinkEvent::Value {
                    characteristic,
                    bytes,
                })) => {
                    self.handle_value(characteristic, &bytes, &mut state)
                        .await?;
                    self.send_replies(link).await?;
                }
                Ok(Some(LinkEvent::Disconnected { .. })) | Ok(None) => {
                    return Err(LinkFault::Lost);
                }
                Err(_quiet) => {
                    self.update(|s| s.watchdog_probes += 1);
                    let Some(probe) = state.probe else {
                        return Err(LinkFault::Lost);
                    };
                    if self.op(link.read(probe)).await.is_err() {
                        info!("watchdog: link did not answer; reconnecting");
                        return Err(LinkFault::Lost);
                    }
                }
            }
        }
    }

    async fn identify(
        &mut self,
        link: &mut S::Link,
        chars: &[Characteristic],
    ) -> Result<(), LinkFault> {
        let mut identity = DeviceIdentity::new(DeviceId::BdAddr(self.address.0));
        let mut system_id = None;
        for (uuid, slot) in [
            (cu::MANUFACTURER_NAME, 0usize),
            (cu::MODEL_NUMBER, 1),
            (cu::SERIAL_NUMBER, 2),
            (cu::FIRMWARE_REVISION, 3),
        ] {
            let Some(c) = find(chars, 0x180A, uuid).filter(|c| c.properties.read) else {
                continue;
            };
            let bytes = self.op(link.read(c.id)).await?;
            match DisString::decode(&bytes) {
                Ok(s) => {
                    let text = device_text(&s.value);
                    let field = match slot {
                        0 => &mut identity.manufacturer,
                        1 => &mut identity.model,
                        2 => &mut identity.serial,
                        _ => &mut identity.firmware,
                    };
                    *field = (!text.is_empty()).then_some(text);
                }
                Err(e) => self.decode_error(uuid, &e),
            }
        }
        if let Some(c) = find(chars, 0x180A, cu::SYSTEM_ID).filter(|c| c.properties.read) {
            match SystemId::decode(&self.op(link.read(c.id)).await?) {
                Ok(s) => system_id = Some(s.eui64()),
                Err(e) => self.decode_error(cu::SYSTEM_ID, &e),
            }
        }
        if let Some(eui) = system_id {
            identity.id = DeviceId::Eui64(eui.to_be_bytes());
        }
        let by_addr = DeviceId::BdAddr(self.address.0);
        let Some(binding) = self
            .bindings
            .iter()
            .find(|b| b.id == identity.id || b.id == by_addr)
            .cloned()
        else {
            warn!("device not on the allowlist; refusing it");
            return Err(LinkFault::Fatal(SessionError::NotAllowlisted));
        };
        // The binding names the device as the server knows it; readings carry that id.
        identity.id = binding.id;
        self.update(|s| s.device = Some(binding.id));
        self.identity = Some((identity, binding));
        Ok(())
    }

    /// Reads the device clock; sets it when off. Returns the corrections for stored and
    /// live values.
    async fn check_clock(
        &mut self,
        link: &mut S::Link,
        chars: &[Characteristic],
    ) -> Result<(ClockCorrection, ClockCorrection), LinkFault> {
        let zone = self.config.zone;
        let none = ClockCorrection {
            device_minus_gateway: None,
            zone,
        };
        let current =
            find(chars, 0x1805, cu::CURRENT_TIME).or_else(|| find_any(chars, cu::CURRENT_TIME));
        let clock_char = current.or_else(|| find_any(chars, cu::DATE_TIME));
        let Some(c) = clock_char.filter(|c| c.properties.read) else {
            return Ok((none, none));
        };
        let is_cts = c.id.uuid == Uuid::from_u16(cu::CURRENT_TIME);
        let bytes = self.op(link.read(c.id)).await?;
        let gateway_now = self.clock.now();
        let decoded = if is_cts {
            CurrentTime::decode(&bytes).map(|t| t.date_time)
        } else {
            DateTimeCharacteristic::decode(&bytes).map(|t| t.value)
        };
        let device_now = match decoded {
            Ok(t) => t.to_primitive(),
            Err(e) => {
                self.decode_error(c.id.uuid.as_u16().unwrap_or(0), &e);
                None
            }
        };
        let offset = device_now.map(|d| d.assume_offset(zone) - gateway_now);
        self.update(|s| s.clock_offset = offset);
        let stored = ClockCorrection {
            device_minus_gateway: offset,
            zone,
        };
        let off = offset.is_none_or(|o| o.unsigned_abs() > self.config.clock_tolerance);
        if !off || !c.properties.write {
            return Ok((stored, stored));
        }
        let now = self.clock.now().to_offset(zone);
        let dt = DateTime::new(
            u16::try_from(now.year()).unwrap_or(0),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
        );
        let bytes = if is_cts {
            CurrentTime {
                date_time: dt,
                day_of_week: DayOfWeek::from_u8(now.weekday().number_from_monday())
                    .unwrap_or(DayOfWeek::Unknown),
                fractions256: 0,
                adjust_reason: crate::codec::date_time::AdjustReason::MANUAL_TIME_UPDATE,
                quirks: vec![],
            }
            .encode()
        } else {
            DateTimeCharacteristic {
                value: dt,
                quirks: vec![],
            }
            .encode()
        };
        let Ok(bytes) = bytes else {
            // Only a year outside 1582..=9999 fails; the gateway clock is not that wrong.
            return Ok((stored, stored));
        };
        self.op(link.write(c.id, &bytes)).await?;
        self.update(|s| {
            s.clock_sets += 1;
            s.clock_offset = Some(time::Duration::ZERO);
        });
        info!("device clock set");
        let live = ClockCorrection {
            device_minus_gateway: Some(time::Duration::ZERO),
            zone,
        };
        Ok((stored, live))
    }

    async fn plx_has_storage(
        &mut self,
        link: &mut S::Link,
        chars: &[Characteristic],
    ) -> Result<bool, LinkFault> {
        let Some(c) = find(chars, 0x1822, cu::PLX_FEATURES).filter(|c| c.properties.read) else {
            return Ok(false);
        };
        match PlxFeatures::decode(&self.op(link.read(c.id)).await?) {
            Ok(f) => Ok(f
                .supported
                .contains(PlxSupportedFeatures::SPOT_CHECK_MEASUREMENT_STORAGE)),
            Err(e) => {
                self.decode_error(cu::PLX_FEATURES, &e);
                Ok(false)
            }
        }
    }

    async fn transfer_by_sequence(
        &mut self,
        link: &mut S::Link,
        events: &mut mpsc::Receiver<LinkEvent>,
        cancel: &CancellationToken,
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        self.update(|s| s.phase = Phase::Transferring);
        state.in_transfer = true;
        state.transfer_failures = 0;
        let from = self.next_sequence.unwrap_or(0);
        let request = RacpMessage::ReportStoredRecords(RecordFilter::GreaterThanOrEqual(
            FilterValue::SequenceNumber(from),
        ));
        let code = self
            .racp_request(link, events, cancel, state, Request::Sig(request))
            .await?;
        state.in_transfer = false;
        match code {
            ResponseCode::Success => {}
            ResponseCode::NoRecordsFound => return Ok(()),
            other => {
                warn!(code = other.to_u8(), "stored-record transfer refused");
                return Ok(());
            }
        }
        self.update(|s| s.transfers += 1);
        if state.transfer_failures > 0 {
            warn!(
                failures = state.transfer_failures,
                "records that did not decode stay on the device; not deleting"
            );
            return Ok(());
        }
        let Some(last) = self.next_sequence.and_then(|n| n.checked_sub(1)) else {
            return Ok(());
        };
        // Every record up to `last` is in the queue (pushed as it arrived): now the device
        // may forget them.
        let delete = RacpMessage::DeleteStoredRecords(RecordFilter::LessThanOrEqual(
            FilterValue::SequenceNumber(last),
        ));
        if self
            .racp_request(link, events, cancel, state, Request::Sig(delete))
            .await?
            == ResponseCode::Success
        {
            self.update(|s| s.deletes += 1);
        }
        Ok(())
    }

    async fn transfer_all(
        &mut self,
        link: &mut S::Link,
        events: &mut mpsc::Receiver<LinkEvent>,
        cancel: &CancellationToken,
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        self.update(|s| s.phase = Phase::Transferring);
        state.in_transfer = true;
        state.transfer_failures = 0;
        let request = RacpMessage::ReportStoredRecords(RecordFilter::AllRecords);
        let code = self
            .racp_request(link, events, cancel, state, Request::Sig(request))
            .await?;
        state.in_transfer = false;
        if code != ResponseCode::Success {
            return Ok(());
        }
        self.update(|s| s.transfers += 1);
        if state.transfer_failures > 0 {
            return Ok(());
        }
        let delete = RacpMessage::DeleteStoredRecords(RecordFilter::AllRecords);
        if self
            .racp_request(link, events, cancel, state, Request::Sig(delete))
            .await?
            == ResponseCode::Success
        {
            self.update(|s| s.deletes += 1);
        }
        Ok(())
    }

    /// Fetches a GHS sensor's stored observations from the next record number on, then
    /// deletes those now durable in the queue.
    async fn transfer_ghs(
        &mut self,
        link: &mut S::Link,
        events: &mut mpsc::Receiver<LinkEvent>,
        cancel: &CancellationToken,
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        self.update(|s| s.phase = Phase::Transferring);
        state.in_transfer = true;
        state.transfer_failures = 0;
        let filter = match self.next_record_number {
            Some(n) => GhsRecordFilter::GreaterThanOrEqual(n),
            None => GhsRecordFilter::AllRecords,
        };
        let code = self
            .racp_request(
                link,
                events,
                cancel,
                state,
                Request::Ghs(GhsRacp::ReportStoredRecords(filter)),
            )
            .await?;
        state.in_transfer = false;
        if code != ResponseCode::Success {
            if code != ResponseCode::NoRecordsFound {
                warn!(code = code.to_u8(), "stored-observation transfer refused");
            }
            return Ok(());
        }
        self.update(|s| s.transfers += 1);
        if state.transfer_failures > 0 {
            warn!(
                failures = state.transfer_failures,
                "observations that did not decode stay on the sensor; not deleting"
            );
            return Ok(());
        }
        let Some(last) = self.next_record_number.and_then(|n| n.checked_sub(1)) else {
            return Ok(());
        };
        let delete = GhsRacp::DeleteStoredRecords(GhsRecordFilter::LessThanOrEqual(last));
        if self
            .racp_request(link, events, cancel, state, Request::Ghs(delete))
            .await?
            == ResponseCode::Success
        {
            self.update(|s| s.deletes += 1);
        }
        Ok(())
    }

    /// Writes a RACP request and handles events until its response (each event must come
    /// within the operation timeout).
    async fn racp_request(
        &mut self,
        link: &mut S::Link,
        events: &mut mpsc::Receiver<LinkEvent>,
        cancel: &CancellationToken,
        state: &mut LinkState,
        message: Request,
    ) -> Result<ResponseCode, LinkFault> {
        let Some(racp) = state.racp else {
            return Ok(ResponseCode::OpCodeNotSupported);
        };
        let bytes = match message {
            Request::Sig(m) => match RecordAccessControlPoint::new(m).encode() {
                Ok(b) => b,
                Err(_) => return Ok(ResponseCode::InvalidOperand),
            },
            Request::Ghs(m) => m.encode(),
        };
        let op = bytes.first().copied().unwrap_or(0);
        self.op(link.write(racp, &bytes)).await?;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return Err(LinkFault::Cancelled),
                r = tokio::time::timeout(self.config.op_timeout, events.recv()) => r,
            };
            match next {
                Err(_) => {
                    warn!("RACP procedure timed out");
                    return Err(LinkFault::Lost);
                }
                Ok(None) | Ok(Some(LinkEvent::Disconnected { .. })) => {
                    return Err(LinkFault::Lost);
                }
                Ok(Some(LinkEvent::Value {
                    characteristic,
                    bytes,
                })) if characteristic == racp => {
                    self.update(|s| s.values_received += 1);
                    let response = if racp.service == Uuid::from_u16(0x1840) {
                        GhsRacp::decode(&bytes).map(|m| match m {
                            GhsRacp::Response {
                                request_op_code,
                                response_code,
                            } => Some((request_op_code, response_code)),
                            _ => None,
                        })
                    } else {
                        RecordAccessControlPoint::decode(&bytes).map(|m| match m.message {
                            RacpMessage::Response {
                                request_op_code,
                                response_code,
                            } => Some((request_op_code, response_code)),
                            _ => None,
                        })
                    };
                    match response {
                        Ok(Some((request_op_code, code))) if request_op_code == op => {
                            return Ok(code);
                        }
                        Ok(_) => {}
                        Err(e) => self.decode_error(cu::RECORD_ACCESS_CONTROL_POINT, &e),
                    }
                }
                Ok(Some(LinkEvent::Value {
                    characteristic,
                    bytes,
                })) => {
                    self.handle_value(characteristic, &bytes, state).await?;
                    self.send_replies(link).await?;
                }
            }
        }
    }

    fn decode_error(&self, uuid16: u16, e: &DecodeError) {
        self.update(|s| s.decode_errors += 1);
        warn!(characteristic = uuid16, error = %e, "value did not decode");
    }

    fn map_error(&self, uuid16: u16, e: &MapError, state: &mut LinkState) {
        if state.in_transfer {
            state.transfer_failures += 1;
        }
        self.update(|s| s.unmapped += 1);
        warn!(
            characteristic = uuid16,
            reason = e.label(),
            "value not mapped to a reading"
        );
    }

    /// One notification/indication: decode, map, queue.
    async fn handle_value(
        &mut self,
        characteristic: CharacteristicId,
        bytes: &[u8],
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        // Stamped before it counts: a scenario run moves its virtual clock on once the count
        // moves, and a stamp taken after that would give the reading the next step's time.
        let received_at = self.clock.now();
        self.update(|s| s.values_received += 1);
        let Some((identity, binding)) = &self.identity else {
            return Ok(());
        };
        let low_battery = state.low_battery;
        let ctx = |clock, from_storage| MapContext {
            gateway: &self.config.gateway,
            binding,
            identity,
            received_at,
            clock,
            from_storage,
            low_battery,
        };
        let uuid16 = characteristic.uuid.as_u16().unwrap_or(0);
        // What the value completes: readings (or why not), and the device record number
        // that becomes "fetched" once they are durable.
        let mut mapped: Vec<Result<Reading, MapError>> = Vec::new();
        let mut sequence = None;
        let mut record_number = None;
        let mut replies = Vec::new();
        if let Some(driver) = self
            .drivers
            .iter()
            .find(|d| d.result_characteristic() == characteristic)
        {
            let exchange = driver.exchange(bytes);
            if let Some(c) = driver.reply_characteristic() {
                replies.extend(exchange.replies.into_iter().map(|b| (c, b)));
            }
            for result in exchange.results {
                match result {
                    Ok(r) => {
                        let clock = if r.from_storage {
                            state.stored
                        } else {
                            state.live
                        };
                        mapped.push(mapping::spirometry(&r, &ctx(clock, state.in_transfer)));
                    }
                    Err(e) => self.count_decode(uuid16, &e, state)?,
                }
            }
        } else if characteristic.service == Uuid::from_u16(0x1840)
            && matches!(
                uuid16,
                cu::LIVE_HEALTH_OBSERVATIONS | cu::STORED_HEALTH_OBSERVATIONS
            )
        {
            let stored = uuid16 == cu::STORED_HEALTH_OBSERVATIONS;
            let joined = if stored {
                self.ghs_stored.push(bytes)
            } else {
                self.ghs_live.push(bytes)
            };
            let body = match joined {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) => return self.segment_error(uuid16, &e, state),
            };
            let observation = if stored {
                match StoredObservation::decode(&body) {
                    Ok(s) => {
                        record_number = Some(s.record_number);
                        s.observation
                    }
                    Err(e) => return self.count_decode(uuid16, &e, state),
                }
            } else {
                match ghs::Observation::decode(&body) {
                    Ok(o) => o,
                    Err(e) => return self.count_decode(uuid16, &e, state),
                }
            };
            let clock = if stored { state.stored } else { state.live };
            mapped = mapping::ghs_observation(&observation, &ctx(clock, stored));
        } else {
            let one = match uuid16 {
                cu::BLOOD_PRESSURE_MEASUREMENT => match BloodPressureMeasurement::decode(bytes) {
                    Ok(m) => mapping::blood_pressure(&m, &ctx(state.live, false)),
                    Err(e) => return self.count_decode(uuid16, &e, state),
                },
                BLOOD_PRESSURE_RECORD => {
                    let body = match self.reassembler.push(bytes) {
                        Ok(Some(b)) => b,
                        Ok(None) => return Ok(()),
                        Err(e) => return self.segment_error(uuid16, &e, state),
                    };
                    let record = match RecordBody::decode(&body) {
                        Ok(r) => r,
                        Err(e) => return self.count_decode(uuid16, &e, state),
                    };
                    sequence = Some(record.sequence_number);
                    match &record.recorded {
                        RecordedValue::BloodPressureMeasurement(m) => {
                            mapping::blood_pressure(m, &ctx(state.stored, true))
                        }
                        // A stored cuff pressure is not a measurement: nothing to queue, but
                        // the record counts as fetched.
                        RecordedValue::IntermediateCuffPressure(_) => {
                            self.advance_sequence(sequence);
                            return Ok(());
                        }
                    }
                }
                cu::PLX_SPOT_CHECK_MEASUREMENT => match PlxSpotCheckMeasurement::decode(bytes) {
                    Ok(m) => {
                        let clock = if state.in_transfer {
                            state.stored
                        } else {
                            state.live
                        };
                        mapping::plx_spot_check(&m, &ctx(clock, state.in_transfer))
                    }
                    Err(e) => return self.count_decode(uuid16, &e, state),
                },
                cu::PLX_CONTINUOUS_MEASUREMENT => match PlxContinuousMeasurement::decode(bytes) {
                    Ok(m) => mapping::plx_continuous(&m, &ctx(state.live, false)),
                    Err(e) => return self.count_decode(uuid16, &e, state),
                },
                cu::BATTERY_LEVEL => {
                    match BatteryLevel::decode(bytes) {
                        Ok(b) => {
                            state.low_battery = b.percent <= self.config.low_battery_percent;
                            self.update(|s| s.battery = Some(b.percent));
                        }
                        Err(e) => self.decode_error(uuid16, &e),
                    }
                    return Ok(());
                }
                _ => return Ok(()),
            };
            mapped.push(one);
        }
        let mut readings = Vec::with_capacity(mapped.len());
        for m in mapped {
            match m {
                Ok(r) => readings.push(r),
                Err(e) => self.map_error(uuid16, &e, state),
            }
        }
        if !readings.is_empty() {
            let outcome = match self.queue.push(&readings).await {
                Ok(o) => o,
                Err(e) => {
                    self.update(|s| s.queue_errors += 1);
                    return Err(e.into());
                }
            };
            self.update(|s| {
                s.readings_queued += outcome.queued as u64;
                s.duplicates += outcome.duplicates as u64;
            });
        }
        // Durable (or nothing to keep): only now does the record count as fetched, and only
        // now may a driver acknowledge it to the device.
        self.pending_replies.extend(replies);
        self.advance_sequence(sequence);
        if let Some(n) = record_number {
            let next = n.saturating_add(1);
            if self.next_record_number.is_none_or(|m| next > m) {
                self.next_record_number = Some(next);
            }
        }
        Ok(())
    }

    /// Writes the drivers' pending answers. A link error drops the link (the device will
    /// send the unanswered result again, which the queue skips as a duplicate); a
    /// characteristic that refuses writes is a configuration fault, logged, not fatal.
    async fn send_replies(&mut self, link: &mut S::Link) -> Result<(), LinkFault> {
        for (c, bytes) in std::mem::take(&mut self.pending_replies) {
            match self.op(link.write(c, &bytes)).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => return Err(LinkFault::Lost),
                Err(e) => warn!(error = %e, "driver reply refused by the device"),
            }
        }
        Ok(())
    }

    fn advance_sequence(&mut self, sequence: Option<u16>) {
        if let Some(seq) = sequence {
            let next = seq.wrapping_add(1);
            if self.next_sequence.is_none_or(|n| next > n) {
                self.next_sequence = Some(next);
            }
        }
        let next_sequence = self.next_sequence;
        self.update(|s| s.next_sequence = next_sequence);
    }

    fn segment_error(
        &self,
        uuid16: u16,
        e: &crate::codec::segment::SegmentError,
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        self.update(|s| s.decode_errors += 1);
        if state.in_transfer {
            state.transfer_failures += 1;
        }
        warn!(characteristic = uuid16, error = %e, "segment");
        Ok(())
    }

    fn count_decode(
        &self,
        uuid16: u16,
        e: &DecodeError,
        state: &mut LinkState,
    ) -> Result<(), LinkFault> {
        if state.in_transfer {
            state.transfer_failures += 1;
        }
        self.decode_error(uuid16, e);
        Ok(())
    }
}

/// A DIS string as `DeviceIdentity` accepts it: no control characters, at most 64 bytes
/// (cut at a character boundary), so ingest never rejects a reading for a long model name.
fn device_text(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(s.len().min(MAX));
    for ch in s.chars().filter(|ch| !ch.is_control()) {
        if out.len() + ch.len_utf8() > MAX {
            break;
        }
        out.push(ch);
    }
    out
}
