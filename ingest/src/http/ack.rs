//! `/ack?token=…`: the signed, expiring link in every nurse message. The token is verified
//! ([`notifier::AckSigner::verify`]), the escalation stopped, and the acknowledgement written
//! to the audit log with the link's recipient id as who (`staff:nurse.day`, never a name).
//! `GET` works from a mail client; `POST` is the same for forms and scripts.
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
    let ack = match links
        .escalator
        .acknowledge_link(&links.signer, &token, Timestamp::now())
        .await
    {
        Ok(ack) => ack,
        Err(EscalationError::Link(AckError::Expired)) => {
            tracing::info!(reason = "expired", "acknowledgement link refused");
            return page(
                StatusCode::GONE,
                "This acknowledgement link has expired. Acknowledge the alert in the console.",
            );
        }
        Err(EscalationError::Link(e)) => {
            tracing::info!(reason = %e, "acknowledgement link refused");
            return page(
                StatusCode::BAD_REQUEST,
                "This acknowledgement link is not valid (damaged or not from this server). \
                 Acknowledge the alert in the console.",
            );
        }
        Err(EscalationError::Stopped) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is shutting down; the alert was not acknowledged. Try again shortly.",
            );
        }
    };
    let who = match &ack.by {
        AckSource::Link { recipient } => recipient.as_str(),
        AckSource::Console { user } | AckSource::Api { user } => user.as_str(),
    };
    let audit = Audit {
        who,
        why: "acknowledged by the signed link in a notification",
    };
    let target = ack_target(ack.alert.as_str());
    if let Err(e) = state.record.append_audit(&audit, ACK_ACTION, &target).await {
        tracing::error!(alert = %ack.alert, error = %e, "acknowledgement not recorded");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The acknowledgement could not be recorded. Try the link again shortly.",
        );
    }
    tracing::info!(alert = %ack.alert, "alert acknowledged by link");
    page(
        StatusCode::OK,
        "Thank you: the alert is acknowledged and escalation has stopped.",
    )
}
