//! The grant schema: what a certificate says its holder may ask for.
//!
//! A [`GrantSet`] travels in the `sebGrants` certificate extension (DER, see [`asn1`]) and is
//! written by security teams as TOML (see [`toml_file`]). Both front-ends produce the same
//! validated in-memory form, and every decoder re-validates, so a value of these types that
//! came from [`GrantSet::from_der`] or [`GrantSet::from_toml_str`] always satisfies the rules
//! in `docs/GRANTS.md`. The role extensions (`sebRole`, and `sebIssuableRoles` on intermediate
//! CAs) live here too.
//!
//! This module only describes authority. It must never decide a request (that is
//! [`crate::authz`]), never touch a device, and never panic on input, however malformed.

mod asn1;
pub mod syntax;
#[cfg(test)]
pub(crate) mod testing;
mod toml_file;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::duration;

/// Most grants one certificate may carry.
pub const MAX_GRANTS: usize = 1024;
/// Most parameter constraints one grant may carry.
pub const MAX_PARAMS: usize = 64;
/// Most values in one `one_of` list.
pub const MAX_ONE_OF: usize = 256;
/// Longest string value (`equals`, `one_of`, `prefix`), in bytes.
pub const MAX_VALUE_LEN: usize = 1024;
/// Most approvers an approval rule may require.
pub const MAX_REQUIRED_APPROVALS: u32 = 64;
/// Most groups a role may name.
pub const MAX_ROLE_GROUPS: usize = 64;
/// Largest encoded extension we are willing to decode, in bytes.
pub const MAX_DER_LEN: usize = 256 * 1024;
/// Largest magnitude of an integer in a constraint: 2^53 - 1, the I-JSON safe range. Requests
/// carrying larger integers cannot be canonicalised (see [`crate::canonical`]), so a
/// constraint naming one could never be met; it is refused at issuance.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Everything that can go wrong reading, writing or validating grants and roles.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The TOML grant file is not well-formed or has unknown keys.
    #[error("parsing grant file: {source}")]
    ParseToml {
        /// The TOML parser's error, with line and column.
        #[source]
        source: Box<::toml::de::Error>,
    },
    /// A grant breaks a rule (syntax, limits, impossible constraint).
    #[error("grant #{index}: {field}: {reason}")]
    InvalidGrant {
        /// Position of the grant in the set, from 0.
        index: usize,
        /// The offending field (`operation`, `params.replicas`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A grant set with no grants, or with too many.
    #[error("grant set: {reason}")]
    InvalidGrantSet {
        /// What is wrong with it.
        reason: String,
    },
    /// A role breaks a rule.
    #[error("role: {reason}")]
    InvalidRole {
        /// What is wrong with it.
        reason: String,
    },
    /// DER encoding failed.
    #[error("encoding {what} as DER: {source}")]
    EncodeDer {
        /// `sebGrants` or `sebRole`.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: der::Error,
    },
    /// DER decoding failed (truncated, wrong tags, trailing bytes, bad lengths...).
    #[error("decoding {what} from DER: {source}")]
    DecodeDer {
        /// `sebGrants` or `sebRole`.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: der::Error,
    },
    /// The DER decoded but is not the unique encoding of its value (e.g. unsorted params).
    #[error("decoding {what} from DER: not the canonical encoding")]
    NonCanonicalDer {
        /// `sebGrants` or `sebRole`.
        what: &'static str,
    },
    /// The encoded extension is larger than [`MAX_DER_LEN`].
    #[error("decoding {what} from DER: {len} bytes exceeds the limit of {MAX_DER_LEN}")]
    DerTooLarge {
        /// `sebGrants` or `sebRole`.
        what: &'static str,
        /// The size offered.
        len: usize,
    },
}

/// The grants of one certificate, in order. Order matters only for reporting: the decision
/// names the first grant that allows a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSet {
    /// The grants; never empty once validated.
    pub grants: Vec<Grant>,
}

/// One grant: an operation pattern on a resource pattern, with parameter constraints, a
/// lifetime bound and an optional approval rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Exact operation (`deploy.rollout`), prefix wildcard (`deploy.*`) or `*`.
    pub operation: String,
    /// `/`-separated glob: literal segments, `*` (one segment), `**` (zero or more).
    pub resource: String,
    /// Longest lifetime of a token issued under this grant; whole seconds, at least one.
    pub max_ttl: Duration,
    /// Constraints on named request parameters; every named parameter must be present.
    pub params: BTreeMap<String, Constraint>,
    /// Whether parameters not named in `params` are allowed (unconstrained).
    pub params_any: bool,
    /// Human approvals a request under this grant needs before a token is released.
    pub approval: Option<ApprovalRule>,
}

/// A constraint on one request parameter. Constraints apply to scalars only: a parameter
/// whose value is an object, array or null never satisfies one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// The value equals this scalar, type included (`"5"` is not `5`).
    Equals(Scalar),
    /// The value equals one of these scalars (non-empty, no duplicates).
    OneOf(Vec<Scalar>),
    /// The value is a JSON integer in `min..=max` (floats and strings never match).
    Range {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// The value is a string starting with this prefix (byte-wise).
    Prefix(String),
}

/// A scalar value in `equals` / `one_of`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// A JSON string.
    String(String),
    /// A JSON integer within ±[`MAX_SAFE_INTEGER`].
    Integer(i64),
    /// A JSON boolean.
    Bool(bool),
}

/// `required` distinct approvers, each holding an approver certificate in `group`.
///
/// Whether the group has that many members is not known from the certificate, and the broker
/// keeps no roster of approvers: a request under a rule its group cannot meet expires after
/// `[approvals] ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRule {
    /// How many distinct approvers (1..=[`MAX_REQUIRED_APPROVALS`]).
    pub required: u32,
    /// The approver group (see [`syntax::validate_group`]).
    pub group: String,
}

impl GrantSet {
    /// Reads and validates a TOML grant file (`[[grant]]` tables, see `docs/GRANTS.md`).
    pub fn from_toml_str(s: &str) -> Result<Self, GrantError> {
        let set = toml_file::parse(s)?;
        set.validate()?;
        Ok(set)
    }

    /// Writes the grant file form; [`GrantSet::from_toml_str`] reads it back to an equal set.
    pub fn to_toml_string(&self) -> String {
        toml_file::write(self)
    }

    /// Encodes the `sebGrants` extension value after validating the set.
    pub fn to_der(&self) -> Result<Vec<u8>, GrantError> {
        self.validate()?;
        asn1::encode_grants(self)
    }

    /// Decodes and validates a `sebGrants` extension value. Rejects trailing bytes, unknown
    /// tags, non-canonical encodings and anything [`GrantSet::validate`] rejects.
    pub fn from_der(bytes: &[u8]) -> Result<Self, GrantError> {
        let set = asn1::decode_grants(bytes)?;
        set.validate()?;
        // DER has one encoding per value; insisting on it here means a certificate's bytes
        // and the grants we act on can never disagree (e.g. on the order of params).
        if asn1::encode_grants(&set)? != bytes {
            return Err(GrantError::NonCanonicalDer { what: "sebGrants" });
        }
        Ok(set)
    }

    /// Checks every rule of `docs/GRANTS.md` (syntax, limits, impossible constraints).
    pub fn validate(&self) -> Result<(), GrantError> {
        if self.grants.is_empty() {
            return Err(GrantError::InvalidGrantSet {
                reason: "no grants (omit the extension instead)".into(),
            });
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(GrantError::InvalidGrantSet {
                reason: format!(
                    "{} grants exceed the limit of {MAX_GRANTS}",
                    self.grants.len()
                ),
            });
        }
        for (index, grant) in self.grants.iter().enumerate() {
            grant
                .validate()
                .map_err(|(field, reason)| GrantError::InvalidGrant {
                    index,
                    field,
                    reason,
                })?;
        }
        Ok(())
    }
}

impl Grant {
    /// Checks this grant; the error names the field and the rule.
    fn validate(&self) -> Result<(), (String, String)> {
        let field = |name: &str| name.to_owned();
        syntax::validate_operation_pattern(&self.operation)
            .map_err(|reason| (field("operation"), reason))?;
        syntax::validate_resource_pattern(&self.resource)
            .map_err(|reason| (field("resource"), reason))?;
        validate_ttl(self.max_ttl).map_err(|reason| (field("max_ttl"), reason))?;
        if self.params.len() > MAX_PARAMS {
            return Err((
                field("params"),
                format!(
                    "{} constraints exceed the limit of {MAX_PARAMS}",
                    self.params.len()
                ),
            ));
        }
        let mut folded: Vec<(String, &String)> = Vec::with_capacity(self.params.len());
        for (name, constraint) in &self.params {
            let at = format!("params.{name}");
            syntax::validate_param_name(name).map_err(|reason| (at.clone(), reason))?;
            constraint
                .validate()
                .map_err(|reason| (at.clone(), reason))?;
            // A reader that matches names leniently would take either for the other: the
            // broker could check one value and the executor act on the other, and an
            // attenuation check could not tell which of the two a parent's constraint covers.
            let key = syntax::folded_name(name);
            if let Some((_, other)) = folded.iter().find(|(k, _)| *k == key) {
                return Err((
                    at,
                    format!(
                        "constrains {other:?} too, a name that differs only in case, `_` or `-`: \
                         a program that matches names leniently would confuse them"
                    ),
                ));
            }
            folded.push((key, name));
        }
        if let Some(rule) = &self.approval {
            rule.validate()
                .map_err(|reason| (field("approval"), reason))?;
        }
        Ok(())
    }
}

/// Lifetimes are whole seconds between one second and [`duration`]'s upper bound.
fn validate_ttl(ttl: Duration) -> Result<(), String> {
    if ttl.subsec_nanos() != 0 {
        return Err("must be whole seconds".into());
    }
    duration::parse(&format!("{}s", ttl.as_secs()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Constraint {
    fn validate(&self) -> Result<(), String> {
        match self {
            Constraint::Equals(value) => value.validate(),
            Constraint::OneOf(values) => {
                if values.is_empty() {
                    return Err("one_of is empty: nothing could ever match".into());
                }
                if values.len() > MAX_ONE_OF {
                    return Err(format!(
                        "one_of has {} values, more than the limit of {MAX_ONE_OF}",
                        values.len()
                    ));
                }
                for (i, value) in values.iter().enumerate() {
                    value.validate()?;
                    if values[..i].contains(value) {
                        return Err(format!("one_of lists {value} twice"));
                    }
                }
                Ok(())
            }
            Constraint::Range { min, max } => {
                if min > max {
                    return Err(format!("range is empty: min {min} > max {max}"));
                }
                validate_integer(*min)?;
                validate_integer(*max)
            }
            Constraint::Prefix(prefix) => validate_string(prefix),
        }
    }
}

impl Scalar {
    fn validate(&self) -> Result<(), String> {
        match self {
            Scalar::String(s) => validate_string(s),
            Scalar::Integer(i) => validate_integer(*i),
            Scalar::Bool(_) => Ok(()),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::String(s) => write!(f, "{s:?}"),
            Scalar::Integer(i) => write!(f, "{i}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn validate_integer(i: i64) -> Result<(), String> {
    if i.unsigned_abs() > MAX_SAFE_INTEGER.unsigned_abs() {
        return Err(format!(
            "integer {i} is outside ±(2^53-1), which requests cannot carry exactly"
        ));
    }
    Ok(())
}

fn validate_string(s: &str) -> Result<(), String> {
    if s.len() > MAX_VALUE_LEN {
        return Err(format!(
            "string of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
            s.len()
        ));
    }
    Ok(())
}

impl ApprovalRule {
    fn validate(&self) -> Result<(), String> {
        if self.required == 0 {
            return Err("required = 0 is not an approval rule (omit approval instead)".into());
        }
        if self.required > MAX_REQUIRED_APPROVALS {
            return Err(format!(
                "required = {} exceeds the limit of {MAX_REQUIRED_APPROVALS}",
                self.required
            ));
        }
        syntax::validate_group(&self.group)
    }
}

/// What a certificate's holder is, from the `sebRole` extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleKind {
    /// Asks for executions; carries grants.
    Agent,
    /// Approves requests for the groups in its role.
    Approver,
    /// Redeems tokens and reports outcomes.
    Executor,
    /// A broker replica.
    Broker,
}

impl RoleKind {
    /// The lower-case name used in TOML, the CLI and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Agent => "agent",
            RoleKind::Approver => "approver",
            RoleKind::Executor => "executor",
            RoleKind::Broker => "broker",
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoleKind {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(RoleKind::Agent),
            "approver" => Ok(RoleKind::Approver),
            "executor" => Ok(RoleKind::Executor),
            "broker" => Ok(RoleKind::Broker),
            other => Err(GrantError::InvalidRole {
                reason: format!(
                    "unknown role {other:?} (expected agent, approver, executor or broker)"
                ),
            }),
        }
    }
}

/// The `sebRole` extension: a role and, for approvers only, the groups it approves for.
///
/// Groups are sorted and unique (the DER is a canonical list); [`Role::new`] arranges that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// The role.
    pub kind: RoleKind,
    /// Approver groups; empty for every other role.
    pub groups: Vec<String>,
}

impl Role {
    /// Builds and validates a role, sorting and de-duplicating the groups.
    pub fn new(kind: RoleKind, mut groups: Vec<String>) -> Result<Self, GrantError> {
        groups.sort();
        groups.dedup();
        let role = Role { kind, groups };
        role.validate()?;
        Ok(role)
    }

    /// Checks the rules: approvers name 1..=[`MAX_ROLE_GROUPS`] valid groups, sorted and
    /// unique; other roles name none.
    pub fn validate(&self) -> Result<(), GrantError> {
        let invalid = |reason: String| GrantError::InvalidRole { reason };
        match self.kind {
            RoleKind::Approver if self.groups.is_empty() => {
                return Err(invalid(
                    "an approver must belong to at least one group".into(),
                ));
            }
            RoleKind::Approver => {}
            other if !self.groups.is_empty() => {
                return Err(invalid(format!("a {other} role carries no groups")));
            }
            _ => {}
        }
        if self.groups.len() > MAX_ROLE_GROUPS {
            return Err(invalid(format!(
                "{} groups exceed the limit of {MAX_ROLE_GROUPS}",
                self.groups.len()
            )));
        }
        for group in &self.groups {
            syntax::validate_group(group).map_err(invalid)?;
        }
        if !self.groups.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("groups must be sorted and unique".into()));
        }
        Ok(())
    }

    /// Encodes the `sebRole` extension value after validating.
    pub fn to_der(&self) -> Result<Vec<u8>, GrantError> {
        self.validate()?;
        asn1::encode_role(self)
    }

    /// Decodes and validates a `sebRole` extension value.
    pub fn from_der(bytes: &[u8]) -> Result<Self, GrantError> {
        let role = asn1::decode_role(bytes)?;
        role.validate()?;
        if asn1::encode_role(&role)? != bytes {
            return Err(GrantError::NonCanonicalDer { what: "sebRole" });
        }
        Ok(role)
    }
}

/// The `sebIssuableRoles` extension of an intermediate CA: the end-entity roles it may issue
/// (agent, approver, executor), which is also the most its sub-CAs may be given. An
/// intermediate without the extension issues agents only ([`IssuableRoles::default`]); the
/// root issues every role. Broker certificates are the root's alone and never issuable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IssuableRoles {
    agent: bool,
    approver: bool,
    executor: bool,
}

impl Default for IssuableRoles {
    /// Agents only: what an intermediate without `sebIssuableRoles` may issue.
    fn default() -> Self {
        Self::AGENTS_ONLY
    }
}

impl IssuableRoles {
    /// Agents only.
    pub const AGENTS_ONLY: Self = Self {
        agent: true,
        approver: false,
        executor: false,
    };

    /// No role at all: a CA through which no agent, approver or executor certificate counts
    /// (`role_not_delegated`). `seb cert cross-sign` writes it into a cross-certificate, so
    /// that a new root's holders cannot use the old root's broker through it. An encoded empty
    /// list; never given to an intermediate (`new` refuses it).
    pub const NONE: Self = Self {
        agent: false,
        approver: false,
        executor: false,
    };

    /// Every role an intermediate can be given: agents, approvers and executors.
    pub const ALL: Self = Self {
        agent: true,
        approver: true,
        executor: true,
    };

    /// The set of `kinds` (duplicates collapse); at least one, and never `broker`.
    pub fn new(kinds: impl IntoIterator<Item = RoleKind>) -> Result<Self, GrantError> {
        let mut set = Self {
            agent: false,
            approver: false,
            executor: false,
        };
        for kind in kinds {
            match kind {
                RoleKind::Agent => set.agent = true,
                RoleKind::Approver => set.approver = true,
                RoleKind::Executor => set.executor = true,
                RoleKind::Broker => {
                    return Err(GrantError::InvalidRole {
                        reason: "broker certificates are issued by the root only; no \
                                 intermediate may issue them"
                            .into(),
                    })
                }
            }
        }
        if set.kinds().is_empty() {
            return Err(GrantError::InvalidRole {
                reason: "an intermediate must be able to issue at least one role".into(),
            });
        }
        Ok(set)
    }

    /// Whether a certificate of `kind` may be issued.
    pub fn contains(self, kind: RoleKind) -> bool {
        match kind {
            RoleKind::Agent => self.agent,
            RoleKind::Approver => self.approver,
            RoleKind::Executor => self.executor,
            RoleKind::Broker => false,
        }
    }

    /// Whether every role of `self` is in `other` (attenuation).
    pub fn is_subset_of(self, other: Self) -> bool {
        self.kinds().into_iter().all(|k| other.contains(k))
    }

    /// The roles, in the order of the ASN.1 enumeration.
    pub fn kinds(self) -> Vec<RoleKind> {
        [RoleKind::Agent, RoleKind::Approver, RoleKind::Executor]
            .into_iter()
            .filter(|k| self.contains(*k))
            .collect()
    }

    /// The roles as the object of "may issue … certificates": `no` for none.
    pub fn as_phrase(self) -> String {
        if self.kinds().is_empty() {
            "no".to_owned()
        } else {
            self.to_string()
        }
    }

    /// Encodes the `sebIssuableRoles` extension value (sorted, unique).
    pub fn to_der(self) -> Result<Vec<u8>, GrantError> {
        asn1::encode_role_kinds(&self.kinds())
    }

    /// Decodes a `sebIssuableRoles` extension value: DER only, up to 3 roles in ascending
    /// order, no duplicates, no `broker`; the empty list is [`Self::NONE`].
    pub fn from_der(bytes: &[u8]) -> Result<Self, GrantError> {
        let kinds = asn1::decode_role_kinds(bytes)?;
        let set = if kinds.is_empty() {
            Self::NONE
        } else {
            Self::new(kinds.iter().copied())?
        };
        if asn1::encode_role_kinds(&set.kinds())? != bytes {
            return Err(GrantError::NonCanonicalDer {
                what: asn1::ISSUABLE_ROLES,
            });
        }
        Ok(set)
    }
}

impl fmt::Display for IssuableRoles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.kinds().into_iter().map(RoleKind::as_str).collect();
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(","))
    }
}

impl FromStr for IssuableRoles {
    type Err = GrantError;

    /// A comma-separated list such as `agent,approver,executor` (`--roles`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kinds = s
            .split(',')
            .map(|name| name.trim().parse::<RoleKind>())
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(kinds)
    }
}

#[cfg(test)]
mod tests;
