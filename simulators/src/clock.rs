//! The virtual clock scenarios run on.

use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;

/// A wall clock that moves only when told to. Shared by the simulated devices and the
/// gateway session (as its [`gateway::device::Clock`]).
#[derive(Clone, Debug)]
pub struct SimClock(Arc<Mutex<OffsetDateTime>>);

impl SimClock {
    /// Starting at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        SimClock(Arc::new(Mutex::new(t)))
    }

    /// Moves to `t`.
    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Now.
    pub fn get(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl gateway::device::Clock for SimClock {
    fn now(&self) -> OffsetDateTime {
        self.get()
    }
}
