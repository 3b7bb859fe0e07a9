//! The `trellis-proxy` binary: parses arguments and runs the library's `App`.

fn main() {}
