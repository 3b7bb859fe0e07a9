//! The HTTP/1 framing scanner never panics, and its verdicts do not depend on
//! how the bytes are split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::head::Scanner;

fuzz_target!(|data: &[u8]| {
    let Some((&split_seed, bytes)) = data.split_first() else {
        return;
    };
    let whole = Scanner::new().feed(bytes);
    let mut s = Scanner::new();
    let mut pieces = Vec::new();
    let step = usize::from(split_seed % 7) + 1;
    for chunk in bytes.chunks(step) {
        pieces.extend(s.feed(chunk));
    }
    assert_eq!(whole, pieces);
});
