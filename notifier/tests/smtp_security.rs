//! Email over STARTTLS and implicit TLS with authentication, against a real aiosmtpd that
//! requires both (`testkit/smtp_secure.py`), with a certificate from a private CA made here.
//! Missing aiosmtpd skips locally and fails under CI=true (testkit::unavailable).

use std::path::Path;
use std::time::Duration;

use notifier::ChannelKind;
use notifier::channel::{
    Channels, DeliveryError, EmailChannel, Outgoing, SmtpConfig, SmtpSecurity,
};
use notifier::template::Rendered;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use testkit::{SmtpSecure, SmtpSink};

const USER: &str = "rpm-notifier";
const PASSWORD: &str = "s3cret-for-tests";

/// A private CA and a `localhost` server certificate it signed, as PEM files in `dir`;
/// returns the CA file's path.
fn private_ca(dir: &Path) -> std::path::PathBuf {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rpm test mail CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");

    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    dir.join("ca.pem")
}

fn server(dir: &Path, implicit_tls: bool) -> Option<SmtpSink> {
    testkit::unavailable(SmtpSink::start_secure(SmtpSecure {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        implicit_tls,
        login: Some((USER.into(), PASSWORD.into())),
    }))
}

fn channel(
    port: u16,
    security: SmtpSecurity,
    ca: Option<&Path>,
    password: Option<&str>,
) -> Channels {
    let config = SmtpConfig {
        host: "localhost".into(),
        port,
        security,
        username: password.map(|_| USER.into()),
        password: password.map(Into::into),
        from: "RPM alerts <alerts@rpm.test>".into(),
        timeout: Duration::from_secs(5),
        pool_size: 1,
        ca_file: ca.map(Path::to_path_buf),
    };
    Channels {
        email: Some(EmailChannel::build(&config).expect("channel builds")),
        ..Channels::default()
    }
}

fn rendered() -> Rendered {
    Rendered {
        subject: "RPM: 1 alert".into(),
        text: "SpO2 below threshold (test body)".into(),
        short: String::new(),
        json: serde_json::Value::Null,
    }
}

async fn send(channels: &Channels) -> Result<(), DeliveryError> {
    let rendered = rendered();
    channels
        .send(
            ChannelKind::Email,
            Outgoing {
                to: "ann@ward.test",
                rendered: &rendered,
                delivery_id: "d-1",
            },
        )
        .await
}

async fn delivered_over(implicit_tls: bool, security: SmtpSecurity) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = private_ca(dir.path());
    let Some(smtp) = server(dir.path(), implicit_tls) else {
        return;
    };
    send(&channel(smtp.port(), security, Some(&ca), Some(PASSWORD)))
        .await
        .expect("delivered over TLS with authentication");
    let mail = smtp
        .wait_for_mail_to("ann@ward.test", Duration::from_secs(10))
        .await
        .expect("the server stored the message");
    assert!(mail.contains("SpO2 below threshold"), "{mail}");
}

#[tokio::test]
async fn starttls_with_authentication_delivers() {
    delivered_over(false, SmtpSecurity::Starttls).await;
}

#[tokio::test]
async fn implicit_tls_with_authentication_delivers() {
    delivered_over(true, SmtpSecurity::Tls).await;
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_failure_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = private_ca(dir.path());
    let Some(smtp) = server(dir.path(), false) else {
        return;
    };
    let err = send(&channel(
        smtp.port(),
        SmtpSecurity::Starttls,
        Some(&ca),
        Some("wrong"),
    ))
    .await
    .expect_err("refused");
    assert!(
        matches!(err, DeliveryError::Permanent(_)),
        "535 is permanent: {err:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_retried_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    private_ca(dir.path());
    let Some(smtp) = server(dir.path(), true) else {
        return;
    };
    // Without the private CA the server's certificate does not verify.
    let err = send(&channel(
        smtp.port(),
        SmtpSecurity::Tls,
        None,
        Some(PASSWORD),
    ))
    .await
    .expect_err("refused");
    assert!(
        matches!(err, DeliveryError::Retryable(_)),
        "a TLS failure is retried (an operator can fix the trust): {err:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn plain_smtp_is_refused_by_a_server_that_requires_starttls() {
    let dir = tempfile::tempdir().expect("tempdir");
    private_ca(dir.path());
    let Some(smtp) = server(dir.path(), false) else {
        return;
    };
    // A channel misconfigured as plain SMTP: MAIL FROM is answered 530 (STARTTLS first).
    let err = send(&channel(smtp.port(), SmtpSecurity::None, None, None))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, DeliveryError::Permanent(_)),
        "530 is permanent: {err:?}"
    );
    // With credentials, they never go out in the clear: the server offers no AUTH before
    // STARTTLS, and lettre will not log in without it.
    send(&channel(
        smtp.port(),
        SmtpSecurity::None,
        None,
        Some(PASSWORD),
    ))
    .await
    .expect_err("refused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.messages().is_empty());
}

#[test]
fn an_unreadable_ca_file_is_a_clear_configuration_error() {
    let config = SmtpConfig {
        host: "localhost".into(),
        port: 25,
        security: SmtpSecurity::Starttls,
        username: None,
        password: None,
        from: "RPM alerts <alerts@rpm.test>".into(),
        timeout: Duration::from_secs(5),
        pool_size: 1,
        ca_file: Some("/nonexistent/ca.pem".into()),
    };
    let err = EmailChannel::build(&config).expect_err("refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
