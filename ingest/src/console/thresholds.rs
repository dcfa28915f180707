//! Threshold profiles as the console sees them: the catalog loaded from `[rules]
//! profiles_dir`, the ruleset in force for a patient (a console-saved version when there is
//! one, else the file-based choice the consumer makes), and the backtest preview of a change.
//!
//! A clinician's change is a [`ProfileOverride`] on the patient's base profile, with the id
//! [`CONSOLE_OVERRIDE_ID`] and the version number the record gives it: alerts raised under it
//! name it (`copd@1+console@3`). The consumer builds the same ruleset with [`build_saved`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rules::{BacktestReport, Profile, ProfileOverride, RuleSpec, Ruleset};
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use crate::config::RulesConfig;
use crate::record::{Patient, ThresholdVersion};

/// The override id of console-saved thresholds.
pub const CONSOLE_OVERRIDE_ID: &str = "console";

/// The profiles and file overrides of `[rules] profiles_dir`.
#[derive(Debug)]
pub struct ProfileCatalog {
    profiles: HashMap<String, Profile>,
    overrides: HashMap<String, ProfileOverride>,
    default: String,
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl ProfileCatalog {
    /// Loads the profiles the consumer loads (the consumer has already refused bad ones).
    pub fn load(config: &RulesConfig) -> Result<Self, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut profiles = HashMap::new();
        for path in toml_files(&config.profiles_dir)? {
            let p = Profile::from_toml(&read(&path)?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            profiles.insert(p.id.clone(), p);
        }
        let mut overrides = HashMap::new();
        let dir = config.profiles_dir.join("overrides");
        if dir.is_dir() {
            for path in toml_files(&dir)? {
                let o = ProfileOverride::from_toml(&read(&path)?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                overrides.insert(o.id.clone(), o);
            }
        }
        if !profiles.contains_key(&config.default_profile) {
            return Err(format!(
                "{}: no default profile `{}`",
                config.profiles_dir.display(),
                config.default_profile
            ));
        }
        Ok(ProfileCatalog {
            profiles,
            overrides,
            default: config.default_profile.clone(),
        })
    }

    /// A base profile by id.
    pub fn profile(&self, id: &str) -> Option<&Profile> {
        self.profiles.get(id)
    }

    /// The file-based choice for a patient (as the consumer makes it): their `profile_id`
    /// (a profile, or a file override on its base), else their condition's profile, else
    /// the default. Returns the base profile and the file override, if any.
    pub fn file_choice(&self, patient: &Patient) -> (&Profile, Option<&ProfileOverride>) {
        if let Some(id) = patient.profile_id.as_deref() {
            if let Some(p) = self.profiles.get(id) {
                return (p, None);
            }
            if let Some(o) = self.overrides.get(id)
                && let Some(p) = self.profiles.get(&o.base)
            {
                return (p, Some(o));
            }
        }
        let p = self
            .profiles
            .get(&patient.condition.to_ascii_lowercase())
            .or_else(|| self.profiles.get(&self.default))
            .or_else(|| self.profiles.values().next());
        // `load` checked the default exists, so `p` is always found.
        match p {
            Some(p) => (p, None),
            None => unreachable_profile(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_profile() -> ! {
    panic!("ProfileCatalog::load guarantees the default profile")
}

/// The ruleset of a console-saved version on `base`.
pub fn build_saved(base: &Profile, saved: &ThresholdVersion) -> Result<Ruleset, String> {
    let mut o: ProfileOverride =
        serde_json::from_value(saved.override_json.clone()).map_err(|e| e.to_string())?;
    o.version = u32::try_from(saved.version).unwrap_or(u32::MAX);
    base.build_with(&o).map_err(|e| e.to_string())
}

/// The override a clinician's rule changes make on `base`, checked by building it: a bad
/// change is refused with the rules engine's precise message (rule and field named).
pub fn candidate(
    base: &Profile,
    rules: Vec<RuleSpec>,
    version: i64,
    reason: &str,
) -> Result<(ProfileOverride, Ruleset), String> {
    let o = ProfileOverride {
        base: base.id.clone(),
        id: CONSOLE_OVERRIDE_ID.into(),
        version: u32::try_from(version).unwrap_or(u32::MAX),
        reason: reason.to_owned(),
        rules,
    };
    let set = base.build_with(&o).map_err(|e| e.to_string())?;
    Ok((o, set))
}

/// What is in force for a patient.
#[derive(Debug)]
pub struct InForce<'a> {
    /// The base profile.
    pub base: &'a Profile,
    /// The file override (when no console version is in force).
    pub file_override: Option<&'a ProfileOverride>,
    /// The console version in force.
    pub saved: Option<ThresholdVersion>,
    /// The built ruleset.
    pub ruleset: Ruleset,
}

/// The ruleset in force for a patient: the latest console version when its base is loaded,
/// else the file-based choice.
pub fn in_force<'a>(
    catalog: &'a ProfileCatalog,
    patient: &Patient,
    saved: Option<ThresholdVersion>,
) -> Result<InForce<'a>, String> {
    if let Some(s) = saved
        && let Some(base) = catalog.profile(&s.base_profile)
    {
        let ruleset = build_saved(base, &s)?;
        return Ok(InForce {
            base,
            file_override: None,
            saved: Some(s),
            ruleset,
        });
    }
    let (base, o) = catalog.file_choice(patient);
    let ruleset = match o {
        Some(o) => base.build_with(o),
        None => base.build(),
    }
    .map_err(|e| e.to_string())?;
    Ok(InForce {
        base,
        file_override: o,
        saved: None,
        ruleset,
    })
}

/// One side of a preview.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct BacktestSummary {
    /// Ruleset label.
    pub profile: String,
    /// Alerts raised in the window.
    pub alerts: u32,
    /// Alerts per rule.
    #[schema(value_type = Object)]
    pub by_rule: Json,
    /// Readings in the window.
    pub readings: u64,
}

impl From<&BacktestReport> for BacktestSummary {
    fn from(r: &BacktestReport) -> Self {
        BacktestSummary {
            profile: r.profile.clone(),
            alerts: u32::try_from(r.alerts.len()).unwrap_or(u32::MAX),
            by_rule: r
                .by_rule
                .iter()
                .map(|(id, n)| (id.clone(), Json::from(*n)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            readings: r.readings_in_window,
        }
    }
}

/// The preview of a threshold change over the patient's last 30 days.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Preview {
    /// With the thresholds in force.
    pub current: BacktestSummary,
    /// With the change.
    pub candidate: BacktestSummary,
    /// "This change would have raised N alerts in the last 30 days instead of M."
    pub message: String,
}

/// Runs both backtests over the same readings.
pub fn preview(
    current: &Ruleset,
    candidate: &Ruleset,
    readings: &[vitals::Reading],
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> Preview {
    let now_r = rules::backtest(current, readings.iter().cloned(), from, to, |_| {});
    let new_r = rules::backtest(candidate, readings.iter().cloned(), from, to, |_| {});
    let current = BacktestSummary::from(&now_r);
    let candidate = BacktestSummary::from(&new_r);
    let plural = |n: u32| if n == 1 { "alert" } else { "alerts" };
    let message = format!(
        "This change would have raised {} {} in the last 30 days instead of {}.",
        candidate.alerts,
        plural(candidate.alerts),
        current.alerts
    );
    Preview {
        current,
        candidate,
        message,
    }
}
