//! The offline verifier for execution tokens: what an executor runs before it touches
//! production.
//!
//! [`verify_token`] checks a compact JWS token against a [`TrustStore`] (the PEM bundle the
//! broker publishes at `GET /v1/trust`): the signing certificate, found by `kid`, must chain to
//! a root in the bundle; the signature, header, lifetime, policy epoch and the single
//! authorization detail must check out; and whatever the caller expects (operation, resource,
//! parameters, the presenting agent's certificate) must match exactly.
//!
//! This module is pure: no I/O, no clock (the caller passes `now`), no device, no async
//! runtime. It compiles with `--no-default-features`, so an executor links nothing else. It
//! never accepts a token on doubt: every failure is a [`VerifyError`] with a stable
//! [`VerifyError::code`], and nothing is returned from an unverified token.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256, Sha384};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};

use crate::cert::{CertError, Certificate, SEB_GRANTS_OID, SEB_ROLE_OID};
use crate::chain::{self, CertKey, ChainError};
use crate::token::{self, Claims, Header, DETAIL_TYPE, MAX_TOKEN_LEN, TOKEN_TYPE};

/// Default longest token lifetime (`exp - nbf`) accepted.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Default clock skew tolerated on `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest trust bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 4 * 1024 * 1024;
/// Most certificates in a trust bundle.
pub const MAX_BUNDLE_CERTS: usize = 64;

/// Why a token (or a trust bundle) was refused. [`VerifyError::code`] is stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The trust bundle is unusable.
    #[error("trust bundle: {reason}")]
    TrustBundle {
        /// What is wrong.
        reason: String,
    },
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not three base64url parts, or a header that is not the expected JSON.
    #[error("malformed token {part}: {reason}")]
    Malformed {
        /// `token`, `header`, `claims` or `signature`.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `alg` is not ES256 or ES384 (`none`, HMAC, RSA... are never accepted).
    #[error("unsupported algorithm {alg:?} (seb tokens use ES384 or ES256)")]
    UnsupportedAlgorithm {
        /// The header's `alg`.
        alg: String,
    },
    /// `typ` is not `seb-exec+jwt`.
    #[error("token type {typ:?} is not {TOKEN_TYPE:?}")]
    WrongType {
        /// The header's `typ`.
        typ: String,
    },
    /// No certificate in the trust bundle has this thumbprint.
    #[error("no certificate in the trust bundle has kid {kid:?}")]
    UnknownKey {
        /// The header's `kid`.
        kid: String,
    },
    /// The token certificate does not chain to a root of the bundle.
    #[error("the token certificate does not chain to a trusted root ({}): {source}", source.code())]
    UntrustedCertificate {
        /// Why path validation failed.
        #[source]
        source: ChainError,
    },
    /// A certificate on the token certificate's path has expired.
    #[error("certificate {subject:?} expired at {not_after} (now {now})")]
    CertificateExpired {
        /// Its subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notAfter, Unix seconds.
        not_after: u64,
    },
    /// A certificate on the token certificate's path is not valid yet.
    #[error("certificate {subject:?} is not valid before {not_before} (now {now})")]
    CertificateNotYetValid {
        /// Its subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notBefore, Unix seconds.
        not_before: u64,
    },
    /// The certificate named by `kid` may not sign tokens.
    #[error("certificate {subject:?} may not sign tokens: {reason}")]
    NotATokenCertificate {
        /// Its subject.
        subject: String,
        /// Why not.
        reason: &'static str,
    },
    /// `alg` does not fit the key's curve.
    #[error("algorithm {alg} does not fit the token key's curve {curve}")]
    AlgorithmKeyMismatch {
        /// The header's `alg`.
        alg: String,
        /// `P-256` or `P-384`.
        curve: &'static str,
    },
    /// The signature does not verify (or is not a raw `r‖s` of the right length).
    #[error("the token signature does not verify")]
    BadSignature,
    /// The claims are not the claims of a seb token (missing, extra or mistyped fields).
    #[error("invalid claims: {reason}")]
    InvalidClaims {
        /// What is wrong.
        reason: String,
    },
    /// `nbf` is later than now plus the leeway.
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// Now, Unix seconds.
        now: u64,
        /// The token's nbf.
        nbf: u64,
    },
    /// `exp` is not after now.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Now, Unix seconds.
        now: u64,
        /// The token's exp.
        exp: u64,
    },
    /// The lifetime claims do not make sense, or exceed the cap.
    #[error("invalid token lifetime: {reason}")]
    InvalidLifetime {
        /// What is wrong.
        reason: String,
    },
    /// The policy epoch is older than the caller's minimum.
    #[error("token epoch {epoch} is older than the minimum {min_epoch}")]
    StaleEpoch {
        /// The token's epoch.
        epoch: u64,
        /// The caller's minimum.
        min_epoch: u64,
    },
    /// Not exactly one `seb_execution` authorization detail.
    #[error("invalid authorization_details: {reason}")]
    InvalidAuthorizationDetails {
        /// What is wrong.
        reason: String,
    },
    /// The token names another issuer.
    #[error("token issuer {token:?} is not the expected {expected:?}")]
    WrongIssuer {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes another operation.
    #[error("token authorizes operation {token:?}, not {expected:?}")]
    WrongOperation {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes another resource.
    #[error("token authorizes resource {token:?}, not {expected:?}")]
    WrongResource {
        /// Expected.
        expected: String,
        /// In the token.
        token: String,
    },
    /// The token authorizes other parameters.
    #[error("token authorizes parameters with digest {token}, the given parameters digest to {expected}")]
    WrongParams {
        /// base64url SHA-384 of the JCS of the expected parameters.
        expected: String,
        /// The token's params_digest.
        token: String,
    },
    /// The expected parameters cannot be canonicalised.
    #[error("the expected parameters cannot be canonicalised: {reason}")]
    InvalidParams {
        /// Why.
        reason: String,
    },
    /// The token is bound to another agent certificate.
    #[error("token is bound to certificate {token}, not the presented {presented}")]
    WrongCertificate {
        /// x5t#S256 of the presented certificate.
        presented: String,
        /// The token's cnf.x5t#S256.
        token: String,
    },
}

impl VerifyError {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TrustBundle { .. } => "invalid_trust_bundle",
            VerifyError::TooLarge { .. } => "token_too_large",
            VerifyError::Malformed { .. } => "malformed_token",
            VerifyError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            VerifyError::WrongType { .. } => "wrong_token_type",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::UntrustedCertificate { .. } => "untrusted_token_certificate",
            VerifyError::CertificateExpired { .. } => "certificate_expired",
            VerifyError::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            VerifyError::NotATokenCertificate { .. } => "not_a_token_certificate",
            VerifyError::AlgorithmKeyMismatch { .. } => "algorithm_key_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::InvalidClaims { .. } => "invalid_claims",
            VerifyError::NotYetValid { .. } => "token_not_yet_valid",
            VerifyError::Expired { .. } => "token_expired",
            VerifyError::InvalidLifetime { .. } => "invalid_lifetime",
            VerifyError::StaleEpoch { .. } => "stale_epoch",
            VerifyError::InvalidAuthorizationDetails { .. } => "invalid_authorization_details",
            VerifyError::WrongIssuer { .. } => "wrong_issuer",
            VerifyError::WrongOperation { .. } => "wrong_operation",
            VerifyError::WrongResource { .. } => "wrong_resource",
            VerifyError::WrongParams { .. } => "wrong_params",
            VerifyError::InvalidParams { .. } => "invalid_params",
            VerifyError::WrongCertificate { .. } => "wrong_certificate",
        }
    }
}

/// The certificates an executor trusts: roots (the self-signed certificates of the bundle)
/// and everything else the broker publishes (intermediates, token, audit, TLS certificates).
#[derive(Clone, Debug)]
pub struct TrustStore {
    roots: Vec<Certificate>,
    others: Vec<Certificate>,
}

impl TrustStore {
    /// Reads a PEM bundle (`GET /v1/trust`, or the broker's `trust/*.pem` concatenated).
    pub fn from_pem(bundle: &[u8]) -> Result<Self, VerifyError> {
        if bundle.len() > MAX_BUNDLE_LEN {
            return Err(VerifyError::TrustBundle {
                reason: format!(
                    "{} bytes, more than the limit of {MAX_BUNDLE_LEN}",
                    bundle.len()
                ),
            });
        }
        let certs = Certificate::parse_pem_chain(bundle).map_err(|e: CertError| {
            VerifyError::TrustBundle {
                reason: e.to_string(),
            }
        })?;
        Self::from_certificates(certs)
    }

    /// Sorts certificates into roots (self-issued, and self-signed: the signature is checked)
    /// and the rest.
    pub fn from_certificates(certs: Vec<Certificate>) -> Result<Self, VerifyError> {
        if certs.len() > MAX_BUNDLE_CERTS {
            return Err(VerifyError::TrustBundle {
                reason: format!(
                    "{} certificates, more than the limit of {MAX_BUNDLE_CERTS}",
                    certs.len()
                ),
            });
        }
        let mut roots = Vec::new();
        let mut others = Vec::new();
        for cert in certs {
            if cert.tbs.issuer == cert.tbs.subject {
                chain::verify_signature(&cert, &cert).map_err(|e| VerifyError::TrustBundle {
                    reason: format!(
                        "self-issued certificate {:?} is not validly self-signed: {e}",
                        cert.subject_string()
                    ),
                })?;
                roots.push(cert);
            } else {
                others.push(cert);
            }
        }
        if roots.is_empty() {
            return Err(VerifyError::TrustBundle {
                reason: "no self-signed root certificate".into(),
            });
        }
        Ok(TrustStore { roots, others })
    }

    /// The trusted roots.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// The certificate whose `kid` (base64url SHA-256 of its DER) is `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Certificate> {
        self.others.iter().find(|c| {
            c.thumbprint_sha256()
                .is_ok_and(|t| token::b64(&t).as_bytes() == kid.as_bytes())
        })
    }

    /// The CA certificates that are not roots: the intermediates paths may go through.
    fn intermediates(&self) -> Vec<Certificate> {
        self.others
            .iter()
            .filter(|c| {
                c.standard_extension::<BasicConstraints>()
                    .ok()
                    .flatten()
                    .is_some_and(|bc| bc.ca)
            })
            .cloned()
            .collect()
    }
}

/// What the caller requires of a token beyond its own validity.
#[derive(Clone, Debug)]
pub struct Expectations {
    /// The time to verify at (the caller's clock; nothing here reads one).
    pub now: SystemTime,
    /// Clock skew tolerated on `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest `exp - nbf` accepted.
    pub max_lifetime: Duration,
    /// Tokens of an older policy epoch are refused.
    pub min_epoch: u64,
    /// The broker id the token must name in `iss`, if given.
    pub issuer: Option<String>,
    /// The operation about to be performed, if given.
    pub operation: Option<String>,
    /// The resource about to be acted on, if given.
    pub resource: Option<String>,
    /// The parameters about to be used, if given (compared by JCS SHA-384 digest).
    pub params: Option<serde_json::Value>,
    /// The certificate of the agent presenting the token, if given (compared by SHA-256
    /// thumbprint with `cnf.x5t#S256`).
    pub agent_certificate: Option<Certificate>,
}

impl Expectations {
    /// No expectations beyond validity at `now`, with the default leeway and lifetime cap and
    /// minimum epoch 0.
    pub fn at(now: SystemTime) -> Self {
        Expectations {
            now,
            leeway: DEFAULT_LEEWAY,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            min_epoch: 0,
            issuer: None,
            operation: None,
            resource: None,
            params: None,
            agent_certificate: None,
        }
    }
}

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// The protected header.
    pub header: Header,
    /// The claims.
    pub claims: Claims,
    /// The certificate whose key signed the token.
    pub signer: Certificate,
}

/// Verifies a compact JWS execution token. Checks, in order (the first failure is returned):
///
/// 1. size, three base64url parts (strict: no padding, canonical trailing bits);
/// 2. header: exactly `alg`, `typ`, `kid`; `alg` ES384 or ES256; `typ` `seb-exec+jwt`;
/// 3. the certificate named by `kid` is in the bundle, chains to a bundle root
///    ([`chain::validate`]), every certificate on the path is valid at `now`, and it is a
///    signing certificate (not a CA, digitalSignature, no EKU, no seb extensions);
/// 4. `alg` fits the key's curve; the signature is a raw `r‖s` of the curve's size and
///    verifies over `header.claims`;
/// 5. claims: exactly the seb claims; `nbf ≤ now + leeway`, `now < exp`, `nbf < exp`,
///    `iat ≤ now + leeway`, `iat ≤ exp`, `exp - nbf ≤ max_lifetime`; `epoch ≥ min_epoch`;
///    exactly one authorization detail, of type `seb_execution`;
/// 6. the expectations, each compared exactly.
pub fn verify_token(
    token: &str,
    trust: &TrustStore,
    expect: &Expectations,
) -> Result<VerifiedToken, VerifyError> {
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
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| malformed("header", e.to_string()))?;
    if header.alg != "ES384" && header.alg != "ES256" {
        return Err(VerifyError::UnsupportedAlgorithm { alg: header.alg });
    }
    if header.typ != TOKEN_TYPE {
        return Err(VerifyError::WrongType { typ: header.typ });
    }

    // 3. The signing certificate.
    let signer = trust
        .by_kid(&header.kid)
        .ok_or_else(|| VerifyError::UnknownKey {
            kid: header.kid.clone(),
        })?;
    let intermediates = trust.intermediates();
    let path =
        chain::validate(signer, &intermediates, trust.roots(), expect.now).map_err(|source| {
            match source {
                // The root's validity is a matter of time, like every other certificate's.
                ChainError::RootExpired {
                    subject,
                    now,
                    not_after,
                } => VerifyError::CertificateExpired {
                    subject,
                    now,
                    not_after,
                },
                ChainError::RootNotYetValid {
                    subject,
                    now,
                    not_before,
                } => VerifyError::CertificateNotYetValid {
                    subject,
                    now,
                    not_before,
                },
                source => VerifyError::UntrustedCertificate { source },
            }
        })?;
    for cert in path.path() {
        check_validity(cert, expect.now)?;
    }
    check_token_certificate(signer)?;

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

    // 5. Claims, only now that they are known to come from the token key.
    let claims: Claims =
        serde_json::from_slice(&claims_bytes).map_err(|e| VerifyError::InvalidClaims {
            reason: e.to_string(),
        })?;
    check_lifetime(&claims, expect)?;
    if claims.epoch < expect.min_epoch {
        return Err(VerifyError::StaleEpoch {
            epoch: claims.epoch,
            min_epoch: expect.min_epoch,
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

    // 6. Expectations.
    if let Some(expected) = &expect.issuer {
        if *expected != claims.iss {
            return Err(VerifyError::WrongIssuer {
                expected: expected.clone(),
                token: claims.iss.clone(),
            });
        }
    }
    if let Some(expected) = &expect.operation {
        if *expected != detail.operation {
            return Err(VerifyError::WrongOperation {
                expected: expected.clone(),
                token: detail.operation.clone(),
            });
        }
    }
    if let Some(expected) = &expect.resource {
        if *expected != detail.resource {
            return Err(VerifyError::WrongResource {
                expected: expected.clone(),
                token: detail.resource.clone(),
            });
        }
    }
    if let Some(params) = &expect.params {
        let digest =
            crate::canonical::params_digest(params).map_err(|e| VerifyError::InvalidParams {
                reason: e.to_string(),
            })?;
        let expected = token::b64(&digest);
        if expected != detail.params_digest {
            return Err(VerifyError::WrongParams {
                expected,
                token: detail.params_digest.clone(),
            });
        }
    }
    if let Some(agent) = &expect.agent_certificate {
        let thumbprint = agent
            .thumbprint_sha256()
            .map_err(|e| VerifyError::InvalidClaims {
                reason: format!("cannot encode the presented certificate: {e}"),
            })?;
        let presented = token::b64(&thumbprint);
        if presented != claims.cnf.x5t_s256 {
            return Err(VerifyError::WrongCertificate {
                presented,
                token: claims.cnf.x5t_s256.clone(),
            });
        }
    }

    Ok(VerifiedToken {
        header,
        claims,
        signer: signer.clone(),
    })
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
fn strict_b64(part: &'static str, text: &str) -> Result<Vec<u8>, VerifyError> {
    let bytes = token::unb64(text).ok_or_else(|| malformed(part, "not base64url"))?;
    if token::b64(&bytes) != text {
        return Err(malformed(part, "not the canonical base64url encoding"));
    }
    if bytes.is_empty() {
        return Err(malformed(part, "empty"));
    }
    Ok(bytes)
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), VerifyError> {
    if now < cert.not_before() {
        return Err(VerifyError::CertificateNotYetValid {
            subject: cert.subject_string(),
            now: chain::unix(now),
            not_before: chain::unix(cert.not_before()),
        });
    }
    if now > cert.not_after() {
        return Err(VerifyError::CertificateExpired {
            subject: cert.subject_string(),
            now: chain::unix(now),
            not_after: chain::unix(cert.not_after()),
        });
    }
    Ok(())
}

/// The token certificate's profile: an end entity whose key may sign (digitalSignature), with
/// no extended key usage (the TLS and agent certificates have one) and no seb extensions.
fn check_token_certificate(cert: &Certificate) -> Result<(), VerifyError> {
    let refuse = |reason| VerifyError::NotATokenCertificate {
        subject: cert.subject_string(),
        reason,
    };
    let bc = cert
        .standard_extension::<BasicConstraints>()
        .map_err(|_| refuse("malformed basicConstraints"))?;
    if bc.is_some_and(|bc| bc.ca) {
        return Err(refuse("it is a CA certificate"));
    }
    let ku = cert
        .standard_extension::<KeyUsage>()
        .map_err(|_| refuse("malformed keyUsage"))?;
    if !ku.is_some_and(|ku| ku.digital_signature()) {
        return Err(refuse("its keyUsage lacks digitalSignature"));
    }
    let eku = <ExtendedKeyUsage as der::oid::AssociatedOid>::OID;
    if cert.extension(eku.as_bytes()).is_some() {
        return Err(refuse(
            "it has an extended key usage (TLS or client certificate)",
        ));
    }
    if cert.extension(SEB_ROLE_OID).is_some() || cert.extension(SEB_GRANTS_OID).is_some() {
        return Err(refuse("it is an agent, approver or executor certificate"));
    }
    Ok(())
}

fn check_lifetime(claims: &Claims, expect: &Expectations) -> Result<(), VerifyError> {
    let now = chain::unix(expect.now);
    let leeway = expect.leeway.as_secs();
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
    if lifetime > expect.max_lifetime.as_secs() {
        return Err(invalid(format!(
            "lifetime {lifetime} s exceeds the cap of {} s",
            expect.max_lifetime.as_secs()
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

#[cfg(test)]
mod tests;
