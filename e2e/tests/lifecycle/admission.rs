//! `kubectl apply` meets the operator's validating webhook (issue 11 §2, §5): an invalid
//! VirtualService is denied with the one validator's message, dry run or not, and a doubtful
//! one is accepted with the warning kubectl prints. On upstream Kubernetes the API server
//! itself calls the operator's pods through the webhook configuration's Service.

use anyhow::ensure;
use trellis_e2e::suite::Target;
use trellis_manifests::demo;

/// Weights summing to 110: the validator's error.
fn invalid(namespace: &str) -> String {
    format!(
        r"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: payment-overweight, namespace: {namespace}}}
spec:
  hosts: [payment]
  http:
  - route:
    - {{destination: {{host: payment, subset: v1}}, weight: 90}}
    - {{destination: {{host: payment, subset: v2}}, weight: 20}}
"
    )
}

/// Bound to a Gateway that does not exist: a cross-object doubt, a warning and no denial.
fn doubtful(namespace: &str) -> String {
    format!(
        r#"
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata: {{name: edge-doubtful, namespace: {namespace}}}
spec:
  hosts: ["edge.example.com"]
  gateways: [no-such-gateway]
  http:
  - route: [{{destination: {{host: web}}}}]
"#
    )
}

pub(super) fn kubectl_meets_the_webhooks(t: &Target) -> anyhow::Result<()> {
    let ns = demo::NAMESPACE;
    let bad = invalid(ns);
    for dry_run in [false, true] {
        let mut args = vec!["apply", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        let out = t.kubectl(&args, Some(&bad))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "dry run {dry_run}: the invalid VirtualService was accepted: {stderr}"
        );
        ensure!(
            stderr.contains("admission webhook \"validation.trellis.dev\" denied the request")
                && stderr.contains(&format!("VirtualService {ns}/payment-overweight: spec.http[0].route"))
                && stderr.contains("they must sum to 100"),
            "dry run {dry_run}: not the validator's denial: {stderr}"
        );
    }
    let absent = t.kubectl(&["get", "virtualservice", "payment-overweight", "-n", ns], None)?;
    ensure!(!absent.status.success(), "the denied VirtualService exists");

    let out = t.kubectl(&["apply", "-f", "-"], Some(&doubtful(ns)))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the doubtful VirtualService was refused: {stderr}"
    );
    ensure!(
        stderr.contains(&format!(
            "Warning: VirtualService {ns}/edge-doubtful: spec.gateways[0]: Gateway {ns}/no-such-gateway does not exist"
        )),
        "no warning printed by kubectl: {stderr}"
    );
    t.kubectl_ok(&["delete", "virtualservice", "edge-doubtful", "-n", ns], None)?;
    Ok(())
}
