//! The process runtime (kubesim's kubelet) with real processes: env and
//! volumes as the program sees them, init containers and native sidecars,
//! probes, restarts, termination, logs, exec, Deployments and Jobs.
//!
//! Every test needs root (mount and network namespaces); without it, each
//! records a skip and returns (under CI a skip is a failure: see
//! `trellis_skip`).

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
kind: Service
metadata: {name: backend-db}
spec:
  selector: {app: db}
  ports: [{name: sql, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: show, labels: {app: show}}
spec:
  restartPolicy: Never
  hostAliases: [{ip: 192.0.2.7, hostnames: [ext.example]}]
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
      echo "alias=$(grep -c 'ext.example' /etc/hosts)"
      echo scratch > /kubesim-data/file && echo "data=$(cat /kubesim-data/file)"
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
    - {name: scratch, mountPath: /kubesim-data}
  volumes:
  - {name: scratch, emptyDir: {}}
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
        "data=scratch".into(),
        "alias=1".into(),
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
        "BACKEND_DB_SERVICE_PORT=5432".into(),
        "BACKEND_DB_SERVICE_PORT_SQL=5432".into(),
        "BACKEND_DB_SERVICE_HOST=10.96.".into(),
    ] {
        assert!(log.contains(&want), "{want:?} missing in the log:\n{log}");
    }
    let tail = c.kubectl_ok(&["logs", "show", "--tail=1"], None)?;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(log.ends_with(&tail), "{tail}");
    let st = container_status(&pod, "containerStatuses", "main");
    assert_eq!(st["state"]["terminated"]["exitCode"], 0, "{st}");
    assert_eq!(st["state"]["terminated"]["reason"], "Completed");
    // Nothing leaked onto the host.
    assert!(!std::path::Path::new("/etc/kubesim-test").exists());
    assert!(!std::path::Path::new("/kubesim-data").exists());
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

/// A hostPath directory the test reads after pods are gone.
fn host_dir(c: &TestCluster, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = c.state_dir().join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn init_containers_run_in_order_and_sidecars_outlive_main_containers() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let dir = host_dir(&c, "order")?;
    let order = dir.join("order");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ordered}}
spec:
  terminationGracePeriodSeconds: 10
  volumes:
  - {{name: work, hostPath: {{path: {dir}, type: Directory}}}}
  initContainers:
  - name: first
    image: busybox
    command: [sh, -c, "echo first >> /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: sidecar
    image: busybox
    restartPolicy: Always
    command: [sh, -c, "trap 'echo sidecar-stop >> /work/order; exit 0' TERM; sleep 1; echo sidecar-start >> /work/order; touch /tmp/started; while true; do sleep 0.1; done"]
    startupProbe:
      exec: {{command: [test, -f, /tmp/started]}}
      periodSeconds: 1
      failureThreshold: 30
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: second
    image: busybox
    command: [sh, -c, "echo second >> /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "trap 'sleep 1; echo main-stop >> /work/order; exit 0' TERM; echo main-start >> /work/order; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: work, mountPath: /work}}]
"#,
        dir = dir.display()
    ))?;
    let pod = c.wait_pod_ready("default", "ordered")?;
    assert_eq!(lines(&order), ["first", "sidecar-start", "second", "main-start"]);
    let sidecar = container_status(&pod, "initContainerStatuses", "sidecar");
    assert!(sidecar["state"]["running"].is_object(), "{sidecar}");
    assert_eq!(sidecar["started"], true);
    let first = container_status(&pod, "initContainerStatuses", "first");
    assert_eq!(first["state"]["terminated"]["reason"], "Completed", "{first}");
    assert_eq!(pod["status"]["phase"], "Running");
    let table = c.kubectl_ok(&["get", "pod", "ordered", "--no-headers"], None)?;
    assert!(table.contains(" 2/2 ") && table.contains("Running"), "{table}");
    let t = std::time::Instant::now();
    c.kubectl_ok(&["delete", "pod", "ordered", "--timeout=30s"], None)?;
    assert!(t.elapsed() < Duration::from_secs(8), "deletion took {:?}", t.elapsed());
    assert_eq!(
        lines(&order),
        [
            "first",
            "sidecar-start",
            "second",
            "main-start",
            "main-stop",
            "sidecar-stop"
        ]
    );
    Ok(())
}

#[test]
fn failing_init_containers_are_retried_and_block_the_pod() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: blocked}
spec:
  initContainers:
  - {name: check, image: busybox, command: [sh, -c, "echo checking; exit 1"]}
  containers:
  - {name: main, image: busybox, command: [sleep, "3600"]}
"#,
    )?;
    let pod = c.wait_pod("default", "blocked", Duration::from_secs(20), "init restarted", |p| {
        container_status(p, "initContainerStatuses", "check")["restartCount"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })?;
    assert_eq!(pod["status"]["phase"], "Pending");
    let main = container_status(&pod, "containerStatuses", "main");
    assert_eq!(main["state"]["waiting"]["reason"], "PodInitializing", "{main}");
    let init = pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Initialized").cloned())
        .unwrap_or_default();
    assert_eq!(init["status"], "False", "{init}");
    assert_eq!(c.logs("default", "blocked", "check")?, "checking\n");
    let table = c.kubectl_ok(&["get", "pod", "blocked"], None)?;
    assert!(
        table.contains("Init:Error") || table.contains("Init:CrashLoopBackOff"),
        "{table}"
    );
    // With restartPolicy Never a failed init container fails the pod.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  restartPolicy: Never
  initContainers:
  - {name: check, image: busybox, command: [sh, -c, "exit 2"]}
  containers:
  - {name: main, image: busybox, command: [sleep, "3600"]}
"#,
    )?;
    let pod = c.wait_pod_phase("default", "doomed", "Failed")?;
    let st = container_status(&pod, "initContainerStatuses", "check");
    assert_eq!(st["state"]["terminated"]["exitCode"], 2, "{st}");
    Ok(())
}

#[test]
fn crashing_containers_restart_with_backoff_and_keep_the_previous_log() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: app, image: busybox, command: [sh, -c, "echo started at $(date +%s%N); exit 3"]}
"#,
    )?;
    let mut saw_backoff = false;
    let pod = c.wait_pod("default", "crasher", Duration::from_secs(30), "two restarts", |p| {
        let st = container_status(p, "containerStatuses", "app");
        saw_backoff |= st["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        st["restartCount"].as_u64().is_some_and(|n| n >= 2)
    });
    let pod = pod?;
    let st = container_status(&pod, "containerStatuses", "app");
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 3, "{st}");
    assert_eq!(st["lastState"]["terminated"]["reason"], "Error");
    let _ = c.wait_pod("default", "crasher", Duration::from_secs(15), "CrashLoopBackOff", |p| {
        saw_backoff |=
            container_status(p, "containerStatuses", "app")["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        saw_backoff
    })?;
    let table = c.kubectl_ok(&["get", "pod", "crasher"], None)?;
    assert!(table.contains("crasher"), "{table}");
    let events = c.kubectl_ok(
        &["get", "events", "--field-selector", "involvedObject.name=crasher"],
        None,
    )?;
    assert!(events.contains("BackOff"), "{events}");
    let previous = c.kubectl_ok(&["logs", "crasher", "--previous"], None)?;
    assert!(previous.starts_with("started at "), "{previous}");
    let current = c.kubectl_ok(&["logs", "crasher", "--timestamps"], None)?;
    assert!(current.contains("Z started at "), "{current}");
    Ok(())
}

#[test]
fn probes_drive_readiness_and_endpoints() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: server
    image: busybox
    command: [python3, -m, http.server, "8080", --directory, /tmp]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /ready, port: http, httpHeaders: [{name: X-Probe, value: kubesim}]}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
"#,
    )?;
    let endpoints = |ready: bool| -> anyhow::Result<Vec<String>> {
        let ep: Value = serde_json::from_str(&c.kubectl_ok(&["get", "endpoints", "web", "-o", "json"], None)?)?;
        let key = if ready { "addresses" } else { "notReadyAddresses" };
        Ok(ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s[key].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_string))
            .collect())
    };
    let pod = c.wait_pod("default", "web", Duration::from_secs(20), "running, not ready", |p| {
        container_status(p, "containerStatuses", "server")["started"] == true
    })?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_string();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!trellis_e2e::harness::pod_ready(&c.pod("default", "web")?));
    c.wait_for("not-ready endpoint", Duration::from_secs(10), || {
        Ok(endpoints(false)?.contains(&ip).then_some(()))
    })?;
    let events = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=web"], None)?;
    assert!(
        events.contains("Unhealthy")
            && events.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    // The probe's file appears: Ready, and the address moves to `addresses`.
    c.exec("default", "web", "server", &["touch", "/tmp/ready"])?;
    c.wait_pod_ready("default", "web")?;
    c.wait_for("ready endpoint", Duration::from_secs(10), || {
        Ok(endpoints(true)?.contains(&ip).then_some(()))
    })?;
    c.exec("default", "web", "server", &["rm", "/tmp/ready"])?;
    c.wait_pod("default", "web", Duration::from_secs(10), "not ready again", |p| {
        !trellis_e2e::harness::pod_ready(p)
    })?;
    let st = container_status(&c.pod("default", "web")?, "containerStatuses", "server").clone();
    assert_eq!(st["restartCount"], 0, "the liveness probe passes: {st}");
    Ok(())
}

#[test]
fn liveness_failures_restart_the_container() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: wedged}
spec:
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "while true; do sleep 0.1; done"]
    livenessProbe:
      exec: {command: [test, -f, /tmp/healthy]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )?;
    let pod = c.wait_pod(
        "default",
        "wedged",
        Duration::from_secs(20),
        "restarted by liveness",
        |p| {
            container_status(p, "containerStatuses", "app")["restartCount"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    )?;
    let st = container_status(&pod, "containerStatuses", "app");
    let msg = st["lastState"]["terminated"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("Liveness probe failed"), "{st}");
    Ok(())
}

#[test]
fn graceful_termination_sends_term_then_kill_after_the_grace_period() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    let dir = host_dir(&c, "term")?;
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: out, hostPath: {{path: {dir}}}}}]
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "trap 'echo term >> /out/polite; exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, "echo poststart >> /out/polite"]}}
      preStop:
        exec: {{command: [sh, -c, "echo prestop >> /out/polite"]}}
    volumeMounts: [{{name: out, mountPath: /out}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]
"#,
        dir = dir.display()
    ))?;
    c.wait_pod_ready("default", "polite")?;
    c.wait_pod_ready("default", "stubborn")?;
    let t = std::time::Instant::now();
    c.kubectl_ok(&["delete", "pod", "polite"], None)?;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "TERM was handled: {:?}",
        t.elapsed()
    );
    assert_eq!(lines(&dir.join("polite")), ["poststart", "prestop", "term"]);
    let t = std::time::Instant::now();
    c.kubectl_ok(&["delete", "pod", "stubborn"], None)?;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "KILL after the 2 s grace period: {took:?}"
    );
    Ok(())
}

#[test]
fn logs_follow_and_exec_run_inside_the_container() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: app
    image: busybox
    command: [sh, -c, "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done; sleep 3600"]
    env: [{name: GREETING, value: hi}]
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
"#,
    )?;
    c.wait_pod_ready("default", "talker")?;
    // `-f` streams until the container stops; here: read the five lines.
    let mut child = c
        .kubectl_command()
        .args(["logs", "-f", "talker"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut got = String::new();
        let mut buf = [0u8; 256];
        while !got.contains("line 5") {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        got
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let got = reader.join().expect("reader");
    assert!(got.contains("line 1\n") && got.contains("line 5"), "{got:?}");

    let out = c.exec(
        "default",
        "talker",
        "app",
        &["sh", "-c", "echo $GREETING; id -u; id -g; hostname"],
    )?;
    assert_eq!(out, "hi\n1337\n1337\ntalker\n");
    let failed = c.kubectl(&["exec", "talker", "--", "sh", "-c", "echo oops >&2; exit 3"], None)?;
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("oops"));
    // stdin reaches the command.
    let piped = c.kubectl_ok(&["exec", "-i", "talker", "--", "cat"], Some("through stdin\n"))?;
    assert_eq!(piped, "through stdin\n");
    Ok(())
}

#[test]
fn jobs_and_deployments_run_real_processes() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: work, image: busybox, command: [sh, -c, "echo working; sleep 0.5; echo done"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: busybox
        command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
        readinessProbe:
          exec: {command: ["true"]}
          periodSeconds: 1
"#,
    )?;
    c.kubectl_ok(&["wait", "--for=condition=complete", "job/once", "--timeout=30s"], None)?;
    let job_logs = c.kubectl_ok(&["logs", "job/once"], None)?;
    assert_eq!(job_logs, "working\ndone\n");
    let first = c.wait_deployment_ready("default", "app")?;
    c.kubectl_ok(&["rollout", "restart", "deployment/app"], None)?;
    let second = c.wait_deployment_ready("default", "app")?;
    let names = |ps: &[Value]| -> Vec<String> {
        ps.iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let (a, b) = (names(&first), names(&second));
    assert!(
        a.iter().all(|n| !b.contains(n)),
        "new pods after the restart: {a:?} → {b:?}"
    );
    Ok(())
}

#[test]
fn no_process_or_namespace_is_left_after_the_cluster_stops() -> anyhow::Result<()> {
    let Some(c) = cluster()? else { return Ok(()) };
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - {name: app, image: busybox, command: [sh, -c, "echo pid=$$$$; exec sleep 3600"]}
"#,
    )?;
    c.wait_pod_ready("default", "sleeper")?;
    let log = c.wait_for("the pid in the log", Duration::from_secs(10), || {
        let l = c.logs("default", "sleeper", "app")?;
        Ok(l.contains("pid=").then_some(l))
    })?;
    let pid: u32 = log.trim().trim_start_matches("pid=").parse()?;
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(pid));
    let state = c.state_dir().to_path_buf();
    drop(c);
    assert!(!alive(pid), "pid {pid} survived the cluster");
    assert!(!state.join("runner").join("pods").exists());
    Ok(())
}

#[test]
fn a_testapp_deployment_is_reachable_from_another_pod_by_service_name() -> anyhow::Result<()> {
    if std::env::var("KUBESIM_TEST_NO_NETWORK").is_ok() {
        trellis_skip::skip("KUBESIM_TEST_NO_NETWORK is set and this test needs the pod network");
        return Ok(());
    }
    let Some(c) = cluster()? else { return Ok(()) };
    anyhow::ensure!(
        trellis_e2e::runner::images::BinDirs::resolve(None)
            .find("trellis-testapp")
            .is_some(),
        "trellis-testapp is not built: run `cargo build --bins` (or `cargo nextest run --workspace`)"
    );
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: app
        image: ghcr.io/trellis-mesh/trellis-testapp:latest
        env:
        - {name: TESTAPP_SERVICE, value: echo}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: shell, image: busybox, command: [sleep, "3600"]}
"#,
    )?;
    let pods = c.wait_deployment_ready("default", "echo")?;
    c.wait_pod_ready("default", "client")?;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let out = c.exec(
            "default",
            "client",
            "shell",
            &["curl", "-sS", "--max-time", "5", "http://echo/hello"],
        )?;
        let answer: Value = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}"))?;
        assert_eq!(answer["service"], "echo", "{answer}");
        if let Some(p) = answer["pod"].as_str() {
            seen.insert(p.to_string());
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert!(
        seen.iter().all(|s| names.contains(s)) && !seen.is_empty(),
        "answers from {seen:?}, pods {names:?}"
    );
    // The full name resolves too.
    let out = c.exec(
        "default",
        "client",
        "shell",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://echo.default.svc.cluster.local/",
        ],
    )?;
    let answer: Value = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}"))?;
    assert_eq!(answer["service"], "echo", "{answer}");
    Ok(())
}

#[test]
fn configmap_updates_and_token_rotation_reach_running_containers() -> anyhow::Result<()> {
    let network = std::env::var("KUBESIM_TEST_NO_NETWORK").is_err();
    // Tokens are replaced after 0.1 % of their lifetime (3607 s → ~4 s)
    // instead of the kubelet's 80 %, so the test sees a rotation.
    let runner = RunnerConfig {
        token_refresh_fraction: 0.001,
        volume_sync: Duration::from_millis(500),
        ..Default::default()
    };
    let Some(c) = TestCluster::start_with_processes(network, runner)? else {
        return Ok(());
    };
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: live}
data: {value: one}
---
apiVersion: v1
kind: Pod
metadata: {name: watcher}
spec:
  containers:
  - name: app
    image: busybox
    command: [sleep, "3600"]
    volumeMounts:
    - {name: live, mountPath: /etc/live}
    - {name: aud, mountPath: /var/run/secrets/tokens}
  volumes:
  - {name: live, configMap: {name: live, defaultMode: 0600}}
  - name: aud
    projected:
      sources:
      - serviceAccountToken: {audience: trellis, expirationSeconds: 600, path: trellis-token}
"#,
    )?;
    c.wait_pod_ready("default", "watcher")?;
    let read = |path: &str| c.exec("default", "watcher", "app", &["cat", path]);
    assert_eq!(read("/etc/live/value")?, "one");
    let mode = c.exec(
        "default",
        "watcher",
        "app",
        &["stat", "-L", "-c", "%a", "/etc/live/value"],
    )?;
    assert_eq!(mode.trim(), "600");
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: live}\ndata: {value: two, extra: \"yes\"}\n")?;
    c.wait_for("the new ConfigMap value in the pod", Duration::from_secs(10), || {
        Ok((read("/etc/live/value")? == "two" && read("/etc/live/extra")? == "yes").then_some(()))
    })?;
    // The projected token has the audience and is replaced before expiry.
    let token = read("/var/run/secrets/tokens/trellis-token")?;
    let claims = token.split('.').nth(1).unwrap_or_default().to_string();
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}","audiences":["trellis"]}}}}"#
    );
    let reviewed = c.kubectl_ok(&["create", "-f", "-", "-o", "json"], Some(&review))?;
    let reviewed: Value = serde_json::from_str(&reviewed)?;
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(
        reviewed["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "watcher"
    );
    c.wait_for("a rotated token", Duration::from_secs(15), || {
        let t = read("/var/run/secrets/tokens/trellis-token")?;
        Ok((t.split('.').nth(1).unwrap_or_default() != claims).then_some(()))
    })?;
    Ok(())
}
