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
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

use audit::{AuditShared, AuditTree};
use schema::SCHEMA;
use writer::{
    checkpoint_loop, join_unless_current, run_in_savepoint, write_loop, writer_gone, Job, Jobs,
    Queue, Scope, Txn, Work,
};

use super::{
    ApprovalOutcome, ApprovalRecord, Commit, ExecutionRecord, ExecutionStatus, IssuedCertificate,
    LogPosition, PendingApproval, PolicyState, RedeemOutcome, ReservedToken, RevokeOutcome, Store,
    StoreError, WriteDone, MAX_AUDIT_PAGE,
};
use crate::audit::entry::{CertRef, Entry, EntryKind};
use crate::audit::merkle::{self, Hash};
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;

mod approvals;
mod audit;
mod schema;
mod writer;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    jobs: Arc<Jobs>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    reader: Mutex<Connection>,
    audit: Arc<AuditShared>,
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
        schema::migrate(&writer_conn).map_err(|e| open_err(Box::new(e)))?;
        // Commits only append to the write-ahead log (and fsync it); copying the log into the
        // database, with its own fsyncs, is the checkpointer thread's job, off the path of
        // every request.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_err(Box::new(e)))?;
        let audit = Arc::new(AuditShared::default());
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
        });
        let queue = jobs.clone();
        let writer = std::thread::Builder::new()
            .name("seb-store-writer".into())
            .spawn(move || write_loop(writer_conn, &queue, tree))
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
                                txn.audit.abandon();
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
                Err(e) if attempt < 3 && is_stale(&e) => continue,
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
        let cert = cert.clone();
        self.write("record issued certificate", move |c| {
            c.execute(
                "INSERT INTO issued (serial, subject, role, issuer_label, not_after, issued_at, pem)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cert.serial.as_bytes(),
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

    fn issued_certificates(&self) -> Result<Vec<IssuedCertificate>, StoreError> {
        self.read("list issued certificates", |c| {
            let mut stmt = c.prepare(
                "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
                 ORDER BY issued_at, rowid",
            )?;
            let rows = stmt.query_map([], issued_certificate)?;
            rows.collect()
        })
    }

    fn issued_certificate(&self, serial: &Serial) -> Result<Option<IssuedCertificate>, StoreError> {
        self.read("look up an issued certificate", |c| {
            c.prepare_cached(
                "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
                 WHERE serial = ?1",
            )?
            .query_row([serial.as_bytes()], issued_certificate)
            .optional()
        })
    }

    fn revoke_issued_by(
        &self,
        serial: &Serial,
        issuer_label: Option<&str>,
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError> {
        let serial_hex = serial.to_string();
        let serial = serial.as_bytes().to_vec();
        let issuer_label = issuer_label.map(str::to_owned);
        let time_ms = crate::time::unix_millis(at);
        let (outcome, _) = self.write_audited(
            "revoke",
            move |c| {
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
                if let Some(label) = &issuer_label {
                    c.execute(
                        "INSERT OR REPLACE INTO revocation_issuers (serial, issuer_label) VALUES (?1, ?2)",
                        params![serial, label],
                    )?;
                }
                Ok(RevokeOutcome::Revoked {
                    known: known.is_some(),
                })
            },
            move |outcome| {
                let mut e = Entry::new(EntryKind::CertificateRevoked, time_ms);
                e.cert = Some(CertRef {
                    thumbprint: String::new(),
                    serial: serial_hex.clone(),
                    subject: String::new(),
                });
                e.detail = Some(reason.as_str().to_owned());
                if *outcome == RevokeOutcome::AlreadyRevoked {
                    e.code = Some("already_revoked".into());
                }
                encode(&e).unwrap_or_default()
            },
        )?;
        Ok(outcome)
    }

    fn revocations_issued_by(
        &self,
        issuer_label: &str,
        with_unattributed: bool,
    ) -> Result<Vec<Revocation>, StoreError> {
        let label = issuer_label.to_owned();
        let rows: Vec<(Vec<u8>, String, i64)> = self.read("list revocations by issuer", |c| {
            let mut stmt = c.prepare(
                "SELECT r.serial, r.reason, r.revoked_at FROM revoked r
                   LEFT JOIN revocation_issuers ri ON ri.serial = r.serial
                   LEFT JOIN issued i ON i.serial = r.serial
                 WHERE COALESCE(ri.issuer_label, i.issuer_label) = ?1
                    OR (?2 AND COALESCE(ri.issuer_label, i.issuer_label) IS NULL)
                 ORDER BY r.revoked_at, r.serial",
            )?;
            let rows = stmt.query_map(params![label, with_unattributed], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })?;
        rows.into_iter().map(revocation_from_row).collect()
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<(Vec<u8>, String, i64)> = self.read("list revocations", |c| {
            let mut stmt = c.prepare(
                "SELECT serial, reason, revoked_at FROM revoked ORDER BY revoked_at, serial",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        rows.into_iter().map(revocation_from_row).collect()
    }

    fn revocation_generation(&self) -> Result<u64, StoreError> {
        // Rows are only ever inserted, so the largest rowid names the list's state.
        let last: Option<i64> = self.read("read the revocation generation", |c| {
            c.prepare_cached("SELECT max(rowid) FROM revoked")?
                .query_row([], |r| r.get(0))
        })?;
        Ok(last.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    fn revocation(&self, serial: &Serial) -> Result<Option<Revocation>, StoreError> {
        let row: Option<(String, i64)> = self.read("look up a revocation", |c| {
            c.prepare_cached("SELECT reason, revoked_at FROM revoked WHERE serial = ?1")?
                .query_row([serial.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })?;
        row.map(|(reason, at)| {
            Ok(Revocation {
                serial: serial.clone(),
                reason: Reason::parse(&reason)
                    .ok_or_else(|| StoreError::Corrupt(format!("revocation reason {reason:?}")))?,
                revoked_at: from_unix(at)?,
            })
        })
        .transpose()
    }

    fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError> {
        self.read("check revocation", |c| {
            c.prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")?
                .query_row([serial.as_bytes()], |r| r.get::<_, i64>(0))
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

    fn record_execution(
        &self,
        record: &ExecutionRecord,
        entry: &Entry,
    ) -> Result<LogPosition, StoreError> {
        let (r, text) = (record.clone(), encode(entry)?);
        self.write_audited(
            "record execution",
            move |c| insert_execution(c, &r),
            move |_| text.clone(),
        )
        .map(|(_, position)| position)
    }

    fn record_execution_then(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        commit: Commit,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        let text = encode(entry)?;
        let leaf_hash = merkle::leaf_hash(text.as_bytes());
        let index = self.enqueue_audited(
            "record execution",
            move |c| insert_execution(c, &record),
            move |_| text,
            move |result| done(result.map(|_| ())),
            commit == Commit::Deferred,
        )?;
        Ok(LogPosition { index, leaf_hash })
    }

    fn flush(&self) {
        self.enqueue("flush", |_| Ok(()), |_| (), Scope::OneStatement, false);
    }

    fn complete_issuance_then(&self, request_id: &str, token: Option<String>, done: WriteDone) {
        let request_id = request_id.to_owned();
        match token {
            Some(token) => self.enqueue(
                "complete issuance",
                move |c| {
                    c.prepare_cached(
                        "UPDATE executions SET token = ?2, status = 'granted'
                         WHERE request_id = ?1 AND status = 'issuing'",
                    )?
                    .execute(params![request_id, token])
                    .map(|_| ())
                },
                done,
                Scope::OneStatement,
                true,
            ),
            None => {
                // The grant's entry is in the log; this one says no token left after all.
                let mut entry = Entry::new(
                    EntryKind::IssuanceFailed,
                    crate::time::unix_millis(SystemTime::now()),
                );
                entry.request_id = Some(request_id.clone());
                let text = match encode(&entry) {
                    Ok(text) => text,
                    Err(e) => return done(Err(e)),
                };
                let queued = self.enqueue_audited(
                    "complete issuance",
                    move |c| {
                        c.prepare_cached(
                            "UPDATE executions SET status = 'failed'
                             WHERE request_id = ?1 AND status = 'issuing'",
                        )?
                        .execute(params![request_id])
                        .map(|_| ())
                    },
                    move |_| text,
                    move |result| done(result.map(|_| ())),
                    true,
                );
                if let Err(e) = queued {
                    tracing::error!(error = %e, "cannot record a failed issuance");
                }
            }
        }
    }

    fn execution(&self, request_id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        // Read on the writer thread, behind any queued write for this request (its token).
        let request_id = request_id.to_owned();
        let row = self.write("read execution", move |c| {
            c.prepare_cached(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions WHERE request_id = ?1"
            ))?
            .query_row([&request_id], execution_row)
            .optional()
        })?;
        row.map(execution_from_row).transpose()
    }

    fn record_pending_then(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        let text = encode(entry)?;
        let leaf_hash = merkle::leaf_hash(text.as_bytes());
        let index = self.enqueue_audited(
            "record pending request",
            move |c| {
                insert_execution(c, &record)?;
                approvals::insert_pending(c, &pending)
            },
            move |_| text,
            move |result| done(result.map(|_| ())),
            false,
        )?;
        Ok(LogPosition { index, leaf_hash })
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
        let request_id = request_id.to_owned();
        let row = self.write("read pending request", move |c| {
            approvals::pending_row(c, &request_id)
        })?;
        row.map(approvals::pending_from_row).transpose()
    }

    fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let request_id = request_id.to_owned();
        let rows = self.write("read approvals", move |c| {
            approvals::approval_rows(c, &request_id)
        })?;
        rows.into_iter().map(approvals::approval_from_row).collect()
    }

    fn open_approval_requests(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError> {
        let now = unix(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.write("list open approval requests", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT request_id FROM approval_requests
                 WHERE closed IS NULL AND expires_at > ?1
                 ORDER BY request_id LIMIT ?2",
            )?;
            let ids: Vec<String> = stmt
                .query_map(params![now, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let execution = c
                    .prepare_cached(&format!(
                        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE request_id = ?1"
                    ))?
                    .query_row([&id], execution_row)
                    .optional()?;
                let pending = approvals::pending_row(c, &id)?;
                if let (Some(e), Some(p)) = (execution, pending) {
                    out.push((e, p));
                }
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(e, p)| Ok((execution_from_row(e)?, approvals::pending_from_row(p)?)))
            .collect()
    }

    fn add_approval(
        &self,
        approval: ApprovalRecord,
        required: u32,
        now: SystemTime,
        reserve: ReservedToken,
    ) -> Result<ApprovalOutcome, StoreError> {
        // Every decision an approver posts is an audit entry in the same commit: recorded ones
        // plainly, refused ones (closed, expired, duplicate) with the refusal as `code`.
        let mut base = Entry::new(
            match approval.decision {
                crate::approval::Decision::Approve => EntryKind::ApprovalGiven,
                crate::approval::Decision::Reject => EntryKind::ApprovalRejected,
            },
            crate::time::unix_millis(approval.at),
        );
        base.request_id = Some(approval.request_id.clone());
        base.cert = Some(CertRef {
            thumbprint: approval.approver.clone(),
            serial: String::new(),
            subject: approval.approver_subject.clone(),
        });
        base.decision = Some(approval.decision.as_str().to_owned());
        base.detail = approval.reason.clone();
        let (outcome, _) = self.write_audited(
            "record approval",
            move |c| approvals::add(c, &approval, required, now, &reserve),
            move |outcome: &Result<ApprovalOutcome, StoreError>| {
                let mut e = base.clone();
                e.code = match outcome {
                    Ok(ApprovalOutcome::Approved { .. } | ApprovalOutcome::Rejected) => None,
                    Ok(ApprovalOutcome::Unknown) => Some("not_found".into()),
                    Ok(ApprovalOutcome::Closed(_)) => Some("request_closed".into()),
                    Ok(ApprovalOutcome::Expired) => Some("request_expired".into()),
                    Ok(ApprovalOutcome::Duplicate) => Some("duplicate_approval".into()),
                    Err(_) => Some("store_unavailable".into()),
                };
                encode(&e).unwrap_or_default()
            },
        )?;
        outcome
    }

    fn expire_approval_requests(&self, now: SystemTime) -> Result<Vec<String>, StoreError> {
        let ids = self.write("expire approval requests", move |c| {
            approvals::expire(c, now)
        })?;
        // One entry per expired request, after the commit that closed them: a request whose
        // entry failed is closed all the same (nothing can be issued for it any more), and the
        // failure shows in the audit health check.
        for id in &ids {
            let mut e = Entry::new(EntryKind::ApprovalExpired, crate::time::unix_millis(now));
            e.request_id = Some(id.clone());
            if let Err(err) = self.append_audit(&e) {
                tracing::error!(error = %err, request_id = %id, "cannot log an approval expiry");
            }
        }
        Ok(ids)
    }

    fn request_of_token(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up a token's request", |c| {
            c.prepare_cached("SELECT request_id FROM executions WHERE jti = ?1")?
                .query_row([jti], |r| r.get(0))
                .optional()
        })
    }

    fn redeem(
        &self,
        jti: &str,
        executor: &str,
        at: SystemTime,
    ) -> Result<RedeemOutcome, StoreError> {
        /// What the transaction found, before its times and serials are checked.
        #[derive(Clone)]
        enum Found {
            Unknown,
            Corrupt(String),
            AgentRevoked(Serial),
            AgentUnrecorded,
            Redeemed,
            Before(i64),
        }
        let (jti, executor) = (jti.to_owned(), executor.to_owned());
        let (entry_jti, entry_executor) = (jti.clone(), executor.clone());
        let time_ms = crate::time::unix_millis(at);
        // Every attempt that reaches the store is logged: a replay, a token this broker has no
        // record of, or one whose agent was revoked is what a SIEM should alert on.
        let (found, _) = self.write_audited(
            "redeem token",
            move |c| {
                let serials: Option<Option<String>> = c
                    .prepare_cached("SELECT agent_serials FROM executions WHERE jti = ?1")?
                    .query_row([&jti], |r| r.get(0))
                    .optional()?;
                let Some(serials) = serials else {
                    return Ok(Found::Unknown);
                };
                // The agent's path, checked in the same transaction as the redemption: a
                // revocation committed before it is seen.
                let serials = match parse_serials(serials.as_deref()) {
                    Ok(Some(serials)) => serials,
                    Ok(None) => return Ok(Found::AgentUnrecorded),
                    Err(e) => return Ok(Found::Corrupt(e)),
                };
                for serial in serials {
                    let revoked = c
                        .prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")?
                        .exists([serial.as_bytes()])?;
                    if revoked {
                        return Ok(Found::AgentRevoked(serial));
                    }
                }
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO redemptions (jti, executor, redeemed_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(jti) DO NOTHING",
                    )?
                    .execute(params![jti, executor, unix(at)])?;
                if inserted == 1 {
                    return Ok(Found::Redeemed);
                }
                let first: i64 = c.query_row(
                    "SELECT redeemed_at FROM redemptions WHERE jti = ?1",
                    [&jti],
                    |r| r.get(0),
                )?;
                Ok(Found::Before(first))
            },
            move |found| {
                let mut e = Entry::new(EntryKind::TokenRedeemed, time_ms);
                e.jti = Some(entry_jti.clone());
                e.cert = Some(CertRef {
                    thumbprint: entry_executor.clone(),
                    serial: String::new(),
                    subject: String::new(),
                });
                e.code = match found {
                    Found::Redeemed => None,
                    Found::Unknown => Some("unknown_token".into()),
                    Found::Before(_) => Some("token_already_redeemed".into()),
                    Found::AgentRevoked(_) => Some("certificate_revoked".into()),
                    Found::AgentUnrecorded => Some("agent_unrecorded".into()),
                    Found::Corrupt(_) => Some("store_corrupt".into()),
                };
                encode(&e).unwrap_or_default()
            },
        )?;
        Ok(match found {
            Found::Unknown => RedeemOutcome::Unknown,
            Found::Corrupt(e) => return Err(StoreError::Corrupt(e)),
            Found::AgentRevoked(serial) => RedeemOutcome::AgentRevoked { serial },
            Found::AgentUnrecorded => RedeemOutcome::AgentUnrecorded,
            Found::Redeemed => RedeemOutcome::Redeemed,
            Found::Before(first) => RedeemOutcome::AlreadyRedeemed {
                at: from_unix(first)?,
            },
        })
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
        // Notes still kept in `events` (schema migrations; approval decisions and expiry,
        // committed with the decision), then the audit entries of that kind.
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
        self.audit.health()
    }

    fn redeemed_by(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up a redemption", |c| {
            c.prepare_cached("SELECT executor FROM redemptions WHERE jti = ?1")?
                .query_row([jti], |r| r.get(0))
                .optional()
        })
    }

    fn record_outcome(
        &self,
        jti: &str,
        request_id: &str,
        executor: &str,
        receipt_json: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError> {
        let (jti, request_id, executor, receipt) = (
            jti.to_owned(),
            request_id.to_owned(),
            executor.to_owned(),
            receipt_json.to_owned(),
        );
        let time_ms = crate::time::unix_millis(at);
        let (entry_jti, entry_request, entry_executor, entry_receipt) = (
            jti.clone(),
            request_id.clone(),
            executor.clone(),
            receipt.clone(),
        );
        let (inserted, _) = self.write_audited(
            "record an execution outcome",
            move |c| {
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO outcomes (jti, request_id, executor, receipt, at)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(jti) DO NOTHING",
                    )?
                    .execute(params![jti, request_id, executor, receipt, unix(at)])?;
                Ok(inserted == 1)
            },
            move |inserted| {
                // The receipt itself (digests, exit code, times, signature: no secrets) is the
                // entry's detail, so an auditor can verify it from the log alone.
                let mut e = Entry::new(EntryKind::OutcomeReported, time_ms);
                e.request_id = Some(entry_request.clone());
                e.jti = Some(entry_jti.clone());
                e.cert = Some(CertRef {
                    thumbprint: entry_executor.clone(),
                    serial: String::new(),
                    subject: String::new(),
                });
                e.detail = Some(entry_receipt.clone());
                if !*inserted {
                    e.code = Some("outcome_already_recorded".into());
                }
                encode(&e).unwrap_or_default()
            },
        )?;
        Ok(inserted)
    }

    fn outcome(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up an execution outcome", |c| {
            c.prepare_cached("SELECT receipt FROM outcomes WHERE jti = ?1")?
                .query_row([jti], |r| r.get(0))
                .optional()
        })
    }

    fn policy_state(&self) -> Result<PolicyState, StoreError> {
        let (epoch, frozen): (Option<i64>, Option<i64>) = self.read("read the policy", |c| {
            let mut stmt = c.prepare_cached("SELECT value FROM counters WHERE name = ?1")?;
            let epoch = stmt.query_row(["policy_epoch"], |r| r.get(0)).optional()?;
            let frozen = stmt.query_row(["policy_frozen"], |r| r.get(0)).optional()?;
            Ok((epoch, frozen))
        })?;
        let epoch = epoch
            .map(u64::try_from)
            .transpose()
            .map_err(|_| StoreError::Corrupt("negative policy epoch".into()))?;
        Ok(PolicyState {
            epoch,
            frozen: frozen.map(|f| f != 0),
        })
    }

    fn bump_epoch(&self, floor: u64, at: SystemTime) -> Result<u64, StoreError> {
        let floor = i64::try_from(floor)
            .map_err(|_| StoreError::Corrupt("policy epoch out of range".into()))?;
        let time_ms = crate::time::unix_millis(at);
        let (value, _) = self.write_audited(
            "bump the policy epoch",
            move |c| {
                c.execute(
                    "INSERT INTO counters (name, value) VALUES ('policy_epoch', ?1 + 1)
                     ON CONFLICT(name) DO UPDATE SET value = MAX(value, ?1) + 1",
                    [floor],
                )?;
                c.query_row(
                    "SELECT value FROM counters WHERE name = 'policy_epoch'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            },
            move |value| {
                let mut e = Entry::new(EntryKind::EpochChanged, time_ms);
                e.epoch = u64::try_from(*value).ok();
                e.detail = Some(format!("policy epoch raised to {value}"));
                encode(&e).unwrap_or_default()
            },
        )?;
        u64::try_from(value).map_err(|_| StoreError::Corrupt("negative policy epoch".into()))
    }

    fn set_frozen(&self, frozen: bool, reason: &str, at: SystemTime) -> Result<(), StoreError> {
        let reason = reason.to_owned();
        let time_ms = crate::time::unix_millis(at);
        self.write_audited(
            "set the issuance freeze",
            move |c| {
                c.execute(
                    "INSERT INTO counters (name, value) VALUES ('policy_frozen', ?1)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    [i64::from(frozen)],
                )
                .map(|_| ())
            },
            move |_| {
                let kind = if frozen {
                    EntryKind::Frozen
                } else {
                    EntryKind::Unfrozen
                };
                let mut e = Entry::new(kind, time_ms);
                e.detail = (!reason.is_empty()).then(|| reason.clone());
                encode(&e).unwrap_or_default()
            },
        )?;
        Ok(())
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

/// The columns of an execution row, in the order [`execution_row`] reads them.
const EXECUTION_COLUMNS: &str = "request_id, agent, agent_subject, operation, resource, params,
    request_digest, status, deny_code, approvals_required, jti, token, expires_at, created_at,
    agent_serials";

/// An `executions` row as read (see [`EXECUTION_COLUMNS`]).
type ExecutionRow = (
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
    Option<String>,
);

fn execution_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRow> {
    ExecutionRow::try_from(r)
}

fn execution_from_row(r: ExecutionRow) -> Result<ExecutionRecord, StoreError> {
    Ok(ExecutionRecord {
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
        agent_serials: parse_serials(r.14.as_deref())
            .map_err(StoreError::Corrupt)?
            .unwrap_or_default(),
    })
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

/// Whether a write failed only because its reserved audit index was abandoned.
fn is_stale(e: &StoreError) -> bool {
    match e {
        StoreError::Io { source, .. } => matches!(
            source.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::ToSqlConversionFailure(inner)) if inner.is::<audit::StaleIndex>()
        ),
        _ => false,
    }
}

fn encode(entry: &Entry) -> Result<String, StoreError> {
    entry
        .to_canonical()
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| StoreError::Io {
            operation: "encode audit entry",
            source: "the entry has no canonical form".into(),
        })
}

fn insert_execution(c: &Connection, r: &ExecutionRecord) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO executions (request_id, agent, agent_subject, operation, resource,
            params, request_digest, status, deny_code, approvals_required, jti, token,
            expires_at, created_at, agent_serials)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        serials_text(&r.agent_serials),
    ])
    .map(|_| ())
}

/// Serials as stored in `executions.agent_serials`: canonical hex, space-separated.
fn serials_text(serials: &[Serial]) -> String {
    serials
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The serials of `executions.agent_serials`; `None` for a row written before they were
/// kept (NULL or empty).
fn parse_serials(text: Option<&str>) -> Result<Option<Vec<Serial>>, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    text.split(' ')
        .map(|s| Serial::parse(s).map_err(|e| format!("agent serial {s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An `issued` row (serial, subject, role, issuer label, notAfter, PEM) as read.
fn issued_certificate(r: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedCertificate> {
    let not_after: i64 = r.get(4)?;
    Ok(IssuedCertificate {
        serial: {
            let bytes: Vec<u8> = r.get(0)?;
            Serial::from_magnitude(&bytes).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
            })?
        },
        subject: r.get(1)?,
        role: r.get(2)?,
        issuer_label: r.get(3)?,
        not_after: from_unix(not_after).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Integer, e.into())
        })?,
        pem: r.get(5)?,
    })
}

/// A `revoked` row (serial, reason, time) as read.
fn revocation_from_row(
    (serial, reason, at): (Vec<u8>, String, i64),
) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        serial: Serial::from_magnitude(&serial).map_err(|e| {
            StoreError::Corrupt(format!("revoked serial {}: {e}", hex::encode(&serial)))
        })?,
        reason: Reason::parse(&reason)
            .ok_or_else(|| StoreError::Corrupt(format!("revocation reason {reason:?}")))?,
        revoked_at: from_unix(at)?,
    })
}

/// Unix seconds as SQLite's signed integer.
fn unix(t: SystemTime) -> i64 {
    i64::try_from(crate::time::unix(t)).unwrap_or(i64::MAX)
}

fn from_unix(secs: i64) -> Result<SystemTime, StoreError> {
    let secs = u64::try_from(secs).map_err(|_| StoreError::Corrupt("negative time".into()))?;
    Ok(crate::time::from_unix(secs))
}

#[cfg(test)]
mod tests;
