//! Reading configuration files: multi-document YAML (or JSON) with the line each document
//! starts on, and recognising which kind a document is — a Trellis kind, its Istio twin, a
//! Kubernetes built-in, or something else.

use std::fmt;

use serde_json::Value;

/// The Trellis kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.trellis.dev/v1alpha1 VirtualService`.
    VirtualService,
    /// `networking.trellis.dev/v1alpha1 DestinationRule`.
    DestinationRule,
    /// `networking.trellis.dev/v1alpha1 Gateway`.
    Gateway,
    /// `security.trellis.dev/v1alpha1 PeerAuthentication`.
    PeerAuthentication,
    /// `security.trellis.dev/v1alpha1 AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `mesh.trellis.dev/v1alpha1 Mesh` (cluster-scoped).
    Mesh,
}

/// The one version every Trellis group serves.
pub const VERSION: &str = "v1alpha1";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Mesh,
    ];

    /// The kind's name as written in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Mesh => "Mesh",
        }
    }

    /// The Trellis API group serving the kind.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::Gateway => crate::networking::GROUP,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => crate::security::GROUP,
            Kind::Mesh => crate::mesh::GROUP,
        }
    }

    /// `group/version` of the kind.
    pub fn api_version(self) -> String {
        format!("{}/{VERSION}", self.group())
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Mesh
    }

    /// The kind's resource name in URLs and `kubectl get` (`virtualservices`), as its CRD
    /// declares it.
    pub fn plural(self) -> String {
        fn of<K: kube::Resource<DynamicType = ()>>() -> String {
            K::plural(&()).into_owned()
        }
        match self {
            Kind::VirtualService => of::<crate::networking::VirtualService>(),
            Kind::DestinationRule => of::<crate::networking::DestinationRule>(),
            Kind::Gateway => of::<crate::networking::Gateway>(),
            Kind::PeerAuthentication => of::<crate::security::PeerAuthentication>(),
            Kind::AuthorizationPolicy => of::<crate::security::AuthorizationPolicy>(),
            Kind::Mesh => of::<crate::mesh::Mesh>(),
        }
    }

    fn from_name(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Istio's groups and the versions of them Trellis reads, mapped to the Trellis group.
const ISTIO_GROUPS: &[(&str, &[&str], &str)] = &[
    (
        "networking.istio.io",
        &["v1", "v1beta1", "v1alpha3"],
        crate::networking::GROUP,
    ),
    ("security.istio.io", &["v1", "v1beta1"], crate::security::GROUP),
];

/// What a document's `apiVersion` and `kind` say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// A Trellis kind under its own apiVersion.
    Trellis(Kind),
    /// An Istio object Trellis reads as the matching Trellis kind.
    Istio {
        /// The Trellis kind it is validated as.
        kind: Kind,
        /// Its original apiVersion.
        api_version: String,
    },
    /// A Kubernetes built-in kind (core group or `*.k8s.io`): not Trellis' to validate.
    BuiltIn,
    /// Some other API (another operator's CRD): not Trellis' to validate.
    Foreign,
    /// A `*.trellis.dev` or Istio apiVersion/kind that Trellis does not serve: an error.
    Unknown {
        /// Why, and what is served instead.
        reason: String,
    },
}

/// Classify a document by its `apiVersion` and `kind`.
pub fn classify(api_version: &str, kind: &str) -> Classification {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if group.ends_with(".trellis.dev") {
        let Some(k) = Kind::from_name(group, kind) else {
            let served: Vec<String> = Kind::ALL
                .iter()
                .filter(|k| k.group() == group)
                .map(|k| k.name().to_string())
                .collect();
            let reason = if served.is_empty() {
                format!(
                    "unknown Trellis API group {group:?}; the groups are networking.trellis.dev, security.trellis.dev and mesh.trellis.dev"
                )
            } else {
                format!(
                    "unknown kind {kind:?} in {group}; this group serves {}",
                    served.join(", ")
                )
            };
            return Classification::Unknown { reason };
        };
        if version != VERSION {
            return Classification::Unknown {
                reason: format!(
                    "{group} has no version {version:?}; use apiVersion: {}",
                    k.api_version()
                ),
            };
        }
        return Classification::Trellis(k);
    }
    if let Some((istio_group, versions, trellis_group)) = ISTIO_GROUPS.iter().find(|(g, _, _)| *g == group) {
        return match Kind::from_name(trellis_group, kind) {
            Some(k) if versions.contains(&version) => Classification::Istio {
                kind: k,
                api_version: api_version.to_string(),
            },
            Some(k) => Classification::Unknown {
                reason: format!(
                    "{istio_group} {version} is not read by Trellis; use {istio_group}/{} or {}",
                    versions[0],
                    k.api_version()
                ),
            },
            None => Classification::Unknown {
                reason: format!(
                    "Istio kind {kind} is not supported by Trellis yet; Trellis serves VirtualService, DestinationRule, Gateway, PeerAuthentication and AuthorizationPolicy"
                ),
            },
        };
    }
    if group.is_empty() || group.ends_with(".k8s.io") || !group.contains('.') {
        Classification::BuiltIn
    } else {
        Classification::Foreign
    }
}

/// One document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based line of the file the document starts on.
    pub line: usize,
    /// The parsed document, or why it could not be parsed.
    pub content: Result<Value, ParseError>,
}

/// A document that is not valid YAML or JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the file the problem is on.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Split `text` into documents at `---` separators and parse each, skipping empty ones
/// (comments only). `kind: List` documents are expanded into their items.
///
/// # Guarantees
/// Never panics on malformed input: a broken document yields a [`ParseError`] with the file
/// line, and the other documents are still returned.
pub fn parse_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    for (start, body) in split(text) {
        if body.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        let content = serde_yaml_ng::from_str::<Value>(&body).map_err(|e| {
            let rel = e.location().map(|l| l.line()).unwrap_or(1);
            ParseError {
                line: start + rel.saturating_sub(1),
                message: to_file_lines(&first_line(&e.to_string()), start),
            }
        });
        match content {
            Ok(Value::Object(ref map))
                if map.get("kind").and_then(Value::as_str) == Some("List")
                    && map.get("items").is_some_and(Value::is_array) =>
            {
                let items = map["items"].as_array().cloned().unwrap_or_default();
                docs.extend(items.into_iter().map(|item| Document {
                    line: start,
                    content: Ok(item),
                }));
            }
            Ok(Value::Null) => {}
            Ok(v @ Value::Object(_)) => docs.push(Document {
                line: start,
                content: Ok(v),
            }),
            Ok(_) => docs.push(Document {
                line: start,
                content: Err(ParseError {
                    line: start,
                    message: "a document must be a mapping with apiVersion, kind and metadata".into(),
                }),
            }),
            Err(e) => docs.push(Document {
                line: start,
                content: Err(e),
            }),
        }
    }
    docs
}

/// Split at lines that are `---` (optionally followed by a comment), returning each document's
/// first line (1-based) and its text.
fn split(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---\t") {
            out.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out
}

/// The YAML parser counts lines from the document's start; say them as lines of the file.
fn to_file_lines(message: &str, start: usize) -> String {
    let re = regex::Regex::new(r"line (\d+) column (\d+)").expect("static regex");
    re.replace_all(message, |c: &regex::Captures<'_>| {
        let line: usize = c[1].parse().unwrap_or(1);
        format!("line {} column {}", start + line.saturating_sub(1), &c[2])
    })
    .into_owned()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_their_start_line() {
        let text = "# comment\n---\napiVersion: v1\nkind: ConfigMap\n---\n\n---\napiVersion: v1\nkind: Secret\n";
        let docs = parse_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[1].line, 8);
    }

    #[test]
    fn malformed_yaml_reports_the_file_line() {
        let text = "apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: [unclosed\nmetadata: {}\n";
        let docs = parse_documents(text);
        assert_eq!(docs.len(), 2);
        let err = docs[1].content.as_ref().unwrap_err();
        assert!(err.line >= 5, "{err:?}");
    }

    #[test]
    fn lists_are_expanded() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"A"},{"apiVersion":"v1","kind":"B"}]}"#;
        assert_eq!(parse_documents(text).len(), 2);
    }

    #[test]
    fn scalars_are_not_documents() {
        let docs = parse_documents("just a string\n");
        assert!(docs[0].content.is_err());
    }

    #[test]
    fn plurals_come_from_the_crds() {
        for k in Kind::ALL {
            let crd = crate::crd::all()
                .into_iter()
                .find(|c| c.spec.names.kind == k.name())
                .unwrap();
            assert_eq!(k.plural(), crd.spec.names.plural, "{k}");
            assert_eq!(k.group(), crd.spec.group, "{k}");
        }
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify("networking.trellis.dev/v1alpha1", "VirtualService"),
            Classification::Trellis(Kind::VirtualService)
        );
        assert!(matches!(
            classify("networking.istio.io/v1beta1", "DestinationRule"),
            Classification::Istio {
                kind: Kind::DestinationRule,
                ..
            }
        ));
        assert!(matches!(
            classify("security.istio.io/v1", "AuthorizationPolicy"),
            Classification::Istio {
                kind: Kind::AuthorizationPolicy,
                ..
            }
        ));
        assert_eq!(classify("apps/v1", "Deployment"), Classification::BuiltIn);
        assert_eq!(classify("v1", "Service"), Classification::BuiltIn);
        assert_eq!(classify("networking.k8s.io/v1", "Ingress"), Classification::BuiltIn);
        assert_eq!(
            classify("monitoring.coreos.com/v1", "ServiceMonitor"),
            Classification::Foreign
        );
        assert!(matches!(
            classify("networking.trellis.dev/v1alpha1", "ServiceEntry"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("networking.trellis.dev/v1", "Gateway"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("networking.istio.io/v1", "ServiceEntry"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("foo.trellis.dev/v1alpha1", "Mesh"),
            Classification::Unknown { .. }
        ));
    }
}
