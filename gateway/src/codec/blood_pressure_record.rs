//! Blood Pressure Record (0x2B36): how a Blood Pressure Service 1.1 cuff sends stored
//! measurements through RACP, each wrapped with the sequence number that the RACP "greater
//! than or equal to" filter works on (a plain 0x2A35 measurement carries none).
//!
//! Layout (GATT Specification Supplement, "Blood Pressure Record"; BLS 1.1 §3.5). Every
//! notification/indication starts with a [segmentation header](super::segment); the
//! segments together carry the record:
//!
//! | field                  | size | note                                                  |
//! |------------------------|------|-------------------------------------------------------|
//! | sequence number        | 2    | the record's number, what RACP filters on             |
//! | UUID                   | 2    | of the recorded characteristic (0x2A35 or 0x2A36)     |
//! | recorded value         | n    | that characteristic's bytes                           |
//!
//! [`BloodPressureRecord::decode`] reads one characteristic value and so needs the record to
//! fit one segment (first and last bits set), which a 19-byte measurement does at the
//! default ATT MTU; the session joins longer records with [`super::segment::Reassembler`]
//! and decodes the joined body with [`RecordBody::decode`]. The optional E2E-CRC (cuff
//! feature bit 6) is not handled: cuffs that use it are not supported yet.

use serde::Serialize;

use super::blood_pressure::{BloodPressureMeasurement, IntermediateCuffPressure};
use super::error::{DecodeError, EncodeError, Quirk};
use super::reader::{Reader, put_u16};
use super::segment::SegmentHeader;
use super::uuid;

/// The longest record body accepted (a full measurement is 19 bytes; room for newer fields).
pub const MAX_RECORD: usize = 512;

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedValue {
    /// A Blood Pressure Measurement (0x2A35).
    BloodPressureMeasurement(BloodPressureMeasurement),
    /// An Intermediate Cuff Pressure (0x2A36).
    IntermediateCuffPressure(IntermediateCuffPressure),
}

/// The record carried by the segments: sequence number and recorded value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordBody {
    /// The device's sequence number for the record.
    pub sequence_number: u16,
    /// The recorded characteristic value.
    pub recorded: RecordedValue,
}

impl RecordBody {
    /// Decodes a joined record body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let sequence_number = r.u16("sequence_number")?;
        let recorded_uuid = r.u16("uuid")?;
        let value = &bytes[4..];
        let recorded = match recorded_uuid {
            uuid::BLOOD_PRESSURE_MEASUREMENT => {
                RecordedValue::BloodPressureMeasurement(BloodPressureMeasurement::decode(value)?)
            }
            uuid::INTERMEDIATE_CUFF_PRESSURE => {
                RecordedValue::IntermediateCuffPressure(IntermediateCuffPressure::decode(value)?)
            }
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "uuid",
                    value: other.into(),
                    reason: "a blood pressure record holds 0x2A35 or 0x2A36",
                });
            }
        };
        Ok(RecordBody {
            sequence_number,
            recorded,
        })
    }

    /// The joined body's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(24);
        put_u16(&mut out, self.sequence_number);
        let (u, value) = match &self.recorded {
            RecordedValue::BloodPressureMeasurement(m) => {
                (uuid::BLOOD_PRESSURE_MEASUREMENT, m.encode()?)
            }
            RecordedValue::IntermediateCuffPressure(m) => {
                (uuid::INTERMEDIATE_CUFF_PRESSURE, m.encode()?)
            }
        };
        put_u16(&mut out, u);
        out.extend_from_slice(&value);
        Ok(out)
    }

    /// The quirks of the recorded value.
    pub fn quirks(&self) -> &[Quirk] {
        match &self.recorded {
            RecordedValue::BloodPressureMeasurement(m) => &m.quirks,
            RecordedValue::IntermediateCuffPressure(m) => &m.quirks,
        }
    }

    fn clear_quirks(&mut self) {
        match &mut self.recorded {
            RecordedValue::BloodPressureMeasurement(m) => m.quirks.clear(),
            RecordedValue::IntermediateCuffPressure(m) => m.quirks.clear(),
        }
    }
}

/// One Blood Pressure Record characteristic value holding a whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BloodPressureRecord {
    /// The segmentation header (first and last set).
    pub segment: SegmentHeader,
    /// The record.
    #[serde(flatten)]
    pub body: RecordBody,
}

impl BloodPressureRecord {
    /// Decodes a value that holds a whole record in one segment.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let header = r.u8("segmentation_header")?;
        let segment = SegmentHeader::from_u8(header);
        if !(segment.first && segment.last) {
            return Err(DecodeError::InvalidValue {
                field: "segmentation_header",
                value: header.into(),
                reason: "one segment of a longer record; join the segments first",
            });
        }
        let body = RecordBody::decode(&bytes[1..])?;
        Ok(BloodPressureRecord { segment, body })
    }

    /// Encodes as one segment.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![SegmentHeader::whole(self.segment.counter).to_u8()];
        out.extend_from_slice(&self.body.encode()?);
        Ok(out)
    }

    /// The quirks of the recorded value.
    pub fn quirks(&self) -> &[Quirk] {
        self.body.quirks()
    }

    /// Drops the quirks.
    pub fn clear_quirks(&mut self) {
        self.body.clear_quirks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::segment::{Reassembler, split};

    fn measurement_bytes() -> Vec<u8> {
        // The `nordic_bpm_full` 0x2A35 vector of fixtures/gatt/blood_pressure.toml.
        hex::decode("1e8a005800780000000411142 93b3c0001 2700".replace(' ', "")).unwrap_or_default()
    }

    #[test]
    fn a_whole_record_decodes_and_re_encodes() {
        let bpm = BloodPressureMeasurement::decode(&measurement_bytes()).expect("vector decodes");
        let body = RecordBody {
            sequence_number: 0x0102,
            recorded: RecordedValue::BloodPressureMeasurement(bpm.clone()),
        };
        let value = BloodPressureRecord {
            segment: SegmentHeader::whole(5),
            body: body.clone(),
        };
        let bytes = value.encode().expect("encodes");
        assert_eq!(&bytes[..5], &[0x17, 0x02, 0x01, 0x35, 0x2A]);
        assert_eq!(BloodPressureRecord::decode(&bytes), Ok(value));
        // Segmented at a small MTU, the joined body decodes to the same record.
        let mut r = Reassembler::new(MAX_RECORD);
        let mut joined = None;
        for s in split(&body.encode().expect("encodes"), 6, 62) {
            joined = r.push(&s).expect("in order");
        }
        assert_eq!(RecordBody::decode(&joined.expect("complete")), Ok(body));
    }

    #[test]
    fn partial_records_and_foreign_uuids_are_refused() {
        let mut bytes = vec![0x01, 1, 0, 0x35, 0x2A];
        bytes.extend_from_slice(&measurement_bytes());
        assert!(matches!(
            BloodPressureRecord::decode(&bytes),
            Err(DecodeError::InvalidValue {
                field: "segmentation_header",
                ..
            })
        ));
        bytes[0] = 0x03;
        bytes[3] = 0x5E;
        assert!(matches!(
            BloodPressureRecord::decode(&bytes),
            Err(DecodeError::InvalidValue { field: "uuid", .. })
        ));
        assert!(matches!(
            BloodPressureRecord::decode(&[0x03, 1]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
