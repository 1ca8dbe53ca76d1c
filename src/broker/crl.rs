//! The CRL served at `GET /v1/crl`, signed by the root key in the device and cached.
//!
//! A new CRL is signed only when the revocation list changed or the cached one is past half
//! its validity, so the endpoint cannot be used to make the HSM sign at will. Whether the list
//! changed is read from the store's revocation generation (one index lookup), so serving a
//! cached CRL never lists the revoked table.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use super::{Broker, BrokerError};
use crate::backend::P384Signer;
use crate::ca::{self, crl::Revocation, CaError};

/// The last CRL served.
#[derive(Debug, Default)]
pub(crate) struct CrlCache(Mutex<Option<CachedCrl>>);

#[derive(Debug)]
struct CachedCrl {
    pem: String,
    generation: u64,
    made: Instant,
}

impl Broker {
    /// The current CRL (PEM), signed by the root key in the device.
    pub fn crl_pem(&self) -> Result<String, BrokerError> {
        let generation = self
            .store
            .revocation_generation()
            .map_err(BrokerError::Store)?;
        let mut cache = self
            .crl_cache
            .0
            .lock()
            .map_err(|_| BrokerError::Internal("CRL cache lock poisoned".into()))?;
        if let Some(cached) = cache.as_ref() {
            if cached.generation == generation
                && cached.made.elapsed() < self.config.ca.crl_validity / 2
            {
                return Ok(cached.pem.clone());
            }
        }
        // Read after the generation: a revocation in between is in the list, and the next
        // request signs again because the generation moved.
        let revoked = self.store.revocations().map_err(BrokerError::Store)?;
        let pem = self.sign_crl(&revoked)?;
        *cache = Some(CachedCrl {
            pem: pem.clone(),
            generation,
            made: Instant::now(),
        });
        Ok(pem)
    }

    fn sign_crl(&self, revoked: &[Revocation]) -> Result<String, BrokerError> {
        let number = self.store.next_crl_number().map_err(BrokerError::Store)?;
        let signer = P384Signer::new(self.backend.as_ref(), &self.config.keys.root)
            .map_err(BrokerError::Hsm)?;
        let list = ca::crl::sign(
            &signer,
            &self.root,
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
