//! The control socket: how `qianzhi quarantine retry` and `discard` change
//! the quarantine while the agent runs, without stopping the service.
//!
//! The running agent listens on `DATA_DIR/control.sock`, a Unix socket of
//! mode 0600 in a private directory: only the agent's own account and root
//! can connect. A caller sends one JSON line ([`Request`]) and reads one
//! JSON line back ([`Reply`]). The caller is identified by the kernel (the
//! socket's peer credentials), not by what it says, for the discard record;
//! only root may add who it runs for (`sudo`), since root could write the
//! record anyway.
//!
//! The agent runs a request with its running config (what it normalizes
//! with now) and through the outbox's writer thread, one request at a time.
//! A retry is refused while the config file on disk differs from the
//! running one: the operator fixed the file and expects the fix to count,
//! which needs a reload first.
//!
//! With the agent stopped there is no socket (or a stale one nobody
//! listens on): [`request`] says so, and the command changes the file
//! itself under the data directory's lock.

use std::io::{BufRead, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::outbox::{Outbox, QuarantineFilter};
use crate::quarantine;

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";

/// A request is one line of at most this many bytes.
const MAX_REQUEST: u64 = 64 << 10;
/// A caller has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Callers served at once; more wait for a turn to connect.
const CONCURRENT: usize = 4;

/// What a caller asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Retry {
        filter: QuarantineFilter,
    },
    Discard {
        filter: QuarantineFilter,
        reason: String,
        /// The account that ran `sudo` (`$SUDO_USER`); heard only from root.
        sudo_user: Option<String>,
    },
}

/// The agent's answer: the line to print, or the error.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// The error is bad command-line use (an unknown rule).
    #[serde(default)]
    pub usage: bool,
    /// The agent's process id, for "through the running agent (pid N)".
    pub pid: u32,
}

/// The socket's path for a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket and returns the task that serves it until
/// `token` is cancelled (then the socket file is removed). `config` is the
/// running config, replaced on every reload.
pub fn serve(
    data_dir: &Path,
    outbox: Outbox,
    config: watch::Receiver<Arc<Config>>,
    token: CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + use<>> {
    let path = path(data_dir);
    // A socket left by an agent that was killed: this process holds the data
    // directory's lock, so no other agent listens there.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let server = Arc::new(Server {
        outbox,
        config,
        one_at_a_time: Mutex::new(()),
    });
    Ok(async move {
        let turns = Arc::new(Semaphore::new(CONCURRENT));
        loop {
            let turn = tokio::select! {
                () = token.cancelled() => break,
                turn = turns.clone().acquire_owned() => turn,
            };
            let Ok(turn) = turn else { break };
            let stream = tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        continue;
                    }
                },
            };
            let server = server.clone();
            let token = token.clone();
            tokio::spawn(async move {
                // At shutdown a caller that has not sent its request yet is
                // dropped, so the outbox closes without waiting for it.
                tokio::select! {
                    () = token.cancelled() => {}
                    () = server.answer(stream) => {}
                }
                drop(turn);
            });
        }
        let _ = std::fs::remove_file(&path);
    })
}

struct Server {
    outbox: Outbox,
    config: watch::Receiver<Arc<Config>>,
    /// Changes run one at a time: each picks entries from what the previous
    /// one left.
    one_at_a_time: Mutex<()>,
}

impl Server {
    async fn answer(&self, mut stream: UnixStream) {
        let reply = match self.read_request(&mut stream).await {
            Ok((request, uid)) => self.run(request, uid).await,
            Err(e) => Err(e),
        };
        let reply = match reply {
            Ok(message) => Reply {
                ok: true,
                message,
                usage: false,
                pid: std::process::id(),
            },
            Err((message, usage)) => Reply {
                ok: false,
                message,
                usage,
                pid: std::process::id(),
            },
        };
        let mut line = serde_json::to_vec(&reply).unwrap_or_default();
        line.push(b'\n');
        // A caller that went away misses its answer; the change stands.
        let _ = stream.write_all(&line).await;
    }

    /// The request and the caller's uid, from the kernel.
    async fn read_request(&self, stream: &mut UnixStream) -> Result<(Request, u32), (String, bool)> {
        let uid = stream
            .peer_cred()
            .map_err(|e| (format!("cannot tell who is calling: {e}"), false))?
            .uid();
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(&mut *stream).take(MAX_REQUEST);
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => return Err((format!("no request within {REQUEST_TIMEOUT:?}"), false)),
            Ok(Err(e)) => return Err((format!("cannot read the request: {e}"), false)),
            Ok(Ok(_)) if !line.ends_with(b"\n") => {
                return Err((format!("a request is one line of at most {MAX_REQUEST} bytes"), false));
            }
            Ok(Ok(_)) => {}
        }
        let request = serde_json::from_slice(&line).map_err(|e| {
            let text = String::from_utf8_lossy(&line);
            (
                format!("not a request ({e}): {}", crate::source::format::bounded(&text, 200)),
                false,
            )
        })?;
        Ok((request, uid))
    }

    async fn run(&self, request: Request, uid: u32) -> Result<String, (String, bool)> {
        let _turn = self.one_at_a_time.lock().await;
        let config = self.config.borrow().clone();
        let mut outbox = self.outbox.clone();
        let usage = |e: quarantine::Error| {
            let usage = matches!(e, quarantine::Error::UnknownRule { .. });
            (e.to_string(), usage)
        };
        match request {
            Request::Retry { filter } => {
                let retried = tokio::task::spawn_blocking(move || {
                    unchanged_on_disk(&config)?;
                    quarantine::retry(&config, &mut outbox, &filter).map_err(usage)
                })
                .await
                .map_err(|e| (format!("the retry failed: {e}"), false))??;
                Ok(retried.summary())
            }
            Request::Discard {
                filter,
                reason,
                sudo_user,
            } => {
                let who = who(uid, sudo_user.as_deref(), None);
                let summary = tokio::task::spawn_blocking(move || {
                    quarantine::discard(&mut outbox, &filter, &reason, &who)
                        .map(|n| quarantine::discard_summary(n, &reason))
                        .map_err(usage)
                })
                .await
                .map_err(|e| (format!("the discard failed: {e}"), false))??;
                Ok(summary)
            }
        }
    }
}

/// Refuses a retry while the config file (or the catalog it names) says
/// something other than what the agent runs with.
fn unchanged_on_disk(running: &Config) -> Result<(), (String, bool)> {
    let file = running.origin.display();
    let reload = "reload the agent first (`systemctl reload qianzhi`, or SIGHUP) so that the retry uses what was fixed";
    match Config::load(&running.origin) {
        Err(e) => Err((format!("{file} does not load ({e}); fix it, then {reload}"), false)),
        Ok(disk) if disk.catalog.digest() != running.catalog.digest() || disk.sources != running.sources => Err((
            format!("{file} or its catalog changed since the agent loaded them: {reload}"),
            false,
        )),
        Ok(_) => Ok(()),
    }
}

/// Sends `request` to the agent running with `data_dir`. `Ok(None)` when
/// no agent listens there (no socket, or one left by an agent that was
/// killed): the caller works on the file itself.
pub fn request(data_dir: &Path, request: &Request) -> Result<Option<Reply>, String> {
    let path = path(data_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "cannot reach the running agent at {}: {e} (run this as the agent's account or root)",
                path.display()
            ));
        }
    };
    let failed = |e: std::io::Error| format!("the running agent at {} did not answer: {e}", path.display());
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(failed)?;
    // A retry of many entries takes a while; an agent that stops
    // mid-request closes the socket, which ends the wait.
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(failed)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .take(MAX_REQUEST)
        .read_line(&mut answer)
        .map_err(failed)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| format!("the running agent at {} answered nothing usable: {e}", path.display()))
}

/// Who `uid` is, for the discard record: its name in /etc/passwd (else
/// `fallback`, else `uid N`), and for root, the account that ran sudo.
pub fn who(uid: u32, sudo_user: Option<&str>, fallback: Option<String>) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| user_name(&passwd, uid))
        .or(fallback)
        .unwrap_or_else(|| format!("uid {uid}"));
    match sudo_user.filter(|by| uid == 0 && !by.is_empty() && *by != name) {
        Some(by) => format!("{name} (sudo by {})", crate::source::format::bounded(by, 64)),
        None => name,
    }
}

/// The name of `uid` in a passwd file (`name:x:uid:gid:…`).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse() == Ok(uid) && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_passwd_and_sudo_counts_only_for_root() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(passwd, 7), None);
        assert_eq!(who(0, Some("alice"), None), "root (sudo by alice)");
        assert_eq!(who(0, Some("root"), None), "root");
        let not_root = who(65534, Some("mallory"), Some("x".into()));
        assert!(!not_root.contains("mallory"), "{not_root}");
        assert_eq!(who(0, Some("a\nb"), None), "root (sudo by a\\nb)");
    }
}
