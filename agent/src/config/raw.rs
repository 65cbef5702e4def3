//! The config file as serde reads it: every key, its type and its span,
//! unknown keys refused. No rule and no default lives here: those are the
//! parent module's and [`super::source`]'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::source::{AfterDone, CaptureMode, Completion, Encoding, FileFormat, InstallMode};
use super::{Compression, LogFormat};

/// A duration written as `"10s"`, `"500ms"`, `"2m"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
    }
}

/// A size in bytes: an integer, or a string such as `"512MiB"`, `"2GB"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteSize(pub(super) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(n) => Ok(ByteSize(n)),
            Repr::S(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a size (examples: 1048576, \"512MiB\", \"2GB\")"))
            }),
        }
    }
}

/// A whole number of bytes with an optional unit (`KB`, `KiB`, … `TiB`):
/// the `bytesize` crate's units, without its fractions.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.contains('.') {
        return None;
    }
    s.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) agency: Spanned<String>,
    pub(super) data_dir: PathBuf,
    pub(super) catalog: Spanned<PathBuf>,
    pub(super) shutdown_grace: Option<HumanDuration>,
    #[serde(default)]
    pub(super) outbox: RawOutbox,
    pub(super) hub: RawHub,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default, rename = "source")]
    pub(super) sources: Vec<RawSource>,
    #[serde(default, rename = "subscription")]
    pub(super) subscriptions: Vec<super::subscription::RawSubscription>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) max_bytes: Option<Spanned<ByteSize>>,
    pub(super) reserve_free: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    pub(super) url: Spanned<String>,
    pub(super) server_name: Option<String>,
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) compression: Option<Compression>,
    pub(super) batch_records: Option<Spanned<usize>>,
    pub(super) batch_bytes: Option<ByteSize>,
    pub(super) linger: Option<HumanDuration>,
    pub(super) max_in_flight: Option<Spanned<usize>>,
    pub(super) keepalive: Option<HumanDuration>,
    pub(super) backoff_max: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) listen: Option<SocketAddr>,
    pub(super) link_down_after: Option<HumanDuration>,
    pub(super) queue_age_after: Option<HumanDuration>,
    pub(super) disk_min_free: Option<ByteSize>,
    pub(super) cert_warn_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) name: Spanned<String>,
    #[serde(rename = "type")]
    pub(super) kind: SourceKind,
    pub(super) resource: Spanned<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) capture: Option<CaptureMode>,
    pub(super) watermark: Option<Spanned<String>>,
    pub(super) lag: Option<HumanDuration>,
    pub(super) poll: Option<HumanDuration>,
    pub(super) install: Option<InstallMode>,
    pub(super) snapshot: Option<bool>,
    pub(super) format: Option<FileFormat>,
    pub(super) encoding: Option<Encoding>,
    pub(super) complete: Option<Completion>,
    pub(super) settle: Option<HumanDuration>,
    pub(super) rescan: Option<HumanDuration>,
    pub(super) after: Option<AfterDone>,
    pub(super) op_column: Option<String>,
    pub(super) max_value: Option<Spanned<ByteSize>>,
    pub(super) max_row: Option<Spanned<ByteSize>>,
    pub(super) max_attempts: Option<Spanned<u32>>,
    pub(super) columns: Spanned<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    pub(super) transforms: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

/// The `type` of a `[[source]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SourceKind {
    Folder,
    Sqlite,
    Postgres,
    Mysql,
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}
