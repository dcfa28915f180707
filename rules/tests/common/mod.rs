//! Building readings for the integration tests.
#![allow(dead_code)]

use time::OffsetDateTime;
use vitals::{
    Decimal, DeviceId, DeviceIdentity, Flags, GatewayId, Kind, Observed, PatientKey, Reading,
    ReadingType, Value,
};

/// 2026-01-01T00:00:00Z.
pub const EPOCH: i64 = 1_767_225_600;

pub fn at_minutes(minutes: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(EPOCH + minutes * 60).expect("in range")
}

pub fn reading_type(kind: Kind) -> ReadingType {
    match kind {
        Kind::Systolic | Kind::Diastolic | Kind::MeanArterialPressure => ReadingType::BloodPressure,
        Kind::Spo2 | Kind::PulseRate | Kind::PulseAmplitudeIndex => ReadingType::OximetrySpotCheck,
        Kind::Fev1 | Kind::Fvc | Kind::Fev1FvcRatio | Kind::Pef => ReadingType::Spirometry,
        Kind::BodyTemperature => ReadingType::Temperature,
    }
}

/// A reading of `values` (canonical units; `None` = absent) at `minutes` after [`EPOCH`].
pub fn reading(
    patient: &str,
    minutes: i64,
    values: &[(Kind, Option<f64>)],
    flags: Flags,
) -> Reading {
    let kind = values.first().map_or(Kind::Spo2, |v| v.0);
    let now = at_minutes(minutes);
    Reading {
        id: "00000000-0000-0000-0000-000000000000"
            .parse()
            .expect("uuid"),
        seq: minutes.unsigned_abs(),
        gateway: GatewayId::new("gw-1").expect("id"),
        patient: PatientKey::new(patient).expect("key"),
        device: DeviceIdentity::new(DeviceId::Eui64([1, 2, 3, 4, 5, 6, 7, 8])),
        user_index: None,
        reading_type: reading_type(kind),
        device_time: None,
        measured_at: now,
        received_at: now,
        values: values
            .iter()
            .map(|&(kind, v)| Observed {
                kind,
                value: match v {
                    Some(v) => Value::Number(
                        Decimal::from_f64_rounded(v, kind.info().resolution).expect("finite"),
                    ),
                    None => Value::Absent(vitals::AbsentReason::Nan),
                },
                unit: kind.unit(),
            })
            .collect(),
        flags,
    }
    .with_computed_id()
}
