//! The reference executor (`seb exec`): the only holder of production credentials, which acts
//! on a token exactly once and says what it did.
//!
//! An agent presents `{token, params}` at `POST /v1/run` over mutual TLS. The executor:
//!
//! 1. checks the agent's certificate chain to the pinned root and its `agent` role;
//! 2. verifies the token offline ([`crate::verify::verify_token`]): signature, chain and key
//!    purpose of the token certificate, lifetime, policy epoch (the configured minimum, raised
//!    by every higher epoch it has seen from the broker), the operation and resource of a
//!    mapped action, the digest of exactly these parameters, the binding to the certificate
//!    the agent presented on this connection, the approval quorum against the approvers'
//!    certificates, and `att` freshness when configured;
//! 3. checks the parameters against the action's template;
//! 4. redeems the token at the broker (`POST /v1/tokens/redeem`, single use);
//! 5. runs the action (argv, never a shell; or an allow-listed HTTP call) with its timeout;
//! 6. signs a receipt with its own key ([`crate::receipt`]), posts it to the broker
//!    (`POST /v1/executions/{id}/outcome`) and returns it to the agent.
//!
//! It never acts before the redemption succeeded, and never redeems before every offline
//! check passed. Its key is its own (a PKCS#8 file); it holds no broker key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::approval::ApproverKey;
use crate::base64url;
use crate::cert::Certificate;
use crate::client::{pem_blocks, Client, ClientError, ClientTls};
use crate::grants::RoleKind;
use crate::receipt::{self, Receipt, ReceiptBody, RECEIPT_TYPE};
use crate::server::error::ErrorChain;
use crate::verify::{self, Action, Binding, Expectations, Params, TokenRules, TrustStore};

pub mod action;
pub mod config;
mod error;
mod http;

pub use config::ExecutorConfig;
pub use error::{ConfigError, ExecError};
pub use http::{bind, serve};

use action::ActionKind;

/// How long the whole run may take beyond the action's own timeout (verify, redeem, report).
const OVERHEAD: Duration = Duration::from_secs(30);

/// How often an outcome the broker missed is reported again after the agent's answer.
const LATE_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// For how long.
const LATE_REPORT_FOR: Duration = Duration::from_secs(3_600);

/// Waits before each further attempt to report an outcome the broker did not take (7.5 s in
/// all, inside [`OVERHEAD`]).
const REPORT_RETRIES: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// The running executor's state.
pub struct Executor {
    config: ExecutorConfig,
    roots: Vec<Certificate>,
    trust: RwLock<Arc<TrustStore>>,
    /// The approvers' certificates from the `approvers` file, re-read when a token names an
    /// approver it does not hold (a renewed certificate added to the file).
    approvers: RwLock<Arc<Vec<Certificate>>>,
    broker_tls: ClientTls,
    key: ApproverKey,
    thumbprint: String,
    /// The highest policy epoch seen from the broker (tokens, redemption answers), and at
    /// least the configured minimum: tokens below it are refused offline.
    epoch: AtomicU64,
    /// When a token with an unknown `kid` last made the executor fetch the bundle again: at
    /// most once per [`REFETCH_INTERVAL`], so that tokens naming made-up keys cannot turn
    /// every request into a new connection to the broker.
    refetched: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often an unknown `kid` may make the executor fetch the trust bundle again.
const REFETCH_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// What an agent posts.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    token: String,
    params: serde_json::Value,
}

/// A connection's verified agent.
#[derive(Clone)]
struct Agent {
    leaf: Arc<Certificate>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Agents reach the executor over HTTPS with its own certificate, so it must carry serverAuth
/// and the names agents use: refused at start, not at every agent's first connection.
fn serves_https(leaf: &Certificate) -> Result<(), String> {
    use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
    let usages = leaf
        .standard_extension::<ExtendedKeyUsage>()
        .map_err(|e| e.to_string())?;
    let server_auth = usages.is_some_and(|u| u.0.contains(&crate::client::SERVER_AUTH));
    let names = leaf
        .extension(<SubjectAltName as der::oid::AssociatedOid>::OID)
        .is_some();
    let missing = match (server_auth, names) {
        (true, true) => return Ok(()),
        (false, false) => "no serverAuth usage and no names",
        (false, true) => "no serverAuth usage",
        (true, false) => "no names (subjectAltName)",
    };
    Err(format!(
        "the executor certificate {:?} has {missing}, so agents cannot connect to this \
         executor over HTTPS: issue it with `seb cert issue --role executor --tls-name HOST \
         [--tls-name IP]` (docs/OPERATIONS.md §7a)",
        leaf.subject_string()
    ))
}

/// How long `seb exec` waits at start for the broker's port to accept connections (a broker
/// and its executors started together, the broker still opening its device).
const BROKER_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until the broker at `url` accepts TCP connections, for at most
/// [`BROKER_STARTUP_WAIT`], saying so while it waits; whether it waited and the port now
/// accepts them. `false` at once when the port accepts connections already (the broker is
/// up, and what failed was something else).
async fn wait_for_broker(url: &str) -> bool {
    let Ok((authority, _)) = crate::client::parse_url(url) else {
        return false;
    };
    let deadline = std::time::Instant::now() + BROKER_STARTUP_WAIT;
    let mut pause = std::time::Duration::from_millis(250);
    let mut waited = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let attempt = tokio::time::timeout(
            left.min(std::time::Duration::from_secs(5)),
            tokio::net::TcpStream::connect(&authority),
        )
        .await;
        let error = match attempt {
            Ok(Ok(_)) => return waited,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer to the connection".to_owned(),
        };
        if std::time::Instant::now() + pause >= deadline {
            return false;
        }
        tracing::warn!(%authority, %error, "the broker does not accept connections yet; retrying in {pause:?}");
        waited = true;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

impl Executor {
    /// Loads the credentials and trust material the configuration names. The trust bundle
    /// comes from `trust_bundle` or else the broker's `GET /v1/trust` (over TLS pinned to the
    /// root), whose roots must be exactly the pinned ones.
    pub async fn new(config: ExecutorConfig) -> Result<Self, String> {
        let root_pem = read(&config.root)?;
        let cert_pem = read(&config.cert)?;
        let key_pem = read(&config.key)?;
        // The self-signed certificates of the file: an intermediate beside the root anchors
        // nothing (agents under it chain to the root through it).
        let roots = TrustStore::from_pem(&root_pem)
            .map_err(|e| format!("{}: {e}", config.root.display()))?
            .roots()
            .to_vec();
        let chain = Certificate::parse_pem_chain(&cert_pem).map_err(|e| e.to_string())?;
        let leaf = chain
            .first()
            .ok_or("the executor certificate file is empty")?;
        let role = leaf.seb_role();
        if role != Some(RoleKind::Executor) {
            return Err("the executor certificate does not carry the executor role".into());
        }
        serves_https(leaf)?;
        let thumbprint = base64url::encode(&leaf.thumbprint_sha256().map_err(|e| e.to_string())?);
        let key = String::from_utf8(key_pem.clone())
            .map_err(|_| "the key file is not PEM text".to_owned())
            .and_then(|text| ApproverKey::from_pkcs8_pem(&text))
            .map_err(|e| format!("key {}: {e}", config.key.display()))?;
        let broker_tls =
            ClientTls::new(&root_pem, &cert_pem, &key_pem, true).map_err(|e| e.to_string())?;
        let approvers = RwLock::new(Arc::new(read_approvers(&config)?));
        let epoch = AtomicU64::new(config.min_epoch);
        let placeholder =
            TrustStore::from_certificates(roots.clone()).map_err(|e| e.to_string())?;
        let executor = Executor {
            trust: RwLock::new(Arc::new(placeholder)),
            config,
            roots,
            approvers,
            broker_tls,
            key,
            thumbprint,
            epoch,
            refetched: std::sync::Mutex::new(None),
        };
        if let Err(e) = executor.refresh_trust().await {
            // A broker not listening yet (both started together) is waited for; one that
            // answered and refused is reported at once.
            if executor.config.trust_bundle.is_some()
                || !wait_for_broker(&executor.config.broker_url).await
            {
                return Err(e);
            }
            executor.refresh_trust().await?;
        }
        Ok(executor)
    }

    /// Whether an unknown `kid` may make the executor fetch the bundle now (and notes that it
    /// did): not within [`REFETCH_INTERVAL`] of the last such fetch.
    fn may_refetch(&self) -> bool {
        let mut last = self.refetched.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// A failed exchange with the broker, with its causes and what to do about it when that
    /// can be told (an expired executor certificate, the wrong `root`, an impostor broker).
    fn broker_failure(&self, what: &str, error: &ClientError) -> String {
        let mut text = format!("{what}: {}", ErrorChain(error));
        if let Some(hint) = self.broker_tls.explain(error, SystemTime::now()) {
            text.push_str("; ");
            text.push_str(&hint);
        }
        text
    }

    /// Re-reads the token trust bundle (file or broker).
    async fn refresh_trust(&self) -> Result<(), String> {
        let pem = match &self.config.trust_bundle {
            Some(path) => read(path)?,
            None => {
                let mut client = Client::connect(&self.config.broker_url, &self.broker_tls)
                    .await
                    .map_err(|e| {
                        self.broker_failure("cannot fetch the trust bundle from the broker", &e)
                    })?;
                let response = client
                    .send("GET", "/v1/trust", None)
                    .await
                    .map_err(|e| self.broker_failure("cannot fetch the trust bundle", &e))?;
                if response.status != 200 {
                    let mut why = format!(
                        "cannot fetch the trust bundle: GET /v1/trust answered {}: {}",
                        response.status,
                        response.body["error"]["message"]
                            .as_str()
                            .unwrap_or(&response.text)
                    );
                    if let Some(hint) = response.body["error"]["code"]
                        .as_str()
                        .and_then(|c| self.broker_tls.explain_refusal(c, SystemTime::now()))
                    {
                        why.push_str("; ");
                        why.push_str(&hint);
                    }
                    return Err(why);
                }
                response.text.into_bytes()
            }
        };
        let store = TrustStore::from_pem(&pem).map_err(|e| e.to_string())?;
        // The same roots, in any order (a bundle of two installations during a root rotation
        // may list them either way).
        let pinned = self.roots.as_slice();
        let same = store.roots().len() == pinned.len()
            && store.roots().iter().all(|r| pinned.contains(r))
            && pinned.iter().all(|r| store.roots().contains(r));
        if !same {
            return Err(
                "the trust bundle's roots are not the pinned roots (the `root` file)".into(),
            );
        }
        match self.trust.write() {
            Ok(mut t) => *t = Arc::new(store),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(store),
        }
        Ok(())
    }

    fn approvers(&self) -> Arc<Vec<Certificate>> {
        match self.approvers.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the approvers file. A file that no longer parses leaves the certificates
    /// read before in place (and says so in the log).
    fn reload_approvers(&self) {
        match read_approvers(&self.config) {
            Ok(fresh) => match self.approvers.write() {
                Ok(mut a) => *a = Arc::new(fresh),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
            },
            Err(e) => tracing::error!(error = %e, "cannot re-read the approvers file"),
        }
    }

    fn trust(&self) -> Arc<TrustStore> {
        match self.trust.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The policy epoch below which tokens are refused.
    pub fn min_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn learn_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The rustls server configuration: the executor's own certificate and key, client
    /// certificates required and verified against the pinned root.
    pub fn tls_config(&self) -> Result<rustls::ServerConfig, String> {
        let provider = crate::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        for root in &self.roots {
            let der = root
                .to_der_bytes()
                .map_err(|e| format!("root certificate: {e}"))?;
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| format!("root certificate: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
        let chain: Vec<CertificateDer<'static>> =
            pem_blocks(&read(&self.config.cert)?, "CERTIFICATE")
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
        let key = pem_blocks(&read(&self.config.key)?, "PRIVATE KEY")
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("no PKCS#8 key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.into()))
            .map_err(|e| format!("executor certificate or key: {e}"))?;
        config.alpn_protocols = crate::tls::SERVER_ALPN.map(<[u8]>::to_vec).to_vec();
        Ok(config)
    }

    /// Verifies, redeems, runs and reports (module documentation). Returns the receipt, the
    /// first bytes of the output and whether the broker recorded the outcome.
    async fn run(
        self: &Arc<Self>,
        agent: &Agent,
        body: RunBody,
    ) -> Result<serde_json::Value, ExecError> {
        // The parameters exactly as posted, with the broker's strict rules (the body was
        // parsed strictly already), so that their digest is the digest of one meaning.
        let params_text =
            serde_json::to_vec(&body.params).map_err(|e| ExecError::Internal(e.to_string()))?;
        let params =
            Params::parse(&params_text).map_err(|e| ExecError::InvalidRequest(e.to_string()))?;
        let now = SystemTime::now();
        // Which action? Read from a token whose signature, lifetime and epoch verified; then
        // everything is verified against that action.
        let mut trust = self.trust();
        let rules = TokenRules {
            min_epoch: self.min_epoch(),
            ..TokenRules::at(now)
        };
        let claims = match verify::verify_signature_only(&body.token, &trust, &rules) {
            Err(verify::VerifyError::UnknownKey { .. }) if self.may_refetch() => {
                // A rotated token key: fetch the bundle again once.
                self.refresh_trust()
                    .await
                    .map_err(ExecError::BrokerUnavailable)?;
                trust = self.trust();
                verify::verify_signature_only(&body.token, &trust, &rules)
            }
            other => other,
        }
        .map_err(ExecError::TokenRefused)?
        .claims;
        let detail = claims
            .authorization_details
            .first()
            .ok_or_else(|| ExecError::InvalidRequest("token without authorization".into()))?;
        let action = self
            .config
            .action(&detail.operation, &detail.resource)
            .ok_or_else(|| ExecError::NoAction {
                operation: detail.operation.clone(),
                resource: detail.resource.clone(),
            })?;
        let mut expect = Expectations::new(
            now,
            Action::new(&action.operation, &action.resource, params.clone()),
            Binding::agent((*agent.leaf).clone()),
        )
        .min_epoch(self.min_epoch())
        .approvers(self.approvers().as_ref().clone());
        if let Some(issuer) = &self.config.broker_id {
            expect = expect.issuer(issuer.clone());
        }
        let verified = match verify::verify_token(&body.token, &trust, &expect) {
            // A renewed approver certificate is a new thumbprint: the operator adds it to the
            // approvers file, which is read again here (no restart).
            Err(verify::VerifyError::UnknownApprover { .. }) if self.config.approvers.is_some() => {
                self.reload_approvers();
                expect = expect.approvers(self.approvers().as_ref().clone());
                verify::verify_token(&body.token, &trust, &expect)
            }
            other => other,
        }
        .map_err(ExecError::TokenRefused)?;
        if let Some(max_age) = self.config.max_attestation_age {
            let att = verified.claims.att.as_ref().ok_or_else(|| {
                ExecError::AttestationStale("the token carries no attestation (att)".into())
            })?;
            let at = crate::time::from_unix(att.time);
            if now.duration_since(at).unwrap_or_default() > max_age {
                return Err(ExecError::AttestationStale(format!(
                    "the broker's attestation is older than {}",
                    crate::duration::format(max_age)
                )));
            }
        }
        self.learn_epoch(verified.claims.epoch);
        // The template's own checks, before the token is spent.
        let prepared = match &action.kind {
            ActionKind::Argv(t) => {
                Prepared::Argv(t.render(params.value()).map_err(ExecError::ParamsRefused)?)
            }
            ActionKind::Http(t) => {
                Prepared::Http(t.render(params.value()).map_err(ExecError::ParamsRefused)?)
            }
        };
        let jti = verified.claims.jti.clone();
        let request_id = self.redeem(&body.token).await?;
        tracing::info!(%jti, %request_id, operation = %action.operation, "token redeemed; running the action");
        let timeout = action.timeout;
        let http = matches!(prepared, Prepared::Http(_));
        let started = SystemTime::now();
        let ran = match prepared {
            Prepared::Argv((program, args)) => {
                match tokio::task::spawn_blocking(move || {
                    action::run_argv(&program, &args, timeout)
                })
                .await
                {
                    Ok(ran) => ran.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the action's thread failed: {e}")),
                }
            }
            Prepared::Http((method, url, payload)) => {
                action::run_http(&method, &url, payload, timeout).await
            }
        };
        // The token is spent: a failure now (a program that cannot start, an upstream that
        // hangs up mid-answer, which may have acted) is signed and reported like any outcome,
        // so the log never shows a redemption without one.
        let failure = ran.as_ref().err().cloned();
        let outcome = ran.unwrap_or_else(|e| {
            tracing::error!(%jti, %request_id, error = %e, "the action failed after its token was redeemed; its outcome is unknown");
            action::Outcome::unknown(started)
        });
        let millis = |t: SystemTime| crate::time::unix_millis(t);
        let receipt = receipt::sign(
            ReceiptBody {
                typ: RECEIPT_TYPE.into(),
                jti,
                request_id: request_id.clone(),
                operation: action.operation.clone(),
                resource: action.resource.clone(),
                params_digest: params.digest().to_owned(),
                exit_code: outcome.exit_code,
                timed_out: outcome.timed_out,
                stdout_sha256: base64url::encode(&outcome.stdout_sha256),
                stderr_sha256: base64url::encode(&outcome.stderr_sha256),
                started_at_ms: millis(outcome.started),
                finished_at_ms: millis(outcome.finished),
                executor: self.thumbprint.clone(),
            },
            &self.key,
        )
        .map_err(|e| ExecError::Internal(e.to_string()))?;
        let recorded = match self.report(&request_id, &receipt).await {
            Ok(()) => true,
            Err((retry, e)) => {
                // The receipt in the log, so it can be posted by hand whatever happens next
                // (`POST /v1/executions/{request_id}/outcome`, docs/VERIFYING.md §6).
                let text = serde_json::to_string(&receipt).unwrap_or_default();
                tracing::error!(%request_id, error = %e, receipt = %text, "the broker did not record the outcome");
                if retry {
                    self.keep_reporting(request_id.clone(), receipt.clone());
                }
                false
            }
        };
        if !outcome.output_complete {
            tracing::warn!(%request_id, "the action's output was still open 2 s after it ended (a descendant outside its process group); the receipt's digests are of what arrived until then");
        }
        if failure.is_some() {
            return Err(ExecError::OutcomeUnknown {
                receipt: Box::new(receipt),
                recorded,
            });
        }
        // The receipt carries the raw status; the answer also says what it means.
        let succeeded = outcome.succeeded(http);
        Ok(json!({
            "status": "executed",
            "succeeded": succeeded,
            "receipt": receipt,
            "outcome_recorded": recorded,
            "output_complete": outcome.output_complete,
            "stdout": String::from_utf8_lossy(&outcome.stdout),
            "stderr": String::from_utf8_lossy(&outcome.stderr),
        }))
    }

    /// Single-use redemption at the broker; the request id of the token.
    async fn redeem(&self, token: &str) -> Result<String, ExecError> {
        let unavailable = |e| ExecError::BrokerUnavailable(self.broker_failure("redemption", &e));
        let mut client = Client::connect(&self.config.broker_url, &self.broker_tls)
            .await
            .map_err(unavailable)?;
        let response = client
            .post_json("/v1/tokens/redeem", &json!({ "token": token }))
            .await
            .map_err(unavailable)?;
        if response.status != 200 {
            let code = response.body["error"]["code"]
                .as_str()
                .unwrap_or("redeem_refused")
                .to_owned();
            let message = response.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if response.status >= 500 {
                return Err(ExecError::BrokerUnavailable(format!("{code}: {message}")));
            }
            return Err(ExecError::RedeemRefused {
                status: response.status,
                code,
                message,
            });
        }
        if let Some(epoch) = response.body["epoch"].as_u64() {
            self.learn_epoch(epoch);
        }
        response.body["request_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ExecError::BrokerUnavailable("redemption without a request id".into()))
    }

    /// Posts the receipt, again after [`REPORT_RETRIES`] when the broker cannot be reached or
    /// answers 5xx: the action has run, and the log should say how it went. A retry that finds
    /// the outcome already recorded (the answer to an earlier attempt was lost) is success.
    /// On failure, whether the broker may still take it, and why.
    async fn report(&self, request_id: &str, receipt: &Receipt) -> Result<(), (bool, String)> {
        let mut waits = REPORT_RETRIES.iter();
        loop {
            match self.report_once(request_id, receipt).await {
                Ok(()) => return Ok(()),
                Err((retry, why)) => match waits.next() {
                    Some(wait) if retry => {
                        tracing::warn!(%request_id, error = %why, "reporting the outcome again in {wait:?}");
                        tokio::time::sleep(*wait).await;
                    }
                    _ => return Err((retry, why)),
                },
            }
        }
    }

    /// Goes on reporting an outcome the broker could not take while the agent waited: every
    /// [`LATE_REPORT_INTERVAL`], for [`LATE_REPORT_FOR`], so that a broker down for longer
    /// than the agent's answer can wait still gets the receipt (no redemption without an
    /// outcome). Lost if the executor stops first; the receipt is in its log.
    fn keep_reporting(self: &Arc<Self>, request_id: String, receipt: Receipt) {
        let executor = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LATE_REPORT_FOR;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(LATE_REPORT_INTERVAL).await;
                match executor.report_once(&request_id, &receipt).await {
                    Ok(()) => {
                        tracing::info!(%request_id, "the broker recorded the outcome after all");
                        return;
                    }
                    Err((true, why)) => {
                        tracing::debug!(%request_id, error = %why, "the outcome is still not recorded");
                    }
                    Err((false, why)) => {
                        tracing::error!(%request_id, error = %why, "the broker refused the outcome");
                        return;
                    }
                }
            }
            tracing::error!(%request_id, "gave up reporting the outcome: post the receipt in the log by hand");
        });
    }

    /// One report; on failure, whether another attempt may succeed, and why.
    async fn report_once(&self, request_id: &str, receipt: &Receipt) -> Result<(), (bool, String)> {
        let mut client = Client::connect(&self.config.broker_url, &self.broker_tls)
            .await
            .map_err(|e| (true, e.to_string()))?;
        let response = client
            .post_json(
                &format!("/v1/executions/{request_id}/outcome"),
                &json!({ "receipt": receipt }),
            )
            .await
            .map_err(|e| (true, e.to_string()))?;
        match response.status {
            201 => Ok(()),
            409 if response.body["error"]["code"] == "outcome_already_recorded" => Ok(()),
            status => Err((status >= 500, format!("{status}: {}", response.text))),
        }
    }

    /// The longest a run may take.
    fn run_deadline(&self) -> Duration {
        self.config
            .actions
            .iter()
            .map(|a| a.timeout)
            .max()
            .unwrap_or_default()
            + OVERHEAD
    }
}

enum Prepared {
    Argv((String, Vec<String>)),
    Http((String, String, Vec<u8>)),
}

/// The certificates of the configured `approvers` file (none without one).
fn read_approvers(config: &ExecutorConfig) -> Result<Vec<Certificate>, String> {
    match &config.approvers {
        Some(path) => Certificate::parse_pem_chain(&read(path)?).map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    }
}
