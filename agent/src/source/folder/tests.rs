use std::time::{Duration, Instant, SystemTime};

use super::{Pending, RETRY_MAX, Trouble};

const SETTLE: Duration = Duration::from_secs(5);

fn at(t0: Instant, secs: u64) -> Instant {
    t0 + Duration::from_secs(secs)
}

/// The settle rule: complete once size and mtime held still for `settle`,
/// counted from the last change any scan saw.
#[test]
fn a_file_settles_only_after_holding_still_for_the_whole_wait() {
    let t0 = Instant::now();
    let m0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let mut p = Pending::new(10, m0, t0);
    assert_eq!(p.left(10, m0, at(t0, 3), SETTLE), Duration::from_secs(2));
    // It grew: the wait starts again from this scan.
    assert_eq!(p.left(20, m0, at(t0, 4), SETTLE), SETTLE);
    assert_eq!(p.left(20, m0, at(t0, 8), SETTLE), Duration::from_secs(1));
    // Rewritten in place (same size, new mtime): again.
    let m1 = m0 + Duration::from_secs(1);
    assert_eq!(p.left(20, m1, at(t0, 8), SETTLE), SETTLE);
    assert_eq!(p.left(20, m1, at(t0, 13), SETTLE), Duration::ZERO);
    assert_eq!(p.left(20, m1, at(t0, 60), SETTLE), Duration::ZERO);
}

/// A scan that sees a file for the first time never takes it at once.
#[test]
fn a_file_first_seen_waits_the_whole_settle_time() {
    let t0 = Instant::now();
    let mut p = Pending::new(1, SystemTime::UNIX_EPOCH, t0);
    assert_eq!(p.left(1, SystemTime::UNIX_EPOCH, t0, SETTLE), SETTLE);
}

/// A file that cannot be taken is retried after 1 s, 2 s, 4 s … up to the
/// cap, and the folder goes on meanwhile.
#[test]
fn a_failing_file_backs_off_to_the_cap() {
    let t0 = Instant::now();
    let mut t = Trouble::new(t0);
    let waits: Vec<Duration> = (0..12).map(|i| t.failed(at(t0, i))).collect();
    assert_eq!(&waits[..4], [1, 2, 4, 8].map(Duration::from_secs));
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*waits.last().unwrap(), RETRY_MAX);
    assert_eq!(t.next, at(t0, 11) + RETRY_MAX);
}
