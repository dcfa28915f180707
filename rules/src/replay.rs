//! Rebuilding a patient's state from the record (after a restart, or when a node meets a
//! patient whose state it did not build): the same evaluation, events discarded.

use vitals::Reading;

use crate::engine::{Engine, EngineError, Sample};
use crate::event::PatientIdx;

impl Engine {
    /// Resets the patient's state and replays `readings` (in measurement order) through the
    /// same evaluation as live readings, discarding the events. Afterwards
    /// [`Engine::open_alerts`] lists what replay says is open, which the caller reconciles
    /// with the alerts in the record. Replay raises nothing time-driven: tell the engine when
    /// the hub was last heard ([`Engine::gateway_heard`]), then hand [`Engine::settle`] the
    /// alerts the record holds open, so that the engine knows which missing-data,
    /// silent-gateway and lapsed-confirmation alerts are open and which of them cleared;
    /// [`Engine::tick`] raises what is due from then on. Returns how many readings were
    /// replayed.
    pub fn rebuild<'a, I>(&mut self, idx: PatientIdx, readings: I) -> Result<u64, EngineError>
    where
        I: IntoIterator<Item = &'a Reading>,
    {
        self.reset(idx)?;
        let mut scratch = Vec::with_capacity(8);
        let mut n = 0;
        for r in readings {
            self.evaluate_reading(idx, r, &mut scratch)?;
            scratch.clear();
            n += 1;
        }
        Ok(n)
    }

    /// [`Engine::rebuild`] from samples rather than [`Reading`]s.
    pub fn rebuild_samples<'a, I>(
        &mut self,
        idx: PatientIdx,
        samples: I,
    ) -> Result<u64, EngineError>
    where
        I: IntoIterator<Item = Sample<'a>>,
    {
        self.reset(idx)?;
        let mut scratch = Vec::with_capacity(8);
        let mut n = 0;
        for s in samples {
            self.evaluate(idx, &s, &mut scratch)?;
            scratch.clear();
            n += 1;
        }
        Ok(n)
    }
}
