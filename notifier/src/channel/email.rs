//! Email over SMTP with lettre: plain, STARTTLS or implicit TLS, optional authentication,
//! a connection pool.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::{ChannelError, DeliveryError, Outgoing};

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain text: only for a relay on localhost or a test server.
    None,
    /// STARTTLS required (port 587).
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
}

/// `[smtp]` in the notifier config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name (checked against its certificate under TLS).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// User name, when the server wants authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer the RPM_* environment override to a file).
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, e.g. `RPM alerts <alerts@example.org>`.
    pub from: String,
    /// Per-command timeout.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Most pooled connections.
    #[serde(default = "default_pool")]
    pub pool_size: u32,
    /// A PEM file of extra certificate authorities to trust (a clinic's private CA), beside
    /// the system's. Only used with `starttls` or `tls`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_pool() -> u32 {
    4
}

/// Sends rendered groups as plain-text email.
#[derive(Clone, Debug)]
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailChannel {
    /// Builds the transport; connects lazily on first send.
    pub fn build(config: &SmtpConfig) -> Result<Self, ChannelError> {
        let tls = || -> Result<TlsParameters, ChannelError> {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    ChannelError::Config(format!("smtp ca_file {}: {e}", path.display()))
                })?;
                params = params.add_root_certificate(Certificate::from_pem(&pem)?);
            }
            Ok(params.build()?)
        };
        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::Starttls => Tls::Required(tls()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .tls(tls)
            .port(config.port)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.pool_size.max(1)));
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from: config.from.parse()?,
        })
    }

    pub(crate) async fn send(&self, msg: Outgoing<'_>) -> Result<(), DeliveryError> {
        let to: Mailbox = msg
            .to
            .parse()
            .map_err(|_| DeliveryError::Permanent("email address does not parse".into()))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.rendered.subject.clone())
            .message_id(Some(format!("<{}@rpm.notifier>", msg.delivery_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(msg.rendered.text.clone())
            .map_err(|e| DeliveryError::Permanent(format!("email not built: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// SMTP 5xx is permanent; 4xx, timeouts, refused connections and TLS hiccups are retried.
fn classify(e: &lettre::transport::smtp::Error) -> DeliveryError {
    // The server's text may echo the address: keep the code only.
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        DeliveryError::Permanent(format!("smtp {}", code.as_deref().unwrap_or("5xx")))
    } else if e.is_transient() {
        DeliveryError::Retryable(format!("smtp {}", code.as_deref().unwrap_or("4xx")))
    } else if e.is_timeout() {
        DeliveryError::Retryable("smtp timeout".into())
    } else if e.is_tls() {
        DeliveryError::Retryable("smtp tls error".into())
    } else {
        DeliveryError::Retryable("smtp connection or protocol error".into())
    }
}
