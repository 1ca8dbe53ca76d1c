//! `seb check`'s look at the database: SQLite's own consistency check, read-only.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::SqliteStore;
use crate::store::StoreError;

impl SqliteStore {
    /// SQLite's `PRAGMA quick_check` over `dir/seb.db`, on a connection of its own: the
    /// problems it reports (none for a sound database). A backup copied in beside the old
    /// database's write-ahead log (`seb.db-wal`) is replayed with it and comes out malformed;
    /// this is how `seb check` finds out.
    pub fn quick_check(dir: &Path) -> Result<Vec<String>, StoreError> {
        let path = dir.join(Self::FILE);
        let failed = |e: rusqlite::Error| StoreError::Io {
            operation: "check the database",
            source: Box::new(e),
        };
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
        let mut stmt = conn.prepare("PRAGMA quick_check").map_err(failed)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(failed)?;
        // One problem a line; SQLite heads each database's list with `*** in database ... ***`.
        Ok(rows
            .iter()
            .flat_map(|r| r.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "ok" && !l.starts_with("***"))
            .map(str::to_owned)
            .collect())
    }
}
