//! What an installation is made with: a profile's Mesh, overlaid with Mesh files (`-f`) and
//! `--set path=value`, in that order, then checked by the one validator before anything is
//! applied. The Mesh is the installation's values: its `spec.versions` also choose the
//! operator's and the gateway's images.

use serde_json::{Map, Value};
use trellis_api::document::{Classification, Kind, classify, parse_documents};
use trellis_api::mesh::MESH_NAME;
use trellis_api::validation::{Finding, Outcome, Severity, validate};
use trellis_manifests::install::Options;
use trellis_manifests::profile::{self, Profile};

/// Why the values could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    /// A file could not be read.
    #[error("reading {file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A file is not YAML, or not a Mesh.
    #[error("{file}:{line}: {message}")]
    File {
        /// The file.
        file: String,
        /// The line of the document.
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A `--set` that cannot be applied.
    #[error("--set {arg}: {message}")]
    Set {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        message: String,
    },
    /// The resulting Mesh is invalid.
    #[error("the Mesh is invalid (nothing was applied):\n{}", list(.0))]
    Invalid(Vec<Finding>),
}

fn list(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n")
}

/// The installation a profile and its overrides make.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    /// The profile.
    pub profile: Profile,
    /// The final Mesh object.
    pub mesh: Value,
    /// Warnings the validator had about the Mesh.
    pub warnings: Vec<Finding>,
}

impl Values {
    /// The install options the Mesh chooses (images).
    pub fn options(&self) -> Options {
        let mut opts = Options::default();
        let versions = &self.mesh["spec"]["versions"];
        if let Some(op) = versions["operator"].as_str() {
            opts.operator_image = op.to_string();
        }
        if let Some(proxy) = versions["proxy"].as_str() {
            opts.proxy_image = proxy.to_string();
        }
        opts
    }

    /// Every object to apply, in order.
    pub fn objects(&self) -> Vec<Value> {
        profile::objects(self.profile, self.mesh["spec"].clone(), &self.options())
    }
}

/// `profile`'s Mesh overlaid with `files` (name, text) and then `sets`, validated.
pub fn resolve(profile: Profile, files: &[(String, String)], sets: &[String]) -> Result<Values, ValuesError> {
    resolve_over(profile, None, files, sets)
}

/// As [`resolve`], with `kept` (the settings of an installed Mesh, for `meshctl upgrade`:
/// see [`kept_settings`]) in place of the profile's, but for its `versions`, before the files
/// and sets.
pub fn resolve_over(
    profile: Profile,
    kept: Option<Value>,
    files: &[(String, String)],
    sets: &[String],
) -> Result<Values, ValuesError> {
    let mut spec = profile.mesh_spec(&Options::default());
    if let Some(kept) = kept {
        let versions = spec["versions"].take();
        spec = kept;
        if let Some(map) = spec.as_object_mut() {
            map.insert("versions".into(), versions);
        }
    }
    for (file, text) in files {
        for doc in parse_documents(text) {
            let value = doc.content.map_err(|e| ValuesError::File {
                file: file.clone(),
                line: e.line,
                message: e.message,
            })?;
            let not_mesh = |what: String| ValuesError::File {
                file: file.clone(),
                line: doc.line,
                message: format!(
                    "{what}; -f takes the Mesh (apiVersion: mesh.trellis.dev/v1alpha1, kind: Mesh, name: {MESH_NAME}) whose spec overrides the profile's"
                ),
            };
            let api = value["apiVersion"].as_str().unwrap_or_default();
            let kind = value["kind"].as_str().unwrap_or_default();
            if classify(api, kind) != Classification::Trellis(Kind::Mesh) {
                return Err(not_mesh(format!("{api} {kind} is not a Mesh")));
            }
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            if name != MESH_NAME {
                return Err(not_mesh(format!("the Mesh is named {name:?}")));
            }
            merge(
                &mut spec,
                value.get("spec").cloned().unwrap_or(Value::Object(Map::new())),
            );
        }
    }
    for arg in sets {
        set(&mut spec, arg)?;
    }
    let mesh = profile::mesh(spec);
    let findings = match validate(&mesh) {
        Outcome::Validated { findings, .. } => findings,
        Outcome::Skipped(why) => {
            return Err(ValuesError::Set {
                arg: String::new(),
                message: format!("internal: the Mesh was not validated: {why}"),
            });
        }
    };
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) =
        findings.into_iter().partition(|f| f.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(ValuesError::Invalid(errors));
    }
    Ok(Values {
        profile,
        mesh,
        warnings,
    })
}

/// The settings `meshctl upgrade` keeps: the installed Mesh's spec (`installed_spec`, its
/// `versions` left out) as it is, so a setting the user removed stays removed even where the
/// profile sets one (the demo profile's tracing); when `--profile` names another profile than
/// the installed one, that profile's settings under the installed ones.
pub fn kept_settings(installed: Profile, asked: Profile, installed_spec: Value) -> Value {
    let mut kept = if asked == installed {
        Value::Object(Map::new())
    } else {
        asked.mesh_spec(&Options::default())
    };
    if installed_spec.is_object() {
        merge(&mut kept, installed_spec);
    }
    if let Some(map) = kept.as_object_mut() {
        map.remove("versions");
    }
    kept
}

/// Overlay `over` on `base`: mappings merge key by key, anything else replaces, `null` removes.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// One step of a `--set` path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn path(text: &str) -> Result<Vec<Step>, String> {
    let text = text.strip_prefix("spec.").unwrap_or(text);
    let mut steps = Vec::new();
    for segment in text.split('.') {
        let (key, mut rest) = match segment.find('[') {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        if key.is_empty() {
            return Err(format!(
                "empty field name in {text:?}; write a dotted path into the Mesh's spec, e.g. telemetry.tracing.sampling"
            ));
        }
        steps.push(Step::Key(key.to_string()));
        while !rest.is_empty() {
            let Some(close) = rest.find(']').filter(|_| rest.starts_with('[')) else {
                return Err(format!("{segment:?}: write list indexes as name[0]"));
            };
            let index = rest[1..close]
                .parse::<usize>()
                .map_err(|_| format!("{segment:?}: {:?} is not a list index", &rest[1..close]))?;
            steps.push(Step::Index(index));
            rest = &rest[close + 1..];
        }
    }
    Ok(steps)
}

/// Apply `path=value` to the Mesh spec. The value is read as YAML (`true`, `5`, `[a, b]`,
/// `{k: v}`, or a string); `null` removes the field.
pub fn set(spec: &mut Value, arg: &str) -> Result<(), ValuesError> {
    let err = |message: String| ValuesError::Set {
        arg: arg.to_string(),
        message,
    };
    let (p, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected PATH=VALUE, e.g. --set telemetry.tracing.sampling=100".into()))?;
    let steps = path(p.trim()).map_err(err)?;
    let value: Value = if raw.is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw).map_err(|e| err(format!("the value is not YAML: {e}")))?
    };
    let Some((last, parents)) = steps.split_last() else {
        return Err(err("empty path".into()));
    };
    let mut cursor = spec;
    for (i, step) in parents.iter().enumerate() {
        let next_is_index = matches!(steps.get(i + 1), Some(Step::Index(_)));
        cursor = match step {
            Step::Key(k) => {
                let map = as_map(cursor).ok_or_else(|| err(format!("{k}: its parent is not a mapping")))?;
                let entry = map.entry(k.clone()).or_insert(Value::Null);
                if entry.is_null() {
                    *entry = if next_is_index {
                        Value::Array(Vec::new())
                    } else {
                        Value::Object(Map::new())
                    };
                }
                entry
            }
            Step::Index(n) => index(cursor, *n).map_err(&err)?,
        };
    }
    match last {
        Step::Key(k) => {
            let map = as_map(cursor).ok_or_else(|| err(format!("{k}: its parent is not a mapping")))?;
            if value.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), value);
            }
        }
        Step::Index(n) => *index(cursor, *n).map_err(&err)? = value,
    }
    Ok(())
}

fn as_map(v: &mut Value) -> Option<&mut Map<String, Value>> {
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

/// Element `n` of a list, appending when `n` is its length.
fn index(v: &mut Value, n: usize) -> Result<&mut Value, String> {
    let list = v.as_array_mut().ok_or_else(|| "not a list".to_string())?;
    if n == list.len() {
        list.push(Value::Null);
    }
    let len = list.len();
    list.get_mut(n)
        .ok_or_else(|| format!("index {n} is past the end of the list ({len} items)"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn profile_then_files_then_sets() {
        let file = "apiVersion: mesh.trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec:\n  trustDomain: example.org\n  telemetry: {tracing: {sampling: 5}}\n";
        let v = resolve(
            Profile::Demo,
            &[("mesh.yaml".into(), file.into())],
            &[
                "telemetry.tracing.sampling=50".into(),
                "spec.versions.proxy=ghcr.io/trellis-mesh/trellis-proxy:9.9.9".into(),
                "rollout.healthGates[0]=PodsReady".into(),
            ],
        )
        .unwrap();
        let spec = &v.mesh["spec"];
        assert_eq!(spec["trustDomain"], "example.org");
        assert_eq!(spec["telemetry"]["tracing"]["sampling"], 50);
        // The demo profile's collector survives the file's partial telemetry.
        assert!(spec["telemetry"]["tracing"]["otlpEndpoint"].is_string());
        assert_eq!(spec["rollout"]["healthGates"], json!(["PodsReady"]));
        assert_eq!(v.options().proxy_image, "ghcr.io/trellis-mesh/trellis-proxy:9.9.9");
        let gateway = v
            .objects()
            .into_iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == profile::GATEWAY)
            .unwrap();
        assert_eq!(
            gateway["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/trellis-mesh/trellis-proxy:9.9.9"
        );
    }

    #[test]
    fn the_validator_checks_the_result_before_anything_is_applied() {
        let err = resolve(Profile::Default, &[], &["telemetry.tracing.sampling=500".into()]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ValuesError::Invalid(_)), "{text}");
        assert!(text.contains("spec.telemetry.tracing.sampling"), "{text}");
        let err = resolve(Profile::Default, &[], &["noSuchField=1".into()]).unwrap_err();
        assert!(err.to_string().contains("noSuchField"), "{err}");
    }

    #[test]
    fn bad_sets_and_files_say_what_to_write() {
        for (arg, says) in [
            ("telemetry", "PATH=VALUE"),
            ("a..b=1", "empty field name"),
            ("rollout.healthGates[x]=1", "not a list index"),
            ("rollout.healthGates[3]=PodsReady", "past the end"),
            ("trustDomain.x=1", "not a mapping"),
        ] {
            let mut spec = json!({"trustDomain": "t"});
            let err = set(&mut spec, arg).unwrap_err().to_string();
            assert!(err.contains(says), "{arg}: {err}");
        }
        let err = resolve(Profile::Default, &[("x.yaml".into(), "kind: [".into())], &[]).unwrap_err();
        assert!(
            matches!(&err, ValuesError::File { file, .. } if file == "x.yaml"),
            "{err}"
        );
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
        let err = resolve(Profile::Default, &[("d.yaml".into(), deployment.into())], &[]).unwrap_err();
        assert!(err.to_string().contains("is not a Mesh"), "{err}");
    }

    /// `meshctl upgrade` keeps what is installed: the demo profile's tracing, removed from the
    /// Mesh by its user, does not come back; moving to the demo profile brings it.
    #[test]
    fn upgrade_keeps_the_installed_settings_and_a_new_profile_adds_its_own() {
        let installed = json!({"trustDomain": "example.org", "versions": {"proxy": "old"}});
        let kept = kept_settings(Profile::Demo, Profile::Demo, installed.clone());
        assert_eq!(kept, json!({"trustDomain": "example.org"}));
        let v = resolve_over(Profile::Demo, Some(kept), &[], &[]).unwrap();
        let spec = &v.mesh["spec"];
        assert!(spec.get("telemetry").is_none(), "{spec:#}");
        assert_eq!(spec["trustDomain"], "example.org");
        assert_eq!(
            spec["versions"],
            Profile::Demo.mesh_spec(&Options::default())["versions"]
        );

        let kept = kept_settings(Profile::Default, Profile::Demo, installed);
        let v = resolve_over(Profile::Demo, Some(kept), &[], &["trustDomain=example.net".into()]).unwrap();
        let spec = &v.mesh["spec"];
        assert!(spec["telemetry"]["tracing"]["otlpEndpoint"].is_string(), "{spec:#}");
        assert_eq!(spec["trustDomain"], "example.net");
    }

    #[test]
    fn null_removes() {
        let mut spec = json!({"telemetry": {"tracing": {"sampling": 1}}});
        set(&mut spec, "telemetry.tracing=null").unwrap();
        assert_eq!(spec, json!({"telemetry": {}}));
        let mut base = json!({"a": {"b": 1, "c": 2}});
        merge(&mut base, json!({"a": {"b": null, "d": [1]}}));
        assert_eq!(base, json!({"a": {"c": 2, "d": [1]}}));
    }
}
