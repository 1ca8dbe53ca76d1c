//! What an agent may ask for: `GET /v1/grants`.
//!
//! An agent that knows its authority plans inside it instead of discovering it by denial. The
//! answer comes from the very function the decision runs first ([`authz::authority`]: validity
//! and revocation of the whole path, role and its delegation, every `sebGrants` decoded,
//! attenuation along the chain), over the revocation snapshot the caller was admitted with, so
//! the agent is shown exactly the grants a request would be matched against. A chain that
//! authorizes nothing answers with the code every request would get.
//!
//! It must never show a grant the decision would not use, and never reveal anything about
//! other certificates than the caller's own path.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::{Broker, BrokerError, Caller};
use crate::authz;
use crate::grants::{Constraint, Grant, Scalar};
use crate::time::unix;

/// The answer to `GET /v1/grants`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentAuthority {
    /// The agent certificate's subject.
    pub subject: String,
    /// base64url SHA-256 of the agent certificate (what tokens are bound to, `cnf`).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    /// The agent certificate's `notAfter` (Unix seconds).
    pub not_after: u64,
    /// The earliest `notAfter` of the agent's whole path (Unix seconds): no token is issued
    /// after it, whatever the leaf says.
    pub chain_not_after: u64,
    /// The broker's current policy epoch, stamped into every token.
    pub epoch: u64,
    /// Whether issuance is frozen (`seb freeze`): every request is refused while it is.
    pub frozen: bool,
    /// The broker's cap on a token's lifetime (seconds).
    pub max_token_ttl: u64,
    /// Subjects of the intermediate CAs above the agent whose `sebGrants` bound these grants,
    /// nearest first.
    pub bounded_by: Vec<String>,
    /// The grants a request is matched against, in the order the decision tries them.
    pub grants: Vec<EffectiveGrant>,
}

/// One grant as the decision applies it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EffectiveGrant {
    /// Position in the certificate's grants (the decision names the first that allows).
    pub index: usize,
    /// Exact operation, prefix wildcard (`deploy.*`) or `*`.
    pub operation: String,
    /// Resource glob (`*` one segment, `**` any number).
    pub resource: String,
    /// The grant's own `max_ttl` (seconds).
    pub max_ttl: u64,
    /// The lifetime a token issued now would get (seconds): the grant's `max_ttl` capped by
    /// the broker's limit and the time left on the agent's path.
    pub token_ttl: u64,
    /// Constraints by parameter name: `{"equals": v}`, `{"one_of": [..]}`,
    /// `{"min": a, "max": b}` or `{"prefix": "..."}`. Every named parameter must be present.
    pub params: BTreeMap<String, Value>,
    /// Whether parameters not named in `params` are allowed.
    pub params_any: bool,
    /// `{"required": M, "group": "..."}` when approvals are needed before a token is released.
    pub approval: Option<Value>,
}

impl Broker {
    /// The calling agent's effective grants at `now` (module documentation). A chain that
    /// authorizes nothing is refused with the decision's own code (`grant_chain_escalation`,
    /// `no_grants`, `invalid_grants_extension`, ...).
    pub fn agent_authority(
        &self,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<AgentAuthority, BrokerError> {
        let peer = caller.peer();
        let chain = peer.verified_chain()?;
        let max_token_ttl = self.config.policy.max_token_ttl;
        let authority = authz::authority(chain, caller.revocations(), now, max_token_ttl).map_err(
            |(code, reason)| BrokerError::Denied {
                code,
                reason,
                request_id: None,
            },
        )?;
        // `path` is leaf first and root last; the ancestors of the chain view are the
        // certificates in between, in the same order.
        let intermediates = peer
            .path
            .iter()
            .skip(1)
            .take(chain.ancestors.len())
            .map(|c| c.subject.clone());
        let bounded_by = intermediates
            .zip(&chain.ancestors)
            .filter(|(_, facts)| facts.grants.is_some())
            .map(|(subject, _)| subject)
            .collect();
        let chain_not_after = peer.path_not_after().unwrap_or(chain.leaf.not_after);
        let cap = authority.ttl_cap;
        Ok(AgentAuthority {
            subject: peer.subject.clone(),
            x5t_s256: peer.thumbprint.clone(),
            not_after: unix(chain.leaf.not_after),
            chain_not_after: unix(chain_not_after),
            epoch: self.epoch(),
            frozen: self.is_frozen(),
            max_token_ttl: max_token_ttl.as_secs(),
            bounded_by,
            grants: authority
                .grants
                .grants
                .iter()
                .enumerate()
                .map(|(index, grant)| EffectiveGrant::of(index, grant, cap.as_secs()))
                .collect(),
        })
    }
}

impl EffectiveGrant {
    fn of(index: usize, grant: &Grant, cap: u64) -> Self {
        let max_ttl = grant.max_ttl.as_secs();
        EffectiveGrant {
            index,
            operation: grant.operation.clone(),
            resource: grant.resource.clone(),
            max_ttl,
            // As the issuance computes it: at least one second once the decision allowed.
            token_ttl: max_ttl.min(cap).max(1),
            params: grant
                .params
                .iter()
                .map(|(name, c)| (name.clone(), constraint_json(c)))
                .collect(),
            params_any: grant.params_any,
            approval: grant
                .approval
                .as_ref()
                .map(|rule| json!({"required": rule.required, "group": rule.group})),
        }
    }
}

/// A constraint in the grant file's own words (docs/GRANTS.md), as JSON.
fn constraint_json(constraint: &Constraint) -> Value {
    match constraint {
        Constraint::Equals(v) => json!({ "equals": scalar_json(v) }),
        Constraint::OneOf(vs) => {
            json!({ "one_of": vs.iter().map(scalar_json).collect::<Vec<_>>() })
        }
        Constraint::Range { min, max } => json!({ "min": min, "max": max }),
        Constraint::Prefix(p) => json!({ "prefix": p }),
    }
}

fn scalar_json(scalar: &Scalar) -> Value {
    match scalar {
        Scalar::String(s) => json!(s),
        Scalar::Integer(i) => json!(i),
        Scalar::Bool(b) => json!(b),
    }
}
