//! The sharing rules: who may receive a resource, and which of its items.
//!
//! - 无条件共享 (unconditional): every agency may subscribe, granted at once,
//!   every item.
//! - 有条件共享 (conditional, article 21): only an agency with an agreement
//!   in force (not revoked, `valid_from <= now < until`), and only the
//!   agreement's items and the key items.
//! - 不予共享 (not shared): nobody but the provider.
//!
//! A provider may always receive its own resource. A receiver may ask for
//! fewer items; the key items are always delivered. What a grant lists is
//! the complete set of items that leave the hub for that receiver:
//! [`filter`] is applied to every change before it is encoded.

use std::collections::{BTreeMap, BTreeSet};

use rules::catalog::{Catalog, Resource, Sharing};

use crate::store::feed::Agreement;
use crate::text::shown;

/// What a receiver may have of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Item ids delivered (keys included), in catalog order.
    pub items: Vec<String>,
    /// The agreement it is delivered under; empty for 无条件共享 and for
    /// the provider itself.
    pub agreement: String,
    pub provider: String,
}

/// Whether `agency` may receive `resource` now, asking for `wanted` items
/// (empty: all it may have), given the agreements for that agency and
/// resource. The error is the reason, for the receiver and the log.
pub fn grant(
    catalog: &Catalog,
    agency: &str,
    resource: &str,
    wanted: &[String],
    agreements: &[Agreement],
    now_us: i64,
) -> Result<Grant, String> {
    let Some(r) = catalog.resource(resource) else {
        return Err(format!("resource {} is not in the hub's catalog", shown(resource)));
    };
    if let Some(unknown) = wanted.iter().find(|w| r.item(w).is_none()) {
        return Err(format!("resource {} has no item {}", r.code, shown(unknown)));
    }
    let (allowed, agreement): (Option<BTreeSet<&str>>, &str) = if r.provider == agency {
        (None, "")
    } else {
        match r.sharing {
            Sharing::Unconditional => (None, ""),
            Sharing::NotShared => {
                return Err(format!(
                    "resource {} is 不予共享 (not shared): only its provider {} receives it",
                    r.code, r.provider
                ));
            }
            Sharing::Conditional => {
                let Some(a) = agreements
                    .iter()
                    .filter(|a| a.agency == agency && a.resource == r.code && a.in_force(now_us))
                    .max_by_key(|a| (a.until_us, a.id.clone()))
                else {
                    return Err(format!(
                        "resource {} is 有条件共享 (conditional): agency {} has no agreement in force for it (article 21)",
                        r.code,
                        shown(agency)
                    ));
                };
                (Some(a.items.iter().map(String::as_str).collect()), a.id.as_str())
            }
        }
    };
    let items = r
        .items()
        .iter()
        .filter(|i| i.key || allowed.as_ref().is_none_or(|a| a.contains(i.id.as_str())))
        .filter(|i| i.key || wanted.is_empty() || wanted.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    Ok(Grant {
        items,
        agreement: agreement.to_owned(),
        provider: r.provider.clone(),
    })
}

/// The items of a change that a grant lets leave the hub.
pub fn filter(items: BTreeMap<String, String>, grant: &Grant) -> BTreeMap<String, String> {
    items
        .into_iter()
        .filter(|(id, _)| grant.items.iter().any(|g| g == id))
        .collect()
}

/// Checks an agreement against the catalog before it is stored.
pub fn check_agreement(catalog: &Catalog, a: &Agreement) -> Result<(), String> {
    let printable = |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| !c.is_control());
    if !printable(&a.id) {
        return Err("an agreement id is 1 to 128 printable characters".into());
    }
    if !printable(&a.agency) {
        return Err("the receiving agency is 1 to 128 printable characters".into());
    }
    let Some(r): Option<&Resource> = catalog.resource(&a.resource) else {
        return Err(format!("resource {} is not in the catalog", shown(&a.resource)));
    };
    if r.sharing != Sharing::Conditional {
        let kind = match r.sharing {
            Sharing::Unconditional => "无条件共享 (unconditional): every agency receives it without an agreement",
            _ => "不予共享 (not shared): no agreement can share it",
        };
        return Err(format!("resource {} is {kind}", r.code));
    }
    if a.agency == r.provider {
        return Err(format!("agency {} is the provider of {}", a.agency, r.code));
    }
    if let Some(unknown) = a.items.iter().find(|i| r.item(i).is_none()) {
        return Err(format!("resource {} has no item {}", r.code, shown(unknown)));
    }
    if a.until_us <= a.valid_from_us {
        return Err("an agreement's `until` must be after its `from`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
