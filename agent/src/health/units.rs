//! Figures in the units people read: bytes in binary units, durations in
//! their two largest units, counts with thousands separators. Shared by the
//! status page and the text of `qianzhi status`, so that both say the same.

/// Bytes in binary units: `0 B`, `12.5 MiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Seconds as the two largest units: `6s`, `1m 12s`, `3h 5m`, `2d 4h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// `part` of `whole` in whole percent, at most 100 (a file that grew while
/// it was read must not show more); `None` for an empty whole.
pub fn percent(part: u64, whole: u64) -> Option<u64> {
    (whole > 0).then(|| (u128::from(part) * 100 / u128::from(whole)).min(100) as u64)
}
