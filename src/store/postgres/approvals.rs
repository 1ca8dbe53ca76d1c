//! Requests waiting for approvers and the approvers' decisions on PostgreSQL (the rules of
//! `sqlite/approvals.rs`). `add_approval` is an audited write: under the audit log's lock, so
//! two approvals through two replicas are judged one after the other, and a quorum reserves
//! the token id once. The request's row is also locked (`FOR UPDATE`) while it is judged.

use std::time::SystemTime;

use tokio_postgres::Client;

use super::certificates;
use super::conn::{Db, DbError};
use super::records::{corrupt, execution};
use super::{encode, unix, PgStore};
use crate::approval::Decision;
use crate::store::entries;
use crate::store::sqlite::rows::{
    approver_serials, from_unix, parsed, pending_from_row, serials_text, PendingRow,
};
use crate::store::{
    ApprovalOutcome, ApprovalRecord, ExecutionRecord, ExecutionStatus, PendingApproval,
    ReservedToken, StoreError,
};

type Txn<'a, 'b> = &'a mut Db<'b, Client>;

pub(super) fn insert_pending(db: Txn<'_, '_>, p: &PendingApproval) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO approval_requests (request_id, approval_group, token_ttl, justification,
            agent_key, agent_not_after, expires_at, closed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        &[
            &p.request_id,
            &p.group,
            &i64::try_from(p.token_ttl.as_secs()).unwrap_or(i64::MAX),
            &p.justification,
            &p.agent_key,
            &unix(p.agent_not_after),
            &unix(p.expires_at),
        ],
    )
    .map(|_| ())
}

pub(super) fn pending(
    db: Txn<'_, '_>,
    request_id: &str,
) -> Result<Option<PendingApproval>, DbError> {
    db.query_opt(
        "SELECT request_id, approval_group, token_ttl, justification, agent_key,
            agent_not_after, expires_at
         FROM approval_requests WHERE request_id = $1",
        &[&request_id],
    )?
    .map(|r| {
        let row: PendingRow = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        );
        pending_from_row(row).map_err(corrupt)
    })
    .transpose()
}

pub(super) fn approvals_of(
    db: Txn<'_, '_>,
    request_id: &str,
) -> Result<Vec<ApprovalRecord>, DbError> {
    let rows = db.query(
        "SELECT a.request_id, a.approver, a.approver_subject, a.approver_key, a.decision,
            a.signature, a.reason, a.at, a.approver_serials,
            (SELECT e.request_digest FROM executions e WHERE e.request_id = a.request_id)
         FROM approvals a WHERE a.request_id = $1 ORDER BY a.id",
        &[&request_id],
    )?;
    rows.iter()
        .map(|r| {
            let decision: String = r.get(4);
            Ok(ApprovalRecord {
                request_id: r.get(0),
                approver: r.get(1),
                approver_subject: r.get(2),
                approver_key: r.get(3),
                decision: parsed("approval decision", &decision, Decision::parse)
                    .map_err(corrupt)?,
                signature: r.get(5),
                reason: r.get(6),
                at: from_unix(r.get(7)).map_err(corrupt)?,
                approver_serials: approver_serials(r.get::<_, Option<&str>>(8)).map_err(corrupt)?,
                request_digest: r.get::<_, Option<String>>(9).unwrap_or_default(),
            })
        })
        .collect()
}

pub(super) fn open_requests(
    db: Txn<'_, '_>,
    now: SystemTime,
    groups: &[String],
    after: &str,
    limit: usize,
) -> Result<Vec<(ExecutionRecord, PendingApproval)>, DbError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let ids: Vec<String> = db
        .query(
            "SELECT request_id FROM approval_requests
             WHERE closed IS NULL AND expires_at > $1 AND approval_group = ANY($3)
               AND request_id > $4
             ORDER BY request_id LIMIT $2",
            &[&unix(now), &limit, &groups, &after],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let (Some(e), Some(p)) = (execution(db, &id)?, pending(db, &id)?) {
            out.push((e, p));
        }
    }
    Ok(out)
}

pub(super) fn add_approval(
    store: &PgStore,
    approval: ApprovalRecord,
    required: u32,
    now: SystemTime,
    reserve: ReservedToken,
) -> Result<ApprovalOutcome, StoreError> {
    // Every decision an approver posts is an audit entry in the same commit, refused ones
    // with the refusal as `code`.
    let logged = approval.clone();
    let (outcome, _) = store.write_audited(
        "record approval",
        move |b| add(b.db()?, &approval, required, now, &reserve),
        move |outcome: &Result<ApprovalOutcome, StoreError>| {
            encode(&entries::approval(&logged, outcome)).unwrap_or_default()
        },
    )?;
    outcome
}

/// The atomic step of `add_approval`: the checks and the write they guard, in one
/// transaction under the log's lock.
fn add(
    db: Txn<'_, '_>,
    approval: &ApprovalRecord,
    required: u32,
    now: SystemTime,
    reserve: &ReservedToken,
) -> Result<Result<ApprovalOutcome, StoreError>, DbError> {
    let id = &approval.request_id;
    let Some(state) = db.query_opt(
        "SELECT e.status, p.expires_at, p.closed
         FROM approval_requests p JOIN executions e ON e.request_id = p.request_id
         WHERE p.request_id = $1 FOR UPDATE",
        &[id],
    )?
    else {
        return Ok(Ok(ApprovalOutcome::Unknown));
    };
    let (status, expires_at, closed): (String, i64, Option<String>) =
        (state.get(0), state.get(1), state.get(2));
    let status = match parsed("execution status", &status, ExecutionStatus::parse) {
        Ok(status) => status,
        Err(e) => return Ok(Err(e)),
    };
    if status != ExecutionStatus::PendingApproval || closed.is_some() {
        return Ok(Ok(ApprovalOutcome::Closed(status)));
    }
    if expires_at <= unix(now) {
        close(db, id, "expired")?;
        expired_event(db, id, now)?;
        return Ok(Ok(ApprovalOutcome::Expired));
    }
    // The decisions that still count, and the same approver again a duplicate (as on SQLite).
    let mut live = Vec::new();
    for a in approvals_of(db, id)? {
        if certificates::revoked_in(db, &a.approver_serials)?.is_empty() {
            live.push(a);
        }
    }
    if live.iter().any(|a| a.same_approver(approval)) {
        return Ok(Ok(ApprovalOutcome::Duplicate));
    }
    db.execute(
        "INSERT INTO approvals (request_id, approver, approver_subject, approver_key, decision,
            signature, reason, at, approver_serials)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            id,
            &approval.approver,
            &approval.approver_subject,
            &approval.approver_key,
            &approval.decision.as_str(),
            &approval.signature,
            &approval.reason,
            &unix(approval.at),
            &serials_text(&approval.approver_serials),
        ],
    )?;
    if approval.decision == Decision::Reject {
        close(db, id, "rejected")?;
        return Ok(Ok(ApprovalOutcome::Rejected));
    }
    let mut approvals: Vec<ApprovalRecord> = live
        .into_iter()
        .filter(|a| a.decision == Decision::Approve)
        .collect();
    if certificates::revoked_in(db, &approval.approver_serials)?.is_empty() {
        approvals.push(approval.clone());
    }
    let quorum = approvals.len() >= usize::try_from(required).unwrap_or(usize::MAX);
    if quorum {
        db.execute(
            "UPDATE approval_requests SET closed = 'approved' WHERE request_id = $1",
            &[id],
        )?;
        db.execute(
            "UPDATE executions SET status = 'issuing', jti = $2, expires_at = $3
             WHERE request_id = $1 AND status = 'pending_approval'",
            &[id, &reserve.jti, &unix(reserve.expires_at)],
        )?;
    }
    Ok(Ok(ApprovalOutcome::Approved { approvals, quorum }))
}

/// Closes a request with `how` (`expired` or `rejected`, also the execution's new status).
fn close(db: Txn<'_, '_>, request_id: &str, how: &str) -> Result<(), DbError> {
    db.execute(
        "UPDATE approval_requests SET closed = $2 WHERE request_id = $1",
        &[&request_id, &how],
    )?;
    db.execute(
        "UPDATE executions SET status = $2 WHERE request_id = $1 AND status = 'pending_approval'",
        &[&request_id, &how],
    )?;
    Ok(())
}

/// Closes every request still open past its deadline at `now`, each in the commit that
/// appends its `approval_expired` entry (or not at all); the ones closed.
pub(super) fn expire_approval_requests(
    store: &PgStore,
    now: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let due: Vec<String> = store.read("find expired approval requests", |db| {
        Ok(db
            .query(
                "SELECT request_id FROM approval_requests
                 WHERE closed IS NULL AND expires_at <= $1",
                &[&unix(now)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    })?;
    let mut expired = Vec::new();
    for id in due {
        let (one, entry) = (id.clone(), entries::expiry_entry(&id, now)?);
        let (closed, _) = store.write_audited(
            "expire approval request",
            move |b| expire_one(b.db()?, &one, now),
            move |closed| entry(*closed),
        )?;
        if closed {
            expired.push(id);
        }
    }
    Ok(expired)
}

/// Closes `request_id` as expired if it is still open and past its deadline at `now`, with its
/// event; whether it did.
fn expire_one(db: Txn<'_, '_>, request_id: &str, now: SystemTime) -> Result<bool, DbError> {
    let still_open = db
        .query_opt(
            "SELECT 1 FROM approval_requests
             WHERE request_id = $1 AND closed IS NULL AND expires_at <= $2 FOR UPDATE",
            &[&request_id, &unix(now)],
        )?
        .is_some();
    if still_open {
        close(db, request_id, "expired")?;
        expired_event(db, request_id, now)?;
    }
    Ok(still_open)
}

fn event(db: Txn<'_, '_>, kind: &str, detail: &str, at: SystemTime) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO events (kind, detail, at) VALUES ($1, $2, $3)",
        &[&kind, &detail, &unix(at)],
    )
    .map(|_| ())
}

fn expired_event(db: Txn<'_, '_>, request_id: &str, now: SystemTime) -> Result<(), DbError> {
    event(
        db,
        "approval_expired",
        &entries::expiry_note(request_id),
        now,
    )
}
