//! The pod's sandbox: its network namespace (or the node's, for `hostNetwork`), its `/etc/hosts`,
//! and its volumes kept in sync with the pod and the objects they show.

use serde_json::Value;
use tracing::warn;

use super::Worker;
use crate::cluster::Cluster;

impl Worker {
    /// Network namespace, `/etc/hosts`.
    pub(super) async fn set_up(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.shared.dir).map_err(|e| format!("{}: {e}", self.shared.dir.display()))?;
        if let Some(net) = self.ctx.network.clone() {
            if self.host_network() {
                self.netns = Some(net.node_netns_path());
                self.ip = crate::network::NODE_IP.to_string();
            } else {
                let ip: std::net::Ipv4Addr = self.ip.parse().map_err(|e| format!("pod ip {}: {e}", self.ip))?;
                let (uid, ns) = (self.shared.uid.clone(), self.shared.namespace.clone());
                let attached = tokio::task::spawn_blocking(move || net.attach(&uid, &ns, ip))
                    .await
                    .map_err(|e| e.to_string())??;
                self.netns = Some(attached.path.clone());
                // `dnsPolicy: Default`: the node's resolver configuration.
                if self.pod["spec"]["dnsPolicy"] != "Default" {
                    self.resolv = Some(attached.resolv_conf.clone());
                }
            }
        } else {
            // No pod network: every pod shares kubesim's network namespace.
            self.ip = "127.0.0.1".into();
        }
        let hosts = self.shared.dir.join("hosts");
        let name = self.hostname();
        let mut text = String::from(
            "# Kubernetes-managed hosts file (kubesim).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if self.ip != "127.0.0.1" {
            text.push_str(&format!("{}\t{name}\n", self.ip));
        }
        for alias in self.pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
            let names: Vec<&str> = alias["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            text.push_str(&format!(
                "{}\t{}\n",
                alias["ip"].as_str().unwrap_or_default(),
                names.join("\t")
            ));
        }
        std::fs::write(&hosts, text).map_err(|e| e.to_string())?;
        self.hosts = Some(hosts);
        *self.shared.ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = self.ip.clone();
        Ok(())
    }

    pub(super) fn sync_volumes(&mut self) {
        // The latest pod (labels and annotations feed the downward API).
        if let Some(rt) = self.cluster().catalog.get("", "v1", "pods")
            && let Some(latest) =
                self.cluster()
                    .store
                    .get(&Cluster::key(&rt, Some(&self.shared.namespace), &self.shared.name))
            && latest["metadata"]["uid"] == self.pod["metadata"]["uid"]
        {
            self.pod["metadata"] = latest["metadata"].clone();
        }
        match self.volumes.sync(&self.ctx.cluster, &self.pod, &self.ip) {
            Ok(()) => {
                self.volumes_ready = true;
                self.volume_error = None;
            }
            Err(e) => {
                if self.volume_error.as_deref() != Some(e.as_str()) {
                    self.event("FailedMount", &e);
                    warn!(pod = %self.shared.name, error = %e, "volumes not ready");
                }
                self.volume_error = Some(e);
            }
        }
    }
}
