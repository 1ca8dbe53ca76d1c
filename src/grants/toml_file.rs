//! The human-written TOML grant file: `[[grant]]` tables as in ARCHITECTURE.md §5.
//!
//! Reading goes through serde with `deny_unknown_fields` at every level, so a typo is an
//! error. Writing is done by hand so the output reads like the documented examples and needs
//! no fallible serializer. This file must never accept a value it cannot write back.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use super::{syntax, ApprovalRule, Constraint, Grant, GrantError, GrantSet, Scalar};
use crate::duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    grant: Vec<GrantToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantToml {
    operation: String,
    resource: String,
    max_ttl: String,
    #[serde(default)]
    params: BTreeMap<String, ConstraintToml>,
    #[serde(default)]
    params_any: bool,
    #[serde(default)]
    approval: Option<ApprovalToml>,
}

/// One table per parameter; exactly one kind of constraint must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstraintToml {
    equals: Option<::toml::Value>,
    one_of: Option<Vec<::toml::Value>>,
    min: Option<i64>,
    max: Option<i64>,
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalToml {
    required: i64,
    group: String,
}

pub(super) fn parse(s: &str) -> Result<GrantSet, GrantError> {
    let file: FileToml = ::toml::from_str(s).map_err(|e| GrantError::ParseToml {
        source: Box::new(e),
    })?;
    let grants = file
        .grant
        .into_iter()
        .enumerate()
        .map(|(index, g)| {
            convert_grant(g).map_err(|(field, reason)| GrantError::InvalidGrant {
                index,
                field,
                reason,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(GrantSet { grants })
}

fn convert_grant(g: GrantToml) -> Result<Grant, (String, String)> {
    let max_ttl = duration::parse(&g.max_ttl).map_err(|e| ("max_ttl".to_owned(), e.to_string()))?;
    let params = g
        .params
        .into_iter()
        .map(|(name, c)| {
            let constraint =
                convert_constraint(c).map_err(|reason| (format!("params.{name}"), reason))?;
            Ok((name, constraint))
        })
        .collect::<Result<_, (String, String)>>()?;
    let approval = g
        .approval
        .map(|a| {
            let required = u32::try_from(a.required).map_err(|_| {
                (
                    "approval".to_owned(),
                    format!("required = {} is not a count of approvers", a.required),
                )
            })?;
            Ok::<_, (String, String)>(ApprovalRule {
                required,
                group: a.group,
            })
        })
        .transpose()?;
    Ok(Grant {
        operation: g.operation,
        resource: g.resource,
        max_ttl,
        params,
        params_any: g.params_any,
        approval,
    })
}

fn convert_constraint(c: ConstraintToml) -> Result<Constraint, String> {
    match c {
        ConstraintToml {
            equals: Some(v),
            one_of: None,
            min: None,
            max: None,
            prefix: None,
        } => Ok(Constraint::Equals(convert_scalar(v)?)),
        ConstraintToml {
            equals: None,
            one_of: Some(vs),
            min: None,
            max: None,
            prefix: None,
        } => Ok(Constraint::OneOf(
            vs.into_iter().map(convert_scalar).collect::<Result<_, _>>()?,
        )),
        ConstraintToml {
            equals: None,
            one_of: None,
            min: Some(min),
            max: Some(max),
            prefix: None,
        } => Ok(Constraint::Range { min, max }),
        ConstraintToml {
            equals: None,
            one_of: None,
            min: None,
            max: None,
            prefix: Some(p),
        } => Ok(Constraint::Prefix(p)),
        _ => Err(
            "write exactly one of { equals = v }, { one_of = [..] }, { min = a, max = b } or { prefix = \"..\" }"
                .into(),
        ),
    }
}

fn convert_scalar(v: ::toml::Value) -> Result<Scalar, String> {
    match v {
        ::toml::Value::String(s) => Ok(Scalar::String(s)),
        ::toml::Value::Integer(i) => Ok(Scalar::Integer(i)),
        ::toml::Value::Boolean(b) => Ok(Scalar::Bool(b)),
        other => Err(format!(
            "values are strings, integers or booleans, not {}",
            other.type_str()
        )),
    }
}

/// Writes the set in the documented style; every value here is already valid TOML.
pub(super) fn write(set: &GrantSet) -> String {
    let mut out = String::new();
    for (i, g) in set.grants.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("[[grant]]\n");
        let _ = writeln!(out, "operation = {}", quote(&g.operation));
        let _ = writeln!(out, "resource = {}", quote(&g.resource));
        let _ = writeln!(out, "max_ttl = {}", quote(&duration::format(g.max_ttl)));
        for (name, constraint) in &g.params {
            // Valid parameter names are bare keys; anything else is quoted so even an invalid
            // set (which reading back will reject) stays syntactically intact.
            let key = if syntax::validate_param_name(name).is_ok() {
                name.clone()
            } else {
                quote(name)
            };
            let _ = writeln!(out, "params.{key} = {}", constraint_toml(constraint));
        }
        if g.params_any {
            out.push_str("params_any = true\n");
        }
        if let Some(rule) = &g.approval {
            let _ = writeln!(
                out,
                "approval = {{ required = {}, group = {} }}",
                rule.required,
                quote(&rule.group)
            );
        }
    }
    out
}

fn constraint_toml(c: &Constraint) -> String {
    match c {
        Constraint::Equals(v) => format!("{{ equals = {} }}", scalar_toml(v)),
        Constraint::OneOf(vs) => {
            let items: Vec<String> = vs.iter().map(scalar_toml).collect();
            format!("{{ one_of = [{}] }}", items.join(", "))
        }
        Constraint::Range { min, max } => format!("{{ min = {min}, max = {max} }}"),
        Constraint::Prefix(p) => format!("{{ prefix = {} }}", quote(p)),
    }
}

fn scalar_toml(v: &Scalar) -> String {
    match v {
        Scalar::String(s) => quote(s),
        Scalar::Integer(i) => i.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }
}

/// A TOML basic string: escapes `"`, `\` and every control character.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes() {
        assert_eq!(
            quote("a\"b\\c\n\u{1}\u{7f}é"),
            "\"a\\\"b\\\\c\\n\\u0001\\u007Fé\""
        );
    }
}
