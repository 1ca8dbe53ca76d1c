//! How the store's methods reach the writer: a write queued with what to do once its commit is
//! known, audited writes with the entry they append (and, for an issuance, who wants to hear
//! the entry's place before the commit), and reads on the pool.

use std::sync::mpsc;

use super::conn::{self, DbError};
use super::writer::{self, Batch, Completion, Job, Work};
use super::{encode, PgStore};
use crate::audit::entry::Entry;
use crate::audit::merkle::{self, Hash};
use crate::store::{LogPosition, Positioned, StoreError, WriteDone};

impl PgStore {
    /// Runs `f` in the writer's next commit and returns its result once committed.
    pub(super) fn write<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        self.enqueue(
            operation,
            f,
            move |r| {
                let _ = tx.send(r);
            },
            false,
        );
        rx.recv().unwrap_or_else(|_| Err(writer_gone(operation)))
    }

    /// Queues `f` for the writer; `done` gets its result once the commit is known. A
    /// `deferred` write waits for a batch someone else starts (at most 50 ms).
    pub(super) fn enqueue<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
        deferred: bool,
    ) {
        self.push(Job {
            work: work(operation, f, done),
            deferred,
            audited: false,
            announce: None,
        });
    }

    /// Queues an audited write: `f` runs, then the entry `entry` makes of its result is
    /// appended, in the writer's next commit. `announce`, when given with the entry's leaf
    /// hash, hears the entry's place as soon as the batch holds the log's lock.
    pub(super) fn enqueue_audited<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
        entry: impl FnOnce(&T) -> String + Send + 'static,
        announce: Option<(Hash, writer::Announce)>,
        done: impl FnOnce(Result<(T, LogPosition), StoreError>) + Send + 'static,
    ) {
        let run = move |b: &mut Batch<'_, '_>| {
            f(&mut *b).map(|value| {
                let position = b.append(entry(&value));
                (value, position)
            })
        };
        self.push(Job {
            work: work(operation, run, done),
            deferred: false,
            audited: true,
            announce,
        });
    }

    pub(super) fn push(&self, job: Job) {
        if let Err(job) = self.jobs.push(job) {
            let (done, _) = (job.work)(None);
            done(Err("the store writer has stopped".into()));
        }
    }

    /// An audited write that returns once committed.
    pub(super) fn write_audited<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
        entry: impl FnOnce(&T) -> String + Send + 'static,
    ) -> Result<(T, LogPosition), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue_audited(operation, f, entry, None, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(writer_gone(operation)))
    }

    /// An audited write of a known entry: `positioned` hears the entry's place as soon as
    /// the writer's batch holds the log's lock (or the failure, if it never gets one); `done`
    /// hears of the commit.
    pub(super) fn enqueue_positioned(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<(), DbError> + Send + 'static,
        entry: &Entry,
        positioned: Positioned,
        done: WriteDone,
    ) {
        let text = match encode(entry) {
            Ok(text) => text,
            Err(e) => return positioned(Err(e)),
        };
        let leaf_hash = merkle::leaf_hash(text.as_bytes());
        let once = PositionOnce {
            operation,
            positioned: Some(positioned),
        };
        self.enqueue_audited(
            operation,
            f,
            move |_| text,
            Some((leaf_hash, Box::new(move |p| once.tell(Ok(p))))),
            move |r| done(r.map(|_| ())),
        );
    }

    /// [`PgStore::enqueue_positioned`], waiting on this thread for the place.
    pub(super) fn enqueue_placed(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<(), DbError> + Send + 'static,
        entry: &Entry,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue_positioned(
            operation,
            f,
            entry,
            Box::new(move |p| {
                let _ = tx.send(p);
            }),
            done,
        );
        rx.recv().unwrap_or_else(|_| Err(writer_gone(operation)))
    }

    /// A read (or single write) on a pooled connection.
    pub(super) fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut conn::Db<'_, tokio_postgres::Client>) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        self.pool.with(operation, |c| f(&mut c.db()))
    }
}

/// A queued write: `run` in the batch, `done` told once the commit is known; a failure of
/// `run` is reported to the writer, which rolls the batch back.
fn work<T: Send + 'static>(
    operation: &'static str,
    run: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
    done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) -> Work {
    Box::new(move |batch| {
        let outcome = match batch {
            Some(b) => run(b).map_err(Some),
            None => Err(None),
        };
        let failed = match &outcome {
            Err(Some(e)) => Some(format!("{operation}: {e}")),
            _ => None,
        };
        let completion: Completion =
            Box::new(move |commit| done(finish(operation, outcome, commit)));
        (completion, failed)
    })
}

/// Tells `positioned` once: the place, or (dropped unheard, when the batch failed before it
/// had the log's lock) the failure.
struct PositionOnce {
    operation: &'static str,
    positioned: Option<Positioned>,
}

impl PositionOnce {
    fn tell(mut self, position: Result<LogPosition, StoreError>) {
        if let Some(p) = self.positioned.take() {
            p(position);
        }
    }
}

impl Drop for PositionOnce {
    fn drop(&mut self) {
        if let Some(p) = self.positioned.take() {
            p(Err(StoreError::Io {
                operation: self.operation,
                source: "not written: the store could not take the audit log's lock".into(),
            }));
        }
    }
}

fn writer_gone(operation: &'static str) -> StoreError {
    StoreError::Io {
        operation,
        source: "the store writer has stopped".into(),
    }
}

/// A write's result once its commit is known.
fn finish<T>(
    operation: &'static str,
    outcome: Result<T, Option<DbError>>,
    commit: Result<(), String>,
) -> Result<T, StoreError> {
    match (outcome, commit) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(Some(e)), _) => Err(e.into_store(operation)),
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
