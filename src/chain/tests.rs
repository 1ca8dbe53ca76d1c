use std::time::Duration;

use der::oid::AssociatedOid;
use p256::elliptic_curve::Generate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};

use super::*;
use crate::authz::{decide, Decision, DenyCode, Request, RevocationView};
use crate::cert::Extension;
use crate::testkit::{forge, grant, now, payments_ops, renamed_under, resign, resign_p256, Ca};

struct NoneRevoked;
impl RevocationView for NoneRevoked {
    fn is_revoked(&self, _: &crate::serial::Serial) -> bool {
        false
    }
}

fn code(r: Result<ValidatedChain<'_>, ChainError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

/// The code of validating `leaf` now: `ok`, or the refusal's.
fn code_now(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
) -> &'static str {
    code(validate(leaf, intermediates, roots, now()))
}

fn deploy() -> String {
    grant("deploy.*", "prod/**", "60s")
}

fn request(operation: &str, resource: &str) -> Request {
    Request {
        operation: operation.into(),
        resource: resource.into(),
        params: serde_json::json!({}),
    }
}

fn decide_code(chain: &ValidatedChain<'_>, req: &Request, at: SystemTime) -> Option<DenyCode> {
    decide(
        &chain.chain_view(),
        &NoneRevoked,
        req,
        at,
        Duration::from_secs(300),
    )
    .deny_code()
}

fn standard<T: der::Encode + AssociatedOid>(ext: T, critical: bool) -> Extension {
    Extension {
        extn_id: T::OID,
        critical,
        extn_value: der::asn1::OctetString::new(ext.to_der().unwrap()).unwrap(),
    }
}

/// The path most tests start from: a root, an intermediate `a` under it (no grants of its
/// own), an agent granted [`deploy`] under `a`, and the root as the one trust anchor.
struct UnderA {
    root: Ca,
    a: Ca,
    leaf: Certificate,
    roots: [Certificate; 1],
}

fn under_a() -> UnderA {
    let root = Ca::root("root");
    let a = root.intermediate("a", None, None).unwrap();
    let leaf = a.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    UnderA {
        root,
        a,
        leaf,
        roots,
    }
}

/// `err` is the refusal of an issuer that is not a CA (`cA` false or no basicConstraints).
fn assert_not_a_ca(err: &ChainError) {
    assert!(matches!(err, ChainError::NotACa { .. }), "{err}");
    assert_eq!(err.code(), "not_a_ca");
}

#[test]
fn leaf_directly_under_the_root() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let chain = validate(&leaf, &[], &roots, now()).unwrap();
    assert_eq!(chain.path().len(), 2);
    assert!(chain.intermediates().is_empty());
    let view = chain.chain_view();
    assert!(view.ancestors.is_empty());
    assert!(matches!(view.leaf.grants, Some(Ok(_))));
    assert!(view.leaf.role.is_some());
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/a"), now()),
        None
    );
}

#[test]
fn path_is_built_through_shuffled_and_extra_intermediates() {
    let root = Ca::root("root");
    let a = root.intermediate("a", Some(&deploy()), None).unwrap();
    let b = a.intermediate("b", None, None).unwrap();
    let unrelated = Ca::root("other").intermediate("c", None, None).unwrap();
    let leaf = b
        .agent("agent", &grant("deploy.x", "prod/a", "30s"))
        .unwrap();
    let intermediates = [unrelated.cert.clone(), a.cert.clone(), b.cert.clone()];
    let roots = [Ca::root("unrelated root").cert, root.cert.clone()];
    let chain = validate(&leaf, &intermediates, &roots, now()).unwrap();
    let subjects: Vec<String> = chain.path().iter().map(|c| c.subject_string()).collect();
    assert_eq!(subjects, ["CN=agent", "CN=b", "CN=a", "CN=root"]);
    assert_eq!(chain.chain_view().ancestors.len(), 2);
    assert_eq!(chain.root(), &root.cert);
}

#[test]
fn a_root_not_in_the_trusted_set_is_unknown() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    // Same name, other key: the key identifiers differ, so it is not even a candidate.
    let other = [Ca::root("root").cert];
    assert_eq!(code_now(&leaf, &[], &other), "unknown_ca");
    let other = [Ca::root("someone else").cert];
    assert_eq!(code_now(&leaf, &[], &other), "unknown_ca");
    // Offering the real root as an intermediate does not make it trusted.
    let as_intermediate = [root.cert.clone()];
    assert_eq!(code_now(&leaf, &as_intermediate, &other), "unknown_ca");
}

#[test]
fn a_missing_intermediate_is_unknown_ca() {
    let UnderA { leaf, roots, .. } = under_a();
    let err = validate(&leaf, &[], &roots, now()).unwrap_err();
    assert_eq!(err.code(), "unknown_ca");
    assert!(err.to_string().contains("CN=a"), "{err}");
}

#[test]
fn a_self_signed_leaf_is_unknown_ca_and_a_root_is_no_leaf() {
    let rogue = Ca::root("agent");
    let root = Ca::root("root");
    let roots = [root.cert.clone()];
    assert_eq!(code_now(&rogue.cert, &[], &roots), "unknown_ca");
    assert_eq!(code_now(&root.cert, &[], &roots), "leaf_is_root");
}

#[test]
fn tampering_with_any_signed_byte_breaks_the_signature() {
    let root = Ca::root("root");
    let a = root.intermediate("a", Some(&deploy()), None).unwrap();
    let leaf = a
        .agent("agent", &grant("deploy.x", "prod/a", "30s"))
        .unwrap();
    let roots = [root.cert.clone()];

    let mut tampered = forge(&leaf);
    tampered.tbs.serial_number = x509_cert::serial_number::SerialNumber::new(&[1, 2, 3]).unwrap();
    let tampered = tampered.finish().unwrap();
    let intermediates = [a.cert.clone()];
    assert_eq!(code_now(&tampered, &intermediates, &roots), "bad_signature");

    // The intermediate's grants widened after signing.
    let mut widened = forge(&a.cert);
    widened.set_extension(
        crate::ca::grants_extension(&crate::testkit::grants(&grant("*", "**", "1h"))).unwrap(),
    );
    let intermediates = [widened.finish().unwrap()];
    assert_eq!(code_now(&leaf, &intermediates, &roots), "bad_signature");

    // A flipped bit in the signature itself.
    let mut flipped = forge(&leaf);
    let mut raw = flipped.signature.raw_bytes().to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    flipped.signature = der::asn1::BitString::from_bytes(&raw).unwrap();
    let flipped = flipped.finish().unwrap();
    let intermediates = [a.cert.clone()];
    assert_eq!(code_now(&flipped, &intermediates, &roots), "bad_signature");
}

#[test]
fn a_leaf_whose_key_usage_forbids_signing_is_refused() {
    // RFC 5280 §4.2.1.3: an agent certificate an offline CA issued with cRLSign only may not
    // authenticate (TLS CertificateVerify) or sign approvals.
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    assert!(validate(&leaf, &[], &roots, now()).is_ok());
    let mut crl_only = forge(&leaf);
    crl_only.set_extension(standard(KeyUsage(KeyUsages::CRLSign.into()), true));
    let crl_only = resign(crl_only, &root.key);
    let err = validate(&crl_only, &[], &roots, now()).unwrap_err();
    assert!(matches!(err, ChainError::LeafCannotSign { .. }), "{err}");
    assert_eq!(err.code(), "leaf_key_usage");
    // Without a keyUsage at all, nothing restricts the key.
    let mut none = forge(&leaf);
    none.remove_extension(KeyUsage::OID);
    assert!(validate(&resign(none, &root.key), &[], &roots, now()).is_ok());
}

#[test]
fn an_end_entity_cannot_act_as_a_ca() {
    let root = Ca::root("root");
    let (agent_key, agent) = root.agent_with_key("agent", &deploy());
    // A certificate "issued" by the agent: its name as issuer, signed with its key.
    let forged = renamed_under(&root.agent("victim", &deploy()).unwrap(), &agent);
    let forged = resign(forged, &agent_key);
    let roots = [root.cert.clone()];
    let intermediates = [agent];
    let err = validate(&forged, &intermediates, &roots, now()).unwrap_err();
    assert_eq!(err.code(), "not_a_ca", "{err}");
}

#[test]
fn an_issuer_without_key_cert_sign_is_not_a_ca() {
    let root = Ca::root("root");
    let a = root.intermediate("a", None, None).unwrap();
    let leaf = a.agent("agent", &deploy()).unwrap();
    let mut no_sign = forge(&a.cert);
    no_sign.set_extension(standard(KeyUsage(KeyUsages::CRLSign.into()), true));
    let no_sign = resign(no_sign, &root.key);
    let roots = [root.cert.clone()];
    let intermediates = [no_sign];
    let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
    assert!(matches!(err, ChainError::NoKeyCertSign { .. }), "{err}");
    assert_eq!(err.code(), "issuer_lacks_key_cert_sign");

    // Without basicConstraints at all.
    let mut no_bc = forge(&a.cert);
    no_bc.remove_extension(BasicConstraints::OID);
    let intermediates = [resign(no_bc, &root.key)];
    let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
    assert_not_a_ca(&err);
}

/// `cert` with its basicConstraints and keyUsage replaced (`None`: removed), re-signed by
/// `signer`.
fn with_ca_flags(
    cert: &Certificate,
    bc: Option<BasicConstraints>,
    ku: Option<KeyUsage>,
    signer: &dyn crate::ca::CaSigner,
) -> Certificate {
    let mut cert = forge(cert);
    cert.remove_extension(BasicConstraints::OID);
    cert.remove_extension(KeyUsage::OID);
    if let Some(bc) = bc {
        cert.set_extension(standard(bc, true));
    }
    if let Some(ku) = ku {
        cert.set_extension(standard(ku, true));
    }
    resign(cert, signer)
}

fn not_a_ca() -> Option<BasicConstraints> {
    Some(BasicConstraints {
        ca: false,
        path_len_constraint: None,
    })
}

fn a_ca() -> Option<BasicConstraints> {
    Some(BasicConstraints {
        ca: true,
        path_len_constraint: None,
    })
}

#[test]
fn an_issuer_with_key_cert_sign_but_ca_false_is_not_a_ca() {
    // Every other test issuer that is not a CA also lacks keyCertSign, so the keyUsage check
    // would refuse it anyway; these issuers have keyCertSign and only `cA` is wrong.
    let UnderA {
        root,
        a,
        leaf,
        roots,
    } = under_a();
    assert_eq!(code_now(&leaf, std::slice::from_ref(&a.cert), &roots), "ok");

    // An intermediate re-issued with cA=false and keyCertSign (as a careless CA might).
    let intermediates = [with_ca_flags(
        &a.cert,
        not_a_ca(),
        Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)),
        &root.key,
    )];
    let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
    assert_not_a_ca(&err);
    assert!(err.to_string().contains("CN=a"), "{err}");

    // An agent certificate that somehow carries keyCertSign, signing a certificate.
    let (agent_key, agent) = root.agent_with_key("agent", &deploy());
    let agent = with_ca_flags(
        &agent,
        not_a_ca(),
        Some(KeyUsage(
            KeyUsages::DigitalSignature | KeyUsages::KeyCertSign,
        )),
        &root.key,
    );
    let forged = renamed_under(&root.agent("victim", &deploy()).unwrap(), &agent);
    let forged = resign(forged, &agent_key);
    let err = validate(&forged, &[agent], &roots, now()).unwrap_err();
    assert_not_a_ca(&err);

    // A trusted root is an issuer too.
    let bad_root = with_ca_flags(
        &root.cert,
        not_a_ca(),
        Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)),
        &root.key,
    );
    let direct = root.agent("direct", &deploy()).unwrap();
    let err = validate(&direct, &[], &[bad_root], now()).unwrap_err();
    assert_not_a_ca(&err);
}

#[test]
fn a_ca_without_key_cert_sign_has_its_own_code() {
    let UnderA {
        root,
        a,
        leaf,
        roots,
    } = under_a();
    for (what, ku) in [
        (
            "digitalSignature only",
            Some(KeyUsage(KeyUsages::DigitalSignature.into())),
        ),
        ("cRLSign only", Some(KeyUsage(KeyUsages::CRLSign.into()))),
        ("no keyUsage at all", None),
    ] {
        let intermediates = [with_ca_flags(&a.cert, a_ca(), ku, &root.key)];
        let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
        assert!(
            matches!(err, ChainError::NoKeyCertSign { .. }),
            "{what}: {err}"
        );
        assert_eq!(err.code(), "issuer_lacks_key_cert_sign", "{what}");
    }
    // Neither flag: the cA check comes first.
    let intermediates = [with_ca_flags(&a.cert, not_a_ca(), None, &root.key)];
    let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
    assert_not_a_ca(&err);
}

#[test]
fn the_two_ca_refusals_have_distinct_codes() {
    let names = || ("CN=issuer".to_owned(), "CN=subject".to_owned());
    let (issuer, subject) = names();
    let not_ca = ChainError::NotACa { issuer, subject };
    let (issuer, subject) = names();
    let no_sign = ChainError::NoKeyCertSign { issuer, subject };
    assert_eq!(not_ca.code(), "not_a_ca");
    assert_eq!(no_sign.code(), "issuer_lacks_key_cert_sign");
}

#[test]
fn path_len_constraint_is_honoured() {
    let root = Ca::root("root");
    let a = root.intermediate("a", None, Some(0)).unwrap();
    // The CA refuses an intermediate under a pathLen 0 CA ...
    let refused = a.intermediate("b", None, None).err().unwrap();
    assert!(
        refused.to_string().contains("pathLenConstraint"),
        "{refused}"
    );
    // ... so make one the way a careless offline CA would: lift a's constraint in the copy
    // used for the CA's checks, sign with a's key.
    let mut lifted = a.clone();
    let mut cert = forge(&lifted.cert);
    cert.set_extension(standard(
        BasicConstraints {
            ca: true,
            path_len_constraint: None,
        },
        true,
    ));
    lifted.chain[0] = cert.finish().unwrap();
    let b = lifted.intermediate("b", None, None).unwrap();
    let leaf = b.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let intermediates = [a.cert.clone(), b.cert.clone()];
    let err = validate(&leaf, &intermediates, &roots, now()).unwrap_err();
    assert_eq!(err.code(), "path_len_exceeded", "{err}");
    // A leaf directly under a (pathLen 0) is fine.
    let direct = a.agent("agent", &deploy()).unwrap();
    assert_eq!(code_now(&direct, &intermediates, &roots), "ok");
}

#[test]
fn path_length_is_bounded() {
    let root = Ca::root("root");
    let mut cas = vec![root.clone()];
    for i in 0..7 {
        let next = cas[i].intermediate(&format!("i{i}"), None, None).unwrap();
        cas.push(next);
    }
    let roots = [root.cert.clone()];
    let all: Vec<Certificate> = cas[1..].iter().map(|c| c.cert.clone()).collect();
    // root + 6 intermediates + leaf = 8: accepted.
    let leaf6 = cas[6].agent("agent", &deploy()).unwrap();
    assert_eq!(code_now(&leaf6, &all, &roots), "ok");
    // root + 7 intermediates + leaf = 9: refused.
    let leaf7 = cas[7].agent("agent", &deploy()).unwrap();
    assert_eq!(code_now(&leaf7, &all, &roots), "path_too_long");
}

#[test]
fn issuer_loops_terminate() {
    // Two CAs that certify each other, and no root among them.
    let root = Ca::root("root");
    let a = root.intermediate("a", None, None).unwrap();
    let b = a.intermediate("b", None, None).unwrap();
    let a_by_b = renamed_under(&a.cert, &b.cert);
    let a_by_b = resign(a_by_b, &b.key);
    let leaf = b.agent("agent", &deploy()).unwrap();
    let intermediates = [a_by_b, b.cert.clone()];
    let roots = [Ca::root("elsewhere").cert];
    assert_eq!(code_now(&leaf, &intermediates, &roots), "unknown_ca");
}

#[test]
fn input_sizes_are_bounded() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let many = vec![root.cert.clone(); MAX_INTERMEDIATES + 1];
    let roots = [root.cert.clone()];
    assert_eq!(code_now(&leaf, &many, &roots), "chain_too_large");
    let many_roots = vec![root.cert.clone(); MAX_ROOTS + 1];
    assert_eq!(code_now(&leaf, &[], &many_roots), "chain_too_large");
    let mut huge = forge(&leaf);
    huge.set_raw_extension(&[0x2a, 0x03], false, &vec![0u8; MAX_CERT_LEN]);
    let huge = huge.finish().unwrap();
    assert_eq!(code_now(&huge, &[], &roots), "chain_too_large");
}

#[test]
fn many_same_named_candidates_exhaust_the_budget_not_the_cpu() {
    // 32 intermediates with one name and different keys; the leaf's AKI is removed so key
    // identifiers cannot narrow the search.
    let root = Ca::root("root");
    let cas: Vec<Ca> = (0..MAX_INTERMEDIATES)
        .map(|_| root.intermediate("same", None, None).unwrap())
        .collect();
    let leaf = renamed_under(&root.agent("agent", &deploy()).unwrap(), &cas[0].cert);
    let leaf = resign(leaf, &crate::testkit::key()); // signed by none of them
    let intermediates: Vec<Certificate> = cas.iter().map(|c| c.cert.clone()).collect();
    let roots = [root.cert.clone()];
    assert_eq!(code_now(&leaf, &intermediates, &roots), "bad_signature");
}

#[test]
fn same_named_intermediates_are_told_apart() {
    let root = Ca::root("root");
    let old = root.intermediate("ops", None, None).unwrap();
    let new = root.intermediate("ops", None, None).unwrap();
    let leaf = new.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let intermediates = [old.cert.clone(), new.cert.clone()];
    let chain = validate(&leaf, &intermediates, &roots, now()).unwrap();
    assert_eq!(chain.intermediates()[0], &new.cert);
    // Without key identifiers, backtracking over signatures finds it too.
    let strip = |c: &Certificate, key: &dyn crate::ca::CaSigner| {
        let mut c = forge(c);
        c.remove_extension(x509_cert::ext::pkix::AuthorityKeyIdentifier::OID);
        c.remove_extension(x509_cert::ext::pkix::SubjectKeyIdentifier::OID);
        resign(c, key)
    };
    let leaf = strip(&leaf, &new.key);
    let intermediates = [strip(&old.cert, &root.key), strip(&new.cert, &root.key)];
    let chain = validate(&leaf, &intermediates, &roots, now()).unwrap();
    assert_eq!(chain.intermediates()[0], &intermediates[1]);
}

#[test]
fn unknown_critical_extensions_are_refused_known_ones_accepted() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let mut critical = forge(&leaf);
    // 1.2.3.4, critical.
    critical.set_raw_extension(&[0x2a, 0x03, 0x04], true, &[0x05, 0x00]);
    let critical = resign(critical, &root.key);
    let err = validate(&critical, &[], &roots, now()).unwrap_err();
    assert_eq!(err.code(), "unknown_critical_extension");
    assert!(err.to_string().contains("1.2.3.4"), "{err}");

    // sebGrants marked critical: understood.
    let mut grants_critical = forge(&leaf);
    let mut ext = leaf.extension(crate::cert::SEB_GRANTS_OID).unwrap().clone();
    ext.critical = true;
    grants_critical.set_extension(ext);
    let grants_critical = resign(grants_critical, &root.key);
    assert_eq!(code_now(&grants_critical, &[], &roots), "ok");
}

#[test]
fn algorithm_rules() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];

    let mut mismatch = forge(&leaf);
    mismatch.signature_algorithm.oid = ECDSA_SHA256;
    let mismatch = mismatch.finish().unwrap();
    assert_eq!(code_now(&mismatch, &[], &roots), "malformed_certificate");

    let mut rsa = forge(&leaf);
    let sha256_rsa = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    rsa.signature_algorithm.oid = sha256_rsa;
    rsa.tbs.signature.oid = sha256_rsa;
    let rsa = resign(rsa, &root.key);
    assert_eq!(code_now(&rsa, &[], &roots), "unsupported_algorithm");

    // A leaf whose own key is not ECDSA P-256/P-384 (RSA here), however well signed.
    let mut rsa_key = forge(&leaf);
    rsa_key.tbs.subject_public_key_info.algorithm.oid =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    rsa_key.tbs.subject_public_key_info.algorithm.parameters = Some(der::Any::null());
    let rsa_key = resign(rsa_key, &root.key);
    assert_eq!(code_now(&rsa_key, &[], &roots), "unsupported_algorithm");
}

#[test]
fn a_p256_offline_intermediate_signing_with_sha256_verifies() {
    let root = Ca::root("root");
    let p256_key = p256::ecdsa::SigningKey::try_generate().unwrap();
    // Certify a P-256 key as intermediate; the CA accepts any EC public key for it.
    let p256_spki = spki::SubjectPublicKeyInfoOwned::from_key(p256_key.verifying_key()).unwrap();
    let cert = crate::ca::issue_intermediate(
        &root.key,
        &root.chain,
        crate::ca::IntermediateRequest {
            public_key: p256_spki,
            subject: crate::ca::parse_subject("CN=offline").unwrap(),
            grants: None,
            roles: crate::grants::IssuableRoles::default(),
            path_len: Some(0),
            ttl: Duration::from_secs(86_400),
        },
        now(),
    )
    .unwrap();
    // Leaf signed by the P-256 key, ecdsa-with-SHA256.
    let leaf = renamed_under(&root.agent("agent", &deploy()).unwrap(), &cert);
    let leaf = resign_p256(leaf, &p256_key);
    let roots = [root.cert.clone()];
    let intermediates = [cert];
    assert_eq!(code_now(&leaf, &intermediates, &roots), "ok");
}

#[test]
fn validity_is_left_to_the_decision_except_for_the_root() {
    let root = Ca::root("root");
    let leaf = root
        .leaf_with(
            "agent",
            &crate::testkit::key(),
            &deploy(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let roots = [root.cert.clone()];
    let later = now() + Duration::from_secs(7200);
    let chain = validate(&leaf, &[], &roots, later).unwrap();
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/a"), later),
        Some(DenyCode::CertificateExpired)
    );
    let mut future = forge(&leaf);
    future.tbs.validity.not_before =
        x509_cert::time::Time::try_from(now() + Duration::from_secs(600)).unwrap();
    let future = resign(future, &root.key);
    let chain = validate(&future, &[], &roots, now()).unwrap();
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/a"), now()),
        Some(DenyCode::CertificateNotYetValid)
    );

    let after_root = now() + Duration::from_secs(11 * 365 * 86_400);
    let err = validate(&leaf, &[], &roots, after_root).unwrap_err();
    assert!(matches!(err, ChainError::RootExpired { .. }), "{err}");
    assert_eq!(err.code(), "certificate_expired");
    let before_root = now() - Duration::from_secs(86_400);
    assert_eq!(
        code(validate(&leaf, &[], &roots, before_root)),
        "certificate_not_yet_valid"
    );
}

#[test]
fn an_expired_or_not_yet_valid_intermediate_is_denied_by_the_decision() {
    // root → top → ops → agent. The path validates (validity is the decision's), and the
    // decision refuses on the dates of any intermediate, not just the leaf's.
    let root = Ca::root("root");
    let top = root.intermediate("top", None, None).unwrap();
    let ops = top.intermediate("ops", None, None).unwrap();
    let leaf = ops.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let req = request("deploy.x", "prod/a");
    let day = Duration::from_secs(86_400);
    let hour = Duration::from_secs(3600);
    let expired = (now() - 10 * day, now() - hour, DenyCode::CertificateExpired);
    let not_yet = (
        now() + hour,
        now() + 10 * day,
        DenyCode::CertificateNotYetValid,
    );
    // (which intermediate, its depth in the chain view), each expired and not yet valid.
    for (which, depth) in [(0, 2), (1, 1)] {
        for (not_before, not_after, expected) in [expired, not_yet] {
            let mut cas = [top.cert.clone(), ops.cert.clone()];
            let issuer_key = [&root.key, &top.key][which];
            cas[which] =
                crate::testkit::with_validity(&cas[which], not_before, not_after, issuer_key);
            let chain = validate(&leaf, &cas, &roots, now()).unwrap();
            assert_eq!(chain.intermediates().len(), 2);
            let decision = decide(
                &chain.chain_view(),
                &NoneRevoked,
                &req,
                now(),
                Duration::from_secs(300),
            );
            let Decision::Deny { code, reason } = &decision else {
                panic!("intermediate {which}: {decision:?}");
            };
            assert_eq!(*code, expected, "intermediate {which}: {reason}");
            assert!(
                reason.contains(&format!("depth {depth}")),
                "intermediate {which}: {reason}"
            );
        }
    }
    // Control: the unmodified chain is allowed.
    let intermediates = [top.cert.clone(), ops.cert.clone()];
    let chain = validate(&leaf, &intermediates, &roots, now()).unwrap();
    assert_eq!(decide_code(&chain, &req, now()), None);
}

#[test]
fn an_offline_intermediate_that_escalates_is_denied_by_the_decision() {
    let root = Ca::root("root");
    let ops = payments_ops(&root);
    // The CA itself refuses.
    let refused = ops
        .agent("agent", &grant("deploy.*", "prod/**", "60s"))
        .unwrap_err();
    assert!(
        matches!(refused, crate::ca::CaError::Escalation { .. }),
        "{refused}"
    );
    // Signed elsewhere with ops's key: the path is fine, the decision is not.
    let leaf = ops
        .unchecked()
        .agent("agent", &grant("deploy.*", "prod/**", "60s"))
        .unwrap();
    let roots = [root.cert.clone()];
    let intermediates = [ops.cert.clone()];
    let chain = validate(&leaf, &intermediates, &roots, now()).unwrap();
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/payments/api"), now()),
        Some(DenyCode::GrantChainEscalation)
    );
}

#[test]
fn a_grantless_intermediate_between_two_does_not_break_the_bound() {
    let root = Ca::root("root");
    let top = root
        .intermediate("top", Some(&grant("deploy.*", "prod/**", "60s")), None)
        .unwrap();
    let middle = top.intermediate("middle", None, None).unwrap();
    // The CA checks against every ancestor, not just the grantless issuer.
    let refused = middle
        .intermediate("bottom", Some(&grant("*", "**", "60s")), None)
        .err()
        .unwrap();
    assert!(refused.to_string().contains("CN=top"), "{refused}");
    let bottom = middle
        .intermediate("bottom", Some(&grant("deploy.x", "prod/**", "60s")), None)
        .unwrap();
    let fine = bottom
        .agent("agent", &grant("deploy.x", "prod/a", "30s"))
        .unwrap();
    // Signed elsewhere: a leaf within bottom's grants... but bottom's grants escalated too.
    let escalated_bottom = middle
        .unchecked()
        .intermediate("bottom", Some(&grant("db.*", "prod/**", "60s")), None)
        .unwrap();
    let sneaky = escalated_bottom
        .agent("agent", &grant("db.migrate", "prod/a", "30s"))
        .unwrap();
    let roots = [root.cert.clone()];
    let intermediates = [top.cert.clone(), middle.cert.clone(), bottom.cert.clone()];
    let chain = validate(&fine, &intermediates, &roots, now()).unwrap();
    assert_eq!(chain.chain_view().ancestors.len(), 3);
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/a"), now()),
        None
    );
    let intermediates = [
        top.cert.clone(),
        middle.cert.clone(),
        escalated_bottom.cert.clone(),
    ];
    let chain = validate(&sneaky, &intermediates, &roots, now()).unwrap();
    assert_eq!(
        decide_code(&chain, &request("db.migrate", "prod/a"), now()),
        Some(DenyCode::GrantChainEscalation)
    );
}

#[test]
fn malformed_grants_reach_the_decision_as_invalid() {
    let root = Ca::root("root");
    let mut leaf = forge(&root.agent("agent", &deploy()).unwrap());
    leaf.set_raw_extension(
        crate::cert::SEB_GRANTS_OID.as_bytes(),
        false,
        &[0x30, 0x03, 0x02],
    );
    let leaf = resign(leaf, &root.key);
    let roots = [root.cert.clone()];
    let chain = validate(&leaf, &[], &roots, now()).unwrap();
    assert!(matches!(chain.chain_view().leaf.grants, Some(Err(_))));
    assert_eq!(
        decide_code(&chain, &request("deploy.x", "prod/a"), now()),
        Some(DenyCode::InvalidGrantsExtension)
    );
}

#[test]
fn certificates_read_back_from_der_still_verify() {
    let root = Ca::root("root");
    let leaf = root.agent("agent", &deploy()).unwrap();
    let roots = [crate::testkit::reparse(&root.cert)];
    let reparsed = crate::testkit::reparse(&leaf);
    assert_eq!(code_now(&reparsed, &[], &roots), "ok");
}

#[test]
fn a_zero_negative_or_overlong_serial_is_refused_anywhere_on_the_path() {
    // RFC 5280 forbids all three; seb's canonical serial is the positive integer, so a
    // negative one (80 ...) could not be told apart from the positive serial with the same
    // bytes, and a revocation could miss it. Twenty octets with the top bit set are 21 as a
    // DER INTEGER: no CRL can list such a serial, so `seb cert revoke` could not stop it.
    use der::Decode;
    let root = Ca::root("root");
    let ca = root.intermediate("ca", None, None).unwrap();
    let leaf = ca.agent("agent", &deploy()).unwrap();
    let roots = [root.cert.clone()];
    let good = validate(&leaf, std::slice::from_ref(&ca.cert), &roots, now()).unwrap();
    assert_eq!(good.serials()[0], crate::serial::Serial::of(&leaf).unwrap());
    assert_eq!(good.serials().len(), 3, "leaf, intermediate, root");
    let overlong: Vec<u8> = [&[0x02, 21, 0x00][..], &[0xff; 20][..]].concat();
    let cases: [&[u8]; 4] = [
        &[0x02, 0x01, 0x80],
        &[0x02, 0x01, 0x00],
        &[0x02, 0x01, 0xff],
        &overlong,
    ];
    for der in cases {
        let serial = x509_cert::serial_number::SerialNumber::from_der(der).unwrap();
        let mut bad_leaf = forge(&leaf);
        bad_leaf.tbs.serial_number = serial.clone();
        let bad_leaf = resign(bad_leaf, &ca.key);
        assert_eq!(
            code_now(&bad_leaf, std::slice::from_ref(&ca.cert), &roots),
            "malformed_certificate",
            "leaf serial {der:02x?}"
        );
        let mut bad_ca = forge(&ca.cert);
        bad_ca.tbs.serial_number = serial;
        let bad_ca = resign(bad_ca, &root.key);
        assert_eq!(
            code_now(&leaf, &[bad_ca], &roots),
            "malformed_certificate",
            "intermediate serial {der:02x?}"
        );
    }
}

#[test]
fn require_purpose_accepts_exactly_the_purpose_asked_for() {
    use crate::ca::CertKind;
    use crate::cert::Purpose;
    let root = Ca::root("root");
    let key = crate::testkit::key();
    let service = |issuer: &Ca, purpose: Purpose| {
        crate::ca::issue_service(
            &issuer.key,
            &issuer.cert,
            crate::testkit::spki(&key),
            &crate::ca::parse_subject(&format!("CN={purpose}")).unwrap(),
            CertKind::Signing(purpose),
            Duration::from_secs(86_400),
            now(),
        )
        .unwrap()
    };
    let roots = [root.cert.clone()];
    for purpose in Purpose::ALL {
        let cert = service(&root, purpose);
        for asked in Purpose::ALL {
            let got = require_purpose(&cert, asked).map_err(|e| e.code());
            let path = validate(&cert, &[], &roots, now()).unwrap();
            assert_eq!(path.require_service(asked).map_err(|e| e.code()), got);
            if asked == purpose {
                assert_eq!(got, Ok(()), "{purpose}");
            } else {
                assert_eq!(got, Err("wrong_key_purpose"), "{purpose} asked as {asked}");
            }
        }
    }
    // An agent's certificate is no broker key certificate, whatever it is asked for.
    let agent = root.agent("agent", &deploy()).unwrap();
    let err = require_purpose(&agent, Purpose::Audit).unwrap_err();
    assert_eq!(err.code(), "not_a_key_certificate", "{err}");
    // A CA neither.
    let ops = root.intermediate("ops", None, None).unwrap();
    let err = require_purpose(&ops.cert, Purpose::Audit).unwrap_err();
    assert_eq!(err.code(), "not_a_key_certificate", "{err}");
    // The audit purpose from an intermediate: the purpose is right, the issuer is not.
    let by_ops = service(&ops, Purpose::Audit);
    assert_eq!(require_purpose(&by_ops, Purpose::Audit), Ok(()));
    let intermediates = [ops.cert.clone()];
    let path = validate(&by_ops, &intermediates, &roots, now()).unwrap();
    let err = path.require_service(Purpose::Audit).unwrap_err();
    assert_eq!(err.code(), "not_issued_by_root", "{err}");
}
