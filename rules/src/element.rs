//! Data elements (数据元): the built-in dictionary of common public data
//! elements and the rules that bring a raw value to its canonical form.
//!
//! Each rule is pure: `normalize(raw)` returns the canonical value (with
//! warnings that travel with the record) or an [`Issue`] saying which rule
//! failed, the standard it comes from, and what was expected. The agent
//! normalizes with these rules and the hub checks with the same ones: a
//! canonical value normalizes to itself.
//!
//! Canonical forms, used everywhere:
//! - codes (公民身份号码, 统一社会信用代码, 组织机构代码): upper case, no spaces or
//!   hyphens, half-width; 组织机构代码 as its 9 characters;
//! - dates: GB/T 7408 basic `YYYYMMDD`;
//! - date-times: `YYYYMMDDhhmmss`, and when the value has a nonzero
//!   fraction of a second (GB/T 7408 allows decimal fractions), `.` and the
//!   fraction in microseconds without trailing zeros:
//!   `20261125171546.586856`, `20261125171546.5`. A fraction longer than 6
//!   digits is rounded half up to the microsecond, as PostgreSQL and MySQL
//!   round what they store. A value without an offset is a local time and
//!   keeps its fields. A value with an offset (`Z`, `+00:00`, `+0800`,
//!   `+08`, `-05:00`, PostgreSQL's `+08:05:43`) is an instant, written as
//!   the same instant in China Standard Time (UTC+08:00, the catalog's
//!   local time) without an offset: `2026-11-25T17:15:46.586856+00:00` is
//!   `20261126011546.586856`. Accepted: `YYYYMMDDhhmmss`, `YYYYMMDDThhmmss`,
//!   `YYYY-MM-DD hh:mm[:ss]`, `YYYY-MM-DDThh:mm[:ss]` (any accepted date
//!   form, 年月日 and 时分秒 too), each with an optional fraction after the
//!   seconds (`.` or `,`) and an optional offset. This covers PostgreSQL
//!   `timestamp`/`timestamptz` (`to_jsonb` and text output), MySQL/MariaDB
//!   `DATETIME(6)`/`TIMESTAMP(6)` (`JSON_OBJECT` and SELECT output, MySQL's
//!   `.000000` included), SQLite text (`datetime('now')`,
//!   `strftime('%Y-%m-%d %H:%M:%f')`, ISO with `T` and `Z`) and Excel.
//!   The databases' offset-less values are taken as written: SQLite's
//!   `datetime('now')` is UTC and a MySQL `TIMESTAMP` is rendered in the
//!   session's time zone, which the agent cannot know;
//! - 性别代码 and 民族代码: the code digits (`1`, `01`);
//! - phone numbers: digits (and `-` between area code and number);
//! - amounts: plain decimal with exactly the element's scale (`1234.50`);
//! - names: the value with surrounding Unicode white space trimmed, nothing
//!   else changed.
//!
//! Width folding (全角 → 半角) is applied only to code-like values, never to
//! Chinese prose; NFKC is never applied (it turns Ⅰ into I).

use std::fmt;

#[cfg(test)]
mod tests;

/// Why a value is refused, or what a warning says. `code` is for scripts,
/// `message` (Chinese) for the clerk who fixes the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A canonical value and the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub value: String,
    pub warnings: Vec<Issue>,
}

impl Normalized {
    fn ok(value: String) -> Result<Normalized, Issue> {
        Ok(Normalized {
            value,
            warnings: Vec::new(),
        })
    }
}

/// How a data element's values are checked and normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// GB 11643 公民身份号码.
    CitizenId,
    /// GB 32100 统一社会信用代码 (with Amendment 1).
    Uscc,
    /// GB 11714 组织机构代码.
    OrgCode,
    /// GB/T 2261.1 性别代码.
    Gender,
    /// GB/T 3304 民族代码.
    Ethnicity,
    /// GB/T 7408 date, `YYYYMMDD`.
    Date,
    /// GB/T 7408 date and time, `YYYYMMDDhhmmss[.ffffff]` (see the module
    /// doc for fractions and offsets).
    DateTime,
    /// GB/T 2260 行政区划代码 (structure only, not membership).
    Division,
    /// Mainland mobile number.
    Mobile,
    /// Any telephone number.
    Phone,
    /// 邮政编码.
    Postcode,
    /// Names and free text: trimmed, nothing else.
    Text,
    /// An amount with this many digits after the point.
    Amount(u8),
}

/// A data element of the built-in dictionary.
#[derive(Debug, Clone, Copy)]
pub struct Element {
    /// Identifier (pinyin initials, as GA/T 543 writes `GMSFHM`).
    pub id: &'static str,
    pub name: &'static str,
    /// Representation format (GB/T 19488 notation).
    pub format: &'static str,
    pub standard: &'static str,
    pub rule: Rule,
    /// Maximum length in characters, from the format.
    pub max_len: usize,
}

const fn el(
    id: &'static str,
    name: &'static str,
    format: &'static str,
    standard: &'static str,
    rule: Rule,
    max_len: usize,
) -> Element {
    Element {
        id,
        name,
        format,
        standard,
        rule,
        max_len,
    }
}

/// The built-in dictionary.
pub const DICTIONARY: &[Element] = &[
    el("GMSFHM", "公民身份号码", "c18", "GB 11643-1999", Rule::CitizenId, 18),
    el("TYSHXYDM", "统一社会信用代码", "an18", "GB 32100-2015", Rule::Uscc, 18),
    el("ZZJGDM", "组织机构代码", "an9", "GB 11714-1997", Rule::OrgCode, 9),
    el("XBDM", "性别代码", "n1", "GB/T 2261.1-2003", Rule::Gender, 1),
    el("MZDM", "民族代码", "n2", "GB/T 3304-1991", Rule::Ethnicity, 2),
    el("CSRQ", "出生日期", "YYYYMMDD", "GB/T 7408", Rule::Date, 8),
    el("RQ", "日期", "YYYYMMDD", "GB/T 7408", Rule::Date, 8),
    el(
        "RQSJ",
        "日期时间",
        "YYYYMMDDhhmmss[.ffffff]",
        "GB/T 7408",
        Rule::DateTime,
        21,
    ),
    el("XZQHDM", "行政区划代码", "n6", "GB/T 2260", Rule::Division, 9),
    el("SJHM", "手机号码", "n11", "GB/T 39046-2020", Rule::Mobile, 11),
    el("LXDH", "联系电话", "an..18", "GB/T 39046-2020", Rule::Phone, 18),
    el("YZBM", "邮政编码", "n6", "GB/T 39046-2020", Rule::Postcode, 6),
    el("XM", "姓名", "a..30", "GB/T 19488.2-2008", Rule::Text, 30),
    el("JGMC", "机构名称", "an..100", "GB/T 19488.2-2008", Rule::Text, 100),
    el("DZ", "地址", "an..400", "GB/T 39046-2020", Rule::Text, 400),
    el("JE", "金额", "n..17,2", "GB/T 19488.2-2008", Rule::Amount(2), 18),
];

/// Looks up a built-in element by identifier.
pub fn builtin(id: &str) -> Option<&'static Element> {
    DICTIONARY.iter().find(|e| e.id == id)
}

impl Rule {
    /// Brings a raw value to the canonical form. `raw` is already trimmed and
    /// not empty.
    pub fn normalize(self, name: &str, raw: &str) -> Result<Normalized, Issue> {
        if matches!(
            self,
            Rule::CitizenId | Rule::Uscc | Rule::OrgCode | Rule::Division | Rule::Postcode | Rule::Phone
        ) && is_scientific(raw)
        {
            return Err(issue(
                "SCIENTIFIC_NOTATION",
                format!(
                    "{name} {raw:?} 是科学计数法, 位数已丢失: save identifiers as text (Excel keeps 15 significant digits)"
                ),
            ));
        }
        match self {
            Rule::CitizenId => citizen_id(name, raw),
            Rule::Uscc => uscc(name, raw),
            Rule::OrgCode => org_code(name, raw).and_then(|(v, bad)| match bad {
                None => Normalized::ok(v),
                Some(i) => Err(i),
            }),
            Rule::Gender => gender(name, raw),
            Rule::Ethnicity => ethnicity(name, raw),
            Rule::Date => date(name, raw).map(|(y, m, d)| Normalized {
                value: format!("{y:04}{m:02}{d:02}"),
                warnings: Vec::new(),
            }),
            Rule::DateTime => datetime(name, raw),
            Rule::Division => division(name, raw),
            Rule::Mobile => mobile(name, raw),
            Rule::Phone => phone(name, raw),
            Rule::Postcode => postcode(name, raw),
            Rule::Text => Normalized::ok(raw.to_owned()),
            Rule::Amount(scale) => amount(name, raw, scale),
        }
    }

    /// True for code-like values, which are width-folded and compacted.
    pub fn is_code(self) -> bool {
        !matches!(self, Rule::Text)
    }
}

/// `3.20282E+17` and the like: what Excel shows for a long number.
fn is_scientific(raw: &str) -> bool {
    let v = fold_width(raw);
    let Some((mantissa, exp)) = v.trim().split_once(['E', 'e']) else {
        return false;
    };
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, "0"));
    !int.is_empty()
        && [int, frac, exp]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn issue(code: &'static str, message: String) -> Issue {
    Issue { code, message }
}

fn fold_char(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// Full-width ASCII (U+FF01–U+FF5E) and U+3000 to their half-width forms.
/// Only for code-like values.
pub fn fold_width(s: &str) -> std::borrow::Cow<'_, str> {
    if s.is_ascii() {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(s.chars().map(fold_char).collect())
}

/// A code-like value: width-folded, without any white space or hyphens,
/// upper case.
pub fn compact_code(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(fold_char) {
        if !c.is_whitespace() && !matches!(c, '-' | '\u{200B}' | '\u{FEFF}') {
            out.push(c.to_ascii_uppercase());
        }
    }
    out
}

// --- GB 11643 公民身份号码 -------------------------------------------------

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// The GB 11643 check character of 17 digits.
pub fn citizen_check(body: &[u8]) -> char {
    let s: u32 = body.iter().zip(ID_WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    ID_CHECK[(s % 11) as usize] as char
}

/// Province-level codes (GB/T 2260 digits 1–2).
fn valid_province(p: u32) -> bool {
    matches!(p, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82)
}

fn citizen_id(name: &str, raw: &str) -> Result<Normalized, Issue> {
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

// --- GB 32100 统一社会信用代码 and GB 11714 组织机构代码 ---------------------

const USCC_CHARS: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];

/// The GB 32100 check character of 17 characters, if they are all allowed.
pub fn uscc_check(body: &[u8]) -> Option<char> {
    let mut s = 0;
    for (c, w) in body.iter().zip(USCC_WEIGHTS) {
        s += USCC_CHARS.iter().position(|x| x == c)? as u32 * w;
    }
    Some(USCC_CHARS[((31 - s % 31) % 31) as usize] as char)
}

/// Allowed category codes (position 2) per authority code (position 1).
fn uscc_categories(authority: u8) -> Option<&'static [u8]> {
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

fn uscc(name: &str, raw: &str) -> Result<Normalized, Issue> {
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
fn org_code(name: &str, raw: &str) -> Result<(String, Option<Issue>), Issue> {
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

fn gender(name: &str, raw: &str) -> Result<Normalized, Issue> {
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
const ETHNIC_GROUPS: [&str; 56] = [
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

fn ethnicity(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = fold_width(raw);
    let v = v.trim();
    if v.len() <= 2 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = v.parse().unwrap_or(0);
        if (1..=56).contains(&n) || n == 97 || n == 98 {
            return Normalized::ok(format!("{n:02}"));
        }
    }
    let bare = v.strip_suffix('族').unwrap_or(v);
    let bare = match bare {
        "崩龙" => "德昂",
        "毛难" => "毛南",
        b => b,
    };
    if let Some(i) = ETHNIC_GROUPS.iter().position(|g| *g == bare) {
        return Normalized::ok(format!("{:02}", i + 1));
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

fn digits(s: &[u8]) -> Option<u32> {
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
fn chinese_digits(s: &str) -> Option<String> {
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
fn date(name: &str, raw: &str) -> Result<(u32, u32, u32), Issue> {
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

/// Seconds east of UTC of China Standard Time, the catalog's local time.
const CST_OFFSET: i64 = 8 * 3600;
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: u32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
fn split_offset(t: &str) -> Option<(&str, Option<i64>)> {
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
fn fraction_micros(f: &str) -> i64 {
    let b = f.as_bytes();
    let mut micros = 0;
    for i in 0..6 {
        micros = micros * 10 + b.get(i).map_or(0, |c| i64::from(c - b'0'));
    }
    micros + i64::from(b.get(6).is_some_and(|c| *c >= b'5'))
}

fn datetime(name: &str, raw: &str) -> Result<Normalized, Issue> {
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
    let mut value = format!("{y:04}{mo:02}{da:02}{h:02}{mi:02}{s:02}");
    if us != 0 {
        let f = format!("{us:06}");
        value.push('.');
        value.push_str(f.trim_end_matches('0'));
    }
    Normalized::ok(value)
}

// --- GB/T 2260, phones, postcodes, amounts ---------------------------------

fn division(name: &str, raw: &str) -> Result<Normalized, Issue> {
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
fn strict_mobile(v: &str) -> bool {
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

fn mobile_digits(raw: &str) -> String {
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

fn mobile(name: &str, raw: &str) -> Result<Normalized, Issue> {
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

fn phone(name: &str, raw: &str) -> Result<Normalized, Issue> {
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

fn postcode(name: &str, raw: &str) -> Result<Normalized, Issue> {
    let v = compact_code(raw);
    if v.len() != 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(issue(
            "POSTCODE",
            format!("{name} {raw:?} 不是邮政编码: expected 6 digits"),
        ));
    }
    Normalized::ok(v)
}

fn amount(name: &str, raw: &str, scale: u8) -> Result<Normalized, Issue> {
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
