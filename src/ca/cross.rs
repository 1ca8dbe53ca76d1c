//! Cross-certificates for root rotation: the current root certifies a new root's key, so a
//! relying party that trusts only the old root accepts chains that end in the new root. A
//! cross-certificate lets no roles through: seb's role delegation never crosses it.

use std::time::{Duration, SystemTime};

use super::{clamp_to_issuer, seb_extension, validity_from, CaError, CaSigner, CertKind, Unsigned};
use crate::cert::{Certificate, SEB_ISSUABLE_ROLES_OID};
use crate::grants::IssuableRoles;

/// A cross-certificate for root rotation: the current root (`old_root`, its key behind
/// `signer`) certifies another root's key under that root's own name, as a CA without a path
/// length limit. A relying party that trusts only the old root then accepts a chain that ends
/// in the new root, with this certificate in place of the new root's self-signed one. Valid
/// for `ttl` at most, and never beyond either root.
///
/// Refuses a `new_root` that is not a self-signed CA certificate whose self-signature verifies
/// (the proof that whoever asks holds the new root's key), that is not P-384 like every
/// broker-held key, or that shares the old root's name or key.
pub fn cross_certificate(
    signer: &dyn CaSigner,
    old_root: &Certificate,
    new_root: &Certificate,
    ttl: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let refuse = |why: &str| Err(CaError::CrossCertificate(format!("the new root {why}")));
    let tbs = new_root.tbs();
    if tbs.issuer() != tbs.subject() || crate::chain::verify_signature(new_root, new_root).is_err()
    {
        return refuse("is not self-signed (its signature does not verify under its own key)");
    }
    let is_ca = new_root
        .standard_extension::<x509_cert::ext::pkix::BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.ca);
    if !is_ca {
        return refuse("is not a CA certificate (basicConstraints cA)");
    }
    if !matches!(
        crate::chain::CertKey::of(new_root),
        Ok(crate::chain::CertKey::P384(_))
    ) {
        return refuse("key is not ECDSA P-384");
    }
    if tbs.subject() == old_root.tbs().subject() {
        return refuse("has the current root's name: give it a new one ([ca] root_subject)");
    }
    if tbs.subject_public_key_info() == old_root.tbs().subject_public_key_info() {
        return refuse("has the current root's key");
    }
    if new_root.not_after() <= now {
        return refuse("has expired");
    }
    let validity = clamp_to_issuer(
        clamp_to_issuer(validity_from(now, ttl)?, new_root),
        old_root,
    );
    // Through it, generic path validation reaches the old root; seb's role delegation does not:
    // the old root's broker, which knows nothing of the new root's revocations, must not
    // serve the new root's holders.
    let no_roles = seb_extension(
        SEB_ISSUABLE_ROLES_OID,
        IssuableRoles::NONE.to_der().map_err(CaError::Grants)?,
    )?;
    let unsigned = Unsigned {
        issuer: old_root.tbs().subject().clone(),
        subject: tbs.subject().clone(),
        kind: CertKind::Root,
        extra: vec![no_roles],
        validity,
        public_key: tbs.subject_public_key_info().clone(),
    };
    unsigned.sign(signer)
}
