//! `[store]`: SQLite in the state directory (the default) or the PostgreSQL database of
//! replicas, and the checks its options get.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[store]`: where the broker's durable state lives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// Embedded SQLite in `state_dir` (`seb.db`): nothing to install, one broker.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by several broker replicas.
    Postgres(PostgresConfig),
}

/// `[store] backend = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DBNAME[?sslmode=require[&sslrootcert=CA.pem]]`, without a
    /// password.
    pub url: String,
    /// File holding the database password (relative paths: to the configuration file).
    pub password_file: PathBuf,
    /// PEM roots that sign the database server's TLS certificate; with it (or with
    /// `sslmode=require` in the URL) the connection uses TLS and verifies the server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections each replica keeps for reads and single writes, besides the audit
    /// writer's own.
    #[serde(default = "default_pool")]
    pub pool: usize,
}

fn default_pool() -> usize {
    4
}

impl PostgresConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[store] {m}")));
        let Some(rest) = self
            .url
            .strip_prefix("postgres://")
            .or_else(|| self.url.strip_prefix("postgresql://"))
        else {
            return invalid("url must start with postgres://");
        };
        // As the driver reads it: the credentials run to the first '@' anywhere in the URL,
        // and a ':' in them starts a password ("postgres://seb:ab/cd@db" holds one).
        if let Some((credentials, _)) = rest.split_once('@') {
            if credentials.contains(':') {
                return invalid(
                    "url must not hold a password: put it in password_file (mode 0600)",
                );
            }
        }
        if self.url.contains("password=") {
            return invalid("url must not hold a password: put it in password_file (mode 0600)");
        }
        if !(1..=64).contains(&self.pool) {
            return invalid("pool must be 1 to 64 connections");
        }
        Ok(())
    }
}
