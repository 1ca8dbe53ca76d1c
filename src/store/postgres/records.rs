//! Execution records, redemption, outcomes and the kill switches on PostgreSQL (approvals are
//! in `approvals.rs`): the same rules as the SQLite store (`sqlite/executions.rs`, `policy.rs`),
//! with the rows mapped by the shared `sqlite/rows.rs` helpers. The atomic steps run on the
//! writer inside one batch transaction holding the audit log's lock, so across replicas they
//! happen one at a time: two approvals completing a quorum through two replicas cannot both
//! issue, and a token redeemed through two replicas at once is redeemed once.

use crate::store::CertRef;
use std::time::SystemTime;

use tokio_postgres::{Client, Row};

use super::conn::{Db, DbError};
use super::{certificates, encode, unix, PgStore};
use crate::audit::entry::{Entry, EntryKind};
use crate::store::entries::{self, Redemption};
use crate::store::sqlite::rows::{
    execution_from_row, from_unix, parse_serials, serials_text, ExecutionRow,
};
use crate::store::{ExecutionRecord, PolicyState, RedeemOutcome, StoreError, WriteDone};

type Txn<'a, 'b> = &'a mut Db<'b, Client>;

/// `executions` rows as one array per column, for `UNNEST`.
pub(super) struct ExecutionColumns {
    pub(super) request_id: Vec<String>,
    pub(super) agent: Vec<String>,
    pub(super) agent_subject: Vec<String>,
    pub(super) operation: Vec<String>,
    pub(super) resource: Vec<String>,
    pub(super) params: Vec<String>,
    pub(super) request_digest: Vec<String>,
    pub(super) status: Vec<String>,
    pub(super) deny_code: Vec<Option<String>>,
    pub(super) approvals: Vec<i64>,
    pub(super) jti: Vec<Option<String>>,
    pub(super) token: Vec<Option<String>>,
    pub(super) expires_at: Vec<Option<i64>>,
    pub(super) created_at: Vec<i64>,
    pub(super) agent_serials: Vec<String>,
}

impl ExecutionColumns {
    pub(super) fn of(rows: &[ExecutionRecord]) -> Self {
        fn col<T>(rows: &[ExecutionRecord], f: impl Fn(&ExecutionRecord) -> T) -> Vec<T> {
            rows.iter().map(f).collect()
        }
        Self {
            request_id: col(rows, |r| r.request_id.clone()),
            agent: col(rows, |r| r.agent.clone()),
            agent_subject: col(rows, |r| r.agent_subject.clone()),
            operation: col(rows, |r| text_column(&r.operation)),
            resource: col(rows, |r| text_column(&r.resource)),
            params: col(rows, |r| r.params.clone()),
            request_digest: col(rows, |r| r.request_digest.clone()),
            status: col(rows, |r| r.status.as_str().to_owned()),
            deny_code: col(rows, |r| r.deny_code.clone()),
            approvals: col(rows, |r| i64::from(r.approvals_required)),
            jti: col(rows, |r| r.jti.clone()),
            token: col(rows, |r| r.token.clone()),
            expires_at: col(rows, |r| r.expires_at.map(unix)),
            created_at: col(rows, |r| unix(r.created_at)),
            agent_serials: col(rows, |r| serials_text(&r.agent_serials)),
        }
    }
}

/// `text` as a PostgreSQL `TEXT` value can hold it: U+0000 (which PostgreSQL refuses, failing
/// the whole batch of other callers' writes with it) becomes U+FFFD. Only a denied request can
/// carry one (operations and resources refuse control characters); its audit entry keeps the
/// exact text, JSON-escaped.
fn text_column(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// Inserts `rows` into `executions` with one statement.
pub(super) fn insert_executions(db: Txn<'_, '_>, rows: &[ExecutionRecord]) -> Result<(), DbError> {
    let c = ExecutionColumns::of(rows);
    db.execute(
        "INSERT INTO executions (request_id, agent, agent_subject, operation, resource,
            params, request_digest, status, deny_code, approvals_required, jti, token,
            expires_at, created_at, agent_serials)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
            $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::TEXT[],
            $12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::TEXT[])",
        &[
            &c.request_id,
            &c.agent,
            &c.agent_subject,
            &c.operation,
            &c.resource,
            &c.params,
            &c.request_digest,
            &c.status,
            &c.deny_code,
            &c.approvals,
            &c.jti,
            &c.token,
            &c.expires_at,
            &c.created_at,
            &c.agent_serials,
        ],
    )
    .map(|_| ())
}

pub(super) fn complete_issuance_then(
    store: &PgStore,
    request_id: &str,
    token: Option<String>,
    done: WriteDone,
) {
    let request_id = request_id.to_owned();
    match token {
        Some(token) => store.enqueue(
            "complete issuance",
            move |b| {
                b.stage_issued(request_id, token);
                Ok(())
            },
            done,
            true,
        ),
        None => {
            // The grant's entry is in the log; this one says no token left after all.
            let text = match encode(&entries::issuance_failed(&request_id)) {
                Ok(text) => text,
                Err(e) => return done(Err(e)),
            };
            store.enqueue_audited(
                "complete issuance",
                move |b| {
                    b.db()?
                        .execute(
                            "UPDATE executions SET status = 'failed'
                         WHERE request_id = $1 AND status = 'issuing'",
                            &[&request_id],
                        )
                        .map(|_| ())
                },
                move |_| text,
                None,
                move |result| done(result.map(|_| ())),
            );
        }
    }
}

fn execution_row(r: &Row) -> Result<ExecutionRecord, DbError> {
    let approvals: i64 = r.get(9);
    let row: ExecutionRow = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        u32::try_from(approvals).unwrap_or(u32::MAX),
        r.get(10),
        r.get(11),
        r.get(12),
        r.get(13),
        r.get(14),
    );
    execution_from_row(row).map_err(corrupt)
}

pub(super) fn corrupt(e: StoreError) -> DbError {
    DbError::Corrupt(e.to_string())
}

pub(super) fn execution(
    db: Txn<'_, '_>,
    request_id: &str,
) -> Result<Option<ExecutionRecord>, DbError> {
    db.query_opt(
        "SELECT request_id, agent, agent_subject, operation, resource, params,
            request_digest, status, deny_code, approvals_required, jti, token, expires_at,
            created_at, agent_serials
         FROM executions WHERE request_id = $1",
        &[&request_id],
    )?
    .map(|r| execution_row(&r))
    .transpose()
}

pub(super) fn redeem(
    store: &PgStore,
    jti: &str,
    executor: &CertRef,
    at: SystemTime,
) -> Result<RedeemOutcome, StoreError> {
    let (entry_jti, entry_executor) = (jti.to_owned(), executor.clone());
    let (jti, executor) = (jti.to_owned(), executor.thumbprint.clone());
    let time_ms = crate::time::unix_millis(at);
    // Every attempt that reaches the store is logged, as on SQLite.
    let (found, _) = store.write_audited(
        "redeem token",
        move |b| {
            // A replay is answered as one before anything else (API.md: 409 every time after
            // the first), even once the agent has been revoked: it is the signal a SIEM
            // alerts on.
            let Some(row) = b.db()?.query_opt(
                "SELECT agent_serials,
                        (SELECT redeemed_at FROM redemptions WHERE jti = $1),
                        request_id, request_digest
                 FROM executions WHERE jti = $1",
                &[&jti],
            )?
            else {
                return Ok((Redemption::Unknown, None));
            };
            let request = Some((row.get::<_, String>(2), row.get::<_, String>(3)));
            let with = |r: Redemption| Ok((r, request.clone()));
            if let Some(first) = row.get::<_, Option<i64>>(1) {
                return with(Redemption::Before(first));
            }
            let serials: Option<String> = row.get(0);
            let serials = match parse_serials(serials.as_deref()) {
                Ok(Some(serials)) => serials,
                Ok(None) => return with(Redemption::AgentUnrecorded),
                Err(e) => return with(Redemption::Corrupt(e)),
            };
            // The whole path in one query; the first revoked certificate in path order.
            if let Some(serial) = certificates::revoked_in(b.db()?, &serials)?
                .into_iter()
                .next()
            {
                return with(Redemption::AgentRevoked(serial));
            }
            // Redeemed now, or when it was first: one round trip. The outer query's snapshot
            // does not see the row the insert adds, only one committed before the statement.
            // Every redemption runs in a batch holding the log's lock, so no other one can be
            // in flight; should one be (its row committed after this snapshot), it is read
            // again below rather than taken for corruption.
            let row = b.db()?.query_one(
                "WITH added AS (
                     INSERT INTO redemptions (jti, executor, redeemed_at) VALUES ($1, $2, $3)
                     ON CONFLICT (jti) DO NOTHING RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM added),
                        (SELECT redeemed_at FROM redemptions WHERE jti = $1)",
                &[&jti, &executor, &unix(at)],
            )?;
            let (added, first): (i64, Option<i64>) = (row.get(0), row.get(1));
            match (added, first) {
                (1, _) => with(Redemption::Redeemed),
                (_, Some(first)) => with(Redemption::Before(first)),
                (_, None) => with(Redemption::Before(
                    b.db()?
                        .query_one(
                            "SELECT redeemed_at FROM redemptions WHERE jti = $1",
                            &[&jti],
                        )?
                        .get(0),
                )),
            }
        },
        move |(found, request): &(Redemption, Option<(String, String)>)| {
            encode(&found.entry(&entry_jti, &entry_executor, request.as_ref(), time_ms))
                .unwrap_or_default()
        },
    )?;
    found.0.outcome()
}

pub(super) fn record_outcome(
    store: &PgStore,
    jti: &str,
    request_id: &str,
    executor: &CertRef,
    receipt_json: &str,
    at: SystemTime,
) -> Result<bool, StoreError> {
    let time_ms = crate::time::unix_millis(at);
    let logged = (
        jti.to_owned(),
        request_id.to_owned(),
        executor.clone(),
        receipt_json.to_owned(),
    );
    let (jti, request_id, executor, receipt) = (
        jti.to_owned(),
        request_id.to_owned(),
        executor.thumbprint.clone(),
        receipt_json.to_owned(),
    );
    let (inserted, _) = store.write_audited(
        "record an execution outcome",
        move |b| {
            let n = b.db()?.execute(
                "INSERT INTO outcomes (jti, request_id, executor, receipt, at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jti) DO NOTHING",
                &[&jti, &request_id, &executor, &receipt, &unix(at)],
            )?;
            Ok(n == 1)
        },
        move |inserted| {
            // The receipt itself is the entry's detail, so an auditor can verify it from the log.
            let (jti, request_id, executor, receipt) = &logged;
            let e =
                entries::outcome_reported(jti, request_id, executor, receipt, !*inserted, time_ms);
            encode(&e).unwrap_or_default()
        },
    )?;
    Ok(inserted)
}

pub(super) fn events(store: &PgStore, kind: &str) -> Result<Vec<(SystemTime, String)>, StoreError> {
    let legacy: Vec<(i64, String)> = store.read("list events", |db| {
        Ok(db
            .query(
                "SELECT at, detail FROM events WHERE kind = $1 ORDER BY id",
                &[&kind],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })?;
    let mut out = legacy
        .into_iter()
        .map(|(at, detail)| Ok((from_unix(at)?, detail)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let Some(kind) = EntryKind::parse(kind).map(|k| k.as_str()) else {
        return Ok(out);
    };
    let rows: Vec<String> = store.read("list events", |db| {
        Ok(db
            .query(
                "SELECT entry FROM audit_entries WHERE (entry::jsonb)->>'kind' = $1 ORDER BY idx",
                &[&kind],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    })?;
    for text in rows {
        let e = Entry::parse(text.as_bytes())
            .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
        out.push((
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms),
            e.detail.unwrap_or_default(),
        ));
    }
    Ok(out)
}

pub(super) fn policy_state(store: &PgStore) -> Result<PolicyState, StoreError> {
    let (epoch, frozen) = store.read("read the policy", |db| {
        let mut get = |name: &str| -> Result<Option<i64>, DbError> {
            Ok(db
                .query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?
                .map(|r| r.get(0)))
        };
        Ok((get("policy_epoch")?, get("policy_frozen")?))
    })?;
    let epoch = epoch
        .map(u64::try_from)
        .transpose()
        .map_err(|_| StoreError::Corrupt("negative policy epoch".into()))?;
    Ok(PolicyState {
        epoch,
        frozen: frozen.map(|f| f != 0),
    })
}

pub(super) fn bump_epoch(store: &PgStore, floor: u64, at: SystemTime) -> Result<u64, StoreError> {
    let floor = i64::try_from(floor)
        .map_err(|_| StoreError::Corrupt("policy epoch out of range".into()))?;
    let time_ms = crate::time::unix_millis(at);
    let (value, _) = store.write_audited(
        "bump the policy epoch",
        move |b| {
            Ok(b.db()?
                .query_one(
                    "INSERT INTO counters (name, value) VALUES ('policy_epoch', $1::BIGINT + 1)
                     ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value, $1::BIGINT) + 1
                     RETURNING value",
                    &[&floor],
                )?
                .get::<_, i64>(0))
        },
        move |value| encode(&entries::epoch_changed(*value, time_ms)).unwrap_or_default(),
    )?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative policy epoch".into()))
}

pub(super) fn set_frozen(
    store: &PgStore,
    frozen: bool,
    reason: &str,
    at: SystemTime,
) -> Result<(), StoreError> {
    let reason = reason.to_owned();
    let time_ms = crate::time::unix_millis(at);
    store.write_audited(
        "set the issuance freeze",
        move |b| {
            b.db()?
                .execute(
                    "INSERT INTO counters (name, value) VALUES ('policy_frozen', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    &[&i64::from(frozen)],
                )
                .map(|_| ())
        },
        move |_| encode(&entries::freeze(frozen, &reason, time_ms)).unwrap_or_default(),
    )?;
    Ok(())
}
