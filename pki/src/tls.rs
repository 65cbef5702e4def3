//! rustls configurations from PEM files, ring provider only, TLS 1.3 only:
//! the agent's client config and the hub's server config.
//!
//! Files are read again for every connection, so certificates renewed on
//! disk are used from the next handshake without a restart.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The one crypto provider of the project.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material could not be used. Always fatal for a session: it needs
/// an operator to fix a file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Error {
    pub path: String,
    pub reason: String,
}

fn err(path: &Path, reason: impl ToString) -> Error {
    Error {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate in file"));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err(path, format!("cannot read private key: {e}")))
}

pub fn read_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The agent's client config: trusts only `ca`, presents `cert` and `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, Error> {
    let roots = read_roots(ca)?;
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(ca, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| err(key, format!("key does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The hub's server config: requires a client certificate issued by `ca`,
/// presents `cert` and `key`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let roots = Arc::new(read_roots(ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| err(ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(ca, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| err(key, format!("key does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What is wrong with how a private key file is kept, if anything: a
/// symbolic link (whoever controls the link's target controls the
/// agency's identity), or readable by the group or others.
pub fn key_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        return Some(format!(
            "the private key {} is a symbolic link: keep the key itself there (owned by the agent's account, mode 600)",
            path.display()
        ));
    }
    let mode = meta.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "the private key {} can be read by other accounts (mode {:o}): chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}
