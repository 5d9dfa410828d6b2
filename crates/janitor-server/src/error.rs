//! The API's one error shape, `{"error": {"code": "…", "message": "…"}}`, and the mapping of the
//! engine's typed errors to HTTP statuses. Every message is scrubbed of the configured secrets
//! before it leaves the process.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use janitor_engine::{EngineError, Holder};
use serde::Serialize;

use crate::json::pretty;

/// An error answer: status, a stable machine-readable code, a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Who holds the run lock (`busy` only).
    pub holder: Option<Box<LockHolder>>,
    /// The run the error is about (a run that stopped partway).
    pub run_id: Option<String>,
    /// Seconds to wait before trying again (`too_many_requests`).
    pub retry_after: Option<u64>,
}

/// Who holds the run lock, as a `busy` error tells it (the lock's compare-and-set token stays
/// private).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LockHolder {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339 time the lock was taken.
    pub since: String,
}

impl From<&Holder> for LockHolder {
    fn from(h: &Holder) -> Self {
        LockHolder {
            run_id: h.run_id.clone(),
            host: h.host.clone(),
            pid: h.pid,
            since: h.since.clone(),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `unauthorized`, `forbidden`, `busy`, `bad_request`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `too_many_requests`, `timeout`,
    /// `redis_unreachable`, `database_unreachable`, `interrupted`, `internal`.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockHolder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            holder: None,
            run_id: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many failed authentications from this address; try again later",
            )
        }
    }

    /// The engine's error, by kind: busy 409, unreachable 503, bad input 400, else 500.
    /// `scrub` hides the configured secrets in the message.
    pub fn from_engine(e: &EngineError, scrub: &dyn Fn(&str) -> String) -> Self {
        let message = scrub(&e.to_string());
        let run_id = match e {
            EngineError::PartialRun { run_id, .. } => Some(run_id.clone()),
            _ => None,
        };
        let (status, code) = if e.is_redis_connection() {
            (StatusCode::SERVICE_UNAVAILABLE, "redis_unreachable")
        } else if e.is_database_connection() {
            (StatusCode::SERVICE_UNAVAILABLE, "database_unreachable")
        } else {
            match e.root() {
                EngineError::Busy { .. } => (StatusCode::CONFLICT, "busy"),
                EngineError::InvalidOption(_)
                | EngineError::BadCursor { .. }
                | EngineError::BadArchiveCursor { .. }
                | EngineError::PurgeTooLarge { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
                EngineError::Interrupted => (StatusCode::SERVICE_UNAVAILABLE, "interrupted"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            }
        };
        let holder = match e.root() {
            EngineError::Busy {
                holder: Some(h), ..
            } => Some(Box::new(LockHolder::from(&**h))),
            _ => None,
        };
        ApiError {
            holder,
            run_id,
            ..Self::new(status, code, message)
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                holder: self.holder.as_deref().cloned(),
                run_id: self.run_id.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = pretty(self.status, &self.body());
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(e: EngineError) -> ApiError {
        ApiError::from_engine(&e, &|s| s.replace("hunter2", "****"))
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let busy = mapped(EngineError::Busy {
            key: "celery-janitor:lock".into(),
            holder: Some(Box::new(Holder {
                host: "h".into(),
                pid: 7,
                run_id: "r1".into(),
                since: "2026-01-01T00:00:00Z".into(),
                token: "secret-token".into(),
            })),
            expires_in_ms: Some(20_000),
            stale: false,
        });
        assert_eq!((busy.status, busy.code), (StatusCode::CONFLICT, "busy"));
        let body = serde_json::to_string(&busy.body()).unwrap();
        assert!(body.contains("\"run_id\":\"r1\"") && body.contains("2026-01-01T00:00:00Z"));
        assert!(!body.contains("secret-token"), "{body}");

        let redis = mapped(EngineError::RedisUnavailable {
            url: "redis://****@h".into(),
            message: "refused hunter2".into(),
        });
        assert_eq!(redis.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(redis.code, "redis_unreachable");
        assert!(!redis.message.contains("hunter2"));

        let db = mapped(EngineError::DatabaseUnavailable {
            url: "x".into(),
            message: "y".into(),
        });
        assert_eq!(db.code, "database_unreachable");

        let bad = mapped(EngineError::BadCursor {
            cursor: "x".into(),
            reason: "no",
        });
        assert_eq!(
            (bad.status, bad.code),
            (StatusCode::BAD_REQUEST, "bad_request")
        );

        let partial = mapped(EngineError::PartialRun {
            run_id: "r2".into(),
            changed: 3,
            in_doubt: false,
            source: Box::new(EngineError::Interrupted),
        });
        assert_eq!(partial.code, "interrupted");
        assert_eq!(partial.run_id.as_deref(), Some("r2"));
        assert_eq!(mapped(EngineError::LockLost).code, "internal");
    }
}
