//! Blood Pressure Service (0x1810): Blood Pressure Measurement (0x2A35), Intermediate Cuff
//! Pressure (0x2A36) and Blood Pressure Feature (0x2A49).
//!
//! Specifications: Blood Pressure Service 1.1.1 §3.1 (measurement), §3.2 (intermediate cuff
//! pressure), §3.3 (feature); field layouts in the GATT Specification Supplement v8 §3.31,
//! §3.32 and §3.129.
//!
//! Measurement layout (little-endian), optional fields in this order when their flag is set:
//!
//! | field                       | size | flag bit |
//! |-----------------------------|------|----------|
//! | flags                       | 1    |          |
//! | systolic / diastolic / MAP  | 3×2 (SFLOAT) | bit 0: 0 = mmHg, 1 = kPa |
//! | time stamp (Date Time)      | 7    | bit 1    |
//! | pulse rate (SFLOAT, /min)   | 2    | bit 2    |
//! | user id (0xFF = unknown)    | 1    | bit 3    |
//! | measurement status          | 2    | bit 4    |
//!
//! Flag bits 5–7 are reserved. Intermediate Cuff Pressure has the same layout with the
//! current cuff pressure in the systolic slot; its diastolic and MAP slots are unused and
//! shall be NaN.
//!
//! Leniencies: reserved flag or status bits are ignored (quirk); bytes after the last flagged
//! field are ignored (quirk: they are a newer revision's field, or a field the flags deny);
//! non-NaN diastolic/MAP in Intermediate Cuff Pressure are ignored (quirk; real cuffs send
//! 0x0000). A field the flags announce but the value lacks is an error.

use serde::Serialize;

use super::bits::bitset;
use super::date_time::DateTime;
use super::error::{DecodeError, EncodeError, Quirk};
use super::ieee11073::Float11073;
use super::reader::{Reader, put_sfloat, put_u16};

/// The unit of the pressure fields (flag bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PressureUnit {
    /// Millimetres of mercury (UCUM `mm[Hg]`).
    #[serde(rename = "mm[Hg]")]
    MmHg,
    /// Kilopascal (UCUM `kPa`).
    #[serde(rename = "kPa")]
    KPa,
}

bitset! {
    /// The single-bit parts of the Blood Pressure Measurement Status (BLS §3.1.1.5).
    pub struct BpStatusFlags(u16) {
        /// Bit 0: body movement during measurement.
        BODY_MOVEMENT_DETECTED = 0 => "body_movement_detected",
        /// Bit 1: cuff too loose.
        CUFF_FIT_LOOSE = 1 => "cuff_fit_loose",
        /// Bit 2: irregular pulse detected.
        IRREGULAR_PULSE_DETECTED = 2 => "irregular_pulse_detected",
        /// Bit 5: improper measurement position.
        IMPROPER_MEASUREMENT_POSITION = 5 => "improper_measurement_position",
    }
}

/// The two-bit Pulse Rate Range Detection field (status bits 3–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PulseRateRange {
    /// 0: pulse rate is within the range.
    WithinRange,
    /// 1: pulse rate exceeds the upper limit.
    ExceedsUpperLimit,
    /// 2: pulse rate is less than the lower limit.
    BelowLowerLimit,
    /// 3: reserved for future use (kept, and recorded as a quirk).
    Reserved,
}

/// Blood Pressure Measurement Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BpMeasurementStatus {
    /// The single-bit conditions that were detected.
    pub flags: BpStatusFlags,
    /// Pulse rate range detection.
    pub pulse_rate_range: PulseRateRange,
}

const STATUS_RANGE_SHIFT: u16 = 3;
const STATUS_RESERVED: u16 = 0xFFC0;

impl BpMeasurementStatus {
    /// Splits the wire bits into the status and the reserved bits that were set.
    pub fn from_bits(bits: u16) -> (Self, u16) {
        let (flags, _) = BpStatusFlags::from_bits_split(bits);
        let pulse_rate_range = match (bits >> STATUS_RANGE_SHIFT) & 0b11 {
            0 => PulseRateRange::WithinRange,
            1 => PulseRateRange::ExceedsUpperLimit,
            2 => PulseRateRange::BelowLowerLimit,
            _ => PulseRateRange::Reserved,
        };
        (
            BpMeasurementStatus {
                flags,
                pulse_rate_range,
            },
            bits & STATUS_RESERVED,
        )
    }

    /// The wire bits.
    pub fn bits(&self) -> u16 {
        let range: u16 = match self.pulse_rate_range {
            PulseRateRange::WithinRange => 0,
            PulseRateRange::ExceedsUpperLimit => 1,
            PulseRateRange::BelowLowerLimit => 2,
            PulseRateRange::Reserved => 3,
        };
        self.flags.bits() | (range << STATUS_RANGE_SHIFT)
    }
}

const FLAG_KPA: u8 = 0x01;
const FLAG_TIMESTAMP: u8 = 0x02;
const FLAG_PULSE_RATE: u8 = 0x04;
const FLAG_USER_ID: u8 = 0x08;
const FLAG_STATUS: u8 = 0x10;
const FLAGS_RESERVED: u8 = 0xE0;

/// What the measurement and intermediate cuff pressure characteristics share.
struct Common {
    unit: PressureUnit,
    pressures: [Float11073; 3],
    timestamp: Option<DateTime>,
    pulse_rate_per_min: Option<Float11073>,
    user_id: Option<u8>,
    status: Option<BpMeasurementStatus>,
    quirks: Vec<Quirk>,
}

fn decode_common(bytes: &[u8], names: [&'static str; 3]) -> Result<Common, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut quirks = Vec::new();
    let flags = r.u8("flags")?;
    if flags & FLAGS_RESERVED != 0 {
        quirks.push(Quirk::ReservedBitsSet {
            field: "flags",
            bits: (flags & FLAGS_RESERVED).into(),
        });
    }
    let unit = if flags & FLAG_KPA != 0 {
        PressureUnit::KPa
    } else {
        PressureUnit::MmHg
    };
    let [a, b, c] = names;
    let pressures = [r.sfloat(a)?, r.sfloat(b)?, r.sfloat(c)?];
    let timestamp = if flags & FLAG_TIMESTAMP != 0 {
        Some(DateTime::read(&mut r, "timestamp")?)
    } else {
        None
    };
    let pulse_rate_per_min = if flags & FLAG_PULSE_RATE != 0 {
        Some(r.sfloat("pulse_rate")?)
    } else {
        None
    };
    let user_id = if flags & FLAG_USER_ID != 0 {
        Some(r.u8("user_id")?)
    } else {
        None
    };
    let status = if flags & FLAG_STATUS != 0 {
        let (status, reserved) = BpMeasurementStatus::from_bits(r.u16("measurement_status")?);
        if reserved != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "measurement_status",
                bits: reserved.into(),
            });
        }
        if status.pulse_rate_range == PulseRateRange::Reserved {
            quirks.push(Quirk::ReservedValue {
                field: "measurement_status.pulse_rate_range",
                value: 3,
            });
        }
        Some(status)
    } else {
        None
    };
    r.finish(&mut quirks);
    Ok(Common {
        unit,
        pressures,
        timestamp,
        pulse_rate_per_min,
        user_id,
        status,
        quirks,
    })
}

impl Common {
    fn encode(&self, names: [&'static str; 3]) -> Result<Vec<u8>, EncodeError> {
        let mut flags = 0u8;
        if self.unit == PressureUnit::KPa {
            flags |= FLAG_KPA;
        }
        if self.timestamp.is_some() {
            flags |= FLAG_TIMESTAMP;
        }
        if self.pulse_rate_per_min.is_some() {
            flags |= FLAG_PULSE_RATE;
        }
        if self.user_id.is_some() {
            flags |= FLAG_USER_ID;
        }
        if self.status.is_some() {
            flags |= FLAG_STATUS;
        }
        let mut out = Vec::with_capacity(19);
        out.push(flags);
        for (value, name) in self.pressures.iter().zip(names) {
            put_sfloat(&mut out, name, value)?;
        }
        if let Some(ts) = &self.timestamp {
            ts.write(&mut out)?;
        }
        if let Some(pr) = &self.pulse_rate_per_min {
            put_sfloat(&mut out, "pulse_rate", pr)?;
        }
        if let Some(id) = self.user_id {
            out.push(id);
        }
        if let Some(status) = &self.status {
            put_u16(&mut out, status.bits());
        }
        Ok(out)
    }
}

/// Blood Pressure Measurement (0x2A35).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BloodPressureMeasurement {
    /// Unit of systolic, diastolic and mean arterial pressure.
    pub unit: PressureUnit,
    /// Systolic pressure.
    pub systolic: Float11073,
    /// Diastolic pressure.
    pub diastolic: Float11073,
    /// Mean arterial pressure.
    pub mean_arterial_pressure: Float11073,
    /// Device time stamp of the measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime>,
    /// Pulse rate in beats per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate_per_min: Option<Float11073>,
    /// User index on a multi-user device (255 = unknown user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    /// Measurement status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BpMeasurementStatus>,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

const BPM_NAMES: [&str; 3] = ["systolic", "diastolic", "mean_arterial_pressure"];

impl BloodPressureMeasurement {
    /// Decodes a Blood Pressure Measurement value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let c = decode_common(bytes, BPM_NAMES)?;
        let [systolic, diastolic, mean_arterial_pressure] = c.pressures;
        Ok(BloodPressureMeasurement {
            unit: c.unit,
            systolic,
            diastolic,
            mean_arterial_pressure,
            timestamp: c.timestamp,
            pulse_rate_per_min: c.pulse_rate_per_min,
            user_id: c.user_id,
            status: c.status,
            quirks: c.quirks,
        })
    }

    /// Encodes the wire bytes; flags follow from which optional fields are present.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Common {
            unit: self.unit,
            pressures: [self.systolic, self.diastolic, self.mean_arterial_pressure],
            timestamp: self.timestamp,
            pulse_rate_per_min: self.pulse_rate_per_min,
            user_id: self.user_id,
            status: self.status,
            quirks: Vec::new(),
        }
        .encode(BPM_NAMES)
    }
}

/// Intermediate Cuff Pressure (0x2A36): the cuff pressure while a measurement is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntermediateCuffPressure {
    /// Unit of the cuff pressure.
    pub unit: PressureUnit,
    /// Current cuff pressure (sent in the systolic slot).
    pub cuff_pressure: Float11073,
    /// Device time stamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime>,
    /// Pulse rate in beats per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_rate_per_min: Option<Float11073>,
    /// User index (255 = unknown user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u8>,
    /// Measurement status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BpMeasurementStatus>,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

const ICP_NAMES: [&str; 3] = [
    "cuff_pressure",
    "unused_diastolic",
    "unused_mean_arterial_pressure",
];

impl IntermediateCuffPressure {
    /// Decodes an Intermediate Cuff Pressure value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut c = decode_common(bytes, ICP_NAMES)?;
        let [cuff_pressure, diastolic, map] = c.pressures;
        let mut quirks = Vec::new();
        for (value, field) in [(diastolic, "diastolic"), (map, "mean_arterial_pressure")] {
            if value != Float11073::NAN {
                quirks.push(Quirk::UnusedFieldNotNan { field });
            }
        }
        quirks.append(&mut c.quirks);
        Ok(IntermediateCuffPressure {
            unit: c.unit,
            cuff_pressure,
            timestamp: c.timestamp,
            pulse_rate_per_min: c.pulse_rate_per_min,
            user_id: c.user_id,
            status: c.status,
            quirks,
        })
    }

    /// Encodes the wire bytes, with NaN in the unused diastolic and MAP slots.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Common {
            unit: self.unit,
            pressures: [self.cuff_pressure, Float11073::NAN, Float11073::NAN],
            timestamp: self.timestamp,
            pulse_rate_per_min: self.pulse_rate_per_min,
            user_id: self.user_id,
            status: self.status,
            quirks: Vec::new(),
        }
        .encode(ICP_NAMES)
    }
}

bitset! {
    /// Blood Pressure Feature bits (GATT Specification Supplement §3.31).
    pub struct BpFeatureBits(u16) {
        /// Bit 0: body movement detection supported.
        BODY_MOVEMENT_DETECTION = 0 => "body_movement_detection",
        /// Bit 1: cuff fit detection supported.
        CUFF_FIT_DETECTION = 1 => "cuff_fit_detection",
        /// Bit 2: irregular pulse detection supported.
        IRREGULAR_PULSE_DETECTION = 2 => "irregular_pulse_detection",
        /// Bit 3: pulse rate range detection supported.
        PULSE_RATE_RANGE_DETECTION = 3 => "pulse_rate_range_detection",
        /// Bit 4: measurement position detection supported.
        MEASUREMENT_POSITION_DETECTION = 4 => "measurement_position_detection",
        /// Bit 5: multiple bonds supported.
        MULTIPLE_BONDS = 5 => "multiple_bonds",
        /// Bit 6: E2E-CRC supported (BLS 1.1).
        E2E_CRC = 6 => "e2e_crc",
        /// Bit 7: User Data Service supported (BLS 1.1).
        USER_DATA_SERVICE = 7 => "user_data_service",
        /// Bit 8: User Facing Time supported (BLS 1.1).
        USER_FACING_TIME = 8 => "user_facing_time",
    }
}

/// Blood Pressure Feature (0x2A49).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BloodPressureFeature {
    /// Supported features.
    pub supported: BpFeatureBits,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl BloodPressureFeature {
    /// Decodes a Blood Pressure Feature value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let (supported, reserved) = BpFeatureBits::from_bits_split(r.u16("feature")?);
        if reserved != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "feature",
                bits: reserved.into(),
            });
        }
        r.finish(&mut quirks);
        Ok(BloodPressureFeature { supported, quirks })
    }

    /// Encodes the 2 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(self.supported.bits().to_le_bytes().to_vec())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::date_time::tests::any_date_time;
    use crate::codec::ieee11073::tests_support::any_sfloat;
    use proptest::prelude::*;

    #[test]
    fn nordic_full_measurement() {
        // NordicSemiconductor/Android-BLE-Common-Library
        // BloodPressureMeasurementDataCallbackTest.onBloodPressureMeasurementReceived_full
        let bytes = [
            0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B,
            0x3C, 0x00, 0x01, 0x27, 0x00,
        ];
        let m = BloodPressureMeasurement::decode(&bytes).unwrap();
        assert_eq!(m.unit, PressureUnit::MmHg);
        assert_eq!(m.systolic, Float11073::new(138, 0));
        assert_eq!(m.diastolic, Float11073::new(88, 0));
        assert_eq!(m.mean_arterial_pressure, Float11073::new(120, 0));
        assert_eq!(
            m.timestamp.map(|t| t.to_string()).as_deref(),
            Some("XXXX-04-17T20:41:59")
        );
        assert_eq!(m.pulse_rate_per_min, Some(Float11073::new(60, 0)));
        assert_eq!(m.user_id, Some(1));
        let status = m.status.unwrap();
        assert_eq!(
            status.flags.names().collect::<Vec<_>>(),
            [
                "body_movement_detected",
                "cuff_fit_loose",
                "irregular_pulse_detected",
                "improper_measurement_position"
            ]
        );
        assert_eq!(status.pulse_rate_range, PulseRateRange::WithinRange);
        assert!(m.quirks.is_empty());
        assert_eq!(m.encode().unwrap(), bytes);
    }

    #[test]
    fn nordic_kpa_with_pulse_below_lower_limit() {
        // Same test class, onBloodPressureMeasurementReceived_some.
        let bytes = [
            0x15, 0xBD, 0xF0, 0x0B, 0x00, 0x9F, 0xF0, 0x3C, 0x00, 0x12, 0x00,
        ];
        let m = BloodPressureMeasurement::decode(&bytes).unwrap();
        assert_eq!(m.unit, PressureUnit::KPa);
        assert_eq!(m.systolic.to_string(), "18.9");
        assert_eq!(m.mean_arterial_pressure.to_string(), "15.9");
        assert_eq!(m.user_id, None);
        let status = m.status.unwrap();
        assert_eq!(status.flags, BpStatusFlags::CUFF_FIT_LOOSE);
        assert_eq!(status.pulse_rate_range, PulseRateRange::BelowLowerLimit);
        assert_eq!(m.encode().unwrap(), bytes);
    }

    #[test]
    fn flags_announcing_missing_fields_are_truncation_errors() {
        // Nordic onInvalidDataReceived_noTimestamp: flags say kPa + timestamp, 6 bytes follow.
        assert_eq!(
            BloodPressureMeasurement::decode(&[3, 2, 3, 4, 5, 6, 7]),
            Err(DecodeError::Truncated {
                field: "timestamp",
                offset: 7,
                needed: 2,
                got: 0
            })
        );
        assert_eq!(
            BloodPressureMeasurement::decode(&[1, 2, 3, 4, 5, 6]),
            Err(DecodeError::Truncated {
                field: "mean_arterial_pressure",
                offset: 5,
                needed: 2,
                got: 1
            })
        );
        assert!(matches!(
            BloodPressureMeasurement::decode(&[]),
            Err(DecodeError::Truncated { field: "flags", .. })
        ));
    }

    #[test]
    fn reserved_bits_and_trailing_bytes_are_quirks() {
        let m = BloodPressureMeasurement::decode(&[
            0xE0 | FLAG_STATUS,
            0x78,
            0,
            0x50,
            0,
            0x5A,
            0,
            0x18 | 0x40,
            0x80,
            0xAA,
        ])
        .unwrap();
        assert_eq!(m.status.unwrap().pulse_rate_range, PulseRateRange::Reserved);
        assert_eq!(
            m.quirks,
            vec![
                Quirk::ReservedBitsSet {
                    field: "flags",
                    bits: 0xE0
                },
                Quirk::ReservedBitsSet {
                    field: "measurement_status",
                    bits: 0x8040
                },
                Quirk::ReservedValue {
                    field: "measurement_status.pulse_rate_range",
                    value: 3
                },
                Quirk::TrailingBytes { count: 1 },
            ]
        );
    }

    #[test]
    fn nordic_intermediate_cuff_pressure_sends_zero_not_nan() {
        // NordicSemiconductor/Android-BLE-Common-Library
        // IntermediateCuffPressureDataCallbackTest.onIntermediateCuffPressureReceived_minimal
        let icp = IntermediateCuffPressure::decode(&[0x00, 0xD7, 0xF0, 0, 0, 0, 0]).unwrap();
        assert_eq!(icp.cuff_pressure.to_string(), "21.5");
        assert_eq!(
            icp.quirks,
            vec![
                Quirk::UnusedFieldNotNan { field: "diastolic" },
                Quirk::UnusedFieldNotNan {
                    field: "mean_arterial_pressure"
                }
            ]
        );
        // We write NaN where the spec wants it.
        assert_eq!(
            icp.encode().unwrap(),
            [0x00, 0xD7, 0xF0, 0xFF, 0x07, 0xFF, 0x07]
        );
    }

    #[test]
    fn feature_bits() {
        let f = BloodPressureFeature::decode(&[0x21, 0x01]).unwrap();
        assert_eq!(
            f.supported.names().collect::<Vec<_>>(),
            [
                "body_movement_detection",
                "multiple_bonds",
                "user_facing_time"
            ]
        );
        let f = BloodPressureFeature::decode(&[0x00, 0x82]).unwrap();
        assert_eq!(
            f.quirks,
            vec![Quirk::ReservedBitsSet {
                field: "feature",
                bits: 0x8200
            }]
        );
        assert!(BloodPressureFeature::decode(&[0x01]).is_err());
    }

    pub(crate) fn any_status() -> impl Strategy<Value = BpMeasurementStatus> {
        (any::<u16>(), 0u16..3).prop_map(|(bits, range)| {
            BpMeasurementStatus::from_bits((bits & !0x18) | (range << 3)).0
        })
    }

    pub(crate) fn any_bpm() -> impl Strategy<Value = BloodPressureMeasurement> {
        (
            any::<bool>(),
            [any_sfloat(), any_sfloat(), any_sfloat()],
            prop::option::of(any_date_time()),
            prop::option::of(any_sfloat()),
            prop::option::of(any::<u8>()),
            prop::option::of(any_status()),
        )
            .prop_map(|(kpa, [s, d, m], timestamp, pr, user_id, status)| {
                BloodPressureMeasurement {
                    unit: if kpa {
                        PressureUnit::KPa
                    } else {
                        PressureUnit::MmHg
                    },
                    systolic: s,
                    diastolic: d,
                    mean_arterial_pressure: m,
                    timestamp,
                    pulse_rate_per_min: pr,
                    user_id,
                    status,
                    quirks: Vec::new(),
                }
            })
    }

    proptest! {
        #[test]
        fn measurement_round_trips(m in any_bpm()) {
            let bytes = m.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(BloodPressureMeasurement::decode(&bytes), Ok(m));
        }

        #[test]
        fn intermediate_cuff_pressure_round_trips(m in any_bpm()) {
            let icp = IntermediateCuffPressure {
                unit: m.unit,
                cuff_pressure: m.systolic,
                timestamp: m.timestamp,
                pulse_rate_per_min: m.pulse_rate_per_min,
                user_id: m.user_id,
                status: m.status,
                quirks: Vec::new(),
            };
            let bytes = icp.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(IntermediateCuffPressure::decode(&bytes), Ok(icp));
        }

        #[test]
        fn feature_round_trips(bits in any::<u16>()) {
            let f = BloodPressureFeature { supported: BpFeatureBits::from_bits_split(bits).0, quirks: Vec::new() };
            let bytes = f.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(BloodPressureFeature::decode(&bytes), Ok(f));
        }
    }
}
