//! Freshness (article 30 (四): not updating a resource within its deadline is
//! a violation): when each resource this agency provides last changed, and
//! whether that is longer ago than its update cycle allows.
//!
//! The last-change time of a resource is an outbox position (source
//! [`POSITIONS`], key the resource code), committed with the records that
//! changed it, so it survives restarts. A resource with no change yet counts
//! from the day the outbox was created.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use rules::catalog::{Catalog, UpdateCycle};

/// The outbox position namespace of last-change times.
pub const POSITIONS: &str = "__freshness";

/// The position update saying that `resource` changed at `at_us`: it
/// commits with the records that changed it.
pub fn changed(resource: &str, at_us: i64) -> crate::outbox::PositionUpdate {
    crate::outbox::PositionUpdate {
        source: POSITIONS.to_owned(),
        key: resource.to_owned(),
        value: Some(at_us.to_string()),
    }
}

/// How long a resource may go without a change. 实时 resources are expected
/// to change at least daily; a month is 31 days, a quarter 92, half a year
/// 183 and a year 366, so that a calendar period never counts as late.
pub fn deadline(cycle: UpdateCycle) -> Duration {
    let days = match cycle {
        UpdateCycle::RealTime | UpdateCycle::Daily => 1,
        UpdateCycle::Weekly => 7,
        UpdateCycle::Monthly => 31,
        UpdateCycle::Quarterly => 92,
        UpdateCycle::HalfYearly => 183,
        UpdateCycle::Yearly => 366,
    };
    Duration::from_secs(days * 24 * 3600)
}

pub fn cycle_name(cycle: UpdateCycle) -> &'static str {
    match cycle {
        UpdateCycle::RealTime => "实时",
        UpdateCycle::Daily => "每日",
        UpdateCycle::Weekly => "每周",
        UpdateCycle::Monthly => "每月",
        UpdateCycle::Quarterly => "每季度",
        UpdateCycle::HalfYearly => "每半年",
        UpdateCycle::Yearly => "每年",
    }
}

/// One provided resource's freshness, as /status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceFreshness {
    pub resource: String,
    pub name: String,
    pub cycle: String,
    /// The last change, µs since the epoch; `None` if none was recorded.
    pub last_change_us: Option<i64>,
    pub deadline_seconds: u64,
    pub overdue: bool,
}

/// Tracks the resources `agency` provides.
#[derive(Debug)]
pub struct Tracker {
    resources: Vec<(String, String, UpdateCycle)>,
    last: std::collections::BTreeMap<String, i64>,
    since_us: i64,
}

impl Tracker {
    /// `last` holds the stored last-change times; `since_us` is when the
    /// outbox was created.
    pub fn new(
        catalog: &Catalog,
        agency: &str,
        last: impl IntoIterator<Item = (String, i64)>,
        since_us: i64,
    ) -> Tracker {
        Tracker {
            resources: catalog
                .resources()
                .filter(|r| r.provider == agency)
                .map(|r| (r.code.clone(), r.name.clone(), r.cycle))
                .collect(),
            last: last.into_iter().collect(),
            since_us,
        }
    }

    pub fn changed(&mut self, resource: &str, at_us: i64) {
        let t = self.last.entry(resource.to_owned()).or_insert(at_us);
        *t = (*t).max(at_us);
    }

    pub fn report(&self, now_us: i64) -> Vec<ResourceFreshness> {
        self.resources
            .iter()
            .map(|(code, name, cycle)| {
                let last = self.last.get(code).copied();
                let deadline = deadline(*cycle);
                let age_us = now_us - last.unwrap_or(self.since_us);
                ResourceFreshness {
                    resource: code.clone(),
                    name: name.clone(),
                    cycle: cycle_name(*cycle).to_owned(),
                    last_change_us: last,
                    deadline_seconds: deadline.as_secs(),
                    overdue: age_us > deadline.as_micros() as i64,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
