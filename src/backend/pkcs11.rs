//! PKCS#11 key backend over `cryptoki` (SoftHSM2 in development and CI, any PKCS#11 HSM in
//! production).
//!
//! One `Pkcs11` context per backend (and so per process), initialised with OS locking; one
//! anchor session that holds the login for the life of the context; a fixed pool of sessions
//! so several threads can sign at once. Any session or device fault rebuilds the whole context
//! (finalise, initialise, log in again) once the in-flight users of the old one are done, then
//! the operation is retried once. A token that disappears and comes back is therefore picked
//! up again on the next call.
//!
//! This module never asks the device for private key bytes: keys are generated with
//! CKA_SENSITIVE=true and CKA_EXTRACTABLE=false and only ever used through C_Sign.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use der::Encode;
use secrecy::SecretString;

use super::{BackendError, KeyAlgorithm, KeyBackend, KeyProtection, PublicKey, Signature};

mod device;

use device::Device;

/// DER of the named-curve OID for P-256 (1.2.840.10045.3.1.7), as CKA_EC_PARAMS holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the named-curve OID for P-384 (1.3.132.0.34).
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// How long a context rebuild waits for in-flight operations on the old context to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which token to use: by label, and optionally also by serial number. Never by slot id.
#[derive(Clone, Debug)]
pub struct TokenSelector {
    /// CKA token label.
    pub label: String,
    /// Token serial number, when several tokens could share a label.
    pub serial: Option<String>,
}

/// Everything the backend needs, already resolved (the PIN read from its file or variable).
pub struct Pkcs11Settings {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token to use.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: SecretString,
    /// Sessions in the signing pool (at least 1).
    pub sessions: usize,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin", &"[redacted]")
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// A PKCS#11 token holding the broker's keys.
pub struct Pkcs11Backend {
    settings: Pkcs11Settings,
    device: RwLock<Option<Arc<Device>>>,
    generation: Mutex<u64>,
    /// Set once the device refused the PIN (wrong or locked): it is never offered again by
    /// this process. Many HSMs lock the user PIN after a few failures, and a broker that
    /// logged in again on every request after a reconnect would lock it within seconds.
    pin_refused: Mutex<Option<PinRefusal>>,
    /// Held around every call when the module cannot take concurrent calls safely
    /// ([`one_call_at_a_time`]).
    turn: Option<Mutex<()>>,
}

/// Whether calls into `module` must be made one at a time. p11-kit's client module (a network
/// HSM behind `p11-kit server`) sends every thread's calls over one connection, and a
/// connection cut while one thread's answer is half read leaves the other threads waiting on
/// it for ever (seen as signing threads that never return after an HSM came back). Its server
/// answers one call at a time per connection anyway, so this costs nothing there.
fn one_call_at_a_time(module: &std::path::Path) -> bool {
    module
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("p11-kit-client"))
}

/// Why the device refused the PIN.
#[derive(Clone, Copy, Debug)]
enum PinRefusal {
    Incorrect,
    Locked,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Loads the module, finds the token and logs in. Fails if any of that fails.
    pub fn open(settings: Pkcs11Settings) -> Result<Self, BackendError> {
        let turn = one_call_at_a_time(&settings.module).then(|| Mutex::new(()));
        let backend = Self {
            settings,
            device: RwLock::new(None),
            generation: Mutex::new(0),
            pin_refused: Mutex::new(None),
            turn,
        };
        backend.device()?;
        Ok(backend)
    }

    /// Logs the application out of the token behind the backend's back, as a token reset
    /// would, so that tests can show the pool recovers. Not for production use.
    #[doc(hidden)]
    pub fn debug_logout(&self) -> Result<(), BackendError> {
        let device = self.device()?;
        let anchor = device.anchor.lock().map_err(|_| poisoned())?;
        anchor.logout().map_err(|e| unavailable("logout", e))
    }

    /// Runs `op` against the current device, rebuilding the context and retrying once after a
    /// session or device fault.
    fn with_device<T>(
        &self,
        operation: &'static str,
        op: impl Fn(&Device) -> Result<T, Failure>,
    ) -> Result<T, BackendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Held for the whole attempt, the connect and a rebuild after a fault included
            // (finalising is a call too), and taken before the device: nobody waiting for a
            // turn holds the context a rebuild drains, so the drain is immediate.
            let _turn = self
                .turn
                .as_ref()
                .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()));
            let device = self.device()?;
            match op(&device) {
                Ok(value) => return Ok(value),
                Err(Failure::Backend(err)) => return Err(err),
                Err(Failure::Ck(what, err)) if is_recoverable(&err) => {
                    tracing::warn!(operation, what, error = %err, attempt, "PKCS#11 fault; rebuilding the context");
                    let generation = device.generation;
                    drop(device);
                    self.reset(generation);
                    if attempt >= 2 {
                        return Err(unavailable(operation, err));
                    }
                }
                Err(Failure::Ck(_, err)) => return Err(device_error(operation, err)),
            }
        }
    }

    /// The connected device, connecting first if there is none.
    fn device(&self) -> Result<Arc<Device>, BackendError> {
        if let Some(device) = self.device.read().map_err(|_| poisoned())?.as_ref() {
            return Ok(device.clone());
        }
        let mut slot = self.device.write().map_err(|_| poisoned())?;
        if let Some(device) = slot.as_ref() {
            return Ok(device.clone());
        }
        let mut refused = self.pin_refused.lock().map_err(|_| poisoned())?;
        match *refused {
            Some(PinRefusal::Incorrect) => return Err(BackendError::PinIncorrect),
            Some(PinRefusal::Locked) => return Err(BackendError::PinLocked),
            None => {}
        }
        let generation = {
            let mut g = self.generation.lock().map_err(|_| poisoned())?;
            *g += 1;
            *g
        };
        let device = match Device::connect(&self.settings, generation) {
            Ok(device) => Arc::new(device),
            Err(e) => {
                *refused = match e {
                    BackendError::PinIncorrect => Some(PinRefusal::Incorrect),
                    BackendError::PinLocked => Some(PinRefusal::Locked),
                    _ => None,
                };
                return Err(e);
            }
        };
        drop(refused);
        *slot = Some(device.clone());
        Ok(device)
    }

    /// Tears down the context of `generation` (if it is still the current one) after its
    /// in-flight users are done, so that the next call connects afresh.
    fn reset(&self, generation: u64) {
        let old = match self.device.write() {
            Ok(mut slot) => match slot.as_ref() {
                Some(d) if d.generation == generation => slot.take(),
                _ => None,
            },
            Err(_) => None,
        };
        let Some(old) = old else { return };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(device) => {
                    device.shutdown();
                    return;
                }
                Err(still_shared) if Instant::now() < deadline => {
                    old = still_shared;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => {
                    // Someone still holds the old context; leave it (its sessions die with it)
                    // rather than finalise the library under their feet.
                    tracing::error!(
                        "PKCS#11 context still in use after drain timeout; not finalising"
                    );
                    return;
                }
            }
        }
    }
}

impl KeyBackend for Pkcs11Backend {
    fn generate(&self, label: &str, algorithm: KeyAlgorithm) -> Result<PublicKey, BackendError> {
        self.with_device("generate key", |device| device.generate(label, algorithm))
    }

    fn public_key(&self, label: &str) -> Result<PublicKey, BackendError> {
        self.with_device("read public key", |device| {
            device.key(label).map(|entry| entry.public.clone())
        })
    }

    fn contains(&self, label: &str) -> Result<bool, BackendError> {
        self.with_device("find key", |device| match device.key(label) {
            Ok(_) => Ok(true),
            Err(Failure::Backend(BackendError::KeyNotFound { .. })) => Ok(false),
            Err(other) => Err(other),
        })
    }

    fn sign_digest(&self, label: &str, digest: &[u8]) -> Result<Signature, BackendError> {
        self.with_device("sign", |device| device.sign(label, digest))
    }

    fn protection(&self, label: &str) -> Result<KeyProtection, BackendError> {
        self.with_device("read key attributes", |device| device.protection(label))
    }

    fn ping(&self) -> Result<(), BackendError> {
        self.with_device("ping", |device| {
            let session = device
                .anchor
                .lock()
                .map_err(|_| Failure::Backend(poisoned()))?;
            session
                .get_session_info()
                .map_err(|e| Failure::Ck("session info", e))?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        match self.device() {
            Ok(device) => device.description.clone(),
            Err(_) => format!(
                "pkcs11 token {:?} (not connected)",
                self.settings.token.label
            ),
        }
    }
}

/// Internal failure: either a PKCS#11 return code (which may call for a context rebuild) or
/// an error that is already final.
enum Failure {
    Ck(&'static str, CkError),
    Backend(BackendError),
}

/// Faults after which the context is rebuilt: sessions that are gone, a login that is gone,
/// a device that went away, or cached object handles that no longer name an object (the token
/// was reloaded).
fn is_recoverable(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

fn unavailable(operation: &'static str, err: CkError) -> BackendError {
    BackendError::Unavailable {
        operation,
        source: Box::new(err),
    }
}

fn device_error(operation: &'static str, err: CkError) -> BackendError {
    BackendError::Device {
        operation,
        source: Box::new(err),
    }
}

fn poisoned() -> BackendError {
    BackendError::Device {
        operation: "lock",
        source: "a thread panicked while holding the device lock".into(),
    }
}

/// Encodes a curve OID as CKA_EC_PARAMS holds it; used by tests to check the constants.
#[doc(hidden)]
pub fn ec_params_der(oid: &str) -> Option<Vec<u8>> {
    der::asn1::ObjectIdentifier::new(oid).ok()?.to_der().ok()
}

#[cfg(test)]
mod tests;
