//! The embedded store: one SQLite database (`seb.db`) in the state directory, in WAL mode with
//! `synchronous=FULL`, so a committed write survives a crash or power loss.
//!
//! Every write goes through one writer thread that practises group commit: it takes all the
//! writes waiting at that moment, runs them inside one transaction (each write of several
//! statements in a savepoint of its own, so that a failing write undoes only itself), and
//! commits once, so a burst of token issuances costs one fsync rather than one each. A caller
//! returns only after the commit that holds its write. Reads use a separate connection (WAL
//! readers never wait for the writer).
//!
//! This file holds the store itself (opening, the writer's queue, audited writes) and its
//! [`Store`] impl, whose methods delegate to one file per group of tables: `certificates.rs`
//! (issued certificates, revocations, CRL numbers), `executions.rs` (records, redemption,
//! outcomes), `approvals.rs`, `policy.rs` (epoch and freeze) and `audit.rs`; `rows.rs` maps
//! rows to records.

use crate::store::CertRef;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

use audit::AuditTree;
use rows::{from_unix, unix};
use schema::SCHEMA;
use writer::{
    checkpoint_loop, join_unless_current, run_in_savepoint, write_loop, writer_gone, Job, Jobs,
    Queue, Scope, Txn, Work,
};

use super::entries::encode;
use super::{
    ApprovalOutcome, ApprovalRecord, Commit, ExecutionRecord, IssuedCertificate, LogPosition,
    PendingApproval, PolicyState, RedeemOutcome, ReservedToken, RevokeOutcome, Store, StoreError,
    WriteDone, MAX_AUDIT_PAGE,
};
use crate::audit::entry::{Entry, EntryKind};
use crate::audit::merkle::{self, Hash};
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;

mod approvals;
mod audit;
mod certificates;
mod check;
mod executions;
mod policy;
pub(super) mod rows;
mod schema;
pub(super) mod writer;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    jobs: Arc<Jobs>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    reader: Mutex<Connection>,
    audit: Arc<super::WriteHealth>,
    /// False only in `seb bench`'s baseline store (see [`SqliteStore::open_without_audit_log`]).
    audit_enabled: bool,
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

impl SqliteStore {
    /// The database's file name in the state directory.
    pub const FILE: &'static str = "seb.db";

    /// Opens (creating if needed) `dir/seb.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(Self::FILE);
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        let connect = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            // SQLite opens a file it may not write read-only, without an error: a broker
            // started on a read-only file system would refuse every write and never
            // recover, since this connection stays read-only after the file system does not.
            if conn.is_readonly(rusqlite::MAIN_DB)? {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some(format!(
                        "{} can only be opened read-only (a read-only file system or \
                         mount?); seb needs to write it",
                        path.display()
                    )),
                ));
            }
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            // Statement journals (for the savepoints of writes of several statements) stay
            // in memory.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            Ok(conn)
        };
        let writer_conn = connect().map_err(|e| open_err(Box::new(e)))?;
        schema::refuse_newer(&writer_conn).map_err(open_err)?;
        writer_conn
            .execute_batch(SCHEMA)
            .map_err(|e| open_err(Box::new(e)))?;
        schema::migrate(&writer_conn).map_err(|e| open_err(Box::new(e)))?;
        // Commits only append to the write-ahead log (and fsync it); copying the log into the
        // database, with its own fsyncs, is the checkpointer thread's job, off the path of
        // every request.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_err(Box::new(e)))?;
        let audit = Arc::new(super::WriteHealth::default());
        let tree =
            AuditTree::load(&writer_conn, audit.clone()).map_err(|e| open_err(Box::new(e)))?;
        let checkpoint_conn = connect().map_err(|e| open_err(Box::new(e)))?;
        let reader = connect().map_err(|e| open_err(Box::new(e)))?;
        let jobs = Arc::new(Jobs {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                urgent: 0,
                closed: false,
                audit_next: tree.size(),
                audit_generation: 0,
            }),
            ready: Condvar::new(),
            log_long: AtomicBool::new(false),
            writer_checkpoints: AtomicU64::new(0),
        });
        let queue = jobs.clone();
        let writer = std::thread::Builder::new()
            .name("seb-store-writer".into())
            .spawn(move || write_loop(writer_conn, &queue, tree))
            .map_err(|e| open_err(Box::new(e)))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let asks = jobs.clone();
        let checkpointer = std::thread::Builder::new()
            .name("seb-store-ckpt".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, &asks, stopped))
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(Self {
            jobs,
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            reader: Mutex::new(reader),
            audit,
            audit_enabled: true,
        })
    }

    /// A store that reserves audit indexes but writes no audit entries: the baseline against
    /// which `seb bench broker --audit on,off` measures what the log costs. `seb serve` never
    /// opens one (a broker without its log would break "no log entry, no token").
    pub fn open_without_audit_log(dir: &Path) -> Result<Self, StoreError> {
        let mut store = Self::open(dir)?;
        store.audit_enabled = false;
        Ok(store)
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
        let work: Work = Box::new(move |txn: Option<&mut Txn<'_>>| {
            let outcome = match (txn, scope) {
                (Some(txn), Scope::Savepoint) => run_in_savepoint(txn, |t| f(t.conn)).map_err(Some),
                (Some(txn), Scope::OneStatement) => f(txn.conn).map_err(Some),
                (None, _) => Err(None),
            };
            Box::new(move |commit: Result<(), String>| done(finish(operation, outcome, commit)))
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

    /// Queues an audited write: `f` runs, then the entry `entry` makes of its result is
    /// appended at the audit index reserved now, in one savepoint of one commit. Returns the
    /// reserved index at once; `done` gets the result once the commit is known.
    fn enqueue_audited<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        entry: impl FnOnce(&T) -> String + Send + 'static,
        done: impl FnOnce(Result<(T, LogPosition), StoreError>) + Send + 'static,
        deferred: bool,
    ) -> Result<u64, StoreError> {
        let enabled = self.audit_enabled;
        let make = move |index: u64, generation: u64| {
            let work: Work = Box::new(move |txn: Option<&mut Txn<'_>>| {
                let outcome = match txn {
                    Some(txn) if !enabled => run_in_savepoint(txn, |t| {
                        let value = f(t.conn)?;
                        let leaf_hash = merkle::leaf_hash(entry(&value).as_bytes());
                        Ok((value, LogPosition { index, leaf_hash }))
                    })
                    .map_err(Some),
                    Some(txn) if !txn.audit.is_next(index, generation) => Err(Some(
                        rusqlite::Error::ToSqlConversionFailure(Box::new(audit::StaleIndex)),
                    )),
                    Some(txn) => {
                        let before = txn.audit.save();
                        let result = run_in_savepoint(txn, |t| {
                            let value = f(t.conn)?;
                            let text = entry(&value);
                            let leaf_hash = t.audit.append(t.conn, index, generation, &text)?;
                            Ok((value, LogPosition { index, leaf_hash }))
                        });
                        if result.is_err() {
                            // The write undid itself; its index is filled with a void entry
                            // so the writes after it keep theirs. Only if that fails too are
                            // the later indexes abandoned.
                            txn.audit.restore(before.clone());
                            let mut void = Entry::new(
                                EntryKind::Void,
                                crate::time::unix_millis(SystemTime::now()),
                            );
                            void.detail = Some(format!("{operation} failed"));
                            let filled = encode(&void).ok().is_some_and(|text| {
                                run_in_savepoint(txn, |t| {
                                    t.audit.append(t.conn, index, generation, &text)
                                })
                                .is_ok()
                            });
                            if !filled {
                                txn.audit.restore(before);
                                let why = result.as_ref().err().map(ToString::to_string);
                                txn.audit.abandon(format!(
                                    "an audit entry cannot be appended ({operation}: {})",
                                    why.unwrap_or_default()
                                ));
                            }
                        }
                        result.map_err(Some)
                    }
                    None => Err(None),
                };
                Box::new(move |commit: Result<(), String>| {
                    done(finish(operation, outcome, commit));
                })
            });
            Job {
                work,
                deferred,
                queued: Instant::now(),
            }
        };
        match self.jobs.push_audited(deferred, make) {
            Ok((index, _)) => Ok(index),
            Err(job) => {
                (job.work)(None)(Err("the store writer has stopped".into()));
                Err(writer_gone(operation))
            }
        }
    }

    /// An audited write that returns once committed. A write whose reserved index was
    /// abandoned (another process appended first) is tried again, up to three times.
    fn write_audited<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + Clone + 'static,
        entry: impl Fn(&T) -> String + Send + Clone + 'static,
    ) -> Result<(T, LogPosition), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (tx, rx) = mpsc::sync_channel::<Result<(T, LogPosition), StoreError>>(1);
            self.enqueue_audited(
                operation,
                f.clone(),
                entry.clone(),
                move |result| {
                    let _ = tx.send(result);
                },
                false,
            )?;
            let result = rx.recv().unwrap_or_else(|_| Err(writer_gone(operation)));
            match result {
                Err(e) if attempt < super::INDEX_TAKEN_ATTEMPTS && is_stale(&e) => continue,
                other => return other,
            }
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

impl Store for SqliteStore {
    fn record_issued(&self, cert: &IssuedCertificate) -> Result<(), StoreError> {
        certificates::record_issued(self, cert)
    }

    fn issued_certificates(&self) -> Result<Vec<IssuedCertificate>, StoreError> {
        certificates::issued_certificates(self)
    }

    fn issued_certificate(&self, serial: &Serial) -> Result<Option<IssuedCertificate>, StoreError> {
        certificates::issued_certificate(self, serial)
    }

    fn revoke_issued_by(
        &self,
        serial: &Serial,
        issuer_label: Option<&str>,
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError> {
        certificates::revoke_issued_by(self, serial, issuer_label, reason, at)
    }

    fn revocations_issued_by(
        &self,
        issuer_label: &str,
        with_unattributed: bool,
    ) -> Result<Vec<Revocation>, StoreError> {
        certificates::revocations_issued_by(self, issuer_label, with_unattributed)
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        certificates::revocations(self)
    }

    fn revocation_generation(&self) -> Result<u64, StoreError> {
        certificates::revocation_generation(self)
    }

    fn revocation(&self, serial: &Serial) -> Result<Option<Revocation>, StoreError> {
        certificates::revocation(self, serial)
    }

    fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError> {
        certificates::is_revoked(self, serial)
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        certificates::next_crl_number(self)
    }

    fn record_execution(
        &self,
        record: &ExecutionRecord,
        entry: &Entry,
    ) -> Result<LogPosition, StoreError> {
        executions::record_execution(self, record, entry)
    }

    fn record_execution_then(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        commit: Commit,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        executions::record_execution_then(self, record, entry, commit, done)
    }

    fn flush(&self) {
        self.enqueue("flush", |_| Ok(()), |_| (), Scope::OneStatement, false);
    }

    fn complete_issuance_then(&self, request_id: &str, token: Option<String>, done: WriteDone) {
        executions::complete_issuance_then(self, request_id, token, done)
    }

    fn execution(&self, request_id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        executions::execution(self, request_id)
    }

    fn record_pending_then(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        approvals::record_pending_then(self, record, pending, entry, done)
    }

    fn append_audit_then(
        &self,
        entry: &Entry,
        done: Box<dyn FnOnce(Result<LogPosition, StoreError>) + Send>,
    ) {
        let text = match encode(entry) {
            Ok(text) => text,
            Err(e) => return done(Err(e)),
        };
        // On a writer that has stopped, `done` hears of it (once) from the job itself.
        let _ = self.enqueue_audited(
            "append audit entry",
            |_| Ok(()),
            move |_| text,
            move |result| done(result.map(|(_, position)| position)),
            false,
        );
    }

    fn pending_approval(&self, request_id: &str) -> Result<Option<PendingApproval>, StoreError> {
        approvals::pending_approval(self, request_id)
    }

    fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        approvals::approvals(self, request_id)
    }

    fn open_approval_requests(
        &self,
        now: SystemTime,
        groups: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError> {
        approvals::open_approval_requests(self, now, groups, after, limit)
    }

    fn open_requests_of(&self, agent_key: &str, now: SystemTime) -> Result<usize, StoreError> {
        let (key, now) = (agent_key.to_owned(), crate::time::unix(now));
        let open: i64 = self.read("count an agent's open requests", move |c| {
            c.prepare_cached(
                "SELECT count(*) FROM approval_requests
                 WHERE closed IS NULL AND expires_at > ?1 AND agent_key = ?2",
            )?
            .query_row(rusqlite::params![now, key], |r| r.get(0))
        })?;
        Ok(usize::try_from(open).unwrap_or(usize::MAX))
    }

    fn add_approval(
        &self,
        approval: ApprovalRecord,
        required: u32,
        now: SystemTime,
        reserve: ReservedToken,
    ) -> Result<ApprovalOutcome, StoreError> {
        approvals::add_approval(self, approval, required, now, reserve)
    }

    fn expire_approval_requests(&self, now: SystemTime) -> Result<Vec<String>, StoreError> {
        approvals::expire_approval_requests(self, now)
    }

    fn request_of_token(&self, jti: &str) -> Result<Option<String>, StoreError> {
        executions::request_of_token(self, jti)
    }

    fn redeem(
        &self,
        jti: &str,
        executor: &CertRef,
        at: SystemTime,
    ) -> Result<RedeemOutcome, StoreError> {
        executions::redeem(self, jti, executor, at)
    }

    fn record_event(&self, kind: &str, detail: &str, at: SystemTime) -> Result<(), StoreError> {
        let kind = EntryKind::parse(kind).ok_or_else(|| StoreError::Io {
            operation: "record event",
            source: format!("unknown audit entry kind {kind:?}").into(),
        })?;
        let mut entry = Entry::new(kind, crate::time::unix_millis(at));
        entry.detail = (!detail.is_empty()).then(|| detail.to_owned());
        self.append_audit(&entry).map(|_| ())
    }

    fn events(&self, kind: &str) -> Result<Vec<(SystemTime, String)>, StoreError> {
        // Notes still kept in `events` (schema migrations; approval expiries, committed with
        // the close), then the audit entries of that kind.
        let legacy: Vec<(i64, String)> = self.read("list events", |c| {
            let mut stmt =
                c.prepare("SELECT at, detail FROM events WHERE kind = ?1 ORDER BY id")?;
            let rows = stmt.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut out = legacy
            .into_iter()
            .map(|(at, detail)| Ok((from_unix(at)?, detail)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let Some(kind) = EntryKind::parse(kind).map(|k| k.as_str()) else {
            return Ok(out);
        };
        let rows: Vec<String> = self.read("list events", |c| {
            let mut stmt = c.prepare(
                "SELECT entry FROM audit_entries WHERE json_extract(entry, '$.kind') = ?1
                 ORDER BY idx",
            )?;
            let rows = stmt.query_map([kind], |r| r.get(0))?;
            rows.collect()
        })?;
        for text in rows {
            let e = Entry::parse(text.as_bytes())
                .map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
            out.push((
                std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms),
                e.detail.unwrap_or_default(),
            ));
        }
        Ok(out)
    }

    fn append_audit(&self, entry: &Entry) -> Result<LogPosition, StoreError> {
        let text = encode(entry)?;
        self.write_audited("append audit entry", |_| Ok(()), move |_| text.clone())
            .map(|(_, position)| position)
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.read("audit size", audit::stored_size)
    }

    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let end = end.min(start.saturating_add(MAX_AUDIT_PAGE));
        self.read("audit entries", |c| audit::entries(c, start, end))
    }

    fn audit_leaf_hashes(&self, start: u64, end: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let end = end.min(start.saturating_add(MAX_AUDIT_PAGE));
        self.read("audit leaf hashes", |c| audit::leaves(c, start, end))
    }

    fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.read("audit root", |c| {
            merkle::range_root(0, size, &mut |level, idx| audit::node(c, level, idx))
        })
    }

    fn audit_inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.read("audit inclusion proof", |c| {
            merkle::inclusion_proof(index, size, &mut |level, idx| audit::node(c, level, idx))
        })
    }

    fn audit_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.read("audit consistency proof", |c| {
            merkle::consistency_proof(old, new, &mut |level, idx| audit::node(c, level, idx))
        })
    }

    fn audit_health(&self) -> Result<(), String> {
        self.audit.get()
    }

    fn redeemed_by(&self, jti: &str) -> Result<Option<String>, StoreError> {
        executions::redeemed_by(self, jti)
    }

    fn record_outcome(
        &self,
        jti: &str,
        request_id: &str,
        executor: &CertRef,
        receipt_json: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError> {
        let outcome = executions::Outcome {
            jti: jti.to_owned(),
            request_id: request_id.to_owned(),
            executor: executor.clone(),
            receipt_json: receipt_json.to_owned(),
            at,
        };
        executions::record_outcome(self, outcome)
    }

    fn outcome(&self, jti: &str) -> Result<Option<String>, StoreError> {
        executions::outcome(self, jti)
    }

    fn policy_state(&self) -> Result<PolicyState, StoreError> {
        policy::policy_state(self)
    }

    fn bump_epoch(&self, floor: u64, at: SystemTime) -> Result<u64, StoreError> {
        policy::bump_epoch(self, floor, at)
    }

    fn set_frozen(&self, frozen: bool, reason: &str, at: SystemTime) -> Result<(), StoreError> {
        policy::set_frozen(self, frozen, reason, at)
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

/// A write's result once its commit is known.
fn finish<T>(
    operation: &'static str,
    outcome: Result<T, Option<rusqlite::Error>>,
    commit: Result<(), String>,
) -> Result<T, StoreError> {
    match (outcome, commit) {
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
    }
}

/// Whether a write failed only because its reserved audit index was abandoned
/// ([`StoreError::is_index_taken`]).
pub(crate) fn is_stale(e: &StoreError) -> bool {
    match e {
        StoreError::Io { source, .. } => matches!(
            source.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::ToSqlConversionFailure(inner)) if inner.is::<audit::StaleIndex>()
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
