//! The agent's wall clock: microseconds since the Unix epoch, the unit of
//! every time the outbox stores (`enqueued_us`, `at_us`, `created_us`) and of
//! the freshness and age figures computed from them.
//!
//! It owns nothing else: durations and deadlines use `std::time::Instant`
//! or tokio's clock, which tests can pause; this one cannot be paused.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in µs since the epoch; 0 on a clock set before 1970.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
