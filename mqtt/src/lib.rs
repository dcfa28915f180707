//! MQTT client plumbing that both sides of the wire need: rumqttc options built from a
//! `[broker]` table ([`vitals::BrokerConfig`]) with credentials, last will, in-flight limits
//! and rustls TLS; the one reconnect backoff policy; and a clean disconnect that flushes what
//! was queued before it.
//!
//! It holds no protocol logic: what to publish and when to acknowledge is the gateway's
//! forwarder's and ingest's consumer's business. It exists because neither of those crates
//! may depend on the other, and the home hub must not carry the server.
//!
//! ```
//! let broker = vitals::BrokerConfig::new("mqtt://127.0.0.1:1883".parse().unwrap());
//! let options = mqtt::client_options(&broker, "gw-0001", None, 16).unwrap();
//! assert_eq!(options.broker_address(), ("127.0.0.1".to_owned(), 1883));
//! ```

#![deny(missing_docs)]

mod backoff;
mod disconnect;
mod options;
mod tls;

pub use backoff::backoff;
pub use disconnect::disconnect_flushed;
pub use options::{OptionsError, client_options};
pub use tls::{client_config, transport};
