//! What a benchmark reads about a process from /proc: its CPU time and its
//! memory. Figures of a process that has gone read as zero.

/// CPU seconds a process has used (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    // USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

/// (VmRSS, VmHWM) of a process in MiB.
pub fn memory(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The peak resident memory (VmHWM) of a process in MiB.
pub fn peak_rss(pid: u32) -> f64 {
    memory(pid).1
}

/// A process's CPU time from a mark on: what one phase of a benchmark cost
/// it, whatever else the machine was doing (a wall-clock rate is not
/// comparable on a busy machine; CPU-seconds per record mostly are).
pub struct Cpu {
    pid: u32,
    at: f64,
}

impl Cpu {
    pub fn mark(pid: u32) -> Cpu {
        Cpu {
            pid,
            at: cpu_seconds(pid),
        }
    }

    /// A process's CPU time from its start on.
    pub fn since_start(pid: u32) -> Cpu {
        Cpu { pid, at: 0.0 }
    }

    /// CPU seconds used since the mark.
    pub fn used(&self) -> f64 {
        cpu_seconds(self.pid) - self.at
    }

    /// CPU seconds since the mark per million of `records`.
    pub fn per_million(&self, records: u64) -> f64 {
        self.used() / records.max(1) as f64 * 1e6
    }
}
