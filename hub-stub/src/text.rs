//! Untrusted text made safe to show: what an agent sends ends up in
//! rejection reasons, status messages, the store and the hub's log, so
//! every such value is cut to a bounded prefix (with its original length)
//! and its control characters are escaped, so that it can neither blow up
//! what the hub writes nor forge a log line or a terminal escape.
//!
//! Cutting is done before escaping would have to touch the whole value:
//! a 60 MiB value costs a bounded amount of work and memory here.

use std::fmt::Write;

/// Characters of an untrusted value shown in a message or a log line.
pub const SHOWN_CHARS: usize = 64;

/// Bytes of a rejection reason kept (sent, stored, logged).
pub const REASON_BYTES: usize = 256;

/// `s` with control and bidirectional-formatting characters escaped, cut
/// after `max_chars` characters with a note of its length in bytes.
pub fn clip(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2) + 32);
    let mut cut = false;
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
            cut = true;
            break;
        }
        push_escaped(&mut out, c);
    }
    if cut {
        let _ = write!(out, "… ({} bytes)", s.len());
    }
    out
}

/// An untrusted value as shown in messages and logs: [`clip`] to
/// [`SHOWN_CHARS`].
pub fn shown(s: &str) -> String {
    clip(s, SHOWN_CHARS)
}

/// A rejection reason bounded to about [`REASON_BYTES`]: control
/// characters escaped, cut at a character boundary, with a note of the
/// original length. The catalog's rules quote the offending value, so the
/// reason is as untrusted as the value.
pub fn reason(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(REASON_BYTES) + 48);
    let mut cut = false;
    for c in s.chars() {
        if out.len() + c.len_utf8() > REASON_BYTES {
            cut = true;
            break;
        }
        push_escaped(&mut out, c);
    }
    if cut {
        let _ = write!(out, "… (reason of {} bytes truncated)", s.len());
    }
    out
}

/// Whether `c` must not reach a log line or a terminal as it is: C0 and C1
/// controls (newline, ESC, DEL…), line separators and bidirectional
/// overrides that make text read other than it is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn push_escaped(out: &mut String, c: char) {
    if is_unsafe(c) {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests;
