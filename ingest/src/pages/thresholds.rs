//! A patient's thresholds: `GET /console/patients/{key}/thresholds` shows the profile in force
//! (base profile, the override on it and where that comes from), each rule's levels, and the
//! version history (who, when, why). Clinicians also get the edit form:
//!
//! 1. `POST …/thresholds/preview` backtests the edited rules against the patient's last 30
//!    days beside the rules in force and shows "this change would have raised N alerts in the
//!    last 30 days instead of M", keeping the edits in the form;
//! 2. only then is the save button shown; `POST …/thresholds` needs a reason and stores the
//!    change as a new version (audited), which the consumer uses from the next reading.
//!
//! Nurses see the levels and the history, not the form; their POSTs are refused by the role
//! guard (403) before any of this runs. The rules engine checks every change
//! (`console::thresholds::candidate`): a nonsensical one is refused with its message.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use rules::{ProfileOverride, RuleKind, RuleSpec};
use time::OffsetDateTime;

use super::common::{self, html_response, patient_href, time_el, viewer};
use super::layout::{self, Flash, Section, csrf_field};
use crate::console::auth::{RequireRole, Staff, role};
use crate::console::thresholds::{self, Preview};
use crate::http::HttpState;
use crate::record::{Patient, RecordError, ThresholdVersion};

/// The rules in force for a patient, merged for display.
#[derive(Clone, Debug)]
pub struct RulesInForce {
    /// The ruleset's label (`copd@1+console@2`).
    pub label: String,
    /// The base profile id.
    pub base: String,
    /// The base profile's rules.
    pub base_rules: Vec<RuleSpec>,
    /// The override in force (console version or file), if any.
    pub override_rules: Vec<RuleSpec>,
    /// Where the override comes from.
    pub source: String,
    /// The merged rules.
    pub rules: Vec<RuleSpec>,
    /// The merged rules as the engine runs them.
    pub ruleset: rules::Ruleset,
}

/// What is in force for `patient`; `Ok(None)` when the server runs without profiles or the
/// profile does not build (logged).
pub async fn rules_in_force(
    state: &HttpState,
    patient: &Patient,
) -> Result<Option<RulesInForce>, RecordError> {
    let Some(catalog) = state.console.profiles.clone() else {
        return Ok(None);
    };
    let saved = state.record.current_thresholds(&patient.key).await?;
    let f = match thresholds::in_force(&catalog, patient, saved) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "console: the thresholds in force do not build");
            return Ok(None);
        }
    };
    let (o, source): (Option<ProfileOverride>, String) = match (&f.saved, f.file_override) {
        (Some(s), _) => (
            serde_json::from_value(s.override_json.clone()).ok(),
            format!("console version {} by {}", s.version, s.author),
        ),
        (None, Some(o)) => (Some(o.clone()), format!("override file `{}`", o.id)),
        (None, None) => (None, "none".into()),
    };
    let merged = match &o {
        Some(o) => f
            .base
            .with_override(o)
            .map(|p| p.rules)
            .unwrap_or_else(|_| f.base.rules.clone()),
        None => f.base.rules.clone(),
    };
    Ok(Some(RulesInForce {
        label: f.ruleset.label(),
        base: f.base.id.clone(),
        base_rules: f.base.rules.clone(),
        override_rules: o.map(|o| o.rules).unwrap_or_default(),
        source,
        rules: merged,
        ruleset: f.ruleset,
    }))
}

/// The fields a clinician edits, per rule kind.
fn editable(kind: Option<RuleKind>) -> &'static [&'static str] {
    match kind {
        Some(RuleKind::Below | RuleKind::Above) => &["raise", "clear"],
        Some(RuleKind::BaselineDrop | RuleKind::BestDrop) => &["drop", "clear_drop"],
        _ => &[],
    }
}

fn get(r: &RuleSpec, field: &str) -> Option<f64> {
    match field {
        "raise" => r.raise,
        "clear" => r.clear,
        "drop" => r.drop,
        "clear_drop" => r.clear_drop,
        _ => None,
    }
}

fn set(r: &mut RuleSpec, field: &str, v: Option<f64>) {
    match field {
        "raise" => r.raise = v,
        "clear" => r.clear = v,
        "drop" => r.drop = v,
        "clear_drop" => r.clear_drop = v,
        _ => {}
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    })
    .unwrap_or_default()
}

/// The edit form's fields: `{rule}.{field}` numbers, `{rule}.enabled` checkboxes (present
/// when ticked), `reason`.
pub type FormFields = Vec<(String, String)>;

fn field<'a>(f: &'a FormFields, name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The override the edited form asks for: the override in force, with every edited field set
/// where it differs from the base profile and cleared where it is back to the base value.
/// Errors name the rule and field.
pub fn changes(f: &RulesInForce, form: &FormFields) -> Result<Vec<RuleSpec>, String> {
    let mut out: Vec<RuleSpec> = f.override_rules.clone();
    for base in &f.base_rules {
        let fields = editable(base.kind);
        if fields.is_empty() {
            continue;
        }
        let idx = match out.iter().position(|r| r.id == base.id) {
            Some(i) => i,
            None => {
                out.push(RuleSpec {
                    id: base.id.clone(),
                    ..RuleSpec::default()
                });
                out.len() - 1
            }
        };
        let o = &mut out[idx];
        for name in fields {
            let key = format!("{}.{name}", base.id);
            let Some(text) = field(form, &key).map(str::trim) else {
                continue;
            };
            let value = if text.is_empty() {
                None
            } else {
                Some(
                    text.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            format!(
                                "{} {}: “{text}” is not a number",
                                base.id,
                                name.replace('_', " ")
                            )
                        })?,
                )
            };
            let value = if value == get(base, name) {
                None
            } else {
                value.or(get(base, name))
            };
            set(o, name, value);
        }
        let enabled = field(form, &format!("{}.enabled", base.id)).is_some();
        let base_enabled = base.enabled != Some(false);
        o.enabled = (enabled != base_enabled).then_some(enabled);
    }
    // Drop entries that no longer change anything.
    out.retain(|r| {
        let only_id = RuleSpec {
            id: r.id.clone(),
            ..RuleSpec::default()
        };
        *r != only_id
    });
    Ok(out)
}

/// The form's values applied to the rules in force, for redrawing the form as edited.
fn edited_rules(f: &RulesInForce, changes: &[RuleSpec]) -> Vec<RuleSpec> {
    let o = ProfileOverride {
        base: f.base.clone(),
        id: thresholds::CONSOLE_OVERRIDE_ID.into(),
        version: 0,
        reason: String::new(),
        rules: changes.to_vec(),
    };
    let base = rules::Profile {
        id: f.base.clone(),
        version: 0,
        description: String::new(),
        rules: f.base_rules.clone(),
    };
    base.with_override(&o)
        .map(|p| p.rules)
        .unwrap_or_else(|_| f.rules.clone())
}

fn kind_name(k: Option<RuleKind>) -> &'static str {
    match k {
        Some(RuleKind::Above) => "above",
        Some(RuleKind::Below) => "below",
        Some(RuleKind::BaselineDrop) => "drop from baseline",
        Some(RuleKind::BestDrop) => "drop from personal best (%)",
        Some(RuleKind::Trend) => "trend",
        Some(RuleKind::Cusum) => "drift (CUSUM)",
        Some(RuleKind::Missing) => "missing readings",
        Some(RuleKind::SilentGateway) => "silent gateway",
        Some(RuleKind::News2) => "NEWS2",
        None => "",
    }
}

fn levels(r: &RuleSpec) -> String {
    match r.kind {
        Some(RuleKind::Below | RuleKind::Above) => {
            let mut s = format!("raise {} · clear {}", fmt(r.raise), fmt(r.clear));
            for b in r.bands.iter().flatten() {
                s.push_str(&format!(
                    " · {} at {}",
                    b.severity.as_str(),
                    fmt(Some(b.at))
                ));
            }
            s
        }
        Some(RuleKind::BaselineDrop | RuleKind::BestDrop) => format!(
            "drop {} · clears at {} · over {} days",
            fmt(r.drop),
            fmt(r.clear_drop),
            r.days.map(|d| d.to_string()).unwrap_or_default()
        ),
        Some(RuleKind::News2) => format!(
            "from response {}",
            r.min_response.map(|m| m.as_str()).unwrap_or("low")
        ),
        Some(RuleKind::Missing | RuleKind::SilentGateway) => {
            format!(
                "within {} h",
                r.within.map(|d| d.as_secs() / 3600).unwrap_or_default()
            )
        }
        _ => String::new(),
    }
}

struct View<'a> {
    patient: &'a Patient,
    inforce: &'a RulesInForce,
    versions: &'a [ThresholdVersion],
    /// The rules to show in the form (edited, after a preview).
    form_rules: Vec<RuleSpec>,
    preview: Option<Preview>,
    reason: String,
}

fn render(staff: &Staff, status: StatusCode, flash: Option<&Flash>, v: View<'_>) -> Response {
    let clinician = staff.0.role >= crate::record::Role::Clinician;
    let csrf = staff.csrf().unwrap_or_default();
    let key = v.patient.key.as_str();
    let base_href = format!("{}/thresholds", patient_href(key));
    let body = html! {
        (super::timeline::header(v.patient, "thresholds"))
        h2 { "In force: " code { (v.inforce.label) } }
        p class="muted" { "Base profile " code { (v.inforce.base) } "; override: " (v.inforce.source) "." }
        div class="table-wrap" {
            table id="rules" {
                thead { tr { th scope="col" { "Rule" } th scope="col" { "Kind" } th scope="col" { "Measure" } th scope="col" { "Levels" } th scope="col" { "Severity" } th scope="col" { "On" } } }
                tbody {
                    @for r in &v.inforce.rules {
                        tr data-rule=(r.id) {
                            th scope="row" { code { (r.id) } }
                            td { (kind_name(r.kind)) }
                            td { (r.measure.as_deref().map(common::kind_label).unwrap_or_default()) }
                            td { (levels(r)) }
                            td { (r.severity.map(|s| s.as_str()).unwrap_or("")) }
                            td { @if r.enabled == Some(false) { "off" } @else { "on" } }
                        }
                    }
                }
            }
        }
        @if clinician && !csrf.is_empty() {
            (edit_form(&base_href, csrf, &v))
        } @else {
            p id="edit-clinicians-only" class="flash" { "Only clinicians can change thresholds." }
        }
        h2 { "Version history" }
        @if v.versions.is_empty() {
            p class="muted" id="no-versions" { "No console changes yet: the profile file is in force." }
        } @else {
            div class="table-wrap" {
                table id="versions" {
                    thead { tr { th scope="col" { "Version" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Why" } th scope="col" { "Changes" } } }
                    tbody {
                        @for s in v.versions {
                            tr {
                                td class="num" { (s.version) }
                                td class="nowrap" { (time_el(s.at)) }
                                td { (s.author) }
                                td { (s.reason) }
                                td { code { (summarise(&s.override_json)) } }
                            }
                        }
                    }
                }
            }
        }
    };
    let viewer = viewer(staff);
    html_response(
        status,
        layout::page(
            &format!("Thresholds {key}"),
            Section::Patients,
            Some(&viewer),
            flash,
            body,
        ),
    )
}

/// `spo2-low raise 88, clear 90; pef-best-drop off`.
fn summarise(o: &serde_json::Value) -> String {
    let Ok(o) = serde_json::from_value::<ProfileOverride>(o.clone()) else {
        return o.to_string();
    };
    o.rules
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            for f in ["raise", "clear", "drop", "clear_drop"] {
                if let Some(v) = get(r, f) {
                    parts.push(format!("{} {}", f.replace('_', " "), fmt(Some(v))));
                }
            }
            if let Some(e) = r.enabled {
                parts.push(if e { "on".into() } else { "off".into() });
            }
            if parts.is_empty() {
                r.id.clone()
            } else {
                format!("{} {}", r.id, parts.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn edit_form(action: &str, csrf: &str, v: &View<'_>) -> Markup {
    html! {
        h2 id="edit-h" { "Change thresholds" }
        form id="threshold-edit" method="post" action={ (action) "/preview" } aria-labelledby="edit-h" {
            (csrf_field(csrf))
            div class="rules-grid" {
                @for r in v.form_rules.iter().filter(|r| !editable(r.kind).is_empty()) {
                    fieldset {
                        legend { code { (r.id) } " — " (kind_name(r.kind)) " " (r.measure.as_deref().map(common::kind_label).unwrap_or_default()) }
                        div class="rule-edit" {
                            @for f in editable(r.kind) {
                                @let id = format!("{}.{f}", r.id);
                                div {
                                    label for=(id) { (f.replace('_', " ")) }
                                    input id=(id) name=(id) type="text" inputmode="decimal" value=(fmt(get(r, f)));
                                }
                            }
                            div {
                                @let id = format!("{}.enabled", r.id);
                                label for=(id) {
                                    input id=(id) name=(id) type="checkbox" value="on" checked[r.enabled != Some(false)];
                                    " rule on"
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(p) = &v.preview {
                div class="preview" id="preview" role="status" {
                    p { strong { (p.message) } }
                    p class="muted" {
                        "Backtest of " (p.candidate.readings) " readings: in force " code { (p.current.profile) } " raised " (p.current.alerts)
                        "; with this change " (p.candidate.alerts) "."
                    }
                    (by_rule(p))
                }
                div {
                    label for="reason" { "Reason for the change " span class="hint" { "(required; kept in the version history and the audit log)" } }
                    textarea id="reason" name="reason" required maxlength="1000" { (v.reason) }
                }
                p {
                    button type="submit" id="save" formaction=(action) { "Save these thresholds" } " "
                    button type="submit" class="secondary" id="preview-again" { "Preview again" }
                }
            } @else {
                p class="hint" { "Preview shows how many alerts the change would have raised in the last 30 days before you save it." }
                p { button type="submit" id="preview-btn" { "Preview the change" } }
            }
        }
    }
}

fn by_rule(p: &Preview) -> Markup {
    let rules = |j: &serde_json::Value| j.as_object().cloned().unwrap_or_default();
    let (now, new) = (rules(&p.current.by_rule), rules(&p.candidate.by_rule));
    let mut ids: Vec<&String> = now.keys().chain(new.keys()).collect();
    ids.sort();
    ids.dedup();
    html! {
        @if !ids.is_empty() {
            div class="table-wrap" {
                table id="preview-by-rule" {
                    thead { tr { th scope="col" { "Rule" } th scope="col" class="num" { "In force" } th scope="col" class="num" { "With the change" } } }
                    tbody {
                        @for id in ids {
                            tr {
                                th scope="row" { code { (id) } }
                                td class="num" { (now.get(id.as_str()).and_then(|v| v.as_u64()).unwrap_or(0)) }
                                td class="num" { (new.get(id.as_str()).and_then(|v| v.as_u64()).unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Loaded {
    patient: Patient,
    inforce: RulesInForce,
    versions: Vec<ThresholdVersion>,
}

async fn load(state: &HttpState, staff: &Staff, key: &str) -> Result<Loaded, Response> {
    let Ok(key) = vitals::PatientKey::new(key) else {
        return Err(common::error_page(
            StatusCode::NOT_FOUND,
            staff,
            "No such patient",
            "That is not a patient key.",
        ));
    };
    let patient = match state.record.patient(&key).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(common::error_page(
                StatusCode::NOT_FOUND,
                staff,
                "No such patient",
                "No patient has that key.",
            ));
        }
        Err(e) => return Err(common::unavailable(Some(staff), &e)),
    };
    let inforce = match rules_in_force(state, &patient).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(common::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                staff,
                "Thresholds unavailable",
                "This server runs without threshold profiles, or the patient's profile does not build (see the server log).",
            ));
        }
        Err(e) => return Err(common::unavailable(Some(staff), &e)),
    };
    let versions = match state.record.threshold_versions(&patient.key).await {
        Ok(v) => v,
        Err(e) => return Err(common::unavailable(Some(staff), &e)),
    };
    Ok(Loaded {
        patient,
        inforce,
        versions,
    })
}

/// `GET /console/patients/{key}/thresholds`.
pub async fn show(
    State(state): State<HttpState>,
    staff: Staff,
    Path(key): Path<String>,
) -> Response {
    let l = match load(&state, &staff, &key).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let saved = l.versions.first().map(|v| v.version);
    let flash = saved.and_then(|n| {
        // After a save the version just written is the first; say so only right after it.
        (l.versions
            .first()
            .is_some_and(|v| OffsetDateTime::now_utc() - v.at < time::Duration::seconds(30)))
        .then(|| Flash::Ok(format!("Version {n} is in force.")))
    });
    let form_rules = l.inforce.rules.clone();
    render(
        &staff,
        StatusCode::OK,
        flash.as_ref(),
        View {
            patient: &l.patient,
            inforce: &l.inforce,
            versions: &l.versions,
            form_rules,
            preview: None,
            reason: String::new(),
        },
    )
}

fn refuse(
    staff: &Staff,
    l: &Loaded,
    form_rules: Vec<RuleSpec>,
    reason: String,
    message: String,
) -> Response {
    render(
        staff,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some(&Flash::Error(message)),
        View {
            patient: &l.patient,
            inforce: &l.inforce,
            versions: &l.versions,
            form_rules,
            preview: None,
            reason,
        },
    )
}

/// `POST /console/patients/{key}/thresholds/preview` (clinicians).
pub async fn preview(
    State(state): State<HttpState>,
    RequireRole(user, ..): RequireRole<role::Clinician>,
    Path(key): Path<String>,
    Form(form): Form<FormFields>,
) -> Response {
    let staff = Staff(user);
    let l = match load(&state, &staff, &key).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let reason = field(&form, "reason").unwrap_or("").to_owned();
    let rules = match changes(&l.inforce, &form) {
        Ok(c) => c,
        Err(m) => return refuse(&staff, &l, l.inforce.rules.clone(), reason, m),
    };
    let edited = edited_rules(&l.inforce, &rules);
    let Some(catalog) = state.console.profiles.clone() else {
        return refuse(
            &staff,
            &l,
            edited,
            reason,
            "This server runs without threshold profiles.".into(),
        );
    };
    let Some(base) = catalog.profile(&l.inforce.base) else {
        return refuse(
            &staff,
            &l,
            edited,
            reason,
            "The base profile is not loaded.".into(),
        );
    };
    let candidate = match thresholds::candidate(base, rules, 0, &reason) {
        Ok((_, set)) => set,
        Err(m) => {
            return refuse(
                &staff,
                &l,
                edited,
                reason,
                format!("The rules engine refuses this change: {m}"),
            );
        }
    };
    let current = match thresholds::in_force(&catalog, &l.patient, l.versions.first().cloned()) {
        Ok(f) => f.ruleset,
        Err(m) => return refuse(&staff, &l, edited, reason, m),
    };
    let to = OffsetDateTime::now_utc();
    let from = to - time::Duration::days(30);
    let warm = from - time::Duration::days(i64::from(rules::MAX_DAYS));
    let readings = match state
        .record
        .readings_to_replay(&l.patient.key, warm, to)
        .await
    {
        Ok(r) => r,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let p = match tokio::task::spawn_blocking(move || {
        thresholds::preview(&current, &candidate, &readings, from, to)
    })
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "console: the backtest task failed");
            return refuse(
                &staff,
                &l,
                edited,
                reason,
                "The preview failed; nothing was changed.".into(),
            );
        }
    };
    render(
        &staff,
        StatusCode::OK,
        None,
        View {
            patient: &l.patient,
            inforce: &l.inforce,
            versions: &l.versions,
            form_rules: edited,
            preview: Some(p),
            reason,
        },
    )
}

/// `POST /console/patients/{key}/thresholds` (clinicians): saves a new version.
pub async fn save(
    State(state): State<HttpState>,
    RequireRole(user, ..): RequireRole<role::Clinician>,
    Path(key): Path<String>,
    Form(form): Form<FormFields>,
) -> Response {
    let staff = Staff(user);
    let l = match load(&state, &staff, &key).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let reason = field(&form, "reason").unwrap_or("").trim().to_owned();
    let rules = match changes(&l.inforce, &form) {
        Ok(c) => c,
        Err(m) => return refuse(&staff, &l, l.inforce.rules.clone(), reason, m),
    };
    let edited = edited_rules(&l.inforce, &rules);
    if reason.is_empty() {
        return refuse(
            &staff,
            &l,
            edited,
            reason,
            "Say why the thresholds change: the reason is required.".into(),
        );
    }
    let Some(catalog) = state.console.profiles.clone() else {
        return refuse(
            &staff,
            &l,
            edited,
            reason,
            "This server runs without threshold profiles.".into(),
        );
    };
    let Some(base) = catalog.profile(&l.inforce.base) else {
        return refuse(
            &staff,
            &l,
            edited,
            reason,
            "The base profile is not loaded.".into(),
        );
    };
    let o = match thresholds::candidate(base, rules, 0, &reason) {
        Ok((o, _)) => o,
        Err(m) => {
            return refuse(
                &staff,
                &l,
                edited,
                reason,
                format!("The rules engine refuses this change: {m}"),
            );
        }
    };
    let json = match serde_json::to_value(&o) {
        Ok(j) => j,
        Err(e) => {
            return refuse(
                &staff,
                &l,
                edited,
                reason,
                format!("The change could not be stored: {e}"),
            );
        }
    };
    let audit = crate::record::Audit {
        who: &staff.0.username,
        why: &reason,
    };
    match state
        .record
        .save_thresholds(&l.patient.key, &base.id, &json, &audit)
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "{}/thresholds",
            patient_href(l.patient.key.as_str())
        ))
        .into_response(),
        Err(RecordError::Invalid(m)) => refuse(&staff, &l, edited, reason, m),
        Err(e) => common::unavailable(Some(&staff), &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inforce(override_rules: Vec<RuleSpec>) -> RulesInForce {
        let base = rules::Profile::from_toml(
            r#"
            id = "copd"
            version = 1
            [[rule]]
            id = "spo2-low"
            kind = "below"
            measure = "spo2"
            raise = 90
            clear = 92
            severity = "medium"
            nurse = "SpO2 {value}"
            [[rule]]
            id = "pef-best-drop"
            kind = "best_drop"
            measure = "pef"
            drop = 20
            clear_drop = 10
            days = 30
            min_days = 3
            severity = "medium"
            nurse = "PEF {value}"
            "#,
        )
        .expect("profile");
        RulesInForce {
            label: "copd@1".into(),
            base: "copd".into(),
            base_rules: base.rules.clone(),
            override_rules,
            source: "none".into(),
            ruleset: base.build().expect("builds"),
            rules: base.rules,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> FormFields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_what_differs_from_the_base_is_changed() {
        let f = inforce(vec![]);
        let c = changes(
            &f,
            &form(&[
                ("spo2-low.raise", "88"),
                ("spo2-low.clear", "92"),
                ("spo2-low.enabled", "on"),
                ("pef-best-drop.drop", "20"),
                ("pef-best-drop.clear_drop", "10"),
            ]),
        )
        .expect("valid");
        // spo2-low: raise changed; pef-best-drop: unticked, so switched off.
        assert_eq!(c.len(), 2, "{c:?}");
        let spo2 = c.iter().find(|r| r.id == "spo2-low").expect("spo2");
        assert_eq!(
            (spo2.raise, spo2.clear, spo2.enabled),
            (Some(88.0), None, None)
        );
        let pef = c.iter().find(|r| r.id == "pef-best-drop").expect("pef");
        assert_eq!((pef.drop, pef.enabled), (None, Some(false)));
    }

    #[test]
    fn a_value_set_back_to_the_base_leaves_the_override() {
        let earlier = RuleSpec {
            id: "spo2-low".into(),
            raise: Some(88.0),
            ..RuleSpec::default()
        };
        let f = inforce(vec![earlier]);
        let c = changes(
            &f,
            &form(&[
                ("spo2-low.raise", "90"),
                ("spo2-low.clear", "92"),
                ("spo2-low.enabled", "on"),
                ("pef-best-drop.drop", "20"),
                ("pef-best-drop.clear_drop", "10"),
                ("pef-best-drop.enabled", "on"),
            ]),
        )
        .expect("valid");
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn an_earlier_change_not_in_the_form_is_kept() {
        let earlier = RuleSpec {
            id: "news2".into(),
            min_readings: Some(3),
            ..RuleSpec::default()
        };
        let f = inforce(vec![earlier.clone()]);
        let c = changes(
            &f,
            &form(&[
                ("spo2-low.raise", "89"),
                ("spo2-low.enabled", "on"),
                ("pef-best-drop.enabled", "on"),
            ]),
        )
        .expect("valid");
        assert!(c.contains(&earlier), "{c:?}");
        assert!(
            c.iter()
                .any(|r| r.id == "spo2-low" && r.raise == Some(89.0))
        );
    }

    #[test]
    fn a_bad_number_names_the_rule_and_field() {
        let f = inforce(vec![]);
        let e = changes(&f, &form(&[("spo2-low.raise", "eighty")])).expect_err("refused");
        assert!(
            e.contains("spo2-low") && e.contains("raise") && e.contains("eighty"),
            "{e}"
        );
        assert!(changes(&f, &form(&[("spo2-low.raise", "inf")])).is_err());
    }

    #[test]
    fn the_history_is_summarised() {
        let o = serde_json::json!({"base": "copd", "id": "console", "version": 2, "reason": "r",
            "rule": [{"id": "spo2-low", "raise": 88.0, "clear": 90.0}, {"id": "pef-best-drop", "enabled": false}]});
        assert_eq!(
            summarise(&o),
            "spo2-low raise 88, clear 90; pef-best-drop off"
        );
    }
}
