//! The `rpm gateway` configuration file (`fixtures/config/gateway.toml` is the documented
//! sample). Every table rejects unknown keys; durations are humantime strings ("200ms", "2m").

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitals::{BrokerConfig, DeviceBinding, GatewayId};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Who this hub is and where it keeps its data.
    pub gateway: GatewaySection,
    /// The broker to forward to.
    pub broker: BrokerConfig,
    /// Batching and in-flight limits.
    #[serde(default)]
    pub forward: ForwardConfig,
    /// The durable queue.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Bluetooth behaviour.
    #[serde(default)]
    pub ble: BleConfig,
    /// The initial allowlist and patient bindings; the server's retained config replaces it.
    #[serde(default)]
    pub devices: Vec<DeviceBinding>,
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// This hub's id: its topic level and its broker user name.
    pub id: GatewayId,
    /// Where the queue and the last good config live.
    pub data_dir: PathBuf,
}

/// `[forward]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Most readings per MQTT message.
    pub batch_max: usize,
    /// How long a partial batch waits for more readings.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most messages awaiting the broker's PUBACK.
    pub max_inflight: u16,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            batch_max: 200,
            linger: Duration::from_millis(200),
            max_inflight: 16,
        }
    }
}

/// `[queue]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Below this much free disk the hub reports `disk_low` and logs a warning.
    pub disk_low_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            disk_low_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[ble]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleConfig {
    /// The adapter to use (`hci0`); the first one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Restart scanning this often (keeps BlueZ's D-Bus match rules from piling up).
    #[serde(with = "humantime_serde")]
    pub scan_restart: Duration,
    /// Reconnect a device whose event stream is quiet for this long while connected.
    #[serde(with = "humantime_serde")]
    pub watchdog: Duration,
    /// Set a device's clock when it is off by more than this.
    #[serde(with = "humantime_serde")]
    pub clock_tolerance: Duration,
    /// Connect only to devices BlueZ reports paired (or bonded) with this hub, as well as
    /// allowlisted. On by default; off only for devices that cannot pair at all.
    pub require_pairing: bool,
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            adapter: None,
            scan_restart: Duration::from_secs(600),
            watchdog: Duration::from_secs(120),
            clock_tolerance: Duration::from_secs(1),
            require_pairing: true,
        }
    }
}

impl GatewayConfig {
    /// Checks what serde cannot; returns the dotted key and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.broker.check()?;
        if let Some(user) = &self.broker.username
            && user != self.gateway.id.as_str()
        {
            return Err((
                "broker.username",
                format!(
                    "must be the gateway id `{}`: the broker's ACL confines a gateway to rpm/v1/gw/<user name>/#",
                    self.gateway.id
                ),
            ));
        }
        if self.forward.batch_max == 0 || self.forward.batch_max > vitals::MAX_READINGS {
            return Err((
                "forward.batch_max",
                format!("must be within 1..={}", vitals::MAX_READINGS),
            ));
        }
        if self.forward.max_inflight == 0 {
            return Err(("forward.max_inflight", "must be at least 1".into()));
        }
        check_bindings(&self.devices)
    }
}

/// Checks an allowlist, the file's `[[devices]]` or one the server sent: each device listed
/// once and bound to a patient, each user slot of a device bound once, and never slot 255
/// (the Blood Pressure Service's "unknown user", whose readings belong to nobody's slot).
/// Returns the dotted key and the problem.
pub fn check_bindings(devices: &[DeviceBinding]) -> Result<(), (&'static str, String)> {
    let mut seen = std::collections::HashSet::new();
    for d in devices {
        if !seen.insert(d.id) {
            return Err(("devices", format!("device {} is listed twice", d.id)));
        }
        if d.patient.is_none() && d.users.is_empty() {
            return Err((
                "devices",
                format!(
                    "device {} is bound to no patient (give `patient` or `users`)",
                    d.id
                ),
            ));
        }
        let mut users = std::collections::HashSet::new();
        for u in &d.users {
            if u.user == UNKNOWN_USER {
                return Err((
                    "devices.users",
                    format!(
                        "device {} binds user {UNKNOWN_USER}, the \"unknown user\" slot",
                        d.id
                    ),
                ));
            }
            if !users.insert(u.user) {
                return Err((
                    "devices.users",
                    format!("device {} binds user {} twice", d.id, u.user),
                ));
            }
        }
    }
    Ok(())
}

/// The Blood Pressure Service's user index for "unknown user".
const UNKNOWN_USER: u8 = 0xFF;

#[cfg(test)]
mod tests {
    use super::BleConfig;

    #[test]
    fn pairing_is_required_unless_the_file_turns_it_off() {
        let default: BleConfig = toml::from_str("").expect("an empty [ble]");
        assert!(default.require_pairing);
        let off: BleConfig = toml::from_str("require_pairing = false").expect("a [ble]");
        assert!(!off.require_pairing);
        // ... and the BlueZ backend is told.
        #[cfg(all(feature = "bluez", target_os = "linux"))]
        for ble in [default, off] {
            let bluez = crate::device::bluez::BluezConfig::from_ble(&ble);
            assert_eq!(bluez.require_pairing, ble.require_pairing);
        }
    }
}
