//! Decoded GATT values to [`vitals::Reading`]s: kinds, units, flags, times, patient.
//!
//! Pure functions of the decoded value and a [`MapContext`] (who, which device, what the
//! session measured about the device clock, when it arrived), so every rule is unit-tested
//! here and the session only wires them up.
//!
//! - Special IEEE-11073 values become [`Value::Absent`] with their reason; never numbers.
//! - `device_time` is the raw device time stamp, `None` when absent or partly "not known".
//! - `measured_at` is the device time in the configured zone minus the clock offset the
//!   session measured (device − gateway); the receive time when there is no device time.
//! - BLS user 0xFF is "unknown user" and maps to no user index.
//! - PLX "data for demonstration / testing" is not patient data and is refused.

use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use vitals::{
    AbsentReason, Decimal, DeviceBinding, DeviceIdentity, Flag, Flags, GatewayId, Kind, Observed,
    Reading, ReadingError, ReadingId, ReadingType, Unit, Value,
};

use crate::codec::blood_pressure::{
    BloodPressureMeasurement, BpStatusFlags, PressureUnit, PulseRateRange,
};
use crate::codec::date_time::DateTime;
use crate::codec::pulse_oximeter::{
    PlxContinuousMeasurement, PlxDeviceAndSensorStatus, PlxMeasurementStatus,
    PlxSpotCheckMeasurement,
};
use crate::codec::{Float11073, SpecialValue};

use crate::codec::ghs::{self, ElapsedTime, MeasurementStatus, Observation, mdc};

use super::spirometry::SpirometryResult;

/// What the device clock said compared with the gateway's, at the last contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockCorrection {
    /// Device clock minus gateway clock; `None` when the device has no readable clock.
    pub device_minus_gateway: Option<time::Duration>,
    /// The zone device wall-clock times are read in (the zone the gateway sets them in).
    pub zone: UtcOffset,
}

/// Everything besides the decoded value that a reading needs.
#[derive(Clone, Copy, Debug)]
pub struct MapContext<'a> {
    /// This gateway.
    pub gateway: &'a GatewayId,
    /// The device's allowlist entry.
    pub binding: &'a DeviceBinding,
    /// The device.
    pub identity: &'a DeviceIdentity,
    /// Gateway time of arrival.
    pub received_at: OffsetDateTime,
    /// The clock correction for this value's time stamp.
    pub clock: ClockCorrection,
    /// The value came through a RACP transfer.
    pub from_storage: bool,
    /// The device reported a low battery at this contact.
    pub low_battery: bool,
}

/// Why a decoded value did not become a reading. Counted by the session under
/// [`MapError::label`]; the reading is dropped, the session goes on.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MapError {
    /// No patient is bound to this device (or to this user slot).
    #[error("no patient bound for user slot {user:?}")]
    NoPatient {
        /// The user slot, if the device sent one.
        user: Option<u8>,
    },
    /// A number whose exponent no [`Decimal`] holds.
    #[error("{kind}: exponent {exponent} out of range")]
    Exponent {
        /// The kind.
        kind: Kind,
        /// The exponent sent.
        exponent: i8,
    },
    /// Demonstration or test data, not a measurement of the patient.
    #[error("device marked the value as demonstration or test data")]
    NotPatientData,
    /// A GHS observation with no numeric of a type the record holds.
    #[error("no observation of a known type")]
    NoKnownObservation,
    /// The reading failed the structural checks.
    #[error(transparent)]
    Invalid(#[from] ReadingError),
}

impl MapError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            MapError::NoPatient { .. } => "no_patient",
            MapError::Exponent { .. } => "exponent",
            MapError::NotPatientData => "not_patient_data",
            MapError::NoKnownObservation => "unknown_observation_type",
            MapError::Invalid(_) => "invalid",
        }
    }
}

fn absent(s: SpecialValue) -> AbsentReason {
    match s {
        SpecialValue::Nan => AbsentReason::Nan,
        SpecialValue::Nres => AbsentReason::Nres,
        SpecialValue::PositiveInfinity => AbsentReason::PositiveInfinity,
        SpecialValue::NegativeInfinity => AbsentReason::NegativeInfinity,
        SpecialValue::Reserved => AbsentReason::Reserved,
    }
}

/// One IEEE-11073 number as an observed value.
pub fn observed(kind: Kind, v: Float11073, unit: Unit) -> Result<Observed, MapError> {
    let value = match v {
        Float11073::Value { mantissa, exponent } => Value::Number(
            Decimal::new(i64::from(mantissa), exponent)
                .ok_or(MapError::Exponent { kind, exponent })?,
        ),
        Float11073::Special(s) => Value::Absent(absent(s)),
    };
    Ok(Observed { kind, value, unit })
}

/// `(device_time, measured_at)` for a device time stamp.
///
/// A stamp whose only unknown part is the year (year 0 on the wire: a clock set without a
/// year) is still what the device said, so it stays in `device_time` as year 0 and keeps the
/// reading's id stable when the device sends the record again; its `measured_at` is the
/// receive time, since the stamp cannot be placed on the calendar.
pub fn times(
    stamp: Option<&DateTime>,
    ctx: &MapContext<'_>,
) -> (Option<PrimitiveDateTime>, OffsetDateTime) {
    let full = stamp.and_then(DateTime::to_primitive);
    let device_time = full.or_else(|| {
        let s = stamp?;
        if s.year.is_some() {
            return None;
        }
        DateTime {
            year: Some(0),
            ..*s
        }
        .to_primitive()
    });
    let measured_at = match full {
        Some(t) => {
            let on_device = t.assume_offset(ctx.clock.zone);
            match ctx.clock.device_minus_gateway {
                Some(offset) => on_device - offset,
                None => on_device,
            }
        }
        None => ctx.received_at,
    };
    (device_time, measured_at)
}

fn build(
    ctx: &MapContext<'_>,
    reading_type: ReadingType,
    user_index: Option<u8>,
    stamp: Option<&DateTime>,
    values: Vec<Observed>,
    flags: Flags,
) -> Result<Reading, MapError> {
    let (device_time, measured_at) = times(stamp, ctx);
    build_at(
        ctx,
        reading_type,
        user_index,
        (device_time, measured_at),
        values,
        flags,
    )
}

fn build_at(
    ctx: &MapContext<'_>,
    reading_type: ReadingType,
    user_index: Option<u8>,
    (device_time, measured_at): (Option<PrimitiveDateTime>, OffsetDateTime),
    values: Vec<Observed>,
    mut flags: Flags,
) -> Result<Reading, MapError> {
    let patient = ctx
        .binding
        .patient_for(user_index)
        .ok_or(MapError::NoPatient { user: user_index })?
        .clone();
    if ctx.from_storage {
        flags.insert(Flag::FromStorage);
    }
    if ctx.low_battery {
        flags.insert(Flag::LowBattery);
    }
    let reading = Reading {
        id: ReadingId(uuid::Uuid::nil()),
        seq: 0,
        gateway: ctx.gateway.clone(),
        patient,
        device: ctx.identity.clone(),
        user_index,
        reading_type,
        device_time,
        measured_at,
        received_at: ctx.received_at,
        values,
        flags,
    }
    .with_computed_id();
    reading.validate_values()?;
    Ok(reading)
}

/// Blood Pressure Measurement (0x2A35, live or from a record).
pub fn blood_pressure(
    m: &BloodPressureMeasurement,
    ctx: &MapContext<'_>,
) -> Result<Reading, MapError> {
    let unit = match m.unit {
        PressureUnit::MmHg => Unit::MmHg,
        PressureUnit::KPa => Unit::KPa,
    };
    let mut values = vec![
        observed(Kind::Systolic, m.systolic, unit)?,
        observed(Kind::Diastolic, m.diastolic, unit)?,
        observed(Kind::MeanArterialPressure, m.mean_arterial_pressure, unit)?,
    ];
    if let Some(pr) = m.pulse_rate_per_min {
        values.push(observed(Kind::PulseRate, pr, Unit::PerMin)?);
    }
    let mut flags = Flags::EMPTY;
    if let Some(status) = &m.status {
        for (bit, flag) in [
            (BpStatusFlags::BODY_MOVEMENT_DETECTED, Flag::BodyMovement),
            (BpStatusFlags::CUFF_FIT_LOOSE, Flag::CuffLoose),
            (
                BpStatusFlags::IRREGULAR_PULSE_DETECTED,
                Flag::IrregularPulse,
            ),
            (
                BpStatusFlags::IMPROPER_MEASUREMENT_POSITION,
                Flag::ImproperPosition,
            ),
        ] {
            if status.flags.contains(bit) {
                flags.insert(flag);
            }
        }
        match status.pulse_rate_range {
            PulseRateRange::ExceedsUpperLimit => flags.insert(Flag::PulseRateHigh),
            PulseRateRange::BelowLowerLimit => flags.insert(Flag::PulseRateLow),
            PulseRateRange::WithinRange | PulseRateRange::Reserved => {}
        }
    }
    let user = m.user_id.filter(|u| *u != 0xFF);
    build(
        ctx,
        ReadingType::BloodPressure,
        user,
        m.timestamp.as_ref(),
        values,
        flags,
    )
}

fn plx_flags(
    measurement: Option<PlxMeasurementStatus>,
    device: Option<PlxDeviceAndSensorStatus>,
) -> Result<Flags, MapError> {
    let mut flags = Flags::EMPTY;
    if let Some(s) = measurement {
        if s.contains(PlxMeasurementStatus::DATA_FOR_DEMONSTRATION)
            || s.contains(PlxMeasurementStatus::DATA_FOR_TESTING)
        {
            return Err(MapError::NotPatientData);
        }
        for (bit, flag) in [
            (
                PlxMeasurementStatus::EARLY_ESTIMATED_DATA,
                Flag::EarlyEstimate,
            ),
            (
                PlxMeasurementStatus::CALIBRATION_ONGOING,
                Flag::CalibrationOngoing,
            ),
            (
                PlxMeasurementStatus::QUESTIONABLE_MEASUREMENT_DETECTED,
                Flag::SignalQuestionable,
            ),
            (
                PlxMeasurementStatus::INVALID_MEASUREMENT_DETECTED,
                Flag::SignalQuestionable,
            ),
            (
                PlxMeasurementStatus::DATA_FROM_MEASUREMENT_STORAGE,
                Flag::FromStorage,
            ),
        ] {
            if s.contains(bit) {
                flags.insert(flag);
            }
        }
    }
    if let Some(s) = device {
        use PlxDeviceAndSensorStatus as D;
        for (bit, flag) in [
            (D::EQUIPMENT_MALFUNCTION_DETECTED, Flag::SensorMalfunction),
            (
                D::SIGNAL_PROCESSING_IRREGULARITY_DETECTED,
                Flag::SignalQuestionable,
            ),
            (D::INADEQUATE_SIGNAL_DETECTED, Flag::SignalQuestionable),
            (D::POOR_SIGNAL_DETECTED, Flag::SignalQuestionable),
            (D::ERRATIC_SIGNAL_DETECTED, Flag::SignalQuestionable),
            (D::LOW_PERFUSION_DETECTED, Flag::LowPerfusion),
            (D::NONPULSATILE_SIGNAL_DETECTED, Flag::NonPulsatile),
            (D::QUESTIONABLE_PULSE_DETECTED, Flag::PulseQuestionable),
            (D::SENSOR_INTERFERENCE_DETECTED, Flag::Artifact),
            (D::SENSOR_UNCONNECTED_TO_USER, Flag::SensorDisplaced),
            (D::SENSOR_DISPLACED, Flag::SensorDisplaced),
            (D::SENSOR_DISCONNECTED, Flag::SensorDisplaced),
            (D::UNKNOWN_SENSOR_CONNECTED, Flag::SensorMalfunction),
            (D::SENSOR_MALFUNCTIONING, Flag::SensorMalfunction),
        ] {
            if s.contains(bit) {
                flags.insert(flag);
            }
        }
    }
    Ok(flags)
}

/// PLX Spot-Check Measurement (0x2A5E).
pub fn plx_spot_check(
    m: &PlxSpotCheckMeasurement,
    ctx: &MapContext<'_>,
) -> Result<Reading, MapError> {
    let mut values = vec![
        observed(Kind::Spo2, m.spo2_percent, Unit::Percent)?,
        observed(Kind::PulseRate, m.pulse_rate_per_min, Unit::PerMin)?,
    ];
    if let Some(pai) = m.pulse_amplitude_index_percent {
        values.push(observed(Kind::PulseAmplitudeIndex, pai, Unit::Percent)?);
    }
    let mut flags = plx_flags(m.measurement_status, m.device_and_sensor_status)?;
    if m.device_clock_not_set {
        flags.insert(Flag::ClockNotSet);
    }
    build(
        ctx,
        ReadingType::OximetrySpotCheck,
        None,
        m.timestamp.as_ref(),
        values,
        flags,
    )
}

/// PLX Continuous Measurement (0x2A5F): the Normal SpO2/PR pair, no time stamp.
pub fn plx_continuous(
    m: &PlxContinuousMeasurement,
    ctx: &MapContext<'_>,
) -> Result<Reading, MapError> {
    let mut values = vec![
        observed(Kind::Spo2, m.normal.spo2_percent, Unit::Percent)?,
        observed(Kind::PulseRate, m.normal.pulse_rate_per_min, Unit::PerMin)?,
    ];
    if let Some(pai) = m.pulse_amplitude_index_percent {
        values.push(observed(Kind::PulseAmplitudeIndex, pai, Unit::Percent)?);
    }
    let flags = plx_flags(m.measurement_status, m.device_and_sensor_status)?;
    build(
        ctx,
        ReadingType::OximetryContinuous,
        None,
        None,
        values,
        flags,
    )
}

/// A spirometer result (any [`super::spirometry::SpirometerDriver`]).
pub fn spirometry(r: &SpirometryResult, ctx: &MapContext<'_>) -> Result<Reading, MapError> {
    let mut values = vec![observed(Kind::Fev1, r.fev1_l, Unit::Litre)?];
    if let Some(fvc) = r.fvc_l {
        values.push(observed(Kind::Fvc, fvc, Unit::Litre)?);
    }
    if let Some(pef) = r.pef_l_min {
        values.push(observed(Kind::Pef, pef, Unit::LitrePerMin)?);
    }
    let mut flags = Flags::EMPTY;
    if r.from_storage {
        flags.insert(Flag::FromStorage);
    }
    if r.clock_not_set {
        flags.insert(Flag::ClockNotSet);
    }
    if r.poor_effort {
        flags.insert(Flag::SignalQuestionable);
    }
    build(
        ctx,
        ReadingType::Spirometry,
        None,
        r.timestamp.as_ref(),
        values,
        flags,
    )
}

/// The kind, unit and reading type of a GHS numeric, by its MDC type and unit codes.
/// `None` for what the record does not hold (or a unit it cannot take for that kind).
pub fn ghs_kind(observation_type: u32, unit: u16) -> Option<(Kind, Unit, ReadingType)> {
    use mdc::unit as u;
    let unit = match unit {
        u::LITRE => Unit::Litre,
        u::MILLILITRE => Unit::Millilitre,
        u::LITRE_PER_MIN => Unit::LitrePerMin,
        u::LITRE_PER_SEC => Unit::LitrePerSecond,
        u::PERCENT => Unit::Percent,
        u::DIMLESS => Unit::One,
        u::BEAT_PER_MIN => Unit::PerMin,
        u::MMHG => Unit::MmHg,
        u::KILO_PASCAL => Unit::KPa,
        _ => return None,
    };
    let (kind, reading_type) = match observation_type {
        mdc::FEV1 => (Kind::Fev1, ReadingType::Spirometry),
        mdc::FVC => (Kind::Fvc, ReadingType::Spirometry),
        mdc::FEV1_FVC => (Kind::Fev1FvcRatio, ReadingType::Spirometry),
        mdc::PEF => (Kind::Pef, ReadingType::Spirometry),
        mdc::SPO2 => (Kind::Spo2, ReadingType::OximetrySpotCheck),
        mdc::PULSE_OXIM_RATE => (Kind::PulseRate, ReadingType::OximetrySpotCheck),
        mdc::BP_SYS => (Kind::Systolic, ReadingType::BloodPressure),
        mdc::BP_DIA => (Kind::Diastolic, ReadingType::BloodPressure),
        mdc::BP_MEAN => (Kind::MeanArterialPressure, ReadingType::BloodPressure),
        _ => return None,
    };
    // The unit must convert onto the kind's canonical unit.
    kind.to_canonical(Decimal::new(1, 0)?, unit).ok()?;
    Some((kind, unit, reading_type))
}

/// `(device_time, measured_at)` for a GHS (Elapsed Time) stamp: a time of day is placed by
/// its own UTC/TZ offset when it states one, else in the configured zone, and corrected by
/// the measured device clock offset; a tick counter or no stamp is the receive time.
pub fn ghs_times(
    stamp: Option<&ElapsedTime>,
    ctx: &MapContext<'_>,
) -> (Option<PrimitiveDateTime>, OffsetDateTime) {
    let Some(wall) = stamp.and_then(ElapsedTime::wall_clock) else {
        return (None, ctx.received_at);
    };
    let zone = stamp
        .and_then(ElapsedTime::offset)
        .unwrap_or(ctx.clock.zone);
    let on_device = wall.assume_offset(zone);
    let measured_at = match ctx.clock.device_minus_gateway {
        Some(offset) => on_device - offset,
        None => on_device,
    };
    (Some(wall), measured_at)
}

/// One GHS numeric with its kind and unit.
type GhsValue = (Kind, Unit, ghs::NumericItem);

/// A GHS observation (single, compound or bundle) to readings: its numerics grouped by
/// reading type, one reading per type. Numerics of types the record does not hold are
/// skipped; an observation with none is [`MapError::NoKnownObservation`].
pub fn ghs_observation(o: &Observation, ctx: &MapContext<'_>) -> Vec<Result<Reading, MapError>> {
    let items = o.numerics();
    let mut groups: Vec<(ReadingType, Vec<GhsValue>)> = Vec::new();
    for item in items {
        let Some((kind, unit, rt)) = ghs_kind(item.observation_type, item.unit) else {
            continue;
        };
        match groups.iter_mut().find(|(t, _)| *t == rt) {
            Some((_, g)) => g.push((kind, unit, item)),
            None => groups.push((rt, vec![(kind, unit, item)])),
        }
    }
    if groups.is_empty() {
        return vec![Err(MapError::NoKnownObservation)];
    }
    groups
        .into_iter()
        .map(|(reading_type, group)| {
            let mut flags = Flags::EMPTY;
            let mut values = Vec::with_capacity(group.len());
            for (kind, unit, item) in &group {
                if let Some(s) = item.measurement_status {
                    if s.contains(MeasurementStatus::TEST_DATA) {
                        return Err(MapError::NotPatientData);
                    }
                    for (bit, flag) in [
                        (MeasurementStatus::INVALID, Flag::SignalQuestionable),
                        (MeasurementStatus::QUESTIONABLE, Flag::SignalQuestionable),
                        (MeasurementStatus::CALIBRATING, Flag::CalibrationOngoing),
                        (MeasurementStatus::EARLY_ESTIMATE, Flag::EarlyEstimate),
                    ] {
                        if s.contains(bit) {
                            flags.insert(flag);
                        }
                    }
                }
                values.push(observed(*kind, item.value, *unit)?);
            }
            let first = group.first().map(|(_, _, i)| *i);
            let stamp = first.and_then(|i| i.time_stamp);
            if stamp.is_some_and(|t| !t.tick_counter && !t.current_timeline) {
                // Stamped on a timeline the sensor has since left (its clock was reset).
                flags.insert(Flag::ClockNotSet);
            }
            build_at(
                ctx,
                reading_type,
                first.and_then(|i| i.patient_id),
                ghs_times(stamp.as_ref(), ctx),
                values,
                flags,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::blood_pressure::BpMeasurementStatus;
    use vitals::{DeviceId, PatientKey, UserBinding};

    fn binding() -> DeviceBinding {
        DeviceBinding {
            id: DeviceId::BdAddr([0xc0, 0xff, 0xee, 0, 0, 1]),
            patient: None,
            users: vec![
                UserBinding {
                    user: 1,
                    patient: PatientKey::new("pk-a").expect("valid"),
                },
                UserBinding {
                    user: 2,
                    patient: PatientKey::new("pk-b").expect("valid"),
                },
            ],
        }
    }

    fn with_ctx<T>(offset_s: Option<i64>, f: impl FnOnce(&MapContext<'_>) -> T) -> T {
        let gw = GatewayId::new("gw-1").expect("valid");
        let b = binding();
        let identity = DeviceIdentity::new(b.id);
        let ctx = MapContext {
            gateway: &gw,
            binding: &b,
            identity: &identity,
            received_at: time::macros::datetime!(2025-03-04 09:00:00 UTC),
            clock: ClockCorrection {
                device_minus_gateway: offset_s.map(time::Duration::seconds),
                zone: UtcOffset::UTC,
            },
            from_storage: false,
            low_battery: false,
        };
        f(&ctx)
    }

    fn ghs_spirometry(status: Option<MeasurementStatus>) -> Observation {
        use crate::codec::ghs::{ObservationClass, ObservationValue};
        let at = time::macros::datetime!(2025-03-04 08:30:00);
        Observation {
            class: ObservationClass::Bundle,
            observation_type: None,
            time_stamp: ElapsedTime::utc_seconds(at, 1),
            measurement_status: status,
            patient_id: Some(2),
            value: ObservationValue::Bundle(vec![
                Observation::numeric(mdc::FEV1, mdc::unit::LITRE, Float11073::new(152, -2)),
                Observation::numeric(mdc::FVC, mdc::unit::LITRE, Float11073::new(281, -2)),
                Observation::numeric(mdc::PEF, mdc::unit::LITRE_PER_MIN, Float11073::NAN),
                // A type the record does not hold is skipped, not an error.
                Observation::numeric(0x0002_FFFF, mdc::unit::LITRE, Float11073::new(1, 0)),
            ]),
            ..Observation::numeric(0, 0, Float11073::NAN)
        }
    }

    #[test]
    fn a_ghs_spirometry_bundle_is_one_reading_with_its_special_values_absent() {
        let out = with_ctx(Some(60), |ctx| ghs_observation(&ghs_spirometry(None), ctx));
        assert_eq!(out.len(), 1);
        let r = out[0].as_ref().expect("maps");
        assert_eq!(r.reading_type, ReadingType::Spirometry);
        assert_eq!(r.patient.as_str(), "pk-b");
        let kinds: Vec<Kind> = r.values.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, [Kind::Fev1, Kind::Fvc, Kind::Pef]);
        assert_eq!(
            r.values[0].value,
            Value::Number(Decimal::new(152, -2).expect("ok"))
        );
        assert_eq!(r.values[2].value, Value::Absent(AbsentReason::Nan));
        // A UTC stamp, corrected by the measured device clock offset (+60 s).
        assert_eq!(
            r.device_time,
            Some(time::macros::datetime!(2025-03-04 08:30:00))
        );
        assert_eq!(
            r.measured_at,
            time::macros::datetime!(2025-03-04 08:29:00 UTC)
        );
    }

    #[test]
    fn ghs_test_data_is_refused_and_unknown_types_alone_are_unmapped() {
        let out = with_ctx(None, |ctx| {
            ghs_observation(&ghs_spirometry(Some(MeasurementStatus::TEST_DATA)), ctx)
        });
        assert_eq!(out, vec![Err(MapError::NotPatientData)]);
        let lone = Observation {
            patient_id: Some(1),
            ..Observation::numeric(0x0002_FFFF, mdc::unit::LITRE, Float11073::new(1, 0))
        };
        let out = with_ctx(None, |ctx| ghs_observation(&lone, ctx));
        assert_eq!(out, vec![Err(MapError::NoKnownObservation)]);
        // FEV1 in a unit a volume cannot take is not mapped either.
        assert_eq!(ghs_kind(mdc::FEV1, mdc::unit::MMHG), None);
        assert_eq!(
            ghs_kind(mdc::PEF, mdc::unit::LITRE_PER_SEC),
            Some((Kind::Pef, Unit::LitrePerSecond, ReadingType::Spirometry))
        );
    }

    fn bpm() -> BloodPressureMeasurement {
        BloodPressureMeasurement::decode(&[0x00, 0x78, 0x00, 0x50, 0x00, 0x5D, 0x00])
            .expect("valid")
    }

    #[test]
    fn a_stamp_without_a_year_keeps_the_id_stable_when_the_record_is_sent_again() {
        let stamp = DateTime {
            year: None,
            ..DateTime::new(2025, 4, 17, 20, 41, 59)
        };
        let mut m = bpm();
        m.user_id = Some(2);
        m.timestamp = Some(stamp);
        let first = with_ctx(None, |ctx| blood_pressure(&m, ctx).expect("maps"));
        assert_eq!(
            first.device_time.map(|t| t.year()),
            Some(0),
            "what the device said, year unknown"
        );
        assert_eq!(
            first.measured_at,
            time::macros::datetime!(2025-03-04 09:00:00 UTC),
            "placed at receipt"
        );
        // The same record re-sent an hour later: same id.
        let gw = GatewayId::new("gw-1").expect("valid");
        let b = binding();
        let identity = DeviceIdentity::new(b.id);
        let later = MapContext {
            gateway: &gw,
            binding: &b,
            identity: &identity,
            received_at: time::macros::datetime!(2025-03-04 10:00:00 UTC),
            clock: ClockCorrection {
                device_minus_gateway: None,
                zone: UtcOffset::UTC,
            },
            from_storage: true,
            low_battery: false,
        };
        let again = blood_pressure(&m, &later).expect("maps");
        assert_eq!(again.id, first.id);
    }

    #[test]
    fn blood_pressure_maps_values_status_user_and_corrected_time() {
        let mut m = bpm();
        m.user_id = Some(2);
        m.pulse_rate_per_min = Some(Float11073::new(72, 0));
        m.timestamp = Some(DateTime::new(2025, 3, 4, 8, 10, 0));
        m.status = Some(BpMeasurementStatus {
            flags: BpStatusFlags::CUFF_FIT_LOOSE | BpStatusFlags::IRREGULAR_PULSE_DETECTED,
            pulse_rate_range: PulseRateRange::ExceedsUpperLimit,
        });
        m.diastolic = Float11073::NAN;
        let r = with_ctx(Some(600), |ctx| blood_pressure(&m, ctx)).expect("maps");
        assert_eq!(r.patient.as_str(), "pk-b");
        assert_eq!(r.user_index, Some(2));
        assert_eq!(
            r.device_time,
            Some(time::macros::datetime!(2025-03-04 08:10:00))
        );
        // The device clock was 10 minutes fast.
        assert_eq!(
            r.measured_at,
            time::macros::datetime!(2025-03-04 08:00:00 UTC)
        );
        let flags: Vec<_> = r.flags.iter().collect();
        assert_eq!(
            flags,
            [Flag::CuffLoose, Flag::IrregularPulse, Flag::PulseRateHigh]
        );
        assert_eq!(r.values[1].value, Value::Absent(AbsentReason::Nan));
        assert_eq!(r.values[0].unit, Unit::MmHg);
        assert_eq!(r.values.len(), 4);
        assert_eq!(r.id, r.compute_id());
    }

    #[test]
    fn unknown_or_unbound_users_are_refused() {
        let mut m = bpm();
        m.user_id = Some(0xFF);
        assert_eq!(
            with_ctx(None, |ctx| blood_pressure(&m, ctx)),
            Err(MapError::NoPatient { user: None })
        );
        m.user_id = Some(3);
        assert_eq!(
            with_ctx(None, |ctx| blood_pressure(&m, ctx)).map_err(|e| e.label()),
            Err("no_patient")
        );
    }

    #[test]
    fn plx_status_becomes_flags_and_demo_data_is_refused() {
        let mut m =
            PlxSpotCheckMeasurement::decode(&[0x00, 0x61, 0x00, 0x48, 0x00]).expect("valid");
        m.device_and_sensor_status = Some(
            PlxDeviceAndSensorStatus::LOW_PERFUSION_DETECTED
                | PlxDeviceAndSensorStatus::SENSOR_DISPLACED,
        );
        m.device_clock_not_set = true;
        let mut b = binding();
        b.patient = Some(PatientKey::new("pk-a").expect("valid"));
        let gw = GatewayId::new("gw-1").expect("valid");
        let identity = DeviceIdentity::new(b.id);
        let ctx = MapContext {
            gateway: &gw,
            binding: &b,
            identity: &identity,
            received_at: time::macros::datetime!(2025-03-04 09:00:00 UTC),
            clock: ClockCorrection {
                device_minus_gateway: None,
                zone: UtcOffset::UTC,
            },
            from_storage: true,
            low_battery: true,
        };
        let r = plx_spot_check(&m, &ctx).expect("maps");
        for f in [
            Flag::LowPerfusion,
            Flag::SensorDisplaced,
            Flag::ClockNotSet,
            Flag::FromStorage,
            Flag::LowBattery,
        ] {
            assert!(r.flags.contains(f), "{f:?}");
        }
        assert_eq!(r.device_time, None);
        assert_eq!(r.measured_at, ctx.received_at);
        m.measurement_status = Some(PlxMeasurementStatus::DATA_FOR_DEMONSTRATION);
        assert_eq!(plx_spot_check(&m, &ctx), Err(MapError::NotPatientData));
    }

    #[test]
    fn special_values_keep_their_reason() {
        for (s, r) in [
            (SpecialValue::Nres, AbsentReason::Nres),
            (
                SpecialValue::PositiveInfinity,
                AbsentReason::PositiveInfinity,
            ),
            (
                SpecialValue::NegativeInfinity,
                AbsentReason::NegativeInfinity,
            ),
            (SpecialValue::Reserved, AbsentReason::Reserved),
        ] {
            let o = observed(Kind::Spo2, Float11073::Special(s), Unit::Percent).expect("maps");
            assert_eq!(o.value, Value::Absent(r));
        }
        assert_eq!(
            observed(Kind::Fev1, Float11073::new(1, 100), Unit::Litre),
            Err(MapError::Exponent {
                kind: Kind::Fev1,
                exponent: 100
            })
        );
    }
}
