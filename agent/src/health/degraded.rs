//! The degraded conditions of `/status`: what an operator must act on while
//! the agent keeps working, each as one line with a code and its reason
//! (`LINK_DOWN: …`, `DISK_LOW: …`).
//!
//! The checks that touch the disk (statvfs of the data directory) or parse
//! the agency certificate run on the [`Health::sample`] tick (every few
//! seconds, from the systemd task) and once at start; a request formats
//! their last results against the thresholds and does no such I/O, so
//! `/status` costs the same however often it is read. The quarantine's
//! growth is also noticed on that tick.
//!
//! Not here: readiness (`status`), which refuses traffic; a degraded agent
//! is still ready. The outbox's recovery report is read per request (it
//! must clear the moment `qianzhi outbox acknowledge` runs).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Health;
use crate::sync::MutexExt;

/// What the degraded checks need to know, beyond the counters.
#[derive(Debug, Clone)]
pub struct Watch {
    pub thresholds: crate::config::Thresholds,
    pub data_dir: PathBuf,
    pub cert: PathBuf,
}

/// The checks' own state.
pub(super) struct Checks {
    /// `None` when nothing is watched (then only the conditions that need
    /// no thresholds are reported).
    watched: Option<Watched>,
    trend: Mutex<QuarantineTrend>,
}

struct Watched {
    watch: Watch,
    probed: Mutex<Probed>,
}

/// The results of the checks that do I/O, as of the last sample.
#[derive(Debug, Clone)]
struct Probed {
    /// Free bytes on the data directory's filesystem, or why unknown.
    free: Result<u64, String>,
    /// The agency certificate's notAfter (Unix seconds), or why unreadable.
    not_after: Result<i64, String>,
}

impl Probed {
    fn probe(w: &Watch) -> Probed {
        Probed {
            free: crate::disk::free_bytes(&w.data_dir).map_err(|e| e.to_string()),
            not_after: pki::identity::not_after(&w.cert),
        }
    }
}

/// How long ago the quarantine last grew, noticed by [`Health::sample`].
#[derive(Debug, Default)]
struct QuarantineTrend {
    count: u64,
    grew_at: Option<SystemTime>,
    grew_by: u64,
}

/// How long a growing quarantine stays in the degraded list.
const QUARANTINE_WINDOW: Duration = Duration::from_secs(600);

impl Checks {
    /// Probes once, so that the first `/status` already knows the disk and
    /// the certificate.
    pub(super) fn new(watch: Option<Watch>) -> Checks {
        Checks {
            watched: watch.map(|watch| Watched {
                probed: Mutex::new(Probed::probe(&watch)),
                watch,
            }),
            trend: Mutex::default(),
        }
    }
}

impl Health {
    /// Notes changes that only show over time (the quarantine growing) and
    /// checks the disk and the certificate again. Called every few seconds
    /// by the systemd task.
    pub fn sample(&self) {
        let count = self.outbox.stats().quarantined;
        {
            let mut t = self.degraded.trend.lock_unpoisoned();
            if count > t.count {
                let recent = t
                    .grew_at
                    .is_some_and(|at| at.elapsed().unwrap_or_default() < QUARANTINE_WINDOW);
                t.grew_by = if recent {
                    t.grew_by + (count - t.count)
                } else {
                    count - t.count
                };
                t.grew_at = Some(SystemTime::now());
            }
            t.count = count;
        }
        if let Some(w) = &self.degraded.watched {
            // Probed before the lock is taken: a slow disk must not hold up
            // a request.
            let probed = Probed::probe(&w.watch);
            *w.probed.lock_unpoisoned() = probed;
        }
    }

    /// Conditions an operator must know about, each with its reason.
    pub(super) fn degraded(
        &self,
        q: &crate::outbox::Stats,
        link_down_since: Option<SystemTime>,
        link_error: Option<&str>,
    ) -> Vec<String> {
        let mut out: Vec<String> = self.outbox.unacknowledged_recovery().into_iter().collect();
        if let Some(e) = self.reload_error.lock_unpoisoned().as_ref() {
            out.push(format!(
                "RELOAD_REFUSED: the new config was refused, the previous one runs: {e}"
            ));
        }
        for (name, source) in self.sources.lock_unpoisoned().iter() {
            for problem in source.problems() {
                out.push(format!("FILE_RETRYING: source {name}: {problem}"));
            }
            if let Some(held) = source.rejected_held()
                && held.files > 0
            {
                out.push(format!(
                    "FILES_REJECTED: source {name}: {} file{} in {}, each with its reason in NAME.error.txt; \
                     fix and drop again, or remove",
                    held.files,
                    if held.files == 1 { "" } else { "s" },
                    held.folder.display()
                ));
            }
        }
        if q.disk_low {
            out.push(
                "SOURCES_PAUSED: the data directory's filesystem is below outbox.reserve_free; delivery goes on".into(),
            );
        }
        let Some(watched) = &self.degraded.watched else {
            return out;
        };
        let w = &watched.watch;
        let t = &w.thresholds;
        let down_for = link_down_since.map(|s| s.elapsed().unwrap_or_default());
        if let Some(down_for) = down_for
            && down_for >= t.link_down_after
        {
            out.push(format!(
                "LINK_DOWN: no link to the hub for {}s{}",
                down_for.as_secs(),
                link_error.map_or_else(String::new, |e| format!(": {e}"))
            ));
        }
        if let Some(us) = q.oldest_us {
            let age = ((crate::clock::now_us() - us).max(0) / 1_000_000) as u64;
            if age >= t.queue_age_after.as_secs() {
                out.push(format!("QUEUE_AGE: the oldest unacknowledged record is {age}s old"));
            }
        }
        let probed = watched.probed.lock_unpoisoned().clone();
        match probed.free {
            Ok(free) if free < t.disk_min_free => out.push(format!(
                "DISK_LOW: {} MiB free on the filesystem of {} (below {} MiB)",
                free >> 20,
                w.data_dir.display(),
                t.disk_min_free >> 20
            )),
            Ok(_) => {}
            Err(e) => out.push(format!(
                "DISK_UNKNOWN: cannot read free space of {}: {e}",
                w.data_dir.display()
            )),
        }
        match probed.not_after {
            Ok(not_after) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let days = (not_after - now).div_euclid(86_400);
                if days < i64::from(t.cert_warn_days) {
                    let when =
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64));
                    out.push(if days < 0 {
                        format!(
                            "CERT_EXPIRED: the agency certificate {} expired at {when}",
                            w.cert.display()
                        )
                    } else {
                        format!(
                            "CERT_EXPIRING: the agency certificate {} expires at {when} (in {days} days)",
                            w.cert.display()
                        )
                    });
                }
            }
            Err(e) => out.push(format!("CERT_UNREADABLE: {e}")),
        }
        {
            let trend = self.degraded.trend.lock_unpoisoned();
            // Once a person has emptied the quarantine there is nothing
            // left to act on, however recent the growth.
            if let Some(at) = trend.grew_at
                && at.elapsed().unwrap_or_default() < QUARANTINE_WINDOW
                && q.quarantined > 0
            {
                out.push(format!(
                    "QUARANTINE_GROWING: {} records quarantined in the last {} minutes ({} held); see qianzhi quarantine list",
                    trend.grew_by,
                    QUARANTINE_WINDOW.as_secs() / 60,
                    q.quarantined
                ));
            }
        }
        for r in self.freshness.lock_unpoisoned().report(crate::clock::now_us()) {
            if r.overdue {
                out.push(format!(
                    "RESOURCE_OVERDUE: {} {} has not changed within its update cycle ({}; article 30)",
                    r.resource, r.name, r.cycle
                ));
            }
        }
        out
    }
}
