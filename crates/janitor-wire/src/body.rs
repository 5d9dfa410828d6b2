//! Safe decoding of task message bodies into a [`TaskCall`].
//!
//! Only serializers that cannot run code are decoded: JSON, msgpack and YAML (plain YAML
//! only: any tag makes the body undecidable). Pickle (`application/x-python-serialize`) is
//! never unpickled, and neither is anything compressed or unknown. A caller that cannot
//! decode a body must treat its arguments as undecidable, never as missing.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Bodies larger than this are not decoded (their headers are still read).
pub const MAX_DECODED_BODY: usize = 64 * 1024 * 1024;

/// A task invocation as far as it could be read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskCall {
    pub name: Option<String>,
    pub id: Option<String>,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
}

/// Why a body's arguments are undecidable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("message has no body")]
    Missing,
    #[error("body is not valid base64")]
    Base64,
    #[error("{0} bodies are never deserialized")]
    Unsafe(String),
    #[error("unsupported body: {0}")]
    Unsupported(String),
    #[error("body is larger than {} bytes", MAX_DECODED_BODY)]
    TooLarge,
    #[error("body could not be decoded: {0}")]
    Malformed(String),
}

pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, BodyError> {
    if text.len() / 4 * 3 > MAX_DECODED_BODY {
        return Err(BodyError::TooLarge);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|_| BodyError::Base64)
}

/// Deserializes body bytes according to the message's `content-type`.
pub fn deserialize(content_type: Option<&str>, bytes: &[u8]) -> Result<Value, BodyError> {
    if bytes.len() > MAX_DECODED_BODY {
        return Err(BodyError::TooLarge);
    }
    match content_type.unwrap_or("application/json") {
        "application/json" | "json" => {
            serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))
        }
        "application/x-msgpack" | "msgpack" => decode_msgpack(bytes),
        "application/x-yaml" | "yaml" => decode_yaml(bytes),
        "application/x-python-serialize" | "pickle" => Err(BodyError::Unsafe("pickle".into())),
        other => Err(BodyError::Unsupported(format!("content-type {other}"))),
    }
}

fn decode_msgpack(mut bytes: &[u8]) -> Result<Value, BodyError> {
    let value =
        rmpv::decode::read_value(&mut bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
    msgpack_to_json(value)
}

fn msgpack_to_json(value: rmpv::Value) -> Result<Value, BodyError> {
    use rmpv::Value as M;
    Ok(match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => {
            if let Some(v) = i.as_i64() {
                Value::from(v)
            } else if let Some(v) = i.as_u64() {
                Value::from(v)
            } else {
                return Err(BodyError::Malformed("integer out of range".into()));
            }
        }
        M::F32(f) => Value::from(f64::from(f)),
        M::F64(f) => Value::from(f),
        M::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => return Err(BodyError::Malformed("msgpack string is not UTF-8".into())),
        },
        M::Binary(_) | M::Ext(..) => {
            return Err(BodyError::Unsupported(
                "msgpack binary or extension value".into(),
            ))
        }
        M::Array(items) => Value::Array(
            items
                .into_iter()
                .map(msgpack_to_json)
                .collect::<Result<_, _>>()?,
        ),
        M::Map(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    M::String(s) => s
                        .into_str()
                        .ok_or_else(|| BodyError::Malformed("map key is not UTF-8".into()))?,
                    M::Integer(i) => i.to_string(),
                    _ => return Err(BodyError::Unsupported("non-string map key".into())),
                };
                map.insert(key, msgpack_to_json(v)?);
            }
            Value::Object(map)
        }
    })
}

fn decode_yaml(bytes: &[u8]) -> Result<Value, BodyError> {
    if has_yaml_tag(bytes) {
        return Err(BodyError::Unsafe("tagged YAML".into()));
    }
    let value: serde_yaml::Value =
        serde_yaml::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
    yaml_to_json(value)
}

/// serde_yaml silently drops `!!` tags, so tags are refused before parsing: any `!` that starts a
/// token. A quoted string holding such a `!` is refused too, which errs on the safe side.
fn has_yaml_tag(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'!'
            && (i == 0
                || matches!(
                    bytes[i - 1],
                    b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':' | b'-'
                ))
    })
}

/// Converts plain YAML to JSON. Any tag (`!!python/tuple`, `!!python/object/apply:…`) makes the
/// body undecidable: its meaning depends on a loader we refuse to emulate.
fn yaml_to_json(value: serde_yaml::Value) -> Result<Value, BodyError> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64().map(Value::from).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => return Err(BodyError::Unsupported("non-scalar YAML map key".into())),
                };
                map.insert(key, yaml_to_json(v)?);
            }
            Value::Object(map)
        }
        Y::Tagged(t) => {
            return Err(BodyError::Unsafe(format!("YAML tag {}", t.tag)));
        }
    })
}

/// Protocol 2: the body is `[args, kwargs, embed]`.
pub(crate) fn call_from_v2(value: Value) -> Result<TaskCall, BodyError> {
    let Value::Array(mut parts) = value else {
        return Err(BodyError::Malformed("protocol 2 body is not a list".into()));
    };
    if parts.len() < 2 {
        return Err(BodyError::Malformed(
            "protocol 2 body has fewer than 2 parts".into(),
        ));
    }
    let kwargs = match parts.swap_remove(1) {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => return Err(BodyError::Malformed("kwargs is not a mapping".into())),
    };
    let args = match parts.swap_remove(0) {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        _ => return Err(BodyError::Malformed("args is not a list".into())),
    };
    Ok(TaskCall {
        name: None,
        id: None,
        args,
        kwargs,
    })
}

/// Protocol 1: the body is a dict with `task`, `id`, `args`, `kwargs`, ….
///
/// A mapping without a `task` name is not a task body: remote-control envelopes (`{"method":
/// "revoke", …}`) and control replies (`{"<hostname>": {"ok": "pong"}}`) look like protocol 1
/// from their headers, and must not come out as a task called with no arguments.
pub(crate) fn call_from_v1(value: Value) -> Result<TaskCall, BodyError> {
    let Value::Object(mut map) = value else {
        return Err(BodyError::Malformed(
            "protocol 1 body is not a mapping".into(),
        ));
    };
    if !map.get("task").is_some_and(Value::is_string) {
        return Err(BodyError::Malformed(
            "protocol 1 body has no task name: not a task message".into(),
        ));
    }
    let args = match map.remove("args") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(BodyError::Malformed("args is not a list".into())),
    };
    let kwargs = match map.remove("kwargs") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(BodyError::Malformed("kwargs is not a mapping".into())),
    };
    Ok(TaskCall {
        name: map.get("task").and_then(Value::as_str).map(str::to_owned),
        id: map.get("id").and_then(Value::as_str).map(str::to_owned),
        args,
        kwargs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_is_never_decoded() {
        let err = deserialize(Some("application/x-python-serialize"), b"\x80\x04\x95").unwrap_err();
        assert!(matches!(err, BodyError::Unsafe(_)));
    }

    #[test]
    fn yaml_tags_are_undecidable() {
        let err = deserialize(
            Some("application/x-yaml"),
            b"!!python/object/apply:os.system ['true']",
        );
        assert!(err.is_err());
        let ok = deserialize(Some("application/x-yaml"), b"- - 2\n  - 3\n- {}\n").unwrap();
        assert_eq!(ok, serde_json::json!([[2, 3], {}]));
    }

    #[test]
    fn protocol1_bodies_need_a_task_name() {
        let call = call_from_v1(serde_json::json!({"task": "app.add", "id": "x", "args": [2, 3]}));
        assert_eq!(call.unwrap().name.as_deref(), Some("app.add"));
        let pong = call_from_v1(serde_json::json!({"w4@vm": {"ok": "pong"}}));
        assert!(matches!(pong, Err(BodyError::Malformed(_))));
    }

    #[test]
    fn msgpack_decodes_to_json() {
        let bytes = [0x93, 0x92, 0x02, 0x03, 0x80, 0xc0];
        let v = deserialize(Some("application/x-msgpack"), &bytes).unwrap();
        assert_eq!(v, serde_json::json!([[2, 3], {}, null]));
    }
}
