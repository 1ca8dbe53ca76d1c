//! An execution token (compact JWS) as an executor verifies it, against a real trust store
//! (a root and a token signing certificate made at start-up with seb's own CA code, software
//! keys). Two modes, by the first byte: the rest of the input as the whole token string
//! (size, parts, base64url, signature form), or as header JSON and claims JSON (split at the
//! first 0x00) that are then properly signed with the token key, so the header rules, the
//! claims schema and every lifetime check are reached.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use seb::verify::{TokenRules, TrustStore};

/// When the fuzzed tokens are checked (the certificates are valid around it).
const NOW: u64 = 1_750_000_000;

struct Setup {
    trust: TrustStore,
    key: p384::ecdsa::SigningKey,
    kid: String,
}

fn setup() -> Option<Setup> {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - 3600);
    let root_key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).ok()?;
    let key = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).ok()?;
    let root = seb::ca::self_signed_root(
        &root_key,
        &seb::ca::parse_subject("CN=fuzz root").ok()?,
        Duration::from_secs(86_400),
        now,
    )
    .ok()?;
    let spki = spki::SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).ok()?;
    let cert = seb::ca::issue_service(
        &root_key,
        &root,
        spki,
        &seb::ca::parse_subject("CN=fuzz token signer").ok()?,
        seb::ca::CertKind::Signing(seb::cert::Purpose::Token),
        Duration::from_secs(86_400),
        now,
    )
    .ok()?;
    let kid = seb::base64url::encode(&cert.thumbprint_sha256().ok()?);
    let trust = TrustStore::from_certificates(vec![root, cert]).ok()?;
    Some(Setup { trust, key, kid })
}

fuzz_target!(|data: &[u8]| {
    static SETUP: OnceLock<Option<Setup>> = OnceLock::new();
    let Some(s) = SETUP.get_or_init(setup) else {
        panic!("fuzz setup failed");
    };
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let rules = TokenRules::at(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW));
    let token = if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        let (header, claims) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
            // No separator: a correct header, the input as the claims.
            None => (
                format!(
                    r#"{{"alg":"ES384","typ":"seb-exec+jwt","kid":"{}"}}"#,
                    s.kid
                )
                .into_bytes(),
                rest.to_vec(),
            ),
        };
        let input = format!(
            "{}.{}",
            seb::base64url::encode(&header),
            seb::base64url::encode(&claims)
        );
        use p384::ecdsa::signature::Signer;
        let sig: p384::ecdsa::Signature = s.key.sign(input.as_bytes());
        let sig = sig.normalize_s();
        format!("{input}.{}", seb::base64url::encode(&sig.to_bytes()))
    };
    let _ = seb::verify::verify_signature_only(&token, &s.trust, &rules);
});
