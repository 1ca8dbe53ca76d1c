//! seb's own DER view of X.509 certificates.
//!
//! The project's extensions live under a UUID arc (`2.25.<128-bit>`, ITU-T X.667). Common
//! X.509 libraries (RustCrypto's `const-oid`, Go's `crypto/x509`) cap OID arcs at 32 or 31 bits
//! and refuse to parse such a certificate at all. This module therefore mirrors RFC 5280's
//! `Certificate` with extension identifiers kept as raw OID bytes, and reuses `x509-cert` for
//! everything else (names, validity, keys, standard extension values). Issuance and parsing of
//! any certificate that may carry seb extensions go through these types.
//!
//! This module only encodes and decodes; it never signs and never decides what is trusted.

use std::time::SystemTime;

use der::asn1::{Any, BitString, ObjectIdentifier, OctetString};
use der::pem::PemLabel;
use der::{Decode, DecodePem, Encode, EncodePem, Sequence, Tag, Tagged};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::Version;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

/// BER of `sebGrants` (`2.25.57569389650057206723867454425930272143.1`), without tag/length.
pub const SEB_GRANTS_OID: &[u8] = crate::grants::SEB_GRANTS_OID_BER;
/// BER of `sebRole` (`2.25.57569389650057206723867454425930272143.2`), without tag/length.
pub const SEB_ROLE_OID: &[u8] = crate::grants::SEB_ROLE_OID_BER;
/// The dotted form of the arc, for documentation and messages.
pub const SEB_ARC: &str = crate::grants::SEB_ARC;

/// Errors decoding certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The bytes are not a DER certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The PEM bundle held no certificate.
    #[error("no certificate found in the input")]
    Empty,
    /// An extension appears twice (RFC 5280 §4.2 forbids it).
    #[error("extension {0} appears more than once")]
    DuplicateExtension(String),
}

/// An X.509 v3 certificate.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct Certificate {
    /// The signed part.
    pub tbs: TbsCertificate,
    /// Signature algorithm (must equal `tbs.signature`).
    pub signature_algorithm: AlgorithmIdentifierOwned,
    /// The issuer's signature over the DER of `tbs`.
    pub signature: BitString,
}

/// RFC 5280 `TBSCertificate`, with raw extension identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct TbsCertificate {
    /// Always v3 for certificates seb makes.
    #[asn1(context_specific = "0", default = "Default::default")]
    pub version: Version,
    /// Serial number.
    pub serial_number: SerialNumber,
    /// Signature algorithm.
    pub signature: AlgorithmIdentifierOwned,
    /// Issuer name.
    pub issuer: Name,
    /// Validity.
    pub validity: Validity,
    /// Subject name.
    pub subject: Name,
    /// Subject public key.
    pub subject_public_key_info: SubjectPublicKeyInfoOwned,
    /// Obsolete; must be absent in seb's certificates but tolerated when parsing.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub issuer_unique_id: Option<BitString>,
    /// Obsolete; as above.
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    pub subject_unique_id: Option<BitString>,
    /// Extensions.
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    pub extensions: Option<Vec<Extension>>,
}

/// An extension whose identifier is kept as raw OID bytes.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct Extension {
    /// OBJECT IDENTIFIER, undecoded.
    pub extn_id: Any,
    /// Criticality.
    #[asn1(default = "Default::default")]
    pub critical: bool,
    /// The DER of the extension's value.
    pub extn_value: OctetString,
}

impl Extension {
    /// An extension with a raw OID (BER value bytes).
    pub fn new(oid: &[u8], critical: bool, value: Vec<u8>) -> Result<Self, der::Error> {
        Ok(Self {
            extn_id: Any::new(Tag::ObjectIdentifier, oid)?,
            critical,
            extn_value: OctetString::new(value)?,
        })
    }

    /// Converts a standard extension built by `x509-cert`.
    pub fn from_standard(ext: x509_cert::ext::Extension) -> Result<Self, der::Error> {
        Ok(Self {
            extn_id: Any::new(Tag::ObjectIdentifier, ext.extn_id.as_bytes())?,
            critical: ext.critical,
            extn_value: ext.extn_value,
        })
    }

    /// The OID's value bytes.
    pub fn oid_bytes(&self) -> &[u8] {
        self.extn_id.value()
    }

    /// Whether this is the extension with the given standard OID.
    pub fn is(&self, oid: &ObjectIdentifier) -> bool {
        self.oid_bytes() == oid.as_bytes()
    }

    /// Dotted form of the OID for messages (big arcs included).
    pub fn oid_string(&self) -> String {
        oid_to_string(self.oid_bytes())
    }
}

impl PemLabel for Certificate {
    const PEM_LABEL: &'static str = "CERTIFICATE";
}

impl Certificate {
    /// Parses one certificate from PEM or DER, rejecting trailing data and duplicate
    /// extensions.
    pub fn parse(bytes: &[u8]) -> Result<Self, CertError> {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let cert = if bytes[start..].starts_with(b"-----BEGIN") {
            Self::from_pem(&bytes[start..])
        } else {
            Self::from_der(bytes)
        }
        .map_err(|e| CertError::Malformed(e.to_string()))?;
        cert.check_well_formed()?;
        Ok(cert)
    }

    /// Parses every certificate in a PEM bundle, in order.
    pub fn parse_pem_chain(text: &[u8]) -> Result<Vec<Self>, CertError> {
        let text = std::str::from_utf8(text)
            .map_err(|_| CertError::Malformed("PEM is not UTF-8".into()))?;
        let mut out = Vec::new();
        let mut rest = text;
        const END: &str = "-----END CERTIFICATE-----";
        while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
            let after = &rest[begin..];
            let end = after
                .find(END)
                .ok_or_else(|| CertError::Malformed("unterminated PEM block".into()))?;
            let block = &after[..end + END.len()];
            out.push(Self::parse(block.as_bytes())?);
            rest = &after[end + END.len()..];
        }
        if out.is_empty() {
            return Err(CertError::Empty);
        }
        Ok(out)
    }

    fn check_well_formed(&self) -> Result<(), CertError> {
        if let Some(exts) = &self.tbs.extensions {
            if exts
                .iter()
                .any(|e| e.extn_id.tag() != Tag::ObjectIdentifier)
            {
                return Err(CertError::Malformed("extension id is not an OID".into()));
            }
            for (i, a) in exts.iter().enumerate() {
                if exts[i + 1..].iter().any(|b| b.oid_bytes() == a.oid_bytes()) {
                    return Err(CertError::DuplicateExtension(a.oid_string()));
                }
            }
        }
        Ok(())
    }

    /// DER encoding.
    pub fn to_der_bytes(&self) -> Result<Vec<u8>, der::Error> {
        self.to_der()
    }

    /// PEM encoding.
    pub fn to_pem_string(&self) -> Result<String, der::Error> {
        self.to_pem(der::pem::LineEnding::LF)
    }

    /// The value of the extension with the given raw OID.
    pub fn extension(&self, oid: &[u8]) -> Option<&Extension> {
        self.tbs
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.oid_bytes() == oid)
    }

    /// The value of a standard extension decoded as `T`.
    pub fn standard_extension<T>(&self) -> Result<Option<T>, CertError>
    where
        T: for<'a> Decode<'a> + der::oid::AssociatedOid,
    {
        match self.extension(T::OID.as_bytes()) {
            None => Ok(None),
            Some(ext) => T::from_der(ext.extn_value.as_bytes())
                .map(Some)
                .map_err(|e| CertError::Malformed(format!("extension {}: {e}", T::OID))),
        }
    }

    /// The serial number in seb's canonical form ([`crate::serial::Serial`]: upper-case hex
    /// of the positive integer, no sign byte); a zero or negative serial, which seb refuses
    /// anywhere it matters, as the hex of its DER contents.
    pub fn serial_hex(&self) -> String {
        crate::serial::Serial::of(self).map_or_else(
            |_| hex::encode(self.tbs.serial_number.as_bytes()),
            |s| s.to_string(),
        )
    }

    /// SHA-256 over the DER (the `x5t#S256` thumbprint, RFC 8705).
    pub fn thumbprint_sha256(&self) -> Result<[u8; 32], der::Error> {
        Ok(Sha256::digest(self.to_der()?).into())
    }

    /// notBefore.
    pub fn not_before(&self) -> SystemTime {
        self.tbs.validity.not_before.to_system_time()
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.tbs.validity.not_after.to_system_time()
    }

    /// Subject as an RFC 4514 string.
    pub fn subject_string(&self) -> String {
        self.tbs.subject.to_string()
    }
}

/// Dotted decimal of an OID's BER value bytes, with arbitrarily large arcs.
pub fn oid_to_string(ber: &[u8]) -> String {
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for &b in ber {
        acc = acc.saturating_mul(128).saturating_add(u128::from(b & 0x7f));
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
    }
    let mut out = String::new();
    if let Some(&first) = arcs.first() {
        let (a, b) = match first {
            0..=39 => (0, first),
            40..=79 => (1, first - 40),
            _ => (2, first - 80),
        };
        out = format!("{a}.{b}");
    }
    for arc in arcs.iter().skip(1) {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seb_oids_match_the_documented_arc() {
        assert_eq!(oid_to_string(SEB_GRANTS_OID), format!("{SEB_ARC}.1"));
        assert_eq!(oid_to_string(SEB_ROLE_OID), format!("{SEB_ARC}.2"));
    }

    #[test]
    fn standard_oids_print() {
        let oid = ObjectIdentifier::new_unwrap("2.5.29.19");
        assert_eq!(oid_to_string(oid.as_bytes()), "2.5.29.19");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x80",
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
            b"\x30\x03\x02\x01\x00",
        ] {
            assert!(Certificate::parse(input).is_err());
        }
        assert_eq!(
            Certificate::parse_pem_chain(b"nothing here"),
            Err(CertError::Empty)
        );
    }
}
