//! An agent's request, from decision to token: `POST /v1/executions` and the status of a
//! request (`GET /v1/executions/{id}`).
//!
//! The decision runs on the caller's thread; the device signature and the durable write are
//! waited for without holding a thread ([`super::issuance`]). A token leaves only when its id
//! is durable and the device has signed; every device or store failure is an error, never a
//! token.

use std::time::{Instant, SystemTime};

use serde_json::Value;

use super::audit::{cert_ref, entry_now, leaf_b64};
use super::issuance;
use super::{Broker, BrokerError, Caller};
use crate::audit::entry::{Entry, EntryKind};
use crate::authz::{self, Decision};
use crate::base64url;
use crate::grants::RoleKind;
use crate::store::{Commit, ExecutionRecord, ExecutionStatus, PendingApproval, Store, StoreError};
use crate::time::{from_unix, unix, unix_millis};
use crate::token::{self, AuditRef, AuthorizationDetail, Claims, Confirmation, Header};

/// Upper bound on `justification`.
pub const MAX_JUSTIFICATION: usize = 1024;

/// An agent's request for an execution token.
// Its JSON schema (doc comments as descriptions) is the input schema of `seb mcp`'s
// `request_execution` and `execute` tools: write the field docs for a model reading them.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    /// Operation name, exactly as a grant names it, e.g. `deploy.rollout`.
    pub operation: String,
    /// Resource path, e.g. `prod/payments/api`.
    pub resource: String,
    /// Parameters: a JSON object, checked against the grant's constraints and bound to the
    /// token by digest. Integers must be within ±(2^53−1).
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub params: Value,
    /// Why the agent asks: free text for the audit log (the entry's `detail`) and the
    /// approvers (at most 1024 characters; control characters other than line feed and tab,
    /// Unicode format characters and U+2028/U+2029 are refused).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub justification: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Where a request stands, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// A token was issued.
    Granted,
    /// Waiting for approvers.
    PendingApproval,
    /// Refused.
    Denied,
    /// A token was issued and has expired.
    Expired,
    /// The token is being signed (or the broker stopped while it was).
    Issuing,
    /// No token left: the device or the store failed, or the client went away.
    Failed,
    /// An approver rejected the request.
    Rejected,
}

impl ExecutionState {
    /// The stable name (`granted`, `pending_approval`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Granted => "granted",
            ExecutionState::PendingApproval => "pending_approval",
            ExecutionState::Denied => "denied",
            ExecutionState::Expired => "expired",
            ExecutionState::Issuing => "issuing",
            ExecutionState::Failed => "failed",
            ExecutionState::Rejected => "rejected",
        }
    }
}

impl From<ExecutionStatus> for ExecutionState {
    fn from(status: ExecutionStatus) -> Self {
        match status {
            ExecutionStatus::Granted => ExecutionState::Granted,
            ExecutionStatus::PendingApproval => ExecutionState::PendingApproval,
            ExecutionStatus::Denied => ExecutionState::Denied,
            ExecutionStatus::Issuing => ExecutionState::Issuing,
            ExecutionStatus::Failed => ExecutionState::Failed,
            ExecutionStatus::Rejected => ExecutionState::Rejected,
            ExecutionStatus::Expired => ExecutionState::Expired,
        }
    }
}

/// Where an execution request stands, and its token when granted.
// The answer to `POST /v1/executions` and `GET /v1/executions/{id}`. Its JSON schema is the
// output schema of `seb mcp`'s `request_execution` and `execution_status` tools.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ExecutionResponse {
    /// Where the request stands.
    pub status: ExecutionState,
    /// Request id.
    pub request_id: String,
    /// The token (granted only, and only to the requesting agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Token expiry; for a request pending approval, when it expires undecided (Unix
    /// seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// base64url request digest (what approvers sign).
    pub request_digest: String,
    /// Approvals the grant requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    /// The approver group the grant names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_group: Option<String>,
    /// The decisions so far (requests that need approval only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<ApprovalSummary>>,
}

/// One approver's recorded decision, as the API shows it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ApprovalSummary {
    /// The approver certificate's subject.
    pub approver: String,
    /// base64url SHA-256 of the approver certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    /// `approve` or `reject`.
    pub decision: crate::approval::Decision,
    /// The approver's reason, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (Unix seconds).
    pub at: u64,
}

impl From<&crate::store::ApprovalRecord> for ApprovalSummary {
    fn from(a: &crate::store::ApprovalRecord) -> Self {
        Self {
            approver: a.approver_subject.clone(),
            x5t_s256: a.approver.clone(),
            decision: a.decision,
            reason: a.reason.clone(),
            at: unix(a.at),
        }
    }
}

impl Broker {
    /// Decides an agent's request and, when granted, mints and persists the token.
    ///
    /// The decision runs on the caller's thread; the device signature and the durable write
    /// are waited for without holding a thread.
    pub async fn request_execution(
        &self,
        caller: &Caller,
        request: ExecutionRequest,
    ) -> Result<ExecutionResponse, BrokerError> {
        let started = Instant::now();
        let result = self.decide_and_issue(caller, request).await;
        self.metrics.record_request(
            "executions",
            match &result {
                Ok(r) => r.status.as_str(),
                Err(e) => e.code(),
            },
        );
        if matches!(&result, Ok(r) if r.status == ExecutionState::Granted) {
            self.metrics.observe_issuance(started.elapsed());
        }
        result
    }

    /// `refusal` (the broker frozen, its attestation failing, a request no decision can be
    /// made on), after queueing its audit entry:
    /// no decision was made, but the log says who asked for what (by digest, as a decision's
    /// entry does).
    fn refused_before_deciding(
        &self,
        peer: &super::Peer,
        request: &ExecutionRequest,
        refusal: BrokerError,
    ) -> BrokerError {
        self.refused_request(peer, refusal, |entry| {
            entry.operation = Some(request.operation.clone());
            entry.resource = Some(request.resource.clone());
            entry.params_digest = crate::canonical::params_digest(&request.params)
                .ok()
                .map(|d| base64url::encode(&d));
        })
    }

    /// `refusal` of an agent's request that records no request, after queueing its audit
    /// entry (`execution_denied` with the refusal's code), which `describe` fills with what
    /// was asked.
    fn refused_request(
        &self,
        peer: &super::Peer,
        refusal: BrokerError,
        describe: impl FnOnce(&mut Entry),
    ) -> BrokerError {
        let mut entry =
            super::access::refused_entry(peer, super::RefusedAttempt::Execution, refusal.code());
        describe(&mut entry);
        self.append_refusal(entry);
        refusal
    }

    async fn decide_and_issue(
        &self,
        caller: &Caller,
        request: ExecutionRequest,
    ) -> Result<ExecutionResponse, BrokerError> {
        let peer = caller.peer();
        if self.is_frozen() {
            return Err(self.refused_before_deciding(peer, &request, BrokerError::Frozen));
        }
        if let Err(refusal) = self.audit_intact() {
            return Err(self.refused_before_deciding(peer, &request, refusal));
        }
        let att = match &self.attestation {
            Some(state) => Some(state.current().map_err(|refusal| {
                self.refused_before_deciding(peer, &request, BrokerError::Attestation(refusal))
            })?),
            None => None,
        };
        if let Some(j) = &request.justification {
            // Approvers read it in a terminal, a chat message or a web page: escape sequences
            // or bidirectional overrides could rewrite what they see next to it (the
            // parameters they are asked to sign for).
            // Refused before any decision, but logged: an agent slipping such characters
            // towards approvers leaves a trace.
            if let Err(why) = crate::text::check_readable("justification", j, MAX_JUSTIFICATION) {
                return Err(self.refused_before_deciding(
                    peer,
                    &request,
                    BrokerError::InvalidRequest(why),
                ));
            }
        }
        if !request.params.is_object() {
            let refusal = BrokerError::InvalidRequest("params must be a JSON object".into());
            return Err(self.refused_before_deciding(peer, &request, refusal));
        }
        let chain = peer.verified_chain()?;
        // The revocation state read when the caller was authenticated, a moment ago.
        let revoked = caller.revocations();
        let now = SystemTime::now();
        let req = authz::Request {
            operation: request.operation,
            resource: request.resource,
            params: request.params,
        };
        let decision = authz::decide(chain, revoked, &req, now, self.config.policy.max_token_ttl);
        let request_id = time_ordered_id()?;
        let params_jcs = crate::canonical::canonicalize(&req.params).unwrap_or_default();
        let mut record = ExecutionRecord {
            request_id: request_id.clone(),
            agent: peer.thumbprint.clone(),
            agent_serials: peer.serials().cloned().collect(),
            agent_subject: peer.subject.clone(),
            operation: req.operation.clone(),
            resource: req.resource.clone(),
            params: params_jcs,
            request_digest: String::new(),
            status: ExecutionStatus::Denied,
            deny_code: None,
            approvals_required: 0,
            jti: None,
            token: None,
            expires_at: None,
            created_at: now,
        };
        // The audit entry: who (certificate), what (by digests, never the params), when.
        let mut entry = entry_now(EntryKind::ExecutionDenied);
        entry.request_id = Some(request_id.clone());
        entry.cert = Some(cert_ref(
            &peer.thumbprint,
            peer.serials().next(),
            &peer.subject,
        ));
        entry.operation = Some(req.operation.clone());
        entry.resource = Some(req.resource.clone());
        entry.params_digest = crate::canonical::params_digest(&req.params)
            .ok()
            .map(|d| base64url::encode(&d));
        entry.detail = request.justification.clone();
        let (grant_ttl, approval, digest) = match decision {
            Decision::Deny { code, reason } => {
                record.deny_code = Some(code.as_str().to_owned());
                // What was asked, by digest, as for a grant (when it has a canonical form).
                if let Ok(digest) =
                    crate::canonical::request_digest(&req.operation, &req.resource, &req.params)
                {
                    record.request_digest = base64url::encode(&digest);
                    entry.request_digest = Some(record.request_digest.clone());
                }
                entry.decision = Some("denied".into());
                entry.code = record.deny_code.clone();
                // A denial is final whether or not it could be recorded (in the store and
                // the audit log, one write).
                let recorded = self.persist(record, &entry).await.is_ok();
                return Err(BrokerError::Denied {
                    code,
                    reason,
                    request_id: recorded.then_some(request_id),
                });
            }
            Decision::Allow {
                token_ttl,
                approval,
                request_digest,
                ..
            } => (token_ttl, approval, request_digest),
        };
        record.request_digest = base64url::encode(&digest);
        entry.request_digest = Some(record.request_digest.clone());
        if let Some(rule) = approval {
            // One agent may not bury its group's other requests in the approvers' list.
            let limit = self.config.approvals.max_open_per_agent;
            if self.open_requests_of(&peer.key_id, now).await? >= limit {
                let refusal = BrokerError::TooManyPending { limit };
                return Err(self.refused_request(peer, refusal, |refused| {
                    refused.operation = entry.operation.clone();
                    refused.resource = entry.resource.clone();
                    refused.params_digest = entry.params_digest.clone();
                    refused.request_digest = entry.request_digest.clone();
                }));
            }
            record.status = ExecutionStatus::PendingApproval;
            record.approvals_required = rule.required;
            entry.kind = EntryKind::ExecutionPending;
            entry.decision = Some("pending_approval".into());
            entry.approvals_required = Some(rule.required);
            let expires_at = now + self.config.approvals.ttl;
            record.expires_at = Some(expires_at);
            let pending = PendingApproval {
                request_id: request_id.clone(),
                group: rule.group.clone(),
                token_ttl: grant_ttl,
                justification: request.justification.clone(),
                agent_key: peer.key_id.clone(),
                // The whole path's: an approval later must not give a token past an
                // intermediate that expired in between.
                agent_not_after: peer.path_not_after().unwrap_or(chain.leaf.not_after),
                expires_at,
            };
            let request_digest = record.request_digest.clone();
            let summary = self.notifier.summary(&record, &pending);
            self.persist_pending(record, pending, &entry)
                .await
                .map_err(BrokerError::AuditUnavailable)?;
            self.notifier.notify(summary);
            return Ok(ExecutionResponse {
                status: ExecutionState::PendingApproval,
                request_id,
                token: None,
                expires_at: Some(unix(expires_at)),
                request_digest,
                approvals_required: Some(rule.required),
                approval_group: Some(rule.group),
                approvals: Some(Vec::new()),
            });
        }

        let params_digest = crate::canonical::params_digest(&req.params)
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        let iat = unix(now);
        let exp = (iat + grant_ttl.as_secs().max(1)).min(self.token_deadline(now)?);
        let jti = token_id()?;
        let epoch = self.epoch();
        entry.kind = EntryKind::ExecutionGranted;
        entry.decision = Some("granted".into());
        entry.jti = Some(jti.clone());
        entry.expires_at = Some(exp);
        entry.epoch = Some(epoch);
        let params_digest = base64url::encode(&params_digest);
        let mut claims = Claims {
            iss: self.config.broker_id.clone(),
            sub: peer.subject.clone(),
            jti: jti.clone(),
            iat,
            nbf: iat,
            exp,
            cnf: Confirmation {
                x5t_s256: peer.thumbprint.clone(),
            },
            params_digest: Some(params_digest.clone()),
            authorization_details: vec![AuthorizationDetail {
                kind: token::DETAIL_TYPE.into(),
                operation: req.operation,
                resource: req.resource,
                params_digest,
                request_digest: record.request_digest.clone(),
                approvals: 0,
                approval_group: None,
            }],
            att,
            audit: None,
            epoch,
            approvals: Vec::new(),
        };
        record.status = ExecutionStatus::Issuing;
        record.jti = Some(jti);
        record.expires_at = Some(from_unix(exp));
        let request_digest = record.request_digest.clone();
        // The token id and the grant's audit entry must be durable before the token leaves
        // (replay protection survives a crash; no log entry, no token). Both are one write,
        // made while the device signs; the entry's index is reserved when the write is queued,
        // so the token names it (`audit`). The token goes out only when both have succeeded,
        // and is then added to the record. If this future is dropped on the way (timeout,
        // client gone), the guard marks the request failed: no token left.
        // One snapshot of the keys for both the header's `kid` and the signing key, so a
        // rotation in between cannot make the two disagree.
        let keys = self.keys();
        let guard = IssuingGuard {
            store: self.store.as_ref(),
            request_id: Some(request_id.clone()),
        };
        let token_key = &keys.token;
        let recorded = issuance::sign_and_record(
            &self.store,
            &self.signer,
            keys.token.label.clone(),
            record,
            &entry,
            |position| {
                claims.audit = Some(AuditRef {
                    index: position.index,
                    leaf_hash: leaf_b64(&position.leaf_hash),
                });
                let input = self
                    .signing_input(token_key, &claims)
                    .map_err(|e| e.to_string())?;
                Ok((token_key.alg.digest(input.as_bytes()), input))
            },
        )
        .await;
        let (outcome, input) = recorded.map_err(BrokerError::AuditUnavailable)?;
        let token = match (outcome.stored, outcome.signed) {
            (Ok(()), Some(Ok(signature))) => token::assemble(input, &signature.to_raw()),
            (_, Some(Err(device))) => return Err(BrokerError::Hsm(device)),
            // Not durable (the record, or its audit entry): a signature, if one was made, is
            // dropped here. The guard still marks the request failed: whether the write is
            // known not to have committed is not always certain (a lost COMMIT answer), and an
            // `issuance_failed` entry for a request the log never granted is the safe error.
            (Err(store), _) => return Err(BrokerError::AuditUnavailable(store)),
            (Ok(()), None) => {
                return Err(BrokerError::Internal(
                    "issuance finished without a signature".into(),
                ))
            }
        };
        guard.complete(token.clone());
        Ok(ExecutionResponse {
            status: ExecutionState::Granted,
            request_id,
            token: Some(token),
            expires_at: Some(exp),
            request_digest,
            approvals_required: None,
            approval_group: None,
            approvals: None,
        })
    }

    /// How many requests of `agent_key` are open for approval, read off the async workers.
    async fn open_requests_of(
        &self,
        agent_key: &str,
        now: SystemTime,
    ) -> Result<usize, BrokerError> {
        let (store, key) = (self.store.clone(), agent_key.to_owned());
        tokio::task::spawn_blocking(move || store.open_requests_of(&key, now))
            .await
            .map_err(|e| BrokerError::Internal(format!("counting open requests: {e}")))?
            .map_err(BrokerError::Store)
    }

    /// Records a pending request durably, waiting without holding a thread.
    async fn persist_pending(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        issuance::retry_when_index_taken(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.store.record_pending_positioned(
                record.clone(),
                pending.clone(),
                entry,
                Box::new(|_| {}),
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            issuance::received(rx, "record pending request")
        })
        .await
    }

    /// Records `record` with its audit entry durably, waiting without holding a thread.
    async fn persist(&self, record: ExecutionRecord, entry: &Entry) -> Result<(), StoreError> {
        issuance::retry_when_index_taken(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.store.record_execution_positioned(
                record.clone(),
                entry,
                Commit::Now,
                Box::new(|_| {}),
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            issuance::received(rx, "record execution")
        })
        .await
    }

    /// The JWS signing input of a token with `claims`, under the token key's header.
    pub(super) fn signing_input(
        &self,
        key: &super::keys::TokenKey,
        claims: &Claims,
    ) -> Result<String, BrokerError> {
        let header = Header {
            alg: token::alg_for(key.alg).into(),
            typ: token::TOKEN_TYPE.into(),
            kid: key.kid.clone(),
        };
        token::signing_input(&header, claims).map_err(|e| BrokerError::Internal(e.to_string()))
    }

    /// The status of a request; the token only to the agent that asked.
    pub fn execution(
        &self,
        caller: &Caller,
        request_id: &str,
    ) -> Result<ExecutionResponse, BrokerError> {
        let peer = caller.peer();
        let record = self
            .store
            .execution(request_id)
            .map_err(BrokerError::Store)?
            .ok_or(BrokerError::NotFound)?;
        let is_owner = record.agent == peer.thumbprint;
        if !is_owner && peer.role() != Some(RoleKind::Approver) {
            // Other agents learn nothing, not even that the id exists.
            return Err(BrokerError::NotFound);
        }
        let now = SystemTime::now();
        let expired = matches!(
            record.status,
            ExecutionStatus::Granted | ExecutionStatus::PendingApproval
        ) && record.expires_at.is_some_and(|t| t <= now);
        let status = if expired {
            ExecutionState::Expired
        } else {
            record.status.into()
        };
        let (approval_group, approvals) = if record.approvals_required > 0 {
            let group = self
                .store
                .pending_approval(&record.request_id)
                .map_err(BrokerError::Store)?
                .map(|p| p.group);
            // While the request is open, the approvals that count; once a token exists, the
            // approvals it carries (not one whose approver was revoked before the grant);
            // otherwise (rejected, expired unapproved) its history.
            let approvals = if status == ExecutionState::PendingApproval {
                self.approvals_that_count(&record.request_id)?
            } else {
                let history = self
                    .store
                    .approvals(&record.request_id)
                    .map_err(BrokerError::Store)?;
                match record.token.as_deref().and_then(crate::token::approvers_of) {
                    Some(counted) => history
                        .into_iter()
                        .filter(|a| {
                            a.decision != crate::approval::Decision::Approve
                                || counted.contains(&a.approver)
                        })
                        .collect(),
                    None => history,
                }
            };
            (
                group,
                Some(approvals.iter().map(ApprovalSummary::from).collect()),
            )
        } else {
            (None, None)
        };
        Ok(ExecutionResponse {
            status,
            request_id: record.request_id,
            token: if is_owner && !expired {
                record.token
            } else {
                None
            },
            expires_at: record.expires_at.map(unix),
            request_digest: record.request_digest,
            approvals_required: (record.approvals_required > 0)
                .then_some(record.approvals_required),
            approval_group,
            approvals,
        })
    }
}

/// Completes an `issuing` record exactly once: with the token, or (when dropped without one)
/// as `failed`.
pub(super) struct IssuingGuard<'a> {
    pub(super) store: &'a dyn Store,
    pub(super) request_id: Option<String>,
}

impl IssuingGuard<'_> {
    pub(super) fn complete(mut self, token: String) {
        if let Some(id) = self.request_id.take() {
            self.store
                .complete_issuance_then(&id, Some(token), Box::new(log_store_failure));
        }
    }
}

impl Drop for IssuingGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.request_id.take() {
            self.store
                .complete_issuance_then(&id, None, Box::new(log_store_failure));
        }
    }
}

/// For writes nobody waits on: a failure is logged (the store's own health check turns the
/// broker unready if writes keep failing).
fn log_store_failure(result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "store write failed");
    }
}

/// Whether `id` can be a request id as [`time_ordered_id`] makes them (30 base64url
/// characters; a little leeway): checked before a caller's id goes into a URL or a log entry,
/// so that it cannot change the route or carry other text.
pub fn is_request_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A request id: 48 bits of milliseconds since the Unix epoch, then 128 random bits,
/// base64url (30 characters). The random part makes ids unique and unguessable; the time
/// prefix makes the store's primary index grow at one end, so that a group commit of many
/// issuances touches a few index pages rather than one per request.
pub(super) fn time_ordered_id() -> Result<String, BrokerError> {
    let millis = unix_millis(SystemTime::now());
    let mut id = [0u8; 22];
    id[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    getrandom::fill(&mut id[6..])
        .map_err(|e| BrokerError::Internal(format!("no randomness: {e}")))?;
    Ok(base64url::encode(&id))
}

/// A token id (`jti`): 128 random bits, base64url (22 characters), as ARCHITECTURE §6 gives
/// it. Nothing about it but its uniqueness can be read or guessed (not even when it was made:
/// `iat` says that).
pub(super) fn token_id() -> Result<String, BrokerError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| BrokerError::Internal(format!("no randomness: {e}")))?;
    Ok(base64url::encode(&id))
}
