//! The Mesh's settings as every replica follows them from its live index: [`follow`] publishes
//! the settings of the spec the index keeps in force ([`crate::settings::Settings::in_force`]).
//! Here, not in [`crate::settings`], so the settings stay below the index that checks a Mesh
//! with them.

use tokio::sync::watch;
use trellis_api::mesh::MeshSpec;

use crate::settings::{Defaults, Invalid, Settings};

/// Keep `settings` as the Mesh in the live `index` says, on every replica, until the index's
/// change announcements (`changed`) end: the settings of the spec the index keeps in force — a
/// valid Mesh replaces it, an invalid one leaves the last valid one in force (the leader's
/// reconciler says why in the Mesh's status), no Mesh gives the defaults. The compiler reads the
/// same spec from the same index ([`crate::index::Index::snapshot`]). Nothing is published
/// before the index has listed every kind, so the settings read at start stay in force until
/// then.
pub async fn follow(
    index: crate::index::Shared,
    mut changed: watch::Receiver<u64>,
    defaults: Defaults,
    settings: watch::Sender<Settings>,
) {
    type Seen = (Option<MeshSpec>, Option<Invalid>);
    let mut seen: Option<Seen> = None;
    loop {
        let now: Option<Seen> = index
            .read()
            .ok()
            .filter(|i| i.synced())
            .map(|i| (i.mesh().cloned(), i.mesh_refused().cloned()));
        if let Some((spec, refused)) = now.filter(|s| seen.as_ref() != Some(s)) {
            if let Some(invalid) = &refused {
                tracing::warn!(error = %invalid, "the Mesh is invalid; this replica keeps acting on the last valid spec");
            }
            let next = Settings::in_force(spec.as_ref(), &defaults);
            settings.send_if_modified(|current| {
                let modified = *current != next;
                *current = next;
                modified
            });
            seen = Some((spec, refused));
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// A live index with [`follow`] running on it, for tests.
#[cfg(test)]
pub(crate) struct Followed {
    /// The index.
    pub index: crate::index::Shared,
    /// The settings followed from it.
    pub settings: watch::Receiver<Settings>,
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(test)]
impl Followed {
    /// An empty, unlisted index, the settings `at_start` until it is listed.
    pub fn start(defaults: Defaults, at_start: Settings) -> Followed {
        let index = std::sync::Arc::new(std::sync::RwLock::new(crate::index::Index::for_operator(&defaults)));
        let (changed, changed_rx) = watch::channel(0u64);
        let (tx, settings) = watch::channel(at_start);
        let task = tokio::spawn(follow(index.clone(), changed_rx, defaults, tx));
        Followed {
            index,
            settings,
            changed,
            task,
        }
    }

    /// Apply `change` to the index and announce it.
    pub fn apply(&self, change: crate::index::Change) {
        self.index.write().unwrap().apply(change);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Apply the Mesh `default` whose spec is `spec`.
    pub fn apply_mesh(&self, spec: serde_json::Value) {
        let mesh = serde_json::from_value(serde_json::json!({
            "apiVersion": "mesh.trellis.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
            "spec": spec,
        }))
        .expect("a Mesh");
        self.apply(crate::index::Change::Applied(crate::index::Object::Mesh(Box::new(
            mesh,
        ))));
    }

    /// Relist every kind with what the index holds: the index is synced.
    pub fn list(&self) {
        for kind in crate::snapshot::InputKind::ALL {
            let seen = self.index.read().unwrap().keys(kind).into_iter().collect();
            self.apply(crate::index::Change::Relisted { kind, seen });
        }
    }

    /// End the index's announcements; the follower ends.
    pub async fn stop(self) {
        drop(self.changed);
        tokio::time::timeout(std::time::Duration::from_secs(1), self.task)
            .await
            .expect("the follower ends")
            .expect("the follower did not panic");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::watch;

    use super::*;
    use trellis_api::mesh::Mesh;

    use crate::settings::tests::mesh;

    #[tokio::test]
    async fn every_replica_follows_the_valid_mesh_in_its_index_and_keeps_the_last_valid_one() {
        let defaults = Defaults::default();
        let mut at_start = Settings::defaults(&defaults);
        at_start.ca.workload_cert_ttl = Duration::from_secs(7200);
        let followed = Followed::start(defaults.clone(), at_start.clone());
        let mut rx = followed.settings.clone();
        let ttls = |m: &Mesh| {
            let s = Settings::from_mesh(m, &defaults).unwrap();
            (s.ca.workload_cert_ttl, s.ca.root_cert_ttl)
        };
        async fn next(rx: &mut watch::Receiver<Settings>) -> (Duration, Duration) {
            tokio::time::timeout(Duration::from_secs(1), rx.changed())
                .await
                .expect("the settings changed")
                .unwrap();
            let s = rx.borrow_and_update().clone();
            (s.ca.workload_cert_ttl, s.ca.root_cert_ttl)
        }
        // Until the index has listed every kind, the settings read at start stay.
        let first = json!({"ca": {"workloadCertTtl": "1h", "rootCertTtl": "2160h"}});
        followed.apply_mesh(first.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*rx.borrow_and_update(), at_start);
        followed.list();
        assert_eq!(next(&mut rx).await, ttls(&mesh(first)));
        // Changed after start: followed.
        let second = json!({"ca": {"workloadCertTtl": "30m", "rootCertTtl": "720h"}});
        followed.apply_mesh(second.clone());
        assert_eq!(
            next(&mut rx).await,
            (Duration::from_secs(1800), Duration::from_secs(720 * 3600))
        );
        // Invalid (a leaf would outlive half its root): refused by the validator, the last
        // valid settings stay in force.
        followed.apply_mesh(json!({"ca": {"workloadCertTtl": "400h", "rootCertTtl": "720h"}}));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(
            ttls(&mesh(second)),
            (rx.borrow().ca.workload_cert_ttl, rx.borrow().ca.root_cert_ttl)
        );
        followed.stop().await;
    }

    #[tokio::test]
    async fn a_deleted_mesh_falls_back_to_the_flags_not_to_the_mesh_read_at_start() {
        use crate::index::{Change, Object};
        // The flag names flag.example; the Mesh read at start names mesh.example.
        let defaults = Defaults {
            trust_domain: "flag.example".into(),
            ..Defaults::default()
        };
        assert_eq!(Settings::defaults(&defaults).trust_domain, "flag.example");
        let spec = json!({"trustDomain": "mesh.example", "versions": {"proxy": "registry.example/proxy:2"}});
        let at_start = Settings::from_mesh(&mesh(spec.clone()), &defaults).unwrap();
        let followed = Followed::start(defaults.clone(), at_start.clone());
        let mut rx = followed.settings.clone();
        followed.apply_mesh(spec);
        followed.list();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*rx.borrow_and_update(), at_start, "the same Mesh: nothing changes");
        // A Mesh without spec.trustDomain is in cluster.local, as the compiler reads it.
        followed.apply_mesh(json!({}));
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update().trust_domain, "cluster.local");
        // Deleted: the flags, not what the Mesh said at start.
        followed.apply(Change::Deleted(Object::Mesh(Box::new(mesh(json!({}))))));
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), Settings::defaults(&defaults));
        assert_eq!(rx.borrow().trust_domain, "flag.example");
        assert_eq!(rx.borrow().proxy_image, defaults.proxy_image);
        followed.stop().await;
    }
}
