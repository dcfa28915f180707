//! FHIR R4 read views over the patient record, shaped after the HL7 Personal Health Device
//! Implementation Guide: `Patient`, `Device` and `Observation` reads, the Observation search
//! (a `searchset` Bundle with a `next` link) and a minimal `CapabilityStatement`.
//!
//! Routes, relative to the server root:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /fhir/metadata` | `CapabilityStatement` |
//! | `GET /fhir/Patient/{id}` | `Patient` (pseudonymous key only) |
//! | `GET /fhir/Device/{id}` | `Device` |
//! | `GET /fhir/Observation/{id}` | `Observation` |
//! | `GET /fhir/Observation?patient=…&code=…&date=…&_count=…` | `Bundle` (`searchset`) |
//!
//! Errors are `OperationOutcome`s: 404 for an unknown resource or route, 400 for a bad
//! search naming the parameter, 503 when the database is unreachable, 500 otherwise (the
//! database's error text is logged without patient data and not sent).
//!
//! How readings become resources, and the identifier systems, are in [`map`]; the search
//! parameters and cursor in [`search`]; why decimals keep their digits in [`model`].
//!
//! There is no authentication yet (the console issue adds it): nothing served here names a
//! person. Patient resources carry the pseudonymous key only.

pub mod map;
pub mod model;
pub mod search;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use self::map::Part;
use self::model::{Bundle, BundleEntry, BundleLink, EntrySearch, Issue, OperationOutcome};
use self::search::{ObservationSearch, Position, ReadingKey};
use super::HttpState;
use crate::record::{Page, RecordError};

/// `application/fhir+json`.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Most readings one search request reads from the record before it answers with what it
/// has and a `next` link: a rare code over a long, dense history (1 Hz oximetry) costs
/// bounded work per request.
const MAX_SCAN: usize = 5_000;

/// The `/fhir` routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route("/fhir/Device/{id}", get(read_device))
        .route("/fhir/Observation/{id}", get(read_observation))
        .route("/fhir/Observation", get(search_observations))
}

/// A FHIR JSON response.
struct Fhir<T>(StatusCode, T);

impl<T: Serialize> IntoResponse for Fhir<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.1) {
            Ok(body) => (
                self.0,
                [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "FHIR resource failed to serialize");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// What can go wrong answering a FHIR request; each becomes an `OperationOutcome`.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// No such resource.
    #[error("{kind}/{id} is not known")]
    NotFound {
        /// Resource type.
        kind: &'static str,
        /// The id asked for (at most 64 characters of it).
        id: String,
    },
    /// No such route or resource type.
    #[error("{0}")]
    NoRoute(String),
    /// A search parameter is wrong.
    #[error("search parameter `{}`: {}", .0.param, .0.why)]
    BadSearch(search::BadParam),
    /// The record failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl FhirError {
    fn not_found(kind: &'static str, id: &str) -> Self {
        FhirError::NotFound {
            kind,
            id: id.chars().take(64).collect(),
        }
    }
}

fn outcome(code: &'static str, diagnostics: String, expression: Vec<String>) -> OperationOutcome {
    OperationOutcome {
        resource_type: "OperationOutcome",
        issue: vec![Issue {
            severity: "error",
            code,
            diagnostics,
            expression,
        }],
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            FhirError::NotFound { .. } | FhirError::NoRoute(_) => (
                StatusCode::NOT_FOUND,
                outcome("not-found", self.to_string(), Vec::new()),
            ),
            FhirError::BadSearch(b) => (
                StatusCode::BAD_REQUEST,
                outcome("invalid", self.to_string(), vec![b.param.clone()]),
            ),
            FhirError::Record(e) => {
                // Record errors name tables and constraints, never patient data.
                tracing::error!(error = %e, "FHIR request failed in the record");
                let status = if e.is_retryable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                (
                    status,
                    outcome(
                        "exception",
                        "the patient record could not answer; try again later".into(),
                        Vec::new(),
                    ),
                )
            }
        };
        Fhir(status, body).into_response()
    }
}

/// The answer to an unknown path under `/fhir`.
pub async fn no_route(uri: axum::http::Uri) -> Response {
    let path: String = uri.path().chars().take(100).collect();
    FhirError::NoRoute(format!("no FHIR interaction at {path}")).into_response()
}

/// The absolute base URL of the FHIR endpoint: the configured public URL, else what the
/// client called (`Host`), else a relative `/fhir`.
fn base_url(state: &HttpState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return format!("{}/fhir", url.trim_end_matches('/'));
    }
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if host.bytes().all(|b| b.is_ascii_graphic()) => format!("http://{host}/fhir"),
        _ => "/fhir".into(),
    }
}

async fn metadata(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let read = json!([{ "code": "read" }]);
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": map::date_time(OffsetDateTime::now_utc()),
        "kind": "instance",
        "software": { "name": "rpm", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "RPM patient record: read-only FHIR views of home measurements",
            "url": base_url(&state, &headers),
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "No authentication yet; Patient resources carry pseudonymous keys only.",
            "resource": [
                { "type": "Patient", "interaction": read },
                { "type": "Device", "interaction": read },
                {
                    "type": "Observation",
                    "interaction": [{ "code": "read" }, { "code": "search-type" }],
                    "searchParam": [
                        { "name": "patient", "type": "reference",
                          "documentation": "Required (or subject)." },
                        { "name": "subject", "type": "reference" },
                        { "name": "code", "type": "token" },
                        { "name": "date", "type": "date",
                          "documentation": "Prefixes eq, ge, gt, le, lt." },
                        { "name": "_count", "type": "number",
                          "documentation": "1 to 500, default 50." }
                    ]
                }
            ]
        }]
    });
    Fhir(StatusCode::OK, body).into_response()
}

async fn read_patient(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let key = map::parse_patient_id(&id).ok_or_else(|| FhirError::not_found("Patient", &id))?;
    let patient = state
        .record
        .patient(&key)
        .await?
        .ok_or_else(|| FhirError::not_found("Patient", &id))?;
    Ok(Fhir(StatusCode::OK, map::patient(&patient)).into_response())
}

async fn read_device(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let device_id = map::parse_device_id(&id).ok_or_else(|| FhirError::not_found("Device", &id))?;
    let device = state
        .record
        .device(&device_id)
        .await?
        .ok_or_else(|| FhirError::not_found("Device", &id))?;
    Ok(Fhir(StatusCode::OK, map::device(&device)).into_response())
}

async fn read_observation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let (reading_id, part) =
        map::parse_observation_id(&id).ok_or_else(|| FhirError::not_found("Observation", &id))?;
    let reading = state
        .record
        .reading(&reading_id)
        .await?
        .ok_or_else(|| FhirError::not_found("Observation", &id))?;
    let observation =
        map::observation(&reading, part).ok_or_else(|| FhirError::not_found("Observation", &id))?;
    Ok(Fhir(StatusCode::OK, observation).into_response())
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

async fn search_observations(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, FhirError> {
    let Query(pairs) = query.map_err(|e| {
        FhirError::BadSearch(search::BadParam {
            param: "?".into(),
            why: format!("the query string could not be read: {}", e.body_text()),
        })
    })?;
    let search = ObservationSearch::parse(&pairs).map_err(FhirError::BadSearch)?;
    let base = base_url(&state, &headers);

    // Resume at the cursor's instant; readings there up to the cursor are skipped below.
    let from = match &search.after {
        Some(p) => search.from.max(
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(p.measured_us) * 1_000).map_err(
                |_| {
                    FhirError::BadSearch(search::BadParam {
                        param: "_cursor".into(),
                        why: "not a cursor from a `next` link of this server".into(),
                    })
                },
            )?,
        ),
        None => search.from,
    };
    let count = search.count as usize;
    let mut found = Vec::with_capacity(count);
    let mut next: Option<Position> = None;
    let mut scanned = 0usize;
    // Unfiltered, every reading gives at least one Observation: `count + 1` readings are
    // enough to fill the page and know whether there is more. Filtered, read in bulk.
    let limit = if search.codes.is_empty() {
        search.count + 1
    } else {
        1_000
    };
    let mut page = Some(Page::first(limit));
    'pages: while let Some(p) = page.take() {
        let batch = state
            .record
            .readings_for_patient(&search.patient, from, search.to, p)
            .await?;
        for reading in &batch.readings {
            scanned += 1;
            let mut last = None;
            for part in map::parts(reading) {
                let pos = Position {
                    measured_us: micros(reading.measured_at),
                    reading: ReadingKey(reading.id),
                    part: part.index(),
                };
                if search.after.is_some_and(|after| pos <= after) {
                    continue;
                }
                last = Some(pos);
                if !search.wants(part, reading.reading_type) {
                    continue;
                }
                if found.len() == count {
                    // One more match than fits: the page ends at the last one taken.
                    next = found.last().map(|(p, _): &(Position, _)| *p);
                    break 'pages;
                }
                if let Some(obs) = map::observation(reading, part) {
                    found.push((pos, obs));
                }
            }
            if scanned >= MAX_SCAN {
                // Enough work for one request: hand back a cursor past what was read.
                next = last
                    .map(|p| Position {
                        part: Part::ALL.len() as u8,
                        ..p
                    })
                    .or(next);
                if next.is_some() {
                    break 'pages;
                }
            }
        }
        page = batch.next;
    }

    let mut link = vec![BundleLink {
        relation: "self",
        url: format!("{base}/Observation?{}", search.query(search.after.as_ref())),
    }];
    if let Some(after) = &next {
        link.push(BundleLink {
            relation: "next",
            url: format!("{base}/Observation?{}", search.query(Some(after))),
        });
    }
    let bundle = Bundle {
        resource_type: "Bundle",
        kind: "searchset",
        timestamp: map::date_time(OffsetDateTime::now_utc()),
        link,
        entry: found
            .into_iter()
            .map(|(_, obs)| BundleEntry {
                full_url: format!("{base}/Observation/{}", obs.id),
                resource: obs,
                search: EntrySearch { mode: "match" },
            })
            .collect(),
    };
    Ok(Fhir(StatusCode::OK, bundle).into_response())
}
