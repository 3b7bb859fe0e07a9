//! Container images built on this machine from programs already here (no
//! registry is reachable): each image is one layer holding the programs,
//! the shared libraries `ldd` names for them and a few files every image
//! has; written as a Docker image archive and imported into the node's
//! containerd (`ctr images import`), where the kubelet finds it with
//! `imagePullPolicy: IfNotPresent`.
//!
//! | image | holds | entrypoint |
//! |---|---|---|
//! | `ghcr.io/trellis-mesh/{trellis-proxy,trellis-operator,trellis-testapp}:<version>` | the built program (from kubesim's bin dirs); the proxy's also the host's `iptables` (its `xtables` multi-call binary, extensions and libraries) for the capture init container; the proxy's also tagged with the suite's release tags (`runner::images::SUITE_PROXY_TAGS`) | the program |
//! | `ghcr.io/trellis-mesh/trellis-proxy-unready:<version and the suite's tags>` (`runner::images::VARIANTS`) | the proxy's image with the variant's variables in its `Env`: a release whose pods never turn Ready | the program |
//! | [`PAUSE_IMAGE`] | the pause program (`e2e/upstream/pause`) | `/pause` |
//! | [`COREDNS_IMAGE`] | CoreDNS (`e2e/upstream/coredns`) | `/coredns` |
//! | [`TOOLS_IMAGES`] (`busybox`, `debian` tags) | the host's `sh` and core utilities | `/bin/sh` |
//! | on demand ([`mapped`], `Cluster::import_mapped`): any image of kubesim's image mapping, e.g. `quay.io/prometheus/prometheus:v3.16.0` | the program kubesim runs for it (`runner::images::resolve`: Prometheus and Jaeger as `e2e/observability/build.sh` builds them) | the program |
//!
//! Every image has `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, the
//! host's CA bundle and `ld.so.cache`, and `/tmp`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

use crate::runner::images::{BinDirs, Image, resolve};

/// The sandbox (pause) image containerd runs for every pod.
pub const PAUSE_IMAGE: &str = "localhost/trellis-upstream/pause:1";
/// The cluster DNS image.
pub const COREDNS_IMAGE: &str = "localhost/trellis-upstream/coredns:v1.12.0";
/// Names the shell-tools image is imported under (what tests write as
/// `image: busybox` or `debian`). A name without a tag means `:latest`,
/// which the kubelet always pulls: pods using it need
/// `imagePullPolicy: IfNotPresent`.
pub const TOOLS_IMAGES: [&str; 4] = [
    "docker.io/library/busybox:1.36",
    "docker.io/library/busybox:latest",
    "docker.io/library/debian:bookworm",
    "docker.io/library/debian:latest",
];
/// The host programs in the tools image (those present are taken).
pub const TOOLS: [&str; 30] = [
    "sh", "cat", "cp", "date", "echo", "env", "false", "grep", "head", "hostname", "id", "kill", "ln", "ls", "mkdir",
    "mv", "nc", "printf", "ps", "rm", "sed", "seq", "sleep", "sort", "tail", "tee", "test", "touch", "true", "wc",
];

/// One image to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The names it is imported under.
    pub names: Vec<String>,
    /// Files to copy: (host path, path in the image).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Symbolic links: (path in the image, target).
    pub links: Vec<(PathBuf, PathBuf)>,
    pub entrypoint: Vec<String>,
    /// Variables the image sets (Docker's `ENV`), after `PATH`.
    pub env: Vec<(String, String)>,
}

impl ImageSpec {
    /// An image whose entrypoint is `program`, placed at `at`.
    pub fn program(names: Vec<String>, program: &Path, at: &str) -> Self {
        Self {
            names,
            files: vec![(program.to_path_buf(), PathBuf::from(at))],
            links: Vec::new(),
            entrypoint: vec![at.to_string()],
            env: Vec::new(),
        }
    }
}

/// The image of kubesim's image mapping `image` stands for, under that
/// name: the program kubesim runs for it at `/usr/local/bin/<program>`
/// with the mapping's environment (the host-programs images: the
/// shell-tools image). The error is kubesim's: it names the image, the
/// program and how to build it.
pub fn mapped(image: &str, bins: &BinDirs) -> anyhow::Result<ImageSpec> {
    match resolve(image, bins).map_err(|e| anyhow!("image {image} for the upstream node: {e}"))? {
        Image::Program { name, path, env } => {
            let mut spec = ImageSpec::program(vec![image.to_string()], &path, &format!("/usr/local/bin/{name}"));
            spec.env = env;
            Ok(spec)
        }
        Image::Host => Ok(ImageSpec {
            names: vec![image.to_string()],
            ..tools_image()
        }),
    }
}

/// Builds every image (in parallel, under `work_dir`) and imports it into
/// the containerd at `socket` with `ctr`; the archives are removed.
pub fn build_and_import(specs: Vec<ImageSpec>, work_dir: &Path, ctr: &Path, socket: &Path) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .into_iter()
            .enumerate()
            .map(|(i, mut spec)| {
                s.spawn(move || -> anyhow::Result<()> {
                    complete(&mut spec)?;
                    let archive = build(&spec, work_dir, &format!("image-{i}"))
                        .with_context(|| format!("building image {}", spec.names.join(", ")))?;
                    import(ctr, socket, &archive)?;
                    std::fs::remove_file(&archive).with_context(|| format!("removing {}", archive.display()))
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("an image build panicked"))??;
        }
        Ok(())
    })
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`;
/// empty for a static one.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (from libc-bin; apt-get install libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// The library paths in `ldd` output.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Adds the libraries every file of `spec` needs (transitively, as `ldd`
/// lists them) and the files every image has.
pub fn complete(spec: &mut ImageSpec) -> anyhow::Result<()> {
    let mut have: BTreeSet<PathBuf> = spec.files.iter().map(|(_, to)| to.clone()).collect();
    let mut libs = Vec::new();
    for (from, _) in &spec.files {
        for lib in shared_libraries(from)? {
            if have.insert(lib.clone()) {
                libs.push((lib.clone(), lib));
            }
        }
    }
    spec.files.extend(libs);
    for common in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ld.so.cache",
        "/etc/protocols",
        "/etc/services",
    ] {
        let path = PathBuf::from(common);
        if path.exists() && have.insert(path.clone()) {
            spec.files.push((path.clone(), path));
        }
    }
    Ok(())
}

/// The proxy image: the program plus the host's iptables, which
/// `trellis-proxy init` runs in the pod's network namespace.
pub fn proxy_image(names: Vec<String>, program: &Path) -> anyhow::Result<ImageSpec> {
    let mut spec = ImageSpec::program(names, program, "/usr/local/bin/trellis-proxy");
    let iptables = which("iptables").context("iptables is not installed (apt-get install iptables)")?;
    let multi = iptables
        .canonicalize()
        .with_context(|| format!("resolving {}", iptables.display()))?;
    let multi_name = multi.file_name().context("iptables has no file name")?.to_owned();
    let in_image = Path::new("/usr/sbin").join(&multi_name);
    spec.files.push((multi.clone(), in_image.clone()));
    for name in [
        "iptables",
        "iptables-restore",
        "iptables-save",
        "ip6tables",
        "ip6tables-restore",
        "ip6tables-save",
    ] {
        spec.links.push((Path::new("/usr/sbin").join(name), in_image.clone()));
    }
    // The extensions (`-m owner`, `-j REDIRECT`, …) are loaded at run time,
    // so ldd does not see them.
    let ext_dir = xtables_dir().context("the iptables extensions (xtables) directory was not found")?;
    for e in std::fs::read_dir(&ext_dir).with_context(|| format!("reading {}", ext_dir.display()))? {
        let path = e?.path();
        spec.files.push((path.clone(), path));
    }
    Ok(spec)
}

fn xtables_dir() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/xtables",
        "/usr/lib/xtables",
        "/usr/lib64/xtables",
        "/lib/xtables",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir())
}

/// A program on `PATH` (and the sbin directories).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The shell-tools image from the host's programs.
pub fn tools_image() -> ImageSpec {
    let mut spec = ImageSpec {
        names: TOOLS_IMAGES.iter().map(|s| s.to_string()).collect(),
        files: Vec::new(),
        links: Vec::new(),
        entrypoint: vec!["/bin/sh".into()],
        env: Vec::new(),
    };
    for tool in TOOLS {
        if let Some(path) = which(tool) {
            let resolved = path.canonicalize().unwrap_or(path);
            spec.files.push((resolved, Path::new("/bin").join(tool)));
        }
    }
    spec
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nhosts: files dns\n";

/// Writes `spec` as a Docker image archive under `work_dir`; returns its path.
pub fn build(spec: &ImageSpec, work_dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let dir = work_dir.join(stem);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let root = dir.join("rootfs");
    for d in ["etc", "tmp", "root", "bin", "usr/local/bin", "usr/sbin"] {
        std::fs::create_dir_all(root.join(d)).with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    }
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    std::fs::write(root.join("etc/nsswitch.conf"), NSSWITCH)?;
    for (from, to) in &spec.files {
        let target = root.join(to.strip_prefix("/").unwrap_or(to));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(from, &target).with_context(|| format!("copying {} into image {stem}", from.display()))?;
    }
    for (at, target) in &spec.links {
        let link = root.join(at.strip_prefix("/").unwrap_or(at));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let layer = dir.join("layer.tar");
    tar(&[
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "-C",
        &root.display().to_string(),
        "-cf",
        &layer.display().to_string(),
        ".",
    ])?;
    let diff_id = sha256_file(&layer)?;
    let env: Vec<String> =
        std::iter::once("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string())
            .chain(spec.env.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Env": env,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": spec.names, "Layers": ["layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let archive = work_dir.join(format!("{stem}.tar"));
    tar(&[
        "-C",
        &dir.display().to_string(),
        "-cf",
        &archive.display().to_string(),
        "manifest.json",
        "config.json",
        "layer.tar",
    ])?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(archive)
}

fn tar(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("tar")
        .args(args)
        .output()
        .context("running tar (apt-get install tar)")?;
    if !out.status.success() {
        bail!(
            "tar {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Imports an image archive into containerd's `k8s.io` namespace (the one
/// the kubelet uses), unpacked for the overlayfs snapshotter.
pub fn import(ctr: &Path, socket: &Path, archive: &Path) -> anyhow::Result<()> {
    let out = Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args([
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
        ])
        .arg(archive)
        .output()
        .with_context(|| format!("running {}", ctr.display()))?;
    if !out.status.success() {
        bail!(
            "importing {} into containerd failed: {}{}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_and_loader_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn a_mapped_image_is_its_program_under_the_name_asked_for() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let prometheus = dir.path().join("prometheus");
        std::fs::write(&prometheus, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prometheus, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bins = BinDirs(vec![dir.path().to_path_buf()]);
        let spec = mapped("quay.io/prometheus/prometheus:v3.16.0", &bins).unwrap();
        assert_eq!(spec.names, ["quay.io/prometheus/prometheus:v3.16.0"]);
        assert_eq!(spec.entrypoint, ["/usr/local/bin/prometheus"]);
        assert_eq!(spec.files, [(prometheus, PathBuf::from("/usr/local/bin/prometheus"))]);
        let tools = mapped("docker.io/library/busybox:1.37", &bins).unwrap();
        assert_eq!(tools.names, ["docker.io/library/busybox:1.37"]);
        assert_eq!(tools.entrypoint, ["/bin/sh"]);
        let err = mapped("nginx:1.27", &bins).unwrap_err().to_string();
        assert!(err.contains("nginx:1.27") && err.contains("upstream node"), "{err}");
    }

    #[test]
    fn an_archive_names_its_tags_and_layer_digest() {
        let work = tempfile::tempdir().unwrap();
        let program = work.path().join("hello");
        std::fs::write(&program, "#!/bin/sh\necho hi\n").unwrap();
        let mut spec = ImageSpec::program(vec!["example.org/hello:1".into()], &program, "/hello");
        spec.env = vec![("TRELLIS_HEALTH_ADDR".into(), "127.0.0.1:15099".into())];
        let archive = build(&spec, work.path(), "image").unwrap();
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("manifest.json")
            .output()
            .unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "example.org/hello:1");
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("config.json")
            .output()
            .unwrap();
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/hello");
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TRELLIS_HEALTH_ADDR=127.0.0.1:15099"
            ]),
            "the image's variables after PATH"
        );
        let layer = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("layer.tar")
            .output()
            .unwrap();
        let digest: String = ring::digest::digest(&ring::digest::SHA256, &layer.stdout)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{digest}"));
        let files = {
            let layer_path = work.path().join("layer.tar");
            std::fs::write(&layer_path, &layer.stdout).unwrap();
            let out = Command::new("tar").arg("-tvf").arg(&layer_path).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(files.contains("./hello"), "{files}");
        assert!(files.contains("./etc/passwd"), "{files}");
        assert!(
            files.contains("drwxrwxrwt"),
            "/tmp is sticky and world-writable: {files}"
        );
    }
}
