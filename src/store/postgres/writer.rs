//! The PostgreSQL store's group-commit writer, and how replicas share one audit log.
//!
//! As in the SQLite store, one writer thread per broker takes every write waiting at that
//! moment and runs them in one transaction with one commit. What is new is that several
//! replicas append to the same log. A batch that appends takes a transaction-level advisory
//! lock ([`AUDIT_LOCK`]) first, reads the log's size, follows the entries other replicas
//! appended since its last batch, and only then gives its writes their indexes. The lock is
//! held for one transaction per batch, never per token, and is released by the commit (or by
//! PostgreSQL when a replica dies mid-batch): the log has one sequence with no gaps, and every
//! replica's entries are leaves of one RFC 6962 tree.
//!
//! An issuance learns its entry's index and leaf hash when its batch has the lock, before the
//! writes run, so the device signs the token (which names the entry) while the batch is
//! written and committed. A write that fails fails its whole batch: nothing of it is
//! committed and every caller in it hears so; no token leaves without its entry.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio_postgres::Client;

use super::conn::{Conn, Connector, Db, DbError};
use crate::audit::merkle::{self, CompactRange, Hash};
pub(super) use crate::store::sqlite::rows::sql_int;
use crate::store::{ExecutionRecord, LogPosition, WriteHealth};

/// Advisory lock key of the audit log's tail ("seb" and 2).
pub(super) const AUDIT_LOCK: i64 = 0x5345_4202;
/// Most writes one commit carries.
const MAX_BATCH: usize = 512;
/// Longest a deferred write waits for company.
const MAX_DEFER: std::time::Duration = std::time::Duration::from_millis(50);

/// What to do once the commit of a batch is known (`Err` carries why it did not commit).
pub(super) type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: given the batch, runs and returns its completion and, if it failed, why (which
/// rolls the whole batch back); given `None` (the batch could not run), runs nothing.
pub(super) type Work =
    Box<dyn FnOnce(Option<&mut Batch<'_, '_>>) -> (Completion, Option<String>) + Send>;
/// Told an audited write's place in the log as soon as its batch holds the lock.
pub(super) type Announce = Box<dyn FnOnce(LogPosition) + Send>;

/// A queued write.
pub(super) struct Job {
    pub(super) work: Work,
    /// Nobody waits for it yet (a token stored on its granted record): it rides along with the
    /// next batch someone does wait for, or is committed on its own after [`MAX_DEFER`].
    pub(super) deferred: bool,
    /// Appends exactly one audit entry.
    pub(super) audited: bool,
    /// For an audited write whose entry is known when queued: its leaf hash and who wants
    /// its place before the write runs.
    pub(super) announce: Option<(Hash, Announce)>,
}

/// What a write sees: the transaction and the log's tail.
pub(super) struct Batch<'a, 'b> {
    db: &'a mut Db<'b, Client>,
    edge: &'a mut CompactRange,
    entries: (Vec<i64>, Vec<String>),
    nodes: (Vec<i32>, Vec<i64>, Vec<Vec<u8>>),
    /// Rows of the hot path (a granted request, then its token) staged to be written with
    /// one statement for the whole batch, before any other statement runs.
    executions: Vec<ExecutionRecord>,
    issued: (Vec<String>, Vec<String>),
}

impl<'b> Batch<'_, 'b> {
    /// The transaction, with every staged row written first (so statements see the batch's
    /// earlier writes, in queue order).
    pub(super) fn db(&mut self) -> Result<&mut Db<'b, Client>, DbError> {
        self.flush()?;
        Ok(&mut *self.db)
    }

    /// Stages an `executions` row.
    pub(super) fn stage_execution(&mut self, record: ExecutionRecord) {
        self.executions.push(record);
    }

    /// Stages storing `token` on the `issuing` request `request_id`, marking it granted.
    pub(super) fn stage_issued(&mut self, request_id: String, token: String) {
        self.issued.0.push(request_id);
        self.issued.1.push(token);
    }

    fn flush(&mut self) -> Result<(), DbError> {
        if !self.executions.is_empty() {
            let rows = std::mem::take(&mut self.executions);
            super::records::insert_executions(self.db, &rows)?;
        }
        if !self.issued.0.is_empty() {
            let (ids, tokens) = std::mem::take(&mut self.issued);
            self.db.execute(
                "UPDATE executions e SET token = u.token, status = 'granted'
                 FROM UNNEST($1::TEXT[], $2::TEXT[]) AS u (request_id, token)
                 WHERE e.request_id = ANY($1::TEXT[]) AND e.request_id = u.request_id
                   AND e.status = 'issuing'",
                &[&ids, &tokens],
            )?;
        }
        Ok(())
    }

    /// Appends `entry` (canonical JSON) at the next index; written with the batch.
    pub(super) fn append(&mut self, entry: String) -> LogPosition {
        let index = self.edge.size();
        let leaf_hash = merkle::leaf_hash(entry.as_bytes());
        for (level, idx, hash) in self.edge.push(leaf_hash) {
            self.nodes.0.push(i32::try_from(level).unwrap_or(i32::MAX));
            self.nodes.1.push(sql_int(idx));
            self.nodes.2.push(hash.to_vec());
        }
        self.entries.0.push(sql_int(index));
        self.entries.1.push(entry);
        LogPosition { index, leaf_hash }
    }
}

/// The queue between callers and the writer thread.
#[derive(Default)]
pub(super) struct Jobs {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Jobs queued that are not deferred.
    urgent: usize,
    /// When the oldest deferred job waiting was queued.
    oldest_deferred: Option<std::time::Instant>,
    closed: bool,
}

impl Jobs {
    /// Queues `job`, or gives it back if the writer has stopped. An urgent job wakes the
    /// writer; so does the first deferred one, which an idle writer (waiting without a
    /// deadline) would otherwise not see until the next urgent job. The writer then waits
    /// at most [`MAX_DEFER`] for company.
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed {
            return Err(job);
        }
        let wake = if job.deferred {
            let first = q.oldest_deferred.is_none();
            if first {
                q.oldest_deferred = Some(std::time::Instant::now());
            }
            first
        } else {
            q.urgent += 1;
            true
        };
        q.jobs.push_back(job);
        drop(q);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    pub(super) fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// Every job waiting (at most [`MAX_BATCH`]) once one is urgent, a deferred one has waited
    /// [`MAX_DEFER`], or the queue closes; `None` once closed and drained.
    fn take(&self) -> Option<Vec<Job>> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let deferred_due = q.oldest_deferred.is_some_and(|t| t.elapsed() >= MAX_DEFER);
            if !q.jobs.is_empty() && (q.urgent > 0 || deferred_due || q.closed) {
                let n = q.jobs.len().min(MAX_BATCH);
                let taken: Vec<Job> = q.jobs.drain(..n).collect();
                q.urgent -= taken.iter().filter(|j| !j.deferred).count();
                q.oldest_deferred = if q.jobs.iter().any(|j| j.deferred) {
                    Some(std::time::Instant::now())
                } else {
                    None
                };
                return Some(taken);
            }
            if q.closed {
                return None;
            }
            q = match q.oldest_deferred {
                Some(t) => {
                    let wait = MAX_DEFER.saturating_sub(t.elapsed());
                    self.ready
                        .wait_timeout(q, wait)
                        .map(|(q, _)| q)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
                None => self.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// The writer thread's loop: until the queue closes, one transaction per batch.
pub(super) fn write_loop(jobs: Arc<Jobs>, connector: Arc<Connector>, health: Arc<WriteHealth>) {
    let mut conn: Option<Conn> = None;
    let mut edge: Option<CompactRange> = None;
    while let Some(batch) = jobs.take() {
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            // A new connection may reach another server (a failover that lost commits): the
            // tail kept from before is read again under the lock, never trusted.
            edge = None;
            match connector.connect() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let why = e.to_string();
                    health.failed(&why);
                    fail_all(batch, &why);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // As on SQLite: any commit that fails marks the log unwritable, any that succeeds
        // shows the store (and so the log) writable again.
        match run_batch(c, &mut edge, batch) {
            Ok(()) => health.succeeded(),
            Err(e) => {
                health.failed(&e.to_string());
                if e.breaks_connection() || c.client.is_closed() {
                    conn = None;
                }
                // The tail is read again under the lock by the next batch.
                edge = None;
            }
        }
    }
}

fn fail_all(batch: Vec<Job>, why: &str) {
    for job in batch {
        let (done, _) = (job.work)(None);
        done(Err(why.to_owned()));
    }
}

/// Runs one batch in one transaction and tells every write how it ended.
fn run_batch(
    conn: &mut Conn,
    edge: &mut Option<CompactRange>,
    jobs: Vec<Job>,
) -> Result<(), DbError> {
    let audited = jobs.iter().any(|j| j.audited);
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let mut db = conn.db();
    // `in_batch` ends by sending its last statement and COMMIT together (one round trip).
    let result = in_batch(&mut db, edge, jobs, audited, &mut completions);
    if result.is_err() {
        // Nothing of the batch is kept; a broken connection is dropped by the caller.
        let _ = db.batch("ROLLBACK");
    }
    let commit = match &result {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let result = match result {
        Ok(Some(tail)) => {
            *edge = Some(tail);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            // The tail is read again under the lock by the next batch.
            *edge = None;
            Err(e)
        }
    };
    for done in completions {
        done(commit.clone());
    }
    result
}

/// The batch inside its transaction (begun here, committed by the caller): takes the log's
/// lock when a write appends, runs the writes, writes their entries. Every job leaves a
/// completion in `completions`, run or not. Returns the log's new tail, if it appended.
fn in_batch(
    db: &mut Db<'_, Client>,
    edge: &mut Option<CompactRange>,
    jobs: Vec<Job>,
    audited: bool,
    completions: &mut Vec<Completion>,
) -> Result<Option<CompactRange>, DbError> {
    // One round trip: begin, wait for the other replicas' batches, read the log's size and
    // the stored nodes of the edge this replica knows.
    let prelude = if audited {
        let known = edge.take();
        db.simple_last_value(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({AUDIT_LOCK}); {}",
            size_and_nodes_query(known.as_ref())
        ))
        .and_then(|answer| {
            let answer = answer.unwrap_or_default();
            let (max, nodes) = answer.split_once('/').unwrap_or((&answer, ""));
            let size = match max {
                "" => 0,
                m => {
                    m.parse::<u64>()
                        .map_err(|_| DbError::Corrupt(format!("audit index {m:?}")))?
                        + 1
                }
            };
            let known = known.filter(|edge| edge.size() == size && hex_nodes(edge) == nodes);
            follow(db, known, size)
        })
    } else {
        db.batch("BEGIN").map(|()| CompactRange::default())
    };
    let mut tail = match prelude {
        Ok(tail) => tail,
        Err(e) => {
            completions.extend(jobs.into_iter().map(|job| (job.work)(None).0));
            return Err(e);
        }
    };
    // Every audited write appends exactly one entry, in queue order: their indexes are
    // known now, before any of them runs.
    let mut next = tail.size();
    let mut jobs = jobs;
    for job in &mut jobs {
        if job.audited {
            if let Some((leaf_hash, announce)) = job.announce.take() {
                announce(LogPosition {
                    index: next,
                    leaf_hash,
                });
            }
            next += 1;
        }
    }
    let mut batch = Batch {
        db,
        edge: &mut tail,
        entries: (Vec::new(), Vec::new()),
        nodes: (Vec::new(), Vec::new(), Vec::new()),
        executions: Vec::new(),
        issued: (Vec::new(), Vec::new()),
    };
    let mut failure = None;
    for job in jobs {
        if failure.is_some() {
            completions.push((job.work)(None).0);
            continue;
        }
        let (done, failed) = (job.work)(Some(&mut batch));
        completions.push(done);
        failure = failed;
    }
    if let Some(why) = failure {
        return Err(DbError::Corrupt(why));
    }
    // Whatever is staged (granted rows, tokens, entries and tree nodes) in one statement,
    // sent with COMMIT in the same round trip.
    let Batch {
        db,
        entries,
        nodes,
        executions,
        issued,
        ..
    } = batch;
    let appended = !entries.0.is_empty();
    if executions.is_empty() && issued.0.is_empty() && !appended {
        db.batch("COMMIT")?;
        return Ok(None);
    }
    let rows = super::records::ExecutionColumns::of(&executions);
    db.execute_and_commit(
        "WITH granted AS (
            INSERT INTO executions (request_id, agent, agent_subject, operation, resource,
                params, request_digest, status, deny_code, approvals_required, jti, token,
                expires_at, created_at, agent_serials)
            SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::TEXT[],
                $12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::TEXT[])
         ), issued AS (
            UPDATE executions e SET token = u.token, status = 'granted'
            FROM UNNEST($16::TEXT[], $17::TEXT[]) AS u (request_id, token)
            -- The ANY gives the planner the primary key to look the rows up by; joined with
            -- the unnested rows alone, it scanned the whole table in every batch.
            WHERE e.request_id = ANY($16::TEXT[]) AND e.request_id = u.request_id
              AND e.status = 'issuing'
         ), logged AS (
            INSERT INTO audit_entries (idx, entry)
            SELECT * FROM UNNEST($18::BIGINT[], $19::TEXT[])
         )
         INSERT INTO audit_nodes (level, idx, hash)
         SELECT * FROM UNNEST($20::INTEGER[], $21::BIGINT[], $22::BYTEA[])",
        &[
            &rows.request_id,
            &rows.agent,
            &rows.agent_subject,
            &rows.operation,
            &rows.resource,
            &rows.params,
            &rows.request_digest,
            &rows.status,
            &rows.deny_code,
            &rows.approvals,
            &rows.jti,
            &rows.token,
            &rows.expires_at,
            &rows.created_at,
            &rows.agent_serials,
            &issued.0,
            &issued.1,
            &entries.0,
            &entries.1,
            &nodes.0,
            &nodes.1,
            &nodes.2,
        ],
    )?;
    Ok(appended.then_some(tail))
}

/// The statement that reads the log's size and, in hex, the stored nodes at the places of
/// `known`'s edge, as `SIZE-1/HEX`. An edge whose size matches but whose nodes do not (a log
/// cut short and appended to again, a promoted standby that lost commits which were then
/// made up by other appends) is read again rather than appended to.
fn size_and_nodes_query(known: Option<&CompactRange>) -> String {
    let places: Vec<String> = known
        .map(|edge| CompactRange::peak_positions(edge.size()))
        .unwrap_or_default()
        .into_iter()
        .map(|(level, idx)| format!("({level}, {idx})"))
        .collect();
    let filter = if places.is_empty() {
        "false".to_owned()
    } else {
        format!("(n.level, n.idx) IN ({})", places.join(", "))
    };
    format!(
        "SELECT concat((SELECT MAX(idx) FROM audit_entries), '/', \
         (SELECT string_agg(encode(n.hash, 'hex'), '' ORDER BY n.level DESC) \
          FROM audit_nodes n WHERE {filter}))"
    )
}

/// An edge's nodes in hex, largest first, as [`size_and_nodes_query`] reads them.
fn hex_nodes(edge: &CompactRange) -> String {
    edge.peak_hashes().map(hex::encode).collect()
}

/// The log's tail of `size` entries: `known` if it is still the stored one, else read again.
fn follow(
    db: &mut Db<'_, Client>,
    known: Option<CompactRange>,
    size: u64,
) -> Result<CompactRange, DbError> {
    match known {
        Some(edge) if edge.size() == size => Ok(edge),
        // Another replica appended: the new edge's nodes in one round trip, not one each,
        // since this runs while the batch holds the log's lock.
        _ => {
            let wanted = CompactRange::peak_positions(size);
            let levels: Vec<i32> = wanted
                .iter()
                .map(|&(l, _)| i32::try_from(l).unwrap_or(i32::MAX))
                .collect();
            let indexes: Vec<i64> = wanted.iter().map(|&(_, i)| sql_int(i)).collect();
            let rows = db.query(
                "SELECT n.level, n.idx, n.hash FROM audit_nodes n
                 JOIN UNNEST($1::int[], $2::bigint[]) AS w(level, idx)
                   ON n.level = w.level AND n.idx = w.idx",
                &[&levels, &indexes],
            )?;
            let found: Vec<((i32, i64), Vec<u8>)> = rows
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            CompactRange::from_nodes(size, |level, idx| {
                let key = (i32::try_from(level).unwrap_or(i32::MAX), sql_int(idx));
                found
                    .iter()
                    .find(|(at, _)| *at == key)
                    .and_then(|(_, hash)| Hash::try_from(hash.as_slice()).ok())
                    .ok_or_else(|| {
                        DbError::Corrupt(format!("audit node ({level}, {idx}) is missing"))
                    })
            })
        }
    }
}

/// Number of entries in the log.
pub(super) fn stored_size<C: tokio_postgres::GenericClient + Sync>(
    db: &mut Db<'_, C>,
) -> Result<u64, DbError> {
    let max: Option<i64> = db
        .query_one("SELECT MAX(idx) FROM audit_entries", &[])?
        .get(0);
    Ok(max.map_or(0, |m| u64::try_from(m).map_or(0, |m| m + 1)))
}

/// The perfect node (`level`, `idx`); a missing one is corruption.
pub(super) fn node<C: tokio_postgres::GenericClient + Sync>(
    db: &mut Db<'_, C>,
    level: u32,
    idx: u64,
) -> Result<Hash, DbError> {
    let level = i32::try_from(level).unwrap_or(i32::MAX);
    let row = db.query_opt(
        "SELECT hash FROM audit_nodes WHERE level = $1 AND idx = $2",
        &[&level, &sql_int(idx)],
    )?;
    row.and_then(|r| Hash::try_from(r.get::<_, Vec<u8>>(0)).ok())
        .ok_or_else(|| DbError::Corrupt(format!("audit node ({level}, {idx}) is missing")))
}
