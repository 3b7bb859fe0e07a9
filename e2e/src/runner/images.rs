//! Image → program: what a container image stands for on this machine.
//!
//! kubesim has no container engine, so an image names a program that is
//! already here. The mapping (tag and digest ignored):
//!
//! | image repository | program |
//! |---|---|
//! | `ghcr.io/trellis-mesh/trellis-proxy` | `trellis-proxy` from the bin dir |
//! | `ghcr.io/trellis-mesh/trellis-operator` | `trellis-operator` from the bin dir |
//! | `ghcr.io/trellis-mesh/trellis-testapp` | `trellis-testapp` from the bin dir |
//! | `ghcr.io/trellis-mesh/trellis-proxy-unready` | `trellis-proxy` with `TRELLIS_HEALTH_ADDR=127.0.0.1:15099` in its image environment: a proxy release that never passes its probes (they look at port 15021), the broken version the end-to-end suite rolls out |
//! | `busybox`, `alpine`, `debian`, `ubuntu` (any registry prefix, e.g. `docker.io/library/busybox`) | the host's programs: `command[0]` looked up on the host `PATH` (default entrypoint `/bin/sh`) |
//! | `quay.io/prometheus/prometheus`, `prom/prometheus` | `prometheus`, as `e2e/observability/build.sh` builds it |
//! | `jaegertracing/jaeger` | `jaeger`, as `e2e/observability/build.sh` builds it |
//!
//! The third-party programs (the observability tools the suite proves
//! Trellis' telemetry with) are looked up in the bin dir, then in
//! `$TRELLIS_OBSERVABILITY/bin` (default `/var/tmp/trellis-observability/bin`,
//! where the build script puts them); never on the host `PATH`: Debian's
//! `prometheus`, for one, lacks the Kubernetes service discovery. The
//! upstream test bed runs the same programs: `upstream::images::mapped`
//! makes an image of what this mapping resolves an image to.
//!
//! The bin dir is `--bin-dir`/`KUBESIM_BIN_DIR`, else the directory of the
//! running executable and its parent (so a test binary in
//! `target/debug/deps` finds `target/debug/trellis-proxy`).
//!
//! An image's environment is the container's starting environment; the
//! container's own `env` overrides it, as with an image's `ENV`.
//!
//! An image outside the table is reported like a failed pull
//! (`ErrImagePull`, then `ImagePullBackOff`) with a message that names the
//! image and this mapping.

use std::path::{Path, PathBuf};

/// The repositories kubesim's own programs are published under.
pub const TRELLIS_PROGRAMS: [(&str, &str); 3] = [
    ("ghcr.io/trellis-mesh/trellis-proxy", "trellis-proxy"),
    ("ghcr.io/trellis-mesh/trellis-operator", "trellis-operator"),
    ("ghcr.io/trellis-mesh/trellis-testapp", "trellis-testapp"),
];

/// Variables an image sets in its environment.
pub type ImageEnv = &'static [(&'static str, &'static str)];

/// Images that run one of kubesim's programs with variables in their image
/// environment (Docker's `ENV`): releases that are broken on purpose.
pub const VARIANTS: [(&str, &str, ImageEnv); 1] = [(
    "ghcr.io/trellis-mesh/trellis-proxy-unready",
    "trellis-proxy",
    // why: the proxy serves /ready on a port the pod's probes do not look at, so the
    // pod never turns Ready while the proxy itself runs normally.
    &[("TRELLIS_HEALTH_ADDR", "127.0.0.1:15099")],
)];

/// Tags the end-to-end suite rolls proxies to besides the crate version (`tests/lifecycle.rs`:
/// two good releases and the broken one). kubesim ignores tags; an upstream node imports the
/// proxy's images, [`VARIANTS`] included, under each of them (`upstream::cluster`).
pub const SUITE_PROXY_TAGS: [&str; 3] = ["lifecycle-a", "lifecycle-b", "lifecycle"];

/// Third-party images of the observability tools, and their programs.
pub const TOOL_PROGRAMS: [(&str, &str); 3] = [
    ("quay.io/prometheus/prometheus", "prometheus"),
    ("docker.io/prom/prometheus", "prometheus"),
    ("docker.io/jaegertracing/jaeger", "jaeger"),
];

/// Where `e2e/observability/build.sh` puts the tools it builds.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TRELLIS_OBSERVABILITY")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp/trellis-observability"), PathBuf::from)
        .join("bin")
}

/// Generic images whose "filesystem" is the host's own programs.
pub const HOST_IMAGES: [&str; 4] = ["busybox", "alpine", "debian", "ubuntu"];

/// What an image resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// One of our binaries (the program's base name and its path), with
    /// the image's environment.
    Program {
        name: String,
        path: PathBuf,
        env: Vec<(String, String)>,
    },
    /// The host's programs, entrypoint `/bin/sh`.
    Host,
}

/// The repository of an image reference: tag and digest removed.
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A tag is after the last ':' that comes after the last '/'.
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Where kubesim looks for its programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinDirs(pub Vec<PathBuf>);

impl BinDirs {
    /// `dir` if given, else `KUBESIM_BIN_DIR`, else the running
    /// executable's directory and its parent.
    pub fn resolve(dir: Option<&Path>) -> Self {
        if let Some(d) = dir {
            return Self(vec![d.to_path_buf()]);
        }
        if let Some(d) = std::env::var_os("KUBESIM_BIN_DIR").filter(|d| !d.is_empty()) {
            return Self(std::env::split_paths(&d).collect());
        }
        let mut dirs = Vec::new();
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            if let Some(parent) = exe_dir.parent() {
                dirs.push(exe_dir.clone());
                dirs.push(parent.to_path_buf());
            } else {
                dirs.push(exe_dir);
            }
        }
        Self(dirs)
    }

    /// The first executable file `name` in the bin dirs.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.0.iter().map(|d| d.join(name)).find(|p| is_executable(p))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program name looked up on the host `PATH` (absolute paths as is).
pub fn host_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// The mapping in one line, for error messages.
pub fn mapping_summary() -> String {
    let ours: Vec<String> = TRELLIS_PROGRAMS
        .iter()
        .map(|(r, p)| format!("{r} → {p}"))
        .chain(VARIANTS.iter().map(|(r, p, _)| format!("{r} → {p} (never Ready)")))
        .collect();
    let tools: Vec<String> = TOOL_PROGRAMS.iter().map(|(r, p)| format!("{r} → {p}")).collect();
    format!(
        "{}; {}; {} → host programs (see e2e/README.md, \"Images\")",
        ours.join(", "),
        tools.join(", "),
        HOST_IMAGES.join("/")
    )
}

/// Resolves an image, or says why it cannot run here.
pub fn resolve(image: &str, bins: &BinDirs) -> Result<Image, String> {
    let repo = repository(image);
    let program = TRELLIS_PROGRAMS
        .iter()
        .map(|(r, p)| (*r, *p, &[][..]))
        .chain(VARIANTS)
        .find(|(r, _, _)| *r == repo);
    if let Some((_, program, env)) = program {
        return match bins.find(program) {
            Some(path) => Ok(Image::Program {
                name: program.to_string(),
                path,
                env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            }),
            None => Err(format!(
                "image \"{image}\" maps to the program {program}, which is not built in {} (build it, e.g. `cargo build -p <crate>`, or set --bin-dir/KUBESIM_BIN_DIR)",
                bins.0
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        };
    }
    let hub = if repo.contains('.') {
        repo.to_string()
    } else {
        format!("docker.io/{repo}")
    };
    if let Some((_, program)) = TOOL_PROGRAMS.iter().find(|(r, _)| *r == hub) {
        let found = bins.find(program).or_else(|| BinDirs(vec![tools_dir()]).find(program));
        return found
            .map(|path| Image::Program {
                name: (*program).to_string(),
                path,
                env: Vec::new(),
            })
            .ok_or_else(|| {
                format!(
                    "image \"{image}\" maps to the program {program}, found neither in the bin dirs nor in {} (build it with e2e/observability/build.sh)",
                    tools_dir().display()
                )
            });
    }
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let prefix = &repo[..repo.len() - last.len()];
    let generic_prefix = prefix.is_empty()
        || prefix == "library/"
        || prefix.ends_with("docker.io/library/")
        || prefix.ends_with("docker.io/");
    if generic_prefix && HOST_IMAGES.contains(&last) {
        return Ok(Image::Host);
    }
    Err(format!(
        "Failed to pull image \"{image}\": kubesim runs no container images, only the programs of its image mapping: {}",
        mapping_summary()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tags_and_digests() {
        assert_eq!(repository("busybox:1.36"), "busybox");
        assert_eq!(repository("localhost:5000/x/y:1"), "localhost:5000/x/y");
        assert_eq!(repository("localhost:5000/x/y"), "localhost:5000/x/y");
        assert_eq!(
            repository("ghcr.io/trellis-mesh/trellis-proxy:0.1@sha256:ab"),
            "ghcr.io/trellis-mesh/trellis-proxy"
        );
    }

    #[test]
    fn known_unknown_and_unbuilt_images() {
        let bins = BinDirs(vec![PathBuf::from("/nonexistent")]);
        assert_eq!(resolve("busybox", &bins), Ok(Image::Host));
        assert_eq!(resolve("docker.io/library/alpine:3", &bins), Ok(Image::Host));
        let err = resolve("nginx:1.27", &bins).unwrap_err();
        assert!(err.contains("nginx:1.27") && err.contains("trellis-proxy"), "{err}");
        let err = resolve("ghcr.io/trellis-mesh/trellis-proxy:dev", &bins).unwrap_err();
        assert!(err.contains("not built"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("trellis-testapp");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let jaeger = dir.path().join("jaeger");
        std::fs::write(&jaeger, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&jaeger, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bins = BinDirs(vec![dir.path().to_path_buf()]);
        for image in ["jaegertracing/jaeger:2.13.0", "docker.io/jaegertracing/jaeger:2.13.0"] {
            assert_eq!(
                resolve(image, &bins),
                Ok(Image::Program {
                    name: "jaeger".into(),
                    path: jaeger.clone(),
                    env: Vec::new(),
                }),
                "{image}"
            );
        }
        assert_eq!(
            resolve("ghcr.io/trellis-mesh/trellis-testapp:latest", &bins),
            Ok(Image::Program {
                name: "trellis-testapp".into(),
                path: exe.clone(),
                env: vec![],
            })
        );
        let proxy = dir.path().join("trellis-proxy");
        std::fs::copy(&exe, &proxy).unwrap();
        let Ok(Image::Program { name, env, .. }) = resolve("ghcr.io/trellis-mesh/trellis-proxy-unready:1", &bins)
        else {
            panic!("the unready proxy is a variant of trellis-proxy");
        };
        assert_eq!(name, "trellis-proxy");
        assert_eq!(
            env,
            [("TRELLIS_HEALTH_ADDR".to_string(), "127.0.0.1:15099".to_string())]
        );
    }
}
