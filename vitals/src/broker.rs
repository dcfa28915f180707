//! How a component reaches the MQTT broker: the `[broker]` table both the gateway's and
//! ingest's configuration files share.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `mqtt://host:port` (plain TCP, port 1883 by default) or `mqtts://host:port` (TLS, 8883).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Whether to use TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("`{s}` must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a TCP port"))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "`{s}` has no usable host (credentials go in username/password, not the URL)"
            ));
        }
        if port == 0 {
            return Err("port 0 is not a broker's port".into());
        }
        Ok(BrokerUrl {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for BrokerUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The `[broker]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the broker is.
    pub url: BrokerUrl,
    /// MQTT client id; defaults to the component's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name (a gateway's is its gateway id, which the broker's ACL relies on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password (preferred: keeps secrets out of config and environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The password itself (for the demo and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM bundle of CAs to trust for `mqtts://`; the system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

impl BrokerConfig {
    /// A plain broker at `url` with defaults for everything else.
    pub fn new(url: BrokerUrl) -> Self {
        BrokerConfig {
            url,
            client_id: None,
            username: None,
            password_file: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: default_keep_alive(),
        }
    }

    /// Checks combinations serde cannot: returns `(key, problem)` for the first one wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err((
                "broker.password",
                "give `password` or `password_file`, not both".into(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err((
                "broker.client_cert",
                "`client_cert` and `client_key` go together".into(),
            ));
        }
        if !self.url.tls && (self.client_cert.is_some() || self.ca_file.is_some()) {
            return Err((
                "broker.url",
                "certificates are configured but the URL is not mqtts://".into(),
            ));
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive > Duration::from_secs(65535)
        {
            return Err(("broker.keep_alive", "must be between 5s and 18h".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(
            "mqtt://localhost".parse(),
            Ok(BrokerUrl {
                tls: false,
                host: "localhost".into(),
                port: 1883
            })
        );
        assert_eq!(
            "mqtts://b.example.org".parse(),
            Ok(BrokerUrl {
                tls: true,
                host: "b.example.org".into(),
                port: 8883
            })
        );
        assert_eq!(
            "mqtt://127.0.0.1:41883/".parse(),
            Ok(BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 41883
            })
        );
        assert_eq!(
            "mqtt://[::1]:1884"
                .parse::<BrokerUrl>()
                .map(|u| u.to_string()),
            Ok("mqtt://[::1]:1884".to_owned())
        );
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://user:pw@host",
            "mqtt://h:99999",
            "mqtt://h:0",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn contradictory_settings_are_named() {
        let mut c = BrokerConfig::new("mqtt://h".parse().expect("valid"));
        assert!(c.check().is_ok());
        c.client_cert = Some("c.pem".into());
        assert_eq!(c.check().map_err(|e| e.0), Err("broker.client_cert"));
        c.client_key = Some("k.pem".into());
        assert_eq!(c.check().map_err(|e| e.0), Err("broker.url"));
        c.url.tls = true;
        assert!(c.check().is_ok());
        c.password = Some("x".into());
        c.password_file = Some("p".into());
        assert_eq!(c.check().map_err(|e| e.0), Err("broker.password"));
    }
}
