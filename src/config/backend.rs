//! `[backend]`: the device that holds the keys (a PKCS#11 token or a TPM), and where the HSM
//! user PIN comes from (a file, an environment variable or a TPM-sealed blob; never the PIN
//! itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use super::ConfigError;

/// Which device holds the keys. Tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
    /// A TPM 2.0: keys are TPM objects stored as key blobs (see `backend::tpm`).
    Tpm(TpmConfig),
}

impl BackendConfig {
    /// How many threads sign tokens: one per PKCS#11 session, one for a TPM (which
    /// serialises commands anyway).
    pub fn signing_threads(&self) -> usize {
        match self {
            BackendConfig::Pkcs11(p) => p.pool_size(),
            BackendConfig::Tpm(_) => 1,
        }
    }
}

/// TPM backend settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI configuration: `device:/dev/tpmrm0` in production, `swtpm:host=127.0.0.1,port=P`
    /// with the simulator.
    pub tcti: String,
    /// Directory of the key blobs; defaults to `STATE_DIR/tpm-keys`.
    pub key_dir: Option<PathBuf>,
}

impl TpmConfig {
    /// Where the key blobs live.
    pub fn key_dir(&self, state_dir: &Path) -> PathBuf {
        self.key_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("tpm-keys"))
    }
}

/// PKCS#11 backend settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPkcs11Config")]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Token label (CKA_LABEL of the token). Slot numbers are never used.
    pub token_label: String,
    /// Optional token serial, to disambiguate tokens with the same label.
    pub token_serial: Option<String>,
    /// Where the user PIN comes from (`pin_file`, `pin_env` or `pin_sealed`: exactly one).
    pub pin: PinSource,
    /// Sessions in the signing pool; defaults to the number of CPUs.
    pub sessions: Option<usize>,
    /// Environment the module reads at initialisation (e.g. `SOFTHSM2_CONF`). Applied by the
    /// `seb` binary at start-up, before any thread exists.
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
}

impl Pkcs11Config {
    /// Reads the PIN from the configured source; a sealed PIN is unsealed by the TPM.
    pub fn read_pin(&self) -> Result<SecretString, ConfigError> {
        match &self.pin {
            PinSource::File(path) => {
                let desc = format!("file {}", path.display());
                let raw = std::fs::read_to_string(path).map_err(|e| ConfigError::Pin {
                    source_desc: desc.clone(),
                    reason: e.kind().to_string(),
                })?;
                non_empty_pin(raw.trim(), desc)
            }
            PinSource::Env(var) => {
                let desc = format!("environment variable {var}");
                let raw = std::env::var(var).map_err(|_| ConfigError::Pin {
                    source_desc: desc.clone(),
                    reason: "not set or not UTF-8".into(),
                })?;
                non_empty_pin(raw.trim(), desc)
            }
            PinSource::Sealed { path, tcti, policy } => {
                let tcti = tcti
                    .as_deref()
                    .ok_or_else(|| ConfigError::Invalid(SEALED_NEEDS_TPM.into()))?;
                unseal_pin(path, tcti, policy.as_deref())
            }
        }
    }

    /// Whether the PIN comes from a TPM-sealed blob.
    pub fn pin_is_sealed(&self) -> bool {
        matches!(self.pin, PinSource::Sealed { .. })
    }

    /// The signing pool size.
    pub fn pool_size(&self) -> usize {
        self.sessions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, 64)
    }
}

#[cfg(feature = "tpm")]
fn unseal_pin(path: &Path, tcti: &str, policy: Option<&Path>) -> Result<SecretString, ConfigError> {
    crate::attest::seal::unseal_file(tcti, path, policy).map_err(|e| ConfigError::SealedPin {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(not(feature = "tpm"))]
fn unseal_pin(
    _path: &Path,
    _tcti: &str,
    _policy: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    Err(ConfigError::NotCompiled {
        what: "pin_sealed (a TPM-sealed HSM PIN)",
        feature: "tpm",
    })
}

/// Where the HSM user PIN comes from. Never the PIN itself: the configuration names a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin_file`: a file holding the PIN (one line; surrounding whitespace is ignored).
    File(PathBuf),
    /// `pin_env`: an environment variable holding the PIN.
    Env(String),
    /// `pin_sealed`: a blob sealed in the `[attestation]` TPM by `seb seal-pin`.
    Sealed {
        /// The sealed blob.
        path: PathBuf,
        /// The TPM that unseals it: `[attestation]`'s TCTI, filled in by
        /// [`Config::parse`](super::Config::parse) (not a configuration key).
        tcti: Option<String>,
        /// `[attestation]`'s policy, whose PCRs the blob must cover, filled in the same way.
        policy: Option<PathBuf>,
    },
}

impl PinSource {
    /// The configuration key that names this source.
    pub fn key(&self) -> &'static str {
        match self {
            PinSource::File(_) => "pin_file",
            PinSource::Env(_) => "pin_env",
            PinSource::Sealed { .. } => "pin_sealed",
        }
    }
}

/// `[backend] type = "pkcs11"` as written in the file, before the PIN source is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11Config {
    module: PathBuf,
    token_label: String,
    token_serial: Option<String>,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
    pin_sealed: Option<PathBuf>,
    sessions: Option<usize>,
    #[serde(default)]
    module_env: BTreeMap<String, String>,
}

impl TryFrom<RawPkcs11Config> for Pkcs11Config {
    type Error = &'static str;

    fn try_from(raw: RawPkcs11Config) -> Result<Self, Self::Error> {
        let pin = match (raw.pin_file, raw.pin_env, raw.pin_sealed) {
            (Some(path), None, None) => PinSource::File(path),
            (None, Some(var), None) => PinSource::Env(var),
            (None, None, Some(path)) => PinSource::Sealed {
                path,
                tcti: None,
                policy: None,
            },
            _ => return Err(PIN_SOURCES),
        };
        Ok(Pkcs11Config {
            module: raw.module,
            token_label: raw.token_label,
            token_serial: raw.token_serial,
            pin,
            sessions: raw.sessions,
            module_env: raw.module_env,
        })
    }
}

const PIN_SOURCES: &str = "[backend] needs exactly one of pin_file, pin_env or pin_sealed";
pub(super) const SEALED_NEEDS_TPM: &str =
    "[backend] pin_sealed needs the TPM that sealed it: [attestation] with tcti = \"...\"";

fn non_empty_pin(pin: &str, source_desc: String) -> Result<SecretString, ConfigError> {
    if pin.is_empty() {
        return Err(ConfigError::Pin {
            source_desc,
            reason: "it is empty".into(),
        });
    }
    Ok(SecretString::from(pin.to_owned()))
}
