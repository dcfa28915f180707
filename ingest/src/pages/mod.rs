//! The console's pages: server-rendered HTML for nurses and clinicians, built on the console's
//! data layer and its session/role guards (`crate::console`). One stylesheet, no JavaScript:
//! every action is a plain form (GET for filters and ranges, POST with the session's CSRF
//! token for acknowledgements, sign-out and threshold changes), so the console works on a
//! locked-down ward PC, a tablet and a phone alike, and offline from the internet (the
//! stylesheet is compiled into the binary).
//!
//! | route | page | who |
//! | --- | --- | --- |
//! | `GET /` | redirect to `/console` | anyone |
//! | `GET /console` | redirect to the alert inbox | anyone |
//! | `GET /console/assets/console.css` | the stylesheet | anyone |
//! | `GET /login` | the sign-in form (it posts to `POST /login`; signing out is `POST /logout`) | anyone |
//! | `GET /console/alerts` | the alert inbox (`?view=resolved`: the history) ([`alerts`]) | staff |
//! | `POST /console/alerts/{uid}/acknowledge` | acknowledge with a note | staff |
//! | `GET /console/patients` | the caseload with cohort filters ([`patients`]) | staff |
//! | `GET /console/patients/{key}` | the timeline: charts and readings ([`timeline`]) | staff |
//! | `GET /console/patients/{key}/thresholds` | profile in force, history; the edit form for clinicians ([`thresholds`]) | staff |
//! | `POST /console/patients/{key}/thresholds/preview` | backtest a change over 30 days | clinicians |
//! | `POST /console/patients/{key}/thresholds` | save a change with its reason | clinicians |
//! | `GET /console/gateways` | gateways and devices ([`gateways`]) | staff |
//! | `GET /console/audit` | the audit log ([`audit`]) | staff |
//!
//! "Staff" is any signed-in user; without a session a page redirects to `/login?next=…`.
//! Patient names appear only on these pages, behind the sign-in. Charts are SVG drawn on the
//! server by [`chart::render`], a pure function.

pub mod alerts;
pub mod audit;
pub mod chart;
pub mod common;
pub mod gateways;
pub mod layout;
pub mod patients;
pub mod signin;
pub mod thresholds;
pub mod timeline;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::http::HttpState;

/// The stylesheet, compiled in.
pub const CSS: &str = include_str!("../../assets/console.css");
/// Where the stylesheet is served (cached for an hour).
pub const CSS_PATH: &str = "/console/assets/console.css";

/// Every page route. Mounted inside the console's router, behind its authentication
/// middleware (which puts the principal in the request and checks CSRF on every POST).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console",
            get(|| async { Redirect::to("/console/alerts") }),
        )
        .route(CSS_PATH, get(stylesheet))
        .route("/login", get(signin::show))
        .route("/console/alerts", get(alerts::inbox))
        .route(
            "/console/alerts/{uid}/acknowledge",
            post(alerts::acknowledge),
        )
        .route("/console/patients", get(patients::caseload))
        .route("/console/patients/{key}", get(timeline::timeline))
        .route(
            "/console/patients/{key}/thresholds",
            get(thresholds::show).post(thresholds::save),
        )
        .route(
            "/console/patients/{key}/thresholds/preview",
            post(thresholds::preview),
        )
        .route("/console/gateways", get(gateways::list))
        .route("/console/audit", get(audit::list))
}

async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        CSS,
    )
        .into_response()
}
