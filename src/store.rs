//! Durable broker state behind a small trait: issued certificates, revocations, CRL numbers
//! (and, with the HTTPS broker, redeemed token ids).
//!
//! The embedded default is SQLite in the state directory ([`sqlite::SqliteStore`]); a shared
//! database for several broker replicas can implement the same trait. Every write is durable
//! (committed and synced) before the call returns.

use std::time::SystemTime;

use crate::ca::crl::{Reason, Revocation};

#[cfg(feature = "broker")]
pub mod sqlite;

/// Store failures. The message names the operation; the source keeps the detail for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the store at {path}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read or write failed.
    #[error("store {operation} failed")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored data does not make sense (hand-edited or corrupted).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// A certificate the CA issued, as recorded for the security team's inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Serial number bytes.
    pub serial: Vec<u8>,
    /// Subject (RFC 4514).
    pub subject: String,
    /// Role name.
    pub role: String,
    /// Label of the issuing key.
    pub issuer_label: String,
    /// notAfter.
    pub not_after: SystemTime,
    /// PEM of the certificate.
    pub pem: String,
}

/// What `revoke` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Newly revoked; `known` says whether this CA's records hold the serial.
    Revoked {
        /// The serial was issued by this broker.
        known: bool,
    },
    /// It was revoked before; nothing changed.
    AlreadyRevoked,
}

/// The broker's durable state.
pub trait Store: Send + Sync {
    /// Records an issued certificate.
    fn record_issued(&self, cert: &IssuedCertificate) -> Result<(), StoreError>;
    /// Records a revocation. Revoking twice keeps the first time and reason.
    fn revoke(
        &self,
        serial: &[u8],
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError>;
    /// Every revocation, oldest first.
    fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// Whether `serial` is revoked.
    fn is_revoked(&self, serial: &[u8]) -> Result<bool, StoreError>;
    /// Allocates the next CRL number (strictly increasing, never reused).
    fn next_crl_number(&self) -> Result<u64, StoreError>;
}
