//! Spirometers: a driver seam, because there is no SIG spirometer profile.
//!
//! The Generic Health Sensor service (0x1840, Health Observations 0x2B8B) is the SIG's answer,
//! but its observation layout could not be confirmed from a public text within the time
//! available (the specification is published; the search index held only its characteristic
//! UUIDs and a pre-release vendor simulator), and guessing a medical wire format is worse
//! than not having one. So a spirometer is read through a [`SpirometerDriver`]: the vendor's
//! service and characteristic, and a function from its bytes to FEV1/FVC/PEF. Adding GHS later
//! is adding a driver (or a codec module) — the session does not change.
//!
//! The one driver here, [`SimSpirometerV1`], is a **simulated vendor format used only by the
//! simulators**, documented below so it is not mistaken for a real device's:
//!
//! Service `7e5a0001-1d3c-4b9e-a6f0-5c2b9d410e77`, characteristic "test result"
//! `7e5a0002-…` (indicate), little-endian:
//!
//! | field          | size | note                                                          |
//! |----------------|------|---------------------------------------------------------------|
//! | version        | 1    | 1                                                             |
//! | flags          | 1    | bit 0 time stamp present, bit 1 from storage, bit 2 clock not set, bit 3 poor effort (the manoeuvre did not meet ATS/ERS acceptability) |
//! | FEV1           | 2    | SFLOAT, litres                                                |
//! | FVC            | 2    | SFLOAT, litres                                                |
//! | PEF            | 2    | SFLOAT, litres per minute                                     |
//! | time stamp     | 7    | Date Time (0x2A08 layout), when bit 0                         |

use crate::codec::date_time::{DateTime, DateTimeCharacteristic};
use crate::codec::{DecodeError, Float11073};

use super::{CharacteristicId, Uuid};

/// A spirometry result as a device reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpirometryResult {
    /// FEV1, litres.
    pub fev1_l: Float11073,
    /// FVC, litres.
    pub fvc_l: Float11073,
    /// PEF, litres per minute.
    pub pef_l_min: Float11073,
    /// Device time stamp.
    pub timestamp: Option<DateTime>,
    /// Read from the device's memory.
    pub from_storage: bool,
    /// The device's clock was not set.
    pub clock_not_set: bool,
    /// The manoeuvre did not meet acceptability criteria.
    pub poor_effort: bool,
}

/// Turns one vendor's bytes into [`SpirometryResult`]s.
pub trait SpirometerDriver: Send + Sync {
    /// A short stable name for logs and metrics.
    fn name(&self) -> &'static str;
    /// The vendor service (for scan filters).
    fn service(&self) -> Uuid;
    /// The characteristic results arrive on (the session subscribes to it).
    fn result_characteristic(&self) -> CharacteristicId;
    /// Decodes one value.
    fn decode(&self, bytes: &[u8]) -> Result<SpirometryResult, DecodeError>;
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
            ("fvc", &result.fvc_l),
            ("pef", &result.pef_l_min),
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

    fn decode(&self, bytes: &[u8]) -> Result<SpirometryResult, DecodeError> {
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
            fvc_l: sfloat(b0, b1),
            pef_l_min: sfloat(c0, c1),
            timestamp,
            from_storage: flags & Self::STORED != 0,
            clock_not_set: flags & Self::CLOCK_NOT_SET != 0,
            poor_effort: flags & Self::POOR_EFFORT != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_format_round_trips_and_rejects_short_input() {
        let r = SpirometryResult {
            fev1_l: Float11073::new(152, -2),
            fvc_l: Float11073::new(281, -2),
            pef_l_min: Float11073::NAN,
            timestamp: Some(DateTime::new(2025, 3, 4, 8, 0, 5)),
            from_storage: true,
            clock_not_set: false,
            poor_effort: true,
        };
        let bytes = SimSpirometerV1::encode(&r).expect("encodes");
        assert_eq!(bytes.len(), 15);
        assert_eq!(SimSpirometerV1.decode(&bytes), Ok(r));
        for n in 0..bytes.len() {
            if n == 8 {
                continue; // a header without the flagged time stamp
            }
            let mut cut = bytes[..n].to_vec();
            if n > 8 {
                cut[1] |= 1;
            }
            assert!(SimSpirometerV1.decode(&cut).is_err(), "{n}");
        }
    }
}
