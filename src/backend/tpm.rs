//! TPM 2.0 key backend over `tss-esapi` (swtpm in development and CI, the host's TPM through
//! `/dev/tpmrm0` in production).
//!
//! Keys are ordinary TPM objects created under a storage primary in the owner hierarchy with
//! fixedTPM, fixedParent, sensitiveDataOrigin, noDA and sign: the TPM generates the private
//! value, will only ever export it encrypted to itself (the key blob), and never counts a wrong
//! authorization against the dictionary-attack lockout. The blob (TPM2B_PUBLIC + TPM2B_PRIVATE)
//! is stored per label in a directory; each use loads it, signs and flushes it (load–use–flush),
//! so the TPM's few transient slots are never exhausted and nothing persistent is created.
//!
//! One [`Tpm`] serialises every command behind a mutex and runs them on the caller's (blocking)
//! thread. It opens the TCTI for each batch of commands and closes it afterwards: swtpm serves
//! one client connection at a time, and holding none between batches lets other tools (and the
//! tests' tampering) reach the same simulator. The storage primary is re-derived from the owner
//! seed at each batch (deterministic, a few milliseconds), so no persistent handle is needed.
//!
//! This module never asks the TPM for private key bytes (there is no command that would give
//! them) and never creates a key without fixedTPM and fixedParent.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::{BackendError, KeyAlgorithm, KeyBackend, KeyProtection, PublicKey, Signature};

/// A TPM reached through one TCTI, with every command batch serialised.
///
/// Shared (behind an `Arc`) by the key backend and the attestor when both use the same TPM.
pub struct Tpm {
    tcti: TctiNameConf,
    tcti_text: String,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("tcti", &self.tcti_text)
            .finish_non_exhaustive()
    }
}

/// Why a TPM command batch failed: a TSS/TPM error, or one of ours.
#[derive(Debug)]
pub enum Failure {
    /// The TSS stack or the TPM returned an error.
    Tss(tss_esapi::Error),
    /// A backend-level error (bad blob, unsupported curve, ...).
    Backend(BackendError),
}

impl From<tss_esapi::Error> for Failure {
    fn from(e: tss_esapi::Error) -> Self {
        Failure::Tss(e)
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Backend(e)
    }
}

impl Tpm {
    /// Parses the TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`) and checks that
    /// the TPM answers.
    pub fn open(tcti: &str) -> Result<Arc<Self>, BackendError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| BackendError::Device {
            operation: "parse the TCTI configuration",
            source: Box::new(e),
        })?;
        let tpm = Arc::new(Self {
            tcti: conf,
            tcti_text: tcti.to_owned(),
            lock: Mutex::new(()),
        });
        tpm.ping()?;
        Ok(tpm)
    }

    /// The TCTI this TPM is reached through.
    pub fn tcti(&self) -> &str {
        &self.tcti_text
    }

    /// A cheap round trip (TPM2_GetCapability).
    pub fn ping(&self) -> Result<(), BackendError> {
        self.run("ping the TPM", |ctx| {
            ctx.get_capability(CapabilityType::TpmProperties, 0x100, 1)?;
            Ok(())
        })
    }

    /// Runs `op` on a freshly opened context while holding the TPM lock. Every transient object
    /// `op` leaves loaded is flushed when the context is dropped.
    pub fn run<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&mut Context) -> Result<T, Failure>,
    ) -> Result<T, BackendError> {
        let _guard = self.lock.lock().map_err(|_| BackendError::Unavailable {
            operation,
            source: "TPM lock poisoned by an earlier panic".into(),
        })?;
        let mut ctx = Context::new(self.tcti.clone()).map_err(|e| BackendError::Unavailable {
            operation,
            source: Box::new(e),
        })?;
        match op(&mut ctx) {
            Ok(v) => Ok(v),
            Err(Failure::Backend(e)) => Err(e),
            // Every TSS error fails closed as "unavailable": the broker refuses to issue either
            // way, and the source chain (with the TPM response code) goes to the operator's log.
            Err(Failure::Tss(e)) => Err(BackendError::Unavailable {
                operation,
                source: Box::new(e),
            }),
        }
    }

    /// Re-derives the storage primary (the TCG SRK template: ECC P-256, AES-128-CFB,
    /// restricted decrypt, noDA) in the owner hierarchy. Deterministic for a given owner seed.
    pub fn storage_primary(ctx: &mut Context) -> Result<KeyHandle, Failure> {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_restricted_decryption_key(
                    SymmetricDefinitionObject::AES_128_CFB,
                    EccCurve::NistP256,
                )
                .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()?;
        let primary = ctx.execute_with_nullauth_session(|ctx| {
            ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })?;
        Ok(primary.key_handle)
    }

    /// Whether the TPM implements `curve`.
    pub fn supports_curve(ctx: &mut Context, curve: EccCurve) -> Result<bool, Failure> {
        let (data, _) = ctx.get_capability(CapabilityType::EccCurves, 0, 64)?;
        Ok(match data {
            CapabilityData::EccCurves(list) => list.contains(&curve.into()),
            _ => false,
        })
    }
}

/// Flushes a transient object, logging (not failing) if the TPM refuses: the context drop
/// flushes it again as a backstop.
pub(crate) fn flush(ctx: &mut Context, handle: KeyHandle) {
    if let Err(e) = ctx.flush_context(handle.into()) {
        tracing::warn!(error = %e, "cannot flush a transient TPM object");
    }
}

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

    /// Loads `label` under a fresh storage primary and runs `op` with it, then flushes both.
    fn with_key<T>(
        &self,
        operation: &'static str,
        label: &str,
        op: impl FnOnce(&mut Context, KeyHandle, &KeyBlob) -> Result<T, Failure>,
    ) -> Result<T, BackendError> {
        let blob = self.read_blob(label)?;
        self.tpm.run(operation, |ctx| {
            let primary = Tpm::storage_primary(ctx)?;
            let loaded = ctx.execute_with_nullauth_session(|ctx| {
                ctx.load(primary, blob.private.clone(), blob.public.clone())
            });
            flush(ctx, primary);
            let key = loaded?;
            let result = ctx.execute_with_nullauth_session(|ctx| op(ctx, key, &blob).map_err(Fail));
            flush(ctx, key);
            result.map_err(|Fail(f)| f)
        })
    }
}

/// Carries a [`Failure`] through `execute_with_nullauth_session`, whose closure error type must
/// convert from `tss_esapi::Error`.
struct Fail(Failure);

impl From<tss_esapi::Error> for Fail {
    fn from(e: tss_esapi::Error) -> Self {
        Fail(Failure::Tss(e))
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
        let (curve, hash) = curve_of(algorithm);
        let blob = self.tpm.run("generate key", |ctx| {
            if !Tpm::supports_curve(ctx, curve)? {
                return Err(Failure::Backend(BackendError::Device {
                    operation: "generate key",
                    source: format!(
                        "this TPM does not implement ECC {algorithm}; choose another key \
                         algorithm or another device"
                    )
                    .into(),
                }));
            }
            let primary = Tpm::storage_primary(ctx)?;
            let created = ctx.execute_with_nullauth_session(|ctx| {
                ctx.create(
                    primary,
                    signing_template(curve, hash)?,
                    None,
                    None,
                    None,
                    None,
                )
            });
            flush(ctx, primary);
            let created = created?;
            Ok(KeyBlob {
                algorithm,
                public: created.out_public,
                private: created.out_private,
            })
        })?;
        let public = public_key_of(&blob.public, algorithm)?;
        std::fs::create_dir_all(&self.key_dir).map_err(|e| BackendError::Unavailable {
            operation: "create the TPM key directory",
            source: Box::new(e),
        })?;
        write_new(&path, &blob.encode()?).map_err(|e| {
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
        let blob = self.read_blob(label)?;
        public_key_of(&blob.public, blob.algorithm)
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
        let signature = self.with_key("sign", label, |ctx, key, _| {
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
        let public = self.with_key("read key attributes", label, |ctx, key, _| {
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

fn curve_of(algorithm: KeyAlgorithm) -> (EccCurve, HashingAlgorithm) {
    match algorithm {
        KeyAlgorithm::EcP256 => (EccCurve::NistP256, HashingAlgorithm::Sha256),
        KeyAlgorithm::EcP384 => (EccCurve::NistP384, HashingAlgorithm::Sha384),
    }
}

/// An unrestricted ECDSA signing key bound to this TPM and parent, exempt from DA lockout.
fn signing_template(curve: EccCurve, hash: HashingAlgorithm) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(hash)),
                curve,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The public key of an ECC TPM object, checked to be on the expected curve.
pub(crate) fn public_key_of(
    public: &Public,
    algorithm: KeyAlgorithm,
) -> Result<PublicKey, BackendError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(BackendError::MalformedPublicKey);
    };
    let size = field_size(algorithm);
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&left_pad(unique.x().value(), size)?);
    point.extend_from_slice(&left_pad(unique.y().value(), size)?);
    PublicKey::from_sec1(algorithm, &point)
}

/// An ECDSA signature from the TPM as a normalized [`Signature`].
pub(crate) fn signature_of(
    signature: &tss_esapi::structures::Signature,
    algorithm: KeyAlgorithm,
) -> Result<Signature, BackendError> {
    let tss_esapi::structures::Signature::EcDsa(ecc) = signature else {
        return Err(BackendError::MalformedSignature);
    };
    let size = field_size(algorithm);
    let mut raw =
        left_pad(ecc.signature_r().value(), size).map_err(|_| BackendError::MalformedSignature)?;
    raw.extend_from_slice(
        &left_pad(ecc.signature_s().value(), size).map_err(|_| BackendError::MalformedSignature)?,
    );
    let bad = |_| BackendError::MalformedSignature;
    Ok(match algorithm {
        KeyAlgorithm::EcP256 => {
            Signature::P256(p256::ecdsa::Signature::from_slice(&raw).map_err(bad)?)
        }
        KeyAlgorithm::EcP384 => {
            Signature::P384(p384::ecdsa::Signature::from_slice(&raw).map_err(bad)?)
        }
    })
}

fn field_size(algorithm: KeyAlgorithm) -> usize {
    match algorithm {
        KeyAlgorithm::EcP256 => 32,
        KeyAlgorithm::EcP384 => 48,
    }
}

fn left_pad(value: &[u8], size: usize) -> Result<Vec<u8>, BackendError> {
    if value.len() > size {
        return Err(BackendError::MalformedPublicKey);
    }
    let mut out = vec![0u8; size - value.len()];
    out.extend_from_slice(value);
    Ok(out)
}

/// A key as stored on disk: the TPM's encrypted private part and the public area.
pub(crate) struct KeyBlob {
    pub(crate) algorithm: KeyAlgorithm,
    pub(crate) public: Public,
    pub(crate) private: Private,
}

/// Magic of the key blob file format (version 1).
const BLOB_MAGIC: &[u8; 8] = b"SEBTPMK1";

impl KeyBlob {
    /// `SEBTPMK1 ‖ alg(u8) ‖ u32 len ‖ TPMT_PUBLIC ‖ u32 len ‖ TPM2B_PRIVATE buffer`.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, BackendError> {
        let public = self.public.marshall().map_err(|e| BackendError::Device {
            operation: "encode a TPM key blob",
            source: Box::new(e),
        })?;
        let private = self.private.value();
        let mut out = Vec::with_capacity(17 + public.len() + private.len());
        out.extend_from_slice(BLOB_MAGIC);
        out.push(match self.algorithm {
            KeyAlgorithm::EcP256 => 1,
            KeyAlgorithm::EcP384 => 2,
        });
        for part in [public.as_slice(), private] {
            let len = u32::try_from(part.len()).map_err(|_| BackendError::Device {
                operation: "encode a TPM key blob",
                source: "part too large".into(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let rest = bytes
            .strip_prefix(BLOB_MAGIC.as_slice())
            .ok_or("not a seb TPM key blob")?;
        let (&alg, rest) = rest.split_first().ok_or("truncated")?;
        let algorithm = match alg {
            1 => KeyAlgorithm::EcP256,
            2 => KeyAlgorithm::EcP384,
            _ => return Err(format!("unknown algorithm {alg}")),
        };
        let (public, rest) = take_part(rest)?;
        let (private, rest) = take_part(rest)?;
        if !rest.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(Self {
            algorithm,
            public: Public::unmarshall(public).map_err(|e| format!("public area: {e}"))?,
            private: Private::try_from(private.to_vec()).map_err(|e| format!("private: {e}"))?,
        })
    }
}

pub(crate) fn take_part(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = bytes.split_at_checked(4).ok_or("truncated")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.split_at_checked(len).ok_or_else(|| "truncated".into())
}

/// Creates `path` with mode 0600, refusing to replace an existing file, and syncs it.
fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
