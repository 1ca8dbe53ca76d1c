//! DER wire types for `sebGrants`, `sebRole` and `sebIssuableRoles`, mirroring the ASN.1 module in
//! `docs/GRANTS.md`, and the conversions to and from the validated types.
//!
//! These types are private: nothing outside this file sees an unvalidated grant. Decoding must
//! never panic; every limit is enforced before a value escapes (the caller re-validates).

use std::time::Duration;

use der::{Choice, Decode, Encode, Enumerated, Sequence};

use super::{
    ApprovalRule, Constraint, Grant, GrantError, GrantSet, Role, RoleKind, Scalar, MAX_DER_LEN,
};

const GRANTS: &str = "sebGrants";
const ROLE: &str = "sebRole";
pub(super) const ISSUABLE_ROLES: &str = "sebIssuableRoles";

/// `Grant` in the ASN.1 module.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct GrantDer {
    operation: String,
    resource: String,
    max_ttl_seconds: u64,
    params: Vec<ParamConstraintDer>,
    params_any: bool,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    approval: Option<ApprovalRuleDer>,
}

/// `ParamConstraint`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct ParamConstraintDer {
    name: String,
    constraint: ConstraintDer,
}

/// `Constraint`.
#[derive(Clone, Debug, PartialEq, Eq, Choice)]
enum ConstraintDer {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", constructed = "true")]
    Equals(ScalarDer),
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    OneOf(Vec<ScalarDer>),
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", constructed = "true")]
    Range(RangeDer),
    #[asn1(context_specific = "3", tag_mode = "IMPLICIT")]
    Prefix(String),
}

/// `Scalar`.
#[derive(Clone, Debug, PartialEq, Eq, Choice)]
enum ScalarDer {
    String(String),
    Integer(i64),
    Boolean(bool),
}

/// `IntegerRange`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct RangeDer {
    min: i64,
    max: i64,
}

/// `ApprovalRule`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct ApprovalRuleDer {
    required: u32,
    group: String,
}

/// `RoleKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enumerated)]
#[repr(u32)]
enum RoleKindDer {
    Agent = 0,
    Approver = 1,
    Executor = 2,
    Broker = 3,
}

/// `SebRole`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
struct RoleDer {
    kind: RoleKindDer,
    groups: Vec<String>,
}

pub(super) fn encode_grants(set: &GrantSet) -> Result<Vec<u8>, GrantError> {
    let wire: Vec<GrantDer> = set.grants.iter().map(GrantDer::from).collect();
    wire.to_der().map_err(|source| GrantError::EncodeDer {
        what: GRANTS,
        source,
    })
}

pub(super) fn decode_grants(bytes: &[u8]) -> Result<GrantSet, GrantError> {
    check_len(GRANTS, bytes)?;
    let wire = Vec::<GrantDer>::from_der(bytes).map_err(|source| GrantError::DecodeDer {
        what: GRANTS,
        source,
    })?;
    Ok(GrantSet {
        grants: wire.into_iter().map(Grant::from).collect(),
    })
}

pub(super) fn encode_role(role: &Role) -> Result<Vec<u8>, GrantError> {
    let wire = RoleDer {
        kind: role.kind.into(),
        groups: role.groups.clone(),
    };
    wire.to_der()
        .map_err(|source| GrantError::EncodeDer { what: ROLE, source })
}

pub(super) fn decode_role(bytes: &[u8]) -> Result<Role, GrantError> {
    check_len(ROLE, bytes)?;
    let wire =
        RoleDer::from_der(bytes).map_err(|source| GrantError::DecodeDer { what: ROLE, source })?;
    Ok(Role {
        kind: wire.kind.into(),
        groups: wire.groups,
    })
}

/// `SebIssuableRoles`: the role kinds, in the order given (the caller sorts and validates).
pub(super) fn encode_role_kinds(kinds: &[RoleKind]) -> Result<Vec<u8>, GrantError> {
    let wire: Vec<RoleKindDer> = kinds.iter().map(|k| RoleKindDer::from(*k)).collect();
    wire.to_der().map_err(|source| GrantError::EncodeDer {
        what: ISSUABLE_ROLES,
        source,
    })
}

/// Decodes `SebIssuableRoles` as it stands (the caller validates and checks the encoding).
pub(super) fn decode_role_kinds(bytes: &[u8]) -> Result<Vec<RoleKind>, GrantError> {
    check_len(ISSUABLE_ROLES, bytes)?;
    let wire = Vec::<RoleKindDer>::from_der(bytes).map_err(|source| GrantError::DecodeDer {
        what: ISSUABLE_ROLES,
        source,
    })?;
    Ok(wire.into_iter().map(RoleKind::from).collect())
}

impl From<RoleKind> for RoleKindDer {
    fn from(kind: RoleKind) -> Self {
        match kind {
            RoleKind::Agent => RoleKindDer::Agent,
            RoleKind::Approver => RoleKindDer::Approver,
            RoleKind::Executor => RoleKindDer::Executor,
            RoleKind::Broker => RoleKindDer::Broker,
        }
    }
}

impl From<RoleKindDer> for RoleKind {
    fn from(wire: RoleKindDer) -> Self {
        match wire {
            RoleKindDer::Agent => RoleKind::Agent,
            RoleKindDer::Approver => RoleKind::Approver,
            RoleKindDer::Executor => RoleKind::Executor,
            RoleKindDer::Broker => RoleKind::Broker,
        }
    }
}

fn check_len(what: &'static str, bytes: &[u8]) -> Result<(), GrantError> {
    if bytes.len() > MAX_DER_LEN {
        return Err(GrantError::DerTooLarge {
            what,
            len: bytes.len(),
        });
    }
    Ok(())
}

impl From<&Grant> for GrantDer {
    fn from(grant: &Grant) -> Self {
        GrantDer {
            operation: grant.operation.clone(),
            resource: grant.resource.clone(),
            max_ttl_seconds: grant.max_ttl.as_secs(),
            params: grant
                .params
                .iter()
                .map(|(name, constraint)| ParamConstraintDer {
                    name: name.clone(),
                    constraint: constraint.into(),
                })
                .collect(),
            params_any: grant.params_any,
            approval: grant.approval.as_ref().map(|rule| ApprovalRuleDer {
                required: rule.required,
                group: rule.group.clone(),
            }),
        }
    }
}

impl From<GrantDer> for Grant {
    /// Total: limits and rules are checked afterwards by [`GrantSet::validate`], and a
    /// duplicate or unsorted parameter list is caught by the canonical re-encoding check.
    fn from(wire: GrantDer) -> Self {
        Grant {
            operation: wire.operation,
            resource: wire.resource,
            max_ttl: Duration::from_secs(wire.max_ttl_seconds),
            params: wire
                .params
                .into_iter()
                .map(|p| (p.name, p.constraint.into()))
                .collect(),
            params_any: wire.params_any,
            approval: wire.approval.map(|rule| ApprovalRule {
                required: rule.required,
                group: rule.group,
            }),
        }
    }
}

impl From<&Constraint> for ConstraintDer {
    fn from(constraint: &Constraint) -> Self {
        match constraint {
            Constraint::Equals(v) => ConstraintDer::Equals(v.into()),
            Constraint::OneOf(vs) => ConstraintDer::OneOf(vs.iter().map(ScalarDer::from).collect()),
            Constraint::Range { min, max } => ConstraintDer::Range(RangeDer {
                min: *min,
                max: *max,
            }),
            Constraint::Prefix(p) => ConstraintDer::Prefix(p.clone()),
        }
    }
}

impl From<ConstraintDer> for Constraint {
    fn from(wire: ConstraintDer) -> Self {
        match wire {
            ConstraintDer::Equals(v) => Constraint::Equals(v.into()),
            ConstraintDer::OneOf(vs) => {
                Constraint::OneOf(vs.into_iter().map(Scalar::from).collect())
            }
            ConstraintDer::Range(RangeDer { min, max }) => Constraint::Range { min, max },
            ConstraintDer::Prefix(p) => Constraint::Prefix(p),
        }
    }
}

impl From<&Scalar> for ScalarDer {
    fn from(value: &Scalar) -> Self {
        match value {
            Scalar::String(s) => ScalarDer::String(s.clone()),
            Scalar::Integer(i) => ScalarDer::Integer(*i),
            Scalar::Bool(b) => ScalarDer::Boolean(*b),
        }
    }
}

impl From<ScalarDer> for Scalar {
    fn from(wire: ScalarDer) -> Self {
        match wire {
            ScalarDer::String(s) => Scalar::String(s),
            ScalarDer::Integer(i) => Scalar::Integer(i),
            ScalarDer::Boolean(b) => Scalar::Bool(b),
        }
    }
}
