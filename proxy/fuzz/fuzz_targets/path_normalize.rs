//! Path normalization never panics, and its output is normalized: it starts
//! with '/', has no dot segments or repeated slashes, and is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_contract::{EscapedSlashes, PathNormalization};
use trellis_proxy::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for escaped_slashes in [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Decode] {
        let policy = PathNormalization {
            merge_slashes: true,
            escaped_slashes,
        };
        if let Ok(p) = normalize(path, &policy) {
            assert!(p.starts_with('/'), "{p:?}");
            assert!(!p.contains("//"), "{p:?}");
            assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p:?}");
            assert_eq!(normalize(&p, &policy).as_deref(), Ok(&*p), "not idempotent");
        }
    }
});
