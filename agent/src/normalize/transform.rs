//! Transforms: changes a source's config applies to a raw value before the
//! data-element rules, for exports whose columns need help (the rules
//! already fold widths, trim and compact codes). Pure, like the rest of
//! normalization.

/// A change applied to a raw value before the data-element rules, for
/// exports whose columns need help (the rules already fold widths, trim and
/// compact codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transform {
    /// Upper case (ASCII).
    Upper,
    /// Lower case (ASCII).
    Lower,
    /// Remove every white-space character.
    RemoveSpaces,
    /// Keep only the digits.
    DigitsOnly,
    /// Remove this prefix if present (`strip_prefix:TEXT`).
    StripPrefix(String),
    /// Remove this suffix if present (`strip_suffix:TEXT`).
    StripSuffix(String),
    /// Replace a whole value (`map:OLD=NEW`), for local code tables.
    Map(String, String),
}

impl Transform {
    /// Reads a transform as the config writes it (`upper`,
    /// `strip_prefix:TEXT`, `map:OLD=NEW`, …).
    pub fn parse(s: &str) -> Result<Transform, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(n, a)| (n, Some(a)));
        Ok(match (name, arg) {
            ("upper", None) => Transform::Upper,
            ("lower", None) => Transform::Lower,
            ("remove_spaces", None) => Transform::RemoveSpaces,
            ("digits_only", None) => Transform::DigitsOnly,
            ("strip_prefix", Some(a)) if !a.is_empty() => Transform::StripPrefix(a.to_owned()),
            ("strip_suffix", Some(a)) if !a.is_empty() => Transform::StripSuffix(a.to_owned()),
            ("map", Some(a)) => match a.split_once('=') {
                Some((from, to)) => Transform::Map(from.to_owned(), to.to_owned()),
                None => return Err(format!("transform {s:?}: expected map:OLD=NEW")),
            },
            _ => {
                return Err(format!(
                    "unknown transform {s:?}: expected upper, lower, remove_spaces, digits_only, \
                     strip_prefix:TEXT, strip_suffix:TEXT or map:OLD=NEW"
                ));
            }
        })
    }

    /// Applies the transform to a value.
    pub fn apply(&self, v: &str) -> String {
        match self {
            Transform::Upper => v.to_ascii_uppercase(),
            Transform::Lower => v.to_ascii_lowercase(),
            Transform::RemoveSpaces => v.chars().filter(|c| !c.is_whitespace()).collect(),
            Transform::DigitsOnly => v.chars().filter(char::is_ascii_digit).collect(),
            Transform::StripPrefix(p) => v.strip_prefix(p.as_str()).unwrap_or(v).to_owned(),
            Transform::StripSuffix(p) => v.strip_suffix(p.as_str()).unwrap_or(v).to_owned(),
            Transform::Map(from, to) if v == from => to.clone(),
            Transform::Map(..) => v.to_owned(),
        }
    }
}
