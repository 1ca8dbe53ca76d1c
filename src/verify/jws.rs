//! The one token verification core: JWS compact parsing, `alg`/`typ`, the signature, and the
//! claims every seb token must satisfy (lifetime with [`CLOCK_SKEW`](super::CLOCK_SKEW),
//! epoch, one authorization detail).
//!
//! Both the offline verifier ([`super::verify_token`]) and the broker's redemption run exactly
//! this code; each only decides which certificate may have signed (`signer_for`) and adds its
//! own checks afterwards. Nothing is returned from a token whose signature did not verify, and
//! the claims are not even parsed before it has.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256, Sha384};

use super::VerifyError;
use crate::base64url;
use crate::cert::Certificate;
use crate::chain::CertKey;
use crate::time::unix;
use crate::token::{Claims, Header, DETAIL_TYPE, MAX_TOKEN_LEN, TOKEN_TYPE};

/// What every token is held to, whoever verifies it.
#[derive(Clone, Debug)]
pub struct TokenRules {
    /// The time to verify at (the caller's clock; nothing here reads one).
    pub now: SystemTime,
    /// Clock skew tolerated on `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest `exp - nbf` accepted.
    pub max_lifetime: Duration,
    /// Tokens of an older policy epoch are refused.
    pub min_epoch: u64,
}

impl TokenRules {
    /// The rules at `now` with the defaults: leeway [`CLOCK_SKEW`](super::CLOCK_SKEW),
    /// lifetime cap [`DEFAULT_MAX_LIFETIME`](super::DEFAULT_MAX_LIFETIME), minimum epoch 0.
    pub fn at(now: SystemTime) -> Self {
        TokenRules {
            now,
            leeway: super::CLOCK_SKEW,
            max_lifetime: super::DEFAULT_MAX_LIFETIME,
            min_epoch: 0,
        }
    }
}

/// A token whose signature verified under `signer` and whose claims obey the [`TokenRules`].
#[derive(Clone, Debug)]
pub struct Decoded<'c> {
    /// The protected header.
    pub header: Header,
    /// The claims.
    pub claims: Claims,
    /// The certificate whose key signed the token.
    pub signer: &'c Certificate,
}

/// Verifies a compact JWS execution token. Checks, in order (the first failure is returned):
///
/// 1. size, three base64url parts (strict: no padding, canonical trailing bits);
/// 2. header: exactly `alg`, `typ`, `kid`; `alg` ES384 or ES256; `typ` `seb-exec+jwt`;
/// 3. `signer_for(header)` names the certificate whose key must have signed;
/// 4. `alg` fits the key's curve; the signature is a raw `r‖s` of the curve's size,
///    verifies over `header.claims`, and is low-S (`s ≤ n/2`);
/// 5. claims: exactly the seb claims; `nbf ≤ now + leeway`, `now < exp`, `nbf < exp`,
///    `iat ≤ now + leeway`, `iat ≤ exp`, `exp - nbf ≤ max_lifetime`; `epoch ≥ min_epoch`;
///    exactly one authorization detail, of type `seb_execution`.
pub fn decode_verified<'c>(
    token: &str,
    rules: &TokenRules,
    signer_for: impl FnOnce(&Header) -> Result<&'c Certificate, VerifyError>,
) -> Result<Decoded<'c>, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(malformed(
            "token",
            format!("{} dot-separated parts, expected 3", parts.len()),
        ));
    };
    let header_bytes = strict_b64("header", header_b64)?;
    let claims_bytes = strict_b64("claims", claims_b64)?;
    let signature = strict_b64("signature", signature_b64)?;

    // 2. Header. `alg` is looked at before anything else is trusted.
    // Duplicate members are refused (a parser that kept the first `alg` would read another).
    let header: Header = crate::json::parse_unambiguous(&header_bytes)
        .map_err(|e| e.to_string())
        .and_then(|value| crate::json::object_as(value, &[]))
        .map_err(|e| malformed("header", e))?;
    if header.alg != "ES384" && header.alg != "ES256" {
        return Err(VerifyError::UnsupportedAlgorithm { alg: header.alg });
    }
    if header.typ != TOKEN_TYPE {
        return Err(VerifyError::WrongType { typ: header.typ });
    }

    // 3. The signing certificate.
    let signer = signer_for(&header)?;

    // 4. Signature.
    let key = CertKey::of(signer).map_err(|_| VerifyError::NotATokenCertificate {
        subject: signer.subject_string(),
        reason: "its key is not EC P-256 or P-384",
    })?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    let verified = match (&key, header.alg.as_str()) {
        (CertKey::P384(_), "ES384") => {
            key.verify_prehash_raw(&Sha384::digest(signing_input), &signature)
        }
        (CertKey::P256(_), "ES256") => {
            key.verify_prehash_raw(&Sha256::digest(signing_input), &signature)
        }
        (CertKey::P384(_), _) => return Err(mismatch(&header, "P-384")),
        (CertKey::P256(_), _) => return Err(mismatch(&header, "P-256")),
    };
    if !verified {
        return Err(VerifyError::BadSignature);
    }
    // (r, n − s) verifies too. The broker publishes only the low-S spelling, so the other one
    // is a token nobody issued in that form: refused, and one token has one spelling.
    if !is_low_s(&key, &signature) {
        return Err(VerifyError::NonCanonicalSignature);
    }

    // 5. Claims, only now that they are known to come from the signer's key.
    let claims: Claims = crate::json::parse_unambiguous(&claims_bytes)
        .map_err(|e| e.to_string())
        .and_then(|value| crate::json::object_as(value, &[]))
        .map_err(|reason| VerifyError::InvalidClaims { reason })?;
    check_lifetime(&claims, rules)?;
    if claims.epoch < rules.min_epoch {
        return Err(VerifyError::StaleEpoch {
            epoch: claims.epoch,
            min_epoch: rules.min_epoch,
        });
    }
    let [detail] = claims.authorization_details.as_slice() else {
        return Err(VerifyError::InvalidAuthorizationDetails {
            reason: format!(
                "{} entries, expected exactly one",
                claims.authorization_details.len()
            ),
        });
    };
    if detail.kind != DETAIL_TYPE {
        return Err(VerifyError::InvalidAuthorizationDetails {
            reason: format!("type {:?}, expected {DETAIL_TYPE:?}", detail.kind),
        });
    }
    // Two places for one digest: they must agree, or an executor reading one and a verifier
    // checking the other would act on different parameters.
    if claims
        .params_digest
        .as_ref()
        .is_some_and(|top| *top != detail.params_digest)
    {
        return Err(VerifyError::InvalidClaims {
            reason: "params_digest differs from authorization_details[0].params_digest".into(),
        });
    }
    Ok(Decoded {
        header,
        claims,
        signer,
    })
}

/// Whether a raw `r‖s` that verified under `key` has `s ≤ n/2`.
fn is_low_s(key: &CertKey, raw: &[u8]) -> bool {
    match key {
        CertKey::P384(_) => {
            p384::ecdsa::Signature::from_slice(raw).is_ok_and(|sig| sig.normalize_s() == sig)
        }
        CertKey::P256(_) => {
            p256::ecdsa::Signature::from_slice(raw).is_ok_and(|sig| sig.normalize_s() == sig)
        }
    }
}

fn malformed(part: &'static str, reason: impl Into<String>) -> VerifyError {
    VerifyError::Malformed {
        part,
        reason: reason.into(),
    }
}

fn mismatch(header: &Header, curve: &'static str) -> VerifyError {
    VerifyError::AlgorithmKeyMismatch {
        alg: header.alg.clone(),
        curve,
    }
}

/// base64url without padding, and only the canonical encoding (re-encoding gives the input),
/// so one token has one spelling.
pub(super) fn strict_b64(part: &'static str, text: &str) -> Result<Vec<u8>, VerifyError> {
    let bytes = base64url::decode(text).ok_or_else(|| malformed(part, "not base64url"))?;
    if base64url::encode(&bytes) != text {
        return Err(malformed(part, "not the canonical base64url encoding"));
    }
    if bytes.is_empty() {
        return Err(malformed(part, "empty"));
    }
    Ok(bytes)
}

fn check_lifetime(claims: &Claims, rules: &TokenRules) -> Result<(), VerifyError> {
    let now = unix(rules.now);
    let leeway = rules.leeway.as_secs();
    let invalid = |reason: String| VerifyError::InvalidLifetime { reason };
    if claims.exp <= claims.nbf {
        return Err(invalid(format!(
            "exp {} is not after nbf {}",
            claims.exp, claims.nbf
        )));
    }
    if claims.iat > claims.exp {
        return Err(invalid(format!(
            "iat {} is after exp {}",
            claims.iat, claims.exp
        )));
    }
    let lifetime = claims.exp - claims.nbf;
    if lifetime > rules.max_lifetime.as_secs() {
        return Err(invalid(format!(
            "lifetime {lifetime} s exceeds the cap of {} s",
            rules.max_lifetime.as_secs()
        )));
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(invalid(format!(
            "issued in the future (iat {}, now {now})",
            claims.iat
        )));
    }
    if claims.nbf > now.saturating_add(leeway) {
        return Err(VerifyError::NotYetValid {
            now,
            nbf: claims.nbf,
        });
    }
    if now >= claims.exp {
        return Err(VerifyError::Expired {
            now,
            exp: claims.exp,
        });
    }
    Ok(())
}
