//! Client chains rustls has already verified, remembered so that an agent reconnecting with the
//! same certificate chain does not cost another signature check of that chain.
//!
//! [`CachedClientVerifier`] wraps rustls' WebPKI client verifier. A chain is taken from the
//! cache only when its bytes are exactly those of a chain the WebPKI verifier accepted against
//! the same roots (this verifier belongs to one server configuration and its roots), less than
//! [`CHAIN_CACHE_TTL`] ago, and when every certificate presented is within its validity period
//! now. Anything else goes to the WebPKI verifier again, which judges a chain outside its
//! validity period as at the nearest moment inside it: the broker refuses such a caller on every
//! request with `403 certificate_expired` (or `certificate_not_yet_valid`) and an audit entry,
//! which a TLS alert would not give it. The handshake signature
//! (CertificateVerify, over this connection's transcript) is verified every time: it is what
//! proves the client holds the key.
//!
//! This never decides revocation. The broker checks every certificate of the caller's path
//! against the store's revocation list on every request ([`crate::broker::Broker::authenticate`]),
//! on new and existing connections alike, as it does without the cache: the WebPKI verifier
//! here is given no CRL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::cert::Certificate;

/// How long an accepted chain is reused.
pub const CHAIN_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered chains; the cache is emptied when full.
const CHAIN_CACHE_ENTRIES: usize = 4096;

/// When a chain was accepted, and the window in which every one of its certificates is valid.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    at: Instant,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// rustls' client verifier with a memory of the chains it accepted.
#[derive(Debug)]
pub struct CachedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    accepted: Mutex<HashMap<[u8; 32], Accepted>>,
}

impl CachedClientVerifier {
    /// Wraps `inner`, which decides every chain not remembered.
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        Self {
            inner,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// How many chains are remembered.
    pub fn len(&self) -> usize {
        self.accepted.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no chain is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 over the presented certificates, each prefixed with its length.
fn chain_hash(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for der in std::iter::once(end_entity).chain(intermediates) {
        hasher.update((der.len() as u64).to_be_bytes());
        hasher.update(der.as_ref());
    }
    hasher.finalize().into()
}

/// The window in which every presented certificate is valid, or `None` if one does not parse
/// or the window is empty.
fn validity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(SystemTime, SystemTime)> {
    let mut window: Option<(SystemTime, SystemTime)> = None;
    for der in std::iter::once(end_entity).chain(intermediates) {
        let cert = Certificate::parse(der.as_ref()).ok()?;
        let (nb, na) = (cert.not_before(), cert.not_after());
        window = Some(match window {
            None => (nb, na),
            Some((b, a)) => (b.max(nb), a.min(na)),
        });
    }
    window.filter(|(b, a)| b <= a)
}

/// `at` as rustls counts time (whole seconds since the epoch, rounded down: a `notAfter` is a
/// whole second, so that moment is inside the window).
fn unix_time(at: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

impl ClientCertVerifier for CachedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = chain_hash(end_entity, intermediates);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        if let Ok(cache) = self.accepted.lock() {
            if let Some(seen) = cache.get(&key) {
                if seen.at.elapsed() < CHAIN_CACHE_TTL
                    && seen.not_before <= at
                    && at <= seen.not_after
                {
                    return Ok(ClientCertVerified::assertion());
                }
            }
        }
        // The chain's signatures, names and key usages are checked here; its time is checked
        // by the broker on every request (`certificate_expired`, `certificate_not_yet_valid`:
        // a 403 the caller can read, and an audit entry), so a chain outside its validity is
        // judged as at the nearest moment inside it. A chain whose certificates share no such
        // moment is refused here.
        let window = validity(end_entity, intermediates);
        let judged_at = match window {
            Some((not_before, _)) if at < not_before => unix_time(not_before),
            Some((_, not_after)) if at > not_after => unix_time(not_after),
            _ => now,
        };
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, judged_at)?;
        if let Some((not_before, not_after)) = window {
            if let Ok(mut cache) = self.accepted.lock() {
                if cache.len() >= CHAIN_CACHE_ENTRIES && !cache.contains_key(&key) {
                    cache.clear();
                }
                cache.insert(
                    key,
                    Accepted {
                        at: Instant::now(),
                        not_before,
                        not_after,
                    },
                );
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;
    use crate::testkit::{grant, now, Ca};

    /// The WebPKI verifier, counting the chains it is asked about.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        asked: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    fn verifier(root: &Ca) -> (CachedClientVerifier, Arc<Counting>) {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(root.cert.to_der_bytes().unwrap()))
            .unwrap();
        let webpki =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()
                .unwrap();
        let counting = Arc::new(Counting {
            inner: webpki,
            asked: AtomicUsize::new(0),
        });
        (CachedClientVerifier::new(counting.clone()), counting)
    }

    fn at(time: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(time.duration_since(SystemTime::UNIX_EPOCH).unwrap())
    }

    fn der(cert: &Certificate) -> CertificateDer<'static> {
        CertificateDer::from(cert.to_der_bytes().unwrap())
    }

    #[test]
    fn the_same_chain_is_verified_once_and_another_chain_again() {
        let root = Ca::root("root");
        let (cached, webpki) = verifier(&root);
        let agent = der(&root.agent("agent", &grant("a.*", "r/*", "60s")).unwrap());
        for _ in 0..3 {
            cached.verify_client_cert(&agent, &[], at(now())).unwrap();
        }
        assert_eq!(webpki.asked.load(Ordering::SeqCst), 1);
        assert_eq!(cached.len(), 1);
        let other = der(&root.agent("other", &grant("a.*", "r/*", "60s")).unwrap());
        cached.verify_client_cert(&other, &[], at(now())).unwrap();
        assert_eq!(webpki.asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_chain_outside_its_validity_goes_to_webpki_judged_inside_its_window() {
        // Not from the cache: WebPKI checks its signatures again, as at the nearest moment of
        // its validity (the broker refuses it with certificate_expired on every request).
        let root = Ca::root("root");
        let (cached, webpki) = verifier(&root);
        let agent = der(&root.agent("agent", &grant("a.*", "r/*", "60s")).unwrap());
        cached.verify_client_cert(&agent, &[], at(now())).unwrap();
        // The agent certificate is valid for 30 days from `now()`.
        let later = now() + Duration::from_secs(31 * 86_400);
        cached.verify_client_cert(&agent, &[], at(later)).unwrap();
        let earlier = now() - Duration::from_secs(86_400);
        cached.verify_client_cert(&agent, &[], at(earlier)).unwrap();
        assert_eq!(webpki.asked.load(Ordering::SeqCst), 3);
        // Judged in its window, a foreign chain is still refused.
        let stranger = Ca::root("stranger");
        let foreign = der(&stranger
            .agent("agent", &grant("a.*", "r/*", "60s"))
            .unwrap());
        assert!(cached.verify_client_cert(&foreign, &[], at(later)).is_err());
    }

    #[test]
    fn refused_chains_are_not_remembered() {
        let root = Ca::root("root");
        let stranger = Ca::root("stranger");
        let (cached, webpki) = verifier(&root);
        let foreign = der(&stranger
            .agent("agent", &grant("a.*", "r/*", "60s"))
            .unwrap());
        for _ in 0..2 {
            assert!(cached.verify_client_cert(&foreign, &[], at(now())).is_err());
        }
        assert_eq!(webpki.asked.load(Ordering::SeqCst), 2);
        assert!(cached.is_empty());
    }
}
