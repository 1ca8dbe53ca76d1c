//! The audit entries the stores write with their changes, built the same way whichever store
//! commits them (SQLite or PostgreSQL), and the canonical text an entry is stored as.

use std::time::SystemTime;

use super::{ApprovalOutcome, ApprovalRecord, RedeemOutcome, StoreError};
use crate::approval::Decision;
use crate::audit::entry::{CertRef, Entry, EntryKind};
use crate::serial::Serial;

/// The canonical JSON text an entry is stored as.
pub(crate) fn encode(entry: &Entry) -> Result<String, StoreError> {
    entry
        .to_canonical()
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| StoreError::Io {
            operation: "encode audit entry",
            source: "the entry has no canonical form".into(),
        })
}

fn cert(thumbprint: &str, serial: &str, subject: &str) -> Option<CertRef> {
    Some(CertRef {
        thumbprint: thumbprint.to_owned(),
        serial: serial.to_owned(),
        subject: subject.to_owned(),
    })
}

/// An approver's decision as posted, with the refusal (closed, expired, duplicate...) as
/// `code` when it was not recorded.
pub(crate) fn approval(a: &ApprovalRecord, outcome: &Result<ApprovalOutcome, StoreError>) -> Entry {
    let kind = match a.decision {
        Decision::Approve => EntryKind::ApprovalGiven,
        Decision::Reject => EntryKind::ApprovalRejected,
    };
    let mut e = Entry::new(kind, crate::time::unix_millis(a.at));
    e.request_id = Some(a.request_id.clone());
    let serial = a
        .approver_serials
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    e.cert = cert(&a.approver, &serial, &a.approver_subject);
    e.decision = Some(a.decision.as_str().to_owned());
    e.request_digest = Some(a.request_digest.clone()).filter(|d| !d.is_empty());
    e.detail = a.reason.clone();
    e.code = match outcome {
        Ok(ApprovalOutcome::Approved { .. } | ApprovalOutcome::Rejected) => None,
        Ok(ApprovalOutcome::Unknown) => Some("not_found".into()),
        Ok(ApprovalOutcome::Closed(_)) => Some("request_closed".into()),
        Ok(ApprovalOutcome::Expired) => Some("request_expired".into()),
        Ok(ApprovalOutcome::Duplicate) => Some("duplicate_approval".into()),
        Err(_) => Some("store_unavailable".into()),
    };
    e
}

/// The store's note of a request that expired unapproved.
pub(crate) fn expiry_note(request_id: &str) -> String {
    serde_json::json!({ "request_id": request_id }).to_string()
}

/// A request that expired waiting for its approvers.
pub(crate) fn approval_expired(request_id: &str, now: SystemTime) -> Entry {
    let mut e = Entry::new(EntryKind::ApprovalExpired, crate::time::unix_millis(now));
    e.request_id = Some(request_id.to_owned());
    e
}

/// The entry of an expiry sweep's write for `request_id`, by whether it closed the request:
/// `approval_expired`, or a void entry when a decision closed it first (the index reserved
/// for the write is filled either way).
pub(crate) fn expiry_entry(
    request_id: &str,
    now: SystemTime,
) -> Result<impl Fn(bool) -> String + Send + Clone + 'static, StoreError> {
    let expired = encode(&approval_expired(request_id, now))?;
    let mut void = Entry::new(EntryKind::Void, crate::time::unix_millis(now));
    void.detail = Some("an approval request closed before its expiry was recorded".into());
    let void = encode(&void)?;
    Ok(move |closed: bool| {
        if closed {
            expired.clone()
        } else {
            void.clone()
        }
    })
}

/// A granted request whose token never left (the device failed, the client went away).
pub(crate) fn issuance_failed(request_id: &str) -> Entry {
    let mut e = Entry::new(
        EntryKind::IssuanceFailed,
        crate::time::unix_millis(SystemTime::now()),
    );
    e.request_id = Some(request_id.to_owned());
    e
}

/// What a redemption's transaction found, before its time is read back.
pub(crate) enum Redemption {
    Unknown,
    Corrupt(String),
    AgentRevoked(Serial),
    AgentUnrecorded,
    Redeemed,
    /// Redeemed before, at these Unix seconds.
    Before(i64),
}

impl Redemption {
    /// Every attempt that reaches the store is logged: a replay, a token the broker has no
    /// record of, or one whose agent was revoked is what a SIEM should alert on.
    /// `request`: the token's request id and canonical request digest, when the store knows
    /// the token.
    pub(crate) fn entry(
        &self,
        jti: &str,
        executor: &CertRef,
        request: Option<&(String, String)>,
        time_ms: u64,
    ) -> Entry {
        let mut e = Entry::new(EntryKind::TokenRedeemed, time_ms);
        e.jti = Some(jti.to_owned());
        if let Some((request_id, request_digest)) = request {
            e.request_id = Some(request_id.clone());
            e.request_digest = Some(request_digest.clone());
        }
        e.cert = Some(executor.clone());
        e.code = match self {
            Redemption::Redeemed => None,
            Redemption::Unknown => Some("unknown_token".into()),
            Redemption::Before(_) => Some("token_already_redeemed".into()),
            Redemption::AgentRevoked(_) => Some("agent_certificate_revoked".into()),
            Redemption::AgentUnrecorded => Some("agent_unrecorded".into()),
            Redemption::Corrupt(_) => Some("store_corrupt".into()),
        };
        if let Redemption::AgentRevoked(serial) = self {
            e.detail = Some(format!("the agent's path holds revoked serial {serial}"));
        }
        e
    }

    pub(crate) fn outcome(self) -> Result<RedeemOutcome, StoreError> {
        Ok(match self {
            Redemption::Unknown => RedeemOutcome::Unknown,
            Redemption::Corrupt(e) => return Err(StoreError::Corrupt(e)),
            Redemption::AgentRevoked(serial) => RedeemOutcome::AgentRevoked { serial },
            Redemption::AgentUnrecorded => RedeemOutcome::AgentUnrecorded,
            Redemption::Redeemed => RedeemOutcome::Redeemed,
            Redemption::Before(first) => RedeemOutcome::AlreadyRedeemed {
                at: super::sqlite::rows::from_unix(first)?,
            },
        })
    }
}

/// A certificate seb's CA issued: who was given which role by which issuer key, until when.
pub(crate) fn certificate_issued(issued: &crate::store::IssuedCertificate, time_ms: u64) -> Entry {
    let mut e = Entry::new(EntryKind::CertificateIssued, time_ms);
    let thumbprint = crate::cert::Certificate::parse(issued.pem.as_bytes())
        .ok()
        .and_then(|c| c.thumbprint_sha256().ok())
        .map(|digest| crate::base64url::encode(&digest))
        .unwrap_or_default();
    e.cert = cert(&thumbprint, &issued.serial.to_string(), &issued.subject);
    e.detail = Some(format!(
        "role {}, issued by the key {:?}, valid until {}",
        issued.role,
        issued.issuer_label,
        crate::time::rfc3339(issued.not_after)
    ));
    e
}

/// A revocation (`already`: it was revoked before, nothing changed).
pub(crate) fn revocation(serial_hex: &str, reason: &str, already: bool, time_ms: u64) -> Entry {
    let mut e = Entry::new(EntryKind::CertificateRevoked, time_ms);
    e.cert = cert("", serial_hex, "");
    e.detail = Some(reason.to_owned());
    if already {
        e.code = Some("already_revoked".into());
    }
    e
}

/// An executor's receipt, which is the entry's detail so an auditor can verify it from the
/// log alone (`already`: an outcome for the token was recorded before).
pub(crate) fn outcome_reported(
    jti: &str,
    request_id: &str,
    executor: &CertRef,
    receipt_json: &str,
    already: bool,
    time_ms: u64,
) -> Entry {
    let mut e = Entry::new(EntryKind::OutcomeReported, time_ms);
    e.request_id = Some(request_id.to_owned());
    e.jti = Some(jti.to_owned());
    e.cert = Some(executor.clone());
    e.detail = Some(receipt_json.to_owned());
    if already {
        e.code = Some("outcome_already_recorded".into());
    }
    e
}

/// The policy epoch raised to `value`.
pub(crate) fn epoch_changed(value: i64, time_ms: u64) -> Entry {
    let mut e = Entry::new(EntryKind::EpochChanged, time_ms);
    e.epoch = u64::try_from(value).ok();
    e.detail = Some(format!("policy epoch raised to {value}"));
    e
}

/// Issuance frozen or unfrozen, with the team's reason.
pub(crate) fn freeze(frozen: bool, reason: &str, time_ms: u64) -> Entry {
    let kind = if frozen {
        EntryKind::Frozen
    } else {
        EntryKind::Unfrozen
    };
    let mut e = Entry::new(kind, time_ms);
    e.detail = (!reason.is_empty()).then(|| reason.to_owned());
    e
}
