//! Threshold profiles: the TOML a clinician's settings are kept in, per-patient overrides
//! layered on top by rule id, and [`Profile::build`], which turns both into a validated
//! [`Ruleset`] the engine runs, or says exactly what is wrong.
//!
//! Every rule is one flat table so a patient override can change any single field of it.
//! Which fields a rule kind takes is checked in [`Profile::build`], not by serde, so that
//! a field that belongs to another kind is refused with a message naming both.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitals::Kind;

use crate::news2::{Response, Spo2Scale};

/// How serious an alert is.
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

/// Who is told.
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
}

/// Which way a value is abnormal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Abnormal when low.
    Below,
    /// Abnormal when high.
    Above,
}

/// The kinds of rule, as named in profile files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Absolute threshold: abnormal at or above `raise`.
    Above,
    /// Absolute threshold: abnormal at or below `raise`.
    Below,
    /// Down by at least `drop` from the median of daily medians over `days`.
    BaselineDrop,
    /// Down by at least `drop` percent from the best value over `days`.
    BestDrop,
    /// Beyond an EWMA mean by `k` standard deviations.
    Trend,
    /// One-sided CUSUM drift from an EWMA reference.
    Cusum,
    /// No reading of `measure` within `within` (checked by `tick`).
    Missing,
    /// The patient's gateway not heard from within `within` (checked by `tick`).
    SilentGateway,
    /// Partial NEWS2 from home parameters.
    News2,
}

impl RuleKind {
    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleKind::Above => "above",
            RuleKind::Below => "below",
            RuleKind::BaselineDrop => "baseline_drop",
            RuleKind::BestDrop => "best_drop",
            RuleKind::Trend => "trend",
            RuleKind::Cusum => "cusum",
            RuleKind::Missing => "missing",
            RuleKind::SilentGateway => "silent_gateway",
            RuleKind::News2 => "news2",
        }
    }
}

/// One escalation band of a threshold rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandSpec {
    /// Level at which the band starts (same direction as the rule).
    pub at: f64,
    /// Severity from that level on.
    pub severity: Severity,
}

/// A second measure a threshold rule also watches (systolic *or* diastolic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsoSpec {
    /// The measurement kind.
    pub measure: String,
    /// Raise level.
    pub raise: f64,
    /// Clear level.
    pub clear: f64,
}

/// Confirm-by-repeat: `n` of the last `m` readings within `within` must be abnormal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmSpec {
    /// Abnormal readings needed.
    pub n: u8,
    /// Out of this many most recent readings.
    pub m: u8,
    /// All counted readings within this window, e.g. "15m".
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

macro_rules! rule_spec {
    ($($(#[$doc:meta])* $field:ident : $ty:ty $(, with = $with:literal)?;)*) => {
        /// One rule as written in a profile or an override. Every field but `id` is optional
        /// here so an override can change just one; [`Profile::build`] says which a kind
        /// needs and which it refuses.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RuleSpec {
            /// Unique within the profile: `a-z 0-9 - _`.
            pub id: String,
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none" $(, with = $with)?)]
                pub $field: Option<$ty>,
            )*
        }

        impl RuleSpec {
            fn merge(&mut self, o: &RuleSpec) {
                $(if let Some(v) = &o.$field { self.$field = Some(v.clone()); })*
            }

            fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
                [$((stringify!($field), self.$field.is_some())),*]
                    .into_iter()
                    .filter(|(_, p)| *p)
                    .map(|(name, _)| name)
            }
        }
    };
}

rule_spec! {
    /// The rule kind.
    kind: RuleKind;
    /// `false` switches the rule off (useful in an override).
    enabled: bool;
    /// Measurement kind (`spo2`, `systolic`, …).
    measure: String;
    /// Threshold rules: the raise level.
    raise: f64;
    /// Threshold rules: the clear level (hysteresis).
    clear: f64;
    /// Threshold rules: escalation bands beyond `raise`, each more severe.
    bands: Vec<BandSpec>;
    /// Threshold rules: a second measure also watched.
    also: AlsoSpec;
    /// Baseline / best rules: the drop that raises (points, or percent for `best_drop`).
    drop: f64;
    /// Baseline / best rules: the drop at or under which the alert clears.
    clear_drop: f64;
    /// Baseline / best rules: days of daily summaries kept.
    days: u16;
    /// Baseline / best rules: days with data needed before the rule speaks.
    min_days: u16;
    /// Trend / CUSUM: which way is abnormal.
    direction: Direction;
    /// Trend: raise beyond mean ∓ k·sd.
    k: f64;
    /// Trend: clear back within mean ∓ clear_k·sd.
    clear_k: f64;
    /// Trend / CUSUM: EWMA smoothing factor in (0, 1].
    alpha: f64;
    /// Trend / CUSUM: floor under the standard deviation (in the measure's unit).
    min_sd: f64;
    /// Trend / CUSUM: readings needed before the rule speaks.
    min_readings: u32;
    /// CUSUM: allowance per reading, in standard deviations.
    slack: f64;
    /// CUSUM: decision limit, in standard deviations.
    limit: f64;
    /// CUSUM: the sum at or under which the alert clears.
    clear_limit: f64;
    /// Missing / silent gateway: the window, e.g. "48h".
    within: Duration, with = "humantime_serde";
    /// NEWS2: how old a parameter may be and still count, e.g. "1h".
    fresh: Duration, with = "humantime_serde";
    /// NEWS2: SpO2 scale, 1 or 2.
    scale: u8;
    /// NEWS2: the patient is on supplemental oxygen (scores 2, and on scale 2 an SpO2 of
    /// 93 % and above scores too). Set per patient in an override.
    on_oxygen: bool;
    /// NEWS2: the lowest response band that raises.
    min_response: Response;
    /// Confirm-by-repeat.
    confirm: ConfirmSpec;
    /// Abnormal for at least this long (first to latest abnormal reading) before raising.
    min_duration: Duration, with = "humantime_serde";
    /// Ask the patient to re-measure when an abnormal reading is not yet confirmed.
    ask_repeat: bool;
    /// Severity when raised.
    severity: Severity;
    /// Who is told (default nurse).
    audience: Audience;
    /// Wording for the nurse; placeholders `{measure}`, `{value}`, `{unit}`, `{limit}`,
    /// `{baseline}`, `{score}`, `{response}`.
    nurse: String;
    /// Wording for the patient (needed when the audience includes the patient).
    patient: String;
}

/// A threshold profile as written: one per condition (`copd`, `hypertension`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile id.
    pub id: String,
    /// Version, raised on every change so an alert names what raised it.
    pub version: u32,
    /// What the profile is for.
    #[serde(default)]
    pub description: String,
    /// The rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

/// A per-patient override, merged onto a base [`Profile`] by rule id: a rule with a known
/// id changes the fields it names; a new id adds a whole rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOverride {
    /// The profile id this override applies to.
    pub base: String,
    /// Override id (named in explanations beside the base profile's).
    pub id: String,
    /// Override version.
    pub version: u32,
    /// Why the clinician changed it.
    #[serde(default)]
    pub reason: String,
    /// Rule changes and additions.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

/// Why a profile or override was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// Not valid TOML, or a misspelt or mistyped key.
    #[error("{0}")]
    Parse(String),
    /// Profile id empty or with characters outside `a-z 0-9 - _`.
    #[error("profile id `{0}` must be 1–64 of a-z 0-9 - _")]
    BadProfileId(String),
    /// Rule id empty or with characters outside `a-z 0-9 - _`.
    #[error("rule id `{0}` must be 1–64 of a-z 0-9 - _")]
    BadRuleId(String),
    /// Two rules with one id.
    #[error("rule id `{0}` appears twice")]
    DuplicateRule(String),
    /// More rules than the engine keeps per patient.
    #[error("{0} rules; a profile holds at most {max}", max = MAX_RULES)]
    TooManyRules(usize),
    /// An override for another profile.
    #[error("override `{id}` is for profile `{base}`, not `{profile}`")]
    WrongBase {
        /// Override id.
        id: String,
        /// What it applies to.
        base: String,
        /// The profile it was merged onto.
        profile: String,
    },
    /// A field the rule kind needs.
    #[error("rule `{rule}`: a `{kind}` rule needs `{field}`", kind = kind.as_str())]
    Missing {
        /// Rule id.
        rule: String,
        /// Rule kind.
        kind: RuleKind,
        /// Missing field.
        field: &'static str,
    },
    /// No kind at all (a new rule in an override must say its kind).
    #[error("rule `{0}` needs `kind`")]
    MissingKind(String),
    /// A field that does not belong to the rule kind.
    #[error("rule `{rule}`: `{field}` does not apply to a `{kind}` rule", kind = kind.as_str())]
    NotApplicable {
        /// Rule id.
        rule: String,
        /// Rule kind.
        kind: RuleKind,
        /// The field.
        field: &'static str,
    },
    /// A measurement kind name that does not exist.
    #[error("rule `{rule}`: unknown measurement kind `{name}`")]
    UnknownMeasure {
        /// Rule id.
        rule: String,
        /// The name given.
        name: String,
    },
    /// A clear level on the wrong side of the raise level.
    #[error(
        "rule `{rule}`: clear level {clear} is on the wrong side of raise level {raise} \
         (a `{dir}` rule must clear {side} where it raises)",
        dir = match direction { Direction::Below => "below", Direction::Above => "above" },
        side = match direction { Direction::Below => "above", Direction::Above => "below" },
    )]
    HysteresisInverted {
        /// Rule id.
        rule: String,
        /// Rule direction.
        direction: Direction,
        /// Raise level.
        raise: f64,
        /// Clear level.
        clear: f64,
    },
    /// Escalation bands out of order.
    #[error(
        "rule `{rule}`: band at {at} ({severity}) must be {side} {previous} ({previous_severity}) in a `{dir}` rule",
        dir = match direction { Direction::Below => "below", Direction::Above => "above" },
        side = match direction { Direction::Below => "below", Direction::Above => "above" },
    )]
    BandOrder {
        /// Rule id.
        rule: String,
        /// Rule direction.
        direction: Direction,
        /// The band's level.
        at: f64,
        /// The band's severity.
        severity: Severity,
        /// The level before it (raise level or previous band).
        previous: f64,
        /// The severity before it.
        previous_severity: Severity,
    },
    /// Escalation band severities that do not rise.
    #[error("rule `{rule}`: band at {at} has severity {severity}, which is not above {previous}")]
    BandSeverity {
        /// Rule id.
        rule: String,
        /// The band's level.
        at: f64,
        /// The band's severity.
        severity: Severity,
        /// The severity before it.
        previous: Severity,
    },
    /// Confirm-by-repeat with N > M, N = 0 or M too large.
    #[error("rule `{rule}`: confirm needs 1 ≤ n ≤ m ≤ {max}, got n = {n}, m = {m}", max = MAX_CONFIRM)]
    Confirm {
        /// Rule id.
        rule: String,
        /// N.
        n: u8,
        /// M.
        m: u8,
    },
    /// Both persistence styles at once.
    #[error("rule `{0}`: use `confirm` or `min_duration`, not both")]
    TwoPersistences(String),
    /// A zero-length window.
    #[error("rule `{rule}`: `{field}` must be longer than zero")]
    ZeroWindow {
        /// Rule id.
        rule: String,
        /// The field.
        field: &'static str,
    },
    /// A number outside what the field accepts.
    #[error("rule `{rule}`: `{field}` = {value} is out of range ({expected})")]
    OutOfRange {
        /// Rule id.
        rule: String,
        /// The field.
        field: &'static str,
        /// The value.
        value: f64,
        /// What is accepted.
        expected: &'static str,
    },
    /// A patient audience without patient wording.
    #[error("rule `{0}`: the audience includes the patient, so `patient` wording is needed")]
    NoPatientWording(String),
    /// An unknown `{placeholder}` in wording.
    #[error("rule `{rule}`: unknown placeholder `{{{name}}}` in `{field}`")]
    UnknownPlaceholder {
        /// Rule id.
        rule: String,
        /// `nurse` or `patient`.
        field: &'static str,
        /// The placeholder name.
        name: String,
    },
}

/// Most rules in one profile (the engine tracks touched rules in one `u64`).
pub const MAX_RULES: usize = 64;
/// Largest M in confirm-by-repeat.
pub const MAX_CONFIRM: u8 = 6;
/// Most days a baseline or best rule keeps.
pub const MAX_DAYS: u16 = 92;
/// Placeholders wording may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "measure", "value", "unit", "limit", "baseline", "score", "response",
];

impl Profile {
    /// Parses a profile file. Misspelt keys are refused with their line and column.
    pub fn from_toml(text: &str) -> Result<Profile, ProfileError> {
        toml::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))
    }

    /// Checks everything [`Profile::build`] checks.
    pub fn validate(&self) -> Result<(), ProfileError> {
        self.build().map(drop)
    }

    /// This profile with `o` layered on top.
    pub fn with_override(&self, o: &ProfileOverride) -> Result<Profile, ProfileError> {
        if o.base != self.id {
            return Err(ProfileError::WrongBase {
                id: o.id.clone(),
                base: o.base.clone(),
                profile: self.id.clone(),
            });
        }
        let mut merged = self.clone();
        for r in &o.rules {
            match merged.rules.iter_mut().find(|b| b.id == r.id) {
                Some(base) => base.merge(r),
                None => merged.rules.push(r.clone()),
            }
        }
        Ok(merged)
    }

    /// Validates and compiles into the [`Ruleset`] the engine runs.
    pub fn build(&self) -> Result<Ruleset, ProfileError> {
        self.build_as(None)
    }

    /// Merges `o` and builds, naming the override in the result.
    pub fn build_with(&self, o: &ProfileOverride) -> Result<Ruleset, ProfileError> {
        if !valid_id(&o.id) {
            return Err(ProfileError::BadProfileId(o.id.clone()));
        }
        self.with_override(o)?
            .build_as(Some((o.id.clone(), o.version)))
    }

    fn build_as(&self, overlay: Option<(String, u32)>) -> Result<Ruleset, ProfileError> {
        if !valid_id(&self.id) {
            return Err(ProfileError::BadProfileId(self.id.clone()));
        }
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for spec in &self.rules {
            if !valid_id(&spec.id) {
                return Err(ProfileError::BadRuleId(spec.id.clone()));
            }
            if !seen.insert(spec.id.as_str()) {
                return Err(ProfileError::DuplicateRule(spec.id.clone()));
            }
            let rule = build_rule(spec)?;
            if spec.enabled != Some(false) {
                rules.push(rule);
            }
        }
        if rules.len() > MAX_RULES {
            return Err(ProfileError::TooManyRules(rules.len()));
        }
        Ok(Ruleset {
            id: self.id.clone(),
            version: self.version,
            overlay,
            rules,
        })
    }
}

impl ProfileOverride {
    /// Parses an override file.
    pub fn from_toml(text: &str) -> Result<ProfileOverride, ProfileError> {
        toml::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// How long a condition must hold before it raises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Persistence {
    /// The first abnormal reading raises.
    Immediate,
    /// Abnormal continuously from the first to the latest abnormal reading for this long
    /// (milliseconds).
    MinDuration(i64),
    /// `n` of the last `m` readings within `within` milliseconds abnormal.
    Confirm {
        /// N.
        n: u8,
        /// M.
        m: u8,
        /// Window in milliseconds.
        within: i64,
    },
}

/// One watched limit of a threshold rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The measure.
    pub measure: Kind,
    /// Raise level.
    pub raise: f64,
    /// Clear level.
    pub clear: f64,
}

/// What a rule checks, with its validated parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Absolute threshold with hysteresis and escalation bands.
    Threshold {
        /// Which way is abnormal.
        direction: Direction,
        /// The main limit.
        limit: Limit,
        /// A second limit (either one breached is abnormal; both must clear).
        also: Option<Limit>,
        /// Escalation levels on the main measure beyond `limit.raise`, each more severe.
        bands: Vec<(f64, Severity)>,
    },
    /// Drop from a median-of-daily-medians baseline.
    BaselineDrop {
        /// The measure.
        measure: Kind,
        /// Drop that raises.
        drop: f64,
        /// Drop at or under which it clears.
        clear_drop: f64,
        /// Days kept.
        days: u16,
        /// Days needed.
        min_days: u16,
    },
    /// Percent drop from the rolling personal best.
    BestDrop {
        /// The measure.
        measure: Kind,
        /// Percent that raises.
        drop_percent: f64,
        /// Percent at or under which it clears.
        clear_percent: f64,
        /// Days kept.
        days: u16,
        /// Days needed.
        min_days: u16,
    },
    /// Beyond EWMA mean ∓ k·sd.
    Trend {
        /// The measure.
        measure: Kind,
        /// Which way is abnormal.
        direction: Direction,
        /// Raise multiplier.
        k: f64,
        /// Clear multiplier.
        clear_k: f64,
        /// EWMA factor.
        alpha: f64,
        /// SD floor.
        min_sd: f64,
        /// Warm-up readings.
        min_readings: u32,
    },
    /// One-sided CUSUM.
    Cusum {
        /// The measure.
        measure: Kind,
        /// Which way is abnormal.
        direction: Direction,
        /// Allowance per reading (SDs).
        slack: f64,
        /// Decision limit (SDs).
        limit: f64,
        /// Clear limit (SDs).
        clear_limit: f64,
        /// EWMA factor of the reference.
        alpha: f64,
        /// SD floor.
        min_sd: f64,
        /// Warm-up readings.
        min_readings: u32,
    },
    /// No reading of `measure` for `within` milliseconds.
    Missing {
        /// The measure.
        measure: Kind,
        /// Window (ms).
        within: i64,
    },
    /// Gateway not heard for `within` milliseconds.
    SilentGateway {
        /// Window (ms).
        within: i64,
    },
    /// Partial NEWS2.
    News2 {
        /// SpO2 scale.
        scale: Spo2Scale,
        /// Scored as on supplemental oxygen.
        on_oxygen: bool,
        /// Freshness window (ms).
        fresh: i64,
        /// Lowest response that raises.
        min_response: Response,
    },
}

/// A validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// Kind name.
    pub kind: RuleKind,
    /// What it checks.
    pub check: Check,
    /// How long before it raises.
    pub persistence: Persistence,
    /// Ask to re-measure while unconfirmed.
    pub ask_repeat: bool,
    /// Severity at raise.
    pub severity: Severity,
    /// Who is told.
    pub audience: Audience,
    /// Nurse wording.
    pub nurse: String,
    /// Patient wording.
    pub patient: Option<String>,
}

impl Rule {
    /// The measurement kinds whose readings this rule looks at.
    pub fn measures(&self) -> impl Iterator<Item = Kind> {
        let list: [Option<Kind>; 4] = match &self.check {
            Check::Threshold { limit, also, .. } => {
                [Some(limit.measure), also.map(|a| a.measure), None, None]
            }
            Check::BaselineDrop { measure, .. }
            | Check::BestDrop { measure, .. }
            | Check::Trend { measure, .. }
            | Check::Cusum { measure, .. }
            | Check::Missing { measure, .. } => [Some(*measure), None, None, None],
            Check::SilentGateway { .. } => [None; 4],
            Check::News2 { .. } => [
                Some(Kind::Spo2),
                Some(Kind::Systolic),
                Some(Kind::PulseRate),
                Some(Kind::BodyTemperature),
            ],
        };
        list.into_iter().flatten()
    }
}

/// A validated profile, ready for the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Ruleset {
    /// Profile id.
    pub id: String,
    /// Profile version.
    pub version: u32,
    /// The override layered on top, if any: (id, version).
    pub overlay: Option<(String, u32)>,
    /// The enabled rules, in file order.
    pub rules: Vec<Rule>,
}

impl Ruleset {
    /// `copd@3`, or `copd@3+pt-123-o2@1` with an override.
    pub fn label(&self) -> String {
        match &self.overlay {
            Some((id, v)) => format!("{}@{}+{}@{}", self.id, self.version, id, v),
            None => format!("{}@{}", self.id, self.version),
        }
    }
}

const COMMON: &[&str] = &[
    "kind",
    "enabled",
    "severity",
    "audience",
    "nurse",
    "patient",
    "confirm",
    "min_duration",
    "ask_repeat",
];

fn allowed(kind: RuleKind) -> &'static [&'static str] {
    match kind {
        RuleKind::Above | RuleKind::Below => &["measure", "raise", "clear", "bands", "also"],
        RuleKind::BaselineDrop | RuleKind::BestDrop => {
            &["measure", "drop", "clear_drop", "days", "min_days"]
        }
        RuleKind::Trend => &[
            "measure",
            "direction",
            "k",
            "clear_k",
            "alpha",
            "min_sd",
            "min_readings",
        ],
        RuleKind::Cusum => &[
            "measure",
            "direction",
            "slack",
            "limit",
            "clear_limit",
            "alpha",
            "min_sd",
            "min_readings",
        ],
        RuleKind::Missing => &["measure", "within"],
        RuleKind::SilentGateway => &["within"],
        RuleKind::News2 => &["fresh", "scale", "on_oxygen", "min_response"],
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Ctx<'a> {
    spec: &'a RuleSpec,
    kind: RuleKind,
}

impl Ctx<'_> {
    fn rule(&self) -> String {
        self.spec.id.clone()
    }

    fn need<T: Clone>(&self, v: &Option<T>, field: &'static str) -> Result<T, ProfileError> {
        v.clone().ok_or_else(|| ProfileError::Missing {
            rule: self.rule(),
            kind: self.kind,
            field,
        })
    }

    fn measure(&self, name: &Option<String>) -> Result<Kind, ProfileError> {
        let name = self.need(name, "measure")?;
        self.kind_named(&name)
    }

    fn kind_named(&self, name: &str) -> Result<Kind, ProfileError> {
        name.parse().map_err(|_| ProfileError::UnknownMeasure {
            rule: self.rule(),
            name: name.chars().take(64).collect(),
        })
    }

    fn range(
        &self,
        field: &'static str,
        value: f64,
        ok: bool,
        expected: &'static str,
    ) -> Result<(), ProfileError> {
        if ok && value.is_finite() {
            Ok(())
        } else {
            Err(ProfileError::OutOfRange {
                rule: self.rule(),
                field,
                value,
                expected,
            })
        }
    }

    fn window(&self, d: Duration, field: &'static str) -> Result<i64, ProfileError> {
        if d.is_zero() {
            Err(ProfileError::ZeroWindow {
                rule: self.rule(),
                field,
            })
        } else {
            Ok(millis(d))
        }
    }

    fn limit(
        &self,
        direction: Direction,
        measure: Kind,
        raise: f64,
        clear: f64,
    ) -> Result<Limit, ProfileError> {
        self.range("raise", raise, true, "a finite number")?;
        self.range("clear", clear, true, "a finite number")?;
        let ok = match direction {
            Direction::Below => clear > raise,
            Direction::Above => clear < raise,
        };
        if !ok {
            return Err(ProfileError::HysteresisInverted {
                rule: self.rule(),
                direction,
                raise,
                clear,
            });
        }
        Ok(Limit {
            measure,
            raise,
            clear,
        })
    }

    fn days(&self) -> Result<(u16, u16), ProfileError> {
        let s = self.spec;
        let days = s.days.unwrap_or(14);
        if days == 0 {
            return Err(ProfileError::ZeroWindow {
                rule: self.rule(),
                field: "days",
            });
        }
        self.range("days", f64::from(days), days <= MAX_DAYS, "1 to 92 days")?;
        let min_days = s.min_days.unwrap_or(days.min(5));
        self.range(
            "min_days",
            f64::from(min_days),
            (1..=days).contains(&min_days),
            "1 to `days`",
        )?;
        Ok((days, min_days))
    }

    fn ewma(&self) -> Result<(f64, f64, u32), ProfileError> {
        let s = self.spec;
        let alpha = s.alpha.unwrap_or(0.1);
        self.range("alpha", alpha, alpha > 0.0 && alpha <= 1.0, "0 < alpha ≤ 1")?;
        let min_sd = self.need(&s.min_sd, "min_sd")?;
        self.range("min_sd", min_sd, min_sd > 0.0, "more than 0")?;
        let min_readings = s.min_readings.unwrap_or(10);
        self.range(
            "min_readings",
            f64::from(min_readings),
            min_readings >= 2,
            "at least 2",
        )?;
        Ok((alpha, min_sd, min_readings))
    }
}

fn build_rule(s: &RuleSpec) -> Result<Rule, ProfileError> {
    let kind = s
        .kind
        .ok_or_else(|| ProfileError::MissingKind(s.id.clone()))?;
    let cx = Ctx { spec: s, kind };
    for field in s.present() {
        if !COMMON.contains(&field) && !allowed(kind).contains(&field) {
            return Err(ProfileError::NotApplicable {
                rule: cx.rule(),
                kind,
                field,
            });
        }
    }
    let ticked = matches!(kind, RuleKind::Missing | RuleKind::SilentGateway);
    for field in ["confirm", "min_duration", "ask_repeat"] {
        if ticked && s.present().any(|f| f == field) {
            return Err(ProfileError::NotApplicable {
                rule: cx.rule(),
                kind,
                field,
            });
        }
    }
    let severity = cx.need(&s.severity, "severity")?;
    let audience = s.audience.unwrap_or(Audience::Nurse);
    let nurse = cx.need(&s.nurse, "nurse")?;
    if audience.includes_patient() && s.patient.is_none() {
        return Err(ProfileError::NoPatientWording(cx.rule()));
    }
    check_placeholders(&cx, "nurse", &nurse)?;
    if let Some(p) = &s.patient {
        check_placeholders(&cx, "patient", p)?;
    }
    let persistence = match (&s.confirm, s.min_duration) {
        (Some(_), Some(_)) => return Err(ProfileError::TwoPersistences(cx.rule())),
        (Some(c), None) => {
            if c.n == 0 || c.n > c.m || c.m > MAX_CONFIRM {
                return Err(ProfileError::Confirm {
                    rule: cx.rule(),
                    n: c.n,
                    m: c.m,
                });
            }
            Persistence::Confirm {
                n: c.n,
                m: c.m,
                within: cx.window(c.within, "confirm.within")?,
            }
        }
        (None, Some(d)) => Persistence::MinDuration(cx.window(d, "min_duration")?),
        (None, None) => Persistence::Immediate,
    };
    let check = match kind {
        RuleKind::Above | RuleKind::Below => {
            let direction = if kind == RuleKind::Above {
                Direction::Above
            } else {
                Direction::Below
            };
            let measure = cx.measure(&s.measure)?;
            let raise = cx.need(&s.raise, "raise")?;
            let clear = cx.need(&s.clear, "clear")?;
            let limit = cx.limit(direction, measure, raise, clear)?;
            let also = match &s.also {
                Some(a) => {
                    let m = cx.kind_named(&a.measure)?;
                    Some(cx.limit(direction, m, a.raise, a.clear)?)
                }
                None => None,
            };
            let mut bands = Vec::new();
            let (mut prev, mut prev_sev) = (raise, severity);
            for b in s.bands.iter().flatten() {
                cx.range("bands.at", b.at, true, "a finite number")?;
                let beyond = match direction {
                    Direction::Below => b.at < prev,
                    Direction::Above => b.at > prev,
                };
                if !beyond {
                    return Err(ProfileError::BandOrder {
                        rule: cx.rule(),
                        direction,
                        at: b.at,
                        severity: b.severity,
                        previous: prev,
                        previous_severity: prev_sev,
                    });
                }
                if b.severity <= prev_sev {
                    return Err(ProfileError::BandSeverity {
                        rule: cx.rule(),
                        at: b.at,
                        severity: b.severity,
                        previous: prev_sev,
                    });
                }
                bands.push((b.at, b.severity));
                (prev, prev_sev) = (b.at, b.severity);
            }
            Check::Threshold {
                direction,
                limit,
                also,
                bands,
            }
        }
        RuleKind::BaselineDrop | RuleKind::BestDrop => {
            let measure = cx.measure(&s.measure)?;
            let drop = cx.need(&s.drop, "drop")?;
            let percent = kind == RuleKind::BestDrop;
            if percent {
                cx.range(
                    "drop",
                    drop,
                    drop > 0.0 && drop < 100.0,
                    "0 < drop < 100 (%)",
                )?;
            } else {
                cx.range("drop", drop, drop > 0.0, "more than 0")?;
            }
            let clear_drop = s.clear_drop.unwrap_or(drop / 2.0);
            cx.range(
                "clear_drop",
                clear_drop,
                clear_drop >= 0.0 && clear_drop < drop,
                "0 ≤ clear_drop < drop",
            )?;
            let (days, min_days) = cx.days()?;
            if percent {
                Check::BestDrop {
                    measure,
                    drop_percent: drop,
                    clear_percent: clear_drop,
                    days,
                    min_days,
                }
            } else {
                Check::BaselineDrop {
                    measure,
                    drop,
                    clear_drop,
                    days,
                    min_days,
                }
            }
        }
        RuleKind::Trend => {
            let measure = cx.measure(&s.measure)?;
            let direction = cx.need(&s.direction, "direction")?;
            let k = cx.need(&s.k, "k")?;
            cx.range("k", k, k > 0.0, "more than 0")?;
            let clear_k = s.clear_k.unwrap_or(k / 2.0);
            cx.range(
                "clear_k",
                clear_k,
                clear_k >= 0.0 && clear_k < k,
                "0 ≤ clear_k < k",
            )?;
            let (alpha, min_sd, min_readings) = cx.ewma()?;
            Check::Trend {
                measure,
                direction,
                k,
                clear_k,
                alpha,
                min_sd,
                min_readings,
            }
        }
        RuleKind::Cusum => {
            let measure = cx.measure(&s.measure)?;
            let direction = cx.need(&s.direction, "direction")?;
            let slack = s.slack.unwrap_or(0.5);
            cx.range("slack", slack, slack >= 0.0, "0 or more")?;
            let limit = s.limit.unwrap_or(5.0);
            cx.range("limit", limit, limit > 0.0, "more than 0")?;
            let clear_limit = s.clear_limit.unwrap_or(0.0);
            cx.range(
                "clear_limit",
                clear_limit,
                clear_limit >= 0.0 && clear_limit < limit,
                "0 ≤ clear_limit < limit",
            )?;
            let (alpha, min_sd, min_readings) = cx.ewma()?;
            Check::Cusum {
                measure,
                direction,
                slack,
                limit,
                clear_limit,
                alpha,
                min_sd,
                min_readings,
            }
        }
        RuleKind::Missing => Check::Missing {
            measure: cx.measure(&s.measure)?,
            within: cx.window(cx.need(&s.within, "within")?, "within")?,
        },
        RuleKind::SilentGateway => Check::SilentGateway {
            within: cx.window(cx.need(&s.within, "within")?, "within")?,
        },
        RuleKind::News2 => {
            let scale = match s.scale.unwrap_or(1) {
                1 => Spo2Scale::One,
                2 => Spo2Scale::Two,
                other => {
                    return Err(ProfileError::OutOfRange {
                        rule: cx.rule(),
                        field: "scale",
                        value: f64::from(other),
                        expected: "1 or 2",
                    });
                }
            };
            let fresh = cx.window(s.fresh.unwrap_or(Duration::from_secs(3600)), "fresh")?;
            let min_response = s.min_response.unwrap_or(Response::LowMedium);
            if min_response == Response::None {
                return Err(ProfileError::OutOfRange {
                    rule: cx.rule(),
                    field: "min_response",
                    value: 0.0,
                    expected: "low, low_medium, medium or high",
                });
            }
            Check::News2 {
                scale,
                on_oxygen: s.on_oxygen.unwrap_or(false),
                fresh,
                min_response,
            }
        }
    };
    Ok(Rule {
        id: s.id.clone(),
        kind,
        check,
        persistence,
        ask_repeat: s.ask_repeat.unwrap_or(false),
        severity,
        audience,
        nurse,
        patient: s.patient.clone(),
    })
}

fn check_placeholders(cx: &Ctx<'_>, field: &'static str, text: &str) -> Result<(), ProfileError> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(ProfileError::UnknownPlaceholder {
                rule: cx.rule(),
                field,
                name: name.chars().take(32).collect(),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "id = \"t\"\nversion = 1\n";

    fn err(rules: &str) -> String {
        let text = format!("{HEAD}{rules}");
        match Profile::from_toml(&text) {
            Err(e) => e.to_string(),
            Ok(p) => p
                .build()
                .expect_err("profile should be refused")
                .to_string(),
        }
    }

    const SPO2: &str = r#"
[[rule]]
id = "spo2-low"
kind = "below"
measure = "spo2"
severity = "medium"
nurse = "SpO2 {value} %"
"#;

    #[test]
    fn unknown_measure_is_named() {
        assert_eq!(
            err(&format!("{SPO2}raise = 92\nclear = 94\n").replace("\"spo2\"", "\"spo3\"")),
            "rule `spo2-low`: unknown measurement kind `spo3`"
        );
    }

    #[test]
    fn inverted_hysteresis_is_refused() {
        assert_eq!(
            err(&format!("{SPO2}raise = 92\nclear = 90\n")),
            "rule `spo2-low`: clear level 90 is on the wrong side of raise level 92 \
             (a `below` rule must clear above where it raises)"
        );
        assert_eq!(
            err(&format!("{SPO2}raise = 92\nclear = 92\n")),
            "rule `spo2-low`: clear level 92 is on the wrong side of raise level 92 \
             (a `below` rule must clear above where it raises)"
        );
        let above = r#"
[[rule]]
id = "sys-high"
kind = "above"
measure = "systolic"
raise = 180
clear = 185
severity = "high"
nurse = "x"
"#;
        assert_eq!(
            err(above),
            "rule `sys-high`: clear level 185 is on the wrong side of raise level 180 \
             (a `above` rule must clear below where it raises)"
        );
    }

    #[test]
    fn contradictory_bands_are_refused() {
        // A below rule: warning at 95, then "critical" at 96, which is not lower.
        let text =
            format!("{SPO2}raise = 95\nclear = 97\nbands = [{{ at = 96, severity = \"high\" }}]\n");
        assert_eq!(
            err(&text),
            "rule `spo2-low`: band at 96 (high) must be below 95 (medium) in a `below` rule"
        );
        let text =
            format!("{SPO2}raise = 92\nclear = 94\nbands = [{{ at = 88, severity = \"low\" }}]\n");
        assert_eq!(
            err(&text),
            "rule `spo2-low`: band at 88 has severity low, which is not above medium"
        );
    }

    #[test]
    fn confirm_n_above_m_and_zero_windows_are_refused() {
        let text = format!(
            "{SPO2}raise = 92\nclear = 94\nconfirm = {{ n = 3, m = 2, within = \"15m\" }}\n"
        );
        assert_eq!(
            err(&text),
            "rule `spo2-low`: confirm needs 1 ≤ n ≤ m ≤ 6, got n = 3, m = 2"
        );
        let text = format!(
            "{SPO2}raise = 92\nclear = 94\nconfirm = {{ n = 2, m = 3, within = \"0s\" }}\n"
        );
        assert_eq!(
            err(&text),
            "rule `spo2-low`: `confirm.within` must be longer than zero"
        );
        let missing = r#"
[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "0s"
severity = "low"
nurse = "x"
"#;
        assert_eq!(
            err(missing),
            "rule `no-spo2`: `within` must be longer than zero"
        );
        let baseline = r#"
[[rule]]
id = "spo2-drop"
kind = "baseline_drop"
measure = "spo2"
drop = 4
days = 0
severity = "low"
nurse = "x"
"#;
        assert_eq!(
            err(baseline),
            "rule `spo2-drop`: `days` must be longer than zero"
        );
    }

    #[test]
    fn duplicate_ids_and_stray_fields_are_refused() {
        let text = format!("{SPO2}raise = 92\nclear = 94\n{SPO2}raise = 90\nclear = 94\n");
        assert_eq!(err(&text), "rule id `spo2-low` appears twice");
        assert_eq!(
            err(&format!("{SPO2}raise = 92\nclear = 94\ndrop = 4\n")),
            "rule `spo2-low`: `drop` does not apply to a `below` rule"
        );
        assert_eq!(
            err(&format!("{SPO2}clear = 94\n")),
            "rule `spo2-low`: a `below` rule needs `raise`"
        );
        assert_eq!(
            err(&format!(
                "{SPO2}raise = 92\nclear = 94\naudience = \"both\"\n"
            )),
            "rule `spo2-low`: the audience includes the patient, so `patient` wording is needed"
        );
        assert_eq!(
            err(&format!("{SPO2}raise = 92\nclear = 94\n").replace("{value}", "{valeu}")),
            "rule `spo2-low`: unknown placeholder `{valeu}` in `nurse`"
        );
    }

    #[test]
    fn misspelt_keys_are_refused_by_toml_with_their_place() {
        let e = err(&format!("{SPO2}rasie = 92\nclear = 94\n"));
        assert!(e.contains("unknown field `rasie`"), "{e}");
        assert!(e.contains("line 10"), "{e}");
    }

    #[test]
    fn overrides_merge_by_rule_id() {
        let base =
            Profile::from_toml(&format!("{HEAD}{SPO2}raise = 92\nclear = 94\n")).expect("parses");
        let o = ProfileOverride::from_toml(
            r#"
base = "t"
id = "pt-7"
version = 2
reason = "chronic low saturation; agreed with consultant"

[[rule]]
id = "spo2-low"
raise = 88
clear = 90

[[rule]]
id = "no-spo2"
kind = "missing"
measure = "spo2"
within = "48h"
severity = "low"
nurse = "No SpO2 for 2 days"
"#,
        )
        .expect("parses");
        let r = base.build_with(&o).expect("valid");
        assert_eq!(r.label(), "t@1+pt-7@2");
        assert_eq!(r.rules.len(), 2);
        let Check::Threshold { limit, .. } = &r.rules[0].check else {
            panic!("threshold expected")
        };
        assert_eq!((limit.raise, limit.clear), (88.0, 90.0));
        assert_eq!(
            r.rules[0].severity,
            Severity::Medium,
            "untouched fields stay"
        );
        assert_eq!(
            r.rules[1].check,
            Check::Missing {
                measure: Kind::Spo2,
                within: 48 * 3_600_000
            }
        );
        // An override that makes the merged rule invalid is refused like a profile.
        let bad = ProfileOverride {
            rules: vec![RuleSpec {
                id: "spo2-low".into(),
                clear: Some(80.0),
                ..RuleSpec::default()
            }],
            ..o.clone()
        };
        assert_eq!(
            base.build_with(&bad).expect_err("inverted").to_string(),
            "rule `spo2-low`: clear level 80 is on the wrong side of raise level 92 \
             (a `below` rule must clear above where it raises)"
        );
        let wrong = ProfileOverride {
            base: "copd".into(),
            ..o
        };
        assert_eq!(
            base.build_with(&wrong).expect_err("other base").to_string(),
            "override `pt-7` is for profile `copd`, not `t`"
        );
        // A rule can be switched off.
        let off = ProfileOverride::from_toml(
            "base = \"t\"\nid = \"off\"\nversion = 1\n[[rule]]\nid = \"spo2-low\"\nenabled = false\n",
        )
        .expect("parses");
        assert!(base.build_with(&off).expect("valid").rules.is_empty());
    }
}
