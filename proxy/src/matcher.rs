//! Compiled string matchers shared by routing, CORS and authorization.

use regex::Regex;
use trellis_contract::StringMatch;

/// A [`StringMatch`] ready to evaluate (regexes compiled and anchored).
#[derive(Clone, Debug)]
pub enum Matcher {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Whole-value regex.
    Regex(Regex),
}

/// A regex in the config did not compile (validation should have caught it).
#[derive(Debug, thiserror::Error)]
#[error("invalid regex {pattern:?}: {source}")]
pub struct MatcherError {
    pattern: String,
    #[source]
    source: regex::Error,
}

impl MatcherError {
    /// Wrap a regex error for `pattern`.
    pub fn from_regex(pattern: &str, source: regex::Error) -> Self {
        Self {
            pattern: pattern.to_string(),
            source,
        }
    }
}

impl Matcher {
    /// Compile; `ignore_case` lowers exact/prefix/suffix operands (callers lower
    /// the value too) and makes regexes case-insensitive.
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, MatcherError> {
        let fold = |s: &String| {
            if ignore_case { s.to_ascii_lowercase() } else { s.clone() }
        };
        Ok(match m {
            StringMatch::Exact(s) => Self::Exact(fold(s)),
            StringMatch::Prefix(s) => Self::Prefix(fold(s)),
            StringMatch::Suffix(s) => Self::Suffix(fold(s)),
            StringMatch::Regex(p) => {
                let anchored = if ignore_case {
                    format!("(?i)^(?:{p})$")
                } else {
                    format!("^(?:{p})$")
                };
                Self::Regex(Regex::new(&anchored).map_err(|source| MatcherError {
                    pattern: p.clone(),
                    source,
                })?)
            }
        })
    }

    /// Compile a list.
    pub fn compile_all(ms: &[StringMatch]) -> Result<Vec<Self>, MatcherError> {
        ms.iter().map(|m| Self::compile(m, false)).collect()
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }

    /// The length of the matched prefix when this is a prefix matcher.
    pub fn prefix_len(&self) -> Option<usize> {
        match self {
            Self::Prefix(s) => Some(s.len()),
            _ => None,
        }
    }
}

/// True if any matcher matches (false for an empty list).
pub fn any_match(ms: &[Matcher], value: &str) -> bool {
    ms.iter().any(|m| m.matches(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored() {
        let m = Matcher::compile(&StringMatch::Regex("/a.*".into()), false).unwrap();
        assert!(m.matches("/abc"));
        assert!(!m.matches("x/abc"));
        let m = Matcher::compile(&StringMatch::Regex("b".into()), false).unwrap();
        assert!(!m.matches("abc"));
    }

    #[test]
    fn ignore_case_folds_operands() {
        let m = Matcher::compile(&StringMatch::Prefix("/API".into()), true).unwrap();
        assert!(m.matches("/api/x"));
        let m = Matcher::compile(&StringMatch::Regex("/API".into()), true).unwrap();
        assert!(m.matches("/api"));
    }

    #[test]
    fn suffix_and_exact() {
        assert!(Matcher::Suffix(".com".into()).matches("a.com"));
        assert!(!Matcher::Exact("a".into()).matches("ab"));
        assert!(!any_match(&[], "x"));
    }
}
