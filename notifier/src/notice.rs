//! The notifier's input: an alert event in the notifier's own words. Ingest builds an
//! [`AlertNotice`] from the rules engine's event and its wording, so this crate needs no
//! knowledge of rule internals.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use vitals::{Kind, PatientKey};

/// A notice that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// The alert id is empty, too long or has characters outside `A-Z a-z 0-9 - _ . :`.
    #[error("invalid alert id: {0}")]
    AlertId(&'static str),
}

/// The alert's identity in the record (ingest's alert row id). Safe in logs: it names an
/// alert, not a person.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AlertId(String);

impl AlertId {
    /// Validates and wraps: 1–128 of `A-Z a-z 0-9 - _ . :`.
    pub fn new(s: impl Into<String>) -> Result<Self, NoticeError> {
        let s = s.into();
        if s.is_empty() {
            return Err(NoticeError::AlertId("empty"));
        }
        if s.len() > 128 {
            return Err(NoticeError::AlertId("longer than 128 bytes"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(NoticeError::AlertId(
                "character outside A-Z a-z 0-9 - _ . :",
            ));
        }
        Ok(AlertId(s))
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for AlertId {
    type Err = NoticeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertId::new(s)
    }
}

impl TryFrom<String> for AlertId {
    type Error = NoticeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AlertId::new(s)
    }
}

impl From<AlertId> for String {
    fn from(a: AlertId) -> String {
        a.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How serious an alert is (the same ladder as the rules engine's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record; nobody is paged.
    Info,
    /// Review in working hours.
    Low,
    /// Review today.
    Medium,
    /// Review within the hour.
    High,
    /// Act now.
    Emergency,
}

impl Severity {
    /// Every severity, least serious first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Emergency,
    ];

    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an alert is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The nurse on duty.
    Nurse,
    /// The patient.
    Patient,
    /// Both.
    Both,
}

impl Audience {
    /// Whether the patient is told.
    pub const fn includes_patient(self) -> bool {
        matches!(self, Audience::Patient | Audience::Both)
    }

    /// Whether the care team is told.
    pub const fn includes_nurse(self) -> bool {
        matches!(self, Audience::Nurse | Audience::Both)
    }
}

/// What happened to the alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// Newly raised.
    Raised,
    /// Severity changed while open.
    Updated,
    /// Cleared.
    Resolved,
}

/// One reading value behind an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceLine {
    /// What was measured.
    pub kind: Kind,
    /// The value, in the kind's canonical unit.
    pub value: f64,
    /// When it was measured.
    pub at: Timestamp,
}

/// An alert event as the notifier needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertNotice {
    /// The alert (stable across raise, updates and resolve).
    pub alert: AlertId,
    /// Whose (pseudonymous; the directory maps it to contact details).
    pub patient: PatientKey,
    /// The rule's id in the patient's profile.
    pub rule: String,
    /// Raised, updated or resolved.
    pub kind: NoticeKind,
    /// Current severity.
    pub severity: Severity,
    /// Who is told.
    pub audience: Audience,
    /// When the alert was raised.
    pub opened_at: Timestamp,
    /// When this event happened.
    pub at: Timestamp,
    /// The rule's wording for the nurse (may hold figures).
    pub nurse_text: String,
    /// The rule's plain wording for the patient, when the audience includes them.
    pub patient_text: Option<String>,
    /// One technical line: what was compared with what (baseline, trend, limits).
    pub explanation: String,
    /// The readings behind it, oldest first.
    pub evidence: Vec<EvidenceLine>,
}
