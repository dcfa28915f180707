//! The one retry policy: capped exponential backoff with full jitter (the delay before
//! attempt `n` is uniform in `0..=min(max, initial × 2^n)`), as in the AWS Architecture Blog's
//! "Exponential Backoff and Jitter". Full jitter spreads a house's devices (and a fleet's
//! hubs after a power cut) so they do not retry in lockstep.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// The cap.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

/// The state of one retry sequence. Deterministic for a seed (tests), so the jitter source is
/// a small SplitMix64 rather than a thread RNG.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: seed,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.attempt.min(30);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self
            .config
            .initial
            .saturating_mul(1u32 << shift)
            .min(self.config.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % (nanos + 1))
    }

    /// Back to the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut b = Backoff::new(config, 7);
        let mut ceilings = vec![];
        for n in 0..10u32 {
            let d = b.next_delay();
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(config.max);
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            ceilings.push(ceiling);
        }
        assert_eq!(ceilings.last(), Some(&Duration::from_secs(2)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_is_spread_and_deterministic() {
        let config = BackoffConfig {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(10),
        };
        let draw = |seed| {
            let mut b = Backoff::new(config, seed);
            (0..50).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        assert!(a.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(a.iter().any(|d| *d > Duration::from_secs(7)));
    }
}
