//! Where "now" comes from. Logic takes times as arguments; only the loops read a [`Clock`].

use std::time::Duration;

use jiff::Timestamp;

/// A source of wall-clock time for the notifier's loops.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Wall time anchored once and then advanced by tokio's monotonic clock, so that
/// `tokio::time::pause()` and `advance()` move it too (tests drive escalation this way).
/// Over days it drifts from the wall clock only by what NTP corrects, well under a second.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    wall: Timestamp,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchors at the system's wall clock now.
    pub fn new() -> Self {
        Self::anchored(Timestamp::now())
    }

    /// Anchors at `wall` (tests pick a fixed instant).
    pub fn anchored(wall: Timestamp) -> Self {
        TokioClock {
            wall,
            anchor: tokio::time::Instant::now(),
        }
    }

    /// The tokio instant at which this clock will read `t` (now, if `t` is past).
    pub fn instant_at(&self, t: Timestamp) -> tokio::time::Instant {
        let ahead = t.duration_since(self.now());
        let ahead = Duration::try_from(ahead).unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + ahead
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.anchor.elapsed();
        let span = jiff::SignedDuration::try_from(elapsed).unwrap_or(jiff::SignedDuration::MAX);
        self.wall.checked_add(span).unwrap_or(Timestamp::MAX)
    }
}
