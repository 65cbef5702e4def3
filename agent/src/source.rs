//! Sources: where records come from. Each configured source runs as one task
//! that reads its input, normalizes it and commits records, quarantine
//! entries and its capture position to the outbox in one transaction.
//!
//! Architecture invariant: sources never touch the network. They meet the
//! link only at the outbox.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SourceKind};
use crate::health::Health;
use crate::normalize::Mapping;
use crate::outbox::Outbox;

pub mod folder;
mod format;

/// Starts one task per configured source.
pub fn spawn(config: &Config, outbox: &Outbox, health: &Arc<Health>, tasks: &TaskTracker, token: &CancellationToken) {
    for source in &config.sources {
        // Config validation guarantees the resource exists.
        let Some(resource) = config.catalog.resource(&source.resource) else {
            continue;
        };
        let mapping = Mapping::new(&config.agency, source, resource);
        let stats = health.source(&source.name);
        match source.kind {
            SourceKind::Folder => {
                let folder = folder::Folder::new(source.clone(), mapping, outbox.clone(), stats);
                tasks.spawn(folder.run(token.clone()));
            }
        }
    }
}
