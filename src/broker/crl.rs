//! The CRLs served at `GET /v1/crl`: the root's, signed by the root key in the device, and
//! (`?issuer=NAME`) an intermediate's whose key is in the device, listing the revoked
//! certificates it issued (where `openssl verify -crl_check` looks for a certificate under it).
//!
//! A new CRL is signed only when the revocation list changed or the cached one is past half
//! its validity, so the endpoint cannot be used to make the HSM sign at will. Whether the list
//! changed is read from the store's revocation generation (one index lookup), so serving a
//! cached CRL never lists the revoked table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use super::{Broker, BrokerError};
use crate::backend::{BackendError, P384Signer};
use crate::ca::{self, crl::Revocation, CaError};
use crate::cert::Certificate;

/// The last CRL served, per issuing CA (`None`: the root).
#[derive(Debug, Default)]
pub(crate) struct CrlCache(Mutex<HashMap<Option<String>, CachedCrl>>);

#[derive(Debug)]
struct CachedCrl {
    pem: String,
    generation: u64,
    made: Instant,
    /// The end of the signing CA's chain's validity.
    issuer_until: SystemTime,
}

impl Broker {
    /// The current CRL (PEM) of the root (`issuer` `None`) or of the intermediate named
    /// `issuer` (its `cert issue-ca --label`), signed by that CA's key in the device.
    pub fn crl_pem(&self, issuer: Option<&str>) -> Result<String, BrokerError> {
        let generation = self
            .store
            .revocation_generation()
            .map_err(BrokerError::Store)?;
        let mut cache = self
            .crl_cache
            .0
            .lock()
            .map_err(|_| BrokerError::Internal("CRL cache lock poisoned".into()))?;
        let key = issuer.map(str::to_owned);
        if let Some(cached) = cache.get(&key) {
            if cached.generation == generation
                && cached.made.elapsed() < self.config.ca.crl_validity / 2
                && SystemTime::now() <= cached.issuer_until
            {
                return Ok(cached.pem.clone());
            }
        }
        // The CA signing it, and until when its chain is valid: a cached CRL is not served past
        // that (an intermediate that expired gets none).
        let (label, issuer_cert, issuer_until) = match issuer {
            None => (
                self.config.keys.root.clone(),
                self.root.clone(),
                self.root.not_after(),
            ),
            Some(name) => {
                let chain = self
                    .config
                    .trust_dir()
                    .issuer_chain(Some(name), SystemTime::now())
                    .map_err(|_| BrokerError::NoCrlIssuer(name.to_owned()))?;
                // A revoked or expired intermediate gets no fresh CRL: a relying party that
                // checks only the leaf's CRL would otherwise keep accepting what it issued.
                // The root's CRL lists it.
                let now = SystemTime::now();
                for cert in &chain {
                    let serial = crate::serial::Serial::of(cert)
                        .map_err(|e| BrokerError::BadCertificate(e.to_string()))?;
                    let revoked = self.store.is_revoked(&serial).map_err(BrokerError::Store)?;
                    if revoked || now > cert.not_after() {
                        return Err(BrokerError::CrlIssuerInvalid {
                            name: name.to_owned(),
                            ca: cert.subject_string(),
                            why: if revoked { "revoked" } else { "expired" },
                        });
                    }
                }
                let issuer_until = chain
                    .iter()
                    .map(Certificate::not_after)
                    .min()
                    .unwrap_or(now);
                let cert = chain
                    .into_iter()
                    .next()
                    .ok_or_else(|| BrokerError::NoCrlIssuer(name.to_owned()))?;
                (name.to_owned(), cert, issuer_until)
            }
        };
        // Read after the generation: a revocation in between is in the list, and the next
        // request signs again because the generation moved.
        let revoked = self
            .store
            .revocations_issued_by(&label, issuer.is_none())
            .map_err(BrokerError::Store)?;
        let pem = self.sign_crl(&label, &issuer_cert, &revoked)?;
        cache.insert(
            key,
            CachedCrl {
                pem: pem.clone(),
                generation,
                made: Instant::now(),
                issuer_until,
            },
        );
        Ok(pem)
    }

    fn sign_crl(
        &self,
        label: &str,
        issuer: &Certificate,
        revoked: &[Revocation],
    ) -> Result<String, BrokerError> {
        let signer = match P384Signer::new(self.backend.as_ref(), label) {
            Ok(signer) => signer,
            // An offline intermediate: its CRL is signed where its key is held. Or a key the
            // broker's user cannot see (made by another OS user): the operator's log says so.
            Err(BackendError::KeyNotFound { .. }) => {
                tracing::warn!(
                    issuer = label,
                    "no CRL: the intermediate's key is not visible in the device (an offline \
                     intermediate, or a key object created by another OS user)"
                );
                return Err(BrokerError::NoCrlIssuer(label.to_owned()));
            }
            Err(e) => return Err(BrokerError::Hsm(e)),
        };
        let number = self.store.next_crl_number().map_err(BrokerError::Store)?;
        let list = ca::crl::sign(
            &signer,
            issuer,
            number,
            revoked,
            SystemTime::now(),
            self.config.ca.crl_validity,
        )
        .map_err(|e| match e {
            CaError::Sign(b) | CaError::Key(b) => BrokerError::Hsm(b),
            other => BrokerError::Internal(other.to_string()),
        })?;
        ca::crl::to_pem(&list).map_err(|e| BrokerError::Internal(e.to_string()))
    }
}
