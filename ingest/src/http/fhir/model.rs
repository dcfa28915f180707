//! The FHIR R4 data types these views emit, as plain serializable structs: only the elements
//! the views fill, in FHIR's JSON names, with empty optional elements left out (FHIR forbids
//! empty arrays and `null`s).
//!
//! Decimals are the one subtle part. FHIR says a decimal's precision is part of its value
//! (`2.10` L is a statement about the spirometer that `2.1` L is not), and the record keeps the
//! exact text. A `serde_json::Number` cannot carry that text unless serde_json's
//! `arbitrary_precision` feature is on, and that feature changes how *every* crate linked into
//! the binary parses numbers (it breaks `#[serde(flatten)]` and untagged enums over numbers),
//! so it is not enabled. [`FhirDecimal`] instead serializes through `serde_json::value::RawValue`
//! (the `raw_value` feature, which only adds that type): the JSON output holds the digits
//! exactly as stored. It only works with `serde_json`'s serializer, which is the only one used.

use serde::{Serialize, Serializer};
use vitals::Decimal;

/// A FHIR `decimal` written with the exact digits of a stored [`Decimal`] (`2.10`, `12e2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FhirDecimal(pub Decimal);

impl Serialize for FhirDecimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `Decimal`'s text is always a valid JSON number: an optional `-`, digits, an optional
        // fraction, or `NeM` for a positive exponent; never a leading `+` or a bare `.5`.
        let raw = serde_json::value::RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// `Coding`.
#[derive(Clone, Debug, Serialize)]
pub struct Coding {
    /// Code system URI.
    pub system: &'static str,
    /// The code.
    pub code: String,
    /// Display text from the code system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    /// A coding with a display.
    pub fn new(system: &'static str, code: impl Into<String>, display: impl Into<String>) -> Self {
        Coding {
            system,
            code: code.into(),
            display: Some(display.into()),
        }
    }
}

/// `CodeableConcept`.
#[derive(Clone, Debug, Serialize)]
pub struct CodeableConcept {
    /// Codings, most specific first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    /// A concept made of one coding.
    pub fn one(coding: Coding) -> Self {
        CodeableConcept {
            coding: vec![coding],
            text: None,
        }
    }
}

/// `Quantity` with a UCUM unit.
#[derive(Clone, Debug, Serialize)]
pub struct Quantity {
    /// The exact value.
    pub value: FhirDecimal,
    /// The unit as people read it.
    pub unit: &'static str,
    /// `http://unitsofmeasure.org`.
    pub system: &'static str,
    /// The UCUM code.
    pub code: &'static str,
}

/// `Reference`.
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    /// `Type/id`, relative to the server base.
    pub reference: String,
}

/// `Identifier`.
#[derive(Clone, Debug, Serialize)]
pub struct Identifier {
    /// What sort of identifier.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CodeableConcept>,
    /// The namespace.
    pub system: &'static str,
    /// The value.
    pub value: String,
}

/// `Extension` with a `code` value.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeExtension {
    /// Identifies the extension.
    pub url: &'static str,
    /// Its value.
    pub value_code: &'static str,
}

/// `Meta` (profiles only).
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// Profiles the resource claims to conform to.
    pub profile: Vec<&'static str>,
}

/// `Observation`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Always `Observation`.
    pub resource_type: &'static str,
    /// Logical id.
    pub id: String,
    /// Device-reported status flags (see the module docs of `fhir::map`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<CodeExtension>,
    /// The business identifier.
    pub identifier: Vec<Identifier>,
    /// `final`.
    pub status: &'static str,
    /// `vital-signs`.
    pub category: Vec<CodeableConcept>,
    /// What was measured.
    pub code: CodeableConcept,
    /// The patient.
    pub subject: Reference,
    /// When it was measured.
    pub effective_date_time: String,
    /// The value, when the device produced one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
    /// Interpretations the device itself made (irregular pulse, out-of-range pulse).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interpretation: Vec<CodeableConcept>,
    /// The device that measured.
    pub device: Reference,
    /// Components of a panel (blood pressure).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<Component>,
}

/// `Observation.component`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// What was measured.
    pub code: CodeableConcept,
    /// The value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
    /// Why there is no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept>,
}

/// `Patient`, without any direct identifier.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    /// Always `Patient`.
    pub resource_type: &'static str,
    /// Logical id (from the pseudonymous key).
    pub id: String,
    /// The pseudonymous key.
    pub identifier: Vec<Identifier>,
    /// Whether the record is in active use.
    pub active: bool,
}

/// `Device.deviceName`.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceName {
    /// The name.
    pub name: String,
    /// `model-name`, `manufacturer-name`…
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `Device.version`.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceVersion {
    /// Which version (firmware).
    #[serde(rename = "type")]
    pub kind: CodeableConcept,
    /// The version text.
    pub value: String,
}

/// `Device`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Always `Device`.
    pub resource_type: &'static str,
    /// Logical id (from the device identity).
    pub id: String,
    /// The EUI-64 system id or the Bluetooth address.
    pub identifier: Vec<Identifier>,
    /// Manufacturer name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Model number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    /// Model and manufacturer names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_name: Vec<DeviceName>,
    /// Firmware revision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub version: Vec<DeviceVersion>,
}

/// `Bundle.link`.
#[derive(Clone, Debug, Serialize)]
pub struct BundleLink {
    /// `self` or `next`.
    pub relation: &'static str,
    /// Absolute URL.
    pub url: String,
}

/// `Bundle.entry.search`.
#[derive(Clone, Debug, Serialize)]
pub struct EntrySearch {
    /// `match`.
    pub mode: &'static str,
}

/// `Bundle.entry`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry<T> {
    /// Absolute URL of the resource.
    pub full_url: String,
    /// The resource.
    pub resource: T,
    /// Why it is in the bundle.
    pub search: EntrySearch,
}

/// `Bundle` of type `searchset`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle<T> {
    /// Always `Bundle`.
    pub resource_type: &'static str,
    /// `searchset`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the bundle was assembled.
    pub timestamp: String,
    /// `self` and, when there is more, `next`.
    pub link: Vec<BundleLink>,
    /// The matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<BundleEntry<T>>,
}

/// `OperationOutcome.issue`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issue {
    /// `error` or `fatal`.
    pub severity: &'static str,
    /// `not-found`, `invalid`, `exception`…
    pub code: &'static str,
    /// What was wrong, for people.
    pub diagnostics: String,
    /// The search parameter or element at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// `OperationOutcome`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    /// Always `OperationOutcome`.
    pub resource_type: &'static str,
    /// The problems.
    pub issue: Vec<Issue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_digits() {
        for text in ["2.10", "2.1", "98", "0.05", "-1.50", "12e2", "0.00"] {
            let d: Decimal = text.parse().expect("decimal");
            assert_eq!(
                serde_json::to_string(&FhirDecimal(d)).expect("json"),
                text,
                "{text}"
            );
        }
        // And inside a document, still exact and still valid JSON.
        let q = Quantity {
            value: FhirDecimal("2.10".parse().expect("decimal")),
            unit: "L",
            system: "http://unitsofmeasure.org",
            code: "L",
        };
        let json = serde_json::to_string(&q).expect("json");
        assert!(json.contains(r#""value":2.10,"#), "{json}");
        serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
    }
}
