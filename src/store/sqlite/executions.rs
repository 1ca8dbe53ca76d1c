//! Execution records and what happens to their tokens: recording a request (granted, denied,
//! issuing) and completing its issuance, single-use redemption (checked against the agent's
//! revocations in the same transaction), and the executor's outcome receipt. Each is an audit
//! entry in the same commit.

use crate::store::CertRef;
use std::time::SystemTime;

use rusqlite::{params, OptionalExtension};

use super::rows::{
    execution_from_row, execution_row, first_revoked, insert_execution, parse_serials, unix,
    EXECUTION_COLUMNS,
};
use super::writer::Scope;
use super::{encode, SqliteStore};
use crate::audit::entry::Entry;
use crate::audit::merkle;
use crate::store::entries::{self, Redemption};
use crate::store::{Commit, ExecutionRecord, LogPosition, RedeemOutcome, StoreError, WriteDone};

pub(super) fn record_execution(
    store: &SqliteStore,
    record: &ExecutionRecord,
    entry: &Entry,
) -> Result<LogPosition, StoreError> {
    let (r, text) = (record.clone(), encode(entry)?);
    store
        .write_audited(
            "record execution",
            move |c| insert_execution(c, &r),
            move |_| text.clone(),
        )
        .map(|(_, position)| position)
}

pub(super) fn record_execution_then(
    store: &SqliteStore,
    record: ExecutionRecord,
    entry: &Entry,
    commit: Commit,
    done: WriteDone,
) -> Result<LogPosition, StoreError> {
    let text = encode(entry)?;
    let leaf_hash = merkle::leaf_hash(text.as_bytes());
    let index = store.enqueue_audited(
        "record execution",
        move |c| insert_execution(c, &record),
        move |_| text,
        move |result| done(result.map(|_| ())),
        commit == Commit::Deferred,
    )?;
    Ok(LogPosition { index, leaf_hash })
}

pub(super) fn complete_issuance_then(
    store: &SqliteStore,
    request_id: &str,
    token: Option<String>,
    done: WriteDone,
) {
    let request_id = request_id.to_owned();
    match token {
        Some(token) => store.enqueue(
            "complete issuance",
            move |c| {
                c.prepare_cached(
                    "UPDATE executions SET token = ?2, status = 'granted'
                     WHERE request_id = ?1 AND status = 'issuing'",
                )?
                .execute(params![request_id, token])
                .map(|_| ())
            },
            done,
            Scope::OneStatement,
            true,
        ),
        None => {
            // The grant's entry is in the log; this one says no token left after all.
            let text = match encode(&entries::issuance_failed(&request_id)) {
                Ok(text) => text,
                Err(e) => return done(Err(e)),
            };
            let queued = store.enqueue_audited(
                "complete issuance",
                move |c| {
                    c.prepare_cached(
                        "UPDATE executions SET status = 'failed'
                         WHERE request_id = ?1 AND status = 'issuing'",
                    )?
                    .execute(params![request_id])
                    .map(|_| ())
                },
                move |_| text,
                move |result| done(result.map(|_| ())),
                true,
            );
            if let Err(e) = queued {
                tracing::error!(error = %e, "cannot record a failed issuance");
            }
        }
    }
}

pub(super) fn execution(
    store: &SqliteStore,
    request_id: &str,
) -> Result<Option<ExecutionRecord>, StoreError> {
    // Read on the writer thread, behind any queued write for this request (its token).
    let request_id = request_id.to_owned();
    let row = store.write("read execution", move |c| {
        c.prepare_cached(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE request_id = ?1"
        ))?
        .query_row([&request_id], execution_row)
        .optional()
    })?;
    row.map(execution_from_row).transpose()
}

pub(super) fn request_of_token(
    store: &SqliteStore,
    jti: &str,
) -> Result<Option<String>, StoreError> {
    store.read("look up a token's request", |c| {
        c.prepare_cached("SELECT request_id FROM executions WHERE jti = ?1")?
            .query_row([jti], |r| r.get(0))
            .optional()
    })
}

pub(super) fn redeem(
    store: &SqliteStore,
    jti: &str,
    executor: &CertRef,
    at: SystemTime,
) -> Result<RedeemOutcome, StoreError> {
    let (entry_jti, entry_executor) = (jti.to_owned(), executor.clone());
    let (jti, executor) = (jti.to_owned(), executor.thumbprint.clone());
    let time_ms = crate::time::unix_millis(at);
    // Every attempt that reaches the store is logged: a replay, a token this broker has no
    // record of, or one whose agent was revoked is what a SIEM should alert on.
    let (found, _) = store.write_audited(
        "redeem token",
        move |c| {
            // A replay is answered as one before anything else (API.md: 409 every time after
            // the first), even once the agent has been revoked: it is the signal a SIEM
            // alerts on.
            let found: Option<(Option<String>, Option<i64>, String, String)> = c
                .prepare_cached(
                    "SELECT agent_serials,
                            (SELECT redeemed_at FROM redemptions WHERE jti = ?1),
                            request_id, request_digest
                     FROM executions WHERE jti = ?1",
                )?
                .query_row([&jti], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let Some((serials, redeemed_at, request_id, request_digest)) = found else {
                return Ok((Redemption::Unknown, None));
            };
            let redemption = 'found: {
                if let Some(first) = redeemed_at {
                    break 'found Redemption::Before(first);
                }
                // The agent's path, checked in the same transaction as the redemption: a
                // revocation committed before it is seen.
                let serials = match parse_serials(serials.as_deref()) {
                    Ok(Some(serials)) => serials,
                    Ok(None) => break 'found Redemption::AgentUnrecorded,
                    Err(e) => break 'found Redemption::Corrupt(e),
                };
                if let Some(serial) = first_revoked(c, &serials)? {
                    break 'found Redemption::AgentRevoked(serial);
                }
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO redemptions (jti, executor, redeemed_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(jti) DO NOTHING",
                    )?
                    .execute(params![jti, executor, unix(at)])?;
                if inserted == 1 {
                    break 'found Redemption::Redeemed;
                }
                let first: i64 = c.query_row(
                    "SELECT redeemed_at FROM redemptions WHERE jti = ?1",
                    [&jti],
                    |r| r.get(0),
                )?;
                Redemption::Before(first)
            };
            Ok((redemption, Some((request_id, request_digest))))
        },
        move |(found, request): &(Redemption, Option<(String, String)>)| {
            encode(&found.entry(&entry_jti, &entry_executor, request.as_ref(), time_ms))
                .unwrap_or_default()
        },
    )?;
    found.0.outcome()
}

pub(super) fn redeemed_by(store: &SqliteStore, jti: &str) -> Result<Option<String>, StoreError> {
    store.read("look up a redemption", |c| {
        c.prepare_cached("SELECT executor FROM redemptions WHERE jti = ?1")?
            .query_row([jti], |r| r.get(0))
            .optional()
    })
}

/// An executor's receipt for a redeemed token, as [`record_outcome`] stores and logs it.
#[derive(Clone)]
pub(super) struct Outcome {
    pub(super) jti: String,
    pub(super) request_id: String,
    /// The executor's certificate (its thumbprint is stored).
    pub(super) executor: CertRef,
    pub(super) receipt_json: String,
    pub(super) at: SystemTime,
}

pub(super) fn record_outcome(store: &SqliteStore, outcome: Outcome) -> Result<bool, StoreError> {
    let time_ms = crate::time::unix_millis(outcome.at);
    let logged = outcome.clone();
    let (inserted, _) = store.write_audited(
        "record an execution outcome",
        move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO outcomes (jti, request_id, executor, receipt, at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(jti) DO NOTHING",
                )?
                .execute(params![
                    outcome.jti,
                    outcome.request_id,
                    outcome.executor.thumbprint,
                    outcome.receipt_json,
                    unix(outcome.at)
                ])?;
            Ok(inserted == 1)
        },
        move |inserted| {
            // The receipt itself (digests, exit code, times, signature: no secrets) is the
            // entry's detail, so an auditor can verify it from the log alone.
            let e = entries::outcome_reported(
                &logged.jti,
                &logged.request_id,
                &logged.executor,
                &logged.receipt_json,
                !*inserted,
                time_ms,
            );
            encode(&e).unwrap_or_default()
        },
    )?;
    Ok(inserted)
}

pub(super) fn outcome(store: &SqliteStore, jti: &str) -> Result<Option<String>, StoreError> {
    store.read("look up an execution outcome", |c| {
        c.prepare_cached("SELECT receipt FROM outcomes WHERE jti = ?1")?
            .query_row([jti], |r| r.get(0))
            .optional()
    })
}
