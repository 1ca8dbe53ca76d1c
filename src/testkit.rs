//! Certificates for unit tests, made by the real CA code with software keys.
//!
//! Test-only: the keys here stand for keys that are not the broker's (offline CAs, agents) or
//! for the broker's keys in pure-logic tests. Nothing outside `cfg(test)` can reach this module.

use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use p384::elliptic_curve::Generate;
use spki::{SignatureBitStringEncoding, SubjectPublicKeyInfoOwned};

use crate::ca::{self, CaError, CaSigner, IntermediateRequest, LeafRequest};
use crate::cert::{Certificate, SEB_GRANTS_OID};
use crate::grants::{GrantSet, Role, RoleKind};

/// One fixed "now" for every test, so results do not depend on the clock.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A fresh software P-384 key.
pub fn key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::try_generate().unwrap()
}

/// The SubjectPublicKeyInfo of a P-384 key.
pub fn spki(key: &p384::ecdsa::SigningKey) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap()
}

/// Parses a grant file.
pub fn grants(toml: &str) -> GrantSet {
    GrantSet::from_toml_str(toml).unwrap()
}

/// A one-grant file.
pub fn grant(operation: &str, resource: &str, ttl: &str) -> String {
    format!(
        "[[grant]]\noperation = {operation:?}\nresource = {resource:?}\nmax_ttl = {ttl:?}\nparams_any = true\n"
    )
}

/// A CA: its key, its certificate and its issuers (the chain from it to the root, inclusive).
#[derive(Clone)]
pub struct Ca {
    pub key: p384::ecdsa::SigningKey,
    pub cert: Certificate,
    /// The certificate itself first, then its issuers up to the root.
    pub chain: Vec<Certificate>,
}

impl Ca {
    /// A self-signed root valid for ten years from [`now`].
    pub fn root(cn: &str) -> Self {
        let key = key();
        let cert = ca::self_signed_root(
            &key,
            &ca::parse_subject(&format!("CN={cn}")).unwrap(),
            Duration::from_secs(10 * 365 * 86_400),
            now(),
        )
        .unwrap();
        Ca {
            key,
            chain: vec![cert.clone()],
            cert,
        }
    }

    /// An intermediate under this CA, through `ca::issue_intermediate`.
    pub fn intermediate(
        &self,
        cn: &str,
        grants_toml: Option<&str>,
        path_len: Option<u8>,
    ) -> Result<Ca, CaError> {
        let key = key();
        let cert = ca::issue_intermediate(
            &self.key,
            &self.chain,
            IntermediateRequest {
                public_key: spki(&key),
                subject: ca::parse_subject(&format!("CN={cn}")).unwrap(),
                grants: grants_toml.map(grants),
                path_len,
                ttl: Duration::from_secs(365 * 86_400),
            },
            now(),
        )?;
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Ca { key, cert, chain })
    }

    /// An agent certificate under this CA, through `ca::issue_leaf_under`.
    pub fn agent(&self, cn: &str, grants_toml: &str) -> Result<Certificate, CaError> {
        self.leaf_with(cn, &key(), grants_toml, Duration::from_secs(30 * 86_400))
    }

    /// An agent certificate for a given key and lifetime.
    pub fn leaf_with(
        &self,
        cn: &str,
        key: &p384::ecdsa::SigningKey,
        grants_toml: &str,
        ttl: Duration,
    ) -> Result<Certificate, CaError> {
        ca::issue_leaf_under(
            &self.key,
            &self.chain,
            LeafRequest {
                public_key: spki(key),
                subject: ca::parse_subject(&format!("CN={cn}")).unwrap(),
                role: Role::new(RoleKind::Agent, vec![]).unwrap(),
                grants: Some(grants(grants_toml)),
                ttl,
            },
            Duration::from_secs(365 * 86_400),
            now(),
        )
    }

    /// This CA as seen by a careless (or malicious) signer: the same key and name, but with
    /// no grants anywhere in its chain, so the CA code does not bound what it signs. Used to
    /// make escalated certificates "signed elsewhere".
    pub fn unchecked(&self) -> Ca {
        let strip = |c: &Certificate| {
            let mut c = c.clone();
            if let Some(exts) = c.tbs.extensions.as_mut() {
                exts.retain(|e| e.oid_bytes() != SEB_GRANTS_OID);
            }
            c
        };
        Ca {
            key: self.key.clone(),
            cert: strip(&self.cert),
            chain: self.chain.iter().map(strip).collect(),
        }
    }
}

/// Re-signs `cert` (after a test edited its TBS) with `key`, ecdsa-with-SHA384.
pub fn resign(mut cert: Certificate, key: &dyn CaSigner) -> Certificate {
    let sig = key.sign_message(&cert.tbs.to_der().unwrap()).unwrap();
    cert.signature = sig.to_der().to_bitstring().unwrap();
    cert
}

/// `cert` with its validity replaced by `not_before..=not_after`, re-signed with `key` (its
/// issuer's). Certificates below it still chain to it: their signatures and key identifiers
/// do not cover its dates. This is how an expired or not-yet-valid CA *above* a valid
/// certificate is made, which the CA code itself would never issue.
pub fn with_validity(
    cert: &Certificate,
    not_before: SystemTime,
    not_after: SystemTime,
    key: &dyn CaSigner,
) -> Certificate {
    let mut cert = cert.clone();
    cert.tbs.validity.not_before = x509_cert::time::Time::try_from(not_before).unwrap();
    cert.tbs.validity.not_after = x509_cert::time::Time::try_from(not_after).unwrap();
    resign(cert, key)
}

/// Re-signs `cert` with a P-256 key, ecdsa-with-SHA256.
pub fn resign_p256(mut cert: Certificate, key: &p256::ecdsa::SigningKey) -> Certificate {
    let alg = spki::AlgorithmIdentifierOwned {
        oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    cert.tbs.signature = alg.clone();
    cert.signature_algorithm = alg;
    let sig: p256::ecdsa::Signature = signature::Signer::sign(key, &cert.tbs.to_der().unwrap());
    cert.signature = sig.to_der().to_bitstring().unwrap();
    cert
}

/// Replaces (or adds) a standard extension in `cert`'s TBS; the caller re-signs.
pub fn set_extension(cert: &mut Certificate, ext: crate::cert::Extension) {
    let exts = cert.tbs.extensions.get_or_insert_with(Vec::new);
    exts.retain(|e| e.oid_bytes() != ext.oid_bytes());
    exts.push(ext);
}

/// Round-trips through DER, as a certificate read from a file would be.
pub fn reparse(cert: &Certificate) -> Certificate {
    Certificate::from_der(&cert.to_der().unwrap()).unwrap()
}
