//! The store's group-commit writer and its checkpointer.
//!
//! One writer thread owns the write connection. It takes every write waiting at that moment
//! (at most [`MAX_BATCH`]), runs them in one transaction, each in a savepoint of its own when it
//! has several statements, and commits once: a burst of issuances costs one fsync, not one each.
//! Deferred writes (nobody waits for them yet) wake no one and ride along with the next commit,
//! or commit on their own after [`MAX_DEFER`]. A completion runs only once the commit that
//! holds its write is known, so no caller ever hears "done" for a write that is not durable.
//! A second thread copies the write-ahead log into the database, off every request's path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::super::StoreError;
use super::audit::AuditTree;

/// Most writes one commit carries.
pub(super) const MAX_BATCH: usize = 512;

pub(super) type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: given the open transaction, runs and returns what to do once the commit is known;
/// given `None` (the transaction could not start), runs nothing.
pub(super) type Work = Box<dyn FnOnce(Option<&mut Txn<'_>>) -> Completion + Send>;

/// What a write sees inside the writer's transaction: the connection and the audit log's
/// in-memory right edge (which the writer restores when the transaction does not commit).
pub(super) struct Txn<'a> {
    pub(super) conn: &'a Connection,
    pub(super) audit: &'a mut AuditTree,
}

/// A queued write. A deferred one has nobody waiting for it yet: it rides along with the next
/// commit someone does wait for, or is committed on its own after [`MAX_DEFER`].
pub(super) struct Job {
    pub(super) work: Work,
    pub(super) deferred: bool,
    pub(super) queued: Instant,
}

/// The writer's queue. Urgent writes wake the writer; deferred ones do not (that is the point:
/// a deferred write costs neither an fsync nor a thread wake-up of its own).
pub(super) struct Queue {
    pub(super) jobs: VecDeque<Job>,
    /// How many queued jobs are not deferred.
    pub(super) urgent: usize,
    pub(super) closed: bool,
    /// The audit leaf index the next audited write gets. Assigned here, under the queue's
    /// lock, so that queue order is index order: the writer runs jobs in that order.
    pub(super) audit_next: u64,
    /// Bumped whenever reserved indexes are abandoned (a commit failed, another process
    /// appended): writes holding an older generation fail instead of leaving a gap.
    pub(super) audit_generation: u64,
}

pub(super) struct Jobs {
    pub(super) queue: Mutex<Queue>,
    pub(super) ready: Condvar,
    /// Set by the checkpointer when the write-ahead log has grown past [`LOG_START_OVER`]
    /// frames; the writer then finishes the checkpoint between two commits (see
    /// [`finish_checkpoint`]).
    pub(super) log_long: AtomicBool,
    /// Checkpoints the writer finished itself (see [`finish_checkpoint`]).
    pub(super) writer_checkpoints: AtomicU64,
}

impl Jobs {
    /// Queues `job`, or gives it back if the writer has stopped.
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        let Ok(mut queue) = self.queue.lock() else {
            return Err(job);
        };
        if queue.closed {
            return Err(job);
        }
        let urgent = !job.deferred;
        queue.urgent += usize::from(urgent);
        queue.jobs.push_back(job);
        drop(queue);
        if urgent {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues the job `make` builds from a reserved audit slot (index, generation), in one
    /// step under the queue's lock, or gives the job back if the writer has stopped.
    pub(super) fn push_audited(
        &self,
        deferred: bool,
        make: impl FnOnce(u64, u64) -> Job,
    ) -> Result<(u64, u64), Job> {
        let Ok(mut queue) = self.queue.lock() else {
            return Err(make(u64::MAX, u64::MAX));
        };
        let slot = (queue.audit_next, queue.audit_generation);
        let job = make(slot.0, slot.1);
        if queue.closed {
            return Err(job);
        }
        queue.audit_next += 1;
        queue.urgent += usize::from(!deferred);
        queue.jobs.push_back(job);
        drop(queue);
        if !deferred {
            self.ready.notify_one();
        }
        Ok(slot)
    }

    /// Abandons every reserved audit index: the next one is `size`, and writes holding an
    /// older generation fail. Returns the new generation.
    pub(super) fn reset_audit(&self, size: u64) -> u64 {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.audit_generation += 1;
        queue.audit_next = size;
        queue.audit_generation
    }

    pub(super) fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.closed = true;
        }
        self.ready.notify_one();
    }

    /// Closes the queue and fails every job in it: for a writer that stops other than by
    /// `close` (a panic, a poisoned lock), so that no caller waits for it forever.
    fn abandon(&self) {
        let left: Vec<Job> = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.closed = true;
            queue.urgent = 0;
            queue.jobs.drain(..).collect()
        };
        for job in left {
            (job.work)(None)(Err("the store writer has stopped".into()));
        }
    }
}

/// Fails what is left in the queue when the writer thread ends, however it ends.
struct WriterExit<'a>(&'a Jobs);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Joins `handle`, unless this is that thread (a callback run by the writer may drop the last
/// reference to the store; joining itself would fail).
pub(in crate::store) fn join_unless_current(handle: Option<std::thread::JoinHandle<()>>) {
    if let Some(handle) = handle {
        if handle.thread().id() != std::thread::current().id() {
            let _ = handle.join();
        }
    }
}

pub(super) fn writer_gone(operation: &'static str) -> StoreError {
    StoreError::Io {
        operation,
        source: "the store writer has stopped".into(),
    }
}

/// How a write is kept from touching the others in its commit when it fails.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    /// In a savepoint of its own, rolled back if the write fails: for writes of several
    /// statements.
    Savepoint,
    /// A write of at most one statement: SQLite already backs out a failed statement alone
    /// (and the savepoint's two extra statements and in-memory journal showed in the
    /// writer's profile, per token, twice).
    OneStatement,
}

pub(super) fn run_in_savepoint<'a, 'b, T>(
    txn: &'b mut Txn<'a>,
    f: impl FnOnce(&mut Txn<'a>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let conn = txn.conn;
    // Cached statements: this runs for every write, and parsing it each time showed up in
    // the writer's profile.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(txn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// How often the checkpointer copies committed log pages into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// Log frames (pages) past which the writer finishes a checkpoint itself: 4 MiB of 4 KiB
/// pages, SQLite's own default for its automatic checkpoints.
const LOG_START_OVER: i64 = 1000;

/// Most frames the checkpointer may leave uncopied and still ask the writer to finish: a
/// reader holding an old snapshot (an operator's `.backup`, a long export) stops a checkpoint
/// short, and when it lets go the whole backlog would fall to the writer, on the request path.
const LEFT_FOR_WRITER: i64 = LOG_START_OVER / 4;

/// Runs `PRAGMA wal_checkpoint(mode)`: the frames in the log, and how many of them are in the
/// database now.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

/// Whether the writer should finish a checkpoint that copied `copied` of `frames`: the log is
/// long enough to start over, and what is left is little (see [`LEFT_FOR_WRITER`]).
fn writer_should_finish(frames: i64, copied: i64) -> bool {
    frames >= LOG_START_OVER && frames - copied <= LEFT_FOR_WRITER
}

/// The checkpointer thread: a passive checkpoint (it never blocks the writer) every interval,
/// and a full one when the store closes, until `stop` is dropped.
///
/// A passive checkpoint copies the log into the database but cannot make the log start over:
/// SQLite reuses the log from its beginning only when a write begins with every frame already
/// copied, and under steady load a commit always lands while the checkpoint runs. So when the
/// log has grown past [`LOG_START_OVER`] frames and this pass copied nearly all of it, this
/// thread asks the writer to copy the few frames committed meanwhile, between two commits,
/// after which the next commit starts the log over. Without that the log grows by every commit for as long as the load lasts (732 MB
/// after the 24,577 records of `the_write_ahead_log_starts_over_under_steady_load`), and each
/// commit syncs the file's new size as well as its pages.
pub(super) fn checkpoint_loop(conn: Connection, jobs: &Jobs, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        match checkpoint(&conn, "PASSIVE") {
            Ok((frames, copied)) if writer_should_finish(frames, copied) => {
                jobs.log_long.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "store checkpoint failed; the log keeps growing until one succeeds");
            }
        }
    }
    if let Err(e) = checkpoint(&conn, "TRUNCATE") {
        tracing::warn!(error = %e, "store checkpoint at close failed; the log is kept and read at the next open");
    }
}

/// The writer's part of a checkpoint, when the checkpointer asked for it: it copies what was
/// committed since the checkpointer's last pass (it is this process's only writer, so nothing
/// lands meanwhile), and the next commit then writes the log from its beginning. It runs after the
/// waiting writes have been answered; writes queued meanwhile wait for it (one database sync
/// and a few pages).
fn finish_checkpoint(conn: &Connection, jobs: &Jobs) {
    if !jobs.log_long.swap(false, Ordering::Relaxed) {
        return;
    }
    jobs.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = checkpoint(conn, "PASSIVE") {
        // The checkpointer asks again after its next pass.
        tracing::debug!(error = %e, "the writer's checkpoint did not finish");
    }
}

/// Longest a deferred write waits for a commit to ride along with.
const MAX_DEFER: Duration = Duration::from_millis(50);

/// The writer thread: commits waiting jobs, many to a transaction. It starts a commit when an
/// urgent job is queued, when the oldest deferred job has waited [`MAX_DEFER`], or when the
/// store closes; a batch of deferred jobs alone costs no fsync until then.
pub(super) fn write_loop(conn: Connection, jobs: &Jobs, mut audit: AuditTree) {
    let _exit = WriterExit(jobs);
    loop {
        let (batch, closed) = {
            let Ok(mut queue) = jobs.queue.lock() else {
                return;
            };
            loop {
                let overdue = queue
                    .jobs
                    .front()
                    .map(|oldest| MAX_DEFER.saturating_sub(oldest.queued.elapsed()));
                if queue.urgent > 0 || queue.closed || overdue == Some(Duration::ZERO) {
                    break;
                }
                // Deferred jobs do not wake the writer: with an empty queue it looks again
                // after MAX_DEFER, with a deferred job when that job is due.
                let wait = overdue.unwrap_or(MAX_DEFER);
                queue = match jobs.ready.wait_timeout(queue, wait) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
            let take = queue.jobs.len().min(MAX_BATCH);
            let batch: Vec<Job> = queue.jobs.drain(..take).collect();
            let urgent_taken = batch.iter().filter(|job| !job.deferred).count();
            queue.urgent -= urgent_taken;
            (batch, queue.closed && queue.jobs.is_empty())
        };
        commit_batch(&conn, jobs, &mut audit, batch);
        if closed {
            return;
        }
        finish_checkpoint(&conn, jobs);
    }
}

fn commit_batch(conn: &Connection, queue: &Jobs, audit: &mut AuditTree, batch: Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let began = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
        // Another process (`seb cert revoke` on the host) may have appended since: the
        // in-memory edge follows the database, and indexes reserved from the old edge fail.
        if audit.sync_with(conn)? {
            audit.generation = queue.reset_audit(audit.size());
        }
        Ok(())
    });
    if let Err(e) = began {
        let message = e.to_string();
        for job in batch {
            (job.work)(None)(Err(message.clone()));
        }
        let _ = conn.execute_batch("ROLLBACK");
        audit.fail(&message);
        audit.generation = queue.reset_audit(audit.size());
        return;
    }
    let saved = audit.save();
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    for job in jobs.by_ref() {
        let mut txn = Txn {
            conn,
            audit: &mut *audit,
        };
        completions.push((job.work)(Some(&mut txn)));
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an I/O error, a full disk): the
            // writes after this one would each commit on their own, outside the batch, and
            // be reported failed. They are not run.
            break;
        }
    }
    completions.extend(jobs.map(|job| (job.work)(None)));
    let commit = if conn.is_autocommit() {
        Err("the transaction was rolled back by the database".to_owned())
    } else {
        conn.execute_batch("COMMIT").map_err(|e| e.to_string())
    };
    if commit.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    match &commit {
        Ok(()) => {
            // An entry that could not be appended even as a void (a damaged tree, a
            // constraint) leaves the log unappendable however many other writes commit:
            // `/healthz` says so until an entry is appended again.
            let appended = audit.size() > saved.size();
            if audit.committed(appended) {
                audit.generation = queue.reset_audit(audit.size());
            }
        }
        Err(message) => {
            // The log's edge goes back to what is durable; every index handed out after it
            // is abandoned (those writes fail: no token). The failure is reported below.
            let _ = audit.take_abandoned();
            audit.restore(saved);
            audit.fail(message);
            audit.generation = queue.reset_audit(audit.size());
        }
    }
    for done in completions {
        done(commit.clone());
    }
}
