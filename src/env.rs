//! `${VAR}` and `${VAR:-default}` interpolation for values in mapping files.
//!
//! The environment is passed in as a map ([`Env`]) rather than read from the process, so tests
//! never depend on (or mutate) the real environment.

use std::collections::HashMap;

/// A snapshot of environment variables. Its `Debug` lists the variable names only: the
/// environment holds secrets (`STRIPE_WEBHOOK_SECRET`, `CASEGATE_DUVO__API_KEY`, ...).
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env")
            .field("names", &names)
            .field("values", &"***")
            .finish()
    }
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The result of interpolating one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    pub value: String,
    /// True when at least one `${VAR:-default}` fell back to its default; the startup log warns
    /// about sources whose secrets are development defaults.
    pub used_default: bool,
    /// The variables whose `:-` default was used, in order (what an operator must set).
    pub defaulted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error(
        "environment variable {0} is not set and has no default (write ${{{0}:-default}} to give one)"
    )]
    Missing(String),
    #[error("unterminated ${{ in value (a literal `$` is written `$$`)")]
    Unterminated,
    #[error("invalid variable name {0:?} (letters, digits and `_` only)")]
    BadName(String),
}

/// Replaces every `${VAR}` / `${VAR:-default}` in `raw`; `$$` is a literal `$`.
pub fn interpolate(raw: &str, env: &Env) -> Result<Interpolated, InterpolationError> {
    let mut value = String::with_capacity(raw.len());
    let mut used_default = false;
    let mut defaulted = Vec::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        value.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            value.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(InterpolationError::Unterminated)?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolationError::BadName(name.to_string()));
            }
            match (env.get(name), default) {
                (Some(found), _) if !found.is_empty() || default.is_none() => value.push_str(found),
                (_, Some(default)) => {
                    used_default = true;
                    defaulted.push(name.to_string());
                    value.push_str(default);
                }
                (None, None) => return Err(InterpolationError::Missing(name.to_string())),
                (Some(_), None) => unreachable!("handled by the first arm"),
            }
            rest = &body[end + 1..];
        } else {
            value.push('$');
            rest = after;
        }
    }
    value.push_str(rest);
    Ok(Interpolated {
        value,
        used_default,
        defaulted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_pairs([("SECRET", "s3cr3t"), ("EMPTY", "")])
    }

    #[test]
    fn interpolation_table() {
        type Expected = Result<(&'static str, bool), InterpolationError>;
        let cases: &[(&str, Expected)] = &[
            ("plain", Ok(("plain", false))),
            ("${SECRET}", Ok(("s3cr3t", false))),
            ("pre-${SECRET}-post", Ok(("pre-s3cr3t-post", false))),
            ("${NOPE:-dev}", Ok(("dev", true))),
            ("${SECRET:-dev}", Ok(("s3cr3t", false))),
            ("${EMPTY:-dev}", Ok(("dev", true))),
            ("${EMPTY}", Ok(("", false))),
            ("$$literal", Ok(("$literal", false))),
            ("cost $5", Ok(("cost $5", false))),
            ("${NOPE}", Err(InterpolationError::Missing("NOPE".into()))),
            ("${SECRET", Err(InterpolationError::Unterminated)),
            (
                "${BAD NAME}",
                Err(InterpolationError::BadName("BAD NAME".into())),
            ),
            ("${}", Err(InterpolationError::BadName(String::new()))),
        ];
        for (raw, expected) in cases {
            let got = interpolate(raw, &env()).map(|i| (i.value, i.used_default));
            let expected = expected.clone().map(|(v, d)| (v.to_string(), d));
            assert_eq!(got, expected, "interpolating {raw:?}");
        }
    }
}
