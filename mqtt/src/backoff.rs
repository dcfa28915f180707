//! The one reconnect policy: capped exponential backoff with full jitter (AWS Architecture
//! Blog, "Exponential Backoff And Jitter"), so a fleet of hubs that lost the broker at the same
//! moment does not come back at the same moment.

use std::time::{Duration, Instant};

/// Capped exponential backoff with full jitter: a uniformly random wait in
/// `0..=min(max, 250 ms × 2^failures)`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = Duration::from_millis(250).saturating_mul(1u32 << failures.min(16));
    let cap = exp.min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(jitter(nanos))
}

/// A random number in `0..=upto`, from the standard library's per-process random hasher keys.
fn jitter(upto: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(upto);
    h.write_u128(Instant::now().elapsed().as_nanos());
    if upto == u64::MAX {
        h.finish()
    } else {
        h.finish() % (upto + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let max = Duration::from_secs(30);
        for failures in 0..40 {
            assert!(backoff(failures, max) <= max);
        }
        assert!(backoff(1, max) <= Duration::from_millis(500));
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(10, max)).collect();
        assert!(samples.len() > 1, "jittered");
    }
}
