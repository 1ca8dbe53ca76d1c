//! Why a token or a trust bundle was refused. Every variant has a stable snake_case code
//! ([`VerifyError::code`]) that executors log and match on, and carries the context a human
//! needs (webpki style: `Expired { now, exp }`), never an I/O type.

use crate::chain::ChainError;
use crate::token::TOKEN_TYPE;

/// Why a token (or a trust bundle) was refused. [`VerifyError::code`] is stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The trust bundle is unusable.
    #[error("trust bundle: {reason}")]
    TrustBundle {
        /// What is wrong.
        reason: String,
    },
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not three base64url parts, or a header that is not the expected JSON.
    #[error("malformed token{}: {reason}", if *part == "token" { String::new() } else { format!(" {part}") })]
    Malformed {
        /// `token`, `header`, `claims` or `signature`.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `alg` is not ES256 or ES384 (`none`, HMAC, RSA... are never accepted).
    #[error("unsupported algorithm {alg:?} (seb tokens use ES384 or ES256)")]
    UnsupportedAlgorithm {
        /// The header's `alg`.
        alg: String,
    },
    /// `typ` is not `seb-exec+jwt`.
    #[error("token type {typ:?} is not {TOKEN_TYPE:?}")]
    WrongType {
        /// The header's `typ`.
        typ: String,
    },
    /// No certificate in the trust bundle has this thumbprint.
    #[error(
        "no certificate in the trust bundle has kid {kid:?}: trust the broker's whole bundle \
         (GET /v1/trust: root, token and audit certificates), not the root alone, and fetch it \
         again after a `seb rotate token`"
    )]
    UnknownKey {
        /// The header's `kid`.
        kid: String,
    },
    /// The token certificate does not chain to a root of the bundle.
    #[error("the token certificate does not chain to a trusted root ({}): {source}", source.code())]
    UntrustedCertificate {
        /// Why path validation failed.
        #[source]
        source: ChainError,
    },
    /// A certificate on the token certificate's path has expired.
    #[error("certificate {subject:?} expired at {not_after} (now {now})")]
    CertificateExpired {
        /// Its subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notAfter, Unix seconds.
        not_after: u64,
    },
    /// A certificate on the token certificate's path is not valid yet.
    #[error("certificate {subject:?} is not valid before {not_before} (now {now})")]
    CertificateNotYetValid {
        /// Its subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notBefore, Unix seconds.
        not_before: u64,
    },
    /// The certificate named by `kid` may not sign tokens.
    #[error("certificate {subject:?} may not sign tokens: {reason}")]
    NotATokenCertificate {
        /// Its subject.
        subject: String,
        /// Why not.
        reason: &'static str,
    },
    /// The certificate named by `kid` is certified for another key purpose (the audit key's
    /// certificate, say), for several, or for none.
    #[error("certificate {subject:?} may not sign tokens: {reason}")]
    WrongKeyPurpose {
        /// Its subject.
        subject: String,
        /// What it is certified for instead.
        reason: String,
    },
    /// The certificate named by `kid` is issued by an intermediate CA: only the root certifies
    /// the broker's token key.
    #[error("token certificate {subject:?} is issued by {issuer:?}, not directly by the root")]
    NotIssuedByRoot {
        /// Its subject.
        subject: String,
        /// The intermediate that issued it.
        issuer: String,
    },
    /// `alg` does not fit the key's curve.
    #[error("algorithm {alg} does not fit the token key's curve {curve}")]
    AlgorithmKeyMismatch {
        /// The header's `alg`.
        alg: String,
        /// `P-256` or `P-384`.
        curve: &'static str,
    },
    /// The signature does not verify (or is not a raw `r‖s` of the right length).
    #[error("the token signature does not verify")]
    BadSignature,
    /// The signature verifies but is the high-S spelling `(r, n − s)`, which the broker never
    /// publishes.
    #[error("the signature is the high-S form (r, n - s); the broker signs only low-S")]
    NonCanonicalSignature,
    /// The claims are not the claims of a seb token (missing, extra or mistyped fields).
    #[error("invalid claims: {reason}")]
    InvalidClaims {
        /// What is wrong.
        reason: String,
    },
    /// `nbf` is later than now plus the leeway.
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// Now, Unix seconds.
        now: u64,
        /// The token's nbf.
        nbf: u64,
    },
    /// `exp` is not after now.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Now, Unix seconds.
        now: u64,
        /// The token's exp.
        exp: u64,
    },
    /// The lifetime claims do not make sense, or exceed the cap.
    #[error("invalid token lifetime: {reason}")]
    InvalidLifetime {
        /// What is wrong.
        reason: String,
    },
    /// The policy epoch is older than the caller's minimum.
    #[error("token epoch {epoch} is older than the minimum {min_epoch}")]
    StaleEpoch {
        /// The token's epoch.
        epoch: u64,
        /// The caller's minimum.
        min_epoch: u64,
    },
    /// Not exactly one `seb_execution` authorization detail.
    #[error("invalid authorization_details: {reason}")]
    InvalidAuthorizationDetails {
        /// What is wrong.
        reason: String,
    },
    /// The token names another issuer.
    #[error("token issuer {token:?} is not the expected {expected:?}")]
    WrongIssuer {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes another operation.
    #[error("token authorizes operation {token:?}, not {expected:?}")]
    WrongOperation {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes another resource.
    #[error("token authorizes resource {token:?}, not {expected:?}")]
    WrongResource {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes other parameters.
    #[error("token authorizes parameters with digest {token}, the given parameters digest to {expected}")]
    WrongParams {
        /// base64url SHA-384 of the JCS of the expected parameters.
        expected: String,
        /// The token's params_digest.
        token: String,
    },
    /// The expected parameters are not strict JSON (duplicate keys, depth, numbers), not an
    /// object, or have no canonical form.
    #[error("the expected parameters are not acceptable JSON: {reason}")]
    InvalidParams {
        /// Why.
        reason: String,
    },
    /// The token is bound to another agent certificate.
    #[error("token is bound to certificate {token}, not the presented {presented}")]
    WrongCertificate {
        /// x5t#S256 of the presented certificate.
        presented: String,
        /// The token's cnf.x5t#S256.
        token: String,
    },
    /// The approval claims do not fit the authorization detail (approvals in a token that
    /// needed none, a required count without a group...).
    #[error("invalid approvals: {reason}")]
    InvalidApprovals {
        /// What is wrong.
        reason: String,
    },
    /// No given approver certificate has this thumbprint.
    #[error(
        "no given approver certificate has thumbprint {x5t} (pass the approvers' certificates)"
    )]
    UnknownApprover {
        /// The approval's `x5t#S256`.
        x5t: String,
    },
    /// An approver certificate does not chain to a root of the trust bundle.
    #[error("approver certificate {subject:?} does not chain to a trusted root ({}): {source}", source.code())]
    UntrustedApprover {
        /// Its subject.
        subject: String,
        /// Why path validation failed.
        #[source]
        source: ChainError,
    },
    /// An approval's certificate is not an approver certificate.
    #[error("certificate {subject:?} is not an approver certificate")]
    NotAnApprover {
        /// Its subject.
        subject: String,
    },
    /// An approver certificate whose role an intermediate CA above it may not issue
    /// (`sebIssuableRoles`): it approves nothing.
    #[error("approver certificate {subject:?} does not count: {reason}")]
    RoleNotDelegated {
        /// Its subject.
        subject: String,
        /// Which intermediate does not delegate the role.
        reason: String,
    },
    /// An approver is not in the group the grant names.
    #[error("approver {subject:?} is not in approver group {group:?}")]
    WrongApprovalGroup {
        /// The approver's subject.
        subject: String,
        /// The group the token names.
        group: String,
    },
    /// An approver is the agent the token is bound to (same certificate, key or subject).
    #[error("approver {subject:?} is the requesting agent")]
    SelfApproval {
        /// The approver's subject.
        subject: String,
    },
    /// One approver (certificate, key or subject) appears twice.
    #[error("approver {subject:?} is counted twice")]
    DuplicateApprover {
        /// The approver's subject.
        subject: String,
    },
    /// An approval signature does not verify over the token's approval message.
    #[error("the approval signature of {subject:?} does not verify over this token's request")]
    BadApprovalSignature {
        /// The approver's subject.
        subject: String,
    },
    /// Fewer valid approvals than the grant requires.
    #[error("{valid} valid approvals, the grant requires {required}")]
    ApprovalQuorumNotMet {
        /// Required by the token (or the agent's grant).
        required: u32,
        /// Valid approvals in the token.
        valid: u32,
    },
}

impl VerifyError {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TrustBundle { .. } => "invalid_trust_bundle",
            VerifyError::TooLarge { .. } => "token_too_large",
            VerifyError::Malformed { .. } => "malformed_token",
            VerifyError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            VerifyError::WrongType { .. } => "wrong_token_type",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::UntrustedCertificate { .. } => "untrusted_token_certificate",
            VerifyError::CertificateExpired { .. } => "certificate_expired",
            VerifyError::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            VerifyError::NotATokenCertificate { .. } => "not_a_token_certificate",
            VerifyError::WrongKeyPurpose { .. } => "wrong_key_purpose",
            VerifyError::NotIssuedByRoot { .. } => "not_issued_by_root",
            VerifyError::AlgorithmKeyMismatch { .. } => "algorithm_key_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::NonCanonicalSignature => "non_canonical_signature",
            VerifyError::InvalidClaims { .. } => "invalid_claims",
            VerifyError::NotYetValid { .. } => "token_not_yet_valid",
            VerifyError::Expired { .. } => "token_expired",
            VerifyError::InvalidLifetime { .. } => "invalid_lifetime",
            VerifyError::StaleEpoch { .. } => "stale_epoch",
            VerifyError::InvalidAuthorizationDetails { .. } => "invalid_authorization_details",
            VerifyError::WrongIssuer { .. } => "wrong_issuer",
            VerifyError::WrongOperation { .. } => "wrong_operation",
            VerifyError::WrongResource { .. } => "wrong_resource",
            VerifyError::WrongParams { .. } => "wrong_params",
            VerifyError::InvalidParams { .. } => "invalid_params",
            VerifyError::WrongCertificate { .. } => "wrong_certificate",
            VerifyError::InvalidApprovals { .. } => "invalid_approvals",
            VerifyError::UnknownApprover { .. } => "unknown_approver",
            VerifyError::UntrustedApprover { .. } => "untrusted_approver",
            VerifyError::NotAnApprover { .. } => "not_an_approver",
            VerifyError::RoleNotDelegated { .. } => "role_not_delegated",
            VerifyError::WrongApprovalGroup { .. } => "wrong_approval_group",
            VerifyError::SelfApproval { .. } => "self_approval",
            VerifyError::DuplicateApprover { .. } => "duplicate_approver",
            VerifyError::BadApprovalSignature { .. } => "bad_approval_signature",
            VerifyError::ApprovalQuorumNotMet { .. } => "approval_quorum_not_met",
        }
    }
}
