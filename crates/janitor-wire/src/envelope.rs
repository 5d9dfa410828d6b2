//! A kombu message envelope as it sits in a queue list or inside an `unacked` value.
//!
//! The envelope is always JSON, whatever the task serializer; only `body` (base64) depends on it.
//! Protocol 2 carries the task id and name in `headers`, so they are read without decoding the
//! body. Protocol 1 has empty headers: the id comes from `properties.correlation_id` and the name
//! only from a body that can be decoded safely.

use serde_json::{Map, Value};

use crate::body::{self, BodyError, TaskCall};
use crate::WireError;

/// Celery task message protocol.
///
/// Anything without the protocol-2 headers reads as [`Protocol::V1`], including kombu envelopes
/// that carry no task at all (remote-control broadcasts, control replies, events): check
/// [`Envelope::is_task`] before treating one as a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    V1,
    V2,
}

/// The parts of an envelope celery-janitor reads. The raw bytes are never re-serialized: any
/// removal compares against the exact bytes that were read.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub protocol: Protocol,
    /// Task id: `headers.id` (protocol 2) or `properties.correlation_id` (protocol 1).
    pub task_id: Option<String>,
    /// Task name from `headers.task` (protocol 2); `None` for protocol 1 until the body is decoded.
    pub task_name: Option<String>,
    pub eta: Option<String>,
    pub expires: Option<String>,
    pub retries: Option<i64>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// `properties.delivery_tag`: unique per publish, the field name in `unacked`.
    pub delivery_tag: Option<String>,
    pub priority: Option<i64>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub redelivered: bool,
    body: Option<String>,
    body_encoding: Option<String>,
}

fn str_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl Envelope {
    /// Parses the exact bytes of a queue-list element.
    pub fn parse(raw: &[u8]) -> Result<Self, WireError> {
        let value: Value =
            serde_json::from_slice(raw).map_err(|e| WireError::Json(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Reads an envelope that is already parsed (the first element of an `unacked` value).
    pub fn from_value(value: &Value) -> Result<Self, WireError> {
        let obj = value
            .as_object()
            .ok_or(WireError::Shape("envelope is not a JSON object"))?;
        let empty = Map::new();
        let headers = match obj.get("headers") {
            Some(Value::Object(h)) => h,
            None | Some(Value::Null) => &empty,
            Some(_) => return Err(WireError::Shape("envelope headers are not an object")),
        };
        let properties = match obj.get("properties") {
            Some(Value::Object(p)) => p,
            None | Some(Value::Null) => &empty,
            Some(_) => return Err(WireError::Shape("envelope properties are not an object")),
        };
        if !obj.contains_key("body") {
            return Err(WireError::Shape("envelope has no body"));
        }
        let delivery_info = properties
            .get("delivery_info")
            .and_then(Value::as_object)
            .unwrap_or(&empty);

        let header_id = str_field(headers, "id");
        let header_task = str_field(headers, "task");
        let protocol = if header_id.is_some() && header_task.is_some() {
            Protocol::V2
        } else {
            Protocol::V1
        };
        let task_id = match protocol {
            Protocol::V2 => header_id,
            Protocol::V1 => str_field(properties, "correlation_id"),
        };
        let redelivered = headers.get("redelivered").and_then(Value::as_bool) == Some(true)
            || delivery_info.get("redelivered").and_then(Value::as_bool) == Some(true);

        Ok(Envelope {
            protocol,
            task_id,
            task_name: header_task.filter(|_| protocol == Protocol::V2),
            eta: str_field(headers, "eta"),
            expires: str_field(headers, "expires"),
            retries: headers.get("retries").and_then(Value::as_i64),
            content_type: str_field(obj, "content-type"),
            content_encoding: str_field(obj, "content-encoding"),
            delivery_tag: str_field(properties, "delivery_tag"),
            priority: properties.get("priority").and_then(Value::as_i64),
            exchange: str_field(delivery_info, "exchange"),
            routing_key: str_field(delivery_info, "routing_key"),
            redelivered,
            body: obj.get("body").and_then(Value::as_str).map(str::to_owned),
            body_encoding: str_field(properties, "body_encoding"),
        })
    }

    /// Whether this envelope carries a Celery task: protocol-2 headers, or a protocol-1
    /// `correlation_id`. Remote-control broadcasts (`celery.pidbox`), control replies and events
    /// (`celeryev`) have neither; they are kombu messages with no task in them.
    pub fn is_task(&self) -> bool {
        self.protocol == Protocol::V2 || self.task_id.is_some()
    }

    /// Decodes the task call (`args`, `kwargs`, and for protocol 1 the name) with safe loaders
    /// only. Pickle and unknown content types are reported as [`BodyError::Unsafe`] /
    /// [`BodyError::Unsupported`], never decoded.
    pub fn decode_call(&self) -> Result<TaskCall, BodyError> {
        let body = self.body.as_deref().ok_or(BodyError::Missing)?;
        let bytes = match self.body_encoding.as_deref() {
            Some("base64") => body::decode_base64(body)?,
            // kombu always base64-encodes on Redis; a plain body is accepted as text.
            None | Some("") => body.as_bytes().to_vec(),
            Some(other) => return Err(BodyError::Unsupported(format!("body_encoding {other}"))),
        };
        let value = body::deserialize(self.content_type.as_deref(), &bytes)?;
        let mut call = match self.protocol {
            Protocol::V2 => body::call_from_v2(value)?,
            Protocol::V1 => body::call_from_v1(value)?,
        };
        if call.name.is_none() {
            call.name = self.task_name.clone();
        }
        if call.id.is_none() {
            call.id = self.task_id.clone();
        }
        Ok(call)
    }

    /// The task name, decoding a protocol-1 body if (and only if) that is safe.
    pub fn resolved_name(&self) -> Option<String> {
        if let Some(name) = &self.task_name {
            return Some(name.clone());
        }
        self.decode_call().ok().and_then(|c| c.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "app.add", "id": "aaaaaaaa-0000-0000-0000-000000000001", "eta": null, "retries": 0}, "properties": {"correlation_id": "aaaaaaaa-0000-0000-0000-000000000001", "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "e0781d8b-be12-4656-875c-18f253531835"}}"#;

    #[test]
    fn protocol2_headers_are_read_without_the_body() {
        let env = Envelope::parse(V2.as_bytes()).unwrap();
        assert_eq!(env.protocol, Protocol::V2);
        assert_eq!(
            env.task_id.as_deref(),
            Some("aaaaaaaa-0000-0000-0000-000000000001")
        );
        assert_eq!(env.task_name.as_deref(), Some("app.add"));
        assert_eq!(env.routing_key.as_deref(), Some("celery"));
        let call = env.decode_call().unwrap();
        assert_eq!(call.args, vec![Value::from(2), Value::from(3)]);
    }

    #[test]
    fn control_messages_are_not_tasks() {
        // `{"method": "revoke", ...}` as a remote-control broadcast sends it.
        let revoke = r#"{"body": "eyJtZXRob2QiOiAicmV2b2tlIiwgImFyZ3VtZW50cyI6IHsidGFza19pZCI6ICJ4In19", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"clock": 1, "expires": 1795836118.8747282}, "properties": {"delivery_info": {"exchange": "celery.pidbox", "routing_key": ""}, "priority": 0, "body_encoding": "base64", "delivery_tag": "8419d95e"}}"#;
        let env = Envelope::parse(revoke.as_bytes()).unwrap();
        assert!(!env.is_task());
        assert_eq!(env.task_id, None);
        assert!(matches!(env.decode_call(), Err(BodyError::Malformed(_))));
        assert_eq!(env.resolved_name(), None);
    }

    #[test]
    fn rejects_non_envelopes() {
        assert!(Envelope::parse(b"\x80\x04garbage").is_err());
        assert!(Envelope::parse(b"[1, 2]").is_err());
        assert!(Envelope::parse(br#"{"headers": {}}"#).is_err());
    }
}
