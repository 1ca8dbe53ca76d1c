//! A certificate's ECDSA public key ([`CertKey`]): parsed from its SubjectPublicKeyInfo, checked
//! to lie on its curve, and used to verify prehashed signatures in DER or JWS (`r‖s`) form.

use der::asn1::ObjectIdentifier;
use signature::hazmat::PrehashVerifier;
use spki::SubjectPublicKeyInfoOwned;

use crate::cert::Certificate;

/// id-ecPublicKey.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1.
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1.
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A certificate's ECDSA public key, parsed and checked to lie on its curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKey {
    /// NIST P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// NIST P-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl CertKey {
    /// The key of a certificate.
    pub fn of(cert: &Certificate) -> Result<Self, String> {
        Self::from_spki(cert.tbs().subject_public_key_info())
    }

    /// Parses an EC P-256 or P-384 SubjectPublicKeyInfo; the error says what the key is.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, String> {
        if spki.algorithm.oid != EC_PUBLIC_KEY {
            return Err(format!("key algorithm {}", spki.algorithm.oid));
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| "EC key without a named curve".to_owned())?;
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| "public key BIT STRING has unused bits".to_owned())?;
        match curve {
            P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(CertKey::P256)
                .map_err(|_| "P-256 point not on the curve".to_owned()),
            P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map(CertKey::P384)
                .map_err(|_| "P-384 point not on the curve".to_owned()),
            other => Err(format!("curve {other}")),
        }
    }

    /// Verifies a DER-encoded ECDSA signature over a digest.
    pub fn verify_prehash_der(&self, digest: &[u8], signature: &[u8]) -> bool {
        match self {
            CertKey::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
            CertKey::P384(key) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok()),
        }
    }

    /// Verifies a fixed-size `r‖s` ECDSA signature (the JWS encoding) over a digest. The
    /// length must be exactly twice the curve's field size.
    pub fn verify_prehash_raw(&self, digest: &[u8], signature: &[u8]) -> bool {
        match self {
            CertKey::P256(key) => {
                signature.len() == 64
                    && p256::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok())
            }
            CertKey::P384(key) => {
                signature.len() == 96
                    && p384::ecdsa::Signature::from_slice(signature)
                        .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok())
            }
        }
    }
}
