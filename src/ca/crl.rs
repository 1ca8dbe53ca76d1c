//! Certificate revocation lists, signed by the root key (or an intermediate's) inside the
//! device.
//!
//! A CRL lists every revoked serial with its revocation time and reason, carries a CRL number
//! that only ever grows, and a nextUpdate after which relying parties must fetch a new one.
//!
//! The `TBSCertList` is assembled here rather than by `x509-cert`'s `CrlBuilder`: that builder
//! takes the CRL's authority key identifier from the issuer certificate's own authority key
//! identifier, which names the issuer's *issuer*. That is right only for a self-signed root;
//! an intermediate's CRL would name the root's key, and relying parties (`openssl verify
//! -crl_check`) find no CRL for the intermediate's certificates. Here the identifier names the
//! key that signs: the issuer's subject key identifier.

use std::time::{Duration, SystemTime};

use der::asn1::Uint;
use der::referenced::OwnedToRef;
use der::Encode;
use spki::{AlgorithmIdentifierOwned, SignatureBitStringEncoding};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason, SubjectKeyIdentifier};
use x509_cert::ext::ToExtension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::CaError;
use crate::backend::P384Signer;
use crate::serial::Serial;

/// Why a certificate was revoked (RFC 5280 §5.3.1 reason codes seb accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The subject's private key is believed compromised.
    KeyCompromise,
    /// A CA's private key is believed compromised (for an intermediate).
    CaCompromise,
    /// The subject changed role or organisation.
    AffiliationChanged,
    /// Replaced by a new certificate.
    Superseded,
    /// The subject no longer operates.
    CessationOfOperation,
    /// The grants were withdrawn.
    PrivilegeWithdrawn,
}

impl Reason {
    /// All accepted reasons with their command-line spelling.
    pub const ALL: [(&'static str, Reason); 7] = [
        ("unspecified", Reason::Unspecified),
        ("key-compromise", Reason::KeyCompromise),
        ("ca-compromise", Reason::CaCompromise),
        ("affiliation-changed", Reason::AffiliationChanged),
        ("superseded", Reason::Superseded),
        ("cessation-of-operation", Reason::CessationOfOperation),
        ("privilege-withdrawn", Reason::PrivilegeWithdrawn),
    ];

    /// Parses the command-line spelling (`key-compromise`, ...), also as RFC 5280 and
    /// openssl's `-crl_reason` write it (`keyCompromise`, `CACompromise`): case, `-` and `_`
    /// do not count.
    pub fn parse(s: &str) -> Option<Reason> {
        let folded = |t: &str| -> String {
            t.chars()
                .filter(|c| !matches!(c, '-' | '_'))
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let wanted = folded(s);
        Self::ALL
            .iter()
            .find(|(n, _)| folded(n) == wanted)
            .map(|(_, r)| *r)
    }

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("unspecified", |(n, _)| n)
    }

    fn code(self) -> CrlReason {
        match self {
            Reason::Unspecified => CrlReason::Unspecified,
            Reason::KeyCompromise => CrlReason::KeyCompromise,
            Reason::CaCompromise => CrlReason::CaCompromise,
            Reason::AffiliationChanged => CrlReason::AffiliationChanged,
            Reason::Superseded => CrlReason::Superseded,
            Reason::CessationOfOperation => CrlReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked serial (canonical; the CRL encodes it as a DER INTEGER again).
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// Why.
    pub reason: Reason,
}

/// Builds and signs a CRL over `revoked` with the CA behind `signer` and its certificate.
pub fn sign(
    signer: &P384Signer<'_>,
    issuer: &crate::cert::Certificate,
    crl_number: u64,
    revoked: &[Revocation],
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateList, CaError> {
    let number = CrlNumber(Uint::new(&crl_number.to_be_bytes())?);
    // Backdated like certificates ([`super::BACKDATE`]): a relying party whose clock is a few
    // seconds behind would otherwise find a fresh CRL not yet valid, and with `-crl_check`
    // refuse every certificate, not only the revoked ones.
    let this_update = Time::try_from(now.checked_sub(super::BACKDATE).unwrap_or(now))
        .map_err(|e| CaError::Validity(e.to_string()))?;
    let next_update = now
        .checked_add(validity)
        .ok_or_else(|| CaError::Validity("overflow".into()))
        .and_then(|t| Time::try_from(t).map_err(|e| CaError::Validity(e.to_string())))?;
    let mut entries = Vec::with_capacity(revoked.len());
    for r in revoked {
        // RFC 5280 §5.3.1: reasonCode unspecified SHOULD be absent rather than stated.
        let extensions = match r.reason {
            Reason::Unspecified => None,
            reason => Some(vec![reason
                .code()
                .to_extension(issuer.tbs().subject(), &[])?]),
        };
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(r.serial.as_bytes())?,
            revocation_date: Time::try_from(r.revoked_at)
                .map_err(|e| CaError::Validity(e.to_string()))?,
            crl_entry_extensions: extensions,
        });
    }
    let issuer_name = issuer.tbs().subject().clone();
    let key_identifier = match issuer.standard_extension::<SubjectKeyIdentifier>()? {
        Some(ski) => ski.0,
        None => {
            SubjectKeyIdentifier::try_from(issuer.tbs().subject_public_key_info().owned_to_ref())
                .map_err(|e| CaError::Encoding(e.to_string()))?
                .0
        }
    };
    let mut extensions = Vec::new();
    let ext = number.to_extension(&issuer_name, &extensions)?;
    extensions.push(ext);
    let ext = AuthorityKeyIdentifier {
        key_identifier: Some(key_identifier),
        ..Default::default()
    }
    .to_extension(&issuer_name, &extensions)?;
    extensions.push(ext);
    let algorithm = AlgorithmIdentifierOwned {
        oid: crate::backend::ECDSA_WITH_SHA384,
        parameters: None,
    };
    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: algorithm.clone(),
        issuer: issuer_name,
        this_update,
        next_update: Some(next_update),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(extensions),
    };
    let signature = signer.sign_message(&tbs.to_der()?).map_err(CaError::Sign)?;
    Ok(CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: algorithm,
        signature: signature.to_der().to_bitstring()?,
    })
}

/// PEM text of a CRL.
pub fn to_pem(crl: &CertificateList) -> Result<String, CaError> {
    Ok(der::EncodePem::to_pem(crl, der::pem::LineEnding::LF)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_their_spelling() {
        for (name, reason) in Reason::ALL {
            assert_eq!(Reason::parse(name), Some(reason));
            assert_eq!(reason.as_str(), name);
        }
        // RFC 5280's and openssl's names are the same reasons.
        for (name, reason) in [
            ("keyCompromise", Reason::KeyCompromise),
            ("CACompromise", Reason::CaCompromise),
            ("cessationOfOperation", Reason::CessationOfOperation),
            ("privilege_withdrawn", Reason::PrivilegeWithdrawn),
        ] {
            assert_eq!(Reason::parse(name), Some(reason), "{name}");
        }
        assert_eq!(Reason::parse("removeFromCRL"), None);
        assert_eq!(Reason::parse("key compromise"), None);
    }
}
