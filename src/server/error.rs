//! The HTTP error contract: `{"error":{"code","message"}}` with a stable snake_case code.
//!
//! Codes and statuses are decided in two exhaustive matches and nowhere else: the broker's
//! refusals in [`BrokerError::disposition`], and the HTTP layer's own (body, rate limit,
//! routing, time limit) in [`HttpError`] below. Handlers build typed errors and never spell a
//! code. Server-side failures get a generic message; the full chain goes to the log with the
//! request id, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::broker::BrokerError;

/// Refusals made by the HTTP layer before or around the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The per-certificate (or per-endpoint) rate limit was hit.
    RateLimited {
        /// What was limited, for the message.
        what: &'static str,
    },
    /// The body is larger than `server.max_body_bytes`.
    BodyTooLarge,
    /// The body could not be read.
    UnreadableBody,
    /// The body has a content or transfer coding the server does not decode.
    UnsupportedEncoding,
    /// A request body that is not declared `application/json`.
    UnsupportedMediaType,
    /// The body is not acceptable JSON (syntax, duplicate keys, depth, numbers).
    MalformedJson(String),
    /// The JSON does not have the expected fields.
    InvalidBody(String),
    /// `nonce` is missing, not hex or of the wrong length.
    InvalidNonce,
    /// The query string is not one the route takes (`status=pending` for listings).
    InvalidQuery,
    /// The broker has no `[attestation]`.
    AttestationNotConfigured,
    /// The TPM could not produce a quote.
    QuoteFailed,
    /// The TPM is busy (the self-check goes first); the caller may retry.
    AttestationBusy,
    /// The client did not send its whole body within `server.request_timeout`.
    RequestTimeout,
    /// The request did not finish within `server.request_timeout`.
    Timeout,
    /// No route has this path.
    NoSuchEndpoint,
    /// The route does not take this method.
    MethodNotAllowed,
    /// The route has no entry in the access table (`server::ROUTES`): refused, never open.
    NoAccessRule,
    /// `/healthz`: a readiness check failed; the message names the first one.
    NotReady(String),
}

impl HttpError {
    fn disposition(&self) -> (StatusCode, &'static str, String) {
        match self {
            HttpError::RateLimited { what } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {what}; slow down"),
            ),
            HttpError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this server accepts".into(),
            ),
            HttpError::UnsupportedEncoding => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                "the body's Content-Encoding or Transfer-Encoding is not supported (send plain \
                 JSON, chunked or with a Content-Length)"
                    .into(),
            ),
            HttpError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a request body must be JSON, sent with Content-Type: application/json".into(),
            ),
            HttpError::UnreadableBody => (
                StatusCode::BAD_REQUEST,
                "bad_body",
                "cannot read the request body".into(),
            ),
            HttpError::MalformedJson(e) => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not acceptable JSON: {e}"),
            ),
            HttpError::InvalidBody(e) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the body does not have the expected fields: {e}"),
            ),
            HttpError::InvalidNonce => (
                StatusCode::BAD_REQUEST,
                "invalid_nonce",
                format!(
                    "nonce must be {} to {} bytes in hex",
                    crate::attest::MIN_NONCE,
                    crate::attest::MAX_NONCE
                ),
            ),
            HttpError::InvalidQuery => (
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "the query string is not one this endpoint takes (docs/API.md lists each \
                 route's parameters)"
                    .into(),
            ),
            HttpError::AttestationNotConfigured => (
                StatusCode::NOT_FOUND,
                "attestation_not_configured",
                "this broker does not attest (no [attestation] in its configuration)".into(),
            ),
            HttpError::QuoteFailed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "attestation_failed",
                "the TPM could not produce a quote".into(),
            ),
            HttpError::AttestationBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "attestation_busy",
                "the TPM is busy with the broker's own attestation; try again in a second".into(),
            ),
            HttpError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".into(),
            ),
            HttpError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; no token was issued".into(),
            ),
            HttpError::NoSuchEndpoint => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint".into(),
            ),
            HttpError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method".into(),
            ),
            HttpError::NoAccessRule => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error".into(),
            ),
            HttpError::NotReady(failing) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                failing.clone(),
            ),
        }
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Safe, human-readable message.
    pub message: String,
    /// Made by the HTTP layer (an [`HttpError`]), which the broker's metrics do not see.
    http_layer: bool,
    /// The request a denial was recorded under (`GET /v1/executions/{id}`, the audit log).
    request_id: Option<String>,
}

/// Marks a response as an [`HttpError`] refusal, for the request counter.
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpRefusal {
    /// The refusal's code.
    pub(super) code: &'static str,
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        let (status, code, message) = e.disposition();
        tracing::info!(code, %message, "request refused");
        Self {
            status,
            code,
            message,
            http_layer: true,
            request_id: None,
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let disposition = e.disposition();
        let request_id = match &e {
            BrokerError::Denied { request_id, .. } => request_id.clone(),
            _ => None,
        };
        let status =
            StatusCode::from_u16(disposition.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = disposition.code, error = %ErrorChain(&e), "request failed");
        } else {
            tracing::info!(code = disposition.code, error = %e, "request refused");
        }
        Self {
            status,
            code: disposition.code,
            message: disposition.message,
            http_layer: false,
            request_id,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(id) = self.request_id {
            body["error"]["request_id"] = json!(id);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.http_layer {
            response
                .extensions_mut()
                .insert(HttpRefusal { code: self.code });
        }
        response
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
