//! Events about the pods the sidecar injector admitted without a sidecar, published once each
//! pod exists.
//!
//! The injector answers a `hostNetwork` pod with a warning (`kubectl` prints it) and a patch
//! that labels it [`SKIPPED_LABEL`]: a change to the object under admission, not a side effect.
//! Both webhook configurations therefore declare `sideEffects: None`, and a dry run changes
//! nothing anywhere. This reporter, run by the leader, watches the pods that carry the label
//! and publishes a `SidecarInjectionSkipped` Warning event about each — regarding the pod
//! (`kubectl describe pod` shows it), with its controller as the related object.
//!
//! # Guarantees
//! - One Event per pod: its name comes from the pod's uid ([`event_for`]), so another replica,
//!   a new leader or a restart finds it there and writes nothing.
//! - A dry-run creation is never reported: it stores no pod.

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use trellis_manifests::sidecar::InjectError;

use super::inject::{SKIPPED_HOST_NETWORK, SKIPPED_LABEL};
use crate::events::{Event, EventType, Recorder};

/// The events' reason.
pub const REASON: &str = "SidecarInjectionSkipped";

/// The most of a pod's name an Event name keeps (with the uid, it stays within the 253
/// characters of an object name).
const NAME_PREFIX_MAX: usize = 190;

/// The Event to publish about `pod`, which carries [`SKIPPED_LABEL`]: its name, what it
/// regards, and the event; `None` for a pod without the label, a uid or a name.
pub fn event_for(pod: &Pod) -> Option<(String, ObjectReference, Event)> {
    let meta = &pod.metadata;
    let value = meta.labels.as_ref()?.get(SKIPPED_LABEL)?;
    let (name, uid) = (meta.name.as_ref()?, meta.uid.as_ref()?);
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let why = if value == SKIPPED_HOST_NETWORK {
        InjectError::HostNetwork.to_string()
    } else {
        format!("the injector labelled it {SKIPPED_LABEL}={value}")
    };
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid: Some(uid.clone()),
        ..ObjectReference::default()
    };
    let owners = meta.owner_references.iter().flatten();
    let controller = owners
        .clone()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.clone().next());
    let related = controller.map(|o| ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: Some(namespace.clone()),
        uid: Some(o.uid.clone()),
        ..ObjectReference::default()
    });
    let prefix: String = name.chars().take(NAME_PREFIX_MAX).collect();
    let event = Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(format!(
            "pod {namespace}/{name} was admitted without a Trellis sidecar: {why}"
        )),
        action: "Inject".into(),
        secondary: related,
    };
    Some((format!("{prefix}.{uid}"), regarding, event))
}

/// Publish the event about every pod labelled [`SKIPPED_LABEL`], once per pod, until the
/// task is dropped (the leader runs it).
pub async fn run(client: Client, recorder: Recorder) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().labels(SKIPPED_LABEL);
    let mut stream = std::pin::pin!(watcher::watcher(pods, config).default_backoff());
    // The pods reported by this replica (a pod re-listed after a watch restart is not
    // published again; the Event's name makes a repeat harmless anyway).
    let mut reported = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(WatchEvent::Apply(pod) | WatchEvent::InitApply(pod)) => {
                let Some((name, regarding, event)) = event_for(&pod) else {
                    continue;
                };
                if !reported.insert(name.clone()) {
                    continue;
                }
                match recorder.publish_once(&event, &regarding, &name).await {
                    Ok(_) => tracing::debug!(pod = ?regarding.name, "injection skip reported"),
                    Err(e) => {
                        reported.remove(&name);
                        tracing::warn!(pod = ?regarding.name, error = %e, "could not publish the injection skip event; retried on the pod's next change");
                    }
                }
            }
            Ok(WatchEvent::Delete(pod)) => {
                if let Some((name, ..)) = event_for(&pod) {
                    reported.remove(&name);
                }
            }
            Ok(WatchEvent::Init | WatchEvent::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "watching the pods the injector skipped failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;
    use crate::events::Reporter;

    fn skipped_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "node-agent-x7k2p", "namespace": "meshed", "uid": "0b7c-uid",
                "resourceVersion": "7",
                "labels": {"app": "node-agent", SKIPPED_LABEL: SKIPPED_HOST_NETWORK},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "node-agent", "uid": "ds-uid", "controller": true}],
            },
            "spec": {"hostNetwork": true, "containers": [{"name": "agent", "image": "agent:1"}]},
        }))
        .unwrap()
    }

    #[test]
    fn the_event_regards_the_pod_names_its_controller_and_says_why() {
        let (name, regarding, event) = event_for(&skipped_pod()).unwrap();
        assert_eq!(name, "node-agent-x7k2p.0b7c-uid");
        assert_eq!(
            (regarding.kind.as_deref(), regarding.uid.as_deref()),
            (Some("Pod"), Some("0b7c-uid"))
        );
        let related = event.secondary.as_ref().unwrap();
        assert_eq!(
            (related.kind.as_deref(), related.name.as_deref()),
            (Some("DaemonSet"), Some("node-agent"))
        );
        assert_eq!((event.reason.as_str(), event.type_), (REASON, EventType::Warning));
        let note = event.note.unwrap();
        assert!(
            note.starts_with("pod meshed/node-agent-x7k2p was admitted without a Trellis sidecar")
                && note.contains("remove hostNetwork"),
            "{note}"
        );
        // A long name still makes a valid object name.
        let mut long = skipped_pod();
        long.metadata.name = Some("a".repeat(253));
        assert!(event_for(&long).unwrap().0.len() <= 253);
        // Pods without the label are not the reporter's.
        let mut plain = skipped_pod();
        plain.metadata.labels = None;
        assert!(event_for(&plain).is_none());
    }

    /// Answer the next request with `status` and `body`; return its method, path and query,
    /// and JSON body.
    async fn answer(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
        status: StatusCode,
        body: Value,
    ) -> (Method, String, Value) {
        let (request, send) = handle.next_request().await.expect("a request");
        let method = request.method().clone();
        let target = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.expect("a body");
        let sent = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        (method, target, sent)
    }

    #[tokio::test]
    async fn the_leader_lists_the_labelled_pods_and_publishes_one_named_event_each() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let recorder = Recorder::new(client.clone(), Reporter::from("trellis-operator"));
        let task = tokio::spawn(run(client, recorder));

        // Only the labelled pods are listed.
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
                          "items": [serde_json::to_value(skipped_pod()).unwrap()]});
        let (method, target, _) = answer(&mut handle, StatusCode::OK, list).await;
        assert_eq!(method, Method::GET);
        assert!(
            target.starts_with("/api/v1/pods?") && target.contains("labelSelector=trellis.dev%2Finjection-skipped"),
            "{target}"
        );

        // The event, by its fixed name; one already there (another replica's) is fine.
        let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                            "message": "events \"node-agent-x7k2p.0b7c-uid\" already exists", "code": 409});
        let (method, target, event) = answer(&mut handle, StatusCode::CONFLICT, exists).await;
        assert_eq!(
            (method, target.split('?').next()),
            (Method::POST, Some("/apis/events.k8s.io/v1/namespaces/meshed/events"))
        );
        assert_eq!(event["metadata"]["name"], "node-agent-x7k2p.0b7c-uid");
        assert_eq!(event["reason"], REASON);
        assert_eq!(event["regarding"]["uid"], "0b7c-uid");
        assert_eq!(event["related"]["kind"], "DaemonSet");

        // Then it watches; nothing else is written.
        let (method, target, _) = answer(&mut handle, StatusCode::OK, json!({})).await;
        assert_eq!(method, Method::GET);
        assert!(target.contains("watch=true"), "{target}");
        task.abort();
    }
}
