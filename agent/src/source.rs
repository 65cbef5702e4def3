//! Sources: where records come from. Each configured source runs as one task
//! that reads its input, normalizes it and commits records, quarantine
//! entries and its capture position to the outbox in one transaction.
//!
//! Each source has its own cancel token, so a config reload can stop,
//! change or add one source while the others and the queue go on. A source
//! is stopped (its current chunk committed) before its successor starts, so
//! two tasks never read the same folder.
//!
//! Architecture invariant: sources never touch the network. They meet the
//! link only at the outbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Input, SourceConfig};
use crate::health::Health;
use crate::normalize::Mapping;
use crate::outbox::Outbox;
use rules::catalog::Catalog;

mod commit;
pub(crate) mod db;
mod folder;
pub mod format;

/// A running source.
struct Running {
    config: SourceConfig,
    /// The catalog digest the source's mapping was built with.
    catalog: String,
    token: CancellationToken,
    task: JoinHandle<()>,
}

/// The running sources, by name.
pub struct Sources {
    agency: String,
    outbox: Outbox,
    health: Arc<Health>,
    tasks: TaskTracker,
    parent: CancellationToken,
    running: BTreeMap<String, Running>,
}

impl Sources {
    pub fn new(
        agency: &str,
        outbox: &Outbox,
        health: &Arc<Health>,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) -> Sources {
        Sources {
            agency: agency.to_owned(),
            outbox: outbox.clone(),
            health: health.clone(),
            tasks: tasks.clone(),
            parent: parent.clone(),
            running: BTreeMap::new(),
        }
    }

    /// Makes the running sources those of `configs`: stops removed and
    /// changed ones (waiting for their current chunk to commit), starts
    /// added and changed ones. Returns the names started and stopped.
    pub async fn apply(&mut self, configs: &[SourceConfig], catalog: &Catalog) -> (Vec<String>, Vec<String>) {
        let (mut started, mut stopped) = (Vec::new(), Vec::new());
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let keep = configs.iter().any(|c| {
                c.name == name
                    && self
                        .running
                        .get(&name)
                        .is_some_and(|r| r.config == *c && r.catalog == catalog.digest())
            });
            if !keep && let Some(r) = self.running.remove(&name) {
                r.token.cancel();
                // A panicked source has nothing left to stop.
                let _ = r.task.await;
                stopped.push(name.clone());
                if !configs.iter().any(|c| c.name == name) {
                    self.health.remove_source(&name);
                }
            }
        }
        for config in configs {
            if self.running.contains_key(&config.name) {
                continue;
            }
            // Config validation guarantees the resource exists.
            let Some(resource) = catalog.resource(&config.resource) else {
                continue;
            };
            let mapping = Mapping::new(&self.agency, &config.name, &config.mapping, resource);
            let stats = self.health.source(&config.name);
            let token = self.parent.child_token();
            let task = match &config.input {
                Input::Folder(f) => {
                    let folder = folder::Folder::new(&config.name, f.clone(), mapping, self.outbox.clone(), stats);
                    self.tasks.spawn(folder.run(token.clone()))
                }
                Input::Database(d) => {
                    let source = db::DbSource::new(config.clone(), d.clone(), mapping, self.outbox.clone(), stats);
                    self.tasks.spawn(source.run(token.clone()))
                }
            };
            self.running.insert(
                config.name.clone(),
                Running {
                    config: config.clone(),
                    catalog: catalog.digest().to_owned(),
                    token,
                    task,
                },
            );
            started.push(config.name.clone());
        }
        (started, stopped)
    }
}
