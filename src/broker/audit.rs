//! The broker's side of the audit log: entries for its decisions, and checkpoints signed by
//! `seb-audit` in the device, a new one every [`CHECKPOINT_INTERVAL`] while entries arrive (on
//! a thread of its own, off every request's path) and on demand.
//!
//! The log itself lives in the store (entries and tree nodes commit with the records they
//! describe); this module never holds a private key and never signs anything but checkpoint
//! bodies.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::audit::checkpoint::{self, Checkpoint};
use crate::audit::entry::{CertRef, Entry, EntryKind};
use crate::audit::merkle::Hash;
use crate::backend::{KeyBackend, P384Signer};
use crate::ca::generations::KeyKind;
use crate::cert::Certificate;
use crate::config::Config;
use crate::store::Store;

use super::BrokerError;

/// How often the checkpointer looks for new entries.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The latest signed checkpoint and the means to sign the next.
pub struct AuditLog {
    store: Arc<dyn Store>,
    backend: Arc<dyn KeyBackend>,
    /// For the current audit key generation (`seb rotate audit`) and its certificate.
    config: Config,
    origin: String,
    latest: Mutex<Option<(Checkpoint, String)>>,
    /// The last checkpoint signing failure, for `/healthz`.
    failure: Mutex<Option<String>>,
    /// Why the stored log is not an extension of the last checkpoint this process signed (a
    /// truncation or rewrite by someone with the database): no checkpoint is signed and no
    /// token issued until it is again.
    diverged: Mutex<Option<String>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Checks that the current audit key in the device matches the audit certificate.
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn KeyBackend>,
        config: &Config,
        certificate: &Certificate,
    ) -> Result<Self, BrokerError> {
        let log = Self {
            store,
            backend,
            config: config.clone(),
            origin: checkpoint::origin_for(&config.broker_id),
            latest: Mutex::new(None),
            failure: Mutex::new(None),
            diverged: Mutex::new(None),
        };
        // Verifiers accept a checkpoint only under the audit key purpose: refuse to sign
        // checkpoints nobody will accept.
        crate::chain::require_purpose(certificate, crate::cert::Purpose::Audit).map_err(|e| {
            BrokerError::Internal(format!(
                "the audit certificate may not sign checkpoints ({}: {e}); a trust directory \
                 from before key purposes must be made again with `seb init` on a new token",
                e.code()
            ))
        })?;
        let (label, spki) = log.current_key()?;
        let cert_spki = der::Encode::to_der(certificate.tbs().subject_public_key_info())
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        if spki != cert_spki {
            return Err(BrokerError::Internal(format!(
                "the audit key {label:?} in the device does not match the audit certificate"
            )));
        }
        Ok(log)
    }

    /// The current audit key generation's label and public key (SPKI DER). Looked up for every
    /// checkpoint, so `seb rotate audit` takes effect without a restart; a key that does not
    /// match the published audit certificate signs nothing.
    fn current_key(&self) -> Result<(String, Vec<u8>), BrokerError> {
        let label = self
            .config
            .current_key_label(KeyKind::Audit)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let spki = self
            .backend
            .public_key(&label)
            .and_then(|k| k.to_spki_der())
            .map_err(BrokerError::Hsm)?;
        Ok((label, spki))
    }

    fn check_certificate(&self, spki: &[u8]) -> Result<(), BrokerError> {
        let path = self.config.trust_dir().service_path(KeyKind::Audit);
        let cert = crate::ca::trust_dir::read_certificate(&path)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let cert_spki = der::Encode::to_der(cert.tbs().subject_public_key_info())
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        if spki != cert_spki.as_slice() {
            return Err(BrokerError::Internal(format!(
                "the current audit key does not match {}",
                path.display()
            )));
        }
        Ok(())
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs checkpoints every `interval` while the log grows, until the log is dropped.
    pub fn start_checkpointer(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("seb-audit-ckpt".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(log) = weak.upgrade() else { return };
                if let Err(e) = log.checkpoint() {
                    tracing::error!(error = %e, "cannot sign an audit checkpoint");
                }
            })
            .map(|_| ())
    }

    /// The newest checkpoint: the latest signed one if the log has not grown since, else a
    /// new one signed now. Callers at the same moment share one signature.
    pub fn checkpoint(&self) -> Result<String, BrokerError> {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        // A store that cannot be read fails this attempt as any other failure does, and
        // `/healthz` says so.
        let failed = |e: crate::store::StoreError| {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("cannot sign a checkpoint: the store: {e}"));
            BrokerError::Store(e)
        };
        let size = self.store.audit_size().map_err(failed)?;
        if let Some((cp, note)) = latest.as_ref() {
            // While the log has diverged, it is compared again even at the signed size: a
            // restore of exactly that history ends the refusal.
            if cp.size == size && self.integrity().is_ok() {
                // Nothing to sign, and the store answered: an earlier failure is over.
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(note.clone());
            }
        }
        let root = self.store.audit_root(size).map_err(failed)?;
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
        };
        // The device signs only a history that extends the one it signed last: otherwise
        // anyone with the database could have it sign a truncated or rewritten log.
        let extends = latest
            .as_ref()
            .map_or(Ok(()), |(signed, _)| self.extends(signed, &cp));
        *self.diverged.lock().unwrap_or_else(|p| p.into_inner()) = extends.clone().err();
        if let Err(why) = extends {
            tracing::error!(reason = %why, "the audit log does not extend the last signed checkpoint");
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            return Err(BrokerError::AuditDiverged(why));
        }
        let key = self
            .current_key()
            .and_then(|(label, spki)| self.check_certificate(&spki).map(|()| (label, spki)));
        let (label, spki) = match key {
            Ok(key) => key,
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot sign a checkpoint: {e}"));
                return Err(e);
            }
        };
        let signed = P384Signer::new(self.backend.as_ref(), &label).and_then(|signer| {
            cp.sign(&spki, |body| {
                signer
                    .sign_message(body)
                    .map(|s| s.to_der().as_bytes().to_vec())
            })
        });
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match signed {
            Ok(note) => {
                *failure = None;
                *latest = Some((cp, note.clone()));
                Ok(note)
            }
            Err(e) => {
                *failure = Some(format!("cannot sign a checkpoint: {e}"));
                Err(BrokerError::Hsm(e))
            }
        }
    }

    /// Whether `new` (as stored now) extends `signed` (signed by this process): checked with
    /// a consistency proof from the store, so a store that lies about its nodes fails too.
    fn extends(&self, signed: &Checkpoint, new: &Checkpoint) -> Result<(), String> {
        let diverged = |detail: String| {
            format!(
                "the audit log no longer extends the checkpoint this broker signed at {} \
                 entries: {detail}; no checkpoint is signed and no token issued until it does \
                 (docs/AUDIT.md, \"A log that does not extend its checkpoint\")",
                signed.size
            )
        };
        if signed.size == 0 {
            return Ok(());
        }
        if new.size < signed.size {
            return Err(diverged(format!(
                "it now has {} entries (entries were deleted)",
                new.size
            )));
        }
        let proof = if new.size == signed.size {
            Vec::new()
        } else {
            self.store
                .audit_consistency_proof(signed.size, new.size)
                .map_err(|e| {
                    diverged(format!("no consistency proof to {} entries: {e}", new.size))
                })?
        };
        crate::audit::merkle::verify_consistency(
            signed.size,
            new.size,
            &proof,
            &signed.root,
            &new.root,
        )
        .map_err(|e| {
            diverged(format!(
                "its first {} entries were rewritten ({e})",
                signed.size
            ))
        })
    }

    /// `Err(why)` while the stored log does not extend the last checkpoint this process
    /// signed: issuance refuses (`audit_unavailable`).
    pub fn integrity(&self) -> Result<(), String> {
        match &*self.diverged.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// `Err(why)` while checkpoints cannot be signed.
    pub fn health(&self) -> Result<(), String> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }
}

/// The certificate reference of a caller: thumbprint, leaf serial (canonical lowercase hex),
/// subject.
pub fn cert_ref(
    thumbprint: &str,
    serial: Option<&crate::serial::Serial>,
    subject: &str,
) -> CertRef {
    CertRef {
        thumbprint: thumbprint.to_owned(),
        serial: serial.map(ToString::to_string).unwrap_or_default(),
        subject: subject.to_owned(),
    }
}

/// An entry of `kind` now.
pub fn entry_now(kind: EntryKind) -> Entry {
    Entry::new(kind, crate::time::unix_millis(std::time::SystemTime::now()))
}

/// base64url of a leaf hash, as tokens carry it.
pub fn leaf_b64(hash: &Hash) -> String {
    crate::base64url::encode(hash)
}

/// One entry as the API serves it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedEntry {
    /// Leaf index.
    pub index: u64,
    /// base64url RFC 6962 leaf hash of the canonical entry.
    pub leaf_hash: String,
    /// The entry (its RFC 8785 form is what was hashed).
    pub entry: serde_json::Value,
}

/// A proof as the API serves it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedProof {
    /// Tree size the proof is for (inclusion), or the newer size (consistency).
    pub size: u64,
    /// Leaf index (inclusion) or older size (consistency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Older size (consistency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// base64url hashes, bottom up.
    pub proof: Vec<String>,
}

impl super::Broker {
    /// Entries `start..end` (at most [`crate::store::MAX_AUDIT_PAGE`]; `end` defaults to that).
    pub fn audit_entries(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<ServedEntry>, BrokerError> {
        if let Some(end) = end.filter(|&end| end < start) {
            return Err(BrokerError::InvalidRequest(format!(
                "end {end} is before start {start}"
            )));
        }
        let size = self.store.audit_size().map_err(BrokerError::Store)?;
        let end = end
            .unwrap_or(u64::MAX)
            .min(size)
            .min(start.saturating_add(crate::store::MAX_AUDIT_PAGE));
        if start > size {
            return Err(BrokerError::InvalidRequest(format!(
                "start {start} is past the end of the log ({size} entries)"
            )));
        }
        if end < start {
            return Ok(Vec::new());
        }
        let rows = self
            .store
            .audit_entries(start, end)
            .map_err(BrokerError::Store)?;
        let leaves: std::collections::HashMap<u64, Hash> = self
            .store
            .audit_leaf_hashes(start, end)
            .map_err(BrokerError::Store)?
            .into_iter()
            .collect();
        // Served as stored, so that a verifier names what was tampered with: the leaf hash the
        // tree was built from (an entry edited in place no longer hashes to it), and a row that
        // is not JSON as its text (a string where an entry object belongs), rather than
        // refusing the whole page.
        Ok(rows
            .into_iter()
            .map(|(index, text)| {
                let leaf = leaves
                    .get(&index)
                    .copied()
                    .unwrap_or_else(|| crate::audit::merkle::leaf_hash(text.as_bytes()));
                let entry = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                ServedEntry {
                    index,
                    leaf_hash: leaf_b64(&leaf),
                    entry,
                }
            })
            .collect())
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn audit_inclusion(&self, index: u64, size: u64) -> Result<ServedProof, BrokerError> {
        let have = self.store.audit_size().map_err(BrokerError::Store)?;
        if index >= size || size > have {
            return Err(BrokerError::InvalidRequest(format!(
                "need index < size <= {have} (the log's size)"
            )));
        }
        let proof = self
            .store
            .audit_inclusion_proof(index, size)
            .map_err(BrokerError::Store)?;
        Ok(ServedProof {
            size,
            index: Some(index),
            from: None,
            proof: proof.iter().map(leaf_b64).collect(),
        })
    }

    /// The consistency proof between the trees of `from` and `to` entries.
    pub fn audit_consistency(&self, from: u64, to: u64) -> Result<ServedProof, BrokerError> {
        let have = self.store.audit_size().map_err(BrokerError::Store)?;
        if from > to || to > have {
            return Err(BrokerError::InvalidRequest(format!(
                "need from <= to <= {have} (the log's size)"
            )));
        }
        let proof = self
            .store
            .audit_consistency_proof(from, to)
            .map_err(BrokerError::Store)?;
        Ok(ServedProof {
            size: to,
            index: None,
            from: Some(from),
            proof: proof.iter().map(leaf_b64).collect(),
        })
    }
}
