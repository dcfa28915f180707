//! Errors and quirks shared by every codec.
//!
//! A [`DecodeError`] means the bytes cannot be read as the characteristic at all: a field is
//! cut short, a value is outside what the specification allows, or the UUID is not one this
//! crate knows. A [`Quirk`] means the bytes were read, but a device bent a rule on the way
//! (a reserved bit set, a byte too many); the decoded value carries its quirks so the
//! gateway can count them without losing the reading.

use serde::Serialize;

use super::ieee11073::FloatRangeError;

/// Why bytes could not be decoded. Small and allocation-free: it sits on the per-reading path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value ended before a field the flags (or the fixed layout) require.
    #[error("truncated: {field} needs {needed} byte(s) at offset {offset}, only {got} left")]
    Truncated {
        /// The field that did not fit, e.g. `"systolic"`.
        field: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
        /// Bytes the field takes.
        needed: usize,
        /// Bytes that were left.
        got: usize,
    },
    /// Bytes follow a field whose width they would change the meaning of (only where extra
    /// bytes are not harmless, e.g. a Record Access Control Point operand).
    #[error("{count} unexpected trailing byte(s) after {after}")]
    TrailingBytes {
        /// The last field read.
        after: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A field holds a value the specification does not allow.
    #[error("invalid {field} value {value}: {reason}")]
    InvalidValue {
        /// The offending field.
        field: &'static str,
        /// The raw value read.
        value: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No codec is known for this 16-bit characteristic UUID.
    #[error("unknown characteristic 0x{0:04X}")]
    UnknownCharacteristic(u16),
}

/// Why a value could not be encoded (a simulator or the gateway built something the wire
/// format cannot carry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An IEEE-11073 number does not fit the SFLOAT or FLOAT it must be written as.
    #[error("{field}: {source}")]
    Float {
        /// The field being encoded.
        field: &'static str,
        /// What does not fit.
        source: FloatRangeError,
    },
    /// A field holds a value the specification does not allow.
    #[error("invalid {field} value {value}: {reason}")]
    InvalidValue {
        /// The offending field.
        field: &'static str,
        /// The value (widened).
        value: i64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A rule a device bent that the decoder tolerated. Each leniency is documented where it is
/// applied. Encoding writes what the specification says and so drops quirks, except where
/// the value itself cannot be written otherwise (a reserved RACP response code, a record
/// count above `u16::MAX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "quirk", rename_all = "snake_case")]
pub enum Quirk {
    /// Bits the specification reserves for future use were set; they were ignored.
    ReservedBitsSet {
        /// The flags or status field.
        field: &'static str,
        /// The reserved bits that were set.
        bits: u32,
    },
    /// A field held a value the specification reserves; it was read as documented on the
    /// field (usually "unknown").
    ReservedValue {
        /// The field.
        field: &'static str,
        /// The raw value.
        value: u32,
    },
    /// Bytes followed the last field the flags announced (a newer spec revision, or a field
    /// the flags deny); they were ignored.
    TrailingBytes {
        /// How many bytes were ignored.
        count: usize,
    },
    /// A field the specification says must be NaN (unused) held something else; it was
    /// ignored.
    UnusedFieldNotNan {
        /// The field.
        field: &'static str,
    },
    /// A string ended in NUL padding, which was stripped.
    NulPaddingStripped {
        /// How many NUL bytes were stripped.
        count: usize,
    },
    /// A string was not valid UTF-8; invalid sequences were replaced with U+FFFD.
    InvalidUtf8,
    /// A count was sent wider than the specification's uint16 (e.g. uint32).
    WideOperand {
        /// The field.
        field: &'static str,
        /// Bytes used on the wire.
        width: usize,
    },
    /// A response carried an operator other than Null; it was ignored.
    NonNullOperator {
        /// The operator value.
        value: u8,
    },
}
