//! `trellis-proxy`: the Trellis data plane.

pub mod ports;
