//! The injector's JSON patch as the webhook writes it.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::value::RawValue;

/// A JSON patch as the webhook writes it: serialized, and as the AdmissionReview's `patch` (a
/// JSON string of its base64), each made once; cloned by reference.
// why: a remembered answer was encoded to base64 and its ~7 KiB escaped into the answer's JSON
// for every pod of a scale-up.
#[derive(Debug, Clone)]
pub struct Patch(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    json: Vec<u8>,
    base64: Box<RawValue>,
}

impl Patch {
    /// The patch `json` (a serialized JSON patch).
    ///
    /// # Errors
    /// Never in practice: its base64 in quotes is a JSON string.
    pub fn new(json: Vec<u8>) -> Result<Patch, serde_json::Error> {
        let base64 = format!("\"{}\"", base64::engine::general_purpose::STANDARD.encode(&json));
        let base64 = RawValue::from_string(base64)?;
        Ok(Patch(Arc::new(Encoded { json, base64 })))
    }

    /// The AdmissionReview's `patch`: the JSON string of the patch's base64.
    pub fn base64_json(&self) -> &RawValue {
        &self.0.base64
    }

    /// The size of both forms.
    pub fn weight(&self) -> usize {
        self.0.json.len() + self.0.base64.get().len()
    }
}

impl std::ops::Deref for Patch {
    type Target = [u8];

    /// The serialized JSON patch.
    fn deref(&self) -> &[u8] {
        &self.0.json
    }
}

impl PartialEq for Patch {
    fn eq(&self, other: &Patch) -> bool {
        self.0.json == other.0.json
    }
}

impl Eq for Patch {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_is_kept_with_its_base64_as_a_json_string() {
        // Text whose base64 has `+` and `/`, where the URL-safe alphabet would differ.
        let json = br#"[{"op":"add","path":"/a","value":"~~~???~~~???~~~???"}]"#.to_vec();
        let patch = Patch::new(json.clone()).unwrap();
        assert_eq!(&*patch, json.as_slice());
        let written: String = serde_json::from_str(patch.base64_json().get()).unwrap();
        let standard = base64::engine::general_purpose::STANDARD.encode(&json);
        assert_ne!(standard, base64::engine::general_purpose::URL_SAFE.encode(&json));
        assert_eq!(written, standard);
        assert_eq!(patch.weight(), json.len() + patch.base64_json().get().len());
        assert_eq!(patch.clone(), patch);
    }
}
