//! TLS for `mqtts://` brokers with rustls: the CAs from `ca_file` (or the system's roots), and
//! a client certificate when the broker authenticates gateways by certificate.
//!
//! The crypto provider is named explicitly (aws-lc-rs) rather than taken from process-wide
//! state, so a binary that links both ring and aws-lc-rs cannot panic choosing one.

use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use vitals::BrokerConfig;

use crate::OptionsError;

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|source| OptionsError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The rustls client configuration for `broker`.
pub fn client_config(broker: &BrokerConfig) -> Result<rustls::ClientConfig, OptionsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &broker.ca_file {
        Some(path) => {
            let pem = read("ca_file", path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| OptionsError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| OptionsError::Tls(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(OptionsError::Tls(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(OptionsError::Tls(
                    "no system CA certificates found; set broker.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OptionsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&broker.client_cert, &broker.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let pem = read("client_cert", cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OptionsError::Tls(format!("{}: {e}", cert_path.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&read("client_key", key_path)?)
                .map_err(|e| OptionsError::Tls(format!("{}: {e}", key_path.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| OptionsError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The rumqttc transport for `broker`.
pub fn transport(broker: &BrokerConfig) -> Result<Transport, OptionsError> {
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        client_config(broker)?,
    ))))
}
