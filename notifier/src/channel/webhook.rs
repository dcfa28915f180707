//! Webhooks: the group as JSON, POSTed to the contact point's URL, signed with
//! `X-RPM-Signature: sha256=<hex HMAC-SHA256 of the body>` so the receiver can check it came
//! from us; `X-RPM-Delivery` is stable across retries for receivers to deduplicate.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{ChannelError, DeliveryError, Outgoing, classify_status, classify_transport};

/// `[webhook]` in the notifier config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The shared secret the signature is made with.
    pub secret: String,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `sha256=<hex>` of `body` under `secret`: what `X-RPM-Signature` carries.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs signed JSON.
#[derive(Clone, Debug)]
pub struct WebhookChannel {
    client: reqwest::Client,
    secret: Vec<u8>,
}

impl WebhookChannel {
    /// Builds the HTTP client.
    pub fn build(config: &WebhookConfig) -> Result<Self, ChannelError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(WebhookChannel {
            client,
            secret: config.secret.as_bytes().to_vec(),
        })
    }

    pub(crate) async fn send(&self, msg: Outgoing<'_>) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&msg.rendered.json)
            .map_err(|e| DeliveryError::Permanent(format!("webhook body: {e}")))?;
        let response = self
            .client
            .post(msg.to)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-RPM-Signature", signature(&self.secret, &body))
            .header("X-RPM-Delivery", msg.delivery_id)
            .body(body)
            .send()
            .await
            .map_err(|e| classify_transport("webhook", &e))?;
        classify_status("webhook", response.status())
    }
}
