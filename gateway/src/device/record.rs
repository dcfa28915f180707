//! Blood Pressure Record (0x2B36): how a Blood Pressure Service 1.1 cuff sends stored
//! measurements through RACP, each wrapped with the sequence number the RACP "greater than or
//! equal to" filter works on. (A plain 0x2A35 measurement carries no sequence number.)
//!
//! Layout (GATT Specification Supplement, "Blood Pressure Record"; BLS 1.1 §3.5), one
//! segment per notification/indication:
//!
//! | field                  | size | note                                                 |
//! |------------------------|------|------------------------------------------------------|
//! | segmentation header    | 1    | bit 0 first segment, bit 1 last, bits 2–7 counter    |
//! | sequence number        | 2    | in the first segment only (the record's own header) |
//! | UUID                   | 2    | of the recorded characteristic (0x2A35)              |
//! | recorded value         | n    | that characteristic's bytes                          |
//!
//! The record (sequence number, UUID, value) is split across segments when it does not fit
//! one ATT payload; [`Reassembler`] joins them. The optional E2E-CRC (when the cuff's feature
//! bit 6 says so) is not handled: cuffs that use it are not supported yet.
//!
//! This belongs in [`crate::codec`] next to the other layouts; it lives here because the
//! codec module was closed when it was needed (moving it is a rename).

/// Blood Pressure Record characteristic UUID.
pub const BLOOD_PRESSURE_RECORD: u16 = 0x2B36;

const FIRST: u8 = 0x01;
const LAST: u8 = 0x02;

/// A whole record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BloodPressureRecord {
    /// The device's sequence number for the record.
    pub sequence_number: u16,
    /// The characteristic the value is a value of.
    pub uuid16: u16,
    /// The value's bytes.
    pub value: Vec<u8>,
}

/// A segment that does not fit the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Empty, or a record shorter than its header.
    #[error("record segment truncated")]
    Truncated,
    /// A continuation without a first segment, or a counter that skipped.
    #[error("record segment out of order")]
    OutOfOrder,
    /// More bytes than any record needs.
    #[error("record longer than {MAX_RECORD} bytes")]
    TooLong,
}

/// The longest record accepted (a full BPM is 19 bytes; leave room for newer fields).
pub const MAX_RECORD: usize = 512;

impl BloodPressureRecord {
    /// The record's bytes (sequence number, UUID, value), unsegmented.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.value.len());
        out.extend_from_slice(&self.sequence_number.to_le_bytes());
        out.extend_from_slice(&self.uuid16.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Splits into segments of at most `payload` bytes (ATT MTU − 3), with the rolling
    /// counter starting at `counter`.
    pub fn encode_segments(&self, payload: usize, counter: u8) -> Vec<Vec<u8>> {
        let body = self.body();
        let chunk = payload.saturating_sub(1).max(1);
        let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
        let n = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut header = (counter.wrapping_add(i as u8) & 0x3F) << 2;
                if i == 0 {
                    header |= FIRST;
                }
                if i + 1 == n {
                    header |= LAST;
                }
                let mut seg = Vec::with_capacity(piece.len() + 1);
                seg.push(header);
                seg.extend_from_slice(piece);
                seg
            })
            .collect()
    }
}

/// Joins segments into records.
#[derive(Debug, Default)]
pub struct Reassembler {
    buffer: Vec<u8>,
    next_counter: Option<u8>,
}

impl Reassembler {
    /// Feeds one segment; a whole record when this was its last segment.
    pub fn push(&mut self, segment: &[u8]) -> Result<Option<BloodPressureRecord>, RecordError> {
        let (&header, data) = segment.split_first().ok_or(RecordError::Truncated)?;
        let counter = header >> 2;
        if header & FIRST != 0 {
            self.buffer.clear();
        } else if self.next_counter != Some(counter) {
            self.reset();
            return Err(RecordError::OutOfOrder);
        }
        if self.buffer.len() + data.len() > MAX_RECORD {
            self.reset();
            return Err(RecordError::TooLong);
        }
        self.buffer.extend_from_slice(data);
        self.next_counter = Some((counter + 1) & 0x3F);
        if header & LAST == 0 {
            return Ok(None);
        }
        let body = std::mem::take(&mut self.buffer);
        self.next_counter = None;
        let [s0, s1, u0, u1, value @ ..] = body.as_slice() else {
            return Err(RecordError::Truncated);
        };
        Ok(Some(BloodPressureRecord {
            sequence_number: u16::from_le_bytes([*s0, *s1]),
            uuid16: u16::from_le_bytes([*u0, *u1]),
            value: value.to_vec(),
        }))
    }

    /// Drops a partial record (after a disconnection).
    pub fn reset(&mut self) {
        self.buffer.clear();
        self.next_counter = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_and_join_at_any_payload() {
        let rec = BloodPressureRecord {
            sequence_number: 0x0102,
            uuid16: 0x2A35,
            value: (0u8..19).collect(),
        };
        for payload in [2usize, 5, 20, 244] {
            let segs = rec.encode_segments(payload, 62);
            assert!(segs.iter().all(|s| s.len() <= payload), "{payload}");
            let mut r = Reassembler::default();
            let mut out = None;
            for s in &segs {
                out = r.push(s).expect("in order");
            }
            assert_eq!(out.as_ref(), Some(&rec), "{payload}");
        }
    }

    #[test]
    fn a_lost_segment_is_an_error_not_a_garbled_record() {
        let rec = BloodPressureRecord {
            sequence_number: 7,
            uuid16: 0x2A35,
            value: vec![0; 19],
        };
        let segs = rec.encode_segments(8, 0);
        let mut r = Reassembler::default();
        assert_eq!(r.push(&segs[0]), Ok(None));
        assert_eq!(r.push(&segs[2]), Err(RecordError::OutOfOrder));
        assert_eq!(r.push(&[]), Err(RecordError::Truncated));
        assert_eq!(r.push(&[FIRST | LAST, 1]), Err(RecordError::Truncated));
    }
}
