//! Certificates for unit tests, made by the real CA code with software keys.
//!
//! Test-only: the keys here stand for keys that are not the broker's (offline CAs, agents) or
//! for the broker's keys in pure-logic tests. Nothing outside `cfg(test)` can reach this module.

use std::time::{Duration, SystemTime};

use der::asn1::{Any, BitString, ObjectIdentifier, OctetString};
use der::oid::AssociatedOid;
use der::{Decode, Encode, Sequence, Tag};
use p384::elliptic_curve::Generate;
use spki::{AlgorithmIdentifierOwned, SignatureBitStringEncoding, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::Version;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::ca::{self, CaError, CaSigner, IntermediateRequest, LeafRequest};
use crate::cert::{CertError, Certificate, Extension, SEB_GRANTS_OID};
use crate::grants::{GrantSet, IssuableRoles, Role, RoleKind};

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

/// `key`'s SubjectPublicKeyInfo with the point compressed (SEC 1 `0x02`/`0x03`): the same key
/// spelled another way.
pub fn compressed_spki(key: &p384::ecdsa::SigningKey) -> SubjectPublicKeyInfoOwned {
    let point = key.verifying_key().to_sec1_point(true);
    SubjectPublicKeyInfoOwned {
        algorithm: spki(key).algorithm,
        subject_public_key: der::asn1::BitString::from_bytes(point.as_bytes()).unwrap(),
    }
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

/// An intermediate `ops` under `root` that may grant `deploy.*` on `prod/payments/*` only (60 s):
/// the bound that tests of attenuation try to escape with `prod/**`.
pub fn payments_ops(root: &Ca) -> Ca {
    root.intermediate(
        "ops",
        Some(&grant("deploy.*", "prod/payments/*", "60s")),
        None,
    )
    .unwrap()
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

    /// An intermediate under this CA, through `ca::issue_intermediate`, that issues agents.
    pub fn intermediate(
        &self,
        cn: &str,
        grants_toml: Option<&str>,
        path_len: Option<u8>,
    ) -> Result<Ca, CaError> {
        self.intermediate_for(cn, grants_toml, path_len, IssuableRoles::AGENTS_ONLY)
    }

    /// An intermediate under this CA that may issue `roles`.
    pub fn intermediate_for(
        &self,
        cn: &str,
        grants_toml: Option<&str>,
        path_len: Option<u8>,
        roles: IssuableRoles,
    ) -> Result<Ca, CaError> {
        let key = key();
        let cert = ca::issue_intermediate(
            &self.key,
            &self.chain,
            IntermediateRequest {
                public_key: spki(&key),
                subject: ca::parse_subject(&format!("CN={cn}")).unwrap(),
                grants: grants_toml.map(grants),
                roles,
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

    /// An agent certificate valid for a day, with the fresh key it certifies, for tests in
    /// which the agent signs something itself (a forged certificate, a token, an approval).
    pub fn agent_with_key(
        &self,
        cn: &str,
        grants_toml: &str,
    ) -> (p384::ecdsa::SigningKey, Certificate) {
        let key = key();
        let cert = self
            .leaf_with(cn, &key, grants_toml, Duration::from_secs(86_400))
            .unwrap();
        (key, cert)
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
    /// no grants anywhere in its chain and every role issuable, so the CA code does not bound
    /// what it signs. Used to make escalated certificates "signed elsewhere".
    pub fn unchecked(&self) -> Ca {
        let strip = |c: &Certificate| {
            let mut forged = forge(c);
            forged.remove_extension(SEB_GRANTS_OID);
            // Nor by the roles it may issue (the root, self-issued, has none to lift).
            if c.tbs().issuer() != c.tbs().subject() {
                forged.set_raw_extension(
                    crate::cert::SEB_ISSUABLE_ROLES_OID.as_bytes(),
                    false,
                    &IssuableRoles::ALL.to_der().unwrap(),
                );
            }
            forged.finish().unwrap()
        };
        Ca {
            key: self.key.clone(),
            cert: strip(&self.cert),
            chain: self.chain.iter().map(strip).collect(),
        }
    }
}

/// A certificate taken apart so that a test can forge what no honest CA makes: every field
/// editable, the signature kept ([`Forged::finish`]) or remade ([`resign`]).
///
/// `x509-cert`'s certificates cannot be edited once built, rightly; this test-only mirror of
/// RFC 5280's `Certificate` can, and it keeps extension identifiers as raw OID bytes so that a
/// test can also write one `const-oid` cannot hold (the retired `2.25` arc).
#[derive(Clone, Debug, Sequence)]
pub struct Forged {
    /// The signed part.
    pub tbs: ForgedTbs,
    /// The outer signature algorithm.
    pub signature_algorithm: AlgorithmIdentifierOwned,
    /// The signature.
    pub signature: BitString,
}

/// RFC 5280 `TBSCertificate`, editable.
#[derive(Clone, Debug, Sequence)]
#[allow(missing_docs)]
pub struct ForgedTbs {
    #[asn1(context_specific = "0", default = "Default::default")]
    pub version: Version,
    pub serial_number: SerialNumber,
    pub signature: AlgorithmIdentifierOwned,
    pub issuer: Name,
    pub validity: ForgedValidity,
    pub subject: Name,
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub issuer_unique_id: Option<BitString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    pub subject_unique_id: Option<BitString>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    pub extensions: Option<Vec<RawExtension>>,
}

/// Validity with each time encoded exactly as set (`x509-cert`'s `Validity` re-encodes times
/// before 2050 as UTCTime).
#[derive(Clone, Debug, Sequence)]
#[allow(missing_docs)]
pub struct ForgedValidity {
    pub not_before: Time,
    pub not_after: Time,
}

/// An extension whose identifier is raw OID content octets.
#[derive(Clone, Debug, Sequence)]
#[allow(missing_docs)]
pub struct RawExtension {
    pub extn_id: Any,
    #[asn1(default = "Default::default")]
    pub critical: bool,
    pub extn_value: OctetString,
}

/// `cert` taken apart for editing.
pub fn forge(cert: &Certificate) -> Forged {
    Forged::from_der(&cert.to_der_bytes().unwrap()).unwrap()
}

/// `cert` with `issuer`'s name as its issuer and no authority key identifier, ready to be
/// re-signed with a key of the test's choosing (a forgery, or an offline CA's signature).
pub fn renamed_under(cert: &Certificate, issuer: &Certificate) -> Forged {
    let mut cert = forge(cert);
    cert.tbs.issuer = issuer.tbs().subject().clone();
    cert.remove_extension(x509_cert::ext::pkix::AuthorityKeyIdentifier::OID);
    cert
}

impl Forged {
    /// Removes the extension with this OID, if present.
    pub fn remove_extension(&mut self, oid: ObjectIdentifier) {
        if let Some(exts) = self.tbs.extensions.as_mut() {
            exts.retain(|e| e.extn_id.value() != oid.as_bytes());
        }
    }

    /// Replaces (or adds, last) the extension with `ext`'s OID.
    pub fn set_extension(&mut self, ext: Extension) {
        self.set_raw_extension(
            ext.extn_id.as_bytes(),
            ext.critical,
            ext.extn_value.as_bytes(),
        );
    }

    /// Replaces (or adds, last) an extension given by its OID's content octets.
    pub fn set_raw_extension(&mut self, oid: &[u8], critical: bool, value: &[u8]) {
        let exts = self.tbs.extensions.get_or_insert_with(Vec::new);
        exts.retain(|e| e.extn_id.value() != oid);
        exts.push(RawExtension {
            extn_id: Any::new(Tag::ObjectIdentifier, oid).unwrap(),
            critical,
            extn_value: OctetString::new(value).unwrap(),
        });
    }

    /// Re-signs the TBS with `key` (ecdsa-with-SHA384, whatever the algorithm fields say) and
    /// returns the DER.
    pub fn resigned_der(mut self, key: &dyn CaSigner) -> Vec<u8> {
        let sig = key.sign_message(&self.tbs.to_der().unwrap()).unwrap();
        self.signature = sig.to_der().to_bitstring().unwrap();
        self.to_der().unwrap()
    }

    /// Encodes it as it is (a signature made before any edit no longer verifies) and parses
    /// the result.
    pub fn finish(&self) -> Result<Certificate, CertError> {
        Certificate::parse(&self.to_der().unwrap())
    }
}

/// Re-signs a forged certificate with `key`, ecdsa-with-SHA384.
pub fn resign(cert: Forged, key: &dyn CaSigner) -> Certificate {
    Certificate::parse(&cert.resigned_der(key)).unwrap()
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
    let mut cert = forge(cert);
    cert.tbs.validity.not_before = Time::try_from(not_before).unwrap();
    cert.tbs.validity.not_after = Time::try_from(not_after).unwrap();
    resign(cert, key)
}

/// Re-signs a forged certificate with a P-256 key, ecdsa-with-SHA256.
pub fn resign_p256(mut cert: Forged, key: &p256::ecdsa::SigningKey) -> Certificate {
    let alg = AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    cert.tbs.signature = alg.clone();
    cert.signature_algorithm = alg;
    let sig: p256::ecdsa::Signature = signature::Signer::sign(key, &cert.tbs.to_der().unwrap());
    cert.signature = sig.to_der().to_bitstring().unwrap();
    cert.finish().unwrap()
}

/// Round-trips through DER, as a certificate read from a file would be.
pub fn reparse(cert: &Certificate) -> Certificate {
    Certificate::parse(&cert.to_der_bytes().unwrap()).unwrap()
}
