//! Live sessions, one per (agency, outbox): a new Hello for an outbox that
//! has a live session takes the outbox over.
//!
//! Two streams applying one outbox at once would both be acknowledged
//! from one high-water mark while only one of them is stored. So the new
//! session cancels the old one and waits until the old session's writer has
//! finished (no store transaction of it in progress or to come) before its
//! Welcome reads the high-water mark. The old stream ends with ABORTED,
//! saying it was replaced.
//!
//! A takeover is normal when an agent reconnects before the hub noticed
//! its old connection die. When the old session sent a batch within
//! [`ACTIVE_WITHIN`], two agents are most likely streaming the same outbox
//! (a copied data directory): that is logged at ERROR and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// A session that sent a batch this recently is taken to be in use.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;

type Key = (String, String);

/// The live sessions of the hub.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, Live>>,
    next_id: AtomicU64,
    /// Takeovers of a session that was in use: two agents on one outbox.
    duplicates: AtomicU64,
}

/// A session as the registry holds it.
struct Live {
    id: u64,
    state: Arc<State>,
    /// Cancelled when the session's writer has finished, and those of the
    /// sessions it replaced (a session waits for them before it starts).
    finished: Vec<CancellationToken>,
}

/// What a session's reader, writer and the registry share.
pub struct State {
    pub peer: SocketAddr,
    /// Cancelled on takeover and on hub shutdown.
    pub cancel: CancellationToken,
    /// The peer of the session that replaced this one.
    replaced_by: OnceLock<SocketAddr>,
    last_batch: Mutex<Option<Instant>>,
}

impl State {
    /// Notes that the agent sent a batch.
    pub fn touch(&self) {
        *self.last_batch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn active(&self) -> bool {
        self.last_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < ACTIVE_WITHIN)
    }

    /// The peer of the session that took this one over, if one did.
    pub fn replaced_by(&self) -> Option<SocketAddr> {
        self.replaced_by.get().copied()
    }
}

/// A registered session. Its writer owns it: dropping it unregisters the
/// session and tells a successor that it has finished, once the sessions
/// it replaced have finished too (a session dropped while it waited for
/// them must not let a successor start before them).
pub struct Session {
    pub state: Arc<State>,
    id: u64,
    key: Key,
    registry: Arc<Sessions>,
    /// The sessions this one replaced, until they finish.
    predecessors: Vec<CancellationToken>,
    finished: CancellationToken,
}

impl Sessions {
    /// Registers a session of `agency`'s `outbox` from `peer`, taking the
    /// outbox over from a live session: returns once that session's writer
    /// (and any it replaced) has finished.
    pub async fn open(
        self: &Arc<Self>,
        agency: &str,
        outbox: &str,
        peer: SocketAddr,
        shutdown: &CancellationToken,
    ) -> Session {
        let key = (agency.to_owned(), outbox.to_owned());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(State {
            peer,
            cancel: shutdown.child_token(),
            replaced_by: OnceLock::new(),
            last_batch: Mutex::new(None),
        });
        let finished = CancellationToken::new();
        let old = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let old = live.remove(&key);
            let mut wait: Vec<CancellationToken> = old.as_ref().map(|o| o.finished.clone()).unwrap_or_default();
            wait.retain(|t| !t.is_cancelled());
            let mut mine = wait.clone();
            mine.push(finished.clone());
            live.insert(
                key.clone(),
                Live {
                    id,
                    state: state.clone(),
                    finished: mine,
                },
            );
            old.map(|o| (o.state, wait))
        };
        let Some((old, wait)) = old else {
            return self.session(state, id, key, Vec::new(), finished);
        };
        self.report_takeover(agency, outbox, &old, peer);
        let _ = old.replaced_by.set(peer);
        old.cancel.cancel();
        // Registered before waiting, so that a drop while waiting still
        // releases the outbox (in order).
        let session = self.session(state, id, key, wait.clone(), finished);
        for t in wait {
            t.cancelled().await;
        }
        session
    }

    fn session(
        self: &Arc<Self>,
        state: Arc<State>,
        id: u64,
        key: Key,
        predecessors: Vec<CancellationToken>,
        finished: CancellationToken,
    ) -> Session {
        Session {
            state,
            id,
            key,
            registry: self.clone(),
            predecessors,
            finished,
        }
    }

    /// Unregisters session `id` (if a newer one has not replaced it) and
    /// says it has finished.
    fn release(&self, key: &Key, id: u64, finished: &CancellationToken) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(key).is_some_and(|l| l.id == id) {
            live.remove(key);
        }
        drop(live);
        finished.cancel();
    }

    fn report_takeover(&self, agency: &str, outbox: &str, old: &State, new: SocketAddr) {
        warn!(agency, outbox, old_peer = %old.peer, new_peer = %new, "a new session takes the outbox over");
        if old.active() {
            let count = self.duplicates.fetch_add(1, Ordering::Relaxed) + 1;
            error!(
                agency,
                count, "two agents stream outbox {outbox} (peers {}, {new}): a copied data directory?", old.peer
            );
        }
    }

    /// Takeovers of a session in use since the hub started.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let wait: Vec<CancellationToken> = self.predecessors.drain(..).filter(|t| !t.is_cancelled()).collect();
        let (registry, key, id, finished) = (self.registry.clone(), self.key.clone(), self.id, self.finished.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !wait.is_empty() => {
                rt.spawn(async move {
                    for t in wait {
                        t.cancelled().await;
                    }
                    registry.release(&key, id, &finished);
                });
            }
            _ => registry.release(&key, id, &finished),
        }
    }
}
