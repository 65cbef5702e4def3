//! The operator's commands on a store: sharing agreements and the report.
//!
//! Times on the command line: a date `2026-01-01` is midnight China
//! Standard Time (UTC+8), which is when an agreement signed for that day
//! starts; a timestamp is RFC 3339 in UTC (`2026-01-01T08:30:00Z`). The
//! hub's store keeps microseconds since the Unix epoch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use rules::catalog::{Catalog, UpdateCycle};
use serde::Deserialize;

use crate::share::check_agreement;
use crate::store::Store;
use crate::store::feed::{Agreement, Provided, Received};

/// China Standard Time's offset from UTC.
const CST_OFFSET_US: i64 = 8 * 3600 * 1_000_000;

#[derive(Debug, Subcommand)]
pub enum AgreementCommand {
    /// Add an agreement.
    Add {
        /// The agreement's id, e.g. its document number.
        #[arg(long)]
        id: String,
        /// The resource code (有条件共享 in the catalog).
        #[arg(long)]
        resource: String,
        /// The receiving agency's code.
        #[arg(long)]
        agency: String,
        /// The items it may receive, comma separated (the key items always).
        #[arg(long, value_delimiter = ',')]
        items: Vec<String>,
        /// What the receiver uses the data for (article 20).
        #[arg(long)]
        purpose: String,
        /// First day (China Standard Time) or RFC 3339 instant.
        #[arg(long)]
        from: String,
        /// End, exclusive: a day (China Standard Time) or RFC 3339 instant.
        #[arg(long)]
        until: String,
    },
    /// Add every `[[agreement]]` of a TOML file (keys as for `add`).
    Import { file: PathBuf },
    /// List the agreements.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agreement now: delivery under it stops within seconds.
    Revoke { id: String },
}

/// An `[[agreement]]` of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgreement {
    id: String,
    resource: String,
    agency: String,
    #[serde(default)]
    items: Vec<String>,
    purpose: String,
    from: String,
    until: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgreementFile {
    #[serde(default)]
    agreement: Vec<FileAgreement>,
}

/// Opens the store of a command that reads or manages it: a missing store
/// is an error, not a new empty one.
pub fn open_existing(path: &Path) -> anyhow::Result<Store> {
    if !path.is_file() {
        bail!("no store at {}", path.display());
    }
    Ok(Store::open(path)?)
}

/// Runs `qianzhi-hub agreement …`.
pub fn agreement(
    store: &Store,
    catalog: &Catalog,
    command: AgreementCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        AgreementCommand::Add {
            id,
            resource,
            agency,
            items,
            purpose,
            from,
            until,
        } => {
            let a = FileAgreement {
                id,
                resource,
                agency,
                items,
                purpose,
                from,
                until,
            };
            add(store, catalog, a, out)
        }
        AgreementCommand::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let parsed: AgreementFile = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
            for a in parsed.agreement {
                let id = a.id.clone();
                add(store, catalog, a, out).with_context(|| format!("{}: agreement {id}", file.display()))?;
            }
            Ok(())
        }
        AgreementCommand::List { json } => {
            let list = store.agreements()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(());
            }
            if list.is_empty() {
                writeln!(out, "no agreements")?;
            }
            let now = now_us();
            for a in list {
                let state = match a.revoked_us {
                    Some(t) => format!("revoked {}", when(t)),
                    None if a.in_force(now) => "in force".to_owned(),
                    None if now < a.valid_from_us => "not yet in force".to_owned(),
                    None => "expired".to_owned(),
                };
                writeln!(
                    out,
                    "{}  {}  to {}  items {}  {} .. {}  ({state})\n    purpose: {}",
                    a.id,
                    a.resource,
                    a.agency,
                    if a.items.is_empty() {
                        "(key items only)".to_owned()
                    } else {
                        a.items.join(",")
                    },
                    when(a.valid_from_us),
                    when(a.until_us),
                    a.purpose
                )?;
            }
            Ok(())
        }
        AgreementCommand::Revoke { id } => {
            if !store.revoke_agreement(&id)? {
                bail!("no agreement {id} that is not already revoked");
            }
            writeln!(out, "agreement {id} revoked: delivery under it stops within seconds")?;
            Ok(())
        }
    }
}

fn add(store: &Store, catalog: &Catalog, a: FileAgreement, out: &mut dyn Write) -> anyhow::Result<()> {
    let agreement = Agreement {
        valid_from_us: parse_when(&a.from).context("from")?,
        until_us: parse_when(&a.until).context("until")?,
        id: a.id,
        resource: a.resource,
        agency: a.agency,
        items: a.items,
        purpose: a.purpose,
        revoked_us: None,
        added_us: now_us(),
    };
    check_agreement(catalog, &agreement).map_err(anyhow::Error::msg)?;
    if !store.add_agreement(&agreement)? {
        bail!("an agreement {} already exists (ids are never reused)", agreement.id);
    }
    writeln!(
        out,
        "agreement {} added: {} to {}, {} .. {}",
        agreement.id,
        agreement.resource,
        agreement.agency,
        when(agreement.valid_from_us),
        when(agreement.until_us)
    )?;
    Ok(())
}

/// `2026-01-01` (midnight China Standard Time) or an RFC 3339 instant.
pub fn parse_when(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (text, offset) = if s.len() == 10 {
        (format!("{s}T00:00:00Z"), CST_OFFSET_US)
    } else {
        (s.to_owned(), 0)
    };
    let t = humantime::parse_rfc3339_weak(&text)
        .with_context(|| format!("{s:?} is neither a date (2026-01-01) nor an RFC 3339 instant"))?;
    let us = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    Ok(us - offset)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// An instant for the operator, in UTC.
fn when(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long a resource may go without a change before it is overdue
/// against its update cycle. 实时 (real time) is taken as a day.
pub fn cycle_limit(cycle: UpdateCycle) -> Duration {
    let days = match cycle {
        UpdateCycle::RealTime | UpdateCycle::Daily => 1,
        UpdateCycle::Weekly => 7,
        UpdateCycle::Monthly => 31,
        UpdateCycle::Quarterly => 92,
        UpdateCycle::HalfYearly => 183,
        UpdateCycle::Yearly => 366,
    };
    Duration::from_secs(days * 86_400)
}

#[derive(Debug, serde::Serialize)]
struct AgencyReport<'a> {
    agency: &'a str,
    provided: Vec<ProvidedLine<'a>>,
    received: Vec<&'a Received>,
}

#[derive(Debug, serde::Serialize)]
struct ProvidedLine<'a> {
    resource: &'a str,
    changes: u64,
    last_change_us: Option<i64>,
    cycle_days: u64,
    overdue: bool,
}

/// Runs `qianzhi-hub report`: per agency, what it provided (changes, last
/// change, whether overdue against the update cycle; every catalog resource
/// it provides is listed, including those it never sent) and what it
/// received and from whom (records applied, last delivery, changes behind).
pub fn report(store: &Store, catalog: &Catalog, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let data = store.report()?;
    let now = now_us();
    let sent: BTreeMap<(&str, &str), &Provided> = data
        .provided
        .iter()
        .map(|p| ((p.agency.as_str(), p.resource.as_str()), p))
        .collect();
    let mut agencies: BTreeMap<&str, AgencyReport<'_>> = BTreeMap::new();
    for r in catalog.resources() {
        let p = sent.get(&(r.provider.as_str(), r.code.as_str()));
        let limit = cycle_limit(r.cycle);
        let last = p.map(|p| p.last_change_us);
        let overdue = last.is_none_or(|t| now - t > limit.as_micros() as i64);
        agencies
            .entry(r.provider.as_str())
            .or_insert_with(|| AgencyReport {
                agency: r.provider.as_str(),
                provided: Vec::new(),
                received: Vec::new(),
            })
            .provided
            .push(ProvidedLine {
                resource: r.code.as_str(),
                changes: p.map_or(0, |p| p.changes),
                last_change_us: last,
                cycle_days: limit.as_secs() / 86_400,
                overdue,
            });
    }
    for r in &data.received {
        agencies
            .entry(r.agency.as_str())
            .or_insert_with(|| AgencyReport {
                agency: r.agency.as_str(),
                provided: Vec::new(),
                received: Vec::new(),
            })
            .received
            .push(r);
    }
    if json {
        let list: Vec<&AgencyReport<'_>> = agencies.values().collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    for a in agencies.values() {
        writeln!(out, "agency {}", a.agency)?;
        if !a.provided.is_empty() {
            writeln!(out, "  provided")?;
        }
        for p in &a.provided {
            let last = p.last_change_us.map_or("never".to_owned(), when);
            let flag = if p.overdue {
                format!("OVERDUE (update cycle {} days)", p.cycle_days)
            } else {
                "on time".to_owned()
            };
            writeln!(out, "    {}  {} changes  last {last}  {flag}", p.resource, p.changes)?;
        }
        if !a.received.is_empty() {
            writeln!(out, "  received")?;
        }
        for r in &a.received {
            writeln!(
                out,
                "    {} from {}{}  {} records  last delivery {}  applied up to {}  {} changes behind",
                r.resource,
                if r.providers.is_empty() {
                    "-".to_owned()
                } else {
                    r.providers.join(",")
                },
                if r.agreements.is_empty() {
                    String::new()
                } else {
                    format!(" under {}", r.agreements.join(","))
                },
                r.records,
                r.last_delivery_us.map_or("never".to_owned(), when),
                r.applied_seq,
                r.behind
            )?;
        }
    }
    Ok(())
}
