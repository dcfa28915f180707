//! The one-byte segmentation header that the Blood Pressure Record (0x2B36) and the Generic
//! Health Sensor observation characteristics (0x2B8B, 0x2BDD) put in front of every
//! notification/indication, and the joining of segments into the value they carry.
//!
//! Header layout (GATT Specification Supplement, "Blood Pressure Record" and "Live Health
//! Observations"; the same bit layout is written by STMicroelectronics' GHS firmware,
//! `STM32WBA-BLE-GenericHealthSensor/.../ghs_app.c`, `ghsapp_send_segment`):
//!
//! | bits | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 0    | first segment of the value                                     |
//! | 1    | last segment of the value                                      |
//! | 2–7  | rolling segment counter (0..=63, +1 per segment, wraps to 0)   |
//!
//! A value that fits one ATT payload is one segment with both bits set. [`split`] cuts a
//! value into segments; [`Reassembler`] joins them and rejects a lost or reordered segment
//! rather than gluing a garbled value together.

use serde::Serialize;

const FIRST: u8 = 0x01;
const LAST: u8 = 0x02;

/// A decoded segmentation header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SegmentHeader {
    /// The first segment of the value.
    pub first: bool,
    /// The last segment of the value.
    pub last: bool,
    /// The rolling counter, 0..=63.
    pub counter: u8,
}

impl SegmentHeader {
    /// A value in one segment.
    pub const fn whole(counter: u8) -> Self {
        SegmentHeader {
            first: true,
            last: true,
            counter: counter & 0x3F,
        }
    }

    /// From the wire byte.
    pub const fn from_u8(b: u8) -> Self {
        SegmentHeader {
            first: b & FIRST != 0,
            last: b & LAST != 0,
            counter: b >> 2,
        }
    }

    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        ((self.counter & 0x3F) << 2)
            | if self.first { FIRST } else { 0 }
            | if self.last { LAST } else { 0 }
    }
}

/// A segment that does not fit the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// An empty notification (no header).
    #[error("segment without a header byte")]
    Empty,
    /// A continuation without a first segment, or a counter that skipped.
    #[error("segment out of order (expected counter {expected:?}, got {got})")]
    OutOfOrder {
        /// The counter the next segment should carry (`None`: a first segment was due).
        expected: Option<u8>,
        /// The counter it carried.
        got: u8,
    },
    /// More bytes than the value may have.
    #[error("segmented value longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
}

/// Splits `value` into segments of at most `payload` bytes (ATT MTU − 3, at least 2), the
/// counter starting at `counter`.
pub fn split(value: &[u8], payload: usize, counter: u8) -> Vec<Vec<u8>> {
    let chunk = payload.saturating_sub(1).max(1);
    let pieces: Vec<&[u8]> = if value.is_empty() {
        vec![&[][..]]
    } else {
        value.chunks(chunk).collect()
    };
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let header = SegmentHeader {
                first: i == 0,
                last: i + 1 == n,
                // Wraps: the counter is six bits.
                counter: counter.wrapping_add(i as u8) & 0x3F,
            };
            let mut seg = Vec::with_capacity(piece.len() + 1);
            seg.push(header.to_u8());
            seg.extend_from_slice(piece);
            seg
        })
        .collect()
}

/// Joins segments into values. Bounded: a value longer than `max` bytes is refused.
#[derive(Debug)]
pub struct Reassembler {
    buffer: Vec<u8>,
    next_counter: Option<u8>,
    max: usize,
}

impl Reassembler {
    /// Joins values of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Reassembler {
            buffer: Vec::new(),
            next_counter: None,
            max,
        }
    }

    /// Feeds one segment; the whole value when this was its last segment.
    pub fn push(&mut self, segment: &[u8]) -> Result<Option<Vec<u8>>, SegmentError> {
        let (&header, data) = segment.split_first().ok_or(SegmentError::Empty)?;
        let h = SegmentHeader::from_u8(header);
        if h.first {
            // A first segment starts over, dropping any partial value (its end was lost).
            self.buffer.clear();
        } else if self.next_counter != Some(h.counter) {
            let expected = self.next_counter;
            self.reset();
            return Err(SegmentError::OutOfOrder {
                expected,
                got: h.counter,
            });
        }
        if self.buffer.len() + data.len() > self.max {
            self.reset();
            return Err(SegmentError::TooLong { max: self.max });
        }
        self.buffer.extend_from_slice(data);
        self.next_counter = Some((h.counter + 1) & 0x3F);
        if !h.last {
            return Ok(None);
        }
        self.next_counter = None;
        Ok(Some(std::mem::take(&mut self.buffer)))
    }

    /// Drops a partial value (after a disconnection).
    pub fn reset(&mut self) {
        self.buffer.clear();
        self.next_counter = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_bits_match_the_st_firmware_layout() {
        // ghs_app.c: first | last << 1 | counter << 2.
        assert_eq!(SegmentHeader::whole(1).to_u8(), 0x07);
        assert_eq!(
            SegmentHeader::from_u8(0x06),
            SegmentHeader {
                first: false,
                last: true,
                counter: 1
            }
        );
    }

    #[test]
    fn a_lost_segment_is_an_error_not_a_garbled_value() {
        let segs = split(&[7u8; 19], 8, 0);
        assert_eq!(segs.len(), 3);
        let mut r = Reassembler::new(512);
        assert_eq!(r.push(&segs[0]), Ok(None));
        assert_eq!(
            r.push(&segs[2]),
            Err(SegmentError::OutOfOrder {
                expected: Some(1),
                got: 2
            })
        );
        assert_eq!(r.push(&[]), Err(SegmentError::Empty));
        // A continuation with nothing started.
        assert!(matches!(
            r.push(&segs[1]),
            Err(SegmentError::OutOfOrder { expected: None, .. })
        ));
        let mut small = Reassembler::new(4);
        assert_eq!(
            small.push(&[0x03, 1, 2, 3, 4, 5]),
            Err(SegmentError::TooLong { max: 4 })
        );
    }

    proptest! {
        #[test]
        fn values_split_and_join_at_any_payload_and_counter(
            value in prop::collection::vec(any::<u8>(), 0..300),
            payload in 2usize..64,
            counter in 0u8..64,
        ) {
            let segs = split(&value, payload, counter);
            prop_assert!(segs.iter().all(|s| s.len() <= payload));
            let mut r = Reassembler::new(512);
            let mut out = None;
            for s in &segs {
                prop_assert!(out.is_none());
                out = r.push(s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(out, Some(value));
        }

        #[test]
        fn arbitrary_segments_never_panic(segs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20)) {
            let mut r = Reassembler::new(64);
            for s in &segs {
                if let Ok(Some(v)) = r.push(s) {
                    prop_assert!(v.len() <= 64);
                }
            }
        }
    }
}
