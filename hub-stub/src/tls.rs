//! The hub's TLS: rustls (ring, TLS 1.3 only) that requires a client
//! certificate from the configured CA, and the agency identity read from
//! that certificate.
//!
//! Identity rule: the first SAN URI `urn:qianzhi:agency:<CODE>`; if the
//! certificate has none, its subject CN.

use std::path::Path;
use std::sync::Arc;

use agent::link::tls::{provider, read_certs, read_key, read_roots};
use agent::pki::AGENCY_URI_PREFIX;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let roots = Arc::new(read_roots(ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, read_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The agency a verified client certificate names.
pub fn agency_of(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable client certificate: {e}"))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(code) = uri.strip_prefix(AGENCY_URI_PREFIX)
            {
                return Ok(code.to_owned());
            }
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "the client certificate names no agency (no SAN URI urn:qianzhi:agency:…, no CN)".to_owned())
}
