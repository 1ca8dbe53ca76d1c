//! The broker's own attestation: serving evidence for a caller's nonce, and the periodic
//! self-check that gates issuance (ARCHITECTURE.md §3, §8).
//!
//! Every quote is bound to the broker's own TLS server certificate ([`super::qualifying_data`]),
//! so evidence proves which TLS endpoint it came from. The self-check quotes with a fresh random
//! nonce and runs the same [`super::verify_evidence`] that relying parties run, with its own TLS
//! certificate as the session's (signature, AK chain to our root, binding, same broker, PCR
//! digest, event-log replay, policy). Issuance is allowed only while the latest check passed and is younger than the
//! policy's `max_age` (or three check intervals when the policy sets none). A TPM error is a
//! failed check: fail closed.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::tpm::TpmAttestor;
use super::{
    qualifying_data, verify_evidence, AttestError, AttestPolicy, Attestor, EventLog, Evidence,
    QuoteCheck, SelfCheckReport, MAX_NONCE, MIN_NONCE,
};
use crate::base64url;
use crate::ca::trust_dir::read_certificate;
use crate::cert::Certificate;
use crate::config::Config;
use crate::store::Store;
use crate::time::unix;
use crate::token;
use crate::tpm::Tpm;

/// Everything the broker needs to attest itself.
pub struct AttestationState {
    attestor: Arc<dyn Attestor>,
    policy: AttestPolicy,
    /// [`AttestationState::policy`] without its EK pinning: what the self-check compares (the
    /// EK was checked at enrolment; relying parties check the EK certificate served).
    self_check_policy: AttestPolicy,
    roots: Vec<Certificate>,
    ak_chain: Vec<String>,
    /// The AK certificate of `ak_chain`, parsed once: its expiry is watched.
    ak_certificate: Option<Certificate>,
    ek_certificate: Option<String>,
    /// The TLS server certificate (DER) the broker serves now; `seb rotate tls` changes it
    /// while the broker runs ([`AttestationState::serve_tls_certificate`]).
    tls_certificate: RwLock<Arc<Vec<u8>>>,
    event_log: PathBuf,
    interval: Duration,
    status: Mutex<Status>,
    turns: TpmTurns,
    /// `resetCount` and `restartCount` of the good quotes since the broker started. They are
    /// obfuscated by a per-key offset, but the offset is fixed for this AK, so any change means
    /// the TPM was reset or restarted under the running broker. On real hardware that is a
    /// reboot, which restarts the broker too; under a running broker it is also how a process
    /// that reaches the TPM's controls brings tampered PCRs back to their expected values
    /// (reset, then replay the log). What follows is `on_reset`'s.
    boot_counters: Mutex<Option<(u32, u32)>>,
    on_reset: crate::config::OnTpmReset,
}

impl std::fmt::Debug for AttestationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationState")
            .field("attestor", &self.attestor)
            .field("event_log", &self.event_log)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Clone)]
struct Status {
    checked_at: Option<SystemTime>,
    last_good: Option<(SystemTime, Vec<u8>)>,
    failure: Option<String>,
}

/// How the state is put together (see `seb serve`).
#[derive(Debug)]
pub struct AttestationSetup {
    /// The TPM.
    pub attestor: Arc<dyn Attestor>,
    /// Reference policy.
    pub policy: AttestPolicy,
    /// seb roots (to check our own AK chain exactly as relying parties do).
    pub roots: Vec<Certificate>,
    /// PEM AK certificate (and intermediates), AK first.
    pub ak_chain: Vec<String>,
    /// PEM EK certificate, if the TPM has one.
    pub ek_certificate: Option<String>,
    /// The DER TLS server certificate the broker serves: every quote is bound to it
    /// ([`super::qualifying_data`]), the self-check's included.
    pub tls_certificate: Vec<u8>,
    /// Event log file (seb JSON form).
    pub event_log: PathBuf,
    /// Self-check period.
    pub interval: Duration,
    /// What a TPM reset under the running broker does.
    pub on_reset: crate::config::OnTpmReset,
}

impl AttestationState {
    /// The AK certificate the broker serves in its evidence (read at start): its expiry is
    /// watched like the service certificates'.
    pub fn ak_certificate(&self) -> Option<&Certificate> {
        self.ak_certificate.as_ref()
    }

    /// Builds the state; no check has run yet (issuance is refused until one passes).
    pub fn new(setup: AttestationSetup) -> Self {
        let ak_certificate = setup.ak_chain.first().and_then(|pem| {
            Certificate::parse_pem_chain(pem.as_bytes())
                .ok()?
                .into_iter()
                .next()
        });
        Self {
            attestor: setup.attestor,
            self_check_policy: setup.policy.without_ek_pinning(),
            policy: setup.policy,
            roots: setup.roots,
            ak_chain: setup.ak_chain,
            ak_certificate,
            ek_certificate: setup.ek_certificate,
            tls_certificate: RwLock::new(Arc::new(setup.tls_certificate)),
            event_log: setup.event_log,
            interval: setup.interval,
            status: Mutex::new(Status::default()),
            turns: TpmTurns::default(),
            boot_counters: Mutex::new(None),
            on_reset: setup.on_reset,
        }
    }

    /// Why a self-check `interval` does not fit the policy's `max_age`, if it does not: a
    /// check must pass again before the last good one is `max_age` old, or issuance stops
    /// between checks of a healthy TPM. (A third of `max_age` or less leaves room for a slow
    /// or failed check; between the two is allowed, and `seb check` warns.)
    pub fn interval_problem(interval: Duration, max_age: Option<Duration>) -> Option<String> {
        let max_age = max_age?;
        (interval >= max_age).then(|| {
            format!(
                "the self-check interval ({} s) is not shorter than the policy's max_age ({} s): \
                 issuance would stop between two checks of a healthy TPM; set [attestation] \
                 interval to at most a third of max_age",
                interval.as_secs(),
                max_age.as_secs()
            )
        })
    }

    /// The broker's attestation state from its configuration (`[attestation]`: the TPM, the
    /// attestation key blob, the policy, `trust/ak.pem`, `trust/ek.pem` and the TLS server
    /// certificate `trust/tls.pem` its quotes are bound to), or `None` when the broker does not
    /// attest.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, AttestError> {
        let Some(settings) = &config.attestation else {
            return Ok(None);
        };
        let policy = AttestPolicy::load(&settings.policy).map_err(|e| AttestError::File {
            what: format!("attestation policy {}", settings.policy.display()),
            reason: e.to_string(),
        })?;
        if let Some(reason) = Self::interval_problem(settings.interval, policy.max_age) {
            return Err(AttestError::File {
                what: format!("attestation policy {}", settings.policy.display()),
                reason,
            });
        }
        let tcti = config
            .attestation_tcti()
            .ok_or_else(|| AttestError::Identity("[attestation] names no TPM (tcti)".into()))?;
        let tpm = Tpm::open(&tcti).map_err(|e| AttestError::Tpm {
            operation: "open the TPM",
            source: Box::new(e),
        })?;
        let attestor: Arc<dyn Attestor> = Arc::new(TpmAttestor::open(tpm, &config.ak_blob())?);
        let trust = config.trust_dir();
        let file =
            |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| AttestError::File {
                what: format!("{what} {}", path.display()),
                reason: e.to_string(),
            };
        let root = trust
            .root()
            .map_err(|e| file("root certificate", &trust.root_path(), &e))?;
        let ak_pem = std::fs::read_to_string(trust.ak_path())
            .map_err(|e| file("AK certificate", &trust.ak_path(), &e))?;
        let ek_certificate = std::fs::read_to_string(trust.ek_path()).ok();
        // Encoded exactly as the TLS server sends it (`server::tls::broker_server_config`).
        let tls_certificate = read_certificate(&trust.tls_path())
            .map_err(|e| file("TLS certificate", &trust.tls_path(), &e))?
            .to_der_bytes()
            .map_err(|e| file("TLS certificate", &trust.tls_path(), &e))?;
        Ok(Some(Arc::new(Self::new(AttestationSetup {
            attestor,
            policy,
            roots: vec![root],
            ak_chain: vec![ak_pem],
            ek_certificate,
            tls_certificate,
            event_log: settings.event_log.clone(),
            interval: settings.interval,
            on_reset: settings.on_tpm_reset,
        }))))
    }

    /// Runs the self-check now and then every interval on a dedicated thread (the TPM
    /// blocks). Every change between passing and failing is recorded durably in the store's
    /// event record (`attestation_failed` with the reason, `attestation_restored`).
    pub fn start_self_check(self: Arc<Self>, store: Arc<dyn Store>) {
        let revocations = store.clone();
        let transitions = Arc::new(Mutex::new(Transitions {
            store,
            passing: None,
            recorded_reason: None,
        }));
        let first = self.self_check_with(Some(revocations.as_ref()));
        match &first {
            Err(reason) => {
                tracing::error!(%reason, "attestation self-check at start failed; issuance refused until it passes")
            }
            Ok(()) => {
                tracing::info!(policy = %self.policy_id(), "attestation self-check at start passed")
            }
        }
        lock(&transitions).observe(&first);
        let interval = self.interval().max(Duration::from_secs(1));
        let (checker, checked) = (self.clone(), transitions.clone());
        let spawned = std::thread::Builder::new()
            .name("seb-attest".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let outcome = checker.self_check_with(Some(revocations.as_ref()));
                lock(&checked).observe(&outcome);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the self-check thread; issuance will stop when the last check ages out");
        }
        // A check that never returns (a TPM that hangs) records nothing by itself: once the
        // last good check is too old, this records the failure (once), and the check that
        // finally returns records what follows.
        let watched = std::thread::Builder::new()
            .name("seb-attest-watch".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                if let Err(Refusal::Overdue(age)) = self.current() {
                    tracing::error!(reason = %age, "attestation self-check overdue; issuance refused");
                    // One fixed reason (the age in the refusal grows every tick), so that the
                    // failure is recorded once.
                    lock(&transitions).observe(&Err(OVERDUE.to_owned()));
                }
            });
        if let Err(e) = watched {
            tracing::error!(error = %e, "cannot start the self-check watchdog");
        }
    }

    /// The self-check period.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Binds the quotes from now on to `der`, the TLS server certificate the broker has just
    /// started serving (after `seb rotate tls`; `seb serve` calls this when its TLS layer
    /// switches). A relying party whose connection was opened before the switch sees the old
    /// certificate and gets `tls_binding_mismatch` until it reconnects: fail closed.
    pub fn serve_tls_certificate(&self, der: Vec<u8>) {
        let mut current = self
            .tls_certificate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current != der {
            tracing::info!(
                sha256 = %hex::encode(Sha256::digest(&der)),
                "quotes are bound to the new TLS certificate"
            );
            *current = Arc::new(der);
        }
    }

    /// The TLS server certificate (DER) quotes are bound to now.
    pub fn tls_certificate(&self) -> Arc<Vec<u8>> {
        self.tls_certificate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A fresh quote over the policy's PCRs for `nonce`, bound to the broker's TLS certificate
    /// ([`super::qualifying_data`]), with everything needed to verify it.
    ///
    /// For callers (`GET /v1/attestation`): the quote waits its turn on the TPM behind the
    /// self-check, at most [`CALLER_WAIT`], and is refused as [`AttestError::Busy`] after that.
    /// Callers can therefore never delay the self-check past its age limit and stop issuance.
    pub fn evidence(&self, nonce: &[u8]) -> Result<Evidence, AttestError> {
        let _turn = self.turns.caller(CALLER_WAIT).ok_or(AttestError::Busy)?;
        self.quote_evidence(nonce, &self.tls_certificate())
    }

    /// A quote for `nonce` bound to `tls_certificate` (DER).
    fn quote_evidence(
        &self,
        nonce: &[u8],
        tls_certificate: &[u8],
    ) -> Result<Evidence, AttestError> {
        if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
            return Err(AttestError::Nonce(nonce.len()));
        }
        let log = self.read_event_log()?;
        let raw = self.attestor.quote(
            &qualifying_data(nonce, tls_certificate),
            self.policy.bank,
            &self.policy.pcrs,
        )?;
        Ok(Evidence {
            nonce: hex::encode(nonce),
            tls_certificate_sha256: hex::encode(Sha256::digest(tls_certificate)),
            quote: base64url::encode(&raw.attest),
            signature: base64url::encode(&raw.signature),
            pcr_bank: self.policy.bank,
            pcrs: super::hex_pcrs(&raw.pcrs),
            ak_chain: self.ak_chain.clone(),
            ek_certificate: self.ek_certificate.clone(),
            event_log: log,
            self_check: Some(self.report()),
        })
    }

    /// Quotes with a random nonce and verifies the result against the policy; records the
    /// outcome. Returns the failure reason, if any.
    pub fn self_check(&self) -> Result<(), String> {
        self.self_check_with(None)
    }

    /// [`Self::self_check`], and with the broker's `store`, that the attestation key's
    /// certificate is not revoked there: a revoked AK (`seb cert revoke` of the serial of
    /// `trust/ak.pem`) stops attested issuance like a failed quote, until a new one is enrolled.
    fn self_check_with(&self, store: Option<&dyn Store>) -> Result<(), String> {
        let outcome = self.check_once(SystemTime::now()).and_then(|digest| {
            match (store, &self.ak_certificate) {
                (Some(store), Some(ak)) => {
                    let serial = crate::serial::Serial::of(ak)
                        .map_err(|e| format!("the AK certificate's serial: {e}"))?;
                    match store.is_revoked(&serial) {
                        Ok(false) => Ok(digest),
                        Ok(true) => Err(format!(
                            "the attestation key's certificate (serial {serial}) is revoked: \
                             enrol a new one (`seb attest enroll`) and restart the broker"
                        )),
                        Err(e) => Err(format!(
                            "cannot read whether the attestation key's certificate is revoked: {e}"
                        )),
                    }
                }
                _ => Ok(digest),
            }
        });
        // Stamped when the check ends: a check the TPM held up for a while measured the state
        // of when it answered, and must not count as already overdue (which would record a
        // recovery while issuance is still refused).
        let now = SystemTime::now();
        let mut status = match self.status.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        status.checked_at = Some(now);
        match &outcome {
            Ok(digest) => {
                if status.failure.is_some() {
                    tracing::warn!("attestation self-check passes again; issuance resumes");
                }
                status.last_good = Some((now, digest.clone()));
                status.failure = None;
            }
            Err(reason) => {
                if status.failure.is_none() {
                    tracing::error!(%reason, "attestation self-check failed; issuance stops");
                }
                status.failure = Some(reason.clone());
            }
        }
        outcome.map(|_| ())
    }

    fn check_once(&self, now: SystemTime) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        // One certificate for the quote and its check, even if a rotation lands in between.
        let tls_certificate = self.tls_certificate();
        let evidence = {
            let _turn = self.turns.self_check();
            self.quote_evidence(&nonce, &tls_certificate)
        }
        .map_err(|e| {
            // The operator's log gets the whole chain (TPM response codes); clients only the
            // top-level reason.
            tracing::warn!(error = %error_chain(&e), "attestation self-check could not quote");
            e.to_string()
        })?;
        // The EK was checked at enrolment, and relying parties check the EK certificate this
        // broker serves against its AK certificate; the self-check compares the boot state.
        // (So an AK certificate enrolled before seb bound the EK keeps the broker issuing;
        // `seb check` says to enrol again.)
        let check = QuoteCheck {
            nonce: &nonce,
            tls_certificate: &tls_certificate,
            roots: &self.roots,
            policy: &self.self_check_policy,
            now,
        };
        // Our own report's age is not what is being checked here.
        let evidence = Evidence {
            self_check: None,
            ek_certificate: None,
            ..evidence
        };
        let verified = verify_evidence(&evidence, &check).map_err(|e| e.to_string())?;
        let counters = (verified.info.reset_count, verified.info.restart_count);
        let mut first = self
            .boot_counters
            .lock()
            .map_err(|_| "attestation state poisoned".to_owned())?;
        match (*first, self.on_reset) {
            (None, _) => *first = Some(counters),
            (Some(seen), crate::config::OnTpmReset::Stop) if seen != counters => {
                return Err(
                    "the TPM was reset or restarted under the running broker (its resetCount or \
                     restartCount changed): PCR values may have been replayed. Check the host, \
                     then restart seb serve"
                        .into(),
                )
            }
            (Some(seen), crate::config::OnTpmReset::Resume) if seen != counters => {
                // Logged as a failed check; the next one goes on from the new counters.
                *first = Some(counters);
                return Err(
                    "the TPM was reset or restarted under the running broker (its resetCount or \
                     restartCount changed); its PCRs are checked again from now on \
                     (on_tpm_reset = \"resume\")"
                        .into(),
                );
            }
            (Some(_), _) => {}
        }
        Ok(verified.info.pcr_digest)
    }

    /// The `att` claim for a token being minted now, or why issuance must stop.
    pub fn current(&self) -> Result<token::Attestation, Refusal> {
        let status = self
            .status
            .lock()
            .map_err(|_| Refusal::Failed("attestation state poisoned".to_owned()))?
            .clone();
        if let Some(reason) = status.failure {
            return Err(Refusal::Failed(format!(
                "attestation self-check failed: {reason}"
            )));
        }
        let (at, digest) = status.last_good.ok_or_else(|| {
            Refusal::Failed("no attestation self-check has passed yet".to_owned())
        })?;
        let max_age = self.policy.max_age.unwrap_or(self.interval * 3);
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        if age > max_age {
            return Err(Refusal::Overdue(format!(
                "{OVERDUE}: the last good one is {} s old (limit {} s)",
                age.as_secs(),
                max_age.as_secs()
            )));
        }
        Ok(token::Attestation {
            pcr_digest: base64url::encode(&digest),
            time: unix(at),
        })
    }

    /// The latest outcome, for evidence and `/healthz`.
    pub fn report(&self) -> SelfCheckReport {
        let status = match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let current = self.current();
        SelfCheckReport {
            ok: current.is_ok(),
            checked_at: status.checked_at.map_or(0, unix),
            last_good: status.last_good.as_ref().map(|(t, _)| unix(*t)),
            reason: current.err().map(|r| r.to_string()),
        }
    }

    /// A digest identifying the reference policy in logs.
    pub fn policy_id(&self) -> String {
        let text = format!("{:?}", self.policy);
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }

    fn read_event_log(&self) -> Result<EventLog, AttestError> {
        let bytes = std::fs::read(&self.event_log).map_err(|e| AttestError::File {
            what: format!("event log {}", self.event_log.display()),
            reason: e.to_string(),
        })?;
        EventLog::from_json(&bytes).map_err(|reason| AttestError::File {
            what: format!("event log {}", self.event_log.display()),
            reason,
        })
    }
}

/// Longest a caller's quote waits for its turn on the TPM.
pub const CALLER_WAIT: Duration = Duration::from_secs(2);

/// Turns on the TPM for quotes, the self-check first: while a self-check waits or runs, no
/// caller's quote starts. Each quote holds the TPM for its whole duration (a few ms on swtpm,
/// tens to hundreds on a discrete TPM), so without this a steady stream of callers could keep
/// the self-check waiting until its result ages out.
#[derive(Debug, Default)]
struct TpmTurns {
    state: Mutex<Turns>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Turns {
    busy: bool,
    self_check_waiting: bool,
}

/// A turn on the TPM, given back on drop.
struct Turn<'a>(&'a TpmTurns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy = false;
        drop(state);
        self.0.changed.notify_all();
    }
}

impl TpmTurns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        // The state is two flags; a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The self-check's turn: ahead of every caller that is not already quoting.
    fn self_check(&self) -> Turn<'_> {
        let mut state = self.lock();
        state.self_check_waiting = true;
        while state.busy {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.busy = true;
        state.self_check_waiting = false;
        Turn(self)
    }

    /// A caller's turn, once neither a quote is running nor the self-check is waiting; `None`
    /// after `wait`.
    fn caller(&self, wait: Duration) -> Option<Turn<'_>> {
        let deadline = std::time::Instant::now() + wait;
        let mut state = self.lock();
        while state.busy || state.self_check_waiting {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.busy = true;
        Some(Turn(self))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The reason recorded when a self-check is overdue.
const OVERDUE: &str =
    "attestation self-check overdue: none has finished within the policy's max_age";

/// Why issuance must stop ([`AttestationState::current`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A self-check failed, or none has passed yet.
    Failed(String),
    /// The last good check is older than the policy allows and none has failed since: one is
    /// overdue (the TPM does not answer).
    Overdue(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Failed(reason) | Refusal::Overdue(reason) => f.write_str(reason),
        }
    }
}

/// Records every change between passing and failing in the store's event record
/// (`attestation_failed` with the reason, `attestation_restored`), and a failure again
/// whenever its reason changes (the TPM unreachable, then back but reset: both are worth a
/// line in the log).
struct Transitions {
    store: Arc<dyn Store>,
    passing: Option<bool>,
    recorded_reason: Option<String>,
}

impl Transitions {
    fn observe(&mut self, outcome: &Result<(), String>) {
        let kind_detail = match (self.passing, outcome) {
            (Some(false), Ok(())) => Some(("attestation_restored", String::new())),
            (None | Some(true), Err(reason)) => Some(("attestation_failed", reason.clone())),
            (Some(false), Err(reason)) if self.recorded_reason.as_ref() != Some(reason) => {
                Some(("attestation_failed", reason.clone()))
            }
            _ => None,
        };
        self.passing = Some(outcome.is_ok());
        if let Some((kind, detail)) = kind_detail {
            self.recorded_reason = outcome.as_ref().err().cloned();
            if let Err(e) = self.store.record_event(kind, &detail, SystemTime::now()) {
                tracing::error!(error = %e, kind, "cannot record the attestation event in the store");
            }
        }
    }
}

fn lock(t: &Mutex<Transitions>) -> std::sync::MutexGuard<'_, Transitions> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_waiting_self_check_goes_before_callers_who_came_later() {
        let turns = Arc::new(TpmTurns::default());
        let first = turns.caller(Duration::from_secs(1)).unwrap();
        let (order_tx, order) = mpsc::channel();
        let self_check = {
            let (turns, order_tx) = (turns.clone(), order_tx.clone());
            std::thread::spawn(move || {
                let _turn = turns.self_check();
                order_tx.send("self-check").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        while !turns.lock().self_check_waiting {
            std::thread::yield_now();
        }
        let later_caller = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let _turn = turns.caller(Duration::from_secs(5)).unwrap();
                order_tx.send("caller").unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        self_check.join().unwrap();
        later_caller.join().unwrap();
        let seen: Vec<_> = order.try_iter().collect();
        assert_eq!(seen, ["self-check", "caller"]);
    }

    #[test]
    fn a_caller_gives_up_after_its_wait() {
        let turns = TpmTurns::default();
        let _busy = turns.caller(Duration::from_secs(1)).unwrap();
        let started = std::time::Instant::now();
        assert!(turns.caller(Duration::from_millis(50)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
