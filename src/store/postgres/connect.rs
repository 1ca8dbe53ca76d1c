//! Opening connections: the URL (never with a password) and the password file, TLS when asked,
//! the session settings every connection gets, and the store's own runtime.

use std::path::{Path, PathBuf};
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
    sslmode_accepted(&url)?;
    // libpq's `sslrootcert=PATH` in the URL names the CA as `ca_file` does.
    let (url, root_cert) = take_query_param(&url, "sslrootcert");
    if let Some(root) = &root_cert {
        // libpq would also take `system`, a relative path or a %-encoded one; seb wants the
        // file it will trust spelled out.
        if !root.starts_with('/') || root.contains(['%', '#']) {
            return Err(format!(
                "[store] url: sslrootcert must be an absolute path without %-escapes \
                 (or use ca_file), not {root:?}"
            ));
        }
    }
    let ca_file = match (&config.ca_file, root_cert) {
        (Some(file), Some(root)) if file.as_path() != Path::new(&root) => {
            return Err(format!(
                "[store] ca_file ({}) and the url's sslrootcert ({root}) name different CAs",
                file.display()
            ))
        }
        (Some(file), _) => Some(file.clone()),
        (None, root) => root.map(PathBuf::from),
    };
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
    // A database host that vanishes is noticed in about 8 s, not at the kernel's default of
    // two hours.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(4));
    pg.keepalives_interval(Duration::from_secs(2));
    pg.keepalives_retries(2);
    // A statement, or a wait for another replica's batch, may not hang forever. A replica
    // that stops mid-transaction gives up the log's lock: a frozen one after 5 s idle in its
    // transaction, one whose host vanished when the server's keepalives (4 s, then 2 × 2 s)
    // find its connection dead. Both come before the others' lock timeout of 10 s, so they
    // wait rather than fail.
    // Every statement is prepared once per connection and planned once: a custom plan per
    // execution (the default for the first ones) cost the batch statement 1.2 ms of planning
    // for under 1 ms of execution.
    // Read committed whatever the database's default: the writer reads the log's size after
    // waiting for the log's lock, and under repeatable read or serializable that read would
    // come from a snapshot taken before the wait (a stale size, and every contended batch
    // failing on the unique index).
    let mut options = String::from(
        "-c statement_timeout=10000 -c lock_timeout=10000 \
         -c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=4 \
         -c tcp_keepalives_interval=2 -c tcp_keepalives_count=2 \
         -c plan_cache_mode=force_generic_plan \
         -c default_transaction_isolation=read\\ committed",
    );
    if let Some(n) = namespace {
        options.push_str(&format!(" -c search_path={n}"));
    }
    pg.options(&options);
    let wants_tls =
        matches!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require) || ca_file.is_some();
    let tls = if wants_tls {
        let Some(ca) = &ca_file else {
            return Err(
                "[store] TLS to the database (sslmode=require, verify-ca or verify-full) \
                        needs ca_file or the url's sslrootcert: the CA (PEM) that signed the \
                        database's certificate"
                    .into(),
            );
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

/// `url` without its query parameter `name`, and that parameter's value.
fn take_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

pub(super) fn connector_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("seb-pg")
        .enable_all()
        .build()
}

/// The URL for messages: no password and nothing after `?` (options may name secrets).
pub(super) fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    // The user name alone of any credentials (read as the driver reads them: up to the first
    // '@'), and no query string.
    let rest = match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => rest.to_owned(),
    };
    let rest = rest.split('?').next().unwrap_or_default();
    format!("{scheme}://{rest}")
}

/// Refuses libpq's modes that may fall back to plain TCP (`allow`, `prefer`) and unknown
/// ones, naming those seb takes, instead of tokio-postgres's "invalid connection string".
fn sslmode_accepted(url: &str) -> Result<(), String> {
    let (_, mode) = take_query_param(url, "sslmode");
    match mode.as_deref() {
        None | Some("disable" | "require") => Ok(()),
        Some(mode @ ("allow" | "prefer")) => Err(format!(
            "[store] url: sslmode={mode} may fall back to plain TCP without saying so: use \
             sslmode=require (or verify-ca, verify-full) with ca_file, or sslmode=disable on a \
             trusted network"
        )),
        Some(mode) => Err(format!(
            "[store] url: unknown sslmode={mode:?} (seb takes disable, require, verify-ca or \
             verify-full)"
        )),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted;

    #[test]
    fn sslmodes_that_may_fall_back_to_plain_tcp_are_refused_by_name() {
        for url in ["postgres://db/seb", "postgres://db/seb?sslmode=require&x=1"] {
            assert_eq!(super::sslmode_accepted(url), Ok(()), "{url}");
        }
        for (url, says) in [
            (
                "postgres://db/seb?sslmode=prefer",
                "sslmode=prefer may fall back",
            ),
            (
                "postgres://db/seb?x=1&sslmode=allow",
                "sslmode=allow may fall back",
            ),
            (
                "postgres://db/seb?sslmode=verify",
                "unknown sslmode=\"verify\"",
            ),
        ] {
            let e = super::sslmode_accepted(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn messages_never_carry_a_password_or_the_options() {
        for (url, shown) in [
            (
                "postgres://seb@db/seb?sslmode=verify-full",
                "postgres://seb@db/seb",
            ),
            ("postgres://seb:hun/ter2@db/seb", "postgres://seb@db/seb"),
            (
                "postgresql://seb:pw@db:5432/seb",
                "postgresql://seb@db:5432/seb",
            ),
            ("postgres://db/seb", "postgres://db/seb"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }
}
