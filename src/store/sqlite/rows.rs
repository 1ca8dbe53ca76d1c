//! Row mapping: how records are written to and read back from the `executions`, `issued`,
//! `revoked`, `approval_requests` and `approvals` tables, and times as stored (Unix seconds).
//! A stored value that does not parse is [`StoreError::Corrupt`].

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

use crate::approval::Decision;
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;
use crate::store::{
    ApprovalRecord, ExecutionRecord, ExecutionStatus, IssuedCertificate, PendingApproval,
    StoreError,
};

/// The columns of an execution row, in the order [`execution_row`] reads them.
pub(in crate::store) const EXECUTION_COLUMNS: &str =
    "request_id, agent, agent_subject, operation, resource, params,
    request_digest, status, deny_code, approvals_required, jti, token, expires_at, created_at,
    agent_serials";

/// An `executions` row as read (see [`EXECUTION_COLUMNS`]).
pub(in crate::store) type ExecutionRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    u32,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    Option<String>,
);

pub(super) fn execution_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRow> {
    ExecutionRow::try_from(r)
}

pub(in crate::store) fn execution_from_row(r: ExecutionRow) -> Result<ExecutionRecord, StoreError> {
    Ok(ExecutionRecord {
        request_id: r.0,
        agent: r.1,
        agent_subject: r.2,
        operation: r.3,
        resource: r.4,
        params: r.5,
        request_digest: r.6,
        status: parsed("execution status", &r.7, ExecutionStatus::parse)?,
        deny_code: r.8,
        approvals_required: r.9,
        jti: r.10,
        token: r.11,
        expires_at: r.12.map(from_unix).transpose()?,
        created_at: from_unix(r.13)?,
        agent_serials: parse_serials(r.14.as_deref())
            .map_err(StoreError::Corrupt)?
            .unwrap_or_default(),
    })
}

pub(super) fn insert_execution(c: &Connection, r: &ExecutionRecord) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO executions (request_id, agent, agent_subject, operation, resource,
            params, request_digest, status, deny_code, approvals_required, jti, token,
            expires_at, created_at, agent_serials)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        r.request_id,
        r.agent,
        r.agent_subject,
        r.operation,
        r.resource,
        r.params,
        r.request_digest,
        r.status.as_str(),
        r.deny_code,
        r.approvals_required,
        r.jti,
        r.token,
        r.expires_at.map(unix),
        unix(r.created_at),
        serials_text(&r.agent_serials),
    ])
    .map(|_| ())
}

/// Serials as stored in `executions.agent_serials`: canonical hex, space-separated.
pub(in crate::store) fn serials_text(serials: &[Serial]) -> String {
    serials
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The serials of `executions.agent_serials`; `None` for a row written before they were
/// kept (NULL or empty).
pub(in crate::store) fn parse_serials(text: Option<&str>) -> Result<Option<Vec<Serial>>, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    text.split(' ')
        .map(|s| Serial::parse(s).map_err(|e| format!("agent serial {s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The first of `serials` (a certificate path, leaf first) that is revoked, if any.
pub(super) fn first_revoked(
    c: &Connection,
    serials: &[Serial],
) -> rusqlite::Result<Option<Serial>> {
    let mut stmt = c.prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")?;
    for serial in serials {
        if stmt.exists([serial.as_bytes()])? {
            return Ok(Some(serial.clone()));
        }
    }
    Ok(None)
}

/// The serials of `approvals.approver_serials`: none for a row written before they were kept.
pub(in crate::store) fn approver_serials(text: Option<&str>) -> Result<Vec<Serial>, StoreError> {
    parse_serials(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| StoreError::Corrupt(format!("approval: {e}")))
}

/// An `issued` row (serial, subject, role, issuer label, notAfter, PEM) as read.
pub(super) fn issued_certificate(r: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedCertificate> {
    let not_after: i64 = r.get(4)?;
    Ok(IssuedCertificate {
        serial: {
            let bytes: Vec<u8> = r.get(0)?;
            Serial::from_magnitude(&bytes).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
            })?
        },
        subject: r.get(1)?,
        role: r.get(2)?,
        issuer_label: r.get(3)?,
        not_after: from_unix(not_after).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Integer, e.into())
        })?,
        pem: r.get(5)?,
    })
}

/// A `revoked` row (serial, reason, time) as read.
pub(in crate::store) fn revocation_from_row(
    (serial, reason, at): (Vec<u8>, String, i64),
) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        serial: Serial::from_magnitude(&serial).map_err(|e| {
            StoreError::Corrupt(format!("revoked serial {}: {e}", hex::encode(&serial)))
        })?,
        reason: parsed("revocation reason", &reason, Reason::parse)?,
        revoked_at: from_unix(at)?,
    })
}

/// A count or index as the databases' signed 64-bit integer.
pub(in crate::store) fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Unix seconds as SQLite's signed integer.
pub(in crate::store) fn unix(t: SystemTime) -> i64 {
    i64::try_from(crate::time::unix(t)).unwrap_or(i64::MAX)
}

pub(in crate::store) fn from_unix(secs: i64) -> Result<SystemTime, StoreError> {
    let secs = u64::try_from(secs).map_err(|_| StoreError::Corrupt("negative time".into()))?;
    Ok(crate::time::from_unix(secs))
}

/// An `approval_requests` row as read.
pub(in crate::store) type PendingRow = (String, String, i64, Option<String>, String, i64, i64);

pub(super) fn insert_pending(c: &Connection, p: &PendingApproval) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO approval_requests (request_id, approval_group, token_ttl, justification,
            agent_key, agent_not_after, expires_at, closed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
    )?
    .execute(params![
        p.request_id,
        p.group,
        i64::try_from(p.token_ttl.as_secs()).unwrap_or(i64::MAX),
        p.justification,
        p.agent_key,
        unix(p.agent_not_after),
        unix(p.expires_at),
    ])
    .map(|_| ())
}

pub(super) fn pending_row(
    c: &Connection,
    request_id: &str,
) -> rusqlite::Result<Option<PendingRow>> {
    c.prepare_cached(
        "SELECT request_id, approval_group, token_ttl, justification, agent_key,
            agent_not_after, expires_at
         FROM approval_requests WHERE request_id = ?1",
    )?
    .query_row([request_id], |r| PendingRow::try_from(r))
    .optional()
}

pub(in crate::store) fn pending_from_row(r: PendingRow) -> Result<PendingApproval, StoreError> {
    Ok(PendingApproval {
        request_id: r.0,
        group: r.1,
        token_ttl: Duration::from_secs(
            u64::try_from(r.2).map_err(|_| StoreError::Corrupt("negative token ttl".into()))?,
        ),
        justification: r.3,
        agent_key: r.4,
        agent_not_after: from_unix(r.5)?,
        expires_at: from_unix(r.6)?,
    })
}

/// The approvals of `request_id` in the order they were given. The outer error is SQLite's;
/// the inner one says a stored decision or time does not parse (`Corrupt`).
pub(super) fn approvals_of(
    c: &Connection,
    request_id: &str,
) -> rusqlite::Result<Result<Vec<ApprovalRecord>, StoreError>> {
    let mut stmt = c.prepare_cached(
        "SELECT a.request_id, a.approver, a.approver_subject, a.approver_key, a.decision,
            a.signature, a.reason, a.at, a.approver_serials,
            (SELECT e.request_digest FROM executions e WHERE e.request_id = a.request_id)
         FROM approvals a WHERE a.request_id = ?1 ORDER BY a.id",
    )?;
    let rows = stmt.query_map([request_id], approval)?;
    Ok(rows
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .collect())
}

/// One row of [`approvals_of`] as a record.
fn approval(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApprovalRecord, StoreError>> {
    let request_id = r.get(0)?;
    let approver = r.get(1)?;
    let approver_subject = r.get(2)?;
    let approver_key = r.get(3)?;
    let decision: String = r.get(4)?;
    let signature = r.get(5)?;
    let reason = r.get(6)?;
    let at: i64 = r.get(7)?;
    let serials: Option<String> = r.get(8)?;
    let request_digest: Option<String> = r.get(9)?;
    Ok(
        parsed("approval decision", &decision, Decision::parse).and_then(|decision| {
            Ok(ApprovalRecord {
                request_id,
                approver,
                approver_subject,
                approver_key,
                decision,
                signature,
                reason,
                at: from_unix(at)?,
                approver_serials: approver_serials(serials.as_deref())?,
                request_digest: request_digest.unwrap_or_default(),
            })
        }),
    )
}

/// A text column read by `parse`; a value it does not know is `Corrupt`, naming `what`.
pub(in crate::store) fn parsed<T>(
    what: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::Corrupt(format!("{what} {text:?}")))
}
