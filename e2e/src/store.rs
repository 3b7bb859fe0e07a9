//! Object storage: every object as JSON under one global resourceVersion
//! counter, with an event history that serves watches.
//!
//! # Guarantees
//! - Every write gets a strictly larger resourceVersion than any before.
//! - A watch started from resourceVersion `n` sees, in order, exactly the
//!   events with a larger resourceVersion, as long as `n` is still in the
//!   history; otherwise it is told `Gone` (HTTP 410 semantics).
//!
//! # Caveats
//! - State is in memory only; it does not survive a restart.
//! - Lists are always served from the latest state (no MVCC snapshots), so a
//!   paginated list can observe writes made between pages.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// How many events the history keeps before the oldest are compacted.
/// Why this size: large enough that no test watch falls behind by accident,
/// small enough to stay a few MiB.
pub const HISTORY_LIMIT: usize = 20_000;

/// Identifies one stored object. `group_resource` is `group/plural`
/// (shared by every version of a resource).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group_resource: String,
    pub namespace: String,
    pub name: String,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the history.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub resource_version: u64,
    pub key: ObjectKey,
    pub type_: EventType,
    pub object: Value,
    /// The object before a modification (selector transitions need it).
    pub old: Option<Value>,
}

/// Storage-level failures; the REST layer turns them into `Status` objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("the object has been modified; please apply your changes to the latest version and try again")]
    Conflict,
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<StoredEvent>>,
    /// Watches from a resourceVersion at or below this are too old.
    compacted: u64,
}

/// The object store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    /// Bumped on every compaction so open watches end.
    epoch: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a watch begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Synthetic ADDED events for every current object, then changes.
    InitialState,
    /// Changes after this resourceVersion.
    After(u64),
}

/// An open watch: the backlog to send first and the live feed after it.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: Vec<Arc<StoredEvent>>,
    pub live: broadcast::Receiver<Arc<StoredEvent>>,
    pub epoch: watch::Receiver<u64>,
    /// The resourceVersion the backlog brings the watcher up to.
    pub resource_version: u64,
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// The resourceVersion recorded in an object, 0 if absent or malformed.
pub fn object_rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(8192);
        let (epoch, _) = watch::channel(0);
        Self {
            state: Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
            events,
            epoch,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects of one resource, optionally in one namespace, ordered by
    /// namespace then name, with the resourceVersion of the read.
    pub fn list(&self, group_resource: &str, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.lock();
        // why: keys order by resource, then namespace, then name, so the objects asked for are
        // one range of the map; scanning every stored object (events included) on each list
        // made each controller sweep cost more as the cluster grew.
        let from = ObjectKey {
            group_resource: group_resource.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: String::new(),
        };
        let items = st
            .objects
            .range(from..)
            .take_while(|(k, _)| k.group_resource == group_resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// Every object in a namespace, of any resource.
    pub fn list_namespace(&self, namespace: &str) -> Vec<(ObjectKey, Value)> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.namespace == namespace)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every stored object (the garbage collector's view).
    pub fn snapshot(&self) -> Vec<(ObjectKey, Value)> {
        self.lock()
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn record(&self, st: &mut State, key: &ObjectKey, type_: EventType, object: &Value, old: Option<Value>) {
        let ev = Arc::new(StoredEvent {
            resource_version: st.rv,
            key: key.clone(),
            type_,
            object: object.clone(),
            old,
        });
        st.history.push_back(ev.clone());
        while st.history.len() > HISTORY_LIMIT {
            if let Some(old) = st.history.pop_front() {
                st.compacted = st.compacted.max(old.resource_version);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ev);
    }

    /// Stores a new object; fails if the key exists.
    pub fn create(&self, key: &ObjectKey, mut obj: Value) -> Result<Value, StoreError> {
        let mut st = self.lock();
        if st.objects.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        st.rv += 1;
        set_rv(&mut obj, st.rv);
        st.objects.insert(key.clone(), obj.clone());
        self.record(&mut st, key, EventType::Added, &obj, None);
        Ok(obj)
    }

    /// Replaces an object. With `expected_rv`, fails with `Conflict` unless
    /// the stored object still has that resourceVersion.
    pub fn update(&self, key: &ObjectKey, mut obj: Value, expected_rv: Option<u64>) -> Result<Value, StoreError> {
        let mut st = self.lock();
        let current = st.objects.get(key).ok_or(StoreError::NotFound)?;
        if expected_rv.is_some_and(|rv| rv != object_rv(current)) {
            return Err(StoreError::Conflict);
        }
        let old = current.clone();
        st.rv += 1;
        set_rv(&mut obj, st.rv);
        st.objects.insert(key.clone(), obj.clone());
        self.record(&mut st, key, EventType::Modified, &obj, Some(old));
        Ok(obj)
    }

    /// Removes an object, with the same precondition as [`Store::update`].
    pub fn delete(&self, key: &ObjectKey, expected_rv: Option<u64>) -> Result<Value, StoreError> {
        let mut st = self.lock();
        let current = st.objects.get(key).ok_or(StoreError::NotFound)?;
        if expected_rv.is_some_and(|rv| rv != object_rv(current)) {
            return Err(StoreError::Conflict);
        }
        let mut obj = st.objects.remove(key).ok_or(StoreError::NotFound)?;
        st.rv += 1;
        set_rv(&mut obj, st.rv);
        self.record(&mut st, key, EventType::Deleted, &obj, None);
        Ok(obj)
    }

    /// A raw feed of every change (controllers use it as a wake-up).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.events.subscribe()
    }

    /// Opens a watch on one resource (optionally one namespace).
    pub fn watch(
        &self,
        group_resource: &str,
        namespace: Option<&str>,
        start: WatchStart,
    ) -> Result<Subscription, StoreError> {
        let st = self.lock();
        let live = self.events.subscribe();
        let epoch = self.epoch.subscribe();
        let matches =
            |k: &ObjectKey| k.group_resource == group_resource && namespace.is_none_or(|ns| k.namespace == ns);
        let backlog = match start {
            WatchStart::InitialState => st
                .objects
                .iter()
                .filter(|(k, _)| matches(k))
                .map(|(k, v)| {
                    Arc::new(StoredEvent {
                        resource_version: object_rv(v),
                        key: k.clone(),
                        type_: EventType::Added,
                        object: v.clone(),
                        old: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) => {
                if rv <= st.compacted {
                    return Err(StoreError::Gone {
                        requested: rv,
                        oldest: st.compacted + 1,
                    });
                }
                st.history
                    .iter()
                    .filter(|e| e.resource_version > rv && matches(&e.key))
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            backlog,
            live,
            epoch,
            resource_version: st.rv,
        })
    }

    /// Simulates an etcd compaction followed by a watch-cache reset: the
    /// history is dropped, every open watch ends, and any resourceVersion up
    /// to the current one is too old to watch from. Test suites use it to
    /// prove clients recover from `410 Gone`.
    pub fn compact(&self) -> u64 {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.rv;
        // Make the next write distinguishable from the compaction point.
        st.rv += 1;
        self.epoch.send_modify(|e| *e += 1);
        st.compacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group_resource: "/configmaps".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn cm(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn writes_bump_the_resource_version_and_detect_conflicts() {
        let s = Store::new();
        let a = s.create(&key("a"), cm("a")).unwrap();
        let rv = object_rv(&a);
        assert!(rv > 1);
        assert_eq!(s.create(&key("a"), cm("a")), Err(StoreError::AlreadyExists));
        let b = s.update(&key("a"), a.clone(), Some(rv)).unwrap();
        assert!(object_rv(&b) > rv);
        assert_eq!(s.update(&key("a"), a.clone(), Some(rv)), Err(StoreError::Conflict));
        assert_eq!(s.delete(&key("a"), Some(rv)), Err(StoreError::Conflict));
        s.delete(&key("a"), None).unwrap();
        assert!(s.get(&key("a")).is_none());
    }

    #[test]
    fn watch_replays_history_after_a_version_and_reports_gone_after_compaction() {
        let s = Store::new();
        let a = s.create(&key("a"), cm("a")).unwrap();
        s.create(&key("b"), cm("b")).unwrap();
        let sub = s
            .watch("/configmaps", Some("default"), WatchStart::After(object_rv(&a)))
            .unwrap();
        assert_eq!(sub.backlog.len(), 1);
        assert_eq!(sub.backlog[0].key.name, "b");
        let other_ns = s
            .watch("/configmaps", Some("kube-system"), WatchStart::After(1))
            .unwrap();
        assert!(other_ns.backlog.is_empty());

        let init = s.watch("/configmaps", None, WatchStart::InitialState).unwrap();
        assert_eq!(init.backlog.len(), 2);

        let point = s.compact();
        assert!(matches!(
            s.watch("/configmaps", None, WatchStart::After(point)),
            Err(StoreError::Gone { .. })
        ));
        assert!(s.watch("/configmaps", None, WatchStart::After(point + 1)).is_ok());
    }

    #[test]
    fn lists_hold_one_resource_in_one_or_every_namespace_in_order() {
        let s = Store::new();
        let at = |gr: &str, ns: &str, name: &str| ObjectKey {
            group_resource: gr.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        for (gr, ns, name) in [
            ("/configmaps", "b", "x"),
            ("/configmaps", "a", "y"),
            ("/configmaps", "a", "x"),
            ("/configmapsx", "a", "z"),
            ("/config", "a", "w"),
            ("/secrets", "a", "s"),
            ("/namespaces", "", "a"),
        ] {
            s.create(&at(gr, ns, name), json!({"metadata": {"name": name, "namespace": ns}}))
                .unwrap();
        }
        let names = |gr: &str, ns: Option<&str>| -> Vec<String> {
            s.list(gr, ns)
                .0
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}",
                        o["metadata"]["namespace"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(names("/configmaps", None), ["a/x", "a/y", "b/x"]);
        assert_eq!(names("/configmaps", Some("a")), ["a/x", "a/y"]);
        assert_eq!(names("/configmaps", Some("c")), Vec::<String>::new());
        assert_eq!(names("/namespaces", None), ["/a"]);
        assert_eq!(names("/config", None), ["a/w"]);
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog() {
        let s = Store::new();
        let mut sub = s.watch("/configmaps", None, WatchStart::After(1)).unwrap();
        s.create(&key("a"), cm("a")).unwrap();
        let ev = sub.live.recv().await.unwrap();
        assert_eq!(ev.type_, EventType::Added);
        assert_eq!(ev.key.name, "a");
    }
}
