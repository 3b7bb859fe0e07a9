//! Events on the objects the operator acts on (the Mesh, a Trellis resource with a diagnostic,
//! a pod the injector skipped), written through the `events.k8s.io/v1` API.
//!
//! One Event per distinct occurrence; the same occurrence repeated within [`SERIES_WINDOW`]
//! becomes its Event's `series` (`kubectl describe` shows "x2 over 75s"), as client-go's
//! events/v1 recorder does. "The same occurrence" is the same type, reason, action, note,
//! reporter, object and related object.
//!
//! # Why not kube-runtime's `Recorder`
//! Its aggregation key leaves the note out, so a second event with the same reason on the same
//! object within six minutes was written as the first one's series: the Mesh's
//! `RolloutWaveStarted` of wave 2 showed up as "wave 1: restarting ... (x2)", and wave 2's own
//! note was lost. client-go keys on the note since kubernetes/kubernetes#112365; so does this
//! recorder. The event fields it writes are the ones kube-runtime writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long after its last occurrence a repeat is counted in an Event's series rather than
/// written as a new Event (kube-runtime's and client-go's window).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The events a replica has written recently, by what makes them the same occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
    regarding: ObjectKey,
    related: Option<ObjectKey>,
}

/// An object's identity in a reference (not its resourceVersion or field path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ObjectKey {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl From<&ObjectReference> for ObjectKey {
    fn from(r: &ObjectReference) -> Self {
        ObjectKey {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// Publishes events as one reporter (controller and replica).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Arc<Mutex<HashMap<Key, K8sEvent>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing with `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            recent: Arc::default(),
        }
    }

    /// Publish `ev` about `regarding`: a new Event, or one more in the series of the same
    /// occurrence published within [`SERIES_WINDOW`]. Cluster-scoped objects' events go to
    /// the `default` namespace, as kube-runtime's and kubectl's.
    ///
    /// # Errors
    /// The API server refused the Event.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            warning: ev.type_ == EventType::Warning,
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(ObjectKey::from),
        };
        let repeat = {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.retain(|_, e| last_seen(e).is_some_and(|t| within_window(t, now)));
            recent.get(&key).cloned()
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let event = match repeat {
            Some(mut event) => {
                let count = event.series.as_ref().map_or(2, |s| s.count + 1);
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                let name = event.metadata.name.clone().unwrap_or_default();
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&event))
                    .await?;
                event
            }
            None => {
                let event = self.new_event(ev, regarding, now);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, event);
        Ok(())
    }

    /// Publish `ev` about `regarding` as the Event named `name`, once: when an Event of that
    /// name exists (published by another replica, or by an earlier leader), it is left as it
    /// is. Whether this call wrote it.
    ///
    /// # Errors
    /// The API server refused the Event for another reason than its existence.
    pub async fn publish_once(&self, ev: &Event, regarding: &ObjectReference, name: &str) -> Result<bool, kube::Error> {
        let mut event = self.new_event(ev, regarding, Timestamp::now());
        event.metadata.name = Some(name.to_string());
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or_else(|| controller.clone())),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..K8sEvent::default()
        }
    }
}

fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
}

fn within_window(seen: Timestamp, now: Timestamp) -> bool {
    now.duration_since(seen).unsigned_abs() < SERIES_WINDOW
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Rollout".into(),
            secondary: None,
        }
    }

    fn mesh() -> ObjectReference {
        ObjectReference {
            api_version: Some("mesh.trellis.dev/v1alpha1".into()),
            kind: Some("Mesh".into()),
            name: Some("default".into()),
            uid: Some("uid-1".into()),
            ..ObjectReference::default()
        }
    }

    /// The next request: its method, path and JSON body, answered with the body.
    async fn next(handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>) -> (Method, String, Value) {
        let (request, send) = handle.next_request().await.expect("a request");
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let bytes = request.into_body().collect_bytes().await.expect("a body");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                .expect("a response"),
        );
        (method, path, body)
    }

    #[tokio::test]
    async fn same_reason_other_note_is_a_new_event_and_a_repeat_is_its_series() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let recorder = Recorder::new(Client::new(service, "default"), Reporter::from("trellis-operator"));
        let publishing = tokio::spawn(async move {
            for (reason, note) in [
                (
                    "RolloutWaveStarted",
                    "wave 1: restarting Deployment shop/db onto proxy:2",
                ),
                (
                    "RolloutWaveStarted",
                    "wave 2: restarting Deployment shop/web onto proxy:2",
                ),
                (
                    "RolloutWaveStarted",
                    "wave 1: restarting Deployment shop/db onto proxy:2",
                ),
            ] {
                recorder
                    .publish(&event(reason, note), &mesh())
                    .await
                    .expect("published");
            }
        });
        let (method, path, first) = next(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events")
        );
        assert_eq!(first["note"], "wave 1: restarting Deployment shop/db onto proxy:2");
        assert_eq!(first["regarding"]["kind"], "Mesh");
        assert_eq!(first["reportingController"], "trellis-operator");
        assert!(first["series"].is_null(), "{first}");

        // Wave 2 is its own event with its own note (kube-runtime's Recorder patched wave 1's
        // event into a series of 2 here).
        let (method, _, second) = next(&mut handle).await;
        assert_eq!(method, Method::POST, "wave 2 must be a new Event: {second}");
        assert_eq!(second["note"], "wave 2: restarting Deployment shop/web onto proxy:2");

        // The very same occurrence again: the first event's series.
        let (method, path, repeat) = next(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(
            path,
            format!(
                "/apis/events.k8s.io/v1/namespaces/default/events/{}",
                first["metadata"]["name"].as_str().expect("a name")
            )
        );
        assert_eq!(repeat["series"]["count"], json!(2));
        assert_eq!(repeat["note"], first["note"]);
        publishing.await.expect("every event published");
    }

    #[test]
    fn a_series_ends_after_the_window() {
        let now = Timestamp::now();
        let long_ago = now - k8s_openapi::jiff::SignedDuration::from_secs(7 * 60);
        assert!(!within_window(long_ago, now));
        assert!(within_window(
            now - k8s_openapi::jiff::SignedDuration::from_secs(60),
            now
        ));
    }
}
