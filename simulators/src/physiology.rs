//! A per-patient physiology model: personal baselines, scripted trends over days, diurnal
//! variation and measurement noise, deterministic for a seed.

use serde::Deserialize;
use time::OffsetDateTime;

/// A small deterministic generator (SplitMix64); enough for noise, and no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A patient's personal baseline (resting values).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Pseudonymous key the readings are bound to.
    pub key: String,
    /// Systolic, mmHg.
    pub systolic: f64,
    /// Diastolic, mmHg.
    pub diastolic: f64,
    /// Pulse, /min.
    pub pulse: f64,
    /// SpO2, %.
    pub spo2: f64,
    /// FEV1, L.
    pub fev1: f64,
    /// FVC, L.
    pub fvc: f64,
    /// PEF, L/min.
    pub pef: f64,
}

/// A linear change between two (fractional) days, held afterwards.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Trend {
    /// Day the change starts.
    pub from_day: f64,
    /// Day it is complete.
    pub to_day: f64,
    /// Systolic change.
    pub systolic: f64,
    /// Diastolic change.
    pub diastolic: f64,
    /// Pulse change.
    pub pulse: f64,
    /// SpO2 change.
    pub spo2: f64,
    /// FEV1 change.
    pub fev1: f64,
    /// FVC change.
    pub fvc: f64,
    /// PEF change.
    pub pef: f64,
}

/// One simulated measurement's true values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vitals {
    /// Systolic, mmHg.
    pub systolic: f64,
    /// Diastolic, mmHg.
    pub diastolic: f64,
    /// Pulse, /min.
    pub pulse: f64,
    /// SpO2, %.
    pub spo2: f64,
    /// FEV1, L.
    pub fev1: f64,
    /// FVC, L.
    pub fvc: f64,
    /// PEF, L/min.
    pub pef: f64,
}

/// The model.
#[derive(Clone, Debug)]
pub struct Physiology {
    baseline: Baseline,
    trends: Vec<Trend>,
    start: OffsetDateTime,
    rng: Rng,
}

impl Physiology {
    /// A patient from a baseline and trends, starting at `start`.
    pub fn new(baseline: Baseline, trends: Vec<Trend>, start: OffsetDateTime, seed: u64) -> Self {
        Physiology {
            baseline,
            trends,
            start,
            rng: Rng::new(seed),
        }
    }

    /// The values a device would measure at `t`.
    pub fn sample(&mut self, t: OffsetDateTime) -> Vitals {
        let day = (t - self.start).as_seconds_f64() / 86_400.0;
        let b = &self.baseline;
        let mut v = Vitals {
            systolic: b.systolic,
            diastolic: b.diastolic,
            pulse: b.pulse,
            spo2: b.spo2,
            fev1: b.fev1,
            fvc: b.fvc,
            pef: b.pef,
        };
        for tr in &self.trends {
            let span = (tr.to_day - tr.from_day).max(1e-9);
            let f = ((day - tr.from_day) / span).clamp(0.0, 1.0);
            v.systolic += f * tr.systolic;
            v.diastolic += f * tr.diastolic;
            v.pulse += f * tr.pulse;
            v.spo2 += f * tr.spo2;
            v.fev1 += f * tr.fev1;
            v.fvc += f * tr.fvc;
            v.pef += f * tr.pef;
        }
        // Diurnal: blood pressure and pulse peak mid-morning; airway calibre is lowest in
        // the early morning (the "morning dip" of peak flow).
        let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0;
        let bp_phase = (std::f64::consts::TAU * (hour - 10.0) / 24.0).cos();
        let lung_phase = (std::f64::consts::TAU * (hour - 16.0) / 24.0).cos();
        v.systolic += 6.0 * bp_phase + 4.0 * self.rng.normal();
        v.diastolic += 4.0 * bp_phase + 3.0 * self.rng.normal();
        v.pulse += 4.0 * bp_phase + 3.0 * self.rng.normal();
        v.spo2 += 0.3 * lung_phase + 0.7 * self.rng.normal();
        let lung = 1.0 + 0.03 * lung_phase;
        v.fev1 = v.fev1 * lung + 0.04 * self.rng.normal();
        v.fvc = v.fvc * lung + 0.06 * self.rng.normal();
        v.pef = v.pef * lung + 10.0 * self.rng.normal();
        v.spo2 = v.spo2.clamp(50.0, 100.0);
        v.fev1 = v.fev1.max(0.2);
        v.fvc = v.fvc.max(v.fev1);
        v.pef = v.pef.max(30.0);
        v.diastolic = v.diastolic.min(v.systolic - 10.0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        Baseline {
            key: "pk-x".into(),
            systolic: 130.0,
            diastolic: 80.0,
            pulse: 70.0,
            spo2: 95.0,
            fev1: 2.0,
            fvc: 3.0,
            pef: 300.0,
        }
    }

    #[test]
    fn same_seed_same_patient_and_trends_apply() {
        let start = time::macros::datetime!(2025-03-01 00:00 UTC);
        let trend = Trend {
            from_day: 1.0,
            to_day: 2.0,
            spo2: -8.0,
            ..Trend::default()
        };
        let mut a = Physiology::new(baseline(), vec![trend.clone()], start, 3);
        let mut b = Physiology::new(baseline(), vec![trend], start, 3);
        let t0 = start + time::Duration::hours(8);
        assert_eq!(a.sample(t0), b.sample(t0));
        let later = start + time::Duration::days(3) + time::Duration::hours(8);
        let mean: f64 = (0..200).map(|_| a.sample(later).spo2).sum::<f64>() / 200.0;
        assert!((mean - 87.0).abs() < 1.0, "{mean}");
    }

    /// Mean and standard deviation of `n` samples of one value at `t`.
    fn spread(p: &mut Physiology, t: OffsetDateTime, f: fn(&Vitals) -> f64) -> (f64, f64) {
        let xs: Vec<f64> = (0..400).map(|_| f(&p.sample(t))).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn blood_pressure_peaks_mid_morning_peak_flow_dips_early_and_every_sample_is_noisy() {
        let start = time::macros::datetime!(2025-03-01 00:00 UTC);
        let mut p = Physiology::new(baseline(), vec![], start, 5);
        let at = |h: i64| start + time::Duration::days(2) + time::Duration::hours(h);
        let (sys_morning, sys_sd) = spread(&mut p, at(10), |v| v.systolic);
        let (sys_night, _) = spread(&mut p, at(22), |v| v.systolic);
        // ±6 mmHg around the baseline, twelve hours apart.
        assert!((sys_morning - 136.0).abs() < 1.0, "{sys_morning}");
        assert!((sys_night - 124.0).abs() < 1.0, "{sys_night}");
        // Peak flow is best in the afternoon and lowest twelve hours earlier.
        let (pef_afternoon, pef_sd) = spread(&mut p, at(16), |v| v.pef);
        let (pef_early, _) = spread(&mut p, at(4), |v| v.pef);
        assert!(
            pef_afternoon - pef_early > 15.0,
            "{pef_afternoon} vs {pef_early}"
        );
        // Measurement noise: repeated samples at one instant differ.
        assert!((3.0..5.0).contains(&sys_sd), "{sys_sd}");
        assert!((8.0..12.0).contains(&pef_sd), "{pef_sd}");
    }
}
