//! Multi-party approval: approvers' signed decisions on pending requests
//! (`POST /v1/executions/{id}/approvals`), the list of requests an approver may decide
//! (`GET /v1/executions?status=pending`), expiry, and issuing the token once the quorum is met.
//!
//! An approval is a signature by the approver's own key over [`crate::approval::message`]; the
//! broker checks it against the key of the certificate the approver presented over mutual TLS,
//! together with the certificate's chain, role, group, validity and revocation, that the
//! approver is not the requester (same certificate, key or subject) and that the request is
//! still open. Recording the decision and, when it completes the quorum, reserving the token
//! id are one commit ([`Store::add_approval`]), so two approvers finishing a quorum at once
//! cannot both issue, and the token id is durable before the token exists. The token is signed
//! in the device like every other.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::audit::{cert_ref, entry_now};
use super::request::{token_id, ApprovalSummary, IssuingGuard};
use super::{Broker, BrokerError, Caller, ExecutionResponse, ExecutionState, Peer};
use crate::approval::{self, Decision};
use crate::audit::entry::EntryKind;
use crate::authz::DenyCode;
use crate::base64url;
use crate::chain::CertKey;
use crate::grants::{Role, RoleKind};
use crate::store::{
    ApprovalOutcome, ApprovalRecord, ExecutionRecord, ExecutionStatus, PendingApproval,
    ReservedToken,
};
use crate::time::{from_unix, unix};
use crate::token::{self, AuthorizationDetail, Claims, Confirmation};

/// Most open requests one listing returns.
pub const MAX_LISTED: usize = 500;

/// Most pages of [`MAX_LISTED`] open requests read for one list, when requests outside the
/// caller's scope fill them.
const MAX_PAGES: usize = 20;

/// An approver's decision as posted.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// `approve` or `reject`.
    pub decision: Decision,
    /// base64url DER ECDSA signature over the approval message.
    pub signature: String,
    /// Why (at most 1024 characters; recorded).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The requesting agent, as approvers see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Requester {
    /// Subject of the agent certificate.
    pub subject: String,
    /// base64url SHA-256 of the agent certificate (what the approval message names).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// A request open for decision, with everything an approver signs over.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingRequest {
    /// Request id.
    pub request_id: String,
    /// Operation.
    pub operation: String,
    /// Resource.
    pub resource: String,
    /// The exact parameters (their RFC 8785 form is part of the request digest).
    pub params: Value,
    /// base64url SHA-384 over the RFC 8785 form of `{operation, resource, params}`.
    pub request_digest: String,
    /// Who asks.
    pub requester: Requester,
    /// Why the agent asks.
    pub justification: Option<String>,
    /// Approvals needed.
    pub approvals_required: u32,
    /// The approver group the grant names.
    pub approval_group: String,
    /// Decisions so far.
    pub approvals: Vec<ApprovalSummary>,
    /// When the request arrived (Unix seconds).
    pub created_at: u64,
    /// When it expires unless decided (Unix seconds).
    pub expires_at: u64,
}

/// A decision that passed every check made before the store.
struct Admitted {
    att: Option<token::Attestation>,
    record: ExecutionRecord,
    pending: PendingApproval,
    signature: Vec<u8>,
    now: SystemTime,
    /// How long the requesting agent's certificate is still valid.
    left: Duration,
}

/// What recording a decision left to do.
#[derive(Debug)]
pub enum ApprovalStep {
    /// Nothing: the answer is final (still pending, or rejected).
    Done(ExecutionResponse),
    /// The quorum is met: the token must be signed.
    Issue(Box<Issue>),
}

/// A token to sign for a request whose quorum was met.
#[derive(Debug)]
pub struct Issue {
    request_id: String,
    /// The requesting agent's certificate serial, for the audit entry.
    agent_serial: Option<crate::serial::Serial>,
    claims: Claims,
    response: ExecutionResponse,
}

impl Broker {
    /// Records an approver's signed decision on a pending request (synchronous: it reads and
    /// writes the store, so the HTTP layer calls it from a blocking thread). When the decision
    /// completes the quorum, the answer carries the token to sign: pass it to
    /// [`Broker::finish_approval`].
    pub fn record_approval(
        &self,
        caller: &Caller,
        request_id: &str,
        body: ApprovalBody,
    ) -> Result<ApprovalStep, BrokerError> {
        let result = self.decide_approval(caller.peer(), request_id, body);
        if let Err(e) = &result {
            self.metrics.record_request("approvals", e.code());
        }
        result
    }

    /// Finishes an approval: signs the token in the device when the quorum was met. The answer
    /// is the request's status (never the token: only the requesting agent fetches that).
    pub async fn finish_approval(
        &self,
        step: ApprovalStep,
    ) -> Result<ExecutionResponse, BrokerError> {
        let result = match step {
            ApprovalStep::Done(response) => Ok(response),
            ApprovalStep::Issue(issue) => self.issue_approved(*issue).await,
        };
        self.metrics.record_request(
            "approvals",
            match &result {
                Ok(r) => r.status.as_str(),
                Err(e) => e.code(),
            },
        );
        result
    }

    /// Open requests the approver `peer` may decide: those whose group it is in, oldest first,
    /// and not those it already approved (as itself: by certificate, key or name, as the
    /// duplicate check counts people), where another approval of its would be refused. At
    /// most [`MAX_LISTED`]; the flag is true when others may be left out (the list is full and
    /// more were seen, or the pages read ran out before the open requests did).
    pub fn pending_requests(
        &self,
        caller: &Caller,
    ) -> Result<(Vec<PendingRequest>, bool), BrokerError> {
        let role = approver_role(caller.peer(), "list pending requests")?;
        let now = SystemTime::now();
        // Page by page: requests of agents outside the caller's scope (another team's, for
        // an approver under an intermediate) are dropped here, and must not take the places
        // of those it may decide. At most MAX_PAGES pages are read.
        // Neither do requests the caller already approved.
        let peer = caller.peer();
        let mut open = Vec::new();
        let mut after: Option<String> = None;
        let mut truncated = false;
        for _ in 0..MAX_PAGES {
            let page = self
                .store
                .open_approval_requests(now, &role.groups, after.as_deref(), MAX_LISTED)
                .map_err(BrokerError::Store)?;
            let full = page.len() == MAX_LISTED;
            after = page.last().map(|(record, _)| record.request_id.clone());
            for (record, pending) in page {
                if !role.groups.contains(&pending.group)
                    || outside_scope(peer, &record.agent_serials).is_some()
                {
                    continue;
                }
                let approvals = self.approvals_that_count(&record.request_id)?;
                let decided = approvals
                    .iter()
                    .any(|a| a.made_by(&peer.thumbprint, &peer.key_id, &peer.subject));
                if !decided {
                    open.push((record, pending, approvals));
                }
            }
            // A full page leaves more unread: the list is cut short unless a later page ends.
            truncated = full;
            if !full || open.len() >= MAX_LISTED {
                break;
            }
        }
        truncated |= open.len() > MAX_LISTED;
        open.truncate(MAX_LISTED);
        let mut out = Vec::new();
        for (record, pending, approvals) in open {
            let params = serde_json::from_str(&record.params)
                .map_err(|e| BrokerError::Internal(format!("stored params are not JSON: {e}")))?;
            out.push(PendingRequest {
                request_id: record.request_id,
                operation: record.operation,
                resource: record.resource,
                params,
                request_digest: record.request_digest,
                requester: Requester {
                    subject: record.agent_subject,
                    x5t_s256: record.agent,
                },
                justification: pending.justification,
                approvals_required: record.approvals_required,
                approval_group: pending.group,
                approvals: approvals.iter().map(ApprovalSummary::from).collect(),
                created_at: unix(record.created_at),
                expires_at: unix(pending.expires_at),
            });
        }
        Ok((out, truncated))
    }

    /// Marks every request past its approval deadline expired (each in the commit that
    /// appends its `approval_expired` entry); returns how many. The running broker calls
    /// this periodically; an approval that arrives late finds the request expired either way.
    pub fn expire_pending(&self, now: SystemTime) -> Result<usize, BrokerError> {
        let ids = self
            .store
            .expire_approval_requests(now)
            .map_err(BrokerError::Store)?;
        for id in &ids {
            tracing::info!(request_id = %id, "approval request expired");
        }
        Ok(ids.len())
    }

    /// Everything checked before the store is asked to record the decision: the broker may
    /// issue, the reason's length, the caller is an approver of the request's group and not its
    /// requester, the request is open, the signature is the caller's over this request, and
    /// (for an approval) the agent could still receive a token.
    fn admit_approval(
        &self,
        peer: &Peer,
        request_id: &str,
        body: &ApprovalBody,
    ) -> Result<Admitted, BrokerError> {
        if self.is_frozen() {
            return Err(BrokerError::Frozen);
        }
        self.audit_intact()?;
        let att = match &self.attestation {
            Some(state) => Some(state.current().map_err(BrokerError::Attestation)?),
            None => None,
        };
        if let Some(reason) = body.reason.as_ref() {
            // Shown to the other approvers and kept in the log: the justification's rules.
            crate::text::check_readable("reason", reason, super::MAX_JUSTIFICATION)
                .map_err(BrokerError::InvalidRequest)?;
        }
        let now = SystemTime::now();
        let role = approver_role(peer, "decide on requests")?;
        let record = self
            .store
            .execution(request_id)
            .map_err(BrokerError::Store)?
            .ok_or(BrokerError::NotFound)?;
        let pending = self
            .store
            .pending_approval(request_id)
            .map_err(BrokerError::Store)?
            .ok_or(BrokerError::NotFound)?;
        match record.status {
            ExecutionStatus::PendingApproval => {}
            ExecutionStatus::Expired => return Err(BrokerError::RequestExpired),
            other => return Err(BrokerError::RequestClosed(other.as_str())),
        }
        if pending.expires_at <= now {
            self.expire_pending(now)?;
            return Err(BrokerError::RequestExpired);
        }
        if !role.groups.contains(&pending.group) {
            return Err(BrokerError::WrongApprovalGroup {
                group: pending.group,
            });
        }
        if peer.thumbprint == record.agent
            || crate::cert::same_name(&peer.subject, &record.agent_subject)
            || peer.key_id == pending.agent_key
        {
            return Err(BrokerError::SelfApproval);
        }
        if let Some(intermediate) = outside_scope(peer, &record.agent_serials) {
            return Err(BrokerError::ApproverOutOfScope { intermediate });
        }
        // A token names its approvals, and a verifier checks each approver's path at the
        // token's `iat`, which may be as late as the approval deadline: an approval is taken
        // only from a certificate path that lasts until then.
        let path_end = peer.path_not_after();
        if body.decision == Decision::Approve && path_end.is_some_and(|t| t < pending.expires_at) {
            return Err(BrokerError::ApproverExpiresFirst {
                not_after: path_end.map(unix).unwrap_or_default(),
                deadline: unix(pending.expires_at),
            });
        }
        let signature = base64url::decode(&body.signature)
            .ok_or(BrokerError::BadApprovalSignature("not base64url"))?;
        let key = CertKey::of(&peer.leaf)
            .map_err(|_| BrokerError::BadApprovalSignature("the certificate's key is not EC"))?;
        let message = approval::message(body.decision, &record.request_digest, &record.agent);
        if !approval::verify(&key, &message, &signature) {
            return Err(BrokerError::BadApprovalSignature(
                "signed with another key or over another message",
            ));
        }
        if body.decision == Decision::Approve {
            // The token would go to this agent: its certificate must still be good.
            for serial in &record.agent_serials {
                if self.store.is_revoked(serial).map_err(BrokerError::Store)? {
                    return Err(denied(
                        DenyCode::CertificateRevoked,
                        "the requesting agent's certificate chain is revoked; no token can be issued",
                    ));
                }
            }
        }
        let left = pending
            .agent_not_after
            .duration_since(now)
            .unwrap_or_default();
        if body.decision == Decision::Approve && left < Duration::from_secs(1) {
            return Err(denied(
                DenyCode::CertificateExpired,
                "the requesting agent's certificate has expired; no token can be issued",
            ));
        }
        Ok(Admitted {
            att,
            record,
            pending,
            signature,
            now,
            left,
        })
    }

    fn decide_approval(
        &self,
        peer: &Peer,
        request_id: &str,
        body: ApprovalBody,
    ) -> Result<ApprovalStep, BrokerError> {
        let Admitted {
            att,
            record,
            pending,
            signature,
            now,
            left,
        } = match self.admit_approval(peer, request_id, &body) {
            Ok(admitted) => admitted,
            Err(e) => {
                self.audit_refused_approval(peer, request_id, &body, &e);
                return Err(e);
            }
        };
        let approver_key = peer.key_id.clone();
        let ttl = pending.token_ttl.min(left);
        let iat = unix(now);
        let exp = (iat + ttl.as_secs().max(1)).min(self.token_deadline(now)?);
        let reserve = ReservedToken {
            jti: token_id()?,
            expires_at: from_unix(exp),
        };
        let approval = ApprovalRecord {
            request_id: request_id.to_owned(),
            approver: peer.thumbprint.clone(),
            approver_subject: peer.subject.clone(),
            approver_key,
            decision: body.decision,
            signature: base64url::encode(&signature),
            reason: body.reason,
            at: now,
            approver_serials: peer.serials().cloned().collect(),
            request_digest: record.request_digest.clone(),
        };
        let required = record.approvals_required;
        let outcome = self
            .store
            .add_approval(approval, required, now, reserve.clone())
            .map_err(BrokerError::Store)?;
        let mut response = ExecutionResponse {
            status: ExecutionState::PendingApproval,
            request_id: request_id.to_owned(),
            token: None,
            expires_at: Some(unix(pending.expires_at)),
            request_digest: record.request_digest.clone(),
            approvals_required: Some(required),
            approval_group: Some(pending.group.clone()),
            approvals: None,
        };
        let approvals = match outcome {
            ApprovalOutcome::Unknown => return Err(BrokerError::NotFound),
            ApprovalOutcome::Closed(ExecutionStatus::Expired) | ApprovalOutcome::Expired => {
                return Err(BrokerError::RequestExpired)
            }
            ApprovalOutcome::Closed(other) => {
                return Err(BrokerError::RequestClosed(other.as_str()))
            }
            ApprovalOutcome::Duplicate => return Err(BrokerError::DuplicateApproval),
            ApprovalOutcome::Rejected => {
                response.status = ExecutionState::Rejected;
                response.approvals = Some(self.summaries(request_id)?);
                return Ok(ApprovalStep::Done(response));
            }
            ApprovalOutcome::Approved {
                approvals,
                quorum: false,
            } => {
                response.approvals = Some(approvals.iter().map(ApprovalSummary::from).collect());
                return Ok(ApprovalStep::Done(response));
            }
            ApprovalOutcome::Approved {
                approvals,
                quorum: true,
            } => approvals,
        };
        response.approvals = Some(approvals.iter().map(ApprovalSummary::from).collect());

        // The quorum is met and the token id is durable: the token is signed next.
        let params_digest = super::recorded_params_digest(&record)?;
        let claims = Claims {
            iss: self.config.broker_id.clone(),
            sub: record.agent_subject.clone(),
            jti: reserve.jti.clone(),
            iat,
            nbf: iat,
            exp,
            cnf: Confirmation {
                x5t_s256: record.agent.clone(),
            },
            params_digest: Some(params_digest.clone()),
            authorization_details: vec![AuthorizationDetail {
                kind: token::DETAIL_TYPE.into(),
                operation: record.operation.clone(),
                resource: record.resource.clone(),
                params_digest: params_digest.clone(),
                request_digest: record.request_digest.clone(),
                approvals: required,
                approval_group: Some(pending.group.clone()),
            }],
            att,
            audit: None,
            epoch: self.epoch(),
            approvals: approvals
                .iter()
                .map(|a| token::Approval {
                    x5t_s256: a.approver.clone(),
                    sig: a.signature.clone(),
                })
                .collect(),
        };
        response.status = ExecutionState::Granted;
        response.expires_at = Some(exp);
        Ok(ApprovalStep::Issue(Box::new(Issue {
            request_id: request_id.to_owned(),
            agent_serial: record.agent_serials.first().cloned(),
            claims,
            response,
        })))
    }

    /// Signs the token of a request whose quorum was met (its id is already durable) and
    /// completes the record; on any failure the record becomes `failed` and no token leaves.
    async fn issue_approved(&self, mut issue: Issue) -> Result<ExecutionResponse, BrokerError> {
        let guard = IssuingGuard {
            store: self.store.as_ref(),
            request_id: Some(issue.request_id.clone()),
        };
        // No log entry, no token: the grant's audit entry is durable before the device signs,
        // and the token names it.
        let entry = approved_entry(&issue);
        let position = super::issuance::retry_when_index_taken(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.store.append_audit_then(
                &entry,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            );
            super::issuance::received(rx, "append audit entry")
        })
        .await
        .map_err(BrokerError::AuditUnavailable)?;
        issue.claims.audit = Some(token::AuditRef {
            index: position.index,
            leaf_hash: super::audit::leaf_b64(&position.leaf_hash),
        });
        let keys = self.keys();
        let input = self.signing_input(&keys.token, &issue.claims)?;
        let digest = keys.token.alg.digest(input.as_bytes());
        let signature = self
            .signer
            .sign_as(keys.token.label.clone(), digest)
            .await
            .map_err(BrokerError::Hsm)?;
        let token = token::assemble(input, &signature.to_raw());
        guard.complete(token);
        tracing::info!(request_id = %issue.request_id, "approval quorum met; token issued");
        Ok(issue.response)
    }

    /// The decisions on a request still open for approval, without the approvals whose
    /// approver's path has been revoked since: they no longer count towards the quorum
    /// ([`Store::add_approval`]), so approvers must not be told that it is met.
    pub(super) fn approvals_that_count(
        &self,
        request_id: &str,
    ) -> Result<Vec<ApprovalRecord>, BrokerError> {
        let mut counting = Vec::new();
        for a in self
            .store
            .approvals(request_id)
            .map_err(BrokerError::Store)?
        {
            let revoked = a.decision == Decision::Approve
                && !self
                    .store
                    .revoked_among(&a.approver_serials)
                    .map_err(BrokerError::Store)?
                    .is_empty();
            if !revoked {
                counting.push(a);
            }
        }
        Ok(counting)
    }

    fn summaries(&self, request_id: &str) -> Result<Vec<ApprovalSummary>, BrokerError> {
        Ok(self
            .store
            .approvals(request_id)
            .map_err(BrokerError::Store)?
            .iter()
            .map(ApprovalSummary::from)
            .collect())
    }
}

/// The `execution_granted` entry of a request whose approval quorum was met.
fn approved_entry(issue: &Issue) -> crate::audit::entry::Entry {
    let claims = &issue.claims;
    let mut e = super::audit::entry_now(crate::audit::entry::EntryKind::ExecutionGranted);
    e.request_id = Some(issue.request_id.clone());
    e.cert = Some(super::audit::cert_ref(
        &claims.cnf.x5t_s256,
        issue.agent_serial.as_ref(),
        &claims.sub,
    ));
    if let Some(d) = claims.authorization_details.first() {
        e.operation = Some(d.operation.clone());
        e.resource = Some(d.resource.clone());
        e.params_digest = Some(d.params_digest.clone());
        e.request_digest = Some(d.request_digest.clone());
        e.approvals_required = Some(d.approvals);
    }
    e.decision = Some("granted".into());
    e.jti = Some(claims.jti.clone());
    e.expires_at = Some(claims.exp);
    e.epoch = Some(claims.epoch);
    e.detail = Some(format!(
        "approved by {} approver(s)",
        claims.approvals.len()
    ));
    e
}

impl Broker {
    /// Logs a decision refused before the store saw it: who tried what on which request, and
    /// the refusal's code. A self-approval, a forged signature or an approver of another group
    /// is what a SIEM should see. Failures of the broker itself (frozen, attestation, store)
    /// are not the approver's doing and are not logged here; refusals the store makes
    /// (duplicate, closed, expired) are logged with the decision, in its commit.
    fn audit_refused_approval(
        &self,
        peer: &Peer,
        request_id: &str,
        body: &ApprovalBody,
        refusal: &BrokerError,
    ) {
        if matches!(
            refusal,
            BrokerError::Frozen
                | BrokerError::Attestation(_)
                | BrokerError::Store(_)
                | BrokerError::AuditUnavailable(_)
                | BrokerError::AuditDiverged(_)
                | BrokerError::Hsm(_)
                | BrokerError::Internal(_)
        ) {
            return;
        }
        let kind = match body.decision {
            Decision::Approve => EntryKind::ApprovalGiven,
            Decision::Reject => EntryKind::ApprovalRejected,
        };
        let mut entry = entry_now(kind);
        // An id is at most 64 characters when it reaches here (longer ones are never looked up).
        entry.request_id = Some(request_id.chars().take(64).collect());
        entry.cert = Some(cert_ref(
            &peer.thumbprint,
            peer.serials().next(),
            &peer.subject,
        ));
        entry.decision = Some(body.decision.as_str().to_owned());
        entry.code = Some(refusal.code().to_owned());
        if let Err(e) = self.store.append_audit(&entry) {
            tracing::error!(error = %e, code = refusal.code(), "a refused approval could not be logged");
        }
    }
}

/// The approver's role and groups. The caller's whole path (validity, revocation) was checked
/// by [`Broker::authenticate`] for this request, and the route admits approvers only; the role
/// is read again here so that this code never trusts the route table alone.
fn approver_role<'p>(peer: &'p Peer, action: &'static str) -> Result<&'p Role, BrokerError> {
    let chain = peer.verified_chain()?;
    match &chain.leaf.role {
        Some(role) if role.kind == RoleKind::Approver => Ok(role),
        other => Err(BrokerError::WrongRole {
            actual: other
                .as_ref()
                .map_or("unknown".into(), |r| r.kind.to_string()),
            action,
        }),
    }
}

/// The first intermediate above the approver `peer` that is not on the requesting agent's
/// path (`agent_serials`), by subject. An intermediate delegated to issue approvers (`issue-ca
/// --roles approver`) could otherwise mint approvers for any group, and so approve requests
/// of agents it has no authority over: its approvers decide for agents below it only. The
/// root's approvers decide for everyone.
fn outside_scope(peer: &Peer, agent_serials: &[crate::serial::Serial]) -> Option<String> {
    let below_root = peer.path.len().saturating_sub(1);
    peer.path
        .iter()
        .take(below_root)
        .skip(1)
        .find(|ca| !agent_serials.contains(&ca.serial))
        .map(|ca| ca.subject.clone())
}

fn denied(code: DenyCode, reason: &str) -> BrokerError {
    BrokerError::Denied {
        code,
        reason: reason.to_owned(),
        request_id: None,
    }
}
