//! The audit log inside the store: entries and the tree's perfect nodes in two tables, the
//! right edge of the tree in the writer's memory.
//!
//! * `audit_entries (idx, entry)`: the canonical entry bytes (JSON text) by leaf index.
//! * `audit_nodes (level, idx, hash)`: every perfect subtree hash, leaves at level 0. An append
//!   writes its leaf and the nodes it completes (two rows per entry on average); a root or a
//!   proof is O(log n) primary-key reads. Nothing is ever recomputed from all entries.
//!
//! Indexes are handed out when a write is queued (see `writer.rs`), so a grant knows its
//! index and leaf hash before the device signs its token. The writer checks each reserved
//! index against its edge before appending: a write whose index was abandoned (a commit
//! failed, another process appended) fails, and no token leaves without its entry.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::sql_int;
use crate::audit::merkle::{self, CompactRange, Hash};
use crate::store::WriteHealth;

/// The writer's view of the log: the right edge of the tree and the generation of the
/// indexes it accepts.
pub(super) struct AuditTree {
    range: CompactRange,
    /// `PRAGMA data_version` when the edge was last compared with the database: it changes
    /// only when another connection commits.
    seen_version: Option<i64>,
    pub(super) generation: u64,
    /// Why an entry could not be appended in the current batch, if one could not.
    abandoned: Option<String>,
    /// Set when an entry could not be appended even as a void, until an entry is: commits
    /// without entries (a health probe, a read) prove nothing about appends.
    unappendable: Option<String>,
    shared: Arc<WriteHealth>,
}

/// The error a write gets when its reserved index is no longer the next one.
#[derive(Debug, thiserror::Error)]
#[error("the audit index reserved for this write was abandoned after a failed commit")]
pub(super) struct StaleIndex;

impl AuditTree {
    /// The edge of the log as stored.
    pub(super) fn load(conn: &Connection, shared: Arc<WriteHealth>) -> rusqlite::Result<Self> {
        let size = stored_size(conn)?;
        let range = CompactRange::from_nodes(size, |level, idx| node(conn, level, idx))?;
        Ok(Self {
            range,
            seen_version: None,
            generation: 0,
            abandoned: None,
            unappendable: None,
            shared,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.range.size()
    }

    /// Follows what another connection committed (`seb cert revoke` appending, or the log
    /// edited or put back under the broker); true when the edge moved. The whole edge is
    /// compared, not only its size: a log cut short and then appended to again, or put back
    /// after the broker appended in its place, has the size the writer knows with other
    /// nodes, and an append built on the old ones would store a tree its entries contradict.
    pub(super) fn sync_with(&mut self, conn: &Connection) -> rusqlite::Result<bool> {
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.seen_version == Some(version) {
            return Ok(false);
        }
        let size = stored_size(conn)?;
        let stored = CompactRange::from_nodes(size, |level, idx| node(conn, level, idx))?;
        self.seen_version = Some(version);
        if stored == self.range {
            return Ok(false);
        }
        self.range = stored;
        Ok(true)
    }

    pub(super) fn save(&self) -> CompactRange {
        self.range.clone()
    }

    pub(super) fn restore(&mut self, saved: CompactRange) {
        self.range = saved;
    }

    /// Whether `index` of `generation` is the next append.
    pub(super) fn is_next(&self, index: u64, generation: u64) -> bool {
        generation == self.generation && index == self.range.size()
    }

    /// A write holding the next index failed on its own and no void entry could take its
    /// place: the indexes after it are abandoned, and the log is not appendable (`why`).
    pub(super) fn abandon(&mut self, why: String) {
        self.abandoned = Some(why);
    }

    pub(super) fn take_abandoned(&mut self) -> Option<String> {
        self.abandoned.take()
    }

    /// A commit succeeded; `appended` says whether it added entries to the log. After an
    /// entry could not be appended at all, only a commit that appends one shows the log
    /// appendable again. True when an entry of this commit could not be appended (the indexes
    /// handed out after it are abandoned).
    pub(super) fn committed(&mut self, appended: bool) -> bool {
        if let Some(why) = self.abandoned.take() {
            self.shared.failed(&why);
            self.unappendable = Some(why);
            return true;
        }
        if appended {
            self.unappendable = None;
            self.shared.succeeded();
        } else if let Some(why) = &self.unappendable {
            self.shared.failed(why);
        } else {
            self.shared.succeeded();
        }
        false
    }

    /// A commit failed: `/healthz` says why.
    pub(super) fn fail(&self, why: &str) {
        self.shared.failed(why);
    }

    /// Appends `entry` at `index` (which must be the next one) with its leaf and the nodes it
    /// completes.
    pub(super) fn append(
        &mut self,
        conn: &Connection,
        index: u64,
        generation: u64,
        entry: &str,
    ) -> rusqlite::Result<Hash> {
        if !self.is_next(index, generation) {
            return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
                StaleIndex,
            )));
        }
        let leaf = merkle::leaf_hash(entry.as_bytes());
        let mut range = self.range.clone();
        let made = range.push(leaf);
        conn.prepare_cached("INSERT INTO audit_entries (idx, entry) VALUES (?1, ?2)")?
            .execute(params![sql_int(index), entry])?;
        let mut insert =
            conn.prepare_cached("INSERT INTO audit_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
        for (level, idx, hash) in made {
            insert.execute(params![level, sql_int(idx), &hash[..]])?;
        }
        self.range = range;
        Ok(leaf)
    }
}

/// Number of stored entries.
pub(super) fn stored_size(conn: &Connection) -> rusqlite::Result<u64> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT MAX(idx) FROM audit_entries")?
        .query_row([], |r| r.get(0))?;
    Ok(max.map_or(0, |m| u64::try_from(m).map_or(0, |m| m + 1)))
}

/// The perfect node (`level`, `idx`); a missing one is corruption.
pub(super) fn node(conn: &Connection, level: u32, idx: u64) -> rusqlite::Result<Hash> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT hash FROM audit_nodes WHERE level = ?1 AND idx = ?2")?
        .query_row(params![level, sql_int(idx)], |r| r.get(0))
        .optional()?;
    blob.and_then(|b| Hash::try_from(b).ok())
        .ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// The level-0 nodes of entries `start..end`, as (index, hash).
pub(super) fn leaves(
    conn: &Connection,
    start: u64,
    end: u64,
) -> rusqlite::Result<Vec<(u64, Hash)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, hash FROM audit_nodes WHERE level = 0 AND idx >= ?1 AND idx < ?2 ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![sql_int(start), sql_int(end)], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut leaves = Vec::new();
    for row in rows {
        let (idx, hash) = row?;
        if let (Ok(idx), Ok(hash)) = (u64::try_from(idx), Hash::try_from(hash)) {
            leaves.push((idx, hash));
        }
    }
    Ok(leaves)
}

/// Entries `start..end` as (index, text).
pub(super) fn entries(
    conn: &Connection,
    start: u64,
    end: u64,
) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, entry FROM audit_entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![sql_int(start), sql_int(end)], |r| {
        Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?))
    })?;
    rows.collect()
}
