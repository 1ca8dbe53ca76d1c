//! Outcomes reported by executors (`POST /v1/executions/{id}/outcome`): a receipt signed by
//! the executor's own key, checked against the certificate the executor presents, for a token
//! that executor redeemed, recorded once.

use std::time::SystemTime;

use super::access::RefusedAttempt;
use super::{Broker, BrokerError, Caller};
use crate::grants::RoleKind;
use crate::receipt::{self, Receipt};

/// The answer to a recorded outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutcomeRecorded {
    /// Always "recorded".
    pub status: &'static str,
    /// The request.
    pub request_id: String,
    /// The token id.
    pub jti: String,
}

/// How far a receipt's times may lie outside the request's life (clocks of two hosts).
const RECEIPT_SKEW_MS: u64 = 30_000;

/// Refuses a receipt that does not describe the token it reports on: the operation, resource
/// and parameters the token was issued for, run between the request and now (give or take
/// [`RECEIPT_SKEW_MS`]). The signature only proves who wrote the receipt; the log must not
/// hold an executor's account of an action no token allowed.
fn matches_token(
    body: &receipt::ReceiptBody,
    record: &crate::store::ExecutionRecord,
    now: SystemTime,
) -> Result<(), BrokerError> {
    let refuse = |what: &str| Err(BrokerError::InvalidReceipt(what.to_owned()));
    if body.operation != record.operation || body.resource != record.resource {
        return refuse("the receipt's operation or resource is not the token's");
    }
    if body.params_digest != super::recorded_params_digest(record)? {
        return refuse("the receipt's params_digest is not the token's");
    }
    let asked = crate::time::unix_millis(record.created_at).saturating_sub(RECEIPT_SKEW_MS);
    let latest = crate::time::unix_millis(now).saturating_add(RECEIPT_SKEW_MS);
    if body.started_at_ms < asked || body.finished_at_ms > latest {
        return refuse("the receipt's times are outside the request's life");
    }
    Ok(())
}

impl Broker {
    /// Records an executor's signed receipt for request `request_id`. Refuses a receipt that
    /// does not verify under the caller's own certificate or does not name it, one for a token
    /// of another request, one for a token this executor did not redeem, one that does not
    /// describe the token ([`matches_token`]), and a second outcome for the same token.
    pub fn record_outcome(
        &self,
        caller: &Caller,
        request_id: &str,
        receipt: Receipt,
    ) -> Result<OutcomeRecorded, BrokerError> {
        let result = self.record_outcome_checked(caller, request_id, receipt);
        if let Err(e) = &result {
            // A second report is logged by the store with its code; the broker's own failures
            // are not the executor's doing.
            let logged_or_ours = matches!(
                e,
                BrokerError::OutcomeAlreadyRecorded
                    | BrokerError::Store(_)
                    | BrokerError::Internal(_)
            );
            if !logged_or_ours {
                self.audit_refused_attempt_on(
                    caller.peer(),
                    RefusedAttempt::Outcome,
                    e.code(),
                    // The path's id, when it is one (it is the caller's text).
                    Some(request_id).filter(|id| super::request::is_request_id(id)),
                );
            }
        }
        self.metrics.record_request(
            "outcome",
            match &result {
                Ok(_) => "recorded",
                Err(e) => e.code(),
            },
        );
        result
    }

    fn record_outcome_checked(
        &self,
        caller: &Caller,
        request_id: &str,
        receipt: Receipt,
    ) -> Result<OutcomeRecorded, BrokerError> {
        let peer = caller.peer();
        match peer.role() {
            Some(RoleKind::Executor) => {}
            other => {
                return Err(BrokerError::WrongRole {
                    actual: other.map_or("unknown".into(), |r| r.to_string()),
                    action: "report outcomes",
                })
            }
        }
        receipt::verify(&receipt, &peer.leaf)
            .map_err(|e| BrokerError::InvalidReceipt(e.to_string()))?;
        let body = &receipt.body;
        if body.request_id != request_id {
            return Err(BrokerError::InvalidReceipt(
                "the receipt names another request than the path".into(),
            ));
        }
        // The request, and the token it was issued (ids are unique: the token's own request).
        let record = self
            .store
            .execution(request_id)
            .map_err(BrokerError::Store)?
            .filter(|r| r.jti.as_deref() == Some(body.jti.as_str()))
            .ok_or(BrokerError::NotFound)?;
        let redeemed_by = self
            .store
            .redeemed_by(&body.jti)
            .map_err(BrokerError::Store)?;
        if redeemed_by.as_deref() != Some(peer.thumbprint.as_str()) {
            return Err(BrokerError::NotRedeemedByCaller);
        }
        matches_token(body, &record, SystemTime::now())?;
        let json =
            serde_json::to_string(&receipt).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let recorded = self
            .store
            .record_outcome(
                &body.jti,
                request_id,
                &super::audit::cert_ref(&peer.thumbprint, peer.serials().next(), &peer.subject),
                &json,
                SystemTime::now(),
            )
            .map_err(BrokerError::Store)?;
        if !recorded {
            return Err(BrokerError::OutcomeAlreadyRecorded);
        }
        tracing::info!(
            request_id,
            jti = %body.jti,
            exit_code = body.exit_code,
            "execution outcome recorded"
        );
        Ok(OutcomeRecorded {
            status: "recorded",
            request_id: request_id.to_owned(),
            jti: body.jti.clone(),
        })
    }

    /// The receipt recorded for token `jti`, if any (JSON).
    pub fn outcome_of(&self, jti: &str) -> Result<Option<String>, BrokerError> {
        self.store.outcome(jti).map_err(BrokerError::Store)
    }
}
