//! `meshctl validate` and `meshctl analyze` over a generated mesh of RESOURCES objects (default
//! 5000): namespaces of Services, Pods, VirtualServices, DestinationRules, PeerAuthentications
//! and AuthorizationPolicies, one ingress Gateway. Runs each command's library entry point on
//! one multi-document file, as the binary does, and prints the wall time of each.
//!
//! `cargo bench -p meshctl --bench analyze` (figures and how they were taken: cli/README.md).

use std::fmt::Write as _;
use std::time::Instant;

/// One namespace's objects: 10 services, each with two pods (v1, v2), a VirtualService and a
/// DestinationRule with two subsets; a PeerAuthentication and an AuthorizationPolicy.
fn namespace(out: &mut String, n: usize) -> usize {
    let ns = format!("team-{n}");
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    trellis.dev/inject: enabled\n---\n"
    );
    let mut count = 1;
    for s in 0..10 {
        let svc = format!("svc-{s}");
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {ns}\nspec:\n  clusterIP: 10.{}.{}.{s}\n  selector:\n    app: {svc}\n  ports:\n  - name: http\n    port: 8080\n---\n",
            n / 250,
            n % 250
        );
        for v in ["v1", "v2"] {
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {svc}-{v}\n  namespace: {ns}\n  labels:\n    app: {svc}\n    version: {v}\nspec:\n  serviceAccountName: {svc}\n  containers:\n  - name: app\n    image: shop/{svc}:1\n    ports:\n    - containerPort: 8080\n  initContainers:\n  - name: trellis-proxy\n    image: trellis/proxy:1\n    restartPolicy: Always\nstatus:\n  phase: Running\n  podIP: 10.200.{}.{}\n  conditions:\n  - type: Ready\n    status: \"True\"\n---\n",
                n % 250,
                s * 2 + usize::from(v == "v2")
            );
        }
        let _ = write!(
            out,
            "apiVersion: networking.trellis.dev/v1alpha1\nkind: VirtualService\nmetadata:\n  name: {svc}\n  namespace: {ns}\nspec:\n  hosts: [{svc}]\n  http:\n  - name: canary\n    match:\n    - headers:\n        x-canary:\n          exact: \"true\"\n    route:\n    - destination:\n        host: {svc}\n        subset: v2\n  - route:\n    - destination:\n        host: {svc}\n        subset: v1\n      weight: 90\n    - destination:\n        host: {svc}\n        subset: v2\n      weight: 10\n    timeout: 2s\n---\n"
        );
        let _ = write!(
            out,
            "apiVersion: networking.trellis.dev/v1alpha1\nkind: DestinationRule\nmetadata:\n  name: {svc}\n  namespace: {ns}\nspec:\n  host: {svc}\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n---\n"
        );
        count += 5;
    }
    let _ = write!(
        out,
        "apiVersion: security.trellis.dev/v1alpha1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n---\napiVersion: security.trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: svc-0\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      app: svc-0\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/{ns}/sa/svc-1\"]\n---\n"
    );
    count + 2
}

/// A mesh of at least `n` objects.
fn mesh(n: usize) -> (String, usize) {
    let mut out = String::new();
    let mut count = 0;
    let mut i = 0;
    while count < n {
        count += namespace(&mut out, i);
        i += 1;
    }
    (out, count)
}

fn main() {
    let n: usize = std::env::var("RESOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let (text, count) = mesh(n);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, &text).expect("the generated mesh is written");
    let path = file.display().to_string();
    println!("{count} resources, {} KiB in {path}", text.len() / 1024);
    time(count, &["meshctl", "validate", "-f", &path, "-o", "json"]);
    time(count, &["meshctl", "analyze", "--use-kube=false", "-o", "json", &path]);
}

/// Run one meshctl command line in-process and print how long it took.
fn time(count: usize, args: &[&str]) {
    let cli = <meshctl::Cli as clap::Parser>::parse_from(args);
    let mut sink = Vec::new();
    let started = Instant::now();
    let code = meshctl::run(cli, meshctl::output::Terminal::none(), &mut std::io::empty(), &mut sink);
    let took = started.elapsed();
    println!(
        "{}: {count} resources in {:.3} s (exit {:?}, {} KiB of output)",
        args[..2].join(" "),
        took.as_secs_f64(),
        code.as_ref().map_err(ToString::to_string),
        sink.len() / 1024
    );
}
