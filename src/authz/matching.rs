//! Does one grant allow one request? Operation, resource and parameter matching.
//!
//! Inputs are assumed syntactically valid (the grant was validated at decoding, the request by
//! [`super::decide`]); on anything unexpected these functions answer "no", never panic.

use serde_json::{Map, Value};

use crate::grants::syntax::{self, OperationPattern, Segment};
use crate::grants::{Constraint, Scalar};

/// Whether `pattern` (a grant's operation) matches the concrete operation `op`.
///
/// `deploy.*` matches `deploy.x` and `deploy.x.y`, not `deploy` nor `deployx.y`.
pub fn operation_matches(pattern: &str, op: &str) -> bool {
    match syntax::parse_operation_pattern(pattern) {
        Ok(OperationPattern::Any) => true,
        Ok(OperationPattern::Exact(exact)) => exact == op,
        Ok(OperationPattern::Prefix(prefix)) => op
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        Err(_) => false,
    }
}

/// Whether `pattern` (a grant's resource glob) matches the concrete resource `resource`.
pub fn resource_matches(pattern: &str, resource: &str) -> bool {
    let Ok(pattern) = syntax::parse_resource_pattern(pattern) else {
        return false;
    };
    let segments: Vec<&str> = resource.split('/').collect();
    glob_match(&pattern, &segments)
}

/// Segment glob matching with `*` (one) and `**` (zero or more), by dynamic programming over
/// (pattern position, resource position): O(p·r), no backtracking blow-up.
fn glob_match(pattern: &[Segment<'_>], resource: &[&str]) -> bool {
    let r = resource.len();
    // reach[j]: the first i pattern segments can consume the first j resource segments.
    let mut reach = vec![false; r + 1];
    reach[0] = true;
    for segment in pattern {
        let mut next = vec![false; r + 1];
        for j in 0..=r {
            next[j] = match segment {
                Segment::Many => reach[j] || (j > 0 && next[j - 1]),
                Segment::One => j > 0 && reach[j - 1],
                Segment::Literal(lit) => j > 0 && reach[j - 1] && resource[j - 1] == *lit,
            };
        }
        reach = next;
    }
    reach[r]
}

/// Why a request's parameters do not satisfy a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamViolation {
    /// A constrained parameter is absent.
    Missing(String),
    /// A parameter the grant does not name, and the grant is not `params_any`.
    NotPermitted(String),
    /// With `params_any`, an unnamed parameter that a reader ignoring case or invisible
    /// characters would take for a constrained one (`REPLICAS` next to `replicas`).
    Shadows {
        /// The unnamed parameter.
        name: String,
        /// The constrained parameter it could be read as.
        constrained: String,
    },
    /// A constrained parameter holds an object, array or null.
    NotScalar(String),
    /// A constrained parameter's value does not satisfy the constraint.
    Violated {
        /// The parameter.
        name: String,
        /// What its constraint asks, as said to the agent (its grants show it anyway).
        wants: String,
    },
    /// A constrained parameter has another JSON type than its constraint takes.
    WrongType {
        /// The parameter.
        name: String,
        /// What the constraint takes (`a string`, `an integer`, ...).
        expected: &'static str,
        /// What the request holds.
        got: &'static str,
    },
}

impl std::fmt::Display for ParamViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamViolation::Missing(n) => write!(f, "parameter {n:?} is required"),
            ParamViolation::NotPermitted(n) => write!(f, "parameter {n:?} is not permitted"),
            ParamViolation::Shadows { name, constrained } => write!(
                f,
                "parameter {name:?} is not permitted: a program that ignores case or invisible \
                 characters in names would read it as the constrained {constrained:?}"
            ),
            ParamViolation::NotScalar(n) => {
                write!(f, "parameter {n:?} must be a string, integer or boolean")
            }
            ParamViolation::Violated { name, wants } => {
                write!(
                    f,
                    "parameter {name:?} does not satisfy its constraint: {wants}"
                )
            }
            ParamViolation::WrongType {
                name,
                expected,
                got,
            } => write!(
                f,
                "parameter {name:?} must be {expected}, but the request holds {got} \
                 (types are exact: \"3\" is a string, 3 an integer)"
            ),
        }
    }
}

/// Checks request parameters (a JSON object) against a grant's constraints.
pub fn params_satisfy(
    constraints: &std::collections::BTreeMap<String, Constraint>,
    params_any: bool,
    params: &Map<String, Value>,
) -> Result<(), ParamViolation> {
    for (name, constraint) in constraints {
        let value = params
            .get(name)
            .ok_or_else(|| ParamViolation::Missing(name.clone()))?;
        if matches!(value, Value::Object(_) | Value::Array(_) | Value::Null) {
            return Err(ParamViolation::NotScalar(name.clone()));
        }
        if !constraint_allows(constraint, value) {
            let expected = expected_type(constraint);
            let got = type_of(value);
            return Err(match expected {
                Some(expected) if expected != got => ParamViolation::WrongType {
                    name: name.clone(),
                    expected,
                    got,
                },
                _ => ParamViolation::Violated {
                    name: name.clone(),
                    wants: wants(constraint),
                },
            });
        }
    }
    let extras = params.keys().filter(|k| !constraints.contains_key(*k));
    for extra in extras {
        if !params_any {
            return Err(ParamViolation::NotPermitted(extra.clone()));
        }
        // Many programs match names case-insensitively or after dropping what does not
        // show (.NET's JSON binding, configuration loaders): such a reader would act on this
        // value instead of the one the constraint checked.
        let folded = syntax::folded_name(extra);
        if let Some(constrained) = constraints
            .keys()
            .find(|c| syntax::folded_name(c) == folded)
        {
            return Err(ParamViolation::Shadows {
                name: extra.clone(),
                constrained: constrained.clone(),
            });
        }
    }
    Ok(())
}

/// A request parameter that folds (case, `_`, `-`, invisible characters:
/// [`syntax::folded_name`]) to a name `constraints` constrains, under another spelling, with
/// that name: (`NAME`, `name`).
pub fn lookalike<'a>(
    constraints: &'a std::collections::BTreeMap<String, Constraint>,
    params: &'a Map<String, Value>,
) -> Option<(&'a String, &'a String)> {
    params.keys().find_map(|name| {
        let folded = syntax::folded_name(name);
        constraints
            .keys()
            .find(|c| *c != name && syntax::folded_name(c) == folded)
            .map(|c| (name, c))
    })
}

/// Whether the request meets every constraint of a grant that constrains something (each
/// constrained parameter present with a value its constraint allows, extra parameters aside),
/// counting a value of another JSON type than its constraint takes as meeting it
/// ([`same_kind`]). For which grant *governs* a request
/// ([`super::deciding::deciding_grant`]): programs convert types in too many ways (`"50"`,
/// `"0x32"`, `"５０"` or `50.0` for `50`; `"t"`, `"1"` or `1` for `true`; `["release-1"]` for
/// `"release-1"`) for any list of readings to be complete, so a value the strict grant could
/// only refuse for its type must not move the request to a laxer grant without the strict
/// grant's approvals. A value of the constraint's own type that it refuses (`500` above
/// `max = 100`) is outside the strict grant, and first match decides.
pub fn constraints_met_or_evaded(
    constraints: &std::collections::BTreeMap<String, Constraint>,
    params: &Map<String, Value>,
) -> bool {
    !constraints.is_empty()
        && constraints.iter().all(|(name, constraint)| {
            params.get(name).is_some_and(|value| {
                constraint_allows(constraint, value) || !same_kind(constraint, value)
            })
        })
}

/// Whether `value` is of a JSON type `constraint` takes: an integer for a range, a string for
/// a prefix, the type of the scalar (or of one of the scalars) for `equals` / `one_of`.
fn same_kind(constraint: &Constraint, value: &Value) -> bool {
    let of_scalar = |scalar: &Scalar| match scalar {
        Scalar::String(_) => value.is_string(),
        Scalar::Integer(_) => json_integer(value).is_some(),
        Scalar::Bool(_) => value.is_boolean(),
    };
    match constraint {
        Constraint::Equals(scalar) => of_scalar(scalar),
        Constraint::OneOf(options) => options.iter().any(of_scalar),
        Constraint::Range { .. } => json_integer(value).is_some(),
        Constraint::Prefix(_) => value.is_string(),
    }
}

/// Whether a JSON value satisfies a constraint; types are exact.
pub fn constraint_allows(constraint: &Constraint, value: &Value) -> bool {
    match constraint {
        Constraint::Equals(s) => scalar_equals(s, value),
        Constraint::OneOf(options) => options.iter().any(|s| scalar_equals(s, value)),
        Constraint::Range { min, max } => {
            json_integer(value).is_some_and(|i| *min <= i && i <= *max)
        }
        Constraint::Prefix(prefix) => value
            .as_str()
            .is_some_and(|s| s.starts_with(prefix.as_str()) && !climbs(s)),
    }
}

/// Whether a string has a `..` path segment (between `/` or `\` separators, or at either
/// end): a value under a prefix that a reader taking it for a path would resolve outside the
/// prefix (`registry.internal/payments/../../other`, `release-/../../etc/passwd`).
pub(crate) fn climbs(value: &str) -> bool {
    value.split(['/', '\\']).any(|segment| segment == "..")
}

/// What a constraint asks of a value, in words: `must be from 1 to 10`.
fn wants(constraint: &Constraint) -> String {
    match constraint {
        Constraint::Equals(s) => format!("must equal {s}"),
        Constraint::OneOf(options) => format!(
            "must be one of {}",
            options
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Constraint::Range { min, max } => format!("must be an integer from {min} to {max}"),
        Constraint::Prefix(p) => {
            format!("must start with {p:?} and have no \"..\" path segment")
        }
    }
}

/// The one JSON type a constraint takes, if it takes only one.
fn expected_type(constraint: &Constraint) -> Option<&'static str> {
    let of = |s: &Scalar| match s {
        Scalar::String(_) => "a string",
        Scalar::Integer(_) => "an integer",
        Scalar::Bool(_) => "a boolean",
    };
    match constraint {
        Constraint::Equals(s) => Some(of(s)),
        Constraint::OneOf(options) => {
            let first = options.first().map(of)?;
            options.iter().all(|o| of(o) == first).then_some(first)
        }
        Constraint::Range { .. } => Some("an integer"),
        Constraint::Prefix(_) => Some("a string"),
    }
}

/// The JSON type of a scalar request value, in the words of [`expected_type`].
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Bool(_) => "a boolean",
        Value::Number(_) if json_integer(value).is_some() => "an integer",
        Value::Number(_) => "a number that is not an integer",
        Value::Null | Value::Array(_) | Value::Object(_) => "an object, array or null",
    }
}

fn scalar_equals(scalar: &Scalar, value: &Value) -> bool {
    match scalar {
        Scalar::String(s) => value.as_str() == Some(s.as_str()),
        Scalar::Integer(i) => json_integer(value) == Some(*i),
        Scalar::Bool(b) => value.as_bool() == Some(*b),
    }
}

/// A JSON number written as an integer that fits in i64. `5.0`, `5e0`, `2^64` and `"5"` are
/// not integers here.
fn json_integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) if !n.is_f64() => n.as_i64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_mismatch_names_both_types() {
        let mut constraints = std::collections::BTreeMap::new();
        constraints.insert("replicas".to_owned(), Constraint::Range { min: 1, max: 10 });
        let params: Map<String, Value> = serde_json::from_str(r#"{"replicas": "3"}"#).unwrap();
        let err = params_satisfy(&constraints, false, &params).unwrap_err();
        assert_eq!(
            err,
            ParamViolation::WrongType {
                name: "replicas".into(),
                expected: "an integer",
                got: "a string"
            }
        );
        assert!(err.to_string().contains("must be an integer"), "{err}");
        // The right type with a value out of range is a plain violation.
        let params: Map<String, Value> = serde_json::from_str(r#"{"replicas": 30}"#).unwrap();
        assert_eq!(
            params_satisfy(&constraints, false, &params).unwrap_err(),
            ParamViolation::Violated {
                name: "replicas".into(),
                wants: "must be an integer from 1 to 10".into()
            }
        );
    }

    #[test]
    fn operation_wildcards() {
        assert!(operation_matches("deploy.*", "deploy.x"));
        assert!(operation_matches("deploy.*", "deploy.x.y"));
        assert!(!operation_matches("deploy.*", "deploy"));
        assert!(!operation_matches("deploy.*", "deployx.y"));
        assert!(!operation_matches("deploy.*", "deploy."));
        assert!(operation_matches("deploy", "deploy"));
        assert!(!operation_matches("deploy", "deploy.x"));
        assert!(operation_matches("*", "anything.at.all"));
        assert!(!operation_matches("bad*", "bad"));
    }

    #[test]
    fn resource_globs() {
        let yes = [
            ("prod/*", "prod/x"),
            ("prod/**", "prod"),
            ("prod/**", "prod/a/b/c"),
            ("**", "a"),
            ("a/**/b", "a/b"),
            ("a/**/b", "a/x/y/b"),
            ("*/x", "a/x"),
            ("a/**/**/b", "a/b"),
        ];
        for (p, r) in yes {
            assert!(resource_matches(p, r), "{p} ~ {r}");
        }
        let no = [
            ("prod/*", "prod"),
            ("prod/*", "prod/a/b"),
            ("prod/**", "production"),
            ("a/**/b", "a/b/c"),
            ("*/x", "x"),
            ("prod", "prod/x"),
        ];
        for (p, r) in no {
            assert!(!resource_matches(p, r), "{p} !~ {r}");
        }
    }

    /// Outside review: `prefix = "registry.internal/payments/"` granted
    /// `registry.internal/payments/../../evil`.
    #[test]
    fn a_prefix_does_not_admit_a_value_that_climbs_out_of_it() {
        let images = Constraint::Prefix("registry.internal/payments/".into());
        let files = Constraint::Prefix("release-".into());
        for (constraint, value, allowed) in [
            (&images, "registry.internal/payments/api:1.4", true),
            (&images, "registry.internal/payments/a..b/c", true),
            (&images, "registry.internal/payments/..hidden", true),
            (&images, "registry.internal/payments/../../evil", false),
            (&images, "registry.internal/payments/x/..", false),
            (&images, "registry.internal/payments/x\\..\\..\\evil", false),
            (&images, "registry.internal/other", false),
            (&files, "release-notes.txt", true),
            (&files, "release-/../../etc/passwd", false),
            (&files, "release-..", true),
        ] {
            assert_eq!(
                constraint_allows(constraint, &Value::String(value.into())),
                allowed,
                "{value}"
            );
        }
    }

    #[test]
    fn with_params_any_an_unnamed_parameter_may_not_pass_for_a_constrained_one() {
        let mut constraints = std::collections::BTreeMap::new();
        constraints.insert(
            "max_replicas".to_owned(),
            Constraint::Range { min: 1, max: 10 },
        );
        let with = |extra: &str| {
            let mut params = Map::new();
            params.insert("max_replicas".into(), Value::from(5));
            params.insert(extra.into(), Value::from(1000));
            params_satisfy(&constraints, true, &params)
        };
        for shadow in [
            "MAX_REPLICAS",
            "Max_Replicas",
            "maxReplicas",
            "max-replicas",
            "max_replicas ",
            "max_replicas\u{200b}",
            "max\u{202e}_replicas",
            "max_replicaſ",
            "max_replıcas",
            "max.replicas",
        ] {
            assert_eq!(
                with(shadow),
                Err(ParamViolation::Shadows {
                    name: shadow.into(),
                    constrained: "max_replicas".into()
                }),
                "{shadow:?}"
            );
        }
        // The Kelvin sign is a K to Go's encoding/json.
        assert_eq!(
            syntax::folded_name("ma\u{212a}e"),
            syntax::folded_name("make")
        );
        // Other names stay free, as params_any says.
        for free in ["replicas", "max_replica", "image", "notes"] {
            assert_eq!(with(free), Ok(()), "{free:?}");
        }
        // Without params_any they were refused anyway.
        let mut params = Map::new();
        params.insert("max_replicas".into(), Value::from(5));
        params.insert("MAX_REPLICAS".into(), Value::from(1000));
        assert_eq!(
            params_satisfy(&constraints, false, &params),
            Err(ParamViolation::NotPermitted("MAX_REPLICAS".into()))
        );
    }
}
