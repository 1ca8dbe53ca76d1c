//! The embedded store: one SQLite database (`seb.db`) in the state directory, in WAL mode with
//! `synchronous=FULL`, so a committed write survives a crash or power loss.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{IssuedCertificate, RevokeOutcome, Store, StoreError};
use crate::ca::crl::{Reason, Revocation};

const SCHEMA: &str = "
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
";

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/seb.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("seb.db");
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        let conn = Connection::open(&path).map_err(|e| open_err(Box::new(e)))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| open_err(Box::new(e)))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_err(Box::new(e)))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_err(Box::new(e)))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Io {
            operation,
            source: "store lock poisoned".into(),
        })?;
        f(&mut conn).map_err(|e| StoreError::Io {
            operation,
            source: Box::new(e),
        })
    }
}

impl Store for SqliteStore {
    fn record_issued(&self, cert: &IssuedCertificate) -> Result<(), StoreError> {
        self.with("record issued certificate", |c| {
            c.execute(
                "INSERT INTO issued (serial, subject, role, issuer_label, not_after, issued_at, pem)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cert.serial,
                    cert.subject,
                    cert.role,
                    cert.issuer_label,
                    unix(cert.not_after),
                    unix(SystemTime::now()),
                    cert.pem
                ],
            )
            .map(|_| ())
        })
    }

    fn revoke(
        &self,
        serial: &[u8],
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError> {
        self.with("revoke", |c| {
            let tx = c.transaction()?;
            let already: Option<i64> = tx
                .query_row("SELECT 1 FROM revoked WHERE serial = ?1", [serial], |r| {
                    r.get(0)
                })
                .optional()?;
            if already.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked);
            }
            let known: Option<i64> = tx
                .query_row("SELECT 1 FROM issued WHERE serial = ?1", [serial], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.execute(
                "INSERT INTO revoked (serial, reason, revoked_at) VALUES (?1, ?2, ?3)",
                params![serial, reason.as_str(), unix(at)],
            )?;
            tx.commit()?;
            Ok(RevokeOutcome::Revoked {
                known: known.is_some(),
            })
        })
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<(Vec<u8>, String, i64)> = self.with("list revocations", |c| {
            let mut stmt = c.prepare(
                "SELECT serial, reason, revoked_at FROM revoked ORDER BY revoked_at, serial",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(serial, reason, at)| {
                Ok(Revocation {
                    serial,
                    reason: Reason::parse(&reason).ok_or_else(|| {
                        StoreError::Corrupt(format!("revocation reason {reason:?}"))
                    })?,
                    revoked_at: from_unix(at)?,
                })
            })
            .collect()
    }

    fn is_revoked(&self, serial: &[u8]) -> Result<bool, StoreError> {
        self.with("check revocation", |c| {
            c.query_row("SELECT 1 FROM revoked WHERE serial = ?1", [serial], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|row| row.is_some())
        })
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        let value: i64 = self.with("allocate CRL number", |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('crl_number', 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
                [],
            )?;
            let v = tx.query_row(
                "SELECT value FROM counters WHERE name = 'crl_number'",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(v)
        })?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt("negative CRL number".into()))
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_unix(secs: i64) -> Result<SystemTime, StoreError> {
    let secs = u64::try_from(secs).map_err(|_| StoreError::Corrupt("negative time".into()))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_is_recorded_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            store.revoke(&[1, 2, 3], Reason::KeyCompromise, at).unwrap(),
            RevokeOutcome::Revoked { known: false }
        );
        assert_eq!(
            store.revoke(&[1, 2, 3], Reason::Superseded, at).unwrap(),
            RevokeOutcome::AlreadyRevoked
        );
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(store.is_revoked(&[1, 2, 3]).unwrap());
        assert!(!store.is_revoked(&[1, 2, 4]).unwrap());
        let all = store.revocations().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].reason, Reason::KeyCompromise);
        assert_eq!(all[0].revoked_at, at);
    }

    #[test]
    fn crl_numbers_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.next_crl_number().unwrap(), 1);
        assert_eq!(store.next_crl_number().unwrap(), 2);
        drop(store);
        assert_eq!(
            SqliteStore::open(dir.path())
                .unwrap()
                .next_crl_number()
                .unwrap(),
            3
        );
    }

    #[test]
    fn known_serials_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .record_issued(&IssuedCertificate {
                serial: vec![9],
                subject: "CN=a".into(),
                role: "agent".into(),
                issuer_label: "seb-root".into(),
                not_after: SystemTime::now(),
                pem: String::new(),
            })
            .unwrap();
        assert_eq!(
            store
                .revoke(&[9], Reason::Unspecified, SystemTime::now())
                .unwrap(),
            RevokeOutcome::Revoked { known: true }
        );
    }

    #[test]
    fn unwritable_state_dir_is_an_open_error() {
        // /dev/null is a file, so a directory below it cannot exist (root ignores modes).
        let err = SqliteStore::open(Path::new("/dev/null/state")).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }
}
