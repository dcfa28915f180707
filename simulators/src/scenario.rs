//! Scenario files: a patient, their devices, a daily measurement routine and faults, run on
//! a virtual clock against the gateway's real device session and a real queue.
//!
//! The runner moves the virtual clock from one scheduled measurement to the next and, after
//! each, waits until the gateway session has handled everything the devices sent ("settle"),
//! so a scenario of days runs in well under a second of wall time per day.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway::codec::Float11073;
use gateway::codec::blood_pressure::{
    BloodPressureMeasurement, BpMeasurementStatus, BpStatusFlags, PressureUnit, PulseRateRange,
};
use gateway::codec::pulse_oximeter::{
    PlxContinuousMeasurement, PlxDeviceAndSensorStatus, PlxSpotCheckMeasurement, SpO2Pr,
};
use gateway::device::spirometry::{SimSpirometerV1, SpirometryResult};
use gateway::device::{
    Address, BackoffConfig, CharacteristicId, Session, SessionConfig, SessionHandle, SessionStats,
};
use gateway::queue::Queue;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceId, GatewayId, PatientKey, Reading, UserBinding};

use crate::clock::SimClock;
use crate::device::{DeviceKind, Emission, SimDeviceConfig, SimWorld};
use crate::physiology::{Baseline, Physiology, Trend};

/// The scenarios under `fixtures/scenarios/`, embedded.
const BUILTIN: &[(&str, &str)] = &[
    (
        "copd_stable",
        include_str!("../../fixtures/scenarios/copd_stable.toml"),
    ),
    (
        "copd_exacerbation",
        include_str!("../../fixtures/scenarios/copd_exacerbation.toml"),
    ),
    (
        "hypertensive_crisis",
        include_str!("../../fixtures/scenarios/hypertensive_crisis.toml"),
    ),
    (
        "hypotension",
        include_str!("../../fixtures/scenarios/hypotension.toml"),
    ),
    (
        "measurement_faults",
        include_str!("../../fixtures/scenarios/measurement_faults.toml"),
    ),
    (
        "clock_faults",
        include_str!("../../fixtures/scenarios/clock_faults.toml"),
    ),
    (
        "week_away",
        include_str!("../../fixtures/scenarios/week_away.toml"),
    ),
    (
        "faulty_cuff",
        include_str!("../../fixtures/scenarios/faulty_cuff.toml"),
    ),
    (
        "hypertensive_crisis_remeasured",
        include_str!("../../fixtures/scenarios/hypertensive_crisis_remeasured.toml"),
    ),
];

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Noise seed.
    pub seed: u64,
    /// RFC 3339 start (midnight of day 0).
    pub start: String,
    /// Days simulated.
    pub days: u32,
    /// The patient.
    pub patient: Baseline,
    /// Changes over days.
    #[serde(default)]
    pub trend: Vec<Trend>,
    /// The devices at home.
    pub device: Vec<DeviceSpec>,
    /// The daily routine.
    pub measure: Vec<Routine>,
    /// Faults.
    #[serde(default)]
    pub fault: Vec<Fault>,
    /// What must hold afterwards.
    #[serde(default)]
    pub expect: Expect,
}

/// One device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Which.
    pub kind: DeviceKind,
    /// Address `xx:xx:…`.
    pub address: String,
    /// EUI-64 System ID as 16 hex digits, if it has one.
    #[serde(default)]
    pub system_id: Option<String>,
    /// Cuff user slot the patient uses.
    #[serde(default)]
    pub user: Option<u8>,
    /// Device clock minus true time at the start, seconds.
    #[serde(default)]
    pub clock_offset_s: i64,
    /// The clock was never set (it starts at 2000-01-01).
    #[serde(default)]
    pub clock_unset: bool,
    /// Drift, ppm.
    #[serde(default)]
    pub drift_ppm: f64,
    /// Battery, %.
    #[serde(default = "full")]
    pub battery: u8,
}

fn full() -> u8 {
    90
}

/// What the patient measures at a time of day.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routine {
    /// `HH:MM`.
    pub time: String,
    /// Any of `bp`, `spot`, `spiro`.
    pub kinds: Vec<String>,
}

/// A fault or event at a day and time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Day index.
    pub day: u32,
    /// `HH:MM`: applies to that routine slot (all slots of the day when absent).
    #[serde(default)]
    pub time: Option<String>,
    /// What happens: `body_movement`, `cuff_loose`, `irregular_pulse`, `improper_position`,
    /// `nan_systolic`, `nres_pulse`, `low_perfusion`, `motion_artifact`, `sensor_displaced`,
    /// `nan_spo2`, `poor_effort`, `nan_pef`, `duplicate_indications`, `bad_bytes`,
    /// `low_battery`, `continuous`, `away`, `disconnect_mid_transfer`, `ignore_filter`.
    pub kind: String,
    /// For `away`: the day the patient is back.
    #[serde(default)]
    pub until_day: Option<u32>,
    /// For `continuous`: seconds of 1 Hz samples; for `disconnect_mid_transfer`: records.
    #[serde(default)]
    pub count: Option<u32>,
}

/// Expectations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Exact queued reading counts by reading type (`blood_pressure`, …).
    pub readings: BTreeMap<String, usize>,
    /// Flags that must appear on at least one reading.
    pub flags: Vec<String>,
    /// Absent reasons that must appear.
    pub absent: Vec<String>,
    /// At least this many device clock sets.
    pub clock_sets_min: u64,
    /// Exactly this many values that did not decode.
    pub decode_errors: u64,
    /// At least this many duplicates the queue skipped.
    pub duplicates_min: u64,
    /// At least this many RACP deletes.
    pub deletes_min: u64,
    /// Day means a kind must satisfy.
    pub mean: Vec<MeanCheck>,
}

/// The mean of a kind's numeric values on one day (by `measured_at`) within bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanCheck {
    /// Kind name (`spo2`, `systolic`, …).
    pub kind: String,
    /// Day index.
    pub day: u32,
    /// Lower bound.
    #[serde(default)]
    pub min: Option<f64>,
    /// Upper bound.
    #[serde(default)]
    pub max: Option<f64>,
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] gateway::queue::QueueError),
    /// The gateway did not catch up in time.
    #[error("gateway did not settle at {at}: {stats}")]
    Stuck {
        /// Virtual time.
        at: String,
        /// Last stats.
        stats: String,
    },
    /// A simulated device failed.
    #[error("device: {0}")]
    Device(#[from] gateway::device::DeviceError),
}

fn invalid(path: &str, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn hm(path: &str, s: &str) -> Result<time::Duration, ScenarioError> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| invalid(path, format!("time `{s}` is not HH:MM")))?;
    let h: i64 = h
        .parse()
        .map_err(|_| invalid(path, format!("time `{s}`")))?;
    let m: i64 = m
        .parse()
        .map_err(|_| invalid(path, format!("time `{s}`")))?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(invalid(path, format!("time `{s}` out of range")));
    }
    Ok(time::Duration::minutes(h * 60 + m))
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let p = path.as_ref().display().to_string();
        let text =
            std::fs::read_to_string(path.as_ref()).map_err(|source| ScenarioError::Read {
                path: p.clone(),
                source,
            })?;
        Self::from_toml(&p, &text)
    }

    /// Parses and checks scenario text; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| invalid(origin, e.to_string()))?;
        s.check(origin)?;
        Ok(s)
    }

    /// A scenario shipped with the project, by name (`copd_exacerbation`), so `rpm gateway
    /// --simulate NAME` works from any directory.
    pub fn builtin(name: &str) -> Option<Result<Scenario, ScenarioError>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::from_toml(n, text))
    }

    /// The names of the shipped scenarios.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    fn check(&self, p: &str) -> Result<(), ScenarioError> {
        OffsetDateTime::parse(&self.start, &Rfc3339)
            .map_err(|e| invalid(p, format!("start: {e}")))?;
        PatientKey::new(self.patient.key.clone()).map_err(|e| invalid(p, e.to_string()))?;
        for d in &self.device {
            d.address
                .parse::<Address>()
                .map_err(|e| invalid(p, format!("device.address: {e}")))?;
        }
        for r in &self.measure {
            hm(p, &r.time)?;
            for k in &r.kinds {
                if !["bp", "spot", "spiro"].contains(&k.as_str()) {
                    return Err(invalid(p, format!("measure.kinds: unknown `{k}`")));
                }
            }
        }
        for f in &self.fault {
            if let Some(t) = &f.time {
                hm(p, t)?;
            }
            if !FAULTS.contains(&f.kind.as_str()) {
                return Err(invalid(p, format!("fault.kind: unknown `{}`", f.kind)));
            }
        }
        for m in &self.expect.mean {
            m.kind
                .parse::<vitals::Kind>()
                .map_err(|e| invalid(p, e.to_string()))?;
        }
        Ok(())
    }
}

const FAULTS: &[&str] = &[
    "body_movement",
    "cuff_loose",
    "irregular_pulse",
    "improper_position",
    "nan_systolic",
    "nres_pulse",
    "low_perfusion",
    "motion_artifact",
    "sensor_displaced",
    "nan_spo2",
    "poor_effort",
    "nan_pef",
    "duplicate_indications",
    "bad_bytes",
    "low_battery",
    "continuous",
    "away",
    "disconnect_mid_transfer",
    "ignore_filter",
];

/// What a run produced.
pub struct Outcome {
    /// Every reading in the queue at the end, in queue order.
    pub readings: Vec<Reading>,
    /// Final session stats per device address.
    pub stats: BTreeMap<String, SessionStats>,
    /// The world, for assertions on device memory.
    pub world: Arc<SimWorld>,
    /// The devices.
    pub addresses: Vec<(DeviceKind, Address)>,
}

fn sfloat(v: f64, exponent: i8) -> Float11073 {
    let m = (v / 10f64.powi(i32::from(exponent))).round() as i32;
    Float11073::new(m, exponent)
}

async fn settle(
    world: &SimWorld,
    sessions: &[(Address, SessionHandle)],
    at: OffsetDateTime,
) -> Result<(), ScenarioError> {
    use gateway::device::Phase;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut done = true;
        let mut last = String::new();
        for (address, handle) in sessions {
            let stats = handle.stats().borrow().clone();
            let log = world.log(*address);
            let ok = if world.present(*address) {
                world.connected(*address)
                    && stats.phase == Phase::Streaming
                    && stats.connects == log.connections
                    && stats.values_received >= log.values_sent
            } else {
                true
            };
            if !ok {
                done = false;
                last = format!("{address}: {stats:?} sent={}", log.values_sent);
            }
        }
        if done {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ScenarioError::Stuck {
                at: at.to_string(),
                stats: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs a scenario with the queue at `queue_path`, as gateway `gw-sim`, from the scenario's
/// own start date.
pub async fn run(scenario: &Scenario, queue_path: &Path) -> Result<Outcome, ScenarioError> {
    let gateway = GatewayId::new("gw-sim").map_err(|e| invalid(&scenario.name, e.to_string()))?;
    run_as(scenario, queue_path, gateway, None).await
}

/// Paces a run against another clock (`rpm demo` plays scenarios in accelerated wall time):
/// called with the virtual time of each step before the scenario's clock moves there.
/// Returning `false` ends the run early: the device sessions are shut down and what was
/// queued so far stays queued.
pub type Pacer = Arc<
    dyn Fn(OffsetDateTime) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// Runs a scenario with the queue at `queue_path` as `gateway` (the id stamped on every
/// reading), starting at `start` instead of the file's date when given (`rpm gateway
/// --simulate` starts scenarios so that they end now).
pub async fn run_as(
    scenario: &Scenario,
    queue_path: &Path,
    gateway: GatewayId,
    start: Option<OffsetDateTime>,
) -> Result<Outcome, ScenarioError> {
    run_paced(scenario, queue_path, gateway, start, None).await
}

/// [`run_as`], with each step of the virtual clock first passed to `pacer` (as fast as
/// possible when `None`).
pub async fn run_paced(
    scenario: &Scenario,
    queue_path: &Path,
    gateway: GatewayId,
    start: Option<OffsetDateTime>,
    pacer: Option<Pacer>,
) -> Result<Outcome, ScenarioError> {
    let pace = |at: OffsetDateTime| {
        let pacer = pacer.clone();
        async move {
            match pacer {
                Some(p) => p(at).await,
                None => true,
            }
        }
    };
    let p = scenario.name.as_str();
    let start = match start {
        Some(t) => t,
        None => OffsetDateTime::parse(&scenario.start, &Rfc3339)
            .map_err(|e| invalid(p, e.to_string()))?,
    };
    let queue = Queue::open(queue_path).await?;
    let clock = SimClock::new(start);
    let world = Arc::new(SimWorld::new(clock.clone(), Some(queue.clone())));
    let patient =
        PatientKey::new(scenario.patient.key.clone()).map_err(|e| invalid(p, e.to_string()))?;
    let mut bindings = vec![];
    let mut addresses = vec![];
    for d in &scenario.device {
        let address: Address = d
            .address
            .parse()
            .map_err(|e: gateway::device::AddressError| invalid(p, e.to_string()))?;
        let system_id = d
            .system_id
            .as_deref()
            .map(|s| u64::from_str_radix(s, 16))
            .transpose()
            .map_err(|e| invalid(p, format!("system_id: {e}")))?;
        let clock_offset = if d.clock_unset {
            time::macros::datetime!(2000-01-01 00:00 UTC) - start
        } else {
            time::Duration::seconds(d.clock_offset_s)
        };
        world.add(SimDeviceConfig {
            kind: d.kind,
            address,
            system_id,
            clock_offset,
            drift_ppm: d.drift_ppm,
            battery: d.battery,
            payload: 20,
        });
        let id = match system_id {
            Some(eui) => DeviceId::Eui64(eui.to_be_bytes()),
            None => DeviceId::BdAddr(address.0),
        };
        bindings.push(DeviceBinding {
            id,
            patient: d.user.is_none().then(|| patient.clone()),
            users: d
                .user
                .map(|user| {
                    vec![UserBinding {
                        user,
                        patient: patient.clone(),
                    }]
                })
                .unwrap_or_default(),
        });
        addresses.push((d.kind, address));
    }
    let bindings: Arc<[DeviceBinding]> = bindings.into();
    let config = SessionConfig {
        gateway,
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(30),
        backoff: BackoffConfig {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
        op_timeout: Duration::from_secs(5),
        zone: UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: scenario.seed,
    };
    let cancel = CancellationToken::new();
    let mut sessions = vec![];
    for (kind, address) in &addresses {
        let mut s = Session::new(
            world.clone(),
            *address,
            bindings.clone(),
            queue.clone(),
            Arc::new(clock.clone()),
            config.clone(),
        );
        if *kind == DeviceKind::VendorSpirometer {
            s = s.with_driver(Arc::new(SimSpirometerV1));
        }
        sessions.push((*address, s.spawn(cancel.child_token())));
    }
    settle(&world, &sessions, start).await?;

    let mut model = Physiology::new(
        scenario.patient.clone(),
        scenario.trend.clone(),
        start,
        scenario.seed,
    );
    let addr = |k: DeviceKind| addresses.iter().find(|(kk, _)| *kk == k).map(|(_, a)| *a);
    let user = scenario
        .device
        .iter()
        .find(|d| d.kind == DeviceKind::BpCuff)
        .and_then(|d| d.user);
    let mut away: Option<u32> = None;
    let mut stopped = false;
    'days: for day in 0..scenario.days {
        let day_start = start + time::Duration::days(i64::from(day));
        if away.is_some_and(|until| day >= until) {
            away = None;
            for (_, a) in &addresses {
                world.set_present(*a, true);
            }
            // Home again: let the hub reconnect and fetch the stored records first.
            if !pace(day_start).await {
                stopped = true;
                break 'days;
            }
            clock.set(day_start);
            settle(&world, &sessions, day_start).await?;
        }
        for routine in &scenario.measure {
            let at = day_start + hm(p, &routine.time)?;
            if !pace(at).await {
                stopped = true;
                break 'days;
            }
            clock.set(at);
            let faults: Vec<&Fault> = scenario
                .fault
                .iter()
                .filter(|f| f.day == day && f.time.as_ref().is_none_or(|t| *t == routine.time))
                .collect();
            let has = |k: &str| faults.iter().any(|f| f.kind == k);
            for f in &faults {
                match f.kind.as_str() {
                    "away" if away.is_none() => {
                        away = Some(f.until_day.unwrap_or(day + 1));
                        for (kind, a) in &addresses {
                            if *kind != DeviceKind::BpCuff {
                                world.set_present(*a, false);
                            }
                        }
                        // The cuff travels with the patient: out of the hub's range.
                        if let Some(a) = addr(DeviceKind::BpCuff) {
                            world.set_present(a, false);
                        }
                    }
                    "disconnect_mid_transfer" => {
                        if let Some(a) = addr(DeviceKind::BpCuff) {
                            world.disconnect_mid_transfer(a, f.count.unwrap_or(3) as usize);
                        }
                    }
                    "ignore_filter" => {
                        if let Some(a) = addr(DeviceKind::BpCuff) {
                            world.set_ignore_filter(a, true);
                        }
                    }
                    "low_battery" => {
                        for (_, a) in &addresses {
                            world.set_battery(*a, 8).await;
                        }
                    }
                    "duplicate_indications" => {
                        for (_, a) in &addresses {
                            world.set_duplicate_indications(*a, true);
                        }
                    }
                    _ => {}
                }
            }
            let truth = model.sample(at);
            for kind in &routine.kinds {
                match kind.as_str() {
                    "bp" => {
                        let Some(a) = addr(DeviceKind::BpCuff) else {
                            continue;
                        };
                        if has("bad_bytes") {
                            world
                                .emit(
                                    a,
                                    Emission::Raw(
                                        CharacteristicId::sig(0x1810, 0x2A35),
                                        vec![0x1E, 0x8A, 0x00],
                                    ),
                                )
                                .await?;
                        }
                        let mut flags = BpStatusFlags::empty();
                        for (name, bit) in [
                            ("body_movement", BpStatusFlags::BODY_MOVEMENT_DETECTED),
                            ("cuff_loose", BpStatusFlags::CUFF_FIT_LOOSE),
                            ("irregular_pulse", BpStatusFlags::IRREGULAR_PULSE_DETECTED),
                            (
                                "improper_position",
                                BpStatusFlags::IMPROPER_MEASUREMENT_POSITION,
                            ),
                        ] {
                            if has(name) {
                                flags |= bit;
                            }
                        }
                        let range = if truth.pulse > 120.0 {
                            PulseRateRange::ExceedsUpperLimit
                        } else if truth.pulse < 40.0 {
                            PulseRateRange::BelowLowerLimit
                        } else {
                            PulseRateRange::WithinRange
                        };
                        let map = truth.diastolic + (truth.systolic - truth.diastolic) / 3.0;
                        let m = BloodPressureMeasurement {
                            unit: PressureUnit::MmHg,
                            systolic: if has("nan_systolic") {
                                Float11073::NAN
                            } else {
                                sfloat(truth.systolic, 0)
                            },
                            diastolic: sfloat(truth.diastolic, 0),
                            mean_arterial_pressure: sfloat(map, 0),
                            timestamp: None,
                            pulse_rate_per_min: Some(if has("nres_pulse") {
                                Float11073::Special(gateway::codec::SpecialValue::Nres)
                            } else {
                                sfloat(truth.pulse, 0)
                            }),
                            user_id: user,
                            status: Some(BpMeasurementStatus {
                                flags,
                                pulse_rate_range: range,
                            }),
                            quirks: vec![],
                        };
                        world.emit(a, Emission::BloodPressure(m)).await?;
                    }
                    "spot" => {
                        let Some(a) = addr(DeviceKind::Oximeter) else {
                            continue;
                        };
                        let mut status = PlxDeviceAndSensorStatus::empty();
                        for (name, bit) in [
                            (
                                "low_perfusion",
                                PlxDeviceAndSensorStatus::LOW_PERFUSION_DETECTED,
                            ),
                            (
                                "motion_artifact",
                                PlxDeviceAndSensorStatus::SENSOR_INTERFERENCE_DETECTED,
                            ),
                            (
                                "sensor_displaced",
                                PlxDeviceAndSensorStatus::SENSOR_DISPLACED,
                            ),
                        ] {
                            if has(name) {
                                status |= bit;
                            }
                        }
                        let m = PlxSpotCheckMeasurement {
                            spo2_percent: if has("nan_spo2") {
                                Float11073::NAN
                            } else {
                                sfloat(truth.spo2, 0)
                            },
                            pulse_rate_per_min: sfloat(truth.pulse, 0),
                            timestamp: None,
                            measurement_status: None,
                            device_and_sensor_status: (!status.is_empty()).then_some(status),
                            pulse_amplitude_index_percent: Some(sfloat(
                                if has("low_perfusion") { 0.3 } else { 4.2 },
                                -1,
                            )),
                            device_clock_not_set: scenario
                                .device
                                .iter()
                                .any(|d| d.kind == DeviceKind::Oximeter && d.clock_unset)
                                && world.log(a).clock_writes == 0,
                            quirks: vec![],
                        };
                        world.emit(a, Emission::SpotCheck(m)).await?;
                        if let Some(f) = faults.iter().find(|f| f.kind == "continuous") {
                            settle(&world, &sessions, at).await?;
                            for i in 0..f.count.unwrap_or(30) {
                                let step = at + time::Duration::seconds(i64::from(i) + 1);
                                if !pace(step).await {
                                    stopped = true;
                                    break 'days;
                                }
                                clock.set(step);
                                let s = model.sample(at);
                                let c = PlxContinuousMeasurement {
                                    normal: SpO2Pr {
                                        spo2_percent: sfloat(s.spo2, 0),
                                        pulse_rate_per_min: sfloat(s.pulse, 0),
                                    },
                                    fast: None,
                                    slow: None,
                                    measurement_status: None,
                                    device_and_sensor_status: None,
                                    pulse_amplitude_index_percent: None,
                                    quirks: vec![],
                                };
                                world.emit(a, Emission::Continuous(c)).await?;
                                settle(&world, &sessions, at).await?;
                            }
                        }
                    }
                    "spiro" => {
                        let Some(a) = addr(DeviceKind::Spirometer)
                            .or_else(|| addr(DeviceKind::VendorSpirometer))
                        else {
                            continue;
                        };
                        let r = SpirometryResult {
                            fev1_l: sfloat(truth.fev1, -2),
                            fvc_l: Some(sfloat(truth.fvc, -2)),
                            pef_l_min: Some(if has("nan_pef") {
                                Float11073::NAN
                            } else {
                                sfloat(truth.pef, 0)
                            }),
                            timestamp: None,
                            from_storage: false,
                            clock_not_set: false,
                            poor_effort: has("poor_effort"),
                        };
                        world.emit(a, Emission::Spirometry(r)).await?;
                    }
                    _ => {}
                }
            }
            settle(&world, &sessions, at).await?;
            for (_, a) in &addresses {
                world.set_duplicate_indications(*a, false);
            }
        }
    }
    // Back home at the end, if still away.
    if away.is_some() && !stopped {
        for (_, a) in &addresses {
            world.set_present(*a, true);
        }
        settle(&world, &sessions, clock.get()).await?;
    }
    let mut stats = BTreeMap::new();
    for (address, handle) in sessions {
        let s = handle.stats().borrow().clone();
        stats.insert(address.to_string(), s);
        let _ = handle.shutdown().await;
    }
    let readings = queue.peek(0, 1_000_000).await?;
    queue.close().await;
    Ok(Outcome {
        readings,
        stats,
        world,
        addresses,
    })
}

impl Outcome {
    /// Sum of a counter over every session.
    pub fn total(&self, f: impl Fn(&SessionStats) -> u64) -> u64 {
        self.stats.values().map(f).sum()
    }

    /// Checks the scenario's `[expect]` table and the invariants every scenario keeps; the
    /// list of failures (empty when all hold).
    pub fn check(&self, scenario: &Scenario, start: OffsetDateTime) -> Vec<String> {
        let mut fails = vec![];
        let e = &scenario.expect;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.readings {
            *counts
                .entry(r.reading_type.as_str().to_owned())
                .or_default() += 1;
        }
        for (t, n) in &e.readings {
            let got = counts.get(t).copied().unwrap_or(0);
            if got != *n {
                fails.push(format!("{t}: {got} readings, expected {n}"));
            }
        }
        for f in &e.flags {
            if !self
                .readings
                .iter()
                .any(|r| r.flags.iter().any(|x| x.as_str() == f))
            {
                fails.push(format!("no reading flagged {f}"));
            }
        }
        for a in &e.absent {
            if !self.readings.iter().any(|r| {
                r.values.iter().any(
                    |o| matches!(o.value, vitals::Value::Absent(reason) if reason.as_str() == a),
                )
            }) {
                fails.push(format!("no value absent for {a}"));
            }
        }
        let sets = self.total(|s| s.clock_sets);
        if sets < e.clock_sets_min {
            fails.push(format!(
                "{sets} clock sets, expected at least {}",
                e.clock_sets_min
            ));
        }
        let dec = self.total(|s| s.decode_errors);
        if dec != e.decode_errors {
            fails.push(format!("{dec} decode errors, expected {}", e.decode_errors));
        }
        let dup = self.total(|s| s.duplicates);
        if dup < e.duplicates_min {
            fails.push(format!(
                "{dup} duplicates, expected at least {}",
                e.duplicates_min
            ));
        }
        let del = self.total(|s| s.deletes);
        if del < e.deletes_min {
            fails.push(format!(
                "{del} deletes, expected at least {}",
                e.deletes_min
            ));
        }
        for m in &e.mean {
            let day_start = start + time::Duration::days(i64::from(m.day));
            let day_end = day_start + time::Duration::days(1);
            let vals: Vec<f64> = self
                .readings
                .iter()
                .filter(|r| r.measured_at >= day_start && r.measured_at < day_end)
                .flat_map(|r| r.values.iter())
                .filter(|o| o.kind.as_str() == m.kind)
                .filter_map(|o| o.value.number())
                .map(|d| d.to_f64())
                .collect();
            if vals.is_empty() {
                fails.push(format!("no {} values on day {}", m.kind, m.day));
                continue;
            }
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            if m.min.is_some_and(|min| mean < min) || m.max.is_some_and(|max| mean > max) {
                fails.push(format!(
                    "{} mean {mean:.2} on day {} outside {:?}..{:?}",
                    m.kind, m.day, m.min, m.max
                ));
            }
        }
        // Invariants.
        let mut ids = std::collections::HashSet::new();
        for r in &self.readings {
            if !ids.insert(r.id) {
                fails.push(format!("reading id {} queued twice", r.id));
            }
            if let Err(err) = r.validate() {
                fails.push(format!("invalid reading: {err}"));
            }
            if r.measured_at < start - time::Duration::minutes(1)
                || r.measured_at > start + time::Duration::days(i64::from(scenario.days) + 1)
            {
                fails.push(format!(
                    "measured_at {} outside the scenario",
                    r.measured_at
                ));
            }
        }
        for (_, a) in &self.addresses {
            let log = self.world.log(*a);
            fails.extend(log.audit_violations.iter().cloned());
        }
        fails
    }
}
