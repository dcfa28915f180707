//! The notifier's config file section, and [`NotifierConfig::build`], which validates it
//! into the runtime parts.
//!
//! ```toml
//! [smtp]
//! host = "smtp.example.org"
//! port = 587
//! security = "starttls"        # none | starttls | tls
//! username = "alerts"
//! password = "…"               # better: RPM_NOTIFIER__SMTP__PASSWORD
//! from = "RPM alerts <alerts@example.org>"
//! timeout = "15s"
//! # ca_file = "/etc/rpm/mail-ca.pem"  # a private CA to trust besides the system's
//!
//! [webhook]
//! secret = "…"
//! timeout = "10s"
//!
//! [sms]
//! url = "https://sms.example.net/v1/Accounts/AC123/Messages"
//! username = "AC123"
//! password = "…"
//! from = "+447700900000"
//!
//! [links]
//! console_url = "https://rpm.example.org"
//! ack_key = "at least 32 bytes of secret"
//! ack_ttl = "24h"
//!
//! [dispatch]
//! lease = "2m"
//! poll = "5s"
//! batch = 32
//! retry_base = "2s"
//! retry_cap = "5m"
//! max_attempts = 12
//!
//! [grouping]
//! group_wait = "30s"
//! group_interval = "5m"
//! immediate_from = "emergency"
//! patient_urgent_from = "emergency"
//! notify_from = "low"
//!
//! [escalation]
//! emergency = { ack_within = "5m", repeats = 3 }
//! high = { ack_within = "30m", repeats = 1 }
//!
//! [directory]   # people, teams with tiered rotas, patients' contacts and quiet hours
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ack::{AckError, AckSigner};
use crate::channel::{
    ChannelError, Channels, EmailChannel, SmsChannel, SmsConfig, SmtpConfig, WebhookChannel,
    WebhookConfig,
};
use crate::dispatch::{DispatchConfig, RetryPolicy};
use crate::escalation::EscalationPolicy;
use crate::notice::Severity;
use crate::plan::PlanPolicy;
use crate::routing::{Directory, DirectoryConfig, RoutingError};
use crate::template::TemplateContext;

/// A config that does not build.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A channel's settings.
    #[error("notifier channel: {0}")]
    Channel(#[from] ChannelError),
    /// The acknowledgement key.
    #[error("notifier links.ack_key: {0}")]
    AckKey(#[from] AckError),
    /// The directory.
    #[error("notifier directory: {0}")]
    Directory(#[from] RoutingError),
    /// Built outside a tokio runtime (the SMTP pool needs one, even to be dropped).
    #[error("notifier config must be built inside a tokio runtime")]
    NoRuntime,
    /// A value out of range.
    #[error("notifier {key}: {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What was expected.
        why: &'static str,
    },
}

/// `[links]`: where the console is and how acknowledgement links are signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// The console's base URL.
    pub console_url: String,
    /// The HMAC key for acknowledgement links (at least 32 bytes).
    pub ack_key: String,
    /// How long a link stays valid.
    #[serde(with = "humantime_serde", default = "default_ack_ttl")]
    pub ack_ttl: Duration,
}

fn default_ack_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[dispatch]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchFileConfig {
    /// Claim lease; longer than the slowest channel timeout.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest sleep between looks at the outbox.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Groups per pass.
    pub batch: usize,
    /// First retry waits up to this.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// No retry waits longer.
    #[serde(with = "humantime_serde")]
    pub retry_cap: Duration,
    /// Attempts before a group fails for good.
    pub max_attempts: u32,
}

impl Default for DispatchFileConfig {
    fn default() -> Self {
        let r = RetryPolicy::default();
        DispatchFileConfig {
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(5),
            batch: 32,
            retry_base: r.base,
            retry_cap: r.cap,
            max_attempts: r.max_attempts,
        }
    }
}

/// `[grouping]`: Alertmanager-style grouping of one recipient's messages about one patient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupingConfig {
    /// Wait this long after a group's first alert for more before sending.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// At least this long between two messages of one group.
    #[serde(with = "humantime_serde")]
    pub group_interval: Duration,
    /// Alerts at or above this skip `group_wait`.
    pub immediate_from: Severity,
    /// Patient messages at or above this ignore quiet hours.
    pub patient_urgent_from: Severity,
    /// Alerts below this page nobody.
    pub notify_from: Severity,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        let p = PlanPolicy::default();
        GroupingConfig {
            group_wait: p.group_wait,
            group_interval: Duration::from_secs(300),
            immediate_from: p.immediate_from,
            patient_urgent_from: p.patient_urgent_from,
            notify_from: p.notify_from,
        }
    }
}

/// The `[notifier]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Email; leave out to send none.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Webhooks; leave out to send none.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// SMS; leave out to send none.
    #[serde(default)]
    pub sms: Option<SmsConfig>,
    /// Console and acknowledgement links.
    pub links: LinksConfig,
    /// Dispatcher.
    #[serde(default)]
    pub dispatch: DispatchFileConfig,
    /// Grouping.
    #[serde(default)]
    pub grouping: GroupingConfig,
    /// Escalation per severity (`emergency = { ack_within = "5m", repeats = 3 }`).
    #[serde(default)]
    pub escalation: EscalationPolicy,
    /// People, teams, rotas, patients.
    #[serde(default)]
    pub directory: DirectoryConfig,
}

/// A built config: what the dispatcher, the escalator and [`crate::plan`] take.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// For [`crate::Dispatcher::new`].
    pub dispatch: DispatchConfig,
    /// For [`crate::plan`] and the escalator.
    pub policy: PlanPolicy,
    /// For the escalator.
    pub escalation: EscalationPolicy,
    /// Who is who.
    pub directory: Arc<Directory>,
    /// Verifies acknowledgement links (the `/ack` route).
    pub signer: AckSigner,
}

impl NotifierConfig {
    /// Validates and builds the runtime parts. Channels connect lazily. Call it inside a
    /// tokio runtime: the SMTP connection pool belongs to one.
    pub fn build(&self) -> Result<Runtime, ConfigError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        let d = &self.dispatch;
        if d.batch == 0 {
            return Err(ConfigError::Invalid {
                key: "dispatch.batch",
                why: "must be at least 1",
            });
        }
        if d.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "dispatch.max_attempts",
                why: "must be at least 1",
            });
        }
        if d.retry_base.is_zero() || d.retry_cap < d.retry_base {
            return Err(ConfigError::Invalid {
                key: "dispatch.retry_base",
                why: "must be above zero and at most retry_cap",
            });
        }
        let slowest = [
            self.smtp.as_ref().map(|c| c.timeout),
            self.webhook.as_ref().map(|c| c.timeout),
            self.sms.as_ref().map(|c| c.timeout),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        if d.lease <= slowest {
            return Err(ConfigError::Invalid {
                key: "dispatch.lease",
                why: "must be longer than the slowest channel timeout",
            });
        }
        let signer = AckSigner::new(self.links.ack_key.as_bytes().to_vec())?;
        let directory = Arc::new(Directory::build(self.directory.clone())?);
        let channels = Channels {
            email: self.smtp.as_ref().map(EmailChannel::build).transpose()?,
            sms: self.sms.as_ref().map(SmsChannel::build).transpose()?,
            webhook: self
                .webhook
                .as_ref()
                .map(WebhookChannel::build)
                .transpose()?,
        };
        let g = &self.grouping;
        Ok(Runtime {
            dispatch: DispatchConfig {
                retry: RetryPolicy {
                    base: d.retry_base,
                    cap: d.retry_cap,
                    max_attempts: d.max_attempts,
                },
                lease: d.lease,
                poll: d.poll,
                batch: d.batch,
                group_interval: g.group_interval,
                channels,
                templates: TemplateContext {
                    console_url: self.links.console_url.clone(),
                    signer: signer.clone(),
                    ack_ttl: self.links.ack_ttl,
                },
            },
            policy: PlanPolicy {
                group_wait: g.group_wait,
                immediate_from: g.immediate_from,
                patient_urgent_from: g.patient_urgent_from,
                notify_from: g.notify_from,
            },
            escalation: self.escalation.clone(),
            directory,
            signer,
        })
    }
}
