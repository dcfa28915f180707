//! Simulated BLE peripherals that emit exactly the GATT bytes real devices do, and clinical
//! scenarios that run days of a patient's life in seconds.
//!
//! This crate is for testing and demonstrating the gateway without hardware: [`SimWorld`]
//! implements [`gateway::device::DeviceSource`] in-process, with a blood pressure cuff (two
//! user slots, stored records fetched with RACP through the Blood Pressure Record), a pulse
//! oximeter (spot-check and 1 Hz continuous) and a spirometer that speaks the Generic Health
//! Sensor service ([`ghs`]: live observations once started, stored observations through GHS
//! RACP), with the simulated vendor format of [`gateway::device::spirometry`] kept for the
//! driver seam. Every value is encoded with `gateway::codec`, the same
//! code that decodes it on the gateway side. A [`Physiology`] per patient (baselines,
//! trends over days, diurnal variation, noise; deterministic for a seed) supplies the values,
//! and [`scenario`] files (`fixtures/scenarios/*.toml`) script patients, devices and faults
//! on a virtual clock ([`SimClock`]).
//!
//! It is not a BLE stack: no radio timing, MTU negotiation or bonding is simulated, and it is
//! not a clinical model beyond plausible trends.
//!
//! Start from [`scenario::Scenario::load`] and [`scenario::run`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = simulators::scenario::Scenario::load("fixtures/scenarios/copd_stable.toml")?;
//! let dir = std::env::temp_dir().join("rpm-sim-demo");
//! let outcome = simulators::scenario::run(&scenario, &dir.join("queue.db")).await?;
//! println!("{} readings queued", outcome.readings.len());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod clock;
mod device;
pub mod ghs;
mod physiology;
pub mod scenario;

pub use clock::SimClock;
pub use device::{DeviceKind, DeviceLog, Emission, SimDeviceConfig, SimLink, SimWorld};
pub use physiology::{Baseline, Physiology, Rng, Trend, Vitals};
