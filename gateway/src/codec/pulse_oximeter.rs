//! Pulse Oximeter Service (0x1822): PLX Spot-Check Measurement (0x2A5E), PLX Continuous
//! Measurement (0x2A5F) and PLX Features (0x2A60).
//!
//! Specifications: Pulse Oximeter Service 1.0.1 §3.1–§3.3; field layouts in the GATT
//! Specification Supplement v8 §3.170 (PLX Continuous Measurement), §3.171 (PLX Features),
//! §3.172 (PLX Spot-Check Measurement), with the shared Measurement Status (16 bits) and
//! Device and Sensor Status (24 bits) tables.
//!
//! Spot-check layout: flags `u8` (bit 0 time stamp, bit 1 measurement status, bit 2 device and
//! sensor status, bit 3 pulse amplitude index, bit 4 device clock is not set, bits 5–7
//! reserved), SpO2 (SFLOAT, %), PR (SFLOAT, /min), then the flagged fields in bit order: time
//! stamp (Date Time, 7), measurement status (2), device and sensor status (3), PAI (SFLOAT, %).
//!
//! Continuous layout: flags `u8` (bit 0 SpO2PR-Fast, bit 1 SpO2PR-Slow, bit 2 measurement
//! status, bit 3 device and sensor status, bit 4 PAI, bits 5–7 reserved), SpO2PR-Normal
//! (2×SFLOAT), then SpO2PR-Fast, SpO2PR-Slow, measurement status, device and sensor status,
//! PAI as flagged.
//!
//! Features layout: supported features `u16`, then measurement status support `u16` only if
//! feature bit 0 is set, then device and sensor status support `u24` only if bit 1 is set.
//!
//! Leniencies: reserved flag/status bits are ignored (quirk) and bytes after the last flagged
//! field are ignored (quirk). A flagged field that is missing is an error.

use serde::Serialize;

use super::bits::bitset;
use super::date_time::DateTime;
use super::error::{DecodeError, EncodeError, Quirk};
use super::ieee11073::Float11073;
use super::reader::{Reader, put_sfloat, put_u16, put_u24};

bitset! {
    /// PLX Measurement Status (bits 0–4 reserved).
    pub struct PlxMeasurementStatus(u16) {
        /// Bit 5: Measurement Ongoing.
        MEASUREMENT_ONGOING = 5 => "measurement_ongoing",
        /// Bit 6: Early Estimated Data.
        EARLY_ESTIMATED_DATA = 6 => "early_estimated_data",
        /// Bit 7: Validated Data.
        VALIDATED_DATA = 7 => "validated_data",
        /// Bit 8: Fully Qualified Data.
        FULLY_QUALIFIED_DATA = 8 => "fully_qualified_data",
        /// Bit 9: Data from Measurement Storage.
        DATA_FROM_MEASUREMENT_STORAGE = 9 => "data_from_measurement_storage",
        /// Bit 10: Data for Demonstration.
        DATA_FOR_DEMONSTRATION = 10 => "data_for_demonstration",
        /// Bit 11: Data for Testing.
        DATA_FOR_TESTING = 11 => "data_for_testing",
        /// Bit 12: Calibration Ongoing.
        CALIBRATION_ONGOING = 12 => "calibration_ongoing",
        /// Bit 13: Measurement Unavailable.
        MEASUREMENT_UNAVAILABLE = 13 => "measurement_unavailable",
        /// Bit 14: Questionable Measurement Detected.
        QUESTIONABLE_MEASUREMENT_DETECTED = 14 => "questionable_measurement_detected",
        /// Bit 15: Invalid Measurement Detected.
        INVALID_MEASUREMENT_DETECTED = 15 => "invalid_measurement_detected",
    }
}

bitset! {
    /// PLX Device and Sensor Status, 24 bits on the wire (bits 16–23 reserved).
    pub struct PlxDeviceAndSensorStatus(u32) {
        /// Bit 0: Extended Display Update Ongoing.
        EXTENDED_DISPLAY_UPDATE_ONGOING = 0 => "extended_display_update_ongoing",
        /// Bit 1: Equipment Malfunction Detected.
        EQUIPMENT_MALFUNCTION_DETECTED = 1 => "equipment_malfunction_detected",
        /// Bit 2: Signal Processing Irregularity Detected.
        SIGNAL_PROCESSING_IRREGULARITY_DETECTED = 2 => "signal_processing_irregularity_detected",
        /// Bit 3: Inadequate Signal Detected.
        INADEQUATE_SIGNAL_DETECTED = 3 => "inadequate_signal_detected",
        /// Bit 4: Poor Signal Detected.
        POOR_SIGNAL_DETECTED = 4 => "poor_signal_detected",
        /// Bit 5: Low Perfusion Detected.
        LOW_PERFUSION_DETECTED = 5 => "low_perfusion_detected",
        /// Bit 6: Erratic Signal Detected.
        ERRATIC_SIGNAL_DETECTED = 6 => "erratic_signal_detected",
        /// Bit 7: Nonpulsatile Signal Detected.
        NONPULSATILE_SIGNAL_DETECTED = 7 => "nonpulsatile_signal_detected",
        /// Bit 8: Questionable Pulse Detected.
        QUESTIONABLE_PULSE_DETECTED = 8 => "questionable_pulse_detected",
        /// Bit 9: Signal Analysis Ongoing.
        SIGNAL_ANALYSIS_ONGOING = 9 => "signal_analysis_ongoing",
        /// Bit 10: Sensor Interference Detected.
        SENSOR_INTERFERENCE_DETECTED = 10 => "sensor_interference_detected",
        /// Bit 11: Sensor Unconnected to User.
        SENSOR_UNCONNECTED_TO_USER = 11 => "sensor_unconnected_to_user",
        /// Bit 12: Unknown Sensor Connected.
        UNKNOWN_SENSOR_CONNECTED = 12 => "unknown_sensor_connected",
        /// Bit 13: Sensor Displaced.
        SENSOR_DISPLACED = 13 => "sensor_displaced",
        /// Bit 14: Sensor Malfunctioning.
        SENSOR_MALFUNCTIONING = 14 => "sensor_malfunctioning",
        /// Bit 15: Sensor Disconnected.
        SENSOR_DISCONNECTED = 15 => "sensor_disconnected",
    }
}

bitset! {
    /// PLX Supported Features (bits 8–15 reserved).
    pub struct PlxSupportedFeatures(u16) {
        /// Bit 0: Measurement Status support is present.
        MEASUREMENT_STATUS_SUPPORT = 0 => "measurement_status_support",
        /// Bit 1: Device and Sensor Status support is present.
        DEVICE_AND_SENSOR_STATUS_SUPPORT = 1 => "device_and_sensor_status_support",
        /// Bit 2: Measurement Storage for Spot-check measurements is supported.
        SPOT_CHECK_MEASUREMENT_STORAGE = 2 => "spot_check_measurement_storage",
        /// Bit 3: Timestamp for Spot-check measurements is supported.
        SPOT_CHECK_TIMESTAMP = 3 => "spot_check_timestamp",
        /// Bit 4: SpO2PR-Fast metric is supported.
        SPO2PR_FAST = 4 => "spo2pr_fast",
        /// Bit 5: SpO2PR-Slow metric is supported.
        SPO2PR_SLOW = 5 => "spo2pr_slow",
        /// Bit 6: Pulse Amplitude Index field is supported.
        PULSE_AMPLITUDE_INDEX = 6 => "pulse_amplitude_index",
        /// Bit 7: Multiple Bonds supported.
        MULTIPLE_BONDS = 7 => "multiple_bonds",
    }
}

/// One SpO2 and pulse rate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SpO2Pr {
    /// Oxygen saturation in percent.
    pub spo2_percent: Float11073,
    /// Pulse rate in beats per minute.
    pub pulse_rate_per_min: Float11073,
}

impl SpO2Pr {
    fn read(r: &mut Reader<'_>, names: [&'static str; 2]) -> Result<Self, DecodeError> {
        let [spo2, pr] = names;
        Ok(SpO2Pr {
            spo2_percent: r.sfloat(spo2)?,
            pulse_rate_per_min: r.sfloat(pr)?,
        })
    }

    fn write(&self, out: &mut Vec<u8>, names: [&'static str; 2]) -> Result<(), EncodeError> {
        let [spo2, pr] = names;
        put_sfloat(out, spo2, &self.spo2_percent)?;
        put_sfloat(out, pr, &self.pulse_rate_per_min)
    }
}

fn reserved_flags(flags: u8, quirks: &mut Vec<Quirk>) {
    if flags & 0xE0 != 0 {
        quirks.push(Quirk::ReservedBitsSet {
            field: "flags",
            bits: (flags & 0xE0).into(),
        });
    }
}

fn read_measurement_status(
    r: &mut Reader<'_>,
    field: &'static str,
    quirks: &mut Vec<Quirk>,
) -> Result<PlxMeasurementStatus, DecodeError> {
    let (status, reserved) = PlxMeasurementStatus::from_bits_split(r.u16(field)?);
    if reserved != 0 {
        quirks.push(Quirk::ReservedBitsSet {
            field,
            bits: reserved.into(),
        });
    }
    Ok(status)
}

fn read_device_status(
    r: &mut Reader<'_>,
    field: &'static str,
    quirks: &mut Vec<Quirk>,
) -> Result<PlxDeviceAndSensorStatus, DecodeError> {
    let (status, reserved) = PlxDeviceAndSensorStatus::from_bits_split(r.u24(field)?);
    if reserved != 0 {
        quirks.push(Quirk::ReservedBitsSet {
            field,
            bits: reserved,
        });
    }
    Ok(status)
}

fn optional<T>(
    present: bool,
    read: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    if present { read().map(Some) } else { Ok(None) }
}

/// PLX Spot-Check Measurement (0x2A5E).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlxSpotCheckMeasurement {
    /// Oxygen saturation in percent.
    pub spo2_percent: Float11073,
    /// Pulse rate in beats per minute.
    pub pulse_rate_per_min: Float11073,
    /// Device time stamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime>,
    /// Measurement status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Device and sensor status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status: Option<PlxDeviceAndSensorStatus>,
    /// Pulse amplitude index in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_amplitude_index_percent: Option<Float11073>,
    /// Flag bit 4: the device clock is not set, so the time stamp is not wall-clock time.
    pub device_clock_not_set: bool,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl PlxSpotCheckMeasurement {
    /// Decodes a PLX Spot-Check Measurement value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let flags = r.u8("flags")?;
        reserved_flags(flags, &mut quirks);
        let pair = SpO2Pr::read(&mut r, ["spo2", "pulse_rate"])?;
        let timestamp = optional(flags & 0x01 != 0, || DateTime::read(&mut r, "timestamp"))?;
        let measurement_status = optional(flags & 0x02 != 0, || {
            read_measurement_status(&mut r, "measurement_status", &mut quirks)
        })?;
        let device_and_sensor_status = optional(flags & 0x04 != 0, || {
            read_device_status(&mut r, "device_and_sensor_status", &mut quirks)
        })?;
        let pulse_amplitude_index_percent =
            optional(flags & 0x08 != 0, || r.sfloat("pulse_amplitude_index"))?;
        r.finish(&mut quirks);
        Ok(PlxSpotCheckMeasurement {
            spo2_percent: pair.spo2_percent,
            pulse_rate_per_min: pair.pulse_rate_per_min,
            timestamp,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index_percent,
            device_clock_not_set: flags & 0x10 != 0,
            quirks,
        })
    }

    /// Encodes the wire bytes; flags follow from which optional fields are present.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let flags = u8::from(self.timestamp.is_some())
            | u8::from(self.measurement_status.is_some()) << 1
            | u8::from(self.device_and_sensor_status.is_some()) << 2
            | u8::from(self.pulse_amplitude_index_percent.is_some()) << 3
            | u8::from(self.device_clock_not_set) << 4;
        let mut out = Vec::with_capacity(19);
        out.push(flags);
        SpO2Pr {
            spo2_percent: self.spo2_percent,
            pulse_rate_per_min: self.pulse_rate_per_min,
        }
        .write(&mut out, ["spo2", "pulse_rate"])?;
        if let Some(ts) = &self.timestamp {
            ts.write(&mut out)?;
        }
        if let Some(s) = self.measurement_status {
            put_u16(&mut out, s.bits());
        }
        if let Some(s) = self.device_and_sensor_status {
            put_u24(&mut out, s.bits());
        }
        if let Some(pai) = &self.pulse_amplitude_index_percent {
            put_sfloat(&mut out, "pulse_amplitude_index", pai)?;
        }
        Ok(out)
    }
}

/// PLX Continuous Measurement (0x2A5F).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlxContinuousMeasurement {
    /// SpO2PR-Normal.
    pub normal: SpO2Pr,
    /// SpO2PR-Fast (shorter averaging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast: Option<SpO2Pr>,
    /// SpO2PR-Slow (longer averaging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<SpO2Pr>,
    /// Measurement status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Device and sensor status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status: Option<PlxDeviceAndSensorStatus>,
    /// Pulse amplitude index in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_amplitude_index_percent: Option<Float11073>,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl PlxContinuousMeasurement {
    /// Decodes a PLX Continuous Measurement value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let flags = r.u8("flags")?;
        reserved_flags(flags, &mut quirks);
        let normal = SpO2Pr::read(&mut r, ["spo2_normal", "pulse_rate_normal"])?;
        let fast = optional(flags & 0x01 != 0, || {
            SpO2Pr::read(&mut r, ["spo2_fast", "pulse_rate_fast"])
        })?;
        let slow = optional(flags & 0x02 != 0, || {
            SpO2Pr::read(&mut r, ["spo2_slow", "pulse_rate_slow"])
        })?;
        let measurement_status = optional(flags & 0x04 != 0, || {
            read_measurement_status(&mut r, "measurement_status", &mut quirks)
        })?;
        let device_and_sensor_status = optional(flags & 0x08 != 0, || {
            read_device_status(&mut r, "device_and_sensor_status", &mut quirks)
        })?;
        let pulse_amplitude_index_percent =
            optional(flags & 0x10 != 0, || r.sfloat("pulse_amplitude_index"))?;
        r.finish(&mut quirks);
        Ok(PlxContinuousMeasurement {
            normal,
            fast,
            slow,
            measurement_status,
            device_and_sensor_status,
            pulse_amplitude_index_percent,
            quirks,
        })
    }

    /// Encodes the wire bytes; flags follow from which optional fields are present.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let flags = u8::from(self.fast.is_some())
            | u8::from(self.slow.is_some()) << 1
            | u8::from(self.measurement_status.is_some()) << 2
            | u8::from(self.device_and_sensor_status.is_some()) << 3
            | u8::from(self.pulse_amplitude_index_percent.is_some()) << 4;
        let mut out = Vec::with_capacity(20);
        out.push(flags);
        self.normal
            .write(&mut out, ["spo2_normal", "pulse_rate_normal"])?;
        if let Some(fast) = &self.fast {
            fast.write(&mut out, ["spo2_fast", "pulse_rate_fast"])?;
        }
        if let Some(slow) = &self.slow {
            slow.write(&mut out, ["spo2_slow", "pulse_rate_slow"])?;
        }
        if let Some(s) = self.measurement_status {
            put_u16(&mut out, s.bits());
        }
        if let Some(s) = self.device_and_sensor_status {
            put_u24(&mut out, s.bits());
        }
        if let Some(pai) = &self.pulse_amplitude_index_percent {
            put_sfloat(&mut out, "pulse_amplitude_index", pai)?;
        }
        Ok(out)
    }
}

/// PLX Features (0x2A60).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlxFeatures {
    /// Supported features.
    pub supported: PlxSupportedFeatures,
    /// Which measurement status bits the device can set; present exactly when `supported`
    /// has `MEASUREMENT_STATUS_SUPPORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_status_support: Option<PlxMeasurementStatus>,
    /// Which device and sensor status bits the device can set; present exactly when
    /// `supported` has `DEVICE_AND_SENSOR_STATUS_SUPPORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_and_sensor_status_support: Option<PlxDeviceAndSensorStatus>,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl PlxFeatures {
    /// Decodes a PLX Features value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let (supported, reserved) =
            PlxSupportedFeatures::from_bits_split(r.u16("supported_features")?);
        if reserved != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "supported_features",
                bits: reserved.into(),
            });
        }
        let measurement_status_support = optional(
            supported.contains(PlxSupportedFeatures::MEASUREMENT_STATUS_SUPPORT),
            || read_measurement_status(&mut r, "measurement_status_support", &mut quirks),
        )?;
        let device_and_sensor_status_support = optional(
            supported.contains(PlxSupportedFeatures::DEVICE_AND_SENSOR_STATUS_SUPPORT),
            || read_device_status(&mut r, "device_and_sensor_status_support", &mut quirks),
        )?;
        r.finish(&mut quirks);
        Ok(PlxFeatures {
            supported,
            measurement_status_support,
            device_and_sensor_status_support,
            quirks,
        })
    }

    /// Encodes the wire bytes. The support fields must be present exactly when their
    /// feature bits are set.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let has_ms = self
            .supported
            .contains(PlxSupportedFeatures::MEASUREMENT_STATUS_SUPPORT);
        let has_ds = self
            .supported
            .contains(PlxSupportedFeatures::DEVICE_AND_SENSOR_STATUS_SUPPORT);
        if has_ms != self.measurement_status_support.is_some() {
            return Err(EncodeError::InvalidValue {
                field: "plx_features.measurement_status_support",
                value: i64::from(has_ms),
                reason: "must be present exactly when feature bit 0 is set",
            });
        }
        if has_ds != self.device_and_sensor_status_support.is_some() {
            return Err(EncodeError::InvalidValue {
                field: "plx_features.device_and_sensor_status_support",
                value: i64::from(has_ds),
                reason: "must be present exactly when feature bit 1 is set",
            });
        }
        let mut out = Vec::with_capacity(7);
        put_u16(&mut out, self.supported.bits());
        if let Some(s) = self.measurement_status_support {
            put_u16(&mut out, s.bits());
        }
        if let Some(s) = self.device_and_sensor_status_support {
            put_u24(&mut out, s.bits());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::date_time::tests::any_date_time;
    use crate::codec::ieee11073::tests_support::any_sfloat;
    use proptest::prelude::*;

    // Vectors from StanfordSpezi/SpeziBluetooth Tests/SpeziBluetoothServicesTests/PLXTests.swift.

    #[test]
    fn spezi_spot_check() {
        let bytes = [
            15, 172, 243, 190, 245, 232, 7, 11, 29, 23, 8, 57, 32, 64, 34, 0, 0, 102, 227,
        ];
        let m = PlxSpotCheckMeasurement::decode(&bytes).unwrap();
        assert_eq!(m.spo2_percent.to_string(), "94.0");
        assert_eq!(m.pulse_rate_per_min.to_string(), "147.0");
        assert_eq!(m.timestamp, Some(DateTime::new(2024, 11, 29, 23, 8, 57)));
        assert_eq!(
            m.measurement_status,
            Some(
                PlxMeasurementStatus::MEASUREMENT_ONGOING
                    | PlxMeasurementStatus::QUESTIONABLE_MEASUREMENT_DETECTED
            )
        );
        assert_eq!(
            m.device_and_sensor_status,
            Some(
                PlxDeviceAndSensorStatus::EQUIPMENT_MALFUNCTION_DETECTED
                    | PlxDeviceAndSensorStatus::LOW_PERFUSION_DETECTED
            )
        );
        assert_eq!(
            m.pulse_amplitude_index_percent
                .map(|p| p.to_string())
                .as_deref(),
            Some("8.70")
        );
        assert!(!m.device_clock_not_set);
        assert_eq!(m.encode().unwrap(), bytes);
    }

    #[test]
    fn spezi_continuous_full() {
        let bytes = [
            31, 222, 243, 202, 243, 202, 243, 90, 245, 212, 243, 178, 242, 32, 1, 0, 0, 0, 122, 227,
        ];
        let m = PlxContinuousMeasurement::decode(&bytes).unwrap();
        assert_eq!(m.normal.spo2_percent.to_f64(), Some(99.0));
        assert_eq!(m.normal.pulse_rate_per_min.to_f64(), Some(97.0));
        assert_eq!(
            m.fast.map(|f| f.pulse_rate_per_min.to_f64()),
            Some(Some(137.0))
        );
        assert_eq!(
            m.slow.map(|f| f.pulse_rate_per_min.to_f64()),
            Some(Some(69.0))
        );
        assert_eq!(
            m.measurement_status,
            Some(
                PlxMeasurementStatus::MEASUREMENT_ONGOING
                    | PlxMeasurementStatus::FULLY_QUALIFIED_DATA
            )
        );
        assert_eq!(
            m.device_and_sensor_status,
            Some(PlxDeviceAndSensorStatus::empty())
        );
        assert_eq!(m.encode().unwrap(), bytes);
    }

    #[test]
    fn spezi_features() {
        let bytes = [163, 0, 64, 16, 128, 1, 0];
        let f = PlxFeatures::decode(&bytes).unwrap();
        assert_eq!(
            f.supported.names().collect::<Vec<_>>(),
            [
                "measurement_status_support",
                "device_and_sensor_status_support",
                "spo2pr_slow",
                "multiple_bonds"
            ]
        );
        assert_eq!(
            f.measurement_status_support,
            Some(
                PlxMeasurementStatus::EARLY_ESTIMATED_DATA
                    | PlxMeasurementStatus::CALIBRATION_ONGOING
            )
        );
        assert_eq!(
            f.device_and_sensor_status_support,
            Some(
                PlxDeviceAndSensorStatus::NONPULSATILE_SIGNAL_DETECTED
                    | PlxDeviceAndSensorStatus::QUESTIONABLE_PULSE_DETECTED
            )
        );
        assert_eq!(f.encode().unwrap(), bytes);
    }

    #[test]
    fn features_without_support_fields_are_two_bytes() {
        let f = PlxFeatures::decode(&[0x0C, 0x00]).unwrap();
        assert_eq!(f.measurement_status_support, None);
        assert!(matches!(
            PlxFeatures::decode(&[0x01, 0x00, 0x20]),
            Err(DecodeError::Truncated {
                field: "measurement_status_support",
                ..
            })
        ));
    }

    #[test]
    fn reserved_status_bits_are_quirks() {
        // Own: spot-check with measurement status bit 0 (reserved) and device status bit 16.
        let m =
            PlxSpotCheckMeasurement::decode(&[0x06, 0x62, 0, 0x48, 0, 0x21, 0, 0, 0, 1]).unwrap();
        assert_eq!(
            m.measurement_status,
            Some(PlxMeasurementStatus::MEASUREMENT_ONGOING)
        );
        assert_eq!(
            m.quirks,
            vec![
                Quirk::ReservedBitsSet {
                    field: "measurement_status",
                    bits: 1
                },
                Quirk::ReservedBitsSet {
                    field: "device_and_sensor_status",
                    bits: 0x1_0000
                },
            ]
        );
    }

    fn any_ms() -> impl Strategy<Value = PlxMeasurementStatus> {
        any::<u16>().prop_map(|b| PlxMeasurementStatus::from_bits_split(b).0)
    }

    fn any_ds() -> impl Strategy<Value = PlxDeviceAndSensorStatus> {
        any::<u32>().prop_map(|b| PlxDeviceAndSensorStatus::from_bits_split(b).0)
    }

    fn any_pair() -> impl Strategy<Value = SpO2Pr> {
        (any_sfloat(), any_sfloat()).prop_map(|(s, p)| SpO2Pr {
            spo2_percent: s,
            pulse_rate_per_min: p,
        })
    }

    proptest! {
        #[test]
        fn spot_check_round_trips(
            pair in any_pair(),
            timestamp in prop::option::of(any_date_time()),
            ms in prop::option::of(any_ms()),
            ds in prop::option::of(any_ds()),
            pai in prop::option::of(any_sfloat()),
            clock in any::<bool>(),
        ) {
            let m = PlxSpotCheckMeasurement {
                spo2_percent: pair.spo2_percent,
                pulse_rate_per_min: pair.pulse_rate_per_min,
                timestamp,
                measurement_status: ms,
                device_and_sensor_status: ds,
                pulse_amplitude_index_percent: pai,
                device_clock_not_set: clock,
                quirks: Vec::new(),
            };
            let bytes = m.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(PlxSpotCheckMeasurement::decode(&bytes), Ok(m));
        }

        #[test]
        fn continuous_round_trips(
            normal in any_pair(),
            fast in prop::option::of(any_pair()),
            slow in prop::option::of(any_pair()),
            ms in prop::option::of(any_ms()),
            ds in prop::option::of(any_ds()),
            pai in prop::option::of(any_sfloat()),
        ) {
            let m = PlxContinuousMeasurement {
                normal, fast, slow,
                measurement_status: ms,
                device_and_sensor_status: ds,
                pulse_amplitude_index_percent: pai,
                quirks: Vec::new(),
            };
            let bytes = m.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(PlxContinuousMeasurement::decode(&bytes), Ok(m));
        }

        #[test]
        fn features_round_trip(bits in any::<u16>(), ms in any_ms(), ds in any_ds()) {
            let supported = PlxSupportedFeatures::from_bits_split(bits).0;
            let f = PlxFeatures {
                supported,
                measurement_status_support: supported
                    .contains(PlxSupportedFeatures::MEASUREMENT_STATUS_SUPPORT)
                    .then_some(ms),
                device_and_sensor_status_support: supported
                    .contains(PlxSupportedFeatures::DEVICE_AND_SENSOR_STATUS_SUPPORT)
                    .then_some(ds),
                quirks: Vec::new(),
            };
            let bytes = f.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(PlxFeatures::decode(&bytes), Ok(f));
        }
    }
}
