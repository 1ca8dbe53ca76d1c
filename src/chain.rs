//! Certification path validation for seb certificates (RFC 5280 §6, the subset seb needs).
//!
//! [`validate`] builds a path from a leaf through the given intermediates to one of the given
//! roots, matching issuer to subject by name and, where both are present, authority key
//! identifier to subject key identifier. On every link it checks the issuer's signature (ECDSA
//! P-256/P-384 with SHA-256/SHA-384), that the issuer is a CA (`basicConstraints cA`) allowed to
//! sign certificates (`keyUsage keyCertSign`), its `pathLenConstraint`, and that no certificate
//! carries a critical extension seb does not process. Paths are at most [`MAX_PATH_LEN`]
//! certificates and building gives up after [`MAX_SIGNATURE_CHECKS`] signature checks, so a
//! hostile bundle cannot make it loop or burn CPU.
//!
//! What this module deliberately leaves to its callers:
//!
//! * **Validity and revocation of the leaf and intermediates.** The decision engine
//!   ([`crate::authz::decide`]) checks them with its stable codes (`certificate_expired`,
//!   `certificate_not_yet_valid`, `certificate_revoked`) over [`ValidatedChain::chain_view`];
//!   the offline verifier checks validity itself. Only the root's validity is checked here,
//!   because the chain view excludes the root.
//! * **Grants and roles.** They are read here ([`cert_facts`]) but judged by `authz::decide`
//!   (and `authz::delegated_role`: which roles the intermediates on the path may issue).
//! * **Key purposes.** Path validation does not enforce extended key usage (it is understood,
//!   so a critical EKU is accepted). A caller that accepts a signature for one purpose checks
//!   the signer with [`require_purpose`] (exactly that one seb key purpose, and a signing
//!   certificate), and for the broker's service keys with [`ValidatedChain::require_service`]
//!   (the same, issued directly by the root: an intermediate CA, whatever it may issue, never
//!   vouches for a broker key).
//!
//! This module is pure: no I/O, no clock (the caller passes `now`), no device code. It compiles
//! with `--no-default-features`. It must never accept a path it has not fully checked.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use der::Encode;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName,
    SubjectKeyIdentifier,
};

use crate::authz::{CertFacts, ChainView};
use crate::cert::{Certificate, Purpose, SEB_GRANTS_OID, SEB_ISSUABLE_ROLES_OID, SEB_ROLE_OID};
use crate::grants::{GrantSet, IssuableRoles, Role};
use crate::serial::Serial;
use crate::time::unix;

mod key;
mod purpose;

pub use key::CertKey;
pub use purpose::{require_purpose, PurposeError};

/// Most certificates in a path, leaf and root included.
pub const MAX_PATH_LEN: usize = 8;
/// Most intermediates a caller may offer.
pub const MAX_INTERMEDIATES: usize = 32;
/// Most trusted roots a caller may offer.
pub const MAX_ROOTS: usize = 64;
/// Largest encoded certificate accepted (a `sebGrants` extension alone may be 256 KiB).
pub const MAX_CERT_LEN: usize = 320 * 1024;
/// Signature checks one path building may spend before giving up.
pub const MAX_SIGNATURE_CHECKS: usize = 64;

/// ecdsa-with-SHA256.
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384.
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// Why a path was refused. [`ChainError::code`] is the stable code for clients and logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Too many certificates were offered.
    #[error("{count} {what} offered, more than the limit of {max}")]
    TooManyCertificates {
        /// `intermediates` or `roots`.
        what: &'static str,
        /// How many were offered.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A certificate is larger than [`MAX_CERT_LEN`].
    #[error("certificate {subject:?} is {len} bytes, more than the limit of {max}")]
    CertificateTooLarge {
        /// Its subject.
        subject: String,
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A certificate is not well-formed for seb (version, algorithms, extension encodings).
    #[error("malformed certificate {subject:?}: {reason}")]
    Malformed {
        /// Its subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature algorithm is not one seb accepts.
    #[error("certificate {subject:?} is signed with {algorithm}; seb accepts ecdsa-with-SHA256 and ecdsa-with-SHA384")]
    UnsupportedSignatureAlgorithm {
        /// The signed certificate's subject.
        subject: String,
        /// The algorithm's OID.
        algorithm: String,
    },
    /// An issuer's key is not EC P-256 or P-384.
    #[error("the key of {subject:?} is not supported: {reason} (seb accepts EC P-256 and P-384)")]
    UnsupportedKey {
        /// The key holder's subject.
        subject: String,
        /// What kind of key it is.
        reason: String,
    },
    /// No offered certificate is the issuer of this one.
    #[error("no trusted root or offered intermediate issued {subject:?} (issuer {issuer:?})")]
    UnknownIssuer {
        /// The orphan certificate's subject.
        subject: String,
        /// The issuer it names.
        issuer: String,
    },
    /// The signature does not verify under the issuer's key.
    #[error("the signature on {subject:?} does not verify under the key of {issuer:?}")]
    BadSignature {
        /// The signed certificate's subject.
        subject: String,
        /// The issuer tried.
        issuer: String,
    },
    /// The issuer is not a CA: no basicConstraints, or `cA` false (whatever its keyUsage says).
    #[error("{issuer:?} signed {subject:?} but is not a CA (basicConstraints cA is not set)")]
    NotACa {
        /// The would-be issuer.
        issuer: String,
        /// The certificate it signed.
        subject: String,
    },
    /// The issuer is a CA, but its key usage (absent or present) lacks certificate signing.
    #[error("{issuer:?} signed {subject:?} but its keyUsage lacks keyCertSign")]
    NoKeyCertSign {
        /// The would-be issuer.
        issuer: String,
        /// The certificate it signed.
        subject: String,
    },
    /// An issuer's `pathLenConstraint` is exceeded.
    #[error("{issuer:?} allows {path_len} intermediate CA(s) below it, the path has {below}")]
    PathLenExceeded {
        /// The constraining CA.
        issuer: String,
        /// Its pathLenConstraint.
        path_len: u8,
        /// Intermediates between it and the leaf.
        below: usize,
    },
    /// No path of at most [`MAX_PATH_LEN`] certificates reaches a root.
    #[error("no path of at most {max} certificates reaches a trusted root")]
    PathTooLong {
        /// The limit.
        max: usize,
    },
    /// Path building spent its signature-check budget.
    #[error("path building gave up after {max} signature checks")]
    TooComplex {
        /// The budget.
        max: usize,
    },
    /// A certificate carries a critical extension seb does not process.
    #[error("{subject:?} carries the critical extension {oid}, which seb does not process")]
    UnknownCriticalExtension {
        /// The certificate's subject.
        subject: String,
        /// The extension's OID.
        oid: String,
    },
    /// The leaf's key usage does not include digitalSignature: its key may not sign, and every
    /// seb key signs (TLS, approvals, receipts, tokens, quotes).
    #[error("{subject:?} has a keyUsage without digitalSignature: its key may not sign")]
    LeafCannotSign {
        /// Its subject.
        subject: String,
    },
    /// The leaf is itself one of the trusted roots.
    #[error("{subject:?} is a trusted root, not an end-entity certificate")]
    LeafIsRoot {
        /// Its subject.
        subject: String,
    },
    /// The root the path reached is not valid yet.
    #[error(
        "the trusted root {subject:?} is not valid before {not_before} (now {now}, Unix seconds)"
    )]
    RootNotYetValid {
        /// The root's subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notBefore, Unix seconds.
        not_before: u64,
    },
    /// The root the path reached has expired.
    #[error("the trusted root {subject:?} expired at {not_after} (now {now}, Unix seconds)")]
    RootExpired {
        /// The root's subject.
        subject: String,
        /// Now, Unix seconds.
        now: u64,
        /// Its notAfter, Unix seconds.
        not_after: u64,
    },
}

impl ChainError {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::TooManyCertificates { .. } | ChainError::CertificateTooLarge { .. } => {
                "chain_too_large"
            }
            ChainError::Malformed { .. } => "malformed_certificate",
            ChainError::UnsupportedSignatureAlgorithm { .. }
            | ChainError::UnsupportedKey { .. } => "unsupported_algorithm",
            ChainError::UnknownIssuer { .. } => "unknown_ca",
            ChainError::BadSignature { .. } => "bad_signature",
            // Two codes, so that a log (and a test) tells which of the two checks refused.
            ChainError::NotACa { .. } => "not_a_ca",
            ChainError::NoKeyCertSign { .. } => "issuer_lacks_key_cert_sign",
            ChainError::PathLenExceeded { .. } => "path_len_exceeded",
            ChainError::PathTooLong { .. } | ChainError::TooComplex { .. } => "path_too_long",
            ChainError::UnknownCriticalExtension { .. } => "unknown_critical_extension",
            ChainError::LeafIsRoot { .. } => "leaf_is_root",
            ChainError::LeafCannotSign { .. } => "leaf_key_usage",
            ChainError::RootNotYetValid { .. } => "certificate_not_yet_valid",
            ChainError::RootExpired { .. } => "certificate_expired",
        }
    }
}

/// A path whose signatures and CA structure have been checked: leaf first, root last.
#[derive(Clone, Debug)]
pub struct ValidatedChain<'a> {
    /// Invariant: at least two certificates (a leaf is never its own root), so the indexing
    /// below cannot fail.
    path: Vec<&'a Certificate>,
    /// The serial of each certificate of `path`, in the same order.
    serials: Vec<Serial>,
}

impl<'a> ValidatedChain<'a> {
    /// The end-entity certificate.
    pub fn leaf(&self) -> &'a Certificate {
        self.path[0]
    }

    /// The intermediates, nearest the leaf first (possibly none).
    pub fn intermediates(&self) -> &[&'a Certificate] {
        &self.path[1..self.path.len() - 1]
    }

    /// The trusted root the path ends at.
    pub fn root(&self) -> &'a Certificate {
        self.path[self.path.len() - 1]
    }

    /// The whole path, leaf first, root last.
    pub fn path(&self) -> &[&'a Certificate] {
        &self.path
    }

    /// Checks that the leaf is a broker service key certificate for `purpose`: issued
    /// directly by the root (no intermediate on the path) and [`require_purpose`].
    pub fn require_service(&self, purpose: Purpose) -> Result<(), PurposeError> {
        if let Some(issuer) = self.intermediates().first() {
            return Err(PurposeError::NotIssuedByRoot {
                subject: self.leaf().subject_string(),
                issuer: issuer.subject_string(),
            });
        }
        require_purpose(self.leaf(), purpose)
    }

    /// What the decision engine needs: the facts of the leaf and of every intermediate,
    /// excluding the self-signed root (which authorises everything it signs).
    pub fn chain_view(&self) -> ChainView {
        let facts = |i: usize| cert_facts(self.path[i], self.serials[i].clone());
        ChainView::new(facts(0), (1..self.path.len() - 1).map(facts).collect())
    }

    /// The canonical serials of the whole path, leaf first, root last.
    pub fn serials(&self) -> &[Serial] {
        &self.serials
    }
}

/// The decision-relevant facts of one certificate of a validated path, with its serial. A
/// malformed `sebGrants` becomes `Some(Err(..))` (the decision denies
/// `invalid_grants_extension`); a malformed `sebRole` becomes `None` (the decision denies
/// `wrong_role`); a malformed `sebIssuableRoles` becomes `Some(Err(..))` (an intermediate
/// carrying it delegates no role: `role_not_delegated`).
fn cert_facts(cert: &Certificate, serial: Serial) -> CertFacts {
    CertFacts {
        serial,
        not_before: cert.not_before(),
        not_after: cert.not_after(),
        role: cert
            .extension(SEB_ROLE_OID)
            .and_then(|e| Role::from_der(e.extn_value.as_bytes()).ok()),
        grants: cert
            .extension(SEB_GRANTS_OID)
            .map(|e| GrantSet::from_der(e.extn_value.as_bytes())),
        issuable_roles: cert
            .extension(SEB_ISSUABLE_ROLES_OID)
            .map(|e| IssuableRoles::from_der(e.extn_value.as_bytes())),
    }
}

/// Builds and checks the path from `leaf` through `intermediates` (any order, any extras) to
/// one of `roots`. `now` is used only for the root's validity (see the module documentation).
pub fn validate<'a>(
    leaf: &'a Certificate,
    intermediates: &'a [Certificate],
    roots: &'a [Certificate],
    now: SystemTime,
) -> Result<ValidatedChain<'a>, ChainError> {
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(ChainError::TooManyCertificates {
            what: "intermediates",
            count: intermediates.len(),
            max: MAX_INTERMEDIATES,
        });
    }
    if roots.len() > MAX_ROOTS {
        return Err(ChainError::TooManyCertificates {
            what: "roots",
            count: roots.len(),
            max: MAX_ROOTS,
        });
    }
    for cert in std::iter::once(leaf).chain(intermediates).chain(roots) {
        let len = cert.x509().encoded_len().map_err(|e| malformed(cert, e))?;
        let len = usize::try_from(u32::from(len)).unwrap_or(usize::MAX);
        if len > MAX_CERT_LEN {
            return Err(ChainError::CertificateTooLarge {
                subject: cert.subject_string(),
                len,
                max: MAX_CERT_LEN,
            });
        }
    }
    if roots.iter().any(|r| r == leaf) {
        return Err(ChainError::LeafIsRoot {
            subject: leaf.subject_string(),
        });
    }
    check_structure(leaf)?;
    // Agents, approvers and executors hold ECDSA P-256 or P-384 keys (ARCHITECTURE §4), as
    // `seb cert issue` requires of a CSR; an offline intermediate must not widen that.
    CertKey::from_spki(leaf.tbs().subject_public_key_info()).map_err(|reason| {
        ChainError::UnsupportedKey {
            subject: leaf.subject_string(),
            reason,
        }
    })?;

    let mut builder = Builder {
        intermediates,
        roots,
        used: vec![false; intermediates.len()],
        checks: 0,
    };
    let mut path = vec![leaf];
    builder.extend(&mut path)?;

    let root = path[path.len() - 1];
    let now_s = unix(now);
    if now < root.not_before() {
        return Err(ChainError::RootNotYetValid {
            subject: root.subject_string(),
            now: now_s,
            not_before: unix(root.not_before()),
        });
    }
    if now > root.not_after() {
        return Err(ChainError::RootExpired {
            subject: root.subject_string(),
            now: now_s,
            not_after: unix(root.not_after()),
        });
    }
    // Checked once the path is known (a root or a stranger is refused for that first).
    // RFC 5280 §4.2.1.3: with a keyUsage, the key is used for those purposes only.
    // A CA validated as the start of a path (an intermediate checked against its root) signs
    // certificates, not messages: `check_issuer` holds its key usage to keyCertSign.
    let usage = leaf
        .standard_extension::<KeyUsage>()
        .map_err(|e| malformed(leaf, e))?;
    let is_ca = leaf
        .standard_extension::<BasicConstraints>()
        .map_err(|e| malformed(leaf, e))?
        .is_some_and(|bc| bc.ca);
    if !is_ca && usage.is_some_and(|ku| !ku.digital_signature()) {
        return Err(ChainError::LeafCannotSign {
            subject: leaf.subject_string(),
        });
    }
    // A zero or negative serial (RFC 5280 forbids both) could not be told apart from the
    // positive serial with the same bytes, so a revocation could miss it: refused.
    let serials = path
        .iter()
        .map(|cert| Serial::of(cert).map_err(|e| malformed(cert, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ValidatedChain { path, serials })
}

/// Depth-first path building with backtracking over the candidates for each issuer.
struct Builder<'a> {
    intermediates: &'a [Certificate],
    roots: &'a [Certificate],
    used: Vec<bool>,
    checks: usize,
}

impl<'a> Builder<'a> {
    /// Extends `path` (leaf first) up to a root. On failure `path` is as it was given.
    fn extend(&mut self, path: &mut Vec<&'a Certificate>) -> Result<(), ChainError> {
        let child = path[path.len() - 1];
        // Intermediates already in the path, i.e. between a new issuer and the leaf.
        let below = path.len() - 1;
        let mut best: Option<ChainError> = None;
        let note = |e: ChainError, best: &mut Option<ChainError>| {
            // Keep the most informative failure: anything beats "unknown issuer".
            if best
                .as_ref()
                .is_none_or(|b| matches!(b, ChainError::UnknownIssuer { .. }))
            {
                *best = Some(e);
            }
        };

        for root in self.roots {
            if !names_issuer(child, root)? {
                continue;
            }
            match self.link(child, root, below) {
                Ok(()) => {
                    path.push(root);
                    return Ok(());
                }
                Err(e @ ChainError::TooComplex { .. }) => return Err(e),
                Err(e) => note(e, &mut best),
            }
        }

        for (index, candidate) in self.intermediates.iter().enumerate() {
            if self.used[index] || path.contains(&candidate) {
                continue;
            }
            if !names_issuer(child, candidate)? {
                continue;
            }
            if path.len() + 1 >= MAX_PATH_LEN {
                // Taking this intermediate leaves no room for a root.
                note(ChainError::PathTooLong { max: MAX_PATH_LEN }, &mut best);
                continue;
            }
            if let Err(e) =
                check_structure(candidate).and_then(|()| self.link(child, candidate, below))
            {
                if matches!(e, ChainError::TooComplex { .. }) {
                    return Err(e);
                }
                note(e, &mut best);
                continue;
            }
            self.used[index] = true;
            path.push(candidate);
            match self.extend(path) {
                Ok(()) => return Ok(()),
                Err(e @ ChainError::TooComplex { .. }) => return Err(e),
                Err(e) => {
                    path.pop();
                    self.used[index] = false;
                    // A deeper failure says more than a sibling's "unknown issuer".
                    best = Some(match best {
                        Some(b) if !matches!(b, ChainError::UnknownIssuer { .. }) => b,
                        _ => e,
                    });
                }
            }
        }

        Err(best.unwrap_or_else(|| ChainError::UnknownIssuer {
            subject: child.subject_string(),
            issuer: child.issuer_string(),
        }))
    }

    /// Checks that `issuer` may have issued `child` with `below` intermediates under it, and
    /// that it did (the signature).
    fn link(
        &mut self,
        child: &Certificate,
        issuer: &Certificate,
        below: usize,
    ) -> Result<(), ChainError> {
        check_issuer(child, issuer, below)?;
        if issuer != child {
            // A root is checked for structure when it is used; its self-signature is not
            // what makes it trusted (being in `roots` does).
            check_structure(issuer)?;
        }
        if self.checks >= MAX_SIGNATURE_CHECKS {
            return Err(ChainError::TooComplex {
                max: MAX_SIGNATURE_CHECKS,
            });
        }
        self.checks += 1;
        verify_signature(child, issuer)
    }
}

/// Whether `candidate`'s subject is `child`'s issuer, and the key identifiers, where both are
/// present, agree.
fn names_issuer(child: &Certificate, candidate: &Certificate) -> Result<bool, ChainError> {
    if child.tbs().issuer() != candidate.tbs().subject() {
        return Ok(false);
    }
    let aki = child
        .standard_extension::<AuthorityKeyIdentifier>()
        .map_err(|e| malformed(child, e))?
        .and_then(|a| a.key_identifier);
    let ski = candidate
        .standard_extension::<SubjectKeyIdentifier>()
        .map_err(|e| malformed(candidate, e))?;
    Ok(match (aki, ski) {
        (Some(aki), Some(ski)) => aki == ski.0,
        _ => true,
    })
}

/// Per-certificate rules: v3, one signature algorithm named consistently, standard extensions
/// that decode, and no critical extension seb does not process.
fn check_structure(cert: &Certificate) -> Result<(), ChainError> {
    if cert.tbs().version() != Version::V3 {
        return Err(malformed(cert, "not an X.509 v3 certificate"));
    }
    if cert.tbs().signature() != cert.x509().signature_algorithm() {
        return Err(malformed(
            cert,
            "the signature algorithm inside and outside the signed part differ",
        ));
    }
    for ext in cert.tbs().extensions().into_iter().flatten() {
        if ext.critical && !is_processed(&ext.extn_id) {
            return Err(ChainError::UnknownCriticalExtension {
                subject: cert.subject_string(),
                oid: ext.extn_id.to_string(),
            });
        }
    }
    cert.standard_extension::<BasicConstraints>()
        .map_err(|e| malformed(cert, e))?;
    cert.standard_extension::<KeyUsage>()
        .map_err(|e| malformed(cert, e))?;
    Ok(())
}

/// The extensions seb understands (and so may be critical).
fn is_processed(oid: &ObjectIdentifier) -> bool {
    use der::oid::AssociatedOid;
    [
        BasicConstraints::OID,
        KeyUsage::OID,
        ExtendedKeyUsage::OID,
        SubjectAltName::OID,
        SubjectKeyIdentifier::OID,
        AuthorityKeyIdentifier::OID,
        SEB_GRANTS_OID,
        SEB_ROLE_OID,
        SEB_ISSUABLE_ROLES_OID,
    ]
    .contains(oid)
}

/// CA rules for `issuer` signing `child` with `below` intermediates between it and the leaf.
fn check_issuer(child: &Certificate, issuer: &Certificate, below: usize) -> Result<(), ChainError> {
    let names = || (issuer.subject_string(), child.subject_string());
    let bc = issuer
        .standard_extension::<BasicConstraints>()
        .map_err(|e| malformed(issuer, e))?;
    let Some(bc) = bc.filter(|bc| bc.ca) else {
        let (issuer, subject) = names();
        return Err(ChainError::NotACa { issuer, subject });
    };
    let ku = issuer
        .standard_extension::<KeyUsage>()
        .map_err(|e| malformed(issuer, e))?;
    if !ku.is_some_and(|ku| ku.key_cert_sign()) {
        let (issuer, subject) = names();
        return Err(ChainError::NoKeyCertSign { issuer, subject });
    }
    if let Some(path_len) = bc.path_len_constraint {
        if below > usize::from(path_len) {
            return Err(ChainError::PathLenExceeded {
                issuer: issuer.subject_string(),
                path_len,
                below,
            });
        }
    }
    Ok(())
}

/// The trust anchors of a bundle: its self-issued certificates, each of which must be validly
/// self-signed. The rest (intermediates and service certificates, which `GET /v1/trust` serves
/// beside the root) anchors nothing: a path may go through an intermediate, and a service
/// certificate must still be issued by one of these directly.
pub fn bundle_roots(certs: &[Certificate]) -> Result<Vec<Certificate>, String> {
    let mut roots = Vec::new();
    for cert in certs {
        if cert.is_self_issued() {
            verify_signature(cert, cert).map_err(|e| {
                format!(
                    "self-issued certificate {:?} is not validly self-signed: {e}",
                    cert.subject_string()
                )
            })?;
            roots.push(cert.clone());
        }
    }
    Ok(roots)
}

/// Verifies `child`'s signature under `issuer`'s public key (and nothing else: no CA or name
/// checks). Used for self-signatures of roots in a trust bundle.
pub fn verify_signature(child: &Certificate, issuer: &Certificate) -> Result<(), ChainError> {
    let algorithm = child.x509().signature_algorithm();
    if algorithm.parameters.is_some() {
        return Err(malformed(
            child,
            "ECDSA signature algorithm with parameters",
        ));
    }
    let tbs = child.tbs().to_der().map_err(|e| malformed(child, e))?;
    let digest: Vec<u8> = match algorithm.oid {
        ECDSA_SHA256 => <sha2::Sha256 as sha2::Digest>::digest(&tbs).to_vec(),
        ECDSA_SHA384 => <sha2::Sha384 as sha2::Digest>::digest(&tbs).to_vec(),
        other => {
            return Err(ChainError::UnsupportedSignatureAlgorithm {
                subject: child.subject_string(),
                algorithm: other.to_string(),
            })
        }
    };
    let signature = child
        .x509()
        .signature()
        .as_bytes()
        .ok_or_else(|| malformed(child, "signature BIT STRING has unused bits"))?;
    let key = CertKey::from_spki(issuer.tbs().subject_public_key_info()).map_err(|reason| {
        ChainError::UnsupportedKey {
            subject: issuer.subject_string(),
            reason,
        }
    })?;
    if key.verify_prehash_der(&digest, signature) {
        Ok(())
    } else {
        Err(ChainError::BadSignature {
            subject: child.subject_string(),
            issuer: issuer.subject_string(),
        })
    }
}

fn malformed(cert: &Certificate, reason: impl std::fmt::Display) -> ChainError {
    ChainError::Malformed {
        subject: cert.subject_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
