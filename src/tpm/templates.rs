//! The public templates of every TPM object seb creates, each written once: the storage primary
//! all of them live under, ECDSA signing keys (the key backend's, unrestricted, and the
//! attestation key, restricted) and the sealed data object that holds the HSM PIN.
//!
//! Every object is bound to its TPM and parent (fixedTPM, fixedParent), so its blob is useless
//! anywhere else and cannot be duplicated, and exempt from dictionary-attack lockout (noDA), so
//! a wrong authorization or a swtpm restart never locks the TPM. Keys are generated inside the
//! TPM (sensitiveDataOrigin); a signing key can never decrypt.
//!
//! This module only builds templates and runs no TPM command. It must never drop fixedTPM or
//! fixedParent from a template, and never change a template that existing blobs depend on: the
//! storage primary is re-derived from its template, so a changed bit makes every stored key
//! blob and sealed PIN unloadable (the known-answer test below guards this).

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, Public, PublicBuilder,
    PublicEccParameters, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SymmetricDefinitionObject,
};

use crate::backend::KeyAlgorithm;

/// What a signing key may sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SigningUse {
    /// Any digest (unrestricted): the key backend's keys, which sign digests hashed in software.
    AnyDigest,
    /// Only structures the TPM generated itself, such as quotes (restricted): the attestation
    /// key, which must never sign a digest someone hands it.
    TpmGenerated,
}

/// The storage primary, the TCG SRK template: ECC P-256, AES-128-CFB, restricted decrypt, noDA.
pub(crate) fn storage_primary() -> tss_esapi::Result<Public> {
    let attributes = generated()
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()?;
    ecc_object(attributes, parameters)
}

/// An ECDSA key on `algorithm`'s curve, signing with its hash (SHA-256 for P-256, SHA-384 for
/// P-384), restricted or not as `usage` says.
pub(crate) fn signing_key(algorithm: KeyAlgorithm, usage: SigningUse) -> tss_esapi::Result<Public> {
    let restricted = usage == SigningUse::TpmGenerated;
    let (curve, hash) = curve_of(algorithm);
    let attributes = generated()
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(restricted)
        .build()?;
    let parameters = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(hash)),
        curve,
    )
    .with_restricted(restricted)
    .build()?;
    ecc_object(attributes, parameters)
}

/// A sealed data object: keyedhash without sign or decrypt, holding the data given at creation
/// (not generated: sensitiveDataOrigin clear), usable only through a policy session whose
/// digest is `policy` (userWithAuth clear, adminWithPolicy set). `name_hash` is its name
/// algorithm and must be the hash `policy` was computed with.
pub(crate) fn sealed_object(
    policy: Digest,
    name_hash: HashingAlgorithm,
) -> tss_esapi::Result<Public> {
    let attributes = bound()
        .with_user_with_auth(false)
        .with_admin_with_policy(true)
        .with_sensitive_data_origin(false)
        .with_sign_encrypt(false)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(name_hash)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// The TPM curve and signing hash of a key algorithm.
pub(super) fn curve_of(algorithm: KeyAlgorithm) -> (EccCurve, HashingAlgorithm) {
    match algorithm {
        KeyAlgorithm::EcP256 => (EccCurve::NistP256, HashingAlgorithm::Sha256),
        KeyAlgorithm::EcP384 => (EccCurve::NistP384, HashingAlgorithm::Sha384),
    }
}

/// What every object seb creates has: fixedTPM, fixedParent, noDA.
fn bound() -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
}

/// A key the TPM generated itself (sensitiveDataOrigin), used with its empty password
/// (userWithAuth).
fn generated() -> ObjectAttributesBuilder {
    bound()
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
}

/// An ECC object with a SHA-256 name, the TPM to fill in its point.
fn ecc_object(
    attributes: ObjectAttributes,
    parameters: PublicEccParameters,
) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

#[cfg(test)]
mod tests {
    use tss_esapi::traits::Marshall;

    use super::*;

    fn marshalled(public: tss_esapi::Result<Public>) -> String {
        hex::encode(public.unwrap().marshall().unwrap())
    }

    /// The templates as the TPM receives them (TPMT_PUBLIC), recorded from the code that
    /// created the blobs in use. A change here orphans every stored key blob and sealed PIN.
    #[test]
    fn templates_are_the_ones_existing_blobs_were_made_with() {
        assert_eq!(
            marshalled(storage_primary()),
            "0023000b00030472000000060080004300100003001000000000"
        );
        let signing = [
            (
                KeyAlgorithm::EcP256,
                SigningUse::AnyDigest,
                "0023000b00040472000000100018000b0003001000000000",
            ),
            (
                KeyAlgorithm::EcP384,
                SigningUse::AnyDigest,
                "0023000b00040472000000100018000c0004001000000000",
            ),
            (
                KeyAlgorithm::EcP256,
                SigningUse::TpmGenerated,
                "0023000b00050472000000100018000b0003001000000000",
            ),
            (
                KeyAlgorithm::EcP384,
                SigningUse::TpmGenerated,
                "0023000b00050472000000100018000c0004001000000000",
            ),
        ];
        for (algorithm, usage, expected) in signing {
            assert_eq!(
                marshalled(signing_key(algorithm, usage)),
                expected,
                "{algorithm} {usage:?}"
            );
        }
        let policy = Digest::try_from(vec![7u8; 32]).unwrap();
        assert_eq!(
            marshalled(sealed_object(policy, HashingAlgorithm::Sha256)),
            "0008000b000004920020\
             0707070707070707070707070707070707070707070707070707070707070707\
             00100000"
        );
    }

    #[test]
    fn every_object_is_bound_and_only_the_attestation_key_is_restricted() {
        let primary = storage_primary().unwrap();
        let a = primary.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && a.no_da() && a.sensitive_data_origin());
        assert!(a.restricted() && a.decrypt() && !a.sign_encrypt());

        for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            for usage in [SigningUse::AnyDigest, SigningUse::TpmGenerated] {
                let key = signing_key(algorithm, usage).unwrap();
                let a = key.object_attributes();
                assert!(
                    a.fixed_tpm() && a.fixed_parent() && a.no_da() && a.sensitive_data_origin()
                );
                assert!(a.sign_encrypt() && !a.decrypt());
                assert_eq!(a.restricted(), usage == SigningUse::TpmGenerated);
            }
        }
    }
}
