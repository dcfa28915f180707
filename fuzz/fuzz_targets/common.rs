//! Checks shared by the fuzz targets, included by each with
//! `#[path = "common.rs"] mod common;`.
//!
//! One target per module of `gateway::codec` that decodes something (`ieee11073`,
//! `blood_pressure`, `pulse_oximeter`, `racp`, `date_time`, `device_information`, `battery`,
//! `blood_pressure_record`, `ghs`, `segment`, `vitalograph`), plus `decode` (every
//! characteristic in one target) and `streams` (segments, RACP and serial frames cut at
//! arbitrary points). The characteristic lists below split `codec::SUPPORTED` by module;
//! a compile-time check makes every supported characteristic appear in exactly one of them.

#![allow(dead_code)]

use gateway::codec::blood_pressure_record::RecordBody;
use gateway::codec::ghs::{GhsRacp, Observation, StoredObservation};
use gateway::codec::vitalograph::{self, FrameReader, LungMonitorResult};
use gateway::codec::{self, Float11073, uuid};

/// `codec::blood_pressure`.
pub const BLOOD_PRESSURE: &[u16] = &[
    uuid::BLOOD_PRESSURE_MEASUREMENT,
    uuid::INTERMEDIATE_CUFF_PRESSURE,
    uuid::BLOOD_PRESSURE_FEATURE,
];
/// `codec::pulse_oximeter`.
pub const PULSE_OXIMETER: &[u16] = &[
    uuid::PLX_SPOT_CHECK_MEASUREMENT,
    uuid::PLX_CONTINUOUS_MEASUREMENT,
    uuid::PLX_FEATURES,
];
/// `codec::racp`.
pub const RACP: &[u16] = &[uuid::RECORD_ACCESS_CONTROL_POINT];
/// `codec::date_time`.
pub const DATE_TIME: &[u16] = &[uuid::DATE_TIME, uuid::CURRENT_TIME];
/// `codec::device_information`.
pub const DEVICE_INFORMATION: &[u16] = &[
    uuid::MANUFACTURER_NAME,
    uuid::MODEL_NUMBER,
    uuid::SERIAL_NUMBER,
    uuid::HARDWARE_REVISION,
    uuid::FIRMWARE_REVISION,
    uuid::SOFTWARE_REVISION,
    uuid::SYSTEM_ID,
    uuid::REGULATORY_CERTIFICATION_DATA,
    uuid::PNP_ID,
];
/// `codec::battery`.
pub const BATTERY: &[u16] = &[uuid::BATTERY_LEVEL];
/// `codec::blood_pressure_record`.
pub const BLOOD_PRESSURE_RECORD: &[u16] = &[uuid::BLOOD_PRESSURE_RECORD];
/// `codec::ghs`.
pub const GHS: &[u16] = &[
    uuid::LIVE_HEALTH_OBSERVATIONS,
    uuid::STORED_HEALTH_OBSERVATIONS,
    uuid::HEALTH_SENSOR_FEATURES,
    uuid::GHS_CONTROL_POINT,
    uuid::OBSERVATION_SCHEDULE_CHANGED,
];

/// The per-module lists together.
pub const FAMILIES: &[&[u16]] = &[
    BLOOD_PRESSURE,
    PULSE_OXIMETER,
    RACP,
    DATE_TIME,
    DEVICE_INFORMATION,
    BATTERY,
    BLOOD_PRESSURE_RECORD,
    GHS,
];

// Every characteristic in `codec::SUPPORTED` is in exactly one list, and the lists hold
// nothing else (same total count). Fails the build when a characteristic is added to the
// codec but not to a fuzz target.
const _: () = {
    let mut total = 0;
    let mut f = 0;
    while f < FAMILIES.len() {
        total += FAMILIES[f].len();
        f += 1;
    }
    assert!(
        total == codec::SUPPORTED.len(),
        "fuzz family lists != codec::SUPPORTED"
    );
    let mut s = 0;
    while s < codec::SUPPORTED.len() {
        let wanted = codec::SUPPORTED[s].0;
        let mut seen = 0;
        let mut f = 0;
        while f < FAMILIES.len() {
            let mut i = 0;
            while i < FAMILIES[f].len() {
                if FAMILIES[f][i] == wanted {
                    seen += 1;
                }
                i += 1;
            }
            f += 1;
        }
        assert!(
            seen == 1,
            "a supported characteristic is not in exactly one fuzz family"
        );
        s += 1;
    }
};

/// Splits the input into a selector (the first byte, modulo `n`) and the rest.
pub fn select(data: &[u8], n: usize) -> Option<(usize, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    (n > 0).then(|| (usize::from(selector) % n, rest))
}

/// The first byte picks a characteristic of `uuids` (modulo their number), the rest is its
/// value, checked with [`characteristic`].
pub fn one_of(uuids: &[u16], data: &[u8]) {
    if let Some((i, bytes)) = select(data, uuids.len()) {
        characteristic(uuids[i], bytes);
    }
}

/// The first byte picks a characteristic of `uuids` or, after them, one of `bodies`
/// (modulo their total number); the rest is the input.
pub fn one_of_or(uuids: &[u16], bodies: &[fn(&[u8])], data: &[u8]) {
    if let Some((i, bytes)) = select(data, uuids.len() + bodies.len()) {
        match uuids.get(i) {
            Some(&u) => characteristic(u, bytes),
            None => bodies[i - uuids.len()](bytes),
        }
    }
}

/// A characteristic value: decoding never panics, and whatever decodes serializes,
/// re-encodes, and decodes again to the same value (less the quirks encoding drops).
pub fn characteristic(uuid16: u16, bytes: &[u8]) {
    if let Ok(decoded) = codec::decode(uuid16, bytes) {
        let _ = serde_json::to_string(&decoded);
        let again = codec::encode(&decoded).expect("a decoded value re-encodes");
        let back = codec::decode(uuid16, &again).expect("re-encoded bytes decode");
        assert_eq!(back.without_quirks(), decoded.without_quirks());
    }
}

/// A joined Blood Pressure Record body (segments removed).
pub fn record_body(body: &[u8]) {
    if let Ok(r) = RecordBody::decode(body) {
        let again = r.encode().expect("a decoded record re-encodes");
        assert!(RecordBody::decode(&again).is_ok());
    }
}

/// A joined GHS observation (Live Health Observations, segments removed).
pub fn observation(body: &[u8]) {
    if let Ok(o) = Observation::decode(body) {
        let _ = serde_json::to_string(&o);
        let again = o.encode().expect("a decoded observation re-encodes");
        let back = Observation::decode(&again).expect("re-encoded bytes decode");
        let _ = o.numerics();
        assert_eq!(back.without_quirks(), o.without_quirks());
    }
}

/// A joined GHS stored observation (record number and observation, segments removed).
pub fn stored_observation(body: &[u8]) {
    if let Ok(s) = StoredObservation::decode(body) {
        assert!(StoredObservation::decode(&s.encode().expect("re-encodes")).is_ok());
    }
}

/// A GHS RACP value: what decodes (strictly) encodes to the same bytes.
pub fn ghs_racp(bytes: &[u8]) {
    if let Ok(m) = GhsRacp::decode(bytes) {
        assert_eq!(m.encode(), bytes);
    }
}

/// A Vitalograph Lung Monitor frame: what decodes encodes to the same bytes.
pub fn lung_monitor_frame(frame: &[u8]) {
    if let Ok(p) = LungMonitorResult::decode(frame) {
        assert_eq!(p.encode().expect("re-encodes"), frame);
    }
}

/// Serial bytes into a [`FrameReader`]: frames stay bounded and each is checked with
/// [`lung_monitor_frame`].
pub fn serial_chunk(reader: &mut FrameReader, chunk: &[u8]) {
    for frame in reader.push(chunk) {
        assert!(frame.len() <= vitalograph::FRAME_LEN);
        lung_monitor_frame(&frame);
    }
}

/// SFLOAT bits: formatting and conversion never panic, and the decoded value re-encodes to
/// bits that decode to the same value.
pub fn sfloat(bits: u16) {
    let value = Float11073::from_sfloat_bits(bits);
    number(&value);
    let again = value.to_sfloat_bits().expect("a decoded SFLOAT re-encodes");
    assert_eq!(Float11073::from_sfloat_bits(again), value);
}

/// FLOAT bits: as [`sfloat`].
pub fn float(bits: u32) {
    let value = Float11073::from_float_bits(bits);
    number(&value);
    let again = value.to_float_bits().expect("a decoded FLOAT re-encodes");
    assert_eq!(Float11073::from_float_bits(again), value);
}

fn number(value: &Float11073) {
    let _ = value.to_string();
    let _ = value.to_f64();
    let _ = serde_json::to_string(value);
}
