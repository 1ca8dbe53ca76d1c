//! The grammar of operations, resources, parameter names and group names, for grants
//! (patterns) and for requests (concrete names).
//!
//! Everything outside the grammar is rejected, never normalised: the executor acts on exactly
//! the string the broker authorised, so `prod/../prod`, `prod//x`, `%2F` or a Cyrillic `р`
//! must not reach it as "the same" resource. This module must never accept a string it would
//! have to rewrite to understand.

/// Longest operation, in bytes.
pub const MAX_OPERATION_LEN: usize = 128;
/// Most dot-separated segments in an operation.
pub const MAX_OPERATION_SEGMENTS: usize = 16;
/// Longest resource, in bytes.
pub const MAX_RESOURCE_LEN: usize = 512;
/// Most `/`-separated segments in a resource.
pub const MAX_RESOURCE_SEGMENTS: usize = 32;
/// Longest parameter or group name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// An operation pattern in a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationPattern<'a> {
    /// `*`: every operation.
    Any,
    /// `deploy.rollout`: exactly that operation.
    Exact(&'a str),
    /// `deploy.*`, held as `deploy`: every operation with at least one more segment.
    Prefix(&'a str),
}

/// One segment of a resource pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Matches exactly this segment.
    Literal(&'a str),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Many,
}

/// Checks a concrete operation: 1..=16 dot-separated segments of `[a-z0-9_-]`.
pub fn validate_operation(op: &str) -> Result<(), String> {
    if op.is_empty() {
        return Err("operation is empty".into());
    }
    if op.len() > MAX_OPERATION_LEN {
        return Err(format!(
            "operation is longer than {MAX_OPERATION_LEN} bytes"
        ));
    }
    let mut count = 0;
    for segment in op.split('.') {
        count += 1;
        if segment.is_empty() {
            return Err(format!("operation {op:?} has an empty segment"));
        }
        if let Some(c) = segment.chars().find(|c| !is_operation_char(*c)) {
            return Err(format!(
                "operation {op:?} contains {c:?}; segments use only a-z, 0-9, '_' and '-'"
            ));
        }
    }
    if count > MAX_OPERATION_SEGMENTS {
        return Err(format!(
            "operation {op:?} has more than {MAX_OPERATION_SEGMENTS} segments"
        ));
    }
    Ok(())
}

fn is_operation_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// Parses an operation pattern: `*`, an exact operation, or an operation followed by `.*`.
pub fn parse_operation_pattern(pattern: &str) -> Result<OperationPattern<'_>, String> {
    if pattern == "*" {
        return Ok(OperationPattern::Any);
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        validate_operation(prefix).map_err(|e| format!("in wildcard {pattern:?}: {e}"))?;
        return Ok(OperationPattern::Prefix(prefix));
    }
    validate_operation(pattern)?;
    Ok(OperationPattern::Exact(pattern))
}

/// Checks an operation pattern (see [`parse_operation_pattern`]).
pub fn validate_operation_pattern(pattern: &str) -> Result<(), String> {
    parse_operation_pattern(pattern).map(|_| ())
}

/// Checks a concrete resource: 1..=32 `/`-separated literal segments, no wildcards.
pub fn validate_resource(resource: &str) -> Result<(), String> {
    check_resource_shape(resource)?;
    for segment in resource.split('/') {
        validate_literal_segment(resource, segment)?;
    }
    Ok(())
}

/// Parses a resource pattern into segments: literals, `*` and `**`.
pub fn parse_resource_pattern(pattern: &str) -> Result<Vec<Segment<'_>>, String> {
    check_resource_shape(pattern)?;
    pattern
        .split('/')
        .map(|segment| match segment {
            "*" => Ok(Segment::One),
            "**" => Ok(Segment::Many),
            literal => {
                validate_literal_segment(pattern, literal).map(|()| Segment::Literal(literal))
            }
        })
        .collect()
}

/// Checks a resource pattern (see [`parse_resource_pattern`]).
pub fn validate_resource_pattern(pattern: &str) -> Result<(), String> {
    parse_resource_pattern(pattern).map(|_| ())
}

fn check_resource_shape(resource: &str) -> Result<(), String> {
    if resource.is_empty() {
        return Err("resource is empty".into());
    }
    if resource.len() > MAX_RESOURCE_LEN {
        return Err(format!("resource is longer than {MAX_RESOURCE_LEN} bytes"));
    }
    if resource.split('/').count() > MAX_RESOURCE_SEGMENTS {
        return Err(format!(
            "resource has more than {MAX_RESOURCE_SEGMENTS} segments"
        ));
    }
    Ok(())
}

/// A literal segment: `[A-Za-z0-9._~:@+=,-]+`, not made only of dots (`.`, `..`, `...`).
fn validate_literal_segment(resource: &str, segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!(
            "resource {resource:?} has an empty segment (leading, trailing or doubled '/')"
        ));
    }
    if segment.bytes().all(|b| b == b'.') {
        return Err(format!(
            "resource {resource:?} has a dot segment {segment:?}; paths are never normalised"
        ));
    }
    if let Some(c) = segment.chars().find(|c| !is_resource_char(*c)) {
        return Err(format!(
            "resource {resource:?} contains {c:?}; segments use only A-Z, a-z, 0-9 and ._~:@+=,-"
        ));
    }
    Ok(())
}

fn is_resource_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | ':' | '@' | '+' | '=' | ',' | '-')
}

/// Checks a parameter name: `[A-Za-z_][A-Za-z0-9_-]*`, at most 64 bytes (a TOML bare key).
pub fn validate_param_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || name.len() > MAX_NAME_LEN
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "parameter name {name:?} must match [A-Za-z_][A-Za-z0-9_-]* and be at most {MAX_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

/// A parameter name as a lenient reader may match it: case-folded (upper case, then lower, so
/// that `ſ` is `s` and `ı` is `i`, as Go's encoding/json and Python's `casefold` have it), with
/// only letters and digits kept (no whitespace, punctuation, `-`, `_`, control or formatting
/// characters). A request may not carry an unconstrained name that folds to a constrained one,
/// and one grant may not constrain two names that fold to the same.
pub fn folded_name(name: &str) -> String {
    name.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Checks an approver group name: `[a-z0-9][a-z0-9._-]*`, at most 64 bytes.
pub fn validate_group(group: &str) -> Result<(), String> {
    let mut chars = group.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || group.len() > MAX_NAME_LEN
        || !chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "group name {group:?} must match [a-z0-9][a-z0-9._-]* and be at most {MAX_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        for ok in ["deploy", "deploy.rollout", "k8s.read.pods", "a-b_c.d9"] {
            assert!(validate_operation(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "deploy.",
            ".deploy",
            "deploy..x",
            "Deploy",
            "deploy.*",
            "*",
            "dép",
            "deploy rollout",
            "deploy/x",
        ] {
            assert!(validate_operation(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_operation_pattern("*"), Ok(OperationPattern::Any));
        assert_eq!(
            parse_operation_pattern("deploy.*"),
            Ok(OperationPattern::Prefix("deploy"))
        );
        for bad in [
            "deploy*",
            "deploy.**",
            "*.deploy",
            ".*",
            "deploy.*.x",
            "de*ploy",
        ] {
            assert!(parse_operation_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources() {
        for ok in [
            "prod",
            "prod/payments",
            "prod/a.b/c-d_e",
            "s3:bucket/key@v2",
        ] {
            assert!(validate_resource(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/prod",
            "prod/",
            "prod//x",
            "prod/../x",
            "./prod",
            "prod/...",
            "prod/*",
            "prod/%2F",
            "prod\\x",
            "prod/x y",
            "рrod",
            "prod／x",
            "prod/\u{0}",
        ] {
            assert!(validate_resource(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_resource_pattern("prod/*/**"),
            Ok(vec![Segment::Literal("prod"), Segment::One, Segment::Many])
        );
        for bad in ["prod/pay*", "prod/***", "prod/**/", "**//x"] {
            assert!(parse_resource_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_param_name("replicas").is_ok());
        assert!(validate_param_name("_x-1").is_ok());
        for bad in ["", "1x", "a.b", "a b", "ä"] {
            assert!(validate_param_name(bad).is_err(), "{bad}");
        }
        assert!(validate_group("sre-leads").is_ok());
        for bad in ["", "-x", "SRE", "a b"] {
            assert!(validate_group(bad).is_err(), "{bad}");
        }
    }
}
