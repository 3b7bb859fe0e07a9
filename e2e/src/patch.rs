//! The four patch flavours of the Kubernetes API: JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902), strategic merge patch (as kubectl
//! sends it for built-in kinds) and server-side apply with field managers.
//!
//! All of them are pure functions of JSON values.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A patch could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// Server-side apply found fields owned by other managers with
    /// different values; `force` would take them over.
    #[error("Apply failed with {} conflict{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n"))]
    Conflicts(Vec<String>),
}

/// The patch flavour, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// RFC 6902 JSON patch, as the API server applies it: a `test` of `null`
/// passes on a path that does not exist (kube-runtime's finalizer helper adds
/// the first finalizer with `test /metadata/finalizers null`, then `add`).
/// All or nothing: a failing operation leaves the object as it was.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Invalid(e.to_string()))?;
    let mut out = target.clone();
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && out.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(&mut out, &[op]).map_err(|e| PatchError::Invalid(e.to_string()))?;
    }
    Ok(out)
}

/// The merge key of a list field of the built-in kinds, as the Go structs'
/// `patchMergeKey` tags declare it. `None` means the list is atomic.
pub fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "secrets"
        // Admission webhook configurations (listType=map, listMapKey=name): the operator
        // owns each webhook's caBundle, an installer the rest.
        | "webhooks" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        // Container ports merge on containerPort, Service ports on port.
        "ports" => {
            if sample.get("containerPort").is_some() {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    };
    sample.is_object().then_some(key)
}

/// Primitive lists that strategic merge treats as sets.
fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch for built-in kinds: lists with a merge key merge
/// element-wise, `$patch`, `$retainKeys`, `$setElementOrder/` and
/// `$deleteFromPrimitiveList/` directives are honoured.
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => Ok(Value::Object(merge_maps(t, p)?)),
        (_, p) => Ok(strip_directives(p)),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_maps(target: &Map<String, Value>, patch: &Map<String, Value>) -> Result<Map<String, Value>, PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            return match strip_directives(&Value::Object(patch.clone())) {
                Value::Object(m) => Ok(m),
                _ => Ok(Map::new()),
            };
        }
        Some("delete") => return Ok(Map::new()),
        _ => {}
    }
    let mut out = target.clone();
    for (k, pv) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (out.get_mut(field), pv.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(tm)), Value::Object(pm)) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.remove(k);
                    continue;
                }
                Value::Object(merge_maps(tm, pm)?)
            }
            (Some(Value::Array(ta)), Value::Array(pa)) => merge_lists(k, ta, pa)?,
            (None, Value::Array(pa)) => merge_lists(k, &[], pa)?,
            (_, other) => strip_directives(other),
        };
        out.insert(k.clone(), merged);
    }
    if let Some(order) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: BTreeSet<&str> = order.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(k.as_str()));
    }
    for (k, order) in patch {
        if let (Some(field), Some(order)) = (k.strip_prefix("$setElementOrder/"), order.as_array())
            && let Some(Value::Array(list)) = out.get_mut(field)
        {
            reorder(field, list, order);
        }
    }
    Ok(out)
}

/// Orders `list` as `order` says; elements not named keep their relative
/// order after the named ones.
fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let key = order.first().and_then(|s| merge_key(field, s));
    let position = |v: &Value| {
        order
            .iter()
            .position(|o| match key {
                Some(key) => o.get(key) == v.get(key),
                None => o == v,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(position);
}

fn merge_lists(field: &str, target: &[Value], patch: &[Value]) -> Result<Value, PatchError> {
    // A `$patch: replace` element replaces the whole list.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(
            patch
                .iter()
                .filter(|e| e.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ));
    }
    if is_primitive_set(field) {
        let mut out = target.to_vec();
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let Some(key) = patch.first().or(target.first()).and_then(|s| merge_key(field, s)) else {
        return Ok(Value::Array(patch.iter().map(strip_directives).collect()));
    };
    let mut out = target.to_vec();
    for pe in patch {
        let id = pe.get(key);
        let pos = out.iter().position(|t| t.get(key) == id && id.is_some());
        let delete = pe.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic_merge(&out[i], pe)?,
            (None, false) => out.push(strip_directives(pe)),
        }
    }
    Ok(Value::Array(out))
}

// ----- server-side apply -------------------------------------------------

/// One element of a field path, in `fieldsV1` notation: `f:name`,
/// `k:{"name":"a"}` for an associative list item, `.` for the item itself.
pub type FieldPath = Vec<String>;

/// Fields owned by a manager.
pub type FieldSet = BTreeSet<FieldPath>;

/// Top-level and metadata fields that are never owned by a manager.
fn untracked(path: &[String]) -> bool {
    match path {
        [one] => matches!(one.as_str(), "f:apiVersion" | "f:kind"),
        [m, f] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:name"
                | "f:namespace"
                | "f:resourceVersion"
                | "f:uid"
                | "f:generation"
                | "f:creationTimestamp"
                | "f:managedFields"
                | "f:deletionTimestamp"
                | "f:selfLink"
        ),
        _ => false,
    }
}

fn item_key(field: &str, item: &Value) -> Option<String> {
    let key = merge_key(field, item)?;
    let v = item.get(key)?;
    Some(format!("k:{}", json!({ key: v })))
}

/// Where list semantics come from when tracking and merging fields.
#[derive(Debug, Clone, Copy)]
pub enum Lists<'a> {
    /// Built-in kinds: the merge-key table ([`merge_key`]).
    Builtin,
    /// A CRD: the structural schema node at this position; `None` where
    /// the schema says nothing (lists there are atomic).
    Schema(Option<&'a Value>),
}

impl<'a> Lists<'a> {
    fn child(self, field: &str) -> Self {
        match self {
            Lists::Builtin => Lists::Builtin,
            Lists::Schema(node) => Lists::Schema(node.and_then(|n| {
                n.get("properties")
                    .and_then(|p| p.get(field))
                    .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
            })),
        }
    }

    fn items(self) -> Self {
        match self {
            Lists::Builtin => Lists::Builtin,
            Lists::Schema(node) => Lists::Schema(node.and_then(|n| n.get("items"))),
        }
    }

    /// The path element of one item of the list at this position:
    /// `k:{..}` for map lists, `v:..` for sets, `None` for atomic lists.
    fn item_element(self, field: &str, item: &Value) -> Option<String> {
        match self {
            Lists::Builtin => item_key(field, item),
            Lists::Schema(node) => {
                let node = node?;
                match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("map") => {
                        let mut key = Map::new();
                        for k in node
                            .get("x-kubernetes-list-map-keys")?
                            .as_array()?
                            .iter()
                            .filter_map(Value::as_str)
                        {
                            key.insert(k.to_string(), item.get(k)?.clone());
                        }
                        Some(format!("k:{}", Value::Object(key)))
                    }
                    Some("set") if !item.is_object() && !item.is_array() => Some(format!("v:{item}")),
                    _ => None,
                }
            }
        }
    }
}

/// Whether a list item matches a `k:`/`v:` path element.
fn item_matches(el: &str, item: &Value) -> bool {
    if let Some(k) = el.strip_prefix("k:") {
        serde_json::from_str::<Map<String, Value>>(k)
            .is_ok_and(|want| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))
    } else if let Some(v) = el.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|want| want == *item)
    } else {
        false
    }
}

/// The leaf fields set by a configuration of a built-in kind.
pub fn fields_of(config: &Value) -> FieldSet {
    fields_of_with(config, Lists::Builtin)
}

/// The leaf fields set by a configuration (what an apply owns).
pub fn fields_of_with(config: &Value, lists: Lists<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    collect(config, &mut Vec::new(), &mut out, lists);
    out.retain(|p| {
        let prefix_untracked = p.len() >= 2 && untracked(&p[..2]);
        !(prefix_untracked || untracked(p))
    });
    out
}

fn collect(v: &Value, path: &mut FieldPath, out: &mut FieldSet, lists: Lists<'_>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                let child_lists = lists.child(k);
                if let Value::Array(items) = child {
                    let field = k.as_str();
                    let keyed: Option<Vec<String>> = items.iter().map(|i| child_lists.item_element(field, i)).collect();
                    match keyed {
                        Some(keys) if !items.is_empty() => {
                            for (key, item) in keys.into_iter().zip(items) {
                                let is_value = key.starts_with("v:");
                                path.push(key);
                                if is_value {
                                    out.insert(path.clone());
                                } else {
                                    path.push(".".to_string());
                                    out.insert(path.clone());
                                    path.pop();
                                    collect(item, path, out, child_lists.items());
                                }
                                path.pop();
                            }
                        }
                        _ => {
                            out.insert(path.clone());
                        }
                    }
                } else {
                    collect(child, path, out, child_lists);
                }
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    let mut list_field = "";
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            cur = cur.get(f)?;
            list_field = f;
        } else if el.starts_with("k:") || el.starts_with("v:") {
            cur = cur.as_array()?.iter().find(|item| item_matches(el, item))?;
            let _ = list_field;
        } else if el == "." {
            continue;
        } else {
            return None;
        }
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    if last == "." {
        // Remove the list item itself.
        let Some((item, list_path)) = parent_path.split_last() else {
            return;
        };
        if let Some(Value::Array(list)) = value_at_mut(obj, list_path) {
            list.retain(|i| !item_matches(item, i));
        }
        return;
    }
    if last.starts_with("v:") {
        // Remove a set member.
        if let Some(Value::Array(list)) = value_at_mut(obj, parent_path) {
            list.retain(|i| !item_matches(last, i));
        }
        return;
    }
    if let (Some(f), Some(Value::Object(m))) = (last.strip_prefix("f:"), value_at_mut(obj, parent_path)) {
        m.remove(f);
    }
}

fn value_at_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            cur = cur.get_mut(f)?;
        } else if el.starts_with("k:") || el.starts_with("v:") {
            cur = cur.as_array_mut()?.iter_mut().find(|item| item_matches(el, item))?;
        } else if el != "." {
            return None;
        }
    }
    Some(cur)
}

/// Merges an applied configuration into an object: maps merge, keyed lists
/// merge by key, everything else is replaced.
pub fn apply_merge(target: &Value, config: &Value) -> Value {
    apply_merge_with(target, config, Lists::Builtin)
}

/// [`apply_merge`] with list semantics from `lists`.
pub fn apply_merge_with(target: &Value, config: &Value, lists: Lists<'_>) -> Value {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            let mut out = t.clone();
            for (k, cv) in c {
                let child_lists = lists.child(k);
                let element = |i: &Value| child_lists.item_element(k, i);
                let merged = match (out.get(k), cv) {
                    (Some(tv @ Value::Object(_)), Value::Object(_)) => apply_merge_with(tv, cv, child_lists),
                    (Some(Value::Array(ta)), Value::Array(ca))
                        if ca.iter().all(|i| element(i).is_some()) && !ca.is_empty() =>
                    {
                        let mut items: Vec<Value> = Vec::new();
                        // Applied order first, then items only others set.
                        for ci in ca {
                            let id = element(ci);
                            let existing = ta.iter().find(|t| element(t) == id);
                            items.push(match existing {
                                Some(t) => apply_merge_with(t, ci, child_lists.items()),
                                None => ci.clone(),
                            });
                        }
                        for t in ta {
                            let id = element(t);
                            if id.is_none() || !ca.iter().any(|ci| element(ci) == id) {
                                items.push(t.clone());
                            }
                        }
                        Value::Array(items)
                    }
                    _ => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, c) => c.clone(),
    }
}

/// One `metadata.managedFields` entry, simplified to what SSA needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub subresource: String,
    pub fields: FieldSet,
    /// The version the manager wrote with; empty for a write in progress
    /// (filled from the request's version).
    pub api_version: String,
    /// When the manager last wrote; empty for a write in progress (now).
    pub time: String,
}

impl ManagedEntry {
    fn new(manager: &str, operation: &str, subresource: &str, fields: FieldSet) -> Self {
        Self {
            manager: manager.to_string(),
            operation: operation.to_string(),
            subresource: subresource.to_string(),
            fields,
            api_version: String::new(),
            time: String::new(),
        }
    }

    /// How conflicts name a manager, as the API server does:
    /// `"kubectl-scale" using apps/v1 at 2026-01-01T00:00:00Z`.
    fn describe(&self) -> String {
        let mut s = format!("\"{}\"", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource \"{}\"", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
            if !self.time.is_empty() {
                s.push_str(&format!(" at {}", self.time));
            }
        }
        s
    }
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = FieldSet::new();
            if let Some(tree) = e.get("fieldsV1") {
                tree_to_paths(tree, &mut Vec::new(), &mut fields);
            }
            ManagedEntry {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
                fields,
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

fn tree_to_paths(tree: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match tree.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(k.clone());
                tree_to_paths(v, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// Renders a field set as a `fieldsV1` tree.
pub fn paths_to_tree(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for el in path {
            let next = cur.entry(el.clone()).or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

/// Writes entries back into `metadata.managedFields` (empty sets dropped).
pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry], api_version: &str, time: &str) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": if e.api_version.is_empty() { api_version } else { &e.api_version },
                "time": if e.time.is_empty() { time } else { &e.time },
                "fieldsType": "FieldsV1",
                "fieldsV1": paths_to_tree(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = Value::String(e.subresource.clone());
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Server-side apply of `config` by `manager` onto `current` (or a new
/// object when `current` is `None`).
///
/// # Guarantees
/// - A field another manager owns with a different value is a conflict,
///   unless `force`, which transfers ownership to `manager`.
/// - Fields `manager` applied before and no longer applies are removed,
///   unless another manager also owns them.
///
/// # Caveats
/// - For built-in kinds, lists are associative where the merge-key table
///   says so (one key per list); CRDs follow `x-kubernetes-list-type` and
///   `x-kubernetes-list-map-keys` (see [`Lists`]).
pub fn server_side_apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: &str,
    force: bool,
) -> Result<(Value, Vec<ManagedEntry>), PatchError> {
    server_side_apply_with(current, config, manager, subresource, force, Lists::Builtin)
}

/// [`server_side_apply`] with list semantics from `lists`.
pub fn server_side_apply_with(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: &str,
    force: bool,
    lists: Lists<'_>,
) -> Result<(Value, Vec<ManagedEntry>), PatchError> {
    let empty = json!({});
    let cur = current.unwrap_or(&empty);
    let mut entries = read_managed(cur);
    let new_fields = fields_of_with(config, lists);

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| e.manager != manager) {
        let mut taken = Vec::new();
        for p in e.fields.intersection(&new_fields) {
            if p.last().map(String::as_str) == Some(".") {
                continue;
            }
            // A field that no longer exists has no owner to conflict with.
            if value_at(cur, p).is_none() {
                taken.push(p.clone());
                continue;
            }
            if value_at(cur, p) != value_at(config, p) {
                if force {
                    taken.push(p.clone());
                } else {
                    conflicts.push(format!("conflict with {}: {}", e.describe(), display_path(p)));
                }
            }
        }
        for p in taken {
            e.fields.remove(&p);
        }
    }
    if !conflicts.is_empty() {
        return Err(PatchError::Conflicts(conflicts));
    }

    let previous: FieldSet = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let others: FieldSet = entries
        .iter()
        .filter(|e| e.manager != manager)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();

    let mut obj = apply_merge_with(cur, config, lists);
    // Remove fields this manager dropped, deepest first.
    let mut dropped: Vec<&FieldPath> = previous
        .difference(&new_fields)
        .filter(|p| !others.contains(*p))
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove_at(&mut obj, p);
        // Maps left empty by the removal go too, as upstream prunes them.
        let mut parent: &[String] = &p[..p.len().saturating_sub(1)];
        while parent.len() > 1 && parent.last().is_some_and(|e| e.starts_with("f:")) {
            let empty = value_at(&obj, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
            if !empty || others.iter().any(|o| o.starts_with(parent)) {
                break;
            }
            remove_at(&mut obj, parent);
            parent = &parent[..parent.len() - 1];
        }
    }

    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    // Nobody owns fields that are gone.
    for e in entries.iter_mut() {
        e.fields.retain(|p| value_at(&obj, p).is_some());
    }
    entries.push(ManagedEntry::new(manager, "Apply", subresource, new_fields));
    Ok((obj, entries))
}

/// Records a non-apply write: `manager` takes ownership of every leaf that
/// changed between `old` and `new`.
pub fn record_update(old: Option<&Value>, new: &Value, manager: &str, subresource: &str) -> Vec<ManagedEntry> {
    record_update_with(old, new, manager, subresource, Lists::Builtin)
}

/// [`record_update`] with list semantics from `lists`.
pub fn record_update_with(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    subresource: &str,
    lists: Lists<'_>,
) -> Vec<ManagedEntry> {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let changed: FieldSet = fields_of_with(new, lists)
        .into_iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
        .collect();
    // Nobody owns fields that are gone (a removal is an update too).
    for e in entries.iter_mut() {
        e.fields.retain(|p| value_at(new, p).is_some());
    }
    if changed.is_empty() {
        return entries;
    }
    for e in entries.iter_mut() {
        e.fields.retain(|p| !changed.contains(p));
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(e) => {
            e.fields.extend(changed);
            // Written now, with this request's version.
            e.api_version.clear();
            e.time.clear();
        }
        None => entries.push(ManagedEntry::new(manager, "Update", subresource, changed)),
    }
    entries
}

fn display_path(p: &[String]) -> String {
    let mut s = String::new();
    for el in p {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            s.push('[');
            s.push_str(k);
            s.push(']');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn deployment(image: &str, replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "app", "image": image, "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "proxy"}
            ]}}}
        })
    }

    #[test]
    fn merge_and_json_patches() {
        let obj = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(
            merge_patch(&obj, &json!({"b": {"c": null, "d": 3}})),
            json!({"a": 1, "b": {"d": 3}})
        );
        let out = json_patch(
            &obj,
            &json!([{"op": "replace", "path": "/a", "value": 5}, {"op": "remove", "path": "/b"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": 5}));
        assert!(json_patch(&obj, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        // kube-runtime's first finalizer: `test null` passes on a missing path, as upstream.
        let first = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]}
        ]);
        let meta = json!({"metadata": {"name": "m"}});
        assert_eq!(
            json_patch(&meta, &first).unwrap(),
            json!({"metadata": {"name": "m", "finalizers": ["example.com/f"]}})
        );
        // ... and fails where the path holds something; nothing is applied then.
        let held = json!({"metadata": {"name": "m", "finalizers": ["other"]}});
        assert!(json_patch(&held, &first).is_err());
        let half = json!([{"op": "replace", "path": "/a", "value": 9}, {"op": "test", "path": "/a", "value": 1}]);
        assert!(
            json_patch(&obj, &half).is_err(),
            "a failed test rolls back the whole patch"
        );
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let obj = deployment("nginx:1", 1);
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "nginx:2"}]
        }}}});
        let out = strategic_merge(&obj, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[1]["image"], "nginx:2");
        assert_eq!(cs[1]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[0]["name"], "side");

        let del = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}, "metadata": {"labels": {"app": null}}});
        let out = strategic_merge(&obj, &del).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(),
            1
        );
        assert_eq!(out["metadata"]["labels"], json!({}));
    }

    #[test]
    fn strategic_merge_directives_for_primitive_lists_and_retain_keys() {
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}
        });
        let out = strategic_merge(&obj, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn apply_owns_fields_detects_conflicts_and_forces() {
        let (obj, entries) = server_side_apply(None, &deployment("nginx:1", 2), "ci", "", false).unwrap();
        let mut obj = obj;
        write_managed(&mut obj, &entries, "apps/v1", "t");
        assert!(
            obj.pointer("/metadata/managedFields/0/fieldsV1/f:spec/f:replicas")
                .is_some()
        );

        // Another manager changes replicas with an update and takes it over.
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = record_update(Some(&obj), &scaled, "kubectl-scale", "");
        write_managed(&mut scaled, &entries, "apps/v1", "t");

        // Re-applying replicas 2 now conflicts...
        let err = server_side_apply(Some(&scaled), &deployment("nginx:1", 2), "ci", "", false).unwrap_err();
        assert!(
            matches!(&err, PatchError::Conflicts(c) if c.len() == 1 && c[0] == "conflict with \"kubectl-scale\" using apps/v1 at t: .spec.replicas"),
            "{err}"
        );
        // ...applying the same value does not...
        assert!(server_side_apply(Some(&scaled), &deployment("nginx:1", 5), "ci", "", false).is_ok());
        // ...and force takes ownership.
        let (forced, entries) = server_side_apply(Some(&scaled), &deployment("nginx:1", 2), "ci", "", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        assert!(
            entries
                .iter()
                .all(|e| e.manager == "ci" || !e.fields.iter().any(|p| p.ends_with(&["f:replicas".to_string()])))
        );
    }

    #[test]
    fn crd_lists_follow_list_type_markers() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "routes": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                       "items": {"type": "object", "properties": {"name": {"type": "string"}, "weight": {"type": "integer"}}}},
            "hosts": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}
        }}}});
        let lists = Lists::Schema(Some(&schema));
        let a = json!({"metadata": {"name": "vs"}, "spec": {"routes": [{"name": "r1", "weight": 1}], "hosts": ["a"], "ports": [{"name": "p1"}]}});
        let (mut obj, entries) = server_side_apply_with(None, &a, "a", "", false, lists).unwrap();
        write_managed(&mut obj, &entries, "x/v1", "t");
        assert!(
            obj.pointer("/metadata/managedFields/0/fieldsV1/f:spec/f:routes/k:{\"name\":\"r1\"}/f:weight")
                .is_some()
        );
        assert!(
            obj.pointer("/metadata/managedFields/0/fieldsV1/f:spec/f:hosts/v:\"a\"")
                .is_some()
        );
        // Another manager adds its own route, host and port: map and set
        // lists merge, the unmarked list is atomic (and conflicts).
        let b = json!({"spec": {"routes": [{"name": "r2", "weight": 2}], "hosts": ["b"]}});
        let (mut merged, entries) = server_side_apply_with(Some(&obj), &b, "b", "", false, lists).unwrap();
        write_managed(&mut merged, &entries, "x/v1", "t");
        assert_eq!(merged["spec"]["routes"].as_array().unwrap().len(), 2);
        assert_eq!(merged["spec"]["hosts"], json!(["b", "a"]));
        let c = json!({"spec": {"ports": [{"name": "p2"}]}});
        assert!(
            server_side_apply_with(Some(&merged), &c, "c", "", false, lists).is_err(),
            "atomic list owned by a"
        );
        // a drops its route: only r1 goes.
        let (after, _) = server_side_apply_with(
            Some(&merged),
            &json!({"spec": {"hosts": ["a"], "ports": [{"name": "p1"}]}}),
            "a",
            "",
            false,
            lists,
        )
        .unwrap();
        assert_eq!(after["spec"]["routes"], json!([{"name": "r2", "weight": 2}]));
    }

    #[test]
    fn removed_fields_lose_their_owners() {
        let lease = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder}});
        let (mut obj, entries) = server_side_apply(None, &lease("a"), "mgr-a", "", false).unwrap();
        write_managed(&mut obj, &entries, "coordination.k8s.io/v1", "t");
        // mgr-a releases with an update that removes the field.
        let mut released = strategic_merge(&obj, &json!({"spec": {"holderIdentity": null}})).unwrap();
        let entries = record_update(Some(&obj), &released, "mgr-a", "");
        write_managed(&mut released, &entries, "coordination.k8s.io/v1", "t");
        // mgr-b can now apply it without a conflict.
        let (taken, _) = server_side_apply(Some(&released), &lease("b"), "mgr-b", "", false).unwrap();
        assert_eq!(taken["spec"]["holderIdentity"], "b");
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_setting() {
        let (obj, entries) = server_side_apply(None, &deployment("nginx:1", 2), "ci", "", false).unwrap();
        let mut obj = obj;
        write_managed(&mut obj, &entries, "apps/v1", "t");
        let mut smaller = deployment("nginx:1", 2);
        smaller["metadata"].as_object_mut().unwrap().remove("labels");
        smaller["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .pop();
        let (out, _) = server_side_apply(Some(&obj), &smaller, "ci", "", false).unwrap();
        assert!(out.pointer("/metadata/labels").is_none());
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn content_types_map_to_patch_kinds() {
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchKind::Apply)
        );
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchKind::Strategic)
        );
        assert_eq!(PatchKind::from_content_type("text/plain"), None);
    }
}
