//! The one validator of Trellis configuration.
//!
//! Used by the admission webhook, `meshctl validate` and `meshctl analyze`. Validating an
//! object runs, in order:
//! 1. **structure**: the object against its generated CRD schema (types, required fields,
//!    enums, ranges, patterns, unknown fields) — what the API server checks;
//! 2. **CEL**: the schema's `x-kubernetes-validations` rules, evaluated offline;
//! 3. **semantics**: Rust checks for the rest (durations, hosts, regexes, weights, CIDRs,
//!    principals, mutually exclusive fields, unsupported features...).
//!
//! Every [`Finding`] names its severity, the object (`Kind namespace/name`), the field path
//! (`spec.http[0].route[1].weight`), what is wrong and what is allowed.

mod cel;
mod connection_pool;
mod format;
mod gateway;
mod mesh;
mod networking;
mod redirect;
mod security;
mod server_tls;
mod service_entry;
mod sidecar;
mod structural;
#[cfg(test)]
mod testing;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::document::{Classification, Kind, classify};

pub use format::export_to_problems;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is invalid and must be rejected.
    Error,
    /// The object is valid but probably not what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// The object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ObjectRef {
    /// Kind as written in the document (`VirtualService`).
    pub kind: String,
    /// Namespace, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name (empty when missing).
    pub name: String,
}

impl ObjectRef {
    /// The reference of a JSON object, read from its `kind` and `metadata`.
    pub fn of(obj: &Value) -> ObjectRef {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        ObjectRef {
            kind: s(obj.get("kind")).unwrap_or_else(|| "<no kind>".into()),
            namespace: s(obj.pointer("/metadata/namespace")),
            name: s(obj.pointer("/metadata/name"))
                .or_else(|| s(obj.pointer("/metadata/generateName")).map(|g| format!("{g}*")))
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() { "<no name>" } else { &self.name };
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{name}", self.kind),
            None => write!(f, "{} {name}", self.kind),
        }
    }
}

/// One problem found in an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The object.
    pub object: ObjectRef,
    /// Field path, e.g. `spec.http[0].route[1].weight` (empty for the whole object).
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}: {}", self.severity, self.object, self.message)
        } else {
            write!(f, "{}: {}: {}: {}", self.severity, self.object, self.path, self.message)
        }
    }
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// Collects findings about one object; the semantic checks write into it.
#[derive(Debug)]
pub(crate) struct Findings {
    object: ObjectRef,
    namespace: String,
    out: Vec<Finding>,
}

impl Findings {
    fn new(object: ObjectRef) -> Findings {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        Findings {
            object,
            namespace,
            out: Vec::new(),
        }
    }

    /// The namespace the object lives in (`default` when unset, as kubectl would apply it).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path.into(), message.into());
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path.into(), message.into());
    }

    fn push(&mut self, severity: Severity, path: String, message: String) {
        let f = Finding {
            severity,
            object: self.object.clone(),
            path,
            message,
        };
        if !self.out.contains(&f) {
            self.out.push(f);
        }
    }
}

/// The outcome of validating one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A Trellis (or Istio) object was validated; the findings may be empty.
    Validated {
        /// The kind it was validated as.
        kind: Kind,
        /// Everything found, errors first.
        findings: Vec<Finding>,
    },
    /// Not Trellis' to validate (a Kubernetes built-in or another API); says why.
    Skipped(String),
}

/// The validator: every kind's CRD schema, its compiled CEL rules and its compiled patterns,
/// built once. Validating an object regenerates nothing.
///
/// [`validate`] uses one built on first use per thread; build your own to control when the
/// cost (tens of milliseconds) is paid.
pub struct Validator {
    kinds: Vec<(Kind, KindSchema)>,
    cel: kube::core::cel::Validator,
}

struct KindSchema {
    structure: structural::Node,
    cel: cel::Rules,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<Kind> = self.kinds.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Validator")
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// Build the validator: generate every CRD schema once, compile its CEL rules and patterns.
    pub fn new() -> Validator {
        let kinds = crate::crd::all()
            .into_iter()
            .filter_map(|crd| {
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| k.group() == crd.spec.group && k.name() == crd.spec.names.kind)?;
                let schema = crd
                    .spec
                    .versions
                    .into_iter()
                    .next()
                    .and_then(|v| v.schema)
                    .and_then(|s| s.open_api_v3_schema)
                    .map(|s| serde_json::to_value(s).expect("a schema always serializes to JSON"))?;
                let cel = cel::Rules::of(&schema);
                let structure = structural::Node::of(&schema, &structural::Patterns::of(&schema));
                Some((kind, KindSchema { structure, cel }))
            })
            .collect();
        Validator {
            kinds,
            cel: kube::core::cel::Validator::new(),
        }
    }

    /// Validate one object (a parsed YAML/JSON document).
    ///
    /// Trellis apiVersions and Istio's (`networking.istio.io` v1/v1beta1/v1alpha3,
    /// `security.istio.io` v1/v1beta1) are validated as the matching Trellis kind; Kubernetes
    /// built-ins and other APIs are skipped; an unknown `*.trellis.dev` kind is an error.
    ///
    /// # Guarantees
    /// Never panics, whatever the input; findings are deterministic and ordered errors first.
    pub fn validate(&self, obj: &Value) -> Outcome {
        let object = ObjectRef::of(obj);
        let mut f = Findings::new(object);
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        let kind_name = obj.get("kind").and_then(Value::as_str);
        let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
            f.error(
                "",
                "apiVersion and kind are required, e.g. apiVersion: networking.trellis.dev/v1alpha1, kind: VirtualService",
            );
            return Outcome::Validated {
                kind: Kind::VirtualService,
                findings: finish(f),
            };
        };
        let kind = match classify(api_version, kind_name) {
            Classification::Trellis(k) | Classification::Istio { kind: k, .. } => k,
            Classification::BuiltIn => {
                return Outcome::Skipped(format!(
                    "{api_version} {kind_name} is a Kubernetes kind; not validated by Trellis"
                ));
            }
            Classification::Foreign => {
                return Outcome::Skipped(format!(
                    "{api_version} {kind_name} is not a Trellis kind; not validated"
                ));
            }
            Classification::Unknown { reason } => {
                f.error("apiVersion", reason);
                return Outcome::Validated {
                    kind: Kind::VirtualService,
                    findings: finish(f),
                };
            }
        };
        self.validate_as(kind, obj, &mut f);
        Outcome::Validated {
            kind,
            findings: finish(f),
        }
    }

    fn validate_as(&self, kind: Kind, obj: &Value, f: &mut Findings) {
        // Validate the object as if it carried the Trellis apiVersion (Istio objects included;
        // copied only for them).
        let api_version = kind.api_version();
        let obj = if obj.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str()) {
            std::borrow::Cow::Borrowed(obj)
        } else {
            let mut copy = obj.clone();
            copy["apiVersion"] = Value::String(api_version);
            std::borrow::Cow::Owned(copy)
        };
        let obj: &Value = &obj;
        format::metadata(obj, kind.namespaced(), f);

        let Some((_, schema)) = self.kinds.iter().find(|(k, _)| *k == kind) else {
            f.error("", format!("no CRD schema for {kind}; this is a bug in trellis-api"));
            return;
        };
        let structural_ok = structural::check(&schema.structure, obj, f);
        for broken in schema.cel.check(&self.cel, obj) {
            f.error(broken.path.trim_start_matches('.'), broken.message);
        }
        if !structural_ok {
            // The typed checks need a well-formed object; the structural findings say what to fix.
            return;
        }
        match kind {
            Kind::VirtualService => {
                typed::<crate::networking::VirtualService>(obj, f, |o, f| networking::virtual_service(&o.spec, f))
            }
            Kind::DestinationRule => {
                typed::<crate::networking::DestinationRule>(obj, f, |o, f| networking::destination_rule(&o.spec, f))
            }
            Kind::Gateway => typed::<crate::networking::Gateway>(obj, f, |o, f| gateway::gateway(&o.spec, f)),
            Kind::ServiceEntry => {
                typed::<crate::networking::ServiceEntry>(obj, f, |o, f| service_entry::service_entry(&o.spec, f))
            }
            Kind::Sidecar => typed::<crate::networking::Sidecar>(obj, f, |o, f| sidecar::sidecar(&o.spec, f)),
            Kind::PeerAuthentication => {
                typed::<crate::security::PeerAuthentication>(obj, f, |o, f| security::peer_authentication(&o.spec, f))
            }
            Kind::AuthorizationPolicy => {
                typed::<crate::security::AuthorizationPolicy>(obj, f, |o, f| security::authorization_policy(&o.spec, f))
            }
            Kind::RequestAuthentication => typed::<crate::security::RequestAuthentication>(obj, f, |o, f| {
                security::request_authentication(&o.spec, f)
            }),
            Kind::Mesh => typed::<crate::mesh::Mesh>(obj, f, mesh::mesh),
        }
    }
}

thread_local! {
    /// Built on a thread's first [`validate`]: the CEL programs are not `Sync`, and a build per
    /// thread (a handful in the webhook's runtime) is cheaper than a lock on every object.
    static VALIDATOR: Validator = Validator::new();
}

/// Validate one object (a parsed YAML/JSON document) with this thread's [`Validator`]; see
/// [`Validator::validate`].
///
/// # Guarantees
/// Never panics, whatever the input; findings are deterministic and ordered errors first.
pub fn validate(obj: &Value) -> Outcome {
    VALIDATOR.with(|v| v.validate(obj))
}

fn finish(f: Findings) -> Vec<Finding> {
    let mut out = f.out;
    // Stable: errors first, then by path, keeping the checks' order within a path.
    out.sort_by(|a, b| a.severity.cmp(&b.severity).then_with(|| a.path.cmp(&b.path)));
    out
}

fn typed<T: DeserializeOwned>(obj: &Value, f: &mut Findings, check: impl FnOnce(&T, &mut Findings)) {
    // why: tracking the path costs as much as decoding again; it is needed only for the error.
    if let Ok(o) = T::deserialize(obj) {
        return check(&o, f);
    }
    match serde_path_to_error::deserialize::<_, T>(obj) {
        Ok(o) => check(&o, f),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            f.error(path, e.into_inner().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn findings(obj: Value) -> Vec<Finding> {
        match validate(&obj) {
            Outcome::Validated { findings, .. } => findings,
            Outcome::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn every_kind_has_a_schema_and_every_pattern_compiles() {
        let v = Validator::new();
        let kinds: Vec<Kind> = v.kinds.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, Kind::ALL);
        for crd in crate::crd::all() {
            let kind = &crd.spec.names.kind;
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref());
            let schema = serde_json::to_value(schema).unwrap();
            let patterns = structural::Patterns::of(&schema);
            let mut all = Vec::new();
            fn collect(v: &Value, out: &mut Vec<String>) {
                match v {
                    Value::Object(m) => {
                        if let Some(p) = m.get("pattern").and_then(Value::as_str) {
                            out.push(p.to_string());
                        }
                        m.values().for_each(|c| collect(c, out));
                    }
                    Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
                    _ => {}
                }
            }
            collect(&schema, &mut all);
            for p in all {
                assert!(patterns.0.contains_key(&p), "{kind}: pattern {p} does not compile");
            }
        }
    }

    #[test]
    fn built_ins_are_skipped() {
        let out = validate(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}));
        assert!(matches!(out, Outcome::Skipped(_)));
    }

    #[test]
    fn missing_kind_is_an_error() {
        let out = findings(json!({"metadata": {"name": "x"}}));
        assert!(has_errors(&out));
    }

    #[test]
    fn unknown_trellis_kind_is_an_error() {
        let out = findings(
            json!({"apiVersion": "networking.trellis.dev/v1alpha1", "kind": "WorkloadEntry", "metadata": {"name": "x"}}),
        );
        assert_eq!(out[0].path, "apiVersion");
        assert!(out[0].message.contains("serves"), "{}", out[0].message);
    }

    #[test]
    fn display_names_object_and_path() {
        let out = findings(json!({
            "apiVersion": "networking.trellis.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "timeout": "soon"}]}
        }));
        let text = out[0].to_string();
        assert!(
            text.starts_with("error: VirtualService shop/r: spec.http[0].timeout: "),
            "{text}"
        );
    }

    #[test]
    fn unsupported_fields_are_rejected_by_cel() {
        let out = findings(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": ["r"], "http": [{"delegate": {"name": "x"}}]}
        }));
        let f = out
            .iter()
            .find(|f| f.message.contains("not supported by Trellis yet"))
            .expect("rejected");
        assert_eq!(f.path, "spec.http[0].delegate");
        assert!(f.message.contains("delegate"));
    }
}
