//! Requests waiting for approvers and the approvers' decisions: the `approval_requests` and
//! `approvals` tables. Every function runs on the writer thread inside its commit, so the
//! checks (still open, not expired, this approver not counted yet) and the write they guard
//! are one atomic step: two approvers completing a quorum at once cannot both issue.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

use super::{from_unix, unix};
use crate::approval::Decision;
use crate::store::{
    ApprovalOutcome, ApprovalRecord, ExecutionStatus, PendingApproval, ReservedToken, StoreError,
};

/// An `approval_requests` row as read.
pub(super) type PendingRow = (String, String, i64, Option<String>, String, i64, i64);

/// An `approvals` row as read.
pub(super) type ApprovalRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
);

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

pub(super) fn pending_from_row(r: PendingRow) -> Result<PendingApproval, StoreError> {
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

pub(super) fn approval_rows(
    c: &Connection,
    request_id: &str,
) -> rusqlite::Result<Vec<ApprovalRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT request_id, approver, approver_subject, approver_key, decision, signature, reason,
            at
         FROM approvals WHERE request_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([request_id], |r| ApprovalRow::try_from(r))?;
    rows.collect()
}

pub(super) fn approval_from_row(r: ApprovalRow) -> Result<ApprovalRecord, StoreError> {
    Ok(ApprovalRecord {
        request_id: r.0,
        approver: r.1,
        approver_subject: r.2,
        approver_key: r.3,
        decision: Decision::parse(&r.4)
            .ok_or_else(|| StoreError::Corrupt(format!("approval decision {:?}", r.4)))?,
        signature: r.5,
        reason: r.6,
        at: from_unix(r.7)?,
    })
}

/// The atomic step of [`crate::store::Store::add_approval`].
pub(super) fn add(
    c: &Connection,
    approval: &ApprovalRecord,
    required: u32,
    now: SystemTime,
    reserve: &ReservedToken,
) -> rusqlite::Result<Result<ApprovalOutcome, StoreError>> {
    let id = &approval.request_id;
    let state: Option<(String, i64, Option<String>)> = c
        .prepare_cached(
            "SELECT e.status, p.expires_at, p.closed
             FROM approval_requests p JOIN executions e ON e.request_id = p.request_id
             WHERE p.request_id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((status, expires_at, closed)) = state else {
        return Ok(Ok(ApprovalOutcome::Unknown));
    };
    let Some(status) = ExecutionStatus::parse(&status) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "execution status {status:?}"
        ))));
    };
    if status != ExecutionStatus::PendingApproval || closed.is_some() {
        return Ok(Ok(ApprovalOutcome::Closed(status)));
    }
    if expires_at <= unix(now) {
        close(c, id, "expired")?;
        expired_event(c, id, now)?;
        return Ok(Ok(ApprovalOutcome::Expired));
    }
    let seen: Option<i64> = c
        .prepare_cached(
            "SELECT 1 FROM approvals WHERE request_id = ?1
             AND (approver = ?2 OR approver_subject = ?3 OR approver_key = ?4)",
        )?
        .query_row(
            params![
                id,
                approval.approver,
                approval.approver_subject,
                approval.approver_key
            ],
            |r| r.get(0),
        )
        .optional()?;
    if seen.is_some() {
        return Ok(Ok(ApprovalOutcome::Duplicate));
    }
    c.prepare_cached(
        "INSERT INTO approvals (request_id, approver, approver_subject, approver_key, decision,
            signature, reason, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        approval.approver,
        approval.approver_subject,
        approval.approver_key,
        approval.decision.as_str(),
        approval.signature,
        approval.reason,
        unix(approval.at),
    ])?;
    let detail = serde_json::json!({
        "request_id": id,
        "approver": approval.approver_subject,
        "x5t#S256": approval.approver,
        "decision": approval.decision.as_str(),
        "reason": approval.reason,
    });
    let kind = match approval.decision {
        Decision::Approve => "approval",
        Decision::Reject => "approval_rejected",
    };
    event(c, kind, &detail.to_string(), approval.at)?;
    if approval.decision == Decision::Reject {
        close(c, id, "rejected")?;
        return Ok(Ok(ApprovalOutcome::Rejected));
    }
    let approvals: Vec<ApprovalRecord> = match approval_rows(c, id)?
        .into_iter()
        .map(approval_from_row)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(all) => all
            .into_iter()
            .filter(|a| a.decision == Decision::Approve)
            .collect(),
        Err(e) => return Ok(Err(e)),
    };
    let quorum = approvals.len() >= usize::try_from(required).unwrap_or(usize::MAX);
    if quorum {
        c.prepare_cached("UPDATE approval_requests SET closed = 'approved' WHERE request_id = ?1")?
            .execute([id])?;
        c.prepare_cached(
            "UPDATE executions SET status = 'issuing', jti = ?2, expires_at = ?3
             WHERE request_id = ?1 AND status = 'pending_approval'",
        )?
        .execute(params![id, reserve.jti, unix(reserve.expires_at)])?;
    }
    Ok(Ok(ApprovalOutcome::Approved { approvals, quorum }))
}

/// Closes a request with `how` (`expired` or `rejected`, which is also the execution's new
/// status).
fn close(c: &Connection, request_id: &str, how: &str) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE approval_requests SET closed = ?2 WHERE request_id = ?1")?
        .execute(params![request_id, how])?;
    c.prepare_cached(
        "UPDATE executions SET status = ?2 WHERE request_id = ?1 AND status = 'pending_approval'",
    )?
    .execute(params![request_id, how])?;
    Ok(())
}

/// The atomic step of [`crate::store::Store::expire_approval_requests`].
pub(super) fn expire(c: &Connection, now: SystemTime) -> rusqlite::Result<Vec<String>> {
    let ids: Vec<String> = c
        .prepare_cached(
            "SELECT request_id FROM approval_requests WHERE closed IS NULL AND expires_at <= ?1",
        )?
        .query_map([unix(now)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        close(c, id, "expired")?;
        expired_event(c, id, now)?;
    }
    Ok(ids)
}

/// Records an event in the same commit as the change it describes (the store's event record,
/// which the audit log turns into entries).
fn event(c: &Connection, kind: &str, detail: &str, at: SystemTime) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO events (kind, detail, at) VALUES (?1, ?2, ?3)")?
        .execute(params![kind, detail, unix(at)])
        .map(|_| ())
}

fn expired_event(c: &Connection, request_id: &str, now: SystemTime) -> rusqlite::Result<()> {
    let detail = serde_json::json!({ "request_id": request_id });
    event(c, "approval_expired", &detail.to_string(), now)
}
