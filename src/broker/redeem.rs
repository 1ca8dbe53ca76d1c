//! Single-use redemption by an executor (`POST /v1/tokens/redeem`).
//!
//! The token is checked by the same core as the offline verifier
//! ([`verify::decode_verified`]), with this broker's token certificate as the only possible
//! signer. The broker adds only what it alone knows: its broker id, its current policy epoch,
//! and the store's record of the token id. The id is marked redeemed inside a group commit, so
//! a token is usable once, across restarts.

use std::time::{Duration, SystemTime};

use super::access::RefusedAttempt;
use super::{Broker, BrokerError, Caller};
use crate::grants::RoleKind;
use crate::store::RedeemOutcome;
use crate::token::Claims;
use crate::verify::{self, TokenRules, VerifyError};

/// The answer to a successful redemption.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Redemption {
    /// Always "redeemed".
    pub status: &'static str,
    /// Token id.
    pub jti: String,
    /// The request it was issued for.
    pub request_id: Option<String>,
    /// Operation.
    pub operation: String,
    /// Resource.
    pub resource: String,
    /// params digest (base64url).
    pub params_digest: String,
    /// The broker's current policy epoch: executors refuse tokens of an older one.
    pub epoch: u64,
}

impl Broker {
    /// Single-use redemption by an executor.
    pub fn redeem(&self, caller: &Caller, token: &str) -> Result<Redemption, BrokerError> {
        let result = self.redeem_checked(caller, token);
        self.metrics.record_request(
            "redeem",
            match &result {
                Ok(_) => "redeemed",
                Err(e) => e.code(),
            },
        );
        result
    }

    fn redeem_checked(&self, caller: &Caller, token: &str) -> Result<Redemption, BrokerError> {
        // The executor's whole path (validity, notBefore included, revocation, and that every
        // intermediate above it may issue executors) was checked by `authenticate`; the role
        // is asserted again, as the broker's own invariant.
        let peer = caller.peer();
        match peer.delegated_role()? {
            RoleKind::Executor => {}
            other => {
                return Err(BrokerError::WrongRole {
                    actual: other.to_string(),
                    action: "redeem tokens",
                })
            }
        }
        let now = SystemTime::now();
        let refused = |e: BrokerError| {
            // What reaches the store is logged there; a token refused before it is logged
            // here, so that every attempt is an entry (a forged token is what a SIEM alerts on).
            self.audit_refused_attempt(peer, RefusedAttempt::Redemption, e.code());
            e
        };
        let claims = match self.decode(token, now, self.epoch()) {
            Ok(claims) => claims,
            // A replay stays a replay after the token expires or the policy epoch is raised:
            // 409, as the first replay got, and (through the store) a `token_redeemed` entry
            // with its code. Only for a token this broker signed and that was redeemed: any
            // other expired or stale token is refused as such.
            Err(e @ (VerifyError::Expired { .. } | VerifyError::StaleEpoch { .. })) => {
                match self.redeemed_before(token, now) {
                    Some(claims) => claims,
                    None => return Err(refused(token_error(e))),
                }
            }
            Err(e) => return Err(refused(token_error(e))),
        };
        let detail = claims
            .authorization_details
            .first()
            .ok_or_else(|| refused(BrokerError::InvalidToken("no authorization details".into())))?;
        // What this broker recorded under the token's id must be what the token says: a token
        // signed with a token key that is no longer this broker's alone (a compromised key, a
        // retired one) carries a real id with other parameters or another agent, and must not
        // burn the real token or be logged as its redemption.
        if let Some(mismatch) = self.issued_otherwise(&claims, detail)? {
            return Err(refused(BrokerError::InvalidToken(mismatch)));
        }
        match self
            .store
            .redeem(&claims.jti, &super::audit::cert_ref(&peer.thumbprint, peer.serials().next(), &peer.subject), now)
            .map_err(BrokerError::Store)?
        {
            RedeemOutcome::Redeemed => Ok(Redemption {
                status: "redeemed",
                jti: claims.jti.clone(),
                // Only for the answer: the redemption itself is already durable, so a failed
                // look-up leaves the field empty rather than failing a redemption that counted.
                request_id: self.store.request_of_token(&claims.jti).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot look up the request of a redeemed token");
                    None
                }),
                operation: detail.operation.clone(),
                resource: detail.resource.clone(),
                params_digest: detail.params_digest.clone(),
                epoch: self.epoch(),
            }),
            RedeemOutcome::AlreadyRedeemed { .. } => Err(BrokerError::AlreadyRedeemed),
            RedeemOutcome::AgentRevoked { serial } => Err(BrokerError::AgentRevoked { serial }),
            RedeemOutcome::AgentUnrecorded => Err(BrokerError::InvalidToken(
                "issued before this broker recorded the agent's certificates, so the agent's revocation cannot be checked; ask for a new token".into(),
            )),
            RedeemOutcome::Unknown => Err(BrokerError::InvalidToken(
                "this broker has no record of issuing the token".into(),
            )),
        }
    }

    /// Why the record this broker keeps for the token's id does not describe this token (the
    /// digest of its parameters, its request digest, the agent it is bound to, its operation
    /// and resource), if it does not.
    /// A token without a record is left to the store (`unknown_token`).
    fn issued_otherwise(
        &self,
        claims: &Claims,
        detail: &crate::token::AuthorizationDetail,
    ) -> Result<Option<String>, BrokerError> {
        let Some(request_id) = self
            .store
            .request_of_token(&claims.jti)
            .map_err(BrokerError::Store)?
        else {
            return Ok(None);
        };
        let Some(record) = self
            .store
            .execution(&request_id)
            .map_err(BrokerError::Store)?
        else {
            return Ok(None);
        };
        // The executor acts on the parameters `params_digest` names: that one above all.
        let differs = if detail.params_digest != super::recorded_params_digest(&record)?
            || claims
                .params_digest
                .as_ref()
                .is_some_and(|top| *top != detail.params_digest)
        {
            Some("params digest")
        } else if record.request_digest != detail.request_digest {
            Some("request digest")
        } else if record.agent != claims.cnf.x5t_s256 {
            Some("agent")
        } else if record.operation != detail.operation || record.resource != detail.resource {
            Some("operation or resource")
        } else {
            None
        };
        Ok(differs.map(|what| {
            format!(
                "the token's {what} is not what this broker issued under its id: it was not \
                 signed by this broker for that request (a token key that is not this broker's \
                 alone?)"
            )
        }))
    }

    /// The claims of a token refused only for having expired or for an older policy epoch,
    /// whose id was redeemed: verified as of the last second of its life (signature, issuer)
    /// and whatever its epoch, so the store's single-use record, not the clock or the epoch,
    /// answers the replay.
    fn redeemed_before(&self, token: &str, now: SystemTime) -> Option<Claims> {
        let claims = match self.decode(token, now, 0) {
            Err(VerifyError::Expired { exp, .. }) => {
                let last_second = SystemTime::UNIX_EPOCH + Duration::from_secs(exp.checked_sub(1)?);
                self.decode(token, last_second, 0).ok()?
            }
            other => other.ok()?,
        };
        match self.store.redeemed_by(&claims.jti) {
            Ok(Some(_)) => Some(claims),
            _ => None,
        }
    }

    /// A token signed by this broker's token key (the current one or a retired one whose
    /// tokens may still be live), of epoch `min_epoch` or later, naming it, live at `now`.
    fn decode(&self, token: &str, now: SystemTime, min_epoch: u64) -> Result<Claims, VerifyError> {
        let rules = TokenRules {
            now,
            leeway: verify::CLOCK_SKEW,
            // The broker never signs longer than its own cap; the default bounds a cap raised
            // after issuance.
            max_lifetime: verify::DEFAULT_MAX_LIFETIME.max(self.config.policy.max_token_ttl),
            min_epoch,
        };
        // The current token key, or a retired one whose tokens may still be live (`seb
        // rotate token`): an executor holding such a token must not be refused.
        let keys = self.keys();
        let decoded = verify::decode_verified(token, &rules, |header| {
            keys.token_by_kid(&header.kid)
                .map(|k| &k.cert)
                .ok_or_else(|| VerifyError::UnknownKey {
                    kid: header.kid.clone(),
                })
        })?;
        // A token certificate revoked (`seb cert revoke` of a retired token key suspected
        // compromised) signs nothing this broker redeems.
        if let Some(signer) = keys.token_by_kid(&decoded.header.kid) {
            let revoked = crate::serial::Serial::of(&signer.cert)
                .ok()
                .map(|serial| self.store.is_revoked(&serial))
                .transpose();
            if !matches!(revoked, Ok(Some(false))) {
                return Err(VerifyError::InvalidClaims {
                    reason: "signed by a token key whose certificate is revoked (or whose \
                             revocation cannot be read)"
                        .into(),
                });
            }
        }
        if decoded.claims.iss != self.config.broker_id {
            return Err(VerifyError::InvalidClaims {
                reason: "issued by another broker".into(),
            });
        }
        Ok(decoded.claims)
    }
}

/// The executor's answer for a token that does not verify.
fn token_error(e: VerifyError) -> BrokerError {
    match e {
        VerifyError::StaleEpoch { epoch, min_epoch } => BrokerError::StaleEpoch {
            epoch,
            current: min_epoch,
        },
        e => BrokerError::InvalidToken(e.to_string()),
    }
}
