//! Celery remote-control messages, as `celery control revoke` broadcasts them through kombu's
//! Redis pidbox: a kombu envelope whose base64 body names the control method.
//!
//! They live here, with the other bytes Celery reads, so the captured broadcast
//! (`tests/fixtures/celery-5.7/E_*`) pins them without a server; the engine only publishes them on
//! [`BrokerLayout::pidbox_channel`](crate::BrokerLayout::pidbox_channel).

use base64::Engine as _;
use serde::Serialize;

/// The exchange of Celery's remote-control broadcasts (`control_exchange` = `celery`).
pub const CONTROL_EXCHANGE: &str = "celery.pidbox";

/// The control command itself, carried base64-encoded in the envelope's body.
///
/// A struct, not a JSON map, so the field order (and so the bytes) can't depend on serde_json's
/// features.
#[derive(Serialize)]
struct Command<'a, A> {
    method: &'a str,
    arguments: A,
    /// `null`: every worker. The janitor never targets single workers.
    destination: Option<()>,
    pattern: Option<()>,
    matcher: Option<()>,
}

#[derive(Serialize)]
struct RevokeArguments<'a> {
    /// A list, which workers accept as well as one id, so one broadcast revokes a whole batch.
    task_id: &'a [String],
}

#[derive(Serialize)]
struct Envelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    /// Empty: `clock` is optional and `expires` is read only by reply collectors.
    headers: Headers,
    properties: Properties<'a>,
}

#[derive(Serialize)]
struct Headers {}

#[derive(Serialize)]
struct Properties<'a> {
    delivery_tag: &'a str,
    body_encoding: &'a str,
    delivery_info: DeliveryInfo<'a>,
}

#[derive(Serialize)]
struct DeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

/// The broadcast that makes every live worker discard `task_ids` (`celery control revoke`),
/// without `terminate`: a revoke stops a task before it starts, never one already running.
///
/// `delivery_tag` must be unique per message (a UUID); it is a parameter because this crate
/// has no randomness. Publish the bytes on [`BrokerLayout::pidbox_channel`]; `PUBLISH` answers
/// how many workers heard it.
///
/// [`BrokerLayout::pidbox_channel`]: crate::BrokerLayout::pidbox_channel
pub fn revoke(task_ids: &[String], delivery_tag: &str) -> Vec<u8> {
    broadcast(
        &Command {
            method: "revoke",
            arguments: RevokeArguments { task_id: task_ids },
            destination: None,
            pattern: None,
            matcher: None,
        },
        delivery_tag,
    )
}

fn broadcast<A: Serialize>(command: &Command<'_, A>, delivery_tag: &str) -> Vec<u8> {
    let body = serde_json::to_vec(command).expect("a control command always serializes");
    let envelope = Envelope {
        body: base64::engine::general_purpose::STANDARD.encode(body),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers: Headers {},
        properties: Properties {
            delivery_tag,
            body_encoding: "base64",
            delivery_info: DeliveryInfo {
                exchange: CONTROL_EXCHANGE,
                routing_key: "",
            },
        },
    };
    serde_json::to_vec(&envelope).expect("an envelope always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_bytes_are_compact_json_in_a_fixed_order() {
        let ids = ["a".to_owned(), "b".to_owned()];
        let body = r#"{"method":"revoke","arguments":{"task_id":["a","b"]},"destination":null,"pattern":null,"matcher":null}"#;
        let expected = format!(
            r#"{{"body":"{}","content-encoding":"utf-8","content-type":"application/json","headers":{{}},"properties":{{"delivery_tag":"tag-1","body_encoding":"base64","delivery_info":{{"exchange":"celery.pidbox","routing_key":""}}}}}}"#,
            base64::engine::general_purpose::STANDARD.encode(body)
        );
        assert_eq!(String::from_utf8(revoke(&ids, "tag-1")).unwrap(), expected);
    }

    /// The engine built this envelope by hand with `serde_json::json!` (insertion order kept by
    /// the workspace's `preserve_order`); the typed one must send the same bytes.
    #[test]
    fn revoke_bytes_equal_the_engines_hand_built_envelope() {
        let ids = vec![
            "dddddddd-0000-0000-0000-000000000002".to_owned(),
            "x\"y".to_owned(),
        ];
        let body = serde_json::json!({
            "method": "revoke",
            "arguments": {"task_id": ids},
            "destination": null, "pattern": null, "matcher": null,
        });
        let envelope = serde_json::json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body.to_string().as_bytes()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_tag": "8419d95e-3430-44c1-bda5-d08abc432e60",
                "body_encoding": "base64",
                "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            },
        });
        assert_eq!(
            revoke(&ids, "8419d95e-3430-44c1-bda5-d08abc432e60"),
            envelope.to_string().into_bytes()
        );
    }

    #[test]
    fn an_empty_revoke_is_still_well_formed() {
        let env: serde_json::Value = serde_json::from_slice(&revoke(&[], "t")).unwrap();
        assert!(env["body"].is_string());
    }
}
