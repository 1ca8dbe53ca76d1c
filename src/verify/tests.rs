//! Known-answer and negative vectors for the verifier. Every fixture comes from [`Fixture::new`]
//! (a generator: fresh keys and certificates made by the real CA code, tokens made by
//! `token::mint`); nothing is a hand-edited file. Most cases must fail, each with its code.
//!
//! The token key here is a software P-384 (or P-256) key standing for `seb-token`: these are
//! unit tests of the verifier's pure logic. End-to-end tests with HSM-signed tokens live with
//! the broker.

use std::time::Duration;

use p256::elliptic_curve::Generate;
use serde_json::{json, Value};

use super::*;
use crate::ca::{self, CertKind};
use crate::cert::{Purpose, SEB_KP_AUDIT, SEB_KP_TOKEN};
use crate::testkit::{grant, now, spki, Ca};
use der::asn1::ObjectIdentifier;
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::ExtendedKeyUsage;

use crate::base64url::encode as b64;
use crate::token::{
    mint, AuthorizationDetail, Confirmation, DETAIL_TYPE, MAX_TOKEN_LEN, TOKEN_TYPE,
};

const NOW: u64 = 1_750_000_000;

enum TokenKey {
    P384(p384::ecdsa::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl TokenKey {
    /// Signs as the broker does: RustCrypto's P-256/P-384 signers return either spelling of
    /// `s`, and the broker publishes the low one.
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            TokenKey::P384(k) => {
                let sig: p384::ecdsa::Signature = signature::Signer::sign(k, input);
                sig.normalize_s().to_bytes().to_vec()
            }
            TokenKey::P256(k) => {
                let sig: p256::ecdsa::Signature = signature::Signer::sign(k, input);
                sig.normalize_s().to_bytes().to_vec()
            }
        }
    }
}

/// A root, its token certificate, two agents, and the trust bundle.
struct Fixture {
    root: Ca,
    key: TokenKey,
    token_cert: Certificate,
    agent: Certificate,
    other_agent: Certificate,
    trust: TrustStore,
}

impl Fixture {
    fn new() -> Self {
        Self::with_key(TokenKey::P384(crate::testkit::key()))
    }

    /// The same root and agents, with tokens signed by `key` under `cert` and checked against
    /// `trust`.
    fn signing_with(
        &self,
        key: &p384::ecdsa::SigningKey,
        cert: &Certificate,
        trust: TrustStore,
    ) -> Fixture {
        Fixture {
            key: TokenKey::P384(key.clone()),
            token_cert: cert.clone(),
            trust,
            root: self.root.clone(),
            agent: self.agent.clone(),
            other_agent: self.other_agent.clone(),
        }
    }

    fn p256() -> Self {
        Self::with_key(TokenKey::P256(
            p256::ecdsa::SigningKey::try_generate().unwrap(),
        ))
    }

    fn with_key(key: TokenKey) -> Self {
        let root = Ca::root("seb root");
        let public = match &key {
            TokenKey::P384(k) => spki(k),
            TokenKey::P256(k) => {
                spki::SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap()
            }
        };
        let token_cert = ca::issue_service(
            &root.key,
            &root.cert,
            public,
            &ca::parse_subject("CN=seb token signer,O=seb").unwrap(),
            CertKind::Signing(Purpose::Token),
            Duration::from_secs(30 * 86_400),
            now(),
        )
        .unwrap();
        let agent = root
            .agent("agent", &grant("deploy.*", "prod/**", "60s"))
            .unwrap();
        let other_agent = root
            .agent("other", &grant("deploy.*", "prod/**", "60s"))
            .unwrap();
        let trust =
            TrustStore::from_certificates(vec![root.cert.clone(), token_cert.clone()]).unwrap();
        Fixture {
            root,
            key,
            token_cert,
            agent,
            other_agent,
            trust,
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            TokenKey::P384(_) => "ES384",
            TokenKey::P256(_) => "ES256",
        }
    }

    fn header(&self) -> Header {
        Header {
            alg: self.alg().into(),
            typ: TOKEN_TYPE.into(),
            kid: b64(&self.token_cert.thumbprint_sha256().unwrap()),
        }
    }

    fn claims(&self) -> Claims {
        Claims {
            iss: "seb-test".into(),
            sub: self.agent.subject_string(),
            jti: b64(&[7; 16]),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 60,
            cnf: Confirmation {
                x5t_s256: b64(&self.agent.thumbprint_sha256().unwrap()),
            },
            params_digest: Some(b64(&crate::canonical::params_digest(&params()).unwrap())),
            authorization_details: vec![AuthorizationDetail {
                kind: DETAIL_TYPE.into(),
                operation: "deploy.rollout".into(),
                resource: "prod/payments/api".into(),
                params_digest: b64(&crate::canonical::params_digest(&params()).unwrap()),
                request_digest: b64(&crate::canonical::request_digest(
                    "deploy.rollout",
                    "prod/payments/api",
                    &params(),
                )
                .unwrap()),
                approvals: 0,
                approval_group: None,
            }],
            att: None,
            audit: None,
            epoch: 5,
            approvals: vec![],
        }
    }

    fn token(&self) -> String {
        self.mint(&self.header(), &self.claims())
    }

    fn mint(&self, header: &Header, claims: &Claims) -> String {
        mint(header, claims, |input: &[u8]| {
            Ok::<_, std::io::Error>(self.key.sign(input))
        })
        .unwrap()
    }

    /// A token over arbitrary header and claims JSON, properly signed.
    fn mint_json(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn header_json(&self) -> Value {
        serde_json::to_value(self.header()).unwrap()
    }

    fn claims_json(&self) -> Value {
        serde_json::to_value(self.claims()).unwrap()
    }

    fn action(&self) -> Action {
        Action::new("deploy.rollout", "prod/payments/api", as_params(&params()))
    }

    fn expect(&self) -> Expectations {
        Expectations::new(now(), self.action(), Binding::agent(self.agent.clone()))
            .issuer("seb-test")
            .min_epoch(5)
    }

    fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        verify_token(token, &self.trust, &self.expect())
    }

    fn code(&self, token: &str) -> &'static str {
        code(self.verify(token))
    }

    /// The code for a token of `claims` under the usual header.
    fn code_of(&self, claims: &Claims) -> &'static str {
        self.code(&self.mint(&self.header(), claims))
    }

    /// The code for a token of the claims JSON `claims` under the usual header.
    fn code_of_json(&self, claims: &Value) -> &'static str {
        self.code(&self.mint_json(&self.header_json(), claims))
    }

    /// The code for the signing input `input` (header and claims) with `signature` as the
    /// token's third part.
    fn code_signed(&self, input: &str, signature: &[u8]) -> &'static str {
        self.code(&format!("{input}.{}", b64(signature)))
    }
}

/// HMAC-SHA256 (RFC 2104), for the key-confusion vector.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn params() -> Value {
    json!({"replicas": 3, "image": "registry.internal/payments/api:1.2", "strategy": "canary"})
}

/// `value` as an executor would pass it: as text, parsed strictly.
fn as_params(value: &Value) -> Params {
    Params::parse(value.to_string().as_bytes()).unwrap()
}

fn code(r: Result<VerifiedToken, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------------------
// Known answers: tokens that must verify.

#[test]
fn a_good_es384_token_verifies_with_every_expectation() {
    let f = Fixture::new();
    let verified = f.verify(&f.token()).unwrap();
    assert_eq!(verified.claims, f.claims());
    assert_eq!(verified.header, f.header());
    assert_eq!(verified.signer, f.token_cert);
    // Without an issuer or a minimum epoch, and with the binding explicitly not checked.
    let unbound = Expectations::new(now(), f.action(), Binding::NotPresented);
    verify_token(&f.token(), &f.trust, &unbound).unwrap();
}

#[test]
fn signature_only_is_an_explicit_call_with_its_own_result() {
    let f = Fixture::new();
    let only = verify_signature_only(&f.token(), &f.trust, &TokenRules::at(now())).unwrap();
    assert_eq!(only.claims, f.claims());
    assert_eq!(only.signer, f.token_cert);
    // It checks everything the token says about itself...
    let mut longer = f.claims();
    longer.exp += 1;
    let good = f.token();
    let other = f.mint(&f.header(), &longer);
    let forged = format!(
        "{}.{}",
        other.rsplit_once('.').unwrap().0,
        good.rsplit_once('.').unwrap().1
    );
    assert!(verify_signature_only(&forged, &f.trust, &TokenRules::at(now())).is_err());
    assert_eq!(
        verify_signature_only(&f.token(), &f.trust, &TokenRules::at(at(NOW + 60)))
            .unwrap_err()
            .code(),
        "token_expired"
    );
    // ...and nothing about the action: a token for another operation passes it, and only it.
    let mut claims = f.claims();
    claims.authorization_details[0].operation = "db.drop".into();
    let other = f.mint(&f.header(), &claims);
    assert!(verify_signature_only(&other, &f.trust, &TokenRules::at(now())).is_ok());
    assert_eq!(f.code(&other), "wrong_operation");
}

#[test]
fn the_top_level_params_digest_must_agree_with_the_detail() {
    let f = Fixture::new();
    // Signed by the token key, but the two digests name different parameters.
    let mut claims = f.claims();
    claims.params_digest = Some(b64(&[9; 48]));
    assert_eq!(f.code(&f.mint(&f.header(), &claims)), "invalid_claims");
    // A token without it (an older broker's) still verifies; `null` is not "without it".
    claims.params_digest = None;
    assert_eq!(f.code(&f.mint(&f.header(), &claims)), "ok");
    let mut raw = serde_json::to_value(&claims).unwrap();
    raw["params_digest"] = serde_json::Value::Null;
    assert_eq!(
        f.code(&f.mint_json(&f.header_json(), &raw)),
        "invalid_claims"
    );
}

#[test]
fn a_good_es256_token_verifies_on_a_p256_key() {
    let f = Fixture::p256();
    assert_eq!(f.code(&f.token()), "ok");
}

#[test]
fn parameters_are_compared_by_canonical_digest() {
    let f = Fixture::new();
    let mut expect = f.expect();
    // Same values, other key order and number spelling: JCS gives the same digest.
    expect.action.params = Params::parse(
        br#"{"strategy":"canary","image":"registry.internal/payments/api:1.2","replicas":3.0}"#,
    )
    .unwrap();
    assert_eq!(code(verify_token(&f.token(), &f.trust, &expect)), "ok");
}

#[test]
fn parameters_are_parsed_as_strictly_as_the_broker_parses_them() {
    // A token for replicas = 3 must not verify against a document a first-key-wins executor
    // reads as replicas = 1000 (lenient JSON keeps the last duplicate and would match).
    let refused = [
        &br#"{"replicas":1000,"replicas":3,"image":"registry.internal/payments/api:1.2","strategy":"canary"}"#[..],
        br#"{"a":{"b":1,"b":1}}"#,
        br#"{"replicas": 9007199254740993}"#,
        br#"{"replicas": 1e400}"#,
        br#"[1, 2]"#,
        br#"{"a": 1} trailing"#,
        b"",
    ];
    for text in refused {
        let err = Params::parse(text).unwrap_err();
        assert_eq!(
            err.code(),
            "invalid_params",
            "{}",
            String::from_utf8_lossy(text)
        );
    }
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
    assert_eq!(
        Params::parse(deep.as_bytes()).unwrap_err().code(),
        "invalid_params"
    );
    // What was checked is what the executor gets back to act on.
    let p = as_params(&params());
    assert_eq!(p.value(), &params());
}

/// The other ECDSA spelling of a raw `r‖s` signature: `(r, n − s)`, which verifies as well.
fn other_spelling(raw: &[u8]) -> Vec<u8> {
    match raw.len() {
        96 => {
            let sig = p384::ecdsa::Signature::from_slice(raw).unwrap();
            let (r, s) = sig.split_scalars();
            let other =
                p384::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
            other.to_bytes().to_vec()
        }
        64 => {
            let sig = p256::ecdsa::Signature::from_slice(raw).unwrap();
            let (r, s) = sig.split_scalars();
            let other =
                p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
            other.to_bytes().to_vec()
        }
        n => panic!("{n}-byte signature"),
    }
}

#[test]
fn a_high_s_signature_is_refused() {
    // (r, n − s) is a second valid ECDSA signature over the same input: one token, two
    // spellings. The broker publishes only low-S signatures; the verifier (the broker's
    // redemption included) refuses the other spelling.
    for f in [Fixture::new(), Fixture::p256()] {
        let token = f.token();
        assert_eq!(f.code(&token), "ok");
        let (input, sig) = token.rsplit_once('.').unwrap();
        let twin = other_spelling(&crate::base64url::decode(sig).unwrap());
        let twin = format!("{input}.{}", b64(&twin));
        assert_ne!(twin, token);
        let err = f.verify(&twin).unwrap_err();
        assert_eq!(err.code(), "non_canonical_signature", "{}: {err}", f.alg());
        // A forged high-S signature is simply a bad signature.
        let mut forged = crate::base64url::decode(twin.rsplit_once('.').unwrap().1).unwrap();
        forged[3] ^= 0x01;
        assert_eq!(f.code_signed(input, &forged), "bad_signature");
    }
}

#[test]
fn a_token_certificate_under_an_intermediate_is_refused() {
    // Only the root certifies the broker's keys: an intermediate, whatever it was delegated,
    // cannot make a token key of its own.
    let f = Fixture::new();
    let ops = f.root.intermediate("signing ops", None, Some(0)).unwrap();
    let key = crate::testkit::key();
    let cert = token_cert_by(&ops, &key);
    let trust =
        TrustStore::from_certificates(vec![f.root.cert.clone(), ops.cert.clone(), cert.clone()])
            .unwrap();
    let g = f.signing_with(&key, &cert, trust);
    let refused = verify_token(&g.token(), &g.trust, &g.expect()).unwrap_err();
    assert_eq!(refused.code(), "not_issued_by_root", "{refused}");
    assert!(refused.to_string().contains("CN=signing ops"), "{refused}");
    // Without the intermediate in the bundle, the path is gone.
    let trust =
        TrustStore::from_certificates(vec![g.root.cert.clone(), g.token_cert.clone()]).unwrap();
    assert_eq!(
        code(verify_token(&g.token(), &trust, &g.expect())),
        "untrusted_token_certificate"
    );
}

/// The verifier's code for a token signed by `key` under `cert` (issued by the fixture's
/// root), with `cert` in the bundle.
fn code_signed_under(
    f: &Fixture,
    key: &p384::ecdsa::SigningKey,
    cert: &Certificate,
) -> &'static str {
    let trust = TrustStore::from_certificates(vec![f.root.cert.clone(), cert.clone()]).unwrap();
    let g = f.signing_with(key, cert, trust);
    code(verify_token(&g.token(), &g.trust, &g.expect()))
}

/// A token signing certificate (`CN=token 2`) for `key`, issued by `issuer` rather than by the
/// fixture's token certificate's root.
fn token_cert_by(issuer: &Ca, key: &p384::ecdsa::SigningKey) -> Certificate {
    ca::issue_service(
        &issuer.key,
        &issuer.cert,
        spki(key),
        &ca::parse_subject("CN=token 2").unwrap(),
        CertKind::Signing(Purpose::Token),
        Duration::from_secs(86_400),
        now(),
    )
    .unwrap()
}

/// A certificate for `key` by the fixture's root with the signing profile for `purpose`.
fn key_certificate(f: &Fixture, key: &p384::ecdsa::SigningKey, purpose: Purpose) -> Certificate {
    ca::issue_service(
        &f.root.key,
        &f.root.cert,
        spki(key),
        &ca::parse_subject(&format!("CN=seb {purpose},O=seb")).unwrap(),
        CertKind::Signing(purpose),
        Duration::from_secs(30 * 86_400),
        now(),
    )
    .unwrap()
}

/// `cert` with its extended key usage replaced by `usages` (none: removed), re-signed by the
/// fixture's root.
fn with_usages(
    f: &Fixture,
    cert: &Certificate,
    usages: Option<Vec<ObjectIdentifier>>,
) -> Certificate {
    use der::oid::AssociatedOid;
    use der::Encode;
    let mut forged = crate::testkit::forge(cert);
    forged.remove_extension(ExtendedKeyUsage::OID);
    if let Some(usages) = usages {
        forged.set_raw_extension(
            ExtendedKeyUsage::OID.as_bytes(),
            false,
            &ExtendedKeyUsage(usages).to_der().unwrap(),
        );
    }
    crate::testkit::resign(forged, &f.root.key)
}

#[test]
fn only_the_token_key_purpose_may_sign_tokens() {
    let f = Fixture::new();
    let key = crate::testkit::key();
    let token = key_certificate(&f, &key, Purpose::Token);
    assert_eq!(code_signed_under(&f, &key, &token), "ok");

    // The audit key's certificate (what `seb init` writes as audit.pem): a checkpoint
    // signature must never pass as a token.
    let audit = key_certificate(&f, &key, Purpose::Audit);
    assert_eq!(code_signed_under(&f, &key, &audit), "wrong_key_purpose");
    let receipt = key_certificate(&f, &key, Purpose::Receipt);
    assert_eq!(code_signed_under(&f, &key, &receipt), "wrong_key_purpose");

    let server_auth = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    let any = ObjectIdentifier::new_unwrap("2.5.29.37.0");
    for (what, usages) in [
        ("no extended key usage (the old signing profile)", None),
        ("token and audit", Some(vec![SEB_KP_TOKEN, SEB_KP_AUDIT])),
        ("audit and token", Some(vec![SEB_KP_AUDIT, SEB_KP_TOKEN])),
        (
            "token and serverAuth",
            Some(vec![SEB_KP_TOKEN, server_auth]),
        ),
        (
            "token and anyExtendedKeyUsage",
            Some(vec![SEB_KP_TOKEN, any]),
        ),
        ("serverAuth only", Some(vec![server_auth])),
        ("empty", Some(vec![])),
    ] {
        let cert = with_usages(&f, &token, usages);
        assert_eq!(
            code_signed_under(&f, &key, &cert),
            "wrong_key_purpose",
            "{what}"
        );
    }
    // The token purpose alone, re-signed: still fine (the forging above is not what refuses).
    let cert = with_usages(&f, &token, Some(vec![SEB_KP_TOKEN]));
    assert_eq!(code_signed_under(&f, &key, &cert), "ok");

    // A CA carrying the token purpose is no token certificate.
    let ops = f.root.intermediate("ops", None, None).unwrap();
    let ca_with_purpose = with_usages(&f, &ops.cert, Some(vec![SEB_KP_TOKEN]));
    assert_eq!(
        code_signed_under(&f, &ops.key, &ca_with_purpose),
        "not_a_token_certificate"
    );
}

#[test]
fn tampered_header_claims_or_signature_fail() {
    let f = Fixture::new();
    let token = f.token();
    let parts: Vec<&str> = token.split('.').collect();

    // Header re-encoded with another (still valid) kid spelling: signature no longer covers it.
    let mut header = f.header_json();
    header["typ"] = json!(TOKEN_TYPE);
    let reordered = b64(format!(
        "{{\"typ\":\"{TOKEN_TYPE}\",\"alg\":\"ES384\",\"kid\":{}}}",
        header["kid"]
    )
    .as_bytes());
    assert_eq!(
        f.code(&format!("{reordered}.{}.{}", parts[1], parts[2])),
        "bad_signature"
    );

    // Claims with another resource.
    let mut claims = f.claims();
    claims.authorization_details[0].resource = "prod/**".into();
    let forged = b64(&serde_json::to_vec(&claims).unwrap());
    assert_eq!(
        f.code(&format!("{}.{forged}.{}", parts[0], parts[2])),
        "bad_signature"
    );

    // Claims with a later expiry.
    let mut claims = f.claims();
    claims.exp += 3000;
    let forged = b64(&serde_json::to_vec(&claims).unwrap());
    assert_eq!(
        f.code(&format!("{}.{forged}.{}", parts[0], parts[2])),
        "bad_signature"
    );

    // One bit of the signature.
    let mut sig = crate::base64url::decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    assert_eq!(
        f.code(&format!("{}.{}.{}", parts[0], parts[1], b64(&sig))),
        "bad_signature"
    );

    // Another token's signature.
    let mut other = f.claims();
    other.jti = b64(&[8; 16]);
    let other = f.mint(&f.header(), &other);
    let other_sig = other.rsplit_once('.').unwrap().1;
    assert_eq!(
        f.code(&format!("{}.{}.{other_sig}", parts[0], parts[1])),
        "bad_signature"
    );
}

#[test]
fn signatures_must_be_raw_r_s_of_the_curves_size() {
    let f = Fixture::new();
    let token = f.token();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let raw = crate::base64url::decode(sig).unwrap();
    let sig = p384::ecdsa::Signature::from_slice(&raw).unwrap();
    let der = sig.to_der();
    assert_eq!(
        f.code_signed(input, der.as_bytes()),
        "bad_signature",
        "DER-encoded signature"
    );
    assert_eq!(f.code_signed(input, &raw[..95]), "bad_signature");
    let mut longer = raw.clone();
    longer.push(0);
    assert_eq!(f.code_signed(input, &longer), "bad_signature");
    assert_eq!(
        f.code_signed(input, &[0u8; 96]),
        "bad_signature",
        "r = s = 0"
    );
}

// ---------------------------------------------------------------------------------------
// Header and algorithm.

#[test]
fn alg_none_and_hmac_are_refused() {
    let f = Fixture::new();
    for alg in [
        "none", "None", "HS256", "HS384", "RS256", "PS384", "ES512", "EdDSA", "",
    ] {
        let mut header = f.header_json();
        header["alg"] = json!(alg);
        let token = f.mint_json(&header, &f.claims_json());
        assert_eq!(f.code(&token), "unsupported_algorithm", "{alg}");
    }
    // alg none with an empty signature part.
    let mut header = f.header_json();
    header["alg"] = json!("none");
    let unsigned = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(f.claims_json().to_string().as_bytes())
    );
    assert_eq!(f.code(&unsigned), "malformed_token");

    // HS256 "signed" with the token certificate's public key as the HMAC secret (the classic
    // key-confusion attack) is refused on alg alone.
    let mut header = f.header_json();
    header["alg"] = json!("HS256");
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(f.claims_json().to_string().as_bytes())
    );
    let secret = f
        .token_cert
        .tbs()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let tag = hmac_sha256(secret, input.as_bytes());
    assert_eq!(f.code_signed(&input, &tag), "unsupported_algorithm");
}

#[test]
fn alg_must_fit_the_key_curve() {
    let f = Fixture::new();
    let mut header = f.header();
    header.alg = "ES256".into();
    assert_eq!(
        f.code(&f.mint(&header, &f.claims())),
        "algorithm_key_mismatch"
    );
    let g = Fixture::p256();
    let mut header = g.header();
    header.alg = "ES384".into();
    assert_eq!(
        g.code(&g.mint(&header, &g.claims())),
        "algorithm_key_mismatch"
    );
}

#[test]
fn header_rules() {
    let f = Fixture::new();
    let mut header = f.header_json();
    header["typ"] = json!("JWT");
    assert_eq!(
        f.code(&f.mint_json(&header, &f.claims_json())),
        "wrong_token_type"
    );

    let mut header = f.header_json();
    header["jku"] = json!("https://attacker.example/keys");
    assert_eq!(
        f.code(&f.mint_json(&header, &f.claims_json())),
        "malformed_token"
    );

    let mut header = f.header_json();
    header["x5c"] = json!(["MIIB..."]);
    assert_eq!(
        f.code(&f.mint_json(&header, &f.claims_json())),
        "malformed_token"
    );

    let mut header = f.header_json();
    header.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        f.code(&f.mint_json(&header, &f.claims_json())),
        "malformed_token"
    );

    let duplicate = format!(
        "{{\"alg\":\"ES384\",\"alg\":\"none\",\"typ\":\"{TOKEN_TYPE}\",\"kid\":{}}}",
        f.header_json()["kid"]
    );
    let input = format!(
        "{}.{}",
        b64(duplicate.as_bytes()),
        b64(f.claims_json().to_string().as_bytes())
    );
    let sig = f.key.sign(input.as_bytes());
    assert_eq!(f.code_signed(&input, &sig), "malformed_token");

    // The members by position, as serde alone would take them: not a header.
    let positional = json!(["ES384", TOKEN_TYPE, f.header_json()["kid"]]).to_string();
    for not_json in ["[]", "null", "\"ES384\"", "{", positional.as_str()] {
        let input = format!(
            "{}.{}",
            b64(not_json.as_bytes()),
            b64(f.claims_json().to_string().as_bytes())
        );
        let sig = f.key.sign(input.as_bytes());
        assert_eq!(f.code_signed(&input, &sig), "malformed_token", "{not_json}");
    }
}

// ---------------------------------------------------------------------------------------
// The signing certificate.

#[test]
fn an_unknown_kid_is_refused() {
    let f = Fixture::new();
    let mut header = f.header();
    header.kid = b64(&[0; 32]);
    assert_eq!(f.code(&f.mint(&header, &f.claims())), "unknown_key");
    // The root's thumbprint: roots sign certificates, not tokens.
    header.kid = b64(&f.root.cert.thumbprint_sha256().unwrap());
    assert_eq!(f.code(&f.mint(&header, &f.claims())), "unknown_key");
    // A certificate the bundle does not hold at all (the agent's).
    header.kid = b64(&f.agent.thumbprint_sha256().unwrap());
    assert_eq!(f.code(&f.mint(&header, &f.claims())), "unknown_key");
}

#[test]
fn a_token_key_certified_by_another_root_is_untrusted() {
    let f = Fixture::new();
    let rogue = Fixture::new(); // its own root and token key
                                // The rogue token certificate is in the bundle, its root is not.
    let trust = TrustStore::from_certificates(vec![
        f.root.cert.clone(),
        f.token_cert.clone(),
        rogue.token_cert.clone(),
    ])
    .unwrap();
    let err = verify_token(&rogue.token(), &trust, &f.expect()).unwrap_err();
    assert_eq!(err.code(), "untrusted_token_certificate", "{err}");
    assert!(err.to_string().contains("unknown_ca"), "{err}");

    // A self-signed "token certificate" is a root of its own, never a token signer.
    let trust =
        TrustStore::from_certificates(vec![f.root.cert.clone(), rogue.root.cert.clone()]).unwrap();
    let mut header = rogue.header();
    header.kid = b64(&rogue.root.cert.thumbprint_sha256().unwrap());
    assert_eq!(
        code(verify_token(
            &rogue.mint(&header, &rogue.claims()),
            &trust,
            &f.expect()
        )),
        "unknown_key"
    );
}

#[test]
fn only_a_signing_certificate_may_sign_tokens() {
    let f = Fixture::new();
    // An agent's key and certificate (digitalSignature, clientAuth, sebRole): no.
    let (agent_key, agent) = f.root.agent_with_key("agent", &grant("*", "**", "60s"));
    let trust = TrustStore::from_certificates(vec![f.root.cert.clone(), agent.clone()]).unwrap();
    let g = Fixture::new().signing_with(&agent_key, &agent, trust);
    let trust = g.trust.clone();
    let mut header = g.header();
    header.kid = b64(&g.token_cert.thumbprint_sha256().unwrap());
    let token = g.mint(&header, &f.claims());
    assert_eq!(
        code(verify_token(&token, &trust, &f.expect())),
        "not_a_token_certificate"
    );

    // An intermediate CA's key: no.
    let ops = f.root.intermediate("ops", None, None).unwrap();
    let trust = TrustStore::from_certificates(vec![f.root.cert.clone(), ops.cert.clone()]).unwrap();
    let g = Fixture::new().signing_with(&ops.key, &ops.cert, trust.clone());
    assert_eq!(
        code(verify_token(
            &g.mint(&g.header(), &f.claims()),
            &trust,
            &f.expect()
        )),
        "not_a_token_certificate"
    );
}

#[test]
fn the_token_certificate_must_be_valid_now() {
    let f = Fixture::new();
    let token = f.token();
    let mut expect = f.expect();
    expect.rules.now = at(NOW + 31 * 86_400);
    assert_eq!(
        code(verify_token(&token, &f.trust, &expect)),
        "certificate_expired"
    );
    expect.rules.now = at(NOW - 3600);
    assert_eq!(
        code(verify_token(&token, &f.trust, &expect)),
        "certificate_not_yet_valid"
    );
}

/// A fixture whose token certificate sits under `root → upper → lower`, with the validity of
/// `upper` (`which = 0`) or `lower` (`which = 1`) replaced, while the token certificate stays
/// valid. Returns it with the replaced intermediate's subject.
fn under_intermediates(which: usize, not_before: u64, not_after: u64) -> (Fixture, String) {
    let f = Fixture::new();
    let upper = f.root.intermediate("signing upper", None, None).unwrap();
    let lower = upper.intermediate("signing lower", None, Some(0)).unwrap();
    let key = crate::testkit::key();
    let cert = token_cert_by(&lower, &key);
    let mut cas = [upper.cert.clone(), lower.cert.clone()];
    let issuer_key = [&f.root.key, &upper.key][which];
    cas[which] =
        crate::testkit::with_validity(&cas[which], at(not_before), at(not_after), issuer_key);
    let subject = cas[which].subject_string();
    let trust = TrustStore::from_certificates(vec![
        f.root.cert.clone(),
        cas[0].clone(),
        cas[1].clone(),
        cert.clone(),
    ])
    .unwrap();
    let g = f.signing_with(&key, &cert, trust);
    (g, subject)
}

#[test]
fn every_certificate_above_the_token_certificate_must_be_valid_now() {
    // Issue 20: checking the dates of the signing certificate alone passed every test. Since
    // issue 11 a token certificate under an intermediate is refused anyway, but the dates of
    // the whole path are checked first, and each refusal keeps its own code.
    for which in [0, 1] {
        // Control: the same construction with a validity around now passes the dates and is
        // refused only for its issuer.
        let (f, _) = under_intermediates(which, NOW - 86_400, NOW + 86_400);
        assert_eq!(
            f.code(&f.token()),
            "not_issued_by_root",
            "intermediate {which}"
        );

        let (f, subject) = under_intermediates(which, NOW - 10 * 86_400, NOW - 3600);
        let err = f.verify(&f.token()).unwrap_err();
        assert_eq!(err.code(), "certificate_expired", "intermediate {which}");
        assert!(
            matches!(&err, VerifyError::CertificateExpired { subject: s, .. } if *s == subject),
            "intermediate {which}: {err}"
        );

        let (f, subject) = under_intermediates(which, NOW + 3600, NOW + 10 * 86_400);
        let err = f.verify(&f.token()).unwrap_err();
        assert_eq!(
            err.code(),
            "certificate_not_yet_valid",
            "intermediate {which}"
        );
        assert!(
            matches!(&err, VerifyError::CertificateNotYetValid { subject: s, .. } if *s == subject),
            "intermediate {which}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Lifetime and epoch.

#[test]
fn lifetime_rules() {
    let f = Fixture::new();
    let token = f.token();
    let with_now = |secs: u64| {
        let mut e = f.expect();
        e.rules.now = at(secs);
        code(verify_token(&token, &f.trust, &e))
    };
    assert_eq!(with_now(NOW), "ok");
    assert_eq!(with_now(NOW + 59), "ok");
    assert_eq!(with_now(NOW + 60), "token_expired", "now == exp");
    assert_eq!(with_now(NOW + 3600), "token_expired");
    assert_eq!(with_now(NOW - 30), "ok", "within the leeway");
    assert_eq!(with_now(NOW - 31), "invalid_lifetime", "iat in the future");

    let mut claims = f.claims();
    claims.nbf = NOW + 31;
    claims.exp = NOW + 90;
    assert_eq!(f.code_of(&claims), "token_not_yet_valid");

    let mut claims = f.claims();
    claims.exp = claims.nbf;
    assert_eq!(f.code_of(&claims), "invalid_lifetime");

    let mut claims = f.claims();
    claims.exp = NOW + 3601;
    assert_eq!(f.code_of(&claims), "invalid_lifetime");

    let mut claims = f.claims();
    claims.iat = NOW + 120;
    assert_eq!(f.code_of(&claims), "invalid_lifetime");

    let mut claims = f.claims();
    claims.exp = u64::MAX;
    assert_eq!(f.code_of(&claims), "invalid_lifetime");
}

#[test]
fn an_old_epoch_is_refused() {
    let f = Fixture::new();
    let expect = f.expect().min_epoch(6);
    let err = verify_token(&f.token(), &f.trust, &expect).unwrap_err();
    assert_eq!(
        err,
        VerifyError::StaleEpoch {
            epoch: 5,
            min_epoch: 6
        }
    );
    assert_eq!(err.code(), "stale_epoch");
}

// ---------------------------------------------------------------------------------------
// Claims.

#[test]
fn claims_must_be_exactly_the_seb_claims() {
    let f = Fixture::new();
    let mut claims = f.claims_json();
    claims["admin"] = json!(true);
    assert_eq!(f.code_of_json(&claims), "invalid_claims");

    let mut claims = f.claims_json();
    claims["authorization_details"][0]["params"] = json!({"replicas": 99});
    assert_eq!(f.code_of_json(&claims), "invalid_claims");

    let mut claims = f.claims_json();
    claims["cnf"]["x5t"] = json!("abc");
    assert_eq!(f.code_of_json(&claims), "invalid_claims");

    for missing in ["exp", "epoch", "cnf", "jti"] {
        let mut claims = f.claims_json();
        claims.as_object_mut().unwrap().remove(missing);
        assert_eq!(f.code_of_json(&claims), "invalid_claims", "{missing}");
    }

    let mut claims = f.claims_json();
    claims["exp"] = json!("1750000060");
    assert_eq!(f.code_of_json(&claims), "invalid_claims");
    claims["exp"] = json!(-1);
    assert_eq!(f.code_of_json(&claims), "invalid_claims");
    claims["exp"] = json!(1.75e9);
    assert_eq!(f.code_of_json(&claims), "invalid_claims");
}

#[test]
fn exactly_one_seb_execution_detail() {
    let f = Fixture::new();
    let mut claims = f.claims();
    let detail = claims.authorization_details[0].clone();
    claims.authorization_details.push(AuthorizationDetail {
        operation: "db.drop".into(),
        ..detail.clone()
    });
    assert_eq!(f.code_of(&claims), "invalid_authorization_details");
    claims.authorization_details.clear();
    assert_eq!(f.code_of(&claims), "invalid_authorization_details");
    claims.authorization_details.push(AuthorizationDetail {
        kind: "payment_initiation".into(),
        ..detail
    });
    assert_eq!(f.code_of(&claims), "invalid_authorization_details");
}

// ---------------------------------------------------------------------------------------
// Expectations.

#[test]
fn the_token_must_be_for_this_operation_resource_and_parameters() {
    let f = Fixture::new();
    let token = f.token();
    let check = |edit: &dyn Fn(&mut Expectations)| {
        let mut e = f.expect();
        edit(&mut e);
        code(verify_token(&token, &f.trust, &e))
    };
    let replicas_30 = json!({"replicas": 30, "image": "registry.internal/payments/api:1.2", "strategy": "canary"});
    // A string is not an integer.
    let replicas_text = json!({"replicas": "3", "image": "registry.internal/payments/api:1.2", "strategy": "canary"});
    /// An edit of the expectations, and the code the token then gets.
    type Case<'a> = (&'a dyn Fn(&mut Expectations), &'a str);
    let cases: [Case<'_>; 7] = [
        (
            &|e| e.action.operation = "deploy.rollback".into(),
            "wrong_operation",
        ),
        (
            &|e| e.action.operation = "deploy.*".into(),
            "wrong_operation",
        ),
        (
            &|e| e.action.resource = "prod/payments/db".into(),
            "wrong_resource",
        ),
        (
            &|e| e.action.resource = "prod/payments/api/".into(),
            "wrong_resource",
        ),
        (
            &|e| e.action.params = as_params(&replicas_30),
            "wrong_params",
        ),
        (
            &|e| e.action.params = as_params(&replicas_text),
            "wrong_params",
        ),
        (&|e| e.issuer = Some("other-broker".into()), "wrong_issuer"),
    ];
    for (i, (edit, expected)) in cases.into_iter().enumerate() {
        assert_eq!(check(edit), expected, "case {i}");
    }

    let err = verify_token(
        &token,
        &f.trust,
        &Expectations::new(
            now(),
            Action::new("db.drop", "prod/payments/api", as_params(&params())),
            Binding::agent(f.agent.clone()),
        ),
    )
    .unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongOperation {
            expected: "db.drop".into(),
            token: "deploy.rollout".into()
        }
    );
}

#[test]
fn a_token_presented_with_another_agents_certificate_is_refused() {
    let f = Fixture::new();
    let expect = Expectations::new(now(), f.action(), Binding::agent(f.other_agent.clone()));
    let err = verify_token(&f.token(), &f.trust, &expect).unwrap_err();
    assert_eq!(err.code(), "wrong_certificate");
}

// ---------------------------------------------------------------------------------------
// Shape and size.

#[test]
fn shape_and_size() {
    let f = Fixture::new();
    let token = f.token();
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.{}", parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
        token.replace('-', "+").replace('_', "/")
            + if token.contains(['-', '_']) { "" } else { "!" },
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 1]
        ),
    ] {
        let c = f.code(&bad);
        assert!(
            c == "malformed_token" || c == "bad_signature",
            "{bad:?} gave {c}"
        );
    }
    let truncated = &token[..token.len() - 10];
    assert!(matches!(
        f.code(truncated),
        "malformed_token" | "bad_signature"
    ));
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(f.code(&huge), "token_too_large");
    // A valid token padded to the limit with a huge claim is refused on size, before parsing.
    let mut claims = f.claims();
    claims.sub = "x".repeat(MAX_TOKEN_LEN);
    assert_eq!(f.code_of(&claims), "token_too_large");
}

#[test]
fn non_canonical_base64_is_refused() {
    assert_eq!(strict_b64("x", "QQ").unwrap(), b"A");
    // "QR" carries the same byte with non-zero trailing bits: a second spelling.
    assert!(strict_b64("x", "QR").is_err());
    assert!(strict_b64("x", "QQ==").is_err());
    assert!(strict_b64("x", "Q").is_err());
    assert!(strict_b64("x", "").is_err());
    assert!(strict_b64("x", "a+b/").is_err(), "standard alphabet");
}

// ---------------------------------------------------------------------------------------
// Trust bundles.

#[test]
fn trust_bundles() {
    let f = Fixture::new();
    let pem = format!(
        "{}{}",
        f.root.cert.to_pem_string().unwrap(),
        f.token_cert.to_pem_string().unwrap()
    );
    let trust = TrustStore::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(trust.roots().len(), 1);
    assert_eq!(code(verify_token(&f.token(), &trust, &f.expect())), "ok");

    let code_of = |r: Result<TrustStore, VerifyError>| r.err().map(|e| e.code());
    assert_eq!(
        code_of(TrustStore::from_pem(b"no certificates")),
        Some("invalid_trust_bundle")
    );
    assert_eq!(
        code_of(TrustStore::from_pem(
            f.token_cert.to_pem_string().unwrap().as_bytes()
        )),
        Some("invalid_trust_bundle"),
        "no root"
    );
    let huge = vec![b' '; MAX_BUNDLE_LEN + 1];
    assert_eq!(
        code_of(TrustStore::from_pem(&huge)),
        Some("invalid_trust_bundle")
    );
    // A self-issued certificate whose self-signature does not verify.
    let mut forged = crate::testkit::forge(&f.root.cert);
    forged.tbs.serial_number = x509_cert::serial_number::SerialNumber::new(&[9]).unwrap();
    assert_eq!(
        code_of(TrustStore::from_certificates(vec![forged
            .finish()
            .unwrap()])),
        Some("invalid_trust_bundle")
    );
}

// ---- Approvals: the quorum checked offline. ----

/// An approver certificate under `ca` with its own key.
fn approver(ca: &Ca, cn: &str, groups: &[&str]) -> (Certificate, p384::ecdsa::SigningKey) {
    let key = crate::testkit::key();
    let cert = ca::issue_leaf_under(
        &ca.key,
        &ca.chain,
        ca::LeafRequest {
            public_key: spki(&key),
            subject: ca::parse_subject(&format!("CN={cn}")).unwrap(),
            role: crate::grants::Role::new(
                crate::grants::RoleKind::Approver,
                groups.iter().map(|g| g.to_string()).collect(),
            )
            .unwrap(),
            grants: None,
            ttl: Duration::from_secs(30 * 86_400),
        },
        Duration::from_secs(365 * 86_400),
        now(),
    )
    .unwrap();
    (cert, key)
}

/// `key` approves the request of `claims`.
fn approval_by(
    claims: &Claims,
    cert: &Certificate,
    key: &p384::ecdsa::SigningKey,
) -> crate::token::Approval {
    let message = crate::approval::message(
        crate::approval::Decision::Approve,
        &claims.authorization_details[0].request_digest,
        &claims.cnf.x5t_s256,
    );
    crate::token::Approval {
        x5t_s256: b64(&cert.thumbprint_sha256().unwrap()),
        sig: b64(&crate::approval::ApproverKey::P384(key.clone()).sign(&message)),
    }
}

struct Quorum {
    f: Fixture,
    alice: (Certificate, p384::ecdsa::SigningKey),
    bob: (Certificate, p384::ecdsa::SigningKey),
    dave: (Certificate, p384::ecdsa::SigningKey),
}

impl Quorum {
    fn new() -> Self {
        let f = Fixture::new();
        let alice = approver(&f.root, "alice", &["sre-leads"]);
        let bob = approver(&f.root, "bob", &["sre-leads", "dba"]);
        let dave = approver(&f.root, "dave", &["dba"]);
        Quorum {
            f,
            alice,
            bob,
            dave,
        }
    }

    /// Claims of a 2-of-sre-leads token approved by alice and bob.
    fn claims(&self) -> Claims {
        let mut c = self.f.claims();
        c.authorization_details[0].approvals = 2;
        c.authorization_details[0].approval_group = Some("sre-leads".into());
        c.approvals = vec![
            approval_by(&c, &self.alice.0, &self.alice.1),
            approval_by(&c, &self.bob.0, &self.bob.1),
        ];
        c
    }

    fn approvers(&self) -> Vec<Certificate> {
        vec![
            self.alice.0.clone(),
            self.bob.0.clone(),
            self.dave.0.clone(),
        ]
    }

    fn expect(&self) -> Expectations {
        self.f.expect().approvers(self.approvers())
    }

    fn code(&self, claims: &Claims) -> &'static str {
        self.code_with(claims, &self.expect())
    }

    fn code_with(&self, claims: &Claims, expect: &Expectations) -> &'static str {
        code(verify_token(
            &self.f.mint(&self.f.header(), claims),
            &self.f.trust,
            expect,
        ))
    }
}

#[test]
fn a_quorum_of_valid_approvals_verifies_offline() {
    let q = Quorum::new();
    assert_eq!(q.code(&q.claims()), "ok");
    // Without the approvers' certificates the quorum cannot be checked.
    assert_eq!(q.code_with(&q.claims(), &q.f.expect()), "unknown_approver");
}

#[test]
fn an_approver_certificate_outside_its_validity_at_issuance_does_not_count() {
    // chain::validate dates the root only: the approver's own dates are checked at the
    // token's `iat`, so an expired (or not yet valid) approver cannot make up a quorum.
    let q = Quorum::new();
    let day = Duration::from_secs(86_400);
    for (from, until, expected) in [
        (now() - 40 * day, now() - 10 * day, "certificate_expired"),
        (
            now() + 10 * day,
            now() + 40 * day,
            "certificate_not_yet_valid",
        ),
    ] {
        let (cert, key) = approver(&q.f.root, "late", &["sre-leads"]);
        let late = (
            crate::testkit::with_validity(&cert, from, until, &q.f.root.key),
            key,
        );
        let mut c = q.claims();
        c.approvals[1] = approval_by(&c, &late.0, &late.1);
        let mut approvers = q.approvers();
        approvers.push(late.0.clone());
        assert_eq!(
            q.code_with(&c, &q.f.expect().approvers(approvers)),
            expected
        );
    }
}

#[test]
fn an_intermediate_above_an_approver_outside_its_validity_at_issuance_does_not_count() {
    // The approver's whole path is dated at the token's `iat`, not only the approver: an
    // expired (or not yet valid) intermediate that may issue approvers makes up no quorum.
    let q = Quorum::new();
    let day = Duration::from_secs(86_400);
    let approving =
        q.f.root
            .intermediate_for("approving", None, None, "approver".parse().unwrap())
            .unwrap();
    let carol = approver(&approving, "carol", &["sre-leads"]);
    for (from, until, expected) in [
        (now() - day, now() + 40 * day, "ok"),
        (now() - 40 * day, now() - 10 * day, "certificate_expired"),
        (
            now() + 10 * day,
            now() + 40 * day,
            "certificate_not_yet_valid",
        ),
    ] {
        let dated = crate::testkit::with_validity(&approving.cert, from, until, &q.f.root.key);
        let mut c = q.claims();
        c.approvals[1] = approval_by(&c, &carol.0, &carol.1);
        let mut approvers = q.approvers();
        approvers.extend([carol.0.clone(), dated]);
        assert_eq!(
            q.code_with(&c, &q.f.expect().approvers(approvers)),
            expected
        );
    }
}

#[test]
fn removed_altered_or_misplaced_approvals_fail() {
    let q = Quorum::new();
    // Removed: fewer approvals than the token requires.
    let mut c = q.claims();
    c.approvals.pop();
    assert_eq!(q.code(&c), "approval_quorum_not_met");
    // The count lowered to none while approvals remain: refused too.
    let mut c = q.claims();
    c.authorization_details[0].approvals = 0;
    assert_eq!(q.code(&c), "invalid_approvals");
    // Altered signature (over another agent's request).
    let mut c = q.claims();
    let mut other = c.clone();
    other.cnf.x5t_s256 = b64(&q.f.other_agent.thumbprint_sha256().unwrap());
    c.approvals[0].sig = approval_by(&other, &q.alice.0, &q.alice.1).sig;
    assert_eq!(q.code(&c), "bad_approval_signature");
    // Altered signature (over another request digest).
    let mut c = q.claims();
    let mut other = c.clone();
    other.authorization_details[0].request_digest = b64(&[4; 48]);
    c.approvals[1].sig = approval_by(&other, &q.bob.0, &q.bob.1).sig;
    assert_eq!(q.code(&c), "bad_approval_signature");
    // Approvals given for another request of the same agent, carried into a token for this
    // action with that request's digest: every signature holds, but the digest is not this
    // action's (a broker host that can sign anything must not reuse old approvals).
    let mut c = q.claims();
    c.authorization_details[0].request_digest = b64(&[4; 48]);
    c.approvals = vec![
        approval_by(&c, &q.alice.0, &q.alice.1),
        approval_by(&c, &q.bob.0, &q.bob.1),
    ];
    assert_eq!(q.code(&c), "invalid_authorization_details");
    // A signature that is not base64url DER.
    let mut c = q.claims();
    c.approvals[0].sig = "not-a-signature".into();
    assert_eq!(q.code(&c), "bad_approval_signature");
    // Alice's signature under Bob's thumbprint.
    let mut c = q.claims();
    c.approvals[1].sig = c.approvals[0].sig.clone();
    assert_eq!(q.code(&c), "bad_approval_signature");
    // The same approver twice.
    let mut c = q.claims();
    c.approvals[1] = c.approvals[0].clone();
    assert_eq!(q.code(&c), "duplicate_approver");
    // Alice again under a second key, her name in capitals: the same person, as the broker
    // counts approvers (`cert::same_name`).
    let shouting = approver(&q.f.root, "ALICE", &["sre-leads"]);
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &shouting.0, &shouting.1);
    let mut approvers = q.approvers();
    approvers.push(shouting.0.clone());
    assert_eq!(
        q.code_with(&c, &q.f.expect().approvers(approvers)),
        "duplicate_approver"
    );
    // Alice's own key in a certificate under another name, its point compressed: one key
    // counts once however a certificate spells it.
    let compressed = ca::issue_leaf_under(
        &q.f.root.key,
        &q.f.root.chain,
        ca::LeafRequest {
            public_key: crate::testkit::compressed_spki(&q.alice.1),
            subject: ca::parse_subject("CN=alice-two").unwrap(),
            role: crate::grants::Role::new(
                crate::grants::RoleKind::Approver,
                vec!["sre-leads".to_owned()],
            )
            .unwrap(),
            grants: None,
            ttl: Duration::from_secs(86_400),
        },
        Duration::from_secs(365 * 86_400),
        now(),
    )
    .unwrap();
    assert_ne!(
        compressed.public_key_der().unwrap(),
        q.alice.0.public_key_der().unwrap(),
        "the test needs two spellings"
    );
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &compressed, &q.alice.1);
    let mut approvers = q.approvers();
    approvers.push(compressed.clone());
    assert_eq!(
        q.code_with(&c, &q.f.expect().approvers(approvers)),
        "duplicate_approver"
    );
    assert_eq!(
        compressed.spki_sha256().unwrap(),
        q.alice.0.spki_sha256().unwrap(),
        "the broker's key id names the key, not its spelling"
    );
    // An approver of another group.
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &q.dave.0, &q.dave.1);
    assert_eq!(q.code(&c), "wrong_approval_group");
    // A required count without a group.
    let mut c = q.claims();
    c.authorization_details[0].approval_group = None;
    assert_eq!(q.code(&c), "invalid_approvals");
}

#[test]
fn approvers_must_be_trusted_approvers_other_than_the_agent() {
    let q = Quorum::new();
    // An approver certificate from another root.
    let elsewhere = Ca::root("other root");
    let mallory = approver(&elsewhere, "mallory", &["sre-leads"]);
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &mallory.0, &mallory.1);
    let mut approvers = q.approvers();
    approvers.push(mallory.0.clone());
    let expect = q.f.expect().approvers(approvers);
    assert_eq!(q.code_with(&c, &expect), "untrusted_approver");

    // An agent certificate posing as an approver.
    let (agent_key, agent) =
        q.f.root
            .agent_with_key("posing", &grant("deploy.*", "prod/**", "60s"));
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &agent, &agent_key);
    let mut approvers = q.approvers();
    approvers.push(agent.clone());
    let expect = q.f.expect().approvers(approvers);
    assert_eq!(q.code_with(&c, &expect), "not_an_approver");

    // An approver certificate signed by an intermediate that may issue agents only: its role
    // counts for nothing, even with the intermediate in hand.
    let ops = q.f.root.intermediate("ops", None, None).unwrap();
    let rogue = approver(&ops.unchecked(), "rogue", &["sre-leads"]);
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &rogue.0, &rogue.1);
    let mut approvers = q.approvers();
    approvers.extend([rogue.0.clone(), ops.cert.clone()]);
    let expect = q.f.expect().approvers(approvers);
    assert_eq!(q.code_with(&c, &expect), "role_not_delegated");
    // Control: from an intermediate delegated approvers, the same counts.
    let approving =
        q.f.root
            .intermediate_for("approving", None, None, "approver".parse().unwrap())
            .unwrap();
    let carol = approver(&approving, "carol", &["sre-leads"]);
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &carol.0, &carol.1);
    let mut approvers = q.approvers();
    approvers.extend([carol.0.clone(), approving.cert.clone()]);
    let expect = q.f.expect().approvers(approvers);
    assert_eq!(q.code_with(&c, &expect), "ok");

    // The agent approving itself: an approver certificate with the agent's subject.
    let itself = approver(&q.f.root, "agent", &["sre-leads"]);
    let mut c = q.claims();
    c.approvals[1] = approval_by(&c, &itself.0, &itself.1);
    let mut approvers = q.approvers();
    approvers.push(itself.0.clone());
    let expect = q.f.expect().approvers(approvers);
    assert_eq!(q.code_with(&c, &expect), "self_approval");
}

#[test]
fn the_quorum_is_checked_against_the_agents_grant() {
    let q = Quorum::new();
    let grants = "[[grant]]\noperation = \"deploy.*\"\nresource = \"prod/**\"\nmax_ttl = \"60s\"\nparams_any = true\napproval = { required = 2, group = \"sre-leads\" }\n";
    let (_, agent) = q.f.root.agent_with_key("agent", grants);
    let expect = Expectations::new(now(), q.f.action(), Binding::agent(agent.clone()))
        .issuer("seb-test")
        .min_epoch(5)
        .approvers(q.approvers());
    let bind = |mut c: Claims| {
        c.cnf.x5t_s256 = b64(&agent.thumbprint_sha256().unwrap());
        let approvals = c.approvals.len();
        c.approvals = [&q.alice, &q.bob][..approvals]
            .iter()
            .map(|(cert, k)| approval_by(&c, cert, k))
            .collect();
        c
    };
    assert_eq!(q.code_with(&bind(q.claims()), &expect), "ok");
    // A token that says no approvals were needed, for a grant that needs two.
    let mut c = q.f.claims();
    c.cnf.x5t_s256 = b64(&agent.thumbprint_sha256().unwrap());
    assert_eq!(q.code_with(&c, &expect), "approval_quorum_not_met");
    // A token that names one approval where the grant needs two.
    let mut c = q.claims();
    c.authorization_details[0].approvals = 1;
    c.approvals.pop();
    assert_eq!(q.code_with(&bind(c), &expect), "approval_quorum_not_met");
}

// ---------------------------------------------------------------------------------------
// Clock edges (docs/RELIABILITY.md): one second inside each bound verifies, one second
// outside is refused, on both sides of every window.

/// A token valid from `nbf` (also its `iat`) for `lifetime` seconds, verified at `now`.
fn code_at(f: &Fixture, nbf: u64, lifetime: u64, iat: u64, now: u64) -> &'static str {
    let mut claims = f.claims();
    claims.nbf = nbf;
    claims.iat = iat;
    claims.exp = nbf + lifetime;
    let token = f.mint(&f.header(), &claims);
    let mut expect = f.expect();
    expect.rules.now = at(now);
    code(verify_token(&token, &f.trust, &expect))
}

#[test]
fn token_windows_hold_to_the_second_on_both_sides() {
    let f = Fixture::new();
    let skew = CLOCK_SKEW.as_secs();
    // exp: valid up to the second before it, refused at it and after.
    assert_eq!(code_at(&f, NOW, 60, NOW, NOW + 59), "ok");
    assert_eq!(code_at(&f, NOW, 60, NOW, NOW + 60), "token_expired");
    assert_eq!(code_at(&f, NOW, 60, NOW, NOW + 61), "token_expired");
    // nbf: a clock up to the skew behind the broker's is tolerated, one second more is not.
    assert_eq!(code_at(&f, NOW + skew, 60, NOW, NOW), "ok");
    assert_eq!(
        code_at(&f, NOW + skew + 1, 60, NOW, NOW),
        "token_not_yet_valid"
    );
    // iat: the same tolerance, no more.
    assert_eq!(code_at(&f, NOW, 60, NOW + skew, NOW), "ok");
    assert_eq!(
        code_at(&f, NOW, 60, NOW + skew + 1, NOW),
        "invalid_lifetime"
    );
    // Lifetime: exactly the cap verifies, a second more does not; exp must follow nbf.
    let cap = DEFAULT_MAX_LIFETIME.as_secs();
    assert_eq!(code_at(&f, NOW, cap, NOW, NOW), "ok");
    assert_eq!(code_at(&f, NOW, cap + 1, NOW, NOW), "invalid_lifetime");
    assert_eq!(code_at(&f, NOW, 0, NOW, NOW), "invalid_lifetime");
    assert_eq!(code_at(&f, NOW, 1, NOW, NOW), "ok");
}

#[test]
fn token_certificate_validity_holds_to_the_second_on_both_sides() {
    let f = Fixture::new();
    // Inside the root's own window, so only the token certificate's dates are at stake.
    let (not_before, not_after) = (NOW + 1000, NOW + 2000);
    let cert =
        crate::testkit::with_validity(&f.token_cert, at(not_before), at(not_after), &f.root.key);
    let trust = TrustStore::from_certificates(vec![f.root.cert.clone(), cert.clone()]).unwrap();
    let f = Fixture {
        token_cert: cert,
        trust,
        ..f
    };
    // A token valid around `t`, checked at `t`: only the certificate's dates decide.
    let at_time = |t: u64| {
        let mut claims = f.claims();
        claims.iat = t;
        claims.nbf = t;
        claims.exp = t + 60;
        let token = f.mint(&f.header(), &claims);
        match verify_signature_only(&token, &f.trust, &TokenRules::at(at(t))) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    };
    assert_eq!(at_time(not_before - 1), "certificate_not_yet_valid");
    assert_eq!(at_time(not_before), "ok");
    assert_eq!(at_time(not_after), "ok");
    assert_eq!(at_time(not_after + 1), "certificate_expired");
}

#[test]
fn root_validity_holds_to_the_second_on_both_sides() {
    let f = Fixture::new();
    let not_before = unix(f.root.cert.not_before());
    let not_after = unix(f.root.cert.not_after());
    let roots = [f.root.cert.clone()];
    let check = |t: u64| match crate::chain::validate(&f.agent, &[], &roots, at(t)) {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    assert_eq!(check(not_before - 1), "certificate_not_yet_valid");
    assert_eq!(check(not_before), "ok");
    assert_eq!(check(not_after), "ok");
    assert_eq!(check(not_after + 1), "certificate_expired");
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}
