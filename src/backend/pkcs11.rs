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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::{Decode, Encode};
use secrecy::{ExposeSecret, SecretString};

use super::{BackendError, KeyAlgorithm, KeyBackend, KeyProtection, PublicKey, Signature};

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
        let backend = Self {
            settings,
            device: RwLock::new(None),
            generation: Mutex::new(0),
            pin_refused: Mutex::new(None),
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

/// One initialised PKCS#11 context, logged in, with its session pool and key handle cache.
struct Device {
    generation: u64,
    ctx: Pkcs11,
    slot: Slot,
    description: String,
    /// Holds the login; also used for object management (generate, find, attributes).
    anchor: Mutex<Session>,
    pool: Mutex<Vec<Session>>,
    returned: Condvar,
    /// Set when a pool session failed and no fresh one could be opened: the device is gone,
    /// and threads waiting for a session must not wait for one that will never come back.
    broken: AtomicBool,
    keys: Mutex<HashMap<String, KeyEntry>>,
}

#[derive(Clone)]
struct KeyEntry {
    private: ObjectHandle,
    public: PublicKey,
}

/// A logged-in token on a context that is not yet owned by a [`Device`].
struct Opened {
    generation: u64,
    slot: Slot,
    description: String,
    anchor: Session,
    pool: Vec<Session>,
}

impl Opened {
    fn finish(self, ctx: Pkcs11) -> Device {
        Device {
            generation: self.generation,
            ctx,
            slot: self.slot,
            description: self.description,
            anchor: Mutex::new(self.anchor),
            pool: Mutex::new(self.pool),
            returned: Condvar::new(),
            broken: AtomicBool::new(false),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

/// Internal failure: either a PKCS#11 return code (which may call for a context rebuild) or
/// an error that is already final.
enum Failure {
    Ck(&'static str, CkError),
    Backend(BackendError),
}

impl Device {
    fn connect(settings: &Pkcs11Settings, generation: u64) -> Result<Self, BackendError> {
        let ctx = Pkcs11::new(&settings.module).map_err(|e| BackendError::LoadModule {
            module: settings.module.display().to_string(),
            source: Box::new(e),
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(unavailable("C_Initialize", e)),
        }
        match Self::open_on(&ctx, settings, generation) {
            Ok(parts) => Ok(parts.finish(ctx)),
            Err(e) => {
                // Finalise what was initialised: a network module (p11-kit's client) keeps a
                // dead connection, and CKR_DEVICE_REMOVED with it, until C_Finalize.
                if let Err(fin) = ctx.finalize() {
                    tracing::warn!(error = %fin, "C_Finalize failed after a failed connect");
                }
                Err(e)
            }
        }
    }

    /// Finds the token, logs in and opens the pool on an initialised context.
    fn open_on(
        ctx: &Pkcs11,
        settings: &Pkcs11Settings,
        generation: u64,
    ) -> Result<Opened, BackendError> {
        let slot = find_slot(ctx, &settings.token)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| unavailable("read token info", e))?;
        let description = format!(
            "pkcs11 token {:?} serial {} ({} {})",
            info.label(),
            info.serial_number(),
            info.manufacturer_id(),
            info.model()
        );
        let anchor = ctx
            .open_rw_session(slot)
            .map_err(|e| unavailable("open anchor session", e))?;
        let pin = cryptoki::types::AuthPin::from(settings.pin.expose_secret());
        match anchor.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(BackendError::PinIncorrect)
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => return Err(BackendError::PinLocked),
            Err(e) => return Err(unavailable("login", e)),
        }
        let mut pool = Vec::with_capacity(settings.sessions.max(1));
        for _ in 0..settings.sessions.max(1) {
            pool.push(
                ctx.open_ro_session(slot)
                    .map_err(|e| unavailable("open pool session", e))?,
            );
        }
        tracing::info!(%description, sessions = pool.len(), "connected to PKCS#11 token");
        Ok(Opened {
            generation,
            slot,
            description,
            anchor,
            pool,
        })
    }

    /// Closes every session and finalises the library, so a later connect starts clean.
    fn shutdown(self) {
        let Device {
            ctx, anchor, pool, ..
        } = self;
        drop(pool);
        drop(anchor);
        if let Err(e) = ctx.finalize() {
            tracing::warn!(error = %e, "C_Finalize failed during context rebuild");
        }
    }

    fn generate(&self, label: &str, algorithm: KeyAlgorithm) -> Result<PublicKey, Failure> {
        let session = self
            .anchor
            .lock()
            .map_err(|_| Failure::Backend(poisoned()))?;
        let existing = find(&session, label, ObjectClass::PRIVATE_KEY)?.len()
            + find(&session, label, ObjectClass::PUBLIC_KEY)?.len();
        if existing > 0 {
            return Err(Failure::Backend(BackendError::KeyExists {
                label: label.to_owned(),
            }));
        }
        let params = match algorithm {
            KeyAlgorithm::EcP256 => P256_PARAMS,
            KeyAlgorithm::EcP384 => P384_PARAMS,
        };
        let id = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
            Attribute::EcParams(params.to_vec()),
            Attribute::Verify(true),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        let (public, _private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| Failure::Ck("C_GenerateKeyPair", e))?;
        let key = read_public_key(&session, public, label)?;
        tracing::info!(label, %algorithm, "generated key pair inside the token");
        Ok(key)
    }

    /// The cached handle and public key for `label`, looked up on first use.
    fn key(&self, label: &str) -> Result<KeyEntry, Failure> {
        if let Some(entry) = self
            .keys
            .lock()
            .map_err(|_| Failure::Backend(poisoned()))?
            .get(label)
        {
            return Ok(entry.clone());
        }
        let session = self
            .anchor
            .lock()
            .map_err(|_| Failure::Backend(poisoned()))?;
        let private = single(find(&session, label, ObjectClass::PRIVATE_KEY)?, label)?;
        let public = single(find(&session, label, ObjectClass::PUBLIC_KEY)?, label)?;
        let entry = KeyEntry {
            private,
            public: read_public_key(&session, public, label)?,
        };
        drop(session);
        self.keys
            .lock()
            .map_err(|_| Failure::Backend(poisoned()))?
            .insert(label.to_owned(), entry.clone());
        Ok(entry)
    }

    fn sign(&self, label: &str, digest: &[u8]) -> Result<Signature, Failure> {
        let entry = self.key(label)?;
        let algorithm = entry.public.algorithm();
        if digest.len() != algorithm.digest_len() {
            return Err(Failure::Backend(BackendError::DigestLength {
                algorithm,
                expected: algorithm.digest_len(),
                got: digest.len(),
            }));
        }
        let session = self.checkout()?;
        let result = session.sign(&Mechanism::Ecdsa, entry.private, digest);
        match result {
            Ok(raw) => {
                self.checkin(session);
                Signature::from_raw(algorithm, &raw).map_err(Failure::Backend)
            }
            Err(e) => {
                // A session that failed is not trusted again; it is closed on drop and the
                // pool refilled by the next context rebuild if the fault was fatal, or now.
                drop(session);
                match self.ctx.open_ro_session(self.slot) {
                    Ok(fresh) => self.checkin(fresh),
                    Err(_) => {
                        self.broken.store(true, Ordering::SeqCst);
                        // Take the lock so no waiter misses the flag between its check and
                        // its wait.
                        let _pool = self.pool.lock();
                        self.returned.notify_all();
                    }
                }
                Err(Failure::Ck("C_Sign", e))
            }
        }
    }

    fn protection(&self, label: &str) -> Result<KeyProtection, Failure> {
        let entry = self.key(label)?;
        let session = self
            .anchor
            .lock()
            .map_err(|_| Failure::Backend(poisoned()))?;
        let attributes = session
            .get_attributes(
                entry.private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(|e| Failure::Ck("C_GetAttributeValue", e))?;
        let mut protection = KeyProtection {
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            private_value_readable: true,
        };
        for attribute in attributes {
            match attribute {
                Attribute::Sensitive(v) => protection.sensitive = v,
                Attribute::Extractable(v) => protection.extractable = v,
                Attribute::AlwaysSensitive(v) => protection.always_sensitive = v,
                Attribute::NeverExtractable(v) => protection.never_extractable = v,
                _ => {}
            }
        }
        // Ask only for the *size* of CKA_VALUE: a sensitive key answers "sensitive" and no
        // byte of the key is ever transferred.
        let info = session
            .get_attribute_info(entry.private, &[AttributeType::Value])
            .map_err(|e| Failure::Ck("C_GetAttributeValue(size)", e))?;
        protection.private_value_readable =
            matches!(info.first(), Some(AttributeInfo::Available(_)));
        Ok(protection)
    }

    fn checkout(&self) -> Result<Session, Failure> {
        let mut pool = self.pool.lock().map_err(|_| Failure::Backend(poisoned()))?;
        loop {
            if let Some(session) = pool.pop() {
                return Ok(session);
            }
            if self.broken.load(Ordering::SeqCst) {
                return Err(Failure::Ck(
                    "C_OpenSession",
                    CkError::Pkcs11(RvError::DeviceRemoved, cryptoki::context::Function::Sign),
                ));
            }
            pool = self
                .returned
                .wait(pool)
                .map_err(|_| Failure::Backend(poisoned()))?;
        }
    }

    fn checkin(&self, session: Session) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(session);
            self.returned.notify_one();
        }
    }
}

fn find_slot(ctx: &Pkcs11, selector: &TokenSelector) -> Result<Slot, BackendError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| unavailable("list slots", e))?;
    let mut matches = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| unavailable("read token info", e))?;
        let label_ok = info.label().trim_end() == selector.label;
        let serial_ok = selector
            .serial
            .as_deref()
            .is_none_or(|s| info.serial_number().trim_end() == s);
        if label_ok && serial_ok {
            matches.push(slot);
        }
    }
    match matches.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(BackendError::TokenNotFound {
            label: selector.label.clone(),
        }),
        _ => Err(BackendError::Device {
            operation: "select token",
            source: format!(
                "{} tokens are labelled {:?}; set token_serial to choose one",
                matches.len(),
                selector.label
            )
            .into(),
        }),
    }
}

fn find(session: &Session, label: &str, class: ObjectClass) -> Result<Vec<ObjectHandle>, Failure> {
    session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| Failure::Ck("C_FindObjects", e))
}

fn single(handles: Vec<ObjectHandle>, label: &str) -> Result<ObjectHandle, Failure> {
    match handles.as_slice() {
        [one] => Ok(*one),
        [] => Err(Failure::Backend(BackendError::KeyNotFound {
            label: label.to_owned(),
        })),
        _ => Err(Failure::Backend(BackendError::AmbiguousKey {
            label: label.to_owned(),
        })),
    }
}

fn read_public_key(
    session: &Session,
    handle: ObjectHandle,
    label: &str,
) -> Result<PublicKey, Failure> {
    let attributes = session
        .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| Failure::Ck("C_GetAttributeValue", e))?;
    let mut params = None;
    let mut point = None;
    for attribute in attributes {
        match attribute {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let unsupported = || {
        Failure::Backend(BackendError::UnsupportedKey {
            label: label.to_owned(),
        })
    };
    let algorithm = match params.as_deref() {
        Some(P256_PARAMS) => KeyAlgorithm::EcP256,
        Some(P384_PARAMS) => KeyAlgorithm::EcP384,
        _ => return Err(unsupported()),
    };
    let point = point.ok_or_else(unsupported)?;
    // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point (PKCS#11 v2.40 §2.3.3).
    let sec1 = der::asn1::OctetString::from_der(&point)
        .map(|os| os.as_bytes().to_vec())
        .map_err(|_| Failure::Backend(BackendError::MalformedPublicKey))?;
    PublicKey::from_sec1(algorithm, &sec1).map_err(Failure::Backend)
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
