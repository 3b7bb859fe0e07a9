//! What every subscription shares for one change of the mesh ([`Built`]): the snapshot, each
//! [`OutboundKey`]'s shared part and each proxy's own part, compiled by the first proxy that
//! needs it — from the previous change's where [`Changes`] allows — and the deltas between
//! shared parts.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use super::lock;
use super::render::{OwnPart, Rendered, SharedDiffs, SharedOutbound};
use crate::ca::Bundle;
use crate::compile::{Changes, CompileError, OutboundKey, Role, compile_workload, outbound_key, source_label_keys};
use crate::registry::ObjectKey;
use crate::snapshot::Snapshot as MeshSnapshot;

/// What every subscription shares for one change: the snapshot, each [`OutboundKey`]'s shared
/// part and each proxy's own part (compiled by the first proxy that needs it, reusing the
/// previous change's where [`Changes`] allows), and the deltas between shared parts.
pub(super) struct Built {
    pub(super) generation: u64,
    pub(super) bundle: Bundle,
    pub(super) snapshot: Arc<MeshSnapshot>,
    label_keys: BTreeSet<String>,
    /// What the build of the change before compiled, and what changed since.
    previous: Option<Previous>,
    outbounds: Mutex<HashMap<OutboundKey, SharedCell>>,
    owns: Mutex<HashMap<(ObjectKey, bool), OwnCell>>,
    pub(super) diffs: SharedDiffs,
}

/// The parts the build of the previous change compiled (not its snapshot, which is dropped),
/// and what changed since.
struct Previous {
    outbounds: HashMap<OutboundKey, SharedCell>,
    owns: HashMap<(ObjectKey, bool), OwnCell>,
    changes: Changes,
}

type SharedCell = Arc<OnceLock<Result<Arc<SharedOutbound>, CompileError>>>;
type OwnCell = Arc<OnceLock<Result<Arc<OwnPart>, CompileError>>>;

impl Built {
    /// What subscriptions share for change `generation` of the mesh, `snapshot`, signed with
    /// `bundle`: compiled lazily, reusing what `before` (the previous change's) compiled where
    /// the change allows.
    pub(super) fn after(before: Option<Arc<Built>>, generation: u64, bundle: Bundle, snapshot: MeshSnapshot) -> Built {
        let previous = before.map(|p| Previous {
            outbounds: lock(&p.outbounds).clone(),
            owns: lock(&p.owns).clone(),
            changes: crate::compile::changes(&p.snapshot, &snapshot),
        });
        Built {
            generation,
            label_keys: source_label_keys(&snapshot),
            snapshot: Arc::new(snapshot),
            bundle,
            previous,
            outbounds: Mutex::default(),
            owns: Mutex::default(),
            diffs: SharedDiffs::default(),
        }
    }

    /// The shared part for `pod`'s key, compiled once per key: from the previous change's
    /// when there is one (recompiling only what changed), from scratch otherwise.
    fn outbound(&self, pod: &ObjectKey) -> Result<Arc<SharedOutbound>, CompileError> {
        let key = outbound_key(&self.snapshot, pod, &self.label_keys)?;
        let cell = lock(&self.outbounds).entry(key.clone()).or_default().clone();
        cell.get_or_init(|| {
            let before = self.previous.as_ref().and_then(|prev| {
                let old = prev.outbounds.get(&key)?.get()?.as_ref().ok()?.clone();
                Some((old, &prev.changes))
            });
            match before {
                Some((old, changes)) if !changes.touches_outbound() => Ok(old),
                Some((old, changes)) => old.update(&self.snapshot, pod, changes).map(Arc::new),
                None => SharedOutbound::compile(&self.snapshot, pod).map(Arc::new),
            }
        })
        .clone()
    }

    /// `pod`'s own part, reused from the previous change when its inputs did not change.
    fn own(&self, pod: &ObjectKey, role: Role) -> Result<Arc<OwnPart>, CompileError> {
        let key = (pod.clone(), role == Role::Gateway);
        let cell = lock(&self.owns).entry(key.clone()).or_default().clone();
        cell.get_or_init(|| {
            let reused = self.previous.as_ref().and_then(|prev| {
                // A gateway's own part reads nearly everything: always recompiled.
                if role == Role::Gateway || prev.changes.own_changed(pod) {
                    return None;
                }
                prev.owns.get(&key)?.get()?.as_ref().ok().cloned()
            });
            match reused {
                Some(own) => Ok(own),
                None => compile_workload(&self.snapshot, pod, role, "").map(|c| Arc::new(OwnPart::new(c.config))),
            }
        })
        .clone()
    }

    /// `pod`'s configuration for this change.
    pub(super) fn render(&self, pod: &ObjectKey, role: Role) -> Result<Rendered, CompileError> {
        let own = self.own(pod, role)?;
        let shared = match role {
            Role::Sidecar => Some(self.outbound(pod)?),
            Role::Gateway => None,
        };
        Ok(Rendered::new(own, shared, &self.bundle.renew_unless_issued_by))
    }
}
