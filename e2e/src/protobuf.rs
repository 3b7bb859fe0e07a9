//! The Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`)
//! for request bodies, which kubectl's typed-client commands send
//! (`kubectl create namespace/configmap/secret/serviceaccount/token`).
//!
//! The wire format is decoded against small field tables for the kinds
//! listed in [`decode`]; a field a table does not know is an error, never
//! silently dropped, so an unsupported body is refused rather than stored
//! wrong.

use serde_json::{Map, Value, json};

use crate::pki::base64_encode;

/// The envelope prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// A field's shape.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    RepeatedStr,
    RepeatedMsg(&'static [Field]),
    MapStr,
    MapBytes,
    /// `metav1.Time`: seconds + nanos, shown as RFC 3339.
    Time,
}

type Field = (u32, &'static str, Kind);

const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (4, "selfLink", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::Int),
    (8, "creationTimestamp", Kind::Time),
    (9, "deletionTimestamp", Kind::Time),
    (10, "deletionGracePeriodSeconds", Kind::Int),
    (11, "labels", Kind::MapStr),
    (12, "annotations", Kind::MapStr),
    (13, "ownerReferences", Kind::RepeatedMsg(OWNER_REFERENCE)),
    (14, "finalizers", Kind::RepeatedStr),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStr),
    (3, "binaryData", Kind::MapBytes),
    (4, "immutable", Kind::Bool),
];

const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStr),
    (5, "immutable", Kind::Bool),
];

const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(&[(1, "finalizers", Kind::RepeatedStr)])),
    (3, "status", Kind::Msg(&[(1, "phase", Kind::Str)])),
];

const OBJECT_REFERENCE: &[Field] = &[
    (1, "kind", Kind::Str),
    (2, "namespace", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "fieldPath", Kind::Str),
];

const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "secrets", Kind::RepeatedMsg(OBJECT_REFERENCE)),
    (3, "imagePullSecrets", Kind::RepeatedMsg(&[(1, "name", Kind::Str)])),
    (4, "automountServiceAccountToken", Kind::Bool),
];

const TOKEN_REQUEST: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "audiences", Kind::RepeatedStr),
            (
                3,
                "boundObjectRef",
                Kind::Msg(&[
                    (1, "kind", Kind::Str),
                    (2, "apiVersion", Kind::Str),
                    (3, "name", Kind::Str),
                    (4, "uid", Kind::Str),
                ]),
            ),
            (4, "expirationSeconds", Kind::Int),
        ]),
    ),
    (
        3,
        "status",
        Kind::Msg(&[(1, "token", Kind::Str), (2, "expirationTimestamp", Kind::Time)]),
    ),
];

const RESOURCE_ATTRIBUTES: &[Field] = &[
    (1, "namespace", Kind::Str),
    (2, "verb", Kind::Str),
    (3, "group", Kind::Str),
    (4, "version", Kind::Str),
    (5, "resource", Kind::Str),
    (6, "subresource", Kind::Str),
    (7, "name", Kind::Str),
];

const SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "spec",
        Kind::Msg(&[
            (1, "resourceAttributes", Kind::Msg(RESOURCE_ATTRIBUTES)),
            (
                2,
                "nonResourceAttributes",
                Kind::Msg(&[(1, "path", Kind::Str), (2, "verb", Kind::Str)]),
            ),
        ]),
    ),
    (
        3,
        "status",
        Kind::Msg(&[
            (1, "allowed", Kind::Bool),
            (2, "reason", Kind::Str),
            (3, "evaluationError", Kind::Str),
            (4, "denied", Kind::Bool),
        ]),
    ),
];

/// The status (user info) is filled by the server; clients send it empty.
const SELF_SUBJECT_REVIEW: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (
        2,
        "status",
        Kind::Msg(&[(
            1,
            "userInfo",
            Kind::Msg(&[
                (1, "username", Kind::Str),
                (2, "uid", Kind::Str),
                (3, "groups", Kind::RepeatedStr),
            ]),
        )]),
    ),
];

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("not a Kubernetes protobuf body")]
    NotKubernetes,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error(
        "protobuf bodies for {0} are not supported by kubesim; send JSON (for kubectl: `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -`)"
    )]
    UnsupportedKind(String),
    #[error("protobuf field {field} of {message} is not supported by kubesim; send JSON")]
    UnknownField { message: &'static str, field: u32 },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtobufError> {
        let len = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed("length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or(ProtobufError::Malformed("truncated field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `(field number, wire type)`, or `None` at the end.
    fn tag(&mut self) -> Result<Option<(u32, u8)>, ProtobufError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let t = self.varint()?;
        let field = u32::try_from(t >> 3).map_err(|_| ProtobufError::Malformed("field number"))?;
        Ok(Some((field, (t & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), ProtobufError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => Err(ProtobufError::Malformed("wire type")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), ProtobufError> {
        if self.pos + n > self.buf.len() {
            return Err(ProtobufError::Malformed("truncated fixed field"));
        }
        self.pos += n;
        Ok(())
    }
}

fn utf8(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::Malformed("invalid UTF-8"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ProtobufError> {
    let mut r = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), json!(""));
    while let Some((f, wire)) = r.tag()? {
        match (f, wire) {
            (1, 2) => k = utf8(r.bytes()?)?,
            (2, 2) => {
                let raw = r.bytes()?;
                v = if bytes_value {
                    json!(base64_encode(raw))
                } else {
                    json!(utf8(raw)?)
                };
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut r = Reader { buf: b, pos: 0 };
    let mut secs = 0i64;
    while let Some((f, wire)) = r.tag()? {
        match (f, wire) {
            (1, 0) => secs = r.varint()? as i64,
            (_, w) => r.skip(w)?,
        }
    }
    Ok(jiff::Timestamp::from_second(secs)
        .map(|t| json!(t.to_string()))
        .unwrap_or(Value::Null))
}

fn message(b: &[u8], fields: &'static [Field], name: &'static str) -> Result<Value, ProtobufError> {
    let mut r = Reader { buf: b, pos: 0 };
    let mut out = Map::new();
    while let Some((num, wire)) = r.tag()? {
        let Some((_, key, kind)) = fields.iter().find(|(n, _, _)| *n == num) else {
            return Err(ProtobufError::UnknownField {
                message: name,
                field: num,
            });
        };
        let key = (*key).to_string();
        match (*kind, wire) {
            (Kind::Str, 2) => {
                out.insert(key, json!(utf8(r.bytes()?)?));
            }
            (Kind::Int, 0) => {
                out.insert(key, json!(r.varint()? as i64));
            }
            (Kind::Bool, 0) => {
                out.insert(key, json!(r.varint()? != 0));
            }
            (Kind::Time, 2) => {
                out.insert(key, time(r.bytes()?)?);
            }
            (Kind::Msg(sub), 2) => {
                out.insert(key, message(r.bytes()?, sub, name)?);
            }
            (Kind::RepeatedStr, 2) => {
                let s = utf8(r.bytes()?)?;
                out.entry(key)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or(ProtobufError::Malformed("list"))?
                    .push(json!(s));
            }
            (Kind::RepeatedMsg(sub), 2) => {
                let v = message(r.bytes()?, sub, name)?;
                out.entry(key)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or(ProtobufError::Malformed("list"))?
                    .push(v);
            }
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let (k, v) = map_entry(r.bytes()?, matches!(kind, Kind::MapBytes))?;
                out.entry(key)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .ok_or(ProtobufError::Malformed("map"))?
                    .insert(k, v);
            }
            _ => return Err(ProtobufError::Malformed("wire type does not match the field")),
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a Kubernetes protobuf request body into the JSON object the
/// rest of kubesim works with. Supported kinds: Namespace, ConfigMap,
/// Secret, ServiceAccount (core/v1), TokenRequest and SelfSubjectReview
/// (authentication.k8s.io/v1) and SelfSubjectAccessReview
/// (authorization.k8s.io/v1).
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NotKubernetes)?;
    // runtime.Unknown { typeMeta = 1 { apiVersion = 1, kind = 2 }, raw = 2 }
    let mut r = Reader { buf: rest, pos: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, wire)) = r.tag()? {
        match (f, wire) {
            (1, 2) => {
                let mut tm = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                while let Some((tf, tw)) = tm.tag()? {
                    match (tf, tw) {
                        (1, 2) => api_version = utf8(tm.bytes()?)?,
                        (2, 2) => kind = utf8(tm.bytes()?)?,
                        (_, w) => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let fields = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        _ => return Err(ProtobufError::UnsupportedKind(format!("{api_version} {kind}"))),
    };
    let kind_static: &'static str = match kind.as_str() {
        "Namespace" => "Namespace",
        "ConfigMap" => "ConfigMap",
        "Secret" => "Secret",
        "ServiceAccount" => "ServiceAccount",
        "SelfSubjectAccessReview" => "SelfSubjectAccessReview",
        "SelfSubjectReview" => "SelfSubjectReview",
        _ => "TokenRequest",
    };
    let mut obj = message(raw, fields, kind_static)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(num: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(num) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(1, api_version.as_bytes(), &mut tm);
        field(2, kind.as_bytes(), &mut tm);
        let mut unknown = Vec::new();
        field(1, &tm, &mut unknown);
        field(2, raw, &mut unknown);
        [MAGIC, &unknown].concat()
    }

    #[test]
    fn configmaps_and_secrets_decode() {
        let mut meta = Vec::new();
        field(1, b"cfg", &mut meta);
        let mut label = Vec::new();
        field(1, b"app", &mut label);
        field(2, b"web", &mut label);
        field(11, &label, &mut meta);
        let mut cm = Vec::new();
        field(1, &meta, &mut cm);
        let mut entry = Vec::new();
        field(1, b"k", &mut entry);
        field(2, b"v", &mut entry);
        field(2, &entry, &mut cm);
        let obj = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"k": "v"}, "apiVersion": "v1", "kind": "ConfigMap"})
        );

        let mut secret = Vec::new();
        field(1, &meta, &mut secret);
        field(2, &entry, &mut secret);
        field(3, b"Opaque", &mut secret);
        let obj = decode(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(obj["data"]["k"], "dg==");
        assert_eq!(obj["type"], "Opaque");
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let mut cm = Vec::new();
        field(9, b"x", &mut cm);
        assert_eq!(
            decode(&envelope("v1", "ConfigMap", &cm)),
            Err(ProtobufError::UnknownField {
                message: "ConfigMap",
                field: 9
            })
        );
        assert!(matches!(
            decode(&envelope("apps/v1", "Deployment", &[])),
            Err(ProtobufError::UnsupportedKind(_))
        ));
        assert_eq!(decode(b"{}"), Err(ProtobufError::NotKubernetes));
    }
}
