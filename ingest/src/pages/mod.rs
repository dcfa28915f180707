//! The console's pages: server-rendered HTML for nurses and clinicians, built on the console's
//! data layer and its session/role guards (`crate::console`). One stylesheet, no JavaScript:
//! every action is a plain form (GET for filters and ranges, POST with the session's CSRF
//! token for acknowledgements, sign-out and threshold changes), so the console works on a
//! locked-down ward PC, a tablet and a phone alike, and offline from the internet (the
//! stylesheet is compiled into the binary).
//!
//! | route | page |
//! | --- | --- |
//! | `GET /` | redirect to `/console` |
//! | `GET /console` | redirect to the alert inbox |
//! | `GET /console/assets/console.css` | the stylesheet |
//!
//! Charts are SVG drawn on the server by [`chart::render`], a pure function.

pub mod chart;
pub mod layout;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The stylesheet, compiled in.
pub const CSS: &str = include_str!("../../assets/console.css");
/// Where the stylesheet is served (cached for an hour).
pub const CSS_PATH: &str = "/console/assets/console.css";

/// The routes that need no state: the stylesheet and the redirects into the console.
pub fn static_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(CSS_PATH, get(stylesheet))
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
