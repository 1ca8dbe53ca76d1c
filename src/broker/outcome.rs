//! Outcomes reported by executors (`POST /v1/executions/{id}/outcome`): a receipt signed by
//! the executor's own key, checked against the certificate the executor presents, for a token
//! that executor redeemed, recorded once.

use std::time::SystemTime;

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

impl Broker {
    /// Records an executor's signed receipt for request `request_id`. Refuses a receipt that
    /// does not verify under the caller's own certificate or does not name it, one for a token
    /// of another request, one for a token this executor did not redeem, and a second outcome
    /// for the same token.
    pub fn record_outcome(
        &self,
        caller: &Caller,
        request_id: &str,
        receipt: Receipt,
    ) -> Result<OutcomeRecorded, BrokerError> {
        let result = self.record_outcome_checked(caller, request_id, receipt);
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
        let of_request = self
            .store
            .request_of_token(&body.jti)
            .map_err(BrokerError::Store)?;
        if of_request.as_deref() != Some(request_id) {
            return Err(BrokerError::NotFound);
        }
        let redeemed_by = self
            .store
            .redeemed_by(&body.jti)
            .map_err(BrokerError::Store)?;
        if redeemed_by.as_deref() != Some(peer.thumbprint.as_str()) {
            return Err(BrokerError::NotRedeemedByCaller);
        }
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
