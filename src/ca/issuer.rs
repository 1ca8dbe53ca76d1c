//! What an issuing CA may issue: its chain (currently valid CAs with keyCertSign, no
//! pathLenConstraint broken), the signer holding the issuer's key, and attenuation of grants
//! and roles along the chain. Checked before anything is signed.

use std::time::{Duration, SystemTime};

use super::{validity_from, CaError, CaSigner};
use crate::cert::{Certificate, SEB_GRANTS_OID, SEB_ISSUABLE_ROLES_OID};
use crate::grants::{GrantSet, IssuableRoles};

/// Everything [`issue_intermediate`](super::issue_intermediate) checks that does not need the
/// new key, so the CLI can refuse before generating a key in the device. Returns the
/// pathLenConstraint to put in the certificate: the requested one, or, when none is requested,
/// the tightest bound left by the ancestors (`None` if they set none).
pub fn check_intermediate(
    issuer_chain: &[Certificate],
    grants: Option<&GrantSet>,
    roles: IssuableRoles,
    path_len: Option<u8>,
    ttl: Duration,
    now: SystemTime,
) -> Result<Option<u8>, CaError> {
    let issuer = issuer_chain.first().ok_or_else(|| CaError::Issuer {
        issuer: String::new(),
        reason: "no issuer given".into(),
    })?;
    check_ca_chain(issuer_chain, true, now)?;
    check_role_delegation(
        issuer_chain,
        |above| roles.is_subset_of(above),
        || format!("intermediate CA ({roles})"),
    )?;
    if let Some(grants) = grants {
        grants.validate().map_err(CaError::Grants)?;
        check_attenuation(grants, issuer_chain)?;
    }
    let validity = validity_from(now, ttl)?;
    if validity.not_after.to_system_time() > issuer.not_after() {
        return Err(super::outlives_issuer(issuer, now));
    }
    // The most intermediates the new CA may have below it without breaking an ancestor's
    // pathLenConstraint: ancestor i already has i intermediates plus the new one below it.
    let mut allowed: Option<u8> = None;
    for (i, ancestor) in issuer_chain.iter().enumerate() {
        if let Some(limit) = basic_constraints(ancestor)?.and_then(|bc| bc.path_len_constraint) {
            let left = usize::from(limit).saturating_sub(i + 1);
            let left = u8::try_from(left).unwrap_or(u8::MAX);
            allowed = Some(allowed.map_or(left, |a| a.min(left)));
        }
    }
    match (path_len, allowed) {
        (Some(asked), Some(max)) if asked > max => Err(CaError::Issuer {
            issuer: issuer.subject_string(),
            reason: format!(
                "the CAs above allow at most {max} intermediate(s) below the new one, not {asked}"
            ),
        }),
        (Some(asked), _) => Ok(Some(asked)),
        (None, allowed) => Ok(allowed),
    }
}

/// Attenuation at issuance: every grant in `grants` must be covered by some grant of each CA
/// in `issuer_chain` that carries `sebGrants` (a CA without grants bounds nothing).
///
/// Then the whole chain the new certificate makes is checked as the decision will check it
/// ([`crate::authz::check_chain_attenuation`], within its bound on comparisons), so the CA
/// never issues a certificate that every request would be refused for.
pub fn check_attenuation(grants: &GrantSet, issuer_chain: &[Certificate]) -> Result<(), CaError> {
    let mut bounds = Vec::new();
    for (depth, ancestor) in issuer_chain.iter().enumerate() {
        let Some(ext) = ancestor.extension(SEB_GRANTS_OID) else {
            continue;
        };
        let bound = GrantSet::from_der(ext.extn_value.as_bytes()).map_err(|e| CaError::Issuer {
            issuer: ancestor.subject_string(),
            reason: format!("its sebGrants extension is invalid: {e}"),
        })?;
        crate::authz::grant_set_covered(&bound, grants).map_err(|source| CaError::Escalation {
            ancestor: ancestor.subject_string(),
            source,
        })?;
        bounds.push((depth + 1, bound));
    }
    let mut sets: Vec<(usize, &GrantSet)> = vec![(0, grants)];
    sets.extend(bounds.iter().map(|(depth, set)| (*depth, set)));
    crate::authz::check_chain_attenuation(&sets).map_err(|(_, reason)| CaError::Issuer {
        issuer: issuer_chain
            .first()
            .map(Certificate::subject_string)
            .unwrap_or_default(),
        reason,
    })
}

/// Role delegation at issuance: every intermediate of `issuer_chain` (the root issues every
/// role) must allow what is asked (`allows` its `sebIssuableRoles`; absent means agents only).
/// The decision re-checks the same along the chain (`authz::delegated_role`), which catches a
/// certificate an offline intermediate signed anyway.
pub(super) fn check_role_delegation(
    issuer_chain: &[Certificate],
    allows: impl Fn(IssuableRoles) -> bool,
    requested: impl Fn() -> String,
) -> Result<(), CaError> {
    for ca in issuer_chain.iter().filter(|ca| !is_root(ca)) {
        let roles = match ca.extension(SEB_ISSUABLE_ROLES_OID) {
            None => IssuableRoles::default(),
            Some(ext) => {
                IssuableRoles::from_der(ext.extn_value.as_bytes()).map_err(|e| CaError::Issuer {
                    issuer: ca.subject_string(),
                    reason: format!("its sebIssuableRoles extension is invalid: {e}"),
                })?
            }
        };
        if !allows(roles) {
            return Err(CaError::RoleNotDelegated {
                ancestor: ca.subject_string(),
                allowed: roles,
                requested: requested(),
            });
        }
    }
    Ok(())
}

/// Whether `ca` is a root: self-issued and self-signed. (An intermediate given the root's
/// name is not: its key is not the one that signed it.)
fn is_root(ca: &Certificate) -> bool {
    ca.is_self_issued() && crate::chain::verify_signature(ca, ca).is_ok()
}

/// Checks the issuing chain and that `signer` holds the issuer's key; returns the issuer.
pub(super) fn check_issuer_chain<'c>(
    signer: &dyn CaSigner,
    issuer_chain: &'c [Certificate],
    new_is_ca: bool,
    now: SystemTime,
) -> Result<&'c Certificate, CaError> {
    let issuer = check_ca_chain(issuer_chain, new_is_ca, now)?;
    let signer_key = crate::chain::CertKey::P384(signer.verifying_key());
    if crate::chain::CertKey::of(issuer).ok() != Some(signer_key) {
        return Err(CaError::Issuer {
            issuer: issuer.subject_string(),
            reason: "the signing key is not the key this certificate certifies".into(),
        });
    }
    Ok(issuer)
}

/// Every certificate in the chain is a currently valid CA allowed to sign certificates, and
/// no pathLenConstraint is broken by one more certificate (`new_is_ca`: one more CA) below.
fn check_ca_chain(
    issuer_chain: &[Certificate],
    new_is_ca: bool,
    now: SystemTime,
) -> Result<&Certificate, CaError> {
    let issuer = issuer_chain.first().ok_or_else(|| CaError::Issuer {
        issuer: String::new(),
        reason: "no issuer given".into(),
    })?;
    for (i, ca) in issuer_chain.iter().enumerate() {
        let refuse = |reason: String| CaError::Issuer {
            issuer: ca.subject_string(),
            reason,
        };
        if now < ca.not_before() || now > ca.not_after() {
            return Err(refuse("it is not valid now".into()));
        }
        let bc = basic_constraints(ca)?.filter(|bc| bc.ca);
        let Some(bc) = bc else {
            return Err(refuse("it is not a CA".into()));
        };
        let ku = ca
            .standard_extension::<x509_cert::ext::pkix::KeyUsage>()
            .map_err(CaError::from)?;
        if !ku.is_some_and(|ku| ku.key_cert_sign()) {
            return Err(refuse("its keyUsage lacks keyCertSign".into()));
        }
        let below = i + usize::from(new_is_ca);
        if let Some(limit) = bc.path_len_constraint {
            if below > usize::from(limit) {
                return Err(refuse(format!(
                    "its pathLenConstraint {limit} allows no further intermediate CA here"
                )));
            }
        }
    }
    Ok(issuer)
}

fn basic_constraints(
    cert: &Certificate,
) -> Result<Option<x509_cert::ext::pkix::BasicConstraints>, CaError> {
    cert.standard_extension::<x509_cert::ext::pkix::BasicConstraints>()
        .map_err(CaError::from)
}
