//! Dates and date-times (GB/T 7408): the forms people and systems write,
//! brought to `YYYYMMDD` and `YYYYMMDDhhmmss[.ffffff]`, instants converted to
//! Beijing time (UTC+08:00).

use super::{Issue, Normalized, fold_width, issue, push_padded};

pub(super) fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

pub fn valid_ymd(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=9999).contains(&y) && (1..=days).contains(&d)
}

/// Chinese numerals in dates: 二〇一六年六月二十三日.
pub(super) fn chinese_digits(s: &str) -> Option<String> {
    let digit = |c: char| {
        "〇一二三四五六七八九"
            .chars()
            .position(|d| d == c)
            .or((c == '零').then_some(0))
    };
    let mut out = String::new();
    let mut parts = s.split_inclusive(['年', '月', '日']);
    for part in parts.by_ref() {
        let (num, sep) = part.split_at(part.len() - part.chars().last()?.len_utf8());
        let cs: Vec<char> = num.chars().collect();
        let value = if sep == "年" {
            cs.iter()
                .map(|&c| digit(c).map(|d| char::from(b'0' + d as u8)))
                .collect::<Option<String>>()?
        } else {
            // 一 .. 三十一: optional tens with 十.
            let n = match cs.as_slice() {
                ['十'] => 10,
                [a] => digit(*a)?,
                ['十', b] => 10 + digit(*b)?,
                [a, '十'] => digit(*a)? * 10,
                [a, '十', b] => digit(*a)? * 10 + digit(*b)?,
                _ => return None,
            };
            n.to_string()
        };
        out.push_str(&value);
        out.push_str(sep);
    }
    Some(out)
}

/// Parses a date in any accepted form into (year, month, day).
pub(super) fn date(name: &str, raw: &str) -> Result<(u32, u32, u32), Issue> {
    // The canonical and ISO forms, without allocating.
    let b = raw.as_bytes();
    let fast = match b.len() {
        8 => Some((digits(&b[0..4]), digits(&b[4..6]), digits(&b[6..8]))),
        10 if b[4] == b'-' && b[7] == b'-' => Some((digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10]))),
        _ => None,
    };
    if let Some((Some(y), Some(m), Some(d))) = fast
        && valid_ymd(y, m, d)
    {
        return Ok((y, m, d));
    }
    let bad = |why: &str| {
        issue(
            "DATE",
            format!(
                "{name} 日期 {raw:?} 无效 (GB/T 7408): {why}; expected YYYYMMDD, YYYY-MM-DD, YYYY/M/D, YYYY.M.D or YYYY年M月D日"
            ),
        )
    };
    let mut v = fold_width(raw).trim().to_owned();
    if !v.is_ascii()
        && v.chars().any(|c| "〇一二三四五六七八九十零".contains(c))
        && let Some(converted) = chinese_digits(&v)
    {
        v = converted;
    }
    let b = v.as_bytes();
    let (y, m, d) = if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        (digits(&b[0..4]), digits(&b[4..6]), digits(&b[6..8]))
    } else {
        let v = v.strip_suffix('日').unwrap_or(&v);
        let parts: Vec<&str> = v.split(['-', '/', '.', '年', '月']).collect();
        let [y, m, d] = parts.as_slice() else {
            return Err(bad("not a date"));
        };
        if y.len() != 4 || m.is_empty() || m.len() > 2 || d.is_empty() || d.len() > 2 {
            return Err(bad("not a date"));
        }
        (digits(y.as_bytes()), digits(m.as_bytes()), digits(d.as_bytes()))
    };
    match (y, m, d) {
        (Some(y), Some(m), Some(d)) if valid_ymd(y, m, d) => Ok((y, m, d)),
        (Some(_), Some(_), Some(_)) => Err(bad("no such day")),
        _ => Err(bad("not a date")),
    }
}

/// `YYYYMMDD`, a day that exists: what [`date`] keeps as it is.
pub(super) fn is_canonical_date(b: &[u8]) -> bool {
    b.len() == 8
        && match (digits(&b[0..4]), digits(&b[4..6]), digits(&b[6..8])) {
            (Some(y), Some(m), Some(d)) => valid_ymd(y, m, d),
            _ => false,
        }
}

/// `YYYYMMDDhhmmss`, and `.` with one to six digits not ending in 0: what
/// [`datetime`] keeps as it is.
pub(super) fn is_canonical_datetime(b: &[u8]) -> bool {
    let (fields, fraction) = b.split_at(b.len().min(14));
    let two = |i: usize| digits(&fields[i..i + 2]).unwrap_or(99);
    fields.len() == 14
        && is_canonical_date(&fields[..8])
        && fields[8..].iter().all(u8::is_ascii_digit)
        && two(8) <= 23
        && two(10) <= 59
        && two(12) <= 59
        && match fraction {
            [] => true,
            [b'.', f @ ..] => (1..=6).contains(&f.len()) && f.iter().all(u8::is_ascii_digit) && f[f.len() - 1] != b'0',
            _ => false,
        }
}

/// Seconds east of UTC of China Standard Time, the catalog's local time.
pub(super) const CST_OFFSET: i64 = 8 * 3600;
pub(super) const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub(super) fn days_from_civil(y: u32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (`civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Splits a UTC offset off the end of a time: `Z`, or `+`/`-` and `hh`,
/// `hhmm`, `hh:mm` or `hh:mm:ss`. Returns the time and the offset in
/// seconds east of UTC; None when the offset is malformed.
pub(super) fn split_offset(t: &str) -> Option<(&str, Option<i64>)> {
    if let Some(rest) = t.strip_suffix(['Z', 'z']) {
        return Some((rest.trim_end(), Some(0)));
    }
    let Some(i) = t.rfind(['+', '-']) else {
        return Some((t, None));
    };
    let (time, zone) = (t[..i].trim_end(), &t[i + 1..]);
    let two = |f: &str| if f.len() == 2 { digits(f.as_bytes()) } else { None };
    let (h, m, s) = if zone.contains(':') {
        match zone.split(':').collect::<Vec<_>>().as_slice() {
            [h, m] => (two(h)?, two(m)?, 0),
            [h, m, s] => (two(h)?, two(m)?, two(s)?),
            _ => return None,
        }
    } else {
        match zone.len() {
            2 => (two(zone)?, 0, 0),
            4 if zone.is_char_boundary(2) => (two(&zone[..2])?, two(&zone[2..])?, 0),
            _ => return None,
        }
    };
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    let seconds = i64::from(h * 3600 + m * 60 + s);
    Some((time, Some(if t.as_bytes()[i] == b'-' { -seconds } else { seconds })))
}

/// Microseconds of a fraction of a second's digits, rounded half up; one
/// million when it rounds up to the next second.
pub(super) fn fraction_micros(f: &str) -> i64 {
    let b = f.as_bytes();
    let mut micros = 0;
    for i in 0..6 {
        micros = micros * 10 + b.get(i).map_or(0, |c| i64::from(c - b'0'));
    }
    micros + i64::from(b.get(6).is_some_and(|c| *c >= b'5'))
}

pub(super) fn datetime(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = fold_width(raw);
    let v = v.trim();
    let bad = || {
        issue(
            "DATETIME",
            format!(
                "{name} 日期时间 {raw:?} 无效 (GB/T 7408): expected YYYYMMDDhhmmss, YYYY-MM-DD hh:mm:ss or \
                 YYYY-MM-DDThh:mm:ss, optionally with a fraction of a second (.586856) and an offset \
                 (Z, +08:00, +0800, +08; converted to UTC+08:00)"
            ),
        )
    };
    // Split the date from the time: at a space or a T, or after 8 digits.
    let (d, t) = if let Some((d, t)) = v.split_once([' ', 'T']) {
        (d, t.trim())
    } else if v.len() >= 10 && v.is_char_boundary(8) && v.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        (&v[..8], &v[8..])
    } else if let Some(i) = v.find('日') {
        (&v[..i + '日'.len_utf8()], v[i + '日'.len_utf8()..].trim())
    } else {
        return Err(bad());
    };
    let (y, mo, da) = date(name, d).map_err(|_| bad())?;
    let (t, offset) = split_offset(t).ok_or_else(bad)?;
    let t: String = t.replace(['时', '分'], ":").trim_end_matches(['秒', ':']).to_owned();
    let (t, fraction) = match t.split_once(['.', ',']) {
        Some((t, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (t, Some(f)),
        Some(_) => return Err(bad()),
        None => (t.as_str(), None),
    };
    let fields: Vec<&str> = if t.contains(':') {
        t.split(':').collect()
    } else if t.len() == 6 || t.len() == 4 {
        t.as_bytes()
            .chunks(2)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect()
    } else {
        return Err(bad());
    };
    let nums: Option<Vec<u32>> = fields
        .iter()
        .map(|f| (f.len() <= 2).then(|| digits(f.as_bytes())).flatten())
        .collect();
    let (h, mi, s) = match nums.as_deref() {
        Some([h, mi]) if fraction.is_none() => (*h, *mi, 0),
        Some([h, mi, s]) => (*h, *mi, *s),
        _ => return Err(bad()),
    };
    if h > 23 || mi > 59 || s > 59 {
        return Err(bad());
    }
    // Microseconds since 1970-01-01 in local (China Standard) time.
    let shift = offset.map_or(0, |o| CST_OFFSET - o);
    let seconds = days_from_civil(y, mo, da) * 86_400 + i64::from(h * 3600 + mi * 60 + s) + shift;
    let micros = seconds * 1_000_000 + fraction.map_or(0, fraction_micros);
    let (days, rest) = (micros.div_euclid(MICROS_PER_DAY), micros.rem_euclid(MICROS_PER_DAY));
    let (y, mo, da) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return Err(bad());
    }
    let (secs, us) = (rest / 1_000_000, rest % 1_000_000);
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut value = String::with_capacity(21);
    push_padded(&mut value, y as u64, 4);
    for part in [mo, da] {
        push_padded(&mut value, part.into(), 2);
    }
    for part in [h, mi, s] {
        push_padded(&mut value, part as u64, 2);
    }
    if us != 0 {
        value.push('.');
        push_padded(&mut value, us as u64, 6);
        value.truncate(value.trim_end_matches('0').len());
    }
    Normalized::ok(value)
}

// --- GB/T 2260, phones, postcodes, amounts ---------------------------------
