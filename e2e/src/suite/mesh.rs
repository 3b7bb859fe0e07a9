//! The Mesh as a test reads and changes it: the object, its conditions, a merge patch of its
//! spec, and the events the operator published about it.

use anyhow::Context as _;
use serde_json::{Value, json};

use super::Target;

/// The Mesh `default`.
pub fn get(t: &Target) -> anyhow::Result<Value> {
    t.get_json(&["mesh", "default"])
}

/// The condition of `type_` in `mesh`'s status.
pub fn condition<'a>(mesh: &'a Value, type_: &str) -> Option<&'a Value> {
    mesh["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether the status describes the spec as it is (`observedGeneration` is the generation).
pub fn observed(mesh: &Value) -> bool {
    mesh["status"]["observedGeneration"] == mesh["metadata"]["generation"]
}

/// `kubectl patch mesh default --type merge` with `{"spec": spec}`.
pub fn patch_spec(t: &Target, spec: Value) -> anyhow::Result<()> {
    let patch = json!({ "spec": spec }).to_string();
    t.kubectl_ok(&["patch", "mesh", "default", "--type", "merge", "-p", &patch], None)
        .context("patching Mesh default")?;
    Ok(())
}

/// The Mesh's events with `reason` (kubectl's core/v1 view), each note with its count.
pub fn events(t: &Target, reason: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let events = t.get_json(&["events", "-A"])?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == "Mesh" && e["reason"] == reason)
        .map(|e| {
            let count = e["series"]["count"]
                .as_u64()
                .or_else(|| e["count"].as_u64())
                .unwrap_or(1);
            (e["message"].as_str().unwrap_or_default().to_string(), count)
        })
        .collect())
}

/// Runs one named step of a test like [`super::steps::step`], and on failure also prints the
/// Mesh (its status says what the operator thinks).
pub fn step<T>(t: &Target, test: &str, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    super::steps::step(t, test, name, || {
        f().inspect_err(|_| {
            eprintln!(
                "--- Mesh\n{}",
                t.kubectl_ok(&["get", "mesh", "default", "-o", "yaml"], None)
                    .unwrap_or_else(|e| e.to_string())
            );
        })
    })
}
