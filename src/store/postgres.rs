//! The shared store of broker replicas: one PostgreSQL database (`[store] backend =
//! "postgres"`), behind the same [`Store`] trait as the embedded SQLite store.
//!
//! * Writes that append to the audit log, and the reads that must see this broker's queued
//!   writes, go through one group-commit writer thread per broker (`writer.rs`). Replicas
//!   share the log through an advisory lock held once per batch.
//! * Other reads and single writes use a small pool of connections (`conn.rs`), from the
//!   calling thread.
//! * Single use holds across replicas because a redemption is a row keyed by the token id,
//!   inserted in the same transaction as the revocation check of the agent's path; approvals
//!   and revocations are audited writes, so they run under the log's lock, one batch at a
//!   time across all replicas.
//!
//! Every failure of the database (down, unreachable, too slow) is a [`StoreError`]: the broker
//! refuses with `store_unavailable`, and the next call opens a new connection, so it recovers
//! when the database is back without a restart.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use conn::{Connector, DbError, Pool};
use writer::{Batch, Completion, Health, Job, Jobs, Work};

use super::{
    ApprovalOutcome, ApprovalRecord, Commit, ExecutionRecord, IssuedCertificate, LogPosition,
    PendingApproval, PolicyState, RedeemOutcome, ReservedToken, RevokeOutcome, Store, StoreError,
    WriteDone, MAX_AUDIT_PAGE,
};
use crate::audit::entry::{Entry, EntryKind};
use crate::audit::merkle::{self, Hash};
use crate::ca::crl::{Reason, Revocation};
use crate::config::PostgresConfig;
use crate::serial::Serial;

mod certificates;
mod conn;
mod records;
mod schema;
mod tls;
mod writer;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    jobs: Arc<Jobs>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pool: Pool,
    health: Arc<Health>,
    /// Drives the connections; shut down last, without blocking (a store may be dropped on
    /// an async worker).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl Drop for PgStore {
    /// Lets the writer commit what is queued, then stops it.
    fn drop(&mut self) {
        self.jobs.close();
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database `config` names, creating or migrating the schema.
    pub fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        Self::open_as(config, true, None)
    }

    /// Opens a store of its own in the PostgreSQL schema `namespace` of the configured
    /// database (created if needed), for `seb bench broker`: the measurement never writes
    /// into the broker's tables. [`PgStore::drop_namespace`] removes it.
    pub fn open_in_namespace(config: &PostgresConfig, namespace: &str) -> Result<Self, StoreError> {
        let (connector, runtime) = open_connector(config, None)?;
        let mut conn = connector
            .connect()
            .map_err(|e| e.into_store("create schema"))?;
        conn.db()
            .batch(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                checked_namespace(namespace)?
            ))
            .map_err(|e| e.into_store("create schema"))?;
        drop(conn);
        runtime.shutdown_background();
        Self::open_as(config, true, Some(namespace))
    }

    /// Drops the schema `namespace` and everything in it.
    pub fn drop_namespace(config: &PostgresConfig, namespace: &str) -> Result<(), StoreError> {
        let (connector, runtime) = open_connector(config, None)?;
        let mut conn = connector
            .connect()
            .map_err(|e| e.into_store("drop schema"))?;
        conn.db()
            .batch(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                checked_namespace(namespace)?
            ))
            .map_err(|e| e.into_store("drop schema"))?;
        drop(conn);
        runtime.shutdown_background();
        Ok(())
    }

    /// Connects; with `migrate` creates or migrates the schema, else requires it current.
    fn open_as(
        config: &PostgresConfig,
        migrate: bool,
        namespace: Option<&str>,
    ) -> Result<Self, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: redacted(&config.url),
            source: e,
        };
        let connector = Arc::new(open_connector(config, namespace)?.0);
        let runtime = connector_runtime().map_err(|e| open_err(Box::new(e)))?;
        let connector = Arc::new(Connector {
            config: connector.config.clone(),
            tls: connector.tls.clone(),
            runtime: runtime.handle().clone(),
        });
        let mut first = connector.connect().map_err(|e| open_err(Box::new(e)))?;
        let version = if migrate {
            schema::migrate(&mut first)
        } else {
            first
                .db()
                .query_opt("SELECT version FROM seb_schema", &[])
                .map(|r| r.map_or(0, |r| r.get(0)))
        }
        .map_err(|e| open_err(Box::new(e)))?;
        if !migrate && version != schema::VERSION {
            return Err(open_err(
                format!(
                    "the database schema is version {version}, this seb needs {}: run `seb migrate`",
                    schema::VERSION
                )
                .into(),
            ));
        }
        drop(first);
        let jobs = Arc::new(Jobs::default());
        let health = Arc::new(Health::default());
        let writer = {
            let (jobs, connector, health) = (jobs.clone(), connector.clone(), health.clone());
            std::thread::Builder::new()
                .name("seb-pg-writer".into())
                .spawn(move || writer::write_loop(jobs, connector, health))
                .map_err(|e| open_err(Box::new(e)))?
        };
        Ok(Self {
            jobs,
            writer: Mutex::new(Some(writer)),
            pool: Pool::new(connector, config.pool),
            health,
            runtime: Some(runtime),
        })
    }

    /// Creates or migrates the schema of the database `config` names; returns the versions
    /// before and after.
    pub fn migrate(config: &PostgresConfig) -> Result<(i32, i32), StoreError> {
        let (connector, runtime) = open_connector(config, None)?;
        let mut conn = connector.connect().map_err(|e| e.into_store("migrate"))?;
        let before = schema::migrate(&mut conn).map_err(|e| e.into_store("migrate"))?;
        drop(conn);
        runtime.shutdown_background();
        Ok((before, schema::VERSION))
    }

    /// The schema version of the database `config` names (0: none) and the one this seb
    /// writes, without changing anything.
    pub fn schema_version(config: &PostgresConfig) -> Result<(i32, i32), StoreError> {
        let (connector, runtime) = open_connector(config, None)?;
        let result = connector.connect().and_then(|mut conn| {
            let mut db = conn.db();
            let exists = db.exists(
                "SELECT 1 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'seb_schema'",
                &[],
            )?;
            if !exists {
                return Ok(0);
            }
            Ok(db
                .query_opt("SELECT version FROM seb_schema", &[])?
                .map_or(0, |r| r.get(0)))
        });
        runtime.shutdown_background();
        Ok((
            result.map_err(|e| e.into_store("read the schema version"))?,
            schema::VERSION,
        ))
    }

    /// Runs `f` in the writer's next commit and returns its result once committed.
    fn write<T: Send + 'static>(
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
    fn enqueue<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
        deferred: bool,
    ) {
        let work: Work = Box::new(move |batch| {
            let outcome = match batch {
                Some(b) => f(b).map_err(Some),
                None => Err(None),
            };
            let failed = match &outcome {
                Err(Some(e)) => Some(format!("{operation}: {e}")),
                _ => None,
            };
            let completion: Completion =
                Box::new(move |commit| done(finish(operation, outcome, commit)));
            (completion, failed)
        });
        self.push(Job {
            work,
            deferred,
            audited: false,
            announce: None,
        });
    }

    /// Queues an audited write: `f` runs, then the entry `entry` makes of its result is
    /// appended, in the writer's next commit. `announce`, when given with the entry's leaf
    /// hash, hears the entry's place as soon as the batch holds the log's lock.
    fn enqueue_audited<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<T, DbError> + Send + 'static,
        entry: impl FnOnce(&T) -> String + Send + 'static,
        announce: Option<(Hash, writer::Announce)>,
        done: impl FnOnce(Result<(T, LogPosition), StoreError>) + Send + 'static,
    ) {
        let work: Work = Box::new(move |batch| {
            let outcome = match batch {
                Some(b) => f(&mut *b)
                    .map(|value| {
                        let position = b.append(entry(&value));
                        (value, position)
                    })
                    .map_err(Some),
                None => Err(None),
            };
            let failed = match &outcome {
                Err(Some(e)) => Some(format!("{operation}: {e}")),
                _ => None,
            };
            let completion: Completion =
                Box::new(move |commit| done(finish(operation, outcome, commit)));
            (completion, failed)
        });
        self.push(Job {
            work,
            deferred: false,
            audited: true,
            announce,
        });
    }

    fn push(&self, job: Job) {
        if let Err(job) = self.jobs.push(job) {
            let (done, _) = (job.work)(None);
            done(Err("the store writer has stopped".into()));
        }
    }

    /// An audited write that returns once committed.
    fn write_audited<T: Send + 'static>(
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
    fn enqueue_positioned(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Batch<'_, '_>) -> Result<(), DbError> + Send + 'static,
        entry: &Entry,
        positioned: super::Positioned,
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
    fn enqueue_placed(
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
    fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut conn::Db<'_, tokio_postgres::Client>) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        self.pool.with(operation, |c| f(&mut c.db()))
    }
}

/// A schema name made only of lowercase letters, digits and `_`.
fn checked_namespace(namespace: &str) -> Result<&str, StoreError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(namespace)
    } else {
        Err(StoreError::Io {
            operation: "name a schema",
            source: format!("bad schema name {namespace:?}").into(),
        })
    }
}

/// [`connector`] with its error as the store's.
fn open_connector(
    config: &PostgresConfig,
    namespace: Option<&str>,
) -> Result<(Connector, tokio::runtime::Runtime), StoreError> {
    if let Some(n) = namespace {
        checked_namespace(n)?;
    }
    connector(config, namespace).map_err(|e| StoreError::Open {
        path: redacted(&config.url),
        source: e.into(),
    })
}

/// The connector for `config` (password read from its file now) and the runtime its
/// connections run on; with `namespace`, every name resolves in that schema first.
fn connector(
    config: &PostgresConfig,
    namespace: Option<&str>,
) -> Result<(Connector, tokio::runtime::Runtime), String> {
    // libpq's verifying modes: rustls always checks the chain against `ca_file` and the
    // host name, which is `verify-full`; tokio-postgres knows the mode as `require`.
    let url = config
        .url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("[store] url does not parse: {e}"))?;
    if pg.get_password().is_some() {
        return Err("[store] url must not hold a password".into());
    }
    let password = std::fs::read_to_string(&config.password_file)
        .map_err(|e| format!("cannot read {}: {e}", config.password_file.display()))?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("{} is empty", config.password_file.display()));
    }
    pg.password(password);
    if pg.get_application_name().is_none() {
        pg.application_name("seb");
    }
    pg.connect_timeout(Duration::from_secs(3));
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
    // A statement, or a wait for another replica's batch, may not hang forever; a replica
    // that stops mid-transaction (frozen, not dead) gives up the log's lock.
    // Every statement is prepared once per connection and planned once: a custom plan per
    // execution (the default for the first ones) cost the batch statement 1.2 ms of planning
    // for under 1 ms of execution.
    let mut options = String::from(
        "-c statement_timeout=10000 -c lock_timeout=10000 \
         -c idle_in_transaction_session_timeout=30000 -c plan_cache_mode=force_generic_plan",
    );
    if let Some(n) = namespace {
        options.push_str(&format!(" -c search_path={n}"));
    }
    pg.options(&options);
    let wants_tls = matches!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require)
        || config.ca_file.is_some();
    let tls = if wants_tls {
        let Some(ca) = &config.ca_file else {
            return Err("[store] sslmode=require needs ca_file (the database's CA, PEM)".into());
        };
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        Some(tls::TlsConnector::new(&pem)?)
    } else {
        pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        None
    };
    let runtime = connector_runtime().map_err(|e| e.to_string())?;
    Ok((
        Connector {
            config: pg,
            tls,
            runtime: runtime.handle().clone(),
        },
        runtime,
    ))
}

fn connector_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("seb-pg")
        .enable_all()
        .build()
}

/// The URL without anything after `?` (it names no secret, but options may).
fn redacted(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_owned()
}

/// Tells `positioned` once: the place, or (dropped unheard, when the batch failed before it
/// had the log's lock) the failure.
struct PositionOnce {
    operation: &'static str,
    positioned: Option<super::Positioned>,
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

fn unix(t: SystemTime) -> i64 {
    i64::try_from(crate::time::unix(t)).unwrap_or(i64::MAX)
}

impl Store for PgStore {
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
        let serial = serial.as_bytes().to_vec();
        self.read("check revocation", |db| {
            db.exists("SELECT 1 FROM revoked WHERE serial = $1", &[&serial])
        })
    }

    fn revoked_among(&self, serials: &[Serial]) -> Result<Vec<Serial>, StoreError> {
        if serials.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: Vec<Vec<u8>> = serials.iter().map(|s| s.as_bytes().to_vec()).collect();
        let revoked: Vec<Vec<u8>> = self.read("check revocations", |db| {
            Ok(db
                .query(
                    "SELECT serial FROM revoked WHERE serial = ANY($1)",
                    &[&bytes],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        Ok(serials
            .iter()
            .filter(|s| revoked.iter().any(|r| r.as_slice() == s.as_bytes()))
            .cloned()
            .collect())
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        certificates::next_crl_number(self)
    }

    fn record_execution(
        &self,
        record: &ExecutionRecord,
        entry: &Entry,
    ) -> Result<LogPosition, StoreError> {
        let (r, text) = (record.clone(), encode(entry)?);
        self.write_audited(
            "record execution",
            move |b| {
                b.stage_execution(r);
                Ok(())
            },
            move |_| text,
        )
        .map(|(_, position)| position)
    }

    fn record_execution_then(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        _commit: Commit,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        self.enqueue_placed(
            "record execution",
            move |b| {
                b.stage_execution(record);
                Ok(())
            },
            entry,
            done,
        )
    }

    fn record_execution_positioned(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        _commit: Commit,
        positioned: super::Positioned,
        done: WriteDone,
    ) {
        self.enqueue_positioned(
            "record execution",
            move |b| {
                b.stage_execution(record);
                Ok(())
            },
            entry,
            positioned,
            done,
        );
    }

    fn complete_issuance_then(&self, request_id: &str, token: Option<String>, done: WriteDone) {
        records::complete_issuance_then(self, request_id, token, done)
    }

    fn execution(&self, request_id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let request_id = request_id.to_owned();
        self.write("read execution", move |b| {
            records::execution(b.db()?, &request_id)
        })
    }

    fn request_of_token(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up a token's request", |db| {
            Ok(db
                .query_opt("SELECT request_id FROM executions WHERE jti = $1", &[&jti])?
                .map(|r| r.get(0)))
        })
    }

    fn redeem(
        &self,
        jti: &str,
        executor: &str,
        at: SystemTime,
    ) -> Result<RedeemOutcome, StoreError> {
        records::redeem(self, jti, executor, at)
    }

    fn record_pending_then(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError> {
        self.enqueue_placed(
            "record pending request",
            move |b| {
                b.stage_execution(record);
                records::insert_pending(b.db()?, &pending)
            },
            entry,
            done,
        )
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
        self.enqueue_audited(
            "append audit entry",
            |_| Ok(()),
            move |_| text,
            None,
            move |r| done(r.map(|(_, position)| position)),
        );
    }

    fn pending_approval(&self, request_id: &str) -> Result<Option<PendingApproval>, StoreError> {
        let request_id = request_id.to_owned();
        self.write("read pending request", move |b| {
            records::pending(b.db()?, &request_id)
        })
    }

    fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let request_id = request_id.to_owned();
        self.write("read approvals", move |b| {
            records::approvals_of(b.db()?, &request_id)
        })
    }

    fn open_approval_requests(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError> {
        self.write("list open approval requests", move |b| {
            records::open_requests(b.db()?, now, limit)
        })
    }

    fn add_approval(
        &self,
        approval: ApprovalRecord,
        required: u32,
        now: SystemTime,
        reserve: ReservedToken,
    ) -> Result<ApprovalOutcome, StoreError> {
        records::add_approval(self, approval, required, now, reserve)
    }

    fn expire_approval_requests(&self, now: SystemTime) -> Result<Vec<String>, StoreError> {
        let ids = self.write("expire approval requests", move |b| {
            records::expire(b.db()?, now)
        })?;
        for id in &ids {
            let mut e = Entry::new(EntryKind::ApprovalExpired, crate::time::unix_millis(now));
            e.request_id = Some(id.clone());
            if let Err(err) = self.append_audit(&e) {
                tracing::error!(error = %err, request_id = %id, "cannot log an approval expiry");
            }
        }
        Ok(ids)
    }

    fn redeemed_by(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up a redemption", |db| {
            Ok(db
                .query_opt("SELECT executor FROM redemptions WHERE jti = $1", &[&jti])?
                .map(|r| r.get(0)))
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
        records::record_outcome(self, jti, request_id, executor, receipt_json, at)
    }

    fn outcome(&self, jti: &str) -> Result<Option<String>, StoreError> {
        self.read("look up an execution outcome", |db| {
            Ok(db
                .query_opt("SELECT receipt FROM outcomes WHERE jti = $1", &[&jti])?
                .map(|r| r.get(0)))
        })
    }

    fn policy_state(&self) -> Result<PolicyState, StoreError> {
        records::policy_state(self)
    }

    fn bump_epoch(&self, floor: u64, at: SystemTime) -> Result<u64, StoreError> {
        records::bump_epoch(self, floor, at)
    }

    fn set_frozen(&self, frozen: bool, reason: &str, at: SystemTime) -> Result<(), StoreError> {
        records::set_frozen(self, frozen, reason, at)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.write("health check write", |b| {
            b.db()?
                .execute(
                    "INSERT INTO health (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    &[&unix(SystemTime::now())],
                )
                .map(|_| ())
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
        records::events(self, kind)
    }

    fn append_audit(&self, entry: &Entry) -> Result<LogPosition, StoreError> {
        let text = encode(entry)?;
        self.write_audited("append audit entry", |_| Ok(()), move |_| text)
            .map(|(_, position)| position)
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.read("audit size", writer::stored_size)
    }

    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let end = end.min(start.saturating_add(MAX_AUDIT_PAGE));
        self.read("audit entries", |db| {
            let rows = db.query(
                "SELECT idx, entry FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                &[&writer::sql_int(start), &writer::sql_int(end)],
            )?;
            Ok(rows
                .iter()
                .map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1)))
                .collect())
        })
    }

    fn audit_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.read("audit root", |db| {
            merkle::range_root(0, size, &mut |level, idx| writer::node(db, level, idx))
        })
    }

    fn audit_inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.read("audit inclusion proof", |db| {
            merkle::inclusion_proof(index, size, &mut |level, idx| writer::node(db, level, idx))
        })
    }

    fn audit_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.read("audit consistency proof", |db| {
            merkle::consistency_proof(old, new, &mut |level, idx| writer::node(db, level, idx))
        })
    }

    fn audit_health(&self) -> Result<(), String> {
        self.health.get()
    }

    fn live_replicas(&self, replica: &str, now: SystemTime) -> Result<u32, StoreError> {
        let now_ms = i64::try_from(crate::time::unix_millis(now)).unwrap_or(i64::MAX);
        let since = now_ms - i64::try_from(super::REPLICA_LIVENESS.as_millis()).unwrap_or(0);
        self.read("replica heartbeat", |db| {
            db.execute(
                "INSERT INTO replicas (id, seen_at_ms) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
                &[&replica, &now_ms],
            )?;
            let n: i64 = db
                .query_one(
                    "SELECT COUNT(*) FROM replicas WHERE seen_at_ms > $1",
                    &[&since],
                )?
                .get(0);
            Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
        })
    }
}
