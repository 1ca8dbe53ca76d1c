//! Why the executor refused or failed, and the one exhaustive mapping to an HTTP status and a
//! stable code (no `_` arm: a new variant needs a decision).

use std::path::PathBuf;

use crate::verify::VerifyError;

/// A configuration that cannot be used: the executor does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid executor configuration: {0}")]
    Invalid(String),
}

/// Why a run was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The body is not `{token, params}` as required.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The body is not JSON, or JSON another parser could read differently (a duplicate key,
    /// deep nesting): the broker's code for the same.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is larger than the limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// The caller's certificate does not chain to the pinned root, or is not valid now.
    #[error("client certificate refused: {0}")]
    BadCertificate(String),
    /// The caller's certificate is valid but not an agent's (an executor, an approver...).
    #[error("only agents may run actions here; the client certificate's role is {0}")]
    WrongRole(String),
    /// The token did not verify (signature, chain, lifetime, epoch, action, binding, approvals).
    #[error("token refused: {0}")]
    TokenRefused(#[source] VerifyError),
    /// The token's `att` is missing or older than the executor's policy allows.
    #[error("token refused: {0}")]
    AttestationStale(String),
    /// No action is mapped to the token's operation and resource.
    #[error("no action is mapped to operation {operation:?} on {resource:?}")]
    NoAction {
        /// Operation.
        operation: String,
        /// Resource.
        resource: String,
    },
    /// The parameters do not fit the action's template.
    #[error("parameters refused: {0}")]
    ParamsRefused(String),
    /// The broker refused the redemption (already redeemed, revoked, stale epoch...).
    #[error("the broker refused the redemption: {code}: {message}")]
    RedeemRefused {
        /// HTTP status from the broker.
        status: u16,
        /// The broker's code.
        code: String,
        /// The broker's message.
        message: String,
    },
    /// The broker could not be reached or answered nonsense: nothing ran.
    #[error("the broker is unavailable: {0}")]
    BrokerUnavailable(String),
    /// The token was redeemed and then the action failed: it could not start, or its
    /// result is unknown. A receipt says so (`exit_code` -2) and was reported.
    #[error("the action failed after its token was redeemed; its outcome is unknown")]
    OutcomeUnknown {
        /// The signed receipt of the failed run.
        receipt: Box<crate::receipt::Receipt>,
        /// Whether the broker recorded it.
        recorded: bool,
    },
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExecError {
    /// HTTP status and stable code: the one mapping.
    pub fn disposition(&self) -> (u16, String) {
        let (status, code): (u16, &str) = match self {
            ExecError::InvalidRequest(_) => (400, "invalid_request"),
            ExecError::MalformedJson(_) => (400, "malformed_json"),
            ExecError::BodyTooLarge => (413, "body_too_large"),
            ExecError::BadCertificate(_) => (403, "bad_certificate"),
            ExecError::WrongRole(_) => (403, "wrong_role"),
            ExecError::TokenRefused(e) => (403, e.code()),
            ExecError::AttestationStale(_) => (403, "attestation_stale"),
            ExecError::NoAction { .. } => (403, "no_action"),
            ExecError::ParamsRefused(_) => (400, "params_refused"),
            ExecError::RedeemRefused { status, code, .. } => {
                let status = if *status == 409 { 409 } else { 403 };
                return (status, code.clone());
            }
            ExecError::BrokerUnavailable(_) => (502, "broker_unavailable"),
            ExecError::OutcomeUnknown { .. } => (500, "action_failed"),
            ExecError::Internal(_) => (500, "internal_error"),
        };
        (status, code.to_owned())
    }
}
