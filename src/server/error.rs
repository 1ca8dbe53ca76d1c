//! The HTTP error contract: `{"error":{"code","message"}}` with a stable snake_case code.
//!
//! Every broker error maps to a status and code in one exhaustive match (no `_` arm), so a
//! new variant forces a decision. Server-side failures get a generic message; the full chain
//! goes to the log with the request id, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::broker::{error_code, BrokerError};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Safe, human-readable message.
    pub message: String,
}

impl ApiError {
    /// A client error with its own code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let code = error_code(&e);
        let (status, message) = match &e {
            BrokerError::Denied { reason, .. } => (StatusCode::FORBIDDEN, reason.clone()),
            BrokerError::BadCertificate(m) => (StatusCode::FORBIDDEN, m.clone()),
            BrokerError::WrongRole { .. } => (StatusCode::FORBIDDEN, e.to_string()),
            BrokerError::InvalidRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            BrokerError::NotFound => (StatusCode::NOT_FOUND, e.to_string()),
            BrokerError::AlreadyRedeemed => (StatusCode::CONFLICT, e.to_string()),
            BrokerError::InvalidToken(m) => {
                (StatusCode::BAD_REQUEST, format!("invalid token: {m}"))
            }
            BrokerError::Hsm(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the hardware security module is unavailable; no token was issued".into(),
            ),
            BrokerError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker's store is unavailable; no token was issued".into(),
            ),
            BrokerError::Frozen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "issuance is frozen by the security team".into(),
            ),
            BrokerError::Attestation(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker's attestation self-check does not match its reference measurements; no token was issued".into(),
            ),
            BrokerError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; no token was issued".into(),
            ),
        };
        if status.is_server_error() {
            tracing::error!(code, error = %ErrorChain(&e), "request failed");
        } else {
            tracing::info!(code, error = %e, "request refused");
        }
        Self {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Displays an error with its whole source chain, for the operator's log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
