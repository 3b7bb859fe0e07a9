//! kubesim.
