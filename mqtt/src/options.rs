//! rumqttc options from a `[broker]` table: address, credentials, keep-alive, the last will,
//! in-flight limits and TLS.

use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;
use vitals::BrokerConfig;

/// Why options could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A credential or certificate file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS setting is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Options for one client. `will` is the retained message the broker publishes when the
/// connection dies without a goodbye; `max_inflight` bounds unacknowledged publishes.
pub fn client_options(
    broker: &BrokerConfig,
    client_id: &str,
    will: Option<(String, Vec<u8>)>,
    max_inflight: u16,
) -> Result<MqttOptions, OptionsError> {
    let id = broker
        .client_id
        .clone()
        .unwrap_or_else(|| client_id.to_owned());
    let mut options = MqttOptions::new(id, broker.url.host.clone(), broker.url.port);
    options.set_keep_alive(broker.keep_alive);
    options.set_clean_start(true);
    options.set_connection_timeout(10);
    // Room for the in-flight window plus status and subscription requests, so `try_publish`
    // never finds the request channel full in normal operation.
    options.set_request_channel_capacity(usize::from(max_inflight) * 2 + 16);
    options.set_outgoing_inflight_upper_limit(max_inflight.saturating_add(4));
    options.set_max_packet_size(Some(
        u32::try_from(vitals::MAX_PAYLOAD_BYTES * 2).unwrap_or(u32::MAX),
    ));
    options.set_pending_throttle(Duration::ZERO);
    if let Some((topic, payload)) = will {
        options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true, None));
    }
    let password = match (&broker.password, &broker.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| OptionsError::File {
                    what: "password_file",
                    path: path.display().to_string(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(user) = &broker.username {
        options.set_credentials(user.clone(), password.unwrap_or_default());
    }
    if broker.url.tls {
        options.set_transport(crate::tls::transport(broker)?);
    }
    Ok(options)
}
