//! The database schema, created (idempotently) when the store opens.

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
    created_at INTEGER NOT NULL
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
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL
);
";
