//! Opening connections: the URL (never with a password) and the password file, TLS when asked,
//! the session settings every connection gets, and the store's own runtime.

use std::time::Duration;

use super::conn::Connector;
use super::tls;
use crate::config::PostgresConfig;
use crate::store::StoreError;

/// A schema name made only of lowercase letters, digits and `_`.
pub(super) fn checked_namespace(namespace: &str) -> Result<&str, StoreError> {
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
pub(super) fn open_connector(
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

pub(super) fn connector_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("seb-pg")
        .enable_all()
        .build()
}

/// The URL without anything after `?` (it names no secret, but options may).
pub(super) fn redacted(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_owned()
}
