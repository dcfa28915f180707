//! The shared vocabulary of the RPM system: what a reading is and how it travels.
//!
//! Every other crate speaks these types. `vitals` knows measurement kinds with their LOINC and
//! ISO/IEEE 11073 codes, UCUM units and plausible ranges ([`Kind`], [`Unit`]); exact decimals
//! that keep a device's precision ([`Decimal`]); the [`Reading`] with its deterministic
//! [`ReadingId`]; and the MQTT topic scheme ([`topic`]) and JSON [`Envelope`] with the
//! [`RejectReason`] codes every rejection is counted under.
//!
//! It does no I/O and reads no clock: it is data and pure functions, so the gateway, ingest,
//! the rules engine and the notifier can all depend on it without dragging anything along.
//!
//! ```
//! use vitals::{Envelope, RejectReason};
//!
//! let err = Envelope::decode(br#"{"v":1,"gateway":"gw-1","seq":1}"#).unwrap_err();
//! assert_eq!(err.reason(), RejectReason::Schema);
//! assert_eq!(err.to_string(), "`.`: missing field `sent_at`");
//! ```

#![deny(missing_docs)]

mod broker;
mod decimal;
mod flags;
mod gateway_msg;
mod ids;
mod kind;
mod reading;
pub mod topic;
mod wire;

pub use broker::{BrokerConfig, BrokerUrl};
pub use decimal::{Decimal, DecimalError};
pub use flags::{AbsentReason, Flag, Flags};
pub use gateway_msg::{
    DeviceBinding, DeviceStatus, GatewayConfig, GatewayState, GatewayStatus, QueueStatus,
    UserBinding,
};
pub use ids::{DeviceId, DeviceIdentity, GatewayId, IdError, PatientKey, ReadingId};
pub use kind::{Kind, KindInfo, MMHG_PER_KPA, RangeError, Unit, UnitError, UnknownName};
pub use reading::{
    MAX_VALUES, Observed, READING_ID_NAMESPACE, Reading, ReadingError, ReadingType, Value,
};
pub use topic::{Channel, Topic, TopicError};
pub use wire::{
    ENVELOPE_VERSION, Envelope, EnvelopeError, MAX_PAYLOAD_BYTES, MAX_READINGS, RejectReason,
    TopicProblem,
};
