//! btleplug and BlueZ errors as [`DeviceError`]s: what the session may retry and what needs a
//! person.
//!
//! btleplug passes BlueZ's D-Bus errors through as `Error::Other(BluetoothError)`; the D-Bus
//! error *name* (`org.bluez.Error.NotConnected`) is what says what happened, and for
//! `org.bluez.Error.Failed` the message carries the ATT error code. The table is in
//! `from_dbus`, a pure function the unit tests below pin down.

use bluez_async::BluetoothError;

use crate::device::{DeviceError, Uuid};

/// What the backend was doing when the error came: it decides between "device not found"
/// and "link dropped" for a vanished D-Bus object, and names the characteristic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Opening the D-Bus connection, choosing the adapter.
    Adapter,
    /// Discovery (scan).
    Scan,
    /// Finding or connecting to a device.
    Connect,
    /// Service discovery.
    Discover,
    /// Reading a characteristic.
    Read(Uuid),
    /// Writing a characteristic (with response).
    Write(Uuid),
    /// Enabling notifications/indications.
    Subscribe(Uuid),
    /// Closing the link.
    Disconnect,
}

impl Op {
    fn characteristic(self) -> Option<(Uuid, &'static str)> {
        match self {
            Op::Read(u) => Some((u, "read")),
            Op::Write(u) => Some((u, "write")),
            Op::Subscribe(u) => Some((u, "subscribe")),
            _ => None,
        }
    }
}

/// A btleplug error as a device error.
pub(crate) fn from_btleplug(e: &btleplug::Error, op: Op) -> DeviceError {
    use btleplug::Error as B;
    match e {
        B::DeviceNotFound => DeviceError::NotFound,
        B::NotConnected => DeviceError::Disconnected,
        B::TimedOut(_) => DeviceError::Timeout,
        B::NoAdapterAvailable => DeviceError::AdapterUnavailable("no Bluetooth adapter".into()),
        B::NoSuchCharacteristic => match op.characteristic() {
            Some((u, _)) => DeviceError::NoSuchCharacteristic(u),
            None => other(e.to_string(), false),
        },
        B::PermissionDenied => other(
            "permission denied talking to BlueZ (run as root or in group `bluetooth`)".into(),
            false,
        ),
        B::NotSupported(s) => other(format!("not supported by BlueZ: {s}"), false),
        B::Other(inner) => match inner.downcast_ref::<BluetoothError>() {
            Some(b) => from_bluez(b, op),
            None => other(inner.to_string(), true),
        },
        _ => other(e.to_string(), true),
    }
}

/// A bluez-async error as a device error.
pub(crate) fn from_bluez(e: &BluetoothError, op: Op) -> DeviceError {
    match e {
        BluetoothError::NoBluetoothAdapters => {
            DeviceError::AdapterUnavailable("BlueZ reports no adapter".into())
        }
        BluetoothError::DbusError(d) => {
            from_dbus(d.name().unwrap_or(""), d.message().unwrap_or(""), op)
        }
        BluetoothError::ServiceDiscoveryTimedOut => DeviceError::Timeout,
        BluetoothError::UuidNotFound { uuid } => {
            DeviceError::NoSuchCharacteristic(Uuid(uuid.as_u128()))
        }
        // A property missing or unparsable: typically an object BlueZ is tearing down.
        other_error => other(other_error.to_string(), true),
    }
}

fn other(message: String, retryable: bool) -> DeviceError {
    DeviceError::Other { message, retryable }
}

/// ATT error codes (Core 5.4 Vol 3 Part F §3.4.1.1) that mean "pair or bond first".
const ATT_INSUFFICIENT_AUTHENTICATION: u8 = 0x05;
const ATT_INSUFFICIENT_AUTHORIZATION: u8 = 0x08;
const ATT_INSUFFICIENT_KEY_SIZE: u8 = 0x0C;
const ATT_INSUFFICIENT_ENCRYPTION: u8 = 0x0F;
const ATT_READ_NOT_PERMITTED: u8 = 0x02;
const ATT_WRITE_NOT_PERMITTED: u8 = 0x03;

/// `Operation failed with ATT error: 0x0e` → `0x0e`.
fn att_code(message: &str) -> Option<u8> {
    let (_, rest) = message.split_once("ATT error: 0x")?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u8::from_str_radix(&hex, 16).ok()
}

/// A D-Bus error (name and message, as BlueZ or the bus daemon sent them) as a device error.
pub(crate) fn from_dbus(name: &str, message: &str, op: Op) -> DeviceError {
    let short = name.rsplit('.').next().unwrap_or(name);
    let text = || {
        if message.is_empty() {
            name.to_string()
        } else {
            format!("{name}: {message}")
        }
    };
    if name.starts_with("org.bluez.Error.") {
        return match short {
            "NotConnected" => DeviceError::Disconnected,
            "DoesNotExist" => gone(op),
            "NotReady" => DeviceError::AdapterUnavailable(text()),
            "AuthenticationFailed" | "AuthenticationRejected" | "NotAuthorized" => {
                DeviceError::AuthenticationFailed
            }
            // No agent answered, or the user did not confirm in time: try again later.
            "AuthenticationCanceled" | "AuthenticationTimeout" | "ConnectionAttemptFailed" => {
                other(text(), true)
            }
            // BlueZ answers ATT "insufficient authentication/encryption" this way.
            "NotPermitted" if message.contains("Not paired") => DeviceError::AuthenticationFailed,
            "NotPermitted" | "NotSupported" => match op.characteristic() {
                Some((u, what)) => DeviceError::NotPermitted(u, what),
                None => other(text(), false),
            },
            "InvalidArguments" | "InvalidValueLength" | "InvalidOffset" | "InvalidLength" => {
                other(text(), false)
            }
            "Failed" => match att_code(message) {
                Some(
                    ATT_INSUFFICIENT_AUTHENTICATION
                    | ATT_INSUFFICIENT_AUTHORIZATION
                    | ATT_INSUFFICIENT_KEY_SIZE
                    | ATT_INSUFFICIENT_ENCRYPTION,
                ) => DeviceError::AuthenticationFailed,
                Some(code @ (ATT_READ_NOT_PERMITTED | ATT_WRITE_NOT_PERMITTED)) => {
                    match op.characteristic() {
                        Some((u, what)) => DeviceError::NotPermitted(u, what),
                        None => DeviceError::Att(code),
                    }
                }
                Some(code) => DeviceError::Att(code),
                None if message.contains("Not connected") => DeviceError::Disconnected,
                None if message.contains("timed out") || message.contains("Timeout") => {
                    DeviceError::Timeout
                }
                // "le-connection-abort-by-local", "Host is down", "Software caused connection
                // abort", "Operation already in progress": the radio's weather.
                None => other(text(), true),
            },
            // InProgress, AlreadyExists, Busy, NotAvailable, and names BlueZ adds later.
            _ => other(text(), true),
        };
    }
    match name {
        "org.freedesktop.DBus.Error.NoReply"
        | "org.freedesktop.DBus.Error.Timeout"
        | "org.freedesktop.DBus.Error.TimedOut" => DeviceError::Timeout,
        // The object is gone: BlueZ removed the device (or its GATT objects on disconnection).
        "org.freedesktop.DBus.Error.UnknownObject"
        | "org.freedesktop.DBus.Error.UnknownMethod"
        | "org.freedesktop.DBus.Error.UnknownInterface" => gone(op),
        // bluetoothd is not running (yet), or the bus itself is gone.
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.NoServer"
        | "org.freedesktop.DBus.Error.FileNotFound"
        | "org.freedesktop.DBus.Error.Disconnected"
        | "org.freedesktop.DBus.Error.NoNetwork" => DeviceError::AdapterUnavailable(text()),
        // The bus policy refuses us: a configuration problem retrying will not fix.
        "org.freedesktop.DBus.Error.AccessDenied" | "org.freedesktop.DBus.Error.AuthFailed" => {
            other(
                format!("{} (run as root or in group `bluetooth`)", text()),
                false,
            )
        }
        _ => other(text(), true),
    }
}

/// A D-Bus object that vanished: a device BlueZ forgot (not found), or GATT objects removed
/// on disconnection (the link dropped).
fn gone(op: Op) -> DeviceError {
    match op {
        Op::Adapter => DeviceError::AdapterUnavailable("the adapter object is gone".into()),
        Op::Scan | Op::Connect => DeviceError::NotFound,
        _ => DeviceError::Disconnected,
    }
}

/// Whether a `StartNotify` error only says a notification session is already being set up
/// for this client (subscribing twice is harmless).
pub(crate) fn is_in_progress(e: &btleplug::Error) -> bool {
    dbus_name(e).is_some_and(|n| n == "org.bluez.Error.InProgress")
}

/// Whether a `Connect` error only says the device is connected already.
pub(crate) fn is_already_connected(e: &btleplug::Error) -> bool {
    dbus_name(e).is_some_and(|n| n == "org.bluez.Error.AlreadyConnected")
}

fn dbus_name(e: &btleplug::Error) -> Option<String> {
    let btleplug::Error::Other(inner) = e else {
        return None;
    };
    match inner.downcast_ref::<BluetoothError>()? {
        BluetoothError::DbusError(d) => d.name().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPM: Uuid = Uuid::from_u16(0x2A35);

    #[test]
    fn a_dropped_link_is_retryable() {
        for (name, msg) in [
            ("org.bluez.Error.NotConnected", ""),
            ("org.bluez.Error.Failed", "Not connected"),
            ("org.freedesktop.DBus.Error.UnknownObject", "no such object"),
        ] {
            let e = from_dbus(name, msg, Op::Read(BPM));
            assert_eq!(e, DeviceError::Disconnected, "{name}");
            assert!(e.is_retryable());
        }
        // The same vanished object while connecting: the device is not there.
        assert_eq!(
            from_dbus("org.freedesktop.DBus.Error.UnknownObject", "", Op::Connect),
            DeviceError::NotFound
        );
    }

    #[test]
    fn no_answer_is_a_timeout() {
        assert_eq!(
            from_dbus("org.freedesktop.DBus.Error.NoReply", "", Op::Read(BPM)),
            DeviceError::Timeout
        );
    }

    #[test]
    fn pairing_problems_need_a_person() {
        for (name, msg) in [
            ("org.bluez.Error.AuthenticationFailed", ""),
            ("org.bluez.Error.NotAuthorized", ""),
            ("org.bluez.Error.NotPermitted", "Not paired"),
            (
                "org.bluez.Error.Failed",
                "Operation failed with ATT error: 0x05",
            ),
            (
                "org.bluez.Error.Failed",
                "Operation failed with ATT error: 0x0f",
            ),
        ] {
            let e = from_dbus(name, msg, Op::Read(BPM));
            assert_eq!(e, DeviceError::AuthenticationFailed, "{name} {msg}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn a_refused_operation_names_the_characteristic() {
        let e = from_dbus(
            "org.bluez.Error.NotPermitted",
            "Write not permitted",
            Op::Write(BPM),
        );
        assert_eq!(e, DeviceError::NotPermitted(BPM, "write"));
        assert!(!e.is_retryable());
        assert_eq!(
            from_dbus(
                "org.bluez.Error.Failed",
                "Operation failed with ATT error: 0x02",
                Op::Read(BPM)
            ),
            DeviceError::NotPermitted(BPM, "read")
        );
    }

    #[test]
    fn other_att_errors_keep_their_code() {
        let e = from_dbus(
            "org.bluez.Error.Failed",
            "Operation failed with ATT error: 0x81",
            Op::Write(BPM),
        );
        assert_eq!(e, DeviceError::Att(0x81));
        assert!(e.is_retryable());
        assert_eq!(att_code("ATT error: 0xzz"), None);
        assert_eq!(att_code("no code"), None);
    }

    #[test]
    fn a_missing_bluetoothd_is_an_unavailable_adapter() {
        let e = from_dbus(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name org.bluez was not provided by any .service files",
            Op::Scan,
        );
        assert!(matches!(e, DeviceError::AdapterUnavailable(_)));
        assert!(e.is_retryable());
    }

    #[test]
    fn bus_policy_refusal_is_permanent() {
        let e = from_dbus("org.freedesktop.DBus.Error.AccessDenied", "", Op::Scan);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("bluetooth"));
    }

    #[test]
    fn radio_weather_and_unknown_names_are_retryable() {
        for (name, msg) in [
            ("org.bluez.Error.Failed", "le-connection-abort-by-local"),
            ("org.bluez.Error.InProgress", "In Progress"),
            ("org.bluez.Error.SomethingNew", ""),
            ("com.example.Whatever", "x"),
        ] {
            assert!(from_dbus(name, msg, Op::Connect).is_retryable(), "{name}");
        }
    }

    #[test]
    fn btleplug_errors_map_too() {
        assert_eq!(
            from_btleplug(&btleplug::Error::DeviceNotFound, Op::Connect),
            DeviceError::NotFound
        );
        assert_eq!(
            from_btleplug(&btleplug::Error::NotConnected, Op::Read(BPM)),
            DeviceError::Disconnected
        );
        assert_eq!(
            from_btleplug(&btleplug::Error::NoSuchCharacteristic, Op::Read(BPM)),
            DeviceError::NoSuchCharacteristic(BPM)
        );
        let wrapped = btleplug::Error::Other(Box::new(BluetoothError::DbusError(dbus_error(
            "org.bluez.Error.InProgress",
            "In Progress",
        ))));
        assert!(is_in_progress(&wrapped));
        assert!(!is_already_connected(&wrapped));
        assert!(from_btleplug(&wrapped, Op::Subscribe(BPM)).is_retryable());
    }

    fn dbus_error(name: &str, message: &str) -> dbus::Error {
        dbus::Error::new_custom(name, message)
    }
}
