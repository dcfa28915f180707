//! Measurement kinds, their codes (LOINC, ISO/IEEE 11073-10101 MDC), units (UCUM) and
//! plausible physiological ranges, and unit conversion onto each kind's canonical unit.
//!
//! A *plausible* range is wider than a *normal* one: it bounds what a living patient measured
//! at home can show (an SpO2 of 62 % is alarming but possible; 140 % is a broken device or a
//! broken payload). Values outside it are rejected at ingest, never silently clamped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;

/// One measured quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Systolic blood pressure.
    Systolic,
    /// Diastolic blood pressure.
    Diastolic,
    /// Mean arterial pressure.
    MeanArterialPressure,
    /// Pulse (heart) rate, from a cuff or an oximeter.
    PulseRate,
    /// Peripheral oxygen saturation by pulse oximetry.
    Spo2,
    /// Pulse amplitude (perfusion) index reported by an oximeter.
    PulseAmplitudeIndex,
    /// Forced expiratory volume in one second.
    Fev1,
    /// Forced vital capacity.
    Fvc,
    /// FEV1 as a percentage of FVC.
    Fev1FvcRatio,
    /// Peak expiratory flow.
    Pef,
    /// Body temperature.
    BodyTemperature,
}

/// Static facts about a [`Kind`].
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    /// Human name for consoles and notifications.
    pub display: &'static str,
    /// LOINC code, where LOINC has one for what a home device measures.
    pub loinc: Option<&'static str>,
    /// LOINC display name.
    pub loinc_display: &'static str,
    /// ISO/IEEE 11073-10101 nomenclature code used by the HL7 PHD Implementation Guide.
    pub mdc: Option<u32>,
    /// The canonical unit every value of this kind is stored in.
    pub unit: Unit,
    /// Lowest plausible value in the canonical unit.
    pub min: f64,
    /// Highest plausible value in the canonical unit.
    pub max: f64,
    /// Resolution (base-10 exponent) a converted value is rounded to.
    pub resolution: i8,
}

impl Kind {
    /// Every kind, in canonical order.
    pub const ALL: [Kind; 11] = [
        Kind::Systolic,
        Kind::Diastolic,
        Kind::MeanArterialPressure,
        Kind::PulseRate,
        Kind::Spo2,
        Kind::PulseAmplitudeIndex,
        Kind::Fev1,
        Kind::Fvc,
        Kind::Fev1FvcRatio,
        Kind::Pef,
        Kind::BodyTemperature,
    ];

    /// Number of kinds; per-kind state can live in `[T; Kind::COUNT]` indexed by [`Kind::index`].
    pub const COUNT: usize = Self::ALL.len();

    /// Dense index in `0..Kind::COUNT`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Codes, unit and range.
    pub const fn info(self) -> KindInfo {
        INFO[self.index()]
    }

    /// The canonical unit.
    pub const fn unit(self) -> Unit {
        self.info().unit
    }

    /// Stable snake_case name used on the wire, in the database and in profiles.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Systolic => "systolic",
            Kind::Diastolic => "diastolic",
            Kind::MeanArterialPressure => "mean_arterial_pressure",
            Kind::PulseRate => "pulse_rate",
            Kind::Spo2 => "spo2",
            Kind::PulseAmplitudeIndex => "pulse_amplitude_index",
            Kind::Fev1 => "fev1",
            Kind::Fvc => "fvc",
            Kind::Fev1FvcRatio => "fev1_fvc_ratio",
            Kind::Pef => "pef",
            Kind::BodyTemperature => "body_temperature",
        }
    }

    /// Converts `value` in `unit` onto this kind's canonical unit. A value already in the
    /// canonical unit is returned unchanged (its precision kept); a converted value is rounded
    /// to the kind's resolution.
    pub fn to_canonical(self, value: Decimal, unit: Unit) -> Result<Decimal, UnitError> {
        let canonical = self.unit();
        if unit == canonical {
            return Ok(value);
        }
        let v = value.to_f64();
        let converted = match (unit, canonical) {
            (Unit::KPa, Unit::MmHg) => v * MMHG_PER_KPA,
            (Unit::Millilitre, Unit::Litre) => v / 1000.0,
            (Unit::LitrePerSecond, Unit::LitrePerMin) => v * 60.0,
            (Unit::Fahrenheit, Unit::Celsius) => (v - 32.0) * 5.0 / 9.0,
            // A ratio reported as a fraction (0.72) rather than a percentage (72 %).
            (Unit::One, Unit::Percent) if self == Kind::Fev1FvcRatio => v * 100.0,
            _ => return Err(UnitError::NotForKind { kind: self, unit }),
        };
        Decimal::from_f64_rounded(converted, self.info().resolution)
            .ok_or(UnitError::NotConvertible { kind: self, unit })
    }

    /// Checks a canonical-unit value against the plausible range.
    pub fn check_plausible(self, value: f64) -> Result<(), RangeError> {
        let info = self.info();
        if value.is_finite() && value >= info.min && value <= info.max {
            Ok(())
        } else {
            Err(RangeError {
                kind: self,
                value,
                min: info.min,
                max: info.max,
            })
        }
    }
}

const fn info(
    display: &'static str,
    loinc: Option<&'static str>,
    loinc_display: &'static str,
    mdc: Option<u32>,
    unit: Unit,
    (min, max): (f64, f64),
    resolution: i8,
) -> KindInfo {
    KindInfo {
        display,
        loinc,
        loinc_display,
        mdc,
        unit,
        min,
        max,
        resolution,
    }
}

/// Indexed by [`Kind::index`]; the order must follow [`Kind::ALL`] (a test checks it).
const INFO: [KindInfo; Kind::COUNT] = {
    use Unit::*;
    [
        info(
            "Systolic blood pressure",
            Some("8480-6"),
            "Systolic blood pressure",
            Some(150021),
            MmHg,
            (40.0, 300.0),
            0,
        ),
        info(
            "Diastolic blood pressure",
            Some("8462-4"),
            "Diastolic blood pressure",
            Some(150022),
            MmHg,
            (20.0, 200.0),
            0,
        ),
        info(
            "Mean arterial pressure",
            Some("8478-0"),
            "Mean blood pressure",
            Some(150023),
            MmHg,
            (30.0, 250.0),
            0,
        ),
        info(
            "Pulse rate",
            Some("8867-4"),
            "Heart rate",
            Some(149530),
            PerMin,
            (20.0, 300.0),
            0,
        ),
        info(
            "SpO2",
            Some("59408-5"),
            "Oxygen saturation in Arterial blood by Pulse oximetry",
            Some(150456),
            Percent,
            (50.0, 100.0),
            0,
        ),
        // LOINC has no code for an oximeter's pulse amplitude index; the MDC code carries it.
        info(
            "Pulse amplitude index",
            None,
            "Pulse amplitude index",
            Some(150448),
            Percent,
            (0.0, 100.0),
            -1,
        ),
        info("FEV1", Some("20150-9"), "FEV1", None, Litre, (0.1, 8.0), -2),
        info("FVC", Some("19868-9"), "FVC", None, Litre, (0.1, 10.0), -2),
        info(
            "FEV1/FVC",
            Some("19926-5"),
            "FEV1/FVC",
            None,
            Percent,
            (10.0, 100.0),
            0,
        ),
        info(
            "Peak expiratory flow",
            Some("19935-6"),
            "Maximum expiratory gas flow Respiratory system airway by Peak flow meter",
            Some(152584),
            LitrePerMin,
            (20.0, 1000.0),
            0,
        ),
        info(
            "Body temperature",
            Some("8310-5"),
            "Body temperature",
            Some(150364),
            Celsius,
            (25.0, 45.0),
            -1,
        ),
    ]
};

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "measurement kind",
                name: s.chars().take(64).collect(),
            })
    }
}

/// A name that is not one of the known ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`")]
pub struct UnknownName {
    /// What sort of name was expected.
    pub what: &'static str,
    /// The name given (at most 64 characters of it).
    pub name: String,
}

/// Millimetres of mercury per kilopascal (1 mmHg = 133.322 387 415 Pa).
pub const MMHG_PER_KPA: f64 = 1000.0 / 133.322_387_415;

/// Units devices report in, by their UCUM code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    /// Millimetres of mercury.
    #[serde(rename = "mm[Hg]")]
    MmHg,
    /// Kilopascal.
    #[serde(rename = "kPa")]
    KPa,
    /// Per minute (beats, breaths).
    #[serde(rename = "/min")]
    PerMin,
    /// Percent.
    #[serde(rename = "%")]
    Percent,
    /// Dimensionless ratio.
    #[serde(rename = "1")]
    One,
    /// Litre.
    #[serde(rename = "L")]
    Litre,
    /// Millilitre.
    #[serde(rename = "mL")]
    Millilitre,
    /// Litres per minute.
    #[serde(rename = "L/min")]
    LitrePerMin,
    /// Litres per second (spirometers often report PEF so).
    #[serde(rename = "L/s")]
    LitrePerSecond,
    /// Degrees Celsius.
    #[serde(rename = "Cel")]
    Celsius,
    /// Degrees Fahrenheit.
    #[serde(rename = "[degF]")]
    Fahrenheit,
}

impl Unit {
    /// Every unit.
    pub const ALL: [Unit; 11] = [
        Unit::MmHg,
        Unit::KPa,
        Unit::PerMin,
        Unit::Percent,
        Unit::One,
        Unit::Litre,
        Unit::Millilitre,
        Unit::LitrePerMin,
        Unit::LitrePerSecond,
        Unit::Celsius,
        Unit::Fahrenheit,
    ];

    /// The UCUM code.
    pub const fn ucum(self) -> &'static str {
        match self {
            Unit::MmHg => "mm[Hg]",
            Unit::KPa => "kPa",
            Unit::PerMin => "/min",
            Unit::Percent => "%",
            Unit::One => "1",
            Unit::Litre => "L",
            Unit::Millilitre => "mL",
            Unit::LitrePerMin => "L/min",
            Unit::LitrePerSecond => "L/s",
            Unit::Celsius => "Cel",
            Unit::Fahrenheit => "[degF]",
        }
    }

    /// The symbol people read (`mmHg`, `°C`).
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::MmHg => "mmHg",
            Unit::KPa => "kPa",
            Unit::PerMin => "/min",
            Unit::Percent => "%",
            Unit::One => "",
            Unit::Litre => "L",
            Unit::Millilitre => "mL",
            Unit::LitrePerMin => "L/min",
            Unit::LitrePerSecond => "L/s",
            Unit::Celsius => "°C",
            Unit::Fahrenheit => "°F",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ucum())
    }
}

impl FromStr for Unit {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Unit::ALL
            .into_iter()
            .find(|u| u.ucum() == s)
            .ok_or_else(|| UnknownName {
                what: "UCUM unit",
                name: s.chars().take(64).collect(),
            })
    }
}

/// A unit that does not measure a kind, or a conversion that overflowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// E.g. a blood pressure in litres.
    #[error("{unit} is not a unit of {kind} (expected {expected})", expected = kind.unit())]
    NotForKind {
        /// The kind measured.
        kind: Kind,
        /// The unit given.
        unit: Unit,
    },
    /// The value does not fit after conversion.
    #[error("{kind} in {unit} could not be converted to {expected}", expected = kind.unit())]
    NotConvertible {
        /// The kind measured.
        kind: Kind,
        /// The unit given.
        unit: Unit,
    },
}

/// A value outside the plausible physiological range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{kind} of {value} {unit} is outside the plausible range {min}..={max}", unit = kind.unit())]
pub struct RangeError {
    /// The kind measured.
    pub kind: Kind,
    /// The value, in the canonical unit.
    pub value: f64,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("valid decimal")
    }

    #[test]
    fn kpa_is_converted_to_mmhg() {
        // 16.0 kPa = 120.0 mmHg (to the nearest mmHg), 10.7 kPa = 80 mmHg.
        assert_eq!(
            Kind::Systolic.to_canonical(d("16.0"), Unit::KPa),
            Ok(d("120"))
        );
        assert_eq!(
            Kind::Diastolic.to_canonical(d("10.7"), Unit::KPa),
            Ok(d("80"))
        );
        assert_eq!(
            Kind::MeanArterialPressure.to_canonical(d("13.3"), Unit::KPa),
            Ok(d("100"))
        );
    }

    #[test]
    fn canonical_values_keep_their_precision() {
        assert_eq!(
            Kind::Fev1.to_canonical(d("2.10"), Unit::Litre),
            Ok(d("2.10"))
        );
        assert_eq!(Kind::Fev1.to_canonical(d("2.1"), Unit::Litre), Ok(d("2.1")));
    }

    #[test]
    fn other_conversions() {
        assert_eq!(
            Kind::Fev1.to_canonical(d("2150"), Unit::Millilitre),
            Ok(d("2.15"))
        );
        assert_eq!(
            Kind::Pef.to_canonical(d("6.5"), Unit::LitrePerSecond),
            Ok(d("390"))
        );
        assert_eq!(
            Kind::BodyTemperature.to_canonical(d("98.6"), Unit::Fahrenheit),
            Ok(d("37.0"))
        );
        assert_eq!(
            Kind::Fev1FvcRatio.to_canonical(d("0.68"), Unit::One),
            Ok(d("68"))
        );
    }

    #[test]
    fn wrong_units_are_refused_by_name() {
        let err = Kind::Systolic
            .to_canonical(d("1"), Unit::Litre)
            .expect_err("litres are not pressure");
        assert_eq!(
            err.to_string(),
            "L is not a unit of systolic (expected mm[Hg])"
        );
        assert!(Kind::Spo2.to_canonical(d("0.9"), Unit::One).is_err());
    }

    #[test]
    fn plausible_ranges_bound_both_ends() {
        assert!(Kind::Spo2.check_plausible(100.0).is_ok());
        assert!(Kind::Spo2.check_plausible(50.0).is_ok());
        assert!(Kind::Spo2.check_plausible(101.0).is_err());
        assert!(Kind::Spo2.check_plausible(f64::NAN).is_err());
        assert!(Kind::Systolic.check_plausible(39.0).is_err());
        assert!(Kind::PulseRate.check_plausible(301.0).is_err());
        for k in Kind::ALL {
            let i = k.info();
            assert!(i.min < i.max, "{k}");
            assert!(k.check_plausible(i.min).is_ok() && k.check_plausible(i.max).is_ok());
        }
    }

    /// An ISO/IEEE 11073-10101 code of partition 2 (SCADA, where the vital-signs terms live) as
    /// the PHD Implementation Guide writes it: `partition << 16 | term code`.
    const fn scada(term: u32) -> u32 {
        (2 << 16) | term
    }

    /// The table in one place, row by row, so a swapped row or a mistyped code fails here.
    #[test]
    fn every_kind_has_its_codes_unit_and_range() {
        #[rustfmt::skip]
        let table = [
            // kind, LOINC, MDC (term code), canonical unit, plausible range
            (Kind::Systolic, Some("8480-6"), Some(scada(18949)), Unit::MmHg, 40.0, 300.0), // MDC_PRESS_BLD_NONINV_SYS
            (Kind::Diastolic, Some("8462-4"), Some(scada(18950)), Unit::MmHg, 20.0, 200.0), // MDC_PRESS_BLD_NONINV_DIA
            (Kind::MeanArterialPressure, Some("8478-0"), Some(scada(18951)), Unit::MmHg, 30.0, 250.0), // MDC_PRESS_BLD_NONINV_MEAN
            (Kind::PulseRate, Some("8867-4"), Some(scada(18458)), Unit::PerMin, 20.0, 300.0), // MDC_PULS_OXIM_PULS_RATE
            (Kind::Spo2, Some("59408-5"), Some(scada(19384)), Unit::Percent, 50.0, 100.0), // MDC_PULS_OXIM_SAT_O2
            (Kind::PulseAmplitudeIndex, None, Some(scada(19376)), Unit::Percent, 0.0, 100.0), // MDC_PULS_OXIM_PERF_REL
            (Kind::Fev1, Some("20150-9"), None, Unit::Litre, 0.1, 8.0),
            (Kind::Fvc, Some("19868-9"), None, Unit::Litre, 0.1, 10.0),
            (Kind::Fev1FvcRatio, Some("19926-5"), None, Unit::Percent, 10.0, 100.0),
            (Kind::Pef, Some("19935-6"), Some(scada(21512)), Unit::LitrePerMin, 20.0, 1000.0), // MDC_FLOW_AWAY_EXP_FORCED_PEAK
            (Kind::BodyTemperature, Some("8310-5"), Some(scada(19292)), Unit::Celsius, 25.0, 45.0), // MDC_TEMP_BODY
        ];
        let kinds: Vec<Kind> = table.iter().map(|row| row.0).collect();
        assert_eq!(kinds, Kind::ALL, "one row per kind, in canonical order");
        for (kind, loinc, mdc, unit, min, max) in table {
            let i = kind.info();
            assert_eq!(
                (i.loinc, i.mdc, i.unit, i.min, i.max),
                (loinc, mdc, unit, min, max),
                "{kind}"
            );
        }
    }

    #[test]
    fn names_and_codes_round_trip() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).expect("json"),
                format!("\"{}\"", k.as_str())
            );
        }
        for u in Unit::ALL {
            assert_eq!(u.ucum().parse::<Unit>(), Ok(u));
            assert_eq!(
                serde_json::to_string(&u).expect("json"),
                format!("\"{}\"", u.ucum())
            );
        }
        assert_eq!(Kind::Spo2.info().loinc, Some("59408-5"));
        assert_eq!(Kind::PulseRate.info().loinc, Some("8867-4"));
        assert!("mmHg".parse::<Unit>().is_err(), "UCUM spells it mm[Hg]");
    }
}
