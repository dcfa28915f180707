//! Device Information Service (0x180A) characteristics.
//!
//! Specifications: Device Information Service 1.1 §3.1–§3.9; GATT Specification Supplement v8
//! §3.145 (Manufacturer Name String), §3.155 (Model Number String), §3.203 (Serial Number
//! String), §3.115 (Hardware Revision String), §3.101 (Firmware Revision String), §3.209
//! (Software Revision String), §3.214 (System ID), §3.121 (IEEE 11073-20601 Regulatory
//! Certification Data List), §3.170 (PnP ID).
//!
//! - The six strings are UTF-8. Leniency: trailing NUL padding (fixed-size firmware buffers)
//!   is stripped, and invalid UTF-8 is replaced with U+FFFD; both are recorded as quirks.
//! - System ID is 8 bytes: the 40-bit manufacturer-defined identifier, then the 24-bit
//!   Organizationally Unique Identifier, each little-endian. The EUI-64 is the OUI followed by
//!   the manufacturer identifier: DIS §3.9.1's example, OUI 0x123456 and manufacturer
//!   identifier 0xFFFE9ABCDE, is sent as `DE BC 9A FE FF 56 34 12` and is the EUI-64
//!   `12-34-56-FF-FE-9A-BC-DE`.
//! - The Regulatory Certification Data List is an IEEE 11073-20601 structure this crate does
//!   not interpret; it is kept as opaque bytes.
//! - PnP ID is vendor ID source (`u8`: 1 Bluetooth SIG, 2 USB-IF), vendor ID, product ID and
//!   product version (`u16` each, version `0xJJMN` = JJ.M.N).

use core::fmt;

use serde::Serialize;

use super::error::{DecodeError, EncodeError, Quirk};
use super::reader::{Reader, put_u16};

/// A Device Information string (manufacturer, model, serial, revisions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisString {
    /// The text.
    pub value: String,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl DisString {
    /// A string with no quirks.
    pub fn new(value: impl Into<String>) -> Self {
        DisString {
            value: value.into(),
            quirks: Vec::new(),
        }
    }

    /// Decodes a UTF-8 string value (never fails: the string may be empty).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut quirks = Vec::new();
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let (text, padding) = bytes.split_at(end);
        if !padding.is_empty() {
            quirks.push(Quirk::NulPaddingStripped {
                count: padding.len(),
            });
        }
        let value = match core::str::from_utf8(text) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                quirks.push(Quirk::InvalidUtf8);
                String::from_utf8_lossy(text).into_owned()
            }
        };
        Ok(DisString { value, quirks })
    }

    /// Encodes the UTF-8 bytes (no terminator).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(self.value.as_bytes().to_vec())
    }
}

/// System ID (0x2A23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemId {
    /// The 40-bit manufacturer-defined identifier.
    pub manufacturer_identifier: u64,
    /// The 24-bit IEEE Organizationally Unique Identifier.
    pub organizationally_unique_identifier: u32,
    /// Rules the device bent.
    pub quirks: Vec<Quirk>,
}

impl SystemId {
    /// The EUI-64: OUI in the top 24 bits, manufacturer identifier in the low 40.
    pub fn eui64(&self) -> u64 {
        (u64::from(self.organizationally_unique_identifier & 0xFF_FFFF) << 40)
            | (self.manufacturer_identifier & 0xFF_FFFF_FFFF)
    }

    /// Decodes the 8-byte value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let [a, b, c, d, e] = r.array::<5>("manufacturer_identifier")?;
        let oui = r.u24("organizationally_unique_identifier")?;
        let mut quirks = Vec::new();
        r.finish(&mut quirks);
        Ok(SystemId {
            manufacturer_identifier: u64::from_le_bytes([a, b, c, d, e, 0, 0, 0]),
            organizationally_unique_identifier: oui,
            quirks,
        })
    }

    /// Encodes the 8 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.manufacturer_identifier > 0xFF_FFFF_FFFF {
            return Err(EncodeError::InvalidValue {
                field: "system_id.manufacturer_identifier",
                value: i64::try_from(self.manufacturer_identifier).unwrap_or(i64::MAX),
                reason: "wider than 40 bits",
            });
        }
        if self.organizationally_unique_identifier > 0xFF_FFFF {
            return Err(EncodeError::InvalidValue {
                field: "system_id.organizationally_unique_identifier",
                value: self.organizationally_unique_identifier.into(),
                reason: "wider than 24 bits",
            });
        }
        let [a, b, c, d, e, ..] = self.manufacturer_identifier.to_le_bytes();
        let [f, g, h, _] = self.organizationally_unique_identifier.to_le_bytes();
        Ok(vec![a, b, c, d, e, f, g, h])
    }
}

struct Eui64(u64);

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.to_be_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// Serializes as `{"eui64": "12-34-56-FF-FE-9A-BC-DE", "oui": "123456",
/// "manufacturer_identifier": "FFFE9ABCDE"}`.
impl Serialize for SystemId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("eui64", &Eui64(self.eui64()).to_string())?;
        map.serialize_entry(
            "oui",
            &format!("{:06X}", self.organizationally_unique_identifier),
        )?;
        map.serialize_entry(
            "manufacturer_identifier",
            &format!("{:010X}", self.manufacturer_identifier),
        )?;
        if !self.quirks.is_empty() {
            map.serialize_entry("quirks", &self.quirks)?;
        }
        map.end()
    }
}

/// IEEE 11073-20601 Regulatory Certification Data List (0x2A2A), uninterpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegulatoryCertificationData {
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

impl RegulatoryCertificationData {
    /// Keeps the bytes (never fails).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(RegulatoryCertificationData {
            bytes: bytes.to_vec(),
        })
    }

    /// The bytes as they were.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(self.bytes.clone())
    }
}

/// Serializes as `{"hex": "0102..."}`.
impl Serialize for RegulatoryCertificationData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("hex", &hex)?;
        map.end()
    }
}

/// Who assigned the PnP vendor ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorIdSource {
    /// 1: a Bluetooth SIG company identifier.
    BluetoothSig,
    /// 2: a USB Implementer's Forum vendor ID.
    UsbImplementersForum,
    /// Any other value (reserved).
    Reserved(u8),
}

impl VendorIdSource {
    /// The source for a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => VendorIdSource::BluetoothSig,
            2 => VendorIdSource::UsbImplementersForum,
            other => VendorIdSource::Reserved(other),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            VendorIdSource::BluetoothSig => 1,
            VendorIdSource::UsbImplementersForum => 2,
            VendorIdSource::Reserved(v) => v,
        }
    }
}

/// PnP ID (0x2A50).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PnpId {
    /// Who assigned `vendor_id`.
    pub vendor_id_source: VendorIdSource,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Product ID (vendor-managed).
    pub product_id: u16,
    /// Product version `0xJJMN` (JJ.M.N).
    pub product_version: u16,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl PnpId {
    /// Decodes the 7-byte value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let source = r.u8("vendor_id_source")?;
        let vendor_id_source = VendorIdSource::from_u8(source);
        if let VendorIdSource::Reserved(value) = vendor_id_source {
            quirks.push(Quirk::ReservedValue {
                field: "vendor_id_source",
                value: value.into(),
            });
        }
        let vendor_id = r.u16("vendor_id")?;
        let product_id = r.u16("product_id")?;
        let product_version = r.u16("product_version")?;
        r.finish(&mut quirks);
        Ok(PnpId {
            vendor_id_source,
            vendor_id,
            product_id,
            product_version,
            quirks,
        })
    }

    /// Encodes the 7 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![self.vendor_id_source.to_u8()];
        put_u16(&mut out, self.vendor_id);
        put_u16(&mut out, self.product_id);
        put_u16(&mut out, self.product_version);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strings_strip_nul_padding_and_survive_bad_utf8() {
        // PureSwift/Bluetooth GATTCharacteristicTests: "bluetooth".
        let s = DisString::decode(b"bluetooth").unwrap();
        assert_eq!(s, DisString::new("bluetooth"));
        let s = DisString::decode(b"Omron\0\0\0").unwrap();
        assert_eq!(s.value, "Omron");
        assert_eq!(s.quirks, vec![Quirk::NulPaddingStripped { count: 3 }]);
        let s = DisString::decode(&[b'A', 0xFF, b'B']).unwrap();
        assert_eq!(s.value, "A\u{FFFD}B");
        assert_eq!(s.quirks, vec![Quirk::InvalidUtf8]);
        assert_eq!(DisString::decode(&[]).unwrap(), DisString::new(""));
        let s = DisString::decode(&[0, 0]).unwrap();
        assert_eq!(s.value, "");
    }

    #[test]
    fn system_id_spec_example() {
        // DIS 1.1 §3.9.1 example, as also tested by PureSwift/Bluetooth GATTCharacteristicTests
        // testSystemID: 0x123456FFFE9ABCDE sent least significant octet first.
        let bytes = [0xDE, 0xBC, 0x9A, 0xFE, 0xFF, 0x56, 0x34, 0x12];
        let id = SystemId::decode(&bytes).unwrap();
        assert_eq!(id.organizationally_unique_identifier, 0x12_3456);
        assert_eq!(id.manufacturer_identifier, 0xFF_FE9A_BCDE);
        assert_eq!(id.eui64(), 0x1234_56FF_FE9A_BCDE);
        assert_eq!(
            serde_json::to_value(&id).unwrap()["eui64"],
            "12-34-56-FF-FE-9A-BC-DE"
        );
        assert_eq!(id.encode().unwrap(), bytes);
        assert!(SystemId::decode(&bytes[..7]).is_err());
    }

    #[test]
    fn pnp_id_vector() {
        // PureSwift/Bluetooth GATTCharacteristicTests pnPID: 02 01 5F 01 5F 01 5F.
        let bytes = [0x02, 0x01, 0x5F, 0x01, 0x5F, 0x01, 0x5F];
        let p = PnpId::decode(&bytes).unwrap();
        assert_eq!(p.vendor_id_source, VendorIdSource::UsbImplementersForum);
        assert_eq!(
            (p.vendor_id, p.product_id, p.product_version),
            (24321, 24321, 24321)
        );
        assert_eq!(p.encode().unwrap(), bytes);
    }

    proptest! {
        #[test]
        fn strings_round_trip(s in "[^\u{0}]*") {
            let d = DisString::new(s);
            let bytes = d.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(DisString::decode(&bytes), Ok(d));
        }

        #[test]
        fn system_id_round_trips(m in 0u64..(1 << 40), oui in 0u32..(1 << 24)) {
            let id = SystemId { manufacturer_identifier: m, organizationally_unique_identifier: oui, quirks: Vec::new() };
            let bytes = id.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(SystemId::decode(&bytes), Ok(id));
        }

        #[test]
        fn pnp_id_round_trips(src in 1u8..=2, v in any::<u16>(), p in any::<u16>(), ver in any::<u16>()) {
            let id = PnpId { vendor_id_source: VendorIdSource::from_u8(src), vendor_id: v, product_id: p, product_version: ver, quirks: Vec::new() };
            let bytes = id.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(PnpId::decode(&bytes), Ok(id));
        }

        #[test]
        fn regulatory_data_is_kept_verbatim(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let d = RegulatoryCertificationData::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(d.encode().ok(), Some(bytes));
        }
    }
}
