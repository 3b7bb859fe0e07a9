//! Root rotation in the running operator, with a real `trellis-proxy` in mesh mode (the
//! `trellis-push` client): annotating the CA Secret starts it; the new root reaches the proxy's
//! trust bundle (ACKed), issuing switches, the proxy renews at once, the old root leaves the
//! bundle, the Secret and the `trellis-ca-root` ConfigMaps end with the new root only, and
//! `/debug/ca` shows each phase, fingerprints and no keys. The subscription survives it all.

mod support;

use support::{cluster_with_web, free_port, http_get, mesh_proxy, operator_config, published_roots, until, web_proxy};
use trellis_operator::app;
use trellis_operator::ca::{CaStatus, fingerprint};

fn pem_fingerprints(pem: &str) -> Vec<String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| fingerprint(c.unwrap().as_ref()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotating_the_ca_secret_rotates_the_root_without_dropping_the_proxy() {
    let (cluster, pod) = cluster_with_web();
    let port = free_port();
    let op = app::start(operator_config(port, 3600), cluster.client().await.unwrap())
        .await
        .expect("the operator starts");
    let old_fp = pem_fingerprints(&op.root_pem)[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = web_proxy(&cluster, dir.path(), port, &pod, &op.root_pem);
    let (proxy, control) = mesh_proxy(cfg).await;
    until("the proxy is configured", 20, || proxy.runtime().is_ready()).await;
    let status = || async {
        let (code, body) = http_get(op.admin_addr, "/debug/ca").await;
        assert_eq!(code, 200);
        assert!(!body.contains("PRIVATE KEY"), "{body}");
        serde_json::from_str::<CaStatus>(&body).unwrap()
    };
    let before = status().await;
    assert_eq!(before.phase, "Stable");
    assert_eq!(before.roots.len(), 1);
    assert_eq!(before.roots[0].fingerprint, old_fp);
    assert!(before.roots[0].issuing && before.roots[0].trusted);
    let trusted = |p: &trellis_proxy::App| -> Vec<String> {
        match &p.runtime().snapshot().settings.identity.trust_bundle {
            Some(trellis_contract::PemSource::Inline(pem)) => pem_fingerprints(pem),
            other => panic!("the operator pushes the bundle inline, got {other:?}"),
        }
    };
    assert_eq!(trusted(&proxy), std::slice::from_ref(&old_fp));
    let leaf = |p: &trellis_proxy::App| p.runtime().snapshot().identity.as_ref().unwrap().cert.chain[0].to_vec();
    let first_leaf = leaf(&proxy);

    // Ask for a new self-signed root.
    cluster
        .kubectl_ok(
            &[
                "-n",
                "trellis-system",
                "annotate",
                "secret",
                "trellis-ca",
                "trellis.dev/rotate-root=now",
            ],
            None,
        )
        .unwrap();

    // The rotation runs to the end on the proxy's ACKs and its reissued leaf.
    for _ in 0..300 {
        let s = status().await;
        if s.transitions.iter().filter(|t| t.phase == "Stable").count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = status().await;
    let phases: Vec<&str> = after.transitions.iter().map(|t| t.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["Stable", "Distributing", "Reissuing", "Retiring", "Stable"],
        "{after:?}"
    );
    assert_eq!(after.roots.len(), 1);
    let new_fp = after.roots[0].fingerprint.clone();
    assert_ne!(new_fp, old_fp);

    // The proxy trusts only the new root, holds a leaf from it, and never rejected a config.
    until("the proxy's bundle holds only the new root", 5, || {
        trusted(&proxy) == [new_fp.clone()]
    })
    .await;
    assert_ne!(
        leaf(&proxy),
        first_leaf,
        "the proxy renewed its leaf during the rotation"
    );
    assert_eq!(after.leaves_by_root.get(&new_fp), Some(&1), "{after:?}");
    assert!(
        proxy.runtime().last_rejection().is_none(),
        "{:?}",
        proxy.runtime().last_rejection()
    );
    let sync = op.push.sync_state();
    let me = sync.iter().find(|p| p.proxy.ends_with(&pod)).unwrap();
    assert!(me.connected && me.sent == me.acked, "{me:?}");
    assert_eq!(me.acked_roots, std::slice::from_ref(&new_fp));

    // The Secret holds the new root and no previous one; the ConfigMaps follow.
    let secret = |path: &str| {
        cluster
            .kubectl_ok(
                &[
                    "-n",
                    "trellis-system",
                    "get",
                    "secret",
                    "trellis-ca",
                    "-o",
                    &format!("jsonpath={{{path}}}"),
                ],
                None,
            )
            .unwrap()
    };
    let data = secret(".data");
    assert!(!data.contains("previous-ca"), "{data}");
    let annotations = secret(".metadata.annotations");
    assert!(!annotations.contains("rotate-root"), "{annotations}");
    let stored = app::load_or_create_root(&cluster.client().await.unwrap(), "trellis-system", "cluster.local")
        .await
        .unwrap();
    assert_eq!(stored.fingerprint(), new_fp);
    until("the trellis-ca-root ConfigMap holds the new root", 10, || {
        pem_fingerprints(&published_roots(&cluster, "shop")) == [new_fp.clone()]
    })
    .await;
    control.abort();
    op.stop();
}
