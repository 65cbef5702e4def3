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

mod calendar;
mod id;
#[cfg(test)]
mod tests;
mod value;

pub use calendar::valid_ymd;
use calendar::{date, datetime};
pub use id::{citizen_check, org_check, uscc_check};
use id::{citizen_id, org_code, uscc};
use value::{amount, division, ethnicity, gender, mobile, phone, postcode};

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
            Rule::Date => date(name, raw).map(|(y, m, d)| {
                let mut value = String::with_capacity(8);
                push_padded(&mut value, y.into(), 4);
                push_padded(&mut value, m.into(), 2);
                push_padded(&mut value, d.into(), 2);
                Normalized {
                    value,
                    warnings: Vec::new(),
                }
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

    /// Whether `v` is already this rule's canonical form: what
    /// [`normalize`](Rule::normalize) returns for it unchanged and without a
    /// warning. Decided in place, without building a value, for the hub's
    /// check of every value it receives and the agent's values that arrive
    /// canonical; `false` only means "ask `normalize`", which also says why.
    pub fn is_canonical(self, v: &str) -> bool {
        let b = v.as_bytes();
        let all_digits = |b: &[u8]| b.iter().all(u8::is_ascii_digit);
        match self {
            Rule::CitizenId => id::is_canonical_citizen_id(b),
            Rule::Uscc => id::is_canonical_uscc(b) && !is_scientific(v),
            Rule::OrgCode => {
                b.len() == 9 && org_check(&b[..8]).is_some_and(|want| b[8] == want as u8) && !is_scientific(v)
            }
            Rule::Gender => matches!(v, "0" | "1" | "2" | "9"),
            Rule::Ethnicity => {
                b.len() == 2 && calendar::digits(b).is_some_and(|n| (1..=56).contains(&n) || n == 97 || n == 98)
            }
            Rule::Date => calendar::is_canonical_date(b),
            Rule::DateTime => calendar::is_canonical_datetime(b),
            Rule::Division => {
                (b.len() == 6 || b.len() == 9)
                    && all_digits(b)
                    && id::valid_province(calendar::digits(&b[..2]).unwrap_or(0))
            }
            Rule::Mobile => value::is_canonical_mobile(b),
            Rule::Phone => value::is_canonical_phone(b),
            Rule::Postcode => b.len() == 6 && all_digits(b),
            Rule::Text => true,
            Rule::Amount(scale) => value::is_canonical_amount(b, scale),
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

/// Appends `n` in decimal, zero-padded to `width` digits: what
/// `format!("{n:0width$}")` writes, without the formatter, which was a
/// visible share of the hub's check of every date.
pub(crate) fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = buf.len() - i;
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits)));
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
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
