//! The HTTP API of `rpm ingest`: FHIR R4 read views of the patient record ([`fhir`]), a health
//! check and Prometheus metrics. The console arrives with the console issue and adds
//! authentication; until then nothing served here names a person.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 `ok` when the database answers within two seconds, else 503 |
//! | `GET /metrics` | the consumer's counters, the rules engine's latency, queue depths (ingest, outbox, gateways) and the notifier's counters when it runs; Prometheus text format ([`metrics`]) |
//! | `GET /fhir/…` | FHIR R4 JSON (see [`fhir`]) |
//! | `GET /ack?token=…` | checks the signed link in a notification and answers a confirmation page (acknowledges nothing: link scanners fetch every link); 400 for a bad token, 410 for an expired one, 404 without `[notifier]` |
//! | `POST /ack` | acknowledges by the signed link (token in the form body or the query): 200 and a small plain page |
//!
//! ```no_run
//! # async fn demo(record: ingest::record::Record) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use ingest::http::{HttpState, router, serve};
//! let state = HttpState::new(record, Arc::new(ingest::consume::IngestStats::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! serve(listener, router(state), shutdown).await
//! # }
//! ```
//!
//! Request logs carry the method, the route template and the status, never the path itself
//! (it holds patient keys) nor the query string.

pub mod ack;
pub mod fhir;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::consume::IngestStats;
use crate::record::Record;

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The patient record.
    pub record: Record,
    /// The consumer's counters, for `/metrics`.
    pub stats: Arc<IngestStats>,
    /// The externally visible base URL (`[http] public_url`), used for absolute links in
    /// Bundles; when `None`, links are built from the request's `Host` header.
    pub public_url: Option<String>,
    /// Acknowledgement links (`/ack`), when the notifier runs.
    pub ack: Option<ack::AckLinks>,
    /// The notifier dispatcher's counters for `/metrics`, when it runs.
    pub notifier: Option<Arc<notifier::DispatchStats>>,
    /// The console's settings and threshold profiles.
    pub console: crate::console::ConsoleState,
}

impl HttpState {
    /// State without a configured public URL.
    pub fn new(record: Record, stats: Arc<IngestStats>) -> Self {
        HttpState {
            record,
            stats,
            public_url: None,
            ack: None,
            notifier: None,
            console: crate::console::ConsoleState::default(),
        }
    }
}

/// Every route.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/ack", get(ack::confirm).post(ack::acknowledge))
        .merge(fhir_routes(&state))
        .merge(crate::console::routes(&state))
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// `/fhir`, behind a session or token when `[console] fhir_requires_auth` says so.
fn fhir_routes(state: &HttpState) -> Router<HttpState> {
    if state.console.settings.fhir_requires_auth {
        fhir::routes()
            .layer(middleware::from_fn(crate::console::auth::fhir_guard))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                crate::console::auth::authenticate,
            ))
    } else {
        fhir::routes()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    // The peer's address reaches handlers (the console counts failed sign-ins per address).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The route template (`/fhir/Patient/{id}`), never the concrete path with its key.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".into());
    let response = next.run(request).await;
    tracing::debug!(%method, route, status = response.status().as_u16(), "HTTP request");
    response
}

async fn healthz(State(state): State<HttpState>) -> Response {
    // A primary-key lookup of an id no reading has: one index probe, whatever the table size.
    let probe = vitals::ReadingId(uuid::Uuid::nil());
    match tokio::time::timeout(HEALTH_TIMEOUT, state.record.reading(&probe)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: the database did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
        Err(_) => {
            tracing::warn!("health check: the database did not answer in time");
            (StatusCode::SERVICE_UNAVAILABLE, "database timed out\n").into_response()
        }
    }
}

/// Unknown paths: an `OperationOutcome` under `/fhir`, a plain 404 elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path() == "/fhir" || uri.path().starts_with("/fhir/") {
        fhir::no_route(uri).await
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    let mut text = metrics::render(&state.stats);
    if let Some(n) = &state.notifier {
        metrics::render_notifier(n, &mut text);
    }
    // The queue gauges need the database; without it the counters are still served (a scrape
    // that fails entirely would hide them exactly when they matter).
    match tokio::time::timeout(HEALTH_TIMEOUT, state.record.queue_depths()).await {
        Ok(Ok(q)) => metrics::render_queues(&q, &mut text),
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: queue depths unavailable"),
        Err(_) => tracing::warn!("metrics: queue depths timed out"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}
