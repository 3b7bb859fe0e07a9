//! The process runtime (kubesim's kubelet) with real processes: env and
//! volumes as the program sees them, init containers and native sidecars,
//! probes, restarts, termination, logs, exec, Deployments and Jobs.
//!
//! Every test needs root (mount and network namespaces); without it, each
//! prints "skipping: …" and passes.

use std::time::Duration;

use serde_json::Value;
use trellis_e2e::harness::TestCluster;
use trellis_e2e::runner::RunnerConfig;

fn cluster() -> anyhow::Result<Option<TestCluster>> {
    let network = std::env::var("KUBESIM_TEST_NO_NETWORK").is_err();
    TestCluster::start_with_processes(network, RunnerConfig::default())
}

fn container_status<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn env_downward_api_and_volumes_are_visible_to_the_process() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: show, labels: {app: show}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c]
    args:
    - |
      echo "token-parts=$(awk -F. '{print NF}' /var/run/secrets/kubernetes.io/serviceaccount/token)"
      echo "ns-file=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
      test -s /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca=present
      echo "greeting-file=$(cat /etc/kubesim-test/greeting)"
      echo "label-file=$(cat /var/run/podinfo/labels)"
      echo "pwd=$(pwd)"
      echo "expanded=$EXPANDED"
      env | sort
    workingDir: /etc/kubesim-test
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
    - {name: EXPANDED, value: "$(POD_NAME)-$(MODE)"}
    envFrom:
    - {configMapRef: {name: settings}, prefix: CM_}
    volumeMounts:
    - {name: cfg, mountPath: /etc/kubesim-test}
    - {name: info, mountPath: /var/run/podinfo}
  volumes:
  - name: cfg
    configMap: {name: settings, items: [{key: greeting, path: greeting}]}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: "metadata.labels['app']"}}
"#,
    )?;
    let pod = c.wait_pod_phase("default", "show", "Succeeded")?;
    let log = c.logs("default", "show", "main")?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    for want in [
        "token-parts=3".to_string(),
        "ns-file=default".into(),
        "ca=present".into(),
        "greeting-file=hello".into(),
        "label-file=show".into(),
        "pwd=/etc/kubesim-test".into(),
        "expanded=show-fast".into(),
        "POD_NAME=show".into(),
        "POD_NAMESPACE=default".into(),
        format!("POD_IP={ip}"),
        format!("POD_UID={uid}"),
        "SA=default".into(),
        "APP=show".into(),
        "PASSWORD=s3cret".into(),
        "MODE=fast".into(),
        "CM_greeting=hello".into(),
        "KUBERNETES_SERVICE_HOST=".into(),
        "HOSTNAME=show".into(),
    ] {
        assert!(log.contains(&want), "{want:?} missing in the log:\n{log}");
    }
    let st = container_status(&pod, "containerStatuses", "main");
    assert_eq!(st["state"]["terminated"]["exitCode"], 0, "{st}");
    assert_eq!(st["state"]["terminated"]["reason"], "Completed");
    // Nothing leaked onto the host.
    assert!(!std::path::Path::new("/etc/kubesim-test").exists());
    Ok(())
}

#[test]
fn unknown_images_are_reported_like_failed_pulls() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: nginx}\nspec:\n  containers:\n  - {name: web, image: 'nginx:1.27'}\n",
    )?;
    let pod = c.wait_pod("default", "nginx", Duration::from_secs(20), "pull failure", |p| {
        let r = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        r == "ErrImagePull" || r == "ImagePullBackOff"
    })?;
    let msg = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("nginx:1.27") && msg.contains("trellis-proxy"), "{msg}");
    let table = c.kubectl_ok(&["get", "pod", "nginx"], None)?;
    assert!(
        table.contains("ErrImagePull") || table.contains("ImagePullBackOff"),
        "{table}"
    );
    Ok(())
}
