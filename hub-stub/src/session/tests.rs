use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Lets every other task run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_session_waits_until_the_old_one_has_finished() {
    let (sessions, shutdown) = (Arc::new(Sessions::default()), CancellationToken::new());
    let a = sessions.open("ag", "ob", peer(1), &shutdown).await;
    a.state.touch();
    let (s, t) = (sessions.clone(), shutdown.clone());
    let b = tokio::spawn(async move { s.open("ag", "ob", peer(2), &t).await });
    settle().await;
    assert!(a.state.cancel.is_cancelled(), "the old session is told to stop");
    assert_eq!(a.state.replaced_by(), Some(peer(2)));
    assert!(!b.is_finished(), "the new session waits for the old writer");
    assert_eq!(sessions.duplicates(), 1, "the old session was in use");
    drop(a);
    let b = b.await.unwrap();
    assert!(!b.state.cancel.is_cancelled());
    // Another outbox is independent; an idle old session is no duplicate.
    let _other = sessions.open("ag", "ob2", peer(3), &shutdown).await;
    drop(b);
    let _c = sessions.open("ag", "ob", peer(4), &shutdown).await;
    assert_eq!(sessions.duplicates(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_session_dropped_while_waiting_still_holds_its_successor_back() {
    let (sessions, shutdown) = (Arc::new(Sessions::default()), CancellationToken::new());
    let a = sessions.open("ag", "ob", peer(1), &shutdown).await;
    let (s, t) = (sessions.clone(), shutdown.clone());
    let b = tokio::spawn(async move { s.open("ag", "ob", peer(2), &t).await });
    settle().await;
    // B's client goes away while B waits for A.
    b.abort();
    assert!(b.await.is_err_and(|e| e.is_cancelled()));
    let (s, t) = (sessions.clone(), shutdown.clone());
    let c = tokio::spawn(async move { s.open("ag", "ob", peer(3), &t).await });
    settle().await;
    assert!(!c.is_finished(), "C must not start while A's writer may still apply");
    drop(a);
    let c = c.await.unwrap();
    assert_eq!(c.state.replaced_by(), None);
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_cancels_every_session() {
    let (sessions, shutdown) = (Arc::new(Sessions::default()), CancellationToken::new());
    let a = sessions.open("ag", "ob", peer(1), &shutdown).await;
    shutdown.cancel();
    assert!(a.state.cancel.is_cancelled());
    assert_eq!(a.state.replaced_by(), None);
}
