//! Reaching a live proxy's admin API (port 15000, `/config_dump` and `/logging`), which
//! listens on the pod's localhost only.
//!
//! # Why a port-forward
//! The admin API stays where Envoy and Istio keep theirs: on localhost, reachable by nothing on
//! the pod network. meshctl reaches it as `istioctl proxy-config` does, through the API server's
//! `pods/portforward` (WebSocket, Kubernetes ≥ 1.31 and kubesim), under the caller's own RBAC
//! (`create pods/portforward`). The other way — `pods/proxy` to a port the proxy would have to
//! open on the pod's address — would let any pod of the cluster read every proxy's routes and
//! change its log level. What comes back holds no key material: the proxy's `/config_dump`
//! redacts keys and shows certificates by their metadata only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::version::proxy_image;

/// The proxy's admin port (localhost in the pod).
pub const ADMIN_PORT: u16 = 15000;

/// The largest admin answer read.
const MAX_ANSWER: usize = 32 << 20;

/// How long an admin request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why the admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such pod.
    #[error(
        "pod {namespace}/{name} not found: `kubectl get pods -n {namespace}` lists the pods (POD.NAMESPACE names another namespace)"
    )]
    NoPod {
        /// The namespace.
        namespace: String,
        /// The pod.
        name: String,
    },
    /// The pod runs no Trellis proxy.
    #[error(
        "pod {namespace}/{name} has no Trellis proxy: it is not meshed (label its namespace trellis.dev/inject=enabled \
         and recreate it), or it is not a gateway"
    )]
    NoProxy {
        /// The namespace.
        namespace: String,
        /// The pod.
        name: String,
    },
    /// The proxy did not answer.
    #[error(
        "the proxy of pod {namespace}/{name} does not answer on its admin port {ADMIN_PORT}: {reason}; is the pod \
         running (`kubectl get pod -n {namespace} {name}`)? `kubectl logs -n {namespace} {name} -c trellis-proxy` \
         says why"
    )]
    NoAnswer {
        /// The namespace.
        namespace: String,
        /// The pod.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The proxy refused the request.
    #[error("the proxy of pod {namespace}/{name} answered {path} with HTTP {status}: {body}")]
    Refused {
        /// The namespace.
        namespace: String,
        /// The pod.
        name: String,
        /// The admin path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Its answer.
        body: String,
    },
}

/// A pod with a proxy, whose admin API can be asked.
#[derive(Debug)]
pub struct ProxyPod<'a> {
    cluster: &'a Cluster,
    namespace: String,
    name: String,
}

impl<'a> ProxyPod<'a> {
    /// The pod `namespace/name`, checked to exist and to run a Trellis proxy.
    pub async fn find(cluster: &'a Cluster, namespace: &str, name: &str) -> anyhow::Result<ProxyPod<'a>> {
        let pod =
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}});
        let found: Option<Value> = cluster.get(&pod).await?;
        let Some(found) = found else {
            return Err(AdminError::NoPod {
                namespace: namespace.into(),
                name: name.into(),
            }
            .into());
        };
        if proxy_image(&found).is_none() {
            return Err(AdminError::NoProxy {
                namespace: namespace.into(),
                name: name.into(),
            }
            .into());
        }
        Ok(ProxyPod {
            cluster,
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    fn no_answer(&self, reason: impl std::fmt::Display) -> AdminError {
        AdminError::NoAnswer {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// `method path` on the admin API; the answer's body.
    pub async fn request(&self, method: http::Method, path: &str) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client().clone(), &self.namespace);
        let mut forward = pods.portforward(&self.name, &[ADMIN_PORT]).await.map_err(|e| match e {
            kube::Error::Api(_) => anyhow::Error::from(self.cluster.error(
                format!("forwarding port {ADMIN_PORT} of pod {}/{}", self.namespace, self.name),
                e,
            )),
            other => self.no_answer(crate::cluster::error_chain(&other)).into(),
        })?;
        let stream = forward
            .take_stream(ADMIN_PORT)
            .ok_or_else(|| self.no_answer("the port-forward gave no stream"))?;
        let exchange = async {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.no_answer(e))?;
            let driver = tokio::spawn(connection);
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "localhost")
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| self.no_answer(e))?;
            let response = sender.send_request(request).await.map_err(|e| self.no_answer(e))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.no_answer(e))?
                .to_bytes();
            driver.abort();
            Ok::<_, AdminError>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| self.no_answer(format!("no answer within {TIMEOUT:?}")))??;
        drop(forward);
        if !(200..300).contains(&status) {
            return Err(AdminError::Refused {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                path: path.to_string(),
                status,
                body: body.trim().to_string(),
            }
            .into());
        }
        Ok(body)
    }
}
