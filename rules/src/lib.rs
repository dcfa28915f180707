//! The rules engine: threshold profiles, per-patient state, evaluation and backtesting.
//!
//! Ingest hands every validated reading to an [`Engine`], which checks it against the
//! patient's threshold profile and pushes what it decides — an alert [`Event::Raised`],
//! [`Event::Updated`] or [`Event::Resolved`], or a [`Event::RepeatRequested`] prompt asking
//! the patient to measure again — into a `Vec` the caller owns and reuses. Ingest persists
//! the events with the reading in one transaction and the notifier delivers them.
//! [`Engine::evaluate_batch`] takes several readings at once (a message's worth) with the
//! same result, faster when many patients' state is not in cache; ingest hands it each
//! committed batch's readings through [`Engine::evaluate_readings`].
//!
//! Profiles are data ([`Profile`], TOML files under `fixtures/profiles/`, one per condition,
//! with per-patient [`ProfileOverride`]s merged on top by rule id). [`Profile::build`]
//! validates one into a [`Ruleset`] and refuses, with a message naming the rule and field,
//! anything that could not have been meant: an unknown measurement kind, escalation bands
//! in the wrong order, a clear level on the wrong side of the raise level, N > M, a zero
//! window, a duplicate rule id. Rule kinds: absolute thresholds with hysteresis and
//! escalation bands; drop from a robust personal baseline (median of daily medians) or a
//! rolling personal best; EWMA trend; CUSUM drift; missing data and a silent gateway
//! (checked by [`Engine::tick`]); partial NEWS2 ([`news2`]) on SpO2 scale 1 or 2. Each can
//! require a minimum duration or N-of-M confirmation, and a reading whose device flags
//! question the value never raises an alert, only a repeat prompt.
//!
//! The hot path is in `engine.rs`: patients are dense [`PatientIdx`]es, their state is
//! pre-sized when they are enrolled, and work per reading is bounded by the ruleset, not by
//! history; evaluating a reading allocates nothing unless an alert opens. State is rebuilt
//! after a restart by replaying the record ([`Engine::rebuild`]), and [`backtest`] replays
//! history against a candidate profile to preview its alert load.
//!
//! This crate is **not** for I/O of any kind: it reads no clock (every time is an
//! argument), opens no file or socket, spawns nothing and never blocks. Loading profile files,
//! storing alerts, deciding who is on duty and sending messages belong to ingest and the
//! notifier.
//!
//! ```
//! use rules::{Engine, Event, Measurement, Profile, Sample, Timestamp};
//! use vitals::{Flags, Kind, PatientKey, ReadingId};
//!
//! let profile = Profile::from_toml(r#"
//!     id = "copd"
//!     version = 1
//!
//!     [[rule]]
//!     id = "spo2-low"
//!     kind = "below"
//!     measure = "spo2"
//!     raise = 92
//!     clear = 94
//!     severity = "high"
//!     nurse = "SpO2 {value} % (limit {limit})"
//! "#).expect("valid TOML");
//! let mut engine = Engine::new();
//! let copd = engine.add_profile(profile.build().expect("valid profile"));
//! let key = PatientKey::new("pt-1").expect("valid key");
//! let pt = engine.add_patient(key, copd, Timestamp(0)).expect("new patient");
//!
//! let mut events = Vec::new();
//! let values = [Measurement { kind: Kind::Spo2, value: 91.0 }];
//! let reading: ReadingId = "6b1f4c1e-93a2-4f0e-9d7b-52c10e3a77d1".parse().expect("uuid");
//! let sample = Sample { reading, at: Timestamp(60_000), flags: Flags::EMPTY, values: &values };
//! engine.evaluate(pt, &sample, &mut events).expect("enrolled");
//! let Event::Raised(alert) = &events[0] else { panic!("expected a raise") };
//! let text = engine.describe(alert).expect("known rule");
//! assert_eq!(text.nurse, "SpO2 91 % (limit 92)");
//! assert_eq!(text.profile, "copd@1");
//! ```
#![deny(missing_docs)]

mod backtest;
mod baseline;
mod engine;
mod event;
pub mod news2;
mod profile;
mod replay;

pub use backtest::{
    BACKTEST_TICK_MS, BacktestAlert, BacktestProgress, BacktestReport, PROGRESS_EVERY, PatientLoad,
    backtest,
};
pub use baseline::{ReferencePoint, ReferenceSeries, reference_series};
pub use engine::{Engine, EngineError, Measurement, PatientState, Sample, TODAY_VALUES};
pub use event::{
    Alert, AlertText, Context, Event, Evidence, EvidenceItem, MAX_EVIDENCE, PatientIdx, ProfileIdx,
    RepeatReason, RepeatRequest, RuleIdx, Timestamp,
};
pub use profile::{
    AlsoSpec, Audience, BandSpec, Check, ConfirmSpec, Direction, Limit, MAX_CONFIRM, MAX_DAYS,
    MAX_RULES, PLACEHOLDERS, Persistence, Profile, ProfileError, ProfileOverride, Rule, RuleKind,
    RuleSpec, Ruleset, Severity,
};
