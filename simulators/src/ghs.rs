//! The simulated spirometer's Generic Health Sensor (0x1840) side: how a spirometry result
//! becomes a GHS observation, what the sensor advertises in its features, and its record
//! store with the GHS RACP filters (`u32` record numbers).
//!
//! A result is one observation bundle (class 0xFF) stamped with the sensor's clock as an
//! Elapsed Time (UTC, 1 s), carrying four numeric members typed by their MDC codes: FEV1 and
//! FVC in litres, FEV1/FVC in percent, PEF in litres per minute. Device-quality status goes
//! in the bundle's Measurement Status: a manoeuvre that failed the acceptability criteria
//! is "questionable", and a sensor whose clock was never set leaves its "current timeline"
//! bit clear. The encoding is `gateway::codec::ghs`, the code the gateway decodes with.
//!
//! The store follows the sensor behaviour the GHS examples show (ST's `ghs_racp.c`): an
//! observation that cannot go out live (no link, or live observations not started on the
//! GHS Control Point) is stored under the next record number; RACP reports, counts and
//! deletes by record number.

use gateway::codec::Float11073;
use gateway::codec::ghs::{
    ElapsedTime, GhsRecordFilter, HealthSensorFeatures, MdcCode, MeasurementStatus, Observation,
    ObservationClass, ObservationValue, mdc,
};
use gateway::device::spirometry::SpirometryResult;
use time::PrimitiveDateTime;

/// Elapsed Time "time sync source": manual (the hub sets the clock over Current Time).
const SYNC_MANUAL: u8 = 4;

/// The observation types the simulated spirometer supports (Health Sensor Features).
pub const SPIROMETRY_TYPES: [u32; 4] = [mdc::FEV1, mdc::FVC, mdc::FEV1_FVC, mdc::PEF];

/// The Health Sensor Features value of the simulated spirometer.
pub fn features() -> HealthSensorFeatures {
    HealthSensorFeatures {
        observation_types: SPIROMETRY_TYPES.iter().copied().map(MdcCode).collect(),
        device_specializations: None,
        quirks: vec![],
    }
}

/// FEV1/FVC in percent, whole percent as spirometers print it; `None` when either volume
/// is not a number (the member is then NaN, not a made-up ratio).
fn ratio_percent(fev1: &Float11073, fvc: Option<&Float11073>) -> Option<Float11073> {
    let fev1 = fev1.to_f64()?;
    let fvc = fvc?.to_f64()?;
    if fvc <= 0.0 {
        return None;
    }
    let pct = (fev1 / fvc * 100.0).round();
    Some(Float11073::new(pct as i32, 0))
}

/// A spirometry result as the bundle a GHS spirometer sends, stamped `at` on its own clock
/// (`None`: no time stamp).
pub fn spirometry_observation(r: &SpirometryResult, at: Option<PrimitiveDateTime>) -> Observation {
    let numeric = |t: u32, unit: u16, v: Float11073| Observation::numeric(t, unit, v);
    let members = vec![
        numeric(mdc::FEV1, mdc::unit::LITRE, r.fev1_l),
        numeric(
            mdc::FVC,
            mdc::unit::LITRE,
            r.fvc_l.unwrap_or(Float11073::NAN),
        ),
        numeric(
            mdc::FEV1_FVC,
            mdc::unit::PERCENT,
            ratio_percent(&r.fev1_l, r.fvc_l.as_ref()).unwrap_or(Float11073::NAN),
        ),
        numeric(
            mdc::PEF,
            mdc::unit::LITRE_PER_MIN,
            r.pef_l_min.unwrap_or(Float11073::NAN),
        ),
    ];
    let mut status = MeasurementStatus::empty();
    if r.poor_effort {
        status |= MeasurementStatus::QUESTIONABLE;
    }
    let time_stamp = at
        .and_then(|t| ElapsedTime::utc_seconds(t, SYNC_MANUAL))
        .map(|mut t| {
            t.current_timeline = !r.clock_not_set;
            t
        });
    Observation {
        class: ObservationClass::Bundle,
        observation_type: None,
        time_stamp,
        measurement_duration_s: None,
        measurement_status: (!status.is_empty()).then_some(status),
        object_id: None,
        patient_id: None,
        supplemental_information: None,
        derived_from: None,
        unconfirmed_fields: 0,
        value: ObservationValue::Bundle(members),
        quirks: vec![],
    }
}

/// One stored observation.
#[derive(Clone, Debug, PartialEq)]
pub struct GhsRecord {
    /// Its record number.
    pub number: u32,
    /// What was observed.
    pub observation: Observation,
}

/// The sensor's memory: observations under increasing record numbers.
#[derive(Clone, Debug, Default)]
pub struct GhsStore {
    records: Vec<GhsRecord>,
    next: u32,
}

fn matches(filter: GhsRecordFilter, n: u32, first: u32, last: u32) -> bool {
    match filter {
        GhsRecordFilter::AllRecords => true,
        GhsRecordFilter::LessThanOrEqual(max) => n <= max,
        GhsRecordFilter::GreaterThanOrEqual(min) => n >= min,
        GhsRecordFilter::WithinRange { min, max } => (min..=max).contains(&n),
        GhsRecordFilter::FirstRecord => n == first,
        GhsRecordFilter::LastRecord => n == last,
    }
}

/// A filter the sensor refuses: a range with its bounds the wrong way round.
pub fn invalid_filter(filter: GhsRecordFilter) -> bool {
    matches!(filter, GhsRecordFilter::WithinRange { min, max } if min > max)
}

impl GhsStore {
    /// Stores an observation; its record number.
    pub fn push(&mut self, observation: Observation) -> u32 {
        let number = self.next;
        self.next = self.next.wrapping_add(1);
        self.records.push(GhsRecord {
            number,
            observation,
        });
        number
    }

    /// The records a filter selects, oldest first.
    pub fn select(&self, filter: GhsRecordFilter) -> Vec<&GhsRecord> {
        let (Some(first), Some(last)) = (self.records.first(), self.records.last()) else {
            return vec![];
        };
        let (first, last) = (first.number, last.number);
        self.records
            .iter()
            .filter(|r| matches(filter, r.number, first, last))
            .collect()
    }

    /// Removes the records a filter selects; them.
    pub fn delete(&mut self, filter: GhsRecordFilter) -> Vec<GhsRecord> {
        let doomed: Vec<u32> = self.select(filter).iter().map(|r| r.number).collect();
        let (gone, kept) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| doomed.contains(&r.number));
        self.records = kept;
        gone
    }

    /// Record numbers held.
    pub fn numbers(&self) -> Vec<u32> {
        self.records.iter().map(|r| r.number).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::codec::ghs::StoredObservation;

    fn result(poor: bool) -> SpirometryResult {
        SpirometryResult {
            fev1_l: Float11073::new(152, -2),
            fvc_l: Some(Float11073::new(281, -2)),
            pef_l_min: Some(Float11073::new(310, 0)),
            timestamp: None,
            from_storage: false,
            clock_not_set: false,
            poor_effort: poor,
        }
    }

    #[test]
    fn a_result_is_a_bundle_of_four_typed_numerics_that_round_trips() {
        let at = time::macros::datetime!(2025-03-04 08:00:00);
        let o = spirometry_observation(&result(true), Some(at));
        let bytes = StoredObservation {
            record_number: 7,
            observation: o.clone(),
        }
        .encode()
        .expect("encodes");
        let back = StoredObservation::decode(&bytes).expect("decodes");
        assert_eq!(back.record_number, 7);
        assert_eq!(back.observation, o);
        let items = back.observation.numerics();
        let got: Vec<(u32, u16, Option<f64>)> = items
            .iter()
            .map(|i| (i.observation_type, i.unit, i.value.to_f64()))
            .collect();
        assert_eq!(
            got,
            vec![
                (mdc::FEV1, mdc::unit::LITRE, Some(1.52)),
                (mdc::FVC, mdc::unit::LITRE, Some(2.81)),
                (mdc::FEV1_FVC, mdc::unit::PERCENT, Some(54.0)),
                (mdc::PEF, mdc::unit::LITRE_PER_MIN, Some(310.0)),
            ]
        );
        let stamp = items[0].time_stamp.expect("inherits the bundle's stamp");
        assert_eq!(stamp.wall_clock(), Some(at));
        assert!(
            items[0]
                .measurement_status
                .is_some_and(|s| s.contains(MeasurementStatus::QUESTIONABLE))
        );
        assert_eq!(
            spirometry_observation(&result(false), None).measurement_status,
            None
        );
    }

    #[test]
    fn no_ratio_is_invented_from_a_missing_volume() {
        let mut r = result(false);
        r.fvc_l = Some(Float11073::NAN);
        let o = spirometry_observation(&r, None);
        let ratio = o
            .numerics()
            .into_iter()
            .find(|i| i.observation_type == mdc::FEV1_FVC)
            .expect("ratio member");
        assert_eq!(ratio.value, Float11073::NAN);
    }

    #[test]
    fn filters_select_by_record_number() {
        let mut s = GhsStore::default();
        for _ in 0..5 {
            s.push(spirometry_observation(&result(false), None));
        }
        let n = |v: Vec<&GhsRecord>| v.iter().map(|r| r.number).collect::<Vec<_>>();
        assert_eq!(n(s.select(GhsRecordFilter::AllRecords)), [0, 1, 2, 3, 4]);
        assert_eq!(n(s.select(GhsRecordFilter::GreaterThanOrEqual(3))), [3, 4]);
        assert_eq!(n(s.select(GhsRecordFilter::LessThanOrEqual(1))), [0, 1]);
        assert_eq!(
            n(s.select(GhsRecordFilter::WithinRange { min: 1, max: 2 })),
            [1, 2]
        );
        assert_eq!(n(s.select(GhsRecordFilter::FirstRecord)), [0]);
        assert_eq!(n(s.select(GhsRecordFilter::LastRecord)), [4]);
        let gone = s.delete(GhsRecordFilter::LessThanOrEqual(2));
        assert_eq!(gone.len(), 3);
        assert_eq!(s.numbers(), [3, 4]);
        assert_eq!(n(s.select(GhsRecordFilter::FirstRecord)), [3]);
        // Numbers are not reused after a delete.
        assert_eq!(s.push(spirometry_observation(&result(false), None)), 5);
        assert!(invalid_filter(GhsRecordFilter::WithinRange {
            min: 4,
            max: 3
        }));
    }
}
