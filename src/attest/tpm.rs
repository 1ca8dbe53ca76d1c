//! The [`Attestor`] over a real TPM (tss-esapi): the attestation key (AK), its binding to the
//! endorsement key (EK) by credential activation, PCR reads and quotes.
//!
//! The AK is a restricted ECDSA signing key (P-384 where the TPM has the curve, else P-256)
//! under the owner-hierarchy storage primary, with fixedTPM, fixedParent and noDA, kept as a key
//! blob and loaded, used and flushed like the backend's keys. Being restricted, it signs only
//! structures the TPM itself generated (quotes), never an arbitrary digest.
//!
//! The EK is re-derived from the TCG low-range RSA-2048 template (EK Credential Profile L-1),
//! which every TPM 2.0 supports, and its certificate is read from NV index 0x01c00002. This
//! module never signs with the EK (it cannot) and never trusts PCR values it did not check
//! against the quote's digest.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256, Sha384};
use tss_esapi::abstraction::ek;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, PcrSelectionList, PcrSlot, Public, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use super::{AttestError, Attestor, PcrBank, RawQuote, MAX_NONCE, MIN_NONCE};
use crate::backend::{BackendError, KeyAlgorithm, PublicKey};
use crate::files;
use crate::tpm::{flush, Failure, KeyBlob, SigningUse, Tpm};

/// Quote attempts before giving up when PCRs keep changing under us.
const QUOTE_ATTEMPTS: u32 = 3;

/// What credential activation established about the TPM's endorsement identity.
#[derive(Clone, Debug)]
pub struct Endorsement {
    /// The EK certificate (DER) from NV, if the TPM has one.
    pub ek_certificate: Option<Vec<u8>>,
    /// The EK's RSA modulus (big-endian), to compare with the certificate.
    pub ek_modulus: Vec<u8>,
}

/// A TPM quoting its PCRs with the broker's AK.
#[derive(Debug)]
pub struct TpmAttestor {
    tpm: Arc<Tpm>,
    ak: Arc<KeyBlobHolder>,
}

/// Whether a key's public area is an attestation key's: a restricted signing key (it signs
/// only what the TPM generated, such as quotes, never a digest handed to it, so it cannot sign
/// a forged quote), made in this TPM and bound to it (fixedTPM, fixedParent,
/// sensitiveDataOrigin), not a decryption key. Any other key the root would certify as the AK
/// could sign any TPMS_ATTEST its holder wrote.
fn is_attestation_key(public: &tss_esapi::structures::Public) -> Result<(), &'static str> {
    let a = public.object_attributes();
    if !a.sign_encrypt() || a.decrypt() {
        return Err("it is not a signing-only key");
    }
    if !a.restricted() {
        return Err("it is not restricted, so it would sign any digest, including a forged quote");
    }
    if !(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin()) {
        return Err("it was not generated in this TPM and bound to it");
    }
    Ok(())
}

/// The AK blob (opaque outside this module).
pub struct KeyBlobHolder(KeyBlob);

impl std::fmt::Debug for KeyBlobHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AkBlob")
            .field("algorithm", &self.0.algorithm)
            .finish_non_exhaustive()
    }
}

impl TpmAttestor {
    /// Loads the AK blob written by [`create_ak`].
    pub fn open(tpm: Arc<Tpm>, ak_path: &Path) -> Result<Self, AttestError> {
        let bytes = std::fs::read(ak_path).map_err(|e| AttestError::File {
            what: format!("attestation key blob {}", ak_path.display()),
            reason: format!("{e} (run `seb attest enroll`)"),
        })?;
        let blob = KeyBlob::decode(&bytes).map_err(|reason| AttestError::File {
            what: format!("attestation key blob {}", ak_path.display()),
            reason,
        })?;
        if let Err(reason) = is_attestation_key(&blob.public) {
            return Err(AttestError::File {
                what: format!("attestation key blob {}", ak_path.display()),
                reason: format!(
                    "not an attestation key: {reason}. Remove it and run `seb attest enroll` to \
                     create one"
                ),
            });
        }
        Ok(Self {
            tpm,
            ak: Arc::new(KeyBlobHolder(blob)),
        })
    }

    /// The AK's public key.
    pub fn ak_public(&self) -> Result<PublicKey, AttestError> {
        self.ak.0.public_key().map_err(identity)
    }

    /// Proves that the AK lives in the same TPM as the EK: TPM2_MakeCredential to the EK for
    /// the AK's name with a random secret, then TPM2_ActivateCredential, which only that TPM can
    /// perform, must return the secret. Also reads the EK certificate.
    pub fn activate_credential(&self) -> Result<Endorsement, AttestError> {
        let blob = &self.ak.0;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| AttestError::Identity(format!("no randomness: {e}")))?;
        let (recovered, endorsement) = self
            .tpm
            .run("credential activation", |ctx| {
                blob.with_loaded(ctx, |ctx, ak| activate(ctx, ak, &secret))
            })
            .map_err(tpm_error("credential activation"))?;
        if recovered != secret {
            return Err(AttestError::Identity(
                "credential activation returned the wrong secret: the AK is not in the EK's TPM"
                    .into(),
            ));
        }
        Ok(endorsement)
    }
}

/// Creates a restricted signing AK (P-384 if the TPM has it, else P-256) and writes its blob to
/// `path` (which must not exist).
pub fn create_ak(tpm: &Tpm, path: &Path) -> Result<PublicKey, AttestError> {
    if path.exists() {
        return Err(AttestError::Identity(format!(
            "{} already exists; refusing to replace the attestation key",
            path.display()
        )));
    }
    let blob = tpm
        .run("create attestation key", |ctx| {
            let algorithm = if Tpm::supports(ctx, KeyAlgorithm::EcP384)? {
                KeyAlgorithm::EcP384
            } else {
                KeyAlgorithm::EcP256
            };
            KeyBlob::create(ctx, algorithm, SigningUse::TpmGenerated)
        })
        .map_err(tpm_error("create attestation key"))?;
    let public = blob.public_key().map_err(identity)?;
    let bytes = blob.encode().map_err(identity)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AttestError::File {
            what: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    files::write_new_private(path, &bytes).map_err(|e| AttestError::File {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(public)
}

impl Attestor for TpmAttestor {
    fn quote(
        &self,
        qualifying_data: &[u8],
        bank: PcrBank,
        pcrs: &[u8],
    ) -> Result<RawQuote, AttestError> {
        if !(MIN_NONCE..=MAX_NONCE).contains(&qualifying_data.len()) {
            return Err(AttestError::Nonce(qualifying_data.len()));
        }
        let selection = selection(bank, pcrs)?;
        let nonce = Data::try_from(qualifying_data.to_vec()).map_err(|e| AttestError::Tpm {
            operation: "quote",
            source: Box::new(e),
        })?;
        let blob = &self.ak.0;
        let outcome = self
            .tpm
            .run("quote", |ctx| {
                blob.with_loaded(ctx, |ctx, ak| {
                    quote_consistent(ctx, ak, &nonce, &selection, bank, pcrs)
                })
            })
            .map_err(tpm_error("quote"))?;
        outcome.ok_or(AttestError::PcrRace {
            attempts: QUOTE_ATTEMPTS,
        })
    }

    fn pcr_read(&self, bank: PcrBank, pcrs: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, AttestError> {
        let selection = selection(bank, pcrs)?;
        self.tpm
            .run("PCR read", |ctx| read_pcrs(ctx, &selection, pcrs))
            .map_err(tpm_error("PCR read"))
    }

    fn describe(&self) -> String {
        format!("tpm {} (AK {})", self.tpm.tcti(), self.ak.0.algorithm)
    }
}

/// Reads PCRs, quotes, and checks the quote's digest against the values read; on a mismatch
/// (a PCR was extended in between) tries again. `None` after [`QUOTE_ATTEMPTS`] races.
fn quote_consistent(
    ctx: &mut Context,
    ak: KeyHandle,
    nonce: &Data,
    selection: &PcrSelectionList,
    bank: PcrBank,
    pcrs: &[u8],
) -> Result<Option<RawQuote>, Failure> {
    for _ in 0..QUOTE_ATTEMPTS {
        let values = read_pcrs(ctx, selection, pcrs)?;
        let (attest, signature) = ctx.execute_with_nullauth_session(|ctx| {
            ctx.quote(ak, nonce.clone(), SignatureScheme::Null, selection.clone())
        })?;
        let attest = attest.marshall()?;
        let signature = signature.marshall()?;
        let info = super::tpm_types::parse_quote(&attest).map_err(|e| {
            Failure::Backend(BackendError::Device {
                operation: "quote",
                source: Box::new(e),
            })
        })?;
        let concatenated: Vec<u8> = values.values().flatten().copied().collect();
        let digest = match info.pcr_digest.len() {
            48 => Sha384::digest(&concatenated).to_vec(),
            _ => Sha256::digest(&concatenated).to_vec(),
        };
        if digest == info.pcr_digest && info.selection.len() == 1 {
            let _ = bank;
            return Ok(Some(RawQuote {
                attest,
                signature,
                pcrs: values,
            }));
        }
        tracing::info!("PCRs changed between read and quote; quoting again");
    }
    Ok(None)
}

pub(crate) fn read_pcrs(
    ctx: &mut Context,
    selection: &PcrSelectionList,
    pcrs: &[u8],
) -> Result<BTreeMap<u8, Vec<u8>>, Failure> {
    let mut remaining = selection.clone();
    let mut out = BTreeMap::new();
    // TPM2_PCR_Read returns at most 8 digests per call; ask again for the rest.
    for _ in 0..8 {
        if remaining.is_empty() {
            break;
        }
        let (_, read, digests) = ctx.pcr_read(remaining.clone())?;
        let mut slots = Vec::new();
        for s in read.get_selections() {
            for slot in s.selected() {
                slots.push(u32::from(slot).trailing_zeros() as u8);
            }
        }
        slots.sort_unstable();
        if slots.is_empty() {
            break;
        }
        for (index, digest) in slots.iter().zip(digests.value()) {
            out.insert(*index, digest.value().to_vec());
        }
        remaining.subtract(&read)?;
    }
    if out.keys().copied().collect::<Vec<_>>() != sorted(pcrs) {
        return Err(Failure::Backend(BackendError::Device {
            operation: "PCR read",
            source: "the TPM did not return every selected PCR (is the bank active?)".into(),
        }));
    }
    Ok(out)
}

fn sorted(pcrs: &[u8]) -> Vec<u8> {
    let mut v = pcrs.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

pub(crate) fn selection(bank: PcrBank, pcrs: &[u8]) -> Result<PcrSelectionList, AttestError> {
    selection_inner(bank, pcrs).map_err(|e| AttestError::Tpm {
        operation: "select PCRs",
        source: Box::new(e),
    })
}

fn selection_inner(bank: PcrBank, pcrs: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots = pcrs
        .iter()
        .map(|p| PcrSlot::try_from(1u32 << u32::from(*p).min(31)))
        .collect::<Result<Vec<_>, _>>()?;
    let alg = match bank {
        PcrBank::Sha256 => HashingAlgorithm::Sha256,
        PcrBank::Sha384 => HashingAlgorithm::Sha384,
    };
    PcrSelectionList::builder()
        .with_selection(alg, &slots)
        .build()
}

/// MakeCredential to the EK for the AK's name, then ActivateCredential with the EK's policy
/// (PolicySecret(TPM_RH_ENDORSEMENT)). Returns the recovered secret and the EK facts.
fn activate(
    ctx: &mut Context,
    ak: KeyHandle,
    secret: &[u8; 32],
) -> Result<(Vec<u8>, Endorsement), Failure> {
    let ek_handle = ek::create_ek_object_2(
        ctx,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        None,
    )?;
    let result = (|| -> Result<(Vec<u8>, Endorsement), Failure> {
        let (ek_public, _, _) = ctx.read_public(ek_handle)?;
        let ek_modulus = match &ek_public {
            Public::Rsa { unique, .. } => unique.value().to_vec(),
            _ => Vec::new(),
        };
        let (_, ak_name, _) = ctx.read_public(ak)?;
        let (id_object, encrypted_secret) = ctx.execute_without_session(|ctx| {
            ctx.make_credential(ek_handle, Digest::try_from(secret.to_vec())?, ak_name)
        })?;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?
            .ok_or(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        ctx.tr_sess_set_attributes(session, attributes, mask)?;
        let policy = PolicySession::try_from(session)?;
        let recovered = ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
            .and_then(|_| {
                ctx.execute_with_sessions(
                    (Some(AuthSession::Password), Some(session), None),
                    |ctx| ctx.activate_credential(ak, ek_handle, id_object, encrypted_secret),
                )
            });
        if let Err(e) = ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into()) {
            tracing::debug!(error = %e, "policy session already closed");
        }
        let recovered = recovered?;
        let ek_certificate = ctx
            .execute_without_session(|ctx| {
                ek::retrieve_ek_pubcert(ctx, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048))
            })
            .ok();
        Ok((
            recovered.value().to_vec(),
            Endorsement {
                ek_certificate,
                ek_modulus,
            },
        ))
    })();
    flush(ctx, ek_handle);
    result
}

fn identity(e: BackendError) -> AttestError {
    AttestError::Identity(e.to_string())
}

fn tpm_error(operation: &'static str) -> impl Fn(BackendError) -> AttestError {
    move |e| AttestError::Tpm {
        operation,
        source: Box::new(e),
    }
}

/// Reads PCRs without an attestation key (for `seb attest record`).
pub fn read_pcrs_of(
    tpm: &Tpm,
    bank: PcrBank,
    pcrs: &[u8],
) -> Result<BTreeMap<u8, Vec<u8>>, AttestError> {
    let selection = selection(bank, pcrs)?;
    tpm.run("PCR read", |ctx| read_pcrs(ctx, &selection, pcrs))
        .map_err(tpm_error("PCR read"))
}
