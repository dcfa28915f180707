//! [`Reading`]: one measurement event from one device, as it travels and as it is stored.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::decimal::Decimal;
use crate::flags::{AbsentReason, Flags};
use crate::ids::{DeviceIdentity, GatewayId, PatientKey, ReadingId};
use crate::kind::{Kind, RangeError, Unit, UnitError};

/// What sort of measurement event a reading is. One event can carry several values (a cuff
/// gives systolic, diastolic, mean and pulse at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingType {
    /// Blood Pressure Measurement (0x2A35).
    BloodPressure,
    /// PLX Spot-Check Measurement (0x2A5E).
    OximetrySpotCheck,
    /// PLX Continuous Measurement (0x2A5F).
    OximetryContinuous,
    /// A spirometry manoeuvre (FEV1, FVC, PEF).
    Spirometry,
    /// Body temperature.
    Temperature,
}

impl ReadingType {
    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReadingType::BloodPressure => "blood_pressure",
            ReadingType::OximetrySpotCheck => "oximetry_spot_check",
            ReadingType::OximetryContinuous => "oximetry_continuous",
            ReadingType::Spirometry => "spirometry",
            ReadingType::Temperature => "temperature",
        }
    }

    /// Whether a value of `kind` can belong to a reading of this type.
    pub fn allows(self, kind: Kind) -> bool {
        use Kind::*;
        match self {
            ReadingType::BloodPressure => matches!(
                kind,
                Systolic | Diastolic | MeanArterialPressure | PulseRate
            ),
            ReadingType::OximetrySpotCheck | ReadingType::OximetryContinuous => {
                matches!(kind, Spo2 | PulseRate | PulseAmplitudeIndex)
            }
            ReadingType::Spirometry => matches!(kind, Fev1 | Fvc | Fev1FvcRatio | Pef),
            ReadingType::Temperature => kind == BodyTemperature,
        }
    }
}

/// A measured value, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// A number, with its precision.
    Number(Decimal),
    /// The device sent a special value instead of a number.
    Absent(AbsentReason),
}

impl Value {
    /// The number, if there is one.
    pub fn number(self) -> Option<Decimal> {
        match self {
            Value::Number(d) => Some(d),
            Value::Absent(_) => None,
        }
    }
}

/// One value of one kind in a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ObservedWire", into = "ObservedWire")]
pub struct Observed {
    /// What was measured.
    pub kind: Kind,
    /// The value, in `unit`.
    pub value: Value,
    /// The unit the value is in (the device's unit on the wire; canonical once normalised).
    pub unit: Unit,
}

/// Wire form: `{"kind":"spo2","value":"97","unit":"%"}` or
/// `{"kind":"spo2","absent":"nan","unit":"%"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservedWire {
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    absent: Option<AbsentReason>,
    unit: Unit,
}

impl From<Observed> for ObservedWire {
    fn from(o: Observed) -> Self {
        let (value, absent) = match o.value {
            Value::Number(d) => (Some(d), None),
            Value::Absent(r) => (None, Some(r)),
        };
        ObservedWire {
            kind: o.kind,
            value,
            absent,
            unit: o.unit,
        }
    }
}

impl TryFrom<ObservedWire> for Observed {
    type Error = &'static str;

    fn try_from(w: ObservedWire) -> Result<Self, Self::Error> {
        let value = match (w.value, w.absent) {
            (Some(d), None) => Value::Number(d),
            (None, Some(r)) => Value::Absent(r),
            (Some(_), Some(_)) => return Err("has both `value` and `absent`; send one"),
            (None, None) => return Err("needs `value` (a decimal string) or `absent` (a reason)"),
        };
        Ok(Observed {
            kind: w.kind,
            value,
            unit: w.unit,
        })
    }
}

/// One measurement event: who, which device, through which gateway, when, what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// Deterministic id; see [`Reading::compute_id`].
    pub id: ReadingId,
    /// The gateway's queue sequence number for this reading (monotonic per gateway).
    pub seq: u64,
    /// The gateway that received it from the device.
    pub gateway: GatewayId,
    /// Pseudonymous patient key.
    pub patient: PatientKey,
    /// The device that measured.
    pub device: DeviceIdentity,
    /// The user slot on a multi-user device (a BP cuff's user id), when it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_index: Option<u8>,
    /// What sort of measurement.
    #[serde(rename = "type")]
    pub reading_type: ReadingType,
    /// The timestamp exactly as the device reported it (its own clock, no zone); `None` when
    /// the device sends none (continuous oximetry) or sent "not known".
    #[serde(default, skip_serializing_if = "Option::is_none", with = "naive_time")]
    pub device_time: Option<PrimitiveDateTime>,
    /// When it was measured, on the gateway's clock (device time corrected by the offset the
    /// gateway measured, or the receive time when the device has no clock).
    #[serde(with = "time::serde::rfc3339")]
    pub measured_at: OffsetDateTime,
    /// When the gateway received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The values, at most one per kind.
    pub values: Vec<Observed>,
    /// Device-reported conditions.
    #[serde(default, skip_serializing_if = "Flags::is_empty")]
    pub flags: Flags,
}

/// The most values a single reading can carry.
pub const MAX_VALUES: usize = Kind::COUNT;

/// Namespace of reading ids (UUID v5 names are `rpm-reading/1|…`, see [`Reading::id_name`]).
pub const READING_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1f_4c1e_93a2_4f0e_9d7b_52c1_0e3a_77d1);

/// Something wrong inside one reading.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReadingError {
    /// No values at all.
    #[error("a reading needs at least one value")]
    NoValues,
    /// Too many values.
    #[error("{count} values; a reading carries at most {max}")]
    TooManyValues {
        /// How many were sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The same kind twice.
    #[error("`values[{index}]`: {kind} appears twice")]
    DuplicateKind {
        /// Index of the second occurrence.
        index: usize,
        /// The kind.
        kind: Kind,
    },
    /// A kind this reading type cannot carry.
    #[error("`values[{index}]`: a {reading_type} reading cannot carry {kind}", reading_type = reading_type.as_str())]
    KindNotInType {
        /// Index of the value.
        index: usize,
        /// The kind.
        kind: Kind,
        /// The reading type.
        reading_type: ReadingType,
    },
    /// A unit that does not measure the kind.
    #[error("`values[{index}]`: {source}")]
    Unit {
        /// Index of the value.
        index: usize,
        /// What is wrong.
        source: UnitError,
    },
    /// Outside the plausible range.
    #[error("`values[{index}]`: {source}")]
    Range {
        /// Index of the value.
        index: usize,
        /// What is wrong.
        source: RangeError,
    },
    /// The id does not match the content.
    #[error("`id` is {found} but the content gives {expected}")]
    IdMismatch {
        /// What the content gives.
        expected: ReadingId,
        /// What was sent.
        found: ReadingId,
    },
    /// The reading names another gateway than the envelope carrying it.
    #[error("`gateway` is `{reading}` but the envelope is from `{envelope}`")]
    ForeignGateway {
        /// From the reading.
        reading: GatewayId,
        /// From the envelope.
        envelope: GatewayId,
    },
}

impl Reading {
    /// The UUID v5 name the id is derived from. Modelled on the HL7 PHD Implementation Guide's
    /// Observation identifier (device ~ type ~ time ~ values), it holds only what the device
    /// itself said, so the same measurement re-sent, re-read through RACP, or re-published
    /// after a crash gets the same id:
    ///
    /// `rpm-reading/1|{device id}|{type}|{user or -}|{time}|{kind}={value or !reason}{unit};…`
    ///
    /// `{time}` is `d:` and the raw device timestamp when the device sent one, else `g:` and
    /// `measured_at` in Unix nanoseconds (stamped once by the gateway before the reading is
    /// queued, so it too is stable across re-sends). Values are in canonical kind order.
    pub fn id_name(&self) -> String {
        let mut name = String::with_capacity(160);
        let user = self
            .user_index
            .map_or_else(|| "-".to_owned(), |u| u.to_string());
        let _ = write!(
            name,
            "rpm-reading/1|{}|{}|{}|",
            self.device.id,
            self.reading_type.as_str(),
            user
        );
        match self.device_time {
            Some(t) => {
                let _ = write!(
                    name,
                    "d:{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                );
            }
            None => {
                let _ = write!(name, "g:{}", self.measured_at.unix_timestamp_nanos());
            }
        }
        name.push('|');
        let mut values: Vec<&Observed> = self.values.iter().collect();
        values.sort_by_key(|o| o.kind);
        for o in values {
            let _ = match o.value {
                Value::Number(d) => write!(name, "{}={}{};", o.kind, d, o.unit),
                Value::Absent(r) => write!(name, "{}=!{}{};", o.kind, r.as_str(), o.unit),
            };
        }
        name
    }

    /// The deterministic id of this content: a UUID version 8 (RFC 9562's custom layout)
    /// laid out like a version 7, so ids sort by the time the device gave:
    ///
    /// - bits 0–47: that time in Unix milliseconds, big-endian (the raw device timestamp read
    ///   as UTC when the device sent one, else `measured_at`; the same time
    ///   [`Reading::id_name`] names; clamped to 0 before 1970);
    /// - the version (8) and variant bits;
    /// - the other 74 bits: the UUID v5 (SHA-1) of [`Reading::id_name`] in
    ///   [`READING_ID_NAMESPACE`], the bits of it that the fields above leave.
    ///
    /// Same content, same id, as before; but the record's unique indexes on the id now take
    /// new readings near their right-hand edge instead of on pages all over the B-tree, which
    /// is what made every batch write most of those pages again (SQLite's WAL took a whole
    /// page per touched page, per commit; PostgreSQL's full-page writes the same).
    /// Readings of layout 1 ([`Reading::compute_id_v5`]) still validate.
    pub fn compute_id(&self) -> ReadingId {
        self.time_ordered(self.compute_id_v5())
    }

    /// The layout-2 id of this reading given its layout-1 id `v5` (whose hash it keeps).
    fn time_ordered(&self, v5: ReadingId) -> ReadingId {
        let millis: i128 = match self.device_time {
            Some(t) => i128::from(t.assume_utc().unix_timestamp()) * 1000,
            None => self.measured_at.unix_timestamp_nanos() / 1_000_000,
        };
        // Before 1970 (a device clock reset and worse): 0, still deterministic.
        let millis = u64::try_from(millis.max(0)).unwrap_or(u64::MAX);
        ReadingId::time_ordered(millis, *v5.0.as_bytes())
    }

    /// The id of layout 1 (until December 2026): the UUID v5 of [`Reading::id_name`]. A
    /// gateway queues readings with their ids; what an older gateway queued arrives with this
    /// one, and [`Reading::validate`] accepts it, so upgrading loses nothing.
    pub fn compute_id_v5(&self) -> ReadingId {
        ReadingId(uuid::Uuid::new_v5(
            &READING_ID_NAMESPACE,
            self.id_name().as_bytes(),
        ))
    }

    /// Sets `id` from the content; the gateway calls this once, before queueing.
    #[must_use]
    pub fn with_computed_id(mut self) -> Self {
        self.id = self.compute_id();
        self
    }

    /// Structural checks: values present, kinds unique and fitting the type, units fitting the
    /// kinds, and the id matching the content. Ranges and clocks are ingest's policy.
    pub fn validate(&self) -> Result<(), ReadingError> {
        self.validate_values()?;
        // One hash for both layouts.
        let v5 = self.compute_id_v5();
        let expected = self.time_ordered(v5);
        if self.id != expected && self.id != v5 {
            return Err(ReadingError::IdMismatch {
                expected,
                found: self.id,
            });
        }
        Ok(())
    }

    /// [`Reading::validate`] without the id: for whoever has just set the id from the content
    /// ([`Reading::with_computed_id`], the gateway), where checking it would hash the reading
    /// a second time to compare it with itself.
    pub fn validate_values(&self) -> Result<(), ReadingError> {
        if self.values.is_empty() {
            return Err(ReadingError::NoValues);
        }
        if self.values.len() > MAX_VALUES {
            return Err(ReadingError::TooManyValues {
                count: self.values.len(),
                max: MAX_VALUES,
            });
        }
        let mut seen = [false; Kind::COUNT];
        for (index, o) in self.values.iter().enumerate() {
            if std::mem::replace(&mut seen[o.kind.index()], true) {
                return Err(ReadingError::DuplicateKind {
                    index,
                    kind: o.kind,
                });
            }
            if !self.reading_type.allows(o.kind) {
                return Err(ReadingError::KindNotInType {
                    index,
                    kind: o.kind,
                    reading_type: self.reading_type,
                });
            }
            // An absent value still names a unit, and it must fit the kind too.
            let probe = o.value.number().unwrap_or(Decimal::from_int(0));
            o.kind
                .to_canonical(probe, o.unit)
                .map_err(|source| ReadingError::Unit { index, source })?;
        }
        Ok(())
    }

    /// Values converted to each kind's canonical unit (kPa → mm[Hg], mL → L, …), checked
    /// against the plausible ranges. The id is not touched: it names what the device said.
    pub fn normalized(&self) -> Result<Vec<Observed>, ReadingError> {
        self.values
            .iter()
            .enumerate()
            .map(|(index, o)| {
                let value = match o.value {
                    Value::Number(d) => {
                        let c = o
                            .kind
                            .to_canonical(d, o.unit)
                            .map_err(|source| ReadingError::Unit { index, source })?;
                        o.kind
                            .check_plausible(c.to_f64())
                            .map_err(|source| ReadingError::Range { index, source })?;
                        Value::Number(c)
                    }
                    absent => absent,
                };
                Ok(Observed {
                    kind: o.kind,
                    value,
                    unit: o.kind.unit(),
                })
            })
            .collect()
    }

    /// The value of `kind`, if the reading carries a number for it.
    pub fn value_of(&self, kind: Kind) -> Option<Decimal> {
        self.values
            .iter()
            .find(|o| o.kind == kind)
            .and_then(|o| o.value.number())
    }
}

/// A device timestamp with no zone, as `2026-11-26T06:59:00`.
mod naive_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::PrimitiveDateTime;
    use time::macros::format_description;

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

    pub fn serialize<S: Serializer>(
        t: &Option<PrimitiveDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => {
                let text = t.format(FORMAT).map_err(serde::ser::Error::custom)?;
                s.serialize_some(&text)
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PrimitiveDateTime>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.map(|t| {
            PrimitiveDateTime::parse(&t, FORMAT).map_err(|e| {
                serde::de::Error::custom(format_args!("expected YYYY-MM-DDThh:mm:ss: {e}"))
            })
        })
        .transpose()
    }
}
