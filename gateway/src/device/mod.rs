//! The seam between the gateway and Bluetooth LE: [`DeviceSource`] and [`DeviceLink`], and
//! the per-device [`session`] that turns a patient's device into queued readings.
//!
//! A `DeviceSource` is an adapter: it scans for advertisements and connects to an address.
//! A connection is a [`DeviceLink`]: discover the GATT table, read, write with response,
//! subscribe to notifications or indications, disconnect. Everything the device says
//! afterwards (values, and the disconnection) arrives on one bounded channel of
//! [`LinkEvent`]s that the session takes once per connection, so a disconnection is observed
//! in order with the values that preceded it.
//!
//! The types are shaped so a btleplug (BlueZ) backend implements them without change:
//! addresses are six bytes ([`Address`]), UUIDs are 128-bit with the Bluetooth base UUID for
//! the 16-bit ones ([`Uuid`]), a characteristic is named by its service and its own UUID
//! ([`CharacteristicId`]), and errors say whether trying again can help
//! ([`DeviceError::is_retryable`]). The simulators implement the same traits in-process.
//!
//! Not here: GATT byte layouts (that is [`crate::codec`]) and the queue ([`crate::queue`]).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::mpsc;

pub mod backoff;
#[cfg(all(feature = "bluez", target_os = "linux"))]
pub mod bluez;
pub mod mapping;
pub mod session;
pub mod spirometry;

pub use backoff::{Backoff, BackoffConfig};
pub use session::{
    Clock, Phase, Session, SessionConfig, SessionError, SessionHandle, SessionStats, SystemClock,
};

/// A 128-bit Bluetooth UUID. 16- and 32-bit SIG UUIDs are aliases inside the Bluetooth base
/// UUID `0000xxxx-0000-1000-8000-00805F9B34FB` (Core 5.4 Vol 3 Part B §2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub u128);

const BASE_UUID: u128 = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB;
const BASE_MASK: u128 = 0x0000_0000_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF;

impl Uuid {
    /// A 16-bit SIG UUID in the base UUID.
    pub const fn from_u16(short: u16) -> Self {
        Uuid(BASE_UUID | ((short as u128) << 96))
    }

    /// The 16-bit alias, when this UUID is one.
    pub const fn as_u16(self) -> Option<u16> {
        if self.0 & BASE_MASK == BASE_UUID && self.0 >> 112 == 0 {
            Some((self.0 >> 96) as u16)
        } else {
            None
        }
    }

    /// The 128 bits, most significant first (as btleplug's `uuid::Uuid::as_u128` gives them).
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(short) = self.as_u16() {
            return write!(f, "0x{short:04X}");
        }
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

/// The health services the gateway scans for.
pub mod services {
    use super::Uuid;

    /// Blood Pressure (0x1810).
    pub const BLOOD_PRESSURE: Uuid = Uuid::from_u16(0x1810);
    /// Pulse Oximeter (0x1822).
    pub const PULSE_OXIMETER: Uuid = Uuid::from_u16(0x1822);
    /// Generic Health Sensor (0x1840).
    pub const GENERIC_HEALTH_SENSOR: Uuid = Uuid::from_u16(0x1840);
    /// Device Information (0x180A).
    pub const DEVICE_INFORMATION: Uuid = Uuid::from_u16(0x180A);
    /// Battery (0x180F).
    pub const BATTERY: Uuid = Uuid::from_u16(0x180F);
    /// Current Time (0x1805).
    pub const CURRENT_TIME: Uuid = Uuid::from_u16(0x1805);
    /// The three health services a scan filters on.
    pub const HEALTH: [Uuid; 3] = [BLOOD_PRESSURE, PULSE_OXIMETER, GENERIC_HEALTH_SENSOR];
}

/// A Bluetooth device address, most significant byte first as written (`C0:FF:EE:00:11:22`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A text that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a Bluetooth address is six hex bytes separated by `:`")]
pub struct AddressError;

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or(AddressError)?;
            if part.len() != 2 {
                return Err(AddressError);
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| AddressError)?;
        }
        if parts.next().is_some() {
            return Err(AddressError);
        }
        Ok(Address(out))
    }
}

/// What a scan saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// The advertiser.
    pub address: Address,
    /// Advertised local name, if any (never logged: it can carry a patient's name).
    pub local_name: Option<String>,
    /// Advertised service UUIDs.
    pub services: Vec<Uuid>,
    /// Signal strength, dBm.
    pub rssi: Option<i16>,
}

/// Which advertisements a scan reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanFilter {
    /// Report only advertisers of at least one of these services (empty: all).
    pub services: Vec<Uuid>,
    /// How long to scan.
    pub duration: Duration,
}

impl Default for ScanFilter {
    fn default() -> Self {
        ScanFilter {
            services: services::HEALTH.to_vec(),
            duration: Duration::from_secs(10),
        }
    }
}

/// GATT characteristic properties the gateway cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Properties {
    /// Readable.
    pub read: bool,
    /// Writable with response.
    pub write: bool,
    /// Notifies.
    pub notify: bool,
    /// Indicates.
    pub indicate: bool,
}

/// A characteristic, named by its service and its own UUID (a UUID such as RACP's occurs in
/// several services).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CharacteristicId {
    /// The service it belongs to.
    pub service: Uuid,
    /// The characteristic.
    pub uuid: Uuid,
}

impl CharacteristicId {
    /// From two 16-bit SIG UUIDs.
    pub const fn sig(service: u16, characteristic: u16) -> Self {
        CharacteristicId {
            service: Uuid::from_u16(service),
            uuid: Uuid::from_u16(characteristic),
        }
    }
}

/// One discovered characteristic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Characteristic {
    /// Service and UUID.
    pub id: CharacteristicId,
    /// What it supports.
    pub properties: Properties,
}

/// Something the connected device sent, or the end of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A notification or indication value.
    Value {
        /// From which characteristic.
        characteristic: CharacteristicId,
        /// The bytes, exactly as received.
        bytes: Vec<u8>,
    },
    /// The link is gone; no event follows.
    Disconnected {
        /// Why, as far as the stack knows.
        reason: DisconnectReason,
    },
}

/// Why a link ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The device closed the link (it finished, or went to sleep).
    RemoteClosed,
    /// Supervision timeout: out of range, battery pulled.
    Timeout,
    /// We closed it.
    Local,
    /// The stack did not say.
    Unknown,
}

/// Events a link buffers before the sender waits for the session. Bounded so a chatty
/// device cannot grow memory; 1 Hz oximetry needs far less.
pub const LINK_EVENT_CAPACITY: usize = 64;

/// What can go wrong talking to a device. [`DeviceError::is_retryable`] separates "gone or
/// busy, try again later" from "this will not work however often we try".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not in range or not advertising.
    #[error("device not found")]
    NotFound,
    /// The link dropped during the operation.
    #[error("disconnected")]
    Disconnected,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The adapter is busy, powered off or restarting.
    #[error("adapter unavailable: {0}")]
    AdapterUnavailable(String),
    /// The device lacks the characteristic.
    #[error("no characteristic {0}")]
    NoSuchCharacteristic(Uuid),
    /// The characteristic does not allow the operation.
    #[error("characteristic {0} does not allow {1}")]
    NotPermitted(Uuid, &'static str),
    /// Pairing or encryption was refused: needs a person (re-pair the device).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The backend requires devices to be paired (bonded) with the hub and this one is not,
    /// so it was not connected to. Retryable: once a person pairs it (`bluetoothctl pair`),
    /// the next attempt succeeds.
    #[error("device is not paired with this hub")]
    NotPaired,
    /// The device answered a write with an ATT error code.
    #[error("ATT error 0x{0:02x}")]
    Att(u8),
    /// Anything else the backend reports, with its own retry judgement.
    #[error("{message}")]
    Other {
        /// The backend's text (no patient data: backends report addresses at most).
        message: String,
        /// Whether trying again can help.
        retryable: bool,
    },
}

impl DeviceError {
    /// True when the same operation may succeed later (device back in range, adapter back).
    pub fn is_retryable(&self) -> bool {
        match self {
            DeviceError::NotFound
            | DeviceError::Disconnected
            | DeviceError::Timeout
            | DeviceError::AdapterUnavailable(_)
            | DeviceError::Att(_)
            | DeviceError::NotPaired => true,
            DeviceError::NoSuchCharacteristic(_)
            | DeviceError::NotPermitted(..)
            | DeviceError::AuthenticationFailed => false,
            DeviceError::Other { retryable, .. } => *retryable,
        }
    }
}

/// A Bluetooth adapter, real or simulated. Async fns return `Send` futures so sessions can
/// run on spawned tasks; the traits are used generically (no `dyn`).
pub trait DeviceSource: Send + Sync + 'static {
    /// The connection type.
    type Link: DeviceLink;

    /// Scans for `filter.duration` and reports what advertised the filtered services.
    fn scan(
        &self,
        filter: &ScanFilter,
    ) -> impl Future<Output = Result<Vec<Advertisement>, DeviceError>> + Send;

    /// Connects to `address`. [`DeviceError::NotFound`] when it is not in range.
    fn connect(
        &self,
        address: Address,
    ) -> impl Future<Output = Result<Self::Link, DeviceError>> + Send;
}

/// One connection to one device.
pub trait DeviceLink: Send + 'static {
    /// The peer.
    fn address(&self) -> Address;

    /// The event stream (values and the disconnection). `Some` once per link: the session
    /// takes it right after connecting, before subscribing.
    fn take_events(&mut self) -> Option<mpsc::Receiver<LinkEvent>>;

    /// Discovers services and characteristics.
    fn discover(&mut self)
    -> impl Future<Output = Result<Vec<Characteristic>, DeviceError>> + Send;

    /// Reads a value.
    fn read(
        &mut self,
        characteristic: CharacteristicId,
    ) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send;

    /// Writes a value and waits for the write response.
    fn write(
        &mut self,
        characteristic: CharacteristicId,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Enables indications (preferred when supported: they are acknowledged) or
    /// notifications on a characteristic.
    fn subscribe(
        &mut self,
        characteristic: CharacteristicId,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Closes the link.
    fn disconnect(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_uuids_live_in_the_base_uuid() {
        let bps = Uuid::from_u16(0x1810);
        assert_eq!(bps.as_u128(), 0x0000_1810_0000_1000_8000_0080_5F9B_34FB);
        assert_eq!(bps.as_u16(), Some(0x1810));
        assert_eq!(bps.to_string(), "0x1810");
        let vendor = Uuid(0x7e5a_0001_1d3c_4b9e_a6f0_5c2b_9d41_0e77);
        assert_eq!(vendor.as_u16(), None);
        assert_eq!(vendor.to_string(), "7e5a0001-1d3c-4b9e-a6f0-5c2b9d410e77");
        // A 32-bit alias is not a 16-bit one.
        assert_eq!(Uuid(BASE_UUID | (0x0001_0000u128 << 96)).as_u16(), None);
    }

    #[test]
    fn addresses_round_trip() {
        let a: Address = "C0:FF:EE:00:11:22".parse().expect("valid");
        assert_eq!(a.to_string(), "c0:ff:ee:00:11:22");
        for bad in [
            "",
            "c0:ff:ee:00:11",
            "c0:ff:ee:00:11:22:33",
            "c0:ff:ee:00:11:2g",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_whether_to_retry() {
        assert!(DeviceError::NotFound.is_retryable());
        assert!(DeviceError::Disconnected.is_retryable());
        assert!(!DeviceError::AuthenticationFailed.is_retryable());
        // Pairing is a person's job; the session tries again and is let in once it is done.
        assert!(DeviceError::NotPaired.is_retryable());
        assert!(!DeviceError::NoSuchCharacteristic(Uuid::from_u16(0x2A35)).is_retryable());
    }
}
