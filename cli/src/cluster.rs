//! The Kubernetes API, as meshctl uses it: connecting from a kubeconfig, server-side apply
//! with meshctl's field manager, reading and deleting any kind by its `apiVersion`/`kind`,
//! listing a cluster's objects into the compiler's [`Snapshot`], and reading the operator's
//! and proxies' admin APIs through the API server's service and pod proxy.
//!
//! # Guarantees
//! - Every failure to reach or use the API server is a [`ClusterError`], which names the
//!   server and the likely fix; `meshctl` exits with [`crate::EXIT_CLUSTER`] on it.
//! - Nothing here writes without meshctl's field manager ([`FIELD_MANAGER`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use trellis_core::snapshot::{InputKind, Snapshot, with_type_meta};

/// The field manager of everything meshctl applies.
pub const FIELD_MANAGER: &str = "meshctl";

/// Which cluster to talk to (global options of every command that needs one).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// The cluster could not be reached or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable kubeconfig.
    #[error(
        "no usable kubeconfig: {0}; point meshctl at a cluster with --kubeconfig FILE, KUBECONFIG or ~/.kube/config (and --context NAME)"
    )]
    Config(String),
    /// The API server did not answer.
    #[error(
        "cannot reach the Kubernetes API server at {server}: {reason}; is the cluster running, and does the kubeconfig (--kubeconfig, KUBECONFIG, --context) point at it?"
    )]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The API server answered with an error.
    #[error("{what}: {message} (HTTP {code}{hint})")]
    Api {
        /// What meshctl was doing.
        what: String,
        /// The API server's message.
        message: String,
        /// HTTP status.
        code: u16,
        /// A hint, starting with "; ".
        hint: String,
    },
}

impl ClusterError {
    /// Whether the API server said the object (or its kind) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClusterError::Api { code: 404, .. })
    }
}

/// A connection to one cluster.
pub struct Cluster {
    client: kube::Client,
    server: String,
    default_namespace: String,
    resources: Mutex<HashMap<(String, String), ApiResource>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// What happened to one applied object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and is as it was.
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// `Kind namespace/name` (or `Kind name`) of an object.
pub fn describe(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// An object as its owner wrote it: without what the API server keeps about it (resource
/// version, managed fields, generation, timestamps, uid) and without status, and with whole
/// numbers written one way (`100.0` from YAML is `100` once stored). Two objects that compare
/// equal this way are the same to the user.
pub fn comparable(o: &Value) -> Value {
    let mut v = whole_numbers(o.clone());
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "managedFields",
            "generation",
            "creationTimestamp",
            "uid",
            "selfLink",
        ] {
            meta.remove(k);
        }
    }
    v
}

/// `live` seen through `applied`: only the fields `applied` sets (maps field by field, a list or
/// a value whole).
fn applied_fields(applied: &Value, live: &Value) -> Value {
    match (applied, live) {
        (Value::Object(a), Value::Object(l)) => Value::Object(
            a.iter()
                .filter_map(|(k, av)| l.get(k).map(|lv| (k.clone(), applied_fields(av, lv))))
                .collect(),
        ),
        _ => whole_numbers(live.clone()),
    }
}

/// The fields meshctl's server-side apply owns in `o` (its managedFields entry).
fn owned_by_meshctl(o: &Value) -> Option<&Value> {
    o["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply")
        .map(|m| &m["fieldsV1"])
}

/// What applying `applied` did to an object that was `before` and is `after`. Unchanged when
/// nothing differs, or when every field meshctl sets holds what it held and meshctl owns the same
/// fields (so none was dropped): what other writers changed meanwhile — the operator's finalizer
/// on the Mesh, its caBundle on a webhook — is not a change meshctl made.
pub fn outcome(applied: &Value, before: Option<&Value>, after: &Value) -> Outcome {
    match before {
        None => Outcome::Created,
        Some(b) if comparable(b) == comparable(after) => Outcome::Unchanged,
        Some(b)
            if applied_fields(applied, b) == applied_fields(applied, after)
                && owned_by_meshctl(b) == owned_by_meshctl(after) =>
        {
            Outcome::Unchanged
        }
        Some(_) => Outcome::Configured,
    }
}

impl Cluster {
    /// Connect with `args` (no request is made yet).
    pub async fn connect(args: &ClusterArgs) -> Result<Cluster, ClusterError> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        // kube's default retry is a controller's: a 503 is retried 15 times with backoff up to
        // 1000 s, so `meshctl check` on a cluster whose operator is down (the service proxy
        // answers 503) would wait minutes per request. A command answers now; the few places
        // that wait for something (install's apply) retry on their own, with a deadline.
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))?;
        Ok(Cluster {
            client,
            server,
            default_namespace,
            resources: Mutex::new(HashMap::new()),
        })
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubeconfig context's namespace (`default` when it names none).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    /// The underlying client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Turn a kube error into a [`ClusterError`] saying what meshctl was doing.
    pub fn error(&self, what: impl Into<String>, e: kube::Error) -> ClusterError {
        let what = what.into();
        match e {
            kube::Error::Api(status) => {
                let hint = match status.code {
                    401 => "; the kubeconfig's credentials were refused: log in again or pick another --context",
                    403 => {
                        "; your user lacks this permission: ask for cluster-admin, or run `meshctl check --pre` to see which are missing"
                    }
                    _ => "",
                };
                ClusterError::Api {
                    what,
                    message: status.message,
                    code: status.code,
                    hint: hint.to_string(),
                }
            }
            other => ClusterError::Unreachable {
                server: self.server.clone(),
                reason: format!("{what}: {}", error_chain(&other)),
            },
        }
    }

    /// The API server's version (`v1.33.1`): the first request of every command.
    pub async fn version(&self) -> Result<String, ClusterError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(|e| self.error("asking the API server for its version", e))?;
        Ok(info.git_version)
    }

    /// The API resource serving `apiVersion`/`kind` (discovered once per kind).
    pub async fn resource(&self, api_version: &str, kind: &str) -> Result<ApiResource, ClusterError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.resources.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(r);
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Discovery(d) => ClusterError::Api {
                    what: format!("finding the API of {api_version} {kind}"),
                    message: d.to_string(),
                    code: 404,
                    hint: "; is its CRD installed?".into(),
                },
                other => self.error(format!("finding the API of {api_version} {kind}"), other),
            })?;
        if let Ok(mut m) = self.resources.lock() {
            m.insert(key, resource.clone());
        }
        Ok(resource)
    }

    async fn api_for(&self, o: &Value) -> Result<Api<DynamicObject>, ClusterError> {
        let api_version = o["apiVersion"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let resource = self.resource(api_version, kind).await?;
        Ok(match o["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        })
    }

    /// The live version of `o` (found by its apiVersion, kind, namespace and name), if any.
    pub async fn get(&self, o: &Value) -> Result<Option<Value>, ClusterError> {
        let api = self.api_for(o).await?;
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        match api.get_opt(name).await {
            Ok(found) => Ok(found.map(|d| object_json(&d, o))),
            // A kind whose API group is no longer served (its CRDs deleted) answers a plain
            // "404 page not found", not a NotFound Status: absent all the same.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(self.error(format!("reading {}", describe(o)), e)),
        }
    }

    /// Server-side apply `o` with meshctl's field manager, taking over fields others changed
    /// (as `kubectl apply --server-side --force-conflicts`); `dry_run` asks the API server
    /// what the result would be without storing it. Returns the result and what happened.
    pub async fn apply(&self, o: &Value, dry_run: bool) -> Result<(Value, Outcome), ClusterError> {
        let before = self.get(o).await?;
        let api = self.api_for(o).await?;
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        let after = api
            .patch(name, &params, &Patch::Apply(o))
            .await
            .map_err(|e| self.error(format!("applying {}", describe(o)), e))?;
        let after = object_json(&after, o);
        let outcome = outcome(o, before.as_ref(), &after);
        Ok((after, outcome))
    }

    /// Create `o`; with `dry_run` the API server runs admission (webhooks included) and
    /// answers what it would have stored, storing nothing. Review kinds (SelfSubjectAccessReview)
    /// answer in the returned object's status.
    pub async fn create(&self, o: &Value, dry_run: bool) -> Result<Value, ClusterError> {
        let api = self.api_for(o).await?;
        let params = kube::api::PostParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.to_string()),
        };
        let object: DynamicObject = serde_json::from_value(o.clone()).map_err(|e| ClusterError::Api {
            what: format!("creating {}", describe(o)),
            message: e.to_string(),
            code: 400,
            hint: String::new(),
        })?;
        let created = api
            .create(&params, &object)
            .await
            .map_err(|e| self.error(format!("creating {}", describe(o)), e))?;
        Ok(object_json(&created, o))
    }

    /// Merge-patch `o` (found by its apiVersion, kind, namespace and name) with `patch`, as
    /// `kubectl label` and `kubectl annotate` do: the fields it sets are recorded as an update by
    /// meshctl, apart from what meshctl applies, so a later apply does not take them away.
    pub async fn merge_patch(&self, o: &Value, patch: &Value) -> Result<Value, ClusterError> {
        let api = self.api_for(o).await?;
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let after = api
            .patch(name, &params, &Patch::Merge(patch))
            .await
            .map_err(|e| self.error(format!("patching {}", describe(o)), e))?;
        Ok(object_json(&after, o))
    }

    /// Delete `o`; `Ok(false)` when it was not there. Dependents are deleted in the background.
    pub async fn delete(&self, o: &Value) -> Result<bool, ClusterError> {
        let api = match self.api_for(o).await {
            Ok(api) => api,
            // The kind itself is gone (its CRD was deleted): so is the object.
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(self.error(format!("deleting {}", describe(o)), e)),
        }
    }

    /// Every object of `api_version`/`kind` (in all namespaces), with `apiVersion` and `kind`
    /// set; none when the kind is not served (its CRD is not installed).
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Vec<Value>, ClusterError> {
        let resource = match self.resource(api_version, kind).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let mut params = ListParams::default();
        if let Some(l) = labels {
            params = params.labels(l);
        }
        if let Some(f) = fields {
            params = params.fields(f);
        }
        let list = retry_too_many_requests(|| api.list(&params))
            .await
            .map_err(|e| self.error(format!("listing {kind}s"), e))?;
        let template = serde_json::json!({"apiVersion": api_version, "kind": kind});
        Ok(list.items.iter().map(|d| object_json(d, &template)).collect())
    }

    /// The cluster's objects as the compiler reads them: every kind of [`InputKind::ALL`], as
    /// the operator's index watches them, through [`Snapshot::from_objects`], with the
    /// operator's namespace as the root namespace (as the operator's own snapshots have it).
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let objects = self.objects().await?;
        let mut snapshot = Snapshot::from_objects(&objects)?;
        snapshot.root_namespace = crate::root_namespace::operator_namespace(&objects);
        Ok(snapshot)
    }

    /// The cluster's objects of every kind of [`InputKind::ALL`], as the operator's index
    /// watches them (with `apiVersion` and `kind` set).
    pub async fn objects(&self) -> Result<Vec<Value>, ClusterError> {
        let mut objects = Vec::new();
        for kind in InputKind::ALL {
            let selector = kind.field_selector();
            for o in self
                .list(&kind.api_version(), kind.kind(), None, selector.as_deref())
                .await?
            {
                objects.push(with_type_meta(o, kind));
            }
        }
        Ok(objects)
    }

    /// `GET` a path of the API server (e.g. a service or pod proxy path) as text.
    pub async fn get_text(&self, path: &str) -> Result<String, ClusterError> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| ClusterError::Api {
                what: format!("GET {path}"),
                message: e.to_string(),
                code: 400,
                hint: String::new(),
            })?;
        self.client
            .request_text(request)
            .await
            .map_err(|e| self.error(format!("GET {path}"), e))
    }
}

/// How long a read keeps retrying answers of 429 Too Many Requests.
const TOO_MANY_REQUESTS_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `read`, retrying it while the API server answers 429 Too Many Requests, for up to
/// [`TOO_MANY_REQUESTS_PATIENCE`] (pauses from 200 ms doubling to 2 s). Upstream answers 429
/// "storage is (re)initializing" for a kind whose CRD was just created (as after `meshctl
/// install`), and API Priority and Fairness answers 429 when it sheds load: both mean "ask
/// again soon". Every other error is returned at once (kube's own retry is off, see
/// [`Cluster::connect`]).
async fn retry_too_many_requests<T, F, Fut>(mut read: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = tokio::time::Instant::now() + TOO_MANY_REQUESTS_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match read().await {
            Err(kube::Error::Api(status)) if status.code == 429 && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

fn whole_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect()),
        other => other,
    }
}

/// A dynamic object as JSON with `apiVersion` and `kind` (lists leave them out of items).
fn object_json(d: &DynamicObject, like: &Value) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        for k in ["apiVersion", "kind"] {
            if map.get(k).is_none_or(Value::is_null) {
                map.insert(k.into(), like[k].clone());
            }
        }
    }
    v
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status {
                code,
                message: message.to_string(),
                ..Default::default()
            }
            .boxed(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_answered_429_is_asked_again_and_other_errors_are_not() {
        // Upstream's answer for a kind whose CRD was just created: retried until it is served.
        let mut calls = 0;
        let read = super::retry_too_many_requests(|| {
            calls += 1;
            let answer = if calls < 3 {
                Err(api_error(429, "storage is (re)initializing"))
            } else {
                Ok(calls)
            };
            std::future::ready(answer)
        })
        .await;
        assert_eq!(read.ok(), Some(3));

        // Any other error is the command's answer at once.
        let mut calls = 0;
        let read = super::retry_too_many_requests(|| {
            calls += 1;
            std::future::ready(Err::<(), _>(api_error(503, "service unavailable")))
        })
        .await;
        assert!(matches!(read, Err(kube::Error::Api(s)) if s.code == 503));
        assert_eq!(calls, 1);

        // A 429 that never ends is returned after the patience, not waited on forever.
        let started = tokio::time::Instant::now();
        let read = super::retry_too_many_requests(|| std::future::ready(Err::<(), _>(api_error(429, "busy")))).await;
        assert!(matches!(read, Err(kube::Error::Api(s)) if s.code == 429));
        let waited = started.elapsed();
        assert!(
            waited <= super::TOO_MANY_REQUESTS_PATIENCE && waited >= super::TOO_MANY_REQUESTS_PATIENCE / 2,
            "gave up after {waited:?}"
        );
    }

    use super::*;

    #[test]
    fn comparable_ignores_what_the_server_keeps() {
        let mine = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "b"}}});
        let mut live = mine.clone();
        live["metadata"]["resourceVersion"] = json!("7");
        live["metadata"]["managedFields"] = json!([{"manager": "meshctl"}]);
        live["metadata"]["uid"] = json!("u");
        live["status"] = json!({"phase": "Active"});
        assert_eq!(comparable(&mine), comparable(&live));
        live["metadata"]["labels"]["n"] = json!(100);
        let mut floats = mine.clone();
        floats["metadata"]["labels"]["n"] = json!(100.0);
        assert_eq!(comparable(&floats), comparable(&live), "100.0 is stored as 100");
        live["metadata"]["labels"]["a"] = json!("c");
        assert_ne!(comparable(&mine), comparable(&live));
        assert_eq!(describe(&mine), "Namespace x");
    }

    #[test]
    fn only_what_meshctl_applies_and_owns_decides_whether_it_changed() {
        let owned = |fields: Value| json!([{"manager": "meshctl", "operation": "Apply", "fieldsV1": fields}]);
        let applied = json!({"kind": "Mesh", "metadata": {"name": "default"}, "spec": {"defaultMtlsMode": "STRICT"}});
        let before = json!({"kind": "Mesh", "metadata": {"name": "default", "resourceVersion": "5",
            "managedFields": owned(json!({"f:spec": {"f:defaultMtlsMode": {}}}))},
            "spec": {"defaultMtlsMode": "STRICT"}});
        assert_eq!(outcome(&applied, None, &before), Outcome::Created);
        assert_eq!(outcome(&applied, Some(&before), &before), Outcome::Unchanged);
        // The operator added its finalizer meanwhile: not meshctl's change.
        let mut finalized = before.clone();
        finalized["metadata"]["finalizers"] = json!(["mesh.trellis.dev/cleanup"]);
        finalized["metadata"]["resourceVersion"] = json!("6");
        assert_eq!(outcome(&applied, Some(&before), &finalized), Outcome::Unchanged);
        // A value meshctl sets changed.
        let mut permissive = finalized.clone();
        permissive["spec"]["defaultMtlsMode"] = json!("PERMISSIVE");
        assert_eq!(outcome(&applied, Some(&permissive), &finalized), Outcome::Configured);
        // A field meshctl no longer sets was removed: it owns fewer fields.
        let mut extra = before.clone();
        extra["spec"]["rollout"] = json!({"batchSize": 2});
        extra["metadata"]["managedFields"] = owned(json!({"f:spec": {"f:defaultMtlsMode": {}, "f:rollout": {}}}));
        assert_eq!(outcome(&applied, Some(&extra), &before), Outcome::Configured);
    }
}
