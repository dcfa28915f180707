//! `/ack?token=…`: the signed, expiring link in every nurse message. The token is verified
//! ([`notifier::AckSigner::verify`]), the escalation stopped, and the acknowledgement written
//! to the audit log with the link's recipient id as who (`staff:nurse.day`, never a name).
//! `GET` works from a mail client; `POST` is the same for forms and scripts. The console and
//! the API acknowledge through the same [`acknowledge_and_audit`].
//!
//! The page says nothing about the patient: whoever holds the link learns only that it worked.

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

/// The handler of `GET /ack` and `POST /ack`.
pub async fn acknowledge(State(state): State<HttpState>, Query(q): Query<AckQuery>) -> Response {
    let Some(links) = &state.ack else {
        return page(
            StatusCode::NOT_FOUND,
            "Acknowledgement links are not enabled on this server.",
        );
    };
    let Some(token) = q.token.filter(|t| !t.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This acknowledgement link is incomplete: it has no token. Open the link from the \
             message again, or acknowledge the alert in the console.",
        );
    };
    let now = Timestamp::now();
    let ack = match links.signer.verify(&token, now) {
        Ok(claim) => notifier::Acknowledgement::from_link(claim, now),
        Err(AckError::Expired) => {
            tracing::info!(reason = "expired", "acknowledgement link refused");
            return page(
                StatusCode::GONE,
                "This acknowledgement link has expired. Acknowledge the alert in the console.",
            );
        }
        Err(e) => {
            tracing::info!(reason = %e, "acknowledgement link refused");
            return page(
                StatusCode::BAD_REQUEST,
                "This acknowledgement link is not valid (damaged or not from this server). \
                 Acknowledge the alert in the console.",
            );
        }
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

/// The one acknowledgement path, for the signed link and the console/API alike: the
/// escalator stops escalating (when the notifier runs), then `alert.acknowledge` on
/// `alert:{uid}` goes to the audit log with who (the link's recipient id, or the user name)
/// and `why` (the console's note). `Ok(true)` when a running escalation was stopped.
pub async fn acknowledge_and_audit(
    state: &HttpState,
    ack: notifier::Acknowledgement,
    why: &str,
) -> Result<bool, (StatusCode, &'static str)> {
    let stopped = match &state.ack {
        Some(links) => match links.escalator.acknowledge(ack.clone()).await {
            Ok(stopped) => stopped,
            Err(EscalationError::Stopped) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is shutting down; the alert was not acknowledged. Try again shortly.",
                ));
            }
            Err(EscalationError::Link(_)) => false,
        },
        None => false,
    };
    let who = match &ack.by {
        AckSource::Link { recipient } => recipient.as_str(),
        AckSource::Console { user } | AckSource::Api { user } => user.as_str(),
    };
    let audit = Audit { who, why };
    let target = ack_target(ack.alert.as_str());
    if let Err(e) = state.record.append_audit(&audit, ACK_ACTION, &target).await {
        tracing::error!(alert = %ack.alert, error = %e, "acknowledgement not recorded");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "The acknowledgement could not be recorded. Try again shortly.",
        ));
    }
    Ok(stopped)
}
