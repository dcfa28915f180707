//! Spirometers: a driver seam for vendor protocols, beside the Generic Health Sensor
//! service.
//!
//! A spirometer that speaks GHS (0x1840) needs no driver: the session decodes its
//! observations with [`crate::codec::ghs`] and maps FEV1, FVC, FEV1/FVC and PEF by their MDC
//! codes. A proprietary spirometer is one [`SpirometerDriver`]: its service and result
//! characteristic, and a function from the bytes it sends to [`SpirometryResult`]s.
//!
//! Drivers here:
//!
//! - [`VitalographLungMonitor`]: the Vitalograph Lung Monitor BT's result packets
//!   ([`crate::codec::vitalograph`], as the OpenTele client parses them). The packets are a
//!   byte stream; the driver finds them across notifications of any size. Its service and
//!   characteristic are given at construction (see that module on the transport).
//! - [`SimSpirometerV1`]: a **simulated vendor format used only in tests**, documented below
//!   so it is not mistaken for a real device's.
//!
//! `SimSpirometerV1`: service `7e5a0001-1d3c-4b9e-a6f0-5c2b9d410e77`, characteristic
//! `7e5a0002-…` (indicate), little-endian: version (1) = 1; flags (1): bit 0 time stamp
//! present, bit 1 from storage, bit 2 clock not set, bit 3 poor effort; FEV1, FVC (litres),
//! PEF (L/min) as SFLOAT (2 each; NaN for a value not measured); time stamp (7, Date Time)
//! when bit 0.

use std::sync::Mutex;

use crate::codec::date_time::{DateTime, DateTimeCharacteristic};
use crate::codec::vitalograph::{ACK, FrameReader, LungMonitorResult, NAK};
use crate::codec::{DecodeError, Float11073};

use super::{CharacteristicId, Uuid};

/// A spirometry result as a device reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpirometryResult {
    /// FEV1, litres.
    pub fev1_l: Float11073,
    /// FVC, litres, when the device measures it.
    pub fvc_l: Option<Float11073>,
    /// PEF, litres per minute, when the device measures it.
    pub pef_l_min: Option<Float11073>,
    /// Device time stamp.
    pub timestamp: Option<DateTime>,
    /// Read from the device's memory.
    pub from_storage: bool,
    /// The device's clock was not set.
    pub clock_not_set: bool,
    /// The manoeuvre did not meet acceptability criteria.
    pub poor_effort: bool,
}

/// What one value fed to a driver yields: the results it completes, and the bytes the
/// driver answers the device with (a vendor handshake such as ACK/NAK).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Completed results, or why one could not be read.
    pub results: Vec<Result<SpirometryResult, DecodeError>>,
    /// Answers, in order, for [`SpirometerDriver::reply_characteristic`]. The session writes
    /// them only after the results are durable in the queue, so a device that forgets a
    /// result once acknowledged never loses one; when the queue write fails nothing is
    /// answered and the link is dropped.
    pub replies: Vec<Vec<u8>>,
}

/// Turns one vendor's bytes into [`SpirometryResult`]s, and answers the device when its
/// protocol asks for it.
pub trait SpirometerDriver: Send + Sync {
    /// A short stable name for logs and metrics.
    fn name(&self) -> &'static str;
    /// The vendor service (for scan filters).
    fn service(&self) -> Uuid;
    /// The characteristic results arrive on (the session subscribes to it).
    fn result_characteristic(&self) -> CharacteristicId;
    /// Feeds one notification/indication value; the results it completes (or why one
    /// could not be read). A driver whose protocol spans values keeps the partial state.
    fn feed(&self, bytes: &[u8]) -> Vec<Result<SpirometryResult, DecodeError>>;
    /// Drops partial state (the link was lost).
    fn reset(&self) {}
    /// Where replies are written (with response), if the driver answers at all.
    fn reply_characteristic(&self) -> Option<CharacteristicId> {
        None
    }
    /// Feeds one value and says what to answer. The default is receive-only: [`Self::feed`]
    /// and no replies.
    fn exchange(&self, bytes: &[u8]) -> Exchange {
        Exchange {
            results: self.feed(bytes),
            replies: Vec::new(),
        }
    }
}

/// The simulated vendor format (see the module docs). Simulators only.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimSpirometerV1;

impl SimSpirometerV1 {
    /// The vendor service.
    pub const SERVICE: Uuid = Uuid(0x7e5a_0001_1d3c_4b9e_a6f0_5c2b_9d41_0e77);
    /// The result characteristic.
    pub const RESULT: Uuid = Uuid(0x7e5a_0002_1d3c_4b9e_a6f0_5c2b_9d41_0e77);

    const TIMESTAMP: u8 = 0x01;
    const STORED: u8 = 0x02;
    const CLOCK_NOT_SET: u8 = 0x04;
    const POOR_EFFORT: u8 = 0x08;

    /// Encodes a result (what the simulated spirometer sends).
    pub fn encode(result: &SpirometryResult) -> Result<Vec<u8>, crate::codec::EncodeError> {
        let mut flags = 0u8;
        if result.timestamp.is_some() {
            flags |= Self::TIMESTAMP;
        }
        if result.from_storage {
            flags |= Self::STORED;
        }
        if result.clock_not_set {
            flags |= Self::CLOCK_NOT_SET;
        }
        if result.poor_effort {
            flags |= Self::POOR_EFFORT;
        }
        let mut out = vec![1, flags];
        for (field, v) in [
            ("fev1", &result.fev1_l),
            ("fvc", &result.fvc_l.unwrap_or(Float11073::NAN)),
            ("pef", &result.pef_l_min.unwrap_or(Float11073::NAN)),
        ] {
            let bits = v
                .to_sfloat_bits()
                .map_err(|source| crate::codec::EncodeError::Float { field, source })?;
            out.extend_from_slice(&bits.to_le_bytes());
        }
        if let Some(t) = result.timestamp {
            let dt = DateTimeCharacteristic {
                value: t,
                quirks: vec![],
            };
            out.extend_from_slice(&dt.encode()?);
        }
        Ok(out)
    }
}

impl SpirometerDriver for SimSpirometerV1 {
    fn name(&self) -> &'static str {
        "sim-spirometer-v1"
    }

    fn service(&self) -> Uuid {
        Self::SERVICE
    }

    fn result_characteristic(&self) -> CharacteristicId {
        CharacteristicId {
            service: Self::SERVICE,
            uuid: Self::RESULT,
        }
    }

    fn feed(&self, bytes: &[u8]) -> Vec<Result<SpirometryResult, DecodeError>> {
        vec![Self::decode(bytes)]
    }
}

impl SimSpirometerV1 {
    /// Decodes one value.
    pub fn decode(bytes: &[u8]) -> Result<SpirometryResult, DecodeError> {
        let [version, flags, a0, a1, b0, b1, c0, c1, rest @ ..] = bytes else {
            return Err(DecodeError::Truncated {
                field: "header",
                offset: 0,
                needed: 8,
                got: bytes.len(),
            });
        };
        if *version != 1 {
            return Err(DecodeError::InvalidValue {
                field: "version",
                value: u32::from(*version),
                reason: "only version 1 is known",
            });
        }
        let sfloat =
            |lo: &u8, hi: &u8| Float11073::from_sfloat_bits(u16::from_le_bytes([*lo, *hi]));
        let timestamp = if flags & Self::TIMESTAMP != 0 {
            let t = rest.get(..7).ok_or(DecodeError::Truncated {
                field: "timestamp",
                offset: 8,
                needed: 7,
                got: rest.len(),
            })?;
            Some(DateTimeCharacteristic::decode(t)?.value)
        } else {
            None
        };
        Ok(SpirometryResult {
            fev1_l: sfloat(a0, a1),
            fvc_l: Some(sfloat(b0, b1)),
            pef_l_min: Some(sfloat(c0, c1)),
            timestamp,
            from_storage: flags & Self::STORED != 0,
            clock_not_set: flags & Self::CLOCK_NOT_SET != 0,
            poor_effort: flags & Self::POOR_EFFORT != 0,
        })
    }
}

/// The Vitalograph Lung Monitor BT over a serial-over-BLE characteristic.
///
/// Each complete, checksum-valid packet becomes a result with FEV1 (FEV6 is not FVC and is
/// not reported as such; FEF25–75 and the zones have no place in the record). A packet the
/// device flags as not a good test is marked poor effort.
///
/// The handshake (OpenTele's `LungMonitorPacketCollector`): with a reply characteristic
/// configured ([`VitalographLungMonitor::replying_on`]), a frame whose framing and checksum
/// are intact is answered ACK, after its result is durable in the queue; a frame garbled in
/// transit (bad checksum, STX/ETX missing, wrong length) is answered NAK so the device sends
/// it again. An intact frame whose fields do not decode is acknowledged too (counted as a
/// decode error): sending it again would not mend it. Without a reply characteristic the
/// driver only listens, and a device that repeats an unacknowledged packet yields the same
/// reading id again, which the queue drops as a duplicate.
#[derive(Debug)]
pub struct VitalographLungMonitor {
    service: Uuid,
    characteristic: Uuid,
    reply: Option<Uuid>,
    frames: Mutex<FrameReader>,
}

impl VitalographLungMonitor {
    /// A driver reading packets from `characteristic` of `service`.
    pub fn new(service: Uuid, characteristic: Uuid) -> Self {
        VitalographLungMonitor {
            service,
            characteristic,
            reply: None,
            frames: Mutex::new(FrameReader::default()),
        }
    }

    /// Answers ACK/NAK by writing to `characteristic` of the same service (the bridge's
    /// write characteristic; it may be the one results arrive on).
    #[must_use]
    pub fn replying_on(mut self, characteristic: Uuid) -> Self {
        self.reply = Some(characteristic);
        self
    }

    /// Whether a frame that did not decode was damaged in transit (worth a NAK) rather than
    /// intact with a field this decoder refuses.
    fn garbled(e: &DecodeError) -> bool {
        matches!(
            e,
            DecodeError::Truncated { field: "frame", .. }
                | DecodeError::TrailingBytes { .. }
                | DecodeError::InvalidValue {
                    field: "frame" | "checksum",
                    ..
                }
        )
    }

    /// One decoded packet as a result.
    pub fn result(packet: &LungMonitorResult) -> SpirometryResult {
        SpirometryResult {
            fev1_l: packet.fev1_l,
            fvc_l: None,
            pef_l_min: None,
            timestamp: Some(packet.timestamp),
            from_storage: false,
            clock_not_set: false,
            poor_effort: !packet.good_test,
        }
    }
}

impl SpirometerDriver for VitalographLungMonitor {
    fn name(&self) -> &'static str {
        "vitalograph-lung-monitor"
    }

    fn service(&self) -> Uuid {
        self.service
    }

    fn result_characteristic(&self) -> CharacteristicId {
        CharacteristicId {
            service: self.service,
            uuid: self.characteristic,
        }
    }

    fn feed(&self, bytes: &[u8]) -> Vec<Result<SpirometryResult, DecodeError>> {
        let frames = match self.frames.lock() {
            Ok(mut r) => r.push(bytes),
            Err(poisoned) => poisoned.into_inner().push(bytes),
        };
        frames
            .iter()
            .map(|f| LungMonitorResult::decode(f).map(|p| Self::result(&p)))
            .collect()
    }

    fn reply_characteristic(&self) -> Option<CharacteristicId> {
        self.reply.map(|uuid| CharacteristicId {
            service: self.service,
            uuid,
        })
    }

    fn exchange(&self, bytes: &[u8]) -> Exchange {
        let results = self.feed(bytes);
        let replies = if self.reply.is_some() {
            results
                .iter()
                .map(|r| match r {
                    Err(e) if Self::garbled(e) => vec![NAK],
                    _ => vec![ACK],
                })
                .collect()
        } else {
            Vec::new()
        };
        Exchange { results, replies }
    }

    fn reset(&self) {
        match self.frames.lock() {
            Ok(mut r) => *r = FrameReader::default(),
            Err(poisoned) => *poisoned.into_inner() = FrameReader::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_format_round_trips_and_rejects_short_input() {
        let r = SpirometryResult {
            fev1_l: Float11073::new(152, -2),
            fvc_l: Some(Float11073::new(281, -2)),
            pef_l_min: Some(Float11073::NAN),
            timestamp: Some(DateTime::new(2025, 3, 4, 8, 0, 5)),
            from_storage: true,
            clock_not_set: false,
            poor_effort: true,
        };
        let bytes = SimSpirometerV1::encode(&r).expect("encodes");
        assert_eq!(bytes.len(), 15);
        assert_eq!(SimSpirometerV1::decode(&bytes), Ok(r));
        for n in 0..bytes.len() {
            if n == 8 {
                continue; // a header without the flagged time stamp
            }
            let mut cut = bytes[..n].to_vec();
            if n > 8 {
                cut[1] |= 1;
            }
            assert!(SimSpirometerV1::decode(&cut).is_err(), "{n}");
        }
    }

    #[test]
    fn vitalograph_packets_split_across_notifications_become_results() {
        let packet = LungMonitorResult {
            device_id: "LM00000042".into(),
            fev1_l: Float11073::new(187, -2),
            fev6_l: Float11073::new(255, -2),
            fev1_fev6_ratio: Float11073::new(73, -2),
            fef25_75_l_s: Float11073::new(120, -2),
            fev1_personal_best_l: Float11073::new(230, -2),
            fev1_percent_of_best: 81,
            zones: [80, 50, 30],
            timestamp: DateTime::new(2025, 3, 4, 8, 0, 5),
            good_test: true,
            software_version: 3,
        };
        let frame = packet.encode().expect("encodes");
        let driver = VitalographLungMonitor::new(Uuid(1), Uuid(2));
        assert!(driver.feed(&frame[..20]).is_empty());
        let out = driver.feed(&frame[20..]);
        assert_eq!(out.len(), 1);
        let r = out[0].clone().expect("decodes");
        assert_eq!(r.fev1_l, Float11073::new(187, -2));
        assert_eq!(r.fvc_l, None);
        assert!(!r.poor_effort);
        assert_eq!(r.timestamp, Some(DateTime::new(2025, 3, 4, 8, 0, 5)));
        // A corrupted packet is an error, and the stream goes on.
        let mut bad = frame.clone();
        bad[15] ^= 1;
        bad.extend_from_slice(&frame);
        let out = driver.feed(&bad);
        assert_eq!(out.len(), 2);
        assert!(out[0].is_err());
        assert!(out[1].is_ok());
    }

    #[test]
    fn vitalograph_answers_ack_for_intact_frames_and_nak_for_garbled_ones() {
        let packet = LungMonitorResult {
            device_id: "LM00000042".into(),
            fev1_l: Float11073::new(187, -2),
            fev6_l: Float11073::new(255, -2),
            fev1_fev6_ratio: Float11073::new(73, -2),
            fef25_75_l_s: Float11073::new(120, -2),
            fev1_personal_best_l: Float11073::new(230, -2),
            fev1_percent_of_best: 81,
            zones: [80, 50, 30],
            timestamp: DateTime::new(2025, 3, 4, 8, 0, 5),
            good_test: true,
            software_version: 3,
        };
        let frame = packet.encode().expect("encodes");
        // Receive-only unless told where to answer.
        let quiet = VitalographLungMonitor::new(Uuid(1), Uuid(2));
        assert_eq!(quiet.reply_characteristic(), None);
        assert!(quiet.exchange(&frame).replies.is_empty());

        let driver = VitalographLungMonitor::new(Uuid(1), Uuid(2)).replying_on(Uuid(3));
        assert_eq!(
            driver.reply_characteristic(),
            Some(CharacteristicId {
                service: Uuid(1),
                uuid: Uuid(3)
            })
        );
        // Half a frame: nothing to answer yet.
        let half = driver.exchange(&frame[..30]);
        assert!(half.results.is_empty() && half.replies.is_empty());
        let done = driver.exchange(&frame[30..]);
        assert_eq!(done.replies, [vec![ACK]]);
        assert!(done.results[0].is_ok());
        // Line noise in the checksum: NAK, so the device sends it again.
        let mut noisy = frame.clone();
        let last = noisy.len() - 1;
        noisy[last] ^= 0x55;
        assert_eq!(driver.exchange(&noisy).replies, [vec![NAK]]);
        // Intact framing and checksum but a field the decoder refuses: ACK (resending the
        // same bytes cannot help), and the error is still reported.
        let mut odd = frame.clone();
        odd[1] = b'X';
        let check = odd[..last].iter().fold(0u8, |a, b| a ^ b);
        odd[last] = check;
        let out = driver.exchange(&odd);
        assert!(out.results[0].is_err());
        assert_eq!(out.replies, [vec![ACK]]);
    }
}
