//! Values of kombu's `unacked` hash: `[envelope_object, exchange, routing_key]`.
//!
//! The field name is the message's delivery tag and the score in `unacked_index` is the time the
//! worker received it. The same shape is written by kombu 5.3, 5.5 and 5.7.

use serde_json::Value;

use crate::envelope::Envelope;
use crate::WireError;

#[derive(Debug, Clone, PartialEq)]
pub struct UnackedEntry {
    pub envelope: Envelope,
    pub exchange: String,
    pub routing_key: String,
}

impl UnackedEntry {
    pub fn parse(raw: &[u8]) -> Result<Self, WireError> {
        let value: Value =
            serde_json::from_slice(raw).map_err(|e| WireError::Json(e.to_string()))?;
        let Value::Array(parts) = value else {
            return Err(WireError::Shape("unacked value is not a JSON array"));
        };
        let [envelope, exchange, routing_key] = parts.as_slice() else {
            return Err(WireError::Shape("unacked value is not a 3-element array"));
        };
        // Very old kombu stored the envelope as a JSON string; accept both.
        let envelope = match envelope {
            Value::String(s) => Envelope::parse(s.as_bytes())?,
            other => Envelope::from_value(other)?,
        };
        Ok(UnackedEntry {
            envelope,
            exchange: exchange.as_str().unwrap_or_default().to_owned(),
            routing_key: routing_key.as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The queue a restore would push this message to, when that can be known without the
    /// binding tables (Celery's default routing publishes through exchange `""`).
    pub fn direct_queue(&self) -> Option<&str> {
        self.exchange
            .is_empty()
            .then_some(self.routing_key.as_str())
    }
}
