//! The database schema, created (idempotently) when the store opens, and the migration of
//! stores written by earlier versions.
//!
//! Broker events are audit log entries (`audit_entries`, `audit_nodes`; see `audit.rs`). The
//! `events` table keeps only the notes of one-off schema migrations and of approval
//! requests that expired (written in the commit that closes them; their audit entries follow).

use rusqlite::{Connection, OptionalExtension};

use crate::serial::Serial;

/// Every table and index of `seb.db`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS issued (
    serial BLOB PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    issuer_label TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    pem TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (
    serial BLOB PRIMARY KEY,
    reason TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    request_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_subject TEXT NOT NULL,
    operation TEXT NOT NULL,
    resource TEXT NOT NULL,
    params TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    deny_code TEXT,
    approvals_required INTEGER NOT NULL,
    jti TEXT UNIQUE,
    token TEXT,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    agent_serials TEXT
);
CREATE TABLE IF NOT EXISTS redemptions (
    jti TEXT PRIMARY KEY,
    executor TEXT NOT NULL,
    redeemed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocation_issuers (
    serial BLOB PRIMARY KEY,
    issuer_label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approval_requests (
    request_id TEXT PRIMARY KEY,
    approval_group TEXT NOT NULL,
    token_ttl INTEGER NOT NULL,
    justification TEXT,
    agent_key TEXT NOT NULL,
    agent_not_after INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    closed TEXT
);
CREATE INDEX IF NOT EXISTS approval_requests_open
    ON approval_requests (expires_at) WHERE closed IS NULL;
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    approver_subject TEXT NOT NULL,
    approver_key TEXT NOT NULL,
    decision TEXT NOT NULL,
    signature TEXT NOT NULL,
    reason TEXT,
    at INTEGER NOT NULL,
    approver_serials TEXT
);
CREATE INDEX IF NOT EXISTS approvals_request ON approvals (request_id);
CREATE TABLE IF NOT EXISTS audit_entries (
    idx INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    jti TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    executor TEXT NOT NULL,
    receipt TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL
);
";

/// The schema version this code writes (`PRAGMA user_version`). Version 1: every serial in
/// `revoked` and `issued` is canonical (the minimal positive magnitude, [`Serial`]). Version
/// 2: `executions.agent_serials`, the agent's path serials in canonical hex, space-separated
/// (NULL in rows written before). Version 3: `approvals.approver_serials`, the approver's path
/// serials in the same form (NULL in rows written before).
pub(super) const VERSION: i64 = 3;

/// Refuses a store whose schema is newer than this seb's ([`VERSION`]): written by a newer
/// seb (a binary rolled back after an upgrade, or a newer store restored), whose rows this one
/// would misread or whose checks it would skip.
pub(super) fn refuse_newer(
    conn: &Connection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(format!(
            "the store's schema is version {version}, newer than this seb's ({VERSION}): it was \
             written by a newer seb. Run that seb; to go back to this one, restore the backup \
             taken before the upgrade (docs/OPERATIONS.md §11, \"Upgrading\")"
        )
        .into());
    }
    Ok(())
}

/// Brings a store written by an earlier seb up to [`VERSION`], in one transaction, once.
///
/// Version 0 kept serials as they were typed to `seb cert revoke` (with a DER sign byte or
/// leading zeros) while lookups compare canonical bytes, so such a revocation would never
/// match. Canonicalising here, once, rather than on every read keeps revocation checks a
/// single indexed equality. Two spellings of one serial become one row, keeping the earlier
/// revocation (its time and reason); a zero serial, which no certificate seb accepts can
/// carry, is dropped. Each change is recorded as a `serial_migration` event.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= VERSION {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    if version < 1 {
        canonical_serials(&tx)?;
    }
    // A store made before version 2 (3) has `executions` (`approvals`) without the column
    // (CREATE TABLE IF NOT EXISTS left it as it was); a new one has it already.
    add_text_column(&tx, "executions", "agent_serials")?;
    add_text_column(&tx, "approvals", "approver_serials")?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()
}

/// Adds the nullable text column `column` to `table` unless it is there.
fn add_text_column(tx: &Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    let has_column: bool = tx
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !has_column {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
    }
    Ok(())
}

/// Version 1: every serial in `revoked` and `issued` canonical.
fn canonical_serials(tx: &Connection) -> rusqlite::Result<()> {
    let mut changes = Vec::new();
    for table in ["revoked", "issued"] {
        let time = if table == "revoked" {
            "revoked_at"
        } else {
            "issued_at"
        };
        let rows: Vec<(Vec<u8>, i64)> = tx
            .prepare(&format!(
                "SELECT serial, {time} FROM {table} WHERE length(serial) = 0 OR substr(serial, 1, 1) = x'00'"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (old, at) in rows {
            let Ok(serial) = Serial::from_magnitude(&old) else {
                tx.execute(&format!("DELETE FROM {table} WHERE serial = ?1"), [&old])?;
                changes.push(format!(
                    "{table}: dropped {:?}, not a serial",
                    hex::encode(&old)
                ));
                continue;
            };
            let new = serial.as_bytes();
            let existing: Option<i64> = tx
                .query_row(
                    &format!("SELECT {time} FROM {table} WHERE serial = ?1"),
                    [new],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(kept) if kept <= at => {
                    tx.execute(&format!("DELETE FROM {table} WHERE serial = ?1"), [&old])?;
                }
                Some(_) => {
                    tx.execute(&format!("DELETE FROM {table} WHERE serial = ?1"), [new])?;
                    tx.execute(
                        &format!("UPDATE {table} SET serial = ?2 WHERE serial = ?1"),
                        [&old[..], new],
                    )?;
                }
                None => {
                    tx.execute(
                        &format!("UPDATE {table} SET serial = ?2 WHERE serial = ?1"),
                        [&old[..], new],
                    )?;
                }
            }
            changes.push(format!("{table}: {} is {serial}", hex::encode(&old)));
        }
    }
    if !changes.is_empty() {
        tx.execute(
            "INSERT INTO events (kind, detail, at) VALUES ('serial_migration', ?1, strftime('%s', 'now'))",
            [changes.join("; ")],
        )?;
    }
    Ok(())
}
