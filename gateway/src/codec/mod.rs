//! GATT characteristic codecs: bytes from Bluetooth LE medical devices to typed values, and
//! back.
//!
//! The gateway decodes with [`decode`]; simulators encode with [`encode`] (or each type's
//! `encode`) and so emit exactly the bytes a real device would. One module per service or
//! characteristic family, each citing the specification section it implements:
//!
//! | module                  | characteristics                                          |
//! |-------------------------|----------------------------------------------------------|
//! | [`ieee11073`]           | SFLOAT / FLOAT numbers used by the measurements          |
//! | [`blood_pressure`]      | 0x2A35 measurement, 0x2A36 intermediate cuff, 0x2A49     |
//! | [`pulse_oximeter`]      | 0x2A5E spot-check, 0x2A5F continuous, 0x2A60 features    |
//! | [`racp`]                | 0x2A52 Record Access Control Point                       |
//! | [`date_time`]           | 0x2A08 Date Time, 0x2A2B Current Time                    |
//! | [`device_information`]  | 0x2A29, 0x2A24, 0x2A25, 0x2A27, 0x2A26, 0x2A28, 0x2A23, 0x2A2A, 0x2A50 |
//! | [`battery`]             | 0x2A19 Battery Level                                     |
//! | [`blood_pressure_record`] | 0x2B36 Blood Pressure Record (stored measurements)     |
//! | [`ghs`]                 | Generic Health Sensor: 0x2B8B, 0x2BDD, 0x2BF3, 0x2BF4, 0x2BF1, its RACP |
//! | [`segment`]             | the segmentation header of 0x2B36 / 0x2B8B / 0x2BDD       |
//! | [`vitalograph`]         | Vitalograph Lung Monitor serial packets (a vendor format) |
//!
//! Rules shared by every decoder:
//!
//! - No input panics. Reads go through a bounds-checked cursor; a field the flags announce
//!   but the value lacks is [`DecodeError::Truncated`], naming the field.
//! - A special IEEE-11073 value (NaN, NRes, ±INF, reserved) never becomes a number.
//! - Devices bend rules. Where that is harmless the decoder goes on and records a
//!   [`Quirk`] in the value (reserved bits set, bytes after the last field); where it is not
//!   (an impossible date, a battery level of 150 %) it is a [`DecodeError`].
//! - Encoding writes what the specification says: flags follow from which optional fields
//!   are present, quirks are (almost always) not reproduced, and `decode(encode(v)) == v`
//!   for every value without quirks.

pub mod battery;
mod bits;
pub mod blood_pressure;
pub mod blood_pressure_record;
pub mod date_time;
pub mod device_information;
mod error;
pub mod ghs;
pub mod ieee11073;
pub mod pulse_oximeter;
pub mod racp;
mod reader;
pub mod segment;
pub mod vitalograph;

use serde::Serialize;

pub use error::{DecodeError, EncodeError, Quirk};
pub use ieee11073::{Float11073, SpecialValue};

use battery::BatteryLevel;
use blood_pressure::{BloodPressureFeature, BloodPressureMeasurement, IntermediateCuffPressure};
use blood_pressure_record::BloodPressureRecord;
use date_time::{CurrentTime, DateTimeCharacteristic};
use device_information::{DisString, PnpId, RegulatoryCertificationData, SystemId};
use ghs::{
    GhsControlPoint, HealthSensorFeatures, LiveHealthObservation, ObservationScheduleChanged,
    StoredHealthObservation,
};
use pulse_oximeter::{PlxContinuousMeasurement, PlxFeatures, PlxSpotCheckMeasurement};
use racp::RecordAccessControlPoint;

/// 16-bit UUIDs of the characteristics this module decodes.
pub mod uuid {
    /// Blood Pressure Measurement.
    pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
    /// Intermediate Cuff Pressure.
    pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
    /// Blood Pressure Feature.
    pub const BLOOD_PRESSURE_FEATURE: u16 = 0x2A49;
    /// PLX Spot-Check Measurement.
    pub const PLX_SPOT_CHECK_MEASUREMENT: u16 = 0x2A5E;
    /// PLX Continuous Measurement.
    pub const PLX_CONTINUOUS_MEASUREMENT: u16 = 0x2A5F;
    /// PLX Features.
    pub const PLX_FEATURES: u16 = 0x2A60;
    /// Record Access Control Point.
    pub const RECORD_ACCESS_CONTROL_POINT: u16 = 0x2A52;
    /// Date Time.
    pub const DATE_TIME: u16 = 0x2A08;
    /// Current Time.
    pub const CURRENT_TIME: u16 = 0x2A2B;
    /// Manufacturer Name String.
    pub const MANUFACTURER_NAME: u16 = 0x2A29;
    /// Model Number String.
    pub const MODEL_NUMBER: u16 = 0x2A24;
    /// Serial Number String.
    pub const SERIAL_NUMBER: u16 = 0x2A25;
    /// Hardware Revision String.
    pub const HARDWARE_REVISION: u16 = 0x2A27;
    /// Firmware Revision String.
    pub const FIRMWARE_REVISION: u16 = 0x2A26;
    /// Software Revision String.
    pub const SOFTWARE_REVISION: u16 = 0x2A28;
    /// System ID.
    pub const SYSTEM_ID: u16 = 0x2A23;
    /// IEEE 11073-20601 Regulatory Certification Data List.
    pub const REGULATORY_CERTIFICATION_DATA: u16 = 0x2A2A;
    /// PnP ID.
    pub const PNP_ID: u16 = 0x2A50;
    /// Battery Level.
    pub const BATTERY_LEVEL: u16 = 0x2A19;
    /// Blood Pressure Record.
    pub const BLOOD_PRESSURE_RECORD: u16 = 0x2B36;
    /// Live Health Observations (GHS).
    pub const LIVE_HEALTH_OBSERVATIONS: u16 = 0x2B8B;
    /// Stored Health Observations (GHS).
    pub const STORED_HEALTH_OBSERVATIONS: u16 = 0x2BDD;
    /// Health Sensor Features (GHS).
    pub const HEALTH_SENSOR_FEATURES: u16 = 0x2BF3;
    /// GHS Control Point.
    pub const GHS_CONTROL_POINT: u16 = 0x2BF4;
    /// Observation Schedule Changed (GHS).
    pub const OBSERVATION_SCHEDULE_CHANGED: u16 = 0x2BF1;
}

/// Every supported characteristic: UUID and the snake_case name [`Decoded`] uses for it.
pub const SUPPORTED: &[(u16, &str)] = &[
    (
        uuid::BLOOD_PRESSURE_MEASUREMENT,
        "blood_pressure_measurement",
    ),
    (
        uuid::INTERMEDIATE_CUFF_PRESSURE,
        "intermediate_cuff_pressure",
    ),
    (uuid::BLOOD_PRESSURE_FEATURE, "blood_pressure_feature"),
    (
        uuid::PLX_SPOT_CHECK_MEASUREMENT,
        "plx_spot_check_measurement",
    ),
    (
        uuid::PLX_CONTINUOUS_MEASUREMENT,
        "plx_continuous_measurement",
    ),
    (uuid::PLX_FEATURES, "plx_features"),
    (
        uuid::RECORD_ACCESS_CONTROL_POINT,
        "record_access_control_point",
    ),
    (uuid::DATE_TIME, "date_time"),
    (uuid::CURRENT_TIME, "current_time"),
    (uuid::MANUFACTURER_NAME, "manufacturer_name"),
    (uuid::MODEL_NUMBER, "model_number"),
    (uuid::SERIAL_NUMBER, "serial_number"),
    (uuid::HARDWARE_REVISION, "hardware_revision"),
    (uuid::FIRMWARE_REVISION, "firmware_revision"),
    (uuid::SOFTWARE_REVISION, "software_revision"),
    (uuid::SYSTEM_ID, "system_id"),
    (
        uuid::REGULATORY_CERTIFICATION_DATA,
        "regulatory_certification_data",
    ),
    (uuid::PNP_ID, "pnp_id"),
    (uuid::BATTERY_LEVEL, "battery_level"),
    (uuid::BLOOD_PRESSURE_RECORD, "blood_pressure_record"),
    (uuid::LIVE_HEALTH_OBSERVATIONS, "live_health_observations"),
    (
        uuid::STORED_HEALTH_OBSERVATIONS,
        "stored_health_observations",
    ),
    (uuid::HEALTH_SENSOR_FEATURES, "health_sensor_features"),
    (uuid::GHS_CONTROL_POINT, "ghs_control_point"),
    (
        uuid::OBSERVATION_SCHEDULE_CHANGED,
        "observation_schedule_changed",
    ),
];

/// The snake_case name of a supported characteristic.
pub fn characteristic_name(uuid16: u16) -> Option<&'static str> {
    SUPPORTED
        .iter()
        .find(|(u, _)| *u == uuid16)
        .map(|(_, name)| *name)
}

/// Parses a characteristic as given on a command line: `2A35`, `0x2a35`, or a name from
/// [`SUPPORTED`] such as `blood_pressure_measurement` (dashes allowed).
pub fn parse_characteristic(s: &str) -> Option<u16> {
    let s = s.trim();
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.len() == 4
        && let Ok(v) = u16::from_str_radix(hex, 16)
    {
        return Some(v);
    }
    let name = s.replace('-', "_").to_ascii_lowercase();
    SUPPORTED.iter().find(|(_, n)| *n == name).map(|(u, _)| *u)
}

/// A decoded characteristic value. Serializes as `{"<characteristic_name>": {...}}` with
/// snake_case fields, units in the field names or a `unit` field, special values as
/// `{"absent": "nan"}`, bit fields as lists of names and time stamps as ISO-like strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoded {
    /// 0x2A35.
    BloodPressureMeasurement(BloodPressureMeasurement),
    /// 0x2A36.
    IntermediateCuffPressure(IntermediateCuffPressure),
    /// 0x2A49.
    BloodPressureFeature(BloodPressureFeature),
    /// 0x2A5E.
    PlxSpotCheckMeasurement(PlxSpotCheckMeasurement),
    /// 0x2A5F.
    PlxContinuousMeasurement(PlxContinuousMeasurement),
    /// 0x2A60.
    PlxFeatures(PlxFeatures),
    /// 0x2A52.
    RecordAccessControlPoint(RecordAccessControlPoint),
    /// 0x2A08.
    DateTime(DateTimeCharacteristic),
    /// 0x2A2B.
    CurrentTime(CurrentTime),
    /// 0x2A29.
    ManufacturerName(DisString),
    /// 0x2A24.
    ModelNumber(DisString),
    /// 0x2A25.
    SerialNumber(DisString),
    /// 0x2A27.
    HardwareRevision(DisString),
    /// 0x2A26.
    FirmwareRevision(DisString),
    /// 0x2A28.
    SoftwareRevision(DisString),
    /// 0x2A23.
    SystemId(SystemId),
    /// 0x2A2A.
    RegulatoryCertificationData(RegulatoryCertificationData),
    /// 0x2A50.
    PnpId(PnpId),
    /// 0x2A19.
    BatteryLevel(BatteryLevel),
    /// 0x2B36 (one whole record).
    BloodPressureRecord(BloodPressureRecord),
    /// 0x2B8B (one whole observation).
    LiveHealthObservations(LiveHealthObservation),
    /// 0x2BDD (one whole stored observation).
    StoredHealthObservations(StoredHealthObservation),
    /// 0x2BF3.
    HealthSensorFeatures(HealthSensorFeatures),
    /// 0x2BF4.
    GhsControlPoint(GhsControlPoint),
    /// 0x2BF1.
    ObservationScheduleChanged(ObservationScheduleChanged),
}

/// Decodes the value of the characteristic with 16-bit UUID `uuid16`.
///
/// ```
/// use gateway::codec::{decode, Decoded};
/// // Flags 0 (mmHg), systolic 120, diastolic 80, MAP 93.
/// let bytes = [0x00, 0x78, 0x00, 0x50, 0x00, 0x5D, 0x00];
/// let Ok(Decoded::BloodPressureMeasurement(m)) = decode(0x2A35, &bytes) else { panic!() };
/// assert_eq!(m.systolic.to_string(), "120");
/// ```
pub fn decode(uuid16: u16, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    use uuid::*;
    Ok(match uuid16 {
        BLOOD_PRESSURE_MEASUREMENT => {
            Decoded::BloodPressureMeasurement(BloodPressureMeasurement::decode(bytes)?)
        }
        INTERMEDIATE_CUFF_PRESSURE => {
            Decoded::IntermediateCuffPressure(IntermediateCuffPressure::decode(bytes)?)
        }
        BLOOD_PRESSURE_FEATURE => {
            Decoded::BloodPressureFeature(BloodPressureFeature::decode(bytes)?)
        }
        PLX_SPOT_CHECK_MEASUREMENT => {
            Decoded::PlxSpotCheckMeasurement(PlxSpotCheckMeasurement::decode(bytes)?)
        }
        PLX_CONTINUOUS_MEASUREMENT => {
            Decoded::PlxContinuousMeasurement(PlxContinuousMeasurement::decode(bytes)?)
        }
        PLX_FEATURES => Decoded::PlxFeatures(PlxFeatures::decode(bytes)?),
        RECORD_ACCESS_CONTROL_POINT => {
            Decoded::RecordAccessControlPoint(RecordAccessControlPoint::decode(bytes)?)
        }
        DATE_TIME => Decoded::DateTime(DateTimeCharacteristic::decode(bytes)?),
        CURRENT_TIME => Decoded::CurrentTime(CurrentTime::decode(bytes)?),
        MANUFACTURER_NAME => Decoded::ManufacturerName(DisString::decode(bytes)?),
        MODEL_NUMBER => Decoded::ModelNumber(DisString::decode(bytes)?),
        SERIAL_NUMBER => Decoded::SerialNumber(DisString::decode(bytes)?),
        HARDWARE_REVISION => Decoded::HardwareRevision(DisString::decode(bytes)?),
        FIRMWARE_REVISION => Decoded::FirmwareRevision(DisString::decode(bytes)?),
        SOFTWARE_REVISION => Decoded::SoftwareRevision(DisString::decode(bytes)?),
        SYSTEM_ID => Decoded::SystemId(SystemId::decode(bytes)?),
        REGULATORY_CERTIFICATION_DATA => {
            Decoded::RegulatoryCertificationData(RegulatoryCertificationData::decode(bytes)?)
        }
        PNP_ID => Decoded::PnpId(PnpId::decode(bytes)?),
        BATTERY_LEVEL => Decoded::BatteryLevel(BatteryLevel::decode(bytes)?),
        BLOOD_PRESSURE_RECORD => Decoded::BloodPressureRecord(BloodPressureRecord::decode(bytes)?),
        LIVE_HEALTH_OBSERVATIONS => {
            Decoded::LiveHealthObservations(LiveHealthObservation::decode(bytes)?)
        }
        STORED_HEALTH_OBSERVATIONS => {
            Decoded::StoredHealthObservations(StoredHealthObservation::decode(bytes)?)
        }
        HEALTH_SENSOR_FEATURES => {
            Decoded::HealthSensorFeatures(HealthSensorFeatures::decode(bytes)?)
        }
        GHS_CONTROL_POINT => Decoded::GhsControlPoint(GhsControlPoint::decode(bytes)?),
        OBSERVATION_SCHEDULE_CHANGED => {
            Decoded::ObservationScheduleChanged(ObservationScheduleChanged::decode(bytes)?)
        }
        other => return Err(DecodeError::UnknownCharacteristic(other)),
    })
}

/// Encodes a value to the bytes its characteristic carries.
pub fn encode(value: &Decoded) -> Result<Vec<u8>, EncodeError> {
    match value {
        Decoded::BloodPressureMeasurement(v) => v.encode(),
        Decoded::IntermediateCuffPressure(v) => v.encode(),
        Decoded::BloodPressureFeature(v) => v.encode(),
        Decoded::PlxSpotCheckMeasurement(v) => v.encode(),
        Decoded::PlxContinuousMeasurement(v) => v.encode(),
        Decoded::PlxFeatures(v) => v.encode(),
        Decoded::RecordAccessControlPoint(v) => v.encode(),
        Decoded::DateTime(v) => v.encode(),
        Decoded::CurrentTime(v) => v.encode(),
        Decoded::ManufacturerName(v)
        | Decoded::ModelNumber(v)
        | Decoded::SerialNumber(v)
        | Decoded::HardwareRevision(v)
        | Decoded::FirmwareRevision(v)
        | Decoded::SoftwareRevision(v) => v.encode(),
        Decoded::SystemId(v) => v.encode(),
        Decoded::RegulatoryCertificationData(v) => v.encode(),
        Decoded::PnpId(v) => v.encode(),
        Decoded::BatteryLevel(v) => v.encode(),
        Decoded::BloodPressureRecord(v) => v.encode(),
        Decoded::LiveHealthObservations(v) => v.encode(),
        Decoded::StoredHealthObservations(v) => v.encode(),
        Decoded::HealthSensorFeatures(v) => v.encode(),
        Decoded::GhsControlPoint(v) => v.encode(),
        Decoded::ObservationScheduleChanged(v) => v.encode(),
    }
}

impl Decoded {
    /// The 16-bit UUID of the characteristic this value belongs to.
    pub fn uuid16(&self) -> u16 {
        use uuid::*;
        match self {
            Decoded::BloodPressureMeasurement(_) => BLOOD_PRESSURE_MEASUREMENT,
            Decoded::IntermediateCuffPressure(_) => INTERMEDIATE_CUFF_PRESSURE,
            Decoded::BloodPressureFeature(_) => BLOOD_PRESSURE_FEATURE,
            Decoded::PlxSpotCheckMeasurement(_) => PLX_SPOT_CHECK_MEASUREMENT,
            Decoded::PlxContinuousMeasurement(_) => PLX_CONTINUOUS_MEASUREMENT,
            Decoded::PlxFeatures(_) => PLX_FEATURES,
            Decoded::RecordAccessControlPoint(_) => RECORD_ACCESS_CONTROL_POINT,
            Decoded::DateTime(_) => DATE_TIME,
            Decoded::CurrentTime(_) => CURRENT_TIME,
            Decoded::ManufacturerName(_) => MANUFACTURER_NAME,
            Decoded::ModelNumber(_) => MODEL_NUMBER,
            Decoded::SerialNumber(_) => SERIAL_NUMBER,
            Decoded::HardwareRevision(_) => HARDWARE_REVISION,
            Decoded::FirmwareRevision(_) => FIRMWARE_REVISION,
            Decoded::SoftwareRevision(_) => SOFTWARE_REVISION,
            Decoded::SystemId(_) => SYSTEM_ID,
            Decoded::RegulatoryCertificationData(_) => REGULATORY_CERTIFICATION_DATA,
            Decoded::PnpId(_) => PNP_ID,
            Decoded::BatteryLevel(_) => BATTERY_LEVEL,
            Decoded::BloodPressureRecord(_) => BLOOD_PRESSURE_RECORD,
            Decoded::LiveHealthObservations(_) => LIVE_HEALTH_OBSERVATIONS,
            Decoded::StoredHealthObservations(_) => STORED_HEALTH_OBSERVATIONS,
            Decoded::HealthSensorFeatures(_) => HEALTH_SENSOR_FEATURES,
            Decoded::GhsControlPoint(_) => GHS_CONTROL_POINT,
            Decoded::ObservationScheduleChanged(_) => OBSERVATION_SCHEDULE_CHANGED,
        }
    }

    /// The rules the device bent while sending this value.
    pub fn quirks(&self) -> &[Quirk] {
        match self {
            Decoded::BloodPressureMeasurement(v) => &v.quirks,
            Decoded::IntermediateCuffPressure(v) => &v.quirks,
            Decoded::BloodPressureFeature(v) => &v.quirks,
            Decoded::PlxSpotCheckMeasurement(v) => &v.quirks,
            Decoded::PlxContinuousMeasurement(v) => &v.quirks,
            Decoded::PlxFeatures(v) => &v.quirks,
            Decoded::RecordAccessControlPoint(v) => &v.quirks,
            Decoded::DateTime(v) => &v.quirks,
            Decoded::CurrentTime(v) => &v.quirks,
            Decoded::ManufacturerName(v)
            | Decoded::ModelNumber(v)
            | Decoded::SerialNumber(v)
            | Decoded::HardwareRevision(v)
            | Decoded::FirmwareRevision(v)
            | Decoded::SoftwareRevision(v) => &v.quirks,
            Decoded::SystemId(v) => &v.quirks,
            Decoded::RegulatoryCertificationData(_) => &[],
            Decoded::PnpId(v) => &v.quirks,
            Decoded::BatteryLevel(v) => &v.quirks,
            Decoded::BloodPressureRecord(v) => v.quirks(),
            Decoded::LiveHealthObservations(v) => &v.observation.quirks,
            Decoded::StoredHealthObservations(v) => &v.stored.observation.quirks,
            Decoded::HealthSensorFeatures(v) => &v.quirks,
            Decoded::GhsControlPoint(_) | Decoded::ObservationScheduleChanged(_) => &[],
        }
    }

    /// The same value with its quirks dropped (what [`encode`] writes).
    pub fn without_quirks(mut self) -> Self {
        match &mut self {
            Decoded::BloodPressureMeasurement(v) => v.quirks.clear(),
            Decoded::IntermediateCuffPressure(v) => v.quirks.clear(),
            Decoded::BloodPressureFeature(v) => v.quirks.clear(),
            Decoded::PlxSpotCheckMeasurement(v) => v.quirks.clear(),
            Decoded::PlxContinuousMeasurement(v) => v.quirks.clear(),
            Decoded::PlxFeatures(v) => v.quirks.clear(),
            Decoded::RecordAccessControlPoint(v) => v.quirks.clear(),
            Decoded::DateTime(v) => v.quirks.clear(),
            Decoded::CurrentTime(v) => v.quirks.clear(),
            Decoded::ManufacturerName(v)
            | Decoded::ModelNumber(v)
            | Decoded::SerialNumber(v)
            | Decoded::HardwareRevision(v)
            | Decoded::FirmwareRevision(v)
            | Decoded::SoftwareRevision(v) => v.quirks.clear(),
            Decoded::SystemId(v) => v.quirks.clear(),
            Decoded::RegulatoryCertificationData(_) => {}
            Decoded::PnpId(v) => v.quirks.clear(),
            Decoded::BatteryLevel(v) => v.quirks.clear(),
            Decoded::BloodPressureRecord(v) => v.clear_quirks(),
            Decoded::LiveHealthObservations(v) => {
                v.observation = v.observation.clone().without_quirks();
            }
            Decoded::StoredHealthObservations(v) => {
                v.stored.observation = v.stored.observation.clone().without_quirks();
            }
            Decoded::HealthSensorFeatures(v) => v.quirks.clear(),
            Decoded::GhsControlPoint(_) | Decoded::ObservationScheduleChanged(_) => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_uuids_agree() {
        for (uuid16, name) in SUPPORTED {
            assert_eq!(characteristic_name(*uuid16), Some(*name));
            assert_eq!(parse_characteristic(name), Some(*uuid16));
            assert_eq!(
                parse_characteristic(&format!("0x{uuid16:04x}")),
                Some(*uuid16)
            );
            assert_eq!(
                parse_characteristic(&format!("{uuid16:04X}")),
                Some(*uuid16)
            );
        }
        assert_eq!(
            parse_characteristic("blood-pressure-measurement"),
            Some(0x2A35)
        );
        assert_eq!(parse_characteristic("nonsense"), None);
        assert_eq!(
            decode(0x1234, &[]),
            Err(DecodeError::UnknownCharacteristic(0x1234))
        );
    }

    #[test]
    fn every_variant_reports_its_uuid_and_name() {
        // The smallest valid value of each characteristic.
        let minimal: &[(u16, &[u8])] = &[
            (0x2A35, &[0, 0, 0, 0, 0, 0, 0]),
            (0x2A36, &[0, 0, 0, 0xFF, 0x07, 0xFF, 0x07]),
            (0x2A49, &[0, 0]),
            (0x2A5E, &[0, 0, 0, 0, 0]),
            (0x2A5F, &[0, 0, 0, 0, 0]),
            (0x2A60, &[0, 0]),
            (0x2A52, &[3, 0]),
            (0x2A08, &[0, 0, 0, 0, 0, 0, 0]),
            (0x2A2B, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (0x2A29, b""),
            (0x2A24, b""),
            (0x2A25, b""),
            (0x2A27, b""),
            (0x2A26, b""),
            (0x2A28, b""),
            (0x2A23, &[0; 8]),
            (0x2A2A, b""),
            (0x2A50, &[1, 0, 0, 0, 0, 0, 0]),
            (0x2A19, &[0]),
            (0x2B36, &[3, 0, 0, 0x35, 0x2A, 0, 0, 0, 0, 0, 0, 0]),
            (0x2B8B, &[3, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (0x2BDD, &[3, 0, 0, 0, 0, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (0x2BF3, &[0, 0]),
            (0x2BF4, &[1]),
            (0x2BF1, &[0; 12]),
        ];
        assert_eq!(minimal.len(), SUPPORTED.len());
        for (uuid16, bytes) in minimal {
            let d = decode(*uuid16, bytes).unwrap();
            assert_eq!(d.uuid16(), *uuid16);
            assert!(d.quirks().is_empty(), "{uuid16:#06x}: {:?}", d.quirks());
            assert_eq!(encode(&d).unwrap(), *bytes, "{uuid16:#06x}");
            let json = serde_json::to_value(&d).unwrap();
            let name = characteristic_name(*uuid16).unwrap();
            assert!(json.get(name).is_some(), "{json}");
        }
    }

    #[test]
    fn json_is_clean() {
        let d = decode(
            0x2A35,
            &[
                0x1E, 0x8A, 0x00, 0xFF, 0x07, 0x78, 0x00, 0xE8, 0x07, 0x04, 0x11, 0x14, 0x29, 0x3B,
                0x3C, 0x00, 0x01, 0x27, 0x00,
            ],
        )
        .unwrap();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"blood_pressure_measurement": {
                "unit": "mm[Hg]",
                "systolic": {"value": 138.0, "text": "138"},
                "diastolic": {"absent": "nan"},
                "mean_arterial_pressure": {"value": 120.0, "text": "120"},
                "timestamp": "2024-04-17T20:41:59",
                "pulse_rate_per_min": {"value": 60.0, "text": "60"},
                "user_id": 1,
                "status": {
                    "flags": ["body_movement_detected", "cuff_fit_loose", "irregular_pulse_detected", "improper_measurement_position"],
                    "pulse_rate_range": "within_range"
                }
            }})
        );
        let racp = serde_json::to_value(decode(0x2A52, &[3, 0]).unwrap()).unwrap();
        assert_eq!(
            racp,
            serde_json::json!({"record_access_control_point": {"abort_operation": null}})
        );
    }

    fn any_uuid() -> impl Strategy<Value = u16> {
        prop::sample::select(SUPPORTED.iter().map(|(u, _)| *u).collect::<Vec<_>>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic any decoder, and whatever decodes re-encodes to bytes
        /// that decode to the same value (less the quirks encoding does not reproduce).
        #[test]
        fn arbitrary_bytes_never_panic_and_decoded_values_re_encode(
            uuid16 in any_uuid(),
            bytes in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            if let Ok(d) = decode(uuid16, &bytes) {
                let _ = serde_json::to_string(&d);
                let again = encode(&d).map_err(|e| TestCaseError::fail(format!("{d:?}: {e}")))?;
                let back = decode(uuid16, &again).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back.without_quirks(), d.without_quirks());
            }
        }

        #[test]
        fn arbitrary_uuid_and_bytes_never_panic(uuid16 in any::<u16>(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(uuid16, &bytes);
        }
    }
}
