//! Requests waiting for approvers and the approvers' decisions: the `approval_requests` and
//! `approvals` tables, and the bodies of the [`Store`] methods over them. The atomic steps
//! ([`add`], [`expire`]) run on the writer thread inside one commit, so the checks (still open,
//! not expired, this approver not counted yet) and the write they guard are one atomic step:
//! two approvers completing a quorum at once cannot both issue.
//!
//! [`Store`]: crate::store::Store

use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{
    approvals_of, execution_from_row, execution_row, first_revoked, insert_execution,
    insert_pending, parsed, pending_from_row, pending_row, serials_text, unix, EXECUTION_COLUMNS,
};
use super::{encode, SqliteStore};
use crate::approval::Decision;
use crate::audit::entry::Entry;
use crate::audit::merkle;
use crate::store::entries;
use crate::store::{
    ApprovalOutcome, ApprovalRecord, ExecutionRecord, ExecutionStatus, LogPosition,
    PendingApproval, ReservedToken, StoreError, WriteDone,
};

pub(super) fn record_pending_then(
    store: &SqliteStore,
    record: ExecutionRecord,
    pending: PendingApproval,
    entry: &Entry,
    done: WriteDone,
) -> Result<LogPosition, StoreError> {
    let text = encode(entry)?;
    let leaf_hash = merkle::leaf_hash(text.as_bytes());
    let index = store.enqueue_audited(
        "record pending request",
        move |c| {
            insert_execution(c, &record)?;
            insert_pending(c, &pending)
        },
        move |_| text,
        move |result| done(result.map(|_| ())),
        false,
    )?;
    Ok(LogPosition { index, leaf_hash })
}

pub(super) fn pending_approval(
    store: &SqliteStore,
    request_id: &str,
) -> Result<Option<PendingApproval>, StoreError> {
    let request_id = request_id.to_owned();
    let row = store.write("read pending request", move |c| pending_row(c, &request_id))?;
    row.map(pending_from_row).transpose()
}

pub(super) fn approvals(
    store: &SqliteStore,
    request_id: &str,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let request_id = request_id.to_owned();
    store.write("read approvals", move |c| approvals_of(c, &request_id))?
}

pub(super) fn open_approval_requests(
    store: &SqliteStore,
    now: SystemTime,
    groups: &[String],
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError> {
    let now = unix(now);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let groups = serde_json::Value::from(groups.to_vec()).to_string();
    let after = after.unwrap_or_default().to_owned();
    let rows = store.write("list open approval requests", move |c| {
        let mut stmt = c.prepare_cached(
            "SELECT request_id FROM approval_requests
             WHERE closed IS NULL AND expires_at > ?1
               AND approval_group IN (SELECT value FROM json_each(?3))
               AND request_id > ?4
             ORDER BY request_id LIMIT ?2",
        )?;
        let ids: Vec<String> = stmt
            .query_map(params![now, limit, groups, after], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let execution = c
                .prepare_cached(&format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions WHERE request_id = ?1"
                ))?
                .query_row([&id], execution_row)
                .optional()?;
            let pending = pending_row(c, &id)?;
            if let (Some(e), Some(p)) = (execution, pending) {
                out.push((e, p));
            }
        }
        Ok(out)
    })?;
    rows.into_iter()
        .map(|(e, p)| Ok((execution_from_row(e)?, pending_from_row(p)?)))
        .collect()
}

pub(super) fn add_approval(
    store: &SqliteStore,
    approval: ApprovalRecord,
    required: u32,
    now: SystemTime,
    reserve: ReservedToken,
) -> Result<ApprovalOutcome, StoreError> {
    // Every decision an approver posts is an audit entry in the same commit: recorded ones
    // plainly, refused ones (closed, expired, duplicate) with the refusal as `code`.
    let logged = approval.clone();
    let (outcome, _) = store.write_audited(
        "record approval",
        move |c| add(c, &approval, required, now, &reserve),
        move |outcome: &Result<ApprovalOutcome, StoreError>| {
            encode(&entries::approval(&logged, outcome)).unwrap_or_default()
        },
    )?;
    outcome
}

pub(super) fn expire_approval_requests(
    store: &SqliteStore,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let due = store.read("find expired approval requests", move |c| due(c, now))?;
    let mut expired = Vec::new();
    for id in due {
        // One audited write per request: it is closed in the commit that appends its
        // `approval_expired` entry, or not at all.
        let (one, entry) = (id.clone(), entries::expiry_entry(&id, now)?);
        let (closed, _) = store.write_audited(
            "expire approval request",
            move |c| expire_one(c, &one, now),
            move |closed| entry(*closed),
        )?;
        if closed {
            expired.push(id);
        }
    }
    Ok(expired)
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
    let status = match parsed("execution status", &status, ExecutionStatus::parse) {
        Ok(status) => status,
        Err(e) => return Ok(Err(e)),
    };
    if status != ExecutionStatus::PendingApproval || closed.is_some() {
        return Ok(Ok(ApprovalOutcome::Closed(status)));
    }
    if expires_at <= unix(now) {
        close(c, id, "expired")?;
        expired_event(c, id, now)?;
        return Ok(Ok(ApprovalOutcome::Expired));
    }
    // The decisions that still count: one whose approver's path (a certificate of it) has
    // been revoked since counts for nothing, a token does not name it, and that approver may
    // decide again with a new certificate. The same approver again is a duplicate.
    let mut live = Vec::new();
    match approvals_of(c, id)? {
        Ok(before) => {
            for a in before {
                if first_revoked(c, &a.approver_serials)?.is_none() {
                    live.push(a);
                }
            }
        }
        Err(e) => return Ok(Err(e)),
    }
    if live.iter().any(|a| a.same_approver(approval)) {
        return Ok(Ok(ApprovalOutcome::Duplicate));
    }
    c.prepare_cached(
        "INSERT INTO approvals (request_id, approver, approver_subject, approver_key, decision,
            signature, reason, at, approver_serials)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
        serials_text(&approval.approver_serials),
    ])?;
    if approval.decision == Decision::Reject {
        close(c, id, "rejected")?;
        return Ok(Ok(ApprovalOutcome::Rejected));
    }
    let mut approvals: Vec<ApprovalRecord> = live
        .into_iter()
        .filter(|a| a.decision == Decision::Approve)
        .collect();
    if first_revoked(c, &approval.approver_serials)?.is_none() {
        approvals.push(approval.clone());
    }
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

/// The requests still open past their deadline at `now`.
fn due(c: &Connection, now: SystemTime) -> rusqlite::Result<Vec<String>> {
    c.prepare_cached(
        "SELECT request_id FROM approval_requests WHERE closed IS NULL AND expires_at <= ?1",
    )?
    .query_map([unix(now)], |r| r.get(0))?
    .collect()
}

/// Closes `request_id` as expired if it is still open and past its deadline at `now`, with its
/// event; whether it did.
fn expire_one(c: &Connection, request_id: &str, now: SystemTime) -> rusqlite::Result<bool> {
    let still_open = c
        .prepare_cached(
            "SELECT 1 FROM approval_requests
             WHERE request_id = ?1 AND closed IS NULL AND expires_at <= ?2",
        )?
        .exists(params![request_id, unix(now)])?;
    if still_open {
        close(c, request_id, "expired")?;
        expired_event(c, request_id, now)?;
    }
    Ok(still_open)
}

/// Records an event in the same commit as the change it describes (the store's event record,
/// which the audit log turns into entries).
fn event(c: &Connection, kind: &str, detail: &str, at: SystemTime) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO events (kind, detail, at) VALUES (?1, ?2, ?3)")?
        .execute(params![kind, detail, unix(at)])
        .map(|_| ())
}

fn expired_event(c: &Connection, request_id: &str, now: SystemTime) -> rusqlite::Result<()> {
    event(
        c,
        "approval_expired",
        &entries::expiry_note(request_id),
        now,
    )
}
