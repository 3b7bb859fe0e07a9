//! Request path normalization, applied before routing and authorization so
//! that `/a/../admin`, `/%61dmin` and `//admin` cannot slip past a rule on
//! `/admin`.
//!
//! Policy (documented in the contract's `PathNormalization`):
//! 1. the path must be origin-form (start with `/`);
//! 2. percent-encodings must be well formed; encodings of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded, all others kept with upper-case hex;
//! 3. encoded slashes (`%2F`, `%5C`) are rejected, kept, or decoded to `/`;
//! 4. repeated slashes are merged when configured;
//! 5. dot segments are removed (RFC 3986 §5.2.4).

use std::borrow::Cow;
use trellis_contract::{EscapedSlashes, PathNormalization};

/// Why a path was rejected (the proxy answers 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form.
    #[error("request path must start with '/'")]
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEncoding,
    /// `%2F` or `%5C` with the `reject` policy.
    #[error("encoded slash or backslash in path is not allowed")]
    EscapedSlash,
}

/// Normalize `path` (without the query) according to `policy`; a path normalization leaves
/// as it is comes back borrowed.
pub fn normalize<'a>(path: &'a str, policy: &PathNormalization) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(path, policy) {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    // Work on bytes: everything pushed is either ASCII or copied verbatim from
    // the (valid UTF-8) input, so the result is valid UTF-8 again.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return Err(PathError::BadEncoding);
            };
            let v = h * 16 + l;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v);
            } else if v == b'/' || v == b'\\' {
                match policy.escaped_slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Keep => push_encoded(&mut out, v),
                    EscapedSlashes::Decode => out.push(b'/'),
                }
            } else {
                push_encoded(&mut out, v);
            }
            i += 3;
        } else {
            out.push(if b == b'\\' && policy.escaped_slashes == EscapedSlashes::Decode {
                b'/'
            } else {
                b
            });
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| PathError::BadEncoding)?;
    let merged = if policy.merge_slashes {
        let mut out = String::with_capacity(decoded.len());
        let mut prev_slash = false;
        for c in decoded.chars() {
            if c == '/' && prev_slash {
                continue;
            }
            prev_slash = c == '/';
            out.push(c);
        }
        out
    } else {
        decoded
    };
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

/// Whether normalization leaves an origin-form `path` as it is: no percent-encoding, no
/// backslash, no repeated slash to merge, no dot segment. why: that is nearly every request's
/// path, which then costs one scan instead of four copies.
fn is_normal(path: &str, policy: &PathNormalization) -> bool {
    let mut prev = 0u8;
    for &b in path.as_bytes() {
        if b == b'%' || b == b'\\' || (policy.merge_slashes && b == b'/' && prev == b'/') {
            return false;
        }
        prev = b;
    }
    !path.split('/').any(|s| s == "." || s == "..")
}

fn push_encoded(out: &mut Vec<u8>, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'%');
    out.push(HEX[usize::from(v >> 4)]);
    out.push(HEX[usize::from(v & 15)]);
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, &PathNormalization::default()).map(Cow::into_owned)
    }

    #[test]
    fn a_path_left_as_it_is_is_not_copied() {
        let policy = PathNormalization::default();
        for p in ["/", "/api/v1/items", "/a/b/", "/a.b/c..d/.e", "/\u{4cc}/zz"] {
            assert!(matches!(normalize(p, &policy), Ok(Cow::Borrowed(q)) if q == p), "{p}");
        }
        for p in ["/a/./b", "/a/../b", "//a", "/%61", "/a\\b", "/a/.."] {
            assert!(matches!(normalize(p, &policy), Ok(Cow::Owned(_))), "{p}");
        }
        let keep = PathNormalization {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
        };
        assert!(matches!(normalize("//a", &keep), Ok(Cow::Borrowed("//a"))));
    }

    #[test]
    fn removes_dot_segments() {
        assert_eq!(norm("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/../../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn decodes_unreserved_before_dot_removal() {
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/x/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/a%20b%3f").unwrap(), "/a%20b%3F");
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(norm("//admin///x").unwrap(), "/admin/x");
        let keep = PathNormalization {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
        };
        assert_eq!(normalize("//a", &keep).unwrap(), "//a");
    }

    #[test]
    fn escaped_slash_policies() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathError::EscapedSlash));
        let keep = PathNormalization {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
        };
        assert_eq!(normalize("/a%2fb", &keep).unwrap(), "/a%2Fb");
        let decode = PathNormalization {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Decode,
        };
        assert_eq!(normalize("/a%2F..%2Fadmin", &decode).unwrap(), "/admin");
    }

    #[test]
    fn non_ascii_is_preserved_and_idempotent() {
        // Found by the path_normalize fuzz target.
        let once = norm("/\u{4cc}\u{435}/zz").unwrap();
        assert_eq!(once, "/\u{4cc}\u{435}/zz");
        assert_eq!(norm(&once).unwrap(), once);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(norm("a"), Err(PathError::NotOriginForm));
        assert_eq!(norm("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEncoding));
    }
}
