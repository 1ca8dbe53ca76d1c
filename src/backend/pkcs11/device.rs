//! One initialised PKCS#11 context: the token found by label (and serial), the login on its
//! anchor session, the pool of signing sessions, and the keys on it (generated, looked up and
//! cached, used through C_Sign). A fault is reported as a [`Failure`]; rebuilding the context
//! after one is the backend's job, not this module's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::Decode;
use secrecy::ExposeSecret;

use super::{
    poisoned, unavailable, Failure, Pkcs11Settings, TokenSelector, P256_PARAMS, P384_PARAMS,
};
use crate::backend::{BackendError, KeyAlgorithm, KeyProtection, PublicKey, Signature};

/// One initialised PKCS#11 context, logged in, with its session pool and key handle cache.
pub(super) struct Device {
    pub(super) generation: u64,
    ctx: Pkcs11,
    slot: Slot,
    pub(super) description: String,
    /// Holds the login; also used for object management (generate, find, attributes).
    pub(super) anchor: Mutex<Session>,
    pool: Mutex<Vec<Session>>,
    returned: Condvar,
    /// Set when a pool session failed and no fresh one could be opened: the device is gone,
    /// and threads waiting for a session must not wait for one that will never come back.
    broken: AtomicBool,
    keys: Mutex<HashMap<String, KeyEntry>>,
}

#[derive(Clone)]
pub(super) struct KeyEntry {
    private: ObjectHandle,
    pub(super) public: PublicKey,
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

impl Device {
    pub(super) fn connect(
        settings: &Pkcs11Settings,
        generation: u64,
    ) -> Result<Self, BackendError> {
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
    pub(super) fn shutdown(self) {
        let Device {
            ctx, anchor, pool, ..
        } = self;
        drop(pool);
        drop(anchor);
        if let Err(e) = ctx.finalize() {
            tracing::warn!(error = %e, "C_Finalize failed during context rebuild");
        }
    }

    pub(super) fn generate(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<PublicKey, Failure> {
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
    pub(super) fn key(&self, label: &str) -> Result<KeyEntry, Failure> {
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

    pub(super) fn sign(&self, label: &str, digest: &[u8]) -> Result<Signature, Failure> {
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

    pub(super) fn protection(&self, label: &str) -> Result<KeyProtection, Failure> {
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
