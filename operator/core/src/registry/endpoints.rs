//! Where a Service is served: its `discovery.k8s.io/v1` EndpointSlices (every slice labelled
//! `kubernetes.io/service-name` with its name, several per Service), read as Istio reads them.
//!
//! - An endpoint serves when its `ready` condition is true or absent. Not-ready endpoints are
//!   left out, and so are terminating ones, serving or not (Kubernetes never marks a
//!   terminating endpoint ready): Istio sends neither to proxies (it keeps terminating but
//!   serving endpoints only for its persistent sessions, which Trellis does not have).
//! - The pod an endpoint's `targetRef` names gives its identity, labels and whether it is
//!   meshed; an endpoint whose pod the registry does not hold yet is left out until it does
//!   (as Istio waits for it). An endpoint without a pod (a Service without a selector, a slice
//!   made by hand) is a plain address: no mesh identity, no labels.
//! - A slice's port of the Service port's name (an unnamed port matches the Service's single
//!   unnamed one) gives the endpoints' port; a slice without it serves nothing on that port.
//! - `FQDN` slices are not read (Istio does not read them either; Kubernetes deprecated them).
//! - A Service with a selector and no slice at all (a snapshot written by hand, or a cluster
//!   whose EndpointSlice controller has not written it yet) is served by the pods its
//!   selector picks, as that controller would list them.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;

use super::{ObjectKey, Registry, Service, ServicePort, TargetPort, Workload, selects};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice, as the compiler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The slice's namespace and name.
    pub key: ObjectKey,
    /// The Service it belongs to (its `kubernetes.io/service-name` label), in its namespace.
    pub service: String,
    /// Ports by name (`""` for an unnamed port); `None`: every port (Kubernetes' meaning of a
    /// port without a number).
    pub ports: Vec<(String, Option<u16>)>,
    /// The endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses (Kubernetes allows one for IP slices; each is an endpoint).
    pub addresses: Vec<String>,
    /// The `ready` condition (absent: ready).
    pub ready: bool,
    /// The `terminating` condition (absent: not terminating).
    pub terminating: bool,
    /// The pod `targetRef` names, in the slice's namespace.
    pub pod: Option<String>,
}

impl EndpointSlice {
    /// Convert a Kubernetes EndpointSlice; `None` without a name, without the
    /// `kubernetes.io/service-name` label (no Service's) or of address type `FQDN`.
    pub fn from_k8s(s: &K8sEndpointSlice) -> Option<EndpointSlice> {
        if s.address_type == "FQDN" {
            return None;
        }
        let meta = &s.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| {
                let number = p.port.and_then(|n| u16::try_from(n).ok());
                (p.name.clone().unwrap_or_default(), number)
            })
            .collect();
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| {
                let conditions = e.conditions.as_ref();
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .filter(|r| r.namespace.as_ref().is_none_or(|ns| *ns == namespace))
                    .and_then(|r| r.name.clone());
                SliceEndpoint {
                    addresses: e.addresses.clone(),
                    ready: conditions.and_then(|c| c.ready) != Some(false),
                    terminating: conditions.and_then(|c| c.terminating) == Some(true),
                    pod,
                }
            })
            .collect();
        Some(EndpointSlice {
            key: ObjectKey::new(namespace, meta.name.clone()?),
            service,
            ports,
            endpoints,
        })
    }

    /// The key of the Service it belongs to.
    pub fn service_key(&self) -> ObjectKey {
        ObjectKey::new(self.key.namespace.clone(), self.service.clone())
    }

    /// The port its endpoints serve Service port `p` on.
    fn port_for(&self, p: &ServicePort) -> Option<u16> {
        let name = p.name.as_deref().unwrap_or_default();
        self.ports.iter().find(|(n, _)| n == name).and_then(|(_, n)| *n)
    }
}

/// One address a Service port is served at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint<'a> {
    /// The address.
    pub address: String,
    /// The port on it.
    pub port: u16,
    /// The pod behind it, if the slice names one (and the registry holds it).
    pub workload: Option<&'a Workload>,
    /// Whether it takes traffic (ready, not terminating).
    pub ready: bool,
    /// Whether it is shutting down (it no longer decides whether the Service is meshed).
    pub terminating: bool,
}

impl Registry {
    /// Add (or replace) a slice.
    pub fn insert_slice(&mut self, slice: EndpointSlice) {
        self.endpoint_slices
            .entry(slice.service_key())
            .or_default()
            .insert(slice.key.name.clone(), slice);
    }

    /// The slices of a Service, by slice name.
    pub fn slices(&self, svc: &ObjectKey) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.get(svc).into_iter().flat_map(BTreeMap::values)
    }

    /// Every address port `p` of `svc` is served at, ready or not (see the module's rules),
    /// in slice, endpoint and address order, or pod order without slices.
    pub fn endpoints<'a>(&'a self, svc: &'a Service, p: &ServicePort) -> Vec<ServiceEndpoint<'a>> {
        if svc.external_name.is_some() {
            return Vec::new();
        }
        let Some(slices) = self.endpoint_slices.get(&svc.key).filter(|s| !s.is_empty()) else {
            return self.selected(svc, p);
        };
        let mut out = Vec::new();
        for slice in slices.values() {
            let Some(port) = slice.port_for(p) else { continue };
            for e in &slice.endpoints {
                let workload = match &e.pod {
                    Some(pod) => match self
                        .workloads
                        .get(&ObjectKey::new(svc.key.namespace.clone(), pod.clone()))
                    {
                        Some(w) => Some(w),
                        // Not in the registry yet (or gone): left out until it is.
                        None => continue,
                    },
                    None => None,
                };
                for address in &e.addresses {
                    out.push(ServiceEndpoint {
                        address: address.clone(),
                        port,
                        workload,
                        ready: e.ready && !e.terminating,
                        terminating: e.terminating,
                    });
                }
            }
        }
        out
    }

    /// The pods the Service's selector picks, as the EndpointSlice controller lists them.
    fn selected<'a>(&'a self, svc: &'a Service, p: &ServicePort) -> Vec<ServiceEndpoint<'a>> {
        let Some(selector) = svc.selector.as_ref() else {
            return Vec::new();
        };
        // why: keys sort by namespace first, so the Service's namespace is one range of the
        // map; a cluster-wide scan per cluster made compilation quadratic in the mesh size.
        self.workloads
            .range(ObjectKey::new(svc.key.namespace.clone(), String::new())..)
            .map(|(_, w)| w)
            .take_while(|w| w.key.namespace == svc.key.namespace)
            .filter(|w| selects(selector, &w.labels))
            .filter_map(|w| {
                let port = match &p.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Named(name) => *w.named_ports.get(name)?,
                };
                Some(ServiceEndpoint {
                    address: w.ip.clone()?,
                    port,
                    workload: Some(w),
                    ready: w.ready,
                    terminating: false,
                })
            })
            .collect()
    }

    /// The Services (keys) whose slices name pod `pod` in their endpoints.
    pub fn services_naming_pod<'a>(&'a self, pod: &'a ObjectKey) -> impl Iterator<Item = &'a ObjectKey> + 'a {
        self.endpoint_slices
            .range(ObjectKey::new(pod.namespace.clone(), String::new())..)
            .take_while(|(k, _)| k.namespace == pod.namespace)
            .filter(|(_, slices)| {
                slices
                    .values()
                    .any(|s| s.endpoints.iter().any(|e| e.pod.as_deref() == Some(pod.name.as_str())))
            })
            .map(|(k, _)| k)
    }
}
