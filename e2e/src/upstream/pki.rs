//! The cluster's credentials, generated fresh for every start (as kubeadm
//! lays them out): one CA; the API server's serving certificate; client
//! certificates for the admin (`system:masters`), the controller-manager,
//! the scheduler, the kubelet (`system:node:NAME` in `system:nodes`, which
//! the Node authorizer recognises), kube-proxy, and the API server's own
//! client identity towards the kubelet; the kubelet's serving certificate;
//! and the ServiceAccount signing key pair (ES256). Each client gets a
//! kubeconfig with its certificate inline.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;

use crate::pki::{Authority, Issued, PkiError, Subject, base64_encode};

/// The clients that get a certificate and a kubeconfig, with the file stem
/// they are written under.
pub fn clients(node_name: &str) -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("admin", "kubernetes-admin".into(), Some("system:masters")),
        ("controller-manager", "system:kube-controller-manager".into(), None),
        ("scheduler", "system:kube-scheduler".into(), None),
        ("kubelet", format!("system:node:{node_name}"), Some("system:nodes")),
        ("kube-proxy", "system:kube-proxy".into(), None),
        // What the API server presents to the kubelet (logs, exec,
        // port-forward); authorized by the kubelet's webhook as a cluster
        // admin.
        (
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client".into(),
            Some("system:masters"),
        ),
    ]
}

/// The names and addresses the API server's certificate must carry: how
/// the host reaches it (the node address), how pods reach it (the
/// `kubernetes` Service's ClusterIP and DNS names), and loopback.
pub fn apiserver_names(node_ip: Ipv4Addr, kubernetes_ip: Ipv4Addr, domain: &str) -> Vec<String> {
    vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
        "127.0.0.1".into(),
        node_ip.to_string(),
        kubernetes_ip.to_string(),
    ]
}

/// A kubeconfig for `user` reaching `server`, with the certificate inline.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, client: &Issued) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: trellis-upstream\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: trellis-upstream\n  context:\n    cluster: trellis-upstream\n    user: {user}\n    namespace: default\ncurrent-context: trellis-upstream\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = base64_encode(ca_pem.as_bytes()),
        cert = base64_encode(client.cert_pem.as_bytes()),
        key = base64_encode(client.key_pem.as_bytes()),
    )
}

/// Where the credentials are written (`STATE/pki`).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.crt"))
    }
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }
    /// The kubeconfig of a client (`admin`, `kubelet`, …).
    pub fn kubeconfig(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.kubeconfig"))
    }
    /// The aggregation layer's front-proxy CA (a CA of its own, as kubeadm
    /// makes it: its clients are trusted to assert any user).
    pub fn front_proxy_ca(&self) -> PathBuf {
        self.dir.join("front-proxy-ca.crt")
    }
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn service_account_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
}

/// What [`generate`] needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct PkiSpec<'a> {
    /// `https://NODE_IP:PORT`, written into every kubeconfig.
    pub server: &'a str,
    pub node_name: &'a str,
    pub node_ip: Ipv4Addr,
    pub kubernetes_ip: Ipv4Addr,
    pub domain: &'a str,
}

/// Generates and writes every credential of a cluster (private keys mode
/// 0600); returns the CA certificate in PEM.
pub fn generate(files: &PkiFiles, spec: &PkiSpec<'_>) -> Result<String, PkiError> {
    std::fs::create_dir_all(&files.dir).map_err(|source| PkiError::Write {
        path: files.dir.clone(),
        source,
    })?;
    let ca = Authority::new("trellis-upstream-ca")?;
    write(&files.ca_cert(), &ca.cert_pem, false)?;
    write(&files.ca_key(), &ca.key_pem, true)?;
    let apiserver = ca.server(
        "kube-apiserver",
        &apiserver_names(spec.node_ip, spec.kubernetes_ip, spec.domain),
    )?;
    write_issued(files, "apiserver", &apiserver)?;
    let kubelet_serving = ca.server(spec.node_name, &[spec.node_name.to_string(), spec.node_ip.to_string()])?;
    write_issued(files, "kubelet-serving", &kubelet_serving)?;
    for (stem, user, group) in clients(spec.node_name) {
        let issued = ca.client(Subject { user: &user, group })?;
        write_issued(files, stem, &issued)?;
        write(
            &files.kubeconfig(stem),
            &kubeconfig(spec.server, &ca.cert_pem, &user, &issued),
            true,
        )?;
    }
    let front_proxy = Authority::new("front-proxy-ca")?;
    write(&files.front_proxy_ca(), &front_proxy.cert_pem, false)?;
    let front_proxy_client = front_proxy.client(Subject {
        user: "front-proxy-client",
        group: None,
    })?;
    write_issued(files, "front-proxy-client", &front_proxy_client)?;
    let sa = KeyPair::generate()?;
    write(&files.service_account_key(), &sa.serialize_pem(), true)?;
    write(&files.service_account_pub(), &sa.public_key_pem(), false)?;
    Ok(ca.cert_pem)
}

fn write_issued(files: &PkiFiles, stem: &str, issued: &Issued) -> Result<(), PkiError> {
    write(&files.cert(stem), &issued.cert_pem, false)?;
    write(&files.key(stem), &issued.key_pem, true)
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    std::io::Write::write_all(&mut file, data.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let o = cert
            .subject()
            .iter_organization()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(d) => d.to_string(),
                        GeneralName::IPAddress(ip) => ip.iter().map(u8::to_string).collect::<Vec<_>>().join("."),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (cn, o, sans)
    }

    #[test]
    fn client_certificates_carry_user_and_group() {
        let ca = Authority::new("test-ca").unwrap();
        let kubelet = ca
            .client(Subject {
                user: "system:node:n1",
                group: Some("system:nodes"),
            })
            .unwrap();
        let (cn, o, _) = parse(&kubelet.cert_pem);
        assert_eq!(cn, ["system:node:n1"]);
        assert_eq!(o, ["system:nodes"]);
        let proxy = ca
            .client(Subject {
                user: "system:kube-proxy",
                group: None,
            })
            .unwrap();
        assert_eq!(parse(&proxy.cert_pem).1, Vec::<String>::new());
    }

    #[test]
    fn apiserver_certificate_names_node_service_and_dns() {
        let ca = Authority::new("test-ca").unwrap();
        let names = apiserver_names(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(10, 96, 0, 1),
            "cluster.local",
        );
        let cert = ca.server("kube-apiserver", &names).unwrap();
        let (_, _, sans) = parse(&cert.cert_pem);
        for want in [
            "198.18.0.2",
            "10.96.0.1",
            "kubernetes.default.svc.cluster.local",
            "127.0.0.1",
        ] {
            assert!(sans.iter().any(|s| s == want), "{want} missing from {sans:?}");
        }
    }

    #[test]
    fn generate_writes_every_kubeconfig_and_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let files = PkiFiles::new(dir.path());
        let spec = PkiSpec {
            server: "https://198.18.0.2:6443",
            node_name: "n1",
            node_ip: Ipv4Addr::new(198, 18, 0, 2),
            kubernetes_ip: Ipv4Addr::new(10, 96, 0, 1),
            domain: "cluster.local",
        };
        generate(&files, &spec).unwrap();
        for (stem, user, _) in clients("n1") {
            let kc = std::fs::read_to_string(files.kubeconfig(stem)).unwrap();
            assert!(kc.contains("server: https://198.18.0.2:6443"), "{kc}");
            assert!(kc.contains(&format!("name: {user}")), "{kc}");
            let mode = std::fs::metadata(files.key(stem)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{stem}.key");
        }
        assert!(
            std::fs::read_to_string(files.service_account_pub())
                .unwrap()
                .contains("BEGIN PUBLIC KEY")
        );
    }
}
