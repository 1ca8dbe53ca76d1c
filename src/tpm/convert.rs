//! What the TPM returns, as the normalized types every caller works with: the point of an ECC
//! object's public area as a [`PublicKey`] checked to be on its curve, an ECDSA `TPMT_SIGNATURE`
//! as a [`Signature`].
//!
//! It must never hand raw coordinates or `r‖s` to a caller, and never accept a value longer than
//! its curve's field: the TPM's leading zeros may be missing, and are added back, nothing else.

use tss_esapi::structures::Public;

use crate::backend::{BackendError, KeyAlgorithm, PublicKey, Signature};

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

/// An ECDSA signature from the TPM as a normalized [`Signature`] (low-S).
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
    Signature::from_raw(algorithm, &raw)
}

/// Bytes of a coordinate (and of `r` and `s`) on the curve.
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
