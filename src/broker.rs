//! The broker's decisions, independent of HTTP: who is asking (a validated certificate chain),
//! whether the grants allow it, minting the token inside the device, persisting what must
//! survive, and single-use redemption.
//!
//! | file | what |
//! | --- | --- |
//! | `broker/peer.rs` | the caller's identity from its verified chain, and its cache |
//! | `broker/request.rs` | an agent's request: decision, token claims, status |
//! | `broker/issuance.rs`, `broker/signer.rs` | signing in the device while the store commits |
//! | `broker/redeem.rs` | single-use redemption over the shared token verifier |
//! | `broker/crl.rs` | the CRL, signed in the device and cached |
//! | `broker/error.rs` | every refusal with its one code and status |
//!
//! Issuance (`request_execution`) is async: the decision runs on the caller's thread, and the
//! device signature and the durable write are waited for without holding a thread. The other
//! methods are synchronous and may block on the device or the store; the HTTP layer calls them
//! from blocking threads. Nothing here returns a token unless its id was durably stored, and
//! every device or store failure is an error (fail closed), never a token.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::attest::selfcheck::AttestationState;
use crate::backend::{KeyAlgorithm, KeyBackend};
use crate::base64url;
use crate::cert::Certificate;
use crate::config::Config;
use crate::store::Store;

mod crl;
mod error;
pub mod issuance;
pub mod metrics;
mod peer;
mod redeem;
mod request;
pub mod signer;

pub use error::{BrokerError, Disposition};
pub use metrics::Metrics;
pub use peer::{Peer, PEER_CACHE_TTL};
pub use redeem::Redemption;
pub use request::{ExecutionRequest, ExecutionResponse, ExecutionState, MAX_JUSTIFICATION};

/// The broker: keys in the device, state in the store, policy from the configuration.
pub struct Broker {
    config: Config,
    backend: Arc<dyn KeyBackend>,
    store: Arc<dyn Store>,
    root: Certificate,
    roots: Vec<Certificate>,
    token_cert: Certificate,
    token_kid: String,
    token_alg: KeyAlgorithm,
    trust_pem: String,
    epoch: AtomicU64,
    metrics: Arc<Metrics>,
    signer: signer::SignQueue,
    crl_cache: crl::CrlCache,
    peers: peer::PeerCache,
    attestation: Option<Arc<AttestationState>>,
    health: Mutex<Option<(Instant, HealthChecks)>>,
}

/// Named readiness checks, each passed or failed with a reason.
type HealthChecks = Vec<(&'static str, Result<(), String>)>;

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
        let unreadable = |e: crate::ca::TrustDirError| {
            BrokerError::Internal(format!("{e}; has `seb init` run?"))
        };
        let root = trust.root().map_err(unreadable)?;
        let token_cert = trust.token().map_err(unreadable)?;
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
                trust.token_path().display()
            )));
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
            token_kid: base64url::encode(&Sha256::digest(&token_der)),
            token_alg: public.algorithm(),
            roots: vec![root.clone()],
            root,
            token_cert,
            trust_pem: trust.bundle_pem(),
            epoch: AtomicU64::new(config.policy.epoch),
            signer,
            metrics,
            crl_cache: crl::CrlCache::default(),
            peers: peer::PeerCache::default(),
            config,
            backend,
            store,
            attestation: None,
            health: Mutex::new(None),
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
        self.peers.peer(presented, &self.roots, now)
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
            (
                "issuance",
                if self.config.policy.frozen {
                    Err("frozen by the security team".into())
                } else {
                    Ok(())
                },
            ),
        ];
        if let Some(state) = &self.attestation {
            checks.push(("attestation", state.current().map(|_| ())));
        }
        checks
    }
}
