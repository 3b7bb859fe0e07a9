//! The injector's answers, remembered: the pods of one scale-up reach the webhook identical but
//! for the fields the API server fills per pod (a ReplicaSet's pods arrive with `generateName`
//! and no name; `managedFields` carries a time), so the answer to the first one is the answer
//! to the other 499. [`Memo::answer`] decides a pod once ([`super::decide`], the typed PodSpec,
//! the template, the JSON patch) and answers its twins from a small bounded table.
//!
//! # Guarantees
//! - **A remembered answer is the answer [`super::decide`] gives.** The key is every argument of
//!   `decide`: the pod — all of it but [`PER_POD_FIELDS`] of its `metadata` —, the namespace, the
//!   namespace's labels (all of them, or that the index has not seen it), the system namespaces
//!   and the sidecar [`Settings`] (the Mesh's proxy image included). A hit compares the whole key,
//!   never only its hash. Pods are compared as written, field by field in their order: the API
//!   server writes the pods of one template alike, and a twin written in another order is only
//!   decided again, never answered wrongly. `decide` carries the per-pod fields from its JSON before to its JSON
//!   after unchanged, so they never reach the patch (a JSON diff), and no message names them.
//! - **Settings changes invalidate.** Every kept answer was decided with the same settings and
//!   system namespaces; answering with other ones (a Mesh naming a new proxy image, a rollout
//!   assigning one is on the pod itself) empties the table first.
//! - **Bounded**: at most [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of keys and answers (their
//!   JSON size); a pod whose entry would weigh over [`MAX_ENTRY_BYTES`] is decided every time.
//!   The oldest answer goes first.
//!
//! # Caveats
//! The pod's `metadata` must be object metadata (what [`crate::admission::review`] checks before
//! any decision): `decide` ignores metadata it cannot read, so a per-pod field of the wrong type
//! would change its answer while the key leaves it out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use trellis_manifests::sidecar::Settings;

use super::{Answer, decide};

/// The fields of a pod's `metadata` that are not part of the key: set per pod by the API server
/// or its client, never read by the injector (it reads `labels`, `annotations` and `spec`).
pub const PER_POD_FIELDS: [&str; 8] = [
    "name",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
];

/// At most this many answers are kept.
// why: a scale-up needs one; a rollout restarting every workload of a namespace at once a few
// dozen. Each entry holds a pod (a few KiB) and its patch (about 5 KiB).
pub const MAX_ENTRIES: usize = 256;
/// At most this many bytes of kept pods and answers (their JSON size).
pub const MAX_BYTES: usize = 16 << 20;
/// A pod whose pod and answer weigh more than this is decided every time.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// The injector's remembered answers (see the module's documentation).
#[derive(Debug, Default)]
pub struct Memo {
    kept: Mutex<Kept>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The table, and the settings every answer in it was decided with.
#[derive(Debug, Default)]
struct Kept {
    regime: Option<(Settings, Vec<String>)>,
    entries: HashMap<u64, Arc<Entry>>,
    /// The keys of `entries`, oldest first.
    order: VecDeque<u64>,
    /// The weight of `entries`.
    bytes: usize,
}

impl Kept {
    fn decided_with(&self, settings: &Settings, system: &[&str]) -> bool {
        self.regime
            .as_ref()
            .is_some_and(|(s, sys)| s == settings && sys.iter().map(String::as_str).eq(system.iter().copied()))
    }
}

/// One remembered answer with its whole key.
#[derive(Debug)]
struct Entry {
    namespace: String,
    namespace_labels: Option<BTreeMap<String, String>>,
    /// The pod without [`PER_POD_FIELDS`].
    pod: Value,
    answer: Arc<Answer>,
    weight: usize,
}

impl Entry {
    fn is_for(&self, pod: &Value, namespace: &str, namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
        self.namespace == namespace && self.namespace_labels.as_ref() == namespace_labels && same_pod(&self.pod, pod)
    }
}

fn per_pod(field: &str) -> bool {
    PER_POD_FIELDS.contains(&field)
}

/// Hash `value` as it is written: maps in their order.
// why: `Value`'s own hash sorts every map's keys first (an allocation and a sort per map of the
// pod); the API server writes a pod's fields in one order, so twins hash alike without it.
fn hash_in_order(value: &Value, h: &mut DefaultHasher) {
    match value {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            b.hash(h);
        }
        Value::Number(n) => {
            h.write_u8(2);
            n.hash(h);
        }
        Value::String(s) => {
            h.write_u8(3);
            s.hash(h);
        }
        Value::Array(items) => {
            h.write_u8(4);
            h.write_usize(items.len());
            items.iter().for_each(|i| hash_in_order(i, h));
        }
        Value::Object(fields) => hash_fields(fields, h, |_| true),
    }
}

/// Hash the fields of `map` that `keep` keeps, in their order.
fn hash_fields(map: &serde_json::Map<String, Value>, h: &mut DefaultHasher, keep: impl Fn(&str) -> bool) {
    h.write_u8(5);
    for (name, v) in map.iter().filter(|(name, _)| keep(name)) {
        name.hash(h);
        hash_in_order(v, h);
    }
    // why: the end of the map, so that fields cannot move from one map into the next.
    h.write_u8(6);
}

/// The hash of the key: equal for pods that differ only in [`PER_POD_FIELDS`] (and written in
/// the same order).
fn key_hash(pod: &Value, namespace: &str, namespace_labels: Option<&BTreeMap<String, String>>) -> u64 {
    let mut h = DefaultHasher::new();
    namespace.hash(&mut h);
    namespace_labels.hash(&mut h);
    match pod {
        Value::Object(fields) => {
            h.write_u8(5);
            for (name, value) in fields {
                name.hash(&mut h);
                match value {
                    Value::Object(meta) if name == "metadata" => hash_fields(meta, &mut h, |field| !per_pod(field)),
                    other => hash_in_order(other, &mut h),
                }
            }
            h.write_u8(6);
        }
        other => hash_in_order(other, &mut h),
    }
    h.finish()
}

/// `pod` without [`PER_POD_FIELDS`].
fn without_per_pod_fields(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|name, _| !per_pod(name));
    }
    pod
}

/// Whether `a` and `b` are equal and written in the same order.
fn same_in_order(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_in_order(va, vb))
        }
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_in_order(a, b)),
        (a, b) => a == b,
    }
}

/// Whether `pod` equals `kept` (a pod without [`PER_POD_FIELDS`]) but for those fields, written
/// in the same order.
fn same_pod(kept: &Value, pod: &Value) -> bool {
    let (Value::Object(kept), Value::Object(pod)) = (kept, pod) else {
        return same_in_order(kept, pod);
    };
    kept.len() == pod.len()
        && kept.iter().zip(pod).all(|((kept_name, kept), (name, value))| {
            kept_name == name
                && match (kept, value) {
                    (Value::Object(kept_meta), Value::Object(meta)) if name == "metadata" => {
                        let mut fields = meta.iter().filter(|(field, _)| !per_pod(field));
                        kept_meta.iter().all(|(kept_field, kept_value)| {
                            fields
                                .next()
                                .is_some_and(|(field, v)| field == kept_field && same_in_order(kept_value, v))
                        }) && fields.next().is_none()
                    }
                    (kept, value) => same_in_order(kept, value),
                }
        })
}

/// The size of `value`'s JSON, not written anywhere.
fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

impl Answer {
    fn weight(&self) -> usize {
        match self {
            Answer::Inject { patch, image } => patch.weight() + image.len(),
            Answer::Skip { why, patch } => why.len() + patch.as_ref().map_or(0, super::Patch::weight),
            Answer::Unchanged(why) | Answer::Deny { why, .. } => why.len(),
        }
    }
}

impl Memo {
    /// The answer of [`super::decide`] for these arguments: remembered, or decided and kept.
    pub fn answer(
        &self,
        pod: &Value,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        system: &[&str],
        settings: &Settings,
    ) -> Arc<Answer> {
        let hash = key_hash(pod, namespace, namespace_labels);
        let found = {
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.decided_with(settings, system)
                .then(|| kept.entries.get(&hash).cloned())
                .flatten()
        };
        // why: the key is compared outside the lock (the entry does not change once kept), so
        // the two workers only contend for a table lookup.
        if let Some(entry) = found.filter(|e| e.is_for(pod, namespace, namespace_labels)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return entry.answer.clone();
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let answer = Arc::new(Answer::of(decide(pod, namespace, namespace_labels, system, settings)));
        let pod = without_per_pod_fields(pod);
        let weight = json_size(&pod)
            .saturating_add(answer.weight())
            .saturating_add(json_size(&namespace_labels))
            .saturating_add(namespace.len());
        if weight <= MAX_ENTRY_BYTES {
            let entry = Entry {
                namespace: namespace.to_string(),
                namespace_labels: namespace_labels.cloned(),
                pod,
                answer: answer.clone(),
                weight,
            };
            self.keep(hash, entry, settings, system);
        }
        answer
    }

    fn keep(&self, hash: u64, entry: Entry, settings: &Settings, system: &[&str]) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if !kept.decided_with(settings, system) {
            *kept = Kept {
                regime: Some((settings.clone(), system.iter().map(|s| s.to_string()).collect())),
                ..Kept::default()
            };
        }
        let weight = entry.weight;
        match kept.entries.insert(hash, Arc::new(entry)) {
            // Another pod with the same hash, or the same pod decided twice at once: replaced.
            Some(old) => kept.bytes -= old.weight,
            None => kept.order.push_back(hash),
        }
        kept.bytes += weight;
        while kept.entries.len() > MAX_ENTRIES || kept.bytes > MAX_BYTES {
            let Some(oldest) = kept.order.pop_front() else { break };
            if let Some(gone) = kept.entries.remove(&oldest) {
                kept.bytes -= gone.weight;
            }
        }
    }

    /// How many answers were remembered and how many were decided, since the start.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// How many answers are kept, and their weight in bytes.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        (kept.entries.len(), kept.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::fixtures;
    use serde_json::json;
    use std::collections::BTreeSet;
    use trellis_manifests::install::Options;
    use trellis_manifests::sidecar::INJECT_LABEL;

    const SYSTEM: [&str; 2] = ["trellis-system", "kube-system"];

    fn defaults() -> Settings {
        Settings::new(&Options::default())
    }

    fn enabled() -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT_LABEL.to_string(), "enabled".to_string())])
    }

    /// A ReplicaSet's pod as the API server sends it, with something in every part the
    /// injector reads: labels, annotations it acts on, probes to rewrite, init containers,
    /// volumes, security contexts.
    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": "web-7d4b9c-", "namespace": "shop",
                "uid": "1f0e0000-0000-4000-8000-000000000001",
                "creationTimestamp": "2026-12-06T03:00:00Z",
                "labels": {"app": "web", "version": "v1", "pod-template-hash": "7d4b9c"},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                "traffic.trellis.dev/excludeOutboundPorts": "5432"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                                     "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "apiVersion": "v1", "time": "2026-12-06T03:00:00Z",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
            },
            "spec": {
                "serviceAccountName": "web",
                "securityContext": {"runAsNonRoot": true},
                "initContainers": [{"name": "migrate", "image": "app:1", "command": ["migrate"]}],
                "containers": [
                    {"name": "web", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                     "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                     "env": [{"name": "MODE", "value": "fast"}],
                     "resources": {"requests": {"cpu": "100m"}}},
                    {"name": "agent", "image": "agent:2", "securityContext": {"runAsUser": 1000}},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "restartPolicy": "Always",
            },
        })
    }

    /// Whether the API server's review of `pod` is one the webhook decides (its metadata is
    /// object metadata: the memo's precondition, checked by `admission::review`).
    fn admissible(pod: &Value) -> bool {
        let body = fixtures::review(("", "v1", "Pod"), "pods", Some("shop"), pod.clone());
        crate::admission::review(body.to_string().as_bytes()).is_ok()
    }

    /// Every pod one edit away from `value`, with the JSON pointer of the edit: each scalar
    /// changed, each field removed, a field added to each mapping, an item added to and removed
    /// from each list.
    fn edits(value: &Value, at: &str, out: &mut Vec<(String, Value)>) {
        let changed = match value {
            Value::Null => Some(json!("x")),
            Value::Bool(b) => Some(json!(!b)),
            Value::Number(n) => Some(json!(n.as_i64().unwrap_or_default() + 1)),
            Value::String(s) => Some(json!(format!("{s}x"))),
            Value::Array(items) => {
                let mut longer = items.clone();
                longer.push(items.last().cloned().unwrap_or(json!("x")));
                out.push((at.to_string(), Value::Array(longer)));
                if !items.is_empty() {
                    out.push((at.to_string(), Value::Array(items[..items.len() - 1].to_vec())));
                }
                for (i, item) in items.iter().enumerate() {
                    edits(item, &format!("{at}/{i}"), out);
                }
                None
            }
            Value::Object(fields) => {
                let mut wider = fields.clone();
                wider.insert("x-trellis-test".into(), json!("x"));
                out.push((at.to_string(), Value::Object(wider)));
                for (name, field) in fields {
                    let mut narrower = fields.clone();
                    narrower.shift_remove(name);
                    out.push((at.to_string(), Value::Object(narrower)));
                    edits(
                        field,
                        &format!("{at}/{}", name.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
                None
            }
        };
        if let Some(changed) = changed {
            out.push((at.to_string(), changed));
        }
    }

    /// `pod` with the value at `pointer` replaced by `value`.
    fn edited(pod: &Value, pointer: &str, value: Value) -> Value {
        let mut out = pod.clone();
        if pointer.is_empty() {
            return value;
        }
        if let Some(slot) = out.pointer_mut(pointer) {
            *slot = value;
        }
        out
    }

    /// Whether the edit at `pointer` that made `twin` of `base` is inside one of
    /// [`PER_POD_FIELDS`], or removes one.
    fn per_pod_edit(pointer: &str, base: &Value, twin: &Value) -> bool {
        let inside = PER_POD_FIELDS
            .iter()
            .any(|f| pointer == format!("/metadata/{f}") || pointer.starts_with(&format!("/metadata/{f}/")));
        let fields = |p: &Value| -> BTreeSet<String> {
            p["metadata"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect()
        };
        let removed: Vec<String> = fields(base).difference(&fields(twin)).cloned().collect();
        let removed_one = pointer == "/metadata"
            && fields(twin).is_subset(&fields(base))
            && removed.len() == 1
            && per_pod(&removed[0]);
        inside || removed_one
    }

    #[test]
    fn pods_that_differ_in_anything_the_injector_reads_never_share_an_answer() {
        let (labels, settings) = (enabled(), defaults());
        let base = pod();
        let decided = |p: &Value| Answer::of(decide(p, "shop", Some(&labels), &SYSTEM, &settings));
        assert!(matches!(decided(&base), Answer::Inject { .. }));
        let mut all = Vec::new();
        edits(&base, "", &mut all);
        let (mut shared, mut own) = (0, 0);
        for (pointer, value) in all {
            let twin = edited(&base, &pointer, value);
            if !admissible(&twin) {
                continue;
            }
            // A memo that has seen the base pod, asked about its twin.
            let memo = Memo::default();
            memo.answer(&base, "shop", Some(&labels), &SYSTEM, &settings);
            let answer = memo.answer(&twin, "shop", Some(&labels), &SYSTEM, &settings);
            assert_eq!(
                *answer,
                decided(&twin),
                "{pointer}: the remembered answer differs from the decision"
            );
            let (hits, _) = memo.counts();
            if per_pod_edit(&pointer, &base, &twin) {
                assert_eq!(hits, 1, "{pointer}: a per-pod field is not part of the key");
                shared += 1;
            } else {
                assert_eq!(hits, 0, "{pointer}: a pod differing here got the base pod's answer");
                own += 1;
            }
        }
        // The per-pod fields shared the answer: name/uid/timestamps/managedFields edits.
        assert!(shared >= 10 && own >= 100, "shared {shared}, own {own}");
    }

    #[test]
    fn a_twin_written_in_another_order_is_decided_alike() {
        let memo = Memo::default();
        let (labels, settings) = (enabled(), defaults());
        let first = memo.answer(&pod(), "shop", Some(&labels), &SYSTEM, &settings);
        // The same pod, its labels and its spec's fields written in reverse order.
        let mut twin = pod();
        for pointer in ["/metadata/labels", "/spec"] {
            let fields = twin.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap();
            let reversed: serde_json::Map<String, Value> =
                fields.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
            *fields = reversed;
        }
        assert_eq!(twin, pod(), "equal as JSON");
        let second = memo.answer(&twin, "shop", Some(&labels), &SYSTEM, &settings);
        assert_eq!(memo.counts(), (0, 2), "decided, not remembered");
        assert_eq!(
            *second,
            Answer::of(decide(&twin, "shop", Some(&labels), &SYSTEM, &settings))
        );
        assert_eq!(first, second);
    }

    #[test]
    fn a_twin_with_its_own_name_uid_and_times_is_answered_identically() {
        let memo = Memo::default();
        let (labels, settings) = (enabled(), defaults());
        let first = memo.answer(&pod(), "shop", Some(&labels), &SYSTEM, &settings);
        let mut twin = pod();
        let meta = twin["metadata"].as_object_mut().unwrap();
        meta.remove("generateName");
        meta.insert("name".into(), json!("web-7d4b9c-xk2p9"));
        meta.insert("uid".into(), json!("1f0e0000-0000-4000-8000-000000000002"));
        meta.insert("creationTimestamp".into(), json!("2026-12-06T03:00:01Z"));
        meta.insert("resourceVersion".into(), json!("4711"));
        twin["metadata"]["managedFields"][0]["time"] = json!("2026-12-06T03:00:01Z");
        let second = memo.answer(&twin, "shop", Some(&labels), &SYSTEM, &settings);
        assert_eq!(memo.counts(), (1, 1));
        assert_eq!(first, second);
        assert_eq!(
            *second,
            Answer::of(decide(&twin, "shop", Some(&labels), &SYSTEM, &settings))
        );
    }

    #[test]
    fn the_namespace_its_labels_the_system_namespaces_and_the_settings_are_part_of_the_key() {
        let memo = Memo::default();
        let p = pod();
        let settings = defaults();
        let (on, off, none) = (
            enabled(),
            BTreeMap::from([(INJECT_LABEL.to_string(), "disabled".to_string())]),
            BTreeMap::new(),
        );
        let cases = [
            ("shop", Some(&on)),
            ("shop", Some(&off)),
            ("shop", Some(&none)),
            ("shop", None),
            ("kube-system", None),
        ];
        for (ns, labels) in cases {
            let answer = memo.answer(&p, ns, labels, &SYSTEM, &settings);
            assert_eq!(
                *answer,
                Answer::of(decide(&p, ns, labels, &SYSTEM, &settings)),
                "{ns} {labels:?}"
            );
        }
        assert_eq!(memo.counts(), (0, 5), "each is its own key");
        // The same pod where the namespace is a system namespace: a key of its own.
        let answer = memo.answer(&p, "shop", None, &["shop"], &settings);
        assert!(
            matches!(*answer, Answer::Unchanged(ref why) if why.contains("never injected")),
            "{answer:?}"
        );
        assert_eq!(memo.size().0, 1, "other system namespaces emptied the table");

        // A new proxy image (the Mesh's): decided again with it, the old answers dropped.
        let before = memo.answer(&p, "shop", Some(&enabled()), &SYSTEM, &settings);
        let newer = Settings {
            proxy_image: "mesh.example/trellis-proxy:9.9.9".into(),
            ..settings.clone()
        };
        let after = memo.answer(&p, "shop", Some(&enabled()), &SYSTEM, &newer);
        let (Answer::Inject { image: old, .. }, Answer::Inject { image: new, patch }) = (&*before, &*after) else {
            panic!("{before:?} {after:?}");
        };
        assert_ne!(old, new);
        assert_eq!(new, "mesh.example/trellis-proxy:9.9.9");
        assert!(String::from_utf8_lossy(patch).contains("trellis-proxy:9.9.9"));
        assert_eq!(memo.size().0, 1);
        // Any other setting too.
        let quieter = Settings {
            log_level: "warn".into(),
            ..newer.clone()
        };
        let (hits, _) = memo.counts();
        let warn = memo.answer(&p, "shop", Some(&enabled()), &SYSTEM, &quieter);
        assert_eq!(memo.counts().0, hits, "not answered from the table");
        assert_eq!(
            *warn,
            Answer::of(decide(&p, "shop", Some(&enabled()), &SYSTEM, &quieter))
        );
        assert_ne!(warn, after);
    }

    #[test]
    fn the_table_is_bounded_in_answers_and_bytes() {
        let memo = Memo::default();
        let (labels, settings) = (enabled(), defaults());
        let numbered = |i: usize| {
            let mut p = pod();
            p["metadata"]["labels"]["version"] = json!(format!("v{i}"));
            p
        };
        for i in 0..MAX_ENTRIES + 20 {
            memo.answer(&numbered(i), "shop", Some(&labels), &SYSTEM, &settings);
        }
        assert_eq!(memo.size().0, MAX_ENTRIES);
        // The oldest went first.
        memo.answer(&numbered(MAX_ENTRIES + 19), "shop", Some(&labels), &SYSTEM, &settings);
        assert_eq!(memo.counts().0, 1);
        memo.answer(&numbered(0), "shop", Some(&labels), &SYSTEM, &settings);
        assert_eq!(memo.counts().0, 1, "the first pod was forgotten");

        // Large pods: bounded by bytes.
        let memo = Memo::default();
        let large = |i: usize, size: usize| {
            let mut p = numbered(i);
            p["metadata"]["annotations"]["example.com/blob"] = json!("b".repeat(size));
            p
        };
        for i in 0..80 {
            memo.answer(&large(i, 300 << 10), "shop", Some(&labels), &SYSTEM, &settings);
        }
        let (entries, bytes) = memo.size();
        assert!(
            bytes <= MAX_BYTES && entries < 80 && entries > 40,
            "{entries} entries, {bytes} bytes"
        );
        // A pod over the entry bound is decided every time, and pushes nothing out.
        let huge = large(1000, MAX_ENTRY_BYTES);
        memo.answer(&huge, "shop", Some(&labels), &SYSTEM, &settings);
        let (hits, _) = memo.counts();
        memo.answer(&huge, "shop", Some(&labels), &SYSTEM, &settings);
        assert_eq!(memo.counts().0, hits);
        assert_eq!(memo.size(), (entries, bytes));
    }
}
