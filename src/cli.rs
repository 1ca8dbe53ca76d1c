//! Command-line plumbing shared by the subcommands: loading the configuration, opening the
//! key backend and the store, writing files safely.

use std::path::Path;

use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
use seb::backend::tpm::{TpmBackend, TpmSettings};
use seb::backend::KeyBackend;
use seb::config::StoreConfig;
use seb::config::{BackendConfig, Config};
use seb::files::{self, Access, Existing};
use seb::store::postgres::PgStore;
use seb::store::sqlite::SqliteStore;
use seb::store::Store;

pub mod approve;
pub mod attest;
pub mod audit;
pub mod cert;
pub mod check;
pub mod exec;
pub mod init;
pub mod inventory;
pub mod mcp;
pub mod policy;
pub mod request;
pub mod rotate;
pub mod seal;
pub mod serve;
pub mod token;

/// Errors reaching the top of the binary: printed with their source chain, never with secrets.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;
/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// Writes one line to stdout (the [`say!`] macro). A closed pipe is not an error of the
/// command: the output is dropped and the command exits with its own status.
pub fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// Writes one line to stderr (the [`tell!`] macro): messages for the person at the terminal,
/// verdicts and errors. A closed pipe drops the line; the command exits with its own status.
pub fn tell(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Logs go to stderr; `RUST_LOG` sets the filter (default: warnings and errors).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log that cannot be written (a full disk, a file-size limit, a closed pipe) loses the
    // line: the subscriber must not report it with `eprintln!`, which panics when stderr
    // fails, in whichever thread logged (the store writer, a request).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false)
        .init();
}

/// Caps tpm2-tss' own logging (`TSS2_LOG`) at warning. Its info/debug/trace levels hex-dump
/// command and response parameters after session decryption, which would print the unsealed
/// HSM PIN (and sealing's input) to stderr. Unset, it is `all+none`: tpm2-tss would
/// otherwise print its own `WARNING:esys…`/`ERROR:esys…` lines before seb's error, which names
/// the TPM's response code itself (set `TSS2_LOG=all+error` to see them). Called first thing
/// in `main`, before any thread.
pub fn cap_tss_logging() {
    let Ok(requested) = std::env::var("TSS2_LOG") else {
        // Runs before any thread exists, so no other code is reading the environment.
        std::env::set_var("TSS2_LOG", "all+none");
        return;
    };
    let lower = requested.to_ascii_lowercase();
    if ["info", "debug", "trace"].iter().any(|l| lower.contains(l)) {
        // Runs before any thread exists, so no other code is reading the environment.
        std::env::set_var("TSS2_LOG", "all+warning");
        tracing::warn!(
            requested,
            "TSS2_LOG capped at warning: tpm2-tss debug output would show secrets such as the unsealed HSM PIN"
        );
    }
}

/// Loads the configuration named by `--config`, applies the module environment, runs `f`.
pub fn with_config(path: Option<&Path>, f: impl FnOnce(&Config) -> CliResult) -> CliResult {
    let path = path.ok_or("this command needs --config FILE (or SEB_CONFIG)")?;
    let config = Config::load(path)?;
    if let BackendConfig::Pkcs11(p) = &config.backend {
        for (key, value) in &p.module_env {
            // Runs before any thread exists, so no other code is reading the environment.
            std::env::set_var(key, value);
        }
    }
    warn_if_root_in_another_users_state(&config);
    f(&config)
}

/// Root working in a state directory that belongs to the broker's own user leaves files, and
/// with SoftHSM2 key objects (one file per object, readable by its creator only), that the
/// broker cannot read: an intermediate made so has "no key" as far as the broker can tell.
fn warn_if_root_in_another_users_state(config: &Config) {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Ok(owner) = std::fs::metadata(&config.state_dir).map(|m| m.uid()) else {
        return;
    };
    if owner == 0 {
        return;
    }
    // sudo takes a numeric user id as `#UID`.
    let (user, sudo_user) = match user_name(owner) {
        Some(name) => (name.clone(), name),
        None => (format!("user id {owner}"), format!("'#{owner}'")),
    };
    tell!(
        "warning: running as root, but the state directory {} belongs to {user}: files and \
         HSM key objects this command creates may be unreadable by the broker; run it as that \
         user (sudo -u {sudo_user} seb ...)",
        config.state_dir.display()
    );
}

/// The name of the user with `uid`, from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse() == Ok(uid)).then(|| name.to_owned())
    })
}

/// Like [`with_config`], for commands that also work without a configuration.
pub fn with_optional_config(
    path: Option<&Path>,
    f: impl FnOnce(Option<&Config>) -> CliResult,
) -> CliResult {
    match path {
        Some(path) => with_config(Some(path), |config| f(Some(config))),
        None => f(None),
    }
}

/// Opens the configured key backend, optionally with a different signing pool size.
pub fn open_backend(
    config: &Config,
    sessions: Option<usize>,
) -> Result<Box<dyn KeyBackend>, CliError> {
    match &config.backend {
        BackendConfig::Pkcs11(p) => {
            let settings = Pkcs11Settings {
                module: p.module.clone(),
                token: TokenSelector {
                    label: p.token_label.clone(),
                    serial: p.token_serial.clone(),
                },
                pin: p.read_pin()?,
                sessions: sessions.unwrap_or_else(|| p.pool_size()),
            };
            match Pkcs11Backend::open(settings) {
                Ok(backend) => Ok(Box::new(backend)),
                Err(e) => Err(explain_module_failure(&p.module, e)),
            }
        }
        BackendConfig::Tpm(t) => {
            let settings = TpmSettings {
                tcti: t.tcti.clone(),
                key_dir: t.key_dir(&config.state_dir),
            };
            Ok(Box::new(TpmBackend::open(&settings)?))
        }
    }
}

/// SoftHSM2 reports an unreadable configuration file only as "Some horrible, unrecoverable
/// error" on its own stderr and a general error to the caller. When the module is SoftHSM2 and
/// its configuration cannot be read, say which file and why.
fn explain_module_failure(module: &Path, error: seb::backend::BackendError) -> CliError {
    let is_softhsm = module
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("softhsm"));
    if !is_softhsm {
        return error.into();
    }
    let conf = std::env::var_os("SOFTHSM2_CONF").map_or_else(
        || "/etc/softhsm/softhsm2.conf".into(),
        std::path::PathBuf::from,
    );
    let text = match std::fs::read_to_string(&conf) {
        Ok(text) => text,
        Err(io) => {
            return format!(
                "{error}: SoftHSM2 cannot read its configuration {} ({io}). Set SOFTHSM2_CONF in \
                 [backend.module_env] to a readable file; Debian's /etc/softhsm/softhsm2.conf is \
                 root:softhsm 0640, so a dedicated seb user must be in the softhsm group \
                 (docs/OPERATIONS.md)",
                conf.display()
            )
            .into()
        }
    };
    match unreadable_token_file(&text) {
        Some((path, io)) => format!(
            "{error}: SoftHSM2 cannot read {} ({io}), under directories.tokendir of {}. The \
             token directory and every file in it must exist and be readable and writable by \
             the user seb runs as; Debian's /var/lib/softhsm/tokens is root:softhsm 2770, so a \
             dedicated seb user must be in the softhsm group, and tokens made by root belong to \
             root (docs/OPERATIONS.md)",
            path.display(),
            conf.display()
        )
        .into(),
        None => error.into(),
    }
}

/// The first part of SoftHSM2's token directory (`directories.tokendir` in its configuration
/// `conf_text`) this process cannot read: the directory, a token's directory, or a file in
/// one; with why.
fn unreadable_token_file(conf_text: &str) -> Option<(std::path::PathBuf, std::io::Error)> {
    let dir = conf_text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "directories.tokendir").then(|| std::path::PathBuf::from(value.trim()))
    })?;
    let entries = |dir: &Path| -> Result<Vec<std::path::PathBuf>, std::io::Error> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    };
    let tokens = match entries(&dir) {
        Ok(tokens) => tokens,
        Err(io) => return Some((dir, io)),
    };
    for token in tokens.into_iter().filter(|t| t.is_dir()) {
        let files = match entries(&token) {
            Ok(files) => files,
            Err(io) => return Some((token, io)),
        };
        for file in files {
            if let Err(io) = std::fs::File::open(&file) {
                return Some((file, io));
            }
        }
    }
    None
}

/// How a client (agent, approver) reaches the broker: the same four options everywhere.
#[derive(Debug, clap::Args)]
pub struct BrokerConnection {
    /// Broker URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    pub broker: String,
    /// The broker's root certificate (PEM), the only trust anchor used.
    #[arg(long)]
    pub ca: std::path::PathBuf,
    /// Your certificate (PEM; may hold the chain, leaf first).
    #[arg(long)]
    pub cert: std::path::PathBuf,
    /// Your private key (PKCS#8 PEM, P-256 or P-384).
    #[arg(long)]
    pub key: std::path::PathBuf,
}

impl BrokerConnection {
    /// Mutual TLS with these files (session resumption on).
    pub fn tls(&self) -> Result<seb::client::ClientTls, CliError> {
        Ok(seb::client::ClientTls::new(
            &read_file(&self.ca)?,
            &read_file(&self.cert)?,
            &read_file(&self.key)?,
            true,
        )?)
    }
}

/// A failed connection to a broker, with what to do about it when that can be told
/// ([`seb::client::ClientTls::explain`]).
pub fn explained(tls: &seb::client::ClientTls, error: seb::client::ClientError) -> CliError {
    match tls.explain(&error, std::time::SystemTime::now()) {
        Some(hint) => Box::new(Explained { error, hint }),
        None => error.into(),
    }
}

/// An error with what to do about it; its cause chain is the error's own.
#[derive(Debug)]
struct Explained {
    error: seb::client::ClientError,
    hint: String,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.hint)
    }
}

impl std::error::Error for Explained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

/// Opens the configured store: SQLite in the state directory, or the shared PostgreSQL
/// database, whose schema must be this seb's (`seb migrate` brings it there).
pub fn open_store(config: &Config) -> Result<std::sync::Arc<dyn Store>, CliError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => std::sync::Arc::new(SqliteStore::open(&initialised(config)?)?),
        StoreConfig::Postgres(pg) => std::sync::Arc::new(PgStore::open(pg)?),
    })
}

/// The SQLite store's directory, if `seb init` has made a store there. Opening a store creates
/// an empty one: a `state_dir` with a typo would otherwise take a freeze, a revocation or an
/// epoch bump, say it was done, and leave the broker's own store untouched.
fn initialised(config: &Config) -> Result<std::path::PathBuf, CliError> {
    let db = config.state_dir.join(SqliteStore::FILE);
    if db.is_file() {
        return Ok(config.state_dir.clone());
    }
    Err(format!(
        "no store at {}: has `seb init` run with this configuration? (check `state_dir` in \
         the config file)",
        db.display(),
    )
    .into())
}

/// Opens the configured store for `seb init`: the PostgreSQL schema is created in an empty
/// database (or migrated).
pub fn create_store(config: &Config) -> Result<std::sync::Arc<dyn Store>, CliError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => std::sync::Arc::new(SqliteStore::open(&config.state_dir)?),
        StoreConfig::Postgres(pg) => std::sync::Arc::new(PgStore::create(pg)?),
    })
}

/// `seb migrate`: creates or brings the store's schema up to date.
pub fn migrate(config: &Config) -> CliResult {
    match &config.store {
        StoreConfig::Sqlite => {
            drop(SqliteStore::open(&initialised(config)?)?);
            say!(
                "SQLite store {} is up to date",
                config.state_dir.join(SqliteStore::FILE).display()
            );
        }
        StoreConfig::Postgres(pg) => {
            let (before, after) = PgStore::migrate(pg)?;
            if before == after {
                say!("PostgreSQL schema is up to date (version {after})");
            } else {
                say!("PostgreSQL schema migrated from version {before} to {after}");
            }
        }
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees
/// half a file. `private` files get mode 0600 ([`seb::files`]).
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> CliResult {
    let access = if private {
        Access::Private
    } else {
        Access::Public
    };
    files::write(path, contents, access, Existing::Replace)
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

/// Refuses, before anything that cannot be undone, an output path [`write_file`] could not
/// write (its directory missing or not writable): a certificate is never issued and recorded
/// without reaching its file.
pub fn check_writable(path: &Path) -> CliResult {
    files::probe_writable(path).map_err(|e| -> CliError {
        format!("cannot write {}: {e}; nothing was issued", path.display()).into()
    })
}

/// [`write_file`] for a certificate the store has recorded already: a failure says that
/// certificate `serial` exists and is valid until revoked.
pub fn write_issued(path: &Path, contents: &[u8], serial: &str) -> CliResult {
    write_file(path, contents, false).map_err(|e| -> CliError {
        format!(
            "{e}; certificate serial {serial} was issued and recorded: revoke it \
             (`seb cert revoke --serial {serial}`) before issuing another"
        )
        .into()
    })
}

/// The largest file [`read_file`] reads: far more than any certificate bundle, key, CSR,
/// grants file, receipt or event log, so that a wrong path (a device, a huge file) is refused
/// by size instead of filling memory.
pub const MAX_INPUT_FILE: u64 = 16 << 20;

/// Reads a whole file of at most [`MAX_INPUT_FILE`] bytes, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    read_file_within(path, MAX_INPUT_FILE)
}

/// Reads a whole file of at most `limit` bytes, naming it in the error; reads no more than
/// one byte past the limit.
pub fn read_file_within(path: &Path, limit: u64) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{} is larger than {} MiB; is it the right file?",
            path.display(),
            limit >> 20
        )
        .into());
    }
    Ok(bytes)
}
