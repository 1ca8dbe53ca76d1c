//! TEMPORARY stand-in for the chain validator being written on the `verify` branch; replaced
//! on merge. Builds the path by name only.
use std::time::SystemTime;

use crate::authz::{CertFacts, ChainView};
use crate::cert::{Certificate, SEB_GRANTS_OID, SEB_ROLE_OID};
use crate::grants::{GrantSet, Role};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(pub String);
impl ChainError {
    pub fn code(&self) -> &'static str {
        "unknown_ca"
    }
}
pub struct ValidatedChain {
    pub certs: Vec<Certificate>,
}
pub fn validate(
    leaf: &Certificate,
    intermediates: &[Certificate],
    _roots: &[Certificate],
    _now: SystemTime,
) -> Result<ValidatedChain, ChainError> {
    let mut certs = vec![leaf.clone()];
    certs.extend(intermediates.iter().cloned());
    Ok(ValidatedChain { certs })
}
impl ValidatedChain {
    pub fn chain_view(&self) -> ChainView {
        let facts = |c: &Certificate| CertFacts {
            serial: c.tbs.serial_number.as_bytes().to_vec(),
            not_before: c.not_before(),
            not_after: c.not_after(),
            role: c
                .extension(SEB_ROLE_OID)
                .and_then(|e| Role::from_der(e.extn_value.as_bytes()).ok()),
            grants: c
                .extension(SEB_GRANTS_OID)
                .map(|e| GrantSet::from_der(e.extn_value.as_bytes())),
        };
        ChainView {
            leaf: facts(&self.certs[0]),
            ancestors: self.certs[1..].iter().map(facts).collect(),
        }
    }
}
