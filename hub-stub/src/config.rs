//! hub.toml: where the hub listens, its TLS files, its store and catalog,
//! and what one agency may cost it (`[limits]`, see [`crate::limits`]).
//! Relative paths are resolved against the file's folder; unknown keys are
//! refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::limits::Limits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub listen: SocketAddr,
    pub store: PathBuf,
    pub catalog: PathBuf,
    pub tls: TlsFiles,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl HubConfig {
    pub fn load(path: &Path) -> anyhow::Result<HubConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut c = HubConfig::from_toml_str(&text).with_context(|| format!("{}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.store,
            &mut c.catalog,
            &mut c.tls.ca,
            &mut c.tls.cert,
            &mut c.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// Parses and validates hub.toml's text; paths are left as written.
    pub fn from_toml_str(text: &str) -> anyhow::Result<HubConfig> {
        let c: HubConfig = toml::from_str(text)?;
        c.limits.validate()?;
        Ok(c)
    }
}
