//! Battery Level (0x2A19) of the Battery Service (0x180F).
//!
//! Specification: Battery Service 1.1 §3.1; GATT Specification Supplement v8 §3.27: one
//! `u8`, the charge in percent, 0..=100.
//!
//! A value above 100 is an error (it is not a percentage; clamping it would invent data).
//! Leniency: extra bytes after the first (a device writing a `u16`) are ignored (quirk).

use serde::Serialize;

use super::error::{DecodeError, EncodeError, Quirk};
use super::reader::Reader;

/// Battery Level (0x2A19).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatteryLevel {
    /// Charge in percent (0..=100).
    pub percent: u8,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl BatteryLevel {
    /// Decodes a Battery Level value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let percent = r.u8("battery_level")?;
        if percent > 100 {
            return Err(DecodeError::InvalidValue {
                field: "battery_level",
                value: percent.into(),
                reason: "a percentage above 100",
            });
        }
        let mut quirks = Vec::new();
        r.finish(&mut quirks);
        Ok(BatteryLevel { percent, quirks })
    }

    /// Encodes the single byte.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.percent > 100 {
            return Err(EncodeError::InvalidValue {
                field: "battery_level",
                value: self.percent.into(),
                reason: "a percentage above 100",
            });
        }
        Ok(vec![self.percent])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        // NordicSemiconductor/Android-BLE-Common-Library BatteryLevelDataCallbackTest.
        assert_eq!(BatteryLevel::decode(&[0x64]).map(|b| b.percent), Ok(100));
        assert_eq!(BatteryLevel::decode(&[0x0F]).map(|b| b.percent), Ok(15));
        assert_eq!(
            BatteryLevel::decode(&[0x65]),
            Err(DecodeError::InvalidValue {
                field: "battery_level",
                value: 101,
                reason: "a percentage above 100"
            })
        );
        // Nordic rejects a 2-byte value; it is harmless, so it is a quirk here.
        assert_eq!(
            BatteryLevel::decode(&[0x64, 0x00]).map(|b| b.quirks),
            Ok(vec![Quirk::TrailingBytes { count: 1 }])
        );
        assert!(matches!(
            BatteryLevel::decode(&[]),
            Err(DecodeError::Truncated { .. })
        ));
        for percent in 0..=100 {
            let b = BatteryLevel {
                percent,
                quirks: Vec::new(),
            };
            assert_eq!(b.encode().map(|e| BatteryLevel::decode(&e)), Ok(Ok(b)));
        }
        assert!(
            BatteryLevel {
                percent: 101,
                quirks: Vec::new()
            }
            .encode()
            .is_err()
        );
    }
}
