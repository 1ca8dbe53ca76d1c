//! Audit entries, format v1: one JSON object per event, serialized in RFC 8785 canonical form
//! (the bytes that are hashed into the log). docs/AUDIT.md is the reference for SIEMs.
//!
//! An entry never holds a secret, a token or raw request parameters: it names the certificate
//! (thumbprint, serial, subject), the request by its digests, the decision and the time.

use serde::{Deserialize, Serialize};

use crate::canonical;

/// The entry format version this code writes and reads.
pub const VERSION: u32 = 1;

/// What happened. The names are stable (snake_case); new kinds may be added, existing ones are
/// never renamed or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A request was granted and a token was signed for it (`jti`, `expires_at`).
    ExecutionGranted,
    /// A granted request's token did not leave the broker after all (the device failed, the
    /// client went away, the time limit passed).
    IssuanceFailed,
    /// A request was refused (`code`).
    ExecutionDenied,
    /// A request waits for approvals (`approvals_required`).
    ExecutionPending,
    /// An executor redeemed a token (`jti`; `cert` is the executor).
    TokenRedeemed,
    /// A certificate was revoked (`cert.serial`, `detail`: the reason).
    CertificateRevoked,
    /// The broker's attestation self-check failed (`detail`).
    AttestationFailed,
    /// The self-check is good again after a failure (`detail`).
    AttestationRecovered,
    /// The broker started (`detail`: version).
    BrokerStarted,
    /// The broker stopped cleanly.
    BrokerStopped,
    /// A placeholder: the write this index was reserved for failed on its own (`detail` names
    /// it), and nothing it describes happened. Keeps the log free of gaps.
    Void,
    /// An approver approved (`cert` is the approver; `code` when the approval was refused).
    ApprovalGiven,
    /// An approver rejected, closing the request (`code` when the rejection was refused).
    ApprovalRejected,
    /// A request waiting for approvals expired.
    ApprovalExpired,
    /// An executor reported its signed receipt for a redeemed token.
    OutcomeReported,
    /// A certificate issued by seb's CA (`seb cert issue`, `issue-ca`, `renew`, `cross-sign`,
    /// `seb rotate`, `seb attest enroll`): `cert` is the new certificate, `detail` its role,
    /// issuer and end.
    CertificateIssued,
    /// Issuance frozen (`seb freeze`).
    Frozen,
    /// Issuance unfrozen (`seb unfreeze`).
    Unfrozen,
    /// The policy epoch raised (`seb epoch bump`).
    EpochChanged,
    /// A broker key was rotated (`seb rotate`; `cert` is the new certificate, `detail` names
    /// the key and the generation it replaced).
    KeyRotated,
    /// A request on another route (a read: grants, status, trust, CRL, the log) refused for
    /// the caller's own certificate: revoked, expired, not yet valid, or not usable (`code`;
    /// `detail` is the method and route).
    AccessRefused,
}

impl EntryKind {
    /// Parses a stable name (and `attestation_restored`, the store's older event name).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "execution_granted" => EntryKind::ExecutionGranted,
            "issuance_failed" => EntryKind::IssuanceFailed,
            "execution_denied" => EntryKind::ExecutionDenied,
            "execution_pending" => EntryKind::ExecutionPending,
            "token_redeemed" => EntryKind::TokenRedeemed,
            "certificate_revoked" => EntryKind::CertificateRevoked,
            "certificate_issued" => EntryKind::CertificateIssued,
            "attestation_failed" => EntryKind::AttestationFailed,
            "attestation_recovered" | "attestation_restored" => EntryKind::AttestationRecovered,
            "broker_started" => EntryKind::BrokerStarted,
            "broker_stopped" => EntryKind::BrokerStopped,
            "void" => EntryKind::Void,
            "approval_given" => EntryKind::ApprovalGiven,
            "approval_rejected" => EntryKind::ApprovalRejected,
            "approval_expired" => EntryKind::ApprovalExpired,
            "outcome_reported" => EntryKind::OutcomeReported,
            "frozen" => EntryKind::Frozen,
            "unfrozen" => EntryKind::Unfrozen,
            "epoch_changed" => EntryKind::EpochChanged,
            "key_rotated" => EntryKind::KeyRotated,
            "access_refused" => EntryKind::AccessRefused,
            _ => return None,
        })
    }

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::ExecutionGranted => "execution_granted",
            EntryKind::IssuanceFailed => "issuance_failed",
            EntryKind::ExecutionDenied => "execution_denied",
            EntryKind::ExecutionPending => "execution_pending",
            EntryKind::TokenRedeemed => "token_redeemed",
            EntryKind::CertificateRevoked => "certificate_revoked",
            EntryKind::CertificateIssued => "certificate_issued",
            EntryKind::AttestationFailed => "attestation_failed",
            EntryKind::AttestationRecovered => "attestation_recovered",
            EntryKind::BrokerStarted => "broker_started",
            EntryKind::BrokerStopped => "broker_stopped",
            EntryKind::Void => "void",
            EntryKind::ApprovalGiven => "approval_given",
            EntryKind::ApprovalRejected => "approval_rejected",
            EntryKind::ApprovalExpired => "approval_expired",
            EntryKind::OutcomeReported => "outcome_reported",
            EntryKind::Frozen => "frozen",
            EntryKind::Unfrozen => "unfrozen",
            EntryKind::EpochChanged => "epoch_changed",
            EntryKind::KeyRotated => "key_rotated",
            EntryKind::AccessRefused => "access_refused",
        }
    }
}

/// The certificate an entry is about (the caller's, or the revoked one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRef {
    /// base64url SHA-256 of the certificate's DER (empty when only the serial is known).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub thumbprint: String,
    /// Serial number, upper-case hex as `seb cert list` shows it (empty when unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// Subject, RFC 4514 (empty when only the serial is known).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

/// One audit entry (format v1). Absent fields are omitted, never `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Always [`VERSION`].
    pub v: u32,
    /// What happened.
    pub kind: EntryKind,
    /// When (Unix milliseconds).
    pub time_ms: u64,
    /// The request id, for request-related entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The certificate concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertRef>,
    /// The operation asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The resource asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// base64url SHA-384 of the JCS request `{operation, resource, params}` (granted and
    /// pending requests; denials that got that far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// base64url SHA-384 of the JCS params: never the params themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_digest: Option<String>,
    /// `granted`, `denied` or `pending_approval`, for request entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The stable deny code, for denials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The token id, for grants and redemptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Token expiry (Unix seconds), for grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Approvals the grant requires, for pending requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    /// The policy epoch, for grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Free text for people (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why an entry could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Not JSON of the v1 shape.
    #[error("not a v1 audit entry: {0}")]
    Shape(String),
    /// A version this code does not know.
    #[error("audit entry version {0} is not supported")]
    Version(u32),
    /// The bytes are not the canonical (RFC 8785) form of the entry they hold.
    #[error("audit entry is not in canonical form")]
    NotCanonical,
}

impl Entry {
    /// An entry of `kind` at `time_ms`, every optional field empty. (Which broker wrote it is
    /// the log's origin, in every checkpoint.)
    pub fn new(kind: EntryKind, time_ms: u64) -> Self {
        Self {
            v: VERSION,
            kind,
            time_ms,
            request_id: None,
            cert: None,
            operation: None,
            resource: None,
            request_digest: None,
            params_digest: None,
            decision: None,
            code: None,
            jti: None,
            expires_at: None,
            approvals_required: None,
            epoch: None,
            detail: None,
        }
    }

    /// The canonical bytes that go into the log.
    pub fn to_canonical(&self) -> Result<Vec<u8>, EntryError> {
        let value = serde_json::to_value(self).map_err(|e| EntryError::Shape(e.to_string()))?;
        canonical::canonicalize(&value)
            .map(String::into_bytes)
            .map_err(|e| EntryError::Shape(e.to_string()))
    }

    /// Parses logged bytes, requiring version 1 and the canonical form.
    pub fn parse(bytes: &[u8]) -> Result<Self, EntryError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| EntryError::Shape(e.to_string()))?;
        match value.get("v").and_then(|v| v.as_u64()) {
            Some(1) => {}
            Some(v) => return Err(EntryError::Version(u32::try_from(v).unwrap_or(u32::MAX))),
            None => return Err(EntryError::Shape("no version".into())),
        }
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| EntryError::Shape(e.to_string()))?;
        if entry.to_canonical()? != bytes {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_canonical_form_and_omit_absent_fields() {
        let mut e = Entry::new(EntryKind::ExecutionDenied, 1_700_000_000_123);
        e.code = Some("operation_not_granted".into());
        let bytes = e.to_canonical().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"code":"operation_not_granted","kind":"execution_denied","time_ms":1700000000123,"v":1}"#
        );
        assert_eq!(Entry::parse(&bytes).unwrap(), e);
        // Same content, other key order: not the logged bytes.
        let reordered = br#"{"v":1,"code":"operation_not_granted","kind":"execution_denied","time_ms":1700000000123}"#;
        assert!(matches!(
            Entry::parse(reordered),
            Err(EntryError::NotCanonical)
        ));
        assert!(matches!(
            Entry::parse(br#"{"v":2,"kind":"x"}"#),
            Err(EntryError::Version(2))
        ));
    }
}
