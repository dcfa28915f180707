//! IEEE 11073-20601 `SFLOAT` (16-bit) and `FLOAT` (32-bit) medical numbers.
//!
//! Specification: IEEE Std 11073-20601-2019, Annex F.8 ("FLOAT-Type" and "SFLOAT-Type"), as
//! used by the Bluetooth SIG GATT Specification Supplement §2.2 ("medfloat16"/"medfloat32")
//! and the Personal Health Devices Transcoding White Paper.
//!
//! A number is `mantissa × 10^exponent`, both two's complement:
//!
//! | type   | bits | exponent        | mantissa                 |
//! |--------|------|-----------------|--------------------------|
//! | SFLOAT | 16   | high 4 (−8..=7) | low 12 (−2048..=2047)    |
//! | FLOAT  | 32   | high 8          | low 24 (−2^23..=2^23−1)  |
//!
//! With exponent 0, five mantissas are special values, never numbers:
//!
//! | meaning   | SFLOAT   | FLOAT        |
//! |-----------|----------|--------------|
//! | NaN       | `0x07FF` | `0x007FFFFF` |
//! | NRes      | `0x0800` | `0x00800000` |
//! | +INFINITY | `0x07FE` | `0x007FFFFE` |
//! | −INFINITY | `0x0802` | `0x00800002` |
//! | reserved  | `0x0801` | `0x00800001` |
//!
//! Precision is part of the value: a device that sends `2.00` (mantissa 200, exponent −2)
//! said something different from one that sends `2` (mantissa 2, exponent 0), so
//! [`Float11073`] keeps mantissa and exponent and compares them structurally; use
//! [`Float11073::to_f64`] for arithmetic. Every bit pattern decodes, and every decoded
//! pattern encodes back to the same bits.

use core::fmt;

use serde::Serialize;

/// A special value: the device sent a marker instead of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialValue {
    /// Not a Number: no valid value (e.g. the measurement failed).
    Nan,
    /// Not at this Resolution: the value cannot be represented with the available range.
    Nres,
    /// Positive infinity (above the measurable range).
    PositiveInfinity,
    /// Negative infinity (below the measurable range).
    NegativeInfinity,
    /// The pattern reserved for future use by 11073-20601.
    Reserved,
}

impl SpecialValue {
    const ALL: [SpecialValue; 5] = [
        SpecialValue::Nan,
        SpecialValue::Nres,
        SpecialValue::PositiveInfinity,
        SpecialValue::NegativeInfinity,
        SpecialValue::Reserved,
    ];

    /// The SFLOAT mantissa (with exponent 0) that carries this value.
    const fn sfloat_mantissa(self) -> i32 {
        match self {
            SpecialValue::Nan => 0x07FF,
            SpecialValue::Nres => -0x0800,
            SpecialValue::PositiveInfinity => 0x07FE,
            SpecialValue::NegativeInfinity => -0x07FE,
            SpecialValue::Reserved => -0x07FF,
        }
    }

    /// The FLOAT mantissa (with exponent 0) that carries this value.
    const fn float_mantissa(self) -> i32 {
        match self {
            SpecialValue::Nan => 0x007F_FFFF,
            SpecialValue::Nres => -0x0080_0000,
            SpecialValue::PositiveInfinity => 0x007F_FFFE,
            SpecialValue::NegativeInfinity => -0x007F_FFFE,
            SpecialValue::Reserved => -0x007F_FFFF,
        }
    }
}

/// An IEEE 11073-20601 number (from an SFLOAT or a FLOAT) or the special value sent instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Float11073 {
    /// `mantissa × 10^exponent`.
    Value {
        /// Signed mantissa (12 bits for SFLOAT, 24 for FLOAT).
        mantissa: i32,
        /// Base-10 exponent (4 bits for SFLOAT, 8 for FLOAT).
        exponent: i8,
    },
    /// No number: the reason why.
    Special(SpecialValue),
}

/// Why a [`Float11073`] does not fit an SFLOAT or FLOAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FloatRangeError {
    /// The mantissa does not fit the type's mantissa bits.
    #[error("mantissa {mantissa} outside {min}..={max}")]
    MantissaOutOfRange {
        /// The mantissa given.
        mantissa: i32,
        /// Smallest allowed.
        min: i32,
        /// Largest allowed.
        max: i32,
    },
    /// The exponent does not fit the type's exponent bits.
    #[error("exponent {exponent} outside {min}..={max}")]
    ExponentOutOfRange {
        /// The exponent given.
        exponent: i8,
        /// Smallest allowed.
        min: i8,
        /// Largest allowed.
        max: i8,
    },
    /// With exponent 0 this mantissa is a special value's bit pattern, not a number.
    #[error("mantissa {mantissa} with exponent 0 is a reserved special-value pattern")]
    SpecialPattern {
        /// The mantissa given.
        mantissa: i32,
    },
}

const SFLOAT_MANTISSA_MIN: i32 = -0x800;
const SFLOAT_MANTISSA_MAX: i32 = 0x7FF;
const FLOAT_MANTISSA_MIN: i32 = -0x80_0000;
const FLOAT_MANTISSA_MAX: i32 = 0x7F_FFFF;

impl Float11073 {
    /// The NaN special value.
    pub const NAN: Float11073 = Float11073::Special(SpecialValue::Nan);

    /// `mantissa × 10^exponent`.
    pub const fn new(mantissa: i32, exponent: i8) -> Self {
        Float11073::Value { mantissa, exponent }
    }

    /// Decodes SFLOAT bits (as read little-endian from the wire). Never fails.
    pub const fn from_sfloat_bits(bits: u16) -> Self {
        // Sign-extend the 12-bit mantissa and the 4-bit exponent by shifting them to the top
        // of a signed integer and back.
        let mantissa = ((bits as i32) << 20) >> 20;
        let exponent = ((bits as i16) >> 12) as i8;
        if exponent == 0 {
            let mut i = 0;
            while i < SpecialValue::ALL.len() {
                let special = SpecialValue::ALL[i];
                if special.sfloat_mantissa() == mantissa {
                    return Float11073::Special(special);
                }
                i += 1;
            }
        }
        Float11073::Value { mantissa, exponent }
    }

    /// Decodes FLOAT bits (as read little-endian from the wire). Never fails.
    pub const fn from_float_bits(bits: u32) -> Self {
        let mantissa = ((bits << 8) as i32) >> 8;
        let exponent = (bits >> 24) as u8 as i8;
        if exponent == 0 {
            let mut i = 0;
            while i < SpecialValue::ALL.len() {
                let special = SpecialValue::ALL[i];
                if special.float_mantissa() == mantissa {
                    return Float11073::Special(special);
                }
                i += 1;
            }
        }
        Float11073::Value { mantissa, exponent }
    }

    /// Encodes as SFLOAT bits.
    pub fn to_sfloat_bits(&self) -> Result<u16, FloatRangeError> {
        let (mantissa, exponent) = self.wire_parts(
            SpecialValue::sfloat_mantissa,
            SFLOAT_MANTISSA_MIN,
            SFLOAT_MANTISSA_MAX,
            -8,
            7,
        )?;
        // Both are range-checked above, so the masks drop only sign-extension bits.
        Ok(((((exponent as i32) & 0xF) << 12) | (mantissa & 0xFFF)) as u16)
    }

    /// Encodes as FLOAT bits.
    pub fn to_float_bits(&self) -> Result<u32, FloatRangeError> {
        let (mantissa, exponent) = self.wire_parts(
            SpecialValue::float_mantissa,
            FLOAT_MANTISSA_MIN,
            FLOAT_MANTISSA_MAX,
            i8::MIN,
            i8::MAX,
        )?;
        Ok((((exponent as u8) as u32) << 24) | ((mantissa as u32) & 0x00FF_FFFF))
    }

    fn wire_parts(
        &self,
        special_mantissa: fn(SpecialValue) -> i32,
        min: i32,
        max: i32,
        exp_min: i8,
        exp_max: i8,
    ) -> Result<(i32, i8), FloatRangeError> {
        match *self {
            Float11073::Special(s) => Ok((special_mantissa(s), 0)),
            Float11073::Value { mantissa, exponent } => {
                if !(exp_min..=exp_max).contains(&exponent) {
                    return Err(FloatRangeError::ExponentOutOfRange {
                        exponent,
                        min: exp_min,
                        max: exp_max,
                    });
                }
                if !(min..=max).contains(&mantissa) {
                    return Err(FloatRangeError::MantissaOutOfRange { mantissa, min, max });
                }
                if exponent == 0
                    && SpecialValue::ALL
                        .iter()
                        .any(|s| special_mantissa(*s) == mantissa)
                {
                    return Err(FloatRangeError::SpecialPattern { mantissa });
                }
                Ok((mantissa, exponent))
            }
        }
    }

    /// The number as `f64`, or `None` for a special value (a special value never becomes a
    /// number, not even infinity).
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            Float11073::Value { mantissa, exponent } => {
                let m = f64::from(mantissa);
                // Dividing by an exact power of ten rounds once, so 1205e-1 is exactly the
                // f64 nearest to 120.5.
                Some(if exponent >= 0 {
                    m * 10f64.powi(i32::from(exponent))
                } else {
                    m / 10f64.powi(-i32::from(exponent))
                })
            }
            Float11073::Special(_) => None,
        }
    }

    /// The special value, if this is not a number.
    pub const fn special(&self) -> Option<SpecialValue> {
        match *self {
            Float11073::Special(s) => Some(s),
            Float11073::Value { .. } => None,
        }
    }

    /// Whether this is a number (not a special value).
    pub const fn is_value(&self) -> bool {
        matches!(self, Float11073::Value { .. })
    }
}

impl fmt::Display for SpecialValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecialValue::Nan => "NaN",
            SpecialValue::Nres => "NRes",
            SpecialValue::PositiveInfinity => "+INF",
            SpecialValue::NegativeInfinity => "-INF",
            SpecialValue::Reserved => "reserved",
        })
    }
}

/// Writes the number in decimal with exactly the precision the device sent: mantissa 200 and
/// exponent −2 print as `2.00`, mantissa 36 and exponent 2 as `3600`.
impl fmt::Display for Float11073 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mantissa, exponent) = match *self {
            Float11073::Special(s) => return s.fmt(f),
            Float11073::Value { mantissa, exponent } => (mantissa, exponent),
        };
        let sign = if mantissa < 0 { "-" } else { "" };
        let digits = mantissa.unsigned_abs().to_string();
        if exponent >= 0 {
            if mantissa == 0 {
                return f.write_str("0");
            }
            let zeros = usize::from(exponent.unsigned_abs());
            write!(f, "{sign}{digits}{:0<zeros$}", "")
        } else {
            let scale = usize::from(exponent.unsigned_abs());
            // Left-pad so there is at least one digit before the point.
            let padded = format!("{digits:0>width$}", width = scale + 1);
            let (int, frac) = padded.split_at(padded.len() - scale);
            write!(f, "{sign}{int}.{frac}")
        }
    }
}

/// A number serializes as `{"value": 2.0, "text": "2.00"}` (the `f64` and the exact
/// decimal); a special value as `{"absent": "nan"}`.
impl Serialize for Float11073 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        match (self, self.to_f64()) {
            (Float11073::Special(special), _) => map.serialize_entry("absent", special)?,
            (Float11073::Value { .. }, value) => {
                map.serialize_entry("value", &value)?;
                map.serialize_entry("text", &self.to_string())?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(mantissa: i32, exponent: i8) -> Float11073 {
        Float11073::new(mantissa, exponent)
    }

    #[test]
    fn sfloat_special_values_never_become_numbers() {
        for (bits, special) in [
            (0x07FF, SpecialValue::Nan),
            (0x0800, SpecialValue::Nres),
            (0x07FE, SpecialValue::PositiveInfinity),
            (0x0802, SpecialValue::NegativeInfinity),
            (0x0801, SpecialValue::Reserved),
        ] {
            let f = Float11073::from_sfloat_bits(bits);
            assert_eq!(f, Float11073::Special(special), "{bits:#06x}");
            assert_eq!(f.to_f64(), None);
            assert_eq!(f.to_sfloat_bits(), Ok(bits));
        }
    }

    #[test]
    fn float_special_values_never_become_numbers() {
        for (bits, special) in [
            (0x007F_FFFF, SpecialValue::Nan),
            (0x0080_0000, SpecialValue::Nres),
            (0x007F_FFFE, SpecialValue::PositiveInfinity),
            (0x0080_0002, SpecialValue::NegativeInfinity),
            (0x0080_0001, SpecialValue::Reserved),
        ] {
            let f = Float11073::from_float_bits(bits);
            assert_eq!(f, Float11073::Special(special), "{bits:#010x}");
            assert_eq!(f.to_f64(), None);
            assert_eq!(f.to_float_bits(), Ok(bits));
        }
    }

    #[test]
    fn special_mantissas_with_nonzero_exponent_are_numbers() {
        // 0x17FF: exponent 1, mantissa 2047 — only exponent 0 marks a special value.
        assert_eq!(Float11073::from_sfloat_bits(0x17FF), v(2047, 1));
        assert_eq!(Float11073::from_float_bits(0x017F_FFFF), v(0x7F_FFFF, 1));
    }

    #[test]
    fn hand_computed_sfloat_vectors() {
        // PureSwift/Bluetooth Tests/BluetoothTests/SFloatTests.swift
        assert_eq!(Float11073::from_sfloat_bits(0x0072), v(114, 0));
        assert_eq!(Float11073::from_sfloat_bits(0xFF5E), v(-162, -1));
        assert_eq!(v(-162, -1).to_f64(), Some(-16.2));
        assert_eq!(Float11073::from_sfloat_bits(0x2024), v(36, 2));
        assert_eq!(v(36, 2).to_f64(), Some(3600.0));
        // NordicSemiconductor/Android-BLE-Library ble/src/test/.../DataTest.java:
        // 10.1 is written as bytes 65 F0.
        assert_eq!(
            Float11073::from_sfloat_bits(u16::from_le_bytes([0x65, 0xF0])),
            v(101, -1)
        );
        // Own: 0xF3E8 = exponent -1, mantissa 1000.
        assert_eq!(Float11073::from_sfloat_bits(0xF3E8), v(1000, -1));
        // Own: most negative mantissa with a non-zero exponent.
        assert_eq!(Float11073::from_sfloat_bits(0x8800), v(-2048, -8));
    }

    #[test]
    fn hand_computed_float_vectors() {
        // NordicSemiconductor/Android-BLE-Library DataTest.java: 12345.67 → 87 D6 12 FE,
        // 1.0 → 01 00 00 00.
        let f = Float11073::from_float_bits(u32::from_le_bytes([0x87, 0xD6, 0x12, 0xFE]));
        assert_eq!(f, v(1_234_567, -2));
        assert_eq!(f.to_string(), "12345.67");
        assert_eq!(
            Float11073::from_float_bits(u32::from_le_bytes([1, 0, 0, 0])),
            v(1, 0)
        );
        assert_eq!(Float11073::from_float_bits(0xFFFF_FFFF), v(-1, -1));
    }

    #[test]
    fn precision_is_kept() {
        assert_ne!(v(2, 0), v(20, -1));
        assert_ne!(v(20, -1), v(200, -2));
        assert_eq!(v(2, 0).to_string(), "2");
        assert_eq!(v(20, -1).to_string(), "2.0");
        assert_eq!(v(200, -2).to_string(), "2.00");
        assert_eq!(v(200, -2).to_f64(), Some(2.0));
        assert_eq!(v(5, -3).to_string(), "0.005");
        assert_eq!(v(-5, -3).to_string(), "-0.005");
        assert_eq!(v(-162, -1).to_string(), "-16.2");
        assert_eq!(v(36, 2).to_string(), "3600");
        assert_eq!(v(0, 3).to_string(), "0");
        assert_eq!(v(0, -2).to_string(), "0.00");
        assert_eq!(v(1205, -1).to_f64(), Some(120.5));
        assert_eq!(Float11073::NAN.to_string(), "NaN");
    }

    #[test]
    fn encode_range_errors() {
        assert_eq!(
            v(2048, 0).to_sfloat_bits(),
            Err(FloatRangeError::MantissaOutOfRange {
                mantissa: 2048,
                min: -2048,
                max: 2047
            })
        );
        assert_eq!(
            v(1, 8).to_sfloat_bits(),
            Err(FloatRangeError::ExponentOutOfRange {
                exponent: 8,
                min: -8,
                max: 7
            })
        );
        assert_eq!(
            v(2047, 0).to_sfloat_bits(),
            Err(FloatRangeError::SpecialPattern { mantissa: 2047 })
        );
        assert_eq!(
            v(-0x80_0000, 0).to_float_bits(),
            Err(FloatRangeError::SpecialPattern {
                mantissa: -0x80_0000
            })
        );
        assert!(v(0x80_0000, 0).to_float_bits().is_err());
        assert_eq!(v(2047, 1).to_sfloat_bits(), Ok(0x17FF));
        assert_eq!(v(-2045, 0).to_sfloat_bits(), Ok(0x0803));
    }

    #[test]
    fn json_shape() {
        assert_eq!(
            serde_json::to_value(v(200, -2)).ok(),
            Some(serde_json::json!({"value": 2.0, "text": "2.00"}))
        );
        assert_eq!(
            serde_json::to_value(Float11073::from_sfloat_bits(0x0800)).ok(),
            Some(serde_json::json!({"absent": "nres"}))
        );
    }

    proptest! {
        #[test]
        fn every_sfloat_pattern_round_trips(bits in any::<u16>()) {
            prop_assert_eq!(Float11073::from_sfloat_bits(bits).to_sfloat_bits(), Ok(bits));
        }

        #[test]
        fn every_float_pattern_round_trips(bits in any::<u32>()) {
            prop_assert_eq!(Float11073::from_float_bits(bits).to_float_bits(), Ok(bits));
        }

        #[test]
        fn encodable_values_round_trip(m in -2048i32..=2047, e in -8i8..=7) {
            let f = v(m, e);
            match f.to_sfloat_bits() {
                Ok(bits) => prop_assert_eq!(Float11073::from_sfloat_bits(bits), f),
                Err(err) => prop_assert_eq!(err, FloatRangeError::SpecialPattern { mantissa: m }),
            }
        }

        #[test]
        fn display_parses_back_to_the_same_number(m in -2048i32..=2047, e in -8i8..=7) {
            let f = v(m, e);
            let parsed: f64 = f.to_string().parse().map_err(|_| TestCaseError::fail("not a number"))?;
            let exact = f.to_f64().ok_or_else(|| TestCaseError::fail("special"))?;
            prop_assert!((parsed - exact).abs() <= exact.abs() * 1e-12);
        }
    }
}

/// Proptest strategies shared by the codec tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::Float11073;
    use proptest::prelude::*;

    /// Any SFLOAT, special values included.
    pub(crate) fn any_sfloat() -> impl Strategy<Value = Float11073> {
        any::<u16>().prop_map(Float11073::from_sfloat_bits)
    }

    /// Any FLOAT, special values included.
    pub(crate) fn any_float() -> impl Strategy<Value = Float11073> {
        any::<u32>().prop_map(Float11073::from_float_bits)
    }
}
