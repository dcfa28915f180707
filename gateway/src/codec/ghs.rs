//! Generic Health Sensor Service 1.0 (0x1840): health observations as ACOM objects.
//!
//! There is no Bluetooth SIG spirometer profile; a GHS sensor reports FEV1, FVC and PEF as
//! numeric observations typed by their ISO/IEEE 11073-10101 (MDC) codes.
//!
//! # Sources
//!
//! The GHSS 1.0 text (bluetooth.com, adopted 2023-06-13) could only be read as far as its
//! title page here, so the layout below was confirmed from two independent public
//! implementations that agree byte for byte, and every field is cited to them:
//!
//! - **ST** — STMicroelectronics' GHS sensor example for STM32WBA, written against GHSP 1.0 and
//!   tested with the SIG's PTS: `stm32-hotspot/STM32WBA-BLE-GenericHealthSensor`,
//!   `Projects/NUCLEO-WBA55CG/Applications/BLE/BLE_GenericHealthSensor/STM32_WPAN/App/`
//!   (`ghs.h`: flag bits, class types, measurement status bits; `ghs.c`: characteristic
//!   UUIDs; `ghs_app.c`: annotated byte arrays of a numeric, a compound and a bundle
//!   observation, the live and stored senders; `ghs_racp.h`/`ghs_racp.c`: the RACP;
//!   `ghs_cp.c`: the control point), and the same code in `STMicroelectronics/STM32CubeWBA`
//!   (`BLE_GenericHealth_PulseOximeter/STM32_WPAN/App/ghs_app.c`).
//! - **Philips** — the GHS editors' reference client and server simulator,
//!   `philips-labs/BLE-GHS-Client-Example` (`observations/Observation.kt`: parse order of the
//!   optional fields) and `philips-labs/BLE-GHS-Server-Simulator` (`observations/Observation.kt`:
//!   flag bits, length prefix, supplemental information). Its older commits use pre-adoption
//!   class numbers (numeric = 0) and UUIDs; where it differs from ST, ST (adopted) is followed.
//! - The time stamp is the Elapsed Time characteristic layout (GATT Specification Supplement
//!   §3.82), as Zephyr declares it in `include/zephyr/bluetooth/services/ets.h`.
//! - MDC codes: FEV1 `MDC_VOL_AWAY_EXP_FORCED_1S` 2::21514 and PEF
//!   `MDC_FLOW_AWAY_EXP_FORCED_PEAK` 2::21512 (IEEE 11073-10421 peak-flow specialization, as
//!   listed by the Signove/Antidote and OpenTele 11073 stacks); FVC
//!   `MDC_VOL_AWAY_EXP_FORCED_CAPACITY` 188928 and FEV1/FVC `MDC_RATIO_AWAY_EXP_FORCED_1S_FVC`
//!   188948 (NIST RTMMS, as quoted by a public MII terminology survey). Unit codes are
//!   partition-4 terms (`MDC_DIM_X_L` 1600, `MDC_DIM_X_L_PER_MIN` 3072, ...).
//!
//! # Layout
//!
//! Characteristics: Health Sensor Features 0x2BF3 (read), Live Health Observations 0x2B8B
//! (notify/indicate), Stored Health Observations 0x2BDD (notify/indicate, through RACP
//! 0x2A52), GHS Control Point 0x2BF4 (write/indicate: 0x01 start, 0x02 stop sending live
//! observations, 0x80 success), Observation Schedule Changed 0x2BF1 (indicate).
//!
//! Every Live value is a [segmentation header](super::segment) then a slice of the
//! observation; a Stored value carries a `u32` record number before the observation. An
//! observation (little-endian):
//!
//! | field                   | size      | present when                                  |
//! |-------------------------|-----------|-----------------------------------------------|
//! | observation class type  | 1         | always (1 numeric … 8 TLV, 0xFF bundle)        |
//! | length                  | 2         | always: bytes that follow this field           |
//! | flags                   | 2         | always                                         |
//! | observation type        | 4         | flag bit 0 (an MDC code, partition << 16 | term) |
//! | time stamp              | 9         | bit 1 (Elapsed Time: flags, u48, source, s8)   |
//! | measurement duration    | 4         | bit 2 (FLOAT, seconds)                         |
//! | measurement status      | 2         | bit 3                                          |
//! | object id               | 4         | bit 4                                          |
//! | patient                 | 1         | bit 5                                          |
//! | supplemental information| 1 + 4·n   | bit 6 (count, MDC codes)                       |
//! | derived from            | 1 + 4·n   | bit 7 (count, object ids)                      |
//! | is member of / TLVs     | ?         | bits 8, 9: not confirmed; the rest is kept raw |
//! | value                   | …         | by class: numeric = unit (u16) + FLOAT;        |
//! |                         |           | compound = count, (type u32, value type 1,     |
//! |                         |           | unit u16, FLOAT)…; bundle = count, observations|
//!
//! Strictness: the length field must match the bytes (short is [`DecodeError::Truncated`],
//! bytes after the observation are [`DecodeError::TrailingBytes`]); bytes left inside the
//! declared length after the value are a quirk (a newer revision's field). Reserved flag bits
//! are a quirk. Classes whose value layout is not confirmed (discrete, string, sample array,
//! state/event, TLV) keep their header decoded and their value as raw bytes.

use serde::{Serialize, Serializer};
use time::{Duration, PrimitiveDateTime};

use super::bits::bitset;
use super::error::{DecodeError, EncodeError, Quirk};
use super::ieee11073::Float11073;
use super::racp::ResponseCode;
use super::reader::{Reader, put_float, put_u16, put_u32};
use super::segment::SegmentHeader;

/// The longest joined observation accepted (the length field is a `u16`).
pub const MAX_OBSERVATION: usize = 3 + u16::MAX as usize;

/// Bundles nest at most this deep (a bundle in a bundle is already unusual).
const MAX_DEPTH: u8 = 4;

/// MDC codes of the measurements the gateway maps (partition << 16 | term).
pub mod mdc {
    /// `MDC_VOL_AWAY_EXP_FORCED_1S` (2::21514): FEV1.
    pub const FEV1: u32 = 152_586;
    /// `MDC_VOL_AWAY_EXP_FORCED_CAPACITY` (RTMMS 188928): FVC.
    pub const FVC: u32 = 188_928;
    /// `MDC_RATIO_AWAY_EXP_FORCED_1S_FVC` (RTMMS 188948): FEV1/FVC.
    pub const FEV1_FVC: u32 = 188_948;
    /// `MDC_FLOW_AWAY_EXP_FORCED_PEAK` (2::21512): PEF.
    pub const PEF: u32 = 152_584;
    /// `MDC_PULS_OXIM_SAT_O2` (2::19384).
    pub const SPO2: u32 = 150_456;
    /// `MDC_PULS_OXIM_PULS_RATE` (2::18458).
    pub const PULSE_OXIM_RATE: u32 = 149_530;
    /// `MDC_PRESS_BLD_NONINV` (2::18948).
    pub const BP_NONINV: u32 = 150_020;
    /// `MDC_PRESS_BLD_NONINV_SYS`.
    pub const BP_SYS: u32 = 150_021;
    /// `MDC_PRESS_BLD_NONINV_DIA`.
    pub const BP_DIA: u32 = 150_022;
    /// `MDC_PRESS_BLD_NONINV_MEAN`.
    pub const BP_MEAN: u32 = 150_023;
    /// `MDC_MODALITY_SPOT` (2::19516), a supplemental-information code.
    pub const MODALITY_SPOT: u32 = 150_588;

    /// Unit codes (partition 4 terms; GHS sends the 16-bit term).
    pub mod unit {
        /// `MDC_DIM_DIMLESS`.
        pub const DIMLESS: u16 = 512;
        /// `MDC_DIM_PERCENT`.
        pub const PERCENT: u16 = 544;
        /// `MDC_DIM_X_L`.
        pub const LITRE: u16 = 1600;
        /// `MDC_DIM_MILLI_L`.
        pub const MILLILITRE: u16 = 1618;
        /// `MDC_DIM_BEAT_PER_MIN`.
        pub const BEAT_PER_MIN: u16 = 2720;
        /// `MDC_DIM_X_L_PER_SEC`.
        pub const LITRE_PER_SEC: u16 = 3040;
        /// `MDC_DIM_X_L_PER_MIN`.
        pub const LITRE_PER_MIN: u16 = 3072;
        /// `MDC_DIM_KILO_PASCAL`.
        pub const KILO_PASCAL: u16 = 3843;
        /// `MDC_DIM_MMHG`.
        pub const MMHG: u16 = 3872;
    }

    /// The reference id of a code this crate knows.
    pub fn name(code: u32) -> Option<&'static str> {
        Some(match code {
            FEV1 => "MDC_VOL_AWAY_EXP_FORCED_1S",
            FVC => "MDC_VOL_AWAY_EXP_FORCED_CAPACITY",
            FEV1_FVC => "MDC_RATIO_AWAY_EXP_FORCED_1S_FVC",
            PEF => "MDC_FLOW_AWAY_EXP_FORCED_PEAK",
            SPO2 => "MDC_PULS_OXIM_SAT_O2",
            PULSE_OXIM_RATE => "MDC_PULS_OXIM_PULS_RATE",
            BP_NONINV => "MDC_PRESS_BLD_NONINV",
            BP_SYS => "MDC_PRESS_BLD_NONINV_SYS",
            BP_DIA => "MDC_PRESS_BLD_NONINV_DIA",
            BP_MEAN => "MDC_PRESS_BLD_NONINV_MEAN",
            MODALITY_SPOT => "MDC_MODALITY_SPOT",
            _ => return None,
        })
    }

    /// The reference id of a unit code this crate knows.
    pub fn unit_name(code: u16) -> Option<&'static str> {
        Some(match code {
            unit::DIMLESS => "MDC_DIM_DIMLESS",
            unit::PERCENT => "MDC_DIM_PERCENT",
            unit::LITRE => "MDC_DIM_X_L",
            unit::MILLILITRE => "MDC_DIM_MILLI_L",
            unit::BEAT_PER_MIN => "MDC_DIM_BEAT_PER_MIN",
            unit::LITRE_PER_SEC => "MDC_DIM_X_L_PER_SEC",
            unit::LITRE_PER_MIN => "MDC_DIM_X_L_PER_MIN",
            unit::KILO_PASCAL => "MDC_DIM_KILO_PASCAL",
            unit::MMHG => "MDC_DIM_MMHG",
            _ => return None,
        })
    }
}

/// An MDC nomenclature code; serializes as `{"code": 152586, "name": "MDC_..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MdcCode(pub u32);

impl Serialize for MdcCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", &self.0)?;
        if let Some(n) = mdc::name(self.0) {
            m.serialize_entry("name", n)?;
        }
        m.end()
    }
}

/// An MDC unit code (partition 4 term); serializes like [`MdcCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MdcUnit(pub u16);

impl Serialize for MdcUnit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", &self.0)?;
        if let Some(n) = mdc::unit_name(self.0) {
            m.serialize_entry("name", n)?;
        }
        m.end()
    }
}

/// Observation class types (ST `ghs.h` `GHS_Observation_Class_Type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationClass {
    /// 1.
    Numeric,
    /// 2.
    SimpleDiscrete,
    /// 3.
    String,
    /// 4.
    SampleArray,
    /// 5.
    CompoundDiscreteEvent,
    /// 6.
    CompoundStateEvent,
    /// 7.
    Compound,
    /// 8.
    TlvEncoded,
    /// 0xFF.
    Bundle,
    /// A value the specification reserves.
    Reserved(u8),
}

impl ObservationClass {
    /// From the wire byte.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => ObservationClass::Numeric,
            2 => ObservationClass::SimpleDiscrete,
            3 => ObservationClass::String,
            4 => ObservationClass::SampleArray,
            5 => ObservationClass::CompoundDiscreteEvent,
            6 => ObservationClass::CompoundStateEvent,
            7 => ObservationClass::Compound,
            8 => ObservationClass::TlvEncoded,
            0xFF => ObservationClass::Bundle,
            other => ObservationClass::Reserved(other),
        }
    }

    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            ObservationClass::Numeric => 1,
            ObservationClass::SimpleDiscrete => 2,
            ObservationClass::String => 3,
            ObservationClass::SampleArray => 4,
            ObservationClass::CompoundDiscreteEvent => 5,
            ObservationClass::CompoundStateEvent => 6,
            ObservationClass::Compound => 7,
            ObservationClass::TlvEncoded => 8,
            ObservationClass::Bundle => 0xFF,
            ObservationClass::Reserved(v) => v,
        }
    }
}

mod flag {
    pub const TYPE: u16 = 1 << 0;
    pub const TIME_STAMP: u16 = 1 << 1;
    pub const DURATION: u16 = 1 << 2;
    pub const STATUS: u16 = 1 << 3;
    pub const OBJECT_ID: u16 = 1 << 4;
    pub const PATIENT: u16 = 1 << 5;
    pub const SUPPLEMENTAL: u16 = 1 << 6;
    pub const DERIVED_FROM: u16 = 1 << 7;
    /// Bits 8 (is member of) and 9 (TLVs): fields whose layout is not confirmed.
    pub const UNCONFIRMED: u16 = (1 << 8) | (1 << 9);
    pub const DEFINED: u16 = 0x03FF;
}

bitset! {
    /// Measurement Status (ST `ghs.h` `GHS_Measurement_Status_t`; bits 8–13 reserved).
    pub struct MeasurementStatus(u16) {
        /// Bit 0.
        INVALID = 0 => "invalid",
        /// Bit 1.
        QUESTIONABLE = 1 => "questionable",
        /// Bit 2.
        NOT_AVAILABLE = 2 => "not_available",
        /// Bit 3.
        CALIBRATING = 3 => "calibrating",
        /// Bit 4.
        TEST_DATA = 4 => "test_data",
        /// Bit 5.
        EARLY_ESTIMATE = 5 => "early_estimate",
        /// Bit 6.
        MANUALLY_ENTERED = 6 => "manually_entered",
        /// Bit 7.
        SETTING = 7 => "setting",
        /// Bit 14.
        THRESHOLD_ERROR = 14 => "threshold_error",
        /// Bit 15.
        THRESHOLD_DISABLED = 15 => "threshold_disabled",
    }
}

/// Resolution of an [`ElapsedTime`] value (flags bits 2–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeResolution {
    /// 1 s.
    Second,
    /// 100 ms.
    Decisecond,
    /// 1 ms.
    Millisecond,
    /// 100 µs.
    Microsecond100,
}

impl TimeResolution {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => TimeResolution::Second,
            1 => TimeResolution::Decisecond,
            2 => TimeResolution::Millisecond,
            _ => TimeResolution::Microsecond100,
        }
    }

    fn to_bits(self) -> u8 {
        self as u8
    }
}

/// A time stamp in the Elapsed Time layout (GSS §3.82): 9 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ElapsedTime {
    /// Flags bit 0: the value is a tick counter, not a time of day.
    pub tick_counter: bool,
    /// Bit 1: the time of day is UTC (else local).
    pub utc: bool,
    /// Bits 2–3.
    pub resolution: TimeResolution,
    /// Bit 4: the TZ/DST offset field is used.
    pub tz_dst_used: bool,
    /// Bit 5: the stamp is from the current timeline (the clock was not reset since).
    pub current_timeline: bool,
    /// 48-bit count of `resolution` units since 2000-01-01 00:00:00 (time of day) or since
    /// an implementation-defined start (tick counter).
    pub value: u64,
    /// Time synchronization source (0 unknown, 1 NTP, 2 GPS, 3 radio, 4 manual, 5 atomic,
    /// 6 cellular, 7 not synchronized).
    pub time_sync_source: u8,
    /// Combined TZ/DST offset from UTC in 15-minute units.
    pub tz_dst_offset_15min: i8,
}

/// The Elapsed Time epoch.
const EPOCH_2000: PrimitiveDateTime = time::macros::datetime!(2000-01-01 00:00:00);

impl ElapsedTime {
    /// Bytes on the wire.
    pub const LEN: usize = 9;

    /// A UTC time of day with 1 s resolution (what the simulators send).
    pub fn utc_seconds(at: PrimitiveDateTime, source: u8) -> Option<Self> {
        let secs = (at - EPOCH_2000).whole_seconds();
        let value = u64::try_from(secs).ok().filter(|v| *v < 1 << 48)?;
        Some(ElapsedTime {
            tick_counter: false,
            utc: true,
            resolution: TimeResolution::Second,
            tz_dst_used: false,
            current_timeline: true,
            value,
            time_sync_source: source,
            tz_dst_offset_15min: 0,
        })
    }

    fn read(r: &mut Reader<'_>, quirks: &mut Vec<Quirk>) -> Result<Self, DecodeError> {
        let flags = r.u8("time_stamp.flags")?;
        if flags & 0xC0 != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "time_stamp.flags",
                bits: u32::from(flags & 0xC0),
            });
        }
        let [a, b, c, d, e, f] = r.array::<6>("time_stamp.time_value")?;
        let value = u64::from_le_bytes([a, b, c, d, e, f, 0, 0]);
        let time_sync_source = r.u8("time_stamp.time_sync_source")?;
        let [off] = r.array::<1>("time_stamp.tz_dst_offset")?;
        Ok(ElapsedTime {
            tick_counter: flags & 0x01 != 0,
            utc: flags & 0x02 != 0,
            resolution: TimeResolution::from_bits(flags >> 2),
            tz_dst_used: flags & 0x10 != 0,
            current_timeline: flags & 0x20 != 0,
            value,
            time_sync_source,
            tz_dst_offset_15min: i8::from_le_bytes([off]),
        })
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.value >= 1 << 48 {
            return Err(EncodeError::InvalidValue {
                field: "time_stamp.time_value",
                value: i64::try_from(self.value).unwrap_or(i64::MAX),
                reason: "does not fit 48 bits",
            });
        }
        let flags = u8::from(self.tick_counter)
            | u8::from(self.utc) << 1
            | self.resolution.to_bits() << 2
            | u8::from(self.tz_dst_used) << 4
            | u8::from(self.current_timeline) << 5;
        out.push(flags);
        out.extend_from_slice(&self.value.to_le_bytes()[..6]);
        out.push(self.time_sync_source);
        out.extend_from_slice(&self.tz_dst_offset_15min.to_le_bytes());
        Ok(())
    }

    /// The wall-clock time the stamp names (time of day only; `None` for a tick counter or a
    /// date past year 9999).
    pub fn wall_clock(&self) -> Option<PrimitiveDateTime> {
        if self.tick_counter {
            return None;
        }
        let (per_second, nanos_per_tick) = match self.resolution {
            TimeResolution::Second => (1, 0),
            TimeResolution::Decisecond => (10, 100_000_000),
            TimeResolution::Millisecond => (1_000, 1_000_000),
            TimeResolution::Microsecond100 => (10_000, 100_000),
        };
        // A 48-bit count: whole seconds fit i64, the remainder's nanoseconds fit i32.
        let secs = i64::try_from(self.value / per_second).ok()?;
        let nanos = i32::try_from((self.value % per_second) * nanos_per_tick).ok()?;
        let since = Duration::new(secs, nanos);
        EPOCH_2000.checked_add(since)
    }

    /// The UTC offset of the wall clock, when the stamp says it: 0 for UTC, the TZ/DST
    /// offset when used; `None` for a local time without an offset.
    pub fn offset(&self) -> Option<time::UtcOffset> {
        if self.utc {
            Some(time::UtcOffset::UTC)
        } else if self.tz_dst_used {
            time::UtcOffset::from_whole_seconds(i32::from(self.tz_dst_offset_15min) * 900).ok()
        } else {
            None
        }
    }
}

/// One component of a compound observation (component value type 1, numeric; ST
/// `CompoundObservationBloodPressure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Component {
    /// MDC code of the component.
    pub component_type: MdcCode,
    /// Unit.
    pub unit: MdcUnit,
    /// The number or its special value.
    pub value: Float11073,
}

/// The value part of an observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationValue {
    /// Numeric observation: unit and FLOAT.
    Numeric {
        /// Unit.
        unit: MdcUnit,
        /// The number, or its special value.
        value: Float11073,
    },
    /// Compound observation with numeric components.
    Compound(Vec<Component>),
    /// Observation bundle: the observations it carries.
    Bundle(Vec<Observation>),
    /// A value whose layout this crate does not decode, kept as bytes.
    Raw(#[serde(serialize_with = "as_hex")] Vec<u8>),
}

fn as_hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    s.serialize_str(&out)
}

/// One health observation (an ACOM object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The class.
    pub class: ObservationClass,
    /// What was observed (mandatory for a single observation, optional in bundles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation_type: Option<MdcCode>,
    /// When.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_stamp: Option<ElapsedTime>,
    /// How long the measurement took, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_duration_s: Option<Float11073>,
    /// Measurement status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status: Option<MeasurementStatus>,
    /// Object id (referenced by "derived from").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<u32>,
    /// The sensor's local user/patient index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<u8>,
    /// Supplemental information (MDC codes such as body site or `MDC_MODALITY_SPOT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplemental_information: Option<Vec<MdcCode>>,
    /// Object ids this observation is derived from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<Vec<u32>>,
    /// Flags bits 8/9 (is-member-of, TLVs) as sent: their fields and the value follow in
    /// [`ObservationValue::Raw`].
    #[serde(skip_serializing_if = "is_zero")]
    pub unconfirmed_fields: u16,
    /// The value.
    pub value: ObservationValue,
    /// Rules the sensor bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

fn count_list(
    r: &mut Reader<'_>,
    count_field: &'static str,
    item_field: &'static str,
) -> Result<Vec<u32>, DecodeError> {
    let n = r.u8(count_field)?;
    (0..n).map(|_| r.u32(item_field)).collect()
}

fn put_count_list(
    out: &mut Vec<u8>,
    field: &'static str,
    items: &[u32],
) -> Result<(), EncodeError> {
    let n = u8::try_from(items.len()).map_err(|_| EncodeError::InvalidValue {
        field,
        value: i64::try_from(items.len()).unwrap_or(i64::MAX),
        reason: "at most 255 entries",
    })?;
    out.push(n);
    for i in items {
        put_u32(out, *i);
    }
    Ok(())
}

impl Observation {
    /// A numeric observation with just a type and a value.
    pub fn numeric(observation_type: u32, unit: u16, value: Float11073) -> Self {
        Observation {
            class: ObservationClass::Numeric,
            observation_type: Some(MdcCode(observation_type)),
            time_stamp: None,
            measurement_duration_s: None,
            measurement_status: None,
            object_id: None,
            patient_id: None,
            supplemental_information: None,
            derived_from: None,
            unconfirmed_fields: 0,
            value: ObservationValue::Numeric {
                unit: MdcUnit(unit),
                value,
            },
            quirks: Vec::new(),
        }
    }

    /// Reads `class | length | body` and checks that nothing follows.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let o = Self::read(&mut r, 0)?;
        r.finish_strict("observation")?;
        Ok(o)
    }

    fn read(r: &mut Reader<'_>, depth: u8) -> Result<Self, DecodeError> {
        let class = ObservationClass::from_u8(r.u8("observation_class_type")?);
        let length = r.u16("length")?;
        let body = r.take(usize::from(length), "observation_body")?;
        Self::read_body(class, body, depth)
    }

    fn read_body(class: ObservationClass, body: &[u8], depth: u8) -> Result<Self, DecodeError> {
        let mut quirks = Vec::new();
        if let ObservationClass::Reserved(v) = class {
            quirks.push(Quirk::ReservedValue {
                field: "observation_class_type",
                value: v.into(),
            });
        }
        let mut r = Reader::new(body);
        let flags = r.u16("flags")?;
        if flags & !flag::DEFINED != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "flags",
                bits: u32::from(flags & !flag::DEFINED),
            });
        }
        let has = |f: u16| flags & f != 0;
        let observation_type = if has(flag::TYPE) {
            Some(MdcCode(r.u32("observation_type")?))
        } else {
            None
        };
        let time_stamp = if has(flag::TIME_STAMP) {
            Some(ElapsedTime::read(&mut r, &mut quirks)?)
        } else {
            None
        };
        let measurement_duration_s = if has(flag::DURATION) {
            Some(r.float("measurement_duration")?)
        } else {
            None
        };
        let measurement_status = if has(flag::STATUS) {
            let (s, reserved) = MeasurementStatus::from_bits_split(r.u16("measurement_status")?);
            if reserved != 0 {
                quirks.push(Quirk::ReservedBitsSet {
                    field: "measurement_status",
                    bits: reserved.into(),
                });
            }
            Some(s)
        } else {
            None
        };
        let object_id = if has(flag::OBJECT_ID) {
            Some(r.u32("object_id")?)
        } else {
            None
        };
        let patient_id = if has(flag::PATIENT) {
            Some(r.u8("patient")?)
        } else {
            None
        };
        let supplemental_information = if has(flag::SUPPLEMENTAL) {
            Some(
                count_list(
                    &mut r,
                    "supplemental_information.count",
                    "supplemental_information.code",
                )?
                .into_iter()
                .map(MdcCode)
                .collect(),
            )
        } else {
            None
        };
        let derived_from = if has(flag::DERIVED_FROM) {
            Some(count_list(
                &mut r,
                "derived_from.count",
                "derived_from.object_id",
            )?)
        } else {
            None
        };
        let unconfirmed_fields = flags & flag::UNCONFIRMED;
        let value = if unconfirmed_fields != 0 {
            ObservationValue::Raw(r.rest().to_vec())
        } else {
            match class {
                ObservationClass::Numeric => ObservationValue::Numeric {
                    unit: MdcUnit(r.u16("unit_code")?),
                    value: r.float("value")?,
                },
                ObservationClass::Compound => Self::read_compound(&mut r)?,
                ObservationClass::Bundle => {
                    if depth >= MAX_DEPTH {
                        return Err(DecodeError::InvalidValue {
                            field: "observation_class_type",
                            value: 0xFF,
                            reason: "bundles nested too deep",
                        });
                    }
                    let n = r.u8("bundle.count")?;
                    let mut members = Vec::with_capacity(usize::from(n));
                    for _ in 0..n {
                        members.push(Self::read(&mut r, depth + 1)?);
                    }
                    ObservationValue::Bundle(members)
                }
                _ => ObservationValue::Raw(r.rest().to_vec()),
            }
        };
        r.finish(&mut quirks);
        Ok(Observation {
            class,
            observation_type,
            time_stamp,
            measurement_duration_s,
            measurement_status,
            object_id,
            patient_id,
            supplemental_information,
            derived_from,
            unconfirmed_fields,
            value,
            quirks,
        })
    }

    fn read_compound(r: &mut Reader<'_>) -> Result<ObservationValue, DecodeError> {
        let n = r.u8("compound.count")?;
        let mut components = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let component_type = MdcCode(r.u32("compound.component_type")?);
            let value_type = r.u8("compound.component_value_type")?;
            if value_type != 1 {
                return Err(DecodeError::InvalidValue {
                    field: "compound.component_value_type",
                    value: value_type.into(),
                    reason: "only numeric components (1) are decoded",
                });
            }
            components.push(Component {
                component_type,
                unit: MdcUnit(r.u16("compound.unit_code")?),
                value: r.float("compound.value")?,
            });
        }
        Ok(ObservationValue::Compound(components))
    }

    /// Writes `class | length | body`.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(32);
        self.write(&mut out)?;
        Ok(out)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut body = Vec::with_capacity(32);
        let mut flags = self.unconfirmed_fields & flag::UNCONFIRMED;
        for (present, bit) in [
            (self.observation_type.is_some(), flag::TYPE),
            (self.time_stamp.is_some(), flag::TIME_STAMP),
            (self.measurement_duration_s.is_some(), flag::DURATION),
            (self.measurement_status.is_some(), flag::STATUS),
            (self.object_id.is_some(), flag::OBJECT_ID),
            (self.patient_id.is_some(), flag::PATIENT),
            (self.supplemental_information.is_some(), flag::SUPPLEMENTAL),
            (self.derived_from.is_some(), flag::DERIVED_FROM),
        ] {
            if present {
                flags |= bit;
            }
        }
        put_u16(&mut body, flags);
        if let Some(t) = self.observation_type {
            put_u32(&mut body, t.0);
        }
        if let Some(t) = &self.time_stamp {
            t.write(&mut body)?;
        }
        if let Some(d) = &self.measurement_duration_s {
            put_float(&mut body, "measurement_duration", d)?;
        }
        if let Some(s) = self.measurement_status {
            put_u16(&mut body, s.bits());
        }
        if let Some(id) = self.object_id {
            put_u32(&mut body, id);
        }
        if let Some(p) = self.patient_id {
            body.push(p);
        }
        if let Some(codes) = &self.supplemental_information {
            let codes: Vec<u32> = codes.iter().map(|c| c.0).collect();
            put_count_list(&mut body, "supplemental_information", &codes)?;
        }
        if let Some(ids) = &self.derived_from {
            put_count_list(&mut body, "derived_from", ids)?;
        }
        match (&self.value, self.class) {
            (ObservationValue::Raw(bytes), _) => body.extend_from_slice(bytes),
            _ if self.unconfirmed_fields != 0 => {
                return Err(EncodeError::InvalidValue {
                    field: "flags",
                    value: self.unconfirmed_fields.into(),
                    reason: "unconfirmed fields need a raw value",
                });
            }
            (ObservationValue::Numeric { unit, value }, ObservationClass::Numeric) => {
                put_u16(&mut body, unit.0);
                put_float(&mut body, "value", value)?;
            }
            (ObservationValue::Compound(components), ObservationClass::Compound) => {
                body.push(u8::try_from(components.len()).map_err(|_| {
                    EncodeError::InvalidValue {
                        field: "compound.count",
                        value: i64::try_from(components.len()).unwrap_or(i64::MAX),
                        reason: "at most 255 components",
                    }
                })?);
                for c in components {
                    put_u32(&mut body, c.component_type.0);
                    body.push(1);
                    put_u16(&mut body, c.unit.0);
                    put_float(&mut body, "compound.value", &c.value)?;
                }
            }
            (ObservationValue::Bundle(members), ObservationClass::Bundle) => {
                body.push(
                    u8::try_from(members.len()).map_err(|_| EncodeError::InvalidValue {
                        field: "bundle.count",
                        value: i64::try_from(members.len()).unwrap_or(i64::MAX),
                        reason: "at most 255 observations",
                    })?,
                );
                for m in members {
                    m.write(&mut body)?;
                }
            }
            (_, class) => {
                return Err(EncodeError::InvalidValue {
                    field: "observation_class_type",
                    value: class.to_u8().into(),
                    reason: "the value does not fit the class",
                });
            }
        }
        let length = u16::try_from(body.len()).map_err(|_| EncodeError::InvalidValue {
            field: "length",
            value: i64::try_from(body.len()).unwrap_or(i64::MAX),
            reason: "an observation is at most 65535 bytes",
        })?;
        out.push(self.class.to_u8());
        put_u16(out, length);
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Whether any part of this observation (or a bundle member) bent a rule.
    pub fn has_quirks(&self) -> bool {
        !self.quirks.is_empty()
            || matches!(&self.value, ObservationValue::Bundle(m) if m.iter().any(Observation::has_quirks))
    }

    /// The same observation without quirks, members included.
    pub fn without_quirks(mut self) -> Self {
        self.quirks.clear();
        if let ObservationValue::Bundle(members) = &mut self.value {
            for m in members.iter_mut() {
                *m = std::mem::replace(m, Observation::numeric(0, 0, Float11073::NAN))
                    .without_quirks();
            }
        }
        self
    }

    /// The numeric values this observation carries, each with its type, unit and the
    /// fields it inherits from an enclosing bundle (type, time stamp, status, patient).
    pub fn numerics(&self) -> Vec<NumericItem> {
        let mut out = Vec::new();
        self.collect_numerics(&Inherited::default(), &mut out);
        out
    }

    fn collect_numerics(&self, parent: &Inherited, out: &mut Vec<NumericItem>) {
        let here = Inherited {
            observation_type: self.observation_type.or(parent.observation_type),
            time_stamp: self.time_stamp.or(parent.time_stamp),
            measurement_status: self.measurement_status.or(parent.measurement_status),
            patient_id: self.patient_id.or(parent.patient_id),
        };
        match &self.value {
            ObservationValue::Numeric { unit, value } => {
                if let Some(t) = here.observation_type {
                    out.push(NumericItem {
                        observation_type: t.0,
                        unit: unit.0,
                        value: *value,
                        time_stamp: here.time_stamp,
                        measurement_status: here.measurement_status,
                        patient_id: here.patient_id,
                    });
                }
            }
            ObservationValue::Compound(components) => {
                for c in components {
                    out.push(NumericItem {
                        observation_type: c.component_type.0,
                        unit: c.unit.0,
                        value: c.value,
                        time_stamp: here.time_stamp,
                        measurement_status: here.measurement_status,
                        patient_id: here.patient_id,
                    });
                }
            }
            ObservationValue::Bundle(members) => {
                // A bundle's own type describes the bundle, not its members.
                let for_members = Inherited {
                    observation_type: None,
                    ..here
                };
                for m in members {
                    m.collect_numerics(&for_members, out);
                }
            }
            ObservationValue::Raw(_) => {}
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Inherited {
    observation_type: Option<MdcCode>,
    time_stamp: Option<ElapsedTime>,
    measurement_status: Option<MeasurementStatus>,
    patient_id: Option<u8>,
}

/// One number out of an observation (see [`Observation::numerics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumericItem {
    /// MDC code.
    pub observation_type: u32,
    /// MDC unit term.
    pub unit: u16,
    /// The number or its special value.
    pub value: Float11073,
    /// Its time stamp (own or the bundle's).
    pub time_stamp: Option<ElapsedTime>,
    /// Its status (own or the bundle's).
    pub measurement_status: Option<MeasurementStatus>,
    /// The sensor's user index (own or the bundle's).
    pub patient_id: Option<u8>,
}

fn whole_segment(r: &mut Reader<'_>, what: &'static str) -> Result<SegmentHeader, DecodeError> {
    let b = r.u8("segmentation_header")?;
    let h = SegmentHeader::from_u8(b);
    if h.first && h.last {
        Ok(h)
    } else {
        Err(DecodeError::InvalidValue {
            field: "segmentation_header",
            value: b.into(),
            reason: what,
        })
    }
}

/// Live Health Observations (0x2B8B): one value holding a whole observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveHealthObservation {
    /// The segmentation header (first and last set).
    pub segment: SegmentHeader,
    /// The observation.
    pub observation: Observation,
}

impl LiveHealthObservation {
    /// Decodes a one-segment value (the session joins longer ones first).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let segment = whole_segment(
            &mut r,
            "one segment of a longer observation; join the segments first",
        )?;
        let observation = Observation::read(&mut r, 0)?;
        r.finish_strict("observation")?;
        Ok(LiveHealthObservation {
            segment,
            observation,
        })
    }

    /// Encodes as one segment.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![SegmentHeader::whole(self.segment.counter).to_u8()];
        self.observation.write(&mut out)?;
        Ok(out)
    }
}

/// The joined payload of Stored Health Observations: record number and observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredObservation {
    /// The record number RACP filters on.
    pub record_number: u32,
    /// The observation.
    pub observation: Observation,
}

impl StoredObservation {
    /// Decodes a joined payload (segments already removed).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let record_number = r.u32("record_number")?;
        let observation = Observation::read(&mut r, 0)?;
        r.finish_strict("observation")?;
        Ok(StoredObservation {
            record_number,
            observation,
        })
    }

    /// The joined payload.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(40);
        put_u32(&mut out, self.record_number);
        self.observation.write(&mut out)?;
        Ok(out)
    }
}

/// Stored Health Observations (0x2BDD): one value holding a whole stored observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredHealthObservation {
    /// The segmentation header (first and last set).
    pub segment: SegmentHeader,
    /// Record number and observation.
    #[serde(flatten)]
    pub stored: StoredObservation,
}

impl StoredHealthObservation {
    /// Decodes a one-segment value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let segment = whole_segment(
            &mut r,
            "one segment of a longer stored observation; join the segments first",
        )?;
        Ok(StoredHealthObservation {
            segment,
            stored: StoredObservation::decode(r.rest())?,
        })
    }

    /// Encodes as one segment.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![SegmentHeader::whole(self.segment.counter).to_u8()];
        out.extend_from_slice(&self.stored.encode()?);
        Ok(out)
    }
}

/// A supported device specialization (IEEE 11073-104xx profile term and version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DeviceSpecialization {
    /// The term code, e.g. 0x1007 `MDC_DEV_SPEC_PROFILE_BP`.
    pub code: u16,
    /// Version.
    pub version: u8,
}

/// Health Sensor Features (0x2BF3): the observation types the sensor supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSensorFeatures {
    /// Supported observation types.
    pub observation_types: Vec<MdcCode>,
    /// Supported device specializations (flags bit 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_specializations: Option<Vec<DeviceSpecialization>>,
    /// Rules the sensor bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl HealthSensorFeatures {
    /// Decodes (ST `GHS_APP_UpdateFeature`; Philips `setFeatureCharacteristicTypes`).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let flags = r.u8("flags")?;
        if flags & !1 != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "flags",
                bits: u32::from(flags & !1),
            });
        }
        let observation_types =
            count_list(&mut r, "observation_types.count", "observation_types.code")?
                .into_iter()
                .map(MdcCode)
                .collect();
        let device_specializations = if flags & 1 != 0 {
            let n = r.u8("device_specializations.count")?;
            let mut v = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                v.push(DeviceSpecialization {
                    code: r.u16("device_specializations.code")?,
                    version: r.u8("device_specializations.version")?,
                });
            }
            Some(v)
        } else {
            None
        };
        r.finish(&mut quirks);
        Ok(HealthSensorFeatures {
            observation_types,
            device_specializations,
            quirks,
        })
    }

    /// Encodes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![u8::from(self.device_specializations.is_some())];
        let codes: Vec<u32> = self.observation_types.iter().map(|c| c.0).collect();
        put_count_list(&mut out, "observation_types", &codes)?;
        if let Some(specs) = &self.device_specializations {
            out.push(
                u8::try_from(specs.len()).map_err(|_| EncodeError::InvalidValue {
                    field: "device_specializations",
                    value: i64::try_from(specs.len()).unwrap_or(i64::MAX),
                    reason: "at most 255 entries",
                })?,
            );
            for s in specs {
                put_u16(&mut out, s.code);
                out.push(s.version);
            }
        }
        Ok(out)
    }
}

/// GHS Control Point (0x2BF4) values (ST `ghs_cp.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GhsControlPoint {
    /// 0x01, client → sensor.
    StartSendingLiveObservations,
    /// 0x02, client → sensor.
    StopSendingLiveObservations,
    /// 0x80, sensor → client.
    Success,
}

impl GhsControlPoint {
    /// Decodes one byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let op = r.u8("op_code")?;
        let v = match op {
            0x01 => GhsControlPoint::StartSendingLiveObservations,
            0x02 => GhsControlPoint::StopSendingLiveObservations,
            0x80 => GhsControlPoint::Success,
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "op_code",
                    value: other.into(),
                    reason: "not 0x01 start, 0x02 stop or 0x80 success",
                });
            }
        };
        r.finish_strict("op_code")?;
        Ok(v)
    }

    /// The byte.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(vec![match self {
            GhsControlPoint::StartSendingLiveObservations => 0x01,
            GhsControlPoint::StopSendingLiveObservations => 0x02,
            GhsControlPoint::Success => 0x80,
        }])
    }
}

/// Observation Schedule Changed (0x2BF1): 12 bytes (ST `GHS_APP_UpdateObservationScheduleChanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ObservationScheduleChanged {
    /// Which observation type.
    pub observation_type: MdcCode,
    /// Measurement period, seconds (FLOAT).
    pub measurement_period_s: Float11073,
    /// Update interval, seconds (FLOAT).
    pub update_interval_s: Float11073,
}

impl ObservationScheduleChanged {
    /// Decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = ObservationScheduleChanged {
            observation_type: MdcCode(r.u32("observation_type")?),
            measurement_period_s: r.float("measurement_period")?,
            update_interval_s: r.float("update_interval")?,
        };
        r.finish_strict("update_interval")?;
        Ok(v)
    }

    /// Encodes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(12);
        put_u32(&mut out, self.observation_type.0);
        put_float(&mut out, "measurement_period", &self.measurement_period_s)?;
        put_float(&mut out, "update_interval", &self.update_interval_s)?;
        Ok(out)
    }
}

/// Which stored observations a GHS RACP request applies to. GHS filters on the `u32`
/// record number (filter type 0x01; ST `ghs_racp.h`), not BLS/PLXS's `u16` sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GhsRecordFilter {
    /// Operator 1.
    AllRecords,
    /// Operator 2.
    LessThanOrEqual(u32),
    /// Operator 3.
    GreaterThanOrEqual(u32),
    /// Operator 4.
    WithinRange {
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// Operator 5.
    FirstRecord,
    /// Operator 6.
    LastRecord,
}

/// A GHS Record Access Control Point value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GhsRacp {
    /// Op code 1.
    ReportStoredRecords(GhsRecordFilter),
    /// Op code 2.
    DeleteStoredRecords(GhsRecordFilter),
    /// Op code 3.
    AbortOperation,
    /// Op code 4.
    ReportNumberOfStoredRecords(GhsRecordFilter),
    /// Op code 5: the count (`u32`).
    NumberOfStoredRecords(u32),
    /// Op code 6.
    Response {
        /// The request's op code.
        request_op_code: u8,
        /// The outcome.
        response_code: ResponseCode,
    },
}

const RECORD_NUMBER: u8 = 0x01;

impl GhsRacp {
    /// Decodes a request or a response; strict about operand widths.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let op = r.u8("op_code")?;
        let operator = r.u8("operator")?;
        let bad = |field, value: u8, reason| DecodeError::InvalidValue {
            field,
            value: value.into(),
            reason,
        };
        let filter = |r: &mut Reader<'_>| -> Result<GhsRecordFilter, DecodeError> {
            let record = |r: &mut Reader<'_>| -> Result<(), DecodeError> {
                let t = r.u8("operand.filter_type")?;
                if t == RECORD_NUMBER {
                    Ok(())
                } else {
                    Err(bad(
                        "operand.filter_type",
                        t,
                        "GHS filters on the record number (0x01)",
                    ))
                }
            };
            Ok(match operator {
                1 => GhsRecordFilter::AllRecords,
                2 => {
                    record(r)?;
                    GhsRecordFilter::LessThanOrEqual(r.u32("operand.record_number")?)
                }
                3 => {
                    record(r)?;
                    GhsRecordFilter::GreaterThanOrEqual(r.u32("operand.record_number")?)
                }
                4 => {
                    record(r)?;
                    GhsRecordFilter::WithinRange {
                        min: r.u32("operand.record_number")?,
                        max: r.u32("operand.record_number")?,
                    }
                }
                5 => GhsRecordFilter::FirstRecord,
                6 => GhsRecordFilter::LastRecord,
                other => return Err(bad("operator", other, "not an operator for this op code")),
            })
        };
        let v = match op {
            1 => GhsRacp::ReportStoredRecords(filter(&mut r)?),
            2 => GhsRacp::DeleteStoredRecords(filter(&mut r)?),
            3 if operator == 0 => GhsRacp::AbortOperation,
            4 => GhsRacp::ReportNumberOfStoredRecords(filter(&mut r)?),
            5 if operator == 0 => {
                GhsRacp::NumberOfStoredRecords(r.u32("operand.number_of_records")?)
            }
            6 if operator == 0 => GhsRacp::Response {
                request_op_code: r.u8("operand.request_op_code")?,
                response_code: ResponseCode::from_u8(r.u8("operand.response_code")?),
            },
            3 | 5 | 6 => return Err(bad("operator", operator, "this op code takes Null")),
            other => return Err(bad("op_code", other, "not a GHS RACP op code (1..=6)")),
        };
        r.finish_strict("operand")?;
        Ok(v)
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11);
        let filter = |out: &mut Vec<u8>, f: &GhsRecordFilter| match *f {
            GhsRecordFilter::AllRecords => out.push(1),
            GhsRecordFilter::LessThanOrEqual(n) => {
                out.extend_from_slice(&[2, RECORD_NUMBER]);
                put_u32(out, n);
            }
            GhsRecordFilter::GreaterThanOrEqual(n) => {
                out.extend_from_slice(&[3, RECORD_NUMBER]);
                put_u32(out, n);
            }
            GhsRecordFilter::WithinRange { min, max } => {
                out.extend_from_slice(&[4, RECORD_NUMBER]);
                put_u32(out, min);
                put_u32(out, max);
            }
            GhsRecordFilter::FirstRecord => out.push(5),
            GhsRecordFilter::LastRecord => out.push(6),
        };
        match self {
            GhsRacp::ReportStoredRecords(f) => {
                out.push(1);
                filter(&mut out, f);
            }
            GhsRacp::DeleteStoredRecords(f) => {
                out.push(2);
                filter(&mut out, f);
            }
            GhsRacp::AbortOperation => out.extend_from_slice(&[3, 0]),
            GhsRacp::ReportNumberOfStoredRecords(f) => {
                out.push(4);
                filter(&mut out, f);
            }
            GhsRacp::NumberOfStoredRecords(n) => {
                out.extend_from_slice(&[5, 0]);
                put_u32(&mut out, *n);
            }
            GhsRacp::Response {
                request_op_code,
                response_code,
            } => out.extend_from_slice(&[6, 0, *request_op_code, response_code.to_u8()]),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::ieee11073::tests_support::any_float;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// ST `ghs_app.c` `NumericOxygenSaturation`, byte for byte.
    const ST_NUMERIC_SPO2: &str =
        "01 1b00 6300 b84b0200 22 729d2b290000 06 00 01 01 3c4c0200 2002 62000000";

    #[test]
    fn st_numeric_observation_decodes_field_by_field() {
        let o = Observation::decode(&hex(ST_NUMERIC_SPO2)).unwrap();
        assert_eq!(o.class, ObservationClass::Numeric);
        assert_eq!(o.observation_type, Some(MdcCode(mdc::SPO2)));
        let ts = o.time_stamp.unwrap();
        assert!(ts.utc && ts.current_timeline && !ts.tick_counter);
        assert_eq!(ts.value, 0x292B_9D72);
        assert_eq!(ts.time_sync_source, 6);
        assert_eq!(
            ts.wall_clock(),
            Some(time::macros::datetime!(2021-11-20 11:50:10))
        );
        assert_eq!(o.patient_id, Some(1));
        assert_eq!(
            o.supplemental_information,
            Some(vec![MdcCode(mdc::MODALITY_SPOT)])
        );
        assert_eq!(
            o.value,
            ObservationValue::Numeric {
                unit: MdcUnit(mdc::unit::PERCENT),
                value: Float11073::new(98, 0)
            }
        );
        assert!(o.quirks.is_empty());
        assert_eq!(o.encode().unwrap(), hex(ST_NUMERIC_SPO2));
    }

    #[test]
    fn length_must_match_the_bytes() {
        let mut b = hex(ST_NUMERIC_SPO2);
        b.pop();
        assert!(matches!(
            Observation::decode(&b),
            Err(DecodeError::Truncated {
                field: "observation_body",
                ..
            })
        ));
        let mut b = hex(ST_NUMERIC_SPO2);
        b.push(0);
        assert_eq!(
            Observation::decode(&b),
            Err(DecodeError::TrailingBytes {
                after: "observation",
                count: 1
            })
        );
        // A flag promising a field the body lacks.
        let b = hex("01 0600 0100 b84b0200");
        assert!(matches!(
            Observation::decode(&b),
            Err(DecodeError::Truncated {
                field: "unit_code",
                ..
            })
        ));
    }

    #[test]
    fn special_values_stay_absent() {
        for (bits, special) in [
            ("ffff7f00", crate::codec::SpecialValue::Nan),
            ("00008000", crate::codec::SpecialValue::Nres),
            ("feff7f00", crate::codec::SpecialValue::PositiveInfinity),
            ("02008000", crate::codec::SpecialValue::NegativeInfinity),
            ("01008000", crate::codec::SpecialValue::Reserved),
        ] {
            let b = hex(&format!("01 0c00 0100 0a540200 4006 {bits}"));
            let o = Observation::decode(&b).unwrap();
            let items = o.numerics();
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].value, Float11073::Special(special));
            assert_eq!(items[0].observation_type, mdc::FEV1);
        }
    }

    #[test]
    fn bundle_members_inherit_the_bundle_time_stamp() {
        // ST `ObservationBundle` (SpO2 98 %, pulse 98/min).
        let b = hex("ff 2f00 4200 22 729d2b290000 06 00 01 3c4c0200 02 \
             01 0c00 0100 b84b0200 2002 62000000 \
             01 0c00 0100 1a480200 a00a 62000000");
        let o = Observation::decode(&b).unwrap();
        let items = o.numerics();
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.time_stamp == o.time_stamp));
        assert_eq!(items[1].observation_type, mdc::PULSE_OXIM_RATE);
        assert_eq!(items[1].unit, mdc::unit::BEAT_PER_MIN);
        assert_eq!(o.encode().unwrap(), b);
    }

    #[test]
    fn st_compound_blood_pressure_decodes() {
        let b = hex("07 3500 1300 044a0200 22 729d2b290000 06 00 40e20100 03 \
             054a0200 01 200f 64000000 064a0200 01 200f 3c000000 074a0200 01 200f 50000000");
        let o = Observation::decode(&b).unwrap();
        assert_eq!(o.object_id, Some(123_456));
        let items = o.numerics();
        assert_eq!(
            items.iter().map(|i| i.observation_type).collect::<Vec<_>>(),
            [mdc::BP_SYS, mdc::BP_DIA, mdc::BP_MEAN]
        );
        assert_eq!(o.encode().unwrap(), b);
    }

    #[test]
    fn racp_requests_use_u32_record_numbers() {
        // ST ghs_racp.h: ">= record number" is 7 bytes, a range 11.
        let req = GhsRacp::ReportStoredRecords(GhsRecordFilter::GreaterThanOrEqual(0x0102_0304));
        assert_eq!(req.encode(), [1, 3, 1, 4, 3, 2, 1]);
        assert_eq!(GhsRacp::decode(&req.encode()), Ok(req));
        assert_eq!(
            GhsRacp::decode(&[5, 0, 2, 0, 0, 0]),
            Ok(GhsRacp::NumberOfStoredRecords(2))
        );
        assert!(GhsRacp::decode(&[1, 3, 1, 4, 3]).is_err());
        assert!(GhsRacp::decode(&[1, 3, 2, 4, 3, 2, 1]).is_err());
    }

    fn any_elapsed() -> impl Strategy<Value = ElapsedTime> {
        (
            any::<[bool; 4]>(),
            0u8..4,
            0u64..(1 << 48),
            any::<u8>(),
            any::<i8>(),
        )
            .prop_map(|([t, u, z, c], res, value, src, off)| ElapsedTime {
                tick_counter: t,
                utc: u,
                resolution: TimeResolution::from_bits(res),
                tz_dst_used: z,
                current_timeline: c,
                value,
                time_sync_source: src,
                tz_dst_offset_15min: off,
            })
    }

    fn any_numeric() -> impl Strategy<Value = Observation> {
        (
            any::<u32>(),
            any::<u16>(),
            any_float(),
            proptest::option::of(any_elapsed()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(prop::collection::vec(any::<u32>(), 0..3)),
            proptest::option::of(any_float()),
        )
            .prop_map(|(t, unit, v, ts, patient, supp, dur)| Observation {
                time_stamp: ts,
                patient_id: patient,
                supplemental_information: supp.map(|s| s.into_iter().map(MdcCode).collect()),
                measurement_duration_s: dur,
                ..Observation::numeric(t, unit, v)
            })
    }

    proptest! {
        #[test]
        fn observations_round_trip(o in any_numeric(), second in any_numeric(), bundle in any::<bool>()) {
            let o = if bundle {
                Observation {
                    class: ObservationClass::Bundle,
                    observation_type: None,
                    value: ObservationValue::Bundle(vec![o, second]),
                    ..Observation::numeric(0, 0, Float11073::NAN)
                }
            } else {
                o
            };
            let bytes = o.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Observation::decode(&bytes), Ok(o));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(o) = Observation::decode(&bytes) {
                let _ = serde_json::to_string(&o);
                let again = o.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(Observation::decode(&again).map(Observation::without_quirks), Ok(o.without_quirks()));
            }
            let _ = GhsRacp::decode(&bytes);
            let _ = HealthSensorFeatures::decode(&bytes);
            let _ = StoredObservation::decode(&bytes);
        }
    }
}
