//! What the engine says: [`Event`]s carrying [`Alert`]s with their explanation, and the
//! small copyable types they are made of. Nothing here allocates; wording is rendered only
//! when a caller asks ([`crate::Engine::describe`]).

use std::fmt::Write as _;

use time::OffsetDateTime;
use vitals::{Flags, Kind, ReadingId};

use crate::news2::News2Score;
use crate::profile::{Audience, Rule, Ruleset, Severity};

/// An instant, in Unix milliseconds. The engine never reads a clock: every time is an
/// argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// From a date-time (sub-millisecond parts dropped).
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Timestamp((t.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// As a UTC date-time.
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Unix milliseconds.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The UTC day number (days since 1970-01-01).
    pub const fn day(self) -> i64 {
        self.0.div_euclid(86_400_000)
    }

    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub const fn since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Timestamp::from_datetime(t)
    }
}

/// A patient's dense index in an [`crate::Engine`], given once when the patient is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatientIdx(pub u32);

/// A ruleset's index in an [`crate::Engine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileIdx(pub u32);

/// A rule's position in its [`Ruleset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleIdx(pub u16);

/// One reading value that contributed to an alert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvidenceItem {
    /// The reading.
    pub reading: ReadingId,
    /// When it was measured.
    pub at: Timestamp,
    /// Which value.
    pub kind: Kind,
    /// The value, in the kind's canonical unit.
    pub value: f64,
}

/// Most evidence items an alert carries.
pub const MAX_EVIDENCE: usize = 6;

/// The readings behind an alert, in a fixed array so carrying them costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    items: [Option<EvidenceItem>; MAX_EVIDENCE],
    len: u8,
}

impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            items: [None; MAX_EVIDENCE],
            len: 0,
        }
    }
}

impl Evidence {
    /// Adds an item; when full, the oldest is dropped.
    pub fn push(&mut self, item: EvidenceItem) {
        if usize::from(self.len) == MAX_EVIDENCE {
            self.items.rotate_left(1);
            self.items[MAX_EVIDENCE - 1] = Some(item);
        } else {
            self.items[usize::from(self.len)] = Some(item);
            self.len += 1;
        }
    }

    /// The items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &EvidenceItem> {
        self.items.iter().flatten()
    }

    /// How many.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// None at all (tick-raised alerts).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The newest item.
    pub fn last(&self) -> Option<&EvidenceItem> {
        self.len
            .checked_sub(1)
            .and_then(|i| self.items[usize::from(i)].as_ref())
    }
}

/// The figures a rule compared the readings with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Context {
    /// Absolute threshold.
    Threshold {
        /// The level crossed (raise level or band level).
        limit: f64,
        /// The level that clears it.
        clear: f64,
    },
    /// Drop from baseline.
    Baseline {
        /// Median of daily medians.
        baseline: f64,
        /// Baseline minus the value.
        drop: f64,
        /// Days the baseline is made of.
        days: u16,
    },
    /// Drop from personal best.
    PersonalBest {
        /// Best value in the window.
        best: f64,
        /// Percent below the best.
        drop_percent: f64,
    },
    /// Beyond the EWMA mean.
    Trend {
        /// EWMA mean before this reading.
        mean: f64,
        /// Standard deviation used (floored).
        sd: f64,
        /// The level crossed.
        limit: f64,
    },
    /// CUSUM drift.
    Cusum {
        /// The cumulative sum (in SDs).
        sum: f64,
        /// Decision limit.
        limit: f64,
        /// Reference mean.
        mean: f64,
        /// Reference SD.
        sd: f64,
    },
    /// No reading of a kind.
    Missing {
        /// The kind.
        kind: Kind,
        /// Last reading of it, or enrolment.
        last_seen: Timestamp,
        /// The window (ms).
        within: i64,
    },
    /// Gateway silent.
    SilentGateway {
        /// Last time heard (or enrolment).
        last_heard: Timestamp,
        /// The window (ms).
        within: i64,
    },
    /// Partial NEWS2.
    News2(News2Score),
}

/// An alert of one rule for one patient. At most one is open per (patient, rule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alert {
    /// Whose.
    pub patient: PatientIdx,
    /// The ruleset (profile id, version, override) that raised it.
    pub profile: ProfileIdx,
    /// The rule.
    pub rule: RuleIdx,
    /// Current severity.
    pub severity: Severity,
    /// Who is told.
    pub audience: Audience,
    /// When it was raised.
    pub opened_at: Timestamp,
    /// When this event happened (raise, update or resolve time).
    pub at: Timestamp,
    /// The readings that raised it (and, on update, the one that changed it).
    pub evidence: Evidence,
    /// The figures behind it.
    pub context: Context,
}

impl Alert {
    /// Dates this event (an update or the resolve) `at`, but never before the alert opened:
    /// a hub back from offline, or a late delivery, brings readings measured earlier, and the
    /// record must not hold an alert updated or resolved before it began. When the reading
    /// was measured stays in its evidence and context.
    pub(crate) fn happened_at(&mut self, at: Timestamp) {
        self.at = at.max(self.opened_at);
    }
}

/// Why the patient is asked to measure again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepeatReason {
    /// The device flagged the measurement as doubtful (cuff loose, movement, low perfusion…).
    DeviceQuality(Flags),
    /// An abnormal value that a rule wants confirmed before raising.
    Confirm(RuleIdx),
}

impl RepeatReason {
    /// Friendly wording for the patient.
    pub const fn patient_message(self) -> &'static str {
        match self {
            RepeatReason::DeviceQuality(_) => {
                "Your device was not sure about that measurement. Please sit still for a minute \
                 and measure again."
            }
            RepeatReason::Confirm(_) => {
                "Please rest for five minutes and measure again, so we can check that reading."
            }
        }
    }
}

/// A request to re-measure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RepeatRequest {
    /// Whose.
    pub patient: PatientIdx,
    /// The reading that prompted it.
    pub reading: ReadingId,
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: RepeatReason,
}

/// What evaluation decided. Pushed into a caller-provided `Vec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// A new alert.
    Raised(Alert),
    /// An open alert changed severity (escalated or eased but not cleared).
    Updated(Alert),
    /// An open alert cleared.
    Resolved(Alert),
    /// Ask the patient to measure again (at most one per reading).
    RepeatRequested(RepeatRequest),
}

impl Event {
    /// The alert, for the three alert events.
    pub fn alert(&self) -> Option<&Alert> {
        match self {
            Event::Raised(a) | Event::Updated(a) | Event::Resolved(a) => Some(a),
            Event::RepeatRequested(_) => None,
        }
    }

    /// Whose it is.
    pub fn patient(&self) -> PatientIdx {
        match self {
            Event::Raised(a) | Event::Updated(a) | Event::Resolved(a) => a.patient,
            Event::RepeatRequested(r) => r.patient,
        }
    }
}

/// An alert put into words: built on demand, off the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertText {
    /// Rule id.
    pub rule: String,
    /// Profile label (`copd@3`, `copd@3+pt-7@1`).
    pub profile: String,
    /// Wording for the nurse.
    pub nurse: String,
    /// Wording for the patient, when the audience includes them.
    pub patient: Option<String>,
    /// A one-line technical explanation: what was compared with what.
    pub explanation: String,
}

pub(crate) fn describe(ruleset: &Ruleset, rule: &Rule, a: &Alert) -> AlertText {
    let mut explanation = format!(
        "rule {} ({}) of {}: {}",
        rule.id,
        rule.kind.as_str(),
        ruleset.label(),
        a.severity
    );
    match a.context {
        Context::Threshold { limit, clear } => {
            let _ = write!(explanation, "; limit {limit}, clears at {clear}");
        }
        Context::Baseline {
            baseline,
            drop,
            days,
        } => {
            let _ = write!(
                explanation,
                "; baseline {baseline:.1} (median of {days} daily medians), down {drop:.1}"
            );
        }
        Context::PersonalBest { best, drop_percent } => {
            let _ = write!(
                explanation,
                "; personal best {best}, down {drop_percent:.1} %"
            );
        }
        Context::Trend { mean, sd, limit } => {
            let _ = write!(
                explanation,
                "; mean {mean:.2}, sd {sd:.2}, limit {limit:.2}"
            );
        }
        Context::Cusum {
            sum,
            limit,
            mean,
            sd,
        } => {
            let _ = write!(
                explanation,
                "; cusum {sum:.2} of limit {limit}, reference mean {mean:.2} sd {sd:.2}"
            );
        }
        Context::Missing {
            kind,
            last_seen,
            within,
        } => {
            let _ = write!(
                explanation,
                "; no {kind} since {} (window {} h)",
                last_seen.to_datetime(),
                within / 3_600_000
            );
        }
        Context::SilentGateway { last_heard, within } => {
            let _ = write!(
                explanation,
                "; gateway silent since {} (window {} h)",
                last_heard.to_datetime(),
                within / 3_600_000
            );
        }
        Context::News2(s) => {
            let _ = write!(
                explanation,
                "; NEWS2 {} PARTIAL (no respiration rate or consciousness), response {}, \
                 SpO2 scale {}",
                s.total,
                s.response.as_str(),
                if s.scale == crate::news2::Spo2Scale::Two {
                    2
                } else {
                    1
                }
            );
        }
    }
    for e in a.evidence.iter() {
        let _ = write!(
            explanation,
            "; {}={} {} (reading {})",
            e.kind,
            e.value,
            e.kind.unit().symbol(),
            e.reading
        );
    }
    AlertText {
        rule: rule.id.clone(),
        profile: ruleset.label(),
        nurse: render(&rule.nurse, a),
        patient: rule
            .patient
            .as_ref()
            .filter(|_| rule.audience.includes_patient())
            .map(|p| render(p, a)),
        explanation,
    }
}

fn render(template: &str, a: &Alert) -> String {
    let last = a.evidence.last();
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let name = &after[..close];
        let _ = match name {
            "measure" => write!(out, "{}", last.map_or("", |e| e.kind.info().display)),
            "value" => match last {
                Some(e) => write!(out, "{}", e.value),
                None => write!(out, "?"),
            },
            "unit" => write!(out, "{}", last.map_or("", |e| e.kind.unit().symbol())),
            "limit" => match a.context {
                Context::Threshold { limit, .. } | Context::Trend { limit, .. } => {
                    write!(out, "{limit}")
                }
                _ => write!(out, "?"),
            },
            "baseline" => match a.context {
                Context::Baseline { baseline, .. } => write!(out, "{baseline:.0}"),
                Context::PersonalBest { best, .. } => write!(out, "{best}"),
                Context::Trend { mean, .. } | Context::Cusum { mean, .. } => {
                    write!(out, "{mean:.1}")
                }
                _ => write!(out, "?"),
            },
            "score" => match a.context {
                Context::News2(s) => write!(out, "{}", s.total),
                _ => write!(out, "?"),
            },
            "response" => match a.context {
                Context::News2(s) => write!(out, "{}", s.response.as_str()),
                _ => write!(out, "?"),
            },
            other => write!(out, "{{{other}}}"),
        };
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}
