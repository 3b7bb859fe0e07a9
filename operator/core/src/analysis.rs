//! Configuration analysis: every problem in a set of objects (a cluster's, files', or files
//! laid over a cluster's), one finding per problem, each with a code from the one list
//! ([`crate::code`]), the object as `Kind namespace/name`, the file and line when it came
//! from a file, and a message that names the fix. `meshctl analyze` prints them; the operator
//! can surface the same findings as status conditions.
//!
//! The analyzers, by what they look at:
//! - the one validator (`IST0106` schema errors, `IST0133` warnings);
//! - [`references`]: gateways, hosts, ports, subsets, credentials, selectors, namespaces and
//!   Services that do not exist (`IST0101`, `IST0112`, `IST0161`, `IST0174`), policies and
//!   subsets selecting nothing (`IST0127`, `IST0173`), TLS without server verification
//!   (`IST0128`, `IST0129`);
//! - [`conflicts`]: mesh VirtualServices sharing a host (`IST0109`), Gateways sharing a
//!   selector, port and host (`IST0145`) or a certificate (`IST0138`);
//! - [`rules`]: VirtualService rules never reached (`IST0130`, `IST0131`) and hosts a bound
//!   Gateway does not serve (`IST0132`);
//! - [`port_settings`]: DestinationRule port entries that leave their port without settings
//!   (whole blocks, or the rest of a block they set in part) the rest of the destination has
//!   (`TRL0114`);
//! - [`workloads`]: port naming (`IST0118`), Services' exportTo annotations (`IST0125`),
//!   gateway ports missing from their Service (`IST0162`), injection (`IST0102`, `IST0103`) and the proxy's reserved UID (`IST0144`);
//! - the compiler ([`crate::compile::diagnose`]): what it would drop or ignore (`TRL` codes);
//! - [`proxies`]: the operator's sync state — NACKs, version skew, proxies out of sync.
//!
//! # Caveats
//! Checks that need a kind of object (Services, Pods, Secrets, Namespaces) run only when the
//! input is complete for that kind ([`Input::complete`]): files without Pods say nothing about
//! which pods exist, so no selector is reported as matching none.

mod conflicts;
mod port_settings;
mod proxies;
mod references;
mod rules;
mod workloads;

pub use proxies::{Nacked, ProxySync, merge as merge_sync_states, proxies};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use trellis_api::document::{Classification, classify, field_line};
use trellis_api::validation::{Outcome, Severity as ValidationSeverity, Validator};

use crate::code::{Code, Level};
use crate::registry::ObjectKey;
use crate::snapshot::{InputKind, Snapshot};

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file (`-` for standard input).
    pub file: String,
    /// The line its document starts on.
    pub line: usize,
    /// The document's text, to find the line of a field (empty: the document's line is used).
    pub text: String,
}

/// One object to analyze.
#[derive(Debug, Clone)]
pub struct Object {
    /// The object, with `apiVersion` and `kind`.
    pub value: Value,
    /// Where it came from (none for objects listed from a cluster).
    pub source: Option<Source>,
}

/// The objects to analyze.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The objects. A later object with the same kind, namespace and name replaces an earlier
    /// one (files laid over a cluster's objects come after them).
    pub objects: Vec<Object>,
    /// The kinds the objects hold all of (a cluster's listing: every kind; files: none). Checks
    /// that a reference resolves, or a selector selects, run for a kind when it is complete
    /// here or when the objects include any of that kind.
    pub complete: BTreeSet<InputKind>,
    /// The root namespace (mesh-wide policies: [`Snapshot::root_namespace`]), the namespace the
    /// cluster's operator runs in; none: the snapshot's default, `trellis-system`.
    pub root_namespace: Option<String>,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The code (`IST0101`).
    pub code: Code,
    /// The code's level.
    pub level: Level,
    /// The object, `Kind namespace/name` (`Kind name` for cluster-scoped objects).
    pub origin: String,
    /// The object's namespace (empty for cluster-scoped objects).
    #[serde(skip)]
    pub namespace: String,
    /// The file the object came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line of the field at fault (or of the object) in that file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The field at fault, e.g. `spec.http[0].route[1].destination.subset`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    /// Istio's log format: `Error [IST0101] (VirtualService shop/web vs.yaml:12) message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({}", self.level, self.code, self.origin)?;
        if let Some(file) = &self.file {
            write!(f, " {file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
        }
        write!(f, ") {}", self.message)
    }
}

/// A finding before it is placed in a file: the object by kind and key, and the field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Raw {
    pub(crate) code: Code,
    pub(crate) kind: String,
    pub(crate) key: ObjectKey,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl Raw {
    pub(crate) fn new(
        code: Code,
        kind: &str,
        key: ObjectKey,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Raw {
        Raw {
            code,
            kind: kind.to_string(),
            key,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What the analyzers read: the snapshot the compiler would compile, the raw facts it does
/// not keep (pods' users, Secrets' types), and which kinds are complete.
pub(crate) struct Facts<'a> {
    pub(crate) snapshot: &'a Snapshot,
    /// Every pod as listed: namespace/name, labels, whether it runs the proxy, the
    /// containers running as UID 1337, and whether it opts out of injection.
    pub(crate) pods: Vec<Pod>,
    /// Every Secret: its type and the keys of its data.
    pub(crate) secrets: BTreeMap<ObjectKey, (String, BTreeSet<String>)>,
    complete: BTreeSet<InputKind>,
}

/// The facts analysis needs about a pod.
#[derive(Debug, Clone)]
pub(crate) struct Pod {
    pub(crate) key: ObjectKey,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) meshed: bool,
    pub(crate) uid_1337: Vec<String>,
}

impl Facts<'_> {
    /// The pods of a namespace (pods are sorted by namespace and name).
    pub(crate) fn pods_in<'p>(&'p self, namespace: &'p str) -> impl Iterator<Item = &'p Pod> + 'p {
        let start = self.pods.partition_point(|p| p.key.namespace.as_str() < namespace);
        self.pods[start..]
            .iter()
            .take_while(move |p| p.key.namespace == namespace)
    }

    /// Whether the input holds every object of `kind`.
    pub(crate) fn knows(&self, kind: InputKind) -> bool {
        self.complete.contains(&kind)
    }
}

/// Kinds and keys of the objects the snapshot keeps, to place findings on their sources.
type Sources<'a> = BTreeMap<(String, ObjectKey), &'a Option<Source>>;

/// Analyze `input`: every problem, once, sorted by level (errors first), object and code.
///
/// # Guarantees
/// Deterministic and never panics, whatever the input.
pub fn analyze(input: &Input, validator: &Validator) -> Vec<Finding> {
    let mut raws: Vec<Raw> = Vec::new();
    let mut snapshot = Snapshot::default();
    if let Some(root) = &input.root_namespace {
        snapshot.root_namespace = root.clone();
    }
    let mut sources: Sources<'_> = BTreeMap::new();
    let mut pods: BTreeMap<ObjectKey, Pod> = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let mut complete = input.complete.clone();
    let mut present = BTreeSet::new();
    // Later objects replace earlier ones of the same kind and key (files over a cluster).
    let mut latest: BTreeMap<(String, ObjectKey), usize> = BTreeMap::new();
    for (i, o) in input.objects.iter().enumerate() {
        latest.insert(identity(&o.value), i);
    }
    for (i, o) in input.objects.iter().enumerate() {
        let (kind, key) = identity(&o.value);
        if latest.get(&(kind.clone(), key.clone())) != Some(&i) {
            continue;
        }
        sources.insert((kind.clone(), key.clone()), &o.source);
        if let Some(k) = input_kind(&o.value) {
            present.insert(k);
        }
        let invalid = validate(validator, &o.value, &kind, &key, &mut raws);
        if invalid {
            continue;
        }
        if let Err(e) = snapshot.add(&o.value) {
            raws.push(Raw::new(Code::SchemaValidationError, &kind, key.clone(), "", e.message));
            continue;
        }
        match kind.as_str() {
            "Pod" if api_version(&o.value) == "v1" => {
                pods.insert(key.clone(), pod_facts(&o.value, key));
            }
            "Secret" if api_version(&o.value) == "v1" => {
                let type_ = o.value.get("type").and_then(Value::as_str).unwrap_or("Opaque");
                let keys = ["data", "stringData"]
                    .iter()
                    .filter_map(|f| o.value.get(*f).and_then(Value::as_object))
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                secrets.insert(key, (type_.to_string(), keys));
            }
            _ => {}
        }
    }
    complete.extend(present);
    let facts = Facts {
        snapshot: &snapshot,
        pods: pods.into_values().collect(),
        secrets,
        complete,
    };
    references::check(&facts, &mut raws);
    conflicts::check(&facts, &mut raws);
    rules::check(&facts, &mut raws);
    port_settings::check(&facts, &mut raws);
    workloads::check(&facts, &mut raws);
    compiler(&facts, &mut raws);
    place(raws, &sources)
}

/// The compiler's diagnostics with the codes only it reports (the analyzers report the
/// others, with the field at fault).
fn compiler(facts: &Facts<'_>, raws: &mut Vec<Raw>) {
    const ITS_OWN: &[Code] = &[
        Code::UnsupportedDropped,
        Code::UnsupportedIgnored,
        Code::VirtualServiceHostNotFound,
        Code::VirtualServiceShadowed,
        Code::ConflictingPeerAuthentications,
        Code::GatewayPortProtocolConflict,
        Code::ServiceEntryHostConflict,
    ];
    let mut seen = BTreeSet::new();
    for d in crate::compile::diagnose(facts.snapshot) {
        // Without the Services, every mesh host would look unknown.
        if !ITS_OWN.contains(&d.code)
            || (d.code == Code::VirtualServiceHostNotFound && !facts.knows(InputKind::Service))
        {
            continue;
        }
        let Some((kind, rest)) = d.resource.split_once(' ') else {
            continue;
        };
        let Some((ns, name)) = rest.split_once('/') else {
            continue;
        };
        // Messages that start with the field (`spec.tcp[0].route: ...`) are placed on it.
        let field = d
            .message
            .split_once(": ")
            .filter(|(f, _)| f.starts_with("spec.") && !f.contains(' '))
            .map(|(f, _)| f.to_string())
            .unwrap_or_default();
        // One finding per problem: the compiler says it once per proxy it affects.
        if seen.insert((
            d.code,
            kind.to_string(),
            ns.to_string(),
            name.to_string(),
            field.clone(),
        )) {
            raws.push(Raw::new(d.code, kind, ObjectKey::new(ns, name), field, d.message));
        }
    }
}

/// Validate a Trellis object; returns whether it has errors (then the analyzers skip it).
fn validate(validator: &Validator, value: &Value, kind: &str, key: &ObjectKey, raws: &mut Vec<Raw>) -> bool {
    let Outcome::Validated { findings, .. } = validator.validate(value) else {
        return false;
    };
    let mut invalid = false;
    for f in findings {
        let code = match f.severity {
            ValidationSeverity::Error => {
                invalid = true;
                Code::SchemaValidationError
            }
            ValidationSeverity::Warning => Code::SchemaWarning,
        };
        let message = if f.path.is_empty() {
            f.message
        } else {
            format!("{}: {}", f.path, f.message)
        };
        raws.push(Raw::new(code, kind, key.clone(), f.path, message));
    }
    invalid
}

/// Kind (the Trellis kind for Istio objects) and namespace/name of an object; namespaced
/// objects without a namespace are in `default`, as kubectl applies them.
fn identity(v: &Value) -> (String, ObjectKey) {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let (kind, namespaced) = match input_kind(v) {
        Some(k) => (k.kind().to_string(), k.namespaced()),
        None => (s("/kind"), true),
    };
    let mut ns = s("/metadata/namespace");
    if ns.is_empty() && namespaced {
        ns = "default".into();
    }
    (kind, ObjectKey::new(ns, s("/metadata/name")))
}

fn api_version(v: &Value) -> &str {
    v.get("apiVersion").and_then(Value::as_str).unwrap_or_default()
}

fn input_kind(v: &Value) -> Option<InputKind> {
    let kind = v.get("kind").and_then(Value::as_str)?;
    match classify(api_version(v), kind) {
        Classification::Trellis(k) | Classification::Istio { kind: k, .. } => Some(InputKind::Trellis(k)),
        _ if api_version(v) == "v1" => InputKind::ALL.iter().copied().find(|k| k.kind() == kind),
        _ => None,
    }
}

fn pod_facts(v: &Value, key: ObjectKey) -> Pod {
    let labels = v
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let containers = |f: &str| {
        v.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let all: Vec<Value> = containers("containers")
        .into_iter()
        .chain(containers("initContainers"))
        .collect();
    let name = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let meshed = all.iter().any(|c| name(c) == crate::registry::PROXY_CONTAINER);
    let pod_uid = v.pointer("/spec/securityContext/runAsUser").and_then(Value::as_i64);
    let uid_1337 = containers("containers")
        .iter()
        .filter(|c| name(c) != crate::registry::PROXY_CONTAINER)
        .filter(|c| {
            c.pointer("/securityContext/runAsUser")
                .and_then(Value::as_i64)
                .or(pod_uid)
                == Some(PROXY_UID)
        })
        .map(name)
        .collect();
    Pod {
        key,
        labels,
        meshed,
        uid_1337,
    }
}

/// The user the proxy runs as, which capture excludes.
pub(crate) const PROXY_UID: i64 = 1337;

/// Findings not tied to a file, sorted.
fn place_all(raws: Vec<Raw>) -> Vec<Finding> {
    place(raws, &BTreeMap::new())
}

/// Place findings on their objects' files and lines; one per problem, sorted.
fn place(raws: Vec<Raw>, sources: &Sources<'_>) -> Vec<Finding> {
    let raws: BTreeSet<Raw> = raws.into_iter().collect();
    let mut out: Vec<Finding> = raws
        .into_iter()
        .map(|r| {
            let source = sources.get(&(r.kind.clone(), r.key.clone())).and_then(|s| s.as_ref());
            let origin = if r.key.namespace.is_empty() {
                format!("{} {}", r.kind, r.key.name)
            } else {
                format!("{} {}", r.kind, r.key)
            };
            let line = source.map(|s| {
                if r.field.is_empty() || s.text.is_empty() {
                    s.line
                } else {
                    field_line(&s.text, s.line, &r.field).unwrap_or(s.line)
                }
            });
            Finding {
                code: r.code,
                level: r.code.level(),
                origin,
                namespace: r.key.namespace,
                file: source.map(|s| s.file.clone()),
                line,
                field: r.field,
                message: r.message,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.level
            .cmp(&a.level)
            .then_with(|| a.origin.cmp(&b.origin))
            .then_with(|| a.code.cmp(&b.code))
            .then_with(|| a.line.cmp(&b.line))
            .then_with(|| a.message.cmp(&b.message))
    });
    out
}

/// The key of an object's metadata (`default` namespace when unset).
pub(crate) fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}
