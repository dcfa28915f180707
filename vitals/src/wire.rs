//! The JSON wire envelope (version 1) and the typed reasons a payload is rejected.
//!
//! ```json
//! {"v":1,"gateway":"gw-0001","seq":42,"sent_at":"2026-11-26T07:00:00Z",
//!  "readings":[{"id":"…","seq":1017,"patient":"pk-7f3a","device":{"id":"eui64:…"},
//!               "type":"oximetry_spot_check","device_time":"2026-11-26T06:59:12",
//!               "measured_at":"2026-11-26T06:59:13.2Z","received_at":"2026-11-26T06:59:14Z",
//!               "values":[{"kind":"spo2","value":"94","unit":"%"}],"flags":["from_storage"]}]}
//! ```
//!
//! Numbers are decimal *strings* so precision survives (`"2.10"` stays `2.10`). `seq` on the
//! envelope counts messages per gateway; `seq` on a reading is its queue position. Decoding
//! is total: every input gives an [`Envelope`] or an [`EnvelopeError`] naming the field and
//! the problem, and the payload size is capped before any parsing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::GatewayId;
use crate::reading::{Reading, ReadingError};
use crate::topic::{Channel, Topic, TopicError};

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Largest payload accepted, checked before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// Most readings in one envelope.
pub const MAX_READINGS: usize = 500;

/// A batch of readings from one gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Envelope version, [`ENVELOPE_VERSION`].
    pub v: u32,
    /// The sending gateway; must match the topic it arrived on.
    pub gateway: GatewayId,
    /// Message sequence number, monotonic per gateway across restarts.
    pub seq: u64,
    /// When the gateway sent it (gateway clock).
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    /// The readings, 1..=[`MAX_READINGS`].
    pub readings: Vec<Reading>,
}

/// Why a payload was rejected. Stable snake_case codes used by the dead-letter table, the
/// metrics and the console alike; ingest's own checks (ranges, clocks, the registry) use the
/// same enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Over [`MAX_PAYLOAD_BYTES`].
    PayloadTooLarge,
    /// Not UTF-8.
    NotUtf8,
    /// Not JSON, or JSON cut short.
    MalformedJson,
    /// JSON of the wrong shape: missing, unknown or mistyped field, invalid identifier.
    Schema,
    /// An envelope version this build does not read.
    UnsupportedVersion,
    /// No readings, or more than [`MAX_READINGS`].
    BatchSize,
    /// The topic is not a readings topic of the scheme.
    BadTopic,
    /// The topic, the envelope and its readings do not all name the same gateway.
    GatewayMismatch,
    /// A reading's values are inconsistent (duplicate kind, kind not of the reading's type).
    InvalidReading,
    /// A unit that does not measure the kind.
    UnitMismatch,
    /// A reading's id does not match its content.
    IdMismatch,
    /// A value outside the plausible physiological range.
    OutOfRange,
    /// Measured in the future, or before the device's clock could be trusted.
    ClockSanity,
    /// The gateway is not in the registry.
    UnknownGateway,
    /// The device is not bound to this gateway, or not to this patient.
    UnboundDevice,
    /// The patient key is not in the registry.
    UnknownPatient,
    /// A message the consumer has already processed (an old gateway sequence number).
    Replayed,
    /// The record refused to store readings that passed every check (a permanent database
    /// error); kept here so nothing is dropped while an operator looks.
    StoreFailed,
}

impl RejectReason {
    /// Every reason, for registering metrics up front.
    pub const ALL: [RejectReason; 18] = [
        RejectReason::PayloadTooLarge,
        RejectReason::NotUtf8,
        RejectReason::MalformedJson,
        RejectReason::Schema,
        RejectReason::UnsupportedVersion,
        RejectReason::BatchSize,
        RejectReason::BadTopic,
        RejectReason::GatewayMismatch,
        RejectReason::InvalidReading,
        RejectReason::UnitMismatch,
        RejectReason::IdMismatch,
        RejectReason::OutOfRange,
        RejectReason::ClockSanity,
        RejectReason::UnknownGateway,
        RejectReason::UnboundDevice,
        RejectReason::UnknownPatient,
        RejectReason::Replayed,
        RejectReason::StoreFailed,
    ];

    /// Dense index in `0..RejectReason::ALL.len()`, for per-reason counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The stable code.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::Schema => "schema",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::BatchSize => "batch_size",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::GatewayMismatch => "gateway_mismatch",
            RejectReason::InvalidReading => "invalid_reading",
            RejectReason::UnitMismatch => "unit_mismatch",
            RejectReason::IdMismatch => "id_mismatch",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::ClockSanity => "clock_sanity",
            RejectReason::UnknownGateway => "unknown_gateway",
            RejectReason::UnboundDevice => "unbound_device",
            RejectReason::UnknownPatient => "unknown_patient",
            RejectReason::Replayed => "replayed",
            RejectReason::StoreFailed => "store_failed",
        }
    }
}

impl ReadingError {
    /// The reject reason this error counts under.
    pub fn reason(&self) -> RejectReason {
        match self {
            ReadingError::Unit { .. } => RejectReason::UnitMismatch,
            ReadingError::Range { .. } => RejectReason::OutOfRange,
            ReadingError::IdMismatch { .. } => RejectReason::IdMismatch,
            ReadingError::ForeignGateway { .. } => RejectReason::GatewayMismatch,
            ReadingError::NoValues
            | ReadingError::TooManyValues { .. }
            | ReadingError::DuplicateKind { .. }
            | ReadingError::KindNotInType { .. } => RejectReason::InvalidReading,
        }
    }
}

/// What is wrong with a payload, precisely.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// Over the size cap; nothing was parsed.
    #[error("payload is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not UTF-8.
    #[error("payload is not UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Not well-formed JSON.
    #[error("payload is not valid JSON: {message} (line {line}, column {column})")]
    Syntax {
        /// serde_json's description.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON cut short.
    #[error("payload JSON ends early (line {line}, column {column}): truncated?")]
    Truncated {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Well-formed JSON of the wrong shape.
    #[error("`{path}`: {message}")]
    Schema {
        /// Where, as `readings[3].values[0].unit` (`.` for the top level).
        path: String,
        /// What serde or the identifier's validation said.
        message: String,
    },
    /// A version this build does not read.
    #[error(
        "envelope version {found} is not supported (this build reads version {ENVELOPE_VERSION})"
    )]
    Version {
        /// The version sent.
        found: u64,
    },
    /// No readings, or too many.
    #[error("`readings`: {count} readings; an envelope carries 1..={MAX_READINGS}")]
    BatchSize {
        /// How many were sent.
        count: usize,
    },
    /// Topic and envelope disagree, or the topic is not a readings topic.
    #[error("topic `{topic}`: {problem}")]
    Topic {
        /// The topic (truncated to 200 bytes).
        topic: String,
        /// What is wrong.
        problem: TopicProblem,
    },
    /// One reading is wrong.
    #[error("`readings[{index}]`: {source}")]
    Reading {
        /// Which reading.
        index: usize,
        /// What is wrong with it.
        source: ReadingError,
    },
}

/// How a topic and an envelope disagree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicProblem {
    /// Not a topic of the scheme.
    #[error("{0}")]
    Scheme(#[from] TopicError),
    /// A status or config topic where readings were expected.
    #[error("not a readings topic")]
    NotReadings,
    /// Names a different gateway than the envelope.
    #[error("names gateway `{topic}` but the envelope says `{envelope}`")]
    GatewayMismatch {
        /// From the topic.
        topic: GatewayId,
        /// From the envelope.
        envelope: GatewayId,
    },
}

impl EnvelopeError {
    /// The reject reason this error counts under.
    pub fn reason(&self) -> RejectReason {
        match self {
            EnvelopeError::TooLarge { .. } => RejectReason::PayloadTooLarge,
            EnvelopeError::NotUtf8 { .. } => RejectReason::NotUtf8,
            EnvelopeError::Syntax { .. } | EnvelopeError::Truncated { .. } => {
                RejectReason::MalformedJson
            }
            EnvelopeError::Schema { .. } => RejectReason::Schema,
            EnvelopeError::Version { .. } => RejectReason::UnsupportedVersion,
            EnvelopeError::BatchSize { .. } => RejectReason::BatchSize,
            EnvelopeError::Topic {
                problem: TopicProblem::GatewayMismatch { .. },
                ..
            } => RejectReason::GatewayMismatch,
            EnvelopeError::Topic { .. } => RejectReason::BadTopic,
            EnvelopeError::Reading { source, .. } => source.reason(),
        }
    }
}

impl Envelope {
    /// Serialises to the wire form.
    pub fn encode(&self) -> Vec<u8> {
        // Every field is a plain value, string or list of them: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and fully validates a payload: size, UTF-8, JSON, shape, version, batch size
    /// and every reading's structure and id. Never panics.
    pub fn decode(payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        let text = std::str::from_utf8(payload).map_err(|e| EnvelopeError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        // Most payloads are good: parse them without recording the path to each field, which
        // makes the parse nearly twice as slow (`cargo bench -p vitals`). What fails is parsed
        // again with the path recorded, for the reason and the field to name; both accept
        // exactly the same texts.
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(envelope) => envelope,
            Err(_) => decode_with_path(text)?,
        };
        if u64::from(envelope.v) != u64::from(ENVELOPE_VERSION) {
            return Err(EnvelopeError::Version {
                found: u64::from(envelope.v),
            });
        }
        if envelope.readings.is_empty() || envelope.readings.len() > MAX_READINGS {
            return Err(EnvelopeError::BatchSize {
                count: envelope.readings.len(),
            });
        }
        for (index, reading) in envelope.readings.iter().enumerate() {
            if reading.gateway != envelope.gateway {
                let source = ReadingError::ForeignGateway {
                    reading: reading.gateway.clone(),
                    envelope: envelope.gateway.clone(),
                };
                return Err(EnvelopeError::Reading { index, source });
            }
            reading
                .validate()
                .map_err(|source| EnvelopeError::Reading { index, source })?;
        }
        Ok(envelope)
    }

    /// [`Envelope::decode`], then checks that `topic` is the readings topic of the gateway the
    /// envelope names (a gateway can publish only as itself).
    pub fn decode_from(topic: &str, payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        let topic_err = |problem| EnvelopeError::Topic {
            topic: topic.chars().take(200).collect(),
            problem,
        };
        let parsed = Topic::parse(topic).map_err(|e| topic_err(TopicProblem::Scheme(e)))?;
        if parsed.channel != Channel::Readings {
            return Err(topic_err(TopicProblem::NotReadings));
        }
        let envelope = Envelope::decode(payload)?;
        if envelope.gateway != parsed.gateway {
            return Err(topic_err(TopicProblem::GatewayMismatch {
                topic: parsed.gateway,
                envelope: envelope.gateway,
            }));
        }
        Ok(envelope)
    }
}

/// The slow path of [`Envelope::decode`]: the same parse, recording where it failed.
fn decode_with_path(text: &str) -> Result<Envelope, EnvelopeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope: Envelope = match serde_path_to_error::deserialize(&mut de) {
        Ok(envelope) => envelope,
        Err(err) => return Err(classify(text, err)),
    };
    de.end().map_err(|e| EnvelopeError::Syntax {
        message: "trailing characters after the envelope".into(),
        line: e.line(),
        column: e.column(),
    })?;
    Ok(envelope)
}

fn classify(text: &str, err: serde_path_to_error::Error<serde_json::Error>) -> EnvelopeError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Eof => EnvelopeError::Truncated {
            line: inner.line(),
            column: inner.column(),
        },
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            EnvelopeError::Syntax {
                message: strip_position(&inner.to_string()),
                line: inner.line(),
                column: inner.column(),
            }
        }
        serde_json::error::Category::Data => {
            // A future version may change the shape: say "unsupported version", not "schema".
            if let Some(found) = probe_version(text).filter(|v| *v != u64::from(ENVELOPE_VERSION)) {
                return EnvelopeError::Version { found };
            }
            EnvelopeError::Schema {
                path,
                message: strip_position(&inner.to_string()),
            }
        }
    }
}

fn probe_version(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Probe {
        v: u64,
    }
    serde_json::from_str::<Probe>(text).ok().map(|p| p.v)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
