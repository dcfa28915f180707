//! The MQTT topic scheme (version 1).
//!
//! ```text
//! rpm/v1/gw/{gateway_id}/readings   gateway → server, QoS 1, one Envelope per message
//! rpm/v1/gw/{gateway_id}/status     gateway → server, retained; the last will says offline
//! rpm/v1/gw/{gateway_id}/config     server → gateway, retained
//! ```
//!
//! A gateway's broker user name is its id, so a broker ACL of `pattern write rpm/v1/gw/%u/#`
//! (Mosquitto) lets it publish only as itself. Ingest consumes through a shared subscription
//! (`$share/ingest/rpm/v1/gw/+/readings`) and still checks the topic's id against the
//! envelope's.

use std::fmt;

use crate::ids::GatewayId;

/// Every topic of this scheme starts with this.
pub const TOPIC_PREFIX: &str = "rpm/v1/gw/";

/// The Mosquitto ACL pattern that confines a gateway (user name = gateway id) to its topics.
pub const GATEWAY_ACL_PATTERN: &str = "rpm/v1/gw/%u/#";

/// Which of a gateway's topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Batches of readings.
    Readings,
    /// Retained gateway status.
    Status,
    /// Retained configuration for the gateway.
    Config,
}

impl Channel {
    /// The last topic level.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Readings => "readings",
            Channel::Status => "status",
            Channel::Config => "config",
        }
    }
}

/// A parsed topic of the scheme.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The gateway the topic belongs to.
    pub gateway: GatewayId,
    /// Which topic.
    pub channel: Channel,
}

/// A topic outside the scheme.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not under `rpm/v1/gw/`.
    #[error("topic is not under `{TOPIC_PREFIX}`")]
    NotOurs,
    /// The gateway level is not a valid gateway id.
    #[error("topic's gateway level is not a valid gateway id")]
    BadGateway,
    /// Not `readings`, `status` or `config`, or extra levels.
    #[error("topic must end in /readings, /status or /config")]
    BadChannel,
}

impl Topic {
    /// A gateway's topic.
    pub fn new(gateway: GatewayId, channel: Channel) -> Self {
        Self { gateway, channel }
    }

    /// Parses a concrete topic name (no wildcards).
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(TOPIC_PREFIX)
            .ok_or(TopicError::NotOurs)?;
        let (gw, channel) = rest.split_once('/').ok_or(TopicError::BadChannel)?;
        let gateway = GatewayId::new(gw).map_err(|_| TopicError::BadGateway)?;
        let channel = match channel {
            "readings" => Channel::Readings,
            "status" => Channel::Status,
            "config" => Channel::Config,
            _ => return Err(TopicError::BadChannel),
        };
        Ok(Self { gateway, channel })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOPIC_PREFIX}{}/{}",
            self.gateway,
            self.channel.as_str()
        )
    }
}

/// The filter every gateway's topic of `channel` matches (`rpm/v1/gw/+/readings`).
pub fn all_gateways(channel: Channel) -> String {
    format!("{TOPIC_PREFIX}+/{}", channel.as_str())
}

/// The MQTT 5 shared-subscription filter for `group` (`$share/ingest/rpm/v1/gw/+/readings`).
pub fn shared(group: &str, channel: Channel) -> String {
    format!("$share/{group}/{}", all_gateways(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let gw = GatewayId::new("gw-7").expect("valid");
        for ch in [Channel::Readings, Channel::Status, Channel::Config] {
            let t = Topic::new(gw.clone(), ch);
            assert_eq!(Topic::parse(&t.to_string()), Ok(t));
        }
        assert_eq!(
            Topic::new(gw, Channel::Readings).to_string(),
            "rpm/v1/gw/gw-7/readings"
        );
        assert_eq!(
            shared("ingest", Channel::Readings),
            "$share/ingest/rpm/v1/gw/+/readings"
        );
    }

    #[test]
    fn foreign_topics_are_refused() {
        assert_eq!(
            Topic::parse("rpm/v2/gw/a/readings"),
            Err(TopicError::NotOurs)
        );
        assert_eq!(
            Topic::parse("rpm/v1/gw/A B/readings"),
            Err(TopicError::BadGateway)
        );
        assert_eq!(
            Topic::parse("rpm/v1/gw/a/readings/x"),
            Err(TopicError::BadChannel)
        );
        assert_eq!(Topic::parse("rpm/v1/gw/a"), Err(TopicError::BadChannel));
        assert_eq!(
            Topic::parse("rpm/v1/gw/+/readings"),
            Err(TopicError::BadGateway)
        );
    }
}
