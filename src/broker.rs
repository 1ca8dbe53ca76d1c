//! The broker's decisions, independent of HTTP: who is asking (a validated certificate chain),
//! whether the grants allow it, minting the token inside the device, persisting what must
//! survive, and single-use redemption.
//!
//! | file | what |
//! | --- | --- |
//! | `broker/peer.rs` | the caller's identity from its verified chain, and its cache |
//! | `broker/access.rs` | the check of the caller's whole path and role on every route |
//! | `broker/request.rs` | an agent's request: decision, token claims, status |
//! | `broker/issuance.rs`, `broker/signer.rs` | signing in the device while the store commits |
//! | `broker/approve.rs` | approvers' signed decisions, the pending list, expiry, approved issuance |
//! | `broker/notify.rs` | the webhook for new pending requests |
//! | `broker/redeem.rs` | single-use redemption over the shared token verifier |
//! | `broker/audit.rs` | audit entries of decisions, checkpoints signed by `seb-audit` |
//! | `broker/outcome.rs` | executors' signed receipts, checked and recorded once |
//! | `broker/crl.rs` | the CRL, signed in the device and cached |
//! | `broker/error.rs` | every refusal with its one code and status |
//!
//! Issuance (`request_execution`) is async: the decision runs on the caller's thread, and the
//! device signature and the durable write are waited for without holding a thread. The other
//! methods are synchronous and may block on the device or the store; the HTTP layer calls them
//! from blocking threads. Nothing here returns a token unless its id was durably stored, and
//! every device or store failure is an error (fail closed), never a token.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::attest::selfcheck::AttestationState;
use crate::backend::KeyBackend;
use crate::cert::Certificate;
use crate::config::Config;
use crate::store::Store;

mod access;
mod approve;
pub mod audit;
mod authority;
mod crl;
mod error;
mod keys;
mod notify;
mod outcome;

pub use keys::retired_token_window;
pub mod issuance;
pub mod metrics;
mod peer;
mod redeem;
mod request;
pub mod signer;

pub use access::{refused_entry, Access, Caller, RefusedAttempt};
pub use approve::{ApprovalBody, ApprovalStep, PendingRequest, Requester, MAX_LISTED};
pub use authority::{AgentAuthority, EffectiveGrant};
pub use error::{BrokerError, Disposition};
pub use metrics::Metrics;
pub use outcome::OutcomeRecorded;
pub use peer::{PathCert, Peer, PEER_CACHE_TTL};
pub use redeem::Redemption;
pub use request::{
    is_request_id, ApprovalSummary, ExecutionRequest, ExecutionResponse, ExecutionState,
    MAX_JUSTIFICATION,
};

/// The broker: keys in the device, state in the store, policy from the configuration.
pub struct Broker {
    config: Config,
    backend: Arc<dyn KeyBackend>,
    store: Arc<dyn Store>,
    root: Certificate,
    roots: Vec<Certificate>,
    keys: std::sync::RwLock<Arc<keys::BrokerKeys>>,
    /// The modification time of the key generations file when the keys were last loaded
    /// ([`Broker::reload_if_rotated`]).
    keys_stamp: Mutex<Option<SystemTime>>,
    /// Held across loading and switching the keys, so that two reloads (the poller's and a
    /// route's) cannot finish in the wrong order and put back what the other replaced.
    reloading: Mutex<()>,
    epoch: AtomicU64,
    frozen: AtomicBool,
    /// Whether the kill switches have been read from the store once: the first read states
    /// them, later ones warn when they change.
    policy_read: AtomicBool,
    /// Live replicas sharing the store, this one included (1 on SQLite).
    replicas: std::sync::atomic::AtomicU32,
    metrics: Arc<Metrics>,
    signer: signer::SignQueue,
    crl_cache: crl::CrlCache,
    peers: peer::PeerCache,
    attestation: Option<Arc<AttestationState>>,
    health: Mutex<Option<(Instant, HealthChecks)>>,
    notifier: notify::Notifier,
    audit: Arc<audit::AuditLog>,
}

/// Named readiness checks, each passed or failed with a reason.
type HealthChecks = Vec<(&'static str, Result<(), String>)>;

/// How often a running broker re-reads the kill switches (`seb epoch bump`, `seb freeze`).
pub const POLICY_INTERVAL: Duration = Duration::from_millis(250);

/// How often a running broker announces itself to replicas sharing its store and counts them
/// (rate limits are divided among the live ones).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often a running broker re-reads its key generations and trust directory.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A broker certificate expiring within this shows as a warning in `/healthz` and `seb check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How long a readiness answer is reused.
pub const HEALTH_TTL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("broker_id", &self.config.broker_id)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Loads the trust material written by `seb init` and checks that the token key in the
    /// device matches the token certificate.
    pub fn new(
        config: Config,
        backend: Arc<dyn KeyBackend>,
        store: Arc<dyn Store>,
    ) -> Result<Self, BrokerError> {
        let trust = config.trust_dir();
        let root = trust
            .root()
            .map_err(|e| BrokerError::Internal(format!("{e}; has `seb init` run?")))?;
        let keys = keys::BrokerKeys::load(&config, backend.as_ref(), SystemTime::now())?;
        let audit_cert = crate::ca::trust_dir::read_certificate(&trust.audit_path())
            .map_err(|e| BrokerError::Internal(format!("{e}; has `seb init` run?")))?;
        let audit = Arc::new(audit::AuditLog::new(
            store.clone(),
            backend.clone(),
            &config,
            &audit_cert,
        )?);
        audit
            .start_checkpointer(audit::CHECKPOINT_INTERVAL)
            .map_err(|e| BrokerError::Internal(format!("cannot start the checkpointer: {e}")))?;
        let mut started = audit::entry_now(crate::audit::entry::EntryKind::BrokerStarted);
        started.detail = Some(format!("seb {}", env!("CARGO_PKG_VERSION")));
        if let Err(e) = store.append_audit(&started) {
            // Not fatal: issuance itself refuses while the log cannot be written, and
            // `/healthz` says why; it resumes once the log is writable.
            tracing::error!(error = %e, "cannot record the broker start in the audit log");
        }
        let metrics = Arc::new(Metrics::default());
        let observe = {
            let metrics = metrics.clone();
            Arc::new(move |elapsed| metrics.observe_hsm_sign(elapsed))
        };
        let signer = signer::SignQueue::start(
            backend.clone(),
            keys.token.label.to_string(),
            config.backend.signing_threads(),
            observe,
        )
        .map_err(|e| BrokerError::Internal(format!("cannot start the signing threads: {e}")))?;
        let notifier = notify::Notifier::start(config.approvals.webhook_url.as_deref());
        Ok(Self {
            roots: vec![root.clone()],
            root,
            keys: std::sync::RwLock::new(Arc::new(keys)),
            keys_stamp: Mutex::new(None),
            reloading: Mutex::new(()),
            epoch: AtomicU64::new(config.policy.epoch),
            frozen: AtomicBool::new(config.policy.frozen),
            policy_read: AtomicBool::new(false),
            replicas: std::sync::atomic::AtomicU32::new(1),
            signer,
            metrics,
            crl_cache: crl::CrlCache::default(),
            peers: peer::PeerCache::default(),
            config,
            backend,
            store,
            attestation: None,
            health: Mutex::new(None),
            notifier,
            audit,
        })
    }

    /// The audit log (checkpoints).
    pub fn audit_log(&self) -> &Arc<audit::AuditLog> {
        &self.audit
    }

    /// Records a clean stop in the audit log and signs a last checkpoint.
    pub fn record_stop(&self) {
        let stopped = audit::entry_now(crate::audit::entry::EntryKind::BrokerStopped);
        if let Err(e) = self.store.append_audit(&stopped) {
            tracing::error!(error = %e, "cannot record the broker stop in the audit log");
        }
        if let Err(e) = self.audit.checkpoint() {
            tracing::error!(error = %e, "cannot sign the last checkpoint");
        }
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
    pub fn trust_pem(&self) -> String {
        self.keys().trust_pem.clone()
    }

    /// The current key generations and trust bundle (a snapshot: a rotation swaps it whole).
    fn keys(&self) -> Arc<keys::BrokerKeys> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the key generations and the trust directory (`seb rotate`, `seb cert
    /// issue-ca`) and switches to them if they changed; the running broker calls this every
    /// [`RELOAD_INTERVAL`]. A state that does not check out (a token certificate that does not
    /// match its key in the device, half-written files) is refused and the current keys stay.
    /// Returns whether anything changed.
    pub fn reload(&self) -> Result<bool, BrokerError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = keys::BrokerKeys::load(&self.config, self.backend.as_ref(), SystemTime::now())?;
        let current = self.keys();
        if fresh.same_as(&current) {
            return Ok(false);
        }
        tracing::info!(
            token_label = %fresh.token.label,
            retired_tokens = fresh.retired_tokens.len(),
            "trust material changed; switching"
        );
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        Ok(true)
    }

    /// [`Broker::reload`] if `seb rotate` wrote the key generations file since the keys were
    /// last loaded (one `stat`). The trust bundle and checkpoint routes call it first, so that
    /// a checkpoint signed by a just-rotated audit key (the signer follows the file) is never
    /// served before the bundle that holds its certificate.
    pub fn reload_if_rotated(&self) {
        let path = crate::ca::generations::KeyGenerations::path(&self.config.state_dir);
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut last = self.keys_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_some() && *last != stamp {
            // Noted whether or not the switch worked: a state that does not check out is
            // retried by the poller every RELOAD_INTERVAL, not by every request.
            *last = stamp;
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "cannot switch to the rotated keys yet");
            }
        }
    }

    /// Re-reads the kill switches from the store: the policy epoch becomes the larger of the
    /// configured and the stored one (it never goes down), and issuance is frozen as last set
    /// by `seb freeze` / `unfreeze` (the configuration's `policy.frozen` until then). The
    /// running broker calls this every [`POLICY_INTERVAL`]. Returns (epoch, frozen).
    pub fn refresh_policy(&self) -> Result<(u64, bool), BrokerError> {
        let state = self.store.policy_state().map_err(BrokerError::Store)?;
        let epoch = state.epoch.unwrap_or(0).max(self.config.policy.epoch);
        let before = self.epoch.fetch_max(epoch, Ordering::SeqCst);
        let frozen = state.frozen.unwrap_or(self.config.policy.frozen);
        let changed = self.frozen.swap(frozen, Ordering::SeqCst) != frozen;
        if !self.policy_read.swap(true, Ordering::SeqCst) {
            // What an earlier `seb epoch bump` or `seb freeze` left is the state at start,
            // not a change to alert on.
            tracing::info!(epoch, frozen, "policy state");
        } else {
            if epoch > before {
                tracing::warn!(epoch, "policy epoch raised: older tokens are refused");
            }
            if changed {
                tracing::warn!(frozen, "issuance freeze changed");
            }
        }
        if changed || epoch > before {
            // The command that changed the switch appended its audit entry from another
            // process; a commit now makes the writer follow the log's new edge, rather than the
            // next token's commit finding its reserved audit index taken.
            if let Err(e) = self.store.check_writable() {
                tracing::warn!(error = %e, "store not writable after a kill switch changed");
            }
        }
        Ok((self.epoch(), frozen))
    }

    /// Announces this replica (`id`) in the store and learns how many replicas are live;
    /// called every [`HEARTBEAT_INTERVAL`].
    pub fn heartbeat(&self, id: &str) -> Result<(), BrokerError> {
        let live = self
            .store
            .live_replicas(id, SystemTime::now())
            .map_err(BrokerError::Store)?;
        let before = self.replicas.swap(live, Ordering::SeqCst);
        if before != live {
            tracing::info!(
                replicas = live,
                "live replicas changed; rate limits divided among them"
            );
        }
        Ok(())
    }

    /// Live replicas sharing the store, as of the last heartbeat (at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::SeqCst).max(1)
    }

    /// The current policy epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// `audit_log_diverged` while the stored audit log does not extend the last checkpoint
    /// this broker signed (see [`audit::AuditLog::integrity`]).
    fn audit_intact(&self) -> Result<(), BrokerError> {
        self.audit.integrity().map_err(BrokerError::AuditDiverged)
    }

    /// Whether issuance is frozen now.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// The certificates whose expiry is watched: root, token, TLS, audit, and the attestation
    /// key's when the broker attests (as `ak`).
    fn watched_certificates(&self) -> Vec<(String, Certificate)> {
        let keys = self.keys();
        let mut certs: Vec<(String, Certificate)> = keys
            .service_certificates(&self.root)
            .into_iter()
            .map(|(what, cert)| (what, cert.clone()))
            .collect();
        if let Some(ak) = self.attestation.as_ref().and_then(|a| a.ak_certificate()) {
            certs.push(("ak".to_owned(), ak.clone()));
        }
        certs
    }

    /// Prometheus gauges of the broker's certificates: each one's notAfter (Unix seconds) and
    /// whether it expires within [`EXPIRY_WARNING`]. Labels are fixed names (root, token, tls,
    /// audit, ak), never subjects or serials.
    pub fn certificate_metrics(&self, now: SystemTime) -> String {
        use std::fmt::Write;
        let certs = self.watched_certificates();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP seb_certificate_not_after_seconds notAfter of the broker's certificates (Unix time).");
        let _ = writeln!(out, "# TYPE seb_certificate_not_after_seconds gauge");
        for (what, cert) in &certs {
            let _ = writeln!(
                out,
                "seb_certificate_not_after_seconds{{certificate=\"{what}\"}} {}",
                crate::time::unix(cert.not_after())
            );
        }
        let _ = writeln!(out, "# HELP seb_certificate_expiring 1 when the certificate expires within 30 days (renew: seb rotate; ak: seb attest enroll).");
        let _ = writeln!(out, "# TYPE seb_certificate_expiring gauge");
        for (what, cert) in &certs {
            let _ = writeln!(
                out,
                "seb_certificate_expiring{{certificate=\"{what}\"}} {}",
                u8::from(cert.not_after() <= now + EXPIRY_WARNING)
            );
        }
        out
    }

    /// Certificates of the broker that expire within [`EXPIRY_WARNING`] at `now`, as
    /// (what, notAfter).
    pub fn expiring_certificates(&self, now: SystemTime) -> Vec<(String, SystemTime)> {
        let mut out = Vec::new();
        for (what, cert) in self.watched_certificates() {
            if cert.not_after() <= now + EXPIRY_WARNING {
                out.push((what, cert.not_after()));
            }
        }
        out
    }

    /// The root certificates client chains must end in.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// The latest `exp` (Unix seconds) a token signed at `now` may carry: its signing
    /// certificate's notAfter, since verifiers refuse a token under an expired certificate.
    /// Outside that certificate's validity nothing is signed.
    pub(crate) fn token_deadline(&self, now: SystemTime) -> Result<u64, BrokerError> {
        let keys = self.keys();
        let cert = &keys.token.cert;
        if now >= cert.not_after() {
            return Err(BrokerError::TokenCertificateInvalid(format!(
                "it expired at {}",
                crate::time::rfc3339(cert.not_after())
            )));
        }
        if now < cert.not_before() {
            return Err(BrokerError::TokenCertificateInvalid(format!(
                "it is valid only from {}",
                crate::time::rfc3339(cert.not_before())
            )));
        }
        Ok(crate::time::unix(cert.not_after()))
    }

    /// The current token signing certificate.
    pub fn token_certificate(&self) -> Certificate {
        self.keys().token.cert.clone()
    }

    /// Builds the caller's identity from the chain it presented (leaf first). TLS already
    /// verified the chain; this rebuilds the verified path so the decision sees exactly the
    /// certificates that vouch for the leaf.
    ///
    /// Validated paths are cached (for [`PEER_CACHE_TTL`]) in one slot per leaf key, reused
    /// only for the very same chain bytes: the result depends only on those bytes and the
    /// roots, while validity and revocation are checked again on every request.
    pub fn peer(&self, presented: &[Vec<u8>], now: SystemTime) -> Result<Arc<Peer>, BrokerError> {
        self.peers.peer(presented, &self.roots, now)
    }

    /// The caller's identity if the cache holds it for exactly this chain: what
    /// [`Broker::peer`] would return without validating anything, or `None`.
    pub fn cached_peer(&self, presented: &[Vec<u8>]) -> Option<Arc<Peer>> {
        self.peers.cached(presented)
    }

    /// Readiness: the device answers, the store takes a write and (when the broker attests)
    /// the latest self-attestation is good.
    ///
    /// The answer is reused for [`HEALTH_TTL`]: each fresh check pings the device and makes a
    /// durable write, and `/healthz` must not let callers make the broker do that at will.
    pub fn health(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut cached = match self.health.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, checks)) = cached.as_ref() {
            if at.elapsed() < HEALTH_TTL {
                return checks.clone();
            }
        }
        let checks = self.check_health();
        self.metrics.record_request("healthz", "checked");
        *cached = Some((Instant::now(), checks.clone()));
        checks
    }

    fn check_health(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut checks = vec![
            ("hsm", self.backend.ping().map_err(|e| e.to_string())),
            (
                "store",
                self.store.check_writable().map_err(|e| e.to_string()),
            ),
            ("audit", self.store.audit_health()),
            ("audit_checkpoints", self.audit.health()),
            (
                "issuance",
                if self.is_frozen() {
                    Err("frozen by the security team".into())
                } else {
                    Ok(())
                },
            ),
        ];
        if let Some(state) = &self.attestation {
            checks.push((
                "attestation",
                state.current().map(|_| ()).map_err(|r| r.to_string()),
            ));
        }
        // An expired token certificate stops issuance ([`Broker::token_deadline`]); the
        // others make tokens, the TLS service or checkpoints unverifiable.
        let now = SystemTime::now();
        let expired: Vec<String> = self
            .watched_certificates()
            .into_iter()
            .filter(|(_, cert)| cert.not_after() <= now)
            .map(|(what, _)| what)
            .collect();
        checks.push((
            "certificates",
            if expired.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "expired: the {} certificate; renew with `seb rotate` (docs/OPERATIONS.md)",
                    expired.join(", the ")
                ))
            },
        ));
        checks
    }
}

/// The params digest (base64url) of the parameters `record` holds: what the token issued for
/// it names, and what its redemption and its executor's receipt must name too.
fn recorded_params_digest(record: &crate::store::ExecutionRecord) -> Result<String, BrokerError> {
    let stored = |e: &dyn std::fmt::Display| BrokerError::Internal(format!("stored params: {e}"));
    let params: serde_json::Value = serde_json::from_str(&record.params).map_err(|e| stored(&e))?;
    crate::canonical::params_digest(&params)
        .map(|d| crate::base64url::encode(&d))
        .map_err(|e| stored(&e))
}
