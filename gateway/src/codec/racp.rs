//! Record Access Control Point (0x2A52): fetching stored records after an offline period.
//!
//! Specifications: Record Access Control Point 1.0 (and its earlier text in Glucose Service
//! 1.0 §3.6 and Blood Pressure Service 1.1 §3.4 / Pulse Oximeter Service 1.0 §3.4), GATT
//! Specification Supplement v8 §3.183.
//!
//! Every value is `op code (u8) | operator (u8) | operand (0..n bytes)`:
//!
//! | op code | meaning                          | direction       | operand                  |
//! |---------|----------------------------------|-----------------|--------------------------|
//! | 1       | Report stored records            | client → server | filter (by operator)     |
//! | 2       | Delete stored records            | client → server | filter                   |
//! | 3       | Abort operation                  | client → server | none, operator Null      |
//! | 4       | Report number of stored records  | client → server | filter                   |
//! | 5       | Number of stored records response| server → client | count `u16`              |
//! | 6       | Response code                    | server → client | request op code, code    |
//!
//! Operators: 0 Null, 1 all records, 2 ≤, 3 ≥, 4 within inclusive range, 5 first record,
//! 6 last record. Operators 2–4 take a filter type byte then one (or, for a range, two)
//! values: filter type 0x01 is the sequence number (`u16`, as BLS and PLXS use it), 0x02 is
//! user-facing time (a 7-byte Date Time, as in GLS).
//!
//! The same type decodes what the gateway receives (responses) and what a simulator receives
//! (requests), and encodes both.
//!
//! Strictness: an operand's width follows from the filter type, so extra bytes after it mean
//! the value was misread and are an error ([`DecodeError::TrailingBytes`]), not a quirk.
//! Leniencies: a count sent as `u32` (as some CGM-derived stacks do) is accepted (quirk); a
//! response whose operator is not Null has it ignored (quirk); a response code value the
//! specification reserves is kept as [`ResponseCode::Reserved`].

use serde::Serialize;

use super::date_time::DateTime;
use super::error::{DecodeError, EncodeError, Quirk};
use super::reader::{Reader, put_u16, put_u32};

/// RACP op codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpCode {
    /// 1.
    ReportStoredRecords,
    /// 2.
    DeleteStoredRecords,
    /// 3.
    AbortOperation,
    /// 4.
    ReportNumberOfStoredRecords,
    /// 5.
    NumberOfStoredRecordsResponse,
    /// 6.
    ResponseCode,
}

impl OpCode {
    /// The op code for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => OpCode::ReportStoredRecords,
            2 => OpCode::DeleteStoredRecords,
            3 => OpCode::AbortOperation,
            4 => OpCode::ReportNumberOfStoredRecords,
            5 => OpCode::NumberOfStoredRecordsResponse,
            6 => OpCode::ResponseCode,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        self as u8 + 1
    }
}

/// RACP operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// 0.
    Null,
    /// 1.
    AllRecords,
    /// 2.
    LessThanOrEqual,
    /// 3.
    GreaterThanOrEqual,
    /// 4.
    WithinRangeInclusive,
    /// 5.
    FirstRecord,
    /// 6.
    LastRecord,
}

impl Operator {
    /// The operator for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Operator::Null,
            1 => Operator::AllRecords,
            2 => Operator::LessThanOrEqual,
            3 => Operator::GreaterThanOrEqual,
            4 => Operator::WithinRangeInclusive,
            5 => Operator::FirstRecord,
            6 => Operator::LastRecord,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        self as u8
    }
}

/// RACP response code values (the second operand byte of op code 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseCode {
    /// 1: the procedure completed.
    Success,
    /// 2.
    OpCodeNotSupported,
    /// 3.
    InvalidOperator,
    /// 4.
    OperatorNotSupported,
    /// 5.
    InvalidOperand,
    /// 6.
    NoRecordsFound,
    /// 7.
    AbortUnsuccessful,
    /// 8.
    ProcedureNotCompleted,
    /// 9.
    OperandNotSupported,
    /// A value the specification reserves (0 or 10..=255).
    Reserved(u8),
}

impl ResponseCode {
    /// The response code for a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => ResponseCode::Success,
            2 => ResponseCode::OpCodeNotSupported,
            3 => ResponseCode::InvalidOperator,
            4 => ResponseCode::OperatorNotSupported,
            5 => ResponseCode::InvalidOperand,
            6 => ResponseCode::NoRecordsFound,
            7 => ResponseCode::AbortUnsuccessful,
            8 => ResponseCode::ProcedureNotCompleted,
            9 => ResponseCode::OperandNotSupported,
            other => ResponseCode::Reserved(other),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            ResponseCode::Success => 1,
            ResponseCode::OpCodeNotSupported => 2,
            ResponseCode::InvalidOperator => 3,
            ResponseCode::OperatorNotSupported => 4,
            ResponseCode::InvalidOperand => 5,
            ResponseCode::NoRecordsFound => 6,
            ResponseCode::AbortUnsuccessful => 7,
            ResponseCode::ProcedureNotCompleted => 8,
            ResponseCode::OperandNotSupported => 9,
            ResponseCode::Reserved(v) => v,
        }
    }
}

/// Filter type 0x01: sequence number.
pub const FILTER_SEQUENCE_NUMBER: u8 = 0x01;
/// Filter type 0x02: user-facing time.
pub const FILTER_USER_FACING_TIME: u8 = 0x02;

/// One filter bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterValue {
    /// Filter type 0x01: record sequence number.
    SequenceNumber(u16),
    /// Filter type 0x02: user-facing time.
    UserFacingTime(DateTime),
}

/// An inclusive range filter (operator 4); both bounds share one filter type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterRange {
    /// Sequence numbers `min..=max`.
    SequenceNumber {
        /// Lower bound.
        min: u16,
        /// Upper bound.
        max: u16,
    },
    /// User-facing times `min..=max`.
    UserFacingTime {
        /// Lower bound.
        min: DateTime,
        /// Upper bound.
        max: DateTime,
    },
}

/// Which records a request applies to (operator and operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFilter {
    /// Operator 1.
    AllRecords,
    /// Operator 2.
    LessThanOrEqual(FilterValue),
    /// Operator 3.
    GreaterThanOrEqual(FilterValue),
    /// Operator 4.
    WithinRange(FilterRange),
    /// Operator 5.
    FirstRecord,
    /// Operator 6.
    LastRecord,
}

/// A Record Access Control Point value: a request or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RacpMessage {
    /// Op code 1: send the matching records as notifications/indications.
    ReportStoredRecords(RecordFilter),
    /// Op code 2: delete the matching records.
    DeleteStoredRecords(RecordFilter),
    /// Op code 3: abort the running procedure.
    AbortOperation,
    /// Op code 4: count the matching records.
    ReportNumberOfStoredRecords(RecordFilter),
    /// Op code 5: the count.
    NumberOfStoredRecords(u32),
    /// Op code 6: how a request ended.
    Response {
        /// The op code of the request this answers (the raw byte: a server may answer an
        /// op code it does not know with `op_code_not_supported`).
        request_op_code: u8,
        /// The outcome.
        response_code: ResponseCode,
    },
}

/// The Record Access Control Point characteristic (0x2A52).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordAccessControlPoint {
    /// The request or response.
    #[serde(flatten)]
    pub message: RacpMessage,
    /// Rules the peer bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

fn invalid(field: &'static str, value: u8, reason: &'static str) -> DecodeError {
    DecodeError::InvalidValue {
        field,
        value: value.into(),
        reason,
    }
}

fn read_filter_value(r: &mut Reader<'_>, filter_type: u8) -> Result<FilterValue, DecodeError> {
    match filter_type {
        FILTER_SEQUENCE_NUMBER => Ok(FilterValue::SequenceNumber(
            r.u16("operand.sequence_number")?,
        )),
        FILTER_USER_FACING_TIME => Ok(FilterValue::UserFacingTime(DateTime::read(
            r,
            "operand.user_facing_time",
        )?)),
        other => Err(invalid(
            "operand.filter_type",
            other,
            "not a known filter type (0x01 sequence number, 0x02 user-facing time)",
        )),
    }
}

fn read_filter(r: &mut Reader<'_>, operator: u8) -> Result<RecordFilter, DecodeError> {
    let op = Operator::from_u8(operator)
        .ok_or_else(|| invalid("operator", operator, "not a defined operator (0..=6)"))?;
    Ok(match op {
        Operator::Null => {
            return Err(invalid(
                "operator",
                operator,
                "Null is only valid for abort and responses",
            ));
        }
        Operator::AllRecords => RecordFilter::AllRecords,
        Operator::FirstRecord => RecordFilter::FirstRecord,
        Operator::LastRecord => RecordFilter::LastRecord,
        Operator::LessThanOrEqual => {
            let t = r.u8("operand.filter_type")?;
            RecordFilter::LessThanOrEqual(read_filter_value(r, t)?)
        }
        Operator::GreaterThanOrEqual => {
            let t = r.u8("operand.filter_type")?;
            RecordFilter::GreaterThanOrEqual(read_filter_value(r, t)?)
        }
        Operator::WithinRangeInclusive => {
            let t = r.u8("operand.filter_type")?;
            match (read_filter_value(r, t)?, read_filter_value(r, t)?) {
                (FilterValue::SequenceNumber(min), FilterValue::SequenceNumber(max)) => {
                    RecordFilter::WithinRange(FilterRange::SequenceNumber { min, max })
                }
                (FilterValue::UserFacingTime(min), FilterValue::UserFacingTime(max)) => {
                    RecordFilter::WithinRange(FilterRange::UserFacingTime { min, max })
                }
                // Both bounds are read with the same filter type.
                _ => return Err(invalid("operand.filter_type", t, "mixed filter types")),
            }
        }
    })
}

impl RecordAccessControlPoint {
    /// A value with no quirks.
    pub fn new(message: RacpMessage) -> Self {
        RecordAccessControlPoint {
            message,
            quirks: Vec::new(),
        }
    }

    /// Decodes a request or a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let op = r.u8("op_code")?;
        let op_code = OpCode::from_u8(op)
            .ok_or_else(|| invalid("op_code", op, "not a defined op code (1..=6)"))?;
        let operator = r.u8("operator")?;
        let message = match op_code {
            OpCode::ReportStoredRecords => {
                RacpMessage::ReportStoredRecords(read_filter(&mut r, operator)?)
            }
            OpCode::DeleteStoredRecords => {
                RacpMessage::DeleteStoredRecords(read_filter(&mut r, operator)?)
            }
            OpCode::ReportNumberOfStoredRecords => {
                RacpMessage::ReportNumberOfStoredRecords(read_filter(&mut r, operator)?)
            }
            OpCode::AbortOperation => {
                if operator != 0 {
                    return Err(invalid(
                        "operator",
                        operator,
                        "abort takes the Null operator",
                    ));
                }
                RacpMessage::AbortOperation
            }
            OpCode::NumberOfStoredRecordsResponse => {
                if operator != 0 {
                    quirks.push(Quirk::NonNullOperator { value: operator });
                }
                let count = if r.remaining() == 4 {
                    quirks.push(Quirk::WideOperand {
                        field: "operand.number_of_records",
                        width: 4,
                    });
                    r.u32("operand.number_of_records")?
                } else {
                    r.u16("operand.number_of_records")?.into()
                };
                RacpMessage::NumberOfStoredRecords(count)
            }
            OpCode::ResponseCode => {
                if operator != 0 {
                    quirks.push(Quirk::NonNullOperator { value: operator });
                }
                let request_op_code = r.u8("operand.request_op_code")?;
                let code = r.u8("operand.response_code")?;
                let response_code = ResponseCode::from_u8(code);
                if let ResponseCode::Reserved(value) = response_code {
                    quirks.push(Quirk::ReservedValue {
                        field: "operand.response_code",
                        value: value.into(),
                    });
                }
                RacpMessage::Response {
                    request_op_code,
                    response_code,
                }
            }
        };
        r.finish_strict("operand")?;
        Ok(RecordAccessControlPoint { message, quirks })
    }

    /// Encodes the wire bytes. A count above `u16::MAX` is written as `u32`.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(17);
        match self.message {
            RacpMessage::ReportStoredRecords(f) => {
                write_request(&mut out, OpCode::ReportStoredRecords, &f)?
            }
            RacpMessage::DeleteStoredRecords(f) => {
                write_request(&mut out, OpCode::DeleteStoredRecords, &f)?
            }
            RacpMessage::ReportNumberOfStoredRecords(f) => {
                write_request(&mut out, OpCode::ReportNumberOfStoredRecords, &f)?
            }
            RacpMessage::AbortOperation => {
                out.extend_from_slice(&[OpCode::AbortOperation.to_u8(), Operator::Null.to_u8()])
            }
            RacpMessage::NumberOfStoredRecords(n) => {
                out.extend_from_slice(&[
                    OpCode::NumberOfStoredRecordsResponse.to_u8(),
                    Operator::Null.to_u8(),
                ]);
                match u16::try_from(n) {
                    Ok(n16) => put_u16(&mut out, n16),
                    Err(_) => put_u32(&mut out, n),
                }
            }
            RacpMessage::Response {
                request_op_code,
                response_code,
            } => out.extend_from_slice(&[
                OpCode::ResponseCode.to_u8(),
                Operator::Null.to_u8(),
                request_op_code,
                response_code.to_u8(),
            ]),
        }
        Ok(out)
    }
}

/// The response code a server (simulator) sends back for a request it could not decode, per
/// RACP 1.0 §3.1.4: an unknown op code is "op code not supported", an undefined or misplaced
/// operator is "invalid operator", an unknown filter type is "operand not supported", and a
/// malformed operand is "invalid operand".
pub fn response_code_for(error: &DecodeError) -> ResponseCode {
    match error {
        DecodeError::InvalidValue {
            field: "op_code", ..
        } => ResponseCode::OpCodeNotSupported,
        DecodeError::InvalidValue {
            field: "operator", ..
        } => ResponseCode::InvalidOperator,
        DecodeError::InvalidValue {
            field: "operand.filter_type",
            ..
        } => ResponseCode::OperandNotSupported,
        _ => ResponseCode::InvalidOperand,
    }
}

fn write_value(out: &mut Vec<u8>, v: &FilterValue) -> Result<(), EncodeError> {
    match v {
        FilterValue::SequenceNumber(n) => put_u16(out, *n),
        FilterValue::UserFacingTime(t) => t.write(out)?,
    }
    Ok(())
}

fn filter_type(v: &FilterValue) -> u8 {
    match v {
        FilterValue::SequenceNumber(_) => FILTER_SEQUENCE_NUMBER,
        FilterValue::UserFacingTime(_) => FILTER_USER_FACING_TIME,
    }
}

fn write_request(out: &mut Vec<u8>, op: OpCode, filter: &RecordFilter) -> Result<(), EncodeError> {
    out.push(op.to_u8());
    match filter {
        RecordFilter::AllRecords => out.push(Operator::AllRecords.to_u8()),
        RecordFilter::FirstRecord => out.push(Operator::FirstRecord.to_u8()),
        RecordFilter::LastRecord => out.push(Operator::LastRecord.to_u8()),
        RecordFilter::LessThanOrEqual(v) => {
            out.extend_from_slice(&[Operator::LessThanOrEqual.to_u8(), filter_type(v)]);
            write_value(out, v)?;
        }
        RecordFilter::GreaterThanOrEqual(v) => {
            out.extend_from_slice(&[Operator::GreaterThanOrEqual.to_u8(), filter_type(v)]);
            write_value(out, v)?;
        }
        RecordFilter::WithinRange(range) => {
            out.push(Operator::WithinRangeInclusive.to_u8());
            match range {
                FilterRange::SequenceNumber { min, max } => {
                    out.push(FILTER_SEQUENCE_NUMBER);
                    put_u16(out, *min);
                    put_u16(out, *max);
                }
                FilterRange::UserFacingTime { min, max } => {
                    out.push(FILTER_USER_FACING_TIME);
                    min.write(out)?;
                    max.write(out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::date_time::tests::any_date_time;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Result<RacpMessage, DecodeError> {
        RecordAccessControlPoint::decode(bytes).map(|r| r.message)
    }

    #[test]
    fn nordic_response_vectors() {
        // NordicSemiconductor/Android-BLE-Common-Library RecordAccessControlPointDataCallbackTest.
        assert_eq!(
            decode(&[6, 0, 1, 1]),
            Ok(RacpMessage::Response {
                request_op_code: 1,
                response_code: ResponseCode::Success
            })
        );
        for (code, expected) in [
            (2, ResponseCode::OpCodeNotSupported),
            (3, ResponseCode::InvalidOperator),
            (4, ResponseCode::OperatorNotSupported),
            (5, ResponseCode::InvalidOperand),
            (6, ResponseCode::NoRecordsFound),
            (7, ResponseCode::AbortUnsuccessful),
            (8, ResponseCode::ProcedureNotCompleted),
            (9, ResponseCode::OperandNotSupported),
        ] {
            assert_eq!(
                decode(&[6, 0, 12, code]),
                Ok(RacpMessage::Response {
                    request_op_code: 12,
                    response_code: expected
                })
            );
        }
        let unknown = RecordAccessControlPoint::decode(&[6, 0, 1, 10]).unwrap();
        assert_eq!(
            unknown.message,
            RacpMessage::Response {
                request_op_code: 1,
                response_code: ResponseCode::Reserved(10)
            }
        );
        assert_eq!(
            decode(&[5, 0, 2, 1]),
            Ok(RacpMessage::NumberOfStoredRecords(258))
        );
        assert_eq!(
            decode(&[5, 0, 4, 3, 2, 1]),
            Ok(RacpMessage::NumberOfStoredRecords(16_909_060))
        );
        // Nordic accepts a one-byte count; a u16 field cut short is an error here.
        assert!(matches!(
            decode(&[5, 0, 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            decode(&[5, 0, 3, 2, 1]),
            Err(DecodeError::TrailingBytes {
                after: "operand",
                count: 1
            })
        );
        assert!(matches!(
            decode(&[1, 1]),
            Ok(RacpMessage::ReportStoredRecords(RecordFilter::AllRecords))
        ));
        assert!(matches!(
            decode(&[6, 1, 1]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn requests_decode_for_simulators() {
        // Nordic's "wrong op code" vector for a *response* parser is a valid request:
        // report stored records with sequence number >= 2.
        assert_eq!(
            decode(&[1, 3, 1, 2, 0]),
            Ok(RacpMessage::ReportStoredRecords(
                RecordFilter::GreaterThanOrEqual(FilterValue::SequenceNumber(2))
            ))
        );
        assert_eq!(
            decode(&[4, 4, 1, 0x0C, 0, 0x9C, 0x01]),
            Ok(RacpMessage::ReportNumberOfStoredRecords(
                RecordFilter::WithinRange(FilterRange::SequenceNumber { min: 12, max: 412 })
            ))
        );
        assert_eq!(decode(&[3, 0]), Ok(RacpMessage::AbortOperation));
        assert_eq!(
            decode(&[3, 1]),
            Err(DecodeError::InvalidValue {
                field: "operator",
                value: 1,
                reason: "abort takes the Null operator"
            })
        );
        assert!(matches!(
            decode(&[1, 0]),
            Err(DecodeError::InvalidValue {
                field: "operator",
                ..
            })
        ));
        assert!(matches!(
            decode(&[1, 7]),
            Err(DecodeError::InvalidValue {
                field: "operator",
                ..
            })
        ));
        assert!(matches!(
            decode(&[1, 3, 9, 0, 0]),
            Err(DecodeError::InvalidValue {
                field: "operand.filter_type",
                ..
            })
        ));
        assert!(matches!(
            decode(&[0, 0]),
            Err(DecodeError::InvalidValue {
                field: "op_code",
                ..
            })
        ));
        assert!(matches!(
            decode(&[1, 1, 0]),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn gateway_requests_encode() {
        let enc = |m| RecordAccessControlPoint::new(m).encode().unwrap();
        assert_eq!(
            enc(RacpMessage::ReportStoredRecords(RecordFilter::AllRecords)),
            [1, 1]
        );
        assert_eq!(
            enc(RacpMessage::ReportStoredRecords(
                RecordFilter::GreaterThanOrEqual(FilterValue::SequenceNumber(0x0102))
            )),
            [1, 3, 1, 2, 1]
        );
        assert_eq!(
            enc(RacpMessage::ReportNumberOfStoredRecords(
                RecordFilter::LastRecord
            )),
            [4, 6]
        );
        assert_eq!(enc(RacpMessage::AbortOperation), [3, 0]);
        assert_eq!(
            enc(RacpMessage::NumberOfStoredRecords(70_000)),
            [5, 0, 0x70, 0x11, 1, 0]
        );
    }

    #[test]
    fn simulator_response_codes_for_bad_requests() {
        let code = |b: &[u8]| response_code_for(&RecordAccessControlPoint::decode(b).unwrap_err());
        assert_eq!(code(&[9, 1]), ResponseCode::OpCodeNotSupported);
        assert_eq!(code(&[1, 9]), ResponseCode::InvalidOperator);
        assert_eq!(code(&[3, 1]), ResponseCode::InvalidOperator);
        assert_eq!(code(&[1, 3, 7, 0, 0]), ResponseCode::OperandNotSupported);
        assert_eq!(code(&[1, 3, 1, 0]), ResponseCode::InvalidOperand);
        assert_eq!(code(&[1, 1, 0]), ResponseCode::InvalidOperand);
    }

    fn any_value() -> impl Strategy<Value = FilterValue> {
        prop_oneof![
            any::<u16>().prop_map(FilterValue::SequenceNumber),
            any_date_time().prop_map(FilterValue::UserFacingTime),
        ]
    }

    fn any_filter() -> impl Strategy<Value = RecordFilter> {
        prop_oneof![
            Just(RecordFilter::AllRecords),
            Just(RecordFilter::FirstRecord),
            Just(RecordFilter::LastRecord),
            any_value().prop_map(RecordFilter::LessThanOrEqual),
            any_value().prop_map(RecordFilter::GreaterThanOrEqual),
            (any::<u16>(), any::<u16>()).prop_map(|(min, max)| RecordFilter::WithinRange(
                FilterRange::SequenceNumber { min, max }
            )),
            (any_date_time(), any_date_time()).prop_map(|(min, max)| RecordFilter::WithinRange(
                FilterRange::UserFacingTime { min, max }
            )),
        ]
    }

    fn any_message() -> impl Strategy<Value = RacpMessage> {
        prop_oneof![
            any_filter().prop_map(RacpMessage::ReportStoredRecords),
            any_filter().prop_map(RacpMessage::DeleteStoredRecords),
            any_filter().prop_map(RacpMessage::ReportNumberOfStoredRecords),
            Just(RacpMessage::AbortOperation),
            any::<u32>().prop_map(RacpMessage::NumberOfStoredRecords),
            (any::<u8>(), 1u8..=9).prop_map(|(request_op_code, c)| RacpMessage::Response {
                request_op_code,
                response_code: ResponseCode::from_u8(c)
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(message in any_message()) {
            let v = RecordAccessControlPoint::new(message);
            let bytes = v.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = RecordAccessControlPoint::decode(&bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.message, message);
        }
    }
}
