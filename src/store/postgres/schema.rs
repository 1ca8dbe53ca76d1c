//! The PostgreSQL schema, versioned in `seb_schema`. Only `seb init` and `seb migrate` create
//! or bring it up to date (every other command refuses another version), inside one
//! transaction holding an advisory lock, so two migrations cannot interleave.
//!
//! The tables are those of the SQLite store (see `sqlite/schema.rs`), with PostgreSQL types:
//! times are Unix seconds (`BIGINT`), serials their canonical magnitude (`BYTEA`), and a `seq`
//! column where SQLite's rowid gave an order. `replicas` holds each running broker's
//! heartbeat (rate limits are divided among the live ones). `executions` leaves 40 % of each
//! page free (`fillfactor`), so that storing a token on its row can be a heap-only update
//! (neither column is indexed) instead of a new version in every index.

use super::conn::{Conn, DbError};

/// The schema version this code writes. Version 2: `approvals.approver_serials`, the
/// approver's path serials (canonical hex, space-separated; NULL in rows written before).
pub(super) const VERSION: i32 = 2;

/// Advisory lock key held while migrating ("seb" and 1).
const MIGRATE_LOCK: i64 = 0x5345_4201;

const SCHEMA_V1: &str = "
CREATE TABLE issued (
    serial BYTEA PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    issuer_label TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    pem TEXT NOT NULL,
    seq BIGSERIAL NOT NULL
);
CREATE TABLE revoked (
    serial BYTEA PRIMARY KEY,
    reason TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    seq BIGSERIAL NOT NULL
);
CREATE TABLE revocation_issuers (
    serial BYTEA PRIMARY KEY,
    issuer_label TEXT NOT NULL
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE executions (
    request_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_subject TEXT NOT NULL,
    operation TEXT NOT NULL,
    resource TEXT NOT NULL,
    params TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    deny_code TEXT,
    approvals_required BIGINT NOT NULL,
    jti TEXT UNIQUE,
    token TEXT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    agent_serials TEXT
) WITH (fillfactor = 60);
CREATE TABLE redemptions (
    jti TEXT PRIMARY KEY,
    executor TEXT NOT NULL,
    redeemed_at BIGINT NOT NULL
);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE approval_requests (
    request_id TEXT PRIMARY KEY,
    approval_group TEXT NOT NULL,
    token_ttl BIGINT NOT NULL,
    justification TEXT,
    agent_key TEXT NOT NULL,
    agent_not_after BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    closed TEXT
);
CREATE INDEX approval_requests_open ON approval_requests (expires_at) WHERE closed IS NULL;
CREATE TABLE approvals (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    approver_subject TEXT NOT NULL,
    approver_key TEXT NOT NULL,
    decision TEXT NOT NULL,
    signature TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX approvals_request ON approvals (request_id);
CREATE TABLE audit_entries (
    idx BIGINT PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE outcomes (
    jti TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    executor TEXT NOT NULL,
    receipt TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE health (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    seen_at_ms BIGINT NOT NULL
);
";

/// The schema version the database holds, without changing anything: 0 for an empty
/// database (no `seb_schema` table), which `seb migrate` fills.
pub(super) fn stored_version(conn: &mut Conn) -> Result<i32, DbError> {
    let mut db = conn.db();
    let exists = db.exists(
        "SELECT 1 FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_name = 'seb_schema'",
        &[],
    )?;
    if !exists {
        return Ok(0);
    }
    Ok(db
        .query_opt("SELECT version FROM seb_schema", &[])?
        .map_or(0, |r| r.get(0)))
}

/// Creates the schema, or migrates it to [`VERSION`]; returns the version found before
/// (0: none). A database written by a newer seb is refused.
pub(super) fn migrate(conn: &mut Conn) -> Result<i32, DbError> {
    conn.in_transaction(|db| {
        db.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
        db.batch("CREATE TABLE IF NOT EXISTS seb_schema (version INTEGER NOT NULL)")?;
        let found: i32 = db
            .query_opt("SELECT version FROM seb_schema", &[])?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if found > VERSION {
            return Err(DbError::NewerSchema {
                found,
                known: VERSION,
            });
        }
        if found == 0 {
            db.batch(SCHEMA_V1)?;
            db.execute("INSERT INTO seb_schema (version) VALUES (1)", &[])?;
        }
        // Each later version a step, all in this same transaction.
        if found < 2 {
            db.batch("ALTER TABLE approvals ADD COLUMN IF NOT EXISTS approver_serials TEXT")?;
        }
        db.execute("UPDATE seb_schema SET version = $1", &[&VERSION])?;
        Ok(found)
    })
}
