//! The Celery/kombu Redis wire model, with no I/O.
//!
//! Everything celery-janitor knows about the bytes Celery 5.3+ and kombu 5.3+ leave in Redis lives
//! here, so it can be pinned by real captured fixtures (`tests/fixtures/`) without a server:
//!
//! * [`envelope`]: a queue-list element (protocol 1 and 2), read without touching the body;
//! * [`body`]: the safe decoders for task arguments (json, msgpack, yaml; pickle never);
//! * [`unacked`]: the `[envelope, exchange, routing_key]` values of kombu's `unacked` hash;
//! * [`result`]: `celery-task-meta-*` and saved group (`celery-taskset-meta-*`) values;
//! * [`keys`]: key names, prefixes, priority sub-lists and binding-set members;
//! * [`control`]: the remote-control broadcasts the janitor sends workers (revoke).

pub mod body;
pub mod control;
pub mod envelope;
pub mod keys;
pub mod result;
pub mod unacked;

pub use body::{BodyError, TaskCall};
pub use envelope::{Envelope, Protocol};
pub use keys::{BackendKey, BackendLayout, Binding, BrokerKey, BrokerLayout};
pub use result::{GroupMeta, ResultMeta, ResultValue};
pub use unacked::UnackedEntry;

/// Why a value could not be read as the Celery structure it should be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("unexpected shape: {0}")]
    Shape(&'static str),
}
