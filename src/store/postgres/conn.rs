//! Connections to PostgreSQL, used from plain threads.
//!
//! The store's methods are synchronous and are called from the broker's async workers as well
//! as from the command line. tokio-postgres connections are driven by a small runtime the
//! store owns; a caller sends its queries through the connection's client and waits for the
//! answers on its own thread ([`block_on`]), so no caller ever enters a runtime (which would
//! panic inside the broker's own) and no query hops to another thread to be issued.
//!
//! Every statement is prepared once per connection and kept ([`Conn::statement`]): after the
//! first use a query is one round trip. A connection that failed is dropped and replaced on
//! the next use, so the store recovers on its own when the database comes back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use super::tls::TlsConnector;
use crate::store::StoreError;

/// How long one statement may take before the store gives up on its connection.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A database error, or a deadline that passed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DbError {
    /// What PostgreSQL (or the connection) said.
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// No answer in time; the connection is dropped.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// Opening a connection failed.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// The stored data does not make sense.
    #[error("{0}")]
    Corrupt(String),
    /// The database was migrated by a newer seb: nothing is wrong with it, this binary is old.
    #[error(
        "the database schema is version {found}, newer than this seb knows ({known}): upgrade seb"
    )]
    NewerSchema {
        /// The stored version.
        found: i32,
        /// The newest this binary writes.
        known: i32,
    },
}

impl DbError {
    /// Whether the connection is unusable after this error.
    pub(super) fn breaks_connection(&self) -> bool {
        match self {
            DbError::Pg(e) => e.is_closed() || e.as_db_error().is_none(),
            DbError::Timeout(_) | DbError::Connect(_) => true,
            DbError::Corrupt(_) | DbError::NewerSchema { .. } => false,
        }
    }

    pub(super) fn into_store(self, operation: &'static str) -> StoreError {
        match self {
            DbError::Corrupt(m) => StoreError::Corrupt(m),
            other => StoreError::Io {
                operation,
                source: Box::new(other),
            },
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, parking between polls; gives up after
/// `limit`. The futures run here only talk to a connection task through channels, so they
/// need no runtime of their own.
pub(super) fn block_on<F: Future>(future: F, limit: Duration) -> Result<F::Output, DbError> {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DbError::Timeout(limit));
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// One open connection and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// A synchronous view of the connection (outside a transaction).
    pub(super) fn db(&mut self) -> Db<'_, Client> {
        Db { conn: self }
    }

    /// Runs `f` in a transaction; commits when it returns `Ok`, rolls back otherwise.
    pub(super) fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_, tokio_postgres::Transaction<'_>>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let Conn { client, statements } = self;
        let txn = block_on(client.transaction(), QUERY_TIMEOUT)??;
        let mut view = TxnConn { txn, statements };
        let value = f(&mut Db { conn: &mut view })?;
        block_on(view.txn.commit(), QUERY_TIMEOUT)??;
        Ok(value)
    }
}

/// A transaction with the statements of its connection.
pub(super) struct TxnConn<'a> {
    pub(super) txn: tokio_postgres::Transaction<'a>,
    statements: &'a mut HashMap<&'static str, Statement>,
}

/// Where [`Db`] sends its statements: a connection, or a transaction on one.
pub(super) trait Target {
    type Client: GenericClient + Sync;
    fn parts(&mut self) -> (&Self::Client, &mut HashMap<&'static str, Statement>);
}

impl Target for Conn {
    type Client = Client;
    fn parts(&mut self) -> (&Client, &mut HashMap<&'static str, Statement>) {
        (&self.client, &mut self.statements)
    }
}

impl<'a> Target for TxnConn<'a> {
    type Client = tokio_postgres::Transaction<'a>;
    fn parts(
        &mut self,
    ) -> (
        &tokio_postgres::Transaction<'a>,
        &mut HashMap<&'static str, Statement>,
    ) {
        (&self.txn, self.statements)
    }
}

/// Synchronous statements on a connection or a transaction.
pub(super) struct Db<'a, C> {
    conn: &'a mut dyn Target<Client = C>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient + Sync> Db<'_, C> {
    fn prepared(&mut self, sql: &'static str) -> Result<(Statement, &C), DbError> {
        let (client, statements) = self.conn.parts();
        if let Some(s) = statements.get(sql) {
            return Ok((s.clone(), client));
        }
        let s = block_on(client.prepare(sql), QUERY_TIMEOUT)??;
        statements.insert(sql, s.clone());
        Ok((s, client))
    }

    /// Runs a statement; returns the rows it changed.
    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, DbError> {
        let (s, c) = self.prepared(sql)?;
        Ok(block_on(c.execute(&s, params), QUERY_TIMEOUT)??)
    }

    /// Every row of a query.
    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, DbError> {
        let (s, c) = self.prepared(sql)?;
        Ok(block_on(c.query(&s, params), QUERY_TIMEOUT)??)
    }

    /// The row of a query that returns at most one.
    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, DbError> {
        let (s, c) = self.prepared(sql)?;
        Ok(block_on(c.query_opt(&s, params), QUERY_TIMEOUT)??)
    }

    /// The row of a query that returns exactly one.
    pub(super) fn query_one(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Row, DbError> {
        let (s, c) = self.prepared(sql)?;
        Ok(block_on(c.query_one(&s, params), QUERY_TIMEOUT)??)
    }

    /// Whether a query returns a row.
    pub(super) fn exists(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<bool, DbError> {
        Ok(self.query_opt(sql, params)?.is_some())
    }

    /// Runs a statement and `COMMIT`, sent together (one round trip). The statement's own
    /// result decides: PostgreSQL answers `COMMIT` in a failed transaction by rolling back.
    pub(super) fn execute_and_commit(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<(), DbError> {
        let (s, c) = self.prepared(sql)?;
        // Polled together, in order, so both requests leave in one write (the connection
        // pipelines them).
        let (statement, commit) = block_on(
            async { tokio::join!(c.execute(&s, params), c.batch_execute("COMMIT")) },
            QUERY_TIMEOUT,
        )?;
        statement?;
        commit?;
        Ok(())
    }

    /// Runs statements of the simple protocol (no parameters) in one round trip; returns the
    /// first column of the last row they return.
    pub(super) fn simple_last_value(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        let (c, _) = self.conn.parts();
        let messages = block_on(c.simple_query(sql), QUERY_TIMEOUT)??;
        let mut last = None;
        for m in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                last = Some(row.get(0).map(str::to_owned));
            }
        }
        Ok(last.flatten())
    }

    /// Runs statements of the simple protocol (no parameters).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        let (c, _) = self.conn.parts();
        Ok(block_on(c.batch_execute(sql), QUERY_TIMEOUT)??)
    }
}

/// Opens connections: the parsed URL with the password, and TLS when asked for.
pub(super) struct Connector {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Option<TlsConnector>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl Connector {
    /// A new connection; its task runs on the store's runtime.
    pub(super) fn connect(&self) -> Result<Conn, DbError> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let result = match tls {
                Some(tls) => match config.connect(tls).await {
                    Ok((client, connection)) => {
                        tokio::spawn(drive(connection));
                        Ok(client)
                    }
                    Err(e) => Err(e),
                },
                None => match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        tokio::spawn(drive(connection));
                        Ok(client)
                    }
                    Err(e) => Err(e),
                },
            };
            let _ = tx.send(result);
        });
        let client = rx
            .recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| DbError::Connect("timed out".into()))?
            .map_err(|e| DbError::Connect(connect_reason(&e)))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }
}

/// A connection error with its cause (tokio-postgres' own message alone says only "error
/// connecting to server"); never the password, which it does not hold.
fn connect_reason(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn drive<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "database connection closed");
    }
}

/// Connections for reads and single writes, shared by the calling threads.
pub(super) struct Pool {
    connector: Arc<Connector>,
    idle: Mutex<PoolState>,
    freed: Condvar,
    size: usize,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

impl Pool {
    pub(super) fn new(connector: Arc<Connector>, size: usize) -> Self {
        Self {
            connector,
            idle: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            size: size.max(1),
        }
    }

    /// Runs `f` on a pooled connection (opened if none is idle and the pool is not full). A
    /// connection that failed is closed rather than returned.
    pub(super) fn with<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Conn) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.checkout().map_err(|e| e.into_store(operation))?;
        let result = f(&mut conn);
        let broken = match &result {
            Err(e) => e.breaks_connection() || conn.client.is_closed(),
            Ok(_) => conn.client.is_closed(),
        };
        self.checkin(conn, broken);
        result.map_err(|e| e.into_store(operation))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self) -> Result<Conn, DbError> {
        let mut state = self.lock();
        let deadline = Instant::now() + QUERY_TIMEOUT;
        loop {
            if let Some(conn) = state.idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(conn);
                }
                state.open -= 1;
                continue;
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return self.connector.connect().inspect_err(|_| {
                    self.lock().open -= 1;
                    self.freed.notify_one();
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DbError::Timeout(QUERY_TIMEOUT));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn checkin(&self, conn: Conn, broken: bool) {
        let mut state = self.lock();
        if broken {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        drop(state);
        self.freed.notify_one();
    }
}
