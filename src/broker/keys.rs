//! The broker's current key generations, read from the state directory: the token key that
//! signs new tokens, the retired token keys whose tokens may still be live (redemption keeps
//! accepting them, `/v1/trust` keeps serving their certificates), and the trust bundle.
//!
//! Loaded at start and again by `Broker::reload` after `seb rotate`; a snapshot is swapped
//! whole, so one request never mixes two generations (the `kid` it writes and the key that
//! signs are taken from the same snapshot).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::BrokerError;
use crate::backend::{KeyAlgorithm, KeyBackend};
use crate::base64url;
use crate::ca::generations::KeyKind;
use crate::ca::trust_dir::read_certificate;
use crate::cert::{Certificate, Purpose};
use crate::config::Config;

/// One token signing key and its certificate.
#[derive(Debug, Clone)]
pub(super) struct TokenKey {
    /// Its label in the device.
    pub label: Arc<str>,
    /// Its certificate.
    pub cert: Certificate,
    /// The JWS `kid`: the certificate's SHA-256 thumbprint, base64url.
    pub kid: String,
    /// Its curve.
    pub alg: KeyAlgorithm,
}

/// A snapshot of the broker's keys and trust bundle.
#[derive(Debug)]
pub(super) struct BrokerKeys {
    /// Signs new tokens.
    pub token: TokenKey,
    /// Retired by a rotation, and still within the lifetime of a token they signed.
    pub retired_tokens: Vec<TokenKey>,
    /// The TLS and audit certificates (for expiry warnings), when readable.
    pub others: Vec<(String, Certificate)>,
    /// `/v1/trust`.
    pub trust_pem: String,
}

/// How long a retired token certificate stays trusted after its rotation: the longest token
/// lifetime the broker accepts, plus the time a running broker may take to notice the
/// rotation (it signs with the old key until then), plus the clock skew verifiers allow.
pub fn retired_token_window(config: &Config) -> Duration {
    crate::verify::DEFAULT_MAX_LIFETIME.max(config.policy.max_token_ttl)
        + super::RELOAD_INTERVAL
        + crate::verify::CLOCK_SKEW
}

impl BrokerKeys {
    /// Reads the current generations; checks that the token key in the device matches the
    /// token certificate.
    pub fn load(
        config: &Config,
        backend: &dyn KeyBackend,
        now: SystemTime,
    ) -> Result<Self, BrokerError> {
        let internal = |e: &dyn std::fmt::Display| BrokerError::Internal(e.to_string());
        let trust = config.trust_dir();
        let generations = config.key_generations().map_err(|e| internal(&e))?;
        let current = generations.current(KeyKind::Token, &config.keys.token);
        let cert = trust
            .token()
            .map_err(|e| BrokerError::Internal(format!("{e}; has `seb init` run?")))?;
        let public = backend
            .public_key(&current.label)
            .map_err(BrokerError::Hsm)?;
        let spki = public.to_spki_der().map_err(BrokerError::Hsm)?;
        if spki != cert.public_key_der().map_err(|e| internal(&e))? {
            return Err(BrokerError::Internal(crate::ca::trust_dir::key_mismatch(
                &current.label,
                &trust.token_path(),
            )));
        }
        // Executors accept a token only under the root's certificate for the token key
        // purpose; refuse to sign tokens nobody will accept.
        let root = trust
            .root()
            .map_err(|e| BrokerError::Internal(format!("{e}; has `seb init` run?")))?;
        let roots = [root];
        crate::chain::validate(&cert, &[], &roots, now)
            .map_err(|e| format!("{}: {e}", e.code()))
            .and_then(|path| {
                path.require_service(Purpose::Token)
                    .map_err(|e| format!("{}: {e}", e.code()))
            })
            .map_err(|e| {
                BrokerError::Internal(format!(
                    "{} is not the root's token signing certificate ({e}); a trust directory \
                     from before key purposes must be made again with `seb init` on a new token",
                    trust.token_path().display()
                ))
            })?;
        let token = token_key(current.label.as_str(), cert, public.algorithm())?;
        let mut retired_tokens = Vec::new();
        let mut retired_files = Vec::new();
        for retired in generations.live_retired_tokens(now, retired_token_window(config)) {
            let path = trust.retired_dir().join(&retired.cert);
            let cert = read_certificate(&path).map_err(|e| internal(&e))?;
            let alg = match crate::chain::CertKey::of(&cert) {
                Ok(crate::chain::CertKey::P256(_)) => KeyAlgorithm::EcP256,
                _ => KeyAlgorithm::EcP384,
            };
            retired_tokens.push(token_key(&retired.label, cert, alg)?);
            retired_files.push(retired.cert.as_str());
        }
        // Retired audit certificates are published for good: the checkpoints they signed stay
        // verifiable with the bundle alone (the newest one until the next entry, and any an
        // auditor kept).
        retired_files.extend(generations.retired_audit().map(|r| r.cert.as_str()));
        let mut others = Vec::new();
        for kind in [KeyKind::Tls, KeyKind::Audit] {
            if let Ok(cert) = read_certificate(&trust.service_path(kind)) {
                others.push((kind.as_str().to_owned(), cert));
            }
        }
        Ok(Self {
            token,
            retired_tokens,
            others,
            trust_pem: trust.bundle_pem_with(&retired_files),
        })
    }

    /// Whether `other` would sign, verify and publish exactly as this does.
    pub fn same_as(&self, other: &Self) -> bool {
        let kids = |k: &Self| -> Vec<(String, Arc<str>)> {
            std::iter::once(&k.token)
                .chain(k.retired_tokens.iter())
                .map(|t| (t.kid.clone(), t.label.clone()))
                .collect()
        };
        kids(self) == kids(other) && self.trust_pem == other.trust_pem
    }

    /// The token key named by a JWS `kid`: the current one or a live retired one.
    pub fn token_by_kid(&self, kid: &str) -> Option<&TokenKey> {
        std::iter::once(&self.token)
            .chain(self.retired_tokens.iter())
            .find(|t| t.kid == kid)
    }

    /// The broker's certificates whose expiry matters: root, token, TLS, audit.
    pub fn service_certificates<'a>(
        &'a self,
        root: &'a Certificate,
    ) -> Vec<(String, &'a Certificate)> {
        let mut out = vec![
            ("root".to_owned(), root),
            ("token".to_owned(), &self.token.cert),
        ];
        out.extend(self.others.iter().map(|(what, cert)| (what.clone(), cert)));
        out
    }
}

fn token_key(label: &str, cert: Certificate, alg: KeyAlgorithm) -> Result<TokenKey, BrokerError> {
    let der = cert
        .to_der_bytes()
        .map_err(|e| BrokerError::Internal(e.to_string()))?;
    Ok(TokenKey {
        label: Arc::from(label),
        kid: base64url::encode(&Sha256::digest(&der)),
        cert,
        alg,
    })
}
