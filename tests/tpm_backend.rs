//! The TPM key backend against a real (simulated) TPM: each test starts its own swtpm.
//! Keys are made non-exportable and exempt from dictionary-attack lockout; signatures verify
//! with the public key alone; the backend fails closed when the TPM is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Swtpm;
use seb::backend::tpm::{TpmBackend, TpmSettings};
use seb::backend::{BackendError, KeyAlgorithm, KeyBackend, PublicKey, Signature};
use sha2::{Digest, Sha256, Sha384};
use signature::hazmat::PrehashVerifier;

fn backend(tpm: &Swtpm) -> TpmBackend {
    TpmBackend::open(&TpmSettings {
        tcti: tpm.tcti(),
        key_dir: tpm.dir.path().join("keys"),
    })
    .unwrap()
}

#[test]
fn p384_key_signs_verifiably_and_is_bound_to_the_tpm() {
    let tpm = Swtpm::start();
    let b = backend(&tpm);
    assert!(!b.contains("seb-root").unwrap());
    let public = b.generate("seb-root", KeyAlgorithm::EcP384).unwrap();
    assert!(b.contains("seb-root").unwrap());
    assert_eq!(b.public_key("seb-root").unwrap(), public);
    let digest = Sha384::digest(b"hello");
    let Signature::P384(sig) = b.sign_digest("seb-root", &digest).unwrap() else {
        panic!("not a P-384 signature")
    };
    let PublicKey::P384(key) = public else {
        panic!()
    };
    let verifying = p384::ecdsa::VerifyingKey::from(key);
    verifying.verify_prehash(&digest, &sig).unwrap();
    // The TPM returns either spelling of s; the backend publishes the low one only.
    for i in 0..32 {
        let digest = Sha384::digest(format!("low-s {i}"));
        let Signature::P384(sig) = b.sign_digest("seb-root", &digest).unwrap() else {
            panic!()
        };
        verifying.verify_prehash(&digest, &sig).unwrap();
        assert_eq!(
            sig.normalize_s(),
            sig,
            "a high-S signature left the backend"
        );
    }
    let p = b.protection("seb-root").unwrap();
    assert!(p.is_hardware_bound(), "{p:?}");
    assert!(matches!(
        b.generate("seb-root", KeyAlgorithm::EcP384),
        Err(BackendError::KeyExists { .. })
    ));
    assert!(matches!(
        b.sign_digest("seb-root", &[0u8; 32]),
        Err(BackendError::DigestLength { .. })
    ));
    assert!(matches!(
        b.sign_digest("nope", &digest),
        Err(BackendError::KeyNotFound { .. })
    ));
    // The blob on disk is useless elsewhere: another TPM refuses to load it.
    let other = Swtpm::start();
    let foreign = TpmBackend::open(&TpmSettings {
        tcti: other.tcti(),
        key_dir: tpm.dir.path().join("keys"),
    })
    .unwrap();
    assert!(foreign.sign_digest("seb-root", &digest).is_err());
}

#[test]
fn p256_keys_work_too() {
    let tpm = Swtpm::start();
    let b = backend(&tpm);
    let PublicKey::P256(key) = b.generate("t", KeyAlgorithm::EcP256).unwrap() else {
        panic!()
    };
    let digest = Sha256::digest(b"x");
    let Signature::P256(sig) = b.sign_digest("t", &digest).unwrap() else {
        panic!()
    };
    p256::ecdsa::VerifyingKey::from(key)
        .verify_prehash(&digest, &sig)
        .unwrap();
}

#[test]
fn unreachable_tpm_fails_closed_and_restarts_do_not_lock_out() {
    let mut tpm = Swtpm::start();
    let b = backend(&tpm);
    b.generate("k", KeyAlgorithm::EcP384).unwrap();
    let digest = Sha384::digest(b"d");
    // Power loss: no TPM2_Shutdown, several times (more than the DA threshold of 3).
    for _ in 0..4 {
        tpm.kill_uncleanly();
        let err = b.sign_digest("k", &digest).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(b.ping().is_err());
        tpm.start_again();
        b.sign_digest("k", &digest).unwrap();
    }
    // Orderly restart as well.
    tpm.restart();
    b.sign_digest("k", &digest).unwrap();
}

#[test]
fn opening_an_absent_tpm_is_an_unavailable_error() {
    let port = common::free_port();
    let err = TpmBackend::open(&TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        key_dir: std::env::temp_dir(),
    })
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}
