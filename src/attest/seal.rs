//! PIN sealing: the HSM user PIN kept as a TPM sealed data object that the TPM releases only
//! while the PCRs of the attestation policy hold the values they had when it was sealed, so a
//! host booted into another state cannot log in to the HSM.
//!
//! The sealed object is a keyedhash object with no sign/decrypt capability under the
//! owner-hierarchy storage primary: fixedTPM and fixedParent (useless on another TPM), noDA
//! (swtpm restarts and wrong states never count toward lockout), userWithAuth clear and
//! adminWithPolicy set, so the only way to use it is a policy session satisfying its
//! `authPolicy = PolicyPCR(selection, H(values))`. The PIN crosses the TPM interface only
//! encrypted: creation and unsealing run in sessions salted with the storage primary with
//! parameter encryption (a bus sniffer sees ciphertext).
//!
//! Only PCRs that a host reboot alone resets (0-15) are sealed to or unsealed from: PCRs 16 and
//! 23 are reset from locality 0 by any program (`super::resettable_pcr`).
//!
//! The file keeps the PCR selection (and, for diagnostics only, the values sealed to) next to
//! the TPM blob, so unsealing needs nothing else. The TPM alone decides: the stored values are
//! never trusted, only used to name the PCRs that changed.
//!
//! This module must never print, log or format the PIN, and never return a PIN the TPM did not
//! release.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, PcrSelectionList, Private, Public, SensitiveData, SymmetricDefinition,
};
use tss_esapi::Context;

use super::tpm::{read_pcrs, selection};
use super::PcrBank;
use crate::backend::BackendError;
use crate::tpm::{
    decode_object, encode_object, file_header, flush, sealed_object, split_file_header, Failure,
    Tpm,
};

/// Why a PIN could not be sealed or unsealed. Never carries the PIN.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The PCRs no longer hold the values the PIN was sealed to.
    #[error(
        "the TPM refused to unseal the HSM PIN: the measured boot state (PCRs {selection}, {bank}) \
         differs from when it was sealed ({changed}). If the change was planned (firmware \
         update), re-seal from a known-good state with `seb seal-pin`"
    )]
    BootStateChanged {
        /// The sealed selection, e.g. `0,1,2,10`.
        selection: String,
        /// The bank.
        bank: PcrBank,
        /// Which PCRs differ from the values recorded at sealing, as far as they can be read.
        changed: String,
    },
    /// The blob is bound to fewer PCRs than the attestation policy quotes, or to another
    /// bank: the TPM would release the PIN in boot states the policy refuses.
    #[error(
        "the sealed HSM PIN is bound to PCRs {sealed} ({sealed_bank}), which do not cover the \
         attestation policy's PCRs {policy} ({policy_bank}): the TPM would release it in boot \
         states the policy refuses. Re-seal it from a known-good state with `seb seal-pin` \
         (which seals to the policy's PCRs)"
    )]
    NarrowerThanPolicy {
        /// The sealed selection.
        sealed: String,
        /// Its bank.
        sealed_bank: PcrBank,
        /// The policy's PCRs.
        policy: String,
        /// The policy's bank.
        policy_bank: PcrBank,
    },
    /// The TPM cannot load the blob: it was made by another TPM (or the owner seed changed).
    #[error(
        "the TPM refused to load the sealed HSM PIN: it was sealed by another TPM, or this \
         TPM's owner hierarchy was cleared since (the TPM reported {code})"
    )]
    WrongTpm {
        /// The TPM's response, for the operator.
        code: String,
    },
    /// The TPM could not be reached or failed.
    #[error("cannot {operation} (TPM at {tcti})")]
    Tpm {
        /// What was being done.
        operation: &'static str,
        /// The TCTI.
        tcti: String,
        /// The TPM/TSS error.
        #[source]
        source: BackendError,
    },
    /// The sealed file cannot be read or is not a sealed PIN.
    #[error("sealed PIN file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The PIN or the selection cannot be sealed.
    #[error("cannot seal the HSM PIN: {0}")]
    Input(String),
    /// The selection names a PCR that software can reset: the TPM would release the PIN to
    /// any program that resets it and extends the sealed value.
    #[error(
        "the HSM PIN is not sealed to or unsealed from PCR {pcr} (resettable_pcr): {reason}, so \
         the TPM would release the PIN to any program that does. Seal only to PCRs 0-15: record \
         a policy without it (`seb attest record`) and re-seal from the escrowed PIN with \
         `seb seal-pin`"
    )]
    ResettablePcr {
        /// PCR index.
        pcr: u8,
        /// Why it is resettable.
        reason: &'static str,
    },
}

/// Refuses a selection that names a PCR software can reset ([`super::resettable_pcr`]).
fn check_selection(pcrs: &[u8]) -> Result<(), SealError> {
    match pcrs
        .iter()
        .find_map(|p| super::resettable_pcr(*p).map(|reason| (*p, reason)))
    {
        Some((pcr, reason)) => Err(SealError::ResettablePcr { pcr, reason }),
        None => Ok(()),
    }
}

/// A sealed PIN as stored on disk: the selection it is bound to and the TPM blob.
pub struct SealedPin {
    bank: PcrBank,
    values: BTreeMap<u8, Vec<u8>>,
    public: Public,
    private: Private,
}

impl std::fmt::Debug for SealedPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedPin")
            .field("bank", &self.bank)
            .field("pcrs", &self.pcrs())
            .finish_non_exhaustive()
    }
}

/// Reads the sealed PIN at `path` and unseals it with the TPM at `tcti`. With the attestation
/// `policy`, the blob must be bound to all of its PCRs, in its bank: a blob sealed to fewer
/// (under a weaker policy, or an older one) would be released in boot states the policy
/// refuses.
pub fn unseal_file(
    tcti: &str,
    path: &Path,
    policy: Option<&Path>,
) -> Result<SecretString, SealError> {
    let bytes = std::fs::read(path).map_err(|e| SealError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let sealed = SealedPin::decode(&bytes).map_err(|reason| SealError::File {
        path: path.to_owned(),
        reason,
    })?;
    check_selection(&sealed.pcrs())?;
    if let Some(policy_path) = policy {
        let policy = super::AttestPolicy::load(policy_path).map_err(|e| SealError::File {
            path: policy_path.to_owned(),
            reason: format!("the attestation policy, which the sealed PIN must cover: {e}"),
        })?;
        sealed.covers(policy.bank, &policy.pcrs)?;
    }
    let tpm = Tpm::open(tcti).map_err(|source| SealError::Tpm {
        operation: "reach the TPM to unseal the HSM PIN",
        tcti: tcti.to_owned(),
        source,
    })?;
    sealed.unseal(&tpm)
}

/// Session hash of the policy and name algorithm of the sealed object.
const POLICY_HASH: HashingAlgorithm = HashingAlgorithm::Sha256;
/// Largest secret a TPM2B_SENSITIVE_DATA holds (MAX_SYM_DATA).
const MAX_PIN: usize = 128;

impl SealedPin {
    /// Seals `pin` under PolicyPCR over exactly `values` (PCR index → value in `bank`), which
    /// the caller read and judged good. If the PCRs changed since, the blob will not unseal:
    /// callers check with [`SealedPin::unseal`] right after sealing.
    pub fn seal(
        tpm: &Tpm,
        bank: PcrBank,
        values: &BTreeMap<u8, Vec<u8>>,
        pin: &SecretString,
    ) -> Result<Self, SealError> {
        let pcrs: Vec<u8> = values.keys().copied().collect();
        check_selection(&pcrs)?;
        if pcrs.is_empty() || values.values().any(|v| v.len() != bank.digest_len()) {
            return Err(SealError::Input(
                "the PCR values to seal to are missing or have the wrong length".into(),
            ));
        }
        let pin_bytes = pin.expose_secret().as_bytes();
        if pin_bytes.is_empty() || pin_bytes.len() > MAX_PIN {
            return Err(SealError::Input(format!(
                "the PIN must be 1 to {MAX_PIN} bytes"
            )));
        }
        let sensitive = SensitiveData::try_from(pin_bytes.to_vec())
            .map_err(|e| SealError::Input(format!("PIN: {e}")))?;
        let selection = selection(bank, &pcrs).map_err(|e| SealError::Input(e.to_string()))?;
        let pcr_digest = Sha256::digest(values.values().flatten().copied().collect::<Vec<_>>());
        let (public, private) = tpm
            .run("seal the HSM PIN", |ctx| {
                let policy = trial_policy(ctx, &selection, &pcr_digest)?;
                let template = sealed_object(policy, POLICY_HASH)?;
                let primary = Tpm::storage_primary(ctx)?;
                let created = salted_session(ctx, primary, SessionType::Hmac).and_then(|s| {
                    let r = ctx.execute_with_session(Some(s), |ctx| {
                        ctx.create(primary, template, None, Some(sensitive), None, None)
                    });
                    close(ctx, s);
                    Ok(r?)
                });
                flush(ctx, primary);
                let created = created?;
                Ok((created.out_public, created.out_private))
            })
            .map_err(|source| SealError::Tpm {
                operation: "seal the HSM PIN",
                tcti: tpm.tcti().to_owned(),
                source,
            })?;
        Ok(Self {
            bank,
            values: values.clone(),
            public,
            private,
        })
    }

    /// Asks the TPM to release the PIN: PolicyPCR over the sealed selection in a salted policy
    /// session with response encryption, then TPM2_Unseal.
    pub fn unseal(&self, tpm: &Tpm) -> Result<SecretString, SealError> {
        let pcrs = self.pcrs();
        check_selection(&pcrs)?;
        let selection = selection(self.bank, &pcrs).map_err(|e| SealError::Input(e.to_string()))?;
        let outcome = tpm
            .run("unseal the HSM PIN", |ctx| {
                // Loaded by hand, not through `KeyBlob::with_loaded`: the primary stays loaded
                // to salt the policy session, and a load failure is classified (`WrongTpm`).
                let primary = Tpm::storage_primary(ctx)?;
                let loaded = ctx.execute_with_nullauth_session(|ctx| {
                    ctx.load(primary, self.private.clone(), self.public.clone())
                });
                let object = match loaded {
                    Ok(object) => object,
                    Err(e) => {
                        flush(ctx, primary);
                        return match e {
                            tss_esapi::Error::Tss2Error(rc) if is_foreign(rc.kind()) => {
                                Ok(Err(SealError::WrongTpm {
                                    code: rc.to_string(),
                                }))
                            }
                            e => Err(e.into()),
                        };
                    }
                };
                let session = salted_session(ctx, primary, SessionType::Policy);
                flush(ctx, primary);
                let session = match session {
                    Ok(s) => s,
                    Err(e) => {
                        flush(ctx, object);
                        return Err(e);
                    }
                };
                let released = policy_pcr(ctx, session, &selection).and_then(|()| {
                    Ok(ctx.execute_with_session(Some(session), |ctx| {
                        ctx.unseal(ObjectHandle::from(object))
                    })?)
                });
                close(ctx, session);
                flush(ctx, object);
                match released {
                    Ok(data) => Ok(Ok(data)),
                    Err(Failure::Tss(tss_esapi::Error::Tss2Error(rc)))
                        if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail) =>
                    {
                        Ok(Err(self.boot_state_changed(
                            read_pcrs(ctx, &selection, &pcrs).ok(),
                        )))
                    }
                    Err(e) => Err(e),
                }
            })
            .map_err(|source| SealError::Tpm {
                operation: "unseal the HSM PIN",
                tcti: tpm.tcti().to_owned(),
                source,
            })??;
        // The TPM2B buffer is zeroised on drop; the copy moves into the SecretString.
        let pin = String::from_utf8(outcome.value().to_vec())
            .map_err(|_| SealError::Input("the unsealed PIN is not UTF-8".into()))?;
        Ok(SecretString::from(pin))
    }

    /// Refuses a blob not bound to every PCR of `pcrs` in `bank`.
    fn covers(&self, bank: PcrBank, pcrs: &[u8]) -> Result<(), SealError> {
        let sealed = self.pcrs();
        if bank == self.bank && pcrs.iter().all(|p| sealed.contains(p)) {
            return Ok(());
        }
        Err(SealError::NarrowerThanPolicy {
            sealed: join(&sealed),
            sealed_bank: self.bank,
            policy: join(pcrs),
            policy_bank: bank,
        })
    }

    /// The sealed PCR indices, ascending.
    pub fn pcrs(&self) -> Vec<u8> {
        self.values.keys().copied().collect()
    }

    /// The sealed bank.
    pub fn bank(&self) -> PcrBank {
        self.bank
    }

    fn boot_state_changed(&self, now: Option<BTreeMap<u8, Vec<u8>>>) -> SealError {
        let changed = match now {
            Some(now) => {
                let differ: Vec<String> = self
                    .values
                    .iter()
                    .filter(|(pcr, value)| now.get(pcr) != Some(value))
                    .map(|(pcr, _)| pcr.to_string())
                    .collect();
                if differ.is_empty() {
                    "the PCRs read back as sealed; they changed during the check".into()
                } else {
                    format!("changed: PCR {}", differ.join(", PCR "))
                }
            }
            None => "the changed PCRs could not be read".into(),
        };
        SealError::BootStateChanged {
            selection: join(&self.pcrs()),
            bank: self.bank,
            changed,
        }
    }

    /// `SEBPIN01 ‖ bank(u8) ‖ n(u8) ‖ n × PCR index ‖ n × PCR value ‖ u32 len ‖ TPMT_PUBLIC ‖
    /// u32 len ‖ TPM2B_PRIVATE buffer`.
    pub fn encode(&self) -> Result<Vec<u8>, SealError> {
        let bad = |e: String| SealError::Input(format!("encode the sealed PIN: {e}"));
        let count = u8::try_from(self.values.len()).map_err(|_| bad("too many PCRs".into()))?;
        let mut out = file_header(SEALED_MAGIC, bank_code(self.bank));
        out.push(count);
        out.extend(self.values.keys());
        out.extend(self.values.values().flatten());
        encode_object(&mut out, &self.public, &self.private).map_err(bad)?;
        Ok(out)
    }

    /// Parses [`SealedPin::encode`]'s format strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (bank, rest) = split_file_header(
            bytes,
            SEALED_MAGIC,
            "not a seb sealed PIN (run `seb seal-pin`)",
        )?;
        let bank = match bank {
            1 => PcrBank::Sha256,
            2 => PcrBank::Sha384,
            other => return Err(format!("unknown PCR bank {other}")),
        };
        let (&count, rest) = rest.split_first().ok_or("truncated")?;
        let (indices, rest) = rest
            .split_at_checked(usize::from(count))
            .ok_or("truncated")?;
        let (digests, rest) = rest
            .split_at_checked(usize::from(count) * bank.digest_len())
            .ok_or("truncated")?;
        let mut values = BTreeMap::new();
        for (pcr, value) in indices.iter().zip(digests.chunks_exact(bank.digest_len())) {
            if *pcr > 23 || values.insert(*pcr, value.to_vec()).is_some() {
                return Err(format!("bad PCR selection (PCR {pcr})"));
            }
        }
        if values.is_empty() {
            return Err("empty PCR selection".into());
        }
        let (public, private) = decode_object(rest)?;
        Ok(Self {
            bank,
            values,
            public,
            private,
        })
    }
}

/// Magic of the sealed PIN file format (version 1).
const SEALED_MAGIC: &[u8; 8] = b"SEBPIN01";

fn bank_code(bank: PcrBank) -> u8 {
    match bank {
        PcrBank::Sha256 => 1,
        PcrBank::Sha384 => 2,
    }
}

/// Load failures that mean "this blob is not for this TPM's storage primary".
fn is_foreign(kind: Option<Tss2ResponseCodeKind>) -> bool {
    matches!(
        kind,
        Some(Tss2ResponseCodeKind::Integrity) | Some(Tss2ResponseCodeKind::Size)
    )
}

fn join(pcrs: &[u8]) -> String {
    pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

/// The policy digest of PolicyPCR(selection, pcr_digest), computed by the TPM in a trial
/// session (nothing is checked against the current PCRs).
fn trial_policy(
    ctx: &mut Context,
    selection: &PcrSelectionList,
    pcr_digest: &[u8],
) -> Result<Digest, Failure> {
    let session = start_session(ctx, None, SessionType::Trial)?;
    let result = (|| -> Result<Digest, Failure> {
        let policy = PolicySession::try_from(session)?;
        ctx.policy_pcr(
            policy,
            Digest::try_from(pcr_digest.to_vec())?,
            selection.clone(),
        )?;
        Ok(ctx.policy_get_digest(policy)?)
    })();
    close(ctx, session);
    result
}

/// PolicyPCR with the TPM's current values: the session's digest matches the object's
/// authPolicy only if they equal the sealed ones (else Unseal fails with TPM_RC_POLICY_FAIL).
fn policy_pcr(
    ctx: &mut Context,
    session: AuthSession,
    selection: &PcrSelectionList,
) -> Result<(), Failure> {
    let policy = PolicySession::try_from(session)?;
    ctx.policy_pcr(policy, Digest::default(), selection.clone())?;
    Ok(())
}

/// A session salted with the storage primary (so only this TPM knows its key), with command
/// and response parameter encryption.
fn salted_session(
    ctx: &mut Context,
    primary: KeyHandle,
    kind: SessionType,
) -> Result<AuthSession, Failure> {
    let session = start_session(ctx, Some(primary), kind)?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .with_continue_session(true)
        .build();
    if let Err(e) = ctx.tr_sess_set_attributes(session, attributes, mask) {
        close(ctx, session);
        return Err(e.into());
    }
    Ok(session)
}

fn start_session(
    ctx: &mut Context,
    salt: Option<KeyHandle>,
    kind: SessionType,
) -> Result<AuthSession, Failure> {
    ctx.start_auth_session(
        salt,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        POLICY_HASH,
    )?
    .ok_or(Failure::Tss(tss_esapi::Error::WrapperError(
        tss_esapi::WrapperErrorKind::WrongValueFromTpm,
    )))
}

fn close(ctx: &mut Context, session: AuthSession) {
    if let Err(e) = ctx.flush_context(SessionHandle::from(session).into()) {
        tracing::debug!(error = %e, "session already closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedPin {
        let policy = Digest::try_from(vec![7u8; 32]).unwrap();
        SealedPin {
            bank: PcrBank::Sha256,
            values: BTreeMap::from([(0, vec![1u8; 32]), (23, vec![2u8; 32])]),
            public: sealed_object(policy, POLICY_HASH).unwrap(),
            private: Private::try_from(vec![9u8; 40]).unwrap(),
        }
    }

    #[test]
    fn sealed_file_round_trips_and_is_parsed_strictly() {
        let bytes = sample().encode().unwrap();
        let back = SealedPin::decode(&bytes).unwrap();
        assert_eq!(back.pcrs(), vec![0, 23]);
        assert_eq!(back.bank(), PcrBank::Sha256);
        assert_eq!(back.encode().unwrap(), bytes);
        let a = back.public.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && a.no_da() && a.admin_with_policy());
        assert!(!a.user_with_auth() && !a.sign_encrypt() && !a.decrypt());

        for cut in [0, 8, 11, 20, bytes.len() - 1] {
            assert!(SealedPin::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(SealedPin::decode(&extra).is_err());
        let mut bad_pcr = bytes.clone();
        bad_pcr[10] = 24;
        assert!(SealedPin::decode(&bad_pcr).is_err());
        assert!(SealedPin::decode(b"SEBTPMK1....").is_err());
    }

    #[test]
    fn debug_and_errors_name_pcrs_not_secrets() {
        let s = sample();
        assert!(format!("{s:?}").contains("[0, 23]"));
        let e = s.boot_state_changed(Some(BTreeMap::from([
            (0, vec![1u8; 32]),
            (23, vec![3u8; 32]),
        ])));
        let text = e.to_string();
        assert!(text.contains("PCRs 0,23"), "{text}");
        assert!(text.contains("changed: PCR 23"), "{text}");
        assert!(text.contains("seb seal-pin"), "{text}");
    }

    #[test]
    fn a_pin_sealed_to_fewer_pcrs_than_the_policy_is_refused() {
        // Sealed to 0 and 10 (sha256): covers a policy of 0 or 0,10, not 0,7,10 nor sha384.
        let sealed = SealedPin {
            values: BTreeMap::from([(0, vec![1u8; 32]), (10, vec![2u8; 32])]),
            ..sample()
        };
        assert!(sealed.covers(PcrBank::Sha256, &[0]).is_ok());
        assert!(sealed.covers(PcrBank::Sha256, &[0, 10]).is_ok());
        let err = sealed
            .covers(PcrBank::Sha256, &[0, 7, 10])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PCRs 0,10 (sha256)"), "{err}");
        assert!(err.contains("0,7,10"), "{err}");
        assert!(err.contains("seb seal-pin"), "{err}");
        assert!(sealed.covers(PcrBank::Sha384, &[0]).is_err());
    }

    #[test]
    fn a_pin_sealed_to_a_resettable_pcr_is_refused_before_the_tpm_is_asked() {
        // A blob sealed to PCR 23 (by an older seb) opens for anyone who resets PCR 23 and
        // extends the sealed value. It is refused, naming the PCR, without reaching the TPM.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin.sealed");
        std::fs::write(&path, sample().encode().unwrap()).unwrap();
        let err = unseal_file("swtpm:host=127.0.0.1,port=1", &path, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resettable_pcr"), "{err}");
        assert!(err.contains("PCR 23 "), "{err}");
        assert!(err.contains("seb seal-pin"), "{err}");
    }
}
