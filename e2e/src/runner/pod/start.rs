//! Starting a container: its image, environment, mounts and command line as Kubernetes reads them,
//! the process launched with its logs, its exit watched and its probes run; a start that fails is
//! a terminated instance (`StartError`) restarted per policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};

use super::{CState, Exit, Run, Worker, now_rfc3339};
use crate::runner::images::{self, Image};
use crate::runner::logs;
use crate::runner::probe::{self, ProbeFlags, ProbeTarget};
use crate::runner::process::{self, ExecTarget, Launch, Mount, User};

impl Worker {
    fn user_of(&self, c: &Value) -> User {
        let sc = |f: &str| {
            c["securityContext"][f]
                .as_u64()
                .or_else(|| self.pod["spec"]["securityContext"][f].as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        User {
            uid: sc("runAsUser"),
            gid: sc("runAsGroup"),
            groups: self.pod["spec"]["securityContext"]["fsGroup"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok()),
        }
    }

    pub(super) fn exec_target(&self, i: usize, pid: u32, env: Vec<(String, String)>) -> ExecTarget {
        let c = &self.ctrs[i].spec;
        ExecTarget {
            pid,
            user: self.user_of(c),
            env,
            working_dir: c["workingDir"].as_str().map(str::to_string),
        }
    }

    pub(super) fn probe_target(&self, i: usize, pid: u32) -> ProbeTarget {
        let env = self.ctrs[i].run.as_ref().map(|r| r.env.clone()).unwrap_or_default();
        ProbeTarget {
            ip: self.ip.clone(),
            netns: self.netns.clone(),
            exec: self.exec_target(i, pid, env),
            ports: self.ctrs[i].spec["ports"].clone(),
        }
    }

    /// The program and arguments of container `i` (Kubernetes semantics:
    /// `command` replaces the entrypoint, `args` replace the image's
    /// arguments, `$(VAR)` expanded).
    fn argv(&self, spec: &Value, image: &Image, env: &[(String, String)]) -> Result<(PathBuf, Vec<String>), String> {
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let list = |f: &str| -> Option<Vec<String>> {
            spec[f].as_array().map(|a| {
                a.iter()
                    .map(|s| crate::runner::env::expand(s.as_str().unwrap_or_default(), &vars))
                    .collect()
            })
        };
        let command = list("command").filter(|c| !c.is_empty());
        let args = list("args").unwrap_or_default();
        let not_found = |p: &str| format!("exec: \"{p}\": executable file not found in $PATH");
        match (image, command) {
            (Image::Program { path, .. }, None) => Ok((path.clone(), args)),
            (Image::Program { name, path, .. }, Some(cmd)) => {
                let first = &cmd[0];
                let base = first.rsplit('/').next().unwrap_or(first);
                let rest: Vec<String> = cmd[1..].iter().cloned().chain(args).collect();
                if base == name {
                    Ok((path.clone(), rest))
                } else {
                    let p = images::host_program(first).ok_or_else(|| not_found(first))?;
                    Ok((p, rest))
                }
            }
            (Image::Host, None) => {
                if args.is_empty() {
                    Ok((PathBuf::from("/bin/sh"), vec![]))
                } else {
                    Ok((PathBuf::from("/bin/sh"), args))
                }
            }
            (Image::Host, Some(cmd)) => {
                let first = &cmd[0];
                let p = images::host_program(first).ok_or_else(|| not_found(first))?;
                Ok((p, cmd[1..].iter().cloned().chain(args).collect()))
            }
        }
    }

    fn mounts(&self, spec: &Value) -> Result<Vec<Mount>, String> {
        let mut out = Vec::new();
        for m in spec["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            let mut source = self
                .volumes
                .source(&self.pod, name)
                .ok_or_else(|| format!("volume \"{name}\" not found in the pod's volumes"))?;
            if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|c| c == "..") {
                    return Err(format!("subPath {sub:?} must not contain '..'"));
                }
                source = source.join(sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                }
            }
            out.push(Mount {
                source,
                target: m["mountPath"].as_str().unwrap_or_default().to_string(),
                read_only: m["readOnly"].as_bool() == Some(true),
            });
        }
        Ok(out)
    }

    fn api_for_pods(&self) -> std::net::SocketAddr {
        match &self.ctx.network {
            Some(net) => net.api_server_for_pods(),
            None => self.ctx.api,
        }
    }

    /// Starts container `i` (or records why it cannot start).
    pub(super) fn start(&mut self, i: usize) {
        let now = Instant::now();
        let spec = self.ctrs[i].spec.clone();
        let image_ref = spec["image"].as_str().unwrap_or_default().to_string();
        let image = match images::resolve(&image_ref, &self.cfg.bin_dirs) {
            Ok(img) => img,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                let reason = if c.image_failures == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                c.image_failures += 1;
                if c.image_failures <= 2 {
                    let name = c.name.clone();
                    self.event("Failed", &format!("Failed to pull image for container {name}: {msg}"));
                }
                let c = &mut self.ctrs[i];
                c.cannot_start(reason, &msg);
                c.next_start = Some(now + c.backoff);
                c.backoff = (c.backoff * 2).min(self.cfg.backoff_max);
                return;
            }
        };
        let env =
            match crate::runner::env::container_env(self.cluster(), &self.pod, &spec, &self.ip, self.api_for_pods()) {
                Ok(mut e) => {
                    // The image's environment, under the container's own (as Docker's ENV).
                    if let Image::Program { env: image_env, .. } = &image {
                        for (k, v) in image_env {
                            if !e.iter().any(|(n, _)| n == k) {
                                e.push((k.clone(), v.clone()));
                            }
                        }
                    }
                    e
                }
                Err(msg) => {
                    let c = &mut self.ctrs[i];
                    c.cannot_start("CreateContainerConfigError", &msg);
                    c.next_start = Some(now + Duration::from_secs(1));
                    return;
                }
            };
        let mounts = match self.mounts(&spec) {
            Ok(m) => m,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.cannot_start("CreateContainerConfigError", &msg);
                c.next_start = Some(now + Duration::from_secs(1));
                return;
            }
        };
        let started_at = now_rfc3339();
        let (program, args) = match self.argv(&spec, &image, &env) {
            Ok(x) => x,
            Err(msg) => {
                self.start_failed(i, &msg, &started_at);
                return;
            }
        };
        let launch = Launch {
            program,
            args,
            env: env.clone(),
            netns: self.netns.clone(),
            pod_dir: self.shared.dir.clone(),
            mounts,
            resolv_conf: self.resolv.clone(),
            hosts: self.hosts.clone(),
            hostname: self.hostname(),
            working_dir: spec["workingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(str::to_string),
            user: self.user_of(&spec),
        };
        let cmd = process::command(&launch);
        let child = cmd.and_then(|mut c| {
            match &self.ctx.spawner {
                Some(s) => s.spawn(c),
                None => c.spawn(),
            }
            .map_err(|e| format!("starting the container: {e}"))
        });
        let mut child = match child {
            Ok(c) => c,
            Err(msg) => {
                self.start_failed(i, &msg, &started_at);
                return;
            }
        };
        let Some(pid) = child.id() else {
            self.start_failed(i, "the process exited at once", &started_at);
            return;
        };
        // Bookkeeping for `kubesim down` after a crash.
        let _ = std::fs::create_dir_all(&self.shared.pids_dir);
        let _ = std::fs::write(
            self.shared.pids_dir.join(pid.to_string()),
            process::start_time(pid).map(|t| t.to_string()).unwrap_or_default(),
        );
        {
            let c = &mut self.ctrs[i];
            if c.ever_started {
                c.restarts += 1;
                // After a start that failed (waiting), the last termination stays the last state.
                if matches!(c.state, CState::Terminated { .. }) {
                    c.last = Some(c.state.clone());
                }
            }
            c.ever_started = true;
        }
        let log_path = logs::path(&self.shared.dir, &self.ctrs[i].name, self.ctrs[i].restarts);
        let _ = std::fs::remove_file(&log_path);
        match logs::open(&log_path) {
            Ok(file) => {
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(logs::copy(out, "stdout", file.clone()));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(logs::copy(err, "stderr", file));
                }
            }
            Err(e) => warn!(path = %log_path.display(), error = %e, "cannot open the log file"),
        }
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt as _;
            let (code, signal) = match child.wait().await {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => (c, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    _ => (-1, None),
                },
                Err(_) => (-1, None),
            };
            let _ = tx.send(Exit {
                index: i,
                run_id,
                code,
                signal,
            });
        });
        let flags = Arc::new(ProbeFlags::default());
        let mut target = self.probe_target(i, pid);
        target.exec.env = env.clone();
        let probes = tokio::spawn(probe::run(spec.clone(), target, flags.clone()));
        let uid = &self.shared.uid;
        let c = &mut self.ctrs[i];
        c.container_id = format!("kubesim://{}-{}-{}", &uid[..uid.len().min(8)], c.name, c.restarts);
        c.state = CState::Running {
            started_at: started_at.clone(),
        };
        c.next_start = None;
        c.run = Some(Run {
            id: run_id,
            pid,
            since: now,
            started_at,
            flags,
            probes,
            term_sent: None,
            kill_reason: None,
            killed: false,
            env: env.clone(),
            failures_seen: 0,
            unhealthy_at: None,
            unhealthy_msg: String::new(),
        });
        let name = c.name.clone();
        info!(pod = %self.shared.name, container = %name, pid, "container started");
        self.event("Started", &format!("Started container {name}"));
    }

    /// The process could not be started: a terminated instance with
    /// `StartError`, restarted per policy like a crash.
    fn start_failed(&mut self, i: usize, msg: &str, started_at: &str) {
        warn!(pod = %self.shared.name, container = %self.ctrs[i].name, error = %msg, "container start failed");
        let c = &mut self.ctrs[i];
        if c.ever_started {
            c.restarts += 1;
            if matches!(c.state, CState::Terminated { .. }) {
                c.last = Some(c.state.clone());
            }
        }
        c.ever_started = true;
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        // Reuse the exit path for the restart policy.
        let (probes, flags) = (tokio::spawn(async {}), Arc::new(ProbeFlags::default()));
        self.ctrs[i].run = Some(Run {
            id: run_id,
            pid: 0,
            since: Instant::now(),
            started_at: started_at.to_string(),
            flags,
            probes,
            term_sent: None,
            kill_reason: Some(msg.to_string()),
            killed: false,
            env: Vec::new(),
            failures_seen: 0,
            unhealthy_at: None,
            unhealthy_msg: String::new(),
        });
        self.on_exit(Exit {
            index: i,
            run_id,
            code: 128,
            signal: None,
        });
        if let CState::Terminated { reason, .. } = &mut self.ctrs[i].state {
            *reason = "StartError".into();
        }
    }
}
