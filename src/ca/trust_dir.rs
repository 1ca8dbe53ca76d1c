//! The trust directory (`<state_dir>/trust/`): the PEM certificates `seb init` and `seb cert
//! issue-ca` write, and everything that reads them back. One type names every file, so no
//! other code spells `"root.pem"` or `"intermediates"`.
//!
//! | file | what |
//! | --- | --- |
//! | `root.pem` | the root CA (self-signed) |
//! | `token.pem`, `audit.pem`, `tls.pem` | the broker's service certificates |
//! | `ak.pem`, `ek.pem` | the attestation key's certificate; the TPM's EK certificate |
//! | `intermediates/NAME.pem` | intermediate CAs, by name (their key label) |
//! | `retired/KIND.N.pem` | certificates of generation N replaced by `seb rotate KIND` |
//!
//! Reading an intermediate as an *issuer* always re-validates it against the root: a file
//! dropped into the directory never becomes a CA by being there.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cert::Certificate;
use crate::chain::{self, ChainError};

/// Why trust material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustDirError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold a certificate seb can parse.
    #[error("{path} is not a usable certificate: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An intermediate's name is not a valid name.
    #[error("invalid intermediate name {name:?}: 1-64 of a-z 0-9 . _ -, starting with a letter or digit")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// No intermediate has this name.
    #[error("no intermediate named {name:?}; create it with `seb cert issue-ca`")]
    UnknownIntermediate {
        /// The name.
        name: String,
    },
    /// An intermediate does not chain to the root.
    #[error("intermediate {name:?} does not chain to the root: {}: {source}", source.code())]
    Untrusted {
        /// The name.
        name: String,
        /// Why path validation failed.
        #[source]
        source: ChainError,
    },
    /// More intermediates than a path may hold.
    #[error("more than {max} intermediates in {dir}")]
    TooManyIntermediates {
        /// The directory.
        dir: PathBuf,
        /// The limit.
        max: usize,
    },
}

/// The trust directory of one broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDir {
    dir: PathBuf,
}

/// The broker's service certificates, in the order `/v1/trust` serves them after the root.
const SERVICE_FILES: [&str; 3] = ["token.pem", "audit.pem", "tls.pem"];

impl TrustDir {
    /// The trust directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `root.pem`.
    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    /// `token.pem`: the token signing certificate.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join("token.pem")
    }

    /// `audit.pem`: the audit checkpoint certificate.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.pem")
    }

    /// `tls.pem`: the broker's HTTPS certificate.
    pub fn tls_path(&self) -> PathBuf {
        self.dir.join("tls.pem")
    }

    /// `ak.pem`: the attestation key's certificate.
    pub fn ak_path(&self) -> PathBuf {
        self.dir.join("ak.pem")
    }

    /// `ek.pem`: the TPM's endorsement key certificate, when it has one.
    pub fn ek_path(&self) -> PathBuf {
        self.dir.join("ek.pem")
    }

    /// `retired/`: certificates replaced by `seb rotate` (see `ca::generations`).
    pub fn retired_dir(&self) -> PathBuf {
        self.dir.join("retired")
    }

    /// The current certificate of a broker key kind (`token.pem`, `tls.pem`, `audit.pem`).
    pub fn service_path(&self, kind: crate::ca::generations::KeyKind) -> PathBuf {
        self.dir.join(format!("{}.pem", kind.as_str()))
    }

    /// `intermediates/`.
    pub fn intermediates_dir(&self) -> PathBuf {
        self.dir.join("intermediates")
    }

    /// `intermediates/NAME.pem`, for a valid `name`.
    pub fn intermediate_path(&self, name: &str) -> Result<PathBuf, TrustDirError> {
        check_intermediate_name(name)?;
        Ok(self.intermediates_dir().join(format!("{name}.pem")))
    }

    /// Whether `seb init` has written the root.
    pub fn is_initialised(&self) -> bool {
        self.root_path().exists()
    }

    /// The root certificate.
    pub fn root(&self) -> Result<Certificate, TrustDirError> {
        read_certificate(&self.root_path())
    }

    /// The token signing certificate.
    pub fn token(&self) -> Result<Certificate, TrustDirError> {
        read_certificate(&self.token_path())
    }

    /// Every intermediate certificate, in file-name order (at most
    /// [`chain::MAX_INTERMEDIATES`]). Unvalidated: see [`TrustDir::issuer_chain`].
    pub fn intermediates(&self) -> Result<Vec<Certificate>, TrustDirError> {
        self.intermediate_files()?
            .iter()
            .map(|path| read_certificate(path))
            .collect()
    }

    /// The issuing chain for an intermediate named `issuer` (the intermediate, its issuers,
    /// the root), validated against the root at `now`; or just the root for `None`.
    pub fn issuer_chain(
        &self,
        issuer: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Certificate>, TrustDirError> {
        let root = self.root()?;
        let Some(name) = issuer else {
            return Ok(vec![root]);
        };
        let path = self.intermediate_path(name)?;
        if !path.exists() {
            return Err(TrustDirError::UnknownIntermediate {
                name: name.to_owned(),
            });
        }
        let cert = read_certificate(&path)?;
        let known = self.intermediates()?;
        let roots = [root];
        let validated = chain::validate(&cert, &known, &roots, now).map_err(|source| {
            TrustDirError::Untrusted {
                name: name.to_owned(),
                source,
            }
        })?;
        Ok(validated.path().iter().map(|c| (*c).clone()).collect())
    }

    /// The PEM bundle relying parties need (`GET /v1/trust`): root, token, audit and TLS
    /// certificates, the attestation key's when the broker has one (ARCHITECTURE §7), then
    /// every intermediate so agent paths can be built from the bundle alone. Files that do not
    /// exist are left out.
    pub fn bundle_pem(&self) -> String {
        self.bundle_pem_with(&[])
    }

    /// [`TrustDir::bundle_pem`] with the retired certificates named (file names in
    /// `retired/`) after the service certificates: token certificates replaced by a rotation
    /// whose tokens may still be live.
    pub fn bundle_pem_with(&self, retired: &[&str]) -> String {
        let mut bundle = String::new();
        let mut files = vec![self.root_path()];
        files.extend(SERVICE_FILES.iter().map(|name| self.dir.join(name)));
        files.push(self.ak_path());
        files.extend(retired.iter().map(|name| self.retired_dir().join(name)));
        files.extend(self.intermediate_files().unwrap_or_default());
        for path in files {
            if let Ok(text) = std::fs::read_to_string(&path) {
                bundle.push_str(&text);
            }
        }
        bundle
    }

    fn intermediate_files(&self) -> Result<Vec<PathBuf>, TrustDirError> {
        let dir = self.intermediates_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TrustDirError::Read { path: dir, source }),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| TrustDirError::Read {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|x| x == "pem") {
                paths.push(path);
            }
            if paths.len() > chain::MAX_INTERMEDIATES {
                return Err(TrustDirError::TooManyIntermediates {
                    dir,
                    max: chain::MAX_INTERMEDIATES,
                });
            }
        }
        paths.sort();
        Ok(paths)
    }
}

/// What a broker key whose public half differs from its certificate in the trust directory
/// means, and what to do: the state directory (with its `keys.toml`) and the device are not
/// from the same installation.
pub fn key_mismatch(label: &str, cert: &Path) -> String {
    format!(
        "the key {label:?} in the device does not match {}: this state directory and these \
         keys are not from the same installation; restore the state directory together with \
         its keys.toml from one backup (keys.toml names the current key generations), or point \
         [backend] and the [keys] labels at the token and keys it was made with",
        cert.display()
    )
}

/// Reads one PEM or DER certificate.
pub fn read_certificate(path: &Path) -> Result<Certificate, TrustDirError> {
    let bytes = std::fs::read(path).map_err(|source| TrustDirError::Read {
        path: path.to_owned(),
        source,
    })?;
    Certificate::parse(&bytes).map_err(|e| TrustDirError::Certificate {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// An intermediate's name is a file name and a key label: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn check_intermediate_name(name: &str) -> Result<(), TrustDirError> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(TrustDirError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intermediate_names_are_file_names_and_labels() {
        for good in ["payments", "a", "ops-2.eu_west", &"x".repeat(64)] {
            assert!(check_intermediate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "Pay",
            "a/b",
            "../root",
            &"x".repeat(65),
            "a b",
        ] {
            assert!(check_intermediate_name(bad).is_err(), "{bad}");
        }
        let dir = TrustDir::new("/s/trust");
        assert_eq!(
            dir.intermediate_path("ops").unwrap(),
            Path::new("/s/trust/intermediates/ops.pem")
        );
        assert!(dir.intermediate_path("../../etc/passwd").is_err());
    }

    #[test]
    fn missing_directory_means_no_intermediates_and_an_empty_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let trust = TrustDir::new(dir.path().join("trust"));
        assert!(trust.intermediates().unwrap().is_empty());
        assert_eq!(trust.bundle_pem(), "");
        assert!(!trust.is_initialised());
        assert!(matches!(trust.root(), Err(TrustDirError::Read { .. })));
    }
}
