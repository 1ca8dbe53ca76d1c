//! Why the broker refused or failed, and the one table that turns each reason into the stable
//! code and HTTP status clients see.
//!
//! [`BrokerError::disposition`] is an exhaustive match with no `_` arm: a new variant does not
//! compile until someone decides its code and status. The HTTP layer and the metrics both read
//! codes from here and invent none of their own. Messages for server-side failures are generic;
//! the source chain goes to the operator's log only.

use crate::authz::DenyCode;
use crate::backend::BackendError;
use crate::chain::ChainError;
use crate::store::StoreError;

/// Why the broker refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The decision engine said no.
    #[error("{reason}")]
    Denied {
        /// Stable code.
        code: DenyCode,
        /// Human reason.
        reason: String,
        /// The request id under which the denial was recorded, if it was.
        request_id: Option<String>,
    },
    /// The client certificate could not be parsed.
    #[error("client certificate rejected: {0}")]
    BadCertificate(String),
    /// The client certificate chain did not validate.
    #[error("client certificate rejected: {code}: {0}", code = .0.code())]
    Chain(#[source] ChainError),
    /// The caller's role may not use this endpoint.
    #[error("the {actual} role may not {action}")]
    WrongRole {
        /// What the certificate says.
        actual: String,
        /// What was attempted.
        action: &'static str,
    },
    /// The body is valid JSON of the right shape, but a value is unacceptable.
    #[error("{0}")]
    InvalidRequest(String),
    /// No such execution (or not visible to this caller).
    #[error("no such execution request")]
    NotFound,
    /// No CRL for this issuer here: no such intermediate, or one whose key is not in this
    /// broker's device (an offline intermediate signs its own CRL).
    #[error("no CRL for issuer {0:?} here: not an intermediate whose key this broker can use")]
    NoCrlIssuer(String),
    /// The intermediate named for a CRL, or a CA above it, is revoked or expired: its CRL
    /// would be refused with it, and a fresh one would mislead a relying party that checks
    /// only the leaf's CRL. The root's CRL lists a revoked intermediate.
    #[error(
        "no CRL for issuer {name:?}: the CA {ca:?} of its chain is {why}; everything under it is \
         refused through the root's CRL (GET /v1/crl)"
    )]
    CrlIssuerInvalid {
        name: String,
        ca: String,
        why: &'static str,
    },
    /// The token was redeemed before.
    #[error("token already redeemed")]
    AlreadyRedeemed,
    /// A certificate of the path of the agent the token was issued to is revoked.
    #[error("the agent certificate the token was issued to (or one above it, serial {serial}) is revoked")]
    AgentRevoked {
        /// The revoked serial.
        serial: crate::serial::Serial,
    },
    /// The token is not one of ours, malformed, expired or for another broker.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token is of an older policy epoch than the broker's (`seb epoch bump`).
    #[error("the token is of policy epoch {epoch}; the broker is at epoch {current}")]
    StaleEpoch {
        /// The token's epoch.
        epoch: u64,
        /// The broker's.
        current: u64,
    },
    /// An outcome receipt does not check out (format, signature, executor).
    #[error("invalid receipt: {0}")]
    InvalidReceipt(String),
    /// The token of an outcome was not redeemed by the executor reporting it.
    #[error("the token was not redeemed by this executor")]
    NotRedeemedByCaller,
    /// An outcome was recorded for this token before.
    #[error("an outcome was already recorded for this token")]
    OutcomeAlreadyRecorded,
    /// The device failed: no token.
    #[error("HSM unavailable")]
    Hsm(#[source] BackendError),
    /// The store failed: no token.
    #[error("store unavailable")]
    Store(#[source] StoreError),
    /// The audit log cannot durably record the decision: no token.
    #[error("audit log unavailable")]
    AuditUnavailable(#[source] StoreError),
    /// The stored audit log no longer extends the checkpoint this broker signed last: no
    /// checkpoint, no token, no approval until it does (docs/AUDIT.md §4).
    #[error("{0}")]
    AuditDiverged(String),
    /// Issuance is frozen by the security team.
    #[error("issuance is frozen")]
    Frozen,
    /// The agent already has `limit` requests open for approval.
    #[error("{limit} requests of this agent already wait for approval")]
    TooManyPending {
        /// `[approvals] max_open_per_agent`.
        limit: usize,
    },
    /// The broker's attestation self-check failed or is too old: no token.
    #[error("attestation self-check not good: {0}")]
    Attestation(crate::attest::selfcheck::Refusal),
    /// The approver is not a member of the group the grant names.
    #[error("this request needs approvers of group {group:?}; the certificate is not in it")]
    WrongApprovalGroup {
        /// The group the grant names.
        group: String,
    },
    /// The approver is the requester (same certificate, key or subject).
    #[error("the requester cannot approve its own request")]
    SelfApproval,
    /// The approver was issued under an intermediate the requesting agent is not under: a CA
    /// delegated to issue approvers decides for its own agents only.
    #[error(
        "this approver was issued under the intermediate {intermediate:?}, which the requesting agent is not under: approvers from an intermediate decide only on requests of agents below that intermediate"
    )]
    ApproverOutOfScope {
        /// Subject of the approver's intermediate the agent's path lacks.
        intermediate: String,
    },
    /// The approver's certificate (or one above it) expires before the request's approval
    /// deadline: its approval could be counted in a token issued after it expired, which
    /// every verifier checking the approvers' paths at the token's `iat` would refuse.
    #[error(
        "your certificate path expires at {not_after} (Unix seconds), before this request's approval deadline {deadline}: an approval must stay valid until the token is issued; renew the certificate (`seb cert renew`) and approve again"
    )]
    ApproverExpiresFirst {
        /// When the approver's path expires.
        not_after: u64,
        /// The request's approval deadline.
        deadline: u64,
    },
    /// This approver already decided on the request; it counts once.
    #[error("this approver has already decided on the request; it counts once")]
    DuplicateApproval,
    /// The approval signature does not verify over the request's approval message.
    #[error("the approval signature does not verify over this request ({0})")]
    BadApprovalSignature(&'static str),
    /// The request is no longer open for decisions.
    #[error("the request is {0}; it takes no more decisions")]
    RequestClosed(&'static str),
    /// The request expired before the decision.
    #[error("the request expired before enough approvers decided")]
    RequestExpired,
    /// The token signing certificate is expired or not yet valid: every verifier would refuse
    /// what the broker signs. `seb rotate token` ends it.
    #[error(
        "the broker's token certificate is not valid now ({0}); no token was issued. The \
         security team renews it with `seb rotate token`"
    )]
    TokenCertificateInvalid(String),
    /// Internal invariant broken (encoding); no token.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a [`BrokerError`] reaches a client: HTTP status, stable code and a message that is safe
/// to show (no device or store internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// HTTP status code.
    pub status: u16,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Safe, human-readable message.
    pub message: String,
}

impl BrokerError {
    /// The stable code, as clients and metrics see it.
    pub fn code(&self) -> &'static str {
        self.disposition().code
    }

    /// Status, code and safe message: the one mapping (ARCHITECTURE §7).
    pub fn disposition(&self) -> Disposition {
        let (status, code, message) = match self {
            // A request the decision could not read (a number past what JSON carries exactly)
            // is malformed, as everywhere else `invalid_request` is.
            BrokerError::Denied {
                code: DenyCode::InvalidRequest,
                reason,
                ..
            } => (400, DenyCode::InvalidRequest.as_str(), reason.clone()),
            BrokerError::Denied { code, reason, .. } => (403, code.as_str(), reason.clone()),
            BrokerError::BadCertificate(m) => (403, "bad_certificate", m.clone()),
            BrokerError::Chain(e) => (403, "bad_certificate", format!("{}: {e}", e.code())),
            BrokerError::WrongRole { .. } => (403, "wrong_role", self.to_string()),
            BrokerError::InvalidRequest(m) => (400, "invalid_request", m.clone()),
            BrokerError::NotFound => (404, "not_found", self.to_string()),
            BrokerError::NoCrlIssuer(_) => (404, "unknown_crl_issuer", self.to_string()),
            BrokerError::CrlIssuerInvalid { .. } => (410, "crl_issuer_invalid", self.to_string()),
            BrokerError::AlreadyRedeemed => (409, "token_already_redeemed", self.to_string()),
            BrokerError::AgentRevoked { .. } => {
                (403, "agent_certificate_revoked", self.to_string())
            }
            BrokerError::InvalidToken(m) => (400, "invalid_token", format!("invalid token: {m}")),
            BrokerError::StaleEpoch { .. } => (403, "stale_epoch", self.to_string()),
            BrokerError::InvalidReceipt(m) => {
                (400, "invalid_receipt", format!("invalid receipt: {m}"))
            }
            BrokerError::NotRedeemedByCaller => (403, "not_redeemed_by_caller", self.to_string()),
            BrokerError::OutcomeAlreadyRecorded => {
                (409, "outcome_already_recorded", self.to_string())
            }
            BrokerError::Hsm(_) => (
                503,
                "hsm_unavailable",
                "the hardware security module is unavailable; no token was issued".into(),
            ),
            BrokerError::Store(_) => (
                503,
                "store_unavailable",
                "the broker's store is unavailable; nothing was issued, redeemed or recorded".into(),
            ),
            BrokerError::AuditUnavailable(_) => (
                503,
                "audit_unavailable",
                "the audit log cannot record the decision; nothing was issued, redeemed or recorded"
                    .into(),
            ),
            BrokerError::AuditDiverged(why) => (503, "audit_log_diverged", why.clone()),
            BrokerError::TokenCertificateInvalid(_) => {
                (503, "token_certificate_invalid", self.to_string())
            }
            BrokerError::Frozen => (
                503,
                "issuance_frozen",
                "issuance is frozen by the security team".into(),
            ),
            BrokerError::TooManyPending { limit } => (
                429,
                "too_many_pending",
                format!(
                    "{limit} requests of this agent already wait for approval (the most one agent \
                     may have open); wait for decisions or expiry"
                ),
            ),
            BrokerError::Attestation(reason) => (
                503,
                "attestation_failed",
                if matches!(reason, crate::attest::selfcheck::Refusal::Overdue(_)) {
                    "the broker's attestation self-check has not finished in time (the TPM does not answer); no token was issued".into()
                } else {
                    "the broker's attestation self-check failed (its boot state does not match the policy, or the TPM cannot be used; /healthz says which); no token was issued".into()
                },
            ),
            BrokerError::WrongApprovalGroup { .. } => {
                (403, "wrong_approval_group", self.to_string())
            }
            BrokerError::SelfApproval => (403, "self_approval", self.to_string()),
            BrokerError::ApproverOutOfScope { .. } => {
                (403, "approver_out_of_scope", self.to_string())
            }
            BrokerError::ApproverExpiresFirst { .. } => {
                (403, "approver_certificate_expiring", self.to_string())
            }
            BrokerError::DuplicateApproval => (409, "duplicate_approval", self.to_string()),
            BrokerError::BadApprovalSignature(_) => {
                (400, "bad_approval_signature", self.to_string())
            }
            BrokerError::RequestClosed(_) => (409, "request_closed", self.to_string()),
            BrokerError::RequestExpired => (409, "request_expired", self.to_string()),
            BrokerError::Internal(_) => (
                500,
                "internal_error",
                "internal error; no token was issued".into(),
            ),
        };
        Disposition {
            status,
            code,
            message,
        }
    }
}
