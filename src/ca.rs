//! The certificate authority: the root, the broker's service certificates, and certificates for
//! agents, approvers and executors, all signed through a [`CaSigner`] (for the broker: a
//! [`P384Signer`], so inside the device).
//!
//! This module decides what goes into a certificate (profiles, extensions, serials, validity)
//! and checks what comes in (CSRs). It never touches a device directly and never sees a private
//! key: it is handed a signer.

use std::time::{Duration, SystemTime};

use der::asn1::{ObjectIdentifier, OctetString};
use der::Encode;
use spki::{AlgorithmIdentifierOwned, SignatureBitStringEncoding, SubjectPublicKeyInfoOwned};
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::backend::{BackendError, P384Signer, ECDSA_WITH_SHA384};
use crate::cert::{
    CertError, Certificate, Extension, SEB_GRANTS_OID, SEB_ISSUABLE_ROLES_OID, SEB_ROLE_OID,
};
use crate::grants::{GrantError, GrantSet, IssuableRoles, Role, RoleKind};

mod alt_names;
pub mod crl;
mod cross;
pub mod csr;
pub mod generations;
mod issuer;
mod profile;
mod subject;
pub mod trust_dir;

pub use alt_names::check_tls_names;
use alt_names::{subject_alt_names, subject_as_alt_name};
pub use cross::cross_certificate;
pub use issuer::{check_attenuation, check_intermediate};
use issuer::{check_issuer_chain, check_role_delegation};
pub use profile::CertKind;
use subject::COMMON_NAME;
pub use subject::{
    attribute_problem, common_name, hidden_character, parse_new_subject, parse_subject,
};
pub use trust_dir::{TrustDir, TrustDirError};

/// Clock skew tolerated for freshly issued certificates: notBefore is set this far in the past.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The key a CA signs with: a P-384 key that hashes with SHA-384 and signs.
///
/// The broker's own CA keys (the root and every intermediate made by `seb cert issue-ca
/// --label`) are always a [`P384Signer`], i.e. a key inside the device. The software
/// implementation on [`p384::ecdsa::SigningKey`] exists for keys that are genuinely not the
/// broker's: an offline intermediate CA operated elsewhere, and the pure-logic tests and
/// benchmarks. Nothing in the `seb` binary signs certificates with a software key for the broker.
pub trait CaSigner {
    /// The public half of the signing key.
    fn verifying_key(&self) -> p384::ecdsa::VerifyingKey;
    /// Hashes `message` with SHA-384 and signs it.
    fn sign_message(&self, message: &[u8]) -> Result<p384::ecdsa::Signature, BackendError>;
}

impl CaSigner for P384Signer<'_> {
    fn verifying_key(&self) -> p384::ecdsa::VerifyingKey {
        signature::Keypair::verifying_key(self)
    }

    fn sign_message(&self, message: &[u8]) -> Result<p384::ecdsa::Signature, BackendError> {
        P384Signer::sign_message(self, message)
    }
}

impl CaSigner for p384::ecdsa::SigningKey {
    fn verifying_key(&self) -> p384::ecdsa::VerifyingKey {
        *p384::ecdsa::SigningKey::verifying_key(self)
    }

    fn sign_message(&self, message: &[u8]) -> Result<p384::ecdsa::Signature, BackendError> {
        signature::Signer::try_sign(self, message).map_err(|e| BackendError::Device {
            operation: "software signing",
            source: Box::new(e),
        })
    }
}

/// Errors while issuing certificates or CRLs.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The device refused or failed to sign.
    #[error("signing with the CA key failed")]
    Sign(#[source] BackendError),
    /// The device failed while looking up a key.
    #[error("CA key unavailable")]
    Key(#[source] BackendError),
    /// The CSR is not parseable.
    #[error("malformed certificate signing request: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature does not verify.
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    /// The CSR uses a key or signature algorithm seb does not accept.
    #[error("unsupported key in certificate signing request: {0} (seb accepts EC P-256 and P-384 with ECDSA)")]
    UnsupportedKey(String),
    /// A subject name is malformed or empty.
    #[error("invalid subject name {subject:?}: {reason}")]
    Subject {
        /// The name as given.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// The requested validity is not acceptable.
    #[error("invalid validity: {0}")]
    Validity(String),
    /// The grants are not acceptable.
    #[error("invalid grants")]
    Grants(#[source] GrantError),
    /// Role and options do not fit together.
    #[error("{0}")]
    Role(String),
    /// The certificate given as a new root cannot be cross-signed.
    #[error("cannot cross-sign: {0}")]
    CrossCertificate(String),
    /// A TLS name is neither an IP address nor a DNS name in the preferred syntax.
    #[error("invalid TLS name {name:?}: {reason}")]
    TlsName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// ASN.1 encoding or certificate building failed.
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
    /// A PEM input could not be read.
    #[error("malformed PEM certificate: {0}")]
    MalformedCertificate(String),
    /// The issuer cannot issue this certificate (not a CA, wrong key, expired, path length).
    #[error("issuer {issuer:?} cannot issue this certificate: {reason}")]
    Issuer {
        /// The issuer's subject.
        issuer: String,
        /// Why not.
        reason: String,
    },
    /// A CA in the issuing chain may not issue this role (`sebIssuableRoles`, docs/GRANTS.md
    /// §5.1): a certificate of the role, or an intermediate that may issue more roles.
    #[error("role not delegated: the issuing CA {ancestor:?} may issue {} certificates, not {requested} (see `seb cert issue-ca --roles`)", .allowed.as_phrase())]
    RoleNotDelegated {
        /// The CA that does not delegate the role.
        ancestor: String,
        /// What it may issue.
        allowed: IssuableRoles,
        /// What was asked for.
        requested: String,
    },
    /// The grants asked for exceed the grants of an issuing CA (attenuation, docs/GRANTS.md §5).
    #[error("grant escalation: the requested grants exceed those of the issuing CA {ancestor:?}")]
    Escalation {
        /// The CA whose grants would be exceeded.
        ancestor: String,
        /// The first grant not covered.
        #[source]
        source: crate::authz::NotCovered,
    },
}

impl From<der::Error> for CaError {
    fn from(e: der::Error) -> Self {
        CaError::Encoding(e.to_string())
    }
}

impl From<x509_cert::builder::Error> for CaError {
    fn from(e: x509_cert::builder::Error) -> Self {
        CaError::Encoding(e.to_string())
    }
}

impl From<CertError> for CaError {
    fn from(e: CertError) -> Self {
        CaError::MalformedCertificate(e.to_string())
    }
}

/// What to put into a certificate for an agent, approver or executor.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The verified public key (from a CSR).
    pub public_key: SubjectPublicKeyInfoOwned,
    /// Subject name.
    pub subject: Name,
    /// Role and groups.
    pub role: Role,
    /// Grants (required for agents, refused for others).
    pub grants: Option<GrantSet>,
    /// Validity from now.
    pub ttl: Duration,
}

/// What to put into an intermediate CA certificate.
#[derive(Debug, Clone)]
pub struct IntermediateRequest {
    /// The intermediate's public key (from the HSM, or from a verified CSR when the key is
    /// held offline).
    pub public_key: SubjectPublicKeyInfoOwned,
    /// Subject name.
    pub subject: Name,
    /// Grants bounding everything beneath it; `None` bounds nothing (the ancestors' grants
    /// still apply).
    pub grants: Option<GrantSet>,
    /// The end-entity roles it may issue (`sebIssuableRoles`); at most those of every
    /// intermediate above it.
    pub roles: IssuableRoles,
    /// pathLenConstraint; `None` takes the tightest bound the ancestors leave (or none).
    pub path_len: Option<u8>,
    /// Validity from now.
    pub ttl: Duration,
}

/// A fresh random serial: 16 random bytes, positive, so at most 17 octets encoded (RFC 5280
/// §4.1.2.2 allows 20), with 127 bits of entropy.
pub fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CaError::Encoding(format!("no randomness: {e}")))?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    Ok(SerialNumber::new(&bytes)?)
}

/// Validity from `now - BACKDATE` to `now + ttl`.
pub fn validity_from(now: SystemTime, ttl: Duration) -> Result<Validity, CaError> {
    let start = now.checked_sub(BACKDATE).unwrap_or(now);
    let end = now
        .checked_add(ttl)
        .ok_or_else(|| CaError::Validity("overflow".into()))?;
    Ok(Validity::new(
        Time::try_from(start).map_err(|e| CaError::Validity(e.to_string()))?,
        Time::try_from(end).map_err(|e| CaError::Validity(e.to_string()))?,
    ))
}

/// Makes the self-signed root certificate for the key behind `signer`.
pub fn self_signed_root(
    signer: &dyn CaSigner,
    subject: &Name,
    validity: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let spki = signer_spki(signer)?;
    let unsigned = Unsigned {
        issuer: subject.clone(),
        subject: subject.clone(),
        kind: CertKind::Root,
        extra: Vec::new(),
        validity: validity_from(now, validity)?,
        public_key: spki,
    };
    unsigned.sign(signer)
}

/// Issues a broker service certificate (token, audit or TLS key) under the root.
pub fn issue_service(
    root_signer: &dyn CaSigner,
    root: &Certificate,
    public_key: SubjectPublicKeyInfoOwned,
    subject: &Name,
    kind: CertKind,
    validity: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    // Service certificates carry no sebRole or sebGrants: they are nobody's identity.
    let mut extra = Vec::new();
    if let CertKind::TlsServer { names } = &kind {
        extra.push(subject_alt_names(names)?);
    }
    if let CertKind::AttestationKey {
        ek_certificate_sha256: Some(digest),
    } = &kind
    {
        extra.push(seb_extension(
            crate::cert::SEB_EK_CERTIFICATE_OID,
            OctetString::new(digest.to_vec())?.to_der()?,
        )?);
    }
    let unsigned = Unsigned {
        issuer: root.tbs().subject().clone(),
        subject: subject.clone(),
        kind,
        extra,
        validity: clamp_to_issuer(validity_from(now, validity)?, root),
        public_key,
    };
    unsigned.sign(root_signer)
}

/// Issues a certificate for an agent, approver or executor directly under `issuer` (the root,
/// or an intermediate whose own issuers carry no grants). See [`issue_leaf_under`].
pub fn issue_leaf(
    signer: &dyn CaSigner,
    issuer: &Certificate,
    request: LeafRequest,
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    issue_leaf_under(signer, std::slice::from_ref(issuer), request, max_ttl, now)
}

/// Issues a certificate for an agent, approver or executor under `issuer_chain`: the issuing CA
/// first, then its issuers up to the root (the root may be left out: it bounds nothing).
/// `signer` must hold the issuing CA's key. The chain is trusted as given (the CLI builds it
/// with [`crate::chain::validate`]); the grants must be covered by every CA in it that carries
/// `sebGrants`.
pub fn issue_leaf_under(
    signer: &dyn CaSigner,
    issuer_chain: &[Certificate],
    request: LeafRequest,
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    issue_leaf_serving(signer, issuer_chain, request, &[], max_ttl, now)
}

/// Like [`issue_leaf_under`]; with `tls_names` (an executor's only), the certificate also
/// serves HTTPS under those DNS names and IP addresses (serverAuth beside clientAuth, SANs),
/// as `seb exec` does for agents.
pub fn issue_leaf_serving(
    signer: &dyn CaSigner,
    issuer_chain: &[Certificate],
    request: LeafRequest,
    tls_names: &[String],
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    if !tls_names.is_empty() && request.role.kind != RoleKind::Executor {
        return Err(CaError::Role(
            "only executor certificates serve HTTPS (--tls-name)".into(),
        ));
    }
    // The subject is the holder's name in every log, audit entry and approval screen: one with
    // a CN, as `seb keygen` writes, and never a CA's own name (a leaf named like its issuer is
    // how a certificate passes itself off as the CA in a human's eyes).
    let subject_text = request.subject.to_string();
    let subject_err = |reason: &str| CaError::Subject {
        subject: subject_text.clone(),
        reason: reason.to_owned(),
    };
    if !request.subject.iter().any(|atv| atv.oid == COMMON_NAME) {
        return Err(subject_err(
            "the CSR's subject has no common name (CN=...); make the CSR with `seb keygen --subject \"CN=...\"`",
        ));
    }
    if issuer_chain
        .iter()
        .any(|ca| ca.tbs().subject() == &request.subject)
    {
        return Err(subject_err(
            "the CSR's subject is the name of a CA on the issuing chain",
        ));
    }
    if request.ttl > max_ttl {
        return Err(CaError::Validity(format!(
            "requested {} but the CA issues at most {}",
            crate::duration::format(request.ttl),
            crate::duration::format(max_ttl)
        )));
    }
    match (request.role.kind, &request.grants) {
        (RoleKind::Agent, None) => {
            return Err(CaError::Role("an agent certificate needs --grants".into()))
        }
        (RoleKind::Approver, _) if request.role.groups.is_empty() => {
            return Err(CaError::Role(
                "an approver certificate needs at least one --group".into(),
            ))
        }
        (RoleKind::Broker, _) => {
            return Err(CaError::Role(
                "broker certificates are made by `seb init`, not `cert issue`".into(),
            ))
        }
        (RoleKind::Approver | RoleKind::Executor, Some(_)) => {
            return Err(CaError::Role(format!(
                "grants only make sense on agent certificates, not on an {} certificate",
                request.role.kind
            )))
        }
        _ => {}
    }
    let issuer = check_issuer_chain(signer, issuer_chain, false, now)?;
    check_role_delegation(
        issuer_chain,
        |roles| roles.contains(request.role.kind),
        || request.role.kind.to_string(),
    )?;
    if let Some(grants) = &request.grants {
        check_attenuation(grants, issuer_chain)?;
    }
    let mut extra = vec![role_extension(&request.role)?];
    if let Some(grants) = &request.grants {
        extra.push(grants_extension(grants)?);
    }
    let validity = validity_from(now, request.ttl)?;
    if validity.not_after.to_system_time() > issuer.not_after() {
        return Err(outlives_issuer(issuer, now));
    }
    if tls_names.is_empty() {
        extra.push(subject_as_alt_name(&request.subject)?);
    } else {
        extra.push(subject_alt_names(tls_names)?);
    }
    let kind = match request.role.kind {
        RoleKind::Executor => CertKind::Executor {
            names: tls_names.to_vec(),
        },
        _ => CertKind::Client,
    };
    let unsigned = Unsigned {
        issuer: issuer.tbs().subject().clone(),
        subject: request.subject,
        kind,
        extra,
        validity,
        public_key: request.public_key,
    };
    unsigned.sign(signer)
}

/// Issues an intermediate CA certificate under `issuer_chain` (the issuing CA first, then its
/// issuers up to the root, which may be left out). `signer` must hold the issuing CA's key.
///
/// Refuses (before signing) when [`check_intermediate`] does: grants not covered by every CA
/// above that carries grants, a path length the ancestors do not allow, an issuer that is not a
/// CA, expired, or not the signer's key, a validity outliving the issuer.
pub fn issue_intermediate(
    signer: &dyn CaSigner,
    issuer_chain: &[Certificate],
    request: IntermediateRequest,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let path_len = check_intermediate(
        issuer_chain,
        request.grants.as_ref(),
        request.roles,
        request.path_len,
        request.ttl,
        now,
    )?;
    let issuer = check_issuer_chain(signer, issuer_chain, true, now)?;
    let mut extra = vec![seb_extension(
        SEB_ISSUABLE_ROLES_OID,
        request.roles.to_der().map_err(CaError::Grants)?,
    )?];
    if let Some(grants) = &request.grants {
        extra.push(grants_extension(grants)?);
    }
    let unsigned = Unsigned {
        issuer: issuer.tbs().subject().clone(),
        subject: request.subject,
        kind: CertKind::Intermediate { path_len },
        extra,
        validity: validity_from(now, request.ttl)?,
        public_key: request.public_key,
    };
    unsigned.sign(signer)
}

/// The refusal of a certificate that would end after its issuer: which issuer, until when,
/// the longest `--ttl` that fits, and what to do when that is too short.
pub(crate) fn outlives_issuer(issuer: &Certificate, now: SystemTime) -> CaError {
    let until = der::DateTime::from_system_time(issuer.not_after())
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "an unreadable date".into());
    let left = issuer.not_after().duration_since(now).unwrap_or_default();
    CaError::Validity(format!(
        "the certificate would outlive its issuer {:?}, valid until {until}: the longest \
         --ttl that fits is {}h; if that is too short, the issuer itself needs replacing (a new \
         intermediate with `seb cert issue-ca`, or a new root: docs/OPERATIONS.md §11)",
        issuer.subject_string(),
        left.as_secs() / 3600
    ))
}

/// The `sebRole` extension (non-critical: generic tools such as `openssl verify` must accept
/// the certificate; seb itself treats the extension as authoritative).
pub fn role_extension(role: &Role) -> Result<Extension, CaError> {
    seb_extension(SEB_ROLE_OID, role.to_der().map_err(CaError::Grants)?)
}

/// The `sebGrants` extension (non-critical, for the same reason as [`role_extension`]).
pub fn grants_extension(grants: &GrantSet) -> Result<Extension, CaError> {
    seb_extension(SEB_GRANTS_OID, grants.to_der().map_err(CaError::Grants)?)
}

/// A non-critical extension with an encoded value.
fn seb_extension(oid: ObjectIdentifier, value: Vec<u8>) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value)?,
    })
}

fn signer_spki(signer: &dyn CaSigner) -> Result<SubjectPublicKeyInfoOwned, CaError> {
    SubjectPublicKeyInfoOwned::from_key(&signer.verifying_key())
        .map_err(|e| CaError::Encoding(e.to_string()))
}

fn clamp_to_issuer(mut validity: Validity, issuer: &Certificate) -> Validity {
    if validity.not_after.to_system_time() > issuer.not_after() {
        validity.not_after = issuer.tbs().validity().not_after;
    }
    validity
}

/// A certificate ready to be signed.
struct Unsigned {
    issuer: Name,
    subject: Name,
    kind: CertKind,
    extra: Vec<Extension>,
    validity: Validity,
    public_key: SubjectPublicKeyInfoOwned,
}

impl Unsigned {
    /// Has `x509-cert`'s builder assemble the TBSCertificate under seb's profile, the device
    /// sign its DER, and returns the certificate.
    fn sign(self, signer: &dyn CaSigner) -> Result<Certificate, CaError> {
        let profile = profile::Profile {
            issuer: self.issuer,
            subject: self.subject,
            kind: self.kind,
            extra: self.extra,
        };
        let mut builder =
            CertificateBuilder::new(profile, random_serial()?, self.validity, self.public_key)?;
        let key = BuilderKey(signer);
        let tbs = builder.finalize(&key)?;
        // Signed here rather than through `Builder::build`, which would hide the device's
        // error behind `signature::Error`.
        let signature = signer.sign_message(&tbs).map_err(CaError::Sign)?;
        let cert = builder.assemble(signature.to_der().to_bitstring()?, &key)?;
        Ok(Certificate::from_x509(cert)?)
    }
}

/// A [`CaSigner`] as `x509-cert`'s builder sees a signer: its public key and its algorithm
/// (ecdsa-with-SHA384). The builder only reads them; [`Unsigned::sign`] does the signing.
struct BuilderKey<'a>(&'a dyn CaSigner);

impl signature::Keypair for BuilderKey<'_> {
    type VerifyingKey = p384::ecdsa::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.0.verifying_key()
    }
}

impl spki::DynSignatureAlgorithmIdentifier for BuilderKey<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA384,
            parameters: None,
        })
    }
}

#[cfg(test)]
mod tests;
