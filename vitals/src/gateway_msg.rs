//! The retained gateway messages: status (gateway → server) and config (server → gateway).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{DeviceId, GatewayId, PatientKey};

/// Whether the gateway is connected. The MQTT last will publishes `Offline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Connected and forwarding.
    Online,
    /// Gone: a clean shutdown, or the broker's last will after a lost connection.
    Offline,
}

/// The retained status of a gateway (`rpm/v1/gw/{id}/status`). No patient keys travel here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayStatus {
    /// Message version, 1.
    pub v: u32,
    /// The gateway.
    pub gateway: GatewayId,
    /// Online or offline.
    pub state: GatewayState,
    /// When this status was made (gateway clock).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Store-and-forward queue health; absent in the last will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// Per-device contact, battery and clock; empty in the last will.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceStatus>,
    /// The config version in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    /// Why the latest config the server sent was refused — `malformed`, `other_gateway` or
    /// `invalid_binding`, details in the gateway's log — while the one in force
    /// (`config_version`) is kept; absent when the latest one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_rejected: Option<String>,
    /// Software version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
}

/// Queue depth and disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueStatus {
    /// Readings waiting to be acknowledged by the broker.
    pub depth: u64,
    /// Measurement time of the oldest queued reading.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub oldest: Option<OffsetDateTime>,
    /// Free bytes on the queue's file system.
    pub disk_free_bytes: u64,
    /// True when free space is under the configured floor: the hub needs attention.
    pub disk_low: bool,
}

/// One device as the gateway last saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    /// The device.
    pub id: DeviceId,
    /// Last successful contact.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_contact: Option<OffsetDateTime>,
    /// Battery level, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Device clock minus gateway clock, in milliseconds, at last contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

/// The retained configuration the server gives a gateway (`rpm/v1/gw/{id}/config`): which
/// devices it may talk to and which patient each reading belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Message version, 1.
    pub v: u32,
    /// The gateway this is for (must match the topic and the gateway's own id).
    pub gateway: GatewayId,
    /// Monotonic config version; a gateway ignores anything older than what it has.
    pub version: u64,
    /// The allowlist.
    pub devices: Vec<DeviceBinding>,
}

/// One allowed device and who its readings belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBinding {
    /// The device.
    pub id: DeviceId,
    /// Patient for readings with no user index, or any user index not listed in `users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<PatientKey>,
    /// Multi-user devices (BP cuffs): user slot → patient.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserBinding>,
}

/// A multi-user device's user slot bound to a patient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBinding {
    /// The device's user index (0..=254; 255 means "unknown user" in the BLS spec).
    pub user: u8,
    /// The patient.
    pub patient: PatientKey,
}

impl DeviceBinding {
    /// The patient a reading from this device with `user_index` belongs to, if any.
    pub fn patient_for(&self, user_index: Option<u8>) -> Option<&PatientKey> {
        match user_index {
            Some(u) => self
                .users
                .iter()
                .find(|b| b.user == u)
                .map(|b| &b.patient)
                .or(self.patient.as_ref()),
            None => self.patient.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_slots_pick_the_patient() {
        let binding: DeviceBinding = serde_json::from_str(
            r#"{"id":"bdaddr:00:11:22:33:44:55","users":[{"user":1,"patient":"pk-a"},{"user":2,"patient":"pk-b"}]}"#,
        )
        .expect("valid binding");
        assert_eq!(
            binding.patient_for(Some(2)).map(PatientKey::as_str),
            Some("pk-b")
        );
        assert_eq!(binding.patient_for(Some(3)), None);
        assert_eq!(binding.patient_for(None), None);
    }

    #[test]
    fn status_round_trips_and_last_will_is_small() {
        let will = GatewayStatus {
            v: 1,
            gateway: GatewayId::new("gw-1").expect("valid"),
            state: GatewayState::Offline,
            at: OffsetDateTime::UNIX_EPOCH,
            queue: None,
            devices: vec![],
            config_version: None,
            config_rejected: None,
            software: None,
        };
        let json = serde_json::to_string(&will).expect("json");
        assert_eq!(
            json,
            r#"{"v":1,"gateway":"gw-1","state":"offline","at":"1970-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            serde_json::from_str::<GatewayStatus>(&json).expect("parse"),
            will
        );
    }
}
