//! The web console's backend and the JSON API (`/api/v1`), for nurses, clinicians and
//! admins: who may do what ([`auth`]), and the routes ([`api`]). The HTML pages live in
//! `pages` and use the same extractors and the same record views.
//!
//! Every route checks the caller's role: nurses read and acknowledge, clinicians also edit
//! thresholds, admins also manage users and the registry. The OpenAPI 3 document of the API
//! is generated from the handlers and served at `/api/openapi.json`.

pub mod api;
pub mod auth;
pub mod thresholds;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::config::ConsoleConfig;
use crate::http::HttpState;

/// The console's settings, resolved from `[console]` and `[http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Idle expiry of a session.
    pub session_idle: Duration,
    /// Absolute expiry of a session.
    pub session_max: Duration,
    /// `Secure` cookies (HTTPS).
    pub secure: bool,
    /// `/fhir` needs a session or a token.
    pub fhir_requires_auth: bool,
    /// Failed sign-ins allowed per client address.
    pub login_limit: throttle::Limit,
    /// The header a reverse proxy puts the client's address in (the last entry counts);
    /// `None`: the TCP peer's address.
    pub client_ip_header: Option<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self::from_config(&ConsoleConfig::default(), None)
    }
}

impl ConsoleSettings {
    /// From the `[console]` table and `[http] public_url`.
    pub fn from_config(c: &ConsoleConfig, public_url: Option<&str>) -> Self {
        ConsoleSettings {
            session_idle: c.session_idle,
            session_max: c.session_max,
            secure: c.secure(public_url),
            fhir_requires_auth: c.fhir_requires_auth,
            login_limit: throttle::Limit {
                max_failures: c.login_failures_per_address,
                ..throttle::Limit::default()
            },
            client_ip_header: c.client_ip_header.clone(),
        }
    }
}

/// What the console adds to [`crate::http::HttpState`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ConsoleState {
    /// Sessions and cookies.
    pub settings: ConsoleSettings,
    /// The threshold profiles (`[rules]`), for the thresholds page and its preview; `None`
    /// when the server runs without rules (those routes answer 503).
    pub profiles: Option<Arc<thresholds::ProfileCatalog>>,
    /// Failed sign-ins per client address.
    pub throttle: Arc<throttle::LoginThrottle>,
}

/// The console's and the API's routes, behind [`auth::authenticate`]: `/api/v1/…`,
/// `/api/openapi.json`, and the HTML forms' `POST /login` and `POST /logout`.
pub fn routes(state: &HttpState) -> Router<HttpState> {
    let (api, doc) = api::routes();
    let doc = Arc::new(doc);
    Router::new()
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()).into_response() }
            }),
        )
        .route("/login", post(api::login_form))
        .route("/logout", post(api::logout_form))
        .merge(crate::pages::routes()) // the HTML pages (c2), behind the same authentication
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
}

/// The OpenAPI document of `/api/v1` (what `/api/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::routes().1
}
