//! Who is calling: the caller's identity, rebuilt once per TLS connection from the chain it
//! presented, and the cache that spares a returning client the path validation.
//!
//! rustls has already verified the chain against the root when this runs; here the broker
//! rebuilds the *verified path* with [`chain::validate`] so the decision sees exactly the
//! certificates that vouch for the leaf, with their roles and grants. Validity and revocation
//! are not cached: the decision checks them again on every request. Nothing here trusts a
//! certificate that does not chain to one of the broker's roots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::BrokerError;
use crate::authz::{ChainView, RevocationView};
use crate::base64url;
use crate::cert::Certificate;
use crate::chain::{self, ChainError};
use crate::grants::RoleKind;
use crate::store::Store;

/// Most certificates of a presented client chain that are looked at.
const MAX_PRESENTED: usize = 8;
/// How long a validated client chain is reused for new connections.
pub const PEER_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most cached client chains; the cache is emptied when full.
const PEER_CACHE_ENTRIES: usize = 4096;

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
    pub chain: Result<ChainView, ChainError>,
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

    /// The validated chain, or the reason it is unusable as the caller's error.
    pub fn verified_chain(&self) -> Result<&ChainView, BrokerError> {
        self.chain
            .as_ref()
            .map_err(|e| BrokerError::Chain(e.clone()))
    }

    /// Which certificates of the caller's path are revoked, read from the store now.
    pub(crate) fn revocations(&self, store: &dyn Store) -> Result<RevokedSet, BrokerError> {
        let mut revoked = Vec::new();
        for serial in &self.serials {
            if store.is_revoked(serial).map_err(BrokerError::Store)? {
                revoked.push(serial.clone());
            }
        }
        Ok(RevokedSet(revoked))
    }
}

/// A validated peer and when it was validated.
type Cached = (Instant, Arc<Peer>);

/// Validated peers by SHA-256 of the presented chain.
#[derive(Debug, Default)]
pub(crate) struct PeerCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl PeerCache {
    /// The caller's identity from the chain it presented (leaf first), validated against
    /// `roots` or taken from the cache.
    ///
    /// The result depends only on the presented bytes and the roots, so it is cached by the
    /// SHA-256 of the chain for [`PEER_CACHE_TTL`]; unusable chains are not cached.
    pub(crate) fn peer(
        &self,
        presented: &[Vec<u8>],
        roots: &[Certificate],
        now: SystemTime,
    ) -> Result<Arc<Peer>, BrokerError> {
        let mut hasher = Sha256::new();
        for der in presented.iter().take(MAX_PRESENTED) {
            hasher.update((der.len() as u64).to_be_bytes());
            hasher.update(der);
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Ok(cache) = self.entries.lock() {
            if let Some((made, peer)) = cache.get(&key) {
                if made.elapsed() < PEER_CACHE_TTL {
                    return Ok(peer.clone());
                }
            }
        }
        let peer = Arc::new(validate(presented, roots, now)?);
        if peer.chain.is_ok() {
            if let Ok(mut cache) = self.entries.lock() {
                if cache.len() >= PEER_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, (Instant::now(), peer.clone()));
            }
        }
        Ok(peer)
    }
}

fn validate(
    presented: &[Vec<u8>],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<Peer, BrokerError> {
    let mut certs = Vec::with_capacity(presented.len());
    for der in presented.iter().take(MAX_PRESENTED) {
        certs
            .push(Certificate::parse(der).map_err(|e| BrokerError::BadCertificate(e.to_string()))?);
    }
    let (leaf, rest) = certs
        .split_first()
        .ok_or_else(|| BrokerError::BadCertificate("no client certificate".into()))?;
    let leaf_der = leaf
        .to_der_bytes()
        .map_err(|e| BrokerError::BadCertificate(e.to_string()))?;
    let (chain, serials) = match chain::validate(leaf, rest, roots, now) {
        Ok(v) => {
            let view = v.chain_view();
            let mut serials = vec![view.leaf.serial.clone()];
            serials.extend(view.ancestors.iter().map(|a| a.serial.clone()));
            (Ok(view), serials)
        }
        Err(e) => (Err(e), vec![leaf.tbs.serial_number.as_bytes().to_vec()]),
    };
    Ok(Peer {
        thumbprint: base64url::encode(&Sha256::digest(&leaf_der)),
        subject: leaf.subject_string(),
        leaf: leaf.clone(),
        chain,
        serials,
    })
}

/// The serials of a caller's path that the store lists as revoked.
#[derive(Debug)]
pub(crate) struct RevokedSet(Vec<Vec<u8>>);

impl RevokedSet {
    /// Whether any certificate of the path is revoked.
    pub(crate) fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

impl RevocationView for RevokedSet {
    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.0.iter().any(|s| s == serial)
    }
}
