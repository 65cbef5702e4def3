//! The resource catalog (政务信息资源目录): which resources exist, who provides
//! each one, how it is shared, how often it must be updated and which items
//! (data elements) it carries.
//!
//! The same catalog file is read by the agent and by the hub, and both check
//! records with [`Resource::check`], so that a record the agent accepts is a
//! record the hub accepts. An item is bound to a data element: one of the
//! built-in dictionary ([`crate::element`]), one the catalog defines itself
//! (`[[element]]`: type, length, pattern, code set), or just a value type.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use proto::v1::{Operation, RejectCode};
use proto::view::RecordView;

use crate::element::{self, Element, Issue, Normalized};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[cfg(test)]
mod tests;

/// Why a catalog file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not valid TOML or does not have the catalog's shape.
    #[error("{0}")]
    Parse(String),
    /// The file parses but breaks a catalog rule.
    #[error("resource {resource}: {reason}")]
    Invalid { resource: String, reason: String },
}

/// 共享类型 (国发〔2016〕51号).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Sharing {
    #[serde(rename = "无条件共享")]
    Unconditional,
    #[serde(rename = "有条件共享")]
    Conditional,
    #[serde(rename = "不予共享")]
    NotShared,
}

/// 更新周期: how often the provider must update the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpdateCycle {
    #[serde(rename = "实时")]
    RealTime,
    #[serde(rename = "每日")]
    Daily,
    #[serde(rename = "每周")]
    Weekly,
    #[serde(rename = "每月")]
    Monthly,
    #[serde(rename = "每季度")]
    Quarterly,
    #[serde(rename = "每半年")]
    HalfYearly,
    #[serde(rename = "每年")]
    Yearly,
}

/// The value type of an item. Canonical forms: integers without sign `+` or
/// leading zeros, decimals with `.`, dates as GB/T 7408 basic `YYYYMMDD`,
/// date-times as `YYYYMMDDhhmmss[.ffffff]` (China Standard Time; see `element`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    #[default]
    String,
    Integer,
    Decimal,
    Date,
    Datetime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default, rename = "element")]
    elements: Vec<RawElement>,
    #[serde(default, rename = "resource")]
    resources: Vec<RawResource>,
}

/// A data element the catalog defines itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElement {
    id: String,
    name: String,
    #[serde(default, rename = "type")]
    kind: ItemType,
    #[serde(default)]
    min_len: Option<usize>,
    #[serde(default)]
    max_len: Option<usize>,
    /// A regular expression the whole canonical value must match.
    #[serde(default)]
    pattern: Option<String>,
    /// The code set (enumeration), if any.
    #[serde(default)]
    codes: Option<Vec<String>>,
    /// The standard the element comes from, for messages.
    #[serde(default)]
    standard: Option<String>,
    /// Digits after the point, for a decimal amount (`n..17,2` is 2).
    #[serde(default)]
    scale: Option<u8>,
}

/// A custom data element, compiled.
#[derive(Debug)]
pub struct CustomElement {
    pub id: String,
    pub name: String,
    pub kind: ItemType,
    pub min_len: Option<usize>,
    pub max_len: Option<usize>,
    pub pattern: Option<regex::Regex>,
    pub codes: Option<Vec<String>>,
    pub standard: String,
    pub scale: Option<u8>,
}

/// What an item's values are checked against.
#[derive(Debug, Clone, Default)]
pub enum ValueRule {
    /// Only the item's value type.
    #[default]
    Plain,
    Builtin(&'static Element),
    Custom(Arc<CustomElement>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    code: String,
    name: String,
    provider: String,
    sharing: Sharing,
    cycle: UpdateCycle,
    #[serde(rename = "item")]
    items: Vec<Item>,
}

/// One item (信息项) of a resource, bound to a data element.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Data-element identifier, e.g. `DE00001`.
    pub id: String,
    /// Chinese name, e.g. 公民身份号码.
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ItemType,
    /// Maximum length in characters, if the catalog limits it.
    #[serde(default)]
    pub max_len: Option<usize>,
    #[serde(default)]
    pub required: bool,
    /// Key items identify a record of the resource; they are always required.
    #[serde(default)]
    pub key: bool,
    /// The data element the item is bound to: a built-in identifier such as
    /// `GMSFHM`, or the id of an `[[element]]` of the catalog.
    #[serde(default)]
    pub element: Option<String>,
    #[serde(skip)]
    pub rule: ValueRule,
}

/// A resource of the catalog.
#[derive(Debug, Clone)]
pub struct Resource {
    pub code: String,
    pub name: String,
    /// The agency code of the only agency allowed to publish it (article 14).
    pub provider: String,
    pub sharing: Sharing,
    pub cycle: UpdateCycle,
    /// In catalog order; private, as `by_id` and `keys` index it.
    items: Vec<Item>,
    /// Positions in `items`, ordered by item id: a record's items come
    /// ordered by id too, so [`Resource::check`] pairs them in one pass.
    by_id: Vec<usize>,
    /// Positions of the key items, in catalog order.
    keys: Vec<usize>,
}

/// A parsed and checked catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    resources: BTreeMap<String, Resource>,
    digest: String,
}

impl Catalog {
    /// Parses a catalog from its TOML text.
    pub fn from_toml_str(text: &str) -> Result<Catalog, Error> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        let mut custom: BTreeMap<String, Arc<CustomElement>> = BTreeMap::new();
        for e in raw.elements {
            let invalid = |reason: String| Error::Invalid {
                resource: format!("element {}", e.id),
                reason,
            };
            if element::builtin(&e.id).is_some() || custom.contains_key(&e.id) {
                return Err(invalid("the id is already defined".into()));
            }
            let pattern = match &e.pattern {
                Some(p) => Some(
                    regex::Regex::new(&format!("^(?:{p})$")).map_err(|err| invalid(format!("pattern {p:?}: {err}")))?,
                ),
                None => None,
            };
            custom.insert(
                e.id.clone(),
                Arc::new(CustomElement {
                    standard: e.standard.unwrap_or_else(|| "目录自定义".into()),
                    id: e.id,
                    name: e.name,
                    kind: e.kind,
                    min_len: e.min_len,
                    max_len: e.max_len,
                    pattern,
                    codes: e.codes,
                    scale: e.scale,
                }),
            );
        }
        let mut resources = BTreeMap::new();
        for mut r in raw.resources {
            for item in &mut r.items {
                item.rule = match item.element.as_deref() {
                    None => ValueRule::Plain,
                    Some(id) => match (element::builtin(id), custom.get(id)) {
                        (Some(b), _) => ValueRule::Builtin(b),
                        (None, Some(c)) => ValueRule::Custom(c.clone()),
                        (None, None) => {
                            return Err(Error::Invalid {
                                resource: r.code.clone(),
                                reason: format!(
                                    "item {}: data element {id:?} is neither built in nor defined",
                                    item.id
                                ),
                            });
                        }
                    },
                };
            }
            let invalid = |reason: String| Error::Invalid {
                resource: r.code.clone(),
                reason,
            };
            if r.code.trim().is_empty() || r.code.trim() != r.code {
                return Err(invalid("code must be non-empty without surrounding spaces".into()));
            }
            let mut seen = HashSet::new();
            for item in &r.items {
                if !seen.insert(item.id.as_str()) {
                    return Err(invalid(format!("item {} is listed twice", item.id)));
                }
                if item.key && !item.required {
                    return Err(invalid(format!("key item {} must also be required", item.id)));
                }
            }
            if !r.items.iter().any(|i| i.key) {
                return Err(invalid("at least one item must be a key".into()));
            }
            let code = r.code.clone();
            let mut by_id: Vec<usize> = (0..r.items.len()).collect();
            by_id.sort_by(|&a, &b| r.items[a].id.cmp(&r.items[b].id));
            let keys = (0..r.items.len()).filter(|&i| r.items[i].key).collect();
            let resource = Resource {
                code: r.code,
                name: r.name,
                provider: r.provider,
                sharing: r.sharing,
                cycle: r.cycle,
                items: r.items,
                by_id,
                keys,
            };
            if resources.insert(code.clone(), resource).is_some() {
                return Err(Error::Invalid {
                    resource: code,
                    reason: "listed twice".into(),
                });
            }
        }
        let digest = hex(&Sha256::digest(text.as_bytes()));
        Ok(Catalog { resources, digest })
    }

    pub fn resource(&self, code: &str) -> Option<&Resource> {
        self.resources.get(code)
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// SHA-256 of the catalog text, hex: lets the hub see that both sides
    /// validate against the same catalog.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// Why a record does not conform to the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: RejectCode,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.reason)
    }
}

impl Item {
    /// Brings a trimmed, non-empty raw value to the item's canonical form.
    pub fn normalize(&self, raw: &str) -> Result<Normalized, Issue> {
        let (normalized, max, min) = match &self.rule {
            ValueRule::Plain => (plain(self.kind, &self.name, raw)?, self.max_len, None),
            ValueRule::Builtin(e) => (e.rule.normalize(&self.name, raw)?, Some(self.builtin_max(e)), None),
            ValueRule::Custom(c) => {
                let n = match (c.kind, c.scale) {
                    (ItemType::Decimal, Some(scale)) => element::Rule::Amount(scale).normalize(&self.name, raw)?,
                    (kind, _) => plain(kind, &self.name, raw)?,
                };
                if let Some(p) = &c.pattern
                    && !p.is_match(&n.value)
                {
                    return Err(Issue {
                        code: "PATTERN",
                        message: format!(
                            "{} {:?} 不符合格式 ({}): expected {}",
                            self.name,
                            n.value,
                            c.standard,
                            p.as_str()
                        ),
                    });
                }
                if let Some(codes) = &c.codes
                    && !codes.contains(&n.value)
                {
                    return Err(Issue {
                        code: "CODE_SET",
                        message: format!(
                            "{} {:?} 不在代码表中 ({}): expected one of {}",
                            self.name,
                            n.value,
                            c.standard,
                            codes.join(", ")
                        ),
                    });
                }
                (n, self.max_len.or(c.max_len), c.min_len)
            }
        };
        self.length(&normalized.value, max, min)?;
        Ok(normalized)
    }

    /// A built-in element's length limit, narrowed by the item's own.
    fn builtin_max(&self, e: &element::Element) -> usize {
        self.max_len.map_or(e.max_len, |m| m.min(e.max_len))
    }

    /// Refuses a canonical value outside the item's length limits.
    fn length(&self, value: &str, max: Option<usize>, min: Option<usize>) -> Result<(), Issue> {
        // Bytes bound characters from above: count only when it matters.
        let len = if max.is_some_and(|m| value.len() <= m) && min.is_none() {
            0
        } else {
            value.chars().count()
        };
        if let Some(max) = max
            && len > max
        {
            return Err(Issue {
                code: "LENGTH",
                message: format!("{} 长度 {len} 超过上限: at most {max} characters", self.name),
            });
        }
        if let Some(min) = min
            && len < min
        {
            return Err(Issue {
                code: "LENGTH",
                message: format!("{} 长度 {len} 不足: at least {min} characters", self.name),
            });
        }
        Ok(())
    }

    /// Whether a trimmed, non-empty value is already the item's canonical
    /// form and within its limits: what [`normalize`](Item::normalize)
    /// returns unchanged and without a warning. Decided in place (see
    /// [`element::Rule::is_canonical`]); `false` only means "ask
    /// `normalize`".
    pub fn is_canonical(&self, value: &str) -> bool {
        let (fits, max, min) = match &self.rule {
            ValueRule::Plain => (plain_is_canonical(self.kind, value), self.max_len, None),
            ValueRule::Builtin(e) => (e.rule.is_canonical(value), Some(self.builtin_max(e)), None),
            ValueRule::Custom(c) => {
                let base = match (c.kind, c.scale) {
                    (ItemType::Decimal, Some(scale)) => element::Rule::Amount(scale).is_canonical(value),
                    (kind, _) => plain_is_canonical(kind, value),
                };
                let fits = base
                    && c.pattern.as_ref().is_none_or(|p| p.is_match(value))
                    && c.codes
                        .as_ref()
                        .is_none_or(|codes| codes.iter().any(|code| code == value));
                (fits, self.max_len.or(c.max_len), c.min_len)
            }
        };
        fits && self.length(value, max, min).is_ok()
    }

    /// Checks a value that should already be canonical (the hub's check).
    pub fn check(&self, value: &str) -> Result<(), Issue> {
        if !value.is_empty() && self.is_canonical(value) {
            return Ok(());
        }
        let n = self.normalize(value)?;
        if n.value != value {
            return Err(Issue {
                code: "NOT_CANONICAL",
                message: format!("{} {value:?} 不是规范形式: expected {:?}", self.name, n.value),
            });
        }
        Ok(())
    }

    /// True when a number from a spreadsheet must not stand for this item's
    /// value: identifiers lose digits and leading zeros as numbers.
    pub fn is_identifier(&self) -> bool {
        match &self.rule {
            ValueRule::Builtin(e) => matches!(
                e.rule,
                element::Rule::CitizenId
                    | element::Rule::Uscc
                    | element::Rule::OrgCode
                    | element::Rule::Division
                    | element::Rule::Postcode
                    | element::Rule::Phone
            ),
            ValueRule::Custom(c) => c.pattern.is_some() || c.codes.is_some(),
            ValueRule::Plain => false,
        }
    }
}

fn plain(kind: ItemType, name: &str, raw: &str) -> Result<Normalized, Issue> {
    canonical(kind, raw)
        .map(|value| Normalized {
            value,
            warnings: Vec::new(),
        })
        .map_err(|reason| Issue {
            code: "TYPE",
            message: format!("{name} 值 {raw:?} 不合规: {reason}"),
        })
}

impl Resource {
    /// The items, in catalog order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        let at = self
            .by_id
            .binary_search_by(|&i| self.items[i].id.as_str().cmp(id))
            .ok()?;
        Some(&self.items[self.by_id[at]])
    }

    /// The key items, in catalog order.
    pub fn key_items(&self) -> impl ExactSizeIterator<Item = &Item> {
        self.keys.iter().map(|&i| &self.items[i])
    }

    /// Checks a record against this resource, for a record published by
    /// `agency`. The hub calls this for every record it receives; the agent
    /// builds its records so that they pass.
    pub fn check(&self, agency: &str, record: &RecordView<'_>) -> Result<(), Violation> {
        let invalid = |reason: String| Violation {
            code: RejectCode::InvalidRecord,
            reason,
        };
        if self.provider != agency {
            return Err(Violation {
                code: RejectCode::NotProvider,
                reason: format!(
                    "resource {} is provided by agency {}, not {agency}",
                    self.code, self.provider
                ),
            });
        }
        let op = Operation::try_from(record.op).unwrap_or(Operation::Unspecified);
        if op == Operation::Unspecified {
            return Err(invalid(format!("unknown operation {}", record.op)));
        }
        if record.key.len() != self.keys.len() {
            return Err(invalid(format!(
                "key has {} values, resource {} has {} key items",
                record.key.len(),
                self.code,
                self.keys.len()
            )));
        }
        for (item, value) in self.key_items().zip(&record.key) {
            if value.is_empty() {
                return Err(invalid(format!("key item {} ({}) is empty", item.id, item.name)));
            }
            if let Some(v) = record.item(&item.id)
                && v != *value
            {
                return Err(invalid(format!(
                    "key item {} is {v:?} in items but {value:?} in the key",
                    item.id
                )));
            }
        }
        // Both ordered by id: one pass pairs each of the record's items with
        // the resource's.
        let mut ours = self.by_id.iter().map(|&i| &self.items[i]).peekable();
        for &(id, value) in record.items() {
            while ours.next_if(|item| item.id.as_str() < id).is_some() {}
            let Some(item) = ours.next_if(|item| item.id == id) else {
                return Err(invalid(format!("item {id} is not in resource {}", self.code)));
            };
            if let Err(issue) = item.check(value) {
                return Err(invalid(format!("item {id}: {issue}")));
            }
        }
        if op == Operation::Upsert {
            for item in self.items.iter().filter(|i| i.required) {
                if record.item(&item.id).is_none() {
                    return Err(invalid(format!("required item {} ({}) is missing", item.id, item.name)));
                }
            }
        }
        Ok(())
    }
}

/// Whether `v` is the canonical form of `kind` already ([`canonical`]
/// returns it unchanged).
fn plain_is_canonical(kind: ItemType, v: &str) -> bool {
    let integer = |b: &[u8]| {
        let digits = b.strip_prefix(b"-").unwrap_or(b);
        !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && (digits == b"0" && digits.len() == b.len() || digits[0] != b'0')
    };
    match kind {
        ItemType::String => true,
        ItemType::Integer => integer(v.as_bytes()),
        ItemType::Decimal => match v.as_bytes().iter().position(|&c| c == b'.') {
            None => integer(v.as_bytes()),
            Some(i) => {
                let (int, frac) = (&v.as_bytes()[..i], &v.as_bytes()[i + 1..]);
                integer(int) && !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) && !frac.ends_with(b"0")
            }
        },
        ItemType::Date => element::Rule::Date.is_canonical(v),
        ItemType::Datetime => element::Rule::DateTime.is_canonical(v),
    }
}

/// Brings a trimmed raw value to the canonical form of `kind`, or says why it
/// cannot.
pub fn canonical(kind: ItemType, raw: &str) -> Result<String, String> {
    match kind {
        ItemType::String => Ok(raw.to_owned()),
        ItemType::Integer => canonical_integer(raw).ok_or_else(|| "not an integer".to_owned()),
        ItemType::Decimal => canonical_decimal(raw).ok_or_else(|| "not a decimal number".to_owned()),
        ItemType::Date => element::Rule::Date
            .normalize("", raw)
            .map(|n| n.value)
            .map_err(|e| e.message.trim().to_owned()),
        ItemType::Datetime => element::Rule::DateTime
            .normalize("", raw)
            .map(|n| n.value)
            .map_err(|e| e.message.trim().to_owned()),
    }
}

fn canonical_integer(raw: &str) -> Option<String> {
    let (neg, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    let body = if trimmed.is_empty() { "0" } else { trimmed };
    Some(if neg && body != "0" {
        format!("-{body}")
    } else {
        body.to_owned()
    })
}

fn canonical_decimal(raw: &str) -> Option<String> {
    let (int, frac) = match raw.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (raw, None),
    };
    let int = canonical_integer(if int.is_empty() || int == "-" || int == "+" {
        // ".5" and "-.5" have an implied zero.
        return canonical_decimal(&format!("{}0.{}", int, frac.unwrap_or_default()));
    } else {
        int
    })?;
    match frac {
        None => Some(int),
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let f = f.trim_end_matches('0');
            if f.is_empty() {
                Some(int)
            } else {
                Some(format!("{int}.{f}"))
            }
        }
        Some(_) => None,
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
