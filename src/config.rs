//! The broker's configuration file (`seb.toml`), parsed once into validated types.
//!
//! Every table rejects unknown keys, so a typo is an error rather than a silent default. PINs
//! are never written in the file: it names a file, an environment variable or a TPM-sealed blob
//! (docs/ATTESTATION.md, "PIN sealing") that holds them, and the PIN is read into a
//! [`SecretString`](secrecy::SecretString) that never shows in `Debug` output. A sealed PIN
//! that the TPM refuses to release is an error: there is no fallback to another source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::KeyAlgorithm;
use crate::ca::TrustDir;

mod backend;
mod store;

use backend::SEALED_NEEDS_TPM;
pub use backend::{BackendConfig, PinSource, Pkcs11Config, TpmConfig};
pub use store::{PostgresConfig, StoreConfig};

/// A configuration problem, named precisely enough to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (it names the line and the key).
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The PIN source could not be read.
    #[error("cannot read the HSM PIN from {source_desc}: {reason}")]
    Pin {
        /// Which source (file path or variable name), never the PIN.
        source_desc: String,
        /// Why.
        reason: String,
    },
    /// A backend type was selected that this build does not contain.
    #[error("backend {0:?} was selected but this build of seb does not include it (rebuild with the `{0}` feature)")]
    BackendNotCompiled(&'static str),
    /// The TPM did not release the sealed PIN (boot state changed, another TPM, TPM
    /// unreachable). The broker must not start.
    #[error("cannot unseal the HSM PIN sealed in {path}")]
    SealedPin {
        /// The sealed blob.
        path: PathBuf,
        /// Why (`attest::seal::SealError`, with the TPM's reason).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configured feature needs code this build does not contain.
    #[error("{what} needs the `{feature}` feature, which this build of seb does not include")]
    NotCompiled {
        /// What was configured.
        what: &'static str,
        /// The Cargo feature.
        feature: &'static str,
    },
}

/// The whole configuration, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this broker in tokens (`iss`) and logs.
    pub broker_id: String,
    /// Where certificates, the store and the audit log live.
    pub state_dir: PathBuf,
    /// The device that holds the keys.
    pub backend: BackendConfig,
    /// Labels of the broker's keys inside the device.
    #[serde(default)]
    pub keys: KeyLabels,
    /// Certificate authority settings.
    #[serde(default)]
    pub ca: CaConfig,
    /// HTTPS listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Issuance policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// TPM self-attestation (absent: the broker does not attest).
    #[serde(default)]
    pub attestation: Option<AttestationConfig>,
    /// Multi-party approval: how long requests wait, whom to notify.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Where the broker's durable state lives: SQLite in `state_dir` (the default) or a
    /// PostgreSQL database shared by replicas.
    #[serde(default)]
    pub store: StoreConfig,
}

impl Config {
    /// Reads and validates a configuration file. Relative paths in it are taken relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.state_dir = base.join(&config.state_dir);
        if let BackendConfig::Pkcs11(p) = &mut config.backend {
            match &mut p.pin {
                PinSource::File(path) | PinSource::Sealed { path, .. } => *path = base.join(&*path),
                PinSource::Env(_) => {}
            }
        }
        if let BackendConfig::Tpm(t) = &mut config.backend {
            t.key_dir = t.key_dir.as_ref().map(|d| base.join(d));
        }
        if let Some(a) = &mut config.attestation {
            a.policy = base.join(&a.policy);
            a.event_log = base.join(&a.event_log);
        }
        if let StoreConfig::Postgres(pg) = &mut config.store {
            pg.password_file = base.join(&pg.password_file);
            pg.ca_file = pg.ca_file.as_ref().map(|f| base.join(f));
        }
        config.bind_sealed_pin();
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: with_key_line(text, describe(text, &e)),
        })?;
        config.validate()?;
        config.bind_sealed_pin();
        Ok(config)
    }

    /// Gives a sealed PIN source the `[attestation]` TPM that unseals it and the policy whose
    /// PCRs the blob must cover.
    fn bind_sealed_pin(&mut self) {
        let attestation_tcti = self.attestation_tcti();
        let attestation_policy = self.attestation.as_ref().map(|a| a.policy.clone());
        if let BackendConfig::Pkcs11(p) = &mut self.backend {
            if let PinSource::Sealed { tcti, policy, .. } = &mut p.pin {
                *tcti = attestation_tcti;
                *policy = attestation_policy;
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let StoreConfig::Postgres(pg) = &self.store {
            pg.validate()?;
        }
        check_broker_id(&self.broker_id, self.attestation.is_some())?;
        let labels = [
            &self.keys.root,
            &self.keys.token,
            &self.keys.audit,
            &self.keys.tls,
        ];
        for (i, a) in labels.iter().enumerate() {
            if a.is_empty() || a.len() > 64 {
                return Err(ConfigError::Invalid(format!(
                    "key label {a:?} must be 1 to 64 characters"
                )));
            }
            if labels[i + 1..].contains(a) {
                return Err(ConfigError::Invalid(format!(
                    "key label {a:?} is used for two keys"
                )));
            }
        }
        if let Some(a) = &self.attestation {
            if a.interval < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(
                    "[attestation] interval must be at least 1s".into(),
                ));
            }
            if self.attestation_tcti().is_none() {
                return Err(ConfigError::Invalid(
                    "[attestation] needs tcti = \"...\" unless [backend] is a TPM".into(),
                ));
            }
        }
        if self.approvals.ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "[approvals] ttl must be at least 1s".into(),
            ));
        }
        // Zero would refuse every request that needs approval, or every connection.
        for (name, value) in [
            (
                "[approvals] max_open_per_agent",
                self.approvals.max_open_per_agent,
            ),
            (
                "[server] max_connections_per_certificate",
                self.server.max_connections_per_certificate,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if let Some(url) = &self.approvals.webhook_url {
            let rest = url.strip_prefix("http://").unwrap_or("");
            let authority = rest.split('/').next().unwrap_or("");
            if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
                return Err(ConfigError::Invalid(format!(
                    "[approvals] webhook_url {url:?} must be http://host:port/path (no credentials; \
                     use a local relay for HTTPS chat webhooks)"
                )));
            }
        }
        if let BackendConfig::Pkcs11(p) = &self.backend {
            if p.pin_is_sealed() && self.attestation_tcti().is_none() {
                return Err(ConfigError::Invalid(SEALED_NEEDS_TPM.into()));
            }
        }
        Ok(())
    }

    /// The attestation key blob (TPM), written by `seb attest enroll`.
    pub fn ak_blob(&self) -> PathBuf {
        self.state_dir.join("attest").join("ak.tpmkey")
    }

    /// Where `seb seal-pin` writes the sealed PIN unless told otherwise.
    pub fn default_sealed_pin(&self) -> PathBuf {
        self.state_dir.join("pin.sealed")
    }

    /// The key generations `seb rotate` recorded (`<state_dir>/keys.toml`).
    pub fn key_generations(
        &self,
    ) -> Result<crate::ca::generations::KeyGenerations, crate::ca::generations::GenerationsError>
    {
        crate::ca::generations::KeyGenerations::load(&self.state_dir)
    }

    /// The device label of the current generation of a broker key: the `[keys]` label until
    /// `seb rotate` made a newer one (`<state_dir>/keys.toml`).
    pub fn current_key_label(
        &self,
        kind: crate::ca::generations::KeyKind,
    ) -> Result<String, crate::ca::generations::GenerationsError> {
        Ok(self
            .key_generations()?
            .current(kind, self.keys.configured_label(kind))
            .label)
    }

    /// The PEM trust material written by `init` (`<state_dir>/trust`).
    pub fn trust_dir(&self) -> TrustDir {
        TrustDir::new(self.state_dir.join("trust"))
    }

    /// The TCTI the attestor uses, if attestation is configured and a TPM is named.
    pub fn attestation_tcti(&self) -> Option<String> {
        let a = self.attestation.as_ref()?;
        a.tcti.clone().or_else(|| match &self.backend {
            BackendConfig::Tpm(t) => Some(t.tcti.clone()),
            BackendConfig::Pkcs11(_) => None,
        })
    }

    /// How many async worker threads the server runs: `server.worker_threads`, or else the
    /// CPUs left after one per signing thread, at least one. SoftHSM2 signs on the broker's own
    /// CPUs, and an async worker more than the CPUs left over only adds context switches
    /// (docs/PERFORMANCE.md).
    pub fn worker_threads(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        self.server
            .worker_threads
            .unwrap_or_else(|| cpus.saturating_sub(self.backend.signing_threads()))
            .clamp(1, 256)
    }
}

/// TPM self-attestation settings (docs/ATTESTATION.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// TCTI of the TPM that attests; defaults to the backend's when the backend is a TPM.
    pub tcti: Option<String>,
    /// Attestation policy file (reference measurements), e.g. `attest-policy.toml`.
    pub policy: PathBuf,
    /// The measured-boot event log in seb's JSON form.
    pub event_log: PathBuf,
    /// How often the broker quotes itself and compares with the policy.
    #[serde(with = "duration_str", default = "default_attest_interval")]
    pub interval: Duration,
    /// What a TPM reset or restart under the running broker does (its quotes' `resetCount` or
    /// `restartCount` moved): `resume` fails that self-check (an `attestation_failed` audit
    /// entry naming the reset) and goes on from the new counters, so a software or remote
    /// TPM that restarts recovers; `stop` fails every check until `seb serve` restarts. With
    /// a hardware TPM a reset is a reboot, which restarts the broker anyway: use `stop`, so a
    /// process that reaches the TPM cannot reset it and replay the log to hide tampering.
    #[serde(default)]
    pub on_tpm_reset: OnTpmReset,
}

/// `[attestation] on_tpm_reset`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTpmReset {
    /// Fail one self-check, then go on from the new counters.
    #[default]
    Resume,
    /// Fail every self-check until the broker restarts.
    Stop,
}

fn default_attest_interval() -> Duration {
    Duration::from_secs(60)
}

/// Issuance policy the security team controls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Longest token lifetime, whatever a grant allows.
    #[serde(with = "duration_str")]
    pub max_token_ttl: Duration,
    /// The policy epoch stamped into every token; executors refuse older epochs.
    pub epoch: u64,
    /// When true the broker issues nothing (the red button).
    pub frozen: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_token_ttl: Duration::from_secs(60),
            epoch: 1,
            frozen: false,
        }
    }
}

/// Multi-party approval settings (`[approvals]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long a request waits for its approvers before it expires.
    #[serde(with = "duration_str")]
    pub ttl: Duration,
    /// `http://host:port/path` that gets a JSON POST for each new pending request (no secret
    /// is ever sent). Unset: no notifications.
    pub webhook_url: Option<String>,
    /// Most requests one agent key may have open for approval at once; more are refused
    /// (`429 too_many_pending`), so that one agent cannot bury its group's other requests in
    /// the approvers' list.
    pub max_open_per_agent: usize,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            webhook_url: None,
            max_open_per_agent: 50,
        }
    }
}

/// Labels of the broker's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyLabels {
    /// Root CA key.
    pub root: String,
    /// Execution-token signing key.
    pub token: String,
    /// Audit checkpoint key.
    pub audit: String,
    /// HTTPS server key.
    pub tls: String,
    /// Curve of the token key: `ec-p384` (ES384, default) or `ec-p256` (ES256).
    pub token_algorithm: KeyAlgorithm,
}

impl KeyLabels {
    /// The configured (first-generation) label of a rotatable key.
    pub fn configured_label(&self, kind: crate::ca::generations::KeyKind) -> &str {
        use crate::ca::generations::KeyKind;
        match kind {
            KeyKind::Token => &self.token,
            KeyKind::Tls => &self.tls,
            KeyKind::Audit => &self.audit,
        }
    }
}

impl Default for KeyLabels {
    fn default() -> Self {
        Self {
            root: "seb-root".into(),
            token: "seb-token".into(),
            audit: "seb-audit".into(),
            tls: "seb-tls".into(),
            token_algorithm: KeyAlgorithm::EcP384,
        }
    }
}

/// Certificate authority settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// Subject of the root certificate, as an RFC 4514 string.
    pub root_subject: String,
    /// Validity of the root certificate.
    #[serde(with = "duration_str")]
    pub root_validity: Duration,
    /// Validity of the token, audit and TLS certificates made by `init`.
    #[serde(with = "duration_str")]
    pub service_validity: Duration,
    /// The longest validity `cert issue` accepts.
    #[serde(with = "duration_str")]
    pub max_leaf_validity: Duration,
    /// How long a CRL is valid (its nextUpdate).
    #[serde(with = "duration_str")]
    pub crl_validity: Duration,
    /// DNS names and IP addresses put into the TLS certificate.
    pub tls_names: Vec<String>,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            root_subject: "CN=seb root CA,O=seb".into(),
            root_validity: Duration::from_secs(10 * 365 * 86_400),
            service_validity: Duration::from_secs(365 * 86_400),
            max_leaf_validity: Duration::from_secs(397 * 86_400),
            crl_validity: Duration::from_secs(7 * 86_400),
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

/// HTTPS listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time limit for one request, from headers read to response.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// Sustained requests per second allowed per client certificate.
    pub rate_limit_per_second: u32,
    /// Burst allowed per client certificate above the sustained rate.
    pub rate_limit_burst: u32,
    /// Most concurrent TLS connections.
    pub max_connections: usize,
    /// Most concurrent connections of one client certificate's key; a newer one closes that
    /// key's oldest. Give each agent process its own certificate, or raise this for a fleet
    /// that shares one.
    pub max_connections_per_certificate: usize,
    /// Whether TLS session resumption is offered (it skips the HSM signature).
    pub tls_resumption: bool,
    /// Async worker threads (TLS records, HTTP, JSON, decisions). Unset: the CPUs the signing
    /// threads leave over, at least one (see [`Config::worker_threads`]).
    pub worker_threads: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            max_connections: 1024,
            max_connections_per_certificate: 64,
            tls_resumption: true,
            worker_threads: None,
        }
    }
}

/// The parser's complaint with the line it points at, but none of the configuration's text:
/// a secret put under a key seb does not know (a database `password`, a `pin`) must not be
/// copied into an error that ends up in a log.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = without_value(e.message().trim_end());
    match e.span() {
        Some(span) => format!("line {}: {message}", line_of(text, span.start)),
        None => message.to_owned(),
    }
}

/// serde's "invalid type: integer `123456`, expected path string" names the value it found;
/// keep only its kind ("invalid type: integer, expected path string").
fn without_value(message: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(lead) {
            let kind = rest.split([' ', ',']).next().unwrap_or_default();
            let expected = rest.find(", expected").map_or("", |at| &rest[at..]);
            return format!("{lead}{kind}{expected}");
        }
    }
    message.to_owned()
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// Inside `[backend]` (a tagged table) the TOML parser can only point at the table's header
/// for an unknown key. This names the line of the key itself instead (its number, not its
/// text).
fn with_key_line(text: &str, message: String) -> String {
    let Some(name) = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name)
    else {
        return message;
    };
    // The line the parser pointed at: a table's header (only a header line starts with '[').
    let Some((header, rest)) = message
        .strip_prefix("line ")
        .and_then(|m| m.split_once(": "))
        .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)))
    else {
        return message;
    };
    if !text
        .lines()
        .nth(header.wrapping_sub(1))
        .is_some_and(|l| l.trim_start().starts_with('['))
    {
        return message;
    }
    // The key inside that table: after its header, before the next one.
    let found = text
        .lines()
        .enumerate()
        .skip(header)
        .take_while(|(_, line)| !line.trim_start().starts_with('['))
        .find(|(_, line)| {
            line.trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
    match found {
        // Name the key's line only, not the table header's as well.
        Some((index, _)) => format!("line {}: {rest}", index + 1),
        None => message,
    }
}

/// Serde adapter for `"60s"`-style durations.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The longest `broker_id`: it is the prefix of the service certificates' common names
/// (`<broker_id> token signer`), which X.509 caps at 64 characters; with attestation, of the
/// attestation key's (`<broker_id> attestation key`).
const BROKER_ID_MAX: usize = 51;
const BROKER_ID_MAX_ATTESTING: usize = 48;

/// `broker_id` names this broker in tokens (`iss`), certificate subjects and the audit
/// checkpoint's origin and key name (`<broker_id>/audit`), which the signed-note format
/// forbids to hold spaces or `+`: a broker with such an id would sign checkpoints nobody can
/// read back, so it is refused before anything is signed.
fn check_broker_id(id: &str, attesting: bool) -> Result<(), ConfigError> {
    let max = if attesting {
        BROKER_ID_MAX_ATTESTING
    } else {
        BROKER_ID_MAX
    };
    let bad = id
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '+');
    if id.is_empty() || id.chars().count() > max || bad.is_some() {
        return Err(ConfigError::Invalid(format!(
            "broker_id {id:?} must be 1 to {max} characters{} without spaces, control \
             characters or '+' (it names the audit checkpoints' signing key and the broker's \
             certificates)",
            if attesting {
                " (with [attestation])"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
