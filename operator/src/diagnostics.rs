//! The compiler's diagnostics, never silent: every problem `trellis_core::compile::diagnose`
//! finds in the live configuration (what the compiler drops or doubts) becomes, on the object
//! it concerns,
//! - an entry of `status.validationMessages` with the analysis code `meshctl analyze` reports
//!   (Istio's shape: `type.code`, `type.name`, `level`, `message`) and a `Reconciled` condition
//!   (`False`/`ConfigurationDropped` when something is dropped, `True`/`CompiledWithWarnings`
//!   for warnings only, `True`/`Compiled` once the last one is gone);
//! - an event (Warning) when it appears, and a log line once per change;
//! - a count in the gauge `trellis_operator_config_diagnostics{code,level,kind}`.
//!
//! [`plan`] is pure (diagnostics and the objects' current status in, the status writes and
//! announcements out); [`run`] is the leader's loop around it.
//!
//! # Guarantees
//! - Only the leader writes (it runs under [`crate::leader::while_leading`]), by server-side
//!   apply with the one field manager `trellis-operator`, and only an object whose messages,
//!   condition or generation changed: a steady configuration is never written again, however
//!   often it is pushed, and a new leader starts from what the objects already say.
//! - An object that never had a diagnostic gets no status written.
//!
//! # Caveats
//! - Diagnostics about objects that have no status (none today: the compiler names only
//!   Trellis kinds) are still logged, counted and sent as events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use trellis_api::document::Kind;
use trellis_api::status::{ConfigStatus, MessageType, StatusMessage};
use trellis_core::compile::{self, Diagnostic, Severity};
use trellis_core::snapshot::Snapshot;

use crate::events::{Event, EventType, Recorder, Reporter};
use crate::metrics::Metrics;

/// The condition the compiler's verdict is written under.
pub const CONDITION: &str = "Reconciled";
/// How long a burst of changes is left to settle before the configuration is diagnosed again.
// why: a rollout or a kubectl apply of many objects changes the index many times a second;
// diagnosing once per second keeps the leader's work bounded and the status fresh enough.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The object a diagnostic concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Kind, as the compiler names it (`VirtualService`).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Target {
    /// The compiler's `Kind namespace/name`.
    pub fn parse(resource: &str) -> Option<Target> {
        let (kind, rest) = resource.split_once(' ')?;
        let (namespace, name) = rest.split_once('/')?;
        Some(Target {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// The Trellis kind, when it is one (those have a status).
    pub fn trellis_kind(&self) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == self.kind && k.namespaced())
    }
}

/// One diagnostic as a status message.
pub fn message(d: &Diagnostic) -> StatusMessage {
    let def = d.code.definition();
    StatusMessage {
        type_: Some(MessageType {
            code: def.id.into(),
            name: def.name.into(),
        }),
        level: match d.severity {
            Severity::Error => "Error".into(),
            Severity::Warning => "Warning".into(),
        },
        field: None,
        message: d.message.clone(),
    }
}

/// What an object says now: its generation, uid and status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.uid` (for events).
    pub uid: Option<String>,
    /// Its status.
    pub status: Option<ConfigStatus>,
}

/// The Trellis objects of a snapshot with what they say now.
pub fn current(snapshot: &Snapshot) -> BTreeMap<Target, Current> {
    fn add(out: &mut BTreeMap<Target, Current>, kind: Kind, meta: &ObjectMeta, status: &Option<ConfigStatus>) {
        out.insert(
            Target {
                kind: kind.name().into(),
                namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                name: meta.name.clone().unwrap_or_default(),
            },
            Current {
                generation: meta.generation,
                uid: meta.uid.clone(),
                status: status.clone(),
            },
        );
    }
    let mut out = BTreeMap::new();
    for o in &snapshot.virtual_services {
        add(&mut out, Kind::VirtualService, &o.metadata, &o.status);
    }
    for o in &snapshot.destination_rules {
        add(&mut out, Kind::DestinationRule, &o.metadata, &o.status);
    }
    for o in &snapshot.gateways {
        add(&mut out, Kind::Gateway, &o.metadata, &o.status);
    }
    for o in &snapshot.service_entries {
        add(&mut out, Kind::ServiceEntry, &o.metadata, &o.status);
    }
    for o in &snapshot.sidecars {
        add(&mut out, Kind::Sidecar, &o.metadata, &o.status);
    }
    for o in &snapshot.peer_authentications {
        add(&mut out, Kind::PeerAuthentication, &o.metadata, &o.status);
    }
    for o in &snapshot.authorization_policies {
        add(&mut out, Kind::AuthorizationPolicy, &o.metadata, &o.status);
    }
    for o in &snapshot.request_authentications {
        add(&mut out, Kind::RequestAuthentication, &o.metadata, &o.status);
    }
    out
}

/// A status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// On which object.
    pub target: Target,
    /// The status (the fields the operator owns).
    pub status: ConfigStatus,
}

/// A diagnostic that appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// On which object.
    pub target: Target,
    /// The message.
    pub message: StatusMessage,
    /// It appeared (else it went away).
    pub appeared: bool,
}

/// What to do about the diagnostics standing now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Status writes, only where something changed.
    pub writes: Vec<Write>,
    /// Diagnostics that appeared or went away since `previous` (events and logs).
    pub announcements: Vec<Announcement>,
    /// Every diagnostic now, by object (the next `previous`).
    pub standing: BTreeMap<Target, BTreeSet<StatusMessage>>,
    /// Counts per (code, level, kind), for the gauge.
    pub counts: BTreeMap<(String, String, String), u64>,
}

fn condition(
    messages: &BTreeSet<StatusMessage>,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: SystemTime,
) -> Condition {
    let errors = messages.iter().filter(|m| m.level == "Error").count();
    let summary = |ms: &BTreeSet<StatusMessage>| {
        ms.iter()
            .map(|m| {
                let code = m.type_.as_ref().map(|t| t.code.as_str()).unwrap_or("?");
                format!("{code}: {}", m.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (status, reason, message) = if errors > 0 {
        (
            "False",
            "ConfigurationDropped",
            format!(
                "{errors} problem(s) make the compiler drop part of this object: {}",
                summary(messages)
            ),
        )
    } else if !messages.is_empty() {
        (
            "True",
            "CompiledWithWarnings",
            format!("in use, with warnings: {}", summary(messages)),
        )
    } else {
        (
            "True",
            "Compiled",
            "in use as written; the compiler reports nothing".to_string(),
        )
    };
    // Condition messages are limited to 32 kB; keep it readable.
    let message: String = message.chars().take(2000).collect();
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| {
            Time(k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
        });
    Condition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether `status` already says what `next` says (the time of an unchanged condition aside).
fn says(status: Option<&ConfigStatus>, next: &ConfigStatus) -> bool {
    let Some(status) = status else { return false };
    let messages =
        |s: &ConfigStatus| -> BTreeSet<StatusMessage> { s.validation_messages.iter().flatten().cloned().collect() };
    let ours = |s: &ConfigStatus| {
        s.conditions.iter().flatten().find(|c| c.type_ == CONDITION).map(|c| {
            (
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
                c.observed_generation,
            )
        })
    };
    messages(status) == messages(next)
        && ours(status) == ours(next)
        && status.observed_generation == next.observed_generation
}

/// Plan the status writes and announcements for `diagnostics`, given what the objects say now
/// (`current`) and what was standing at the last look (`previous`; `None` on a leader's first
/// look, when the objects' own statuses are the past).
pub fn plan(
    diagnostics: &[Diagnostic],
    current: &BTreeMap<Target, Current>,
    previous: Option<&BTreeMap<Target, BTreeSet<StatusMessage>>>,
    now: SystemTime,
) -> Plan {
    let mut standing: BTreeMap<Target, BTreeSet<StatusMessage>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for d in diagnostics {
        let Some(target) = Target::parse(&d.resource) else {
            continue;
        };
        let m = message(d);
        *counts
            .entry((d.code.id().to_string(), m.level.clone(), target.kind.clone()))
            .or_default() += 1;
        standing.entry(target).or_default().insert(m);
    }
    // What was said before: the last look, or (first look) what the objects' statuses hold.
    let before: BTreeMap<Target, BTreeSet<StatusMessage>> = match previous {
        Some(p) => p.clone(),
        None => current
            .iter()
            .filter_map(|(t, c)| {
                let ms: BTreeSet<StatusMessage> = c
                    .status
                    .as_ref()?
                    .validation_messages
                    .iter()
                    .flatten()
                    .cloned()
                    .collect();
                (!ms.is_empty()).then(|| (t.clone(), ms))
            })
            .collect(),
    };
    let mut announcements = Vec::new();
    let empty = BTreeSet::new();
    let targets: BTreeSet<&Target> = standing.keys().chain(before.keys()).collect();
    let mut writes = Vec::new();
    for target in targets {
        let now_msgs = standing.get(target).unwrap_or(&empty);
        let was = before.get(target).unwrap_or(&empty);
        for m in now_msgs.difference(was) {
            announcements.push(Announcement {
                target: target.clone(),
                message: m.clone(),
                appeared: true,
            });
        }
        for m in was.difference(now_msgs) {
            announcements.push(Announcement {
                target: target.clone(),
                message: m.clone(),
                appeared: false,
            });
        }
        // A status only on Trellis objects that exist, and only once they had something to say.
        let Some(cur) = current.get(target) else { continue };
        let had = cur
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().flatten().any(|c| c.type_ == CONDITION));
        if now_msgs.is_empty() && !had && was.is_empty() {
            continue;
        }
        let previous_condition = cur
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().flatten().find(|c| c.type_ == CONDITION));
        let next = ConfigStatus {
            conditions: Some(vec![condition(now_msgs, cur.generation, previous_condition, now)]),
            observed_generation: cur.generation,
            validation_messages: Some(now_msgs.iter().cloned().collect()),
        };
        if !says(cur.status.as_ref(), &next) {
            writes.push(Write {
                target: target.clone(),
                status: next,
            });
        }
    }
    Plan {
        writes,
        announcements,
        standing,
        counts,
    }
}

/// Server-side apply `w.status` on its object (field manager `trellis-operator`).
async fn write(client: &Client, w: &Write) -> Result<(), kube::Error> {
    let Some(kind) = w.target.trellis_kind() else {
        return Ok(());
    };
    let resource = ApiResource {
        group: kind.group().into(),
        version: trellis_api::document::VERSION.into(),
        api_version: kind.api_version(),
        kind: kind.name().into(),
        plural: kind.plural(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &w.target.namespace, &resource);
    let patch = Patch::Apply(serde_json::json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "status": w.status,
    }));
    match api
        .patch_status(
            &w.target.name,
            &PatchParams::apply(crate::FIELD_MANAGER).force(),
            &patch,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to say on it.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn announce(recorder: &Recorder, a: &Announcement, current: &BTreeMap<Target, Current>) {
    let code = a.message.type_.as_ref().map(|t| t.code.clone()).unwrap_or_default();
    if a.appeared {
        tracing::warn!(object = %a.target, %code, level = %a.message.level, message = %a.message.message, "configuration diagnostic");
    } else {
        tracing::info!(object = %a.target, %code, "configuration diagnostic resolved");
        return; // the condition says it; an event is for what needs a person
    }
    let Some(kind) = a.target.trellis_kind() else { return };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.name().into()),
        namespace: Some(a.target.namespace.clone()),
        name: Some(a.target.name.clone()),
        uid: current.get(&a.target).and_then(|c| c.uid.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: a
            .message
            .type_
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_else(|| "ConfigurationDiagnostic".into()),
        note: Some(format!("{code}: {}", a.message.message).chars().take(1000).collect()),
        action: "Compile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(object = %a.target, error = %e, "could not publish the diagnostic's event");
    }
}

/// Diagnose the index's configuration after every change (settled for [`SETTLE`]) and make
/// what the compiler says visible. Run by the leader only; stops when the index does.
pub async fn run(
    client: Client,
    index: crate::index::Shared,
    mut changed: tokio::sync::watch::Receiver<u64>,
    metrics: std::sync::Arc<Metrics>,
) {
    let recorder = Recorder::new(client.clone(), Reporter::from(crate::mesh::REPORTER));
    let mut previous: Option<BTreeMap<Target, BTreeSet<StatusMessage>>> = None;
    // A new leader looks at once, not only after the next change.
    changed.mark_changed();
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        changed.borrow_and_update();
        let snapshot = {
            let Ok(index) = index.read() else { return };
            if !index.synced() {
                continue;
            }
            index.snapshot()
        };
        let diagnostics = compile::diagnose(&snapshot);
        let current = current(&snapshot);
        let plan = plan(&diagnostics, &current, previous.as_ref(), SystemTime::now());
        metrics.set_diagnostics(plan.counts.clone());
        for a in &plan.announcements {
            announce(&recorder, a, &current).await;
        }
        let mut failed = false;
        for w in &plan.writes {
            if let Err(e) = write(&client, w).await {
                tracing::warn!(object = %w.target, error = %e, "could not write the compiler's diagnostics into the status; retrying on the next change");
                failed = true;
            }
        }
        // A failed write is retried: the next look starts from the objects' statuses again.
        previous = (!failed).then_some(plan.standing);
    }
}

#[cfg(test)]
mod tests {
    use trellis_core::code::Code;

    use super::*;

    fn diag(code: Code, resource: &str, message: &str) -> Diagnostic {
        Diagnostic {
            severity: match code.level() {
                trellis_core::code::Level::Error => Severity::Error,
                _ => Severity::Warning,
            },
            code,
            resource: resource.into(),
            message: message.into(),
        }
    }

    fn target(kind: &str, ns: &str, name: &str) -> Target {
        Target {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn objects(status: Option<ConfigStatus>) -> BTreeMap<Target, Current> {
        BTreeMap::from([
            (
                target("VirtualService", "shop", "payment"),
                Current {
                    generation: Some(2),
                    uid: Some("u1".into()),
                    status,
                },
            ),
            (target("VirtualService", "shop", "web"), Current::default()),
        ])
    }

    #[test]
    fn a_diagnostic_becomes_a_status_with_its_code_once_and_goes_away_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let d = diag(
            Code::VirtualServiceHostNotFound,
            "VirtualService shop/payment",
            "host pay matches no Service",
        );
        let first = plan(std::slice::from_ref(&d), &objects(None), None, t0);
        assert_eq!(first.writes.len(), 1, "only the object concerned: {first:?}");
        let w = &first.writes[0];
        assert_eq!(w.target, target("VirtualService", "shop", "payment"));
        let msgs = w.status.validation_messages.clone().unwrap();
        let def = Code::VirtualServiceHostNotFound.definition();
        assert_eq!(
            msgs[0].type_,
            Some(MessageType {
                code: def.id.into(),
                name: def.name.into()
            })
        );
        assert_eq!(msgs[0].message, "host pay matches no Service");
        let c = &w.status.conditions.as_ref().unwrap()[0];
        assert_eq!(c.type_, CONDITION);
        assert_eq!(c.observed_generation, Some(2));
        assert!(c.message.contains(def.id), "{}", c.message);
        assert_eq!(w.status.observed_generation, Some(2));
        assert_eq!(first.announcements.len(), 1);
        assert!(first.announcements[0].appeared);
        assert_eq!(
            first.counts,
            BTreeMap::from([(
                (def.id.to_string(), msgs[0].level.clone(), "VirtualService".to_string()),
                1
            )])
        );

        // Pushed again and again with the same configuration: nothing written, nothing said.
        let written = objects(Some(w.status.clone()));
        let again = plan(std::slice::from_ref(&d), &written, Some(&first.standing), t0 + SETTLE);
        assert!(again.writes.is_empty() && again.announcements.is_empty(), "{again:?}");
        // A new leader reads the same from the object's status.
        let fresh = plan(std::slice::from_ref(&d), &written, None, t0 + SETTLE);
        assert!(fresh.writes.is_empty() && fresh.announcements.is_empty(), "{fresh:?}");

        // Fixed: the messages are cleared, the condition says so, once.
        let fixed = plan(&[], &written, Some(&first.standing), t0 + SETTLE * 2);
        assert_eq!(fixed.writes.len(), 1);
        let status = &fixed.writes[0].status;
        assert_eq!(status.validation_messages, Some(vec![]));
        assert_eq!(status.conditions.as_ref().unwrap()[0].reason, "Compiled");
        assert!(!fixed.announcements[0].appeared);
        assert!(fixed.counts.is_empty());
        let cleared = objects(Some(status.clone()));
        let quiet = plan(&[], &cleared, Some(&fixed.standing), t0 + SETTLE * 3);
        assert!(quiet.writes.is_empty() && quiet.announcements.is_empty(), "{quiet:?}");
    }

    #[test]
    fn errors_say_what_is_dropped_warnings_keep_the_object_reconciled() {
        let t0 = SystemTime::UNIX_EPOCH;
        let warning = Code::ALL
            .iter()
            .copied()
            .find(|c| c.level() == trellis_core::code::Level::Warning)
            .expect("a warning code");
        let error = Code::ALL
            .iter()
            .copied()
            .find(|c| c.level() == trellis_core::code::Level::Error)
            .expect("an error code");
        let only_warning = plan(
            &[diag(warning, "VirtualService shop/payment", "doubtful")],
            &objects(None),
            None,
            t0,
        );
        let c = &only_warning.writes[0].status.conditions.as_ref().unwrap()[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "CompiledWithWarnings"));
        let both = plan(
            &[
                diag(warning, "VirtualService shop/payment", "doubtful"),
                diag(error, "VirtualService shop/payment", "dropped"),
            ],
            &objects(None),
            None,
            t0,
        );
        let c = &both.writes[0].status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ConfigurationDropped")
        );
        assert!(
            c.message.contains("dropped") && c.message.contains("doubtful"),
            "{}",
            c.message
        );
        // A diagnostic about an object that is gone is still announced, never written.
        let gone = plan(&[diag(error, "Gateway shop/old", "x")], &objects(None), None, t0);
        assert!(gone.writes.is_empty());
        assert_eq!(gone.announcements.len(), 1);
    }
}
