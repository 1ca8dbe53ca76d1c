//! The embedded store: one SQLite database (`seb.db`) in the state directory, in WAL mode with
//! `synchronous=FULL`, so a committed write survives a crash or power loss.
//!
//! Every write goes through one writer thread that practises group commit: it takes all the
//! writes waiting at that moment, runs them inside one transaction (each write of several
//! statements in a savepoint of its own, so that a failing write undoes only itself), and
//! commits once, so a burst of token issuances costs one fsync rather than one each. A caller
//! returns only after the commit that holds its write. Reads use a separate connection (WAL
//! readers never wait for the writer).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Commit, ExecutionRecord, ExecutionStatus, IssuedCertificate, RedeemOutcome, RevokeOutcome,
    Store, StoreError, WriteDone,
};
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

/// Most writes one commit carries.
const MAX_BATCH: usize = 512;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: given the connection inside an open transaction, runs and returns what to do once
/// the commit is known; given `None` (the transaction could not start), runs nothing.
type Work = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

/// A queued write. A deferred one has nobody waiting for it yet: it rides along with the next
/// commit someone does wait for, or is committed on its own after [`MAX_DEFER`].
struct Job {
    work: Work,
    deferred: bool,
    queued: Instant,
}

/// The writer's queue. Urgent writes wake the writer; deferred ones do not (that is the point:
/// a deferred write costs neither an fsync nor a thread wake-up of its own).
struct Queue {
    jobs: VecDeque<Job>,
    /// How many queued jobs are not deferred.
    urgent: usize,
    closed: bool,
}

struct Jobs {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Jobs {
    /// Queues `job`, or gives it back if the writer has stopped.
    fn push(&self, job: Job) -> Result<(), Job> {
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

    fn close(&self) {
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

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    jobs: Arc<Jobs>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl Drop for SqliteStore {
    /// Lets the writer commit what is queued, then has the checkpointer copy the log into the
    /// database and truncate it.
    fn drop(&mut self) {
        self.jobs.close();
        join_unless_current(self.writer.lock().ok().and_then(|mut w| w.take()));
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some((stop, handle)) = checkpointer {
            drop(stop);
            join_unless_current(Some(handle));
        }
    }
}

/// Joins `handle`, unless this is that thread (a callback run by the writer may drop the last
/// reference to the store; joining itself would fail).
fn join_unless_current(handle: Option<std::thread::JoinHandle<()>>) {
    if let Some(handle) = handle {
        if handle.thread().id() != std::thread::current().id() {
            let _ = handle.join();
        }
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
        let connect = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            // Statement journals (for the savepoints of writes of several statements) stay
            // in memory.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            Ok(conn)
        };
        let writer_conn = connect().map_err(|e| open_err(Box::new(e)))?;
        writer_conn
            .execute_batch(SCHEMA)
            .map_err(|e| open_err(Box::new(e)))?;
        // Commits only append to the write-ahead log (and fsync it); copying the log into the
        // database, with its own fsyncs, is the checkpointer thread's job, off the path of
        // every request.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_err(Box::new(e)))?;
        let checkpoint_conn = connect().map_err(|e| open_err(Box::new(e)))?;
        let reader = connect().map_err(|e| open_err(Box::new(e)))?;
        let jobs = Arc::new(Jobs {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                urgent: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let queue = jobs.clone();
        let writer = std::thread::Builder::new()
            .name("seb-store-writer".into())
            .spawn(move || write_loop(writer_conn, &queue))
            .map_err(|e| open_err(Box::new(e)))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("seb-store-ckpt".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped))
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(Self {
            jobs,
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            reader: Mutex::new(reader),
        })
    }

    /// Runs `f` in the writer's next commit and returns its result once committed.
    fn write<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        self.enqueue(
            operation,
            f,
            move |result| {
                let _ = tx.send(result);
            },
            Scope::Savepoint,
            false,
        );
        rx.recv().unwrap_or_else(|_| Err(writer_gone(operation)))
    }

    /// Queues `f` for the writer and returns at once; `done` receives its result once the
    /// commit is known (on the writer thread), or at once if the writer has stopped. A
    /// `deferred` job waits for a commit someone else starts (see [`Job`]).
    fn enqueue<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
        scope: Scope,
        deferred: bool,
    ) {
        let work: Work = Box::new(move |conn: Option<&Connection>| {
            let outcome = match (conn, scope) {
                (Some(conn), Scope::Savepoint) => run_in_savepoint(conn, f).map_err(Some),
                (Some(conn), Scope::OneStatement) => f(conn).map_err(Some),
                (None, _) => Err(None),
            };
            Box::new(move |commit: Result<(), String>| {
                done(match (outcome, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(Some(e)), _) => Err(StoreError::Io {
                        operation,
                        source: Box::new(e),
                    }),
                    (Err(None), commit) => Err(StoreError::Io {
                        operation,
                        source: format!("not written: {}", commit.err().unwrap_or_default()).into(),
                    }),
                    (Ok(_), Err(e)) => Err(StoreError::Io {
                        operation,
                        source: format!("commit failed: {e}").into(),
                    }),
                })
            })
        });
        let job = Job {
            work,
            deferred,
            queued: Instant::now(),
        };
        if let Err(job) = self.jobs.push(job) {
            // The writer is gone: fail the job without running it.
            (job.work)(None)(Err("the store writer has stopped".into()));
        }
    }

    fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().map_err(|_| StoreError::Io {
            operation,
            source: "store lock poisoned".into(),
        })?;
        f(&conn).map_err(|e| StoreError::Io {
            operation,
            source: Box::new(e),
        })
    }
}

fn writer_gone(operation: &'static str) -> StoreError {
    StoreError::Io {
        operation,
        source: "the store writer has stopped".into(),
    }
}

/// How a write is kept from touching the others in its commit when it fails.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// In a savepoint of its own, rolled back if the write fails: for writes of several
    /// statements.
    Savepoint,
    /// A write of at most one statement: SQLite already backs out a failed statement alone
    /// (and the savepoint's two extra statements and in-memory journal showed in the
    /// writer's profile, per token, twice).
    OneStatement,
}

fn run_in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // Cached statements: this runs for every write, and parsing it each time showed up in
    // the writer's profile.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
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

/// The checkpointer thread: a passive checkpoint (it never blocks the writer) every interval,
/// and a full one when the store closes, until `stop` is dropped.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| {
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::warn!(error = %e, "store checkpoint failed; the log keeps growing until one succeeds");
        }
    };
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        checkpoint("PASSIVE");
    }
    checkpoint("TRUNCATE");
}

/// Longest a deferred write waits for a commit to ride along with.
const MAX_DEFER: Duration = Duration::from_millis(50);

/// The writer thread: commits waiting jobs, many to a transaction. It starts a commit when an
/// urgent job is queued, when the oldest deferred job has waited [`MAX_DEFER`], or when the
/// store closes; a batch of deferred jobs alone costs no fsync until then.
fn write_loop(conn: Connection, jobs: &Jobs) {
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
        commit_batch(&conn, batch);
        if closed {
            return;
        }
    }
}

fn commit_batch(conn: &Connection, batch: Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        for job in batch {
            (job.work)(None)(Err(message.clone()));
        }
        let _ = conn.execute_batch("ROLLBACK");
        return;
    }
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    for job in jobs.by_ref() {
        completions.push((job.work)(Some(conn)));
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
    for done in completions {
        done(commit.clone());
    }
}

impl Store for SqliteStore {
    fn record_issued(&self, cert: &IssuedCertificate) -> Result<(), StoreError> {
        let cert = cert.clone();
        self.write("record issued certificate", move |c| {
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
        let serial = serial.to_vec();
        self.write("revoke", move |c| {
            let already: Option<i64> = c
                .query_row("SELECT 1 FROM revoked WHERE serial = ?1", [&serial], |r| {
                    r.get(0)
                })
                .optional()?;
            if already.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked);
            }
            let known: Option<i64> = c
                .query_row("SELECT 1 FROM issued WHERE serial = ?1", [&serial], |r| {
                    r.get(0)
                })
                .optional()?;
            c.execute(
                "INSERT INTO revoked (serial, reason, revoked_at) VALUES (?1, ?2, ?3)",
                params![serial, reason.as_str(), unix(at)],
            )?;
            Ok(RevokeOutcome::Revoked {
                known: known.is_some(),
            })
        })
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<(Vec<u8>, String, i64)> = self.read("list revocations", |c| {
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
        self.read("check revocation", |c| {
            c.prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")?
                .query_row([serial], |r| r.get::<_, i64>(0))
                .optional()
                .map(|row| row.is_some())
        })
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        let value: i64 = self.write("allocate CRL number", |c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ('crl_number', 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
                [],
            )?;
            c.query_row(
                "SELECT value FROM counters WHERE name = 'crl_number'",
                [],
                |r| r.get(0),
            )
        })?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt("negative CRL number".into()))
    }

    fn record_execution(&self, record: &ExecutionRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.write("record execution", move |c| insert_execution(c, &r))
    }

    fn record_execution_then(&self, record: ExecutionRecord, commit: Commit, done: WriteDone) {
        self.enqueue(
            "record execution",
            move |c| insert_execution(c, &record),
            done,
            Scope::OneStatement,
            commit == Commit::Deferred,
        );
    }

    fn flush(&self) {
        self.enqueue("flush", |_| Ok(()), |_| (), Scope::OneStatement, false);
    }

    fn complete_issuance_then(&self, request_id: &str, token: Option<String>, done: WriteDone) {
        let request_id = request_id.to_owned();
        self.enqueue(
            "complete issuance",
            move |c| {
                match token {
                    Some(token) => c
                        .prepare_cached(
                            "UPDATE executions SET token = ?2, status = 'granted'
                             WHERE request_id = ?1 AND status = 'issuing'",
                        )?
                        .execute(params![request_id, token])?,
                    None => c
                        .prepare_cached(
                            "UPDATE executions SET status = 'failed'
                             WHERE request_id = ?1 AND status = 'issuing'",
                        )?
                        .execute(params![request_id])?,
                };
                Ok(())
            },
            done,
            Scope::OneStatement,
            true,
        );
    }

    fn execution(&self, request_id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            u32,
            Option<String>,
            Option<String>,
            Option<i64>,
            i64,
        );
        // Read on the writer thread, behind any queued write for this request (its token).
        let request_id = request_id.to_owned();
        let row: Option<Row> = self.write("read execution", move |c| {
            c.prepare_cached(
                "SELECT request_id, agent, agent_subject, operation, resource, params,
                    request_digest, status, deny_code, approvals_required, jti, token,
                    expires_at, created_at
                 FROM executions WHERE request_id = ?1",
            )?
            .query_row([&request_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                ))
            })
            .optional()
        })?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(ExecutionRecord {
            request_id: r.0,
            agent: r.1,
            agent_subject: r.2,
            operation: r.3,
            resource: r.4,
            params: r.5,
            request_digest: r.6,
            status: ExecutionStatus::parse(&r.7)
                .ok_or_else(|| StoreError::Corrupt(format!("execution status {:?}", r.7)))?,
            deny_code: r.8,
            approvals_required: r.9,
            jti: r.10,
            token: r.11,
            expires_at: r.12.map(from_unix).transpose()?,
            created_at: from_unix(r.13)?,
        }))
    }

    fn redeem(
        &self,
        jti: &str,
        executor: &str,
        at: SystemTime,
    ) -> Result<RedeemOutcome, StoreError> {
        let (jti, executor) = (jti.to_owned(), executor.to_owned());
        let (redeemed_at, known): (Option<i64>, bool) = self.write("redeem token", move |c| {
            let known = c
                .prepare_cached("SELECT 1 FROM executions WHERE jti = ?1")?
                .query_row([&jti], |r| r.get::<_, i64>(0))
                .optional()?
                .is_some();
            if !known {
                return Ok((None, false));
            }
            let inserted = c
                .prepare_cached(
                    "INSERT INTO redemptions (jti, executor, redeemed_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(jti) DO NOTHING",
                )?
                .execute(params![jti, executor, unix(at)])?;
            if inserted == 1 {
                return Ok((None, true));
            }
            let first: i64 = c.query_row(
                "SELECT redeemed_at FROM redemptions WHERE jti = ?1",
                [&jti],
                |r| r.get(0),
            )?;
            Ok((Some(first), true))
        })?;
        Ok(match (known, redeemed_at) {
            (false, _) => RedeemOutcome::Unknown,
            (true, None) => RedeemOutcome::Redeemed,
            (true, Some(first)) => RedeemOutcome::AlreadyRedeemed {
                at: from_unix(first)?,
            },
        })
    }

    fn record_event(&self, kind: &str, detail: &str, at: SystemTime) -> Result<(), StoreError> {
        let (kind, detail) = (kind.to_owned(), detail.to_owned());
        self.write("record event", move |c| {
            c.execute(
                "INSERT INTO events (kind, detail, at) VALUES (?1, ?2, ?3)",
                params![kind, detail, unix(at)],
            )
            .map(|_| ())
        })
    }

    fn events(&self, kind: &str) -> Result<Vec<(SystemTime, String)>, StoreError> {
        let rows: Vec<(i64, String)> = self.read("list events", |c| {
            let mut stmt =
                c.prepare("SELECT at, detail FROM events WHERE kind = ?1 ORDER BY id")?;
            let rows = stmt.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(at, detail)| Ok((from_unix(at)?, detail)))
            .collect()
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.write("health check write", |c| {
            c.execute(
                "INSERT INTO health (id, at) VALUES (1, ?1)
                 ON CONFLICT(id) DO UPDATE SET at = excluded.at",
                [unix(SystemTime::now())],
            )
            .map(|_| ())
        })
    }
}

fn insert_execution(c: &Connection, r: &ExecutionRecord) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO executions (request_id, agent, agent_subject, operation, resource,
            params, request_digest, status, deny_code, approvals_required, jti, token,
            expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        r.request_id,
        r.agent,
        r.agent_subject,
        r.operation,
        r.resource,
        r.params,
        r.request_digest,
        r.status.as_str(),
        r.deny_code,
        r.approvals_required,
        r.jti,
        r.token,
        r.expires_at.map(unix),
        unix(r.created_at),
    ])
    .map(|_| ())
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
    fn events_are_recorded_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        store
            .record_event("attestation_failed", "PCR 23 differs", t)
            .unwrap();
        store.record_event("attestation_restored", "", t).unwrap();
        store
            .record_event("attestation_failed", "TPM unreachable", t)
            .unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let failed = store.events("attestation_failed").unwrap();
        assert_eq!(
            failed,
            vec![
                (t, "PCR 23 differs".to_owned()),
                (t, "TPM unreachable".to_owned())
            ]
        );
        assert!(store.events("nothing").unwrap().is_empty());
    }

    #[test]
    fn unwritable_state_dir_is_an_open_error() {
        // /dev/null is a file, so a directory below it cannot exist (root ignores modes).
        let err = SqliteStore::open(Path::new("/dev/null/state")).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }

    fn issuing(id: &str) -> ExecutionRecord {
        ExecutionRecord {
            request_id: id.into(),
            agent: "thumb".into(),
            agent_subject: "CN=agent".into(),
            operation: "deploy.restart".into(),
            resource: "prod/api".into(),
            params: "{}".into(),
            request_digest: "digest".into(),
            status: ExecutionStatus::Issuing,
            deny_code: None,
            approvals_required: 0,
            jti: Some(format!("jti-{id}")),
            token: None,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_060)),
            created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    /// Queues `record` with `commit` and returns a receiver for its completion.
    fn queue(store: &SqliteStore, record: ExecutionRecord, commit: Commit) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        store.record_execution_then(
            record,
            commit,
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        );
        rx
    }

    fn complete(store: &SqliteStore, id: &str, token: Option<&str>) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        store.complete_issuance_then(
            id,
            token.map(str::to_owned),
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        );
        rx
    }

    /// Whether the store in `dir`, opened afresh, holds request `id`.
    fn persisted(dir: &Path, id: &str) -> bool {
        let store = SqliteStore::open(dir).unwrap();
        store.execution(id).unwrap().is_some()
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn an_issuance_is_reserved_then_completed_and_reads_see_the_completion() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(queue(&store, issuing("r1"), Commit::Now)
            .recv_timeout(WAIT)
            .unwrap());
        let reserved = store.execution("r1").unwrap().unwrap();
        assert_eq!(reserved.status, ExecutionStatus::Issuing);
        assert_eq!(reserved.token, None);
        // The token id is known to redemption as soon as it is reserved.
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert_eq!(
            store.redeem("jti-r1", "exec", at).unwrap(),
            RedeemOutcome::Redeemed
        );

        // The completion is queued without waiting; a read right after already sees it.
        let done = complete(&store, "r1", Some("header.claims.sig"));
        let granted = store.execution("r1").unwrap().unwrap();
        assert_eq!(granted.status, ExecutionStatus::Granted);
        assert_eq!(granted.token.as_deref(), Some("header.claims.sig"));
        assert!(done.recv_timeout(WAIT).unwrap());

        // An outcome is recorded once: a late failure does not undo a granted token.
        assert!(complete(&store, "r1", None).recv_timeout(WAIT).unwrap());
        assert_eq!(
            store.execution("r1").unwrap().unwrap().status,
            ExecutionStatus::Granted
        );
    }

    #[test]
    fn a_failed_issuance_is_marked_failed_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            assert!(queue(&store, issuing("r2"), Commit::Now)
                .recv_timeout(WAIT)
                .unwrap());
            let _ = complete(&store, "r2", None);
            // Closing commits what is still deferred.
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let failed = store.execution("r2").unwrap().unwrap();
        assert_eq!(failed.status, ExecutionStatus::Failed);
        assert_eq!(failed.token, None);
    }

    #[test]
    fn deferred_writes_commit_on_flush_or_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // A flush makes a deferred write durable now.
        let flushed = queue(&store, issuing("r3"), Commit::Deferred);
        store.flush();
        assert!(flushed.recv_timeout(WAIT).unwrap());
        // With nothing else happening, a deferred write still commits on its own.
        let alone = queue(&store, issuing("r4"), Commit::Deferred);
        assert!(alone.recv_timeout(WAIT).unwrap());
        // An urgent write takes the deferred ones along in its commit.
        let deferred = queue(&store, issuing("r5"), Commit::Deferred);
        let urgent = queue(&store, issuing("r6"), Commit::Now);
        assert!(urgent.recv_timeout(WAIT).unwrap());
        assert!(deferred.recv_timeout(WAIT).unwrap());
        drop(store);
        for id in ["r3", "r4", "r5", "r6"] {
            assert!(persisted(dir.path(), id), "{id}");
        }
    }

    #[test]
    fn a_failing_write_does_not_take_the_rest_of_its_commit_with_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            // Deferred, so all three share one transaction; the middle one breaks the
            // uniqueness of the request id.
            let first = queue(&store, issuing("r7"), Commit::Deferred);
            let duplicate = queue(&store, issuing("r7"), Commit::Deferred);
            let last = queue(&store, issuing("r8"), Commit::Deferred);
            store.flush();
            assert!(first.recv_timeout(WAIT).unwrap());
            assert!(!duplicate.recv_timeout(WAIT).unwrap());
            assert!(last.recv_timeout(WAIT).unwrap());
        }
        assert!(persisted(dir.path(), "r7"));
        assert!(persisted(dir.path(), "r8"));
    }

    #[test]
    fn when_the_database_rolls_the_batch_back_no_write_of_it_is_reported_or_left_committed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let before = queue(&store, issuing("r9"), Commit::Deferred);
            // Stands for an I/O error or a full disk, after which SQLite ends the transaction
            // itself: the writes after it must not run (each would commit on its own).
            let (tx, breaker) = mpsc::channel();
            store.enqueue(
                "roll back",
                |c| c.execute_batch("ROLLBACK"),
                move |r| {
                    let _ = tx.send(r.is_ok());
                },
                Scope::OneStatement,
                true,
            );
            let after = queue(&store, issuing("r10"), Commit::Deferred);
            store.flush();
            assert!(!before.recv_timeout(WAIT).unwrap());
            assert!(!breaker.recv_timeout(WAIT).unwrap());
            assert!(!after.recv_timeout(WAIT).unwrap());
        }
        assert!(!persisted(dir.path(), "r9"));
        assert!(!persisted(dir.path(), "r10"));
    }

    #[test]
    fn a_write_after_the_writer_stopped_fails_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // Stop the writer as Drop would.
        store.jobs.close();
        let result = queue(&store, issuing("r7"), Commit::Now).recv_timeout(WAIT);
        assert_eq!(result, Ok(false));
        assert!(store.record_execution(&issuing("r8")).is_err());
    }

    #[test]
    fn a_writer_callback_may_drop_the_last_reference_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let (tx, rx) = mpsc::channel();
        let held = store.clone();
        store.record_execution_then(
            issuing("z1"),
            Commit::Deferred,
            Box::new(move |r| {
                // The last reference goes on the writer thread, which then closes the store.
                drop(held);
                let _ = tx.send(r.is_ok());
            }),
        );
        drop(store);
        assert_eq!(rx.recv_timeout(WAIT), Ok(true));
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(store.execution("z1").unwrap().is_some());
    }

    #[test]
    fn closing_the_store_checkpoints_the_log_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            for i in 0..200 {
                store.record_execution(&issuing(&format!("c{i}"))).unwrap();
            }
            let wal = std::fs::metadata(dir.path().join("seb.db-wal"))
                .unwrap()
                .len();
            assert!(wal > 0, "commits go to the write-ahead log first");
        }
        let wal = std::fs::metadata(dir.path().join("seb.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the log was copied into the database and truncated");
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(store.execution("c199").unwrap().is_some());
    }
}
