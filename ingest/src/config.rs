//! The `rpm ingest` configuration file (`fixtures/config/ingest.toml` is the documented
//! sample). Every table rejects unknown keys; durations are humantime strings ("20ms", "5m").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitals::BrokerConfig;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The broker gateways publish to.
    pub broker: BrokerConfig,
    /// The patient record.
    pub database: DatabaseConfig,
    /// The MQTT consumer.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// The HTTP API and console.
    #[serde(default)]
    pub http: HttpConfig,
    /// Clock-sanity policy for incoming readings.
    #[serde(default)]
    pub clock: ClockConfig,
    /// The rules engine: where threshold profiles are, which one is the default.
    #[serde(default)]
    pub rules: RulesConfig,
    /// The console and `/api/v1`: sessions, cookies, who may read `/fhir`.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Notifications: channels, the care teams and their rotas, escalation. Absent: alerts
    /// are stored but nobody is notified. See [`notifier::config`] for the keys. Printed
    /// with its secrets (passwords, webhook secret, link key) redacted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub notifier: Option<notifier::NotifierConfig>,
}

/// `[database]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/rpm.db` or `postgres://user@host/db`.
    pub url: String,
    /// Connection pool size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    8
}

/// `[consumer]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Shared-subscription group: nodes with the same group split the readings.
    pub group: String,
    /// Most readings committed in one transaction. Large, because a commit costs about the
    /// same whatever it carries up to thousands of readings (the per-patient indexes and
    /// the fsync: `BENCHMARKS.md`, 2026-12-03 night); only a backlog fills a batch (live
    /// hubs send a reading or a few per message, and `max_inflight` bounds the messages).
    pub batch_max: usize,
    /// How long a partial batch waits for more before it is committed.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Most unacknowledged MQTT messages held at once (the broker's receive maximum).
    pub max_inflight: u16,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: "ingest".into(),
            batch_max: 10_000,
            batch_linger: Duration::from_millis(20),
            max_inflight: 256,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address, `IP:PORT`; port 0 takes a free port.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// The address staff reach the console at, for links in notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
        }
    }
}

/// A listen address, refused with the form it must take (the standard library says only
/// "invalid socket address syntax").
fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct Listen;
    impl serde::de::Visitor<'_> for Listen {
        type Value = SocketAddr;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("IP:PORT, like 127.0.0.1:8080 or [::1]:8080 (a host name is not resolved)")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            v.parse()
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_str(Listen)
}

/// `[clock]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// A reading measured further than this in the future is rejected.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            max_future: Duration::from_secs(300),
        }
    }
}

/// `[rules]`.
///
/// A patient's profile is their registry `profile_id` when set: the id of a profile in
/// `profiles_dir`, or of an override in `profiles_dir/overrides/` (applied on top of the
/// profile its `base` names). When unset, the profile whose id is the patient's condition
/// (`copd`, `hypertension`, …) if there is one, else `default_profile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Directory of threshold profiles (`*.toml`), with per-patient overrides in its
    /// `overrides/` subdirectory. Relative paths are from the working directory; the default,
    /// `fixtures/profiles`, suits a checkout of the repository (development and tests).
    pub profiles_dir: PathBuf,
    /// The profile for patients whose condition has none of its own.
    pub default_profile: String,
    /// How often time-driven rules (missing data, silent gateway) are checked.
    #[serde(with = "humantime_serde")]
    pub tick_every: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            profiles_dir: PathBuf::from("fixtures/profiles"),
            default_profile: "default".into(),
            tick_every: Duration::from_secs(60),
        }
    }
}

/// `[console]`: the web console's and the JSON API's security settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session not used for this long ends (the nurse signs in again).
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however busy.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Default: when
    /// `[http] public_url` is `https://…` (a TLS-terminating proxy in front). Set it
    /// explicitly when the proxy's address is not the public URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_cookies: Option<bool>,
    /// Require a signed-in user or an API token for `/fhir/…`. The FHIR views carry
    /// pseudonymous patient keys and measurements but never names; they stay open by
    /// default for integrations on a trusted network. Set `true` whenever the port is
    /// reachable beyond it.
    pub fhir_requires_auth: bool,
    /// Failed sign-ins one client address may make in 15 minutes before its sign-ins are
    /// refused for the rest of them (429), whichever accounts it tries; 0 turns this off.
    /// Each account also locks after repeated failures.
    pub login_failures_per_address: u32,
    /// Behind a reverse proxy, the header it puts the client's address in (for example
    /// `x-forwarded-for`; the last address in it counts). Unset: the connection's address.
    /// Set it only when a proxy you run sets that header, or a client could choose its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip_header: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            secure_cookies: None,
            fhir_requires_auth: false,
            login_failures_per_address: 20,
            client_ip_header: None,
        }
    }
}

impl ConsoleConfig {
    /// Whether cookies are `Secure` given the public URL.
    pub fn secure(&self, public_url: Option<&str>) -> bool {
        self.secure_cookies
            .unwrap_or_else(|| public_url.is_some_and(|u| u.starts_with("https://")))
    }
}

/// What a printed configuration shows instead of a secret.
pub const REDACTED: &str = "(redacted)";

fn redacted<S: serde::Serializer>(
    notifier: &Option<notifier::NotifierConfig>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut shown = notifier.clone();
    if let Some(n) = shown.as_mut() {
        if let Some(smtp) = n.smtp.as_mut()
            && smtp.password.is_some()
        {
            smtp.password = Some(REDACTED.into());
        }
        if let Some(w) = n.webhook.as_mut() {
            w.secret = REDACTED.into();
        }
        if let Some(sms) = n.sms.as_mut() {
            sms.password = REDACTED.into();
        }
        n.links.ack_key = REDACTED.into();
    }
    shown.serialize(serializer)
}

impl IngestConfig {
    /// Checks what serde cannot; returns the dotted key and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.broker.check()?;
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err((
                "database.url",
                "expected sqlite:PATH or postgres://…".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(("database.max_connections", "must be at least 1".into()));
        }
        if self.consumer.group.is_empty() || self.consumer.group.contains(['/', '+', '#']) {
            return Err((
                "consumer.group",
                "must be a non-empty MQTT topic level".into(),
            ));
        }
        if self.consumer.batch_max == 0 {
            return Err(("consumer.batch_max", "must be at least 1".into()));
        }
        if self.consumer.max_inflight == 0 {
            return Err(("consumer.max_inflight", "must be at least 1".into()));
        }
        if self.rules.default_profile.is_empty() {
            return Err(("rules.default_profile", "must name a profile".into()));
        }
        if self.console.session_idle.is_zero() {
            return Err(("console.session_idle", "must be more than zero".into()));
        }
        if self.console.session_max < self.console.session_idle {
            return Err((
                "console.session_max",
                "must be at least console.session_idle".into(),
            ));
        }
        if let Some(h) = &self.console.client_ip_header
            && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err((
                "console.client_ip_header",
                "expected an HTTP header name such as x-forwarded-for".into(),
            ));
        }
        if self.rules.tick_every.is_zero() {
            return Err(("rules.tick_every", "must be more than zero".into()));
        }
        if let Some(n) = &self.notifier {
            // The rest (channels, timings) is checked when `rpm ingest` builds it.
            if let Err(e) = notifier::AckSigner::new(n.links.ack_key.as_bytes().to_vec()) {
                return Err(("notifier.links.ack_key", e.to_string()));
            }
            if let Err(e) = notifier::Directory::build(n.directory.clone()) {
                return Err(("notifier.directory", e.to_string()));
            }
        }
        Ok(())
    }
}
