//! Mutexes that ignore poisoning: [`MutexExt::lock_unpoisoned`].
//!
//! A std `Mutex` is poisoned when a thread panics while holding it, and
//! every later `lock()` returns an error. The agent's mutexes guard state
//! that a panicking holder leaves usable (counters and texts for `/status`,
//! a SQLite connection, whose open transaction rolls back, a queue of
//! in-flight batches): the panic is a bug, reported where it happens, and
//! poisoning would only spread it to every task that touches the same
//! state. A mutex whose state a panic could leave half-updated must not
//! use this.
//!
//! It owns nothing else; async code that holds a lock across an `.await`
//! uses tokio's `Mutex`, which does not poison.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that takes the guard even if a holder panicked.
pub trait MutexExt<T: ?Sized> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
