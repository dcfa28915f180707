//! From the record to FHIR: logical ids, and the shapes of `Observation`, `Patient` and
//! `Device` after the HL7 Personal Health Device (PHD) Implementation Guide.
//!
//! # One reading, several Observations
//!
//! A reading is one measurement event; the PHD IG makes one Observation per *metric*. A blood
//! pressure reading becomes a panel (LOINC 85354-9, MDC 150020) with systolic, diastolic and
//! mean components, plus a separate pulse-rate Observation; an oximeter reading becomes SpO2,
//! pulse rate and (when reported) pulse amplitude index; a spirometry reading becomes FEV1,
//! FVC, FEV1/FVC and PEF. Each is a [`Part`] of the reading, and its logical id is
//! `{reading id}-{part}` (`3f2c…-bp`, `3f2c…-pulse`): stable, because the reading id is
//! derived from what the device said, and within FHIR's 64-character id limit.
//!
//! # Identifiers
//!
//! - `Observation.identifier`: system [`OBSERVATION_ID_SYSTEM`], value `{reading id}-{part}`.
//!   Like the PHD IG's identifier (device, patient, time, code and value folded into one
//!   string), it is the same every time the same measurement is uploaded, so a receiver can
//!   deduplicate on it; the part keeps a cuff's BP panel and pulse apart.
//! - `Patient.identifier`: system [`PATIENT_KEY_SYSTEM`], value the pseudonymous key. The
//!   logical id is the key with `.` written `..` and `_` written `.-` (FHIR ids allow
//!   `A-Za-z0-9-.` only); keys of letters, digits and `-` are their own id.
//! - `Device.identifier`: the EUI-64 system id (PHD IG `SYSID`, system
//!   [`EUI64_SYSTEM`]) or the Bluetooth address (`BTMAC`, system [`BTMAC_SYSTEM`]), written as
//!   upper-case hex pairs joined by `-` as the PHD IG writes them. The logical id is the
//!   identity with `:` removed: `eui64-0011223344556677`, `bdaddr-c0ffee001122`.
//!
//! # Device status flags
//!
//! Every flag the device reported with the measurement (cuff loose, body movement, low
//! perfusion, from device memory…) is carried on each Observation of the reading as an
//! extension with url [`DEVICE_FLAG_EXTENSION`] and `valueCode` the flag's stable name
//! (`cuff_loose`, see `vitals::Flag::as_str`). The two flags that *are* interpretations of the
//! pulse value, the cuff's pulse-rate range bits, also set `interpretation` `H` / `L`
//! (v3 ObservationInterpretation) on the pulse-rate Observation.
//!
//! # Absent values
//!
//! An IEEE-11073 special value (NaN, NRes, ±INF, reserved) is stored as an absent reason, never
//! a number; it becomes `dataAbsentReason` (code from `vitals::AbsentReason::fhir_code`) on the
//! Observation or, inside the BP panel, on the component.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vitals::{
    AbsentReason, DeviceId, Flag, Kind, Observed, PatientKey, ReadingId, ReadingType, Unit, Value,
};

use super::model::{
    CodeExtension, CodeableConcept, Coding, Component, Device, DeviceName, DeviceVersion,
    FhirDecimal, Identifier, Observation, Patient, Quantity, Reference,
};
use crate::record::{self, StoredReading};

/// LOINC.
pub const LOINC: &str = "http://loinc.org";
/// ISO/IEEE 11073-10101 nomenclature (MDC), as the PHD IG names it.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// UCUM.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// FHIR observation categories.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// FHIR data-absent-reason codes.
pub const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// HL7 v3 observation interpretation codes.
pub const INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// The PHD IG's device identifier types (`SYSID`, `BTMAC`).
pub const DEVICE_ID_TYPES: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers";
/// IEEE 11073 system id (EUI-64) namespace used by the PHD IG.
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// Bluetooth device address namespace used by the PHD IG.
pub const BTMAC_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// Namespace of `Observation.identifier` values (`{reading id}-{part}`).
pub const OBSERVATION_ID_SYSTEM: &str = "urn:rpm:observation";
/// Namespace of pseudonymous patient keys.
pub const PATIENT_KEY_SYSTEM: &str = "urn:rpm:patient-key";
/// The extension carrying a device-reported status flag.
pub const DEVICE_FLAG_EXTENSION: &str =
    "https://example.invalid/rpm/fhir/StructureDefinition/device-status-flag";

/// One Observation's worth of a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Blood pressure panel: systolic, diastolic and mean arterial pressure as components.
    BloodPressure,
    /// Pulse rate (from a cuff or an oximeter).
    PulseRate,
    /// SpO2.
    Spo2,
    /// Pulse amplitude index (MDC code only; LOINC has none).
    PulseAmplitudeIndex,
    /// FEV1.
    Fev1,
    /// FVC.
    Fvc,
    /// FEV1/FVC.
    Fev1FvcRatio,
    /// Peak expiratory flow.
    Pef,
    /// Body temperature.
    BodyTemperature,
}

impl Part {
    /// Every part, in the order a reading's Observations are listed.
    pub const ALL: [Part; 9] = [
        Part::BloodPressure,
        Part::PulseRate,
        Part::Spo2,
        Part::PulseAmplitudeIndex,
        Part::Fev1,
        Part::Fvc,
        Part::Fev1FvcRatio,
        Part::Pef,
        Part::BodyTemperature,
    ];

    /// The id suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            Part::BloodPressure => "bp",
            Part::PulseRate => "pulse",
            Part::Spo2 => "spo2",
            Part::PulseAmplitudeIndex => "pai",
            Part::Fev1 => "fev1",
            Part::Fvc => "fvc",
            Part::Fev1FvcRatio => "fev1fvc",
            Part::Pef => "pef",
            Part::BodyTemperature => "temp",
        }
    }

    /// Position in [`Part::ALL`] (the tie-breaker in search cursors).
    pub const fn index(self) -> u8 {
        self as u8
    }

    /// The part a value of `kind` belongs to.
    pub const fn of(kind: Kind) -> Part {
        match kind {
            Kind::Systolic | Kind::Diastolic | Kind::MeanArterialPressure => Part::BloodPressure,
            Kind::PulseRate => Part::PulseRate,
            Kind::Spo2 => Part::Spo2,
            Kind::PulseAmplitudeIndex => Part::PulseAmplitudeIndex,
            Kind::Fev1 => Part::Fev1,
            Kind::Fvc => Part::Fvc,
            Kind::Fev1FvcRatio => Part::Fev1FvcRatio,
            Kind::Pef => Part::Pef,
            Kind::BodyTemperature => Part::BodyTemperature,
        }
    }

    /// The kind whose value is the Observation's own value (none for the BP panel).
    const fn single_kind(self) -> Option<Kind> {
        match self {
            Part::BloodPressure => None,
            Part::PulseRate => Some(Kind::PulseRate),
            Part::Spo2 => Some(Kind::Spo2),
            Part::PulseAmplitudeIndex => Some(Kind::PulseAmplitudeIndex),
            Part::Fev1 => Some(Kind::Fev1),
            Part::Fvc => Some(Kind::Fvc),
            Part::Fev1FvcRatio => Some(Kind::Fev1FvcRatio),
            Part::Pef => Some(Kind::Pef),
            Part::BodyTemperature => Some(Kind::BodyTemperature),
        }
    }

    /// `Observation.code` of this part of a reading of type `rt` (the pulse rate's MDC code
    /// depends on the device that measured it).
    pub fn code(self, rt: ReadingType) -> CodeableConcept {
        match self.single_kind() {
            None => CodeableConcept {
                coding: vec![
                    Coding::new(
                        LOINC,
                        "85354-9",
                        "Blood pressure panel with all children optional",
                    ),
                    Coding {
                        system: MDC,
                        code: "150020".into(),
                        display: None,
                    },
                ],
                text: Some("Blood pressure".into()),
            },
            Some(kind) => kind_code(kind, rt),
        }
    }

    /// Whether a `code` search token (`[system|]code`) matches the `Observation.code` of this
    /// part of a reading of type `rt`.
    pub fn matches(self, rt: ReadingType, system: Option<&str>, code: &str) -> bool {
        self.code(rt)
            .coding
            .iter()
            .any(|c| c.code == code && system.is_none_or(|s| s.is_empty() || s == c.system))
    }
}

/// MDC_PULS_RATE_NON_INV: the pulse rate a blood-pressure cuff measures. The PHD
/// Implementation Guide codes a cuff's pulse with it, and an oximeter's with
/// MDC_PULS_OXIM_PULS_RATE (149530, `vitals`' code for the kind).
const MDC_PULS_RATE_NON_INV: u32 = 149_546;

/// The codings of one kind in a reading of type `rt`: LOINC (two for SpO2, as the FHIR
/// vital-signs profile expects 2708-6 beside the pulse-oximetry code) and MDC where vitals
/// has one (for a cuff's pulse, the cuff's own code).
fn kind_code(kind: Kind, rt: ReadingType) -> CodeableConcept {
    let info = kind.info();
    let mut coding = Vec::with_capacity(3);
    if let Some(loinc) = info.loinc {
        coding.push(Coding::new(LOINC, loinc, info.loinc_display));
    }
    if kind == Kind::Spo2 {
        coding.push(Coding::new(
            LOINC,
            "2708-6",
            "Oxygen saturation in Arterial blood",
        ));
    }
    let mdc = match (kind, rt) {
        (Kind::PulseRate, ReadingType::BloodPressure) => Some(MDC_PULS_RATE_NON_INV),
        _ => info.mdc,
    };
    if let Some(mdc) = mdc {
        coding.push(Coding {
            system: MDC,
            code: mdc.to_string(),
            display: None,
        });
    }
    CodeableConcept {
        coding,
        text: Some(info.display.into()),
    }
}

/// The parts a reading has values for, in [`Part::ALL`] order.
pub fn parts(reading: &StoredReading) -> Vec<Part> {
    let mut parts: Vec<Part> = reading.values.iter().map(|o| Part::of(o.kind)).collect();
    parts.sort_unstable();
    parts.dedup();
    parts
}

/// `{reading id}-{part}`.
pub fn observation_id(reading: ReadingId, part: Part) -> String {
    format!("{reading}-{}", part.suffix())
}

/// The inverse of [`observation_id`].
pub fn parse_observation_id(id: &str) -> Option<(ReadingId, Part)> {
    let (reading, suffix) = (id.get(..36)?, id.get(36..)?.strip_prefix('-')?);
    let part = Part::ALL.into_iter().find(|p| p.suffix() == suffix)?;
    // Only the canonical (lower-case, hyphenated) spelling names the resource.
    let reading: ReadingId = reading.parse().ok()?;
    (reading.to_string() == id[..36]).then_some((reading, part))
}

/// The Patient logical id of a key (see the module docs).
pub fn patient_id(key: &PatientKey) -> String {
    let mut out = String::with_capacity(key.as_str().len());
    for c in key.as_str().chars() {
        match c {
            '.' => out.push_str(".."),
            '_' => out.push_str(".-"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`patient_id`].
pub fn parse_patient_id(id: &str) -> Option<PatientKey> {
    let mut key = String::with_capacity(id.len());
    let mut chars = id.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => match chars.next()? {
                '.' => key.push('.'),
                '-' => key.push('_'),
                _ => return None,
            },
            c => key.push(c),
        }
    }
    PatientKey::new(key).ok()
}

/// The Device logical id of a device identity (see the module docs).
pub fn device_id(id: &DeviceId) -> String {
    match id {
        DeviceId::Eui64(b) => format!("eui64-{}", hex(b)),
        DeviceId::BdAddr(b) => format!("bdaddr-{}", hex(b)),
    }
}

/// The inverse of [`device_id`].
pub fn parse_device_id(id: &str) -> Option<DeviceId> {
    let (scheme, digits) = id.split_once('-')?;
    if !digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let text = match scheme {
        "eui64" => format!("eui64:{digits}"),
        "bdaddr" if digits.len() == 12 => {
            let pairs: Vec<&str> = (0..6)
                .filter_map(|i| digits.get(2 * i..2 * i + 2))
                .collect();
            format!("bdaddr:{}", pairs.join(":"))
        }
        _ => return None,
    };
    text.parse().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn phd_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

fn quantity(value: vitals::Decimal, unit: Unit) -> Quantity {
    let symbol = unit.symbol();
    Quantity {
        value: FhirDecimal(value),
        unit: if symbol.is_empty() {
            unit.ucum()
        } else {
            symbol
        },
        system: UCUM,
        code: unit.ucum(),
    }
}

fn absent_reason(why: AbsentReason) -> CodeableConcept {
    let code = why.fhir_code();
    let display = match code {
        "not-a-number" => "Not a Number (NaN)",
        "positive-infinity" => "Positive Infinity (PINF)",
        "negative-infinity" => "Negative Infinity (NINF)",
        _ => "Error",
    };
    CodeableConcept {
        coding: vec![Coding::new(DATA_ABSENT_REASON, code, display)],
        text: Some(match why {
            AbsentReason::Nres => "the value exceeds the resolution the device can report".into(),
            AbsentReason::Reserved => "the device sent a reserved special value".into(),
            _ => display.to_string(),
        }),
    }
}

fn value_or_absent(o: &Observed) -> (Option<Quantity>, Option<CodeableConcept>) {
    match o.value {
        Value::Number(d) => (Some(quantity(d, o.unit)), None),
        Value::Absent(why) => (None, Some(absent_reason(why))),
    }
}

/// FHIR `dateTime` / `instant` text (RFC 3339, UTC, microseconds when there are any).
pub fn date_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The Observation for one part of a reading, or `None` when the reading has no value of it.
pub fn observation(reading: &StoredReading, part: Part) -> Option<Observation> {
    let values: Vec<&Observed> = reading
        .values
        .iter()
        .filter(|o| Part::of(o.kind) == part)
        .collect();
    if values.is_empty() {
        return None;
    }
    let (value_quantity, data_absent_reason, component) = match part.single_kind() {
        Some(_) => {
            let (q, a) = value_or_absent(values[0]);
            (q, a, Vec::new())
        }
        None => {
            let component = values
                .iter()
                .map(|o| {
                    let (value_quantity, data_absent_reason) = value_or_absent(o);
                    Component {
                        code: kind_code(o.kind, reading.reading_type),
                        value_quantity,
                        data_absent_reason,
                    }
                })
                .collect();
            (None, None, component)
        }
    };
    let mut interpretation = Vec::new();
    if part == Part::PulseRate {
        if reading.flags.contains(Flag::PulseRateHigh) {
            interpretation.push(CodeableConcept::one(Coding::new(
                INTERPRETATION,
                "H",
                "High",
            )));
        }
        if reading.flags.contains(Flag::PulseRateLow) {
            interpretation.push(CodeableConcept::one(Coding::new(
                INTERPRETATION,
                "L",
                "Low",
            )));
        }
    }
    let id = observation_id(reading.id, part);
    Some(Observation {
        resource_type: "Observation",
        extension: reading
            .flags
            .iter()
            .map(|f| CodeExtension {
                url: DEVICE_FLAG_EXTENSION,
                value_code: f.as_str(),
            })
            .collect(),
        identifier: vec![Identifier {
            kind: None,
            system: OBSERVATION_ID_SYSTEM,
            value: id.clone(),
        }],
        id,
        status: "final",
        category: vec![CodeableConcept {
            coding: vec![Coding::new(
                OBSERVATION_CATEGORY,
                "vital-signs",
                "Vital Signs",
            )],
            text: None,
        }],
        code: part.code(reading.reading_type),
        subject: Reference {
            reference: format!("Patient/{}", patient_id(&reading.patient)),
        },
        effective_date_time: date_time(reading.measured_at),
        value_quantity,
        data_absent_reason,
        interpretation,
        device: Reference {
            reference: format!("Device/{}", device_id(&reading.device)),
        },
        component,
    })
}

/// The Patient resource: the pseudonymous key and nothing that identifies the person.
pub fn patient(p: &record::Patient) -> Patient {
    // TODO(console issue): add `name` (from `display_name`) only when the request is
    // authorised to see it; until there is authentication, no name ever leaves the server.
    Patient {
        resource_type: "Patient",
        id: patient_id(&p.key),
        identifier: vec![Identifier {
            kind: None,
            system: PATIENT_KEY_SYSTEM,
            value: p.key.as_str().to_owned(),
        }],
        active: true,
    }
}

/// The Device resource.
pub fn device(d: &record::Device) -> Device {
    let identity = &d.identity;
    let (code, display, system, value) = match identity.id {
        DeviceId::Eui64(b) => (
            "SYSID",
            "IEEE 11073 System Identifier",
            EUI64_SYSTEM,
            phd_hex(&b),
        ),
        DeviceId::BdAddr(b) => ("BTMAC", "Bluetooth MAC address", BTMAC_SYSTEM, phd_hex(&b)),
    };
    let mut device_name = Vec::new();
    if let Some(model) = &identity.model {
        device_name.push(DeviceName {
            name: model.clone(),
            kind: "model-name",
        });
    }
    if let Some(manufacturer) = &identity.manufacturer {
        device_name.push(DeviceName {
            name: manufacturer.clone(),
            kind: "manufacturer-name",
        });
    }
    Device {
        resource_type: "Device",
        id: device_id(&identity.id),
        identifier: vec![Identifier {
            kind: Some(CodeableConcept::one(Coding::new(
                DEVICE_ID_TYPES,
                code,
                display,
            ))),
            system,
            value,
        }],
        manufacturer: identity.manufacturer.clone(),
        serial_number: identity.serial.clone(),
        model_number: identity.model.clone(),
        device_name,
        version: identity
            .firmware
            .iter()
            .map(|fw| DeviceVersion {
                // MDC_ID_PROD_SPEC_FW, the firmware revision in the PHD IG's Device.version.
                kind: CodeableConcept {
                    coding: vec![Coding {
                        system: MDC,
                        code: "531975".into(),
                        display: None,
                    }],
                    text: Some("Firmware revision".into()),
                },
                value: fw.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_round_trip_and_are_fhir_ids() {
        for key in ["pk-1", "pk.7", "a_b", "a.-b", "x..y__z", "A9"] {
            let key = PatientKey::new(key).expect("key");
            let id = patient_id(&key);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "{id}"
            );
            assert_eq!(parse_patient_id(&id), Some(key));
        }
        assert_eq!(
            patient_id(&PatientKey::new("pk-7f3a").expect("key")),
            "pk-7f3a"
        );
        assert_eq!(parse_patient_id("a.b"), None);
        assert_eq!(parse_patient_id("a."), None);
    }

    #[test]
    fn device_ids_round_trip() {
        for id in ["eui64:0011223344aabbcc", "bdaddr:c0:ff:ee:00:11:22"] {
            let id: DeviceId = id.parse().expect("device id");
            assert_eq!(parse_device_id(&device_id(&id)), Some(id));
        }
        assert_eq!(
            device_id(&"bdaddr:C0:FF:EE:00:11:22".parse().expect("id")),
            "bdaddr-c0ffee001122"
        );
        for bad in [
            "eui64-00",
            "bdaddr-c0ffee00112",
            "mac-001122334455",
            "eui64-0011223344AABBCC",
        ] {
            assert_eq!(parse_device_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn observation_ids_round_trip() {
        let reading = ReadingId(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        ));
        for part in Part::ALL {
            let id = observation_id(reading, part);
            assert!(id.len() <= 64);
            assert_eq!(parse_observation_id(&id), Some((reading, part)));
        }
        assert_eq!(parse_observation_id("nope-bp"), None);
        let upper = observation_id(reading, Part::Spo2)
            .to_uppercase()
            .replace("SPO2", "spo2");
        assert_eq!(parse_observation_id(&upper), None);
    }

    #[test]
    fn code_tokens_match_loinc_and_mdc() {
        let bp = ReadingType::BloodPressure;
        let ox = ReadingType::OximetrySpotCheck;
        assert!(Part::BloodPressure.matches(bp, None, "85354-9"));
        assert!(Part::BloodPressure.matches(bp, Some(LOINC), "85354-9"));
        assert!(Part::BloodPressure.matches(bp, Some(MDC), "150020"));
        assert!(!Part::BloodPressure.matches(bp, Some(MDC), "85354-9"));
        assert!(Part::Spo2.matches(ox, None, "2708-6"));
        assert!(Part::Spo2.matches(ox, None, "59408-5"));
        assert!(Part::PulseRate.matches(ox, Some(LOINC), "8867-4"));
        assert!(
            !Part::PulseRate.matches(bp, None, "8480-6"),
            "components are not the code"
        );
    }

    #[test]
    fn a_cuffs_pulse_has_the_cuffs_mdc_code_and_an_oximeters_the_oximeters() {
        let cuff = ReadingType::BloodPressure;
        for ox in [
            ReadingType::OximetrySpotCheck,
            ReadingType::OximetryContinuous,
        ] {
            assert!(Part::PulseRate.matches(ox, Some(MDC), "149530"));
            assert!(!Part::PulseRate.matches(ox, Some(MDC), "149546"));
        }
        assert!(Part::PulseRate.matches(cuff, Some(MDC), "149546"));
        assert!(!Part::PulseRate.matches(cuff, Some(MDC), "149530"));
        // LOINC is the same for both.
        assert!(Part::PulseRate.matches(cuff, Some(LOINC), "8867-4"));
    }
}
