//! Pod volumes as files under the pod's state dir, bind-mounted into its
//! containers: `emptyDir`, `configMap`, `secret`, `downwardAPI`,
//! `projected` (`serviceAccountToken`, `configMap`, `secret`,
//! `downwardAPI`) and `hostPath`.
//!
//! # Guarantees
//! - [`Volumes::sync`] is idempotent: it writes what changed (each file
//!   through a temporary file and `rename`, so readers never see half a
//!   file) and removes what went away. The runner calls it every couple of
//!   seconds, so ConfigMap and Secret edits reach running containers
//!   (except `subPath` mounts, as in Kubernetes).
//! - Projected tokens are requested from the TokenRequest code
//!   ([`crate::serviceaccounts::token_request`]), bound to the pod, and
//!   replaced once `refresh_fraction` of their lifetime has passed (the
//!   kubelet's 80%).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::env::{self, Source};
use crate::cluster::Cluster;

/// The content of a file-backed volume: relative path → (bytes, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    refresh_at: i64,
}

/// The volumes of one pod.
#[derive(Debug)]
pub struct Volumes {
    root: PathBuf,
    tokens: Mutex<BTreeMap<String, CachedToken>>,
    refresh_fraction: f64,
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32 & 0o777).unwrap_or(default)
}

impl Volumes {
    pub fn new(pod_dir: &Path, refresh_fraction: f64) -> Self {
        Self {
            root: pod_dir.join("volumes"),
            tokens: Mutex::new(BTreeMap::new()),
            refresh_fraction,
        }
    }

    /// Where the volume `name` lives on the host (hostPath: its path).
    pub fn source(&self, pod: &Value, name: &str) -> Option<PathBuf> {
        let vol = volumes(pod).find(|v| v["name"] == name)?;
        if let Some(hp) = vol.get("hostPath") {
            return hp["path"].as_str().map(PathBuf::from);
        }
        Some(self.root.join(name))
    }

    /// Creates or updates every volume of `pod`. Errors name the volume
    /// (the kubelet's `FailedMount`).
    pub fn sync(&self, cluster: &Cluster, pod: &Value, ip: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        for vol in volumes(pod) {
            let name = vol["name"].as_str().unwrap_or_default();
            if let Err(e) = self.sync_one(cluster, pod, vol, ip) {
                errors.push(format!("MountVolume.SetUp failed for volume \"{name}\": {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn sync_one(&self, cluster: &Cluster, pod: &Value, vol: &Value, ip: &str) -> Result<(), String> {
        let name = vol["name"].as_str().unwrap_or_default();
        let dir = self.root.join(name);
        if vol.get("emptyDir").is_some() {
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                set_mode(&dir, 0o777)?;
            }
            return Ok(());
        }
        if let Some(hp) = vol.get("hostPath") {
            let path = hp["path"].as_str().unwrap_or_default();
            let p = Path::new(path);
            match hp["type"].as_str().unwrap_or_default() {
                "DirectoryOrCreate" if !p.exists() => std::fs::create_dir_all(p).map_err(|e| e.to_string())?,
                "FileOrCreate" if !p.exists() => std::fs::write(p, b"").map_err(|e| e.to_string())?,
                _ if !p.exists() => return Err(format!("hostPath {path} does not exist")),
                _ => {}
            }
            return Ok(());
        }
        let files = self.desired(cluster, pod, vol, ip)?;
        write_tree(&dir, &files)
    }

    fn desired(&self, cluster: &Cluster, pod: &Value, vol: &Value, ip: &str) -> Result<Files, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = vol["name"].as_str().unwrap_or_default();
        let mut files = Files::new();
        if let Some(cm) = vol.get("configMap") {
            let d = mode_of(&cm["defaultMode"], 0o644);
            add_keyed(cluster, &mut files, Source::ConfigMap, ns, cm, "name", d)?;
        } else if let Some(s) = vol.get("secret") {
            let d = mode_of(&s["defaultMode"], 0o644);
            add_keyed(cluster, &mut files, Source::Secret, ns, s, "secretName", d)?;
        } else if let Some(da) = vol.get("downwardAPI") {
            let d = mode_of(&da["defaultMode"], 0o644);
            add_downward(&mut files, pod, &da["items"], ip, d)?;
        } else if let Some(p) = vol.get("projected") {
            let d = mode_of(&p["defaultMode"], 0o644);
            for src in p["sources"].as_array().into_iter().flatten() {
                if let Some(cm) = src.get("configMap") {
                    add_keyed(cluster, &mut files, Source::ConfigMap, ns, cm, "name", d)?;
                } else if let Some(s) = src.get("secret") {
                    add_keyed(cluster, &mut files, Source::Secret, ns, s, "name", d)?;
                } else if let Some(da) = src.get("downwardAPI") {
                    add_downward(&mut files, pod, &da["items"], ip, d)?;
                } else if let Some(t) = src.get("serviceAccountToken") {
                    let path = t["path"].as_str().unwrap_or("token").to_string();
                    let token = self.token(cluster, pod, &format!("{name}/{path}"), t)?;
                    files.insert(path, (token.into_bytes(), d));
                }
            }
        } else {
            let kind = vol
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                .unwrap_or_default();
            return Err(format!("volume type {kind:?} is not supported by kubesim"));
        }
        Ok(files)
    }

    fn token(&self, cluster: &Cluster, pod: &Value, key: &str, spec: &Value) -> Result<String, String> {
        let now = jiff::Timestamp::now().as_second();
        let mut cache = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(key).filter(|c| c.refresh_at > now) {
            return Ok(c.token.clone());
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let ttl = spec["expirationSeconds"].as_i64().unwrap_or(3600).max(600);
        let mut req_spec = json!({
            "expirationSeconds": ttl,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
        });
        if let Some(aud) = spec["audience"].as_str().filter(|a| !a.is_empty()) {
            req_spec["audiences"] = json!([aud]);
        }
        let reply = crate::serviceaccounts::token_request(cluster, ns, sa, &json!({"spec": req_spec}))
            .map_err(|e| format!("requesting a token for {ns}/{sa}: {}", e.message))?;
        let token = reply["status"]["token"].as_str().unwrap_or_default().to_string();
        let refresh_at = now + ((ttl as f64) * self.refresh_fraction).max(1.0) as i64;
        cache.insert(
            key.to_string(),
            CachedToken {
                token: token.clone(),
                refresh_at,
            },
        );
        Ok(token)
    }

    /// Removes every volume's files (hostPaths are left alone).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The pod's volumes.
pub fn volumes(pod: &Value) -> impl Iterator<Item = &Value> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn add_keyed(
    cluster: &Cluster,
    files: &mut Files,
    src: Source,
    ns: &str,
    v: &Value,
    name_field: &str,
    default_mode: u32,
) -> Result<(), String> {
    let obj = v[name_field].as_str().unwrap_or_default();
    let optional = v["optional"].as_bool() == Some(true);
    let Some(data) = env::object_data(cluster, src, ns, obj) else {
        if optional {
            return Ok(());
        }
        let kind = if src == Source::ConfigMap {
            "configmap"
        } else {
            "secret"
        };
        return Err(format!("{kind} \"{obj}\" not found"));
    };
    match v["items"].as_array().filter(|i| !i.is_empty()) {
        None => {
            for (k, val) in data {
                files.insert(k, (val, default_mode));
            }
        }
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let path = item["path"].as_str().unwrap_or(key);
                match data.get(key) {
                    Some(val) => {
                        files.insert(path.to_string(), (val.clone(), mode_of(&item["mode"], default_mode)));
                    }
                    None if optional => {}
                    None => return Err(format!("configmap/secret {obj} has no key {key}")),
                }
            }
        }
    }
    Ok(())
}

fn add_downward(files: &mut Files, pod: &Value, items: &Value, ip: &str, default_mode: u32) -> Result<(), String> {
    for item in items.as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default().to_string();
        let value = if let Some(f) = item.get("fieldRef") {
            env::field_ref(pod, f["fieldPath"].as_str().unwrap_or_default(), ip)?
        } else if let Some(r) = item.get("resourceFieldRef") {
            let cname = r["containerName"].as_str().unwrap_or_default();
            let c = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == cname)
                .cloned()
                .unwrap_or(Value::Null);
            env::resource_field_ref(&c, r["resource"].as_str().unwrap_or_default(), r["divisor"].as_str())?
        } else {
            String::new()
        };
        files.insert(path, (value.into_bytes(), mode_of(&item["mode"], default_mode)));
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", p.display()))
}

/// Makes `dir` hold exactly `files` (ignoring dot-files in progress).
fn write_tree(dir: &Path, files: &Files) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        set_mode(dir, 0o755)?;
    }
    for (rel, (bytes, mode)) in files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(format!("invalid path {rel:?}"));
        }
        let path = dir.join(rel);
        let current = std::fs::read(&path).ok();
        let current_mode = path.metadata().ok().map(|m| m.permissions().mode() & 0o777);
        if current.as_deref() == Some(bytes.as_slice()) && current_mode == Some(*mode) {
            continue;
        }
        let parent = path.parent().unwrap_or(dir);
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            set_mode(parent, 0o755)?;
        }
        let tmp = parent.join(format!(
            ".kubesim-{}.tmp",
            path.file_name().and_then(|f| f.to_str()).unwrap_or("f")
        ));
        std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        set_mode(&tmp, *mode)?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Files that are no longer wanted.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !files.contains_key(&rel) && !rel.rsplit('/').next().unwrap_or_default().starts_with(".kubesim-") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_written_updated_and_pruned() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        write_tree(&dir, &files).unwrap();
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"2");
        files.remove("a");
        files.insert("sub/b".into(), (b"3".to_vec(), 0o600));
        write_tree(&dir, &files).unwrap();
        assert!(!dir.join("a").exists());
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"3");
        assert!(write_tree(&dir, &[("../x".to_string(), (vec![], 0o644))].into()).is_err());
    }
}
