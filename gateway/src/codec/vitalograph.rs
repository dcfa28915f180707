//! Vitalograph Lung Monitor BT result packets: a vendor serial format, the first spirometer
//! driver behind [`crate::device::spirometry::SpirometerDriver`].
//!
//! # Source
//!
//! The Danish OpenTele telehealth Android client parses this device:
//! `silverbullet-dk/opentele-client-android`,
//! `questionnaire-mainapp/src/dk/silverbullet/telemed/device/vitalographlungmonitor/`
//! (`FevMeasurementPacket.java`: the fields; `packet/states/*.java` and
//! `LungMonitorPacketCollector.java`: the framing, checksum and ACK/NAK;
//! `VitalographLungMonitorController.java`: the transport). Only the layout is taken from
//! it; no vector is published there, so the fixtures are built from that layout.
//!
//! # Frame
//!
//! `STX (0x02) | ASCII body | ETX (0x03) | BCC`, where BCC is the XOR of every byte from STX
//! to ETX inclusive. The receiver answers ACK (0x06) for a good frame and NAK (0x15) for a
//! bad checksum. The body is 56 fixed-width ASCII characters:
//!
//! | chars | field                          | decoded as                               |
//! |-------|--------------------------------|------------------------------------------|
//! | 1     | `F`                            | packet type (the only one known)          |
//! | 2     | `TD`                           | test data                                |
//! | 10    | device id                      | text (the device's serial)               |
//! | 3     | FEV1                           | centilitres → litres, 2 decimals         |
//! | 3     | FEV6                           | centilitres → litres                      |
//! | 3     | FEV1/FEV6                      | hundredths → ratio                        |
//! | 3     | FEF25–75                       | hundredths → L/s                          |
//! | 3     | FEV1 personal best             | centilitres → litres                      |
//! | 3     | FEV1 % of personal best        | percent                                  |
//! | 3 × 3 | green, yellow, orange zones    | as sent                                  |
//! | 6 × 2 | YY MM DD hh mm ss              | device clock, year 2000 + YY             |
//! | 1     | bad-test flag                  | `1`: the manoeuvre was not a good test   |
//! | 3     | software version               | number                                   |
//!
//! **Transport.** OpenTele opens the Lung Monitor BT over Bluetooth *Classic* RFCOMM (the
//! Serial Port Profile, UUID 0x1101), which a BLE central (btleplug) cannot open. On BLE the
//! same bytes arrive through whatever serial-over-BLE bridge carries them, in chunks of any
//! size: [`FrameReader`] finds frames in such a byte stream. The bridge's service and
//! characteristic are configuration, not something this crate could confirm.
//!
//! The Lung Monitor measures FEV1 and **FEV6**, not FVC: FEV6 is not reported as FVC.

use serde::Serialize;

use super::date_time::DateTime;
use super::error::{DecodeError, EncodeError};
use super::ieee11073::Float11073;

/// Start of a frame.
pub const STX: u8 = 0x02;
/// End of the body.
pub const ETX: u8 = 0x03;
/// The receiver's "frame good" answer.
pub const ACK: u8 = 0x06;
/// The receiver's "checksum bad" answer.
pub const NAK: u8 = 0x15;
/// Characters in a result body.
pub const BODY_LEN: usize = 56;
/// Bytes in a result frame.
pub const FRAME_LEN: usize = BODY_LEN + 3;

/// One result packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LungMonitorResult {
    /// The device id the packet carries (ten characters, trailing spaces trimmed).
    pub device_id: String,
    /// FEV1, litres.
    pub fev1_l: Float11073,
    /// FEV6, litres.
    pub fev6_l: Float11073,
    /// FEV1/FEV6.
    pub fev1_fev6_ratio: Float11073,
    /// FEF25–75, litres per second.
    pub fef25_75_l_s: Float11073,
    /// FEV1 personal best, litres.
    pub fev1_personal_best_l: Float11073,
    /// FEV1 as a percentage of the personal best.
    pub fev1_percent_of_best: u16,
    /// Green, yellow and orange zone limits, as sent.
    pub zones: [u16; 3],
    /// The device clock at the test.
    pub timestamp: DateTime,
    /// False when the device flagged the manoeuvre as not a good test.
    pub good_test: bool,
    /// Device software version.
    pub software_version: u16,
}

fn bcc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

struct Fields<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn text(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let s = self
            .body
            .get(self.at..self.at + n)
            .ok_or(DecodeError::Truncated {
                field,
                offset: self.at + 1,
                needed: n,
                got: self.body.len().saturating_sub(self.at),
            })?;
        self.at += n;
        Ok(s)
    }

    fn number(&mut self, n: usize, field: &'static str) -> Result<u16, DecodeError> {
        let s = self.text(n, field)?;
        let mut v: u16 = 0;
        for &c in s {
            if !c.is_ascii_digit() {
                return Err(DecodeError::InvalidValue {
                    field,
                    value: c.into(),
                    reason: "not an ASCII digit",
                });
            }
            v = v * 10 + u16::from(c - b'0');
        }
        Ok(v)
    }

    fn hundredths(&mut self, field: &'static str) -> Result<Float11073, DecodeError> {
        Ok(Float11073::new(i32::from(self.number(3, field)?), -2))
    }
}

impl LungMonitorResult {
    /// Decodes one frame (`STX … ETX BCC`), checking the checksum and every field.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        if frame.len() < FRAME_LEN {
            return Err(DecodeError::Truncated {
                field: "frame",
                offset: 0,
                needed: FRAME_LEN,
                got: frame.len(),
            });
        }
        if frame.len() > FRAME_LEN {
            return Err(DecodeError::TrailingBytes {
                after: "checksum",
                count: frame.len() - FRAME_LEN,
            });
        }
        let (&check, framed) = frame.split_last().unwrap_or((&0, &[]));
        if framed.first() != Some(&STX) || framed.last() != Some(&ETX) {
            return Err(DecodeError::InvalidValue {
                field: "frame",
                value: framed.first().copied().unwrap_or(0).into(),
                reason: "a frame is STX, body, ETX, checksum",
            });
        }
        if bcc(framed) != check {
            return Err(DecodeError::InvalidValue {
                field: "checksum",
                value: check.into(),
                reason: "does not match the XOR of STX..=ETX",
            });
        }
        let mut f = Fields {
            body: &framed[1..framed.len() - 1],
            at: 0,
        };
        if f.text(3, "packet_type")? != b"FTD" {
            return Err(DecodeError::InvalidValue {
                field: "packet_type",
                value: framed.get(1).copied().unwrap_or(0).into(),
                reason: "only FTD (test data) packets are known",
            });
        }
        let id = f.text(10, "device_id")?;
        if !id.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            return Err(DecodeError::InvalidValue {
                field: "device_id",
                value: 0,
                reason: "not printable ASCII",
            });
        }
        let device_id = String::from_utf8_lossy(id).trim_end().to_owned();
        let fev1_l = f.hundredths("fev1")?;
        let fev6_l = f.hundredths("fev6")?;
        let fev1_fev6_ratio = f.hundredths("fev1_fev6")?;
        let fef25_75_l_s = f.hundredths("fef25_75")?;
        let fev1_personal_best_l = f.hundredths("fev1_personal_best")?;
        let fev1_percent_of_best = f.number(3, "fev1_percent")?;
        let zones = [
            f.number(3, "green_zone")?,
            f.number(3, "yellow_zone")?,
            f.number(3, "orange_zone")?,
        ];
        let year = f.number(2, "year")?;
        let month = f.number(2, "month")?;
        let day = f.number(2, "day")?;
        let hours = f.number(2, "hours")?;
        let minutes = f.number(2, "minutes")?;
        let seconds = f.number(2, "seconds")?;
        let small = |v: u16| u8::try_from(v).unwrap_or(u8::MAX);
        let timestamp = DateTime::new(
            2000 + year,
            small(month),
            small(day),
            small(hours),
            small(minutes),
            small(seconds),
        );
        if timestamp.to_primitive().is_none() {
            return Err(DecodeError::InvalidValue {
                field: "timestamp",
                value: (u32::from(month) << 8) | u32::from(day),
                reason: "not a calendar date and time",
            });
        }
        let bad = match f.text(1, "bad_test")? {
            b"0" => false,
            b"1" => true,
            other => {
                return Err(DecodeError::InvalidValue {
                    field: "bad_test",
                    value: other.first().copied().unwrap_or(0).into(),
                    reason: "0 or 1",
                });
            }
        };
        let software_version = f.number(3, "software_version")?;
        Ok(LungMonitorResult {
            device_id,
            fev1_l,
            fev6_l,
            fev1_fev6_ratio,
            fef25_75_l_s,
            fev1_personal_best_l,
            fev1_percent_of_best,
            zones,
            timestamp,
            good_test: !bad,
            software_version,
        })
    }

    /// Encodes a frame (what a simulated Lung Monitor sends).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        fn digits(
            out: &mut Vec<u8>,
            v: u32,
            n: usize,
            field: &'static str,
        ) -> Result<(), EncodeError> {
            if u64::from(v) >= 10u64.pow(n as u32) {
                return Err(EncodeError::InvalidValue {
                    field,
                    value: v.into(),
                    reason: "too many digits",
                });
            }
            out.extend_from_slice(format!("{v:0n$}").as_bytes());
            Ok(())
        }
        fn hundredths(
            out: &mut Vec<u8>,
            v: &Float11073,
            field: &'static str,
        ) -> Result<(), EncodeError> {
            let Float11073::Value { mantissa, exponent } = *v else {
                return Err(EncodeError::InvalidValue {
                    field,
                    value: 0,
                    reason: "the packet has no special values",
                });
            };
            let scaled = if exponent <= -2 {
                let div = 10i64.pow(u32::from((-2 - exponent).unsigned_abs()));
                (i64::from(mantissa) % div == 0).then(|| i64::from(mantissa) / div)
            } else {
                10i64
                    .checked_pow(u32::from((exponent + 2).unsigned_abs()))
                    .and_then(|m| i64::from(mantissa).checked_mul(m))
            };
            let v =
                scaled
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or(EncodeError::InvalidValue {
                        field,
                        value: mantissa.into(),
                        reason: "not a non-negative number of hundredths",
                    })?;
            digits(out, v, 3, field)
        }
        let mut body = Vec::with_capacity(BODY_LEN);
        body.extend_from_slice(b"FTD");
        if self.device_id.len() > 10
            || !self
                .device_id
                .bytes()
                .all(|c| c.is_ascii_graphic() || c == b' ')
        {
            return Err(EncodeError::InvalidValue {
                field: "device_id",
                value: self.device_id.len() as i64,
                reason: "at most ten printable ASCII characters",
            });
        }
        body.extend_from_slice(format!("{:<10}", self.device_id).as_bytes());
        hundredths(&mut body, &self.fev1_l, "fev1")?;
        hundredths(&mut body, &self.fev6_l, "fev6")?;
        hundredths(&mut body, &self.fev1_fev6_ratio, "fev1_fev6")?;
        hundredths(&mut body, &self.fef25_75_l_s, "fef25_75")?;
        hundredths(&mut body, &self.fev1_personal_best_l, "fev1_personal_best")?;
        digits(
            &mut body,
            self.fev1_percent_of_best.into(),
            3,
            "fev1_percent",
        )?;
        for z in self.zones {
            digits(&mut body, z.into(), 3, "zone")?;
        }
        let t = self.timestamp;
        let year = t.year.and_then(|y| y.checked_sub(2000)).unwrap_or(100);
        digits(&mut body, year.into(), 2, "year")?;
        for (v, field) in [
            (t.month, "month"),
            (t.day, "day"),
            (Some(t.hours), "hours"),
            (Some(t.minutes), "minutes"),
            (Some(t.seconds), "seconds"),
        ] {
            digits(&mut body, v.unwrap_or(0).into(), 2, field)?;
        }
        body.push(if self.good_test { b'0' } else { b'1' });
        digits(
            &mut body,
            self.software_version.into(),
            3,
            "software_version",
        )?;
        let mut frame = Vec::with_capacity(FRAME_LEN);
        frame.push(STX);
        frame.extend_from_slice(&body);
        frame.push(ETX);
        frame.push(bcc(&frame));
        Ok(frame)
    }
}

/// Finds frames in a byte stream that arrives in arbitrary chunks: bytes before an STX are
/// skipped, a frame is complete at the byte after its ETX, and a frame longer than any
/// result is dropped (bounded memory).
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// The ETX was seen; the next byte is the checksum.
    want_checksum: bool,
}

impl FrameReader {
    /// Feeds bytes; returns the frames they complete (checksum not yet checked).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for &b in bytes {
            if self.buffer.is_empty() {
                if b == STX {
                    self.buffer.push(b);
                }
                continue;
            }
            self.buffer.push(b);
            if self.want_checksum {
                frames.push(std::mem::take(&mut self.buffer));
                self.want_checksum = false;
            } else if b == ETX && self.buffer.len() < FRAME_LEN {
                // (An ETX that would leave no room for the checksum ends nothing: too long.)
                self.want_checksum = true;
            } else if self.buffer.len() >= FRAME_LEN {
                // No ETX where one must be: resynchronise on the next STX.
                self.buffer.clear();
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LungMonitorResult {
        LungMonitorResult {
            device_id: "LM12345678".into(),
            fev1_l: Float11073::new(152, -2),
            fev6_l: Float11073::new(231, -2),
            fev1_fev6_ratio: Float11073::new(66, -2),
            fef25_75_l_s: Float11073::new(98, -2),
            fev1_personal_best_l: Float11073::new(210, -2),
            fev1_percent_of_best: 72,
            zones: [80, 50, 30],
            timestamp: DateTime::new(2025, 3, 4, 8, 0, 5),
            good_test: false,
            software_version: 107,
        }
    }

    #[test]
    fn a_frame_longer_than_any_result_is_dropped_even_when_an_etx_ends_it() {
        // Found by the `streams` fuzz target: an ETX one byte past a whole frame's length
        // used to complete a frame longer than FRAME_LEN.
        let mut bytes = vec![STX];
        bytes.extend(std::iter::repeat_n(b'0', FRAME_LEN - 2));
        bytes.extend([ETX, 0x00]);
        let mut reader = FrameReader::default();
        assert!(reader.push(&bytes).is_empty());
        // And the reader still finds the next good frame.
        let good = sample().encode().expect("encodes");
        assert_eq!(reader.push(&good), vec![good]);
    }

    #[test]
    fn frames_round_trip_and_follow_the_documented_layout() {
        let frame = sample().encode().expect("encodes");
        assert_eq!(frame.len(), FRAME_LEN);
        let body = concat!(
            "F",
            "TD",
            "LM12345678",
            "152",
            "231",
            "066",
            "098",
            "210",
            "072",
            "080",
            "050",
            "030",
            "25",
            "03",
            "04",
            "08",
            "00",
            "05",
            "1",
            "107"
        );
        assert_eq!(&frame[1..frame.len() - 2], body.as_bytes());
        assert_eq!(frame[frame.len() - 1], bcc(&frame[..frame.len() - 1]));
        assert_eq!(LungMonitorResult::decode(&frame), Ok(sample()));
    }

    #[test]
    fn a_bad_checksum_or_field_is_refused() {
        let mut frame = sample().encode().expect("encodes");
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        assert!(matches!(
            LungMonitorResult::decode(&frame),
            Err(DecodeError::InvalidValue {
                field: "checksum",
                ..
            })
        ));
        let mut frame = sample().encode().expect("encodes");
        frame[14] = b'x'; // first FEV1 digit
        frame[last] = bcc(&frame[..last]);
        assert!(matches!(
            LungMonitorResult::decode(&frame),
            Err(DecodeError::InvalidValue { field: "fev1", .. })
        ));
        assert!(matches!(
            LungMonitorResult::decode(&frame[..10]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn frames_are_found_in_any_chunking(cuts in prop::collection::vec(1usize..20, 1..10), noise in prop::collection::vec(any::<u8>().prop_filter("not STX", |b| *b != STX), 0..8)) {
            let frame = sample().encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut stream = noise.clone();
            stream.extend_from_slice(&frame);
            stream.extend_from_slice(&frame);
            let mut reader = FrameReader::default();
            let mut found = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= stream.len() { break; }
                let end = (at + c).min(stream.len());
                found.extend(reader.push(&stream[at..end]));
                at = end;
            }
            prop_assert_eq!(found, vec![frame.clone(), frame]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..140)) {
            let _ = LungMonitorResult::decode(&bytes);
            let mut reader = FrameReader::default();
            for f in reader.push(&bytes) {
                prop_assert!(f.len() <= FRAME_LEN);
                if let Ok(r) = LungMonitorResult::decode(&f) {
                    prop_assert_eq!(r.encode().ok(), Some(f));
                }
            }
        }
    }
}
