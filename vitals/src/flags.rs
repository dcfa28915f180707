//! Status flags a device reports with a measurement, and absent-value reasons.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A condition the device reported about one measurement. The names follow the Blood Pressure
/// Measurement status field and the PLX measurement / device-and-sensor status fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Flag {
    /// The patient moved during the measurement (BPS, PLX).
    BodyMovement = 0,
    /// The cuff was loose (BPS).
    CuffLoose = 1,
    /// An irregular pulse was detected (BPS).
    IrregularPulse = 2,
    /// The pulse rate exceeded the device's upper limit (BPS pulse-range field).
    PulseRateHigh = 3,
    /// The pulse rate was below the device's lower limit (BPS pulse-range field).
    PulseRateLow = 4,
    /// The measurement position was improper (BPS).
    ImproperPosition = 5,
    /// Low perfusion at the sensor (PLX).
    LowPerfusion = 6,
    /// Signal questionable or erratic (PLX "questionable measurement", "erratic signal").
    SignalQuestionable = 7,
    /// Pulse questionable (PLX).
    PulseQuestionable = 8,
    /// Non-pulsatile signal (PLX).
    NonPulsatile = 9,
    /// Signal artefact / interference detected (PLX).
    Artifact = 10,
    /// The sensor was displaced, disconnected or unconnected (PLX).
    SensorDisplaced = 11,
    /// The sensor or device reported a malfunction (PLX).
    SensorMalfunction = 12,
    /// The value is an early estimate, not a final one (PLX).
    EarlyEstimate = 13,
    /// The device was still calibrating (PLX).
    CalibrationOngoing = 14,
    /// The measurement came from the device's memory (RACP transfer), not live.
    FromStorage = 15,
    /// The device's clock was not set when it timestamped this measurement.
    ClockNotSet = 16,
    /// The device's battery was low.
    LowBattery = 17,
}

impl Flag {
    /// Every flag.
    pub const ALL: [Flag; 18] = [
        Flag::BodyMovement,
        Flag::CuffLoose,
        Flag::IrregularPulse,
        Flag::PulseRateHigh,
        Flag::PulseRateLow,
        Flag::ImproperPosition,
        Flag::LowPerfusion,
        Flag::SignalQuestionable,
        Flag::PulseQuestionable,
        Flag::NonPulsatile,
        Flag::Artifact,
        Flag::SensorDisplaced,
        Flag::SensorMalfunction,
        Flag::EarlyEstimate,
        Flag::CalibrationOngoing,
        Flag::FromStorage,
        Flag::ClockNotSet,
        Flag::LowBattery,
    ];

    /// True when the flag casts doubt on the measured value itself, so the value should not
    /// raise an alert on its own (the rules engine asks the patient to repeat instead).
    pub const fn questions_the_value(self) -> bool {
        matches!(
            self,
            Flag::BodyMovement
                | Flag::CuffLoose
                | Flag::ImproperPosition
                | Flag::LowPerfusion
                | Flag::SignalQuestionable
                | Flag::PulseQuestionable
                | Flag::NonPulsatile
                | Flag::Artifact
                | Flag::SensorDisplaced
                | Flag::SensorMalfunction
                | Flag::EarlyEstimate
                | Flag::CalibrationOngoing
        )
    }

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::BodyMovement => "body_movement",
            Flag::CuffLoose => "cuff_loose",
            Flag::IrregularPulse => "irregular_pulse",
            Flag::PulseRateHigh => "pulse_rate_high",
            Flag::PulseRateLow => "pulse_rate_low",
            Flag::ImproperPosition => "improper_position",
            Flag::LowPerfusion => "low_perfusion",
            Flag::SignalQuestionable => "signal_questionable",
            Flag::PulseQuestionable => "pulse_questionable",
            Flag::NonPulsatile => "non_pulsatile",
            Flag::Artifact => "artifact",
            Flag::SensorDisplaced => "sensor_displaced",
            Flag::SensorMalfunction => "sensor_malfunction",
            Flag::EarlyEstimate => "early_estimate",
            Flag::CalibrationOngoing => "calibration_ongoing",
            Flag::FromStorage => "from_storage",
            Flag::ClockNotSet => "clock_not_set",
            Flag::LowBattery => "low_battery",
        }
    }
}

/// A set of [`Flag`]s in one word. Serialised as a sorted list of names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

impl Flags {
    /// No flags.
    pub const EMPTY: Flags = Flags(0);

    /// Adds a flag.
    pub fn insert(&mut self, flag: Flag) {
        self.0 |= 1 << flag as u8;
    }

    /// With a flag added.
    #[must_use]
    pub fn with(mut self, flag: Flag) -> Self {
        self.insert(flag);
        self
    }

    /// Whether the flag is set.
    pub const fn contains(self, flag: Flag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }

    /// No flag set.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The flags that set, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// True when any flag questions the measured value (see [`Flag::questions_the_value`]).
    pub fn questions_the_value(self) -> bool {
        self.iter().any(Flag::questions_the_value)
    }

    /// The raw bits (stable: a flag's bit is its discriminant), for compact storage.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// From raw bits; unknown bits are dropped.
    pub fn from_bits_truncate(bits: u32) -> Self {
        let known = Flag::ALL.iter().fold(0u32, |acc, f| acc | 1 << *f as u8);
        Flags(bits & known)
    }
}

impl FromIterator<Flag> for Flags {
    fn from_iter<I: IntoIterator<Item = Flag>>(iter: I) -> Self {
        let mut flags = Flags::EMPTY;
        for f in iter {
            flags.insert(f);
        }
        flags
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for flag in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
            first = false;
        }
        Ok(())
    }
}

impl Serialize for Flags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let list = Vec::<Flag>::deserialize(deserializer)?;
        if list.len() > Flag::ALL.len() {
            return Err(serde::de::Error::invalid_length(
                list.len(),
                &"each flag at most once",
            ));
        }
        Ok(list.into_iter().collect())
    }
}

/// Why a value the device was asked for is absent. IEEE-11073 special values become these;
/// they never become numbers. The FHIR mapping follows the HL7 PHD Implementation Guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsentReason {
    /// Not a Number: the device could not produce a value.
    Nan,
    /// Not at this Resolution: the value exceeds the precision the format can carry.
    Nres,
    /// Above the device's measurement range.
    PositiveInfinity,
    /// Below the device's measurement range.
    NegativeInfinity,
    /// A value reserved for future use by IEEE-11073.
    Reserved,
}

impl AbsentReason {
    /// The code from the FHIR `data-absent-reason` code system.
    pub const fn fhir_code(self) -> &'static str {
        match self {
            AbsentReason::Nan => "not-a-number",
            AbsentReason::Nres => "error",
            AbsentReason::PositiveInfinity => "positive-infinity",
            AbsentReason::NegativeInfinity => "negative-infinity",
            AbsentReason::Reserved => "error",
        }
    }

    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AbsentReason::Nan => "nan",
            AbsentReason::Nres => "nres",
            AbsentReason::PositiveInfinity => "positive_infinity",
            AbsentReason::NegativeInfinity => "negative_infinity",
            AbsentReason::Reserved => "reserved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_serialise_as_sorted_names_and_round_trip() {
        let flags: Flags = [Flag::LowPerfusion, Flag::BodyMovement]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&flags).expect("json");
        assert_eq!(json, r#"["body_movement","low_perfusion"]"#);
        assert_eq!(serde_json::from_str::<Flags>(&json).expect("parse"), flags);
        assert_eq!(Flags::from_bits_truncate(flags.bits()), flags);
        assert!(serde_json::from_str::<Flags>(r#"["on_fire"]"#).is_err());
    }

    #[test]
    fn quality_flags_question_the_value_but_informational_ones_do_not() {
        assert!(Flags::EMPTY.with(Flag::CuffLoose).questions_the_value());
        assert!(Flags::EMPTY.with(Flag::LowPerfusion).questions_the_value());
        assert!(!Flags::EMPTY.with(Flag::FromStorage).questions_the_value());
        assert!(
            !Flags::EMPTY
                .with(Flag::IrregularPulse)
                .questions_the_value()
        );
        assert!(!Flags::EMPTY.questions_the_value());
    }

    #[test]
    fn every_flag_has_a_distinct_bit_and_name() {
        let all: Flags = Flag::ALL.into_iter().collect();
        assert_eq!(all.iter().count(), Flag::ALL.len());
        for f in Flag::ALL {
            assert_eq!(
                serde_json::to_string(&f).expect("json"),
                format!("\"{}\"", f.as_str())
            );
        }
    }
}
