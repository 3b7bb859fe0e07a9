//! What a proxy's NACK says of a configuration it refused for a reason of its environment —
//! a listener's address in use, or not assigned — and applies again until it binds (the push
//! client writes it, `trellis_push::client::Refusal`): the words the operator's analysis
//! recognises such a NACK by (`TRL0107`'s hint is about the port, not the configuration),
//! written once.

/// What the NACK of a configuration the proxy applies again says after the error.
pub const APPLIED_AGAIN: &str = "the proxy applies this version again";

/// Whether the NACK `error` says the proxy applies the version again: the configuration is not
/// at fault, the proxy's environment refused it for now.
pub fn applied_again(error: &str) -> bool {
    error.contains(APPLIED_AGAIN)
}
