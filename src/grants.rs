//! The grant schema: what a certificate says its holder may ask for.
//!
//! A [`GrantSet`] travels in the `sebGrants` certificate extension (DER, see [`asn1`]) and is
//! written by security teams as TOML (see [`toml_file`]). Both front-ends produce the same
//! validated in-memory form, and every decoder re-validates, so a value of these types that
//! came from [`GrantSet::from_der`] or [`GrantSet::from_toml_str`] always satisfies the rules
//! in `docs/GRANTS.md`. The role extension (`sebRole`) lives here too.
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

/// The project's OID arc (UUID-derived, ITU-T X.667): `2.25.57569389650057206723867454425930272143`.
pub const SEB_ARC: &str = "2.25.57569389650057206723867454425930272143";

/// `sebGrants`: `SEQUENCE OF Grant` in a certificate extension (arc.1), dotted form.
pub const SEB_GRANTS_OID: &str = "2.25.57569389650057206723867454425930272143.1";

/// `sebRole`: the holder's role and, for approvers, its groups (arc.2), dotted form.
pub const SEB_ROLE_OID: &str = "2.25.57569389650057206723867454425930272143.2";

/// The content octets (BER/DER value, without tag and length) of [`SEB_GRANTS_OID`].
///
/// `der::asn1::ObjectIdentifier` (const-oid 0.10) stores arcs as `u32` and rejects the
/// 126-bit UUID arc with `ArcTooBig`, in `new_unwrap` at compile time and when decoding a
/// certificate alike. Until that changes (or the arc does), the OIDs are exposed as text and
/// as encoded bytes; the test `const_oid_cannot_hold_the_uuid_arc` will flip when it changes.
pub const SEB_GRANTS_OID_BER: &[u8] = &[
    0x69, 0xd6, 0xcf, 0xbb, 0x83, 0xaa, 0x95, 0xf2, 0x81, 0xeb, 0x9f, 0xd8, 0x8a, 0x83, 0xa6, 0x8c,
    0xd8, 0x9b, 0x0f, 0x01,
];

/// The content octets of [`SEB_ROLE_OID`] (see [`SEB_GRANTS_OID_BER`]).
pub const SEB_ROLE_OID_BER: &[u8] = &[
    0x69, 0xd6, 0xcf, 0xbb, 0x83, 0xaa, 0x95, 0xf2, 0x81, 0xeb, 0x9f, 0xd8, 0x8a, 0x83, 0xa6, 0x8c,
    0xd8, 0x9b, 0x0f, 0x02,
];

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
/// Whether the group has that many members is not known from the certificate; the broker
/// checks it against the approvers it knows when a request arrives and refuses an
/// unsatisfiable rule then.
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
        for (name, constraint) in &self.params {
            let at = format!("params.{name}");
            syntax::validate_param_name(name).map_err(|reason| (at.clone(), reason))?;
            constraint.validate().map_err(|reason| (at, reason))?;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = r#"
[[grant]]
operation = "deploy.rollout"          # exact, or prefix wildcard "deploy.*"
resource  = "prod/payments/*"         # '*' one path segment, '**' any number
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
params.region   = { equals = "eu-west-1" }
approval  = { required = 2, group = "sre-leads" }   # optional

[[grant]]
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30s"
params_any = true                      # this grant does not constrain parameters
"#;

    fn example() -> GrantSet {
        GrantSet::from_toml_str(EXAMPLE).unwrap()
    }

    #[test]
    fn architecture_example_parses() {
        let set = example();
        assert_eq!(set.grants.len(), 2);
        let g = &set.grants[0];
        assert_eq!(g.operation, "deploy.rollout");
        assert_eq!(g.max_ttl, Duration::from_secs(60));
        assert_eq!(g.params["replicas"], Constraint::Range { min: 1, max: 10 });
        assert_eq!(
            g.params["strategy"],
            Constraint::OneOf(vec![
                Scalar::String("rolling".into()),
                Scalar::String("canary".into())
            ])
        );
        assert_eq!(
            g.approval,
            Some(ApprovalRule {
                required: 2,
                group: "sre-leads".into()
            })
        );
        assert!(set.grants[1].params_any);
        assert_eq!(GrantSet::from_toml_str(&set.to_toml_string()).unwrap(), set);
        let text = set.to_toml_string();
        assert!(
            text.contains("params.replicas = { min = 1, max = 10 }\n"),
            "{text}"
        );
        assert!(
            text.contains("approval = { required = 2, group = \"sre-leads\" }\n"),
            "{text}"
        );
        assert_eq!(GrantSet::from_der(&set.to_der().unwrap()).unwrap(), set);
    }

    fn toml_err(body: &str) -> String {
        let text = format!("[[grant]]\n{body}\n");
        match GrantSet::from_toml_str(&text) {
            Ok(set) => panic!("accepted {body:?}: {set:?}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = "operation = \"deploy.x\"\nresource = \"prod/*\"\nmax_ttl = \"60s\"";

    #[test]
    fn toml_rejects_bad_rules() {
        let cases = [
            ("unknown top key", format!("{BASE}\nttl = \"5s\"")),
            (
                "unknown constraint key",
                format!("{BASE}\nparams.a = {{ equal = 1 }}"),
            ),
            (
                "unknown approval key",
                format!("{BASE}\napproval = {{ required = 1, group = \"g\", of = 2 }}"),
            ),
            ("bad ttl", BASE.replace("60s", "60")),
            ("zero ttl", BASE.replace("60s", "0s")),
            ("fractional ttl", BASE.replace("60s", "1.5m")),
            (
                "required 0",
                format!("{BASE}\napproval = {{ required = 0, group = \"g\" }}"),
            ),
            (
                "required negative",
                format!("{BASE}\napproval = {{ required = -1, group = \"g\" }}"),
            ),
            (
                "required huge",
                format!("{BASE}\napproval = {{ required = 65, group = \"g\" }}"),
            ),
            (
                "empty group",
                format!("{BASE}\napproval = {{ required = 1, group = \"\" }}"),
            ),
            (
                "min > max",
                format!("{BASE}\nparams.a = {{ min = 5, max = 1 }}"),
            ),
            ("min only", format!("{BASE}\nparams.a = {{ min = 5 }}")),
            (
                "two kinds",
                format!("{BASE}\nparams.a = {{ equals = 1, prefix = \"x\" }}"),
            ),
            ("no kind", format!("{BASE}\nparams.a = {{}}")),
            (
                "empty one_of",
                format!("{BASE}\nparams.a = {{ one_of = [] }}"),
            ),
            (
                "dup one_of",
                format!("{BASE}\nparams.a = {{ one_of = [1, 1] }}"),
            ),
            (
                "float equals",
                format!("{BASE}\nparams.a = {{ equals = 1.5 }}"),
            ),
            (
                "float range",
                format!("{BASE}\nparams.a = {{ min = 1.0, max = 2 }}"),
            ),
            (
                "table equals",
                format!("{BASE}\nparams.a = {{ equals = {{ x = 1 }} }}"),
            ),
            (
                "unsafe integer",
                format!("{BASE}\nparams.a = {{ min = 0, max = 9007199254740992 }}"),
            ),
            (
                "bad param name",
                format!("{BASE}\nparams.\"a b\" = {{ equals = 1 }}"),
            ),
            ("uppercase op", BASE.replace("deploy.x", "Deploy.x")),
            ("op wildcard mid", BASE.replace("deploy.x", "deploy.*.x")),
            ("op bare prefix", BASE.replace("deploy.x", "deploy*")),
            ("resource traversal", BASE.replace("prod/*", "prod/../*")),
            ("resource leading slash", BASE.replace("prod/*", "/prod/*")),
            ("resource partial glob", BASE.replace("prod/*", "prod/pay*")),
            ("resource percent", BASE.replace("prod/*", "prod%2F*")),
            (
                "missing resource",
                "operation = \"a\"\nmax_ttl = \"1s\"".to_owned(),
            ),
        ];
        for (what, body) in cases {
            let e = toml_err(&body);
            assert!(!e.is_empty(), "{what}");
        }
        assert!(matches!(
            GrantSet::from_toml_str(""),
            Err(GrantError::InvalidGrantSet { .. })
        ));
        assert!(matches!(
            GrantSet::from_toml_str("[[grants]]"),
            Err(GrantError::ParseToml { .. })
        ));
    }

    #[test]
    fn errors_name_grant_and_field() {
        let text = format!(
            "[[grant]]\n{BASE}\n\n[[grant]]\n{}\nparams.a = {{ min = 3, max = 1 }}\n",
            BASE
        );
        let e = GrantSet::from_toml_str(&text).unwrap_err().to_string();
        assert_eq!(e, "grant #1: params.a: range is empty: min 3 > max 1");
    }

    #[test]
    fn to_der_validates() {
        let mut set = example();
        set.grants[0].operation = "bad op".into();
        assert!(matches!(
            set.to_der(),
            Err(GrantError::InvalidGrant { index: 0, .. })
        ));
        let mut set = example();
        set.grants[1].max_ttl = Duration::from_millis(1500);
        assert!(set.to_der().is_err());
    }

    #[test]
    fn oids() {
        // The dotted and encoded forms agree.
        fn decode_arcs(ber: &[u8]) -> String {
            let mut arcs = vec![(ber[0] / 40).to_string(), (ber[0] % 40).to_string()];
            let mut acc: u128 = 0;
            for b in &ber[1..] {
                acc = (acc << 7) | u128::from(b & 0x7f);
                if b & 0x80 == 0 {
                    arcs.push(acc.to_string());
                    acc = 0;
                }
            }
            arcs.join(".")
        }
        assert_eq!(decode_arcs(SEB_GRANTS_OID_BER), SEB_GRANTS_OID);
        assert_eq!(decode_arcs(SEB_ROLE_OID_BER), SEB_ROLE_OID);
        assert_eq!(format!("{SEB_ARC}.1"), SEB_GRANTS_OID);
    }

    #[test]
    fn const_oid_cannot_hold_the_uuid_arc() {
        // If this starts failing, const-oid learned big arcs: switch to ObjectIdentifier consts.
        assert!(der::asn1::ObjectIdentifier::new(SEB_GRANTS_OID).is_err());
        assert!(der::asn1::ObjectIdentifier::from_bytes(SEB_GRANTS_OID_BER).is_err());
    }

    #[test]
    fn roles() {
        for kind in [
            RoleKind::Agent,
            RoleKind::Approver,
            RoleKind::Executor,
            RoleKind::Broker,
        ] {
            assert_eq!(kind.to_string().parse::<RoleKind>().unwrap(), kind);
        }
        assert!("admin".parse::<RoleKind>().is_err());
        let agent = Role::new(RoleKind::Agent, vec![]).unwrap();
        assert_eq!(Role::from_der(&agent.to_der().unwrap()).unwrap(), agent);
        let approver = Role::new(
            RoleKind::Approver,
            vec!["sre-leads".into(), "dba".into(), "dba".into()],
        )
        .unwrap();
        assert_eq!(approver.groups, vec!["dba", "sre-leads"]);
        assert_eq!(
            Role::from_der(&approver.to_der().unwrap()).unwrap(),
            approver
        );
        assert!(Role::new(RoleKind::Approver, vec![]).is_err());
        assert!(Role::new(RoleKind::Agent, vec!["g".into()]).is_err());
        assert!(Role::new(RoleKind::Approver, vec!["Bad Group".into()]).is_err());
        let unsorted = Role {
            kind: RoleKind::Approver,
            groups: vec!["b".into(), "a".into()],
        };
        assert!(unsorted.to_der().is_err());
        // Hand-encode the unsorted form: decoding must refuse it too.
        let mut groups_der = vec![
            0x30, 0x0b, 0x0a, 0x01, 0x01, 0x30, 0x06, 0x0c, 0x01, b'b', 0x0c, 0x01, b'a',
        ];
        assert!(matches!(
            Role::from_der(&groups_der),
            Err(GrantError::InvalidRole { .. })
        ));
        groups_der.swap(9, 12);
        assert_eq!(Role::from_der(&groups_der).unwrap().groups, vec!["a", "b"]);
        // Unknown enumeration value.
        assert!(Role::from_der(&[0x30, 0x05, 0x0a, 0x01, 0x07, 0x30, 0x00]).is_err());
    }

    #[test]
    fn known_encoding() {
        // One minimal grant, encoded by hand from the ASN.1 module in docs/GRANTS.md.
        let set = GrantSet {
            grants: vec![Grant {
                operation: "a".into(),
                resource: "b".into(),
                max_ttl: Duration::from_secs(60),
                params: BTreeMap::from([("n".to_owned(), Constraint::Range { min: 1, max: 2 })]),
                params_any: false,
                approval: Some(ApprovalRule {
                    required: 2,
                    group: "g".into(),
                }),
            }],
        };
        let want = concat!(
            "3025",             // SEQUENCE OF Grant
            "3023",             // Grant
            "0c0161",           //   operation "a"
            "0c0162",           //   resource "b"
            "02013c",           //   maxTtlSeconds 60
            "300d",             //   params
            "300b0c016e",       //     ParamConstraint, name "n"
            "a206020101020102", //   [2] IMPLICIT IntegerRange { 1, 2 }
            "010100",           //   paramsAny FALSE
            "a0060201020c0167", // [0] IMPLICIT ApprovalRule { 2, "g" }
        );
        let got = set.to_der().unwrap();
        assert_eq!(GrantSet::from_der(&got).unwrap(), set);
        assert_eq!(hex::encode(&got), want);
    }

    fn sample_der() -> Vec<u8> {
        example().to_der().unwrap()
    }

    #[test]
    fn malformed_der_is_an_error() {
        let good = sample_der();
        assert!(GrantSet::from_der(&good).is_ok());
        // Every truncation.
        for len in 0..good.len() {
            assert!(
                GrantSet::from_der(&good[..len]).is_err(),
                "truncated to {len}"
            );
        }
        // Trailing bytes.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            GrantSet::from_der(&trailing),
            Err(GrantError::DecodeDer { .. })
        ));
        // Wrong outer tag (SET instead of SEQUENCE).
        let mut wrong = good.clone();
        wrong[0] = 0x31;
        assert!(GrantSet::from_der(&wrong).is_err());
        // Every single-byte flip either fails or decodes to a valid set (never panics).
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut flipped = good.clone();
                flipped[i] ^= 1 << bit;
                if let Ok(set) = GrantSet::from_der(&flipped) {
                    assert!(set.validate().is_ok());
                }
            }
        }
        // An empty SEQUENCE OF is not a grant set.
        assert!(matches!(
            GrantSet::from_der(&[0x30, 0x00]),
            Err(GrantError::InvalidGrantSet { .. })
        ));
        // BER long-form length where DER requires short form.
        assert!(GrantSet::from_der(&[0x30, 0x81, 0x00]).is_err());
        // Too large.
        let big = vec![0u8; MAX_DER_LEN + 1];
        assert!(matches!(
            GrantSet::from_der(&big),
            Err(GrantError::DerTooLarge { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_an_error() {
        // 10,000 nested SEQUENCE headers with indefinite-looking lengths, and with real ones.
        let mut indefinite = Vec::new();
        for _ in 0..10_000 {
            indefinite.extend_from_slice(&[0x30, 0x80]);
        }
        assert!(GrantSet::from_der(&indefinite).is_err());
        assert!(Role::from_der(&indefinite).is_err());
        let mut nested: Vec<u8> = vec![0x05, 0x00];
        for _ in 0..10_000 {
            let len = nested.len();
            let mut header = vec![0x30];
            if len < 0x80 {
                header.push(len as u8);
            } else if len < 0x100 {
                header.extend_from_slice(&[0x81, len as u8]);
            } else if len < 0x10000 {
                header.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
            } else {
                header.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
            }
            header.extend_from_slice(&nested);
            nested = header;
        }
        assert!(GrantSet::from_der(&nested).is_err());
        assert!(Role::from_der(&nested).is_err());
    }

    #[test]
    fn non_canonical_der_is_refused() {
        // Two params in the wrong order decode to a valid set but are not its DER.
        let set = GrantSet::from_toml_str(&format!(
            "[[grant]]\n{BASE}\nparams.a = {{ equals = 1 }}\nparams.b = {{ equals = 2 }}\n"
        ))
        .unwrap();
        let der = set.to_der().unwrap();
        let a = der
            .windows(3)
            .position(|w| w == [0x0c, 0x01, b'a'])
            .unwrap()
            - 2;
        let b = der
            .windows(3)
            .position(|w| w == [0x0c, 0x01, b'b'])
            .unwrap()
            - 2;
        let item = b - a;
        let mut swapped = der.clone();
        swapped[a..a + item].copy_from_slice(&der[b..b + item]);
        swapped[b..b + item].copy_from_slice(&der[a..a + item]);
        assert!(matches!(
            GrantSet::from_der(&swapped),
            Err(GrantError::NonCanonicalDer { .. })
        ));
    }

    proptest! {
        #[test]
        fn der_round_trip(set in testing::grant_set()) {
            let der = set.to_der().unwrap();
            prop_assert_eq!(GrantSet::from_der(&der).unwrap(), set);
        }

        #[test]
        fn toml_round_trip(set in testing::grant_set()) {
            let text = set.to_toml_string();
            prop_assert_eq!(GrantSet::from_toml_str(&text).unwrap(), set);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = GrantSet::from_der(&bytes);
            let _ = Role::from_der(&bytes);
        }

        #[test]
        fn mutated_der_never_panics(
            set in testing::grant_set(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut der = set.to_der().unwrap();
            for (i, b) in edits {
                let i = i.index(der.len());
                der[i] = b;
            }
            if let Ok(back) = GrantSet::from_der(&der) {
                prop_assert!(back.validate().is_ok());
                prop_assert_eq!(back.to_der().unwrap(), der);
            }
        }
    }
}
