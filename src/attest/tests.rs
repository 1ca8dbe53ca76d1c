//! Known-answer and negative vectors for quote verification, with quotes built and signed in
//! software (the TPM-backed end-to-end tests live in tests/attestation.rs).

use std::time::Duration;

use signature::hazmat::PrehashSigner;

use super::tpm_types::{encode_quote, encode_signature, EcdsaSignature, QuoteInfo};
use super::*;
use crate::ca::{self, CertKind};
use crate::cert::Certificate;
use crate::testkit::{now, Ca};

struct Fixture {
    root: Ca,
    ak: p384::ecdsa::SigningKey,
    ak_pem: String,
    /// The broker's TLS server certificate (DER), which its quotes are bound to.
    tls: Vec<u8>,
    log: EventLog,
    pcrs: BTreeMap<u8, Vec<u8>>,
    policy: AttestPolicy,
}

const NONCE: &[u8] = b"0123456789abcdef";

fn event(pcr: u8, data: &str) -> Event {
    Event {
        pcr,
        digest: hex::encode(Sha256::digest(data.as_bytes())),
        kind: "EV_POST_CODE".into(),
        data: data.into(),
    }
}

/// The AK certificate's profile for a TPM without an EK certificate.
const AK_UNBOUND: CertKind = CertKind::AttestationKey {
    ek_certificate_sha256: None,
};

/// One hour: the lifetime of the AK certificates that tests forge under other issuers.
const HOUR: Duration = Duration::from_secs(3600);

fn ak_cert(root: &Ca, ak: &p384::ecdsa::SigningKey, kind: CertKind) -> String {
    let day = Duration::from_secs(86_400);
    ak_certificate_by(&root.key, &root.cert, ak, kind, day)
        .to_pem_string()
        .unwrap()
}

/// A certificate of profile `kind` (`CN=b1 attestation key`) for `ak`, issued by whoever holds
/// `signer` and `issuer`: the root, an intermediate, or an agent posing as a CA.
fn ak_certificate_by(
    signer: &dyn ca::CaSigner,
    issuer: &Certificate,
    ak: &p384::ecdsa::SigningKey,
    kind: CertKind,
    ttl: Duration,
) -> Certificate {
    ca::issue_service(
        signer,
        issuer,
        crate::testkit::spki(ak),
        &ca::parse_subject("CN=b1 attestation key,O=seb").unwrap(),
        kind,
        ttl,
        now(),
    )
    .unwrap()
}

/// A TLS server certificate for `subject` issued by `issuer`, DER.
fn tls_cert(issuer: &Ca, subject: &str) -> Vec<u8> {
    ca::issue_service(
        &issuer.key,
        &issuer.cert,
        crate::testkit::spki(&crate::testkit::key()),
        &ca::parse_subject(subject).unwrap(),
        CertKind::TlsServer {
            names: vec!["localhost".into()],
        },
        Duration::from_secs(86_400),
        now(),
    )
    .unwrap()
    .to_der_bytes()
    .unwrap()
}

fn fixture() -> Fixture {
    let root = Ca::root("seb root");
    let ak = crate::testkit::key();
    let ak_pem = ak_cert(&root, &ak, AK_UNBOUND);
    let tls = tls_cert(&root, "CN=b1 broker,O=seb");
    let log = EventLog {
        bank: PcrBank::Sha256,
        events: vec![
            event(0, "firmware"),
            event(7, "secure boot"),
            event(0, "sep"),
        ],
    };
    let pcrs: BTreeMap<u8, Vec<u8>> = [0u8, 7, 10]
        .iter()
        .map(|p| (*p, log.replay(*p).unwrap()))
        .collect();
    let text = AttestPolicy::record_toml(PcrBank::Sha256, &pcrs, Some(&log), &[], "5m");
    let policy = AttestPolicy::parse(&text, std::path::Path::new(".")).unwrap();
    Fixture {
        root,
        ak,
        ak_pem,
        tls,
        log,
        pcrs,
        policy,
    }
}

impl Fixture {
    /// A quote for `nonce`, bound to the broker's TLS certificate as a broker binds it.
    fn info(&self, nonce: &[u8]) -> QuoteInfo {
        self.info_bound(nonce, &self.tls)
    }

    /// A quote for `nonce` bound to the TLS certificate `tls` (DER).
    fn info_bound(&self, nonce: &[u8], tls: &[u8]) -> QuoteInfo {
        let concatenated: Vec<u8> = self.pcrs.values().flatten().copied().collect();
        QuoteInfo {
            qualified_signer: vec![0, 0x0b, 1, 2, 3],
            extra_data: qualifying_data(nonce, tls),
            clock: 1000,
            reset_count: 1,
            restart_count: 0,
            safe: true,
            firmware_version: 7,
            selection: vec![(tpm_types::ALG_SHA256, vec![0, 7, 10])],
            pcr_digest: Sha384::digest(&concatenated).to_vec(),
        }
    }

    /// Evidence for `info` signed by `key`, claiming the broker's TLS certificate.
    fn evidence_for(&self, info: &QuoteInfo, key: &p384::ecdsa::SigningKey) -> Evidence {
        self.evidence_claiming(info, key, &self.tls)
    }

    /// Evidence for `info` signed by `key` whose `tls_certificate_sha256` names `tls`.
    fn evidence_claiming(
        &self,
        info: &QuoteInfo,
        key: &p384::ecdsa::SigningKey,
        tls: &[u8],
    ) -> Evidence {
        let attest = encode_quote(info);
        let sig: p384::ecdsa::Signature = key.sign_prehash(&Sha384::digest(&attest)).unwrap();
        let (r, s) = sig.split_bytes();
        let signature = encode_signature(&EcdsaSignature {
            hash: tpm_types::ALG_SHA384,
            r: r.to_vec(),
            s: s.to_vec(),
        });
        Evidence {
            nonce: hex::encode(NONCE),
            tls_certificate_sha256: hex::encode(Sha256::digest(tls)),
            quote: crate::base64url::encode(&attest),
            signature: crate::base64url::encode(&signature),
            pcr_bank: PcrBank::Sha256,
            pcrs: hex_pcrs(&self.pcrs),
            ak_chain: vec![self.ak_pem.clone()],
            ek_certificate: None,
            event_log: self.log.clone(),
            self_check: None,
        }
    }

    fn good(&self) -> Evidence {
        self.evidence_for(&self.info(NONCE), &self.ak)
    }

    /// Verifies `e` as evidence that came over a TLS session with the broker's certificate.
    fn verify(&self, e: &Evidence) -> Result<VerifiedQuote, QuoteError> {
        self.verify_over(e, &self.tls)
    }

    /// Verifies `e` as evidence that came over a TLS session with the certificate `session`.
    fn verify_over(&self, e: &Evidence, session: &[u8]) -> Result<VerifiedQuote, QuoteError> {
        verify_evidence(
            e,
            &QuoteCheck {
                nonce: NONCE,
                tls_certificate: session,
                roots: std::slice::from_ref(&self.root.cert),
                policy: &self.policy,
                now: now(),
            },
        )
    }
}

#[test]
fn good_quote_verifies() {
    let f = fixture();
    let v = f.verify(&f.good()).unwrap();
    assert_eq!(v.pcrs, f.pcrs);
    assert_eq!(v.info.extra_data, qualifying_data(NONCE, &f.tls));
    assert_eq!(v.broker_id, "b1");
}

#[test]
fn wrong_nonce_is_rejected() {
    let f = fixture();
    let e = f.evidence_for(&f.info(b"another nonce!!!"), &f.ak);
    assert_eq!(f.verify(&e).unwrap_err(), QuoteError::NonceMismatch);
}

#[test]
fn tampered_quote_body_is_rejected() {
    let f = fixture();
    let mut e = f.good();
    let mut attest = crate::base64url::decode(&e.quote).unwrap();
    let last = attest.len() - 1;
    attest[last] ^= 1; // a bit of the PCR digest
    e.quote = crate::base64url::encode(&attest);
    assert_eq!(f.verify(&e).unwrap_err(), QuoteError::BadSignature);
}

#[test]
fn tampered_pcr_values_are_rejected() {
    let f = fixture();
    let mut e = f.good();
    e.pcrs.insert(7, hex::encode([0u8; 32]));
    assert_eq!(f.verify(&e).unwrap_err(), QuoteError::PcrDigestMismatch);
}

/// The bank is the policy's (outside review: the evidence named its own, which only value
/// lengths kept from mattering).
#[test]
fn evidence_naming_another_bank_than_the_policy_is_rejected() {
    let f = fixture();
    let mut e = f.good();
    e.pcr_bank = PcrBank::Sha384;
    let err = f.verify(&e).unwrap_err();
    assert_eq!(err.code(), "pcr_selection_mismatch", "{err}");
    assert!(err.to_string().contains("sha384"), "{err}");
}

#[test]
fn event_log_that_does_not_replay_is_rejected() {
    let f = fixture();
    let mut e = f.good();
    e.event_log.events.push(event(7, "hidden"));
    let err = f.verify(&e).unwrap_err();
    assert!(
        matches!(err, QuoteError::EventLogMismatch { pcr: 7, .. }),
        "{err}"
    );
}

#[test]
fn pcr_value_differing_from_policy_is_rejected() {
    let mut f = fixture();
    // The host measured something extra into PCR 10, consistently in log and PCR.
    f.log.events.push(event(10, "tampered"));
    f.pcrs.insert(10, f.log.replay(10).unwrap());
    let err = f.verify(&f.good()).unwrap_err();
    assert!(
        matches!(err, QuoteError::PcrPolicy { pcr: 10, .. }),
        "{err}"
    );
    assert_eq!(err.code(), "pcr_policy_mismatch");
}

#[test]
fn ak_not_certified_by_our_root_is_rejected() {
    let f = fixture();
    let other = Ca::root("seb root");
    let mut e = f.good();
    e.ak_chain = vec![ak_cert(&other, &f.ak, AK_UNBOUND)];
    let err = f.verify(&e).unwrap_err();
    assert!(matches!(err, QuoteError::AkNotCertified { .. }), "{err}");
}

#[test]
fn certificate_without_the_ak_eku_is_rejected() {
    let f = fixture();
    let mut e = f.good();
    e.ak_chain = vec![ak_cert(
        &f.root,
        &f.ak,
        CertKind::Signing(crate::cert::Purpose::Token),
    )];
    let err = f.verify(&e).unwrap_err();
    assert!(err.to_string().contains("AIKCertificate"), "{err}");
}

#[test]
fn quote_signed_by_another_key_is_rejected() {
    let f = fixture();
    let other_tpm_ak = crate::testkit::key();
    let e = f.evidence_for(&f.info(NONCE), &other_tpm_ak);
    assert_eq!(f.verify(&e).unwrap_err(), QuoteError::BadSignature);
}

#[test]
fn selection_must_match_the_policy() {
    let f = fixture();
    let mut info = f.info(NONCE);
    info.selection = vec![(tpm_types::ALG_SHA256, vec![0, 7])];
    let err = f.verify(&f.evidence_for(&info, &f.ak)).unwrap_err();
    assert!(matches!(err, QuoteError::SelectionMismatch { .. }), "{err}");
}

#[test]
fn stale_self_check_is_rejected() {
    let f = fixture();
    let mut e = f.good();
    e.self_check = Some(SelfCheckReport {
        ok: true,
        checked_at: 0,
        last_good: Some(crate::time::unix(now()) - 3600),
        reason: None,
    });
    assert!(matches!(
        f.verify(&e).unwrap_err(),
        QuoteError::Stale { .. }
    ));
    // A broker that never passed one says so, with the same code (not an age of 2^64 s).
    e.self_check = Some(SelfCheckReport {
        ok: false,
        checked_at: 0,
        last_good: None,
        reason: None,
    });
    let err = f.verify(&e).unwrap_err();
    assert_eq!(err.code(), "stale_self_check");
    assert!(err.to_string().contains("not passed a self-check"), "{err}");
    // A recent good check, but the latest one failed (a TPM reset under the running broker,
    // a PCR changed): the broker refuses tokens, and the verifier does not say OK either.
    e.self_check = Some(SelfCheckReport {
        ok: false,
        checked_at: crate::time::unix(now()),
        last_good: Some(crate::time::unix(now()) - 10),
        reason: Some("the TPM was reset or restarted under the running broker".into()),
    });
    let err = f.verify(&e).unwrap_err();
    assert_eq!(err.code(), "self_check_failed");
    assert!(err.to_string().contains("TPM was reset"), "{err}");
    // Control: the same report with its latest check good.
    e.self_check = Some(SelfCheckReport {
        ok: true,
        checked_at: crate::time::unix(now()),
        last_good: Some(crate::time::unix(now()) - 10),
        reason: None,
    });
    f.verify(&e).unwrap();
}

#[test]
fn malformed_structures_are_errors_not_panics() {
    let f = fixture();
    let good = crate::base64url::decode(&f.good().quote).unwrap();
    for cut in 0..good.len() {
        assert!(tpm_types::parse_quote(&good[..cut]).is_err());
    }
    let mut long = good.clone();
    long.push(0);
    assert!(tpm_types::parse_quote(&long).is_err());
    let mut wrong_type = good;
    wrong_type[4] = 0x80;
    wrong_type[5] = 0x17;
    assert!(matches!(
        tpm_types::parse_quote(&wrong_type),
        Err(QuoteError::NotAQuote { .. })
    ));
}

#[test]
fn policy_schema_is_strict() {
    let base = std::path::Path::new(".");
    let ok = "version = 1\npcr_bank = \"sha256\"\npcrs = [0]\n[expected_pcrs]\n0 = \"00000000000000000000000000000000000000000000000000000000000000ff\"\n";
    AttestPolicy::parse(ok, base).unwrap();
    assert!(AttestPolicy::parse(&ok.replace("pcrs =", "pcr ="), base).is_err());
    assert!(AttestPolicy::parse(&ok.replace("[0]", "[0, 1]"), base)
        .unwrap_err()
        .to_string()
        .contains("PCR 1"));
    assert!(AttestPolicy::parse(&ok.replace("ff\"", "\""), base).is_err());
    assert!(AttestPolicy::parse(&ok.replace("version = 1", "version = 2"), base).is_err());
}

// ---------------------------------------------------------------------------------------
// The AK certificate's path (issue 20): the same path validation as every other chain, and
// the AK certified directly by the root.

fn pem(cert: &Certificate) -> String {
    cert.to_pem_string().unwrap()
}

fn verify_against(
    f: &Fixture,
    e: &Evidence,
    roots: &[Certificate],
) -> Result<VerifiedQuote, QuoteError> {
    verify_evidence(
        e,
        &QuoteCheck {
            nonce: NONCE,
            tls_certificate: &f.tls,
            roots,
            policy: &f.policy,
            now: now(),
        },
    )
}

/// The reason of an `AkNotCertified`, or a panic naming what came instead.
fn not_certified(r: Result<VerifiedQuote, QuoteError>) -> String {
    match r {
        Err(QuoteError::AkNotCertified { reason }) => reason,
        other => panic!("expected ak_not_certified, got {other:?}"),
    }
}

#[test]
fn an_ak_certificate_issued_by_an_agent_certificate_is_rejected() {
    // An agent holds an ordinary certificate under the root (cA=false, no keyCertSign) and
    // uses its key to certify a key of its choosing as "the broker's AK". The signatures all
    // verify and the chain ends at the root; only CA checks on the path refuse it.
    let f = fixture();
    let (agent_key, agent) = f.root.agent_with_key(
        "agent",
        &crate::testkit::grant("deploy.*", "prod/**", "60s"),
    );
    let forged = ak_certificate_by(&agent_key, &agent, &f.ak, AK_UNBOUND, HOUR);
    let mut e = f.good();
    e.ak_chain = vec![pem(&forged), pem(&agent)];
    let reason = not_certified(f.verify(&e));
    assert!(reason.contains("not_a_ca"), "{reason}");
    // Served as one PEM bundle, the same.
    e.ak_chain = vec![format!("{}{}", pem(&forged), pem(&agent))];
    let reason = not_certified(f.verify(&e));
    assert!(reason.contains("not_a_ca"), "{reason}");
}

#[test]
fn an_ak_certificate_must_be_issued_directly_by_the_root() {
    // Even a genuine intermediate CA does not certify AKs: enrolment has the root do it.
    let f = fixture();
    let ops = f.root.intermediate("ops", None, None).unwrap();
    let ak = ak_certificate_by(&ops.key, &ops.cert, &f.ak, AK_UNBOUND, HOUR);
    let mut e = f.good();
    e.ak_chain = vec![pem(&ak), pem(&ops.cert)];
    let reason = not_certified(f.verify(&e));
    assert!(reason.contains("directly"), "{reason}");
    assert!(reason.contains("CN=ops"), "{reason}");
}

#[test]
fn every_certificate_of_the_ak_path_must_be_valid_now() {
    let f = fixture();
    let ak: Certificate = Certificate::parse_pem_chain(f.ak_pem.as_bytes()).unwrap()[0].clone();
    let day = Duration::from_secs(86_400);
    let hour = Duration::from_secs(3600);
    let expired = (now() - 10 * day, now() - hour);
    let not_yet = (now() + hour, now() + 10 * day);
    let roots = std::slice::from_ref(&f.root.cert);

    // The AK certificate itself.
    for (from, to) in [expired, not_yet] {
        let dated = crate::testkit::with_validity(&ak, from, to, &f.root.key);
        let mut e = f.good();
        e.ak_chain = vec![pem(&dated)];
        let reason = not_certified(verify_against(&f, &e, roots));
        assert!(reason.contains("not valid"), "{reason}");
    }

    // The root above it.
    let reasons = [
        (expired, "certificate_expired"),
        (not_yet, "certificate_not_yet_valid"),
    ];
    for ((from, to), code) in reasons {
        let dated_root = crate::testkit::with_validity(&f.root.cert, from, to, &f.root.key);
        let reason = not_certified(verify_against(&f, &f.good(), &[dated_root]));
        assert!(reason.contains(code), "{reason}");
    }

    // An intermediate between them (refused on its dates, before the rule that the root
    // certifies AKs directly).
    let ops = f.root.intermediate("ops", None, None).unwrap();
    let under_ops = ak_certificate_by(&ops.key, &ops.cert, &f.ak, AK_UNBOUND, HOUR);
    for (from, to) in [expired, not_yet] {
        let dated_ops = crate::testkit::with_validity(&ops.cert, from, to, &f.root.key);
        let mut e = f.good();
        e.ak_chain = vec![pem(&under_ops), pem(&dated_ops)];
        let reason = not_certified(verify_against(&f, &e, roots));
        assert!(
            reason.contains("CN=ops") && reason.contains("not valid"),
            "{reason}"
        );
    }

    // Control: the fixture's own chain, at the same time, verifies.
    assert!(verify_against(&f, &f.good(), roots).is_ok());
}

// ---------------------------------------------------------------------------------------
// Resettable PCRs (issue 11, item 5): software can reset PCRs 16 and 23 (TPM2_PCR_Reset at
// locality 0) and re-extend whatever the policy expects, so a policy quoting them proves
// nothing. PCRs 17-22 (DRTM) are refused too; only 0-15 are accepted.

fn policy_quoting(pcr: u8) -> String {
    let zero = "00".repeat(32);
    format!(
        "version = 1\npcr_bank = \"sha256\"\npcrs = [0, {pcr}]\n[expected_pcrs]\n0 = \"{zero}\"\n{pcr} = \"{zero}\"\n"
    )
}

#[test]
fn a_policy_quoting_a_resettable_pcr_is_refused_naming_the_pcr_and_why() {
    let base = std::path::Path::new(".");
    for pcr in 16u8..=23 {
        let err = AttestPolicy::parse(&policy_quoting(pcr), base)
            .expect_err("a resettable PCR must be refused")
            .to_string();
        assert!(err.contains("resettable_pcr"), "PCR {pcr}: {err}");
        assert!(err.contains(&format!("PCR {pcr} ")), "PCR {pcr}: {err}");
        let why = if pcr == 16 || pcr == 23 {
            "locality 0"
        } else {
            "dynamic launch"
        };
        assert!(err.contains(why), "PCR {pcr}: {err}");
    }
    for pcr in 1u8..=15 {
        AttestPolicy::parse(&policy_quoting(pcr), base)
            .unwrap_or_else(|e| panic!("PCR {pcr} cannot be reset from software: {e}"));
    }
}

#[test]
fn verification_refuses_a_policy_with_a_resettable_pcr_built_in_code() {
    // The policy's fields are public: a library user can build one that parsing would refuse.
    // The verifier checks the selection itself, before anything else.
    let mut f = fixture();
    f.log.events.push(event(23, "broker image"));
    f.pcrs.insert(23, f.log.replay(23).unwrap());
    f.policy.pcrs.push(23);
    f.policy.expected_pcrs.insert(23, f.pcrs[&23].clone());
    let mut info = f.info(NONCE);
    info.selection = vec![(tpm_types::ALG_SHA256, f.pcrs.keys().copied().collect())];
    let err = f.verify(&f.evidence_for(&info, &f.ak)).unwrap_err();
    assert_eq!(err.code(), "resettable_pcr", "{err}");
    assert!(err.to_string().contains("PCR 23 "), "{err}");
}

// ---------------------------------------------------------------------------------------
// Binding to the broker whose TLS session served the evidence (issue 11, item 4).

#[test]
fn qualifying_data_is_sha256_of_the_nonce_and_the_tls_certificate_digest() {
    // Known answer, computed independently: python3 -c "import hashlib; print(hashlib.sha256(
    // b'0123456789abcdef' + hashlib.sha256(b'certificate').digest()).hexdigest())"
    assert_eq!(
        hex::encode(qualifying_data(b"0123456789abcdef", b"certificate")),
        "e50a6ed5ef16eb4c880ef534d4999e64d77a42837f3e84a3d748dfd67b3fd088"
    );
}

#[test]
fn evidence_relayed_over_another_tls_certificate_of_the_same_root_is_refused() {
    // A relay holds a genuine TLS certificate from the same root, even with the broker's own
    // name, asks the broker for evidence with the verifier's nonce and serves it as its own.
    let f = fixture();
    let relay = tls_cert(&f.root, "CN=b1 broker,O=seb");
    let relayed = f.good();
    let err = f.verify_over(&relayed, &relay).unwrap_err();
    assert_eq!(err.code(), "tls_binding_mismatch", "{err}");
    assert!(
        err.to_string()
            .contains(&hex::encode(Sha256::digest(&f.tls))),
        "{err}"
    );
    // Claiming the relay's certificate in the evidence changes nothing: the signed quote is
    // bound to the broker's.
    let claiming = f.evidence_claiming(&f.info(NONCE), &f.ak, &relay);
    assert_eq!(
        f.verify_over(&claiming, &relay).unwrap_err(),
        QuoteError::NonceMismatch
    );
    // Control: the same evidence over the broker's own session.
    f.verify_over(&relayed, &f.tls).unwrap();
}

#[test]
fn a_quote_by_one_brokers_tpm_served_over_another_brokers_tls_is_refused() {
    // Broker b2, certified by the same root, with its own TPM: whoever controls its TPM can
    // quote with any qualifying data, including one bound to b1's TLS certificate.
    let f = fixture();
    let b2_ak = crate::testkit::key();
    let b2_ak_pem = ca::issue_service(
        &f.root.key,
        &f.root.cert,
        crate::testkit::spki(&b2_ak),
        &ca::parse_subject("CN=b2 attestation key,O=seb").unwrap(),
        AK_UNBOUND,
        Duration::from_secs(86_400),
        now(),
    )
    .unwrap()
    .to_pem_string()
    .unwrap();
    let mut e = f.evidence_for(&f.info(NONCE), &b2_ak);
    e.ak_chain = vec![b2_ak_pem.clone()];
    let err = f.verify(&e).unwrap_err();
    assert_eq!(
        err,
        QuoteError::BrokerMismatch {
            ak_broker: "b2".into(),
            tls_broker: "b1".into()
        }
    );
    assert_eq!(err.code(), "broker_mismatch");

    // Control: b2's own evidence over b2's own TLS session verifies, and names b2.
    let b2_tls = tls_cert(&f.root, "CN=b2 broker,O=seb");
    let mut e = f.evidence_claiming(&f.info_bound(NONCE, &b2_tls), &b2_ak, &b2_tls);
    e.ak_chain = vec![b2_ak_pem];
    assert_eq!(f.verify_over(&e, &b2_tls).unwrap().broker_id, "b2");

    // A TLS certificate whose name is not `<broker> broker` names no broker.
    let odd = tls_cert(&f.root, "CN=b1,O=seb");
    let e = f.evidence_claiming(&f.info_bound(NONCE, &odd), &f.ak, &odd);
    assert_eq!(
        f.verify_over(&e, &odd).unwrap_err().code(),
        "broker_mismatch"
    );
}

#[test]
fn the_session_certificate_must_be_a_tls_certificate_issued_directly_by_the_aks_root() {
    let f = fixture();
    // Each bad certificate gets evidence really bound to it, so only this check refuses.
    let refused = |session: &[u8], roots: &[Certificate]| -> String {
        let e = f.evidence_claiming(&f.info_bound(NONCE, session), &f.ak, session);
        let r = verify_evidence(
            &e,
            &QuoteCheck {
                nonce: NONCE,
                tls_certificate: session,
                roots,
                policy: &f.policy,
                now: now(),
            },
        );
        match r {
            Err(QuoteError::TlsNotCertified { reason }) => reason,
            other => panic!("expected tls_not_certified, got {other:?}"),
        }
    };
    let ours = std::slice::from_ref(&f.root.cert);

    // Issued by an intermediate of our root (which may issue agents, not broker certificates).
    let ops = f.root.intermediate("ops", None, None).unwrap();
    let from_ops = tls_cert(&ops, "CN=b1 broker,O=seb");
    let reason = refused(&from_ops, ours);
    assert!(reason.contains("CN=ops"), "{reason}");

    // Issued by another root, trusted as well, than the one that certified the AK.
    let other = Ca::root("other root");
    let from_other = tls_cert(&other, "CN=b1 broker,O=seb");
    let both = [f.root.cert.clone(), other.cert.clone()];
    let reason = refused(&from_other, &both);
    assert!(reason.contains("other root"), "{reason}");
    // ... or by a root we do not trust at all.
    let reason = refused(&from_other, ours);
    assert!(!reason.is_empty());

    // An executor serving agents has serverAuth, and may be named like the broker: its
    // sebRole says whose it is.
    let executor = ca::issue_leaf_serving(
        &f.root.key,
        std::slice::from_ref(&f.root.cert),
        ca::LeafRequest {
            public_key: crate::testkit::spki(&crate::testkit::key()),
            subject: ca::parse_subject("CN=b1 broker,O=evil").unwrap(),
            role: crate::grants::Role::new(crate::grants::RoleKind::Executor, vec![]).unwrap(),
            grants: None,
            ttl: Duration::from_secs(86_400),
        },
        &["localhost".to_owned()],
        Duration::from_secs(86_400),
        now(),
    )
    .unwrap()
    .to_der_bytes()
    .unwrap();
    let reason = refused(&executor, ours);
    assert!(reason.contains("sebRole"), "{reason}");

    // A client certificate of our root is no TLS server certificate.
    let agent = f
        .root
        .agent("b1 broker", &crate::testkit::grant("x.y", "a/b", "60s"))
        .unwrap()
        .to_der_bytes()
        .unwrap();
    let reason = refused(&agent, ours);
    assert!(reason.contains("serverAuth"), "{reason}");

    // Expired or not yet valid.
    let tls = Certificate::parse(&f.tls).unwrap();
    let day = Duration::from_secs(86_400);
    for (from, to) in [
        (now() - 10 * day, now() - day),
        (now() + day, now() + 10 * day),
    ] {
        let dated = crate::testkit::with_validity(&tls, from, to, &f.root.key)
            .to_der_bytes()
            .unwrap();
        let reason = refused(&dated, ours);
        assert!(reason.contains("not valid"), "{reason}");
    }

    // Not a certificate.
    let reason = refused(b"not a certificate", ours);
    assert!(reason.contains("unparseable"), "{reason}");

    // Control.
    f.verify(&f.good()).unwrap();
}

/// A broker that pins EK CAs' verifiers is checked against the EK certificate its AK was
/// enrolled against: serving another TPM's EK certificate (from an accepted maker too) is
/// refused, and so is an AK certificate that names none.
#[test]
fn the_ek_certificate_served_must_be_the_one_the_ak_was_enrolled_against() {
    let mut f = fixture();
    let maker = Ca::root("tpm maker EK CA");
    let ek = |name: &str| {
        ca::issue_service(
            &maker.key,
            &maker.cert,
            crate::testkit::spki(&crate::testkit::key()),
            &ca::parse_subject(&format!("CN={name}")).unwrap(),
            AK_UNBOUND,
            Duration::from_secs(86_400),
            now(),
        )
        .unwrap()
    };
    let (ours, theirs) = (ek("tpm a"), ek("tpm b"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("maker.pem"),
        maker.cert.to_pem_string().unwrap(),
    )
    .unwrap();
    let text = AttestPolicy::record_toml(
        PcrBank::Sha256,
        &f.pcrs,
        Some(&f.log),
        &["maker.pem".to_string()],
        "5m",
    );
    f.policy = AttestPolicy::parse(&text, dir.path()).unwrap();
    let bound = CertKind::AttestationKey {
        ek_certificate_sha256: Some(super::ek_certificate_digest(&ours).unwrap()),
    };
    f.ak_pem = ak_cert(&f.root, &f.ak, bound);
    let serving = |f: &Fixture, ek: &Certificate| {
        let mut e = f.good();
        e.ek_certificate = Some(ek.to_pem_string().unwrap());
        e
    };
    f.verify(&serving(&f, &ours)).unwrap();
    let err = f.verify(&serving(&f, &theirs)).unwrap_err();
    assert_eq!(err.code(), "ek_not_accepted", "{err}");
    assert!(err.to_string().contains("not the one"), "{err}");
    // An AK certificate that names no EK certificate proves nothing about the one served.
    f.ak_pem = ak_cert(&f.root, &f.ak, AK_UNBOUND);
    let err = f.verify(&serving(&f, &ours)).unwrap_err();
    assert_eq!(err.code(), "ek_not_accepted", "{err}");
    assert!(err.to_string().contains("attest enroll"), "{err}");
    // The broker's own self-check compares the boot state without the EK pinning, so such an
    // AK certificate (enrolled by an older seb) does not stop issuance after an upgrade.
    f.policy = f.policy.without_ek_pinning();
    f.verify(&f.good()).unwrap();
}

#[test]
fn a_self_check_interval_not_shorter_than_max_age_is_refused() {
    use super::selfcheck::AttestationState;
    let s = Duration::from_secs;
    assert!(AttestationState::interval_problem(s(120), Some(s(60))).is_some());
    assert!(AttestationState::interval_problem(s(60), Some(s(60))).is_some());
    assert!(AttestationState::interval_problem(s(5), Some(s(60))).is_none());
    assert!(AttestationState::interval_problem(s(120), None).is_none());
}
