//! The operator's admission webhooks, as installed: the validator of every Trellis kind and
//! the sidecar injector. Both are served by `trellis-operator` on [`WEBHOOK_PORT`](super::WEBHOOK_PORT) behind its
//! Service (port 443); the operator keeps their `caBundle` equal to the mesh trust bundle, so
//! the installed objects carry none.
//!
//! # Failure policies, and what a user sees while the operator is down
//! - **Validator: `Fail`.** The API server still enforces each CRD's schema and CEL rules
//!   on its own, but the semantic checks (weights that sum to 100, regexes, hosts…) run only
//!   here; failing closed means nothing invalid enters the cluster behind the operator's back.
//!   While the operator is down `kubectl apply` of Trellis objects fails with
//!   `failed calling webhook "validation.trellis.dev"` — and nothing would be pushed to the
//!   proxies then anyway; they keep serving their last configuration.
//! - **Injector: `Fail`** (Istio's choice; Linkerd's is `Ignore`). With `Ignore`, a pod created
//!   while the operator is down starts *without* a sidecar: under STRICT mTLS it can neither
//!   call nor be called by the mesh, and nothing says why. With `Fail`, the ReplicaSet (Job,
//!   StatefulSet…) controller retries the creation with backoff and records
//!   `Error creating: … failed calling webhook "namespace.sidecar-injector.trellis.dev"`
//!   events; once an operator replica is back, the pods are created meshed. Running pods are
//!   never affected. The namespace selectors keep `trellis-system` and `kube-system` out, so the
//!   operator itself (and the cluster's own components) can always start: no deadlock.
//!
//! # Selectors
//! The injector has two webhooks, as Istio's does: one for namespaces labelled
//! `trellis.dev/inject=enabled` (pods labelled `disabled` skipped), one for pods labelled
//! `enabled` in namespaces that say neither. A namespace labelled `disabled` is never
//! injected. The validator checks Trellis objects in every namespace but `kube-system`: an
//! opt-out of injection is not an opt-out of validation (a VirtualService in an unmeshed
//! namespace still routes meshed clients), and the operator needs no namespaced Trellis object
//! to start, so validating in `trellis-system` cannot lock it out. The `Mesh` is cluster-scoped
//! and always validated.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use trellis_api::mesh::{INJECTION_DISABLED, INJECTION_ENABLED, INJECTION_LABEL};

use super::{OPERATOR_NAME, Options, meta, operator_labels};

/// The ValidatingWebhookConfiguration's name.
pub const VALIDATOR: &str = "trellis-validator";
/// The MutatingWebhookConfiguration's name.
pub const INJECTOR: &str = "trellis-sidecar-injector";
/// The validating webhook.
pub const VALIDATION_WEBHOOK: &str = "validation.trellis.dev";
/// The injecting webhook for labelled namespaces.
pub const NAMESPACE_INJECTION_WEBHOOK: &str = "namespace.sidecar-injector.trellis.dev";
/// The injecting webhook for labelled pods.
pub const OBJECT_INJECTION_WEBHOOK: &str = "object.sidecar-injector.trellis.dev";
/// The path the validator is served on.
pub const VALIDATE_PATH: &str = "/validate";
/// The path the injector is served on.
pub const INJECT_PATH: &str = "/inject";
/// The label every namespace carries with its own name (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// How long the API server waits for the validator.
// why: a person waits at `kubectl apply`; validation takes well under a millisecond in the
// operator, so 5 s only ever runs out when the operator is unreachable or stuck.
pub const VALIDATION_TIMEOUT_SECONDS: i32 = 5;
/// How long the API server waits for the injector.
// why: pod creation is asynchronous and retried by controllers; Istio's 10 s lets a busy
// operator answer late rather than fail a scale-up.
pub const INJECTION_TIMEOUT_SECONDS: i32 = 10;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(strings(values)),
    }
}

fn selector(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(requirements),
        ..LabelSelector::default()
    }
}

fn client_config(opts: &Options, path: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        service: Some(ServiceReference {
            namespace: opts.namespace.clone(),
            name: OPERATOR_NAME.into(),
            path: Some(path.into()),
            port: Some(443),
        }),
        ..WebhookClientConfig::default()
    }
}

/// The namespaces no webhook of Trellis stands in front of.
fn system_namespaces(opts: &Options) -> Vec<String> {
    let mut names = vec![opts.namespace.clone(), "kube-system".to_string()];
    names.dedup();
    names
}

/// The validator of every Trellis kind (CREATE and UPDATE; status updates are not checked).
pub fn validating_webhook_configuration(opts: &Options) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: meta(VALIDATOR, None, operator_labels()),
        webhooks: Some(vec![ValidatingWebhook {
            name: VALIDATION_WEBHOOK.into(),
            admission_review_versions: strings(&["v1"]),
            client_config: client_config(opts, VALIDATE_PATH),
            rules: Some(vec![RuleWithOperations {
                operations: Some(strings(&["CREATE", "UPDATE"])),
                api_groups: Some(strings(&[
                    "networking.trellis.dev",
                    "security.trellis.dev",
                    trellis_api::mesh::GROUP,
                ])),
                api_versions: Some(strings(&["*"])),
                // `*` matches every resource but no subresource: status writes are not validated.
                resources: Some(strings(&["*"])),
                scope: Some("*".into()),
            }]),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(VALIDATION_TIMEOUT_SECONDS),
            namespace_selector: Some(selector(vec![requirement(
                NAMESPACE_NAME_LABEL,
                "NotIn",
                &["kube-system"],
            )])),
            ..ValidatingWebhook::default()
        }]),
    }
}

fn injection_webhook(opts: &Options, name: &str, namespace: LabelSelector, object: LabelSelector) -> MutatingWebhook {
    MutatingWebhook {
        name: name.into(),
        admission_review_versions: strings(&["v1"]),
        client_config: client_config(opts, INJECT_PATH),
        rules: Some(vec![RuleWithOperations {
            operations: Some(strings(&["CREATE"])),
            api_groups: Some(strings(&[""])),
            api_versions: Some(strings(&["v1"])),
            resources: Some(strings(&["pods"])),
            scope: Some("Namespaced".into()),
        }]),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        // why: answering changes nothing but the pod under admission. A pod the injector skips
        // (hostNetwork) is labelled by the patch, and the operator's leader publishes the event
        // about it from that label once the pod exists (`trellis_operator::admission::skipped`),
        // so a dry run has no effect anywhere and `NoneOnDryRun` is not needed.
        side_effects: "None".into(),
        timeout_seconds: Some(INJECTION_TIMEOUT_SECONDS),
        // Called again if a later webhook changes the pod; injection is idempotent.
        reinvocation_policy: Some("IfNeeded".into()),
        namespace_selector: Some(namespace),
        object_selector: Some(object),
        ..MutatingWebhook::default()
    }
}

/// The sidecar injector: pods in namespaces labelled `trellis.dev/inject=enabled`, and pods
/// labelled so in namespaces that do not opt out.
pub fn mutating_webhook_configuration(opts: &Options) -> MutatingWebhookConfiguration {
    let system = system_namespaces(opts);
    let system: Vec<&str> = system.iter().map(String::as_str).collect();
    MutatingWebhookConfiguration {
        metadata: meta(INJECTOR, None, operator_labels()),
        webhooks: Some(vec![
            injection_webhook(
                opts,
                NAMESPACE_INJECTION_WEBHOOK,
                selector(vec![
                    requirement(INJECTION_LABEL, "In", &[INJECTION_ENABLED]),
                    requirement(NAMESPACE_NAME_LABEL, "NotIn", &system),
                ]),
                selector(vec![requirement(INJECTION_LABEL, "NotIn", &[INJECTION_DISABLED])]),
            ),
            injection_webhook(
                opts,
                OBJECT_INJECTION_WEBHOOK,
                selector(vec![
                    requirement(INJECTION_LABEL, "NotIn", &[INJECTION_ENABLED, INJECTION_DISABLED]),
                    requirement(NAMESPACE_NAME_LABEL, "NotIn", &system),
                ]),
                selector(vec![requirement(INJECTION_LABEL, "In", &[INJECTION_ENABLED])]),
            ),
        ]),
    }
}

/// The labels a selector matches, evaluated as the API server does (for tests and `meshctl`).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let plain = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        let value = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    plain && expressions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Which injection webhooks would be called for a pod with `pod` labels in namespace `ns`
    /// (the API server sets `kubernetes.io/metadata.name`).
    fn called(ns: &str, ns_labels: &[(&str, &str)], pod: &[(&str, &str)]) -> Vec<String> {
        let mut n = labels(ns_labels);
        n.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
        let p = labels(pod);
        mutating_webhook_configuration(&Options::default())
            .webhooks
            .unwrap()
            .into_iter()
            .filter(|w| {
                selector_matches(w.namespace_selector.as_ref().unwrap(), &n)
                    && selector_matches(w.object_selector.as_ref().unwrap(), &p)
            })
            .map(|w| w.name)
            .collect()
    }

    #[test]
    fn injection_selects_labelled_namespaces_and_pods_and_honours_opt_outs() {
        let on = [(INJECTION_LABEL, INJECTION_ENABLED)];
        let off = [(INJECTION_LABEL, INJECTION_DISABLED)];
        assert_eq!(called("shop", &on, &[]), [NAMESPACE_INJECTION_WEBHOOK]);
        assert_eq!(called("shop", &on, &on), [NAMESPACE_INJECTION_WEBHOOK]);
        assert!(called("shop", &on, &off).is_empty());
        assert_eq!(called("plain", &[], &on), [OBJECT_INJECTION_WEBHOOK]);
        assert!(called("plain", &[], &[]).is_empty());
        assert!(called("opted-out", &off, &on).is_empty());
        for system in ["trellis-system", "kube-system"] {
            assert!(called(system, &on, &on).is_empty(), "{system}");
        }
    }

    #[test]
    fn an_operator_in_another_namespace_is_called_there_and_left_out_of_injection() {
        let opts = Options {
            namespace: "operators".into(),
            ..Options::default()
        };
        let m = mutating_webhook_configuration(&opts).webhooks.unwrap();
        let v = validating_webhook_configuration(&opts).webhooks.unwrap();
        let services = m
            .iter()
            .map(|w| &w.client_config)
            .chain(v.iter().map(|w| &w.client_config));
        for config in services {
            assert_eq!(config.service.as_ref().unwrap().namespace, "operators");
        }
        let on = labels(&[
            (INJECTION_LABEL, INJECTION_ENABLED),
            (NAMESPACE_NAME_LABEL, "operators"),
        ]);
        assert!(
            m.iter()
                .all(|w| !selector_matches(w.namespace_selector.as_ref().unwrap(), &on))
        );
    }

    #[test]
    fn both_configurations_are_admission_v1_without_side_effects() {
        let opts = Options::default();
        let v = validating_webhook_configuration(&opts).webhooks.unwrap();
        let m = mutating_webhook_configuration(&opts).webhooks.unwrap();
        for (versions, effects, policy, matching, timeout, service) in v
            .iter()
            .map(|w| {
                (
                    &w.admission_review_versions,
                    &w.side_effects,
                    &w.failure_policy,
                    &w.match_policy,
                    w.timeout_seconds,
                    &w.client_config.service,
                )
            })
            .chain(m.iter().map(|w| {
                (
                    &w.admission_review_versions,
                    &w.side_effects,
                    &w.failure_policy,
                    &w.match_policy,
                    w.timeout_seconds,
                    &w.client_config.service,
                )
            }))
        {
            assert_eq!(versions, &["v1"]);
            // The injector's skip events come from a reconciler, not the webhook: no webhook
            // has a side effect, dry run or not.
            assert_eq!(effects, "None");
            assert_eq!(policy.as_deref(), Some("Fail"));
            assert_eq!(matching.as_deref(), Some("Equivalent"));
            assert!(timeout.is_some_and(|t| (1..=10).contains(&t)));
            let service = service.as_ref().unwrap();
            assert_eq!((service.name.as_str(), service.port), (OPERATOR_NAME, Some(443)));
        }
        let mut kube_system = labels(&[(NAMESPACE_NAME_LABEL, "kube-system")]);
        assert!(!selector_matches(
            v[0].namespace_selector.as_ref().unwrap(),
            &kube_system
        ));
        kube_system.insert(NAMESPACE_NAME_LABEL.into(), "trellis-system".into());
        assert!(selector_matches(
            v[0].namespace_selector.as_ref().unwrap(),
            &kube_system
        ));
    }
}
