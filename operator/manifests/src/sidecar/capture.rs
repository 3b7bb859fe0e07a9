//! The capture init container `trellis-init`: `trellis-proxy init`, which installs the iptables
//! redirect, with the ports and CIDRs to exclude or include from the settings and the pod's overrides.

use k8s_openapi::api::core::v1::{Capabilities, Container, SecurityContext};

use super::proxy::small_resources;
use super::{INIT_CONTAINER, Overrides, PROXY_UID, Settings};

pub(super) fn csv<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub(super) fn init_container(settings: &Settings, o: &Overrides) -> Container {
    let mut args = vec!["init".to_string(), "--proxy-uid".into(), PROXY_UID.to_string()];
    let joined = |base: &[String], extra: &[String]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let u16s = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>();
    for (flag, value) in [
        (
            "--exclude-inbound-ports",
            csv(&joined(
                &u16s(&settings.exclude_inbound_ports),
                &u16s(&o.exclude_inbound_ports),
            )),
        ),
        (
            "--exclude-outbound-ports",
            csv(&joined(
                &u16s(&settings.exclude_outbound_ports),
                &u16s(&o.exclude_outbound_ports),
            )),
        ),
        (
            "--exclude-outbound-cidrs",
            csv(&joined(&settings.exclude_outbound_cidrs, &o.exclude_outbound_cidrs)),
        ),
        ("--include-outbound-ports", csv(&o.include_outbound_ports)),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value);
        }
    }
    // `*` is the default of both; an empty list (capture nothing) is passed as written.
    if let Some(ports) = &o.include_inbound_ports {
        args.push(format!("--include-inbound-ports={}", csv(ports)));
    }
    if let Some(cidrs) = &o.include_outbound_cidrs {
        args.push(format!("--include-outbound-cidrs={}", csv(cidrs)));
    }
    if !o.capture_dns.unwrap_or(settings.capture_dns) {
        args.push("--capture-dns=false".into());
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(o.proxy_image.clone().unwrap_or_else(|| settings.proxy_image.clone())),
        args: Some(args),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        resources: Some(small_resources()),
        ..Container::default()
    }
}
