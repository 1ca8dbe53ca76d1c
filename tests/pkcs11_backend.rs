//! The PKCS#11 backend in-process against a real SoftHSM2 token: key attributes through the
//! trait, both pool sessions signing at once (low-S signatures only), and recovery after the
//! login is lost.
//!
//! One test in this binary: it sets the process's SOFTHSM2_CONF, which must not race with
//! another test in the same process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::Hsm;
use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
use seb::backend::{BackendError, KeyAlgorithm, KeyBackend, PublicKey, Signature};
use sha2::{Digest, Sha256, Sha384};
use signature::hazmat::PrehashVerifier;

fn open(hsm: &Hsm, sessions: usize) -> Pkcs11Backend {
    hsm.backend(sessions)
}

#[test]
fn backend_generates_signs_in_parallel_and_recovers() {
    let hsm = Hsm::provision();
    std::env::set_var("SOFTHSM2_CONF", hsm.softhsm_conf());

    // Wrong PIN and missing token are typed errors.
    let wrong = Pkcs11Backend::open(Pkcs11Settings {
        module: common::module().into(),
        token: TokenSelector {
            label: "seb".into(),
            serial: None,
        },
        pin: "not-the-pin".to_owned().into(),
        sessions: 1,
    });
    assert!(
        matches!(wrong, Err(BackendError::PinIncorrect)),
        "{wrong:?}"
    );
    let missing = Pkcs11Backend::open(Pkcs11Settings {
        module: common::module().into(),
        token: TokenSelector {
            label: "nope".into(),
            serial: None,
        },
        pin: hsm.user_pin().into(),
        sessions: 1,
    });
    assert!(
        matches!(missing, Err(BackendError::TokenNotFound { .. })),
        "{missing:?}"
    );

    let backend = Arc::new(open(&hsm, 2));
    let p384 = backend.generate("k384", KeyAlgorithm::EcP384).unwrap();
    let p256 = backend.generate("k256", KeyAlgorithm::EcP256).unwrap();
    assert!(matches!(
        backend.generate("k384", KeyAlgorithm::EcP384),
        Err(BackendError::KeyExists { .. })
    ));
    assert!(backend.contains("k384").unwrap());
    assert!(!backend.contains("absent").unwrap());
    assert!(matches!(
        backend.public_key("absent"),
        Err(BackendError::KeyNotFound { .. })
    ));
    assert_eq!(backend.public_key("k384").unwrap(), p384);
    for label in ["k384", "k256"] {
        let p = backend.protection(label).unwrap();
        assert!(p.is_hardware_bound(), "{label}: {p:?}");
    }
    // A digest of the wrong size is refused before the device sees it.
    assert!(matches!(
        backend.sign_digest("k384", &[0; 32]),
        Err(BackendError::DigestLength { .. })
    ));

    // Both pool sessions sign at once; every signature verifies under the public key.
    let PublicKey::P384(public) = p384 else {
        panic!()
    };
    let verifying = p384::ecdsa::VerifyingKey::from(public);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let backend = backend.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let digest = Sha384::digest(format!("{t}-{i}"));
                    let Signature::P384(sig) = backend.sign_digest("k384", &digest).unwrap() else {
                        panic!("P-384 key returned another signature type");
                    };
                    verifying.verify_prehash(&digest, &sig).unwrap();
                    // One spelling per signature: the device's s, if high, is replaced by n − s.
                    assert_eq!(
                        sig.normalize_s(),
                        sig,
                        "a high-S signature left the backend"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let PublicKey::P256(public) = p256 else {
        panic!()
    };
    for i in 0..64 {
        let digest = Sha256::digest(format!("p256-{i}"));
        let Signature::P256(sig) = backend.sign_digest("k256", &digest).unwrap() else {
            panic!()
        };
        p256::ecdsa::VerifyingKey::from(public)
            .verify_prehash(&digest, &sig)
            .unwrap();
        assert_eq!(
            sig.normalize_s(),
            sig,
            "a high-S signature left the backend"
        );
    }

    // The login disappears behind the backend's back (as after a token reset): the next
    // signature rebuilds the context and succeeds.
    backend.debug_logout().unwrap();
    let digest = Sha384::digest(b"after logout");
    let Signature::P384(sig) = backend.sign_digest("k384", &digest).unwrap() else {
        panic!()
    };
    verifying.verify_prehash(&digest, &sig).unwrap();
    backend.ping().unwrap();
}
