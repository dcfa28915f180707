//! Exact decimal numbers that keep their precision.
//!
//! Devices report IEEE-11073 numbers as a mantissa and a base-10 exponent: `2`, `2.0` and
//! `2.00` are different statements about what was measured. [`Decimal`] keeps that, and its
//! text form (`"2.00"`, or `"12e2"` for a positive exponent) round-trips exactly, which a JSON
//! number through `f64` would not.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `mantissa × 10^exponent`, exactly as measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i64,
    exponent: i8,
}

/// The largest exponent magnitude a [`Decimal`] accepts (IEEE-11073 FLOAT uses -128..=127, but
/// no physiological value needs more than this and it keeps `f64` conversion exact enough).
pub const MAX_EXPONENT: i8 = 18;

/// Why a text could not be read as a [`Decimal`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text is empty.
    #[error("empty number")]
    Empty,
    /// A character that is not part of a plain decimal number.
    #[error("`{0}` is not a plain decimal number (digits, an optional sign and point, or `NeM`)")]
    Syntax(String),
    /// Too many digits or too large an exponent.
    #[error("`{0}` is out of range (at most 18 significant digits, exponent within ±18)")]
    OutOfRange(String),
}

const POW10: [f64; 37] = [
    1e-18, 1e-17, 1e-16, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5,
    1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
    1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
];

impl Decimal {
    /// `mantissa × 10^exponent`; `None` when the exponent is beyond ±[`MAX_EXPONENT`].
    pub fn new(mantissa: i64, exponent: i8) -> Option<Self> {
        (exponent.unsigned_abs() <= MAX_EXPONENT.unsigned_abs())
            .then_some(Self { mantissa, exponent })
    }

    /// An integer.
    pub const fn from_int(value: i64) -> Self {
        Self {
            mantissa: value,
            exponent: 0,
        }
    }

    /// The mantissa.
    pub const fn mantissa(self) -> i64 {
        self.mantissa
    }

    /// The base-10 exponent (`-2` for two decimal places).
    pub const fn exponent(self) -> i8 {
        self.exponent
    }

    /// The value as a float, for arithmetic (rules, charts); never for identity.
    pub fn to_f64(self) -> f64 {
        // Index is within 0..=36 because the constructor bounds the exponent.
        self.mantissa as f64 * POW10[(self.exponent + MAX_EXPONENT) as usize]
    }

    /// `value` rounded to `exponent` (e.g. `-1` for one decimal place). Used for unit
    /// conversions, where the result gets the target unit's natural resolution.
    pub fn from_f64_rounded(value: f64, exponent: i8) -> Option<Self> {
        if !value.is_finite() || exponent.unsigned_abs() > MAX_EXPONENT.unsigned_abs() {
            return None;
        }
        let scaled = (value / POW10[(exponent + MAX_EXPONENT) as usize]).round();
        if scaled.abs() >= 1e18 {
            return None;
        }
        Some(Self {
            mantissa: scaled as i64,
            exponent,
        })
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exponent > 0 {
            return write!(f, "{}e{}", self.mantissa, self.exponent);
        }
        if self.exponent == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let places = self.exponent.unsigned_abs() as usize;
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let digits = self.mantissa.unsigned_abs().to_string();
        let digits = format!("{digits:0>width$}", width = places + 1);
        let (int, frac) = digits.split_at(digits.len() - places);
        write!(f, "{sign}{int}.{frac}")
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DecimalError::Empty);
        }
        let syntax = || DecimalError::Syntax(s.chars().take(40).collect());
        let range = || DecimalError::OutOfRange(s.chars().take(40).collect());
        let (number, exp_part) = match s.split_once(['e', 'E']) {
            Some((n, e)) => (n, Some(e)),
            None => (s, None),
        };
        let (negative, unsigned) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number.strip_prefix('+').unwrap_or(number)),
        };
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(syntax());
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        if exp_part.is_some() && !frac.is_empty() {
            // "1.5e2" is ambiguous about precision; the canonical form never produces it.
            return Err(syntax());
        }
        let significant = int.trim_start_matches('0').len() + frac.len();
        if significant > 18 {
            return Err(range());
        }
        let mut mantissa: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa * 10 + i64::from(b - b'0');
        }
        if negative {
            mantissa = -mantissa;
        }
        let exponent: i64 = match exp_part {
            Some(e) => {
                let (neg, digits) = match e.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, e.strip_prefix('+').unwrap_or(e)),
                };
                if digits.is_empty()
                    || digits.len() > 3
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(syntax());
                }
                let v: i64 = digits.parse().map_err(|_| syntax())?;
                if neg { -v } else { v }
            }
            None => -(frac.len() as i64),
        };
        let exponent = i8::try_from(exponent).map_err(|_| range())?;
        Decimal::new(mantissa, exponent).ok_or_else(range)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn precision_is_kept_in_text() {
        for (m, e, text) in [
            (2, 0, "2"),
            (20, -1, "2.0"),
            (200, -2, "2.00"),
            (-5, -2, "-0.05"),
            (12, 2, "12e2"),
            (0, -1, "0.0"),
            (1205, -1, "120.5"),
        ] {
            let d = Decimal::new(m, e).expect("in range");
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<Decimal>(), Ok(d), "{text}");
        }
        assert_ne!("2.0".parse::<Decimal>(), "2".parse::<Decimal>());
    }

    #[test]
    fn rejects_what_is_not_a_plain_decimal() {
        for bad in [
            "", ".", "-", "1.2.3", "1,5", "NaN", "inf", "0x10", "1.5e2", "1e", "1e1000", " 1",
        ] {
            assert!(
                bad.parse::<Decimal>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(matches!(
            "1234567890123456789".parse::<Decimal>(),
            Err(DecimalError::OutOfRange(_))
        ));
    }

    #[test]
    fn rounding_to_a_resolution() {
        let d = Decimal::from_f64_rounded(120.0113, -1).expect("finite");
        assert_eq!(d.to_string(), "120.0");
        assert_eq!(Decimal::from_f64_rounded(f64::NAN, 0), None);
    }

    proptest! {
        #[test]
        fn text_round_trips(m in -999_999_999_999i64..999_999_999_999, e in -12i8..=12) {
            let d = Decimal::new(m, e).expect("in range");
            prop_assert_eq!(d.to_string().parse::<Decimal>(), Ok(d));
            let json = serde_json::to_string(&d).expect("serialise");
            prop_assert_eq!(serde_json::from_str::<Decimal>(&json).expect("parse"), d);
        }

        #[test]
        fn any_text_never_panics(s in "\\PC{0,30}") {
            let _ = s.parse::<Decimal>();
        }
    }
}
