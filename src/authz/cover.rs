//! Attenuation (RFC 3779 style): does a parent grant cover a child grant, i.e. is every
//! request the child allows also allowed by the parent, with a token lifetime no longer and an
//! approval rule no weaker?
//!
//! The checks are conservative: when in doubt the answer is "not covered". They must never be
//! generous, since a false "covered" is a privilege escalation.

use std::collections::{BTreeMap, HashSet};

use crate::grants::syntax::{self, OperationPattern, Segment};
use crate::grants::{Constraint, Grant, GrantSet, Scalar};

/// A child grant that no parent grant covers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "grant #{child_index} ({operation} on {resource}) is not covered by any grant of the issuer"
)]
pub struct NotCovered {
    /// Position of the uncovered grant in the child set.
    pub child_index: usize,
    /// Its operation pattern.
    pub operation: String,
    /// Its resource pattern.
    pub resource: String,
}

/// Whether every child grant is covered by some parent grant.
pub fn grant_set_covered(parent: &GrantSet, child: &GrantSet) -> Result<(), NotCovered> {
    let mut unlimited = usize::MAX;
    grant_set_covered_within(parent, child, &mut unlimited).unwrap_or(Ok(()))
}

/// [`grant_set_covered`] within `budget` grant-against-grant comparisons (spent from it):
/// `Ok(Err(..))` when a child grant is not covered, `Err(BudgetExhausted)` when the budget ran
/// out first. The chain's grant sets are chosen by whoever holds a CA key, and each comparison
/// costs CPU.
pub fn grant_set_covered_within(
    parent: &GrantSet,
    child: &GrantSet,
    budget: &mut usize,
) -> Result<Result<(), NotCovered>, BudgetExhausted> {
    for (child_index, c) in child.grants.iter().enumerate() {
        let mut covered = false;
        for p in &parent.grants {
            *budget = budget.checked_sub(1).ok_or(BudgetExhausted)?;
            if covers(p, c) {
                covered = true;
                break;
            }
        }
        if !covered {
            return Ok(Err(NotCovered {
                child_index,
                operation: c.operation.clone(),
                resource: c.resource.clone(),
            }));
        }
    }
    Ok(Ok(()))
}

/// The comparison budget of an attenuation check ran out before it could decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetExhausted;

/// Whether `parent` covers `child`: operation, resource and parameters no wider, lifetime no
/// longer, approval no weaker (same group, at least as many approvers).
pub fn covers(parent: &Grant, child: &Grant) -> bool {
    operation_covers(&parent.operation, &child.operation)
        && resource_covers(&parent.resource, &child.resource)
        && child.max_ttl <= parent.max_ttl
        && approval_covers(parent, child)
        && params_cover(parent, child)
}

/// Whether `child`'s approval rule is no weaker than `parent`'s: none needed by the parent, or
/// the same group with at least as many approvers.
pub fn approval_covers(parent: &Grant, child: &Grant) -> bool {
    match (&parent.approval, &child.approval) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(p), Some(c)) => c.group == p.group && c.required >= p.required,
    }
}

/// Operation-pattern inclusion.
pub fn operation_covers(parent: &str, child: &str) -> bool {
    let (Ok(p), Ok(c)) = (
        syntax::parse_operation_pattern(parent),
        syntax::parse_operation_pattern(child),
    ) else {
        return false;
    };
    match (p, c) {
        (OperationPattern::Any, _) => true,
        (_, OperationPattern::Any) => false,
        (OperationPattern::Exact(p), OperationPattern::Exact(c)) => p == c,
        (OperationPattern::Exact(_), OperationPattern::Prefix(_)) => false,
        (OperationPattern::Prefix(p), OperationPattern::Exact(c)) => is_strictly_below(p, c),
        (OperationPattern::Prefix(p), OperationPattern::Prefix(c)) => {
            p == c || is_strictly_below(p, c)
        }
    }
}

/// `child` is `parent` followed by one or more dot-separated segments.
fn is_strictly_below(parent: &str, child: &str) -> bool {
    child
        .strip_prefix(parent)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

/// Resource-glob inclusion: every resource the child glob matches, the parent glob matches.
///
/// Child segments are mapped onto parent segments: a literal onto the same literal, `*` or
/// `**`; a `*` onto `*` or `**`; a `**` only onto a parent `**`. Since segment names are an
/// infinite alphabet, this mapping exists exactly when the child language is included.
pub fn resource_covers(parent: &str, child: &str) -> bool {
    let (Ok(p), Ok(c)) = (
        syntax::parse_resource_pattern(parent),
        syntax::parse_resource_pattern(child),
    ) else {
        return false;
    };
    let (np, nc) = (p.len(), c.len());
    // ok[i][j]: parent[i..] covers child[j..]; filled from the end.
    let mut ok = vec![vec![false; nc + 1]; np + 1];
    ok[np][nc] = true;
    for i in (0..np).rev() {
        for j in (0..=nc).rev() {
            ok[i][j] = match p[i] {
                Segment::Many => ok[i + 1][j] || (j < nc && ok[i][j + 1]),
                Segment::One => j < nc && c[j] != Segment::Many && ok[i + 1][j + 1],
                Segment::Literal(pl) => j < nc && c[j] == Segment::Literal(pl) && ok[i + 1][j + 1],
            };
        }
    }
    ok[0][0]
}

/// Every parameter set the child accepts, the parent accepts.
///
/// The parent's constrained names must all be constrained by the child at least as tightly
/// (a child that drops one would accept requests without it, which the parent refuses); names
/// only the child constrains, and `params_any`, need a parent with `params_any`.
fn params_cover(parent: &Grant, child: &Grant) -> bool {
    if child.params_any && !parent.params_any {
        return false;
    }
    let names_ok = parent.params_any || child.params.keys().all(|k| parent.params.contains_key(k));
    names_ok && constraints_cover(&parent.params, &child.params)
}

fn constraints_cover(
    parent: &BTreeMap<String, Constraint>,
    child: &BTreeMap<String, Constraint>,
) -> bool {
    parent
        .iter()
        .all(|(name, p)| child.get(name).is_some_and(|c| constraint_covers(p, c)))
}

/// Constraint inclusion over scalar values.
pub fn constraint_covers(parent: &Constraint, child: &Constraint) -> bool {
    match child {
        Constraint::Equals(v) => scalar_allowed(parent, v),
        Constraint::OneOf(vs) => match parent {
            // Linear, not a scan of the parent's list per value: both lists come from
            // certificates, and a CA's key holder chooses their length.
            Constraint::OneOf(ps) => {
                let listed: HashSet<&Scalar> = ps.iter().collect();
                vs.iter().all(|v| listed.contains(v))
            }
            _ => vs.iter().all(|v| scalar_allowed(parent, v)),
        },
        Constraint::Range { min, max } => match parent {
            Constraint::Range {
                min: pmin,
                max: pmax,
            } => pmin <= min && max <= pmax,
            // A finite list covers a small range only if it lists every integer in it: the
            // distinct listed integers inside the range must be as many as the range holds.
            Constraint::Equals(_) | Constraint::OneOf(_) => {
                let width = i128::from(*max) - i128::from(*min);
                let listed: &[Scalar] = match parent {
                    Constraint::Equals(v) => std::slice::from_ref(v),
                    Constraint::OneOf(vs) => vs,
                    _ => &[],
                };
                let mut inside: Vec<i64> = listed
                    .iter()
                    .filter_map(|v| match v {
                        Scalar::Integer(i) if min <= i && i <= max => Some(*i),
                        _ => None,
                    })
                    .collect();
                inside.sort_unstable();
                inside.dedup();
                width < 256 && i128::try_from(inside.len()).is_ok_and(|n| n == width + 1)
            }
            Constraint::Prefix(_) => false,
        },
        Constraint::Prefix(cp) => match parent {
            Constraint::Prefix(pp) => cp.starts_with(pp.as_str()),
            _ => false,
        },
    }
}

fn scalar_allowed(parent: &Constraint, value: &Scalar) -> bool {
    match parent {
        Constraint::Equals(p) => p == value,
        Constraint::OneOf(ps) => ps.contains(value),
        Constraint::Range { min, max } => {
            matches!(value, Scalar::Integer(i) if min <= i && i <= max)
        }
        // As the decision reads a prefix: a value that climbs out of it with a `..` segment
        // is not under it, so a child may not name one as its own.
        Constraint::Prefix(p) => matches!(
            value,
            Scalar::String(s) if s.starts_with(p.as_str()) && !super::matching::climbs(s)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_inclusion() {
        assert!(operation_covers("*", "deploy.*"));
        assert!(operation_covers("deploy.*", "deploy.*"));
        assert!(operation_covers("deploy.*", "deploy.x.*"));
        assert!(operation_covers("deploy.*", "deploy.x"));
        assert!(!operation_covers("deploy.*", "deploy"));
        assert!(!operation_covers("deploy.*", "deployx.*"));
        assert!(!operation_covers("deploy.x", "deploy.*"));
        assert!(!operation_covers("deploy.*", "*"));
    }

    #[test]
    fn resource_inclusion() {
        let yes = [
            ("**", "**"),
            ("**", "a/*/b"),
            ("prod/**", "prod/payments/*"),
            ("prod/*", "prod/x"),
            ("prod/*", "prod/*"),
            ("**/x", "x/**/x"),
            ("a/**", "a/**/**"),
            ("**/a/**", "a/**"),
        ];
        for (p, c) in yes {
            assert!(resource_covers(p, c), "{p} ⊇ {c}");
        }
        let no = [
            ("prod/*", "prod/**"),
            ("prod/*", "prod"),
            ("prod/x", "prod/*"),
            ("*/**", "**"),
            ("a/*/**", "a/**"),
            ("prod/**", "staging/x"),
        ];
        for (p, c) in no {
            assert!(!resource_covers(p, c), "{p} ⊉ {c}");
        }
    }

    #[test]
    fn a_range_is_covered_by_a_list_only_when_every_integer_in_it_is_listed() {
        use Constraint::*;
        let ints = |v: &[i64]| OneOf(v.iter().map(|&i| Scalar::Integer(i)).collect());
        // Duplicates, values outside the range and other types do not make up for a gap.
        let mut listed = ints(&[1, 1, 3, 3, 9, -4]);
        if let OneOf(values) = &mut listed {
            values.push(Scalar::String("2".into()));
        }
        assert!(!constraint_covers(&listed, &Range { min: 1, max: 3 }));
        assert!(constraint_covers(
            &ints(&[3, 2, 1, 2]),
            &Range { min: 1, max: 3 }
        ));
        assert!(constraint_covers(
            &Equals(Scalar::Integer(7)),
            &Range { min: 7, max: 7 }
        ));
        assert!(!constraint_covers(
            &Equals(Scalar::Integer(7)),
            &Range { min: 7, max: 8 }
        ));
        let all: Vec<i64> = (0..256).rev().collect();
        assert!(constraint_covers(&ints(&all), &Range { min: 0, max: 255 }));
        assert!(!constraint_covers(
            &ints(&all[1..]),
            &Range { min: 0, max: 255 }
        ));
        assert!(!constraint_covers(&ints(&all), &Range { min: 0, max: 256 }));
        assert!(constraint_covers(&ints(&all), &ints(&[255, 0, 17])));
        assert!(!constraint_covers(&ints(&all), &ints(&[255, 256])));
    }

    #[test]
    fn the_comparison_budget_bounds_the_work_and_fails_closed() {
        let grant = |op: &str| Grant {
            operation: op.into(),
            resource: "prod/**".into(),
            max_ttl: std::time::Duration::from_secs(60),
            params: BTreeMap::new(),
            params_any: true,
            approval: None,
        };
        let parent = GrantSet {
            grants: (0..100).map(|i| grant(&format!("op{i}"))).collect(),
        };
        let child = GrantSet {
            grants: vec![grant("op99"), grant("op98")],
        };
        assert!(grant_set_covered(&parent, &child).is_ok());
        // The child's grants are found at positions 100 and 99 of the parent's list: 199
        // comparisons.
        let mut budget = 199;
        assert_eq!(
            grant_set_covered_within(&parent, &child, &mut budget),
            Ok(Ok(()))
        );
        assert_eq!(budget, 0);
        let mut budget = 198;
        assert_eq!(
            grant_set_covered_within(&parent, &child, &mut budget),
            Err(BudgetExhausted)
        );
        // A grant no parent covers is told apart from a budget that ran out.
        let outside = GrantSet {
            grants: vec![grant("op100")],
        };
        let mut budget = 100;
        let refused = grant_set_covered_within(&parent, &outside, &mut budget).unwrap();
        assert_eq!(refused.unwrap_err().child_index, 0);
    }

    #[test]
    fn constraint_inclusion() {
        use Constraint::*;
        let s = |x: &str| Scalar::String(x.into());
        assert!(constraint_covers(
            &Range { min: 1, max: 10 },
            &Range { min: 2, max: 10 }
        ));
        assert!(!constraint_covers(
            &Range { min: 1, max: 10 },
            &Range { min: 0, max: 10 }
        ));
        assert!(constraint_covers(
            &Range { min: 1, max: 10 },
            &Equals(Scalar::Integer(3))
        ));
        assert!(!constraint_covers(
            &Range { min: 1, max: 10 },
            &Equals(s("3"))
        ));
        assert!(constraint_covers(
            &OneOf(vec![Scalar::Integer(1), Scalar::Integer(2)]),
            &Range { min: 1, max: 2 }
        ));
        assert!(!constraint_covers(
            &OneOf(vec![Scalar::Integer(1)]),
            &Range { min: 1, max: 2 }
        ));
        assert!(constraint_covers(
            &Prefix("reg/".into()),
            &Prefix("reg/pay/".into())
        ));
        assert!(!constraint_covers(
            &Prefix("reg/pay/".into()),
            &Prefix("reg/".into())
        ));
        assert!(constraint_covers(
            &Prefix("reg/".into()),
            &OneOf(vec![s("reg/a"), s("reg/b")])
        ));
        assert!(!constraint_covers(
            &OneOf(vec![s("reg/a")]),
            &Prefix("reg/a".into())
        ));
        // A value the prefix would refuse at the decision (`..` climbs out of it).
        assert!(!constraint_covers(
            &Prefix("reg/pay/".into()),
            &Equals(s("reg/pay/../../x"))
        ));
        assert!(!constraint_covers(
            &Prefix("reg/pay/".into()),
            &OneOf(vec![s("reg/pay/a"), s("reg/pay/..")])
        ));
        assert!(!constraint_covers(
            &Equals(Scalar::Bool(true)),
            &Equals(Scalar::Integer(1))
        ));
    }
}
