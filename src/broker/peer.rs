//! Who is calling: the caller's identity, rebuilt once per TLS connection from the chain it
//! presented, and the cache that spares a returning client the path validation.
//!
//! rustls has already verified the chain against the root when this runs; here the broker
//! rebuilds the *verified path* with [`chain::validate`] so the decision sees exactly the
//! certificates that vouch for the leaf, with their roles and grants. Validity and revocation
//! are not cached: [`super::Broker::authenticate`] checks every certificate of [`Peer::path`]
//! again on every request, on every route. Nothing here trusts a certificate that does not
//! chain to one of the broker's roots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::BrokerError;
use crate::authz::{self, ChainView, RevocationView};
use crate::base64url;
use crate::cert::Certificate;
use crate::chain::{self, ChainError};
use crate::grants::RoleKind;
use crate::serial::Serial;
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
    /// base64url SHA-256 of the leaf DER (`x5t#S256`): what tokens are bound to, and so
    /// specific to the bytes this connection presented.
    pub thumbprint: String,
    /// base64url SHA-256 of the leaf's SubjectPublicKeyInfo: the client, whatever the encoding
    /// of its certificate. ECDSA lets anyone respell a certificate's signature as `(r, n − s)`
    /// (another DER, another thumbprint, still valid); rate limits and the peer cache are keyed
    /// on this instead, so a respelt certificate is the same client.
    pub key_id: String,
    /// Leaf subject.
    pub subject: String,
    /// The facts the decision engine needs, or why the chain is unusable.
    pub chain: Result<ChainView, ChainError>,
    /// Every certificate of the verified path (leaf first, root last) as each request checks
    /// it again; only the leaf's serial, if it has one, when the chain is unusable.
    pub path: Vec<PathCert>,
}

/// One certificate of a caller's path: what is checked again on every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathCert {
    /// Its subject, for messages.
    pub subject: String,
    /// Its serial, looked up in the revocation list.
    pub serial: Serial,
    /// Start of validity (inclusive).
    pub not_before: SystemTime,
    /// End of validity (inclusive, as in RFC 5280).
    pub not_after: SystemTime,
}

impl PathCert {
    fn of(cert: &Certificate, serial: Serial) -> Self {
        PathCert {
            subject: cert.subject_string(),
            serial,
            not_before: cert.not_before(),
            not_after: cert.not_after(),
        }
    }
}

impl Peer {
    /// The role the leaf carries, if its chain validated and delegates it
    /// ([`authz::delegated_role`]: an intermediate that may not issue the role makes the
    /// certificate count for nothing).
    pub fn role(&self) -> Option<RoleKind> {
        self.delegated_role().ok()
    }

    /// The leaf's role, or why it does not count: an unusable chain, no role, or an
    /// intermediate above the leaf that may not issue it (`role_not_delegated`).
    pub fn delegated_role(&self) -> Result<RoleKind, BrokerError> {
        let chain = self.verified_chain()?;
        authz::delegated_role(chain)
            .map(|role| role.kind)
            .map_err(|(code, reason)| BrokerError::Denied {
                code,
                reason,
                request_id: None,
            })
    }

    /// The validated chain, or the reason it is unusable as the caller's error.
    pub fn verified_chain(&self) -> Result<&ChainView, BrokerError> {
        self.chain
            .as_ref()
            .map_err(|e| BrokerError::Chain(e.clone()))
    }

    /// When the first certificate of the caller's path expires (the leaf, or an intermediate
    /// or the root above it that ends sooner): nothing bound to the caller may outlive it.
    pub fn path_not_after(&self) -> Option<SystemTime> {
        self.path.iter().map(|c| c.not_after).min()
    }

    /// The serials of the caller's path, leaf first.
    pub fn serials(&self) -> impl Iterator<Item = &Serial> {
        self.path.iter().map(|c| &c.serial)
    }

    /// Which certificates of the caller's path are revoked, read from the store now.
    pub(crate) fn revocations(&self, store: &dyn Store) -> Result<RevokedSet, BrokerError> {
        let serials: Vec<Serial> = self.serials().cloned().collect();
        let revoked = store.revoked_among(&serials).map_err(BrokerError::Store)?;
        Ok(RevokedSet(revoked))
    }
}

/// A validated peer, when it was validated, and the SHA-256 of the chain it was validated from.
type Cached = (Instant, [u8; 32], Arc<Peer>);

/// Validated peers, one slot per leaf key (SHA-256 of its SubjectPublicKeyInfo).
#[derive(Debug, Default)]
pub(crate) struct PeerCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

impl PeerCache {
    /// The caller's identity from the chain it presented (leaf first), validated against
    /// `roots` or taken from the cache.
    ///
    /// The result depends only on the presented bytes and the roots. An entry is reused only
    /// for exactly the same bytes (SHA-256 of the chain) within [`PEER_CACHE_TTL`]; entries are
    /// slotted by the leaf's key, so other spellings of one certificate (an ECDSA signature
    /// respelt as `(r, n − s)`) replace each other instead of filling the cache. Unusable
    /// chains are not cached.
    pub(crate) fn peer(
        &self,
        presented: &[Vec<u8>],
        roots: &[Certificate],
        now: SystemTime,
    ) -> Result<Arc<Peer>, BrokerError> {
        let chain = chain_hash(presented);
        let mut certs = Vec::with_capacity(presented.len().min(MAX_PRESENTED));
        for der in presented.iter().take(MAX_PRESENTED) {
            certs.push(
                Certificate::parse(der).map_err(|e| BrokerError::BadCertificate(e.to_string()))?,
            );
        }
        let leaf = certs
            .first()
            .ok_or_else(|| BrokerError::BadCertificate("no client certificate".into()))?;
        let slot = slot_of(leaf)?;
        // The chain hash covers the first MAX_PRESENTED certificates only: a longer chain must
        // never be answered from the entry of its first part.
        if presented.len() <= MAX_PRESENTED {
            if let Some(peer) = self.lookup(&slot, &chain) {
                return Ok(peer);
            }
        }
        // More than are looked at: the path cannot be judged from a part of what was sent.
        let too_many =
            (presented.len() > MAX_PRESENTED).then_some(ChainError::TooManyCertificates {
                what: "certificates",
                count: presented.len(),
                max: MAX_PRESENTED,
            });
        let peer = Arc::new(validate(&certs, key_id(leaf)?, roots, now, too_many)?);
        if peer.chain.is_ok() {
            if let Ok(mut cache) = self.entries.lock() {
                if cache.len() >= PEER_CACHE_ENTRIES && !cache.contains_key(&slot) {
                    cache.clear();
                }
                cache.insert(slot, (Instant::now(), chain, peer.clone()));
            }
        }
        Ok(peer)
    }

    /// The cached identity for exactly these chain bytes, if there is one: what
    /// [`PeerCache::peer`] would return without validating. Parses only the leaf.
    pub(crate) fn cached(&self, presented: &[Vec<u8>]) -> Option<Arc<Peer>> {
        if presented.len() > MAX_PRESENTED {
            return None;
        }
        let leaf = Certificate::parse(presented.first()?).ok()?;
        let slot = slot_of(&leaf).ok()?;
        self.lookup(&slot, &chain_hash(presented))
    }

    fn lookup(&self, slot: &[u8; 32], chain: &[u8; 32]) -> Option<Arc<Peer>> {
        let cache = self.entries.lock().ok()?;
        let (made, bytes, peer) = cache.get(slot)?;
        (bytes == chain && made.elapsed() < PEER_CACHE_TTL).then(|| peer.clone())
    }
}

/// SHA-256 over the first [`MAX_PRESENTED`] presented certificates, each prefixed with its
/// length.
fn chain_hash(presented: &[Vec<u8>]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for der in presented.iter().take(MAX_PRESENTED) {
        hasher.update((der.len() as u64).to_be_bytes());
        hasher.update(der);
    }
    hasher.finalize().into()
}

/// The peer's key id: SHA-256 of its SubjectPublicKeyInfo with the point uncompressed
/// ([`Certificate::spki_sha256`]). Made on a cache miss only: the decoding it takes is too
/// dear for every request.
fn key_id(cert: &Certificate) -> Result<[u8; 32], BrokerError> {
    cert.spki_sha256()
        .map_err(|e| BrokerError::BadCertificate(e.to_string()))
}

/// The cache's slot for a leaf: SHA-256 of its SubjectPublicKeyInfo as spelt (the two
/// spellings of one key take two slots, which costs a validation, not a wrong answer).
fn slot_of(cert: &Certificate) -> Result<[u8; 32], BrokerError> {
    cert.public_key_der()
        .map(|der| Sha256::digest(der).into())
        .map_err(|e| BrokerError::BadCertificate(e.to_string()))
}

#[cfg(test)]
impl PeerCache {
    fn len(&self) -> usize {
        self.entries.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn validate(
    certs: &[Certificate],
    key_id: [u8; 32],
    roots: &[Certificate],
    now: SystemTime,
    refused: Option<ChainError>,
) -> Result<Peer, BrokerError> {
    let (leaf, rest) = certs
        .split_first()
        .ok_or_else(|| BrokerError::BadCertificate("no client certificate".into()))?;
    let leaf_der = leaf
        .to_der_bytes()
        .map_err(|e| BrokerError::BadCertificate(e.to_string()))?;
    // A name shown to approvers, in the log and in webhooks must read as what it is. seb's CA
    // never writes such a name; an offline intermediate could.
    for (depth, cert) in certs.iter().enumerate() {
        if let Some(c) = crate::ca::hidden_character(cert.tbs().subject()) {
            return Err(BrokerError::BadCertificate(format!(
                "the subject of the certificate at depth {depth} contains the control or \
                 formatting character U+{:04X}, which could make it look like another name",
                u32::from(c)
            )));
        }
    }
    let validated = match refused {
        Some(e) => Err(e),
        None => chain::validate(leaf, rest, roots, now),
    };
    let (chain, path) = match validated {
        Ok(v) => {
            let path = v
                .path()
                .iter()
                .zip(v.serials())
                .map(|(cert, serial)| PathCert::of(cert, serial.clone()))
                .collect();
            (Ok(v.chain_view()), path)
        }
        // Unusable on every route anyway; its serial, if it has one, for the record.
        Err(e) => (
            Err(e),
            Serial::of(leaf)
                .into_iter()
                .map(|serial| PathCert::of(leaf, serial))
                .collect(),
        ),
    };
    Ok(Peer {
        thumbprint: base64url::encode(&Sha256::digest(&leaf_der)),
        key_id: base64url::encode(&key_id),
        subject: leaf.subject_string(),
        leaf: leaf.clone(),
        chain,
        path,
    })
}

/// The serials of a caller's path that the store lists as revoked.
#[derive(Debug)]
pub(crate) struct RevokedSet(Vec<Serial>);

impl RevocationView for RevokedSet {
    fn is_revoked(&self, serial: &Serial) -> bool {
        self.0.contains(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{grant, now, Ca};

    /// `cert` with the other spelling `(r, n − s)` of its issuer's signature.
    fn twin(cert: &Certificate) -> Certificate {
        let mut cert = crate::testkit::forge(cert);
        let sig = p384::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap();
        let (r, s) = sig.split_scalars();
        let other = p384::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        cert.signature = der::asn1::BitString::from_bytes(other.to_der().as_bytes()).unwrap();
        cert.finish().unwrap()
    }

    #[test]
    fn the_cached_lookup_returns_only_what_validation_stored_for_the_same_bytes() {
        let root = Ca::root("root");
        let agent = root
            .agent("agent", &grant("deploy.*", "prod/**", "60s"))
            .unwrap();
        let der = agent.to_der_bytes().unwrap();
        let twin_der = twin(&agent).to_der_bytes().unwrap();
        let roots = [root.cert.clone()];
        let cache = PeerCache::default();
        assert!(cache.cached(std::slice::from_ref(&der)).is_none());
        let validated = cache
            .peer(std::slice::from_ref(&der), &roots, now())
            .unwrap();
        let cached = cache.cached(std::slice::from_ref(&der)).unwrap();
        assert!(Arc::ptr_eq(&validated, &cached));
        // Another spelling of the same certificate is not the cached chain.
        assert!(cache.cached(std::slice::from_ref(&twin_der)).is_none());
        // Nor is the same leaf with something appended.
        assert!(cache.cached(&[der.clone(), der.clone()]).is_none());
        assert!(cache.cached(&[]).is_none());
        // A chain from a stranger never validates, so it is never cached.
        let stranger = Ca::root("stranger");
        let foreign = stranger
            .agent("agent", &grant("deploy.*", "prod/**", "60s"))
            .unwrap()
            .to_der_bytes()
            .unwrap();
        let refused = cache
            .peer(std::slice::from_ref(&foreign), &roots, now())
            .unwrap();
        assert!(refused.chain.is_err());
        assert!(cache.cached(std::slice::from_ref(&foreign)).is_none());
        // A chain longer than what is looked at, whose first part was cached, is not taken
        // from that entry: it is refused as too long, both ways in.
        let mut long = vec![der.clone()];
        long.extend(std::iter::repeat_n(
            root.cert.to_der_bytes().unwrap(),
            MAX_PRESENTED,
        ));
        let first_part = &long[..MAX_PRESENTED];
        assert!(cache.peer(first_part, &roots, now()).unwrap().chain.is_ok());
        assert!(cache.cached(first_part).is_some());
        assert!(cache.cached(&long).is_none());
        let peer = cache.peer(&long, &roots, now()).unwrap();
        assert!(
            matches!(peer.chain, Err(ChainError::TooManyCertificates { .. })),
            "{:?}",
            peer.chain
        );
    }

    #[test]
    fn a_re_encoded_chain_takes_its_keys_slot_rather_than_a_new_one() {
        let root = Ca::root("root");
        let agent = root
            .agent("agent", &grant("deploy.*", "prod/**", "60s"))
            .unwrap();
        let twin = twin(&agent);
        let (a_der, b_der) = (agent.to_der_bytes().unwrap(), twin.to_der_bytes().unwrap());
        assert_ne!(a_der, b_der);
        let roots = [root.cert.clone()];
        let cache = PeerCache::default();
        let a = cache
            .peer(std::slice::from_ref(&a_der), &roots, now())
            .unwrap();
        let b = cache
            .peer(std::slice::from_ref(&b_der), &roots, now())
            .unwrap();
        assert!(
            a.chain.is_ok() && b.chain.is_ok(),
            "both spellings validate"
        );
        // Each connection keeps the thumbprint of the bytes it presented (tokens bind to it)...
        assert_ne!(a.thumbprint, b.thumbprint);
        // ...but spellings of one certificate cannot fill the cache.
        assert_eq!(cache.len(), 1);
        for _ in 0..3 {
            let again = cache
                .peer(std::slice::from_ref(&a_der), &roots, now())
                .unwrap();
            assert_eq!(
                again.thumbprint, a.thumbprint,
                "never another spelling's identity"
            );
            let again = cache
                .peer(std::slice::from_ref(&b_der), &roots, now())
                .unwrap();
            assert_eq!(again.thumbprint, b.thumbprint);
        }
        assert_eq!(cache.len(), 1);
        // Another certificate has its own slot.
        let other = root
            .agent("other", &grant("deploy.*", "prod/**", "60s"))
            .unwrap();
        cache
            .peer(&[other.to_der_bytes().unwrap()], &roots, now())
            .unwrap();
        assert_eq!(cache.len(), 2);
    }
}
