//! Identifiers: gateways, pseudonymous patient keys, devices and readings.
//!
//! Each is a newtype that can only hold a valid value, so a string that reached a
//! `GatewayId` is safe to put in an MQTT topic, a metric-free log field or a SQL parameter.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An identifier that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct IdError {
    /// Which identifier.
    pub what: &'static str,
    /// What rule it broke.
    pub why: &'static str,
}

fn check_token(
    s: &str,
    what: &'static str,
    max: usize,
    allow: fn(u8) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError { what, why: "empty" });
    }
    if s.len() > max {
        return Err(IdError {
            what,
            why: "too long",
        });
    }
    if !s.bytes().all(allow) {
        return Err(IdError {
            what,
            why: "contains a character outside the allowed set",
        });
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(IdError {
            what,
            why: "must start with a letter or digit",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allow:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_token(&s, $what, $max, $allow)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A home hub's id: 1–64 of `a-z 0-9 - _`, starting with a letter or digit. It is one MQTT
    /// topic level and the gateway's broker user name, so it never holds `/`, `+` or `#`.
    GatewayId,
    "gateway id",
    64,
    |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
);

string_id!(
    /// The pseudonymous key a gateway and the wire know a patient by: 1–64 of
    /// `A-Z a-z 0-9 - _ .`. Names and record numbers never travel; only the server's record
    /// maps a key to a person.
    PatientKey,
    "patient key",
    64,
    |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
);

/// A device's stable identity: the IEEE EUI-64 from its System ID characteristic when it has
/// one, otherwise its Bluetooth device address. Text form `eui64:0123456789abcdef` or
/// `bdaddr:aa:bb:cc:dd:ee:ff` (lower case is canonical; upper case is accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    /// IEEE EUI-64, most significant byte first.
    Eui64([u8; 8]),
    /// Bluetooth device address, most significant byte first as written.
    BdAddr([u8; 6]),
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Eui64(b) => {
                f.write_str("eui64:")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            DeviceId::BdAddr(b) => {
                f.write_str("bdaddr:")?;
                for (i, x) in b.iter().enumerate() {
                    if i > 0 {
                        f.write_str(":")?;
                    }
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
        }
    }
}

fn hex_byte(s: &str) -> Option<u8> {
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u8::from_str_radix(s, 16).ok())?
}

impl FromStr for DeviceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "device id";
        if let Some(hex) = s.strip_prefix("eui64:") {
            if hex.len() != 16 {
                return Err(IdError {
                    what: WHAT,
                    why: "an EUI-64 is 16 hex digits",
                });
            }
            let mut out = [0u8; 8];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = hex
                    .get(2 * i..2 * i + 2)
                    .and_then(hex_byte)
                    .ok_or(IdError {
                        what: WHAT,
                        why: "an EUI-64 is 16 hex digits",
                    })?;
            }
            return Ok(DeviceId::Eui64(out));
        }
        if let Some(addr) = s.strip_prefix("bdaddr:") {
            let parts: Vec<&str> = addr.split(':').collect();
            let err = IdError {
                what: WHAT,
                why: "a Bluetooth address is six hex bytes separated by `:`",
            };
            if parts.len() != 6 {
                return Err(err);
            }
            let mut out = [0u8; 6];
            for (slot, part) in out.iter_mut().zip(parts) {
                *slot = hex_byte(part).ok_or(err.clone())?;
            }
            return Ok(DeviceId::BdAddr(out));
        }
        Err(IdError {
            what: WHAT,
            why: "must start with `eui64:` or `bdaddr:`",
        })
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a gateway knows about a device (from the Device Information service). Only `id`
/// identifies it; the rest is descriptive and may change (a firmware update).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    /// Stable identity.
    pub id: DeviceId,
    /// Serial number string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "short_text"
    )]
    pub serial: Option<String>,
    /// Manufacturer name string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "short_text"
    )]
    pub manufacturer: Option<String>,
    /// Model number string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "short_text"
    )]
    pub model: Option<String>,
    /// Firmware revision string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "short_text"
    )]
    pub firmware: Option<String>,
}

impl DeviceIdentity {
    /// An identity with nothing but the id known yet.
    pub fn new(id: DeviceId) -> Self {
        Self {
            id,
            serial: None,
            manufacturer: None,
            model: None,
            firmware: None,
        }
    }
}

/// Longest descriptive device string accepted (DIS strings are short in practice).
pub const MAX_DEVICE_TEXT: usize = 64;

fn short_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(deserializer)?;
    if let Some(s) = &s {
        if s.len() > MAX_DEVICE_TEXT {
            return Err(serde::de::Error::custom(format_args!(
                "longer than {MAX_DEVICE_TEXT} bytes"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(serde::de::Error::custom("contains control characters"));
        }
    }
    Ok(s)
}

/// A reading's deterministic id (a name-based UUID, see [`crate::Reading::compute_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReadingId(pub uuid::Uuid);

impl ReadingId {
    /// The id layout [`crate::Reading::compute_id`] gives (a UUID version 8, RFC 9562's custom
    /// layout, laid out like a version 7): `millis` (Unix milliseconds, clamped to 48 bits) in
    /// the first 48 bits, then the version and variant bits, and the rest of `hash` (the
    /// bytes past the first six) in the other 74. Ids so made sort by `millis`.
    pub fn time_ordered(millis: u64, hash: [u8; 16]) -> ReadingId {
        let mut bytes = hash;
        let millis = millis.min((1 << 48) - 1);
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        ReadingId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ReadingId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(ReadingId)
            .map_err(|_| IdError {
                what: "reading id",
                why: "not a UUID",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_are_safe_topic_levels() {
        assert!(GatewayId::new("gw-0001").is_ok());
        for bad in ["", "GW1", "gw/1", "gw+", "gw#", "-gw", "gw 1", "ü"] {
            assert!(GatewayId::new(bad).is_err(), "{bad:?}");
        }
        assert!(GatewayId::new("a".repeat(65)).is_err());
    }

    #[test]
    fn patient_keys_are_tokens() {
        assert!(PatientKey::new("pk-7f3a9c").is_ok());
        assert!(PatientKey::new("Jane Smith").is_err());
        assert!(PatientKey::new("").is_err());
    }

    #[test]
    fn device_ids_have_one_canonical_text() {
        let eui: DeviceId = "eui64:0011223344AABBCC".parse().expect("valid");
        assert_eq!(eui.to_string(), "eui64:0011223344aabbcc");
        let bd: DeviceId = "bdaddr:C0:FF:EE:00:11:22".parse().expect("valid");
        assert_eq!(bd.to_string(), "bdaddr:c0:ff:ee:00:11:22");
        assert_eq!(bd.to_string().parse::<DeviceId>(), Ok(bd));
        for bad in [
            "eui64:00",
            "bdaddr:1:2:3:4:5:6",
            "mac:00:11:22:33:44:55",
            "eui64:001122334455667g",
            "bdaddr:00:11:22:33:44:55:66",
        ] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_text_is_bounded() {
        let long = format!(
            r#"{{"id":"eui64:0011223344556677","serial":"{}"}}"#,
            "x".repeat(65)
        );
        assert!(serde_json::from_str::<DeviceIdentity>(&long).is_err());
        let ctl = r#"{"id":"eui64:0011223344556677","model":"a\u0000b"}"#;
        assert!(serde_json::from_str::<DeviceIdentity>(ctl).is_err());
    }
}
