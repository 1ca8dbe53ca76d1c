//! The one narrow joint to the hardware.
//!
//! A [`KeyBackend`] generates keys inside a device, finds them by label, returns their public
//! halves and signs digests that were hashed in software. Everything above this module (the CA,
//! tokens, audit checkpoints, TLS) sees only the trait and the normalized types here
//! ([`PublicKey`], [`Signature`]); it never learns which device signs.
//!
//! This module must never hold, request or return private key bytes. Backends create keys with
//! the device's non-exportable flags and only ever ask the device to sign.

use std::fmt;

use sha2::{Digest, Sha384};
use signature::Keypair;
use spki::{AlgorithmIdentifier, ObjectIdentifier, SignatureAlgorithmIdentifier};

#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;

/// ecdsa-with-SHA384 (RFC 5758).
pub const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// The curves a backend can hold keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// NIST P-256, for ES256 tokens where throughput matters more than the CNSA suite.
    EcP256,
    /// NIST P-384, the default for every broker key.
    EcP384,
}

impl KeyAlgorithm {
    /// Length in bytes of the digest this algorithm signs (SHA-256 or SHA-384).
    pub fn digest_len(self) -> usize {
        match self {
            KeyAlgorithm::EcP256 => 32,
            KeyAlgorithm::EcP384 => 48,
        }
    }

    /// The digest of `message` that a key of this algorithm signs (SHA-256 or SHA-384).
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            KeyAlgorithm::EcP256 => sha2::Sha256::digest(message).to_vec(),
            KeyAlgorithm::EcP384 => Sha384::digest(message).to_vec(),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::EcP384 => "ec-p384",
        })
    }
}

/// A public key as a backend reports it, already parsed and checked to be on its curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256 public key.
    P256(p256::PublicKey),
    /// P-384 public key.
    P384(p384::PublicKey),
}

impl PublicKey {
    /// The curve of this key.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PublicKey::P256(_) => KeyAlgorithm::EcP256,
            PublicKey::P384(_) => KeyAlgorithm::EcP384,
        }
    }

    /// Parses an uncompressed or compressed SEC1 point on the given curve.
    pub fn from_sec1(algorithm: KeyAlgorithm, point: &[u8]) -> Result<Self, BackendError> {
        let bad = |_| BackendError::MalformedPublicKey;
        Ok(match algorithm {
            KeyAlgorithm::EcP256 => {
                PublicKey::P256(p256::PublicKey::from_sec1_bytes(point).map_err(bad)?)
            }
            KeyAlgorithm::EcP384 => {
                PublicKey::P384(p384::PublicKey::from_sec1_bytes(point).map_err(bad)?)
            }
        })
    }

    /// The key as a DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, BackendError> {
        use spki::EncodePublicKey;
        let doc = match self {
            PublicKey::P256(k) => k.to_public_key_der(),
            PublicKey::P384(k) => k.to_public_key_der(),
        }
        .map_err(|_| BackendError::MalformedPublicKey)?;
        Ok(doc.as_bytes().to_vec())
    }
}

/// A signature as a backend returns it, parsed from the device's raw `r‖s` and normalised to
/// low-S.
///
/// ECDSA is malleable: if `(r, s)` verifies, so does `(r, n − s)`. Devices return either (a
/// PKCS#11 module or a TPM has no reason to care), so every signature the broker publishes
/// (tokens, certificates, CRLs) would have two valid spellings. Backends build signatures with
/// [`Signature::from_raw`], which keeps the low one (`s ≤ n/2`), and the publishing paths
/// ([`Signature::to_raw`], [`P384Signer`]) normalise again whatever a backend returned, so one
/// token and one certificate have one encoding, and verifiers may refuse the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// ECDSA P-256 signature.
    P256(p256::ecdsa::Signature),
    /// ECDSA P-384 signature.
    P384(p384::ecdsa::Signature),
}

impl Signature {
    /// Parses a device's fixed-size `r‖s` for a key of `algorithm`, as low-S.
    pub fn from_raw(algorithm: KeyAlgorithm, raw: &[u8]) -> Result<Self, BackendError> {
        let bad = |_| BackendError::MalformedSignature;
        let signature = match algorithm {
            KeyAlgorithm::EcP256 => {
                Signature::P256(p256::ecdsa::Signature::from_slice(raw).map_err(bad)?)
            }
            KeyAlgorithm::EcP384 => {
                Signature::P384(p384::ecdsa::Signature::from_slice(raw).map_err(bad)?)
            }
        };
        Ok(signature.low_s())
    }

    /// The same signature with `s` replaced by `n − s` if it is in the upper half.
    pub fn low_s(&self) -> Self {
        match self {
            Signature::P256(s) => Signature::P256(s.normalize_s()),
            Signature::P384(s) => Signature::P384(s.normalize_s()),
        }
    }

    /// Fixed-size `r‖s` of the low-S form, which is also the JWS ES256/ES384 signature
    /// encoding.
    pub fn to_raw(&self) -> Vec<u8> {
        match self.low_s() {
            Signature::P256(s) => s.to_bytes().to_vec(),
            Signature::P384(s) => s.to_bytes().to_vec(),
        }
    }
}

/// What a backend reports about how a private key is protected, read from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyProtection {
    /// The device refuses to reveal the private value (CKA_SENSITIVE, TPM fixedTPM).
    pub sensitive: bool,
    /// The device would export the key wrapped (CKA_EXTRACTABLE). Must be false.
    pub extractable: bool,
    /// The key was generated sensitive and never changed (CKA_ALWAYS_SENSITIVE).
    pub always_sensitive: bool,
    /// The key was never extractable (CKA_NEVER_EXTRACTABLE).
    pub never_extractable: bool,
    /// Whether a request for the private value returned anything. Must be false.
    pub private_value_readable: bool,
}

impl KeyProtection {
    /// True when the key can never leave the device.
    pub fn is_hardware_bound(&self) -> bool {
        self.sensitive
            && !self.extractable
            && self.always_sensitive
            && self.never_extractable
            && !self.private_value_readable
    }
}

/// Errors from a key backend. Messages name the operation and never carry PINs or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The PKCS#11 module could not be loaded.
    #[error("cannot load the PKCS#11 module {module}")]
    LoadModule {
        /// Path of the module.
        module: String,
        /// What the loader said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No token with the configured label is present.
    #[error("no token labelled {label:?} is present")]
    TokenNotFound {
        /// The configured label.
        label: String,
    },
    /// Login was refused because the PIN is wrong. The process does not offer it again.
    #[error(
        "the HSM refused the user PIN; seb does not try it again (HSMs lock the PIN after a few \
         failures): fix the PIN, then start seb again"
    )]
    PinIncorrect,
    /// The PIN is locked after too many failures.
    #[error("the HSM user PIN is locked: the security officer must unlock or reset it")]
    PinLocked,
    /// The PIN could not be read from its configured source.
    #[error("cannot read the HSM PIN: {reason}")]
    PinUnavailable {
        /// Why, without the PIN.
        reason: String,
    },
    /// The requested key label does not exist.
    #[error("no key labelled {label:?} on the device")]
    KeyNotFound {
        /// The label asked for.
        label: String,
    },
    /// A key with that label already exists; generation refuses to shadow it.
    #[error("a key labelled {label:?} already exists on the device")]
    KeyExists {
        /// The label.
        label: String,
    },
    /// More than one key pair carries the label, so the device state is ambiguous.
    #[error("more than one key labelled {label:?}: refusing to guess")]
    AmbiguousKey {
        /// The label.
        label: String,
    },
    /// The digest length does not match the key's curve.
    #[error("digest of {got} bytes for a {algorithm} key (expected {expected})")]
    DigestLength {
        /// The key's algorithm.
        algorithm: KeyAlgorithm,
        /// Expected digest length.
        expected: usize,
        /// Given digest length.
        got: usize,
    },
    /// The device returned a public key we cannot parse.
    #[error("the device returned a malformed public key")]
    MalformedPublicKey,
    /// The device returned a signature we cannot parse.
    #[error("the device returned a malformed signature")]
    MalformedSignature,
    /// A key on the device is not of a kind seb uses (wrong curve or type).
    #[error("key {label:?} is not an EC P-256/P-384 key")]
    UnsupportedKey {
        /// The label.
        label: String,
    },
    /// The device failed or is unreachable; the operation names what we were doing.
    #[error("key device (HSM or TPM) unavailable during {operation}")]
    Unavailable {
        /// What we were doing.
        operation: &'static str,
        /// The device's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device answered, but with an error that is not about availability.
    #[error("HSM error during {operation}")]
    Device {
        /// What we were doing.
        operation: &'static str,
        /// The device's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BackendError {
    /// True when the failure means "the device is not usable right now" (as opposed to a
    /// configuration or caller error). The broker answers these with `hsm_unavailable`.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. }
                | BackendError::TokenNotFound { .. }
                | BackendError::LoadModule { .. }
        )
    }
}

/// The hardware boundary: generate, find, read public halves and sign digests.
///
/// Implementations are synchronous and may block on the device; async callers must reach them
/// through `spawn_blocking` or a worker thread, never on an async worker.
pub trait KeyBackend: Send + Sync + fmt::Debug {
    /// Generates a non-exportable key pair inside the device under `label`.
    /// Refuses with [`BackendError::KeyExists`] if the label is taken.
    fn generate(&self, label: &str, algorithm: KeyAlgorithm) -> Result<PublicKey, BackendError>;

    /// The public key stored under `label`.
    fn public_key(&self, label: &str) -> Result<PublicKey, BackendError>;

    /// Whether a key pair exists under `label`.
    fn contains(&self, label: &str) -> Result<bool, BackendError>;

    /// Signs a digest that was computed in software (SHA-256 for P-256, SHA-384 for P-384).
    fn sign_digest(&self, label: &str, digest: &[u8]) -> Result<Signature, BackendError>;

    /// How the private key under `label` is protected, as the device reports it.
    fn protection(&self, label: &str) -> Result<KeyProtection, BackendError>;

    /// A cheap round trip to the device, for readiness checks.
    fn ping(&self) -> Result<(), BackendError>;

    /// A one-line description of the device for logs (`pkcs11 token "seb" (SoftHSM v2)`).
    fn describe(&self) -> String;
}

/// Adapts a P-384 key in a backend to RustCrypto's signer traits, so that certificate and CRL
/// code signs through the device without knowing it is there.
///
/// Every signature is verified against the public key before it is returned, so a faulty device
/// (or a fault attack on it) cannot make the CA publish a broken or key-leaking signature, and
/// is low-S, so a certificate or CRL has one encoding.
pub struct P384Signer<'a> {
    backend: &'a dyn KeyBackend,
    label: String,
    verifying_key: p384::ecdsa::VerifyingKey,
}

impl<'a> P384Signer<'a> {
    /// Looks up `label` and checks that it is a P-384 key.
    pub fn new(backend: &'a dyn KeyBackend, label: &str) -> Result<Self, BackendError> {
        match backend.public_key(label)? {
            PublicKey::P384(public) => Ok(Self {
                backend,
                label: label.to_owned(),
                verifying_key: p384::ecdsa::VerifyingKey::from(public),
            }),
            PublicKey::P256(_) => Err(BackendError::UnsupportedKey {
                label: label.to_owned(),
            }),
        }
    }

    /// The label of the key this signer uses.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Hashes `message` with SHA-384, has the device sign it and checks the result, which is
    /// low-S whatever the backend returned.
    pub fn sign_message(&self, message: &[u8]) -> Result<p384::ecdsa::Signature, BackendError> {
        use signature::hazmat::PrehashVerifier;
        let digest = Sha384::digest(message);
        match self.backend.sign_digest(&self.label, &digest)?.low_s() {
            Signature::P384(sig) => {
                self.verifying_key
                    .verify_prehash(&digest, &sig)
                    .map_err(|_| BackendError::MalformedSignature)?;
                Ok(sig)
            }
            Signature::P256(_) => Err(BackendError::MalformedSignature),
        }
    }
}

impl Keypair for P384Signer<'_> {
    type VerifyingKey = p384::ecdsa::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.verifying_key
    }
}

impl SignatureAlgorithmIdentifier for P384Signer<'_> {
    type Params = der::asn1::AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: AlgorithmIdentifier<Self::Params> = AlgorithmIdentifier {
        oid: ECDSA_WITH_SHA384,
        parameters: None,
    };
}

impl signature::Signer<p384::ecdsa::DerSignature> for P384Signer<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<p384::ecdsa::DerSignature, signature::Error> {
        let sig = self
            .sign_message(msg)
            .map_err(signature::Error::from_source)?;
        Ok(sig.to_der())
    }
}

#[cfg(test)]
mod tests {
    use signature::hazmat::PrehashSigner;

    use super::*;

    /// A device that always answers with the high-S spelling of its signature.
    #[derive(Debug)]
    struct HighSDevice(p384::ecdsa::SigningKey);

    fn high_s(sig: p384::ecdsa::Signature) -> p384::ecdsa::Signature {
        let low = sig.normalize_s();
        let (r, s) = low.split_scalars();
        p384::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap()
    }

    impl KeyBackend for HighSDevice {
        fn generate(&self, _: &str, _: KeyAlgorithm) -> Result<PublicKey, BackendError> {
            unimplemented!()
        }
        fn public_key(&self, _: &str) -> Result<PublicKey, BackendError> {
            Ok(PublicKey::P384((*self.0.verifying_key()).into()))
        }
        fn contains(&self, _: &str) -> Result<bool, BackendError> {
            Ok(true)
        }
        fn sign_digest(&self, _: &str, digest: &[u8]) -> Result<Signature, BackendError> {
            let sig: p384::ecdsa::Signature = self.0.sign_prehash(digest).unwrap();
            Ok(Signature::P384(high_s(sig)))
        }
        fn protection(&self, _: &str) -> Result<KeyProtection, BackendError> {
            unimplemented!()
        }
        fn ping(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "high-S test device".into()
        }
    }

    #[test]
    fn certificates_crls_and_tokens_get_low_s_whatever_the_device_returns() {
        use p384::elliptic_curve::Generate;
        let device = HighSDevice(p384::ecdsa::SigningKey::try_generate().unwrap());
        // Through the adapter the CA signs certificates and CRLs with.
        let signer = P384Signer::new(&device, "k").unwrap();
        for i in 0..8u8 {
            let sig = signer.sign_message(&[i]).unwrap();
            assert_eq!(
                sig.normalize_s(),
                sig,
                "the CA would publish a high-S signature"
            );
            let der: p384::ecdsa::DerSignature =
                signature::Signer::try_sign(&signer, &[i]).unwrap();
            let sig = p384::ecdsa::Signature::from_der(der.as_bytes()).unwrap();
            assert_eq!(sig.normalize_s(), sig);
        }
        // The raw r‖s a token is assembled from.
        let digest = Sha384::digest(b"token");
        let raw = device.sign_digest("k", &digest).unwrap().to_raw();
        let sig = p384::ecdsa::Signature::from_slice(&raw).unwrap();
        assert_eq!(
            sig.normalize_s(),
            sig,
            "a token would carry a high-S signature"
        );
    }
}
