//! What the running operator observes for the Mesh reconciler: the CA's roots, the push's sync
//! state, the watched pods and workloads, and the webhooks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use trellis_api::mesh::CaMode;

use super::Observe;
use super::conditions::{CaObservation, WebhooksObservation};
use crate::ca::MeshRoots;
use crate::dataplane::{self, MeshedPod, Pods, ProxyLink};
use crate::push::PushService;
use crate::rollout::plan::Workload;
use crate::settings::Settings;

/// The live observations.
pub struct Live {
    /// The mesh roots.
    pub roots: Arc<MeshRoots>,
    /// The operator's namespace (its Deployment and CA Secret are there).
    pub namespace: String,
    /// The push (proxies' sync state).
    pub push: PushService,
    /// The watched meshed pods.
    pub pods: Pods,
    /// The other replicas' proxies.
    pub peers: crate::peers::Peers,
    /// The watched workloads and budgets.
    pub workloads: crate::rollout::workloads::Shared,
    /// The admission webhooks' state.
    pub webhooks: Arc<dyn Fn() -> WebhooksObservation + Send + Sync>,
    /// Why the CA cannot follow the Mesh's CA settings ([`crate::ca::lifecycle`]).
    pub ca_problem: crate::ca::lifecycle::Problem,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Observe for Live {
    fn ca(&self, settings: &Settings) -> CaObservation {
        let status = self.roots.status();
        let issuing = status.roots.iter().find(|r| r.issuing);
        let mode = match settings.ca.mode {
            CaMode::SelfSigned => "SelfSigned",
            CaMode::Plugged => "Plugged",
        };
        let problem = self.ca_problem.read().ok().and_then(|p| p.clone());
        CaObservation {
            mode: mode.into(),
            // Every replica's signer follows the Mesh's trust domain live (crate::trust_domain).
            trust_domain: settings.trust_domain.clone(),
            root_fingerprint: issuing.map(|r| r.fingerprint.clone()).unwrap_or_default(),
            root_expires: issuing.map(|r| SystemTime::UNIX_EPOCH + Duration::from_secs(r.not_after_unix)),
            phase: status.phase,
            progress: status.progress,
            queued_root: status.queued_root,
            problem,
            secret: format!("{}/{}", self.namespace, crate::ca::secret::CA_SECRET),
            served_trust_domains: served_trust_domains(&crate::peers::merged(self.push.sync_state(), &self.peers)),
            unconnected: Vec::new(),
            previous_trust_domains: Vec::new(),
        }
    }

    fn webhooks(&self) -> WebhooksObservation {
        (self.webhooks)()
    }

    fn pods(&self) -> Vec<MeshedPod> {
        self.pods
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn links(&self) -> BTreeMap<String, ProxyLink> {
        dataplane::links(&crate::peers::merged(self.push.sync_state(), &self.peers))
    }

    fn workloads(&self) -> Vec<Workload> {
        self.workloads.read().map(|w| w.workloads()).unwrap_or_default()
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Connected proxies by the trust domain of the certificate they report serving
/// ([`super::trust_domain::UNREPORTED`]: a proxy that reported none, or no identity).
fn served_trust_domains(sync: &[crate::push::ProxySync]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in sync.iter().filter(|p| p.connected) {
        let domain = p
            .certificate
            .as_ref()
            .and_then(|c| trellis_contract::SpiffeId::parse(&c.spiffe_id).ok())
            .map(|id| id.trust_domain().to_string())
            .unwrap_or_else(|| super::trust_domain::UNREPORTED.to_string());
        out.entry(domain).or_default().push(p.proxy.clone());
    }
    out
}
