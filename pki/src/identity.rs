//! The agency a certificate names, and when the certificate is valid.
//!
//! Identity rule: the first SAN URI `urn:qianzhi:agency:<CODE>`; if the
//! certificate has none, its subject CN.

use std::path::Path;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The SAN URI prefix that carries an agency code.
pub const AGENCY_URI_PREFIX: &str = "urn:qianzhi:agency:";

/// The agency a (verified) certificate names.
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

/// When the first certificate of a PEM file expires (seconds since the epoch).
pub fn not_after(path: &Path) -> Result<i64, String> {
    read(path).map(|c| c.not_after)
}

/// What an agency's certificate file says of itself (its first
/// certificate, the one presented): what `qianzhi check` compares with the
/// config before it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The agency it names, or why it names none.
    pub agency: Result<String, String>,
    /// Valid from and until, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the first certificate of a PEM file.
pub fn read(path: &Path) -> Result<Described, String> {
    let certs = crate::tls::read_certs(path).map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Described {
        agency: agency_of(&certs[0]),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
