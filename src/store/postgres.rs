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

use crate::store::CertRef;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use conn::{Connector, DbError, Pool};
use connect::{checked_namespace, connector_runtime, open_connector, redacted};
use writer::Jobs;

use super::entries::encode;
use super::sqlite::rows::unix;
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

mod approvals;
mod certificates;
mod conn;
mod connect;
mod queue;
mod records;
mod schema;
mod tls;
mod writer;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    jobs: Arc<Jobs>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pool: Pool,
    health: Arc<super::WriteHealth>,
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
        super::sqlite::writer::join_unless_current(
            self.writer.lock().ok().and_then(|mut w| w.take()),
        );
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database `config` names, whose schema must be this seb's version: a
    /// replica (or a CLI command) never migrates a schema other replicas are using. `seb
    /// migrate` migrates; [`PgStore::create`] (`seb init`) creates it.
    pub fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        Self::open_as(config, false, None)
    }

    /// Connects, creating the schema in an empty database or migrating an older one (`seb
    /// init`).
    pub fn create(config: &PostgresConfig) -> Result<Self, StoreError> {
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
            schema::stored_version(&mut first)
        }
        .map_err(|e| open_err(Box::new(e)))?;
        if !migrate && version > schema::VERSION {
            return Err(open_err(Box::new(DbError::NewerSchema {
                found: version,
                known: schema::VERSION,
            })));
        }
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
        let health = Arc::new(super::WriteHealth::default());
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
        let result = connector
            .connect()
            .and_then(|mut conn| schema::stored_version(&mut conn));
        runtime.shutdown_background();
        Ok((
            result.map_err(|e| e.into_store("read the schema version"))?,
            schema::VERSION,
        ))
    }
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
        self.read("check revocations", |db| {
            certificates::revoked_in(db, serials)
        })
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
        executor: &CertRef,
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
                approvals::insert_pending(b.db()?, &pending)
            },
            entry,
            done,
        )
    }

    fn record_pending_positioned(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        positioned: super::Positioned,
        done: WriteDone,
    ) {
        self.enqueue_positioned(
            "record pending request",
            move |b| {
                b.stage_execution(record);
                approvals::insert_pending(b.db()?, &pending)
            },
            entry,
            positioned,
            done,
        );
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
            approvals::pending(b.db()?, &request_id)
        })
    }

    fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let request_id = request_id.to_owned();
        self.write("read approvals", move |b| {
            approvals::approvals_of(b.db()?, &request_id)
        })
    }

    fn open_requests_of(&self, agent_key: &str, now: SystemTime) -> Result<usize, StoreError> {
        let key = agent_key.to_owned();
        self.write("count an agent's open requests", move |b| {
            let open: i64 = b
                .db()?
                .query_one(
                    "SELECT count(*) FROM approval_requests
                     WHERE closed IS NULL AND expires_at > $1 AND agent_key = $2",
                    &[&unix(now), &key],
                )?
                .get(0);
            Ok(usize::try_from(open).unwrap_or(usize::MAX))
        })
    }

    fn open_approval_requests(
        &self,
        now: SystemTime,
        groups: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError> {
        let groups = groups.to_vec();
        let after = after.unwrap_or_default().to_owned();
        self.write("list open approval requests", move |b| {
            approvals::open_requests(b.db()?, now, &groups, &after, limit)
        })
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
        executor: &CertRef,
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

    fn audit_leaf_hashes(&self, start: u64, end: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let end = end.min(start.saturating_add(MAX_AUDIT_PAGE));
        self.read("audit leaf hashes", |db| {
            let rows = db.query(
                "SELECT idx, hash FROM audit_nodes WHERE level = 0 AND idx >= $1 AND idx < $2 \
                 ORDER BY idx",
                &[&writer::sql_int(start), &writer::sql_int(end)],
            )?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let idx = u64::try_from(r.get::<_, i64>(0)).ok()?;
                    let hash = Hash::try_from(r.get::<_, Vec<u8>>(1)).ok()?;
                    Some((idx, hash))
                })
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

    fn live_replicas(&self, replica: &str, _now: SystemTime) -> Result<u32, StoreError> {
        // The database's clock, not this host's: a replica whose clock runs behind would
        // otherwise stop counting the others (each then hands out the whole rate), and one
        // running ahead would keep a stopped replica counted.
        let window_ms = i64::try_from(super::REPLICA_LIVENESS.as_millis()).unwrap_or(i64::MAX);
        self.read("replica heartbeat", |db| {
            let n: i64 = db
                .query_one(
                    "WITH now_ms AS (
                         SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms
                     ), seen AS (
                         INSERT INTO replicas (id, seen_at_ms) SELECT $1, ms FROM now_ms
                         ON CONFLICT (id) DO UPDATE SET seen_at_ms = excluded.seen_at_ms
                     )
                     SELECT 1 + COUNT(*) FROM replicas, now_ms
                     WHERE id <> $1 AND seen_at_ms > now_ms.ms - $2",
                    &[&replica, &window_ms],
                )?
                .get(0);
            Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
        })
    }
}
