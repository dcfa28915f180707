//! `/api/v1`: the JSON API of everything the console's pages do, and `/api/openapi.json`,
//! its OpenAPI 3 document, generated from the handlers below (utoipa): a route cannot be
//! served without being in the document, and the tests walk the document to prove that an
//! unauthenticated request to any route gets nothing.
//!
//! | role | may |
//! | --- | --- |
//! | nurse | read every view, acknowledge alerts |
//! | clinician | + preview and save threshold changes |
//! | admin | + users, API tokens, registering patients |
//!
//! Without a session or token: 401 `{"error": …}` and no data; with too low a role: 403.
//! Authentication: the session cookie from `POST /api/v1/session` (then every `POST`,
//! `PUT`, `PATCH` or `DELETE` needs the `X-CSRF-Token` header that call returned), or
//! `Authorization: Bearer rpm_…` (an API token, `rpm users token`).

// Helpers return the error response itself: a few hundred bytes moved on a rejected request,
// off any hot path, for handlers that read top to bottom.
#![allow(clippy::result_large_err)]

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Router};
use notifier::{AckSource, Acknowledgement, AlertId, Timestamp};
use rules::RuleSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json_, json};
use time::OffsetDateTime;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vitals::{Kind, PatientKey};

use super::auth::{self, RequireRole, Staff, error, role};
use super::thresholds::{self, Preview};
use super::throttle::ClientIp;
use crate::http::HttpState;
use crate::record::{
    Audit, AuditFilter, AuditView, CaseloadRow, CohortFilter, InboxAlert, InboxQuery, LoginRefused,
    MeanView, NewPatient, NotificationView, Page, Patient, RecordError, Role, StaffUser,
    ThresholdVersion, ValueFilter,
};

/// The OpenAPI document's fixed parts; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(title = "rpm console API", description = "Remote patient monitoring: alerts, caseload, timelines, thresholds, gateways, audit, users."),
    modifiers(&SecuritySchemes),
    tags((name = "session"), (name = "alerts"), (name = "patients"), (name = "thresholds"),
         (name = "gateways"), (name = "audit"), (name = "users"))
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::COOKIE))),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes and its OpenAPI document.
pub fn routes() -> (Router<HttpState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(login, whoami, logout))
        .routes(routes!(list_alerts))
        .routes(routes!(get_alert))
        .routes(routes!(acknowledge))
        .routes(routes!(failed_notifications))
        .routes(routes!(caseload, create_patient))
        .routes(routes!(timeline))
        .routes(routes!(get_thresholds, save_thresholds))
        .routes(routes!(preview_thresholds))
        .routes(routes!(gateways))
        .routes(routes!(audit_log))
        .routes(routes!(list_users, create_user))
        .routes(routes!(disable_user))
        .routes(routes!(create_token))
        .routes(routes!(revoke_token))
        .split_for_parts()
}

/// Maps a record error to a response: the message for what the caller can fix, a bare
/// 503 for the database (details in the server log, without PHI).
fn record_error(e: RecordError) -> Response {
    match e {
        RecordError::NotFound { what, key } => {
            error(StatusCode::NOT_FOUND, &format!("{what} `{key}` not found"))
        }
        RecordError::Conflict(m) => error(StatusCode::CONFLICT, &m),
        RecordError::Invalid(m) => error(StatusCode::UNPROCESSABLE_ENTITY, &m),
        other => {
            tracing::error!(error = %other, "console API: record error");
            error(StatusCode::SERVICE_UNAVAILABLE, "the record is unavailable")
        }
    }
}

fn patient_key(key: &str) -> Result<PatientKey, Response> {
    PatientKey::new(key).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

async fn find_patient(state: &HttpState, key: &str) -> Result<Patient, Response> {
    let key = patient_key(key)?;
    match state.record.patient(&key).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no such patient")),
        Err(e) => Err(record_error(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Session

/// Sign-in credentials.
#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// The signed-in user.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// User name.
    pub username: String,
    /// Role.
    #[schema(value_type = String)]
    pub role: Role,
    /// The CSRF token to send as `X-CSRF-Token` (none for API tokens).
    pub csrf_token: Option<String>,
}

fn refused(r: LoginRefused) -> &'static str {
    match r {
        // The same words for all: no hint which names exist.
        LoginRefused::BadCredentials | LoginRefused::Disabled => {
            "wrong user name or password, or the account is disabled"
        }
        LoginRefused::Locked => "too many failed sign-ins: try again in 15 minutes",
    }
}

/// 429 with `Retry-After` for an address that failed too often.
fn throttled(wait: std::time::Duration) -> Response {
    tracing::warn!("console: sign-in refused, too many failures from one address");
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed sign-ins from this address: try again later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
    r
}

/// Signs in: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = Credentials,
    responses((status = 200, body = SessionView), (status = 401, description = "refused"),
              (status = 429, description = "too many failed sign-ins from this address; see Retry-After")))]
async fn login(
    State(state): State<HttpState>,
    ClientIp(ip): ClientIp,
    Json(c): Json<Credentials>,
) -> Response {
    let limit = state.console.settings.login_limit;
    if let Err(wait) = state.console.throttle.check(limit, ip, Instant::now()) {
        return throttled(wait);
    }
    let result = state
        .record
        .login(&c.username, &c.password, state.console.settings.session_max)
        .await;
    if matches!(result, Ok(Err(_))) {
        state.console.throttle.failed(limit, ip, Instant::now());
    }
    match result {
        Ok(Ok(s)) => (
            [(header::SET_COOKIE, auth::set_cookie(&state, &s.id))],
            Json(SessionView {
                username: s.user.username,
                role: s.user.role,
                csrf_token: Some(s.csrf),
            }),
        )
            .into_response(),
        Ok(Err(r)) => error(StatusCode::UNAUTHORIZED, refused(r)),
        Err(e) => record_error(e),
    }
}

/// Who is signed in, and the session's CSRF token.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = SessionView), (status = 401)))]
async fn whoami(user: Staff) -> Json<SessionView> {
    let csrf = user.csrf().map(str::to_owned);
    Json(SessionView {
        username: user.0.username,
        role: user.0.role,
        csrf_token: csrf,
    })
}

/// Signs out (ends the session; needs the CSRF token).
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    security(("session" = [])), responses((status = 204), (status = 401), (status = 403)))]
async fn logout(
    State(state): State<HttpState>,
    _user: Staff,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(id) = auth::session_cookie(&headers)
        && let Err(e) = state.record.end_session(id).await
    {
        return record_error(e);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::clear_cookie(&state))],
    )
        .into_response()
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Only a local path is a safe place to go after signing in.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

/// `POST /login` (the HTML form): 303 to `next` (a local path) with the cookie set, or back
/// to `/login?error=1`.
pub async fn login_form(
    State(state): State<HttpState>,
    ClientIp(ip): ClientIp,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = local_path(f.next.as_deref()).to_owned();
    let limit = state.console.settings.login_limit;
    if let Err(wait) = state.console.throttle.check(limit, ip, Instant::now()) {
        tracing::warn!("console: sign-in refused, too many failures from one address");
        return crate::pages::signin::throttled(Some(&next), wait);
    }
    let result = state
        .record
        .login(&f.username, &f.password, state.console.settings.session_max)
        .await;
    if matches!(result, Ok(Err(_))) {
        state.console.throttle.failed(limit, ip, Instant::now());
    }
    match result {
        Ok(Ok(s)) => (
            [(header::SET_COOKIE, auth::set_cookie(&state, &s.id))],
            Redirect::to(&next),
        )
            .into_response(),
        Ok(Err(_)) => {
            let mut to = String::from("/login?error=1");
            if next != "/" {
                to.push_str("&next=");
                for b in next.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                        to.push(b as char);
                    } else {
                        to.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            Redirect::to(&to).into_response()
        }
        Err(e) => record_error(e),
    }
}

/// `POST /logout` (the HTML form, with `csrf_token`): ends the session, 303 to `/login`.
pub async fn logout_form(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    _user: Staff,
) -> Response {
    if let Some(id) = auth::session_cookie(&headers)
        && let Err(e) = state.record.end_session(id).await
    {
        return record_error(e);
    }
    (
        [(header::SET_COOKIE, auth::clear_cookie(&state))],
        Redirect::to("/login"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Alerts

/// Inbox query string.
#[derive(Deserialize, IntoParams)]
pub struct AlertsQuery {
    /// `open` (default) or `resolved`.
    state: Option<String>,
    /// Only this patient.
    patient: Option<String>,
    /// Page size (default 100, at most 500).
    limit: Option<u32>,
    /// Resolved history: alerts with an id below this (the last page's smallest `id`).
    before: Option<i64>,
}

/// Open alerts by severity and age, or the resolved history with paging.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertsQuery),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [InboxAlert]), (status = 401), (status = 403)))]
async fn list_alerts(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Query(q): Query<AlertsQuery>,
) -> Response {
    let resolved = match q.state.as_deref() {
        None | Some("open") => false,
        Some("resolved") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "state must be open or resolved"),
    };
    let patient = match q.patient.as_deref().map(patient_key).transpose() {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state
        .record
        .alert_inbox(&InboxQuery {
            resolved,
            patient,
            limit: q.limit.unwrap_or(100),
            before: q.before,
        })
        .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => record_error(e),
    }
}

/// One alert with its explanation, notifications and acknowledgement.
#[utoipa::path(get, path = "/api/v1/alerts/{uid}", tag = "alerts",
    params(("uid" = String, Path, description = "the alert's uid")),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = InboxAlert), (status = 404), (status = 401)))]
async fn get_alert(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Path(uid): Path<String>,
) -> Response {
    match state.record.inbox_alert(&uid).await {
        Ok(Some(a)) => Json(a).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such alert"),
        Err(e) => record_error(e),
    }
}

/// An acknowledgement's note.
#[derive(Deserialize, ToSchema)]
pub struct AckBody {
    /// What the nurse did or will do (kept in the audit log).
    pub note: String,
}

/// The result of an acknowledgement.
#[derive(Serialize, ToSchema)]
pub struct AckResult {
    /// The alert.
    pub alert: String,
    /// Whether a running escalation was stopped.
    pub escalation_stopped: bool,
}

/// Acknowledges an open alert with a note: escalation stops (the same path as the signed
/// link) and the acknowledgement is audited.
#[utoipa::path(post, path = "/api/v1/alerts/{uid}/ack", tag = "alerts", request_body = AckBody,
    params(("uid" = String, Path, description = "the alert's uid")),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = AckResult), (status = 404), (status = 409), (status = 401), (status = 403)))]
async fn acknowledge(
    State(state): State<HttpState>,
    RequireRole(user, ..): RequireRole<role::Nurse>,
    Path(uid): Path<String>,
    Json(body): Json<AckBody>,
) -> Response {
    let note = body.note.trim();
    if note.is_empty() || note.len() > 2000 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the note must be 1–2000 characters",
        );
    }
    match state.record.alert_is_open(&uid).await {
        Ok(Some(true)) => {}
        Ok(Some(false)) => return error(StatusCode::CONFLICT, "the alert is already resolved"),
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such alert"),
        Err(e) => return record_error(e),
    }
    let Ok(alert) = AlertId::new(&uid) else {
        return error(StatusCode::NOT_FOUND, "no such alert");
    };
    let by = match user.via {
        crate::record::AuthVia::Session { .. } => AckSource::Console {
            user: user.username.clone(),
        },
        crate::record::AuthVia::Token { .. } => AckSource::Api {
            user: user.username.clone(),
        },
    };
    let ack = Acknowledgement {
        alert,
        by,
        at: Timestamp::now(),
    };
    match crate::http::ack::acknowledge_and_audit(&state, ack, note).await {
        Ok(stopped) => Json(AckResult {
            alert: uid,
            escalation_stopped: stopped,
        })
        .into_response(),
        Err((status, message)) => error(status, message),
    }
}

/// Notifications the notifier gave up on, newest first: nobody was told.
#[utoipa::path(get, path = "/api/v1/notifications/failed", tag = "alerts",
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [NotificationView]), (status = 401)))]
async fn failed_notifications(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
) -> Response {
    match state.record.failed_notifications(200).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => record_error(e),
    }
}

// ---------------------------------------------------------------------------------------
// Patients

/// Cohort filters.
#[derive(Deserialize, IntoParams)]
pub struct CaseloadQuery {
    /// Condition (`copd`).
    condition: Option<String>,
    /// With `below` or `above`: the measurement kind (`spo2`).
    kind: Option<String>,
    /// A value of `kind` under this …
    below: Option<f64>,
    /// … or over this …
    above: Option<f64>,
    /// … within this many hours (default 48).
    within_hours: Option<u32>,
    /// No reading at all for this many days.
    silent_days: Option<u32>,
    /// Only patients with open alerts.
    open_alerts_only: Option<bool>,
}

/// The caseload: per patient open alerts, last value per kind, days with readings in the
/// last 30, silent gateway; filtered as a cohort.
#[utoipa::path(get, path = "/api/v1/patients", tag = "patients", params(CaseloadQuery),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [CaseloadRow]), (status = 400), (status = 401)))]
async fn caseload(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Query(q): Query<CaseloadQuery>,
) -> Response {
    let value = match (&q.kind, q.below, q.above) {
        (None, None, None) => None,
        (Some(k), below, above) if below.is_some() != above.is_some() => {
            let Ok(kind) = k.parse::<Kind>() else {
                return error(StatusCode::BAD_REQUEST, &format!("unknown kind `{k}`"));
            };
            Some(ValueFilter {
                kind,
                above: above.is_some(),
                value: below.or(above).unwrap_or_default(),
                within_hours: q.within_hours.unwrap_or(48),
            })
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "a value filter needs kind and exactly one of below or above",
            );
        }
    };
    let filter = CohortFilter {
        condition: q.condition,
        value,
        silent_days: q.silent_days,
        open_alerts_only: q.open_alerts_only.unwrap_or(false),
    };
    match state.record.caseload(&filter).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => record_error(e),
    }
}

/// A patient to register.
#[derive(Deserialize, ToSchema)]
pub struct NewPatientBody {
    /// Pseudonymous key.
    pub key: String,
    /// Display name (PHI).
    pub name: Option<String>,
    /// Condition.
    pub condition: String,
    /// Profile id.
    pub profile_id: Option<String>,
    /// Care team.
    pub care_team: Option<String>,
    /// Why (audit).
    pub reason: String,
}

/// Registers a patient (admins).
#[utoipa::path(post, path = "/api/v1/patients", tag = "patients", request_body = NewPatientBody,
    security(("session" = []), ("token" = [])),
    responses((status = 201), (status = 409), (status = 401), (status = 403)))]
async fn create_patient(
    State(state): State<HttpState>,
    RequireRole(user, ..): RequireRole<role::Admin>,
    Json(b): Json<NewPatientBody>,
) -> Response {
    let key = match patient_key(&b.key) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let new = NewPatient {
        key,
        display_name: b.name,
        condition: b.condition,
        profile_id: b.profile_id,
        care_team: b.care_team,
    };
    let audit = Audit {
        who: &user.username,
        why: &b.reason,
    };
    match state.record.create_patient(&new, &audit).await {
        Ok(p) => (StatusCode::CREATED, Json(json!({ "key": p.key.as_str() }))).into_response(),
        Err(e) => record_error(e),
    }
}

/// Time range of a timeline.
#[derive(Deserialize, IntoParams)]
pub struct RangeQuery {
    /// Start, RFC 3339 (default: 7 days before `to`).
    from: Option<String>,
    /// End, RFC 3339 (default: now).
    to: Option<String>,
}

/// A reading on the timeline.
#[derive(Serialize, ToSchema)]
pub struct ReadingView {
    /// Id.
    pub id: String,
    /// Measured.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Type (`blood_pressure`, …).
    pub reading_type: String,
    /// Device-quality flags (`motion`, `cuff_loose`, …).
    pub flags: Vec<String>,
    /// Values: `{kind, value, unit}` or `{kind, absent, unit}`.
    #[schema(value_type = Vec<Object>)]
    pub values: Json_,
}

/// A threshold line to draw.
#[derive(Serialize, ToSchema)]
pub struct ThresholdLine {
    /// Rule id.
    pub rule: String,
    /// `above` or `below`.
    pub direction: String,
    /// Measurement kind.
    pub measure: String,
    /// Raise level.
    pub raise: Option<f64>,
    /// Clear level.
    pub clear: Option<f64>,
}

/// A NEWS2 score from an alert.
#[derive(Serialize, ToSchema)]
pub struct News2Point {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Score.
    pub score: i64,
}

/// A patient's timeline.
#[derive(Serialize, ToSchema)]
pub struct Timeline {
    /// The patient.
    pub patient: String,
    /// Display name (PHI).
    pub name: Option<String>,
    /// Condition.
    pub condition: String,
    /// Range start.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// Range end.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Readings, oldest first (at most 10 000).
    pub readings: Vec<ReadingView>,
    /// Whether the range had more readings than returned.
    pub truncated: bool,
    /// Alerts overlapping the range.
    pub alerts: Vec<InboxAlert>,
    /// NEWS2 scores the rules computed (from NEWS2 alerts).
    pub news2: Vec<News2Point>,
    /// The ruleset in force.
    pub profile: Option<String>,
    /// Above/below thresholds in force.
    pub thresholds: Vec<ThresholdLine>,
    /// Mean of each kind over the 14 days before `to` (context; the baselines the rules
    /// compare readings with are in `references`).
    pub baseline: Vec<MeanView>,
    /// The baseline or personal best each baseline rule in force compared the range's
    /// readings with, and the level that raises, computed as the engine computes them.
    pub references: Vec<ReferenceView>,
    /// Baseline rules whose window holds too many readings to compute here.
    pub references_not_computed: Vec<String>,
}

/// A baseline or personal-best rule's reference over a timeline's range.
#[derive(Serialize, ToSchema)]
pub struct ReferenceView {
    /// The rule.
    pub rule: String,
    /// The measurement kind.
    pub measure: String,
    /// A personal best (`best_drop`) rather than a baseline (`baseline_drop`).
    pub personal_best: bool,
    /// One point per reading the rule could judge, oldest first.
    pub points: Vec<ReferencePointView>,
}

/// What a baseline rule compared one reading with.
#[derive(Serialize, ToSchema)]
pub struct ReferencePointView {
    /// The reading's measurement time.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The baseline or best.
    pub reference: f64,
    /// The value at or beyond which the rule raises.
    pub raise_at: f64,
    /// Completed days the reference was made from.
    pub days: u16,
}

fn parse_time(s: Option<&str>, default: OffsetDateTime) -> Result<OffsetDateTime, Response> {
    match s {
        None => Ok(default),
        Some(s) => OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad time `{s}`: {e}"))),
    }
}

/// The merged profile (base + override) in force, for its rule specs.
fn merged(f: &thresholds::InForce<'_>) -> Option<rules::Profile> {
    match (&f.saved, f.file_override) {
        (Some(s), _) => {
            let o: rules::ProfileOverride = serde_json::from_value(s.override_json.clone()).ok()?;
            f.base.with_override(&o).ok()
        }
        (None, Some(o)) => f.base.with_override(o).ok(),
        (None, None) => Some(f.base.clone()),
    }
}

fn lines(p: &rules::Profile) -> Vec<ThresholdLine> {
    p.rules
        .iter()
        .filter(|r| r.enabled != Some(false))
        .filter_map(|r| {
            let direction = match r.kind? {
                rules::RuleKind::Above => "above",
                rules::RuleKind::Below => "below",
                _ => return None,
            };
            Some(ThresholdLine {
                rule: r.id.clone(),
                direction: direction.into(),
                measure: r.measure.clone()?,
                raise: r.raise,
                clear: r.clear,
            })
        })
        .collect()
}

/// Readings (with device-quality flags), alerts, NEWS2 scores, thresholds and baseline of a
/// patient over a range.
#[utoipa::path(get, path = "/api/v1/patients/{key}/timeline", tag = "patients",
    params(("key" = String, Path, description = "patient key"), RangeQuery),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = Timeline), (status = 404), (status = 401)))]
async fn timeline(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Path(key): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let patient = match find_patient(&state, &key).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let to = match parse_time(q.to.as_deref(), OffsetDateTime::now_utc()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let from = match parse_time(q.from.as_deref(), to - time::Duration::days(7)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if from > to {
        return error(StatusCode::BAD_REQUEST, "from is after to");
    }
    match timeline_of(&state, &patient, from, to).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => record_error(e),
    }
}

const TIMELINE_MAX: usize = 10_000;

async fn timeline_of(
    state: &HttpState,
    patient: &Patient,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Timeline, RecordError> {
    let record = &state.record;
    let mut readings = Vec::new();
    let mut page = Page::first(1000);
    let mut truncated = false;
    loop {
        let got = record
            .readings_for_patient(&patient.key, from, to, page)
            .await?;
        readings.extend(got.readings.into_iter().map(|r| ReadingView {
            id: r.id.to_string(),
            at: r.measured_at,
            reading_type: r.reading_type.as_str().to_owned(),
            flags: r.flags.iter().map(|f| f.as_str().to_owned()).collect(),
            values: serde_json::to_value(&r.values).unwrap_or_default(),
        }));
        match got.next {
            Some(next) if readings.len() < TIMELINE_MAX => page = next,
            Some(_) => {
                truncated = true;
                break;
            }
            None => break,
        }
    }
    let alerts = record.alerts_in_range(&patient.key, from, to).await?;
    let news2 = alerts
        .iter()
        .filter(|a| a.explanation["context"]["type"] == "news2")
        .filter_map(|a| {
            Some(News2Point {
                at: a.updated_at,
                score: a.explanation["context"]["score"].as_i64()?,
            })
        })
        .collect();
    let baseline = record
        .value_means(&patient.key, to - time::Duration::days(14), to)
        .await?;
    let mut references = Vec::new();
    let mut references_not_computed = Vec::new();
    let (profile, thresholds) = match &state.console.profiles {
        Some(catalog) => {
            let saved = record.current_thresholds(&patient.key).await?;
            match thresholds::in_force(catalog, patient, saved) {
                Ok(f) => {
                    let (refs, skipped) = crate::pages::timeline::references(
                        record,
                        &patient.key,
                        &f.ruleset,
                        from,
                        to,
                    )
                    .await?;
                    references_not_computed = skipped;
                    references = refs
                        .into_iter()
                        .map(|r| ReferenceView {
                            rule: r.rule,
                            measure: r.series.measure.as_str().to_owned(),
                            personal_best: r.series.personal_best,
                            points: r
                                .series
                                .points
                                .iter()
                                .map(|p| ReferencePointView {
                                    at: p.at.to_datetime(),
                                    reference: p.reference,
                                    raise_at: p.raise_at,
                                    days: p.days,
                                })
                                .filter(|p| p.at >= from)
                                .collect(),
                        })
                        .collect();
                    (
                        Some(f.ruleset.label()),
                        merged(&f).map(|p| lines(&p)).unwrap_or_default(),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "thresholds in force do not build");
                    (None, Vec::new())
                }
            }
        }
        None => (None, Vec::new()),
    };
    Ok(Timeline {
        patient: patient.key.to_string(),
        name: patient.display_name.clone(),
        condition: patient.condition.clone(),
        from,
        to,
        readings,
        truncated,
        alerts,
        news2,
        profile,
        thresholds,
        baseline,
        references,
        references_not_computed,
    })
}

// ---------------------------------------------------------------------------------------
// Thresholds

/// A patient's thresholds.
#[derive(Serialize, ToSchema)]
pub struct ThresholdsView {
    /// The ruleset in force (`copd@1+console@2`).
    pub profile: String,
    /// The base profile id.
    pub base_profile: String,
    /// The base profile's rules.
    #[schema(value_type = Vec<Object>)]
    pub base_rules: Vec<RuleSpec>,
    /// The override in force (a console version's, or a file's), if any.
    #[schema(value_type = Object)]
    pub override_in_force: Option<Json_>,
    /// The merged rules in force.
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<RuleSpec>,
    /// Every console version, newest first.
    pub versions: Vec<ThresholdVersion>,
}

fn no_rules() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this server runs without threshold profiles",
    )
}

/// The patient's active profile, overrides and version history.
#[utoipa::path(get, path = "/api/v1/patients/{key}/thresholds", tag = "thresholds",
    params(("key" = String, Path, description = "patient key")),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = ThresholdsView), (status = 404), (status = 401)))]
async fn get_thresholds(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Path(key): Path<String>,
) -> Response {
    let Some(catalog) = state.console.profiles.clone() else {
        return no_rules();
    };
    let patient = match find_patient(&state, &key).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let versions = match state.record.threshold_versions(&patient.key).await {
        Ok(v) => v,
        Err(e) => return record_error(e),
    };
    let f = match thresholds::in_force(&catalog, &patient, versions.first().cloned()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let override_in_force = match (&f.saved, f.file_override) {
        (Some(s), _) => Some(s.override_json.clone()),
        (None, Some(o)) => serde_json::to_value(o).ok(),
        (None, None) => None,
    };
    Json(ThresholdsView {
        profile: f.ruleset.label(),
        base_profile: f.base.id.clone(),
        base_rules: f.base.rules.clone(),
        override_in_force,
        rules: merged(&f).map(|p| p.rules).unwrap_or_default(),
        versions,
    })
    .into_response()
}

/// A threshold change: rule changes on the base profile (fields as in a profile override
/// file: `{"id": "spo2-low", "raise": 88, "clear": 90}`), and why.
#[derive(Deserialize, ToSchema)]
pub struct ThresholdChange {
    /// The rules to change or add, by id; the whole override in force is replaced.
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<RuleSpec>,
    /// Why (kept with the version and in the audit log; required to save).
    #[serde(default)]
    pub reason: String,
}

/// The saved version.
#[derive(Serialize, ToSchema)]
pub struct Saved {
    /// Version number.
    pub version: i64,
    /// The ruleset now in force.
    pub profile: String,
}

struct Prepared {
    patient: Patient,
    current: rules::Ruleset,
    base_id: String,
}

async fn prepare(
    state: &HttpState,
    key: &str,
) -> Result<(Prepared, std::sync::Arc<thresholds::ProfileCatalog>), Response> {
    let Some(catalog) = state.console.profiles.clone() else {
        return Err(no_rules());
    };
    let patient = find_patient(state, key).await?;
    let saved = state
        .record
        .current_thresholds(&patient.key)
        .await
        .map_err(record_error)?;
    let f = thresholds::in_force(&catalog, &patient, saved)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
    let p = Prepared {
        current: f.ruleset,
        base_id: f.base.id.clone(),
        patient,
    };
    Ok((p, catalog))
}

/// Backtests the change over the patient's last 30 days: "N alerts instead of M".
#[utoipa::path(post, path = "/api/v1/patients/{key}/thresholds/preview", tag = "thresholds",
    request_body = ThresholdChange,
    params(("key" = String, Path, description = "patient key")),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = Preview), (status = 422, description = "the change is refused, with the reason"),
              (status = 401), (status = 403)))]
async fn preview_thresholds(
    State(state): State<HttpState>,
    _user: RequireRole<role::Clinician>,
    Path(key): Path<String>,
    Json(change): Json<ThresholdChange>,
) -> Response {
    let (p, catalog) = match prepare(&state, &key).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(base) = catalog.profile(&p.base_id) else {
        return no_rules();
    };
    let (_, candidate) = match thresholds::candidate(base, change.rules, 0, &change.reason) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let to = OffsetDateTime::now_utc();
    let from = to - time::Duration::days(30);
    // Baselines warm up on the readings before the window (as far back as rules look).
    let warm = from - time::Duration::days(i64::from(rules::MAX_DAYS));
    let readings = match state
        .record
        .readings_to_replay(&p.patient.key, warm, to)
        .await
    {
        Ok(r) => r,
        Err(e) => return record_error(e),
    };
    let current = p.current;
    let preview = tokio::task::spawn_blocking(move || {
        thresholds::preview(&current, &candidate, &readings, from, to)
    })
    .await;
    match preview {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "backtest task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the preview failed")
        }
    }
}

/// Saves the change as a new version (who, when, why), audited; the consumer judges the
/// patient's next reading by it.
#[utoipa::path(post, path = "/api/v1/patients/{key}/thresholds", tag = "thresholds",
    request_body = ThresholdChange,
    params(("key" = String, Path, description = "patient key")),
    security(("session" = []), ("token" = [])),
    responses((status = 201, body = Saved), (status = 422, description = "refused, with the reason"),
              (status = 401), (status = 403)))]
async fn save_thresholds(
    State(state): State<HttpState>,
    RequireRole(user, ..): RequireRole<role::Clinician>,
    Path(key): Path<String>,
    Json(change): Json<ThresholdChange>,
) -> Response {
    let (p, catalog) = match prepare(&state, &key).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(base) = catalog.profile(&p.base_id) else {
        return no_rules();
    };
    let reason = change.reason.trim().to_owned();
    if reason.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "say why the thresholds change (reason)",
        );
    }
    let (o, _) = match thresholds::candidate(base, change.rules, 0, &reason) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let json = match serde_json::to_value(&o) {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let audit = Audit {
        who: &user.username,
        why: &reason,
    };
    match state
        .record
        .save_thresholds(&p.patient.key, &base.id, &json, &audit)
        .await
    {
        Ok(version) => {
            let label = thresholds::candidate(base, o.rules, version, &reason)
                .map(|(_, s)| s.label())
                .unwrap_or_default();
            (
                StatusCode::CREATED,
                Json(Saved {
                    version,
                    profile: label,
                }),
            )
                .into_response()
        }
        Err(e) => record_error(e),
    }
}

// ---------------------------------------------------------------------------------------
// Gateways

/// A gateway with its devices and bindings.
#[derive(Serialize, ToSchema)]
pub struct GatewayView {
    /// Id.
    pub id: String,
    /// `online`, `offline` or `unknown` (no status yet).
    pub state: String,
    /// When it was last heard from (readings stored, or a live `online` status).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    /// Readings waiting in its queue.
    pub queue_depth: Option<u64>,
    /// Free disk under the floor.
    pub disk_low: Option<bool>,
    /// Per device: last contact, battery, clock offset (from the status message).
    #[schema(value_type = Vec<Object>)]
    pub devices: Json_,
    /// The allowlist with patient bindings in force.
    #[schema(value_type = Vec<Object>)]
    pub bindings: Json_,
}

/// Gateways: online/offline, last seen, queue depth, battery, clock offset, bindings.
#[utoipa::path(get, path = "/api/v1/gateways", tag = "gateways",
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [GatewayView]), (status = 401)))]
async fn gateways(State(state): State<HttpState>, _user: RequireRole<role::Nurse>) -> Response {
    let now = OffsetDateTime::now_utc();
    let gws = match state.record.list_gateways().await {
        Ok(g) => g,
        Err(e) => return record_error(e),
    };
    let mut out = Vec::with_capacity(gws.len());
    for g in gws {
        let bindings = match state.record.gateway_device_bindings(&g.id, now).await {
            Ok(b) => b,
            Err(e) => return record_error(e),
        };
        let st = g.status.as_ref();
        out.push(GatewayView {
            id: g.id.to_string(),
            state: match st.map(|s| s.state) {
                Some(vitals::GatewayState::Online) => "online",
                Some(vitals::GatewayState::Offline) => "offline",
                None => "unknown",
            }
            .into(),
            last_seen_at: g.last_seen_at,
            queue_depth: st.and_then(|s| s.queue.as_ref()).map(|q| q.depth),
            disk_low: st.and_then(|s| s.queue.as_ref()).map(|q| q.disk_low),
            devices: st
                .map(|s| serde_json::to_value(&s.devices).unwrap_or_default())
                .unwrap_or_else(|| json!([])),
            bindings: serde_json::to_value(&bindings).unwrap_or_default(),
        });
    }
    Json(out).into_response()
}

// ---------------------------------------------------------------------------------------
// Audit

/// Audit filters.
#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Exactly this actor.
    actor: Option<String>,
    /// Actions starting with this (`auth.`, `thresholds.`, `alert.acknowledge`).
    action: Option<String>,
    /// Exactly this target (`patient:pk-1`, `alert:…`, `user:…`).
    target: Option<String>,
    /// From (RFC 3339).
    since: Option<String>,
    /// Rows with an id below this (paging).
    before: Option<i64>,
    /// Page size (default 100, at most 500).
    limit: Option<u32>,
}

/// The audit log, newest first: threshold changes, acknowledgements, logins, registry.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [AuditView]), (status = 401)))]
async fn audit_log(
    State(state): State<HttpState>,
    _user: RequireRole<role::Nurse>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let since = match q.since.as_deref() {
        Some(s) => match parse_time(Some(s), OffsetDateTime::UNIX_EPOCH) {
            Ok(t) => Some(t),
            Err(r) => return r,
        },
        None => None,
    };
    let f = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since,
        before: q.before,
        limit: q.limit.unwrap_or(100),
    };
    match state.record.audit_entries(&f).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => record_error(e),
    }
}

// ---------------------------------------------------------------------------------------
// Users (admins)

/// Every user.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    security(("session" = []), ("token" = [])),
    responses((status = 200, body = [Object]), (status = 401), (status = 403)))]
async fn list_users(State(state): State<HttpState>, _user: RequireRole<role::Admin>) -> Response {
    match state.record.list_users().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => record_error(e),
    }
}

/// A user to create.
#[derive(Deserialize, ToSchema)]
pub struct NewUser {
    /// User name (`a-z 0-9 . _ -`).
    pub username: String,
    /// `nurse`, `clinician` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Initial password (at least 10 characters).
    pub password: String,
}

/// Creates a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    security(("session" = []), ("token" = [])),
    responses((status = 201, body = Object), (status = 409), (status = 422), (status = 401), (status = 403)))]
async fn create_user(
    State(state): State<HttpState>,
    RequireRole(admin, ..): RequireRole<role::Admin>,
    Json(u): Json<NewUser>,
) -> Response {
    let audit = Audit {
        who: &admin.username,
        why: "created in the console",
    };
    match state
        .record
        .create_user(&u.username, u.role, &u.password, &audit)
        .await
    {
        Ok(user) => (StatusCode::CREATED, Json::<StaffUser>(user)).into_response(),
        Err(e) => record_error(e),
    }
}

/// Disables a user: their sessions end and tokens stop working.
#[utoipa::path(post, path = "/api/v1/users/{name}/disable", tag = "users",
    params(("name" = String, Path, description = "user name")),
    security(("session" = []), ("token" = [])),
    responses((status = 204), (status = 404), (status = 401), (status = 403)))]
async fn disable_user(
    State(state): State<HttpState>,
    RequireRole(admin, ..): RequireRole<role::Admin>,
    Path(name): Path<String>,
) -> Response {
    let audit = Audit {
        who: &admin.username,
        why: "disabled in the console",
    };
    match state.record.disable_user(&name, &audit).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => record_error(e),
    }
}

/// A token to issue.
#[derive(Deserialize, ToSchema)]
pub struct NewToken {
    /// Its name (unique per user).
    pub label: String,
    /// Role (default: the user's; never above it).
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
}

/// Issues an API token for a user; the token is in this answer only.
#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", tag = "users", request_body = NewToken,
    params(("name" = String, Path, description = "user name")),
    security(("session" = []), ("token" = [])),
    responses((status = 201, body = Object), (status = 409), (status = 422), (status = 401), (status = 403)))]
async fn create_token(
    State(state): State<HttpState>,
    RequireRole(admin, ..): RequireRole<role::Admin>,
    Path(name): Path<String>,
    Json(t): Json<NewToken>,
) -> Response {
    let audit = Audit {
        who: &admin.username,
        why: "issued in the console",
    };
    match state
        .record
        .create_token(&name, &t.label, t.role, &audit)
        .await
    {
        Ok((token, meta)) => (
            StatusCode::CREATED,
            Json(json!({ "token": token, "label": meta.label, "role": meta.role })),
        )
            .into_response(),
        Err(e) => record_error(e),
    }
}

/// Revokes a user's token.
#[utoipa::path(delete, path = "/api/v1/users/{name}/tokens/{label}", tag = "users",
    params(("name" = String, Path, description = "user name"), ("label" = String, Path, description = "token label")),
    security(("session" = []), ("token" = [])),
    responses((status = 204), (status = 404), (status = 401), (status = 403)))]
async fn revoke_token(
    State(state): State<HttpState>,
    RequireRole(admin, ..): RequireRole<role::Admin>,
    Path((name, label)): Path<(String, String)>,
) -> Response {
    let audit = Audit {
        who: &admin.username,
        why: "revoked in the console",
    };
    match state.record.revoke_token(&name, &label, &audit).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => record_error(e),
    }
}
