//! Reading configuration files: multi-document YAML (or JSON) with the line each document
//! starts on, and recognising which kind a document is — a Trellis kind, its Istio twin, a
//! Kubernetes built-in, or something else.

use std::fmt;

use serde_json::Value;

mod locate;
mod strict;

pub use locate::field_line;

/// The Trellis kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.trellis.dev/v1alpha1 VirtualService`.
    VirtualService,
    /// `networking.trellis.dev/v1alpha1 DestinationRule`.
    DestinationRule,
    /// `networking.trellis.dev/v1alpha1 Gateway`.
    Gateway,
    /// `networking.trellis.dev/v1alpha1 ServiceEntry`.
    ServiceEntry,
    /// `networking.trellis.dev/v1alpha1 Sidecar`.
    Sidecar,
    /// `security.trellis.dev/v1alpha1 PeerAuthentication`.
    PeerAuthentication,
    /// `security.trellis.dev/v1alpha1 AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `security.trellis.dev/v1alpha1 RequestAuthentication`.
    RequestAuthentication,
    /// `mesh.trellis.dev/v1alpha1 Mesh` (cluster-scoped).
    Mesh,
}

/// The one version every Trellis group serves.
pub const VERSION: &str = "v1alpha1";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Mesh,
    ];

    /// The kind's name as written in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Mesh => "Mesh",
        }
    }

    /// The Trellis API group serving the kind.
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::Gateway | Kind::ServiceEntry | Kind::Sidecar => {
                crate::networking::GROUP
            }
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                crate::security::GROUP
            }
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
            Kind::ServiceEntry => of::<crate::networking::ServiceEntry>(),
            Kind::Sidecar => of::<crate::networking::Sidecar>(),
            Kind::PeerAuthentication => of::<crate::security::PeerAuthentication>(),
            Kind::AuthorizationPolicy => of::<crate::security::AuthorizationPolicy>(),
            Kind::RequestAuthentication => of::<crate::security::RequestAuthentication>(),
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
                    "Istio kind {kind} is not supported by Trellis yet; Trellis serves VirtualService, DestinationRule, Gateway, ServiceEntry, Sidecar, PeerAuthentication, RequestAuthentication and AuthorizationPolicy"
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
    /// The document's text (empty for the items of a `kind: List`, which share the list's), so
    /// a finding can name the line of a field ([`field_line`]).
    pub text: String,
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

/// The largest document read. Kubernetes stores objects of up to 1.5 MiB; a larger document is
/// a mistake, and reading it whole would let one input hold the process's memory.
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

/// Split `text` into documents at `---` separators and parse each, skipping empty ones
/// (comments only). `kind: List` documents are expanded into their items.
///
/// # Guarantees
/// Never panics on malformed input: a broken document yields a [`ParseError`] with the file
/// line, and the other documents are still returned.
pub fn parse_documents(text: &str) -> Vec<Document> {
    // Reading from memory cannot fail, so every item is a document.
    Documents::new(text.as_bytes()).flatten().collect()
}

/// The documents of a stream, read and parsed one at a time: a file of any size is read with
/// the memory of its largest document (at most [`MAX_DOCUMENT_BYTES`]).
///
/// Each item is a [`Document`] (parsed, or with its [`ParseError`]: malformed YAML, a key
/// repeated in a mapping, text that is not UTF-8, a document over the size limit), or the
/// I/O error that ended the stream. `kind: List` documents are expanded into their items;
/// empty documents (comments only) are skipped.
#[derive(Debug)]
pub struct Documents<R> {
    reader: R,
    /// The next line to read (1-based).
    next_line: usize,
    pending: std::collections::VecDeque<Document>,
    done: bool,
}

/// One document's raw text, before parsing.
struct Raw {
    start: usize,
    text: Vec<u8>,
    oversize: bool,
}

impl<R: std::io::BufRead> Documents<R> {
    /// Read documents from `reader`.
    pub fn new(reader: R) -> Self {
        Documents {
            reader,
            next_line: 1,
            pending: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Read up to the next separator (or the end); `None` at the end of the stream.
    fn read_raw(&mut self) -> std::io::Result<Option<Raw>> {
        use std::io::{BufRead as _, Read as _};
        let mut raw = Raw {
            start: self.next_line,
            text: Vec::new(),
            oversize: false,
        };
        let mut line = Vec::new();
        let mut read_any = false;
        loop {
            line.clear();
            // One line, never more than the document budget left (plus one byte to notice).
            let budget = if raw.oversize {
                64 << 10
            } else {
                MAX_DOCUMENT_BYTES + 1 - raw.text.len()
            };
            let n = (&mut self.reader).take(budget as u64).read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(read_any.then_some(raw));
            }
            read_any = true;
            let complete = line.last() == Some(&b'\n');
            if is_separator(&line) {
                self.next_line += 1;
                return Ok(Some(raw));
            }
            if raw.oversize {
                // Skip the rest of an over-long line in bounded pieces.
                let mut rest_complete = complete;
                while !rest_complete {
                    line.clear();
                    let n = (&mut self.reader).take(64 << 10).read_until(b'\n', &mut line)?;
                    rest_complete = n == 0 || line.last() == Some(&b'\n');
                }
            } else {
                raw.text.extend_from_slice(&line);
                if raw.text.len() > MAX_DOCUMENT_BYTES {
                    raw.oversize = true;
                    raw.text = Vec::new();
                    let mut rest_complete = complete;
                    while !rest_complete {
                        line.clear();
                        let n = (&mut self.reader).take(64 << 10).read_until(b'\n', &mut line)?;
                        rest_complete = n == 0 || line.last() == Some(&b'\n');
                    }
                }
            }
            self.next_line += 1;
        }
    }

    /// Parse one raw document into `pending`.
    fn parse(&mut self, raw: Raw) {
        let start = raw.start;
        let error = |message: String| Document {
            line: start,
            content: Err(ParseError { line: start, message }),
            text: String::new(),
        };
        if raw.oversize {
            self.pending.push_back(error(format!(
                "the document is larger than {} MiB; Kubernetes stores objects of up to 1.5 MiB: split it",
                MAX_DOCUMENT_BYTES >> 20
            )));
            return;
        }
        let body = match String::from_utf8(raw.text) {
            Ok(b) => b,
            Err(e) => {
                let bytes = e.as_bytes();
                let at = e.utf8_error().valid_up_to();
                let line = start + bytes[..at].iter().filter(|b| **b == b'\n').count();
                self.pending.push_back(Document {
                    line: start,
                    content: Err(ParseError {
                        line,
                        message: "not UTF-8 text; save the file as UTF-8".into(),
                    }),
                    text: String::new(),
                });
                return;
            }
        };
        // The document's line is its first line of content (after comments and blank lines).
        let Some(first) = body.lines().position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        }) else {
            return;
        };
        let line = start + first;
        // The text from that line on, so the line of a field counts from the document's line.
        let text: String = body.split_inclusive('\n').skip(first).collect();
        let content = serde_yaml_ng::from_str::<strict::Strict>(&body)
            .map(|s| s.0)
            .map_err(|e| {
                let (rel, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                let message = first_line(&e.to_string());
                // The parser places a repeated key at its mapping; name the repeat's own line.
                let rel = strict::duplicate_key(&message)
                    .and_then(|key| locate::repeated_key(&body, rel, column, key))
                    .unwrap_or(rel);
                ParseError {
                    line: start + rel.saturating_sub(1),
                    message: to_file_lines(&message, start),
                }
            });
        match content {
            Ok(Value::Object(mut map))
                if map.get("kind").and_then(Value::as_str) == Some("List")
                    && map.get("items").is_some_and(Value::is_array) =>
            {
                let Some(Value::Array(items)) = map.remove("items") else {
                    return;
                };
                for item in items {
                    let content = if item.is_object() {
                        Ok(item)
                    } else {
                        Err(ParseError {
                            line,
                            message: "an item of a List must be a mapping with apiVersion, kind and metadata".into(),
                        })
                    };
                    self.pending.push_back(Document {
                        line,
                        content,
                        text: String::new(),
                    });
                }
            }
            Ok(Value::Null) => {}
            Ok(v @ Value::Object(_)) => self.pending.push_back(Document {
                line,
                content: Ok(v),
                text,
            }),
            Ok(_) => self.pending.push_back(Document {
                line,
                content: Err(ParseError {
                    line,
                    message: "a document must be a mapping with apiVersion, kind and metadata".into(),
                }),
                text,
            }),
            Err(e) => self.pending.push_back(Document {
                line,
                content: Err(e),
                text,
            }),
        }
    }
}

impl<R: std::io::BufRead> Iterator for Documents<R> {
    type Item = std::io::Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(d) = self.pending.pop_front() {
                return Some(Ok(d));
            }
            if self.done {
                return None;
            }
            match self.read_raw() {
                Ok(Some(raw)) => self.parse(raw),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A line that is `---` (optionally followed by a comment or other text after a space).
fn is_separator(line: &[u8]) -> bool {
    let t = line.strip_suffix(b"\n").unwrap_or(line);
    let t = t.strip_suffix(b"\r").unwrap_or(t);
    t.trim_ascii_end() == b"---" || t.starts_with(b"--- ") || t.starts_with(b"---\t")
}

/// The YAML parser counts lines from the document's start; say them as lines of the file.
fn to_file_lines(message: &str, start: usize) -> String {
    static LINE: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"line (\d+) column (\d+)").expect("static regex"));
    LINE.replace_all(message, |c: &regex::Captures<'_>| {
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
    use std::io::Read as _;

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
    fn a_key_given_twice_is_an_error_on_its_line() {
        let text = "apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: B\nmetadata:\n  name: x\n  name: y\n";
        let docs = parse_documents(text);
        assert!(docs[0].content.is_ok());
        let err = docs[1].content.as_ref().unwrap_err();
        assert!(err.message.contains("duplicate key \"name\""), "{err:?}");
        assert_eq!(err.line, 8, "{err:?}");
        let flow = parse_documents("{\"a\": 1, \"a\": 2}");
        assert!(flow[0].content.is_err());
        // The same key in different mappings is fine; scalar keys become strings.
        let ok = parse_documents("a:\n  x: 1\nb:\n  x: 2\n1: one\ntrue: yes\n");
        let v = ok[0].content.as_ref().unwrap();
        assert_eq!(v["1"], "one");
        assert_eq!(v["true"], "yes");
    }

    #[test]
    fn documents_are_read_one_at_a_time() {
        // An endless stream: collecting it would never end, taking three documents does.
        let endless = std::io::BufReader::new(std::io::repeat(b'x').take(0).chain(Endless::default()));
        let docs: Vec<Document> = Documents::new(endless).take(3).map(Result::unwrap).collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].line, 7);
        assert_eq!(docs[1].content.as_ref().unwrap()["kind"], "ConfigMap");
    }

    /// `apiVersion: v1\nkind: ConfigMap\n---\n` forever.
    #[derive(Default)]
    struct Endless(usize);

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            const DOC: &[u8] = b"apiVersion: v1\nkind: ConfigMap\n---\n";
            let n = buf.len().min(DOC.len() - self.0);
            buf[..n].copy_from_slice(&DOC[self.0..self.0 + n]);
            self.0 = (self.0 + n) % DOC.len();
            Ok(n)
        }
    }

    #[test]
    fn an_oversize_document_is_an_error_and_the_next_is_read() {
        let mut text = String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n  big: ");
        text.push_str(&"y".repeat(MAX_DOCUMENT_BYTES + 10));
        text.push_str("\n---\napiVersion: v1\nkind: Secret\n");
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        let err = docs[0].content.as_ref().unwrap_err();
        assert!(err.message.contains("larger than 8 MiB"), "{err:?}");
        assert_eq!(docs[1].line, 6);
        assert_eq!(docs[1].content.as_ref().unwrap()["kind"], "Secret");
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error_on_its_line() {
        let bytes = b"apiVersion: v1\nkind: A\nmetadata:\n  name: \xff\n".to_vec();
        let docs: Vec<Document> = Documents::new(&bytes[..]).map(Result::unwrap).collect();
        let err = docs[0].content.as_ref().unwrap_err();
        assert_eq!(err.line, 4, "{err:?}");
        assert!(err.message.contains("UTF-8"), "{err:?}");
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
        assert_eq!(
            classify("networking.trellis.dev/v1alpha1", "ServiceEntry"),
            Classification::Trellis(Kind::ServiceEntry)
        );
        assert!(matches!(
            classify("networking.trellis.dev/v1alpha1", "WorkloadEntry"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("networking.trellis.dev/v1", "Gateway"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("networking.istio.io/v1", "ServiceEntry"),
            Classification::Istio {
                kind: Kind::ServiceEntry,
                ..
            }
        ));
        assert!(matches!(
            classify("networking.istio.io/v1", "Sidecar"),
            Classification::Istio {
                kind: Kind::Sidecar,
                ..
            }
        ));
        assert!(matches!(
            classify("networking.istio.io/v1", "EnvoyFilter"),
            Classification::Unknown { .. }
        ));
        assert!(matches!(
            classify("foo.trellis.dev/v1alpha1", "Mesh"),
            Classification::Unknown { .. }
        ));
    }
}
