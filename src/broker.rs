//! The broker's decisions, independent of HTTP: who is asking (a validated certificate chain),
//! whether the grants allow it, minting the token inside the device, persisting what must
//! survive, and single-use redemption.
//!
//! Issuance (`request_execution`) is async: the decision runs on the caller's thread, and the
//! device signature and the durable write are waited for without holding a thread. The other
//! methods are synchronous and may block on the device or the store; the HTTP layer calls them
//! from blocking threads. Nothing here returns a token unless its id was durably stored, and
//! every device or store failure is an error (fail closed), never a token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::attest::selfcheck::AttestationState;
use crate::authz::{self, ChainView, Decision, DenyCode, RevocationView};
use crate::backend::{BackendError, KeyAlgorithm, KeyBackend};
use crate::cert::Certificate;
use crate::chain;
use crate::config::Config;
use crate::grants::RoleKind;
use crate::store::{ExecutionRecord, ExecutionStatus, RedeemOutcome, Store, StoreError};
use crate::token::{self, AuthorizationDetail, Claims, Confirmation, Header};

pub mod issuance;
pub mod metrics;
pub mod signer;

pub use metrics::Metrics;

/// Why the broker refused or failed. The HTTP layer maps each variant to a status and a
/// stable code in one exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The decision engine said no.
    #[error("{reason}")]
    Denied {
        /// Stable code.
        code: DenyCode,
        /// Human reason.
        reason: String,
        /// The request id under which the denial was recorded, if it was.
        request_id: Option<String>,
    },
    /// The client certificate chain did not validate.
    #[error("client certificate rejected: {0}")]
    BadCertificate(String),
    /// The caller's role may not use this endpoint.
    #[error("the {actual} role may not {action}")]
    WrongRole {
        /// What the certificate says.
        actual: String,
        /// What was attempted.
        action: &'static str,
    },
    /// The body is not valid JSON, or not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    /// No such execution (or not visible to this caller).
    #[error("no such execution request")]
    NotFound,
    /// The token was redeemed before.
    #[error("token already redeemed")]
    AlreadyRedeemed,
    /// The token is not one of ours, malformed, expired or for another broker.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The device failed: no token.
    #[error("HSM unavailable")]
    Hsm(#[source] BackendError),
    /// The store failed: no token.
    #[error("store unavailable")]
    Store(#[source] StoreError),
    /// Issuance is frozen by the security team.
    #[error("issuance is frozen")]
    Frozen,
    /// The broker's attestation self-check failed or is too old: no token.
    #[error("attestation self-check not good: {0}")]
    Attestation(String),
    /// Internal invariant broken (encoding); no token.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who is calling, established once per TLS connection from the verified client chain.
#[derive(Debug)]
pub struct Peer {
    /// The leaf certificate.
    pub leaf: Certificate,
    /// base64url SHA-256 of the leaf DER (`x5t#S256`).
    pub thumbprint: String,
    /// Leaf subject.
    pub subject: String,
    /// The facts the decision engine needs, or why the chain is unusable.
    pub chain: Result<ChainView, String>,
    /// Serials of every certificate in the path (leaf first), for revocation checks.
    pub serials: Vec<Vec<u8>>,
}

impl Peer {
    /// The role the leaf carries, if any.
    pub fn role(&self) -> Option<RoleKind> {
        self.chain
            .as_ref()
            .ok()
            .and_then(|c| c.leaf.role.as_ref().map(|r| r.kind))
    }
}

/// An agent's request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    /// Operation name.
    pub operation: String,
    /// Resource path.
    pub resource: String,
    /// Parameters (a JSON object).
    #[serde(default = "empty_object")]
    pub params: Value,
    /// Free text for the audit log (at most 1024 characters).
    #[serde(default)]
    pub justification: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The answer to `POST /v1/executions` and `GET /v1/executions/{id}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutionResponse {
    /// granted, pending_approval, denied, expired.
    pub status: &'static str,
    /// Request id.
    pub request_id: String,
    /// The token (granted only, and only to the requesting agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Token expiry (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// base64url request digest (what approvers sign).
    pub request_digest: String,
    /// Approvals the grant requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
}

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
}

/// The broker: keys in the device, state in the store, policy from the configuration.
pub struct Broker {
    config: Config,
    backend: Arc<dyn KeyBackend>,
    store: Arc<dyn Store>,
    roots: Vec<Certificate>,
    token_cert: Certificate,
    token_kid: String,
    token_alg: KeyAlgorithm,
    trust_pem: String,
    epoch: AtomicU64,
    metrics: Arc<Metrics>,
    signer: signer::SignQueue,
    crl_cache: std::sync::Mutex<Option<CachedCrl>>,
    peer_cache: std::sync::Mutex<PeerCache>,
    attestation: Option<Arc<AttestationState>>,
}

/// The last CRL served, reused while the revocation list is unchanged and the CRL is fresh, so
/// that the public `/v1/crl` endpoint cannot be used to make the HSM sign at will.
struct CachedCrl {
    pem: String,
    revoked: Vec<crate::ca::crl::Revocation>,
    made: Instant,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("broker_id", &self.config.broker_id)
            .finish_non_exhaustive()
    }
}

/// Upper bound on `justification`.
pub const MAX_JUSTIFICATION: usize = 1024;

/// Most certificates of a presented client chain that are looked at.
const MAX_PRESENTED: usize = 8;
/// How long a validated client chain is reused for new connections.
pub const PEER_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most cached client chains; the cache is emptied when full.
const PEER_CACHE_ENTRIES: usize = 4096;

/// Validated peers by SHA-256 of the presented chain, with when they were validated.
type PeerCache = std::collections::HashMap<[u8; 32], (Instant, Arc<Peer>)>;

impl Broker {
    /// Loads the trust material written by `seb init` and checks that the token key in the
    /// device matches the token certificate.
    pub fn new(
        config: Config,
        backend: Arc<dyn KeyBackend>,
        store: Arc<dyn Store>,
    ) -> Result<Self, BrokerError> {
        let trust = config.trust_dir();
        let read = |name: &str| -> Result<Certificate, BrokerError> {
            let path = trust.join(name);
            let bytes = std::fs::read(&path).map_err(|e| {
                BrokerError::Internal(format!(
                    "cannot read {} ({e}); has `seb init` run?",
                    path.display()
                ))
            })?;
            Certificate::parse(&bytes).map_err(|e| BrokerError::Internal(e.to_string()))
        };
        let root = read("root.pem")?;
        let token_cert = read("token.pem")?;
        let public = backend
            .public_key(&config.keys.token)
            .map_err(BrokerError::Hsm)?;
        let spki = public.to_spki_der().map_err(BrokerError::Hsm)?;
        let cert_spki = der::Encode::to_der(&token_cert.tbs.subject_public_key_info)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        if spki != cert_spki {
            return Err(BrokerError::Internal(format!(
                "the key {:?} in the device does not match {}",
                config.keys.token,
                trust.join("token.pem").display()
            )));
        }
        let mut trust_pem = String::new();
        for name in ["root.pem", "token.pem", "audit.pem", "tls.pem"] {
            if let Ok(text) = std::fs::read_to_string(trust.join(name)) {
                trust_pem.push_str(&text);
            }
        }
        // Intermediate CAs, so relying parties can build agent paths from the bundle alone.
        if let Ok(entries) = std::fs::read_dir(trust.join("intermediates")) {
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            paths.sort();
            for path in paths {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    trust_pem.push_str(&text);
                }
            }
        }
        let token_der = token_cert
            .to_der_bytes()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let metrics = Arc::new(Metrics::default());
        let observe = {
            let metrics = metrics.clone();
            Arc::new(move |elapsed| metrics.observe_hsm_sign(elapsed))
        };
        let signer = signer::SignQueue::start(
            backend.clone(),
            config.keys.token.clone(),
            config.backend.signing_threads(),
            observe,
        )
        .map_err(|e| BrokerError::Internal(format!("cannot start the signing threads: {e}")))?;
        Ok(Self {
            token_kid: token::b64(&Sha256::digest(&token_der)),
            token_alg: public.algorithm(),
            roots: vec![root],
            token_cert,
            trust_pem,
            epoch: AtomicU64::new(config.policy.epoch),
            signer,
            metrics,
            crl_cache: std::sync::Mutex::new(None),
            peer_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            config,
            backend,
            store,
            attestation: None,
        })
    }

    /// Gates issuance on the TPM self-check: from now on every token needs a recent good
    /// self-attestation and carries it in `att`.
    pub fn with_attestation(mut self, state: Arc<AttestationState>) -> Self {
        self.attestation = Some(state);
        self
    }

    /// The self-attestation state, when the broker attests.
    pub fn attestation(&self) -> Option<&Arc<AttestationState>> {
        self.attestation.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters and histograms for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        self.metrics.as_ref()
    }

    /// The PEM bundle served at `/v1/trust`.
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// The root certificates client chains must end in.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// The token signing certificate.
    pub fn token_certificate(&self) -> &Certificate {
        &self.token_cert
    }

    /// Builds the caller's identity from the chain it presented (leaf first). TLS already
    /// verified the chain; this rebuilds the verified path so the decision sees exactly the
    /// certificates that vouch for the leaf.
    ///
    /// Validated paths are cached by the SHA-256 of the presented chain (for
    /// [`PEER_CACHE_TTL`]): the result depends only on those bytes and the roots, while
    /// validity and revocation are checked again on every request by the decision.
    pub fn peer(&self, presented: &[Vec<u8>], now: SystemTime) -> Result<Arc<Peer>, BrokerError> {
        let mut hasher = Sha256::new();
        for der in presented.iter().take(MAX_PRESENTED) {
            hasher.update((der.len() as u64).to_be_bytes());
            hasher.update(der);
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Ok(cache) = self.peer_cache.lock() {
            if let Some((made, peer)) = cache.get(&key) {
                if made.elapsed() < PEER_CACHE_TTL {
                    return Ok(peer.clone());
                }
            }
        }
        let peer = Arc::new(self.validate_peer(presented, now)?);
        if peer.chain.is_ok() {
            if let Ok(mut cache) = self.peer_cache.lock() {
                if cache.len() >= PEER_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, (Instant::now(), peer.clone()));
            }
        }
        Ok(peer)
    }

    fn validate_peer(&self, presented: &[Vec<u8>], now: SystemTime) -> Result<Peer, BrokerError> {
        let mut certs = Vec::with_capacity(presented.len());
        for der in presented.iter().take(MAX_PRESENTED) {
            certs.push(
                Certificate::parse(der).map_err(|e| BrokerError::BadCertificate(e.to_string()))?,
            );
        }
        let (leaf, rest) = certs
            .split_first()
            .ok_or_else(|| BrokerError::BadCertificate("no client certificate".into()))?;
        let leaf_der = leaf
            .to_der_bytes()
            .map_err(|e| BrokerError::BadCertificate(e.to_string()))?;
        let validated = chain::validate(leaf, rest, &self.roots, now);
        let (chain, serials) = match validated {
            Ok(v) => {
                let view = v.chain_view();
                let mut serials = vec![view.leaf.serial.clone()];
                serials.extend(view.ancestors.iter().map(|a| a.serial.clone()));
                (Ok(view), serials)
            }
            Err(e) => (
                Err(format!("{}: {e}", e.code())),
                vec![leaf.tbs.serial_number.as_bytes().to_vec()],
            ),
        };
        Ok(Peer {
            thumbprint: token::b64(&Sha256::digest(&leaf_der)),
            subject: leaf.subject_string(),
            leaf: leaf.clone(),
            chain,
            serials,
        })
    }

    /// Decides an agent's request and, when granted, mints and persists the token.
    ///
    /// The decision runs on the caller's thread; the device signature and the durable write
    /// are waited for without holding a thread.
    pub async fn request_execution(
        &self,
        peer: &Peer,
        request: ExecutionRequest,
    ) -> Result<ExecutionResponse, BrokerError> {
        let started = Instant::now();
        let result = self.request_execution_inner(peer, request).await;
        self.metrics.record_request(
            "executions",
            match &result {
                Ok(r) => r.status,
                Err(e) => error_code(e),
            },
        );
        if matches!(&result, Ok(r) if r.status == "granted") {
            self.metrics.observe_issuance(started.elapsed());
        }
        result
    }

    async fn request_execution_inner(
        &self,
        peer: &Peer,
        request: ExecutionRequest,
    ) -> Result<ExecutionResponse, BrokerError> {
        if self.config.policy.frozen {
            return Err(BrokerError::Frozen);
        }
        let att = match &self.attestation {
            Some(state) => Some(state.current().map_err(BrokerError::Attestation)?),
            None => None,
        };
        if let Some(j) = &request.justification {
            if j.chars().count() > MAX_JUSTIFICATION {
                return Err(BrokerError::InvalidRequest(format!(
                    "justification is longer than {MAX_JUSTIFICATION} characters"
                )));
            }
        }
        if !request.params.is_object() {
            return Err(BrokerError::InvalidRequest(
                "params must be a JSON object".into(),
            ));
        }
        let chain = peer
            .chain
            .as_ref()
            .map_err(|e| BrokerError::BadCertificate(e.clone()))?;
        let revoked = self.revocation_view(peer)?;
        let now = SystemTime::now();
        let req = authz::Request {
            operation: request.operation,
            resource: request.resource,
            params: request.params,
        };
        let decision = authz::decide(chain, &revoked, &req, now, self.config.policy.max_token_ttl);
        let request_id = time_ordered_id()?;
        let params_jcs = crate::canonical::canonicalize(&req.params).unwrap_or_default();
        let mut record = ExecutionRecord {
            request_id: request_id.clone(),
            agent: peer.thumbprint.clone(),
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
        let (grant_ttl, approval, digest) = match decision {
            Decision::Deny { code, reason } => {
                record.deny_code = Some(code.as_str().to_owned());
                // A denial is final whether or not it could be recorded.
                let recorded = self.persist(record).await.is_ok();
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
        record.request_digest = token::b64(&digest);
        if let Some(rule) = approval {
            record.status = ExecutionStatus::PendingApproval;
            record.approvals_required = rule.required;
            let request_digest = record.request_digest.clone();
            self.persist(record).await.map_err(BrokerError::Store)?;
            return Ok(ExecutionResponse {
                status: ExecutionStatus::PendingApproval.as_str(),
                request_id,
                token: None,
                expires_at: None,
                request_digest,
                approvals_required: Some(rule.required),
            });
        }

        let params_digest = crate::canonical::params_digest(&req.params)
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        let iat = unix(now);
        let exp = iat + grant_ttl.as_secs().max(1);
        let jti = time_ordered_id()?;
        let claims = Claims {
            iss: self.config.broker_id.clone(),
            sub: peer.subject.clone(),
            jti: jti.clone(),
            iat,
            nbf: iat,
            exp,
            cnf: Confirmation {
                x5t_s256: peer.thumbprint.clone(),
            },
            authorization_details: vec![AuthorizationDetail {
                kind: token::DETAIL_TYPE.into(),
                operation: req.operation,
                resource: req.resource,
                params_digest: token::b64(&params_digest),
                request_digest: record.request_digest.clone(),
                approvals: 0,
            }],
            att,
            audit: None,
            epoch: self.epoch.load(Ordering::Relaxed),
            approvals: Vec::new(),
        };
        record.status = ExecutionStatus::Issuing;
        record.jti = Some(jti);
        record.expires_at = Some(UNIX_EPOCH + Duration::from_secs(exp));
        let request_digest = record.request_digest.clone();
        // The token id must be durable before the token leaves (replay protection survives a
        // crash). The record is written while the device signs; the token goes out only when
        // both have succeeded, and is then added to the record. If this future is dropped on
        // the way (timeout, client gone), the guard marks the request failed: no token left.
        let input = self.signing_input(&claims)?;
        let digest = self.token_alg.digest(input.as_bytes());
        let guard = IssuingGuard {
            store: self.store.as_ref(),
            request_id: Some(request_id.clone()),
        };
        let outcome = issuance::sign_and_record(&self.store, &self.signer, record, digest).await;
        let token = match (outcome.stored, outcome.signed) {
            (Ok(()), Some(Ok(signature))) => token::assemble(input, &signature.to_raw()),
            (_, Some(Err(device))) => return Err(BrokerError::Hsm(device)),
            // Not durable: a signature, if one was made, is dropped here.
            (Err(store), _) => return Err(BrokerError::Store(store)),
            (Ok(()), None) => {
                return Err(BrokerError::Internal(
                    "issuance finished without a signature".into(),
                ))
            }
        };
        guard.complete(token.clone());
        Ok(ExecutionResponse {
            status: ExecutionStatus::Granted.as_str(),
            request_id,
            token: Some(token),
            expires_at: Some(exp),
            request_digest,
            approvals_required: None,
        })
    }

    /// Records `record` durably, waiting without holding a thread.
    async fn persist(&self, record: ExecutionRecord) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.record_execution_then(
            record,
            crate::store::Commit::Now,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Io {
                operation: "record execution",
                source: "the store dropped the write".into(),
            })
        })
    }

    /// The status of a request; the token only to the agent that asked.
    pub fn execution(
        &self,
        peer: &Peer,
        request_id: &str,
    ) -> Result<ExecutionResponse, BrokerError> {
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
        let expired = matches!(record.status, ExecutionStatus::Granted)
            && record.expires_at.is_some_and(|t| t <= SystemTime::now());
        let status = if expired {
            "expired"
        } else {
            record.status.as_str()
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
        })
    }

    /// Single-use redemption by an executor.
    pub fn redeem(&self, peer: &Peer, token: &str) -> Result<Redemption, BrokerError> {
        let result = self.redeem_inner(peer, token);
        self.metrics.record_request(
            "redeem",
            match &result {
                Ok(_) => "redeemed",
                Err(e) => error_code(e),
            },
        );
        result
    }

    fn redeem_inner(&self, peer: &Peer, token: &str) -> Result<Redemption, BrokerError> {
        match peer.role() {
            Some(RoleKind::Executor) => {}
            other => {
                return Err(BrokerError::WrongRole {
                    actual: other.map_or("unknown".into(), |r| r.to_string()),
                    action: "redeem tokens",
                })
            }
        }
        let chain = peer
            .chain
            .as_ref()
            .map_err(|e| BrokerError::BadCertificate(e.clone()))?;
        let now = SystemTime::now();
        for facts in std::iter::once(&chain.leaf).chain(chain.ancestors.iter()) {
            if now >= facts.not_after {
                return Err(BrokerError::Denied {
                    code: DenyCode::CertificateExpired,
                    reason: "the executor certificate has expired".into(),
                    request_id: None,
                });
            }
        }
        if self.revocation_view(peer)?.any() {
            return Err(BrokerError::Denied {
                code: DenyCode::CertificateRevoked,
                reason: "the executor certificate is revoked".into(),
                request_id: None,
            });
        }
        let claims = self.check_token(token, now)?;
        let detail = claims
            .authorization_details
            .first()
            .ok_or_else(|| BrokerError::InvalidToken("no authorization details".into()))?;
        match self
            .store
            .redeem(&claims.jti, &peer.thumbprint, now)
            .map_err(BrokerError::Store)?
        {
            RedeemOutcome::Redeemed => Ok(Redemption {
                status: "redeemed",
                jti: claims.jti.clone(),
                request_id: None,
                operation: detail.operation.clone(),
                resource: detail.resource.clone(),
                params_digest: detail.params_digest.clone(),
            }),
            RedeemOutcome::AlreadyRedeemed { .. } => Err(BrokerError::AlreadyRedeemed),
            RedeemOutcome::Unknown => Err(BrokerError::InvalidToken(
                "this broker has no record of issuing the token".into(),
            )),
        }
    }

    /// Checks that `token` is a live token signed by our token key.
    fn check_token(&self, token: &str, now: SystemTime) -> Result<Claims, BrokerError> {
        let bad = |m: &str| BrokerError::InvalidToken(m.to_owned());
        if token.len() > token::MAX_TOKEN_LEN {
            return Err(bad("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWS compact token"));
        };
        let header: Header = token::unb64(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed header"))?;
        if header.typ != token::TOKEN_TYPE
            || header.alg != token::alg_for(self.token_alg)
            || header.kid != self.token_kid
        {
            return Err(bad("not signed by this broker's token key"));
        }
        let signature = token::unb64(s).ok_or_else(|| bad("malformed signature"))?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        self.verify_token_signature(signing_input.as_bytes(), &signature)
            .map_err(|_| bad("signature does not verify"))?;
        let claims: Claims = token::unb64(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed claims"))?;
        let now = unix(now);
        if now >= claims.exp {
            return Err(bad("expired"));
        }
        if now + 5 < claims.nbf {
            return Err(bad("not yet valid"));
        }
        if claims.iss != self.config.broker_id {
            return Err(bad("issued by another broker"));
        }
        if claims.epoch < self.epoch.load(Ordering::Relaxed) {
            return Err(bad("from an older policy epoch"));
        }
        Ok(claims)
    }

    fn verify_token_signature(&self, input: &[u8], signature: &[u8]) -> Result<(), ()> {
        use signature::Verifier;
        let spki =
            der::Encode::to_der(&self.token_cert.tbs.subject_public_key_info).map_err(|_| ())?;
        match self.token_alg {
            KeyAlgorithm::EcP384 => {
                let key =
                    <p384::ecdsa::VerifyingKey as spki::DecodePublicKey>::from_public_key_der(
                        &spki,
                    )
                    .map_err(|_| ())?;
                let sig = p384::ecdsa::Signature::from_slice(signature).map_err(|_| ())?;
                key.verify(input, &sig).map_err(|_| ())
            }
            KeyAlgorithm::EcP256 => {
                let key =
                    <p256::ecdsa::VerifyingKey as spki::DecodePublicKey>::from_public_key_der(
                        &spki,
                    )
                    .map_err(|_| ())?;
                let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| ())?;
                key.verify(input, &sig).map_err(|_| ())
            }
        }
    }

    /// The JWS signing input of a token with `claims`, under the token key's header.
    fn signing_input(&self, claims: &Claims) -> Result<String, BrokerError> {
        let header = Header {
            alg: token::alg_for(self.token_alg).into(),
            typ: token::TOKEN_TYPE.into(),
            kid: self.token_kid.clone(),
        };
        token::signing_input(&header, claims).map_err(|e| BrokerError::Internal(e.to_string()))
    }

    fn revocation_view(&self, peer: &Peer) -> Result<RevokedSet, BrokerError> {
        let mut revoked = Vec::new();
        for serial in &peer.serials {
            if self.store.is_revoked(serial).map_err(BrokerError::Store)? {
                revoked.push(serial.clone());
            }
        }
        Ok(RevokedSet(revoked))
    }

    /// Readiness: the device answers, the store takes a write and (when the broker attests)
    /// the latest self-attestation is good.
    pub fn health(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut checks = self.health_base();
        if let Some(state) = &self.attestation {
            checks.push(("attestation", state.current().map(|_| ())));
        }
        checks
    }

    fn health_base(&self) -> Vec<(&'static str, Result<(), String>)> {
        vec![
            ("hsm", self.backend.ping().map_err(|e| e.to_string())),
            (
                "store",
                self.store.check_writable().map_err(|e| e.to_string()),
            ),
            (
                "issuance",
                if self.config.policy.frozen {
                    Err("frozen by the security team".into())
                } else {
                    Ok(())
                },
            ),
        ]
    }

    /// The current CRL, signed by the root key in the device. A new one is signed when the
    /// revocation list changed or the cached one is past half its validity.
    pub fn crl_pem(&self) -> Result<String, BrokerError> {
        let revoked = self.store.revocations().map_err(BrokerError::Store)?;
        let mut cache = self
            .crl_cache
            .lock()
            .map_err(|_| BrokerError::Internal("CRL cache lock poisoned".into()))?;
        if let Some(cached) = cache.as_ref() {
            if cached.revoked == revoked && cached.made.elapsed() < self.config.ca.crl_validity / 2
            {
                return Ok(cached.pem.clone());
            }
        }
        let pem = self.sign_crl(&revoked)?;
        *cache = Some(CachedCrl {
            pem: pem.clone(),
            revoked,
            made: Instant::now(),
        });
        Ok(pem)
    }

    fn sign_crl(&self, revoked: &[crate::ca::crl::Revocation]) -> Result<String, BrokerError> {
        let number = self.store.next_crl_number().map_err(BrokerError::Store)?;
        let signer = crate::backend::P384Signer::new(self.backend.as_ref(), &self.config.keys.root)
            .map_err(BrokerError::Hsm)?;
        let root = self
            .roots
            .first()
            .ok_or_else(|| BrokerError::Internal("no root".into()))?;
        let list = crate::ca::crl::sign(
            &signer,
            root,
            number,
            revoked,
            SystemTime::now(),
            self.config.ca.crl_validity,
        )
        .map_err(|e| match e {
            crate::ca::CaError::Sign(b) | crate::ca::CaError::Key(b) => BrokerError::Hsm(b),
            other => BrokerError::Internal(other.to_string()),
        })?;
        crate::ca::crl::to_pem(&list).map_err(|e| BrokerError::Internal(e.to_string()))
    }
}

/// The stable code of an error, as clients and metrics see it.
pub fn error_code(e: &BrokerError) -> &'static str {
    match e {
        BrokerError::Denied { code, .. } => code.as_str(),
        BrokerError::BadCertificate(_) => "bad_certificate",
        BrokerError::WrongRole { .. } => "wrong_role",
        BrokerError::InvalidRequest(_) => "invalid_request",
        BrokerError::NotFound => "not_found",
        BrokerError::AlreadyRedeemed => "token_already_redeemed",
        BrokerError::InvalidToken(_) => "invalid_token",
        BrokerError::Hsm(_) => "hsm_unavailable",
        BrokerError::Store(_) => "store_unavailable",
        BrokerError::Frozen => "issuance_frozen",
        BrokerError::Attestation(_) => "attestation_failed",
        BrokerError::Internal(_) => "internal_error",
    }
}

struct RevokedSet(Vec<Vec<u8>>);

impl RevokedSet {
    fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

impl RevocationView for RevokedSet {
    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.0.iter().any(|s| s == serial)
    }
}

/// Completes an `issuing` record exactly once: with the token, or (when dropped without one)
/// as `failed`.
struct IssuingGuard<'a> {
    store: &'a dyn Store,
    request_id: Option<String>,
}

impl IssuingGuard<'_> {
    fn complete(mut self, token: String) {
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

/// A request or token id: 48 bits of milliseconds since the Unix epoch, then 128 random bits,
/// base64url (30 characters). The random part makes ids unique and unguessable; the time
/// prefix makes the store's indexes grow at one end, so that a group commit of many
/// issuances touches a few index pages rather than one per token.
fn time_ordered_id() -> Result<String, BrokerError> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut id = [0u8; 22];
    id[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&random::<16>()?);
    Ok(token::b64(&id))
}

fn random<const N: usize>() -> Result<[u8; N], BrokerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| BrokerError::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
