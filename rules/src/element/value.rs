//! Coded values and quantities: 性别 (GB/T 2261.1), 民族 (GB 3304),
//! 行政区划代码 (GB/T 2260), telephone numbers, 邮政编码 and amounts.

use super::calendar::digits;
use super::id::valid_province;
use super::{Issue, Normalized, compact_code, fold_width, issue, push_padded};

pub(super) fn gender(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = fold_width(raw);
    let code = match v.trim() {
        "0" | "未知" | "未知的性别" => "0",
        "1" | "男" | "男性" => "1",
        "2" | "女" | "女性" => "2",
        "9" | "未说明" | "未说明的性别" => "9",
        other => {
            return Err(issue(
                "CODE_SET",
                format!("{name} {other:?} 不在代码表中 (GB/T 2261.1): expected 0, 1, 2, 9 or 男/女"),
            ));
        }
    };
    Normalized::ok(code.to_owned())
}

/// GB/T 3304 names, in code order from 01.
pub(super) const ETHNIC_GROUPS: [&str; 56] = [
    "汉",
    "蒙古",
    "回",
    "藏",
    "维吾尔",
    "苗",
    "彝",
    "壮",
    "布依",
    "朝鲜",
    "满",
    "侗",
    "瑶",
    "白",
    "土家",
    "哈尼",
    "哈萨克",
    "傣",
    "黎",
    "傈僳",
    "佤",
    "畲",
    "高山",
    "拉祜",
    "水",
    "东乡",
    "纳西",
    "景颇",
    "柯尔克孜",
    "土",
    "达斡尔",
    "仫佬",
    "羌",
    "布朗",
    "撒拉",
    "毛南",
    "仡佬",
    "锡伯",
    "阿昌",
    "普米",
    "塔吉克",
    "怒",
    "乌孜别克",
    "俄罗斯",
    "鄂温克",
    "德昂",
    "保安",
    "裕固",
    "京",
    "塔塔尔",
    "独龙",
    "鄂伦春",
    "赫哲",
    "门巴",
    "珞巴",
    "基诺",
];

pub(super) fn ethnicity(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = fold_width(raw);
    let v = v.trim();
    if v.len() <= 2 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = v.parse().unwrap_or(0);
        if (1..=56).contains(&n) || n == 97 || n == 98 {
            let mut code = String::with_capacity(2);
            push_padded(&mut code, n.into(), 2);
            return Normalized::ok(code);
        }
    }
    let bare = v.strip_suffix('族').unwrap_or(v);
    let bare = match bare {
        "崩龙" => "德昂",
        "毛难" => "毛南",
        b => b,
    };
    if let Some(i) = ETHNIC_GROUPS.iter().position(|g| *g == bare) {
        let mut code = String::with_capacity(2);
        push_padded(&mut code, i as u64 + 1, 2);
        return Normalized::ok(code);
    }
    match v {
        "其他" => Normalized::ok("97".into()),
        "外国血统中国籍人士" | "外国血统" => Normalized::ok("98".into()),
        _ => Err(issue(
            "CODE_SET",
            format!("{name} {v:?} 不在代码表中 (GB/T 3304): expected 01-56, 97, 98 or a name such as 汉族"),
        )),
    }
}

// --- GB/T 7408 dates and times --------------------------------------------

pub(super) fn division(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = compact_code(raw);
    let std = "GB/T 2260";
    let b = v.as_bytes();
    if !(b.len() == 6 || b.len() == 9) || !b.iter().all(u8::is_ascii_digit) {
        return Err(issue(
            "FORMAT",
            format!("{name} {v:?} 无效 ({std}): expected 6 digits (or 9 with a township)"),
        ));
    }
    let province = digits(&b[0..2]).unwrap_or(0);
    if !valid_province(province) {
        return Err(issue("REGION", format!("{name} 省级代码 {province:02} 不存在 ({std})")));
    }
    Normalized::ok(v)
}

/// libphonenumber's mainland mobile pattern (python phonenumbers 9.0.43),
/// without a regex engine: prefixes allocated to mobile service.
pub(super) fn strict_mobile(v: &str) -> bool {
    let b = v.as_bytes();
    let (p2, p3, p4) = (&v[1..2], b[2], &v[1..4]);
    match p2 {
        "3" | "8" => true,
        "4" => matches!(p3, b'5' | b'7'),
        "5" | "9" => !matches!(p3, b'4'),
        "6" => matches!(p3, b'2' | b'5' | b'6' | b'7') || p4 == "610",
        "7" => matches!(p3, b'0'..=b'3' | b'5'..=b'8') || (p4 == "740" && matches!(b[4], b'0'..=b'5')),
        _ => false,
    }
}

pub(super) fn mobile_digits(raw: &str) -> String {
    let mut v = compact_code(raw);
    v.retain(|c| !matches!(c, '(' | ')'));
    for prefix in ["+86", "0086"] {
        if v.starts_with(prefix) {
            v.drain(..prefix.len());
            break;
        }
    }
    v
}

pub(super) fn mobile(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = mobile_digits(raw);
    let b = v.as_bytes();
    if b.len() != 11 || !b.iter().all(u8::is_ascii_digit) || b[0] != b'1' || !(b'3'..=b'9').contains(&b[1]) {
        return Err(issue(
            "MOBILE",
            format!("{name} {raw:?} 不是手机号码: expected 11 digits 1[3-9]xxxxxxxxx, optionally +86"),
        ));
    }
    let mut warnings = Vec::new();
    if !strict_mobile(&v) {
        warnings.push(issue(
            "MOBILE_PREFIX",
            format!("{name} 号段 {} 未见分配 (libphonenumber)", &v[..3]),
        ));
    }
    Ok(Normalized { value: v, warnings })
}

/// What [`mobile`] keeps as it is, with no warning.
pub(super) fn is_canonical_mobile(b: &[u8]) -> bool {
    b.len() == 11
        && b.iter().all(u8::is_ascii_digit)
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && std::str::from_utf8(b).is_ok_and(strict_mobile)
}

/// What [`phone`] keeps as it is, with no warning: a mobile number as
/// [`mobile`] keeps it, or a landline of digits and inner hyphens whose
/// digits do not make a mobile number (`phone` would write that one
/// without its hyphens or its 0086).
pub(super) fn is_canonical_phone(b: &[u8]) -> bool {
    if !b.iter().all(|&c| c.is_ascii_digit() || c == b'-') {
        return false;
    }
    let mut digits = b.iter().filter(|&&c| c != b'-');
    let count = digits.clone().count();
    let prefixed = digits.clone().take(4).eq(b"0086");
    let (count, first) = if prefixed {
        (count - 4, digits.nth(4))
    } else {
        (count, digits.next())
    };
    if count == 11 && first == Some(&b'1') {
        return is_canonical_mobile(b);
    }
    (7..=18).contains(&b.len()) && b.first() != Some(&b'-') && b.last() != Some(&b'-')
}

pub(super) fn phone(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = mobile_digits(raw);
    if v.len() == 11 && v.starts_with('1') && v.bytes().all(|b| b.is_ascii_digit()) {
        return mobile(name, raw);
    }
    // A landline: keep one hyphen between area code and number if written.
    let folded: String = fold_width(raw).chars().filter(|c| !c.is_whitespace()).collect();
    let folded = folded.strip_prefix("+86").unwrap_or(&folded).to_owned();
    let ok = folded.len() >= 7
        && folded.len() <= 18
        && folded.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        && !folded.starts_with('-')
        && !folded.ends_with('-');
    if !ok {
        return Err(issue(
            "PHONE",
            format!("{name} {raw:?} 不是电话号码: expected digits, optionally 0510-12345678"),
        ));
    }
    Normalized::ok(folded)
}

pub(super) fn postcode(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = compact_code(raw);
    if v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(issue(
            "POSTCODE",
            format!("{name} {raw:?} 不是邮政编码: expected 6 digits"),
        ));
    }
    Normalized::ok(v)
}

/// What [`amount`] keeps as it is: an optional `-` (not on zero), the
/// integer part without leading zeros, and exactly `scale` digits after a
/// point (none, and no point, for scale 0).
pub(super) fn is_canonical_amount(b: &[u8], scale: u8) -> bool {
    let (neg, body) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    let scale = usize::from(scale);
    let (int, frac) = if scale == 0 {
        (body, &[][..])
    } else {
        match body.iter().position(|&c| c == b'.') {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => return false,
        }
    };
    let zero = int == b"0" && frac.iter().all(|&c| c == b'0');
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && (int == b"0" || int[0] != b'0')
        && int.len() + scale <= 17
        && frac.len() == scale
        && frac.iter().all(u8::is_ascii_digit)
        && !(neg && zero)
}

pub(super) fn amount(name: &str, raw: &str, scale: u8) -> Result<Normalized, Issue> {
    let v: String = fold_width(raw)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',' && *c != '¥')
        .collect();
    let bad = |why: &str| {
        issue(
            "AMOUNT",
            format!("{name} 金额 {raw:?} 无效: {why}; expected at most 17 digits, {scale} after the point"),
        )
    };
    let (neg, body) = match v.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, v.strip_prefix('+').unwrap_or(&v)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad("not a number"));
    }
    if frac.trim_end_matches('0').len() > usize::from(scale) {
        return Err(bad("too many digits after the point"));
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if int.len() + usize::from(scale) > 17 {
        return Err(bad("too many digits"));
    }
    let mut frac = frac.to_owned();
    frac.truncate(usize::from(scale));
    while frac.len() < usize::from(scale) {
        frac.push('0');
    }
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let sign = if neg && !zero { "-" } else { "" };
    Normalized::ok(if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}
