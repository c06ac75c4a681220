//! Reading Kubernetes objects from a file: YAML (multi-document) or JSON
//! (an object or a `List`). Every problem becomes one [`Warning`] naming
//! the file, the object and the field; good objects in the same file
//! still load.

use std::path::Path;

use serde::Deserialize as _;
use serde_json::Value;

use crate::{object::Kind, validate::validate, Object, ObjectKey, Warning};

/// What a file held.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub warnings: Vec<Warning>,
    /// Objects the file names but that failed to decode or validate.
    /// Callers keep their previous version, so a bad edit never deletes a
    /// working object.
    pub rejected: Vec<ObjectKey>,
}

/// Whether `path` is a file weir reads (`*.yaml`, `*.yml`, `*.json`), not
/// a hidden or editor temporary file.
pub fn is_object_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Parses a whole file. `Err` means the file as a whole is unreadable
/// (not UTF-8, YAML/JSON syntax error): callers keep what it held before.
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Loaded, Warning> {
    let file_warning = |message: String| Warning { file: Some(path.to_path_buf()), object: None, field: None, message };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| file_warning(format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to())))?;
    let mut docs = Vec::new();
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let v: Value = serde_json::from_str(text).map_err(|e| file_warning(format!("JSON syntax error: {e}")))?;
        docs.push(v);
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).map_err(|e| file_warning(format!("YAML syntax error: {e}")))?;
            docs.push(v);
        }
    }
    let mut out = Loaded::default();
    for v in docs {
        load_value(path, v, &mut out);
    }
    Ok(out)
}

fn load_value(path: &Path, v: Value, out: &mut Loaded) {
    if v.is_null() {
        return; // an empty document
    }
    let warn = |object: Option<String>, field: Option<&str>, message: String| Warning {
        file: Some(path.to_path_buf()),
        object,
        field: field.map(str::to_string),
        message,
    };
    let Some(map) = v.as_object() else {
        out.warnings.push(warn(None, None, "a document is not a Kubernetes object (expected a mapping)".into()));
        return;
    };
    let kind_s = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind_s == "List" {
        if let Some(items) = map.get("items").and_then(Value::as_array) {
            for item in items.clone() {
                load_value(path, item, out);
            }
        }
        return;
    }
    let meta = map.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_string);
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_string();
    let Some(kind) = Kind::from_kind(&kind_s) else {
        let what = if kind_s.is_empty() { "a document without kind".to_string() } else { format!("{kind_s} {}", name.clone().unwrap_or_default()) };
        out.warnings.push(warn(Some(what), Some("kind"), "not a kind weir reads (Service, EndpointSlice, Pod, Namespace, Node, NetworkPolicy, ClusterNetworkPolicy, WeirNetworkPolicy)".into()));
        return;
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        out.warnings.push(warn(Some(format!("{} (unnamed)", kind.as_str())), Some("metadata.name"), "missing".into()));
        return;
    };
    let key = ObjectKey { kind, namespace: if kind.namespaced() { namespace } else { String::new() }, name };
    let api = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api != kind.api_version() {
        out.warnings.push(warn(Some(key.to_string()), Some("apiVersion"), format!("{api:?}: weir reads {} as {}", kind.as_str(), kind.api_version())));
        out.rejected.push(key);
        return;
    }
    match Object::from_value(kind, v) {
        Ok(obj) => match validate(&obj) {
            Ok(()) => out.objects.push(obj),
            Err(e) => {
                out.warnings.push(warn(Some(key.to_string()), Some(&e.field), e.message));
                out.rejected.push(key);
            }
        },
        Err((field, message)) => {
            out.warnings.push(warn(Some(key.to_string()), field.as_deref(), message));
            out.rejected.push(key);
        }
    }
}
