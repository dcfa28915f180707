//! Delivery channels: email over SMTP ([`EmailChannel`]), webhooks ([`WebhookChannel`]) and
//! HTTP SMS gateways ([`SmsChannel`]). Each classifies its failures as retryable or
//! permanent ([`DeliveryError`]) and reports them without PHI: status codes and error
//! kinds, never an address, a URL or a body.

mod email;
mod sms;
mod webhook;

pub use email::{EmailChannel, SmtpConfig, SmtpSecurity};
pub use sms::{SmsChannel, SmsConfig};
pub use webhook::{WebhookChannel, WebhookConfig, signature};

use crate::routing::ChannelKind;
use crate::template::Rendered;

/// A failed delivery, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again later: the server was down, busy, timed out, or said 4xx (SMTP) /
    /// 5xx, 408, 429 (HTTP).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Will not get better by retrying: 5xx (SMTP), other 4xx (HTTP), a bad address, a
    /// channel that is not configured.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A channel could not be set up from its config.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The SMTP transport refused its settings.
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The sender address does not parse.
    #[error("smtp `from` is not a mailbox: {0}")]
    From(#[from] lettre::address::AddressError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The SMS gateway URL does not parse.
    #[error("sms gateway url is invalid")]
    Url,
    /// A setting names a file that cannot be used.
    #[error("{0}")]
    Config(String),
}

/// One message to deliver.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The address on the channel (PHI).
    pub to: &'a str,
    /// The words.
    pub rendered: &'a Rendered,
    /// Stable across retries of the same group (receivers deduplicate on it).
    pub delivery_id: &'a str,
}

/// The configured channels. A channel left out refuses its messages permanently.
#[derive(Clone, Debug, Default)]
pub struct Channels {
    /// Email.
    pub email: Option<EmailChannel>,
    /// SMS.
    pub sms: Option<SmsChannel>,
    /// Webhooks.
    pub webhook: Option<WebhookChannel>,
}

impl Channels {
    /// Delivers `msg` over `kind`.
    pub async fn send(&self, kind: ChannelKind, msg: Outgoing<'_>) -> Result<(), DeliveryError> {
        let missing =
            || DeliveryError::Permanent(format!("{} channel not configured", kind.as_str()));
        match kind {
            ChannelKind::Email => self.email.as_ref().ok_or_else(missing)?.send(msg).await,
            ChannelKind::Sms => self.sms.as_ref().ok_or_else(missing)?.send(msg).await,
            ChannelKind::Webhook => self.webhook.as_ref().ok_or_else(missing)?.send(msg).await,
        }
    }
}

/// HTTP status and transport errors, classified the same way for webhooks and SMS.
pub(crate) fn classify_status(
    what: &str,
    status: reqwest::StatusCode,
) -> Result<(), DeliveryError> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(DeliveryError::Retryable(format!(
            "{what} http {}",
            status.as_u16()
        )))
    } else {
        Err(DeliveryError::Permanent(format!(
            "{what} http {}",
            status.as_u16()
        )))
    }
}

pub(crate) fn classify_transport(what: &str, e: &reqwest::Error) -> DeliveryError {
    // reqwest's Display names the URL (it may carry a token): report the kind only.
    if e.is_builder() {
        DeliveryError::Permanent(format!("{what} bad request or url"))
    } else if e.is_timeout() {
        DeliveryError::Retryable(format!("{what} timeout"))
    } else if e.is_connect() {
        DeliveryError::Retryable(format!("{what} connect failed"))
    } else {
        DeliveryError::Retryable(format!("{what} transport error"))
    }
}
