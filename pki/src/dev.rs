//! A development PKI made with rcgen: a CA, a hub certificate and agency
//! certificates. For tests, demos and trials; a production agency gets its
//! certificate from the city's CA (see deploy/README.md).
//!
//! An agency certificate names its agency in a SAN URI
//! `urn:qianzhi:agency:<CODE>` and, for tools that show only the subject,
//! also in the CN. The hub takes the SAN URI first, then the CN.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::AGENCY_URI_PREFIX;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue hub and agency certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

/// Validity of an issued certificate, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub to_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            from_days: -1,
            to_days: 825,
        }
    }
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Qianzhi development PKI");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(
            &mut params,
            Validity {
                from_days: -1,
                to_days: 3650,
            },
        );
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Ca { issuer, key_pem })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for the hub, valid for DNS names and IP
    /// addresses in `names`.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            params.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, Validity::default());
        self.sign(params)
    }

    /// A client certificate naming `agency`.
    pub fn issue_agency(&self, agency: &str, validity: Validity) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .subject_alt_names
            .push(SanType::URI(format!("{AGENCY_URI_PREFIX}{agency}").try_into()?));
        params.distinguished_name.push(DnType::CommonName, agency);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, v: Validity) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(v.from_days);
    params.not_after = now + Duration::days(v.to_days);
}

/// Writes a file, private (0600) when `private`.
pub fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    if private {
        // An existing file keeps its mode on open: narrow it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Makes a development PKI in `out`: `ca.pem`, `ca.key`, `hub.pem`,
/// `hub.key` and `agency-CODE.pem`/`.key` per agency. Returns the files
/// written.
pub fn write_dev(out: &Path, agencies: &[String], hub_names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let ca = Ca::new("Qianzhi development CA")?;
    let mut written = Vec::new();
    let mut put = |name: String, contents: &str, private: bool| -> std::io::Result<()> {
        let p = out.join(name);
        write_file(&p, contents, private)?;
        written.push(p);
        Ok(())
    };
    put("ca.pem".into(), &ca.cert_pem(), false)?;
    put("ca.key".into(), ca.key_pem(), true)?;
    let hub = ca.issue_server(hub_names)?;
    put("hub.pem".into(), &hub.cert_pem, false)?;
    put("hub.key".into(), &hub.key_pem, true)?;
    for agency in agencies {
        let a = ca.issue_agency(agency, Validity::default())?;
        put(format!("agency-{agency}.pem"), &a.cert_pem, false)?;
        put(format!("agency-{agency}.key"), &a.key_pem, true)?;
    }
    Ok(written)
}
