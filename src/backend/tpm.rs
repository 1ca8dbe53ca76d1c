//! TPM 2.0 key backend: broker keys as TPM objects, kept as key blobs in a directory, one
//! `LABEL.tpmkey` per key. The device itself (connection, templates, blob format,
//! load–use–flush) is the TPM layer, [`crate::tpm`]; this module maps the [`KeyBackend`] joint
//! onto it.
//!
//! Keys are unrestricted ECDSA signing keys under the owner-hierarchy storage primary with
//! fixedTPM, fixedParent, sensitiveDataOrigin and noDA: the TPM generates the private value,
//! will only ever export it encrypted to itself (the key blob), and never counts a wrong
//! authorization against the dictionary-attack lockout. Each use loads the blob, signs and
//! flushes it, so nothing persistent is created.
//!
//! This module never asks the TPM for private key bytes (there is no command that would give
//! them), never replaces an existing key blob, and never maps a label outside the key directory.

use std::path::PathBuf;
use std::sync::Arc;

use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::structures::{Digest, HashcheckTicket, SignatureScheme};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::{BackendError, KeyAlgorithm, KeyBackend, KeyProtection, PublicKey, Signature};
use crate::files;
use crate::tpm::{in_nullauth_session, signature_of, Failure, KeyBlob, SigningUse, Tpm};

/// What the backend needs: the TPM and where the key blobs live.
#[derive(Clone, Debug)]
pub struct TpmSettings {
    /// TCTI configuration string.
    pub tcti: String,
    /// Directory of key blobs (one `LABEL.tpmkey` per key).
    pub key_dir: PathBuf,
}

/// Broker keys held in a TPM as key blobs under the owner-hierarchy storage primary.
#[derive(Debug)]
pub struct TpmBackend {
    tpm: Arc<Tpm>,
    key_dir: PathBuf,
}

impl TpmBackend {
    /// Opens the TPM and checks that it answers.
    pub fn open(settings: &TpmSettings) -> Result<Self, BackendError> {
        Ok(Self {
            tpm: Tpm::open(&settings.tcti)?,
            key_dir: settings.key_dir.clone(),
        })
    }

    /// The TPM, to share with an attestor.
    pub fn tpm(&self) -> Arc<Tpm> {
        self.tpm.clone()
    }

    fn blob_path(&self, label: &str) -> Result<PathBuf, BackendError> {
        let safe = !label.is_empty()
            && !label.starts_with('.')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(BackendError::Device {
                operation: "map a key label to a TPM key blob",
                source: format!(
                    "label {label:?} may only contain ASCII letters, digits, '-', '_' and '.'"
                )
                .into(),
            });
        }
        Ok(self.key_dir.join(format!("{label}.tpmkey")))
    }

    fn read_blob(&self, label: &str) -> Result<KeyBlob, BackendError> {
        let path = self.blob_path(label)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::KeyNotFound {
                    label: label.to_owned(),
                })
            }
            Err(e) => {
                return Err(BackendError::Unavailable {
                    operation: "read a TPM key blob",
                    source: Box::new(e),
                })
            }
        };
        KeyBlob::decode(&bytes).map_err(|reason| BackendError::Device {
            operation: "read a TPM key blob",
            source: format!("{}: {reason}", path.display()).into(),
        })
    }

    /// Loads `label` under a fresh storage primary and runs `op` with it in a null-auth
    /// session, then flushes both.
    fn with_key<T>(
        &self,
        operation: &'static str,
        label: &str,
        op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, Failure>,
    ) -> Result<T, BackendError> {
        let blob = self.read_blob(label)?;
        self.tpm.run(operation, |ctx| {
            blob.with_loaded(ctx, |ctx, key| in_nullauth_session(ctx, |ctx| op(ctx, key)))
        })
    }
}

impl KeyBackend for TpmBackend {
    fn generate(&self, label: &str, algorithm: KeyAlgorithm) -> Result<PublicKey, BackendError> {
        let path = self.blob_path(label)?;
        if path.exists() {
            return Err(BackendError::KeyExists {
                label: label.to_owned(),
            });
        }
        let blob = self.tpm.run("generate key", |ctx| {
            if !Tpm::supports(ctx, algorithm)? {
                return Err(Failure::Backend(BackendError::Device {
                    operation: "generate key",
                    source: format!(
                        "this TPM does not implement ECC {algorithm}; choose another key \
                         algorithm or another device"
                    )
                    .into(),
                }));
            }
            KeyBlob::create(ctx, algorithm, SigningUse::AnyDigest)
        })?;
        let public = blob.public_key()?;
        std::fs::create_dir_all(&self.key_dir).map_err(|e| BackendError::Unavailable {
            operation: "create the TPM key directory",
            source: Box::new(e),
        })?;
        files::write_new_private(&path, &blob.encode()?).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackendError::KeyExists {
                    label: label.to_owned(),
                }
            } else {
                BackendError::Unavailable {
                    operation: "write a TPM key blob",
                    source: Box::new(e),
                }
            }
        })?;
        Ok(public)
    }

    fn public_key(&self, label: &str) -> Result<PublicKey, BackendError> {
        self.read_blob(label)?.public_key()
    }

    fn contains(&self, label: &str) -> Result<bool, BackendError> {
        Ok(self.blob_path(label)?.exists())
    }

    fn sign_digest(&self, label: &str, digest: &[u8]) -> Result<Signature, BackendError> {
        let blob = self.read_blob(label)?;
        let expected = blob.algorithm.digest_len();
        if digest.len() != expected {
            return Err(BackendError::DigestLength {
                algorithm: blob.algorithm,
                expected,
                got: digest.len(),
            });
        }
        let digest = Digest::try_from(digest.to_vec()).map_err(|e| BackendError::Device {
            operation: "sign",
            source: Box::new(e),
        })?;
        let signature = self.with_key("sign", label, |ctx, key| {
            // An unrestricted key signs any digest; the TPM wants a NULL hashcheck ticket.
            let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: Default::default(),
            })?;
            Ok(ctx.sign(key, digest, SignatureScheme::Null, ticket)?)
        })?;
        signature_of(&signature, blob.algorithm)
    }

    fn protection(&self, label: &str) -> Result<KeyProtection, BackendError> {
        let public = self.with_key("read key attributes", label, |ctx, key| {
            let (public, _, _) = ctx.read_public(key)?;
            Ok(public)
        })?;
        let a = public.object_attributes();
        let bound = a.fixed_tpm() && a.fixed_parent();
        Ok(KeyProtection {
            // A TPM object's private part is only ever outside the TPM encrypted to its parent;
            // fixedTPM + fixedParent means it cannot even be duplicated.
            sensitive: bound,
            extractable: !bound,
            always_sensitive: a.sensitive_data_origin(),
            never_extractable: a.fixed_tpm(),
            // TPM 2.0 has no command that returns a private key.
            private_value_readable: false,
        })
    }

    fn ping(&self) -> Result<(), BackendError> {
        self.tpm.ping()
    }

    fn describe(&self) -> String {
        format!(
            "tpm {} (key blobs in {})",
            self.tpm.tcti(),
            self.key_dir.display()
        )
    }
}
