//! The authorization decision: from a certificate chain's facts, a revocation view, a request
//! and the time, to Allow or Deny with a stable code.
//!
//! [`decide`] is a pure function: no I/O, no clock, no x509 parsing (the caller extracts
//! [`CertFacts`]), no randomness, so the same inputs always give the same decision and every
//! branch is testable. It must never allow on doubt: anything malformed is a Deny, and it
//! never panics.

pub mod cover;
mod deciding;
pub mod matching;

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::canonical;
use crate::grants::syntax;
use crate::grants::{ApprovalRule, Grant, GrantError, GrantSet, IssuableRoles, Role, RoleKind};
use crate::serial::Serial;

pub use cover::{covers, grant_set_covered, NotCovered};
pub use deciding::deciding_grant;
use deciding::stricter_rule;

/// The most grant-against-grant comparisons the attenuation check of one chain makes; a chain
/// that needs more is refused (`grant_chain_escalation`). A CA's key holder chooses the grant
/// sets. The verdict is remembered by the grant sets along the path, so a certificate holder
/// cannot make it run again by presenting the same grants in new bytes; one with a CA key can
/// by issuing new grant sets, and each costs at most this many comparisons (about 50 ms).
/// A certificate with as many grants as its issuer needs n(n+1)/2, so about 180 grants on
/// each of two levels fit.
pub const MAX_GRANT_COMPARISONS: usize = 1 << 14;

/// What the decision needs to know about one certificate, extracted by the caller.
#[derive(Debug)]
pub struct CertFacts {
    /// The certificate's serial number, canonical (the positive integer, no sign byte).
    pub serial: Serial,
    /// Start of validity (inclusive).
    pub not_before: SystemTime,
    /// End of validity (inclusive, as in RFC 5280).
    pub not_after: SystemTime,
    /// The decoded `sebRole` extension; `None` if absent.
    pub role: Option<Role>,
    /// The decoded `sebGrants` extension: `None` if absent, `Some(Err)` if it did not decode.
    pub grants: Option<Result<GrantSet, GrantError>>,
    /// The decoded `sebIssuableRoles` extension (meaningful on intermediates): `None` if
    /// absent (agents only), `Some(Err)` if it did not decode (no role at all).
    pub issuable_roles: Option<Result<IssuableRoles, GrantError>>,
}

/// A certificate chain whose signatures the caller has already verified up to a trusted root.
#[derive(Debug)]
pub struct ChainView {
    /// The agent's certificate.
    pub leaf: CertFacts,
    /// The issuers, nearest first, up to but excluding the root (which authorises everything
    /// it signs and so imposes no grant bound).
    pub ancestors: Vec<CertFacts>,
    /// SHA-256 over the grant sets along the path, leaf first: the attenuation verdict
    /// depends on nothing else, so it is remembered under this key ([`VERDICTS`]). `None`
    /// when fewer than two certificates carry grants, or a set could not be encoded again
    /// (then nothing is remembered).
    grants_key: Option<[u8; 32]>,
}

impl ChainView {
    /// The view of a chain whose signatures were verified up to a trusted root.
    pub fn new(leaf: CertFacts, ancestors: Vec<CertFacts>) -> Self {
        let grants_key = grants_key(std::iter::once(&leaf).chain(&ancestors));
        Self {
            leaf,
            ancestors,
            grants_key,
        }
    }
}

/// The key of a path's grant sets (see [`ChainView`]): each certificate's position is marked,
/// with its set's DER and length when it has one. `None` with fewer than two sets: there is
/// no pair to compare, and nothing worth remembering.
fn grants_key<'a>(path: impl Iterator<Item = &'a CertFacts> + Clone) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    if path.clone().filter(|facts| facts.grants.is_some()).count() < 2 {
        return None;
    }
    let mut hash = Sha256::new();
    for facts in path {
        match &facts.grants {
            None => hash.update([0]),
            Some(Ok(set)) => {
                let der = set.to_der().ok()?;
                hash.update([1]);
                hash.update((der.len() as u64).to_be_bytes());
                hash.update(&der);
            }
            Some(Err(_)) => hash.update([2]),
        }
    }
    Some(hash.finalize().into())
}

/// Attenuation verdicts by [`ChainView`]'s grants key: a chain whose certificates carry the
/// same grants as one already checked (the same chain again, a new leaf with the same grants,
/// a leaf whose signature was respelt) is not checked again. Emptied when it reaches
/// [`MAX_VERDICTS`].
type Verdicts = std::collections::HashMap<[u8; 32], Result<(), (DenyCode, String)>>;
static VERDICTS: std::sync::LazyLock<std::sync::Mutex<Verdicts>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(Verdicts::new()));

/// Most attenuation verdicts remembered.
const MAX_VERDICTS: usize = 4096;

/// [`check_chain_attenuation`] of `chain`'s grant sets, remembered by their key.
fn attenuation_verdict(
    chain: &ChainView,
    sets: &[(usize, &GrantSet)],
) -> Result<(), (DenyCode, String)> {
    // One set (a root-issued agent): no pair to compare, no lookup on the request's path.
    let Some(key) = chain.grants_key.filter(|_| sets.len() > 1) else {
        return check_chain_attenuation(sets);
    };
    if let Some(known) = VERDICTS.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return known.clone();
    }
    let verdict = check_chain_attenuation(sets);
    let mut verdicts = VERDICTS.lock().unwrap_or_else(|p| p.into_inner());
    if verdicts.len() >= MAX_VERDICTS {
        verdicts.clear();
    }
    verdicts.insert(key, verdict.clone());
    verdict
}

/// The revocation status the broker knows.
pub trait RevocationView {
    /// Whether the certificate with this serial is revoked.
    fn is_revoked(&self, serial: &Serial) -> bool;
}

/// What an agent asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The concrete operation (`deploy.rollout`).
    pub operation: String,
    /// The concrete resource (`prod/payments/api`).
    pub resource: String,
    /// The parameters: a JSON object.
    pub params: Value,
}

/// The outcome of [`decide`].
// Built once per request and consumed at once; boxing the larger variant would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A token may be issued (after approvals, if `approval` is set).
    Allow {
        /// Position in the leaf's grants of the first grant that allows the request.
        grant_index: usize,
        /// That grant.
        grant: Grant,
        /// Token lifetime: min(grant max_ttl, broker max, remaining validity of the chain).
        token_ttl: Duration,
        /// Approvals required before the token is released.
        approval: Option<ApprovalRule>,
        /// SHA-384 over the JCS of `{operation, resource, params}`: what tokens and approvals
        /// bind to.
        request_digest: [u8; 48],
    },
    /// Refused.
    Deny {
        /// Stable code for clients and the audit log.
        code: DenyCode,
        /// Human-readable reason; names the certificate or grant, never secrets.
        reason: String,
    },
}

impl Decision {
    fn deny(code: DenyCode, reason: impl Into<String>) -> Self {
        Decision::Deny {
            code,
            reason: reason.into(),
        }
    }

    /// The deny code, if this is a denial.
    pub fn deny_code(&self) -> Option<DenyCode> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { code, .. } => Some(*code),
        }
    }
}

/// Stable reasons for a denial; [`DenyCode::as_str`] is what the API returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyCode {
    /// A certificate in the chain is past its `notAfter` (or too close to it to issue a token).
    CertificateExpired,
    /// A certificate in the chain is before its `notBefore`.
    CertificateNotYetValid,
    /// A certificate in the chain is revoked.
    CertificateRevoked,
    /// The leaf is not an agent certificate (or has no role).
    WrongRole,
    /// An intermediate above the leaf may not issue the leaf's role (`sebIssuableRoles`), or
    /// may issue more roles than an intermediate above it.
    RoleNotDelegated,
    /// A `sebGrants` extension in the chain did not decode or validate.
    InvalidGrantsExtension,
    /// The leaf carries no `sebGrants`.
    NoGrants,
    /// A certificate's grants are not covered by an ancestor's grants.
    GrantChainEscalation,
    /// The request's operation is outside the grammar.
    InvalidOperation,
    /// The request's resource is outside the grammar (traversal, encoding, look-alikes...).
    InvalidResource,
    /// The request's params are not a JSON object, or cannot be canonicalised.
    InvalidRequest,
    /// No grant names this operation.
    OperationNotGranted,
    /// A grant names the operation, but none the resource.
    ResourceNotGranted,
    /// A grant names operation and resource, but the parameters break its constraints.
    ParamConstraintViolated,
}

impl DenyCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [DenyCode; 14] = [
        DenyCode::CertificateExpired,
        DenyCode::CertificateNotYetValid,
        DenyCode::CertificateRevoked,
        DenyCode::WrongRole,
        DenyCode::RoleNotDelegated,
        DenyCode::InvalidGrantsExtension,
        DenyCode::NoGrants,
        DenyCode::GrantChainEscalation,
        DenyCode::InvalidOperation,
        DenyCode::InvalidResource,
        DenyCode::InvalidRequest,
        DenyCode::OperationNotGranted,
        DenyCode::ResourceNotGranted,
        DenyCode::ParamConstraintViolated,
    ];

    /// The stable snake_case code.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyCode::CertificateExpired => "certificate_expired",
            DenyCode::CertificateNotYetValid => "certificate_not_yet_valid",
            DenyCode::CertificateRevoked => "certificate_revoked",
            DenyCode::WrongRole => "wrong_role",
            DenyCode::RoleNotDelegated => "role_not_delegated",
            DenyCode::InvalidGrantsExtension => "invalid_grants_extension",
            DenyCode::NoGrants => "no_grants",
            DenyCode::GrantChainEscalation => "grant_chain_escalation",
            DenyCode::InvalidOperation => "invalid_operation",
            DenyCode::InvalidResource => "invalid_resource",
            DenyCode::InvalidRequest => "invalid_request",
            DenyCode::OperationNotGranted => "operation_not_granted",
            DenyCode::ResourceNotGranted => "resource_not_granted",
            DenyCode::ParamConstraintViolated => "param_constraint_violated",
        }
    }
}

impl std::fmt::Display for DenyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a chain authorizes before any request is looked at: the leaf's grants once the chain
/// passed [`decide`]'s steps 1 to 4, and the longest token lifetime it still allows.
#[derive(Clone, Debug)]
pub struct Authority<'a> {
    /// The leaf's grants. Each is covered by a grant of every ancestor that carries grants
    /// (attenuation holds), so no intermediate's limit widens or narrows them further.
    pub grants: &'a GrantSet,
    /// The grants of the issuers that carry some, as (depth, grants), nearest first: a request
    /// is decided by each of them too, and the strictest approval rule along the chain holds
    /// (attenuation compares grants one by one; the decision is first-match per set).
    pub issuers: Vec<(usize, &'a GrantSet)>,
    /// min(broker max lifetime, time left before the first certificate of the chain expires):
    /// no token outlives it, whatever a grant's `max_ttl` says.
    pub ttl_cap: Duration,
}

/// Decides a request. Checks, in order (the first failure is the answer):
///
/// 1. every certificate, leaf first: revoked, then not yet valid, then expired;
/// 2. the leaf's role is `agent`, and every intermediate above it may issue agents
///    ([`delegated_role`]);
/// 3. every `sebGrants` in the chain decoded; the leaf has grants;
/// 4. attenuation: each certificate's grants are covered by the grants of every ancestor that
///    carries them (an ancestor without grants bounds nothing but breaks no link);
/// 5. the request is well-formed (operation, resource, params object, canonicalisable);
/// 6. the first leaf grant matching operation, resource and params allows; otherwise the most
///    specific failure over all grants is reported (params > resource > operation).
///
/// Steps 1 to 4 are [`authority`], which `GET /v1/grants` shows the agent.
pub fn decide(
    chain: &ChainView,
    revoked: &dyn RevocationView,
    req: &Request,
    now: SystemTime,
    broker_max_ttl: Duration,
) -> Decision {
    let Authority {
        grants: leaf_grants,
        issuers,
        ttl_cap: remaining,
    } = match authority(chain, revoked, now, broker_max_ttl) {
        Ok(authority) => authority,
        Err((code, reason)) => return Decision::deny(code, reason),
    };

    // 5. The request itself.
    if let Err(e) = syntax::validate_operation(&req.operation) {
        return Decision::deny(DenyCode::InvalidOperation, e);
    }
    if let Err(e) = syntax::validate_resource(&req.resource) {
        return Decision::deny(DenyCode::InvalidResource, e);
    }
    let Value::Object(params) = &req.params else {
        return Decision::deny(DenyCode::InvalidRequest, "params must be a JSON object");
    };
    let request_digest = match canonical::request_digest(&req.operation, &req.resource, &req.params)
    {
        Ok(d) => d,
        Err(e) => return Decision::deny(DenyCode::InvalidRequest, e.to_string()),
    };

    // 6. Matching: the grant that decides (the first that allows, unless a stricter one
    // before it covers the request), then each issuer's grants the same way; the strictest
    // approval rule along the chain holds.
    let (grant_index, grant, mut approval) =
        match deciding_grant(leaf_grants, &req.operation, &req.resource, params) {
            Ok(found) => found,
            Err((code, reason)) => return Decision::deny(code, reason),
        };
    for (depth, set) in &issuers {
        let issuer_rule = match deciding_grant(set, &req.operation, &req.resource, params) {
            Ok((_, _, rule)) => rule,
            Err((_, reason)) => {
                return Decision::deny(
                    DenyCode::GrantChainEscalation,
                    format!(
                    "the issuer certificate at depth {depth} does not allow the request: {reason}"
                ),
                )
            }
        };
        approval = match stricter_rule(approval, issuer_rule.as_ref()) {
            Ok(rule) => rule,
            Err(why) => {
                return Decision::deny(
                    DenyCode::GrantChainEscalation,
                    format!("the issuer certificate at depth {depth}: {why}"),
                )
            }
        };
    }
    Decision::Allow {
        grant_index,
        grant: grant.clone(),
        token_ttl: grant.max_ttl.min(remaining),
        approval,
        request_digest,
    }
}

/// Steps 1 to 4 of [`decide`]: whether the chain authorizes anything at `now`, and if so the
/// leaf's grants and the lifetime cap. The same code answers a request and `GET /v1/grants`,
/// so what an agent is shown is what the decision will use.
pub fn authority<'a>(
    chain: &'a ChainView,
    revoked: &dyn RevocationView,
    now: SystemTime,
    broker_max_ttl: Duration,
) -> Result<Authority<'a>, (DenyCode, String)> {
    let certs: Vec<(&str, &CertFacts)> = std::iter::once(("leaf", &chain.leaf))
        .chain(chain.ancestors.iter().map(|c| ("issuer", c)))
        .collect();

    // 1. Validity and revocation; also the time left before the first certificate expires.
    let mut remaining = broker_max_ttl;
    for (depth, (what, cert)) in certs.iter().enumerate() {
        let name = format!("{what} certificate (depth {depth}, serial {})", cert.serial);
        if revoked.is_revoked(&cert.serial) {
            return Err((DenyCode::CertificateRevoked, format!("{name} is revoked")));
        }
        if now < cert.not_before {
            return Err((
                DenyCode::CertificateNotYetValid,
                format!("{name} is not valid yet"),
            ));
        }
        // now <= not_after here, so the subtraction cannot fail.
        let left = cert.not_after.duration_since(now).ok();
        match left {
            None => {
                return Err((DenyCode::CertificateExpired, format!("{name} has expired")));
            }
            Some(left) if left < Duration::from_secs(1) => {
                return Err((
                    DenyCode::CertificateExpired,
                    format!("{name} expires in under a second; no token can be issued"),
                ));
            }
            Some(left) => remaining = remaining.min(left),
        }
    }

    // 2. Role, and its delegation along the chain.
    match &chain.leaf.role {
        Some(role) if role.kind == RoleKind::Agent => {}
        Some(role) => {
            return Err((
                DenyCode::WrongRole,
                format!("certificate role is {}, not agent", role.kind),
            ));
        }
        None => {
            return Err((
                DenyCode::WrongRole,
                "certificate carries no readable sebRole extension (absent or malformed)".into(),
            ));
        }
    }
    delegated_role(chain)?;

    // 3. Every grants extension decodes.
    let mut sets: Vec<(usize, &GrantSet)> = Vec::with_capacity(certs.len());
    for (depth, (what, cert)) in certs.iter().enumerate() {
        match &cert.grants {
            None => {}
            Some(Ok(set)) => sets.push((depth, set)),
            Some(Err(e)) => {
                return Err((
                    DenyCode::InvalidGrantsExtension,
                    format!("{what} certificate (depth {depth}): {e}"),
                ));
            }
        }
    }
    let leaf_grants = match sets.first() {
        Some((0, set)) => *set,
        _ => {
            return Err((
                DenyCode::NoGrants,
                "certificate carries no sebGrants extension".into(),
            ));
        }
    };

    // 4. Attenuation, once per set of grants along the path (it depends on nothing else).
    attenuation_verdict(chain, &sets)?;
    Ok(Authority {
        grants: leaf_grants,
        issuers: sets[1..].to_vec(),
        ttl_cap: remaining,
    })
}

/// Attenuation along a chain: every pair (descendant, ancestor) among the certificates with
/// grants (`(depth, grants)`, leaf first), compared from the top of the chain down, so that a
/// CA outside its issuer's grants fails before its descendants are compared with it; within
/// [`MAX_GRANT_COMPARISONS`] comparisons in all. The CA runs the same check before it issues
/// (`ca::check_attenuation`), so it never issues a certificate the decision refuses.
pub fn check_chain_attenuation(sets: &[(usize, &GrantSet)]) -> Result<(), (DenyCode, String)> {
    let mut budget = MAX_GRANT_COMPARISONS;
    for (i, (child_depth, child)) in sets.iter().enumerate().rev() {
        for (parent_depth, parent) in sets[i + 1..].iter().rev() {
            let why = match cover::grant_set_covered_within(parent, child, &mut budget) {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!(
                    "certificate at depth {child_depth} exceeds the grants of its {} at depth \
                     {parent_depth}: {e}",
                    if *parent_depth == child_depth + 1 {
                        "issuer"
                    } else {
                        "ancestor"
                    }
                ),
                Err(cover::BudgetExhausted) => format!(
                    "the grants along the chain take more than {MAX_GRANT_COMPARISONS} grant \
                     comparisons to check (it ran out comparing depth {child_depth} with depth \
                     {parent_depth}); fewer grants per certificate, or fewer levels, fit"
                ),
            };
            return Err((DenyCode::GrantChainEscalation, why));
        }
    }
    Ok(())
}

/// The leaf's role, if the chain delegates it: every intermediate above the leaf may issue
/// that role (`sebIssuableRoles`; absent means agents only, malformed means none), and each
/// intermediate's roles lie within those of every intermediate above it (attenuation, as for
/// grants: a chain that breaks it authorizes nothing). The root issues every role and is not
/// in the chain view.
///
/// Every decision that rests on a role runs this: the agent's request ([`decide`]), an
/// executor's redemption and an approver's view (the broker's peer).
pub fn delegated_role(chain: &ChainView) -> Result<&Role, (DenyCode, String)> {
    let role = chain.leaf.role.as_ref().ok_or((
        DenyCode::WrongRole,
        "certificate carries no readable sebRole extension (absent or malformed)".to_owned(),
    ))?;
    let mut sets: Vec<(usize, IssuableRoles)> = Vec::with_capacity(chain.ancestors.len());
    for (index, ca) in chain.ancestors.iter().enumerate() {
        let depth = index + 1;
        let roles = match &ca.issuable_roles {
            None => IssuableRoles::default(),
            Some(Ok(roles)) => *roles,
            Some(Err(e)) => {
                return Err((
                    DenyCode::RoleNotDelegated,
                    format!(
                    "the issuer certificate at depth {depth} has an invalid sebIssuableRoles: {e}"
                ),
                ))
            }
        };
        if !roles.contains(role.kind) {
            return Err((
                DenyCode::RoleNotDelegated,
                format!(
                    "the issuer certificate at depth {depth} may issue {} certificates, not {}",
                    roles.as_phrase(),
                    role.kind
                ),
            ));
        }
        sets.push((depth, roles));
    }
    for (i, (child_depth, child)) in sets.iter().enumerate() {
        for (parent_depth, parent) in &sets[i + 1..] {
            if !child.is_subset_of(*parent) {
                return Err((
                    DenyCode::RoleNotDelegated,
                    format!(
                        "the intermediate at depth {child_depth} may issue {child}, more than its issuer at depth {parent_depth} ({parent})"
                    ),
                ));
            }
        }
    }
    Ok(role)
}

/// Checks one grant against a request already known to be well-formed. The error is the
/// first unmet condition: operation, then resource, then parameters.
pub fn check_grant(
    grant: &Grant,
    operation: &str,
    resource: &str,
    params: &Map<String, Value>,
) -> Result<(), (DenyCode, String)> {
    if !matching::operation_matches(&grant.operation, operation) {
        return Err((
            DenyCode::OperationNotGranted,
            format!("operation {operation:?} is not {:?}", grant.operation),
        ));
    }
    if !matching::resource_matches(&grant.resource, resource) {
        return Err((
            DenyCode::ResourceNotGranted,
            format!("resource {resource:?} is not within {:?}", grant.resource),
        ));
    }
    matching::params_satisfy(&grant.params, grant.params_any, params)
        .map_err(|v| (DenyCode::ParamConstraintViolated, v.to_string()))
}

/// How far a request got into a grant; the deepest failure is the one reported.
fn specificity(code: DenyCode) -> u8 {
    match code {
        DenyCode::ParamConstraintViolated => 3,
        DenyCode::ResourceNotGranted => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
