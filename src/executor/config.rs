//! `executor.toml`: the reference executor's configuration, parsed once into validated types.
//!
//! Every table refuses unknown fields. Relative paths are relative to the file. The executor's
//! own key is a PKCS#8 file only it reads; nothing here is a broker key. A configuration that
//! maps an operation to a shell is refused unless that action says `allow_shell = true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::action::{ActionKind, ArgvTemplate, HttpTemplate};
use super::error::ConfigError;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Where the executor listens (HTTPS, client certificates required).
    pub listen: SocketAddr,
    /// The broker, `https://host:port`: redemption and outcomes.
    pub broker_url: String,
    /// The `iss` tokens must name, if set.
    pub broker_id: Option<String>,
    /// The pinned root certificate(s) (PEM): TLS both ways, token and agent chains.
    pub root: PathBuf,
    /// The executor's certificate chain (PEM, leaf first): TLS server and client, receipts.
    pub cert: PathBuf,
    /// The executor's own PKCS#8 private key (PEM).
    pub key: PathBuf,
    /// The trust bundle tokens are verified with (root, token certificates); `None` fetches
    /// `GET /v1/trust` from the broker (pinned root), and again when a token names an unknown key.
    pub trust_bundle: Option<PathBuf>,
    /// The approvers' certificates (PEM bundle), for tokens issued after approvals.
    pub approvers: Option<PathBuf>,
    /// Tokens of an older policy epoch are refused (the executor also learns higher epochs).
    pub min_epoch: u64,
    /// When set, a token must carry `att` no older than this.
    pub max_attestation_age: Option<Duration>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// URL prefixes HTTP actions may call.
    pub http_allow: Vec<String>,
    /// The actions, by operation and resource.
    pub actions: Vec<ActionConfig>,
}

/// One mapped action.
#[derive(Debug, Clone)]
pub struct ActionConfig {
    /// Exact operation.
    pub operation: String,
    /// Exact resource.
    pub resource: String,
    /// What runs.
    pub kind: ActionKind,
    /// Killed after this.
    pub timeout: Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    broker_url: String,
    broker_id: Option<String>,
    root: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: Option<PathBuf>,
    approvers: Option<PathBuf>,
    #[serde(default)]
    min_epoch: u64,
    max_attestation_age: Option<String>,
    max_body_bytes: Option<usize>,
    #[serde(default)]
    http_allow: Vec<String>,
    #[serde(default, rename = "action")]
    actions: Vec<RawAction>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    operation: String,
    resource: String,
    argv: Option<Vec<String>>,
    http: Option<RawHttp>,
    timeout: Option<String>,
    #[serde(default)]
    allow_shell: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: String,
    url: String,
}

/// Default action timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest action timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl ExecutorConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if !raw.broker_url.starts_with("https://") {
            return Err(ConfigError::Invalid(format!(
                "broker_url {:?} must be https://host:port",
                raw.broker_url
            )));
        }
        for prefix in &raw.http_allow {
            if !prefix.starts_with("http://") || !prefix.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "http_allow entry {prefix:?} must be an http:// URL prefix ending in '/'"
                )));
            }
        }
        let max_attestation_age = raw
            .max_attestation_age
            .as_deref()
            .map(crate::duration::parse)
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("max_attestation_age: {e}")))?;
        let mut actions = Vec::new();
        for a in raw.actions {
            let what = format!("action {} on {}", a.operation, a.resource);
            if a.operation.is_empty() || a.resource.is_empty() {
                return Err(ConfigError::Invalid(
                    "an action needs an operation and a resource".into(),
                ));
            }
            if actions
                .iter()
                .any(|b: &ActionConfig| b.operation == a.operation && b.resource == a.resource)
            {
                return Err(ConfigError::Invalid(format!("{what} is mapped twice")));
            }
            let timeout = match a.timeout.as_deref() {
                Some(t) => crate::duration::parse(t)
                    .map_err(|e| ConfigError::Invalid(format!("{what}: timeout: {e}")))?,
                None => DEFAULT_TIMEOUT,
            };
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(ConfigError::Invalid(format!(
                    "{what}: timeout must be between 1s and 1h"
                )));
            }
            let kind = match (a.argv, a.http) {
                (Some(argv), None) => {
                    if a.allow_shell {
                        // Allowed on purpose, but never silently: a shell reads its parameters
                        // as code if the template lets them reach it.
                        tracing::warn!(action = %what, "allow_shell = true: this action may run a shell");
                    }
                    ActionKind::Argv(
                        ArgvTemplate::new(argv, a.allow_shell)
                            .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?,
                    )
                }
                (None, Some(http)) => {
                    if a.allow_shell {
                        return Err(ConfigError::Invalid(format!(
                            "{what}: allow_shell applies to argv actions only"
                        )));
                    }
                    ActionKind::Http(
                        HttpTemplate::new(&http.method, &http.url, &raw.http_allow)
                            .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?,
                    )
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: give exactly one of argv or http"
                    )))
                }
            };
            actions.push(ActionConfig {
                operation: a.operation,
                resource: a.resource,
                kind,
                timeout,
            });
        }
        Ok(ExecutorConfig {
            listen: raw.listen,
            broker_url: raw.broker_url,
            broker_id: raw.broker_id,
            root: abs(raw.root),
            cert: abs(raw.cert),
            key: abs(raw.key),
            trust_bundle: raw.trust_bundle.map(abs),
            approvers: raw.approvers.map(abs),
            min_epoch: raw.min_epoch,
            max_attestation_age,
            max_body_bytes: raw.max_body_bytes.unwrap_or(64 * 1024),
            http_allow: raw.http_allow,
            actions,
        })
    }

    /// The action mapped to exactly this operation and resource.
    pub fn action(&self, operation: &str, resource: &str) -> Option<&ActionConfig> {
        self.actions
            .iter()
            .find(|a| a.operation == operation && a.resource == resource)
    }
}
