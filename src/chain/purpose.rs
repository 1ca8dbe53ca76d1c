//! Key purposes: whether a certificate may sign for one seb key purpose and nothing else
//! ([`require_purpose`]), and why not ([`PurposeError`]). Path validation leaves this to the
//! caller that accepts a signature for a purpose (see the module documentation of `chain`).

use der::asn1::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};

use crate::cert::{Certificate, Purpose, SEB_GRANTS_OID, SEB_ROLE_OID};

/// Why a certificate may not sign for a purpose. [`PurposeError::code`] is stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PurposeError {
    /// Not a key certificate at all: a CA, a key that may not sign, or someone's identity
    /// (an agent, approver or executor certificate, with `sebRole` or `sebGrants`).
    #[error("{subject:?} is not a {purpose} key certificate: {reason}")]
    NotAKeyCertificate {
        /// Its subject.
        subject: String,
        /// The purpose asked for.
        purpose: Purpose,
        /// Why not.
        reason: &'static str,
    },
    /// Its extended key usage does not name exactly this seb key purpose.
    #[error("{subject:?} does not carry the {purpose} key purpose alone: {reason}")]
    WrongKeyPurpose {
        /// Its subject.
        subject: String,
        /// The purpose asked for.
        purpose: Purpose,
        /// What it carries instead.
        reason: String,
    },
    /// A broker service certificate issued by an intermediate CA instead of the root.
    #[error("{subject:?} is issued by {issuer:?}, not directly by the root; only the root certifies the broker's keys")]
    NotIssuedByRoot {
        /// Its subject.
        subject: String,
        /// The intermediate that issued it.
        issuer: String,
    },
}

impl PurposeError {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            PurposeError::NotAKeyCertificate { .. } => "not_a_key_certificate",
            PurposeError::WrongKeyPurpose { .. } => "wrong_key_purpose",
            PurposeError::NotIssuedByRoot { .. } => "not_issued_by_root",
        }
    }
}

/// anyExtendedKeyUsage (RFC 5280 §4.2.1.12): "any purpose", which no seb key may claim.
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// Checks that `cert` may sign for `purpose` and nothing else seb knows: an end entity (not a
/// CA) with `digitalSignature`, whose extended key usage names `purpose` and no other seb key
/// purpose, nor anyExtendedKeyUsage. For the broker's own keys (token, audit:
/// [`Purpose::is_broker_key`]) the purpose is the only extended key usage, and the certificate
/// is nobody's identity (no `sebRole`, no `sebGrants`).
///
/// It does not validate the path; for a broker key, see
/// [`ValidatedChain::require_service`](super::ValidatedChain::require_service).
pub fn require_purpose(cert: &Certificate, purpose: Purpose) -> Result<(), PurposeError> {
    let not_key = |reason| PurposeError::NotAKeyCertificate {
        subject: cert.subject_string(),
        purpose,
        reason,
    };
    let bc = cert
        .standard_extension::<BasicConstraints>()
        .map_err(|_| not_key("malformed basicConstraints"))?;
    if bc.is_some_and(|bc| bc.ca) {
        return Err(not_key("it is a CA certificate"));
    }
    let ku = cert
        .standard_extension::<KeyUsage>()
        .map_err(|_| not_key("malformed keyUsage"))?;
    if !ku.is_some_and(|ku| ku.digital_signature()) {
        return Err(not_key("its keyUsage lacks digitalSignature"));
    }
    if purpose.is_broker_key()
        && (cert.extension(SEB_ROLE_OID).is_some() || cert.extension(SEB_GRANTS_OID).is_some())
    {
        return Err(not_key("it is an agent, approver or executor certificate"));
    }
    let eku = cert
        .standard_extension::<ExtendedKeyUsage>()
        .map_err(|_| not_key("malformed extendedKeyUsage"))?;
    let wrong = |reason: String| PurposeError::WrongKeyPurpose {
        subject: cert.subject_string(),
        purpose,
        reason,
    };
    let Some(ExtendedKeyUsage(usages)) = eku else {
        return Err(wrong("it carries no extended key usage".into()));
    };
    if usages.contains(&ANY_EXTENDED_KEY_USAGE) {
        return Err(wrong("it claims anyExtendedKeyUsage".into()));
    }
    let seb: Vec<Purpose> = usages.iter().filter_map(Purpose::from_oid).collect();
    match seb.as_slice() {
        [only] if *only == purpose => {}
        [] => return Err(wrong("it carries no seb key purpose".into())),
        [other] => return Err(wrong(format!("its key purpose is {other}"))),
        several => {
            let names: Vec<String> = several.iter().map(Purpose::to_string).collect();
            return Err(wrong(format!(
                "it carries several seb key purposes ({})",
                names.join(", ")
            )));
        }
    }
    if purpose.is_broker_key() && usages.len() != 1 {
        let others: Vec<String> = usages
            .iter()
            .filter(|u| **u != purpose.oid())
            .map(ToString::to_string)
            .collect();
        return Err(wrong(format!(
            "it also carries the extended key usages {}",
            others.join(", ")
        )));
    }
    Ok(())
}
