//! Which grant of a set decides a request, and the approval rule the request needs: a laxer
//! grant later in the list does not lower the approvals of a stricter one the request is
//! within (docs/GRANTS.md §7).

use serde_json::{Map, Value};

use super::{check_grant, matching, specificity, DenyCode};
use crate::grants::{ApprovalRule, Grant, GrantSet};

/// The approval rule that holds when two rules apply to one request (a governing grant's, or
/// an issuer's, beside the deciding grant's): the more approvers of the same group; either
/// rule where the other is none. Two rules naming different groups cannot both be met by one
/// token's approvals.
pub(super) fn stricter_rule(
    current: Option<ApprovalRule>,
    issuer: Option<&ApprovalRule>,
) -> Result<Option<ApprovalRule>, String> {
    match (current, issuer) {
        (current, None) => Ok(current),
        (None, Some(rule)) => Ok(Some(rule.clone())),
        (Some(mine), Some(theirs)) if mine.group == theirs.group => Ok(Some(ApprovalRule {
            required: mine.required.max(theirs.required),
            group: mine.group,
        })),
        (Some(mine), Some(theirs)) => Err(format!(
            "one rule needs approvals of {:?}, the other of {:?}, and one token's approvals \
             cannot meet both",
            theirs.group, mine.group
        )),
    }
}

/// The grant of `set` that decides a request: the first grant that allows it, with its
/// position, and the approval rule the request needs, which may be stricter than that
/// grant's own. A laxer grant later in the list does not lower the approvals of a stricter
/// grant whose scope the request is in:
///
/// * a request parameter that a reader ignoring case or invisible characters would take for
///   one a grant (for this operation and resource) constrains, under another spelling
///   (`NAME` where `name` is constrained), refuses the request outright;
/// * a grant with an approval rule whose every parameter constraint the request meets (it
///   constrains at least one), a value of another JSON type than the constraint takes counting
///   as meeting it (`"50"` for `50`, [`matching::constraints_met_or_evaded`]), but which
///   refuses it for parameters it does not permit or for such a value's type, governs it: a later grant that allows the request stands in for it only if that grant
///   constrains each of those parameters itself (a deliberate exception, such as a dry run);
///   otherwise the governing grant's approval rule holds too (the stricter of the two, the
///   same group; rules of two groups cannot be met by one token's approvals and refuse the
///   request).
///
/// Without an allowing grant, the most specific failure is returned.
pub fn deciding_grant<'g>(
    set: &'g GrantSet,
    operation: &str,
    resource: &str,
    params: &Map<String, Value>,
) -> Result<(usize, &'g Grant, Option<ApprovalRule>), (DenyCode, String)> {
    let in_scope = |g: &Grant| {
        matching::operation_matches(&g.operation, operation)
            && matching::resource_matches(&g.resource, resource)
    };
    for (grant_index, grant) in set.grants.iter().enumerate().filter(|(_, g)| in_scope(g)) {
        if let Some((name, constrained)) = matching::lookalike(&grant.params, params) {
            return Err((
                DenyCode::ParamConstraintViolated,
                format!(
                    "grant #{grant_index}: parameter {name:?} is not permitted: a program that \
                     ignores case or invisible characters in names would read it as the \
                     constrained {constrained:?}"
                ),
            ));
        }
    }
    let mut best: Option<(DenyCode, String)> = None;
    // Grants that cover the request's constrained parameters but refused it: (index, grant).
    let mut governing: Vec<(usize, &Grant)> = Vec::new();
    for (grant_index, grant) in set.grants.iter().enumerate() {
        match check_grant(grant, operation, resource, params) {
            Ok(()) => {
                let mut rule = grant.approval.clone();
                for (earlier, g) in &governing {
                    // A grant that constrains every parameter the governing one refused (one
                    // it does not name and does not take under `params_any`, or one whose
                    // value it refuses) is a deliberate exception to it.
                    let exception = params
                        .iter()
                        .filter(|(k, v)| match g.params.get(*k) {
                            None => !g.params_any,
                            Some(c) => !matching::constraint_allows(c, v),
                        })
                        .all(|(k, _)| grant.params.contains_key(k));
                    if exception {
                        continue;
                    }
                    rule = stricter_rule(rule, g.approval.as_ref()).map_err(|why| {
                        (
                            DenyCode::ParamConstraintViolated,
                            format!(
                                "grant #{grant_index} allows the request, but grant #{earlier}, \
                                 whose constraints it meets, governs it too: {why}"
                            ),
                        )
                    })?;
                }
                return Ok((grant_index, grant, rule));
            }
            Err((code, reason)) => {
                if code == DenyCode::ParamConstraintViolated
                    && grant.approval.is_some()
                    && matching::constraints_met_or_evaded(&grant.params, params)
                {
                    governing.push((grant_index, grant));
                }
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| specificity(code) > specificity(*b))
                {
                    best = Some((code, format!("grant #{grant_index}: {reason}")));
                }
            }
        }
    }
    Err(match best {
        Some((DenyCode::OperationNotGranted, _)) | None => (
            DenyCode::OperationNotGranted,
            format!("no grant covers operation {operation:?}"),
        ),
        Some(found) => found,
    })
}
