//! Text messages through an HTTP SMS gateway, in the form-encoded style common providers
//! use: `POST` `To`, `From`, `Body` to a configured URL with HTTP basic authentication.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ChannelError, DeliveryError, Outgoing, classify_status, classify_transport};

/// Most characters sent: ten concatenated SMS segments; longer texts are cut.
const MAX_SMS_CHARS: usize = 1530;

/// `[sms]` in the notifier config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// The gateway's message endpoint (provider-specific path, including any account id).
    pub url: String,
    /// Basic-auth user (account id or API key id).
    pub username: String,
    /// Basic-auth password (API secret; prefer the RPM_* environment override).
    pub password: String,
    /// The sender number or alphanumeric sender id.
    pub from: String,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Posts form-encoded messages to the gateway.
#[derive(Clone, Debug)]
pub struct SmsChannel {
    client: reqwest::Client,
    url: reqwest::Url,
    username: String,
    password: String,
    from: String,
}

impl SmsChannel {
    /// Builds the HTTP client.
    pub fn build(config: &SmsConfig) -> Result<Self, ChannelError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(SmsChannel {
            client,
            url: config.url.parse().map_err(|_| ChannelError::Url)?,
            username: config.username.clone(),
            password: config.password.clone(),
            from: config.from.clone(),
        })
    }

    pub(crate) async fn send(&self, msg: Outgoing<'_>) -> Result<(), DeliveryError> {
        let body: String = msg.rendered.short.chars().take(MAX_SMS_CHARS).collect();
        let response = self
            .client
            .post(self.url.clone())
            .basic_auth(&self.username, Some(&self.password))
            .header("Idempotency-Key", msg.delivery_id)
            .form(&[
                ("To", msg.to),
                ("From", self.from.as_str()),
                ("Body", body.as_str()),
            ])
            .send()
            .await
            .map_err(|e| classify_transport("sms", &e))?;
        classify_status("sms", response.status())
    }
}
