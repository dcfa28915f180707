//! NEWS2 (Royal College of Physicians, National Early Warning Score 2, 2017) from the
//! parameters a patient can measure at home.
//!
//! Respiration rate and level of consciousness are not measured at home, so every score here
//! is **partial**: it can only under-estimate the full score, never over-estimate it. The
//! response bands are the RCP's: 0; 1–4 low; 3 in any single parameter low-medium; 5–6
//! medium; 7 or more high.
//!
//! Values are rounded to the chart's resolution first (whole % for SpO2, whole mmHg, whole
//! beats per minute, 0.1 °C), half away from zero, so 91.5 % scores as 92 %.

use serde::{Deserialize, Serialize};

/// Which SpO2 scale a patient is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Spo2Scale {
    /// Scale 1: most patients.
    One,
    /// Scale 2: hypercapnic respiratory failure with a prescribed target of 88–92 %.
    Two,
}

/// The RCP clinical response a score calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Aggregate 0.
    None,
    /// Aggregate 1–4.
    Low,
    /// Aggregate 1–4 with a 3 in a single parameter.
    LowMedium,
    /// Aggregate 5–6.
    Medium,
    /// Aggregate 7 or more.
    High,
}

impl Response {
    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Response::None => "none",
            Response::Low => "low",
            Response::LowMedium => "low_medium",
            Response::Medium => "medium",
            Response::High => "high",
        }
    }
}

/// A partial NEWS2 score with its parts. `None` parts were not measured recently enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct News2Score {
    /// Sum of the parts present.
    pub total: u8,
    /// SpO2 points on [`News2Score::scale`].
    pub spo2: Option<u8>,
    /// Supplemental oxygen: 2 when on oxygen, else 0.
    pub oxygen: u8,
    /// Systolic blood pressure points.
    pub systolic: Option<u8>,
    /// Pulse points.
    pub pulse: Option<u8>,
    /// Temperature points.
    pub temperature: Option<u8>,
    /// The SpO2 scale used.
    pub scale: Spo2Scale,
    /// Whether the patient was scored as on supplemental oxygen.
    pub on_oxygen: bool,
    /// The response band.
    pub response: Response,
}

impl News2Score {
    /// Always true at home: respiration rate and consciousness are not part of the score.
    pub const fn partial(&self) -> bool {
        true
    }
}

/// `v.round() as i64` (half away from zero, saturating, NaN to 0), without the call into libm
/// that `f64::round` is on x86-64 (no `roundsd` before SSE4.1): the engine scores every
/// oximetry and blood-pressure reading, and the call was most of the score's cost.
fn whole(v: f64) -> i64 {
    // Truncation toward zero is one instruction; the fraction it drops is exact (for
    // |v| ≥ 2^52 there is none, and beyond i64 the cast saturates, as `round() as i64` does).
    let t = v as i64;
    let frac = v - t as f64;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// SpO2 points. Scale 2's upper band (93 % and above) scores only when on oxygen.
pub fn spo2_points(spo2: f64, scale: Spo2Scale, on_oxygen: bool) -> u8 {
    let s = whole(spo2);
    match scale {
        Spo2Scale::One => match s {
            ..=91 => 3,
            92..=93 => 2,
            94..=95 => 1,
            _ => 0,
        },
        Spo2Scale::Two => match s {
            ..=83 => 3,
            84..=85 => 2,
            86..=87 => 1,
            88..=92 => 0,
            _ if !on_oxygen => 0,
            93..=94 => 1,
            95..=96 => 2,
            _ => 3,
        },
    }
}

/// Systolic blood pressure points.
pub fn systolic_points(mmhg: f64) -> u8 {
    match whole(mmhg) {
        ..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        _ => 3,
    }
}

/// Pulse points.
pub fn pulse_points(per_min: f64) -> u8 {
    match whole(per_min) {
        ..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        _ => 3,
    }
}

/// Temperature points (°C, scored in tenths of a degree).
pub fn temperature_points(celsius: f64) -> u8 {
    match whole(celsius * 10.0) {
        ..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        _ => 2,
    }
}

/// Scores whatever home parameters are present.
pub fn score(
    spo2: Option<f64>,
    systolic: Option<f64>,
    pulse: Option<f64>,
    temperature: Option<f64>,
    scale: Spo2Scale,
    on_oxygen: bool,
) -> News2Score {
    let spo2 = spo2.map(|v| spo2_points(v, scale, on_oxygen));
    let systolic = systolic.map(systolic_points);
    let pulse = pulse.map(pulse_points);
    let temperature = temperature.map(temperature_points);
    let oxygen = if on_oxygen { 2 } else { 0 };
    let mut total = oxygen;
    let mut single_three = false;
    for p in [spo2, systolic, pulse, temperature].into_iter().flatten() {
        total += p;
        single_three |= p == 3;
    }
    let response = match total {
        0 => Response::None,
        1..=4 if single_three => Response::LowMedium,
        1..=4 => Response::Low,
        5..=6 => Response::Medium,
        _ => Response::High,
    };
    News2Score {
        total,
        spo2,
        oxygen,
        systolic,
        pulse,
        temperature,
        scale,
        on_oxygen,
        response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Spo2Scale::{One, Two};

    /// Every boundary of the RCP chart, both sides, by hand from the 2017 chart.
    #[test]
    fn spo2_scale_1_boundaries() {
        for (v, p) in [
            (50.0, 3),
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
            (100.0, 0),
        ] {
            assert_eq!(spo2_points(v, One, false), p, "scale 1, {v} %");
            // Scale 1 does not look at oxygen for SpO2 (oxygen scores separately).
            assert_eq!(spo2_points(v, One, true), p, "scale 1 on O2, {v} %");
        }
    }

    #[test]
    fn spo2_scale_2_boundaries_on_air() {
        for (v, p) in [
            (50.0, 3),
            (83.0, 3),
            (84.0, 2),
            (85.0, 2),
            (86.0, 1),
            (87.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 0),
            (97.0, 0),
            (100.0, 0),
        ] {
            assert_eq!(spo2_points(v, Two, false), p, "scale 2 on air, {v} %");
        }
    }

    #[test]
    fn spo2_scale_2_boundaries_on_oxygen() {
        for (v, p) in [
            (83.0, 3),
            (84.0, 2),
            (85.0, 2),
            (86.0, 1),
            (87.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 1),
            (94.0, 1),
            (95.0, 2),
            (96.0, 2),
            (97.0, 3),
            (100.0, 3),
        ] {
            assert_eq!(spo2_points(v, Two, true), p, "scale 2 on O2, {v} %");
        }
    }

    #[test]
    fn systolic_boundaries() {
        for (v, p) in [
            (40.0, 3),
            (90.0, 3),
            (91.0, 2),
            (100.0, 2),
            (101.0, 1),
            (110.0, 1),
            (111.0, 0),
            (219.0, 0),
            (220.0, 3),
            (300.0, 3),
        ] {
            assert_eq!(systolic_points(v), p, "systolic {v}");
        }
    }

    #[test]
    fn pulse_boundaries() {
        for (v, p) in [
            (20.0, 3),
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
            (110.0, 1),
            (111.0, 2),
            (130.0, 2),
            (131.0, 3),
            (250.0, 3),
        ] {
            assert_eq!(pulse_points(v), p, "pulse {v}");
        }
    }

    #[test]
    fn temperature_boundaries() {
        for (v, p) in [
            (30.0, 3),
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
            (42.0, 2),
        ] {
            assert_eq!(temperature_points(v), p, "temperature {v}");
        }
    }

    #[test]
    fn values_round_to_the_chart_resolution() {
        assert_eq!(spo2_points(91.5, One, false), 2, "91.5 rounds to 92");
        assert_eq!(spo2_points(91.4, One, false), 3);
        assert_eq!(temperature_points(35.04), 3);
        assert_eq!(temperature_points(35.06), 1);
    }

    #[test]
    fn whole_rounds_half_away_from_zero_like_f64_round() {
        for (v, w) in [
            (0.5, 1),
            (-0.5, -1),
            (1.5, 2),
            (2.5, 3),
            (-2.5, -3),
            (0.499_999_999_999_999_94, 0),
            (91.5, 92),
            (91.499_999_999_999_99, 91),
            (4_503_599_627_370_495.5, 4_503_599_627_370_496),
            (f64::NAN, 0),
            (f64::INFINITY, i64::MAX),
            (f64::NEG_INFINITY, i64::MIN),
            (1e300, i64::MAX),
            (-1e300, i64::MIN),
            (9.223_372_036_854_775e18, 9_223_372_036_854_774_784),
            (9.3e18, i64::MAX),
        ] {
            assert_eq!(whole(v), w, "{v}");
            assert_eq!(whole(v), v.round() as i64, "{v} as f64::round does");
        }
    }

    proptest::proptest! {
        #[test]
        fn whole_matches_f64_round_for_every_bit_pattern(bits in proptest::num::u64::ANY) {
            let v = f64::from_bits(bits);
            proptest::prop_assert_eq!(whole(v), v.round() as i64);
        }

        #[test]
        fn whole_matches_f64_round_on_the_charts_scale(v in -1_000.0f64..1_000.0) {
            proptest::prop_assert_eq!(whole(v), v.round() as i64);
            proptest::prop_assert_eq!(whole(v * 10.0), (v * 10.0).round() as i64);
        }
    }

    #[test]
    fn response_bands() {
        // Nothing abnormal: 0.
        let s = score(Some(97.0), Some(120.0), Some(70.0), Some(37.0), One, false);
        assert_eq!((s.total, s.response), (0, Response::None));
        assert!(s.partial());
        // 1–4 without a single 3: low. SpO2 94 (1) + pulse 95 (1) = 2.
        let s = score(Some(94.0), Some(120.0), Some(95.0), None, One, false);
        assert_eq!((s.total, s.response), (2, Response::Low));
        // 4: upper edge of low. SpO2 92 (2) + systolic 100 (2).
        let s = score(Some(92.0), Some(100.0), None, None, One, false);
        assert_eq!((s.total, s.response), (4, Response::Low));
        // A single 3 with an aggregate of 3: low-medium.
        let s = score(Some(91.0), None, None, None, One, false);
        assert_eq!((s.total, s.response), (3, Response::LowMedium));
        // 5: medium. SpO2 91 (3) + systolic 100 (2).
        let s = score(Some(91.0), Some(100.0), None, None, One, false);
        assert_eq!((s.total, s.response), (5, Response::Medium));
        // 6: still medium. On oxygen (2) + SpO2 93 (2) + pulse 111 (2).
        let s = score(Some(93.0), None, Some(111.0), None, One, true);
        assert_eq!((s.oxygen, s.total, s.response), (2, 6, Response::Medium));
        // 7: high. On oxygen (2) + SpO2 92 (2) + pulse 131 (3).
        let s = score(Some(92.0), None, Some(131.0), None, One, true);
        assert_eq!((s.total, s.response), (7, Response::High));
        // Oxygen alone scores 2: low (the +2 is not a "single 3").
        let s = score(None, None, None, None, Two, true);
        assert_eq!((s.total, s.response), (2, Response::Low));
        // Scale 2 on air at 90 %, the patient's target: nothing.
        let s = score(Some(90.0), Some(130.0), Some(80.0), None, Two, false);
        assert_eq!((s.total, s.response), (0, Response::None));
        // Scale 2 on oxygen at 97 %: over-oxygenated, 3 + 2 for oxygen = 5, medium.
        let s = score(Some(97.0), None, None, None, Two, true);
        assert_eq!(
            (s.spo2, s.total, s.response),
            (Some(3), 5, Response::Medium)
        );
    }
}
