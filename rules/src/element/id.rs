//! Identifier codes with check characters: 公民身份号码 (GB 11643), 统一社会信用代码
//! (GB 32100) and 组织机构代码 (GB 11714).

use super::calendar::{digits, valid_ymd};
use super::{Issue, Normalized, compact_code, issue};

// --- GB 11643 公民身份号码 -------------------------------------------------

pub(super) const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
pub(super) const ID_CHECK: &[u8; 11] = b"10X98765432";

/// The GB 11643 check character of 17 digits.
pub fn citizen_check(body: &[u8]) -> char {
    let s: u32 = body.iter().zip(ID_WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    ID_CHECK[(s % 11) as usize] as char
}

/// Province-level codes (GB/T 2260 digits 1–2).
pub(super) fn valid_province(p: u32) -> bool {
    matches!(p, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82)
}

pub(super) fn citizen_id(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let mut v = compact_code(raw);
    let std = "GB 11643";
    let mut warnings = Vec::new();
    if v.len() == 15 && v.bytes().all(|b| b.is_ascii_digit()) {
        let mut up = format!("{}19{}", &v[..6], &v[6..]);
        up.push(citizen_check(up.as_bytes()));
        warnings.push(issue(
            "UPGRADED_15",
            format!("{name} 由 15 位升级为 18 位 ({std}): {v} → {up}"),
        ));
        v = up;
    }
    if v.chars().count() != 18 {
        return Err(issue(
            "LENGTH",
            format!(
                "{name} 长度错误 ({std}): expected 18 characters, got {}",
                v.chars().count()
            ),
        ));
    }
    let b = v.as_bytes();
    if let Some(pos) = b[..17].iter().position(|c| !c.is_ascii_digit()) {
        return Err(issue(
            "FORMAT",
            format!(
                "{name} 第 {} 位不是数字 ({std}): expected 17 digits and a check character",
                pos + 1
            ),
        ));
    }
    if !(b[17].is_ascii_digit() || b[17] == b'X') {
        return Err(issue(
            "FORMAT",
            format!("{name} 校验位无效 ({std}): expected 0-9 or X, got {}", b[17] as char),
        ));
    }
    let want = citizen_check(&b[..17]);
    if b[17] as char != want {
        return Err(issue(
            "CHECK_DIGIT",
            format!("{name} 校验位错误 ({std}): expected {want}, got {}", b[17] as char),
        ));
    }
    let province = digits(&b[0..2]).unwrap_or(0);
    if !valid_province(province) {
        return Err(issue(
            "REGION",
            format!("{name} 地址码错误 ({std}, GB/T 2260): province {province:02} does not exist"),
        ));
    }
    let (y, m, d) = (
        digits(&b[6..10]).unwrap_or(0),
        digits(&b[10..12]).unwrap_or(0),
        digits(&b[12..14]).unwrap_or(0),
    );
    if !valid_ymd(y, m, d) || y < 1800 {
        return Err(issue(
            "BIRTH_DATE",
            format!("{name} 出生日期错误 ({std}): {} is not a date", &v[6..14]),
        ));
    }
    Ok(Normalized { value: v, warnings })
}

/// What [`citizen_id`] keeps as it is, with no warning: 17 digits, the
/// right check character, a province and a birth date from 1800 on.
pub(super) fn is_canonical_citizen_id(b: &[u8]) -> bool {
    b.len() == 18
        && b[..17].iter().all(u8::is_ascii_digit)
        && citizen_check(&b[..17]) as u8 == b[17]
        && valid_province(digits(&b[0..2]).unwrap_or(0))
        && match (digits(&b[6..10]), digits(&b[10..12]), digits(&b[12..14])) {
            (Some(y), Some(m), Some(d)) => valid_ymd(y, m, d) && y >= 1800,
            _ => false,
        }
}

// --- GB 32100 统一社会信用代码 and GB 11714 组织机构代码 ---------------------

/// What [`uscc`] keeps as it is, with no warning (the caller also rules
/// out what reads as scientific notation).
pub(super) fn is_canonical_uscc(b: &[u8]) -> bool {
    b.len() == 18
        && b.iter().all(|c| USCC_CHARS.contains(c))
        && uscc_categories(b[0]).is_some_and(|c| c.contains(&b[1]))
        && b[2..8].iter().all(u8::is_ascii_digit)
        && uscc_check(&b[..17]).is_some_and(|want| b[17] == want as u8)
        && org_check(&b[8..16]).is_some_and(|want| b[16] == want as u8)
}

pub(super) const USCC_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
pub(super) const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// The GB 32100 check character of 17 characters, if they are all allowed.
pub fn uscc_check(body: &[u8]) -> Option<char> {
    let mut s = 0;
    for (c, w) in body.iter().zip(USCC_WEIGHTS) {
        s += USCC_CHARS.iter().position(|x| x == c)? as u32 * w;
    }
    Some(USCC_CHARS[((31 - s % 31) % 31) as usize] as char)
}

/// Allowed category codes (position 2) per authority code (position 1).
pub(super) fn uscc_categories(authority: u8) -> Option<&'static [u8]> {
    Some(match authority {
        b'1' => b"1239",
        b'2' | b'4' | b'8' | b'A' => b"19",
        b'3' => b"123459",
        b'5' => b"1239",
        b'6' | b'7' => b"129",
        b'9' => b"123",
        b'N' => b"1239",
        b'Y' => b"1",
        _ => return None,
    })
}

pub(super) fn uscc(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = compact_code(raw);
    let std = "GB 32100";
    let n = v.chars().count();
    if n != 18 {
        return Err(issue(
            "LENGTH",
            format!("{name} 长度错误 ({std}): expected 18 characters, got {n}"),
        ));
    }
    let b = v.as_bytes();
    if let Some(pos) = b.iter().position(|c| !USCC_CHARS.contains(c)) {
        return Err(issue(
            "FORMAT",
            format!(
                "{name} 第 {} 位字符 {} 不允许 ({std}): expected 0-9 or A-Z without I, O, Z, S, V",
                pos + 1,
                b[pos] as char
            ),
        ));
    }
    let Some(categories) = uscc_categories(b[0]) else {
        return Err(issue(
            "AUTHORITY",
            format!("{name} 登记管理部门代码 {} 不存在 ({std} 表 2)", b[0] as char),
        ));
    };
    if !categories.contains(&b[1]) {
        return Err(issue(
            "CATEGORY",
            format!(
                "{name} 机构类别代码 {} 不属于登记管理部门 {} ({std} 表 3)",
                b[1] as char, b[0] as char
            ),
        ));
    }
    if !b[2..8].iter().all(u8::is_ascii_digit) {
        return Err(issue(
            "FORMAT",
            format!("{name} 第 3-8 位应为行政区划代码 ({std}): expected 6 digits"),
        ));
    }
    // Checked above: every character is allowed.
    let want = uscc_check(&b[..17]).unwrap_or('?');
    if b[17] as char != want {
        return Err(issue(
            "CHECK_DIGIT",
            format!("{name} 校验码错误 ({std}): expected {want}, got {}", b[17] as char),
        ));
    }
    let mut warnings = Vec::new();
    if let Some(w) = org_code(name, &v[8..17]).ok().and_then(|(_, bad)| bad) {
        warnings.push(issue(
            "ORG_CODE_CHECK",
            format!("{name} 内含的组织机构代码校验不符 (GB 11714): {}", w.message),
        ));
    }
    Ok(Normalized { value: v, warnings })
}

/// The GB 11714 check character of 8 characters.
pub fn org_check(body: &[u8]) -> Option<char> {
    const W: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    let mut s = 0;
    for (c, w) in body.iter().zip(W) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        s += v * w;
    }
    Some(match 11 - s % 11 {
        10 => 'X',
        11 => '0',
        c => char::from_digit(c, 10).unwrap_or('?'),
    })
}

/// Normalizes an organization code; the second value is a failed check
/// (an error on its own, a warning inside a USCC).
pub(super) fn org_code(name: &str, raw: &str) -> Result<(String, Option<Issue>), Issue> {
    let v = compact_code(raw);
    let std = "GB 11714";
    if v.chars().count() != 9 {
        return Err(issue(
            "LENGTH",
            format!(
                "{name} 长度错误 ({std}): expected 9 characters, got {}",
                v.chars().count()
            ),
        ));
    }
    let b = v.as_bytes();
    let Some(want) = org_check(&b[..8]) else {
        return Err(issue(
            "FORMAT",
            format!("{name} 本体代码含非法字符 ({std}): expected 0-9 or A-Z"),
        ));
    };
    let bad = (b[8] as char != want).then(|| {
        issue(
            "CHECK_DIGIT",
            format!("{name} 校验码错误 ({std}): expected {want}, got {}", b[8] as char),
        )
    });
    Ok((v, bad))
}

// --- Code sets --------------------------------------------------------------
