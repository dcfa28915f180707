//! `/ack?token=…`: the signed, expiring link in every nurse message. The token is verified
//! ([`notifier::AckSigner::verify`]), the escalation stopped, and the acknowledgement written
//! to the audit log with the link's recipient id as who (`staff:nurse.day`, never a name).
//! The console and the API acknowledge through the same [`acknowledge_and_audit`].
//!
//! `GET` only checks the link and answers a confirmation page whose button `POST`s the token
//! back: mail security scanners and link previews fetch every link in a message, and a `GET`
//! that acknowledged would silence the escalation before any nurse read the alert. `POST`
//! takes the token from the form body (the page's button) or the query string (scripts).
//!
//! The pages say nothing about the patient: whoever holds the link learns only that it worked.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use notifier::escalation::EscalationError;
use notifier::{AckError, AckSigner, AckSource, EscalatorHandle, Timestamp};
use serde::Deserialize;

use super::HttpState;
use crate::notify::{ACK_ACTION, ack_target};
use crate::record::Audit;

/// What the `/ack` route needs.
#[derive(Clone, Debug)]
pub struct AckLinks {
    /// Verifies tokens (the notifier runtime's).
    pub signer: AckSigner,
    /// Stops escalation.
    pub escalator: EscalatorHandle,
}

/// The query string.
#[derive(Debug, Deserialize)]
pub struct AckQuery {
    token: Option<String>,
}

fn page(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// The HTML confirmation page: the token travels back in a hidden field of a POST form.
fn confirmation(token: &str) -> Response {
    // maud escapes the token like every attribute value.
    let body = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Acknowledge alert" }
            }
            body {
                h1 { "Acknowledge this alert?" }
                p { "Acknowledging tells the team you are dealing with it and stops escalation." }
                form method="post" action="/ack" {
                    input type="hidden" name="token" value=(token);
                    button type="submit" { "Acknowledge alert" }
                }
            }
        }
    };
    (
        StatusCode::OK,
        [
            // The token is in this page's URL: keep it out of caches and Referer headers.
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ack`: checks the link and asks for confirmation; acknowledges nothing.
pub async fn confirm(State(state): State<HttpState>, Query(q): Query<AckQuery>) -> Response {
    match verified(&state, q.token) {
        Ok((_, token)) => confirmation(&token),
        Err(refusal) => refusal,
    }
}

/// `POST /ack`: acknowledges, with the token from the form body or the query string.
pub async fn acknowledge(
    State(state): State<HttpState>,
    Query(q): Query<AckQuery>,
    form: Result<Form<AckQuery>, FormRejection>,
) -> Response {
    let token = form.ok().and_then(|Form(f)| f.token).or(q.token);
    let (ack, _) = match verified(&state, token) {
        Ok(v) => v,
        Err(refusal) => return refusal,
    };
    let alert = ack.alert.clone();
    if let Err((status, text)) = acknowledge_and_audit(
        &state,
        ack,
        "acknowledged by the signed link in a notification",
    )
    .await
    {
        return page(status, text);
    }
    tracing::info!(%alert, "alert acknowledged by link");
    page(
        StatusCode::OK,
        "Thank you: the alert is acknowledged and escalation has stopped.",
    )
}

/// The link's acknowledgement, or the page that refuses it.
#[allow(clippy::result_large_err)] // the refusal is the response itself
fn verified(
    state: &HttpState,
    token: Option<String>,
) -> Result<(notifier::Acknowledgement, String), Response> {
    let Some(links) = &state.ack else {
        return Err(page(
            StatusCode::NOT_FOUND,
            "Acknowledgement links are not enabled on this server.",
        ));
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(page(
            StatusCode::BAD_REQUEST,
            "This acknowledgement link is incomplete: it has no token. Open the link from the \
             message again, or acknowledge the alert in the console.",
        ));
    };
    let now = Timestamp::now();
    match links.signer.verify(&token, now) {
        Ok(claim) => Ok((notifier::Acknowledgement::from_link(claim, now), token)),
        Err(AckError::Expired) => {
            tracing::info!(reason = "expired", "acknowledgement link refused");
            Err(page(
                StatusCode::GONE,
                "This acknowledgement link has expired. Acknowledge the alert in the console.",
            ))
        }
        Err(e) => {
            tracing::info!(reason = %e, "acknowledgement link refused");
            Err(page(
                StatusCode::BAD_REQUEST,
                "This acknowledgement link is not valid (damaged or not from this server). \
                 Acknowledge the alert in the console.",
            ))
        }
    }
}

/// The one acknowledgement path, for the signed link and the console/API alike. First the
/// record: `alert.acknowledge` on `alert:{uid}` goes to the audit log with who (the link's
/// recipient id, or the user name) and `why` (the console's note), and in the same
/// transaction the alert's escalation rows still waiting in the outbox are cancelled
/// ([`crate::record::Record::record_acknowledgement`]). Then the escalator stops its timers
/// (when the notifier runs). In that order, a write that fails leaves the escalation going
/// (the caller is told to try again), and a crash after the write cannot bring it back: a
/// restarted notifier resumes only alerts with no acknowledgement in the audit log.
/// `Ok(true)` when a running escalation was stopped.
pub async fn acknowledge_and_audit(
    state: &HttpState,
    ack: notifier::Acknowledgement,
    why: &str,
) -> Result<bool, (StatusCode, &'static str)> {
    let who = match &ack.by {
        AckSource::Link { recipient } => recipient.as_str(),
        AckSource::Console { user } | AckSource::Api { user } => user.as_str(),
    };
    let audit = Audit { who, why };
    let target = ack_target(ack.alert.as_str());
    if let Err(e) = state
        .record
        .record_acknowledgement(&audit, ACK_ACTION, &target, ack.alert.as_str())
        .await
    {
        tracing::error!(alert = %ack.alert, error = %e, "acknowledgement not recorded");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "The acknowledgement could not be recorded. Try again shortly.",
        ));
    }
    let stopped = match &state.ack {
        Some(links) => match links.escalator.acknowledge(ack.clone()).await {
            Ok(stopped) => stopped,
            // Shutting down: the acknowledgement is recorded and its waiting rows cancelled;
            // the escalator's timers end with the process, and it will not resume this alert.
            Err(EscalationError::Stopped) => {
                tracing::info!(alert = %ack.alert, "acknowledged while the notifier stops");
                false
            }
            Err(EscalationError::Link(_)) => false,
        },
        None => false,
    };
    Ok(stopped)
}
